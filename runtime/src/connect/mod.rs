//! Connectors hosted in the broker, in Kafka Connect's shape: sinks move records from topics
//! into PostgreSQL or files, sources move rows, file lines, HTTP bodies or generated events
//! into topics. The host owns every connection (a WASM module only shapes records).
//!
//! - [`config`]: what a user configures (Connect's key names), validated before anything runs.
//! - `registry`: configs, target states and modules in `__runnel_connect_configs`.
//! - [`service`]: the lifecycle of connectors and their tasks (create, pause, restart, ...).
//! - `sink`: the sink task loop (reads assigned partitions from the local log, commits
//!   positions with the data) and the PostgreSQL and JSON-lines file sinks.
//! - `source`: the source task loop (exactly-once through checkpoints in
//!   `__runnel_connect_offsets`) and the file-tail, HTTP, PostgreSQL and datagen sources.
//! - `module`: an optional WASM module between the connector and the topic.
//! - [`http`]: the Kafka Connect REST API on the admin port (`/connectors`).
//!
//! See `docs/CONNECTORS.md`.

pub mod config;
pub mod http;
mod module;
mod pg;
mod registry;
pub mod service;
mod sink;
mod source;
mod task;

pub use config::ConnectorClass;
pub use service::{ConnectService, ConnectorInfo, ConnectorStatus, TaskStatus};

use crate::transform::{Failure, TransformError};

/// Why a connector operation, or a task, failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid connector config: {0}")]
    InvalidConfig(String),
    #[error("connector {0} not found")]
    NotFound(String),
    #[error("connector {0} already exists")]
    Exists(String),
    #[error("storage: {0}")]
    Storage(String),
    /// A PostgreSQL error the task may retry (connection lost, server restarting, ...).
    #[error("postgres (retriable): {0}")]
    PostgresRetriable(String),
    #[error("postgres: {0}")]
    Postgres(String),
    /// A sink write found that the positions it started from are no longer the stored ones:
    /// another writer (a task the partition moved from or to) committed them. Nothing was
    /// committed; the task reopens from what is stored.
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("{0}")]
    Io(String),
    #[error("module: {0}")]
    Module(Failure),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl ConnectError {
    /// Whether retrying the same work later may succeed.
    pub(crate) fn is_retriable(&self) -> bool {
        matches!(
            self,
            ConnectError::PostgresRetriable(_)
                | ConnectError::Storage(_)
                | ConnectError::Io(_)
                | ConnectError::Fenced(_)
        )
    }
}

impl From<TransformError> for ConnectError {
    fn from(e: TransformError) -> ConnectError {
        match e {
            TransformError::Corrupt(m) => ConnectError::Corrupt(m),
            TransformError::Module(f) => ConnectError::Module(f),
            TransformError::Storage(m) => ConnectError::Storage(m),
            other => ConnectError::Internal(other.to_string()),
        }
    }
}
