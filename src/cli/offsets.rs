//! ListOffsets: the earliest or latest offset of partitions, asked of each partition's leader.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::client::REQUEST_TIMEOUT;
use super::cluster::{Cluster, TopicInfo};
use super::error;

/// Kafka's special ListOffsets timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OffsetSpec {
    /// The log start offset (timestamp -2).
    Earliest,
    /// The log end offset, i.e. the offset the next record will get (timestamp -1).
    Latest,
    /// The first offset whose record has a timestamp at or after this one (ms); -1 if none.
    Timestamp(i64),
}

impl OffsetSpec {
    fn timestamp(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::Timestamp(ms) => ms,
        }
    }
}

/// partition id → offset, for each of `partition_ids` of `topic`.
pub(crate) async fn list_offsets(
    cluster: &mut Cluster,
    topic: &TopicInfo,
    partition_ids: &[i32],
    spec: OffsetSpec,
) -> Result<BTreeMap<i32, i64>> {
    // Each leader only answers for its own partitions, so ask leader by leader.
    let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for id in partition_ids {
        by_leader.entry(topic.partition(*id)?.leader).or_default().push(*id);
    }
    let mut offsets = BTreeMap::new();
    for (leader, ids) in by_leader {
        let client = cluster.leader(leader).await?;
        let version = client.version(ApiKey::ListOffsets)?;
        let request = build_request(&topic.name, &ids, spec, version);
        let response = client.send(&request, version).await?;
        for topic_response in &response.topics {
            if topic_response.name.as_str() != topic.name {
                continue;
            }
            for partition in &topic_response.partitions {
                if partition.error_code != 0 {
                    bail!(
                        "listing {spec:?} offset of {}-{} failed: {}",
                        topic.name,
                        partition.partition_index,
                        error::describe(partition.error_code, None)
                    );
                }
                offsets.insert(partition.partition_index, partition.offset);
            }
        }
    }
    for id in partition_ids {
        offsets.get(id).with_context(|| format!("broker did not return the {spec:?} offset of {}-{id}", topic.name))?;
    }
    Ok(offsets)
}

fn build_request(topic: &str, partition_ids: &[i32], spec: OffsetSpec, version: i16) -> ListOffsetsRequest {
    let mut request = ListOffsetsRequest::default();
    // -1 marks a normal consumer; the crate defaults this to 0, which is a broker id.
    request.replica_id = BrokerId(-1);
    let mut requested_topic = ListOffsetsTopic::default();
    requested_topic.name = TopicName(StrBytes::from_string(topic.to_string()));
    requested_topic.partitions = partition_ids
        .iter()
        .map(|id| {
            let mut partition = ListOffsetsPartition::default();
            partition.partition_index = *id;
            partition.timestamp = spec.timestamp();
            partition
        })
        .collect();
    request.topics = vec![requested_topic];
    if version >= 10 {
        request.timeout_ms = i32::try_from(REQUEST_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
    }
    request
}
