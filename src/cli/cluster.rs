//! The cluster as the CLI sees it: a bootstrap connection, topic metadata, and a connection
//! to each partition leader (opened lazily, reused for the rest of the command).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::client::Client;
use super::error;

/// Metadata right after a topic is created (or auto-created) may not have leaders yet; these
/// bound how long we wait for them: 10 × 200 ms = 2 s.
const METADATA_ATTEMPTS_MAX: u32 = 10;
const METADATA_RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// A partition and the node that leads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionInfo {
    pub(crate) id: i32,
    pub(crate) leader: i32,
}

/// A topic's partitions, sorted by id.
#[derive(Debug, Clone)]
pub(crate) struct TopicInfo {
    pub(crate) name: String,
    pub(crate) partitions: Vec<PartitionInfo>,
}

impl TopicInfo {
    pub(crate) fn partition(&self, id: i32) -> Result<&PartitionInfo> {
        self.partitions.iter().find(|partition| partition.id == id).with_context(|| {
            format!(
                "topic '{}' has no partition {id} (it has {} partition(s): 0..{})",
                self.name,
                self.partitions.len(),
                self.partitions.len().saturating_sub(1)
            )
        })
    }
}

pub(crate) struct Cluster {
    bootstrap: Client,
    /// node id → `host:port`, as advertised in the last Metadata response.
    brokers: HashMap<i32, String>,
    /// Connections to leaders other than the bootstrap broker.
    connections: HashMap<i32, Client>,
}

impl Cluster {
    pub(crate) async fn connect(brokers: &str) -> Result<Cluster> {
        let bootstrap = Client::connect_any(brokers).await?;
        Ok(Cluster { bootstrap, brokers: HashMap::new(), connections: HashMap::new() })
    }

    /// The bootstrap connection, for requests any broker can answer.
    pub(crate) fn any(&mut self) -> &mut Client {
        &mut self.bootstrap
    }

    /// Sorted names of all topics.
    pub(crate) async fn topic_names(&mut self) -> Result<Vec<String>> {
        let response = self.metadata(None, false).await?;
        let mut names: Vec<String> = response
            .topics
            .iter()
            .filter(|topic| topic.error_code == 0)
            .filter_map(|topic| topic.name.as_ref().map(|name| name.as_str().to_string()))
            .collect();
        names.sort();
        Ok(names)
    }

    /// One topic's partitions and leaders, waiting briefly for leaders to be elected.
    pub(crate) async fn topic(&mut self, topic: &str, allow_auto_create: bool) -> Result<TopicInfo> {
        let mut last_problem = String::new();
        for attempt in 0..METADATA_ATTEMPTS_MAX {
            if attempt > 0 {
                tokio::time::sleep(METADATA_RETRY_BACKOFF).await;
            }
            let response = self.metadata(Some(topic), allow_auto_create).await?;
            let Some(found) = response
                .topics
                .iter()
                .find(|candidate| candidate.name.as_ref().is_some_and(|name| name.as_str() == topic))
            else {
                bail!("broker returned no metadata for topic '{topic}'");
            };
            match found.error_code {
                0 => {}
                error::UNKNOWN_TOPIC_OR_PARTITION => bail!("topic '{topic}' does not exist"),
                error::LEADER_NOT_AVAILABLE => {
                    last_problem = error::describe(found.error_code, None);
                    continue;
                }
                code => bail!("metadata for topic '{topic}' failed: {}", error::describe(code, None)),
            }
            let mut partitions: Vec<PartitionInfo> = found
                .partitions
                .iter()
                .map(|partition| PartitionInfo { id: partition.partition_index, leader: partition.leader_id.0 })
                .collect();
            partitions.sort_by_key(|partition| partition.id);
            if partitions.is_empty() {
                last_problem = "no partitions yet".to_string();
                continue;
            }
            if let Some(leaderless) = partitions.iter().find(|partition| partition.leader < 0) {
                last_problem = format!("partition {} has no leader", leaderless.id);
                continue;
            }
            return Ok(TopicInfo { name: topic.to_string(), partitions });
        }
        bail!("topic '{topic}' is not ready after {METADATA_ATTEMPTS_MAX} metadata attempts: {last_problem}")
    }

    /// Node ids of the brokers in the last Metadata response, sorted.
    pub(crate) fn broker_ids(&self) -> Vec<i32> {
        let mut ids: Vec<i32> = self.brokers.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The connection to `node_id`, opening it on first use.
    pub(crate) async fn leader(&mut self, node_id: i32) -> Result<&mut Client> {
        let address = self
            .brokers
            .get(&node_id)
            .with_context(|| format!("leader node {node_id} is not in the broker list from metadata"))?
            .clone();
        // One broker (or the leader is the broker we bootstrapped from): the bootstrap
        // connection already reaches it. This also keeps a single-node broker usable when it
        // advertises a name we cannot resolve, e.g. a container hostname.
        if self.brokers.len() <= 1 || address == self.bootstrap.address() {
            return Ok(&mut self.bootstrap);
        }
        let client = match self.connections.entry(node_id) {
            Entry::Occupied(open) => open.into_mut(),
            Entry::Vacant(slot) => {
                let client =
                    Client::connect(&address).await.with_context(|| format!("connecting to leader node {node_id}"))?;
                slot.insert(client)
            }
        };
        Ok(client)
    }

    /// Closes every connection gracefully (flushes fire-and-forget produce requests).
    pub(crate) async fn shutdown(&mut self) -> Result<()> {
        for client in self.connections.values_mut() {
            client.shutdown().await?;
        }
        self.bootstrap.shutdown().await
    }

    async fn metadata(&mut self, topic: Option<&str>, allow_auto_create: bool) -> Result<MetadataResponse> {
        let version = self.bootstrap.version(ApiKey::Metadata)?;
        let mut request = MetadataRequest::default();
        request.topics = topic.map(|name| {
            let mut requested = MetadataRequestTopic::default();
            requested.name = Some(TopicName(StrBytes::from_string(name.to_string())));
            vec![requested]
        });
        // v0–3 cannot express "do not auto-create"; the field must keep its default there.
        if version >= 4 {
            request.allow_auto_topic_creation = allow_auto_create;
        }
        let response = self.bootstrap.send(&request, version).await?;
        self.brokers = response
            .brokers
            .iter()
            .map(|broker| (broker.node_id.0, format!("{}:{}", broker.host.as_str(), broker.port)))
            .collect();
        Ok(response)
    }
}
