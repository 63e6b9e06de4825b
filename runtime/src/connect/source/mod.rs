//! The source task loop, exactly-once: each poll's records are encoded as idempotent batches
//! (the task's producer id, the next sequence of each output partition), a checkpoint holding
//! them and the source position after them is appended to `__runnel_connect_offsets`, and only
//! then are the batches appended to the topic. A restart re-appends the last checkpoint's
//! batches (duplicates are recognised by sequence) and resumes the source at its position, so
//! no record is lost or written twice.
//!
//! A connector's WASM module, if any, parses each polled record (a line, a body, a row) into
//! the records written. Module failures follow `errors.tolerance` (none: the task fails;
//! all: the record is skipped and logged).

pub(crate) mod checkpoint;
mod datagen;
mod file_tail;
mod http_ingest;
mod postgres_poll;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use runnel_broker::partitioner::partition_for_key;
use runnel_broker::Broker;

use self::checkpoint::{Header, SourceCheckpoint};
use super::config::{ConnectorClass, Settings, Tolerance};
use super::module::Module;
use super::task::{Control, TaskContext};
use super::ConnectError;
use crate::transform::checkpoint::PendingOutput;
use crate::transform::records::{encode_batch, Outgoing};
use crate::transform::{log_io, InRecord};

pub(crate) const OFFSETS_TOPIC: &str = "__runnel_connect_offsets";
/// Retries of a local append (e.g. disk full) before the task fails.
const APPEND_ATTEMPTS: u32 = 5;
const APPEND_BACKOFF: Duration = Duration::from_millis(200);

/// A record a source produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceRecord {
    pub(crate) timestamp_ms: i64,
    pub(crate) key: Option<Bytes>,
    pub(crate) value: Option<Bytes>,
    pub(crate) headers: Vec<(String, Option<Bytes>)>,
}

/// Records read by one poll and the source position after them.
#[derive(Debug)]
pub(crate) struct Polled {
    pub(crate) records: Vec<SourceRecord>,
    pub(crate) position: serde_json::Value,
}

/// Where records come from.
pub(crate) trait Source {
    /// The topic records are written to.
    fn topic(&self) -> &str;
    /// (Re)opens at `position` (`None`: from the beginning).
    async fn open(&mut self, position: Option<&serde_json::Value>) -> Result<(), ConnectError>;
    /// Up to `max` records, or `None` when nothing is ready (the loop waits [`Source::idle`]).
    async fn poll(&mut self, max: usize) -> Result<Option<Polled>, ConnectError>;
    /// How long to wait after an empty poll.
    fn idle(&self) -> Duration;
    /// Whether outputs are fsynced before [`Source::committed`] (a caller waits on it).
    fn needs_fsync(&self) -> bool {
        false
    }
    /// The last poll's records are durable.
    fn committed(&mut self) {}
}

pub(crate) fn ensure_offsets_topic(broker: &Broker) -> Result<(), ConnectError> {
    crate::transform::service::ensure_topic(broker, OFFSETS_TOPIC, 1).map_err(ConnectError::from)
}

/// Checks a source's settings.
pub(crate) fn validate(class: ConnectorClass, settings: Settings<'_>) -> Result<(), ConnectError> {
    match class {
        ConnectorClass::DatagenSource => datagen::Datagen::settings(settings).map(|_| ()),
        ConnectorClass::FileSource => file_tail::FileTail::settings(settings).map(|_| ()),
        ConnectorClass::HttpSource => http_ingest::HttpIngest::settings(settings).map(|_| ()),
        ConnectorClass::PostgresSource => postgres_poll::PostgresPoll::settings(settings).map(|_| ()),
        other => Err(ConnectError::Internal(format!("{} is not a source", other.name()))),
    }
}

pub(crate) async fn run(ctx: &mut TaskContext) -> Result<(), ConnectError> {
    let settings = Settings(&ctx.config);
    match ctx.common.class {
        ConnectorClass::DatagenSource => run_with(ctx, datagen::Datagen::new(settings, &ctx.broker)?).await,
        ConnectorClass::FileSource => run_with(ctx, file_tail::FileTail::new(settings)?).await,
        ConnectorClass::HttpSource => run_with(ctx, http_ingest::HttpIngest::new(settings, &ctx.broker)?).await,
        ConnectorClass::PostgresSource => run_with(ctx, postgres_poll::PostgresPoll::new(settings, &ctx.broker)?).await,
        other => Err(ConnectError::Internal(format!("{} is not a source", other.name()))),
    }
}

