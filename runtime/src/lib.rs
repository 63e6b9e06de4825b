//! Runs user WebAssembly transforms next to Runnel's partitions: the wasmtime host for the
//! plugin ABI v1 (`sdk/ABI.md`), one batch of records per guest call.
//!
//! One [`WasmHost`] per process owns the wasmtime engine, its epoch ticker (deadlines) and the
//! precompiled-module cache. [`WasmHost::load`] checks a module at deploy and returns a
//! [`TransformModule`]; [`TransformModule::instantiate`] makes the [`TransformInstance`] of one
//! (transform, input partition), whose [`TransformInstance::process`] runs a batch and returns
//! the output records and the staged state writes, for the caller to commit atomically with
//! the input offset. Everything is synchronous and `Send`: run it on a blocking thread.
//!
//! ```
//! use runnel_runtime::{HostConfig, InputRecord, InstanceConfig, MemoryStateStore, WasmHost};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let host = WasmHost::new(HostConfig::default())?;
//! let module = host.load(runnel_runtime::bench::UPPERCASE_WASM)?;
//! let state = MemoryStateStore::new();
//! let mut instance = module.instantiate(InstanceConfig::new(0, 1, state.clone()))?;
//! let records = [InputRecord {
//!     offset: 42,
//!     timestamp_ms: 1_700_000_000_000,
//!     key: Some(b"k"),
//!     value: Some(b"hello"),
//!     headers: &[],
//! }];
//! let output = instance.process(&records)?;
//! assert_eq!(output.records[0].value.as_deref(), Some(&b"HELLO"[..]));
//! state.apply(&output.state_changes); // commit with the outputs and offset 42
//! # Ok(())
//! # }
//! ```
//!
//! Layout: `wasm/` is the host (engine, module loading, instances, ABI codec, host imports,
//! WASI subset, limits, cache); `bench` measures it; [`transform`] runs modules beside each
//! input partition of the broker (registry, per-partition instances, exactly-once commits,
//! `/v1/transforms`; see `docs/TRANSFORMS.md`); [`connect`] hosts Kafka-Connect-style
//! connectors (`/connectors`; see `docs/CONNECTORS.md`); [`sql`] runs DataFusion over topics
//! and keeps materialized views (`/v1/sql`; see `docs/SQL.md`).

pub mod bench;
pub mod connect;
pub mod sql;
pub mod transform;
mod wasm;

pub use wasm::abi::{
    checked_input_len, decode_emitted, decode_output, encode_input, encoded_input_len, Emitted, InputRecord,
    OutputHeader, OutputRecord, RecordHeader, ABI_VERSION, FEATURE_JSON_EQUALS, FEATURE_JSON_FIND, FEATURE_KEEP_INPUT,
    HOST_FEATURES,
};
pub use wasm::clock::{GuestClock, SystemGuestClock};
pub use wasm::engine::{HostConfig, WasmHost};
pub use wasm::error::{HostError, InstantiateError, LoadError, OutputCap, ProcessError};
pub use wasm::host::{STATE_PUT_BATCH_FULL, STATE_PUT_KEY_TOO_LARGE, STATE_PUT_VALUE_TOO_LARGE};
pub use wasm::instance::{InstanceConfig, ProcessOutput, TransformInstance, LOG_RING_LINES_DEFAULT};
pub use wasm::json_find::{
    JSON_EQUALS_TEXT_BYTES_MAX, JSON_FIND_BAD_PATH, JSON_FIND_DOCUMENTS_MAX, JSON_FIND_PATH_BYTES_MAX,
    JSON_FIND_TOO_MUCH,
};
pub use wasm::limits::Limits;
pub use wasm::log::{LogLevel, LogLine, LogRing};
pub use wasm::module::{ModuleSource, TransformModule};
pub use wasm::state::{MemoryStateStore, StateChange, StateStore, StateStoreError};
