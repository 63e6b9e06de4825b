//! The sink task loop. A task owns a share of the partitions of the topics its connector
//! reads (`topics` or `topics.regex`; see [`assign`] for the spread), reads them straight from
//! the local log as a read_committed consumer would, optionally maps records through the
//! connector's WASM module, and hands batches to its [`Sink`], which writes them together with
//! the positions they bring the partitions to. Positions are also committed under the consumer
//! group `connect-<name>`, so `runnel group describe connect-<name>` shows the lag.
//!
//! **Rebalancing.** Between batches a task compares the broker's metadata image with the one
//! its share was computed from; when partitions were added or topics created (or deleted) and
//! its share changed, it reopens the sink with the new share (each partition resumes where the
//! sink stored it, a new one at the log start) — Connect's rebalance, without stopping the
//! other tasks. The spread never moves a partition from one task to another, so tasks that
//! notice a change at different moments never both hold a partition.
//!
//! **Fencing.** Writers outside that spread can still overlap: a task aborted (it did not stop
//! in time) while its commit was in flight and the task started in its place, or the same
//! connector run by a second broker against the same database. Each write names the positions
//! it starts [`from`](Advance), and a sink whose commit holds positions refuses a write from
//! positions it no longer stores ([`ConnectError::Fenced`]); the fenced task reopens from what
//! is stored, so no batch is committed twice.
//!
//! A record the sink cannot write (bad data) is rejected before anything of its batch is
//! committed; with `errors.tolerance=all` it goes to the dead-letter topic (or is skipped) and
//! the rest of the batch is written again without it, with `none` the task fails there.

pub(crate) mod assign;
pub(crate) mod dead_letter;
pub(crate) mod file;
pub(crate) mod postgres;

use std::collections::BTreeMap;

use bytes::Bytes;
use runnel_broker::GroupOffset;

use super::config::{ConnectorClass, Tolerance};
use super::module::Module;
use super::task::{Control, TaskContext};
use super::ConnectError;
use crate::transform::log_io;
use crate::transform::records::decode_input;
use crate::transform::{InRecord, TransformError};

/// How long an idle task waits for an append before looking again (for appends, and for
/// metadata changes: this bounds how late an idle task notices new partitions and topics).
const IDLE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
/// Fenced writes in a row before the task fails. A stale writer (an aborted task's last commit)
/// fences a task once; a long run of fences means two live writers keep claiming one
/// partition (the connector running on two brokers against one database): a misconfiguration
/// to report, not to spin on.
const FENCED_REOPENS_MAX: u32 = 32;
/// Partitions named in a "reassigned" log line: the log ring keeps lines, not megabytes.
const LOGGED_PARTITIONS_MAX: usize = 16;

/// Next offset to read, per (topic, partition).
pub(crate) type Positions = BTreeMap<(String, i32), i64>;

/// One record handed to a sink, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SinkRecord {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp_ms: i64,
    pub(crate) key: Option<Bytes>,
    pub(crate) value: Option<Bytes>,
    pub(crate) headers: Vec<(String, Option<Bytes>)>,
}

/// What a write did.
#[derive(Debug)]
pub(crate) enum Written {
    /// The records and positions are committed.
    Committed,
    /// Nothing was committed: these records (index in the batch, why) cannot be written.
    Rejected(Vec<(usize, String)>),
}

/// Where a write brings the task's partitions: `from` (where the sink stands, as it said at open
/// or the last write left it) to `to`. Both hold the same partitions; a partition whose
/// position does not move is not written. A sink whose commit holds positions checks `from`,
/// so that two writers of one partition (a task that has not yet noticed it lost it, or one
/// that was aborted with a commit in flight) cannot both commit the same records.
#[derive(Debug)]
pub(crate) struct Advance<'a> {
    pub(crate) from: &'a Positions,
    pub(crate) to: &'a Positions,
}

impl Advance<'_> {
    /// The partitions this write moves: (partition, from, to).
    pub(crate) fn moved(&self) -> Vec<(&(String, i32), i64, i64)> {
        self.to
            .iter()
            .filter_map(|(key, &to)| {
                let from = self.from.get(key).copied();
                assert!(from.is_some(), "{}-{}: a write from no position", key.0, key.1);
                let from = from.unwrap_or(to);
                assert!(to >= from, "{}-{}: a write moving the position back from {from} to {to}", key.0, key.1);
                (from != to).then_some((key, from, to))
            })
            .collect()
    }
}

