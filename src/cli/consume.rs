//! `runnel consume TOPIC`: fetch partitions directly (no consumer group) and print records.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::{Buf, Bytes};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Record, RecordBatchDecoder};

use super::cluster::{Cluster, TopicInfo};
use super::error;
use super::format::{OutputFormat, RecordView};
use super::offsets::{list_offsets, OffsetSpec};
use super::{ConnectArgs, ConsumeArgs};

/// Longest the broker may hold a fetch open waiting for data; also the granularity with which
/// `--timeout-ms` is noticed.
const FETCH_MAX_WAIT: Duration = Duration::from_millis(500);
/// Response size budget per fetch (the client's frame limit is well above this).
const FETCH_MAX_BYTES: i32 = 8 * 1024 * 1024;
/// Per-partition budget; doubled (up to the maximum) if a batch does not fit.
const PARTITION_FETCH_BYTES_INITIAL: i32 = 1024 * 1024;
const PARTITION_FETCH_BYTES_MAX: i32 = 32 * 1024 * 1024;
/// Consecutive retriable fetch errors (leader moved, not available) tolerated before giving up,
/// with a metadata refresh and this backoff between attempts: about 2 s in all.
const RETRIABLE_ERRORS_MAX: u32 = 10;
const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// Record batch header bytes needed to know a batch's length: base offset (8) + length (4).
const BATCH_LENGTH_PREFIX_BYTES: usize = 12;

/// Where one assigned partition is read from.
#[derive(Debug)]
struct Cursor {
    partition: i32,
    leader: i32,
    /// The next offset to print.
    position: i64,
    fetch_bytes_max: i32,
}

pub(super) async fn run(connect: &ConnectArgs, args: ConsumeArgs) -> Result<()> {
    let format = OutputFormat::parse(&args.format)?;
    let mut cluster = Cluster::connect(&connect.brokers).await?;
    let topic = cluster.topic(&args.topic, false).await?;
    let mut cursors = start_cursors(&mut cluster, &topic, &args).await?;
    let mut consumer = Consumer {
        topic,
        format,
        remaining: args.num,
        printed_count: 0,
        last_record_at: Instant::now(),
        idle_timeout: args.timeout_ms.map(Duration::from_millis),
    };
    consumer.poll_until_done(&mut cluster, &mut cursors).await?;
    // On stderr, like kafka-console-consumer's "Processed a total of N messages".
    eprintln!("consumed {} record(s)", consumer.printed_count);
    Ok(())
}

/// Assigned partitions with their starting offsets.
async fn start_cursors(cluster: &mut Cluster, topic: &TopicInfo, args: &ConsumeArgs) -> Result<Vec<Cursor>> {
    let partition_ids: Vec<i32> = match args.partition {
        Some(id) => vec![topic.partition(id)?.id],
        None => topic.partitions.iter().map(|partition| partition.id).collect(),
    };
    let positions: BTreeMap<i32, i64> = match (args.offset, args.from_beginning) {
        (Some(offset), _) => partition_ids.iter().map(|id| (*id, offset)).collect(),
        (None, true) => list_offsets(cluster, topic, &partition_ids, OffsetSpec::Earliest).await?,
        // Like kafka-console-consumer: without a start position, only new records are shown.
        (None, false) => list_offsets(cluster, topic, &partition_ids, OffsetSpec::Latest).await?,
    };
    partition_ids
        .iter()
        .map(|id| {
            Ok(Cursor {
                partition: *id,
                leader: topic.partition(*id)?.leader,
                position: *positions.get(id).with_context(|| format!("no start offset for partition {id}"))?,
                fetch_bytes_max: PARTITION_FETCH_BYTES_INITIAL,
            })
        })
        .collect()
}

struct Consumer {
    topic: TopicInfo,
    format: OutputFormat,
    /// Records still to print before stopping (`--num`), if limited.
    remaining: Option<u64>,
    printed_count: u64,
    last_record_at: Instant,
    idle_timeout: Option<Duration>,
}

/// Why a round of fetching ended early.
enum Stop {
    /// Keep fetching.
    Continue,
    /// Printed `--num` records, or stdout was closed (e.g. piped into `head`).
    Done,
}

