//! [`TransformInstance`]: one store and linear memory per (transform, input partition), and
//! the batch round trip: encode input, `runnel_alloc`, `runnel_process`, decode output.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wasmtime::{Engine, Instance, InstancePre, Memory, Store, Trap, TypedFunc};

use crate::wasm::abi::{checked_len, decode_emitted_for, Emitted, InputRecord, OutputRecord, HOST_FEATURES};
use crate::wasm::clock::{GuestClock, SystemGuestClock};
use crate::wasm::error::{HostFault, InstantiateError, OutputCap, ProcessError};
use crate::wasm::input::InputBatch;
use crate::wasm::limits::{deadline_ticks, Limits};
use crate::wasm::log::{LogLine, LogRing};
use crate::wasm::module::{error_chain, TransformModule};
use crate::wasm::state::{StateChange, StateStore};
use crate::wasm::store::{os_seed, HostState};

/// Lines of guest log an instance keeps for `transform logs`: a few batches at the per-batch cap,
/// at most 256 x 4 KiB = 1 MiB per instance with the default line cap.
pub const LOG_RING_LINES_DEFAULT: usize = 256;

/// What one instance is given by the embedder.
#[derive(Clone)]
pub struct InstanceConfig {
    /// The input partition, passed to the guest in every batch header.
    pub partition: i32,
    /// Number of configured outputs; an output record must name an index below it.
    pub outputs: u32,
    /// `--env K=V` pairs, served by `env_get`.
    pub env: BTreeMap<String, String>,
    /// The committed state of this (transform, partition).
    pub state: Arc<dyn StateStore>,
    pub limits: Limits,
    /// Capacity of [`TransformInstance::log_ring`].
    pub log_ring_lines: usize,
    /// Seed of WASI `random_get`; `None` draws one from the OS. Set it to replay a run.
    pub random_seed: Option<u64>,
    /// The clocks the guest reads through WASI; a simulation supplies its own.
    pub clock: Arc<dyn GuestClock>,
}

impl InstanceConfig {
    /// Defaults for everything but the partition, the number of outputs and the state.
    pub fn new(partition: i32, outputs: u32, state: Arc<dyn StateStore>) -> Self {
        Self {
            partition,
            outputs,
            env: BTreeMap::new(),
            state,
            limits: Limits::default(),
            log_ring_lines: LOG_RING_LINES_DEFAULT,
            random_seed: None,
            clock: Arc::new(SystemGuestClock::new()),
        }
    }
}

/// The result of one successful batch. The embedder commits `records`, `state_changes` and
/// the input offset together, or none of them. `R` is [`OutputRecord`] from
/// [`TransformInstance::process`], [`Emitted`] from [`TransformInstance::process_emitted`].
#[derive(Debug)]
pub struct ProcessOutput<R = OutputRecord> {
    pub records: Vec<R>,
    /// Staged writes in key order; `value: None` deletes.
    pub state_changes: Vec<StateChange>,
    /// This batch's log lines (also appended to the instance's log ring).
    pub logs: Vec<LogLine>,
    /// Size of the encoded input and of the guest's output buffer, for metrics.
    pub input_bytes: usize,
    pub output_bytes: usize,
}

/// One running instance. Synchronous and `Send`: the broker drives it from a blocking thread,
/// one batch at a time.
pub struct TransformInstance {
    module: TransformModule,
    partition: i32,
    outputs: u32,
    limits: Arc<Limits>,
    env: Arc<BTreeMap<String, String>>,
    state: Arc<dyn StateStore>,
    random_seed: Option<u64>,
    clock: Arc<dyn GuestClock>,
    ring: LogRing,
    /// `None` after a failure that left linear memory undefined; re-created on next use.
    live: Option<Live>,
    batch: u64,
    instantiations: u64,
}

struct Live {
    store: Store<HostState>,
    /// The ABI extensions this instance's module accepted (`runnel_abi_features`).
    features: i64,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    process: TypedFunc<(i32, i32), i64>,
}

/// An instance and its memory, fresh from instantiation (used at load and per instance).
pub(crate) struct Instantiated {
    pub(crate) instance: Instance,
    pub(crate) memory: Memory,
}

impl TransformInstance {
    pub(crate) fn new(module: TransformModule, config: InstanceConfig) -> Result<Self, InstantiateError> {
        let mut instance = Self {
            module,
            partition: config.partition,
            outputs: config.outputs,
            limits: Arc::new(config.limits),
            env: Arc::new(config.env),
            state: config.state,
            random_seed: config.random_seed,
            clock: config.clock,
            ring: LogRing::new(config.log_ring_lines),
            live: None,
            batch: 0,
            instantiations: 0,
        };
        instance.live = Some(instance.instantiate_live()?);
        Ok(instance)
    }