/// A destination for records.
pub(crate) trait Sink {
    /// (Re)connects and returns where each partition resumes; a partition it has no position
    /// for starts at the log start.
    async fn open(&mut self, partitions: &[(String, i32)]) -> Result<Positions, ConnectError>;
    /// Writes `records` and the positions after them together (all or nothing); a sink that
    /// finds it no longer holds `advance.from` commits nothing and returns
    /// [`ConnectError::Fenced`].
    async fn write(&mut self, records: &[SinkRecord], advance: &Advance<'_>) -> Result<Written, ConnectError>;
    /// Records per batch.
    fn batch_max(&self) -> usize;
    /// Metadata stored with the group commit; `Some` when the group commit is this sink's
    /// commit point (its failure is then an error, not a warning).
    fn group_metadata(&self) -> Option<String> {
        None
    }
}

/// Runs a sink task until it is stopped or fails.
pub(crate) async fn run(ctx: &mut TaskContext) -> Result<(), ConnectError> {
    match ctx.common.class {
        ConnectorClass::PostgresSink => {
            let sink = postgres::PostgresSink::new(ctx)?;
            run_with(ctx, sink).await
        }
        ConnectorClass::FileSink => {
            let sink = file::FileSink::new(ctx)?;
            run_with(ctx, sink).await
        }
        other => Err(ConnectError::Internal(format!("{} is not a sink", other.name()))),
    }
}

/// The task's share of partitions and the metadata it was computed from.
struct Share {
    partitions: assign::Assignment,
    /// Listed topics that do not exist (logged when this changes, not at every refresh).
    missing: Vec<String>,
    applied_index: u64,
}

impl Share {
    fn compute(ctx: &TaskContext) -> Share {
        let image = ctx.broker.metadata();
        Share {
            partitions: assign::assignment(&image, &ctx.common, ctx.task_id, ctx.tasks),
            missing: assign::missing_topics(&image, &ctx.common).into_iter().map(str::to_string).collect(),
            applied_index: image.applied_index,
        }
    }

    fn start(ctx: &TaskContext) -> Share {
        let share = Share::compute(ctx);
        share.log_missing(ctx);
        share
    }

    fn log_missing(&self, ctx: &TaskContext) {
        if !self.missing.is_empty() {
            ctx.log(format!("topics {:?} do not exist; their partitions are read once they do", self.missing));
        }
    }

    /// Recomputes the share when the metadata changed since; true when the share changed.
    fn refresh(&mut self, ctx: &TaskContext) -> bool {
        if ctx.broker.metadata().applied_index == self.applied_index {
            return false;
        }
        let next = Share::compute(ctx);
        if next.missing != self.missing {
            next.log_missing(ctx);
        }
        let changed = next.partitions != self.partitions;
        if changed {
            let shown: Vec<String> =
                next.partitions.iter().take(LOGGED_PARTITIONS_MAX).map(|(t, p)| format!("{t}-{p}")).collect();
            let more = next.partitions.len().saturating_sub(LOGGED_PARTITIONS_MAX);
            ctx.log(format!(
                "partitions reassigned: {} before, {} now ({}{})",
                self.partitions.len(),
                next.partitions.len(),
                shown.join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() }
            ));
            tracing::info!(connector = %ctx.common.name, task = ctx.task_id, partitions = next.partitions.len(), "sink task reassigned");
        }
        *self = next;
        changed
    }
}

/// Where the task stands: the positions read up to, and the ones the sink holds (the read
/// position moves past control batches and aborted data without a write).
struct Standing {
    read: Positions,
    committed: Positions,
}

impl Standing {
    fn opened(positions: Positions) -> Standing {
        Standing { committed: positions.clone(), read: positions }
    }
}

async fn run_with<S: Sink>(ctx: &mut TaskContext, mut sink: S) -> Result<(), ConnectError> {
    let mut share = Share::start(ctx);
    let mut module = Module::for_task(ctx).await?;
    let mut dead_letters = dead_letter::DeadLetters::new(ctx)?;
    let mut standing = Standing::opened(open(ctx, &mut sink, &share.partitions).await?);
    let mut appends = ctx.broker.subscribe_appends();
    let mut failures = Failures::default();
    let mut group_commit = GroupCommit::default();
    loop {
        if ctx.checkpoint_control().await == Control::Stop {
            return Ok(());
        }
        if share.refresh(ctx) {
            // Between batches, so the previous one is committed: the new share resumes from
            // what the sink stores, partitions it no longer owns are left to their new task.
            standing = Standing::opened(open(ctx, &mut sink, &share.partitions).await?);
        }
        let (records, next) = read_batch(ctx, &standing.read, sink.batch_max())?;
        if records.is_empty() {
            standing.read = next; // only control batches or aborted data were passed
                                  // Idle: a group commit skipped while another ran is made up now.
            commit_group(ctx, &sink, &standing.read, &mut group_commit).await?;
            tokio::select! {
                _ = appends.changed() => {}
                _ = tokio::time::sleep(IDLE_WAIT) => {}
                _ = ctx.control.changed() => {}
            }
            continue;
        }
        let count = records.len() as u64;
        let (records, mut rejected) = map_records(&mut module, records).await?;
        let advance = Advance { from: &standing.committed, to: &next };
        match deliver(ctx, &mut sink, &mut dead_letters, records, &mut rejected, &advance).await {
            Ok(()) => {
                failures = Failures::default();
                standing.committed.clone_from(&next);
                standing.read = next;
                commit_group(ctx, &sink, &standing.read, &mut group_commit).await?;
                ctx.shared.add(count - rejected.len() as u64, rejected.len() as u64);
            }
            Err(e) => {
                failures.settle(ctx, e).await?;
                // Whether the failed write committed is unknown: the sink says where it stands.
                standing = Standing::opened(open(ctx, &mut sink, &share.partitions).await?);
            }
        }
    }
}

