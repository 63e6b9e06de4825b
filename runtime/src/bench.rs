//! Transform benchmarks, for `runnel bench transform`: a WASM map against the same logic as a
//! native closure, and the host's fixed cost per batch.

/// The ABI v1 uppercase map (`tests/fixtures/uppercase.wat`, assembled): keys and headers
/// pass through, ASCII letters of values are upper-cased, everything goes to output 0.
pub const UPPERCASE_WASM: &[u8] = include_bytes!("../tests/fixtures/uppercase.wasm");
