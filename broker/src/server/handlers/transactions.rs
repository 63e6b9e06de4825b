//! The transaction coordinator's APIs: InitProducerId (with a transactional id),
//! AddPartitionsToTxn v0–3, AddOffsetsToTxn v0–3, EndTxn v0–3, TxnOffsetCommit v0–3 and
//! ListTransactions / DescribeTransactions.
//!
//! Versions stop where KIP-890 (transactions v2: server-side partition registration, epoch
//! bump per transaction) begins; those are not advertised. Every answer that wrote something
//! waits for the fsync of it.

use std::sync::Arc;

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedTransaction;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest, AddPartitionsToTxnResponse,
    DescribeTransactionsRequest, DescribeTransactionsResponse, EndTxnRequest, EndTxnResponse, InitProducerIdRequest,
    InitProducerIdResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId, TopicName, TransactionalId,
};
use kafka_protocol::ResponseError;

use super::{respond, text, Reply};
use crate::groups::{CommitPartition, CommitReply, TxnCommitRequest, OFFSETS_TOPIC};
use crate::protocol::frame::{decode_body, encode_response, FrameError, RequestFrame};
use crate::txn::{Durable, TxnError};
use crate::Broker;

/// Request versions from which PRODUCER_FENCED is understood (KIP-588).
const INIT_FENCED_FROM: i16 = 4;
const ADD_PARTITIONS_FENCED_FROM: i16 = 2;
const ADD_OFFSETS_FENCED_FROM: i16 = 2;
const END_TXN_FENCED_FROM: i16 = 2;
const TXN_OFFSET_COMMIT_FENCED_FROM: i16 = 3;

/// A reply sent once `durable` is fsynced; on fsync failure `fail` sets the error.
fn after_sync<R, F>(request: &RequestFrame, mut response: R, durable: Durable, fail: F) -> Reply
where
    R: kafka_protocol::protocol::Encodable + kafka_protocol::protocol::HeaderVersion + Send + 'static,
    F: FnOnce(&mut R, TxnError) + Send + 'static,
{
    let (api, correlation_id, version) = (request.api_key, request.header.correlation_id, request.api_version);
    Reply::Later(Box::pin(async move {
        if let Err(error) = durable.wait().await {
            fail(&mut response, error);
        }
        encode_response(api, correlation_id, version, &response).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot encode transaction response");
            bytes::Bytes::new()
        })
    }))
}

/// InitProducerId for a transactional producer.
pub(super) fn init_producer_id(
    broker: &Arc<Broker>,
    request: &RequestFrame,
    body: &InitProducerIdRequest,
    transactional_id: &str,
) -> Result<Reply, FrameError> {
    let version = request.api_version;
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    // KIP-360 (v3+): a producer re-initialising names its current id and epoch.
    let expected = (version >= 3 && body.producer_id.0 >= 0).then_some((body.producer_id.0, body.producer_epoch));
    let fenced_code = version >= INIT_FENCED_FROM;
    match broker.txns().init_producer_id(broker, transactional_id, body.transaction_timeout_ms, expected) {
        Ok((producer_id, epoch, durable)) => {
            response.producer_id = ProducerId(producer_id);
            response.producer_epoch = epoch;
            Ok(after_sync(request, response, durable, move |r, e| {
                r.error_code = e.code(fenced_code);
                r.producer_id = ProducerId(-1);
                r.producer_epoch = -1;
            }))
        }
        Err(error) => {
            tracing::debug!(transactional_id, %error, "InitProducerId refused");
            response.error_code = error.code(fenced_code);
            respond(request, &response)
        }
    }
}