    /// Runs one batch. On success the caller commits the output; on failure nothing of the
    /// batch survives, and if [`ProcessError::discards_instance`] the next call starts from a
    /// fresh instance. Inputs the module forwarded (`keep-input`) come back as copies.
    pub fn process(&mut self, records: &[InputRecord<'_>]) -> Result<ProcessOutput, ProcessError> {
        let output = self.process_emitted(records)?;
        let materialized = output
            .records
            .into_iter()
            .map(|emitted| match emitted {
                Emitted::Record(record) => record,
                // decode_emitted checked the index against this batch.
                Emitted::Input { output_index, input_index } => {
                    OutputRecord::forwarded(output_index, &records[input_index as usize])
                }
            })
            .collect();
        Ok(ProcessOutput {
            records: materialized,
            state_changes: output.state_changes,
            logs: output.logs,
            input_bytes: output.input_bytes,
            output_bytes: output.output_bytes,
        })
    }

    /// [`Self::process`], leaving forwarded inputs as [`Emitted::Input`]: an embedder that
    /// holds the input records passes them on without a copy.
    pub fn process_emitted(&mut self, records: &[InputRecord<'_>]) -> Result<ProcessOutput<Emitted>, ProcessError> {
        self.process_batch(records)
    }

    /// [`Self::process_emitted`] for any [`InputBatch`]: the transform runner's own records are
    /// encoded into guest memory as they are.
    pub(crate) fn process_batch<B: InputBatch + ?Sized>(
        &mut self,
        records: &B,
    ) -> Result<ProcessOutput<Emitted>, ProcessError> {
        self.batch += 1;
        let batch = self.batch;
        let input_bytes = checked_len(records, self.limits.input_bytes_max)?;
        if self.live.is_none() {
            self.live = Some(self.instantiate_live().map_err(ProcessError::Instantiate)?);
        }
        let Some(live) = self.live.as_mut() else {
            unreachable!("instance was just created");
        };
        let ticks = deadline_ticks(self.limits.process_deadline, self.module.inner.host.inner.config.epoch_tick);
        live.store.data_mut().begin_call(batch);
        let input = Input { partition: self.partition, records, bytes: input_bytes };
        let result = run_batch(live, &input, ticks, self.outputs, &self.limits);
        let host = live.store.data_mut();
        let logs = finish_logs(host, &self.limits, batch);
        self.ring.extend(&logs);
        let state_changes = host.overlay.take();
        match result {
            Ok((records, output_bytes)) => {
                Ok(ProcessOutput { records, state_changes, logs, input_bytes, output_bytes })
            }
            Err(error) => {
                if error.discards_instance() {
                    self.live = None;
                }
                Err(error)
            }
        }
    }

    /// Drops the current instance and creates a fresh one now (also done lazily by
    /// [`Self::process`] after a failure that discards the instance).
    pub fn reset(&mut self) -> Result<(), InstantiateError> {
        self.live = None;
        self.live = Some(self.instantiate_live()?);
        Ok(())
    }

    /// The instance's recent guest log lines, shared: clone it to show `transform logs`.
    pub fn log_ring(&self) -> &LogRing {
        &self.ring
    }

    /// How many times the module was instantiated for this instance (1 + resets).
    pub fn instantiations(&self) -> u64 {
        self.instantiations
    }

    pub fn module(&self) -> &TransformModule {
        &self.module
    }

    /// Current size of the guest's linear memory, 0 while there is no live instance.
    pub fn memory_bytes(&self) -> usize {
        self.live.as_ref().map_or(0, |live| live.memory.data_size(&live.store))
    }

    fn instantiate_live(&mut self) -> Result<Live, InstantiateError> {
        let host = &self.module.inner.host.inner;
        let seed = self.random_seed.unwrap_or_else(os_seed);
        let state = HostState::new(
            Arc::clone(&self.limits),
            Arc::clone(&self.env),
            Arc::clone(&self.state),
            seed.wrapping_add(self.instantiations),
            Arc::clone(&self.clock),
        );
        self.instantiations += 1;
        let mut store = new_store(&host.engine, state);
        let ticks = deadline_ticks(self.limits.init_deadline, host.config.epoch_tick);
        let Instantiated { instance, memory } = instantiate(&mut store, &self.module.inner.pre, ticks)?;
        let internal = |error: wasmtime::Error| InstantiateError::Instantiate { message: error_chain(&error) };
        let alloc = instance.get_typed_func::<i32, i32>(&mut store, "runnel_alloc").map_err(internal)?;
        let process = instance.get_typed_func::<(i32, i32), i64>(&mut store, "runnel_process").map_err(internal)?;
        if self.module.inner.has_wasi_initialize {
            self.call_wasi_initialize(&mut store, &instance, ticks)?;
        }
        let features = match self.module.inner.has_features {
            true => negotiate_features(&mut store, &instance, ticks, self.limits.init_deadline)?,
            false => 0,
        };
        if self.module.inner.has_init {
            let init = instance.get_typed_func::<(), i32>(&mut store, "runnel_init").map_err(internal)?;
            store.data_mut().begin_call(0);
            store.set_epoch_deadline(ticks);
            let result = init.call(&mut store, ());
            let logs = finish_logs(store.data_mut(), &self.limits, 0);
            self.ring.extend(&logs);
            match result {
                Ok(0) => {}
                Ok(code) => {
                    return Err(InstantiateError::InitFailed { code, message: store.data_mut().error_message.take() })
                }
                Err(error) => {
                    let error = classify(error, store.data(), self.limits.init_deadline);
                    return Err(InstantiateError::InitFault(Box::new(error)));
                }
            }
            // State writes from `runnel_init` have no batch to commit with: dropped.
            store.data_mut().overlay.clear();
        }
        Ok(Live { store, features, memory, alloc, process })
    }
}

impl TransformInstance {
    /// Runs a WASI reactor's `_initialize` (its libc constructors) before anything else.
    fn call_wasi_initialize(
        &mut self,
        store: &mut Store<HostState>,
        instance: &Instance,
        ticks: u64,
    ) -> Result<(), InstantiateError> {
        let initialize = instance
            .get_typed_func::<(), ()>(&mut *store, "_initialize")
            .map_err(|error| InstantiateError::Instantiate { message: error_chain(&error) })?;
        store.data_mut().begin_call(0);
        store.set_epoch_deadline(ticks);
        let result = initialize.call(&mut *store, ());
        let logs = finish_logs(store.data_mut(), &self.limits, 0);
        self.ring.extend(&logs);
        result.map_err(|error| {
            let error = classify(error, store.data(), self.limits.init_deadline);
            InstantiateError::InitFault(Box::new(error))
        })
    }
}

impl std::fmt::Debug for TransformInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransformInstance")
            .field("module", &self.module)
            .field("partition", &self.partition)
            .field("batch", &self.batch)
            .field("live", &self.live.is_some())
            .finish_non_exhaustive()
    }
}

