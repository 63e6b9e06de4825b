//! Transform benchmarks, for `runnel bench transform`: a WASM map against the same logic as a
//! native closure over the same batches, and the host's fixed cost per batch (an empty batch's
//! round trip).
//!
//! ```no_run
//! use runnel_runtime::bench::{transform_bench, BenchConfig, UPPERCASE_WASM};
//! use runnel_runtime::{HostConfig, WasmHost};
//!
//! let host = WasmHost::new(HostConfig::default()).expect("host");
//! let report = transform_bench(&host, UPPERCASE_WASM, &BenchConfig::default()).expect("bench");
//! println!("{report}");
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{
    InputRecord, InstanceConfig, InstantiateError, LoadError, MemoryStateStore, OutputHeader, OutputRecord,
    ProcessError, WasmHost,
};

/// The ABI v1 uppercase map (`tests/fixtures/uppercase.wat`, assembled): keys and headers
/// pass through, ASCII letters of values are upper-cased, everything goes to output 0.
pub const UPPERCASE_WASM: &[u8] = include_bytes!("../tests/fixtures/uppercase.wasm");

/// The shape of a run. Batches are generated once from `seed` and replayed for both sides.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub batches: usize,
    pub records_per_batch: usize,
    pub key_bytes: usize,
    pub value_bytes: usize,
    /// Empty batches sent to measure the fixed cost of one round trip.
    pub empty_batches: usize,
    pub seed: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            batches: 200,
            records_per_batch: 1_000,
            key_bytes: 16,
            value_bytes: 100,
            empty_batches: 20_000,
            seed: 0x5eed,
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub config: BenchConfig,
    /// `WasmHost::load` of the module (compile, or cache hit when the host has a cache).
    pub load: Duration,
    /// One `TransformModule::instantiate`.
    pub instantiate: Duration,
    pub wasm_records_per_second: f64,
    pub native_records_per_second: f64,
    /// Input value bytes per second through the WASM map.
    pub wasm_value_bytes_per_second: f64,
    /// Mean round trip of an empty batch: encode, alloc, process, decode.
    pub empty_batch_round_trip: Duration,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "transform bench: {} batches x {} records, key {} B, value {} B",
            c.batches, c.records_per_batch, c.key_bytes, c.value_bytes
        )?;
        writeln!(f, "  load module          {:?}", self.load)?;
        writeln!(f, "  instantiate          {:?}", self.instantiate)?;
        writeln!(
            f,
            "  wasm map             {:.0} records/s ({:.1} MB/s of values)",
            self.wasm_records_per_second,
            self.wasm_value_bytes_per_second / 1e6
        )?;
        writeln!(
            f,
            "  native closure       {:.0} records/s (wasm at {:.0}% of native)",
            self.native_records_per_second,
            100.0 * self.wasm_records_per_second / self.native_records_per_second
        )?;
        write!(f, "  empty batch          {:?} per round trip", self.empty_batch_round_trip)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("loading the module: {0}")]
    Load(#[from] LoadError),
    #[error("instantiating the module: {0}")]
    Instantiate(#[from] InstantiateError),
    #[error("processing a batch: {0}")]
    Process(#[from] ProcessError),
    #[error("the module produced {found} records for {expected} inputs")]
    WrongOutputCount { found: usize, expected: usize },
}

/// Runs `wasm` (an ABI v1 map with one output record per input, such as [`UPPERCASE_WASM`])
/// over generated batches, then [`uppercase_native`] over the same batches.
pub fn transform_bench(host: &WasmHost, wasm: &[u8], config: &BenchConfig) -> Result<BenchReport, BenchError> {
    let started = Instant::now();
    let module = host.load(wasm)?;
    let load = started.elapsed();
    let started = Instant::now();
    let mut instance = module.instantiate(InstanceConfig::new(0, 1, MemoryStateStore::new()))?;
    let instantiate = started.elapsed();

    let data = BatchData::generate(config);
    let batches = data.batches();
    let records = (config.batches * config.records_per_batch) as f64;

    let started = Instant::now();
    for batch in &batches {
        let output = instance.process(batch)?;
        if output.records.len() != batch.len() {
            return Err(BenchError::WrongOutputCount { found: output.records.len(), expected: batch.len() });
        }
    }
    let wasm_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut native_records = 0;
    for batch in &batches {
        let output: Vec<OutputRecord> = batch.iter().map(uppercase_native).collect();
        native_records += std::hint::black_box(output).len();
    }
    let native_seconds = started.elapsed().as_secs_f64();
    assert_eq!(native_records, batches.iter().map(Vec::len).sum::<usize>());

    let started = Instant::now();
    for _ in 0..config.empty_batches {
        instance.process(&[])?;
    }
    let empty_batch_round_trip = started.elapsed().checked_div(config.empty_batches.max(1) as u32).unwrap_or_default();

    Ok(BenchReport {
        config: config.clone(),
        load,
        instantiate,
        wasm_records_per_second: records / wasm_seconds,
        native_records_per_second: records / native_seconds,
        wasm_value_bytes_per_second: records * config.value_bytes as f64 / wasm_seconds,
        empty_batch_round_trip,
    })
}

/// The uppercase map as a native closure, producing what the host returns for a WASM map:
/// owned output records.
pub fn uppercase_native(record: &InputRecord<'_>) -> OutputRecord {
    OutputRecord {
        output_index: 0,
        timestamp_ms: Some(record.timestamp_ms),
        key: record.key.map(Bytes::copy_from_slice),
        value: record.value.map(|value| Bytes::from(value.to_ascii_uppercase())),
        headers: record
            .headers
            .iter()
            .map(|header| OutputHeader {
                name: Bytes::copy_from_slice(header.name),
                value: header.value.map(Bytes::copy_from_slice),
            })
            .collect(),
    }
}

/// Generated keys and values, borrowed by the batches.
struct BatchData {
    config: BenchConfig,
    keys: Vec<Vec<u8>>,
    values: Vec<Vec<u8>>,
}

impl BatchData {
    fn generate(config: &BenchConfig) -> Self {
        let mut state = config.seed;
        let mut next = move || {
            // splitmix64: a run is a pure function of its seed.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut text = |len: usize| -> Vec<u8> {
            (0..len).map(|_| b"abcdefghijklmnopqrstuvwxyz ,.0123456789"[(next() % 39) as usize]).collect()
        };
        let count = config.batches * config.records_per_batch;
        let keys = (0..count).map(|_| text(config.key_bytes)).collect();
        let values = (0..count).map(|_| text(config.value_bytes)).collect();
        Self { config: config.clone(), keys, values }
    }

    fn batches(&self) -> Vec<Vec<InputRecord<'_>>> {
        let per_batch = self.config.records_per_batch.max(1);
        (0..self.config.batches)
            .map(|batch| {
                (batch * per_batch..(batch + 1) * per_batch)
                    .map(|n| InputRecord {
                        offset: n as i64,
                        timestamp_ms: 1_700_000_000_000 + n as i64,
                        key: Some(&self.keys[n]),
                        value: Some(&self.values[n]),
                        headers: &[],
                    })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostConfig;

    #[test]
    fn bench_runs_on_a_small_config() {
        let host = WasmHost::new(HostConfig::default()).expect("host");
        let config = BenchConfig { batches: 3, records_per_batch: 10, empty_batches: 10, ..BenchConfig::default() };
        let report = transform_bench(&host, UPPERCASE_WASM, &config).expect("bench");
        assert!(report.wasm_records_per_second > 0.0);
        assert!(report.to_string().contains("records/s"));
    }

    #[test]
    fn native_closure_matches_the_wasm_map() {
        let host = WasmHost::new(HostConfig::default()).expect("host");
        let module = host.load(UPPERCASE_WASM).expect("load");
        let mut instance = module.instantiate(InstanceConfig::new(0, 1, MemoryStateStore::new())).expect("instantiate");
        let data = BatchData::generate(&BenchConfig { batches: 2, records_per_batch: 50, ..BenchConfig::default() });
        for batch in data.batches() {
            let wasm = instance.process(&batch).expect("process").records;
            let native: Vec<OutputRecord> = batch.iter().map(uppercase_native).collect();
            assert_eq!(wasm, native);
        }
    }
}
