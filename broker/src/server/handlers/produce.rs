//! Produce: validate and append batches, then answer at once (acks=1), after fsync (acks=all)
//! or not at all (acks=0).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError;

use super::{storage_error_code, text, Reply};
use crate::broker::Partition;
use crate::metadata::validate_topic_name;
use crate::protocol::frame::{decode_body, encode_response, FrameError, RequestFrame};
use crate::txn::TxnError;
use crate::Broker;

pub(super) fn handle(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: ProduceRequest = decode_body(request)?;
    let acks = body.acks;
    let mut response = ProduceResponse::default();
    // Partitions appended to, with the offset their data must be durable up to.
    let mut to_sync: Vec<(Arc<Partition>, i64)> = Vec::new();
    for topic in &body.topic_data {
        let name = topic.name.0.to_string();
        let mut topic_response = TopicProduceResponse::default();
        topic_response.name = topic.name.clone();
        let topic_exists = broker.topic(&name).is_some()
            || (broker.config.auto_create_topics
                && validate_topic_name(&name).is_ok()
                && broker.auto_create_topic(&name).is_ok());
        for data in &topic.partition_data {
            let mut partition_response = PartitionProduceResponse::default();
            partition_response.index = data.index;
            partition_response.base_offset = -1;
            partition_response.log_append_time_ms = -1;
            partition_response.log_start_offset = -1;
            let outcome = if !(-1..=1).contains(&acks) {
                Err((ResponseError::InvalidRequiredAcks.code(), "acks must be -1, 0 or 1".to_string()))
            } else if !topic_exists {
                Err((ResponseError::UnknownTopicOrPartition.code(), format!("unknown topic {name}")))
            } else {
                append(broker, &name, data.index, data.records.as_ref())
            };
            match outcome {
                Ok((partition, info)) => {
                    partition_response.base_offset = info.base_offset;
                    partition_response.log_start_offset = info.log_start_offset;
                    to_sync.push((partition, info.last_offset + 1));
                }
                Err((code, message)) => {
                    tracing::debug!(topic = %name, partition = data.index, code, %message, "produce refused");
                    partition_response.error_code = code;
                    if request.api_version >= 8 {
                        partition_response.error_message = Some(text(message));
                    }
                }
            }
            topic_response.partition_responses.push(partition_response);
        }
        response.responses.push(topic_response);
    }
    if !to_sync.is_empty() {
        broker.notify_appended();
    }
    let api = request.api_key;
    let correlation_id = request.header.correlation_id;
    let version = request.api_version;
    match acks {
        0 => Ok(Reply::None),
        -1 if !to_sync.is_empty() => {
            let timeout = Duration::from_millis(body.timeout_ms.max(0) as u64);
            Ok(Reply::Later(Box::pin(async move {
                let synced = tokio::time::timeout(timeout, sync_all(&to_sync)).await;
                let failure = match synced {
                    Ok(Ok(())) => None,
                    Ok(Err(code)) => Some(code),
                    Err(_) => Some(ResponseError::RequestTimedOut.code()),
                };
                if let Some(code) = failure {
                    for topic in &mut response.responses {
                        for partition in &mut topic.partition_responses {
                            if partition.error_code == 0 {
                                partition.error_code = code;
                            }
                        }
                    }
                }
                encode_response(api, correlation_id, version, &response).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "cannot encode produce response");
                    Bytes::new()
                })
            })))
        }
        _ => encode_response(api, correlation_id, version, &response).map(Reply::Ready),
    }
}

/// Waits for every partition's flush; the fsyncs run concurrently, one task per partition.
async fn sync_all(partitions: &[(Arc<Partition>, i64)]) -> Result<(), i16> {
    let mut flushes = tokio::task::JoinSet::new();
    for (partition, offset) in partitions {
        let (partition, offset) = (Arc::clone(partition), *offset);
        flushes.spawn(async move { partition.sync_to(offset).await });
    }
    let mut outcome = Ok(());
    while let Some(joined) = flushes.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "fsync failed");
                outcome = Err(storage_error_code(&e));
            }
            Err(_) => outcome = Err(ResponseError::KafkaStorageError.code()),
        }
    }
    outcome
}