/// Failed writes since the last committed one.
#[derive(Default)]
struct Failures {
    retriable: u32,
    fenced: u32,
}

impl Failures {
    /// Decides whether the task goes on after `error` (waiting first when it should); the
    /// caller then reopens the sink.
    async fn settle(&mut self, ctx: &mut TaskContext, error: ConnectError) -> Result<(), ConnectError> {
        match error {
            ConnectError::Fenced(reason) if self.fenced < FENCED_REOPENS_MAX => {
                // No wait: the other writer's commit is done, reopening reads past it.
                self.fenced += 1;
                ctx.log(format!("write fenced, reopening from the stored positions: {reason}"));
                tracing::info!(connector = %ctx.common.name, task = ctx.task_id, %reason, "sink write fenced");
                Ok(())
            }
            e if e.is_retriable() && self.retriable < ctx.common.max_retries => {
                self.retriable += 1;
                let attempt = self.retriable;
                let wait = ctx.backoff(attempt);
                ctx.log(format!("write failed (attempt {attempt}, retrying in {wait:?}): {e}"));
                tracing::warn!(connector = %ctx.common.name, task = ctx.task_id, attempt, error = %e, "sink write failed; retrying");
                ctx.sleep(wait).await;
                Ok(())
            }
            e => Err(e),
        }
    }
}

