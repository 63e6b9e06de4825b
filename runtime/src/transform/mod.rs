//! Transforms: user WebAssembly modules that run beside each input partition, on the broker.
//!
//! - [`spec`]: what a user deploys (input, outputs, env, start position, error policy).
//! - [`service`]: the registry (`__runnel_transforms`) and the lifecycle of instances.
//! - `runner` + `commit` + `checkpoint`: one instance per input partition, reading the log
//!   directly and committing outputs, state and position together (exactly-once).
//! - [`processor`]: the seam to the code that runs a batch (the WASM host, or a native closure).
//! - [`http`]: `/v1/transforms` on the admin port.

pub(crate) mod checkpoint;
mod commit;
pub mod http;
pub(crate) mod log_io;
pub mod pool;
pub mod processor;
pub(crate) mod records;
mod runner;
pub mod service;
pub mod spec;
#[cfg(test)]
mod tests;
mod wasm_processor;

pub use pool::ComputePool;
pub use processor::{
    Failure, InRecord, InstanceSetup, LogSink, OutRecord, Processed, Processor, ProcessorFactory, SharedState,
    StateChange, StateMap,
};
pub use runner::InstanceState;
pub use service::{InstanceInfo, TransformInfo, TransformService};
pub use spec::{OnError, StartFrom, TransformSpec};
pub use wasm_processor::WasmProcessorFactory;

/// Why a transform operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("invalid transform: {0}")]
    InvalidSpec(String),
    #[error("module refused: {0}")]
    Module(Failure),
    #[error("no transform named {0:?}")]
    NotFound(String),
    #[error("topic {topic} has no partition {partition} (does it exist?)")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("storage: {0}")]
    Storage(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("cannot encode records: {0}")]
    Encode(String),
    #[error("internal: {0}")]
    Internal(String),
}
