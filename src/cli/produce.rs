//! `runnel produce TOPIC`: one record per stdin line, batched into Produce requests.
//!
//! Stdin is read on a plain thread feeding a bounded channel: a blocking read cannot be
//! cancelled, and a tokio stdin read left in flight would keep the runtime from shutting down.
//! Records are flushed when a batch is full, at end of input, or after a short linger with no
//! new line, so interactive use sends each line promptly while piped input is batched.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType, NO_PARTITION_LEADER_EPOCH,
    NO_PRODUCER_EPOCH, NO_PRODUCER_ID,
};
use tokio::sync::mpsc;

use super::client::REQUEST_TIMEOUT;
use super::cluster::{Cluster, TopicInfo};
use super::error;
use super::partitioner::Partitioner;
use super::{Acks, CompressionArg, ConnectArgs, ProduceArgs};

/// A Produce request carries at most this many records…
const BATCH_RECORDS_MAX: usize = 1000;
/// …or about this many key+value bytes (Kafka's default max.request.size is 1 MiB).
const BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Longest accepted input line. Larger than any default broker message limit, small enough
/// that a runaway input without newlines cannot eat memory.
const LINE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How long a partial batch waits for more input before it is sent anyway.
const LINGER: Duration = Duration::from_millis(100);
/// Lines read ahead of the producer; bounds memory when the broker is slower than stdin.
const STDIN_QUEUE_LINES: usize = 1024;

pub(super) async fn run(connect: &ConnectArgs, args: ProduceArgs) -> Result<()> {
    let mut cluster = Cluster::connect(&connect.brokers).await?;
    // Like the Java producer, let the broker auto-create the topic if its policy allows.
    let topic = cluster.topic(&args.topic, true).await?;
    if let Some(partition) = args.partition {
        topic.partition(partition)?;
    }
    let partition_count = u32::try_from(topic.partitions.len()).context("partition count")?;
    let mut producer = Producer {
        topic,
        acks: args.acks,
        compression: compression(args.compression),
        pending: PendingRecords::default(),
        produced_count: 0,
    };
    let mut partitioner = Partitioner::new(partition_count);
    let separator = args.key_separator.as_deref().map(str::as_bytes);
    let mut lines = spawn_stdin_reader();

    // Runs until stdin ends; each iteration consumes one line or one linger timeout.
    let result: Result<()> = async {
        loop {
            let next = if producer.pending.is_empty() {
                lines.recv().await
            } else {
                match tokio::time::timeout(LINGER, lines.recv()).await {
                    Ok(next) => next,
                    Err(_elapsed) => {
                        producer.flush(&mut cluster).await?;
                        continue;
                    }
                }
            };
            let Some(line) = next else { break };
            let line = line?;
            let (key, value) = split_key(line, separator);
            let partition = args.partition.unwrap_or_else(|| partitioner.partition(key.as_deref()));
            producer.add(&mut cluster, partition, key, value).await?;
        }
        producer.flush(&mut cluster).await?;
        cluster.shutdown().await
    }
    .await;
    let produced_count = producer.produced_count;
    // Say how far we got, so the user knows which lines to resend.
    result.map_err(|error| anyhow::anyhow!("{error:#} ({produced_count} record(s) were produced before the error)"))?;
    eprintln!("produced {produced_count} record(s)");
    Ok(())
}

/// Splits a line at the first `separator` into key and value; without a separator (or when
/// the line lacks it) the key is null and the whole line is the value.
pub(crate) fn split_key(line: Bytes, separator: Option<&[u8]>) -> (Option<Bytes>, Bytes) {
    let Some(separator) = separator.filter(|separator| !separator.is_empty()) else {
        return (None, line);
    };
    match line.windows(separator.len()).position(|window| window == separator) {
        Some(at) => (Some(line.slice(..at)), line.slice(at + separator.len()..)),
        None => (None, line),
    }
}

fn compression(argument: CompressionArg) -> Compression {
    match argument {
        CompressionArg::None => Compression::None,
        CompressionArg::Gzip => Compression::Gzip,
        CompressionArg::Snappy => Compression::Snappy,
        CompressionArg::Lz4 => Compression::Lz4,
        CompressionArg::Zstd => Compression::Zstd,
    }
}

fn acks_code(acks: Acks) -> i16 {
    match acks {
        Acks::All => -1,
        Acks::Leader => 1,
        Acks::None => 0,
    }
}

/// Reads stdin lines (without `\n` / `\r\n`) on a dedicated thread.
fn spawn_stdin_reader() -> mpsc::Receiver<Result<Bytes>> {
    let (sender, receiver) = mpsc::channel(STDIN_QUEUE_LINES);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut reader = stdin.lock();
        // Bounded by the input: ends at EOF, on a read error, or when the producer hangs up.
        loop {
            let line = read_line(&mut reader);
            let stop = !matches!(line, Ok(Some(_)));
            let item = match line {
                Ok(Some(line)) => Ok(line),
                Ok(None) => break,
                Err(error) => Err(error),
            };
            if sender.blocking_send(item).is_err() || stop {
                break;
            }
        }
    });
    receiver
}