impl Consumer {
    async fn poll_until_done(&mut self, cluster: &mut Cluster, cursors: &mut [Cursor]) -> Result<()> {
        if self.remaining == Some(0) {
            return Ok(());
        }
        let mut retriable_errors: u32 = 0;
        // Without --num or --timeout-ms this polls until the process is interrupted, which is
        // what the user asked for; every iteration is bounded by FETCH_MAX_WAIT.
        loop {
            match self.poll_once(cluster, cursors).await {
                Ok(Stop::Done) => return Ok(()),
                Ok(Stop::Continue) => retriable_errors = 0,
                Err(FetchError::Retriable(detail)) => {
                    retriable_errors += 1;
                    if retriable_errors >= RETRIABLE_ERRORS_MAX {
                        bail!("fetching from topic '{}' kept failing: {detail}", self.topic.name);
                    }
                    tokio::time::sleep(RETRY_BACKOFF).await;
                    self.refresh_leaders(cluster, cursors).await?;
                }
                Err(FetchError::Fatal(error)) => return Err(error),
            }
            if let Some(timeout) = self.idle_timeout {
                if self.last_record_at.elapsed() >= timeout {
                    return Ok(());
                }
            }
        }
    }

    /// One fetch from every leader that has assigned partitions.
    async fn poll_once(&mut self, cluster: &mut Cluster, cursors: &mut [Cursor]) -> Result<Stop, FetchError> {
        let leaders: std::collections::BTreeSet<i32> = cursors.iter().map(|cursor| cursor.leader).collect();
        for leader in leaders {
            let response = self.fetch(cluster, leader, cursors).await.map_err(FetchError::Fatal)?;
            let mut output = Vec::new();
            let outcome = self.render_response(cluster, &response, leader, cursors, &mut output).await;
            // Cursors already moved past what was rendered, so print it even if a later
            // partition in the same response failed.
            if !write_stdout(&output).map_err(FetchError::Fatal)? {
                return Ok(Stop::Done);
            }
            if matches!(outcome?, Stop::Done) {
                return Ok(Stop::Done);
            }
        }
        Ok(Stop::Continue)
    }

    async fn render_response(
        &mut self,
        cluster: &mut Cluster,
        response: &FetchResponse,
        leader: i32,
        cursors: &mut [Cursor],
        output: &mut Vec<u8>,
    ) -> Result<Stop, FetchError> {
        for cursor in cursors.iter_mut().filter(|cursor| cursor.leader == leader) {
            let records = self.partition_records(cluster, response, cursor).await?;
            if matches!(self.render(cursor, &records, output), Stop::Done) {
                return Ok(Stop::Done);
            }
        }
        Ok(Stop::Continue)
    }

    async fn fetch(&self, cluster: &mut Cluster, leader: i32, cursors: &[Cursor]) -> Result<FetchResponse> {
        let client = cluster.leader(leader).await?;
        let version = client.version(ApiKey::Fetch)?;
        let wait = self.idle_timeout.map_or(FETCH_MAX_WAIT, |timeout| timeout.min(FETCH_MAX_WAIT));
        let mut topic = FetchTopic::default();
        topic.topic = TopicName(StrBytes::from_string(self.topic.name.clone()));
        topic.partitions = cursors
            .iter()
            .filter(|cursor| cursor.leader == leader)
            .map(|cursor| {
                let mut partition = FetchPartition::default();
                partition.partition = cursor.partition;
                partition.fetch_offset = cursor.position;
                partition.partition_max_bytes = cursor.fetch_bytes_max;
                partition
            })
            .collect();
        let mut request = FetchRequest::default();
        // Defaults already say: consumer (replica -1), no fetch session, read uncommitted.
        request.max_wait_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        request.min_bytes = 1;
        request.max_bytes = FETCH_MAX_BYTES;
        request.topics = vec![topic];
        let response = client.send(&request, version).await?;
        ensure!(
            response.error_code == 0,
            "fetch from {} failed: {}",
            client.address(),
            error::describe(response.error_code, None)
        );
        Ok(response)
    }

