//! The log cleaner's offset map: key hash → offset of the key's latest record, in a fixed
//! byte budget (`log.cleaner.dedupe.buffer.size`), like Kafka's `SkimpyOffsetMap`.
//!
//! Keys are stored as 128-bit hashes, never as bytes, so an entry takes a fixed 24 bytes
//! whatever the key size. A collision would make the cleaner drop a record of another key;
//! with 128 bits that takes about 2^64 keys in one map. The table is open addressing with
//! linear probing, filled to at most 90 %, and is allocated once per cleaner thread at the
//! size the dirty section needs, never above the budget.

use std::hash::{DefaultHasher, Hash, Hasher};

/// Bytes of one slot: a 128-bit key hash and an offset.
pub(crate) const ENTRY_BYTES: usize = 24;
/// Fill limit, in percent: linear probing slows down sharply past this.
const LOAD_PERCENT: usize = 90;
/// The table starts this small and doubles as a pass needs it, so a small dirty section
/// does not cost the whole budget.
const INITIAL_SLOTS: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Slot {
    hash: [u64; 2],
    /// -1: empty (offsets are never negative).
    offset: i64,
}

const EMPTY: Slot = Slot { hash: [0, 0], offset: -1 };

#[derive(Debug)]
pub(crate) struct KeyMap {
    slots: Vec<Slot>,
    /// Slots the budget allows; `slots` grows up to this only when a pass needs it.
    slots_max: usize,
    len: usize,
}

impl KeyMap {
    /// A map that will never use more than `budget_bytes` (at least one slot's worth).
    pub(crate) fn with_budget(budget_bytes: usize) -> KeyMap {
        KeyMap { slots: Vec::new(), slots_max: (budget_bytes / ENTRY_BYTES).max(2), len: 0 }
    }

    /// Most distinct keys the budget holds.
    pub(crate) fn capacity_max(&self) -> usize {
        (self.slots_max * LOAD_PERCENT / 100).max(1)
    }

    /// Empties the map, keeping its table (already within the budget) for the next pass.
    pub(crate) fn reset(&mut self) {
        self.slots.fill(EMPTY);
        self.len = 0;
    }

    /// Distinct keys the map can still take in its current size.
    fn room(&self) -> usize {
        (self.slots.len() * LOAD_PERCENT / 100).saturating_sub(self.len)
    }

    /// Makes room for `additional` more keys, growing the table up to the budget. False when
    /// the budget cannot hold them: the pass ends before the batch that needed them.
    pub(crate) fn reserve(&mut self, additional: usize) -> bool {
        while self.room() < additional {
            if self.slots.len() >= self.slots_max {
                return false;
            }
            let grown = (self.slots.len() * 2).max(INITIAL_SLOTS).min(self.slots_max);
            let old = std::mem::replace(&mut self.slots, vec![EMPTY; grown]);
            for slot in old.into_iter().filter(|s| s.offset >= 0) {
                let index = self.probe(slot.hash);
                self.slots[index] = slot;
            }
        }
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Records `offset` as the latest of `key`. Offsets arrive in increasing order.
    pub(crate) fn put(&mut self, key: &[u8], offset: i64) {
        assert!(offset >= 0, "offsets are never negative");
        let hash = key_hash(key);
        let index = self.probe(hash);
        let previous = self.slots[index].offset;
        if previous < 0 {
            assert!(self.room() > 0, "key map over its fill limit: reserve first");
            self.len += 1;
        } else {
            assert!(offset > previous, "a key's offsets only increase within a pass");
        }
        self.slots[index] = Slot { hash, offset };
    }

    /// The latest offset of `key`, if the map has seen it.
    pub(crate) fn get(&self, key: &[u8]) -> Option<i64> {
        if self.slots.is_empty() {
            return None;
        }
        let slot = self.slots[self.probe(key_hash(key))];
        (slot.offset >= 0).then_some(slot.offset)
    }

    /// The slot holding `hash`, or the empty slot where it belongs. Terminates because the
    /// table is never full (fill limit below 100 %, and at least two slots).
    fn probe(&self, hash: [u64; 2]) -> usize {
        let slots = self.slots.len();
        assert!(slots >= 2, "probe on an unsized key map");
        let mut index = (hash[0] % slots as u64) as usize;
        for _ in 0..slots {
            let slot = &self.slots[index];
            if slot.offset < 0 || slot.hash == hash {
                return index;
            }
            index = (index + 1) % slots;
        }
        unreachable!("a key map below its fill limit always has an empty slot");
    }
}

/// A 128-bit hash of a key: two SipHash passes with different prefixes. Deterministic across
/// runs (the map is rebuilt each pass, never stored, but tests and benches reproduce).
fn key_hash(key: &[u8]) -> [u64; 2] {
    let mut first = DefaultHasher::new();
    0u8.hash(&mut first);
    key.hash(&mut first);
    let mut second = DefaultHasher::new();
    1u8.hash(&mut second);
    key.hash(&mut second);
    [first.finish(), second.finish()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_offset_wins_and_the_budget_bounds_the_table() {
        let mut map = KeyMap::with_budget(ENTRY_BYTES * 100);
        assert_eq!(map.capacity_max(), 90);
        assert!(!map.reserve(91), "the budget holds 90 keys");
        assert!(map.slots.len() <= 100, "never beyond the budget");
        for offset in 0..200i64 {
            let key = format!("k{}", offset % 50);
            assert!(map.reserve(1));
            map.put(key.as_bytes(), offset);
        }
        assert_eq!(map.len(), 50);
        assert_eq!(map.get(b"k7"), Some(157));
        assert_eq!(map.get(b"nope"), None);
        map.reset();
        assert_eq!(map.get(b"k7"), None, "reset forgets");
        let mut big = KeyMap::with_budget(1 << 30);
        assert!(big.reserve(10));
        assert_eq!(big.slots.len(), INITIAL_SLOTS, "sized for the pass, not the budget");
    }
}