type AppendOutcome = Result<(Arc<Partition>, crate::storage::AppendInfo), (i16, String)>;

fn append(broker: &Broker, topic: &str, index: i32, records: Option<&Bytes>) -> AppendOutcome {
    let Some(partition) = broker.partition(topic, index) else {
        return Err((ResponseError::UnknownTopicOrPartition.code(), format!("unknown partition {topic}-{index}")));
    };
    let Some(records) = records else {
        return Err((ResponseError::CorruptMessage.code(), "null record set".to_string()));
    };
    check_transactional(broker, topic, index, records)?;
    let info = partition.log().append(records).map_err(|e| {
        let code = storage_error_code(&e);
        (code, e.to_string())
    })?;
    Ok((partition, info))
}

/// Refuses control batches (only the transaction coordinator writes markers) and
/// transactional batches that are not part of their producer's open transaction.
fn check_transactional(broker: &Broker, topic: &str, index: i32, records: &[u8]) -> Result<(), (i16, String)> {
    // The header's attributes are all that is needed; a malformed batch is left to the log's
    // own validation, which reports it precisely.
    let Ok(header) = crate::protocol::batch::BatchHeader::parse(records) else { return Ok(()) };
    if header.is_control() {
        return Err((ResponseError::InvalidRecord.code(), "clients may not write control batches".to_string()));
    }
    if !header.is_transactional() {
        return Ok(());
    }
    broker.txns().check_produce(header.producer_id, header.producer_epoch, topic, index).map_err(|error| {
        let code = match error {
            TxnError::ProducerFenced => ResponseError::InvalidProducerEpoch.code(),
            other => other.code(false),
        };
        (code, format!("transactional produce refused: {error}"))
    })
}

/// Produce v0–2 carry message-format v0/v1 sets, which Runnel does not store. They are
/// advertised (so librdkafka keeps compression on) and answered, per partition, with
/// UNSUPPORTED_VERSION in the version's own response format.
pub(super) fn refuse_legacy(request: &RequestFrame) -> Result<Reply, FrameError> {
    let bad = |message: &str| FrameError::BadBody {
        api: request.api_key,
        version: request.api_version,
        message: message.to_string(),
    };
    let mut body = request.body.clone();
    let topics = parse_legacy_produce(&mut body).ok_or_else(|| bad("malformed legacy produce request"))?;
    let version = request.api_version;
    let mut out = BytesMut::new();
    out.put_i32(0);
    out.put_i32(request.header.correlation_id);
    out.put_i32(topics.len() as i32);
    for (name, partitions) in &topics {
        out.put_i16(name.len() as i16);
        out.put_slice(name);
        out.put_i32(partitions.len() as i32);
        for partition in partitions {
            out.put_i32(*partition);
            out.put_i16(ResponseError::UnsupportedVersion.code());
            out.put_i64(-1);
            if version >= 2 {
                out.put_i64(-1);
            }
        }
    }
    if version >= 1 {
        out.put_i32(0);
    }
    let size = (out.len() - 4) as i32;
    (&mut out[0..4]).put_i32(size);
    Ok(Reply::Ready(out.freeze()))
}