    /// The decoded records the broker returned for `cursor`'s partition.
    async fn partition_records(
        &self,
        cluster: &mut Cluster,
        response: &FetchResponse,
        cursor: &mut Cursor,
    ) -> Result<Vec<Record>, FetchError> {
        let topic = &self.topic.name;
        let Some(data) = response
            .responses
            .iter()
            .filter(|topic_response| topic_response.topic.as_str() == topic)
            .flat_map(|topic_response| topic_response.partitions.iter())
            .find(|partition| partition.partition_index == cursor.partition)
        else {
            // A broker may omit partitions that have nothing new; the next round asks again.
            return Ok(Vec::new());
        };
        match data.error_code {
            0 => {}
            error::OFFSET_OUT_OF_RANGE => {
                return Err(FetchError::Fatal(self.out_of_range(cluster, cursor.partition, cursor.position).await));
            }
            code if ResponseError::try_from_code(code).is_some_and(|error| error.is_retriable()) => {
                return Err(FetchError::Retriable(format!(
                    "{topic}-{}: {}",
                    cursor.partition,
                    error::describe(code, None)
                )));
            }
            code => {
                return Err(FetchError::Fatal(anyhow::anyhow!(
                    "fetching {topic}-{} at offset {} failed: {}",
                    cursor.partition,
                    cursor.position,
                    error::describe(code, None)
                )))
            }
        }
        let Some(bytes) = data.records.clone().filter(|bytes| !bytes.is_empty()) else {
            return Ok(Vec::new());
        };
        let records = decode_complete_batches(bytes.clone())
            .with_context(|| format!("decoding records of {topic}-{} at offset {}", cursor.partition, cursor.position))
            .map_err(FetchError::Fatal)?;
        if records.is_none() {
            // Only a truncated batch came back: it is bigger than our per-partition budget.
            if cursor.fetch_bytes_max >= PARTITION_FETCH_BYTES_MAX {
                return Err(FetchError::Fatal(anyhow::anyhow!(
                    "the record batch at {topic}-{} offset {} is larger than {PARTITION_FETCH_BYTES_MAX} bytes",
                    cursor.partition,
                    cursor.position
                )));
            }
            cursor.fetch_bytes_max = cursor.fetch_bytes_max.saturating_mul(2).min(PARTITION_FETCH_BYTES_MAX);
        }
        Ok(records.unwrap_or_default())
    }

    /// Prints `records` at or after the cursor and advances it.
    fn render(&mut self, cursor: &mut Cursor, records: &[Record], output: &mut Vec<u8>) -> Stop {
        for record in records {
            // A fetch from inside a batch returns the whole batch: skip what precedes the
            // requested offset. Control records (transaction markers) are never shown.
            if record.offset < cursor.position {
                continue;
            }
            cursor.position = record.offset + 1;
            if record.control {
                continue;
            }
            let view = RecordView {
                topic: &self.topic.name,
                partition: cursor.partition,
                offset: record.offset,
                timestamp_ms: record.timestamp,
                key: record.key.as_deref(),
                value: record.value.as_deref(),
            };
            self.format.render(&view, output);
            self.printed_count += 1;
            self.last_record_at = Instant::now();
            if let Some(remaining) = self.remaining.as_mut() {
                *remaining -= 1;
                if *remaining == 0 {
                    return Stop::Done;
                }
            }
        }
        Stop::Continue
    }

    /// A clear error for OFFSET_OUT_OF_RANGE, with the valid range when we can learn it.
    async fn out_of_range(&self, cluster: &mut Cluster, partition: i32, offset: i64) -> anyhow::Error {
        let topic = &self.topic.name;
        let earliest = list_offsets(cluster, &self.topic, &[partition], OffsetSpec::Earliest).await;
        let latest = list_offsets(cluster, &self.topic, &[partition], OffsetSpec::Latest).await;
        match (earliest, latest) {
            (Ok(earliest), Ok(latest)) => {
                let start = earliest.get(&partition).copied().unwrap_or(-1);
                let end = latest.get(&partition).copied().unwrap_or(-1);
                anyhow::anyhow!(
                    "offset {offset} is out of range for {topic}-{partition} (OFFSET_OUT_OF_RANGE): \
                     the log starts at offset {start} and ends at {end}"
                )
            }
            _ => anyhow::anyhow!("offset {offset} is out of range for {topic}-{partition} (OFFSET_OUT_OF_RANGE)"),
        }
    }

    async fn refresh_leaders(&mut self, cluster: &mut Cluster, cursors: &mut [Cursor]) -> Result<()> {
        self.topic = cluster.topic(&self.topic.name, false).await?;
        for cursor in cursors.iter_mut() {
            cursor.leader = self.topic.partition(cursor.partition)?.leader;
        }
        Ok(())
    }
}

enum FetchError {
    /// Worth a metadata refresh and another try (e.g. NOT_LEADER_OR_FOLLOWER).
    Retriable(String),
    Fatal(anyhow::Error),
}

