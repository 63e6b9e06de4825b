//! Runnel's broker: a Kafka-protocol server over a durable segmented log.
//!
//! Layers, with data flowing one way (socket → request → partition → log):
//! - [`protocol`]: sans-I/O — frames, RecordBatch headers, the API versions we speak.
//! - [`storage`]: the segmented log per partition (see `docs/STORAGE.md`).
//! - [`metadata`]: topics, partitions and configs as a replicated-state-machine interface.
//! - `groups`: the consumer group coordinator, persisted in `__consumer_offsets`.
//! - [`txn`]: the transaction coordinator, persisted in `__transaction_state`.
//! - [`server`]: sockets, connection limits, request dispatch and the admin HTTP endpoint.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = runnel_broker::config::BrokerConfig::default();
//! let broker = runnel_broker::Broker::open(config)?;
//! runnel_broker::server::serve(broker, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod alloc;
pub mod config;
mod groups;
pub mod metadata;
pub mod partitioner;
pub mod protocol;
pub mod server;
pub mod storage;
pub mod txn;

mod broker;
mod log_cleaner;
mod metrics;

pub use broker::{Broker, BrokerError, GroupCommitError, GroupOffset, Partition};
pub use metrics::process_cpu_seconds;