/// Records per poll.
fn poll_max(ctx: &TaskContext) -> usize {
    Settings(&ctx.config).u64_or("poll.records.max", 10_000).unwrap_or(10_000).clamp(1, 100_000) as usize
}

async fn run_with<S: Source>(ctx: &mut TaskContext, mut source: S) -> Result<(), ConnectError> {
    let topic = source.topic().to_string();
    ctx.broker.auto_create_topic(&topic).map_err(|e| ConnectError::Storage(e.to_string()))?;
    let key = format!("{}/{}", ctx.common.name, ctx.task_id);
    let mut header = restore(ctx, &key).await?;
    let mut module = Module::for_task(ctx).await?;
    let max = poll_max(ctx);
    let mut attempt = 0;
    let mut opened = false;
    loop {
        if ctx.checkpoint_control().await == Control::Stop {
            return Ok(());
        }
        if !opened {
            match source.open(header.position.as_ref()).await {
                Ok(()) => opened = true,
                Err(e) => {
                    attempt = retry_or_fail(ctx, attempt, e).await?;
                    continue;
                }
            }
        }
        let polled = match source.poll(max).await {
            Ok(Some(polled)) => polled,
            Ok(None) => {
                let idle = source.idle();
                ctx.sleep(idle).await;
                continue;
            }
            Err(e) => {
                opened = false;
                attempt = retry_or_fail(ctx, attempt, e).await?;
                continue;
            }
        };
        attempt = 0;
        let count = polled.records.len() as u64;
        let (records, failed) = parse(ctx, &mut module, polled.records).await?;
        let pending = encode_outputs(ctx, &topic, &mut header, records)?;
        header.position = Some(polled.position);
        header.records += count;
        header.batches += 1;
        commit(ctx, &key, &header, pending, source.needs_fsync()).await?;
        source.committed();
        ctx.shared.add(count - failed, failed);
    }
}

async fn retry_or_fail(ctx: &mut TaskContext, attempt: u32, e: ConnectError) -> Result<u32, ConnectError> {
    if !e.is_retriable() || attempt >= ctx.common.max_retries {
        return Err(e);
    }
    let attempt = attempt + 1;
    let wait = ctx.backoff(attempt);
    ctx.log(format!("source failed (attempt {attempt}, retrying in {wait:?}): {e}"));
    tracing::warn!(connector = %ctx.common.name, attempt, error = %e, "source failed; retrying");
    ctx.sleep(wait).await;
    Ok(attempt)
}

/// Reads this task's last checkpoint, finishes its appends, and returns where it stands.
async fn restore(ctx: &TaskContext, key: &str) -> Result<Header, ConnectError> {
    let broker = std::sync::Arc::clone(&ctx.broker);
    let wanted = key.as_bytes().to_vec();
    let found = tokio::task::spawn_blocking(move || {
        let mut last: Option<Bytes> = None;
        log_io::scan(&broker, OFFSETS_TOPIC, 0, |record| {
            if record.key.as_deref() == Some(&wanted[..]) {
                last = record.value.clone();
            }
            Ok(())
        })?;
        Ok::<_, ConnectError>(last)
    })
    .await
    .map_err(|e| ConnectError::Internal(e.to_string()))??;
    match found {
        Some(bytes) => {
            let checkpoint = SourceCheckpoint::decode(bytes)?;
            for pending in &checkpoint.pending {
                append_with_retry(ctx, pending).await?;
            }
            ctx.broker.notify_appended();
            tracing::info!(connector = %ctx.common.name, task = ctx.task_id, position = ?checkpoint.header.position, "source task restored");
            Ok(checkpoint.header)
        }
        None => {
            let producer_id = ctx.broker.allocate_producer_id().map_err(|e| ConnectError::Storage(e.to_string()))?;
            Ok(Header { producer_id, ..Header::default() })
        }
    }
}

