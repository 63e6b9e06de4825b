//! `cargo run -p runnel-runtime --release --example transform_bench [records_per_batch]
//! [value_bytes]`: the WASM uppercase map against the same logic in native Rust, and the
//! host's cost per batch. `runnel bench transform` will call the same function.

use runnel_runtime::bench::{transform_bench, BenchConfig, UPPERCASE_WASM};
use runnel_runtime::{HostConfig, WasmHost};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut config = BenchConfig::default();
    if let Some(records) = args.next() {
        config.records_per_batch = records.parse()?;
        // Keep the run at about 200k records whatever the batch size.
        config.batches = (200_000 / config.records_per_batch.max(1)).max(1);
    }
    if let Some(value_bytes) = args.next() {
        config.value_bytes = value_bytes.parse()?;
    }
    let host = WasmHost::new(HostConfig::default())?;
    let report = transform_bench(&host, UPPERCASE_WASM, &config)?;
    println!("{report}");
    Ok(())
}
