//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions, DescribeCluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeClusterRequest, DescribeClusterResponse, TopicName,
};
use kafka_protocol::ResponseError;

use super::{error_code, respond, text, Reply};
use crate::broker::BrokerError;
use crate::config::TOPIC_CONFIGS;
use crate::metadata::MetadataCommand;
use crate::protocol::frame::{decode_body, FrameError, RequestFrame};
use crate::Broker;

pub(super) fn create_topics(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: CreateTopicsRequest = decode_body(request)?;
    let version = request.api_version;
    let mut response = CreateTopicsResponse::default();
    for topic in &body.topics {
        let name = topic.name.0.to_string();
        let mut result = CreatableTopicResult::default();
        result.name = topic.name.clone();
        result.num_partitions = -1;
        result.replication_factor = -1;
        let outcome = create_one(broker, topic, body.validate_only);
        match outcome {
            Ok(()) => {
                if let Some(created) = broker.topic(&name).filter(|_| !body.validate_only) {
                    result.topic_id = created.topic_id;
                    result.num_partitions = created.partitions;
                    result.replication_factor = 1;
                    if version >= 5 {
                        result.configs = Some(topic_configs(broker, &created.configs));
                    }
                } else if body.validate_only {
                    result.num_partitions =
                        if topic.num_partitions == -1 { broker.config.num_partitions } else { topic.num_partitions };
                    result.replication_factor = 1;
                }
            }
            Err((code, message)) => {
                result.error_code = code;
                result.error_message = Some(text(message));
            }
        }
        response.topics.push(result);
    }
    respond(request, &response)
}

fn create_one(
    broker: &Broker,
    topic: &kafka_protocol::messages::create_topics_request::CreatableTopic,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    // One node holds one replica: a larger factor cannot be honoured, so refuse it.
    if topic.replication_factor > 1 || topic.replication_factor == 0 || topic.replication_factor < -1 {
        return Err((
            ResponseError::InvalidReplicationFactor.code(),
            format!("replication factor {} is not possible on a single broker; use 1 or -1", topic.replication_factor),
        ));
    }
    let partitions = if !topic.assignments.is_empty() {
        if topic.num_partitions != -1 {
            return Err((
                ResponseError::InvalidRequest.code(),
                "give either num_partitions or assignments, not both".into(),
            ));
        }
        topic.assignments.len() as i32
    } else if topic.num_partitions == -1 {
        broker.config.num_partitions
    } else {
        topic.num_partitions
    };
    let mut configs = BTreeMap::new();
    for config in &topic.configs {
        let Some(value) = &config.value else {
            return Err((
                ResponseError::InvalidConfig.code(),
                format!("config {} has a null value", config.name.as_str()),
            ));
        };
        configs.insert(config.name.to_string(), value.to_string());
    }
    let command = MetadataCommand::CreateTopic {
        name: topic.name.0.to_string(),
        topic_id: uuid::Uuid::new_v4().to_string(),
        partitions,
        configs,
    };
    let result = if validate_only {
        broker.metadata().check(&command).map_err(BrokerError::from)
    } else {
        broker.propose(command).map(|_| ())
    };
    result.map_err(|e| error_code(&e))
}

/// The topic's configs as CreateTopics v5+ reports them.
fn topic_configs(broker: &Broker, overrides: &BTreeMap<String, String>) -> Vec<CreatableTopicConfigs> {
    TOPIC_CONFIGS
        .iter()
        .map(|def| {
            let (value, source) = broker.config.resolve(overrides, def);
            let mut entry = CreatableTopicConfigs::default();
            entry.name = text(def.name);
            entry.value = Some(text(value));
            entry.config_source = source as i8;
            entry
        })
        .collect()
}

pub(super) fn delete_topics(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: DeleteTopicsRequest = decode_body(request)?;
    let mut response = DeleteTopicsResponse::default();
    // v6 names topics by name or id in `topics`; older versions list names in `topic_names`.
    let mut targets: Vec<(Option<String>, uuid::Uuid)> =
        body.topic_names.iter().map(|n| (Some(n.0.to_string()), uuid::Uuid::nil())).collect();
    targets.extend(body.topics.iter().map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)));
    for (name, topic_id) in targets {
        let mut result = DeletableTopicResult::default();
        let resolved = match &name {
            Some(name) => broker.topic(name),
            None => broker.metadata().topics.values().find(|t| t.topic_id == topic_id).cloned(),
        };
        result.name = name.clone().map(|n| TopicName(text(n)));
        result.topic_id = topic_id;
        match resolved {
            None => {
                result.error_code = if name.is_some() {
                    ResponseError::UnknownTopicOrPartition.code()
                } else {
                    ResponseError::UnknownTopicId.code()
                };
                result.error_message = Some(text("unknown topic"));
            }
            Some(topic) => {
                result.name = Some(TopicName(text(topic.name.clone())));
                result.topic_id = topic.topic_id;
                if let Err(e) = broker.propose(MetadataCommand::DeleteTopic { name: topic.name.clone() }) {
                    let (code, message) = error_code(&e);
                    result.error_code = code;
                    result.error_message = Some(text(message));
                }
            }
        }
        if request.api_version < 6 {
            result.topic_id = uuid::Uuid::nil();
        }
        if request.api_version < 5 {
            result.error_message = None;
        }
        response.responses.push(result);
    }
    respond(request, &response)
}

