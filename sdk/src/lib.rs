//! The guest SDK for Runnel WebAssembly transforms (plugin ABI v1, see `ABI.md`).
//!
//! This crate has no dependencies and builds with Rust 1.63 for `wasm32-unknown-unknown` and
//! `wasm32-wasi`/`wasm32-wasip1`, and with stable Rust natively so transform logic can be
//! unit-tested with plain `cargo test` through [`testing::Harness`].
//!
//! A transform is one macro call naming a function:
//!
//! ```
//! use runnel_sdk::{Error, Output, Record};
//!
//! fn upper(record: Record) -> Result<Output, Error> {
//!     let text = record.value_str()?.to_uppercase();
//!     Ok(Output::from(record).with_value(text))
//! }
//!
//! runnel_sdk::map!(upper);
//! ```
//!
//! See `README.md` for the tutorial and [`map!`], [`filter!`], [`filter_ref!`], [`filter_map!`],
//! [`flat_map!`] and [`processor!`] for the shapes a transform can take.

// The workspace `[lints]` table is not inherited here: cargo 1.65 (Debian's, which builds the
// wasm32 plugins) does not know it. The same lints are set as crate attributes instead; keep
// them in step with the root Cargo.toml. `unsafe_code` is allowed only in `host::wasm_imports`.
#![deny(unsafe_code)]
#![warn(unreachable_pub)]
#![warn(clippy::unwrap_used)]

pub mod abi;
pub mod env;
mod error;
mod host;
pub mod json;
pub mod log;
mod macros;
mod output;
mod record;
mod record_ref;
pub mod state;
pub mod transform;
pub mod wire;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use env::get as env;
pub use error::Error;
pub use output::Output;
pub use record::{Header, Record};
pub use record_ref::{HeaderRef, HeadersIter, HeadersRef, RecordRef};
pub use state::State;
pub use transform::{Outputs, Transform};

/// `Result` with the SDK's [`Error`], the return type of transform functions.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Everything a transform usually needs, for `use runnel_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::json::{self, Value};
    pub use crate::{Error, Header, Output, Outputs, Record, RecordRef, State};
}
