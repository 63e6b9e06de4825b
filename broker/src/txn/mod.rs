//! The transaction coordinator: Kafka's transactional producers (InitProducerId with a
//! transactional id, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn) on one node.
//!
//! Layout, from the inside out:
//! - `state`: one transactional id's state machine (Empty, Ongoing, PrepareCommit,
//!   PrepareAbort, CompleteCommit, CompleteAbort, Dead). Sans I/O: requests and a `now_ms` in,
//!   a new state or a typed refusal out; unit-tested without a broker.
//! - `records`: the `__transaction_state` key/value formats (Kafka's own).
//! - `coordinator`: [`TxnCoordinator`], the shell. One lock over every transactional id; each
//!   state change is appended to `__transaction_state` before it takes effect in memory;
//!   EndTxn writes commit/abort control batches (markers) to every partition of the
//!   transaction — locally, since every partition lives on this node — and to
//!   `__consumer_offsets`, where the group coordinator then publishes (or drops) the
//!   transaction's offsets. A background task aborts transactions past their timeout, with a
//!   bumped epoch so the late producer is fenced, and forgets idle ids.
//!
//! Durability: every answer waits for the fsync of what it wrote (state records and markers).
//! On open the topic is replayed; a transaction caught between Prepare* and Complete* (a crash
//! while writing markers) has its markers written again, which partitions accept as no-ops.

mod config;
mod coordinator;
mod records;
mod state;

#[cfg(test)]
mod tests;

pub use config::TxnConfig;
pub(crate) use coordinator::{Durable, TxnCoordinator};

use kafka_protocol::ResponseError;

/// Why a transactional request was refused; each maps to one Kafka error code at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TxnError {
    #[error("the transaction is completing; retry")]
    ConcurrentTransactions,
    #[error("a newer producer with the same transactional id fenced this one")]
    ProducerFenced,
    #[error("the producer id does not belong to the transactional id")]
    InvalidProducerIdMapping,
    #[error("the request is not valid in the transaction's state")]
    InvalidTxnState,
    #[error("transaction.timeout.ms is above transaction.max.timeout.ms")]
    InvalidTransactionTimeout,
    #[error("the coordinator is not available")]
    CoordinatorNotAvailable,
    #[error("this broker cannot serve the transaction now (storage failure)")]
    NotCoordinator,
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
}

impl TxnError {
    /// The Kafka error code. `fenced_code_supported`: the request version knows
    /// PRODUCER_FENCED (KIP-588); older ones are told INVALID_PRODUCER_EPOCH.
    pub(crate) fn code(self, fenced_code_supported: bool) -> i16 {
        let error = match self {
            TxnError::ConcurrentTransactions => ResponseError::ConcurrentTransactions,
            TxnError::ProducerFenced if fenced_code_supported => ResponseError::ProducerFenced,
            TxnError::ProducerFenced => ResponseError::InvalidProducerEpoch,
            TxnError::InvalidProducerIdMapping => ResponseError::InvalidProducerIdMapping,
            TxnError::InvalidTxnState => ResponseError::InvalidTxnState,
            TxnError::InvalidTransactionTimeout => ResponseError::InvalidTransactionTimeout,
            TxnError::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
            TxnError::NotCoordinator => ResponseError::NotCoordinator,
            TxnError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        };
        error.code()
    }
}