pub(super) fn add_partitions_to_txn(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: AddPartitionsToTxnRequest = decode_body(request)?;
    let version = request.api_version;
    let image = broker.metadata();
    let mut partitions = Vec::new();
    let mut unknown = false;
    for topic in &body.v3_and_below_topics {
        for index in &topic.partitions {
            let name = topic.name.0.to_string();
            let exists = image.topics.get(&name).is_some_and(|t| (0..t.partitions).contains(index));
            unknown |= !exists;
            partitions.push((name, *index));
        }
    }
    // Kafka refuses the whole request if any partition is unknown: those get the error,
    // the others OPERATION_NOT_ATTEMPTED.
    let outcome = if unknown {
        Err(TxnError::UnknownTopicOrPartition)
    } else {
        broker.txns().add_partitions(
            broker,
            body.v3_and_below_transactional_id.0.as_str(),
            body.v3_and_below_producer_id.0,
            body.v3_and_below_producer_epoch,
            partitions,
        )
    };
    let fenced_code = version >= ADD_PARTITIONS_FENCED_FROM;
    let code_for = |topic: &str, index: i32, error: Option<TxnError>| -> i16 {
        match error {
            None => 0,
            Some(TxnError::UnknownTopicOrPartition) => {
                let exists = image.topics.get(topic).is_some_and(|t| (0..t.partitions).contains(&index));
                if exists {
                    ResponseError::OperationNotAttempted.code()
                } else {
                    ResponseError::UnknownTopicOrPartition.code()
                }
            }
            Some(e) => e.code(fenced_code),
        }
    };
    let error = outcome.as_ref().err().copied();
    let mut response = AddPartitionsToTxnResponse::default();
    for topic in &body.v3_and_below_topics {
        let mut topic_result = AddPartitionsToTxnTopicResult::default();
        topic_result.name = topic.name.clone();
        for index in &topic.partitions {
            let mut result = AddPartitionsToTxnPartitionResult::default();
            result.partition_index = *index;
            result.partition_error_code = code_for(topic.name.0.as_str(), *index, error);
            topic_result.results_by_partition.push(result);
        }
        response.results_by_topic_v3_and_below.push(topic_result);
    }
    match outcome {
        Ok(durable) => Ok(after_sync(request, response, durable, move |r, e| {
            for result in r.results_by_topic_v3_and_below.iter_mut().flat_map(|t| t.results_by_partition.iter_mut()) {
                result.partition_error_code = e.code(fenced_code);
            }
        })),
        Err(_) => respond(request, &response),
    }
}

pub(super) fn add_offsets_to_txn(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: AddOffsetsToTxnRequest = decode_body(request)?;
    let fenced_code = request.api_version >= ADD_OFFSETS_FENCED_FROM;
    let mut response = AddOffsetsToTxnResponse::default();
    // Every group's offsets live in the single `__consumer_offsets` partition.
    let outcome = match broker.groups().ensure_offsets_topic(broker) {
        Err(_) => Err(TxnError::CoordinatorNotAvailable),
        Ok(()) => broker.txns().add_partitions(
            broker,
            body.transactional_id.0.as_str(),
            body.producer_id.0,
            body.producer_epoch,
            vec![(OFFSETS_TOPIC.to_string(), 0)],
        ),
    };
    match outcome {
        Ok(durable) => Ok(after_sync(request, response, durable, move |r, e| r.error_code = e.code(fenced_code))),
        Err(error) => {
            response.error_code = error.code(fenced_code);
            respond(request, &response)
        }
    }
}

pub(super) fn end_txn(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: EndTxnRequest = decode_body(request)?;
    let fenced_code = request.api_version >= END_TXN_FENCED_FROM;
    let transactional_id = body.transactional_id.0.as_str();
    let outcome =
        broker.txns().end_txn(broker, transactional_id, body.producer_id.0, body.producer_epoch, body.committed);
    let mut response = EndTxnResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    match outcome {
        Ok(durable) => Ok(after_sync(request, response, durable, move |r, e| r.error_code = e.code(fenced_code))),
        Err(error) => {
            tracing::debug!(transactional_id, %error, commit = body.committed, "EndTxn refused");
            response.error_code = error.code(fenced_code);
            respond(request, &response)
        }
    }
}

pub(super) fn txn_offset_commit(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: kafka_protocol::messages::TxnOffsetCommitRequest = decode_body(request)?;
    let version = request.api_version;
    let fenced_code = version >= TXN_OFFSET_COMMIT_FENCED_FROM;
    let partitions: Vec<CommitPartition> = body
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(move |p| CommitPartition {
                topic: topic.name.0.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: if version >= 2 { p.committed_leader_epoch } else { -1 },
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
            })
        })
        .collect();
    let count = partitions.len();
    let verified = broker.txns().verify(body.transactional_id.0.as_str(), body.producer_id.0, body.producer_epoch);
    let CommitReply { results, durable } = match verified {
        Err(error) => {
            let code = error.code(fenced_code);
            return respond(request, &txn_commit_response(&body, std::iter::repeat_n(code, count)));
        }
        Ok(()) => broker.groups().txn_commit(
            broker,
            TxnCommitRequest {
                group_id: body.group_id.0.to_string(),
                producer_id: body.producer_id.0,
                producer_epoch: body.producer_epoch,
                member_id: body.member_id.to_string(),
                group_instance_id: body.group_instance_id.as_ref().map(|i| i.to_string()),
                generation_id: body.generation_id,
                partitions,
            },
        ),
    };
    let codes = results.into_iter().map(|r| r.err().map_or(0, |e| e.code()));
    let response = txn_commit_response(&body, codes);
    let Some(durable) = durable else { return respond(request, &response) };
    let (api, correlation_id) = (request.api_key, request.header.correlation_id);
    Ok(Reply::Later(Box::pin(async move {
        let mut response = response;
        if let Err(error) = durable.wait().await {
            for p in response.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                if p.error_code == 0 {
                    p.error_code = error.code();
                }
            }
        }
        encode_response(api, correlation_id, version, &response).unwrap_or_default()
    })))
}

