//! The guest side of the `json-find` extension (ABI.md): while a batch is processed, the first
//! [`find`](super::find)/[`find_path`](super::find_path) of a path asks the host, in one call,
//! to locate that path in every record value of the batch; later lookups of the same path in
//! the batch's values read the answer instead of scanning the value in WebAssembly.
//!
//! The `json-equals` extension works the same way for [`StrEquals::test`](super::StrEquals):
//! the first test of a condition in a batch asks the host for every value's answer, one byte
//! each.
//!
//! Transparent to transforms: the answer is the one the scan would give (the host runs this
//! SDK's scanner, [`super::locate::locate`]), a lookup of anything but a value of the batch
//! scans as before, and so does everything when the host did not offer the extension, when a
//! call is refused, or past [`PATHS_PER_BATCH_MAX`] paths. Values are recognised by their
//! address and length, so no unsafe code is needed: the answer is applied to the slice the
//! caller passed, bounds-checked.

use super::fast::{bytes_equal, Found};
use super::locate;
use super::StrEquals;
use crate::RecordRef;
use std::cell::RefCell;

/// Paths located per batch at most: a transform reads a few fields per record, and each path
/// costs a table of 12 bytes per record. Lookups of further paths scan as without the extension.
const PATHS_PER_BATCH_MAX: usize = 4;
/// [`StrEquals`] conditions answered per batch at most (one byte per record each); tests of
/// further conditions run in the guest.
const CONDITIONS_PER_BATCH_MAX: usize = 4;

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

/// The answers for one [`StrEquals`] in the current batch.
#[derive(Default)]
struct EqualsSlot {
    /// The condition's id (conditions never change, so the id names path and text).
    id: u64,
    /// One `json_equals` answer per record of the batch.
    answers: Vec<u8>,
    /// Whether the host answered; a refused call is not retried within the batch.
    answered: bool,
}

struct BatchFinds {
    /// Inside a batch whose host accepted `json-find` or `json-equals`.
    active: bool,
    /// Which of the two the host accepted.
    find_on: bool,
    equals_on: bool,
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
    /// As `slots` and `used`, for [`StrEquals`] conditions.
    equals: Vec<EqualsSlot>,
    equals_used: usize,
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
            find_on: false,
            equals_on: false,
            spans: Vec::new(),
            #[cfg(not(target_arch = "wasm32"))]
            documents: Vec::new(),
            slots: Vec::new(),
            used: 0,
            equals: Vec::new(),
            equals_used: 0,
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

/// Starts a batch of `records` for a host that accepted `json-find` (`find_on`) or
/// `json-equals` (`equals_on`).
pub(crate) fn enter(records: &[RecordRef<'_>], find_on: bool, equals_on: bool) -> BatchScope {
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
        finds.equals_used = 0;
        finds.next = 0;
        finds.find_on = find_on;
        finds.equals_on = equals_on;
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
        if !finds.active || !finds.find_on {
            return None;
        }
        let index = finds.index_of(bytes)?;
        let slot = finds.slot_for(path, path_id)?;
        locate::decode(*slot.entries.get(index)?, bytes.len())
    })
}

/// What the host answered for a [`StrEquals`] test of a value of the batch.
pub(super) enum Answer {
    /// The `json_equals` answer byte (as the host wrote it: the caller checks it).
    Equals(u8),
    /// `json-equals` gave no answer, `json-find` located the field.
    Found(Found),
    /// Neither: "test it yourself".
    None,
}

/// The host's answer for `condition` on `bytes`, when `bytes` is a value of the current batch:
/// `json_equals`'s, or else where `json_find` located the field. One look at the batch state
/// for both, so a test costs no more than a `find_path` where neither is on (natively).
#[inline]
pub(super) fn lookup_equals(bytes: &[u8], condition: &StrEquals) -> Answer {
    FINDS.with(|finds| {
        let finds = &mut *finds.borrow_mut();
        if !finds.active {
            return Answer::None;
        }
        let index = match finds.index_of(bytes) {
            Some(index) => index,
            None => return Answer::None,
        };
        if finds.equals_on {
            if let Some(answer) = finds.equals_slot_for(condition).and_then(|slot| slot.answers.get(index)) {
                return Answer::Equals(*answer);
            }
        }
        if finds.find_on {
            let path = condition.path();
            let entry = finds.slot_for(path.as_str().as_bytes(), path.id()).and_then(|slot| slot.entries.get(index));
            if let Some(found) = entry.and_then(|entry| locate::decode(*entry, bytes.len())) {
                return Answer::Found(found);
            }
        }
        Answer::None
    })
}

impl BatchFinds {
    /// The position in the batch of the value `bytes` is, if it is one.
    #[inline]
    fn index_of(&mut self, bytes: &[u8]) -> Option<usize> {
        let key = [bytes.as_ptr() as usize, bytes.len()];
        let index = match self.spans.get(self.next) {
            Some(span) if *span == key => self.next,
            // The record looked up last, again (a second field or condition of it).
            _ => match self.next.checked_sub(1) {
                Some(last) if self.spans.get(last) == Some(&key) => last,
                _ => self.search(key)?,
            },
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

impl BatchFinds {
    /// The answered slot of `condition`, asking the host on its first test in the batch.
    #[inline]
    fn equals_slot_for(&mut self, condition: &StrEquals) -> Option<&EqualsSlot> {
        let id = condition.id();
        let index = match self.equals[..self.equals_used].iter().position(|slot| slot.id == id) {
            Some(index) => index,
            None => self.fill_equals(condition)?,
        };
        let slot = &self.equals[index];
        if slot.answered {
            Some(slot)
        } else {
            None
        }
    }

    /// Asks the host to test `condition` on every value of the batch, into a new slot.
    #[inline(never)]
    fn fill_equals(&mut self, condition: &StrEquals) -> Option<usize> {
        if self.equals_used == CONDITIONS_PER_BATCH_MAX {
            return None;
        }
        if self.equals.len() == self.equals_used {
            self.equals.push(EqualsSlot::default());
        }
        let index = self.equals_used;
        self.equals_used += 1;
        let slot = &mut self.equals[index];
        slot.id = condition.id();
        slot.answers.clear();
        slot.answers.resize(self.spans.len(), u8::MAX);
        let (path, text) = (condition.path().as_str().as_bytes(), condition.text().as_bytes());
        #[cfg(target_arch = "wasm32")]
        let code = crate::host::host_json_equals(path, text, &self.spans, &mut slot.answers);
        #[cfg(not(target_arch = "wasm32"))]
        let code = crate::host::host_json_equals(path, text, &self.documents, &mut slot.answers);
        slot.answered = code == 0;
        Some(index)
    }
}
