//! Metadata: brokers, topics and partition leaders; auto-creates topics when allowed.

use std::sync::Arc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::ResponseError;

use super::{error_code, respond, text, Reply};
use crate::metadata::{validate_topic_name, TopicMetadata};
use crate::protocol::frame::{decode_body, FrameError, RequestFrame};
use crate::Broker;

pub(super) fn handle(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: MetadataRequest = decode_body(request)?;
    let version = request.api_version;
    let node_id = broker.config.node_id;
    let (host, port) = broker.config.advertised();
    let mut response = MetadataResponse::default();
    let mut node = MetadataResponseBroker::default();
    node.node_id = BrokerId(node_id);
    node.host = text(host);
    node.port = port;
    response.brokers = vec![node];
    if version >= 2 {
        response.cluster_id = Some(text(broker.cluster_id.clone()));
    }
    response.controller_id = BrokerId(node_id);

    // v0 sends an empty list for "all topics"; v1+ sends null.
    let all_topics = body.topics.is_none() || (version == 0 && body.topics.as_ref().is_some_and(|t| t.is_empty()));
    let allow_auto_create = (version < 4 || body.allow_auto_topic_creation) && broker.config.auto_create_topics;
    if all_topics {
        response.topics = broker.metadata().topics.values().map(|topic| topic_entry(broker, topic)).collect();
    } else {
        for requested in body.topics.unwrap_or_default() {
            let name = match &requested.name {
                Some(name) => name.0.to_string(),
                None => {
                    // v10+: lookup by topic id.
                    let found = broker.metadata().topics.values().find(|t| t.topic_id == requested.topic_id).cloned();
                    match found {
                        Some(topic) => {
                            response.topics.push(topic_entry(broker, &topic));
                        }
                        None => {
                            let mut entry = MetadataResponseTopic::default();
                            entry.error_code = ResponseError::UnknownTopicId.code();
                            entry.topic_id = requested.topic_id;
                            response.topics.push(entry);
                        }
                    }
                    continue;
                }
            };
            response.topics.push(lookup_or_create(broker, &name, allow_auto_create));
        }
    }
    respond(request, &response)
}

fn lookup_or_create(broker: &Arc<Broker>, name: &str, allow_auto_create: bool) -> MetadataResponseTopic {
    let failed = |code: i16| {
        let mut entry = MetadataResponseTopic::default();
        entry.error_code = code;
        entry.name = Some(TopicName(text(name)));
        entry
    };
    if let Some(topic) = broker.topic(name) {
        return topic_entry(broker, &topic);
    }
    if validate_topic_name(name).is_err() {
        return failed(ResponseError::InvalidTopicException.code());
    }
    if !allow_auto_create {
        return failed(ResponseError::UnknownTopicOrPartition.code());
    }
    if let Err(e) = broker.auto_create_topic(name) {
        let (code, message) = error_code(&e);
        tracing::warn!(topic = name, error = %message, "auto-creating topic failed");
        return failed(code);
    }
    match broker.topic(name) {
        Some(topic) => topic_entry(broker, &topic),
        None => failed(ResponseError::UnknownTopicOrPartition.code()),
    }
}

fn topic_entry(broker: &Broker, topic: &TopicMetadata) -> MetadataResponseTopic {
    let node_id = BrokerId(broker.config.node_id);
    let mut entry = MetadataResponseTopic::default();
    entry.name = Some(TopicName(text(topic.name.clone())));
    entry.topic_id = topic.topic_id;
    entry.is_internal = topic.name.starts_with("__");
    entry.partitions = (0..topic.partitions)
        .map(|index| {
            let mut partition = MetadataResponsePartition::default();
            partition.partition_index = index;
            partition.leader_id = node_id;
            // One leader ever on a single node: epoch 0, never reused for another leader.
            partition.leader_epoch = 0;
            partition.replica_nodes = vec![node_id];
            partition.isr_nodes = vec![node_id];
            partition
        })
        .collect();
    entry
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::ApiKey;

    fn request_for(name: &str, auto_create: bool) -> MetadataRequest {
        let mut topic = MetadataRequestTopic::default();
        topic.name = Some(TopicName(text(name)));
        let mut request = MetadataRequest::default();
        request.topics = Some(vec![topic]);
        request.allow_auto_topic_creation = auto_create;
        request
    }

    #[tokio::test]
    async fn auto_creates_requested_topics_and_lists_them_at_every_version() {
        let (_dir, broker) = broker();
        for version in [1, 4, 9, 12] {
            let name = format!("events-v{version}");
            let response: MetadataResponse = call(&broker, ApiKey::Metadata, version, &request_for(&name, true)).await;
            assert_eq!(response.topics.len(), 1);
            assert_eq!(response.topics[0].error_code, 0, "v{version}");
            assert_eq!(response.topics[0].partitions.len(), broker.config.num_partitions as usize);
            assert_eq!(response.brokers.len(), 1);
        }
        let mut everything = MetadataRequest::default();
        everything.topics = None;
        let all: MetadataResponse = call(&broker, ApiKey::Metadata, 12, &everything).await;
        assert_eq!(all.topics.len(), 4);
    }

    #[tokio::test]
    async fn no_auto_create_means_unknown_topic_and_bad_names_are_invalid() {
        let (_dir, broker) = broker();
        let response: MetadataResponse = call(&broker, ApiKey::Metadata, 9, &request_for("absent", false)).await;
        assert_eq!(response.topics[0].error_code, ResponseError::UnknownTopicOrPartition.code());
        assert!(broker.topic("absent").is_none());
        let response: MetadataResponse = call(&broker, ApiKey::Metadata, 9, &request_for("bad/name", true)).await;
        assert_eq!(response.topics[0].error_code, ResponseError::InvalidTopicException.code());
    }
}
