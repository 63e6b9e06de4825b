//! One module per Kafka API. A handler decodes its request body, works against the broker and
//! returns the encoded response (or a future of it, for waits that must not block the reader).

mod admin;
mod api_versions;
mod configs;
mod fetch;
mod groups;
mod list_offsets;
mod metadata;
mod produce;
mod producer_ids;
mod transactions;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};
use kafka_protocol::ResponseError;
use tracing::Instrument;

use crate::broker::BrokerError;
use crate::metadata::MetadataError;
use crate::protocol::batch::BatchError;
use crate::protocol::frame::{encode_response, FrameError, RequestFrame};
use crate::protocol::versions;
use crate::storage::StorageError;
use crate::Broker;

/// What to send back for one request.
pub(crate) enum Reply {
    Ready(Bytes),
    /// A frame in pieces, written in order (fetch responses send records from their buffers,
    /// or from the segment files).
    Pieces(Vec<crate::protocol::fetch_frame::Piece>),
    /// Sent when the future resolves (acks=all waits for fsync); order is kept by the writer.
    Later(Pin<Box<dyn Future<Output = Bytes> + Send>>),
    /// acks=0 produce: Kafka sends nothing back.
    None,
}

pub(crate) async fn dispatch(broker: &Arc<Broker>, request: RequestFrame) -> Result<Reply, FrameError> {
    let span = tracing::debug_span!(
        "request",
        api = ?request.api_key,
        version = request.api_version,
        correlation_id = request.header.correlation_id,
    );
    async move {
        let api = request.api_key;
        if api == ApiKey::ApiVersions {
            return api_versions::handle(&request);
        }
        if api == ApiKey::Produce && (0..versions::PRODUCE_REFUSED_BELOW).contains(&request.api_version) {
            return produce::refuse_legacy(&request);
        }
        if !versions::is_supported(api, request.api_version) {
            return Err(FrameError::BadBody {
                api,
                version: request.api_version,
                message: "unsupported API or version".to_string(),
            });
        }
        match api {
            ApiKey::Metadata => metadata::handle(broker, &request),
            ApiKey::Produce => produce::handle(broker, &request),
            ApiKey::Fetch => fetch::handle(broker, &request).await,
            ApiKey::ListOffsets => list_offsets::handle(broker, &request),
            ApiKey::CreateTopics => admin::create_topics(broker, &request),
            ApiKey::DeleteTopics => admin::delete_topics(broker, &request),
            ApiKey::CreatePartitions => admin::create_partitions(broker, &request),
            ApiKey::DescribeCluster => admin::describe_cluster(broker, &request),
            ApiKey::DescribeConfigs => configs::describe(broker, &request),
            ApiKey::IncrementalAlterConfigs => configs::incremental_alter(broker, &request),
            ApiKey::AlterConfigs => configs::alter(broker, &request),
            ApiKey::FindCoordinator => groups::find_coordinator(broker, &request),
            ApiKey::JoinGroup => groups::join_group(broker, &request),
            ApiKey::SyncGroup => groups::sync_group(broker, &request),
            ApiKey::Heartbeat => groups::heartbeat(broker, &request),
            ApiKey::LeaveGroup => groups::leave_group(broker, &request),
            ApiKey::OffsetCommit => groups::offset_commit(broker, &request),
            ApiKey::OffsetFetch => groups::offset_fetch(broker, &request),
            ApiKey::ListGroups => groups::list_groups(broker, &request),
            ApiKey::DescribeGroups => groups::describe_groups(broker, &request),
            ApiKey::DeleteGroups => groups::delete_groups(broker, &request),
            ApiKey::OffsetDelete => groups::offset_delete(broker, &request),
            ApiKey::InitProducerId => producer_ids::init_producer_id(broker, &request),
            ApiKey::AddPartitionsToTxn => transactions::add_partitions_to_txn(broker, &request),
            ApiKey::AddOffsetsToTxn => transactions::add_offsets_to_txn(broker, &request),
            ApiKey::EndTxn => transactions::end_txn(broker, &request),
            ApiKey::TxnOffsetCommit => transactions::txn_offset_commit(broker, &request),
            ApiKey::ListTransactions => transactions::list_transactions(broker, &request),
            ApiKey::DescribeTransactions => transactions::describe_transactions(broker, &request),
            _ => Err(FrameError::BadBody { api, version: request.api_version, message: "not served".to_string() }),
        }
    }
    .instrument(span)
    .await
}

