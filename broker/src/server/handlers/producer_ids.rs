//! InitProducerId for idempotent producers.
//!
//! Every call gets a fresh producer id with epoch 0, as Kafka does for producers without a
//! transactional id. Transactional ids go to the transaction coordinator
//! (`transactions.rs`).

use std::sync::Arc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::{error_code, respond, Reply};
use crate::protocol::frame::{decode_body, FrameError, RequestFrame};
use crate::Broker;

pub(super) fn init_producer_id(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: InitProducerIdRequest = decode_body(request)?;
    if let Some(transactional_id) = &body.transactional_id {
        let transactional_id = transactional_id.0.to_string();
        return super::transactions::init_producer_id(broker, request, &body, &transactional_id);
    }
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    match broker.allocate_producer_id() {
        Ok(id) => {
            response.producer_id = ProducerId(id);
            response.producer_epoch = 0;
        }
        Err(e) => response.error_code = error_code(&e).0,
    }
    respond(request, &response)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use kafka_protocol::messages::ApiKey;

    #[tokio::test]
    async fn ids_are_unique_across_calls_and_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = crate::config::BrokerConfig { data_dir: dir.path().to_path_buf(), ..Default::default() };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2 {
            let broker = Broker::open(config.clone()).expect("open");
            for version in [0i16, 2, 4] {
                let mut request = InitProducerIdRequest::default();
                request.transactional_id = None;
                let response: InitProducerIdResponse = call(&broker, ApiKey::InitProducerId, version, &request).await;
                assert_eq!(response.error_code, 0);
                assert_eq!(response.producer_epoch, 0);
                assert!(seen.insert(response.producer_id.0), "producer id {} handed out twice", response.producer_id.0);
            }
            drop(broker);
        }
    }
}
