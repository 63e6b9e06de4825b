//! Fetch: whole batches from the log, with long polling on `max_wait_ms`/`min_bytes`.
//!
//! Every request is treated as a full fetch (session id 0), which KIP-227 clients accept:
//! they keep sending full requests when the broker hands out no session.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ProducerId, TopicName};
use kafka_protocol::ResponseError;

use super::{storage_error_code, text, Reply};
use crate::protocol::batch::{peek_batch_bytes, BatchHeader};
use crate::protocol::fetch_frame::{encode_fetch_response, Piece};
use crate::protocol::frame::{decode_body, FrameError, RequestFrame};
use crate::storage::FetchSlice;
use crate::Broker;

/// Slices from this size on are sent from the segment file with `sendfile`; smaller ones are
/// copied into the response, where a syscall per piece would cost more than the copy.
const SENDFILE_MIN_BYTES: usize = 64 * 1024;

/// Longest wait a client may ask for; keeps a hostile `max_wait_ms` from pinning a connection.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);

pub(super) async fn handle(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: FetchRequest = decode_body(request)?;
    let version = request.api_version;
    let wait = Duration::from_millis(body.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    let deadline = tokio::time::Instant::now() + wait;
    let min_bytes = body.min_bytes.max(0) as usize;
    // Subscribe before the first read so an append between read and wait is not missed.
    let mut appended = broker.subscribe_appends();
    loop {
        let (response, files, bytes, any_error) = read_once(broker, &body, version);
        let now = tokio::time::Instant::now();
        if bytes >= min_bytes.max(1) || any_error || now >= deadline {
            return respond_pieces(request, response, files);
        }
        appended.borrow_and_update();
        let woken = tokio::select! {
            changed = tokio::time::timeout_at(deadline, appended.changed()) => changed.is_ok(),
            // Shutdown answers a parked poll now rather than holding the drain for max_wait.
            () = broker.stopping() => false,
        };
        if !woken {
            let (response, files, _, _) = read_once(broker, &body, version);
            return respond_pieces(request, response, files);
        }
    }
}

fn respond_pieces(
    request: &RequestFrame,
    response: FetchResponse,
    files: Vec<Option<FetchSlice>>,
) -> Result<Reply, FrameError> {
    encode_fetch_response(request.header.correlation_id, request.api_version, response, files).map(Reply::Pieces)
}

/// Builds one response from the log as it is now; returns it, the segment slices that hold
/// each partition's records (in response order; sent from the file, never read here), the
/// record bytes it carries, and whether any partition failed (errors are returned at once,
/// not waited on).
fn read_once(
    broker: &Broker,
    body: &FetchRequest,
    version: i16,
) -> (FetchResponse, Vec<Option<FetchSlice>>, usize, bool) {
    let mut response = FetchResponse::default();
    let mut files = Vec::new();
    let mut remaining = if version >= 3 { body.max_bytes.max(0) as usize } else { usize::MAX };
    let mut total = 0;
    let mut any_error = false;
    let image = broker.metadata();
    // Kafka's isolation levels: 0 read_uncommitted, 1 read_committed (Fetch v4+).
    let read_committed = version >= 4 && body.isolation_level == 1;
    for topic in &body.topics {
        let name = if version >= 13 {
            image.topics.values().find(|t| t.topic_id == topic.topic_id).map(|t| t.name.clone())
        } else {
            Some(topic.topic.0.to_string())
        };
        let mut topic_response = FetchableTopicResponse::default();
        topic_response.topic = TopicName(text(name.clone().unwrap_or_default()));
        topic_response.topic_id = topic.topic_id;
        for requested in &topic.partitions {
            let mut data = PartitionData::default();
            data.partition_index = requested.partition;
            data.high_watermark = -1;
            data.last_stable_offset = -1;
            data.log_start_offset = -1;
            let partition = name.as_deref().and_then(|n| broker.partition(n, requested.partition));
            let Some(partition) = partition else {
                data.error_code = if version >= 13 && name.is_none() {
                    ResponseError::UnknownTopicId.code()
                } else {
                    ResponseError::UnknownTopicOrPartition.code()
                };
                any_error = true;
                topic_response.partitions.push(data);
                files.push(None);
                continue;
            };
            // The only leader epoch on a single node is 0.
            if requested.current_leader_epoch > 0 {
                data.error_code = ResponseError::UnknownLeaderEpoch.code();
                any_error = true;
                topic_response.partitions.push(data);
                files.push(None);
                continue;
            }
            let partition_max = (requested.partition_max_bytes.max(0) as usize).min(remaining);
            let plain_view;
            let slice = {
                let mut log = partition.log();
                data.high_watermark = log.high_watermark();
                data.last_stable_offset = log.last_stable_offset();
                data.log_start_offset = log.log_start_offset();
                // The first partition with data always gets at least one whole batch (KIP-74).
                let max = if total == 0 { partition_max.max(1) } else { partition_max };
                // read_committed sees nothing at or past the last stable offset.
                // With nothing open and nothing aborted, read_committed reads like read_uncommitted.
                plain_view = data.last_stable_offset >= data.high_watermark && !log.has_aborted_transactions();
                let unstable = read_committed
                    && requested.fetch_offset >= data.last_stable_offset
                    && requested.fetch_offset <= log.log_end_offset();
                if max == 0 || unstable {
                    Ok(None)
                } else {
                    log.read(requested.fetch_offset, max)
                }
            };
            let records = slice.and_then(|slice| match slice {
                None => Ok(None),
                // read_committed over aborted or open transactions: the stable batches are
                // picked out in memory.
                Some(slice) if read_committed && !plain_view => slice.read().map(|records| {
                    let (stable, aborted) =
                        committed_view(&partition, records, requested.fetch_offset, data.last_stable_offset);
                    data.aborted_transactions = Some(aborted);
                    Some(Piece::Bytes(stable))
                }),
                // Small slices (a tailing consumer's usual fetch) are read here, so the whole
                // response leaves in one write; larger ones are sent from the file.
                Some(slice) if slice.len() < SENDFILE_MIN_BYTES => slice.read().map(|r| Some(Piece::Bytes(r))),
                Some(slice) => Ok(Some(Piece::File(slice))),
            });
            let mut file = None;
            match records {
                Ok(piece) => {
                    let bytes = piece.as_ref().map_or(0, Piece::len);
                    total += bytes;
                    remaining = remaining.saturating_sub(bytes);
                    data.records = Some(match piece {
                        Some(Piece::Bytes(records)) => records,
                        Some(Piece::File(slice)) => {
                            file = Some(slice);
                            Default::default()
                        }
                        None => Default::default(),
                    });
                }
                Err(e) => {
                    data.error_code = storage_error_code(&e);
                    any_error = true;
                    tracing::debug!(topic = %partition.topic, partition = partition.index, error = %e, "fetch failed");
                }
            }
            if version >= 4 && data.aborted_transactions.is_none() {
                data.aborted_transactions = Some(Vec::new());
            }
            topic_response.partitions.push(data);
            files.push(file);
        }
        response.responses.push(topic_response);
    }
    (response, files, total, any_error)
}

/// For read_committed: keeps the whole batches below the last stable offset and lists the
/// aborted transactions overlapping them, which the consumer uses to drop aborted records.
fn committed_view(
    partition: &crate::broker::Partition,
    records: Bytes,
    fetch_offset: i64,
    last_stable_offset: i64,
) -> (Bytes, Vec<AbortedTransaction>) {
    let mut kept = 0;
    let mut upper = fetch_offset;
    while let Some(len) = peek_batch_bytes(&records[kept..]) {
        let Ok(header) = BatchHeader::parse(&records[kept..]) else { break };
        if kept + len > records.len() || header.base_offset >= last_stable_offset {
            break;
        }
        kept += len;
        upper = header.next_offset();
    }
    let stable = records.slice(..kept);
    let aborted = if kept == 0 { Vec::new() } else { partition.log().aborted_transactions(fetch_offset, upper) };
    let aborted = aborted
        .into_iter()
        .map(|a| {
            let mut entry = AbortedTransaction::default();
            entry.producer_id = ProducerId(a.producer_id);
            entry.first_offset = a.first_offset;
            entry
        })
        .collect();
    (stable, aborted)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::protocol::batch::{tests::sample_batch, validate_batch};
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::ApiKey;

    fn fetch(topic: &str, offset: i64, max_wait_ms: i32) -> FetchRequest {
        let mut partition = FetchPartition::default();
        partition.partition = 0;
        partition.fetch_offset = offset;
        partition.partition_max_bytes = 1 << 20;
        partition.current_leader_epoch = -1;
        let mut fetch_topic = FetchTopic::default();
        fetch_topic.topic = TopicName(text(topic));
        fetch_topic.partitions = vec![partition];
        let mut request = FetchRequest::default();
        request.max_wait_ms = max_wait_ms;
        request.min_bytes = 1;
        request.max_bytes = 50 << 20;
        request.topics = vec![fetch_topic];
        request
    }

    #[tokio::test]
    async fn fetch_inside_a_batch_returns_the_whole_batch() {
        let (_dir, broker) = broker();
        broker.auto_create_topic("t").expect("create");
        let partition = broker.partition("t", 0).expect("partition");
        partition.log().append(&sample_batch(5, 10, b"abc")).expect("append");
        partition.log().append(&sample_batch(5, 20, b"def")).expect("append");
        for version in [4i16, 11, 12] {
            let response: FetchResponse = call(&broker, ApiKey::Fetch, version, &fetch("t", 7, 0)).await;
            let data = &response.responses[0].partitions[0];
            assert_eq!(data.error_code, 0);
            assert_eq!(data.high_watermark, 10);
            let records = data.records.clone().expect("records");
            let header = validate_batch(&records).expect("one whole batch");
            assert_eq!(header.base_offset, 5, "the batch holding offset 7 starts at 5");
        }
    }

    #[tokio::test]
    async fn read_committed_stops_at_the_lso_and_lists_aborted_transactions() {
        use crate::protocol::batch::build_batch;
        let (_dir, broker) = broker();
        broker.auto_create_topic("t").expect("create");
        let partition = broker.partition("t", 0).expect("partition");
        let transactional = |producer: i64| build_batch(1 << 4, 1, 1, 1, producer, 0, 0, 2, b"tx");
        {
            let mut log = partition.log();
            log.append(&sample_batch(1, 1, b"a")).expect("append"); // 0
            log.append(&transactional(5)).expect("append"); // 1..3, aborted below
            log.append(&crate::storage::encode_marker(5, 0, false, 0, 1)).expect("abort"); // 3
            log.append(&sample_batch(1, 1, b"b")).expect("append"); // 4
            log.append(&transactional(6)).expect("append"); // 5..7, left open
            log.append(&sample_batch(1, 1, b"c")).expect("append"); // 7
        }
        let mut request = fetch("t", 0, 0);
        request.isolation_level = 1;
        let response: FetchResponse = call(&broker, ApiKey::Fetch, 11, &request).await;
        let data = &response.responses[0].partitions[0];
        assert_eq!((data.high_watermark, data.last_stable_offset), (8, 5));
        let records = data.records.clone().expect("records");
        let batches = crate::protocol::batch::split_batches(&records).expect("whole batches");
        assert_eq!(batches.last().map(|(h, _)| h.next_offset()), Some(5), "nothing at or past the LSO");
        let aborted = data.aborted_transactions.clone().expect("listed");
        assert_eq!(aborted.len(), 1);
        assert_eq!((aborted[0].producer_id.0, aborted[0].first_offset), (5, 1));
        let mut at_lso = fetch("t", 5, 0);
        at_lso.isolation_level = 1;
        let response: FetchResponse = call(&broker, ApiKey::Fetch, 11, &at_lso).await;
        assert!(response.responses[0].partitions[0].records.clone().unwrap_or_default().is_empty());
        let response: FetchResponse = call(&broker, ApiKey::Fetch, 11, &fetch("t", 0, 0)).await;
        let data = &response.responses[0].partitions[0];
        let records = data.records.clone().expect("records");
        let batches = crate::protocol::batch::split_batches(&records).expect("whole batches");
        assert_eq!(batches.last().map(|(h, _)| h.next_offset()), Some(8), "read_uncommitted reads to the end");
        assert_eq!(data.aborted_transactions.as_ref().map(Vec::len), Some(0));
    }

    #[tokio::test]
    async fn out_of_range_is_an_error_and_a_long_poll_wakes_on_append() {
        let (_dir, broker) = broker();
        broker.auto_create_topic("t").expect("create");
        let response: FetchResponse = call(&broker, ApiKey::Fetch, 11, &fetch("t", 5, 0)).await;
        assert_eq!(response.responses[0].partitions[0].error_code, ResponseError::OffsetOutOfRange.code());

        let writer = Arc::clone(&broker);
        let append = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            writer.partition("t", 0).expect("partition").log().append(&sample_batch(1, 1, b"x")).expect("append");
            writer.notify_appended();
        });
        let started = std::time::Instant::now();
        let response: FetchResponse = call(&broker, ApiKey::Fetch, 11, &fetch("t", 0, 10_000)).await;
        append.await.expect("append task");
        assert!(started.elapsed() < Duration::from_secs(5), "woke on append, not at max_wait");
        assert!(!response.responses[0].partitions[0].records.clone().unwrap_or_default().is_empty());
    }
}
