//! Per-instance key-value state: the embedder's committed store behind a trait, and the
//! per-batch overlay that stages the guest's writes until the embedder commits them.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// The committed state of one (transform, input partition) instance, supplied by the embedder.
///
/// The host only reads it. Writes made during a batch come back in
/// [`crate::ProcessOutput::state_changes`]; the embedder applies them atomically with the
/// batch's outputs and input offset, so after a crash the store and the offset agree.
pub trait StateStore: Send + Sync {
    /// The committed value of `key`, `None` if absent. An error fails the batch
    /// ([`crate::ProcessError::StateStore`]); it may be retried.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateStoreError>;
}

/// A failure of the embedder's state store (I/O, corruption, ...).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StateStoreError {
    pub message: String,
}

/// A staged state write: `value: None` deletes `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// An in-memory [`StateStore`] for tests, benches and embedders without durable state.
#[derive(Debug, Default)]
pub struct MemoryStateStore {
    entries: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryStateStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Commits a batch's changes.
    pub fn apply(&self, changes: &[StateChange]) {
        let mut entries = self.entries.write().unwrap_or_else(|poison| poison.into_inner());
        for change in changes {
            match &change.value {
                Some(value) => entries.insert(change.key.clone(), value.clone()),
                None => entries.remove(&change.key),
            };
        }
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|poison| poison.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl StateStore for MemoryStateStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateStoreError> {
        let entries = self.entries.read().unwrap_or_else(|poison| poison.into_inner());
        Ok(entries.get(key).cloned())
    }
}

/// Writes of the current batch, read before the committed store. Bounded by
/// `state_batch_bytes_max` (counted as key + value bytes of every entry).
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    entries: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    bytes: usize,
}

impl Overlay {
    /// `Some(staged)` when the batch wrote `key` (`Some(None)`: deleted), `None` to fall back
    /// to the committed store.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.entries.get(key).map(Option::as_deref)
    }

    /// Stages a write; false (nothing staged) if it would take the overlay over `bytes_max`.
    pub(crate) fn stage(&mut self, key: &[u8], value: Option<&[u8]>, bytes_max: usize) -> bool {
        let new_bytes = key.len() + value.map_or(0, <[u8]>::len);
        let old_bytes = match self.entries.get(key) {
            Some(old) => key.len() + old.as_ref().map_or(0, Vec::len),
            None => 0,
        };
        let total = self.bytes - old_bytes + new_bytes;
        if total > bytes_max {
            return false;
        }
        self.bytes = total;
        self.entries.insert(key.to_vec(), value.map(<[u8]>::to_vec));
        true
    }

    /// The staged writes in key order, leaving the overlay empty.
    pub(crate) fn take(&mut self) -> Vec<StateChange> {
        self.bytes = 0;
        std::mem::take(&mut self.entries).into_iter().map(|(key, value)| StateChange { key, value }).collect()
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_counts_replaced_entries_once() {
        let mut overlay = Overlay::default();
        assert!(overlay.stage(b"k", Some(b"12345"), 10));
        assert!(overlay.stage(b"k", Some(b"123456789"), 10));
        assert!(!overlay.stage(b"j", Some(b"1"), 10));
        assert!(overlay.stage(b"k", None, 10));
        assert_eq!(overlay.get(b"k"), Some(None));
        assert_eq!(overlay.get(b"j"), None);
        let changes = overlay.take();
        assert_eq!(changes, vec![StateChange { key: b"k".to_vec(), value: None }]);
        assert!(overlay.stage(b"j", Some(b"123456789"), 10));
    }
}
