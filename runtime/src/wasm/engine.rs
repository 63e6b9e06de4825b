//! [`WasmHost`]: the process's one wasmtime `Engine`, its epoch ticker, the host imports and
//! the precompiled-module cache.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Engine, Linker, OptLevel};

use crate::wasm::cache::ModuleCache;
use crate::wasm::error::{HostError, LoadError};
use crate::wasm::limits::Limits;
use crate::wasm::module::{self, TransformModule};
use crate::wasm::store::HostState;
use crate::wasm::{host, wasi};

/// How the host is set up. `Default` suits tests; the broker sets `cache_dir`.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Where compiled modules are kept across restarts; `None` compiles on every load.
    /// Must be a directory only the broker writes (artifacts in it are executed).
    pub cache_dir: Option<PathBuf>,
    /// Epoch period: the granularity of every deadline. 10 ms costs nothing measurable and
    /// stops a runaway batch within about 1% of a 1 s budget.
    pub epoch_tick: Duration,
    /// Largest module accepted at deploy.
    pub module_bytes_max: usize,
    /// Limits for the deploy-time instantiation that checks `runnel_abi_version`.
    pub load_limits: Limits,
    /// Guest stack, in bytes: deep recursion traps instead of taking the host thread's stack.
    pub wasm_stack_bytes_max: usize,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            epoch_tick: Duration::from_millis(10),
            module_bytes_max: 64 * 1024 * 1024,
            load_limits: Limits::default(),
            wasm_stack_bytes_max: 512 * 1024,
        }
    }
}

/// Set (to anything) to have wasmtime write a perf map of compiled guest code for profiling.
pub(crate) const PERFMAP_ENV: &str = "RUNNEL_WASM_PERFMAP";

/// The WASM host of a process: create one, load modules with it, instantiate them.
///
/// Cheap to clone (shared). The epoch ticker thread runs while any clone, module or instance
/// is alive, so every instance's deadline keeps being enforced, and stops with the last one.
#[derive(Clone)]
pub struct WasmHost {
    pub(crate) inner: Arc<HostInner>,
}

pub(crate) struct HostInner {
    pub(crate) engine: Engine,
    /// `runnel.*` and the implemented WASI functions; cloned per module to add stubs.
    pub(crate) linker: Linker<HostState>,
    pub(crate) cache: Option<ModuleCache>,
    pub(crate) config: HostConfig,
    _ticker: Ticker,
}

impl WasmHost {
    pub fn new(config: HostConfig) -> Result<Self, HostError> {
        let mut engine_config = wasmtime::Config::new();
        engine_config
            .epoch_interruption(true)
            .max_wasm_stack(config.wasm_stack_bytes_max)
            .cranelift_opt_level(OptLevel::Speed);
        // A developer's switch, not configuration: `perf` (and the method in benches/README.md)
        // names guest functions from /tmp/perf-<pid>.map, which wasmtime then writes.
        if std::env::var_os(PERFMAP_ENV).is_some() {
            engine_config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&engine_config).map_err(|error| HostError::Engine { message: error.to_string() })?;
        let mut linker = Linker::new(&engine);
        host::define(&mut linker)
            .and_then(|()| wasi::define(&mut linker))
            .map_err(|error| HostError::Engine { message: error.to_string() })?;
        let cache = match &config.cache_dir {
            Some(dir) => Some(
                ModuleCache::open(dir, &engine).map_err(|source| HostError::CacheDir { path: dir.clone(), source })?,
            ),
            None => None,
        };
        let ticker = Ticker::start(engine.clone(), config.epoch_tick)?;
        Ok(Self { inner: Arc::new(HostInner { engine, linker, cache, config, _ticker: ticker }) })
    }

    /// Validates, compiles (or loads from the cache) and checks a module at deploy: exports,
    /// imports, and `runnel_abi_version() == 1`. The result instantiates cheaply, any number
    /// of times.
    pub fn load(&self, wasm: &[u8]) -> Result<TransformModule, LoadError> {
        module::load(self, wasm)
    }

    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }
}

impl std::fmt::Debug for WasmHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmHost").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

/// Increments the engine's epoch every tick until dropped.
struct Ticker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine, tick: Duration) -> Result<Self, HostError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("runnel-wasm-epoch".into())
            .spawn(move || {
                // Ends when `Ticker` drops its sender (Disconnected) or sends a stop.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    engine.increment_epoch();
                }
            })
            .map_err(|source| HostError::Ticker { source })?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread at once (Disconnected).
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn ticker_advances_the_epoch_and_stops_with_the_last_handle() {
        let host =
            WasmHost::new(HostConfig { epoch_tick: Duration::from_millis(1), ..HostConfig::default() }).expect("host");
        let clone = host.clone();
        let weak = host.inner.engine.weak();
        drop(host);
        std::thread::sleep(Duration::from_millis(20));
        assert!(weak.upgrade().is_some(), "a clone keeps the engine and its ticker");
        let started = Instant::now();
        drop(clone);
        // Dropping the last handle joins the ticker thread at once (no tick to wait for).
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(weak.upgrade().is_none(), "the ticker thread released its engine");
    }
}