fn txn_commit_response(
    body: &kafka_protocol::messages::TxnOffsetCommitRequest,
    mut codes: impl Iterator<Item = i16>,
) -> kafka_protocol::messages::TxnOffsetCommitResponse {
    let mut response = kafka_protocol::messages::TxnOffsetCommitResponse::default();
    for topic in &body.topics {
        let mut topic_response = TxnOffsetCommitResponseTopic::default();
        topic_response.name = topic.name.clone();
        for p in &topic.partitions {
            let mut partition = TxnOffsetCommitResponsePartition::default();
            partition.partition_index = p.partition_index;
            partition.error_code = codes.next().unwrap_or(0);
            topic_response.partitions.push(partition);
        }
        response.topics.push(topic_response);
    }
    response
}

pub(super) fn list_transactions(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: ListTransactionsRequest = decode_body(request)?;
    let mut response = ListTransactionsResponse::default();
    for txn in broker.txns().list() {
        let state_ok = body.state_filters.is_empty() || body.state_filters.iter().any(|s| s.as_str() == txn.state);
        let producer_ok =
            body.producer_id_filters.is_empty() || body.producer_id_filters.contains(&ProducerId(txn.producer_id));
        if state_ok && producer_ok {
            let mut listed = ListedTransaction::default();
            listed.transactional_id = TransactionalId(text(txn.transactional_id));
            listed.producer_id = ProducerId(txn.producer_id);
            listed.transaction_state = text(txn.state);
            response.transaction_states.push(listed);
        }
    }
    respond(request, &response)
}