/// Decodes every complete record batch in `bytes`. A fetch response may end with a truncated
/// batch (the broker cuts at the byte budget); it is dropped and fetched again next round.
/// Returns `None` if `bytes` held no complete batch at all.
fn decode_complete_batches(mut bytes: Bytes) -> Result<Option<Vec<Record>>> {
    let mut records = Vec::new();
    let mut complete_batches = 0usize;
    // Each iteration consumes at least BATCH_LENGTH_PREFIX_BYTES, so this ends.
    while bytes.len() >= BATCH_LENGTH_PREFIX_BYTES {
        let batch_length = (&bytes[8..12]).get_i32();
        ensure!(batch_length >= 0, "negative record batch length {batch_length}");
        let total = BATCH_LENGTH_PREFIX_BYTES + usize::try_from(batch_length).context("batch length")?;
        if bytes.len() < total {
            break;
        }
        let mut batch = bytes.split_to(total);
        let set = RecordBatchDecoder::decode(&mut batch)?;
        records.extend(set.records);
        complete_batches += 1;
    }
    Ok((complete_batches > 0).then_some(records))
}

/// Writes and flushes; `Ok(false)` if stdout is closed (the reader went away: stop quietly).
fn write_stdout(output: &[u8]) -> Result<bool> {
    if output.is_empty() {
        return Ok(true);
    }
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(output).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(error) => Err(error).context("writing to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::records::{Compression, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    fn record(offset: i64, value: &str) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: i32::try_from(offset).expect("small") - 1,
            timestamp: 1_000 + offset,
            key: None,
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers: IndexMap::new(),
        }
    }

    fn encode(records: &[Record]) -> Bytes {
        let mut buffer = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buffer,
            records.iter(),
            &RecordEncodeOptions { version: 2, compression: Compression::Lz4 },
        )
        .expect("encodes");
        buffer.freeze()
    }

    fn consumer(num: Option<u64>) -> Consumer {
        Consumer {
            topic: TopicInfo { name: "t".to_string(), partitions: Vec::new() },
            format: OutputFormat::parse("%o:%v").expect("valid"),
            remaining: num,
            printed_count: 0,
            last_record_at: Instant::now(),
            idle_timeout: None,
        }
    }

    fn cursor(position: i64) -> Cursor {
        Cursor { partition: 0, leader: 1, position, fetch_bytes_max: PARTITION_FETCH_BYTES_INITIAL }
    }

    #[test]
    fn records_before_the_requested_offset_are_skipped() {
        let records: Vec<Record> = (10..15).map(|offset| record(offset, &format!("v{offset}"))).collect();
        let mut consumer = consumer(None);
        let mut cursor = cursor(12);
        let mut output = Vec::new();
        assert!(matches!(consumer.render(&mut cursor, &records, &mut output), Stop::Continue));
        assert_eq!(String::from_utf8(output).expect("utf-8"), "12:v12\n13:v13\n14:v14\n");
        assert_eq!(cursor.position, 15);
        assert_eq!(consumer.printed_count, 3);
    }

    #[test]
    fn num_stops_exactly_after_n_records() {
        let records: Vec<Record> = (0..5).map(|offset| record(offset, "x")).collect();
        let mut consumer = consumer(Some(2));
        let mut cursor = cursor(0);
        let mut output = Vec::new();
        assert!(matches!(consumer.render(&mut cursor, &records, &mut output), Stop::Done));
        assert_eq!(String::from_utf8(output).expect("utf-8"), "0:x\n1:x\n");
        assert_eq!(cursor.position, 2);
    }

    #[test]
    fn control_records_advance_the_position_but_are_not_printed() {
        let mut marker = record(3, "");
        marker.control = true;
        let records = vec![record(2, "a"), marker, record(4, "b")];
        let mut consumer = consumer(None);
        let mut cursor = cursor(0);
        let mut output = Vec::new();
        consumer.render(&mut cursor, &records, &mut output);
        assert_eq!(String::from_utf8(output).expect("utf-8"), "2:a\n4:b\n");
        assert_eq!(cursor.position, 5);
    }

    #[test]
    fn a_truncated_trailing_batch_is_ignored() {
        let first = encode(&[record(0, "a"), record(1, "b")]);
        let mut second: Vec<Record> = vec![record(2, "c")];
        second[0].offset = 2;
        let second = encode(&second);
        let mut joined = BytesMut::new();
        joined.extend_from_slice(&first);
        joined.extend_from_slice(&second[..second.len() - 3]);
        let records = decode_complete_batches(joined.freeze()).expect("decodes").expect("one complete batch");
        let offsets: Vec<i64> = records.iter().map(|record| record.offset).collect();
        assert_eq!(offsets, vec![0, 1]);
        assert_eq!(decode_complete_batches(first.slice(..first.len() - 1)).expect("no error"), None);
        assert_eq!(decode_complete_batches(first.slice(..5)).expect("no error"), None);
    }
}