/// Offers the host's ABI extensions to a module that exports `runnel_abi_features` and returns
/// what it accepted, refusing an answer outside the offer.
pub(crate) fn negotiate_features(
    store: &mut Store<HostState>,
    instance: &Instance,
    ticks: u64,
    budget: Duration,
) -> Result<i64, InstantiateError> {
    let features = instance
        .get_typed_func::<i64, i64>(&mut *store, "runnel_abi_features")
        .map_err(|error| InstantiateError::Instantiate { message: error_chain(&error) })?;
    store.data_mut().begin_call(0);
    store.set_epoch_deadline(ticks);
    let accepted = features
        .call(&mut *store, HOST_FEATURES)
        .map_err(|error| InstantiateError::InitFault(Box::new(classify(error, store.data(), budget))))?;
    if accepted & !HOST_FEATURES != 0 {
        return Err(InstantiateError::AbiFeatures { accepted, offered: HOST_FEATURES });
    }
    Ok(accepted)
}

/// A batch on its way in, its encoded size already checked.
struct Input<'r, B: ?Sized> {
    partition: i32,
    records: &'r B,
    bytes: usize,
}

/// The batch round trip on a live instance. Returns the records and the output size.
fn run_batch<B: InputBatch + ?Sized>(
    live: &mut Live,
    input: &Input<'_, B>,
    ticks: u64,
    outputs: u32,
    limits: &Limits,
) -> Result<(Vec<Emitted>, usize), ProcessError> {
    let budget = limits.process_deadline;
    let store = &mut live.store;
    // One deadline covers the allocation and the processing of the batch.
    store.set_epoch_deadline(ticks);
    // checked_input_len caps the batch at i32::MAX bytes.
    let len = u32::try_from(input.bytes).expect("input batch fits u32");
    let ptr = live.alloc.call(&mut *store, len as i32).map_err(|error| classify(error, store.data(), budget))? as u32;
    if ptr == 0 {
        return Err(ProcessError::AllocFailed { len });
    }
    let memory_bytes = live.memory.data_size(&*store);
    let end = ptr as usize + len as usize;
    if end > memory_bytes {
        return Err(ProcessError::AllocOutOfBounds { ptr, len, memory_bytes });
    }
    // Encoded straight into the guest's buffer: no intermediate copy.
    input.records.write(input.partition, &mut live.memory.data_mut(&mut *store)[ptr as usize..end]);
    let returned = live
        .process
        .call(&mut *store, (ptr as i32, len as i32))
        .map_err(|error| classify(error, store.data(), budget))?;
    if returned < 0 {
        return Err(ProcessError::GuestError { code: returned, message: store.data_mut().error_message.take() });
    }
    let out_ptr = (returned as u64 >> 32) as u32;
    let out_len = returned as u32;
    if out_len as usize > limits.output_bytes_max {
        return Err(ProcessError::OutputTooLarge {
            cap: OutputCap::Bytes,
            found: u64::from(out_len),
            max: limits.output_bytes_max as u64,
        });
    }
    let data = live.memory.data(&*store);
    let end = out_ptr as usize + out_len as usize;
    if end > data.len() {
        return Err(ProcessError::OutputOutOfBounds { ptr: out_ptr, len: out_len, memory_bytes: data.len() });
    }
    let buffer = Bytes::copy_from_slice(&data[out_ptr as usize..end]);
    let records = decode_emitted_for(&buffer, outputs, input.records, live.features, limits)?;
    Ok((records, buffer.len()))
}