pub(super) fn describe_transactions(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: DescribeTransactionsRequest = decode_body(request)?;
    let all = broker.txns().list();
    let mut response = DescribeTransactionsResponse::default();
    for id in &body.transactional_ids {
        let mut state = TransactionState::default();
        state.transactional_id = id.clone();
        match all.iter().find(|t| t.transactional_id == id.0.as_str()) {
            None => state.error_code = ResponseError::TransactionalIdNotFound.code(),
            Some(txn) => {
                state.transaction_state = text(txn.state);
                state.transaction_timeout_ms = txn.timeout_ms;
                state.transaction_start_time_ms = txn.start_ms;
                state.producer_id = ProducerId(txn.producer_id);
                state.producer_epoch = txn.producer_epoch;
                for (topic, partition) in &txn.partitions {
                    match state.topics.last_mut() {
                        Some(last) if last.topic.0.as_str() == topic => last.partitions.push(*partition),
                        _ => {
                            let mut data = TopicData::default();
                            data.topic = TopicName(text(topic.clone()));
                            data.partitions = vec![*partition];
                            state.topics.push(data);
                        }
                    }
                }
            }
        }
        response.transaction_states.push(state);
    }
    respond(request, &response)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};

    fn init(id: &str, timeout_ms: i32) -> InitProducerIdRequest {
        let mut request = InitProducerIdRequest::default();
        request.transactional_id = Some(TransactionalId(text(id)));
        request.transaction_timeout_ms = timeout_ms;
        request.producer_id = ProducerId(-1);
        request.producer_epoch = -1;
        request
    }

    fn add(id: &str, producer_id: i64, epoch: i16, topics: &[(&str, i32)]) -> AddPartitionsToTxnRequest {
        let mut request = AddPartitionsToTxnRequest::default();
        request.v3_and_below_transactional_id = TransactionalId(text(id));
        request.v3_and_below_producer_id = ProducerId(producer_id);
        request.v3_and_below_producer_epoch = epoch;
        for (name, partition) in topics {
            let mut topic = AddPartitionsToTxnTopic::default();
            topic.name = TopicName(text(*name));
            topic.partitions = vec![*partition];
            request.v3_and_below_topics.push(topic);
        }
        request
    }

    fn produce(batch: bytes::Bytes) -> ProduceRequest {
        let mut data = PartitionProduceData::default();
        data.index = 0;
        data.records = Some(batch);
        let mut topic = TopicProduceData::default();
        topic.name = TopicName(text("t"));
        topic.partition_data = vec![data];
        let mut request = ProduceRequest::default();
        request.acks = 1;
        request.timeout_ms = 5_000;
        request.transactional_id = Some(TransactionalId(text("tx")));
        request.topic_data = vec![topic];
        request
    }

    #[tokio::test]
    async fn errors_follow_the_request_version() {
        let (_dir, broker) = broker();
        broker.auto_create_topic("t").expect("topic");
        let refused: InitProducerIdResponse = call(&broker, ApiKey::InitProducerId, 4, &init("tx", 900_001)).await;
        assert_eq!(refused.error_code, ResponseError::InvalidTransactionTimeout.code());
        let first: InitProducerIdResponse = call(&broker, ApiKey::InitProducerId, 4, &init("tx", 10_000)).await;
        assert_eq!((first.error_code, first.producer_epoch), (0, 0));
        let second: InitProducerIdResponse = call(&broker, ApiKey::InitProducerId, 1, &init("tx", 10_000)).await;
        assert_eq!((second.error_code, second.producer_id, second.producer_epoch), (0, first.producer_id, 1));
        let pid = first.producer_id.0;
        for (version, expected) in [(1i16, ResponseError::InvalidProducerEpoch), (3, ResponseError::ProducerFenced)] {
            let mut end = EndTxnRequest::default();
            end.transactional_id = TransactionalId(text("tx"));
            end.producer_id = ProducerId(pid);
            end.producer_epoch = 0;
            end.committed = true;
            let response: EndTxnResponse = call(&broker, ApiKey::EndTxn, version, &end).await;
            assert_eq!(response.error_code, expected.code(), "EndTxn v{version} from the fenced epoch");
        }
        let unknown: AddPartitionsToTxnResponse =
            call(&broker, ApiKey::AddPartitionsToTxn, 3, &add("tx", pid, 1, &[("t", 0), ("missing", 0)])).await;
        let codes: Vec<i16> = unknown
            .results_by_topic_v3_and_below
            .iter()
            .flat_map(|t| t.results_by_partition.iter().map(|p| p.partition_error_code))
            .collect();
        assert_eq!(
            codes,
            vec![ResponseError::OperationNotAttempted.code(), ResponseError::UnknownTopicOrPartition.code()]
        );
        // Transactional data for a partition never added is refused; so is a forged marker.
        let batch = crate::protocol::batch::build_batch(1 << 4, 0, 1, 1, pid, 1, 0, 1, b"x").freeze();
        let response: ProduceResponse = call(&broker, ApiKey::Produce, 9, &produce(batch.clone())).await;
        assert_eq!(response.responses[0].partition_responses[0].error_code, ResponseError::InvalidTxnState.code());
        let forged = crate::storage::encode_marker(pid, 1, true, 0, 1);
        let response: ProduceResponse = call(&broker, ApiKey::Produce, 9, &produce(forged)).await;
        assert_eq!(response.responses[0].partition_responses[0].error_code, ResponseError::InvalidRecord.code());
        let added: AddPartitionsToTxnResponse =
            call(&broker, ApiKey::AddPartitionsToTxn, 3, &add("tx", pid, 1, &[("t", 0)])).await;
        assert_eq!(added.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code, 0);
        let response: ProduceResponse = call(&broker, ApiKey::Produce, 9, &produce(batch)).await;
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
        let listed: ListTransactionsResponse =
            call(&broker, ApiKey::ListTransactions, 0, &ListTransactionsRequest::default()).await;
        assert_eq!(listed.transaction_states.len(), 1);
        assert_eq!(listed.transaction_states[0].transaction_state.as_str(), "Ongoing");
        let mut describe = DescribeTransactionsRequest::default();
        describe.transactional_ids = vec![TransactionalId(text("tx")), TransactionalId(text("nope"))];
        let described: DescribeTransactionsResponse = call(&broker, ApiKey::DescribeTransactions, 0, &describe).await;
        assert_eq!(described.transaction_states[0].topics.len(), 1);
        assert_eq!(described.transaction_states[1].error_code, ResponseError::TransactionalIdNotFound.code());
    }
}
