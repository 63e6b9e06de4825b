//! Loading a module at deploy: compile or fetch from the cache, check exports and imports
//! against ABI v1, link, and ask the module its ABI version.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::{ExternType, InstancePre, Linker, Module};

use crate::wasm::abi::ABI_VERSION;
use crate::wasm::cache::{hex, sha256};
use crate::wasm::clock::SystemGuestClock;
use crate::wasm::engine::WasmHost;
use crate::wasm::error::{InstantiateError, LoadError};
use crate::wasm::host::{describe_func, sig, HostSignature, Wasm, RUNNEL_IMPORTS, RUNNEL_MODULE};
use crate::wasm::instance::{self, InstanceConfig, TransformInstance};
use crate::wasm::limits::deadline_ticks;
use crate::wasm::state::MemoryStateStore;
use crate::wasm::store::HostState;
use crate::wasm::wasi::{self, PREVIEW1_FUNCTIONS, WASI_IMPORTS, WASI_MODULE};

/// Where a loaded module's machine code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleSource {
    /// Compiled from the wasm bytes by this load (and written to the cache, if any).
    Compiled,
    /// Loaded from the precompiled-module cache.
    Cache,
}

/// A module that passed every deploy check, ready to instantiate. Cheap to clone, `Send` and
/// `Sync`: one per deployed transform, shared by its per-partition instances.
#[derive(Clone)]
pub struct TransformModule {
    pub(crate) inner: Arc<ModuleInner>,
}

pub(crate) struct ModuleInner {
    pub(crate) host: WasmHost,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) digest: [u8; 32],
    pub(crate) source: ModuleSource,
    pub(crate) has_init: bool,
    /// Exports `runnel_abi_features` (ABI v1 extensions are negotiated per instance).
    pub(crate) has_features: bool,
    /// A WASI reactor's `_initialize` (libc constructors), called before `runnel_init`.
    pub(crate) has_wasi_initialize: bool,
}

impl TransformModule {
    /// SHA-256 of the wasm bytes, hex: names the module in logs and the cache.
    pub fn digest_hex(&self) -> String {
        hex(&self.inner.digest)
    }

    pub fn source(&self) -> ModuleSource {
        self.inner.source
    }

    /// Creates the instance for one (transform, input partition): a fresh store and linear
    /// memory, then `runnel_init` if exported.
    pub fn instantiate(&self, config: InstanceConfig) -> Result<TransformInstance, InstantiateError> {
        TransformInstance::new(self.clone(), config)
    }
}

impl std::fmt::Debug for TransformModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransformModule")
            .field("digest", &self.digest_hex())
            .field("source", &self.inner.source)
            .field("has_init", &self.inner.has_init)
            .finish()
    }
}

/// Exports ABI v1 requires (besides `memory`), with their signatures.
const REQUIRED_EXPORTS: &[HostSignature] = &[
    sig("runnel_abi_version", &[], &[Wasm::I32]),
    sig("runnel_alloc", &[Wasm::I32], &[Wasm::I32]),
    sig("runnel_process", &[Wasm::I32, Wasm::I32], &[Wasm::I64]),
];
const INIT_EXPORT: HostSignature = sig("runnel_init", &[], &[Wasm::I32]);
const FEATURES_EXPORT: HostSignature = sig("runnel_abi_features", &[Wasm::I64], &[Wasm::I64]);
/// WASI reactor modules (e.g. C built with `-mexec-model=reactor`) export `_initialize`, which
/// must run once before any other export.
const WASI_INITIALIZE_EXPORT: HostSignature = sig("_initialize", &[], &[]);

pub(crate) fn load(host: &WasmHost, wasm: &[u8]) -> Result<TransformModule, LoadError> {
    let inner = &host.inner;
    let max_bytes = inner.config.module_bytes_max;
    if wasm.len() > max_bytes {
        return Err(LoadError::TooLarge { size_bytes: wasm.len(), max_bytes });
    }
    let digest = sha256(wasm);
    let cached = inner.cache.as_ref().and_then(|cache| cache.load(&inner.engine, &digest));
    let (module, source) = match cached {
        Some(module) => (module, ModuleSource::Cache),
        None => {
            let module = Module::from_binary(&inner.engine, wasm)
                .map_err(|error| LoadError::Invalid { message: error_chain(&error) })?;
            (module, ModuleSource::Compiled)
        }
    };
    let has_init = check_exports(&module)?;
    let has_wasi_initialize = check_func_export(&module, &WASI_INITIALIZE_EXPORT, false)?;
    let has_features = check_func_export(&module, &FEATURES_EXPORT, false)?;
    let linker = link(&inner.linker, &module)?;
    let pre = linker.instantiate_pre(&module).map_err(|error| LoadError::Link { message: error_chain(&error) })?;
    check_abi_version(host, &pre, has_features)?;
    if source == ModuleSource::Compiled {
        if let Some(cache) = &inner.cache {
            if let Err(error) = cache.store(&module, &digest) {
                tracing::warn!(%error, "module cache: cannot store compiled module");
            }
        }
    }
    Ok(TransformModule {
        inner: Arc::new(ModuleInner {
            host: host.clone(),
            pre,
            digest,
            source,
            has_init,
            has_features,
            has_wasi_initialize,
        }),
    })
}

