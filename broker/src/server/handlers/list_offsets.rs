//! ListOffsets: earliest, latest, max-timestamp and by-timestamp lookups.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::records::RecordBatchDecoder;
use kafka_protocol::ResponseError;

use super::{respond, storage_error_code, Reply};
use crate::protocol::frame::{decode_body, FrameError, RequestFrame};
use crate::storage::{PartitionLog, StorageError};
use crate::Broker;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

pub(super) fn handle(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: ListOffsetsRequest = decode_body(request)?;
    let version = request.api_version;
    let mut response = ListOffsetsResponse::default();
    for topic in &body.topics {
        let name = topic.name.0.to_string();
        let mut topic_response = ListOffsetsTopicResponse::default();
        topic_response.name = topic.name.clone();
        for requested in &topic.partitions {
            let mut out = ListOffsetsPartitionResponse::default();
            out.partition_index = requested.partition_index;
            out.timestamp = -1;
            out.offset = -1;
            match broker.partition(&name, requested.partition_index) {
                None => out.error_code = ResponseError::UnknownTopicOrPartition.code(),
                Some(_) if requested.current_leader_epoch > 0 => {
                    out.error_code = ResponseError::UnknownLeaderEpoch.code()
                }
                // read_committed (isolation level 1, v2+) sees the log end as the last stable offset.
                Some(partition) if version >= 2 && body.isolation_level == 1 && requested.timestamp == LATEST => {
                    out.offset = partition.log().last_stable_offset();
                }
                Some(partition) => match lookup(&mut partition.log(), requested.timestamp) {
                    Ok(Some((offset, timestamp))) => {
                        out.offset = offset;
                        out.timestamp = timestamp;
                    }
                    Ok(None) => {}
                    Err(e) => out.error_code = storage_error_code(&e),
                },
            }
            if version >= 4 {
                out.leader_epoch = if out.offset >= 0 { 0 } else { -1 };
            }
            topic_response.partitions.push(out);
        }
        response.topics.push(topic_response);
    }
    respond(request, &response)
}

/// Resolves one ListOffsets query to (offset, timestamp); `None` means no such record
/// (Kafka answers offset -1, timestamp -1).
fn lookup(log: &mut PartitionLog, timestamp: i64) -> Result<Option<(i64, i64)>, StorageError> {
    match timestamp {
        LATEST => Ok(Some((log.high_watermark(), -1))),
        EARLIEST | EARLIEST_LOCAL => Ok(Some((log.log_start_offset(), -1))),
        LATEST_TIERED => Ok(None),
        MAX_TIMESTAMP => max_timestamp(log),
        target if target >= 0 => by_timestamp(log, target),
        _ => Ok(None),
    }
}

/// The first record whose timestamp is at or after `target`. The time index narrows the
/// search to one batch; the batch is decoded to find the exact record inside it.
fn by_timestamp(log: &mut PartitionLog, target: i64) -> Result<Option<(i64, i64)>, StorageError> {
    let Some((batch_offset, _)) = log.offset_for_timestamp(target)? else { return Ok(None) };
    let Some(batch) = log.read_batch_at(batch_offset)? else { return Ok(None) };
    Ok(first_record_at_or_after(batch, batch_offset, |ts| ts >= target))
}

/// The record with the largest timestamp (the first one, if several share it).
fn max_timestamp(log: &mut PartitionLog) -> Result<Option<(i64, i64)>, StorageError> {
    // Find the largest batch timestamp, then the first batch that carries it.
    let mut best: Option<i64> = None;
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    let mut headers = Vec::new();
    while offset < end {
        let Some(batch) = log.read_batch_at(offset)? else { break };
        let Ok(header) = crate::protocol::batch::BatchHeader::parse(&batch) else { break };
        best = Some(best.map_or(header.max_timestamp, |b| b.max(header.max_timestamp)));
        headers.push((header.base_offset, header.max_timestamp));
        offset = header.next_offset();
    }
    let Some(best) = best else { return Ok(None) };
    let Some(&(base, _)) = headers.iter().find(|(_, ts)| *ts == best) else { return Ok(None) };
    let Some(batch) = log.read_batch_at(base)? else { return Ok(None) };
    Ok(first_record_at_or_after(batch, base, |ts| ts == best))
}

fn first_record_at_or_after(batch: Bytes, from_offset: i64, matches: impl Fn(i64) -> bool) -> Option<(i64, i64)> {
    // Records are read only on this rare path; a codec panic on stored bytes is caught.
    let decoded = std::panic::catch_unwind(move || {
        let mut bytes = batch;
        RecordBatchDecoder::decode(&mut bytes).ok()
    })
    .ok()
    .flatten()?;
    decoded.records.iter().find(|r| r.offset >= from_offset && matches(r.timestamp)).map(|r| (r.offset, r.timestamp))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{ApiKey, TopicName};
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    fn batch_with_timestamps(timestamps: &[i64]) -> BytesMut {
        let records: Vec<Record> = timestamps
            .iter()
            .enumerate()
            .map(|(i, ts)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: -1,
                timestamp: *ts,
                key: None,
                value: Some(Bytes::from_static(b"v")),
                headers: IndexMap::new(),
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression: Compression::None };
        RecordBatchEncoder::encode(&mut buf, records.iter(), &options).expect("encode");
        buf
    }

    fn query(timestamp: i64) -> ListOffsetsRequest {
        let mut partition = ListOffsetsPartition::default();
        partition.partition_index = 0;
        partition.timestamp = timestamp;
        partition.current_leader_epoch = -1;
        let mut topic = ListOffsetsTopic::default();
        topic.name = TopicName(super::super::text("t"));
        topic.partitions = vec![partition];
        let mut request = ListOffsetsRequest::default();
        request.replica_id = kafka_protocol::messages::BrokerId(-1);
        request.topics = vec![topic];
        request
    }

    #[tokio::test]
    async fn timestamps_resolve_to_the_first_record_at_or_after_them() {
        let (_dir, broker) = broker();
        broker.auto_create_topic("t").expect("create");
        let partition = broker.partition("t", 0).expect("partition");
        partition.log().append(&batch_with_timestamps(&[100, 200, 300])).expect("append");
        partition.log().append(&batch_with_timestamps(&[400, 500])).expect("append");
        let cases =
            [(EARLIEST, 0), (LATEST, 5), (0, 0), (200, 1), (250, 2), (400, 3), (500, 4), (501, -1), (MAX_TIMESTAMP, 4)];
        for version in [1i16, 4, 7, 10] {
            for (timestamp, expected) in cases {
                if timestamp == MAX_TIMESTAMP && version < 7 {
                    continue;
                }
                let response: ListOffsetsResponse =
                    call(&broker, ApiKey::ListOffsets, version, &query(timestamp)).await;
                let answer = &response.topics[0].partitions[0];
                assert_eq!(answer.error_code, 0);
                assert_eq!(answer.offset, expected, "v{version} timestamp {timestamp}");
            }
        }
    }
}
