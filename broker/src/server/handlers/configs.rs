//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics (and describing the broker).

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse as AlterResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::ResponseError;

use super::{error_code, respond, text, Reply};
use crate::broker::BrokerError;
use crate::config::{ConfigSource, TopicConfigDef, TOPIC_CONFIGS};
use crate::metadata::MetadataCommand;
use crate::protocol::frame::{decode_body, FrameError, RequestFrame};
use crate::Broker;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

pub(super) fn describe(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: DescribeConfigsRequest = decode_body(request)?;
    let version = request.api_version;
    let mut response = DescribeConfigsResponse::default();
    for resource in &body.resources {
        let mut result = DescribeConfigsResult::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        let name = resource.resource_name.to_string();
        let wanted = |config: &str| {
            resource.configuration_keys.as_ref().is_none_or(|keys| keys.iter().any(|k| k.as_str() == config))
        };
        match resource.resource_type {
            RESOURCE_TOPIC => match broker.topic(&name) {
                Some(topic) => {
                    for def in TOPIC_CONFIGS.iter().filter(|d| wanted(d.name)) {
                        result.configs.push(topic_entry(broker, &topic.configs, def, body.include_synonyms, version));
                    }
                }
                None => {
                    result.error_code = ResponseError::UnknownTopicOrPartition.code();
                    result.error_message = Some(text(format!("unknown topic {name}")));
                }
            },
            RESOURCE_BROKER if name.is_empty() || name == broker.config.node_id.to_string() => {
                for (config, value, source, config_type) in broker_entries(broker) {
                    if wanted(&config) {
                        let mut entry = DescribeConfigsResourceResult::default();
                        entry.name = text(config);
                        entry.value = Some(text(value));
                        entry.read_only = true;
                        entry.config_source = source as i8;
                        if version >= 3 {
                            entry.config_type = config_type;
                        }
                        result.configs.push(entry);
                    }
                }
            }
            RESOURCE_BROKER => {
                result.error_code = ResponseError::InvalidRequest.code();
                result.error_message = Some(text(format!("this is broker {}", broker.config.node_id)));
            }
            other => {
                result.error_code = ResponseError::InvalidRequest.code();
                result.error_message = Some(text(format!("unsupported resource type {other}")));
            }
        }
        response.results.push(result);
    }
    respond(request, &response)
}

fn topic_entry(
    broker: &Broker,
    overrides: &BTreeMap<String, String>,
    def: &TopicConfigDef,
    include_synonyms: bool,
    version: i16,
) -> DescribeConfigsResourceResult {
    let (value, source) = broker.config.resolve(overrides, def);
    let mut entry = DescribeConfigsResourceResult::default();
    entry.name = text(def.name);
    entry.value = Some(text(value));
    entry.config_source = source as i8;
    if version >= 3 {
        entry.config_type = def.config_type();
    }
    if include_synonyms {
        // Kafka lists the chain a value is resolved through, most specific first.
        if let Some(value) = overrides.get(def.name) {
            entry.synonyms.push(synonym(def.name, value, ConfigSource::TopicOverride));
        }
        if let Some(value) = broker.config.topic_defaults.get(def.broker_name) {
            entry.synonyms.push(synonym(def.broker_name, value, ConfigSource::StaticBroker));
        }
        entry.synonyms.push(synonym(def.broker_name, def.default, ConfigSource::Default));
    }
    entry
}

fn synonym(name: &str, value: &str, source: ConfigSource) -> DescribeConfigsSynonym {
    let mut synonym = DescribeConfigsSynonym::default();
    synonym.name = text(name);
    synonym.value = Some(text(value));
    synonym.source = source as i8;
    synonym
}

/// The broker's settings as DescribeConfigs lists them: name, value, source, type.
fn broker_entries(broker: &Broker) -> Vec<(String, String, ConfigSource, i8)> {
    let config = &broker.config;
    let mut entries = vec![
        ("num.partitions".to_string(), config.num_partitions.to_string(), ConfigSource::StaticBroker, 3),
        ("auto.create.topics.enable".to_string(), config.auto_create_topics.to_string(), ConfigSource::StaticBroker, 1),
        (
            "socket.request.max.bytes".to_string(),
            config.socket_request_max_bytes.to_string(),
            ConfigSource::StaticBroker,
            3,
        ),
        (
            "queued.max.request.bytes".to_string(),
            config.queued_max_request_bytes.to_string(),
            ConfigSource::StaticBroker,
            5,
        ),
        ("max.connections".to_string(), config.max_connections.to_string(), ConfigSource::StaticBroker, 3),
        (
            "log.retention.check.interval.ms".to_string(),
            config.retention_check_interval_ms.to_string(),
            ConfigSource::StaticBroker,
            5,
        ),
        ("log.cleaner.enable".to_string(), config.cleaner.enable.to_string(), ConfigSource::StaticBroker, 1),
        ("log.cleaner.threads".to_string(), config.cleaner.threads.to_string(), ConfigSource::StaticBroker, 3),
        (
            "log.cleaner.dedupe.buffer.size".to_string(),
            config.cleaner.dedupe_buffer_bytes.to_string(),
            ConfigSource::StaticBroker,
            5,
        ),
        ("log.cleaner.backoff.ms".to_string(), config.cleaner.backoff_ms.to_string(), ConfigSource::StaticBroker, 5),
    ];
    for def in TOPIC_CONFIGS {
        let (value, source) = config.topic_default(def);
        entries.push((def.broker_name.to_string(), value, source, def.config_type()));
    }
    for (name, value, config_type) in config.transactions.entries() {
        entries.push((name.to_string(), value, ConfigSource::StaticBroker, config_type));
    }
    entries
}