/// Checks `memory` and the `runnel_*` exports; returns whether `runnel_init` is exported.
fn check_exports(module: &Module) -> Result<bool, LoadError> {
    const MEMORY: &str = "a 32-bit, non-shared linear memory";
    match module.get_export("memory") {
        None => return Err(LoadError::MissingExport { name: "memory", expected: MEMORY }),
        Some(ExternType::Memory(memory)) if !memory.is_64() && !memory.is_shared() => {}
        Some(other) => {
            return Err(LoadError::ExportType { name: "memory", expected: MEMORY, found: describe_extern(&other) })
        }
    }
    for export in REQUIRED_EXPORTS {
        check_func_export(module, export, true)?;
    }
    check_func_export(module, &INIT_EXPORT, false)
}

/// Checks one function export; returns whether it is present.
fn check_func_export(module: &Module, export: &HostSignature, required: bool) -> Result<bool, LoadError> {
    // Names of `REQUIRED_EXPORTS` in the error variants: 'static descriptions of the
    // expected signatures.
    let expected = match export.name {
        "runnel_abi_version" => "func () -> (i32)",
        "runnel_alloc" => "func (i32) -> (i32)",
        "runnel_process" => "func (i32, i32) -> (i64)",
        "_initialize" => "func () -> ()",
        "runnel_abi_features" => "func (i64) -> (i64)",
        _ => "func () -> (i32)",
    };
    debug_assert_eq!(expected, export.describe());
    match module.get_export(export.name) {
        None if required => Err(LoadError::MissingExport { name: export.name, expected }),
        None => Ok(false),
        Some(ExternType::Func(ty)) if export.matches(&ty) => Ok(true),
        Some(other) => Err(LoadError::ExportType { name: export.name, expected, found: describe_extern(&other) }),
    }
}

/// A linker for `module`: the host's, plus `ENOSYS` stubs for the WASI preview 1 functions it
/// imports that the host does not implement. Refuses every other import.
fn link(base: &Linker<HostState>, module: &Module) -> Result<Linker<HostState>, LoadError> {
    let mut linker = base.clone();
    for import in module.imports() {
        let (module_name, name) = (import.module(), import.name());
        let unknown = || LoadError::UnknownImport { module: module_name.to_string(), name: name.to_string() };
        let ExternType::Func(ty) = import.ty() else {
            return Err(unknown());
        };
        let provided = match module_name {
            RUNNEL_MODULE => RUNNEL_IMPORTS.iter().find(|host| host.name == name),
            WASI_MODULE => WASI_IMPORTS.iter().find(|host| host.name == name),
            _ => return Err(unknown()),
        };
        let mismatch = |expected: String| LoadError::ImportType {
            module: module_name.to_string(),
            name: name.to_string(),
            expected,
            found: describe_func(&ty),
        };
        match provided {
            Some(host) if host.matches(&ty) => {}
            Some(host) => return Err(mismatch(host.describe())),
            None if module_name == WASI_MODULE && PREVIEW1_FUNCTIONS.contains(&name) => {
                let stubbed = wasi::define_enosys_stub(&mut linker, name, &ty)
                    .map_err(|error| LoadError::Link { message: error_chain(&error) })?;
                if !stubbed {
                    return Err(mismatch("a function returning an i32 errno".to_string()));
                }
            }
            None => return Err(unknown()),
        }
    }
    Ok(linker)
}

/// Instantiates once in a throwaway store and calls `runnel_abi_version`, then
/// `runnel_abi_features` when exported (an answer outside the host's offer refuses the module).
fn check_abi_version(host: &WasmHost, pre: &InstancePre<HostState>, has_features: bool) -> Result<(), LoadError> {
    let inner = &host.inner;
    let limits = Arc::new(inner.config.load_limits.clone());
    let budget = limits.init_deadline;
    let ticks = deadline_ticks(budget, inner.config.epoch_tick);
    let state = HostState::new(
        Arc::clone(&limits),
        Arc::new(BTreeMap::new()),
        MemoryStateStore::new(),
        0,
        Arc::new(SystemGuestClock::new()),
    );
    let mut store = instance::new_store(&inner.engine, state);
    let handle = instance::instantiate(&mut store, pre, ticks).map_err(LoadError::Instantiate)?;
    let abi_version = handle
        .instance
        .get_typed_func::<(), i32>(&mut store, "runnel_abi_version")
        .map_err(|error| LoadError::Link { message: error_chain(&error) })?;
    store.set_epoch_deadline(ticks);
    let found = abi_version
        .call(&mut store, ())
        .map_err(|error| LoadError::AbiVersionCall(Box::new(instance::classify(error, store.data(), budget))))?;
    if found != ABI_VERSION {
        return Err(LoadError::AbiVersion { found, supported: ABI_VERSION });
    }
    if has_features {
        instance::negotiate_features(&mut store, &handle.instance, ticks, budget).map_err(LoadError::Instantiate)?;
    }
    Ok(())
}

fn describe_extern(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(func) => describe_func(func),
        ExternType::Memory(memory) if memory.is_64() => "a 64-bit memory".to_string(),
        ExternType::Memory(memory) if memory.is_shared() => "a shared memory".to_string(),
        ExternType::Memory(_) => "a memory".to_string(),
        ExternType::Global(_) => "a global".to_string(),
        ExternType::Table(_) => "a table".to_string(),
        ExternType::Tag(_) => "a tag".to_string(),
    }
}

/// An error and its causes on one line.
pub(crate) fn error_chain(error: &wasmtime::Error) -> String {
    error.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ")
}
