//! The WASM host behind the transform service: a [`ProcessorFactory`] over [`WasmHost`].

use std::path::PathBuf;
use std::sync::Arc;

use crate::transform::processor::{
    Failure, InRecord, InstanceSetup, LogSink, OutRecord, Processed, Processor, ProcessorFactory, SharedState,
};
use crate::wasm::abi::{Emitted, OutputRecord};
use crate::wasm::engine::{HostConfig, WasmHost};
use crate::wasm::error::{LoadError, ProcessError};
use crate::wasm::input::{batch_len, input_record_len, BatchWriter, ForwardSizes, InputBatch};
use crate::wasm::instance::{InstanceConfig, TransformInstance};
use crate::wasm::log::{LogLevel, LogLine};
use crate::wasm::module::TransformModule;
use crate::wasm::state::{StateStore, StateStoreError};

/// Modules compiled once per deploy are kept by digest, so every partition's instance (and a
/// restart of one) instantiates without compiling.
const MODULES_CACHED_MAX: usize = 64;

pub struct WasmProcessorFactory {
    host: WasmHost,
    modules: std::sync::Mutex<Vec<(Vec<u8>, TransformModule)>>,
}

impl std::fmt::Debug for WasmProcessorFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmProcessorFactory").finish_non_exhaustive()
    }
}

impl WasmProcessorFactory {
    /// One per process; `cache_dir` keeps compiled modules across restarts.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<WasmProcessorFactory, Failure> {
        let host = WasmHost::new(HostConfig { cache_dir, ..HostConfig::default() })
            .map_err(|e| Failure::new("engine", e.to_string()))?;
        Ok(WasmProcessorFactory { host, modules: std::sync::Mutex::new(Vec::new()) })
    }

    fn module(&self, wasm: &[u8]) -> Result<TransformModule, Failure> {
        let key = crate::wasm::cache::sha256(wasm).to_vec();
        {
            let modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, module)) = modules.iter().find(|(k, _)| *k == key) {
                return Ok(module.clone());
            }
        }
        let module = self.host.load(wasm).map_err(load_failure)?;
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if modules.len() >= MODULES_CACHED_MAX {
            modules.remove(0);
        }
        modules.push((key, module.clone()));
        Ok(module)
    }
}

fn load_failure(e: LoadError) -> Failure {
    Failure::new("module", e.to_string())
}

impl ProcessorFactory for WasmProcessorFactory {
    fn validate(&self, module: &[u8]) -> Result<(), Failure> {
        self.module(module).map(|_| ())
    }

    fn instantiate(&self, setup: InstanceSetup<'_>) -> Result<Box<dyn Processor>, Failure> {
        let module = self.module(setup.module)?;
        let store: Arc<dyn StateStore> = Arc::new(StateAdapter(Arc::clone(&setup.state)));
        let mut config = InstanceConfig::new(setup.partition, setup.outputs, store);
        config.env = setup.env.clone();
        let instance = module.instantiate(config).map_err(|e| Failure::new("instantiate", e.to_string()))?;
        // What `runnel_init` logged.
        forward(&setup.log, &instance.log_ring().snapshot());
        Ok(Box::new(WasmProcessor { instance, log: setup.log }))
    }
}

/// The committed state, as the WASM host reads it.
struct StateAdapter(Arc<SharedState>);

impl StateStore for StateAdapter {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateStoreError> {
        Ok(self.0.get(key))
    }
}

struct WasmProcessor {
    instance: TransformInstance,
    log: Arc<dyn LogSink>,
}

impl Processor for WasmProcessor {
    fn process(&mut self, records: &[InRecord]) -> Result<Processed, Failure> {
        // The records are encoded into guest memory as the runner holds them (`InputBatch`).
        let output = self.instance.process_batch(records).map_err(failure)?;
        forward(&self.log, &output.logs);
        // ABI v1: -1 means "the input record's timestamp"; the SDK resolves it per record, a
        // hand-written guest gets the batch's last input timestamp.
        let fallback_ms = records.last().map_or(0, |r| r.timestamp_ms);
        let records = output
            .records
            .into_iter()
            .map(|emitted| match emitted {
                Emitted::Record(record) => Ok(out_record(record, fallback_ms)),
                // A forwarded input is the record the runner handed in: its bytes are shared,
                // not copied (decode_emitted checked the index against this batch).
                Emitted::Input { output_index, input_index } => match records.get(input_index as usize) {
                    Some(input) => Ok(OutRecord {
                        output: output_index,
                        timestamp_ms: input.timestamp_ms,
                        key: input.key.clone(),
                        value: input.value.clone(),
                        headers: input.headers.clone(),
                    }),
                    None => Err(Failure::new("output", format!("forwarded input {input_index} is not in the batch"))),
                },
            })
            .collect::<Result<Vec<_>, Failure>>()?;
        let state_changes = output.state_changes.into_iter().map(|c| (c.key, c.value)).collect();
        Ok(Processed { records, state_changes })
    }
}

fn out_record(record: OutputRecord, fallback_ms: i64) -> OutRecord {
    OutRecord {
        output: record.output_index,
        timestamp_ms: record.timestamp_or(fallback_ms),
        key: record.key,
        value: record.value,
        headers: record.headers.into_iter().map(|h| (String::from_utf8_lossy(&h.name).into_owned(), h.value)).collect(),
    }
}

fn failure(e: ProcessError) -> Failure {
    let kind = match &e {
        ProcessError::Trap { .. } | ProcessError::Exit { .. } => "trap",
        ProcessError::Deadline { .. } => "deadline",
        ProcessError::MemoryLimit { .. } => "memory",
        ProcessError::OutputTooLarge { .. } => "output",
        ProcessError::BadOutputIndex { .. } | ProcessError::MalformedOutput { .. } => "output",
        ProcessError::GuestError { .. } => "guest",
        _ => "host",
    };
    Failure::new(kind, e.to_string())
}

fn forward(sink: &Arc<dyn LogSink>, lines: &[LogLine]) {
    for line in lines {
        let level = match line.level {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        };
        sink.line(level, &line.message);
    }
}

/// The runner's records, encoded into guest memory directly (no list of views built first).
impl InputBatch for [InRecord] {
    fn encoded_len(&self) -> usize {
        batch_len(self.iter().map(|r| input_record_len(bytes_len(&r.key), bytes_len(&r.value), header_lens(r))))
    }

    fn write(&self, partition: i32, out: &mut [u8]) {
        let mut writer = BatchWriter::new(out, partition, self.len());
        for r in self {
            let headers = r.headers.iter().map(|(name, value)| (name.as_bytes(), value.as_deref()));
            writer.record(r.offset, r.timestamp_ms, r.key.as_deref(), r.value.as_deref(), headers);
        }
        writer.finish();
    }

    fn forward_sizes(&self, index: usize) -> Option<ForwardSizes> {
        let r = self.get(index)?;
        Some(ForwardSizes::of(bytes_len(&r.key), bytes_len(&r.value), header_lens(r)))
    }
}

fn bytes_len(bytes: &Option<bytes::Bytes>) -> Option<usize> {
    bytes.as_ref().map(|b| b.len())
}

fn header_lens(record: &InRecord) -> impl Iterator<Item = (usize, Option<usize>)> + '_ {
    record.headers.iter().map(|(name, value)| (name.len(), bytes_len(value)))
}