pub(super) fn create_partitions(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: CreatePartitionsRequest = decode_body(request)?;
    let mut response = CreatePartitionsResponse::default();
    for topic in &body.topics {
        let mut result = CreatePartitionsTopicResult::default();
        result.name = topic.name.clone();
        let command = MetadataCommand::CreatePartitions { name: topic.name.0.to_string(), total: topic.count };
        let outcome = if body.validate_only {
            broker.metadata().check(&command).map_err(BrokerError::from)
        } else {
            broker.propose(command).map(|_| ())
        };
        if let Err(e) = outcome {
            let (code, message) = error_code(&e);
            result.error_code = code;
            result.error_message = Some(text(message));
        }
        response.results.push(result);
    }
    respond(request, &response)
}

pub(super) fn describe_cluster(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let _body: DescribeClusterRequest = decode_body(request)?;
    let (host, port) = broker.config.advertised();
    let mut response = DescribeClusterResponse::default();
    response.cluster_id = text(broker.cluster_id.clone());
    response.controller_id = BrokerId(broker.config.node_id);
    let mut node = DescribeClusterBroker::default();
    node.broker_id = BrokerId(broker.config.node_id);
    node.host = text(host);
    node.port = port;
    response.brokers = vec![node];
    respond(request, &response)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::ApiKey;

    fn create(name: &str, partitions: i32, configs: &[(&str, &str)]) -> CreateTopicsRequest {
        let mut topic = CreatableTopic::default();
        topic.name = TopicName(text(name));
        topic.num_partitions = partitions;
        topic.replication_factor = -1;
        topic.configs = configs
            .iter()
            .map(|(k, v)| {
                let mut c = CreatableTopicConfig::default();
                c.name = text(*k);
                c.value = Some(text(*v));
                c
            })
            .collect();
        let mut request = CreateTopicsRequest::default();
        request.topics = vec![topic];
        request.timeout_ms = 1000;
        request
    }

    #[tokio::test]
    async fn create_reports_each_refusal_with_its_code() {
        let (_dir, broker) = broker();
        let ok: CreateTopicsResponse =
            call(&broker, ApiKey::CreateTopics, 7, &create("a", 3, &[("retention.ms", "1000")])).await;
        assert_eq!(ok.topics[0].error_code, 0);
        assert_eq!(ok.topics[0].num_partitions, 3);
        assert_eq!(broker.topic("a").expect("created").configs["retention.ms"], "1000");
        let cases = [
            (create("a", 1, &[]), ResponseError::TopicAlreadyExists.code()),
            (create("b", 0, &[]), ResponseError::InvalidPartitions.code()),
            (create("c", 1, &[("retention.ms", "soon")]), ResponseError::InvalidConfig.code()),
            (create("d", 1, &[("no.such.config", "1")]), ResponseError::InvalidConfig.code()),
            (create("bad name", 1, &[]), ResponseError::InvalidTopicException.code()),
        ];
        for (request, code) in cases {
            for version in [2i16, 5, 7] {
                let response: CreateTopicsResponse = call(&broker, ApiKey::CreateTopics, version, &request).await;
                assert_eq!(response.topics[0].error_code, code, "v{version} {:?}", request.topics[0].name);
            }
        }
        assert_eq!(broker.metadata().topics.len(), 1);
    }

    #[tokio::test]
    async fn delete_and_grow_partitions() {
        let (dir, broker) = broker();
        broker.auto_create_topic("t").expect("create");
        let mut grow = CreatePartitionsRequest::default();
        let mut topic = kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic::default();
        topic.name = TopicName(text("t"));
        topic.count = 4;
        grow.topics = vec![topic];
        let response: CreatePartitionsResponse = call(&broker, ApiKey::CreatePartitions, 3, &grow).await;
        assert_eq!(response.results[0].error_code, 0);
        assert!(broker.partition("t", 3).is_some());
        let again: CreatePartitionsResponse = call(&broker, ApiKey::CreatePartitions, 3, &grow).await;
        assert_eq!(again.results[0].error_code, ResponseError::InvalidPartitions.code());

        let mut delete = DeleteTopicsRequest::default();
        delete.topic_names = vec![TopicName(text("t"))];
        let response: DeleteTopicsResponse = call(&broker, ApiKey::DeleteTopics, 4, &delete).await;
        assert_eq!(response.responses[0].error_code, 0);
        assert!(broker.topic("t").is_none());
        assert!(!dir.path().join("log").join("t-0").exists(), "partition directories removed");
        let response: DeleteTopicsResponse = call(&broker, ApiKey::DeleteTopics, 4, &delete).await;
        assert_eq!(response.responses[0].error_code, ResponseError::UnknownTopicOrPartition.code());
    }
}