/// Encodes a response to `request` as a ready reply.
fn respond<R: Encodable + HeaderVersion>(request: &RequestFrame, response: &R) -> Result<Reply, FrameError> {
    encode_response(request.api_key, request.header.correlation_id, request.api_version, response).map(Reply::Ready)
}

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// The Kafka error code and message for a broker failure.
fn error_code(error: &BrokerError) -> (i16, String) {
    let code = match error {
        BrokerError::Metadata(e) => metadata_error_code(e),
        BrokerError::Storage(e) => storage_error_code(e),
        BrokerError::Io { .. } | BrokerError::DataDirLocked { .. } => ResponseError::KafkaStorageError.code(),
    };
    (code, error.to_string())
}

fn metadata_error_code(error: &MetadataError) -> i16 {
    match error {
        MetadataError::TopicExists { .. } => ResponseError::TopicAlreadyExists.code(),
        MetadataError::UnknownTopic { .. } => ResponseError::UnknownTopicOrPartition.code(),
        MetadataError::InvalidTopicName { .. } => ResponseError::InvalidTopicException.code(),
        MetadataError::InvalidPartitions { .. } => ResponseError::InvalidPartitions.code(),
        MetadataError::InvalidConfig(_) => ResponseError::InvalidConfig.code(),
        MetadataError::InvalidProducerIdBlock { .. } => ResponseError::UnknownServerError.code(),
        MetadataError::Io { .. } | MetadataError::Corrupt { .. } => ResponseError::KafkaStorageError.code(),
    }
}

fn storage_error_code(error: &StorageError) -> i16 {
    match error {
        StorageError::Io { .. } | StorageError::Corrupt { .. } => ResponseError::KafkaStorageError.code(),
        StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange.code(),
        StorageError::BatchTooLarge { .. } => ResponseError::MessageTooLarge.code(),
        StorageError::InvalidBatch(BatchError::UnsupportedMagic { .. }) => {
            ResponseError::UnsupportedForMessageFormat.code()
        }
        StorageError::InvalidBatch(_) => ResponseError::CorruptMessage.code(),
        StorageError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber.code(),
        StorageError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch.code(),
        StorageError::UnknownProducerId { .. } => ResponseError::UnknownProducerId.code(),
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Builds request frames and decodes responses so handlers can be tested without sockets.
    use super::*;
    use bytes::{Buf, BytesMut};
    use kafka_protocol::messages::RequestHeader;
    use kafka_protocol::protocol::{encode_request_header_into_buffer, Decodable};

    pub(crate) fn frame<R: Encodable>(api: ApiKey, version: i16, body: &R) -> RequestFrame {
        let mut buf = BytesMut::new();
        let mut header = RequestHeader::default();
        header.request_api_key = api as i16;
        header.request_api_version = version;
        header.correlation_id = 42;
        header.client_id = Some(StrBytes::from_static_str("handler-test"));
        encode_request_header_into_buffer(&mut buf, &header).expect("header encodes");
        body.encode(&mut buf, version).expect("body encodes");
        crate::protocol::frame::decode_request(buf.freeze()).expect("frame decodes")
    }

    pub(crate) async fn call<Req: Encodable, Resp: Decodable>(
        broker: &Arc<Broker>,
        api: ApiKey,
        version: i16,
        body: &Req,
    ) -> Resp {
        let reply = dispatch(broker, frame(api, version, body)).await.expect("handled");
        let mut bytes = match reply {
            Reply::Ready(bytes) => bytes,
            Reply::Pieces(pieces) => crate::protocol::fetch_frame::concat(pieces).expect("file pieces read"),
            Reply::Later(future) => future.await,
            Reply::None => panic!("no response"),
        };
        let size = bytes.get_i32();
        assert_eq!(size as usize, bytes.len());
        let header_version = api.response_header_version(version);
        let header = kafka_protocol::messages::ResponseHeader::decode(&mut bytes, header_version).expect("header");
        assert_eq!(header.correlation_id, 42);
        Resp::decode(&mut bytes, version).expect("response decodes")
    }

    pub(crate) fn broker() -> (tempfile::TempDir, Arc<Broker>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = crate::config::BrokerConfig { data_dir: dir.path().to_path_buf(), ..Default::default() };
        let broker = Broker::open(config).expect("broker opens");
        (dir, broker)
    }
}