fn finish_logs(host: &mut HostState, limits: &Limits, batch: u64) -> Vec<LogLine> {
    host.log.finish(batch, limits.log_lines_per_batch_max, limits.log_line_bytes_max);
    std::mem::take(&mut host.log.lines)
}

/// A store with the memory limiter installed and epoch deadlines that trap.
pub(crate) fn new_store(engine: &Engine, state: HostState) -> Store<HostState> {
    let mut store = Store::new(engine, state);
    store.limiter(|host| &mut host.limiter);
    store.epoch_deadline_trap();
    store
}

/// Instantiates `pre` in `store` (start function under the deadline) and records the memory.
pub(crate) fn instantiate(
    store: &mut Store<HostState>,
    pre: &InstancePre<HostState>,
    ticks: u64,
) -> Result<Instantiated, InstantiateError> {
    store.set_epoch_deadline(ticks);
    let instance = pre.instantiate(&mut *store).map_err(|error| {
        if store.data().limiter.growth_refused {
            InstantiateError::MemoryLimit { limit_bytes: store.data().limits.memory_bytes_max }
        } else {
            InstantiateError::Instantiate { message: error_chain(&error) }
        }
    })?;
    let memory = instance
        .get_memory(&mut *store, "memory")
        .ok_or_else(|| InstantiateError::Instantiate { message: "no `memory` export".to_string() })?;
    store.data_mut().memory = Some(memory);
    Ok(Instantiated { instance, memory })
}

/// Turns a failed guest call into the [`ProcessError`] that names its cause.
pub(crate) fn classify(error: wasmtime::Error, host: &HostState, budget: Duration) -> ProcessError {
    let error = match error.downcast::<HostFault>() {
        Ok(HostFault::StateStore { message }) => return ProcessError::StateStore { message },
        Ok(fault) if !host.limiter.growth_refused => return fault.into(),
        Ok(fault) => wasmtime::Error::new(fault),
        Err(error) => error,
    };
    // A refused growth explains whatever followed: the guest's OOM trap, or a spin.
    if host.limiter.growth_refused {
        return ProcessError::MemoryLimit { limit_bytes: host.limits.memory_bytes_max };
    }
    let guest_message =
        host.error_message.as_ref().map(|message| format!(" (guest error: {message})")).unwrap_or_default();
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => {
            ProcessError::Deadline { budget_ms: u64::try_from(budget.as_millis()).unwrap_or(u64::MAX) }
        }
        Some(trap) => ProcessError::Trap { message: format!("{trap}{guest_message}") },
        // Not a trap: wasmtime itself failed (host out of memory, ...).
        None => ProcessError::Internal { message: format!("{}{guest_message}", error_chain(&error)) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn embedding_types_cross_threads() {
        assert_send::<TransformInstance>();
        assert_send_sync::<TransformModule>();
        assert_send_sync::<crate::WasmHost>();
        assert_send_sync::<LogRing>();
    }
}