/// Reads the topic and partition ids of a v0–2 produce body: acks, timeout, then
/// `[topic: string, [partition: int32, message_set: bytes]]`. Counts are bounded by the bytes
/// actually present, so a hostile count cannot allocate.
fn parse_legacy_produce(body: &mut Bytes) -> Option<Vec<(Bytes, Vec<i32>)>> {
    fn take_i16(b: &mut Bytes) -> Option<i16> {
        (b.remaining() >= 2).then(|| b.get_i16())
    }
    fn take_i32(b: &mut Bytes) -> Option<i32> {
        (b.remaining() >= 4).then(|| b.get_i32())
    }
    take_i16(body)?;
    take_i32(body)?;
    let topic_count = usize::try_from(take_i32(body)?).ok()?;
    let mut topics = Vec::new();
    for _ in 0..topic_count.min(body.remaining()) {
        let name_len = usize::try_from(take_i16(body)?).ok()?;
        if body.remaining() < name_len {
            return None;
        }
        let name = body.split_to(name_len);
        let partition_count = usize::try_from(take_i32(body)?).ok()?;
        let mut partitions = Vec::new();
        for _ in 0..partition_count.min(body.remaining()) {
            partitions.push(take_i32(body)?);
            let set_len = take_i32(body)?;
            let set_len = usize::try_from(set_len.max(0)).ok()?;
            if body.remaining() < set_len {
                return None;
            }
            body.advance(set_len);
        }
        topics.push((name, partitions));
    }
    Some(topics)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::protocol::batch::tests::sample_batch;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, TopicName};

    fn produce(topic: &str, partition: i32, records: Bytes, acks: i16) -> ProduceRequest {
        let mut data = PartitionProduceData::default();
        data.index = partition;
        data.records = Some(records);
        let mut topic_data = TopicProduceData::default();
        topic_data.name = TopicName(text(topic));
        topic_data.partition_data = vec![data];
        let mut request = ProduceRequest::default();
        request.acks = acks;
        request.timeout_ms = 5_000;
        request.topic_data = vec![topic_data];
        request
    }

    #[tokio::test]
    async fn appends_assign_consecutive_offsets_and_acks_all_is_flushed() {
        let (_dir, broker) = broker();
        for (i, version) in [3i16, 7, 9, 11].into_iter().enumerate() {
            let batch = sample_batch(2, 1_000, b"rr").freeze();
            let response: ProduceResponse = call(&broker, ApiKey::Produce, version, &produce("t", 0, batch, -1)).await;
            let partition = &response.responses[0].partition_responses[0];
            assert_eq!(partition.error_code, 0, "v{version}");
            assert_eq!(partition.base_offset, 2 * i as i64);
        }
        let partition = broker.partition("t", 0).expect("auto-created");
        assert_eq!(partition.log().log_end_offset(), 8);
        assert_eq!(partition.log().flushed_offset(), 8, "acks=all answered only after fsync");
    }

    #[tokio::test]
    async fn bad_crc_unknown_partition_and_bad_acks_get_their_error_codes() {
        let (_dir, broker) = broker();
        let mut corrupt = sample_batch(1, 1, b"x");
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        let response: ProduceResponse = call(&broker, ApiKey::Produce, 9, &produce("t", 0, corrupt.freeze(), 1)).await;
        assert_eq!(response.responses[0].partition_responses[0].error_code, ResponseError::CorruptMessage.code());
        let good = sample_batch(1, 1, b"x").freeze();
        let response: ProduceResponse = call(&broker, ApiKey::Produce, 9, &produce("t", 7, good.clone(), 1)).await;
        assert_eq!(
            response.responses[0].partition_responses[0].error_code,
            ResponseError::UnknownTopicOrPartition.code()
        );
        let response: ProduceResponse = call(&broker, ApiKey::Produce, 9, &produce("t", 0, good, 5)).await;
        assert_eq!(response.responses[0].partition_responses[0].error_code, ResponseError::InvalidRequiredAcks.code());
        assert_eq!(broker.partition("t", 0).expect("exists").log().log_end_offset(), 0, "nothing appended");
    }

    #[test]
    fn legacy_parser_survives_garbage() {
        for seed in 0..200u32 {
            let bytes: Vec<u8> = (0..(seed % 64)).map(|i| (i.wrapping_mul(seed) % 256) as u8).collect();
            let _ = parse_legacy_produce(&mut Bytes::from(bytes));
        }
    }
}