/// One line of at most `LINE_BYTES_MAX` bytes, or `None` at end of input.
fn read_line(reader: &mut impl BufRead) -> Result<Option<Bytes>> {
    let mut line = Vec::new();
    let limit = u64::try_from(LINE_BYTES_MAX + 1).unwrap_or(u64::MAX);
    let read = std::io::Read::take(&mut *reader, limit).read_until(b'\n', &mut line).context("reading stdin")?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    ensure!(line.len() <= LINE_BYTES_MAX, "input line is longer than {LINE_BYTES_MAX} bytes");
    Ok(Some(Bytes::from(line)))
}

/// Records waiting to be sent, per partition.
#[derive(Default)]
struct PendingRecords {
    by_partition: BTreeMap<i32, Vec<Record>>,
    record_count: usize,
    payload_bytes: usize,
}

impl PendingRecords {
    fn is_empty(&self) -> bool {
        self.record_count == 0
    }
}

struct Producer {
    topic: TopicInfo,
    acks: Acks,
    compression: Compression,
    pending: PendingRecords,
    produced_count: u64,
}

impl Producer {
    async fn add(&mut self, cluster: &mut Cluster, partition: i32, key: Option<Bytes>, value: Bytes) -> Result<()> {
        let payload_bytes = key.as_ref().map_or(0, Bytes::len) + value.len();
        // Keep a request near the byte budget: send what we have before it would overflow.
        if !self.pending.is_empty() && self.pending.payload_bytes + payload_bytes > BATCH_BYTES_MAX {
            self.flush(cluster).await?;
        }
        let records = self.pending.by_partition.entry(partition).or_default();
        records.push(new_record(records.len(), key, value));
        self.pending.record_count += 1;
        self.pending.payload_bytes += payload_bytes;
        if self.pending.record_count >= BATCH_RECORDS_MAX || self.pending.payload_bytes >= BATCH_BYTES_MAX {
            self.flush(cluster).await?;
        }
        Ok(())
    }

    /// Sends every pending record, one request per partition leader.
    async fn flush(&mut self, cluster: &mut Cluster) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let mut by_leader: BTreeMap<i32, Vec<(i32, Vec<Record>)>> = BTreeMap::new();
        for (partition, records) in pending.by_partition {
            let leader = self.topic.partition(partition)?.leader;
            by_leader.entry(leader).or_default().push((partition, records));
        }
        for (leader, partitions) in by_leader {
            let record_count: usize = partitions.iter().map(|(_, records)| records.len()).sum();
            self.send(cluster, leader, partitions).await?;
            self.produced_count += record_count as u64;
        }
        Ok(())
    }

    async fn send(&self, cluster: &mut Cluster, leader: i32, partitions: Vec<(i32, Vec<Record>)>) -> Result<()> {
        let mut topic_data = TopicProduceData::default();
        topic_data.name = TopicName(StrBytes::from_string(self.topic.name.clone()));
        let mut sent_partitions = Vec::with_capacity(partitions.len());
        for (partition, records) in &partitions {
            let mut batch = BytesMut::new();
            let options = RecordEncodeOptions { version: 2, compression: self.compression };
            RecordBatchEncoder::encode(&mut batch, records.iter(), &options)
                .with_context(|| format!("encoding a record batch for {}-{partition}", self.topic.name))?;
            let mut data = PartitionProduceData::default();
            data.index = *partition;
            data.records = Some(batch.freeze());
            topic_data.partition_data.push(data);
            sent_partitions.push(*partition);
        }
        let mut request = ProduceRequest::default();
        request.acks = acks_code(self.acks);
        request.timeout_ms = i32::try_from(REQUEST_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
        request.topic_data = vec![topic_data];

        let client = cluster.leader(leader).await?;
        let version = client.version(ApiKey::Produce)?;
        if self.acks == Acks::None {
            // With acks=0 the broker never answers; waiting would hang until the timeout.
            return client.send_without_response(&request, version).await;
        }
        let response = client.send(&request, version).await?;
        check_response(&self.topic.name, &sent_partitions, &response)
    }
}