pub(super) fn incremental_alter(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: IncrementalAlterConfigsRequest = decode_body(request)?;
    let mut response = IncrementalAlterConfigsResponse::default();
    for resource in &body.resources {
        let mut result = IncrementalResult::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        let mut set = BTreeMap::new();
        let mut delete = Vec::new();
        let mut refused = None;
        for config in &resource.configs {
            match (config.config_operation, &config.value) {
                (OP_SET, Some(value)) => {
                    set.insert(config.name.to_string(), value.to_string());
                }
                (OP_DELETE, _) => delete.push(config.name.to_string()),
                (OP_SET, None) => refused = Some(format!("config {} has a null value", config.name.as_str())),
                (op, _) => {
                    refused = Some(format!("config operation {op} is not supported for {}", config.name.as_str()))
                }
            }
        }
        let outcome = match refused {
            Some(message) => Err((ResponseError::InvalidConfig.code(), message)),
            None => alter_topic(
                broker,
                resource.resource_type,
                &resource.resource_name.to_string(),
                set,
                delete,
                body.validate_only,
            ),
        };
        if let Err((code, message)) = outcome {
            result.error_code = code;
            result.error_message = Some(text(message));
        }
        response.responses.push(result);
    }
    respond(request, &response)
}

/// Legacy AlterConfigs replaces a topic's whole set of overrides.
pub(super) fn alter(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: AlterConfigsRequest = decode_body(request)?;
    let mut response = AlterConfigsResponse::default();
    for resource in &body.resources {
        let mut result = AlterResult::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        let name = resource.resource_name.to_string();
        let set: BTreeMap<String, String> = resource
            .configs
            .iter()
            .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
            .collect();
        let delete = broker
            .topic(&name)
            .map(|t| t.configs.keys().filter(|k| !set.contains_key(*k)).cloned().collect())
            .unwrap_or_default();
        if let Err((code, message)) =
            alter_topic(broker, resource.resource_type, &name, set, delete, body.validate_only)
        {
            result.error_code = code;
            result.error_message = Some(text(message));
        }
        response.responses.push(result);
    }
    respond(request, &response)
}

fn alter_topic(
    broker: &Broker,
    resource_type: i8,
    name: &str,
    set: BTreeMap<String, String>,
    delete: Vec<String>,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    if resource_type != RESOURCE_TOPIC {
        return Err((ResponseError::InvalidRequest.code(), "only topic configs can be altered at runtime".to_string()));
    }
    let command = MetadataCommand::AlterTopicConfig { name: name.to_string(), set, delete };
    let outcome = if validate_only {
        broker.metadata().check(&command).map_err(BrokerError::from)
    } else {
        broker.propose(command).map(|_| ())
    };
    outcome.map_err(|e| error_code(&e))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
    use kafka_protocol::messages::ApiKey;

    fn describe_topic(name: &str) -> DescribeConfigsRequest {
        let mut resource = DescribeConfigsResource::default();
        resource.resource_type = RESOURCE_TOPIC;
        resource.resource_name = text(name);
        resource.configuration_keys = None;
        let mut request = DescribeConfigsRequest::default();
        request.resources = vec![resource];
        request.include_synonyms = true;
        request
    }

    fn set(name: &str, key: &str, value: &str) -> IncrementalAlterConfigsRequest {
        let mut config = AlterableConfig::default();
        config.name = text(key);
        config.config_operation = OP_SET;
        config.value = Some(text(value));
        let mut resource = AlterConfigsResource::default();
        resource.resource_type = RESOURCE_TOPIC;
        resource.resource_name = text(name);
        resource.configs = vec![config];
        let mut request = IncrementalAlterConfigsRequest::default();
        request.resources = vec![resource];
        request
    }

    #[tokio::test]
    async fn every_config_is_described_and_an_alter_shows_as_an_override() {
        let (_dir, broker) = broker();
        broker.auto_create_topic("t").expect("create");
        let before: DescribeConfigsResponse = call(&broker, ApiKey::DescribeConfigs, 4, &describe_topic("t")).await;
        assert_eq!(before.results[0].configs.len(), TOPIC_CONFIGS.len());
        assert!(before.results[0].configs.iter().all(|c| c.config_source == ConfigSource::Default as i8));

        let altered: IncrementalAlterConfigsResponse =
            call(&broker, ApiKey::IncrementalAlterConfigs, 1, &set("t", "retention.ms", "1234")).await;
        assert_eq!(altered.responses[0].error_code, 0);
        let after: DescribeConfigsResponse = call(&broker, ApiKey::DescribeConfigs, 1, &describe_topic("t")).await;
        let retention = after.results[0].configs.iter().find(|c| c.name.as_str() == "retention.ms").expect("listed");
        assert_eq!(retention.value.as_ref().map(|v| v.as_str()), Some("1234"));
        assert_eq!(retention.config_source, ConfigSource::TopicOverride as i8);

        let bad: IncrementalAlterConfigsResponse =
            call(&broker, ApiKey::IncrementalAlterConfigs, 0, &set("t", "segment.bytes", "-1")).await;
        assert_eq!(bad.responses[0].error_code, ResponseError::InvalidConfig.code());
        let unknown: DescribeConfigsResponse = call(&broker, ApiKey::DescribeConfigs, 4, &describe_topic("nope")).await;
        assert_eq!(unknown.results[0].error_code, ResponseError::UnknownTopicOrPartition.code());
    }
}