/// Runs records through the module (if any); returns what to write and how many failed.
async fn parse(
    ctx: &TaskContext,
    module: &mut Option<Module>,
    records: Vec<SourceRecord>,
) -> Result<(Vec<SourceRecord>, u64), ConnectError> {
    let Some(module) = module else { return Ok((records, 0)) };
    let inputs: Vec<InRecord> = records
        .into_iter()
        .enumerate()
        .map(|(i, r)| InRecord {
            offset: i as i64,
            timestamp_ms: r.timestamp_ms,
            key: r.key,
            value: r.value,
            headers: r.headers,
        })
        .collect();
    let mapped = module.map(inputs).await?;
    if let Some((index, failure)) = mapped.failures.first() {
        if ctx.common.tolerance == Tolerance::None {
            return Err(ConnectError::Module(failure.clone()));
        }
        ctx.log(format!("record {index} of a poll skipped: {failure}"));
    }
    let outputs = mapped
        .outputs
        .into_iter()
        .map(|(_, o)| SourceRecord { timestamp_ms: o.timestamp_ms, key: o.key, value: o.value, headers: o.headers })
        .collect();
    Ok((outputs, mapped.failures.len() as u64))
}

/// One idempotent batch per output partition: keyed records by Kafka's key hash, keyless ones
/// to one partition per poll, rotating.
fn encode_outputs(
    ctx: &TaskContext,
    topic: &str,
    header: &mut Header,
    records: Vec<SourceRecord>,
) -> Result<Vec<PendingOutput>, ConnectError> {
    let partitions = ctx.broker.topic(topic).map_or(0, |t| t.partitions);
    if partitions <= 0 {
        return Err(ConnectError::Storage(format!("topic {topic:?} does not exist")));
    }
    let keyless = (header.batches % partitions as u64) as i32;
    let mut grouped: BTreeMap<i32, Vec<Outgoing>> = BTreeMap::new();
    for record in records {
        let partition = match &record.key {
            Some(key) => partition_for_key(key, partitions as u32) as i32,
            None => keyless,
        };
        grouped.entry(partition).or_default().push(Outgoing {
            timestamp_ms: record.timestamp_ms,
            key: record.key,
            value: record.value,
            headers: record.headers,
        });
    }
    let mut sequences = header.sequence_map();
    let mut pending = Vec::with_capacity(grouped.len());
    for (partition, records) in grouped {
        let sequence = sequences.entry((topic.to_string(), partition)).or_insert(0);
        let batch = encode_batch(&records, Some((header.producer_id, *sequence)))?;
        // Sequences wrap at i32::MAX like Kafka's.
        *sequence = ((*sequence as i64 + records.len() as i64) % (i32::MAX as i64 + 1)) as i32;
        pending.push(PendingOutput { topic: topic.to_string(), partition, batch });
    }
    header.sequences = sequences.into_iter().map(|((t, p), s)| (t, p, s)).collect();
    Ok(pending)
}

/// Appends the checkpoint, then the batches it names (fsynced when the source needs it).
async fn commit(
    ctx: &TaskContext,
    key: &str,
    header: &Header,
    pending: Vec<PendingOutput>,
    fsync: bool,
) -> Result<(), ConnectError> {
    let checkpoint = SourceCheckpoint { header: header.clone(), pending };
    let record = Outgoing {
        timestamp_ms: ctx.broker.now_ms(),
        key: Some(Bytes::copy_from_slice(key.as_bytes())),
        value: Some(checkpoint.encode()?),
        headers: Vec::new(),
    };
    let batch = encode_batch(&[record], None)?;
    append_with_retry(ctx, &PendingOutput { topic: OFFSETS_TOPIC.to_string(), partition: 0, batch }).await?;
    for pending in &checkpoint.pending {
        let last = append_with_retry(ctx, pending).await?;
        if fsync {
            if let Some(partition) = ctx.broker.partition(&pending.topic, pending.partition) {
                partition.sync_to(last + 1).await.map_err(|e| ConnectError::Storage(e.to_string()))?;
            }
        }
    }
    ctx.broker.notify_appended();
    Ok(())
}

async fn append_with_retry(ctx: &TaskContext, pending: &PendingOutput) -> Result<i64, ConnectError> {
    let mut attempt = 1;
    loop {
        match log_io::append(&ctx.broker, &pending.topic, pending.partition, &pending.batch) {
            Ok(last) => return Ok(last),
            Err(e) if attempt < APPEND_ATTEMPTS => {
                tracing::warn!(topic = %pending.topic, partition = pending.partition, attempt, error = %e, "source append failed; retrying");
                attempt += 1;
                tokio::time::sleep(APPEND_BACKOFF * attempt).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