/// Opens the sink (retrying) and fills in positions it does not know with the log start.
async fn open<S: Sink>(
    ctx: &mut TaskContext,
    sink: &mut S,
    partitions: &[(String, i32)],
) -> Result<Positions, ConnectError> {
    let mut attempt = 0;
    let mut positions = loop {
        match sink.open(partitions).await {
            Ok(positions) => break positions,
            Err(e) if e.is_retriable() && attempt < ctx.common.max_retries && !ctx.stopping() => {
                attempt += 1;
                let wait = ctx.backoff(attempt);
                ctx.log(format!("open failed (attempt {attempt}, retrying in {wait:?}): {e}"));
                ctx.sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    };
    positions.retain(|key, _| partitions.contains(key));
    for (topic, partition) in partitions {
        positions
            .entry((topic.clone(), *partition))
            .or_insert_with(|| ctx.broker.partition(topic, *partition).map_or(0, |p| p.log().log_start_offset()));
    }
    Ok(positions)
}

/// Reads up to `max` records across the task's partitions; returns them and the positions
/// after them.
fn read_batch(
    ctx: &TaskContext,
    positions: &Positions,
    max: usize,
) -> Result<(Vec<SinkRecord>, Positions), ConnectError> {
    let mut next = positions.clone();
    let mut records = Vec::new();
    for ((topic, partition), position) in next.iter_mut() {
        if records.len() >= max {
            break;
        }
        let slice = match log_io::read_from(&ctx.broker, topic, *partition, *position, log_io::READ_BYTES_MAX) {
            Ok(Some(slice)) => slice,
            Ok(None) => continue,
            // Its topic was deleted since the share was computed: the next refresh drops it.
            Err(TransformError::UnknownPartition { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let (read, after) = decode_input(&slice, max - records.len())?;
        // Positions never move back (invariant of every partition's reader).
        assert!(
            after >= *position || read.is_empty(),
            "{topic}-{partition}: position {position} moved back to {after}"
        );
        *position = after.max(*position);
        records.extend(read.into_iter().map(|r| SinkRecord {
            topic: topic.clone(),
            partition: *partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key,
            value: r.value,
            headers: r.headers,
        }));
    }
    Ok((records, next))
}

/// Runs records through the module (if any): the records to write, and the ones it rejected.
async fn map_records(
    module: &mut Option<Module>,
    records: Vec<SinkRecord>,
) -> Result<(Vec<SinkRecord>, Vec<(SinkRecord, String)>), ConnectError> {
    let Some(module) = module else { return Ok((records, Vec::new())) };
    let inputs: Vec<InRecord> = records
        .iter()
        .map(|r| InRecord {
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
        })
        .collect();
    let mapped = module.map(inputs).await?;
    let rejected = mapped.failures.into_iter().map(|(i, f)| (records[i].clone(), format!("module: {f}"))).collect();
    let outputs = mapped
        .outputs
        .into_iter()
        .map(|(i, out)| SinkRecord {
            key: out.key,
            value: out.value,
            headers: out.headers,
            timestamp_ms: out.timestamp_ms,
            ..records[i].clone()
        })
        .collect();
    Ok((outputs, rejected))
}

/// Writes a batch; rejected records are handled by `errors.tolerance` and the batch is
/// written again without them.
async fn deliver<S: Sink>(
    ctx: &TaskContext,
    sink: &mut S,
    dead_letters: &mut dead_letter::DeadLetters,
    mut records: Vec<SinkRecord>,
    rejected: &mut Vec<(SinkRecord, String)>,
    advance: &Advance<'_>,
) -> Result<(), ConnectError> {
    // A batch whose earlier delivery failed part-way is a new batch: its rejects are sent again.
    dead_letters.reset();
    loop {
        if let Some((record, error)) = rejected.first() {
            if ctx.common.tolerance == Tolerance::None {
                return Err(ConnectError::InvalidConfig(format!(
                    "record {}-{}@{} cannot be written (errors.tolerance=none): {error}",
                    record.topic, record.partition, record.offset
                )));
            }
        }
        // Dead letters are durable before the batch that skips them commits.
        for (record, error) in rejected.iter().skip(dead_letters.sent()) {
            ctx.log(format!("record {}-{}@{} rejected: {error}", record.topic, record.partition, record.offset));
            dead_letters.send(ctx, record, error)?;
        }
        dead_letters.flush(ctx).await?;
        match sink.write(&records, advance).await? {
            Written::Committed => {
                dead_letters.reset();
                return Ok(());
            }
            Written::Rejected(bad) => {
                assert!(!bad.is_empty(), "a rejection names records");
                let mut bad: Vec<(usize, String)> = bad.into_iter().filter(|(i, _)| *i < records.len()).collect();
                bad.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
                bad.dedup_by_key(|(i, _)| *i);
                let mut removed = Vec::with_capacity(bad.len());
                for (index, error) in bad {
                    removed.push((records.remove(index), error));
                }
                removed.reverse();
                rejected.extend(removed);
            }
        }
    }
}

/// Records the task's positions under the group `connect-<name>`. When the group is not the
/// sink's commit point (PostgreSQL's is its offsets table) the commit runs in the background,
/// one at a time (a commit still running when the next batch is done skips that batch's: the
/// next carries newer positions), so its fsync is not on the write path.
async fn commit_group<S: Sink>(
    ctx: &TaskContext,
    sink: &S,
    positions: &Positions,
    background: &mut GroupCommit,
) -> Result<(), ConnectError> {
    let metadata = sink.group_metadata();
    if background.committed.as_ref() == Some(positions) {
        return Ok(());
    }
    let offsets: Vec<GroupOffset> = positions
        .iter()
        .map(|((topic, partition), offset)| GroupOffset {
            topic: topic.clone(),
            partition: *partition,
            offset: *offset,
            metadata: metadata.clone().unwrap_or_default(),
        })
        .collect();
    let group = group_id(&ctx.common.name);
    if metadata.is_some() {
        ctx.broker.commit_group_offsets(&group, &offsets).await.map_err(|e| ConnectError::Storage(e.to_string()))?;
        background.committed = Some(positions.clone());
        return Ok(());
    }
    if background.running.as_ref().is_some_and(|b| !b.is_finished()) {
        return Ok(());
    }
    let broker = std::sync::Arc::clone(&ctx.broker);
    let connector = ctx.common.name.clone();
    background.committed = Some(positions.clone());
    background.running = Some(tokio::spawn(async move {
        if let Err(e) = broker.commit_group_offsets(&group, &offsets).await {
            tracing::warn!(%connector, error = %e, "cannot record positions in the group");
        }
    }));
    Ok(())
}

/// The group commit running in the background, and the positions last handed to one.
#[derive(Default)]
struct GroupCommit {
    running: Option<tokio::task::JoinHandle<()>>,
    committed: Option<Positions>,
}

/// The consumer group a sink's positions are shown under.
pub(crate) fn group_id(connector: &str) -> String {
    format!("connect-{connector}")
}
