//! Typed errors of the WASM host: one enum per stage (host setup, load, instantiate, process).
//!
//! The broker maps them at its edge: a [`LoadError`] refuses a deploy (HTTP 400 with the
//! message), a [`ProcessError`] fails one batch and feeds the transform's `--on-error` policy.

use std::path::PathBuf;

/// Creating the [`crate::WasmHost`] failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("wasmtime engine configuration refused: {message}")]
    Engine { message: String },
    #[error("cannot create the module cache directory {path}: {source}")]
    CacheDir { path: PathBuf, source: std::io::Error },
    #[error("cannot start the epoch ticker thread: {source}")]
    Ticker { source: std::io::Error },
}

/// A module was refused at deploy. Every variant names what is wrong in terms of the ABI.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("module is {size_bytes} bytes, over the {max_bytes}-byte cap")]
    TooLarge { size_bytes: usize, max_bytes: usize },
    #[error("not a valid WebAssembly module: {message}")]
    Invalid { message: String },
    #[error("module does not export `{name}` (ABI v1 requires {expected})")]
    MissingExport { name: &'static str, expected: &'static str },
    #[error("export `{name}` has the wrong type: ABI v1 requires {expected}, the module has {found}")]
    ExportType { name: &'static str, expected: &'static str, found: String },
    #[error("import `{module}.{name}` is not provided by the Runnel host (only `runnel.*` and WASI preview 1 functions are)")]
    UnknownImport { module: String, name: String },
    #[error("import `{module}.{name}` has the wrong type: the host provides {expected}, the module asks for {found}")]
    ImportType { module: String, name: String, expected: String, found: String },
    #[error("module speaks Runnel ABI version {found}; this host supports ABI version {supported}")]
    AbiVersion { found: i32, supported: i32 },
    #[error("cannot instantiate the module to check its ABI version: {0}")]
    Instantiate(#[source] InstantiateError),
    #[error("calling `runnel_abi_version` failed: {0}")]
    AbiVersionCall(#[source] Box<ProcessError>),
    #[error("linking the module failed: {message}")]
    Link { message: String },
}

/// Creating (or re-creating) a transform instance failed.
#[derive(Debug, thiserror::Error)]
pub enum InstantiateError {
    #[error("the module's initial memory or tables exceed the {limit_bytes}-byte memory cap")]
    MemoryLimit { limit_bytes: usize },
    #[error("instantiation failed: {message}")]
    Instantiate { message: String },
    #[error("`runnel_init` returned {code}{}", message_suffix(.message))]
    InitFailed { code: i32, message: Option<String> },
    #[error("initialization (`_initialize`, `runnel_abi_features` or `runnel_init`) failed: {0}")]
    InitFault(#[source] Box<ProcessError>),
    #[error("`runnel_abi_features` accepted extensions {accepted:#x}, but the host offered only {offered:#x}")]
    AbiFeatures { accepted: i64, offered: i64 },
}

/// Which output cap a batch exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputCap {
    /// The whole output buffer, in bytes.
    Bytes,
    /// Records in the output batch.
    Records,
    /// One record value, in bytes.
    ValueBytes,
}

impl std::fmt::Display for OutputCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OutputCap::Bytes => "output bytes",
            OutputCap::Records => "output records",
            OutputCap::ValueBytes => "bytes in one output value",
        })
    }
}

