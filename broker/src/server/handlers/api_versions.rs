//! ApiVersions: the first request every client sends.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::ResponseError;

use super::{Reply, RequestFrame};
use crate::protocol::frame::{encode_response, FrameError};
use crate::protocol::versions::SUPPORTED;

pub(super) fn handle(request: &RequestFrame) -> Result<Reply, FrameError> {
    let mut response = ApiVersionsResponse::default();
    response.api_keys = SUPPORTED
        .iter()
        .map(|(key, min, max)| {
            let mut entry = ApiVersion::default();
            entry.api_key = *key as i16;
            entry.min_version = *min;
            entry.max_version = *max;
            entry
        })
        .collect();
    let (_, max) = crate::protocol::versions::supported_range(ApiKey::ApiVersions).expect("ApiVersions is served");
    // A version we do not know is answered in the v0 format, which every client can read,
    // with UNSUPPORTED_VERSION; the client then retries with a version from our list.
    let version = if request.api_version > max || request.api_version < 0 {
        response.error_code = ResponseError::UnsupportedVersion.code();
        0
    } else {
        request.api_version
    };
    encode_response(ApiKey::ApiVersions, request.header.correlation_id, version, &response).map(Reply::Ready)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use kafka_protocol::messages::ApiVersionsRequest;

    #[tokio::test]
    async fn lists_every_served_api_at_each_version() {
        let (_dir, broker) = broker();
        for version in 0..=3 {
            let response: ApiVersionsResponse =
                call(&broker, ApiKey::ApiVersions, version, &ApiVersionsRequest::default()).await;
            assert_eq!(response.error_code, 0);
            let produce =
                response.api_keys.iter().find(|k| k.api_key == ApiKey::Produce as i16).expect("produce listed");
            assert_eq!(produce.min_version, 0, "produce advertised from v0 so librdkafka keeps compression");
            assert_eq!(response.api_keys.len(), SUPPORTED.len());
        }
    }
}
