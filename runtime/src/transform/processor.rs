//! The seam between a partition's runner and the code it runs: the runner hands a batch of
//! records and the committed state in, and gets output records and staged state changes back.
//! The WASM host implements it (see `wasm_processor`); tests use native closures.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

/// One input record as the runner read it from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InRecord {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// One output record; `output` indexes the transform's outputs in deploy order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub output: u32,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// A state change staged by one batch: `None` deletes the key.
pub type StateChange = (Vec<u8>, Option<Vec<u8>>);

/// The committed key-value state of one (transform, partition) instance.
pub type StateMap = BTreeMap<Vec<u8>, Vec<u8>>;

/// The committed state of one instance, shared with its processor (which only reads it; its
/// writes come back as [`Processed::state_changes`] and the runner applies them on commit).
#[derive(Debug, Default)]
pub struct SharedState {
    entries: RwLock<StateMap>,
}

impl SharedState {
    pub fn new(entries: StateMap) -> Arc<SharedState> {
        Arc::new(SharedState { entries: RwLock::new(entries) })
    }

    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies committed changes in order.
    pub fn apply(&self, changes: &[StateChange]) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        for (key, value) in changes {
            match value {
                Some(value) => entries.insert(key.clone(), value.clone()),
                None => entries.remove(key),
            };
        }
    }
}

/// What one batch produced. Nothing of it is visible until the runner commits it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Processed {
    pub records: Vec<OutRecord>,
    pub state_changes: Vec<StateChange>,
}

/// Why a batch failed; the transform's `--on-error` policy decides what happens next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Failure {
    /// A short machine-readable kind: `trap`, `deadline`, `memory`, `output`, `guest`, ...
    pub kind: String,
    pub message: String,
}

impl Failure {
    /// Messages are shown on one line (CLI errors, logs, headers): whitespace runs, newlines
    /// included, become one space.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Failure {
        let message = message.into().split_whitespace().collect::<Vec<_>>().join(" ");
        Failure { kind: kind.into(), message }
    }
}

/// Where a processor's log lines go: a bounded ring shown by `runnel transform logs`.
pub trait LogSink: Send + Sync {
    fn line(&self, level: &str, message: &str);
}

/// Runs batches for one (transform, input partition). Called from a blocking thread.
pub trait Processor: Send {
    fn process(&mut self, records: &[InRecord]) -> Result<Processed, Failure>;
}

/// Builds processors from a module. One factory per process (it owns the WASM engine).
pub trait ProcessorFactory: Send + Sync {
    /// Checks a module at deploy (it compiles, exports the ABI, speaks a known ABI version).
    fn validate(&self, module: &[u8]) -> Result<(), Failure>;
    /// A fresh instance for one input partition, reading `state`.
    fn instantiate(&self, instance: InstanceSetup<'_>) -> Result<Box<dyn Processor>, Failure>;
}

/// What an instance is created with.
#[derive(Clone)]
pub struct InstanceSetup<'a> {
    pub module: &'a [u8],
    pub partition: i32,
    /// Number of configured outputs (dead letters are the runner's, not the module's).
    pub outputs: u32,
    pub env: &'a BTreeMap<String, String>,
    pub state: Arc<SharedState>,
    pub log: Arc<dyn LogSink>,
}