/// One batch failed. The batch's state writes are discarded; see
/// [`ProcessError::discards_instance`] for what happens to the instance.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("the guest trapped: {message}")]
    Trap { message: String },
    #[error("the batch ran past its {budget_ms} ms deadline and was interrupted")]
    Deadline { budget_ms: u64 },
    #[error("the guest hit its {limit_bytes}-byte memory cap")]
    MemoryLimit { limit_bytes: usize },
    #[error("the guest passed an out-of-bounds buffer to `{import}`: {ptr}+{len} over {memory_bytes} bytes of memory")]
    HostCallOutOfBounds { import: &'static str, ptr: u32, len: u32, memory_bytes: usize },
    #[error("the guest called proc_exit({code})")]
    Exit { code: i32 },
    #[error("the state store failed: {message}")]
    StateStore { message: String },
    #[error("`runnel_process` returned {code}{}", message_suffix(.message))]
    GuestError { code: i64, message: Option<String> },
    #[error("the encoded input batch is {bytes} bytes, over the {max_bytes}-byte cap")]
    InputTooLarge { bytes: usize, max_bytes: usize },
    #[error("`runnel_alloc({len})` failed (returned 0)")]
    AllocFailed { len: u32 },
    #[error("`runnel_alloc` returned an out-of-bounds buffer: {ptr}+{len} over {memory_bytes} bytes of memory")]
    AllocOutOfBounds { ptr: u32, len: u32, memory_bytes: usize },
    #[error("the output batch is over the cap on {cap}: {found} > {max}")]
    OutputTooLarge { cap: OutputCap, found: u64, max: u64 },
    #[error("the output buffer is out of bounds: {ptr}+{len} over {memory_bytes} bytes of memory")]
    OutputOutOfBounds { ptr: u32, len: u32, memory_bytes: usize },
    #[error("output record {record} names output {output_index}, but the transform has {outputs} output(s)")]
    BadOutputIndex { record: usize, output_index: u32, outputs: u32 },
    #[error("malformed output batch at byte {at_byte}: {reason}")]
    MalformedOutput { at_byte: usize, reason: &'static str },
    #[error("re-instantiating the transform failed: {0}")]
    Instantiate(#[source] InstantiateError),
    #[error("wasmtime failed: {message}")]
    Internal { message: String },
}

impl ProcessError {
    /// True when the guest's linear memory can no longer be trusted (a trap, interruption,
    /// memory exhaustion, or a fault inside a host call), so the instance was dropped and the
    /// next [`crate::TransformInstance::process`] re-instantiates it (running `runnel_init`
    /// again; state lives in the [`crate::StateStore`], not in linear memory). False when the
    /// guest returned normally (its memory is consistent) and the instance is kept.
    pub fn discards_instance(&self) -> bool {
        match self {
            ProcessError::Trap { .. }
            | ProcessError::Deadline { .. }
            | ProcessError::MemoryLimit { .. }
            | ProcessError::HostCallOutOfBounds { .. }
            | ProcessError::Exit { .. }
            | ProcessError::StateStore { .. }
            | ProcessError::Instantiate(_)
            | ProcessError::Internal { .. } => true,
            ProcessError::GuestError { .. }
            | ProcessError::InputTooLarge { .. }
            | ProcessError::AllocFailed { .. }
            | ProcessError::AllocOutOfBounds { .. }
            | ProcessError::OutputTooLarge { .. }
            | ProcessError::OutputOutOfBounds { .. }
            | ProcessError::BadOutputIndex { .. }
            | ProcessError::MalformedOutput { .. } => false,
        }
    }
}

impl ProcessError {
    /// True when the batch failed for a reason outside the guest (the state store, wasmtime
    /// itself): retry the same batch rather than apply the transform's `--on-error` policy
    /// (skip, dead-letter, stop), which is for failures the guest's code or data caused.
    pub fn is_host_failure(&self) -> bool {
        matches!(self, ProcessError::StateStore { .. } | ProcessError::Internal { .. })
    }
}

fn message_suffix(message: &Option<String>) -> String {
    match message {
        Some(message) => format!(": {message}"),
        None => String::new(),
    }
}

/// Raised inside a host import to trap the guest; recovered by downcasting when the call
/// returns, and turned into the matching [`ProcessError`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostFault {
    #[error("out-of-bounds buffer passed to `{import}`: {ptr}+{len} over {memory_bytes} bytes")]
    OutOfBounds { import: &'static str, ptr: u32, len: u32, memory_bytes: usize },
    #[error("`{import}` called before the module's memory was available")]
    NoMemory { import: &'static str },
    #[error("proc_exit({code})")]
    Exit { code: i32 },
    #[error("state store: {message}")]
    StateStore { message: String },
}

impl From<HostFault> for ProcessError {
    fn from(fault: HostFault) -> Self {
        match fault {
            HostFault::OutOfBounds { import, ptr, len, memory_bytes } => {
                ProcessError::HostCallOutOfBounds { import, ptr, len, memory_bytes }
            }
            HostFault::NoMemory { import } => {
                ProcessError::HostCallOutOfBounds { import, ptr: 0, len: 0, memory_bytes: 0 }
            }
            HostFault::Exit { code } => ProcessError::Exit { code },
            HostFault::StateStore { message } => ProcessError::StateStore { message },
        }
    }
}