/// A record for a fresh batch; the broker assigns real offsets, we only number them.
fn new_record(index_in_batch: usize, key: Option<Bytes>, value: Bytes) -> Record {
    let offset = i64::try_from(index_in_batch).unwrap_or(i64::MAX);
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
        producer_id: NO_PRODUCER_ID,
        producer_epoch: NO_PRODUCER_EPOCH,
        timestamp_type: TimestampType::Creation,
        offset,
        // The encoder starts a new batch whenever `offset - sequence` changes, and derives the
        // batch's base sequence from the first record. `offset - 1` keeps every record in one
        // batch with base sequence -1 (NO_SEQUENCE), as a non-idempotent producer must send.
        sequence: i32::try_from(offset - 1).unwrap_or(i32::MAX),
        timestamp: now_ms(),
        key,
        value: Some(value),
        headers: IndexMap::new(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Every partition we sent must be acknowledged without an error.
fn check_response(topic: &str, sent_partitions: &[i32], response: &ProduceResponse) -> Result<()> {
    for partition in sent_partitions {
        let acknowledged = response
            .responses
            .iter()
            .filter(|topic_response| topic_response.name.as_str() == topic)
            .flat_map(|topic_response| topic_response.partition_responses.iter())
            .find(|partition_response| partition_response.index == *partition)
            .with_context(|| format!("broker did not acknowledge {topic}-{partition}"))?;
        if acknowledged.error_code != 0 {
            let mut detail = error::describe(acknowledged.error_code, acknowledged.error_message.as_deref());
            for record_error in &acknowledged.record_errors {
                if let Some(message) = &record_error.batch_index_error_message {
                    detail.push_str(&format!("; record {}: {}", record_error.batch_index, message.as_str()));
                }
            }
            bail!("producing to {topic}-{partition} failed: {detail}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    fn split(line: &str, separator: Option<&str>) -> (Option<String>, String) {
        let (key, value) = split_key(Bytes::copy_from_slice(line.as_bytes()), separator.map(str::as_bytes));
        let text = |bytes: Bytes| String::from_utf8(bytes.to_vec()).expect("utf-8");
        (key.map(text), text(value))
    }

    #[test]
    fn key_separator_splits_at_the_first_occurrence() {
        assert_eq!(split("k:v:w", Some(":")), (Some("k".to_string()), "v:w".to_string()));
        assert_eq!(split("key::value", Some("::")), (Some("key".to_string()), "value".to_string()));
        assert_eq!(split(":v", Some(":")), (Some(String::new()), "v".to_string()));
        assert_eq!(split("k:", Some(":")), (Some("k".to_string()), String::new()));
    }

    #[test]
    fn a_line_without_the_separator_has_a_null_key() {
        assert_eq!(split("no separator", Some(":")), (None, "no separator".to_string()));
        assert_eq!(split("k:v", None), (None, "k:v".to_string()));
    }

    #[test]
    fn lines_lose_their_line_ending_only() {
        let mut input: &[u8] = b"a\r\nb\n\nc\\r\nlast";
        let mut lines = Vec::new();
        while let Some(line) = read_line(&mut input).expect("reads") {
            lines.push(line);
        }
        let expected: Vec<&[u8]> = vec![b"a", b"b", b"", b"c\\r", b"last"];
        assert_eq!(lines, expected);
    }

    #[test]
    fn overlong_lines_are_refused() {
        let long = vec![b'x'; LINE_BYTES_MAX + 1];
        assert!(read_line(&mut long.as_slice()).is_err());
        let just_fits = vec![b'x'; LINE_BYTES_MAX];
        assert_eq!(read_line(&mut just_fits.as_slice()).expect("fits").map(|line| line.len()), Some(LINE_BYTES_MAX));
    }

    #[test]
    fn records_encode_into_one_batch_without_a_sequence() {
        let records: Vec<Record> = (0..3)
            .map(|index| new_record(index, Some(Bytes::from(format!("k{index}"))), Bytes::from(format!("v{index}"))))
            .collect();
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let mut buffer = BytesMut::new();
            RecordBatchEncoder::encode(&mut buffer, records.iter(), &RecordEncodeOptions { version: 2, compression })
                .expect("encodes");
            let mut encoded = buffer.freeze();
            let info = RecordBatchDecoder::decode_batch_info(&mut encoded.clone()).expect("headers decode");
            assert_eq!(info.len(), 1, "{compression:?}: one batch for the whole request");
            assert_eq!((info[0].record_count, info[0].base_sequence, info[0].producer_id), (3, -1, -1));
            let decoded = RecordBatchDecoder::decode_all(&mut encoded).expect("decodes");
            let values: Vec<_> = decoded[0].records.iter().map(|record| record.value.clone()).collect();
            assert_eq!(values, vec![Some(Bytes::from("v0")), Some(Bytes::from("v1")), Some(Bytes::from("v2"))]);
        }
    }

    #[test]
    fn acks_map_to_kafka_codes() {
        assert_eq!((acks_code(Acks::All), acks_code(Acks::Leader), acks_code(Acks::None)), (-1, 1, 0));
    }

    #[test]
    fn an_error_code_on_any_sent_partition_fails_the_check() {
        use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
        let mut ok = PartitionProduceResponse::default();
        ok.index = 0;
        let mut failed = PartitionProduceResponse::default();
        failed.index = 1;
        failed.error_code = 10;
        let mut topic_response = TopicProduceResponse::default();
        topic_response.name = TopicName(StrBytes::from_static_str("t"));
        topic_response.partition_responses = vec![ok, failed];
        let mut response = ProduceResponse::default();
        response.responses = vec![topic_response];
        assert!(check_response("t", &[0], &response).is_ok());
        let message = format!("{:#}", check_response("t", &[0, 1], &response).expect_err("partition 1 failed"));
        assert!(message.contains("MESSAGE_TOO_LARGE"), "{message}");
        assert!(check_response("t", &[2], &response).is_err(), "an unacknowledged partition is an error");
    }
}
