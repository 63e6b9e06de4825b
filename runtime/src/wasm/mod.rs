//! The wasmtime host for ABI v1 (`sdk/ABI.md`).
//!
//! Layout: `engine` (the process's `WasmHost`), `module` (deploy-time load and checks),
//! `instance` (per-partition instances and the batch round trip), `abi` (batch layouts),
//! `input` (encoding a batch of any record type into guest memory),
//! `host`, `json_find` and `wasi` (imports), `clock` (what the guest sees), `store` (per-instance host data), `state`, `log`, `limits`,
//! `cache` (precompiled modules), `error`.

pub(crate) mod abi;
pub(crate) mod cache;
pub(crate) mod clock;
pub(crate) mod engine;
pub(crate) mod error;
pub(crate) mod host;
pub(crate) mod input;
pub(crate) mod instance;
pub(crate) mod json_find;
pub(crate) mod limits;
pub(crate) mod log;
pub(crate) mod module;
pub(crate) mod state;
pub(crate) mod store;
pub(crate) mod wasi;
