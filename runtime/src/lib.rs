//! The compute that runs next to Runnel's partitions: transforms (user WebAssembly run beside
//! each input partition), and later connectors and the SQL engine.
//!
//! The [`transform`] service reads input partitions straight from the broker's log and writes
//! outputs through the local append path; the code it runs sits behind
//! [`transform::ProcessorFactory`], implemented by the WASM host.

pub mod transform;
