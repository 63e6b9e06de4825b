//! The API versions this broker implements and advertises.
//!
//! Each range here is one the handlers really serve, intersected with what the
//! `kafka-protocol` crate can decode. Produce is advertised from v0 (as Kafka 4 does) so that
//! librdkafka keeps compression on, while v0–2 are answered with UNSUPPORTED_VERSION.

use kafka_protocol::messages::ApiKey;

/// (api, lowest, highest) version served.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 11),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    // Consumer groups (classic protocol). JoinGroup v4+ does the MEMBER_ID_REQUIRED handshake,
    // v5+ static membership; FindCoordinator answers key types 0 (group) and 1 (transaction).
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::InitProducerId, 0, 4),
    // Transactions: the versions before KIP-890 (transactions v2), which is not implemented.
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 0),
];

/// Produce versions advertised but refused: only RecordBatch v2 (Produce v3+) is stored.
pub const PRODUCE_REFUSED_BELOW: i16 = 3;

/// The served range for an API, if it is served at all.
pub fn supported_range(api_key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED.iter().find(|(key, _, _)| *key == api_key).map(|(_, min, max)| (*min, *max))
}

pub fn is_supported(api_key: ApiKey, version: i16) -> bool {
    supported_range(api_key).is_some_and(|(min, max)| (min..=max).contains(&version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_advertised_range_is_decodable_by_the_codec() {
        for (key, min, max) in SUPPORTED {
            let codec = key.valid_versions();
            let decodable_from = if *key == ApiKey::Produce { PRODUCE_REFUSED_BELOW } else { *min };
            assert!(decodable_from >= codec.min && *max <= codec.max, "{key:?} {min}..={max} vs codec {codec}");
        }
    }
}
