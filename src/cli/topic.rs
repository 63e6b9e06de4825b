//! `runnel topic create|list|describe|delete|add-partitions|alter-config`.

use std::io::Write;

use anyhow::{bail, ensure, Context, Result};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResourceResult;
use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::{
    ApiKey, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::client::REQUEST_TIMEOUT;
use super::cluster::Cluster;
use super::error;
use super::offsets::{list_offsets, OffsetSpec};
use super::{ConnectArgs, TopicCommand};

/// DescribeConfigs / IncrementalAlterConfigs resource type for topics.
const RESOURCE_TYPE_TOPIC: i8 = 2;
/// IncrementalAlterConfigs operations.
const CONFIG_OPERATION_SET: i8 = 0;
const CONFIG_OPERATION_DELETE: i8 = 1;
/// Internal topics (`__consumer_offsets`, …) are hidden from `list` by Kafka convention.
const INTERNAL_TOPIC_PREFIX: &str = "__";

pub(super) async fn run(connect: &ConnectArgs, command: TopicCommand) -> Result<()> {
    let mut cluster = Cluster::connect(&connect.brokers).await?;
    match command {
        TopicCommand::Create { name, partitions, configs } => create(&mut cluster, &name, partitions, &configs).await,
        TopicCommand::List { all } => list(&mut cluster, all).await,
        TopicCommand::Describe { name } => describe(&mut cluster, &name).await,
        TopicCommand::Delete { name } => delete(&mut cluster, &name).await,
        TopicCommand::AddPartitions { name, num, total } => add_partitions(&mut cluster, &name, num, total).await,
        TopicCommand::AlterConfig { name, set, delete } => alter_config(&mut cluster, &name, &set, &delete).await,
    }
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn timeout_ms() -> i32 {
    i32::try_from(REQUEST_TIMEOUT.as_millis()).unwrap_or(i32::MAX)
}

async fn create(
    cluster: &mut Cluster,
    name: &str,
    partitions: Option<i32>,
    configs: &[(String, String)],
) -> Result<()> {
    let client = cluster.any();
    let version = client.version(ApiKey::CreateTopics)?;
    let mut topic = CreatableTopic::default();
    topic.name = topic_name(name);
    // -1 ("use the broker default") only exists from v4 on.
    topic.num_partitions = match partitions {
        Some(count) => count,
        None if version >= 4 => -1,
        None => bail!("the broker's CreateTopics v{version} needs an explicit --partitions"),
    };
    topic.replication_factor = 1;
    topic.configs = configs
        .iter()
        .map(|(key, value)| {
            let mut config = CreatableTopicConfig::default();
            config.name = StrBytes::from_string(key.clone());
            config.value = Some(StrBytes::from_string(value.clone()));
            config
        })
        .collect();
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![topic];
    request.timeout_ms = timeout_ms();
    let response = client.send(&request, version).await?;
    let result = response
        .topics
        .iter()
        .find(|result| result.name.as_str() == name)
        .with_context(|| format!("broker returned no CreateTopics result for '{name}'"))?;
    if result.error_code != 0 {
        bail!(
            "could not create topic '{name}': {}",
            error::describe(result.error_code, result.error_message.as_deref())
        );
    }
    println!("Created topic {name}.");
    Ok(())
}

async fn list(cluster: &mut Cluster, include_internal: bool) -> Result<()> {
    let names = cluster.topic_names().await?;
    let mut out = std::io::stdout().lock();
    for name in names.iter().filter(|name| include_internal || !name.starts_with(INTERNAL_TOPIC_PREFIX)) {
        writeln!(out, "{name}")?;
    }
    out.flush()?;
    Ok(())
}

async fn describe(cluster: &mut Cluster, name: &str) -> Result<()> {
    let topic = cluster.topic(name, false).await?;
    let ids: Vec<i32> = topic.partitions.iter().map(|partition| partition.id).collect();
    let earliest = list_offsets(cluster, &topic, &ids, OffsetSpec::Earliest).await?;
    let latest = list_offsets(cluster, &topic, &ids, OffsetSpec::Latest).await?;
    let configs = describe_configs(cluster, name).await?;

    let mut out = std::io::stdout().lock();
    writeln!(out, "Topic: {name}\tPartitionCount: {}", topic.partitions.len())?;
    for partition in &topic.partitions {
        // list_offsets guarantees an entry for every id it was asked about.
        let start = earliest.get(&partition.id).copied().unwrap_or(-1);
        let end = latest.get(&partition.id).copied().unwrap_or(-1);
        writeln!(
            out,
            "\tPartition: {}\tLeader: {}\tLogStartOffset: {start}\tLogEndOffset: {end}",
            partition.id, partition.leader
        )?;
    }
    writeln!(out, "Configs:")?;
    for config in &configs {
        writeln!(out, "\t{}", render_config(config))?;
    }
    out.flush()?;
    Ok(())
}

/// CreatePartitions to `total` partitions, or to the current count plus `num`.
async fn add_partitions(cluster: &mut Cluster, name: &str, num: Option<i32>, total: Option<i32>) -> Result<()> {
    let current = i32::try_from(cluster.topic(name, false).await?.partitions.len())
        .with_context(|| format!("topic '{name}' reports more partitions than Kafka can count"))?;
    let count = match (num, total) {
        (_, Some(total)) => total,
        (Some(num), None) => current
            .checked_add(num)
            .with_context(|| format!("{current} + {num} partitions is more than Kafka allows"))?,
        (None, None) => bail!("say how many partitions: --num N to add N, or --total N for the new count"),
    };
    let client = cluster.any();
    let version = client.version(ApiKey::CreatePartitions)?;
    let mut topic = CreatePartitionsTopic::default();
    topic.name = topic_name(name);
    topic.count = count;
    // Null: the broker places the new partitions itself.
    topic.assignments = None;
    let mut request = CreatePartitionsRequest::default();
    request.topics = vec![topic];
    request.timeout_ms = timeout_ms();
    let response = client.send(&request, version).await?;
    let result = response
        .results
        .iter()
        .find(|result| result.name.as_str() == name)
        .with_context(|| format!("broker returned no CreatePartitions result for '{name}'"))?;
    if result.error_code != 0 {
        bail!(
            "could not add partitions to topic '{name}' ({current} now, {count} asked): {}",
            error::describe(result.error_code, result.error_message.as_deref())
        );
    }
    println!("Topic {name} now has {count} partitions (was {current}).");
    Ok(())
}

async fn describe_configs(cluster: &mut Cluster, name: &str) -> Result<Vec<DescribeConfigsResourceResult>> {
    let client = cluster.any();
    let version = client.version(ApiKey::DescribeConfigs)?;
    let mut resource = DescribeConfigsResource::default();
    resource.resource_type = RESOURCE_TYPE_TOPIC;
    resource.resource_name = StrBytes::from_string(name.to_string());
    // Null means "every key"; the crate defaults to an empty list, which means none.
    resource.configuration_keys = None;
    let mut request = DescribeConfigsRequest::default();
    request.resources = vec![resource];
    let response = client.send(&request, version).await?;
    let result = response
        .results
        .into_iter()
        .find(|result| result.resource_type == RESOURCE_TYPE_TOPIC && result.resource_name.as_str() == name)
        .with_context(|| format!("broker returned no configs for topic '{name}'"))?;
    if result.error_code != 0 {
        bail!(
            "describing configs of topic '{name}' failed: {}",
            error::describe(result.error_code, result.error_message.as_deref())
        );
    }
    let mut configs = result.configs;
    configs.sort_by(|left, right| left.name.as_str().cmp(right.name.as_str()));
    Ok(configs)
}

/// `name=value  source=DEFAULT_CONFIG`, hiding sensitive values like Kafka's tools do.
fn render_config(config: &DescribeConfigsResourceResult) -> String {
    let value =
        if config.is_sensitive { "<sensitive>" } else { config.value.as_ref().map_or("null", |value| value.as_str()) };
    format!("{}={value}\tsource={}", config.name.as_str(), config_source_name(config.config_source))
}

/// Kafka's `DescribeConfigsResponse.ConfigSource` names.
fn config_source_name(source: i8) -> &'static str {
    match source {
        1 => "DYNAMIC_TOPIC_CONFIG",
        2 => "DYNAMIC_BROKER_CONFIG",
        3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        4 => "STATIC_BROKER_CONFIG",
        5 => "DEFAULT_CONFIG",
        6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
        7 => "CLIENT_METRICS_CONFIG",
        8 => "GROUP_CONFIG",
        _ => "UNKNOWN",
    }
}

async fn delete(cluster: &mut Cluster, name: &str) -> Result<()> {
    let client = cluster.any();
    let version = client.version(ApiKey::DeleteTopics)?;
    let mut request = DeleteTopicsRequest::default();
    // v6 names topics in `topics` (name or id); v1–5 in `topic_names`.
    if version >= 6 {
        let mut state = DeleteTopicState::default();
        state.name = Some(topic_name(name));
        request.topics = vec![state];
    } else {
        request.topic_names = vec![topic_name(name)];
    }
    request.timeout_ms = timeout_ms();
    let response = client.send(&request, version).await?;
    let result = response
        .responses
        .iter()
        .find(|result| result.name.as_ref().is_some_and(|result_name| result_name.as_str() == name))
        .with_context(|| format!("broker returned no DeleteTopics result for '{name}'"))?;
    if result.error_code != 0 {
        bail!(
            "could not delete topic '{name}': {}",
            error::describe(result.error_code, result.error_message.as_deref())
        );
    }
    println!("Deleted topic {name}.");
    Ok(())
}

async fn alter_config(cluster: &mut Cluster, name: &str, set: &[(String, String)], delete: &[String]) -> Result<()> {
    ensure!(!set.is_empty() || !delete.is_empty(), "nothing to change: give --set KEY=VALUE and/or --delete KEY");
    let client = cluster.any();
    let version = client.version(ApiKey::IncrementalAlterConfigs)?;
    let mut resource = AlterConfigsResource::default();
    resource.resource_type = RESOURCE_TYPE_TOPIC;
    resource.resource_name = StrBytes::from_string(name.to_string());
    resource.configs = alterations(set, delete);
    let mut request = IncrementalAlterConfigsRequest::default();
    request.resources = vec![resource];
    let response = client.send(&request, version).await?;
    let result = response
        .responses
        .iter()
        .find(|result| result.resource_type == RESOURCE_TYPE_TOPIC && result.resource_name.as_str() == name)
        .with_context(|| format!("broker returned no IncrementalAlterConfigs result for topic '{name}'"))?;
    if result.error_code != 0 {
        bail!(
            "could not alter configs of topic '{name}': {}",
            error::describe(result.error_code, result.error_message.as_deref())
        );
    }
    println!("Updated configs of topic {name}.");
    Ok(())
}

fn alterations(set: &[(String, String)], delete: &[String]) -> Vec<AlterableConfig> {
    let sets = set.iter().map(|(key, value)| {
        let mut config = AlterableConfig::default();
        config.name = StrBytes::from_string(key.clone());
        config.config_operation = CONFIG_OPERATION_SET;
        config.value = Some(StrBytes::from_string(value.clone()));
        config
    });
    let deletes = delete.iter().map(|key| {
        let mut config = AlterableConfig::default();
        config.name = StrBytes::from_string(key.clone());
        config.config_operation = CONFIG_OPERATION_DELETE;
        config.value = None;
        config
    });
    sets.chain(deletes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alterations_use_kafka_operation_codes() {
        let configs = alterations(&[("retention.ms".to_string(), "1000".to_string())], &["cleanup.policy".to_string()]);
        assert_eq!(configs.len(), 2);
        assert_eq!(configs[0].name.as_str(), "retention.ms");
        assert_eq!(configs[0].config_operation, 0);
        assert_eq!(configs[0].value.as_deref(), Some("1000"));
        assert_eq!(configs[1].name.as_str(), "cleanup.policy");
        assert_eq!(configs[1].config_operation, 1);
        assert_eq!(configs[1].value, None);
    }

    #[test]
    fn sensitive_and_null_configs_are_rendered_without_values() {
        let mut config = DescribeConfigsResourceResult::default();
        config.name = StrBytes::from_static_str("retention.ms");
        config.value = Some(StrBytes::from_static_str("1000"));
        config.config_source = 5;
        assert_eq!(render_config(&config), "retention.ms=1000\tsource=DEFAULT_CONFIG");
        config.is_sensitive = true;
        assert_eq!(render_config(&config), "retention.ms=<sensitive>\tsource=DEFAULT_CONFIG");
        config.is_sensitive = false;
        config.value = None;
        config.config_source = 1;
        assert_eq!(render_config(&config), "retention.ms=null\tsource=DYNAMIC_TOPIC_CONFIG");
    }
}
