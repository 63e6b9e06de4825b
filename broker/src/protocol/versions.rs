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
