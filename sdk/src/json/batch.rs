//! The guest side of the `json-find` extension (ABI.md): while a batch is processed, the first
//! [`find`](super::find)/[`find_path`](super::find_path) of a path asks the host, in one call,
//! to locate that path in every record value of the batch; later lookups of the same path in
//! the batch's values read the answer instead of scanning the value in WebAssembly.
//!
//! Transparent to transforms: the answer is the one the scan would give (the host runs this
//! SDK's scanner, [`super::locate::locate`]), a lookup of anything but a value of the batch
//! scans as before, and so does everything when the host did not offer the extension, when a
//! call is refused, or past [`PATHS_PER_BATCH_MAX`] paths. Values are recognised by their
//! address and length, so no unsafe code is needed: the answer is applied to the slice the
//! caller passed, bounds-checked.

use super::fast::{bytes_equal, Found};
use super::locate;
use crate::RecordRef;
use std::cell::RefCell;

/// Paths located per batch at most: a transform reads a few fields per record, and each path
/// costs a table of 12 bytes per record. Lookups of further paths scan as without the extension.
const PATHS_PER_BATCH_MAX: usize = 4;

/// Marks a null value in [`BatchFinds::spans`] (the import's "no document").
const NO_DOCUMENT: usize = usize::MAX;

/// The answers for one path in the current batch.
#[derive(Default)]
struct Slot {
    path: Vec<u8>,
    /// The [`Path::id`](super::Path) `path` was last looked up with (0: none): a transform
    /// passes the same `Path` for every record, so comparing the ids usually stands in for
    /// comparing the text.
    path_id: u64,
    /// One entry per record of the batch (see [`locate`]).
    entries: Vec<[u32; 3]>,
    /// Whether the host answered; a refused call is not retried within the batch.
    answered: bool,
}

struct BatchFinds {
    /// Inside a batch whose host accepted `json-find`.
    active: bool,
    /// `[address, length]` of each record's value, in batch order: the spans the import takes
    /// (a `usize` is a `u32` in wasm32). A null value has the previous value's end as address
    /// (addresses stay sorted) and length [`NO_DOCUMENT`].
    spans: Vec<[usize; 2]>,
    /// Natively, where there is no guest memory for a host to read: copies of the values.
    #[cfg(not(target_arch = "wasm32"))]
    documents: Vec<Option<Vec<u8>>>,
    /// Slots in use are `slots[..used]`; their buffers are kept from batch to batch.
    slots: Vec<Slot>,
    used: usize,
    /// The record after the last one looked up: transforms look records up in order.
    next: usize,
}

thread_local! {
    static FINDS: RefCell<BatchFinds> = const { RefCell::new(BatchFinds::new()) };
}

impl BatchFinds {
    const fn new() -> Self {
        BatchFinds {
            active: false,
            spans: Vec::new(),
            #[cfg(not(target_arch = "wasm32"))]
            documents: Vec::new(),
            slots: Vec::new(),
            used: 0,
            next: 0,
        }
    }
}

/// While alive, lookups of this batch's values may be answered by the host; dropping it ends
/// the batch.
pub(crate) struct BatchScope(());

impl Drop for BatchScope {
    fn drop(&mut self) {
        FINDS.with(|finds| finds.borrow_mut().active = false);
    }
}

/// Starts a batch of `records` for a host that accepted `json-find`.
pub(crate) fn enter(records: &[RecordRef<'_>]) -> BatchScope {
    FINDS.with(|finds| {
        let finds = &mut *finds.borrow_mut();
        finds.spans.clear();
        let mut end = 0;
        for record in records {
            finds.spans.push(match record.value {
                Some(value) => {
                    end = value.as_ptr() as usize + value.len();
                    [value.as_ptr() as usize, value.len()]
                }
                None => [end, NO_DOCUMENT],
            });
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            finds.documents.clear();
            finds.documents.extend(records.iter().map(|r| r.value.map(<[u8]>::to_vec)));
        }
        finds.used = 0;
        finds.next = 0;
        finds.active = true;
    });
    BatchScope(())
}

/// The host's answer for `path` (dotted, as given to `find`) in `bytes`, when `bytes` is a
/// value of the current batch and the host answers; `None` means "scan it yourself". `path_id`
/// is the id of the [`super::Path`] the text belongs to, 0 for text given as such.
#[inline]
pub(super) fn lookup(bytes: &[u8], path: &[u8], path_id: u64) -> Option<Found> {
    FINDS.with(|finds| {
        let finds = &mut *finds.borrow_mut();
        if !finds.active {
            return None;
        }
        let index = finds.index_of(bytes)?;
        let slot = finds.slot_for(path, path_id)?;
        locate::decode(*slot.entries.get(index)?, bytes.len())
    })
}

impl BatchFinds {
    /// The position in the batch of the value `bytes` is, if it is one.
    #[inline]
    fn index_of(&mut self, bytes: &[u8]) -> Option<usize> {
        let key = [bytes.as_ptr() as usize, bytes.len()];
        let index = match self.spans.get(self.next) {
            Some(span) if *span == key => self.next,
            _ => self.search(key)?,
        };
        self.next = index + 1;
        Some(index)
    }

    /// [`Self::index_of`] out of order: a binary search by address (several nulls may share
    /// one; a value never shares its address with another value).
    #[cold]
    fn search(&self, key: [usize; 2]) -> Option<usize> {
        let first = self.spans.partition_point(|span| span[0] < key[0]);
        let offset = self.spans[first..].iter().take_while(|span| span[0] == key[0]).position(|span| *span == key)?;
        Some(first + offset)
    }

    /// The answered slot of `path`, asking the host on its first lookup in the batch.
    #[inline]
    fn slot_for(&mut self, path: &[u8], path_id: u64) -> Option<&Slot> {
        let slots = &mut self.slots[..self.used];
        let index = match slots.iter().position(|slot| path_id != 0 && slot.path_id == path_id) {
            Some(index) => index,
            None => match slots.iter().position(|slot| bytes_equal(&slot.path, path)) {
                Some(index) => {
                    slots[index].path_id = path_id;
                    index
                }
                None => self.fill(path, path_id)?,
            },
        };
        let slot = &self.slots[index];
        if slot.answered {
            Some(slot)
        } else {
            None
        }
    }

    /// Asks the host to locate `path` in every value of the batch, into a new slot.
    #[inline(never)]
    fn fill(&mut self, path: &[u8], path_id: u64) -> Option<usize> {
        if self.used == PATHS_PER_BATCH_MAX {
            return None;
        }
        if self.slots.len() == self.used {
            self.slots.push(Slot::default());
        }
        let index = self.used;
        self.used += 1;
        let slot = &mut self.slots[index];
        slot.path.clear();
        slot.path.extend_from_slice(path);
        slot.path_id = path_id;
        slot.entries.clear();
        slot.entries.resize(self.spans.len(), [0; 3]);
        #[cfg(target_arch = "wasm32")]
        let code = crate::host::host_json_find(path, &self.spans, &mut slot.entries);
        #[cfg(not(target_arch = "wasm32"))]
        let code = crate::host::host_json_find(path, &self.documents, &mut slot.entries);
        slot.answered = code == 0;
        Some(index)
    }
}
