//! Sparse offset and time indexes, kept in memory and appended to files beside each segment.
//!
//! `.index` entries are 8 bytes: relative offset (u32) and file position (u32) of a batch start.
//! `.timeindex` entries are 12 bytes: the largest timestamp seen so far (i64) and the relative
//! offset of the last record of the batch that carried it (u32). Both are big-endian, like Kafka.

use bytes::{Buf, BufMut};

pub(crate) const OFFSET_ENTRY_BYTES: usize = 8;
pub(crate) const TIME_ENTRY_BYTES: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub(crate) relative_offset: u32,
    pub(crate) position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub(crate) timestamp: i64,
    pub(crate) relative_offset: u32,
}

impl OffsetEntry {
    pub(crate) fn encode(&self) -> [u8; OFFSET_ENTRY_BYTES] {
        let mut out = [0u8; OFFSET_ENTRY_BYTES];
        let mut b = &mut out[..];
        b.put_u32(self.relative_offset);
        b.put_u32(self.position);
        out
    }
}

impl TimeEntry {
    pub(crate) fn encode(&self) -> [u8; TIME_ENTRY_BYTES] {
        let mut out = [0u8; TIME_ENTRY_BYTES];
        let mut b = &mut out[..];
        b.put_i64(self.timestamp);
        b.put_u32(self.relative_offset);
        out
    }
}

/// Decodes an offset index, keeping the longest valid prefix: entries must increase in both
/// offset and position and point inside a log of `log_bytes`. Returns the entries and whether
/// the whole file was valid (a torn or damaged index is rewritten by the caller).
pub(crate) fn decode_offset_index(bytes: &[u8], log_bytes: u64) -> (Vec<OffsetEntry>, bool) {
    let whole = bytes.len() / OFFSET_ENTRY_BYTES;
    let mut entries: Vec<OffsetEntry> = Vec::with_capacity(whole);
    let mut chunk = bytes;
    for _ in 0..whole {
        let entry = OffsetEntry { relative_offset: chunk.get_u32(), position: chunk.get_u32() };
        let increasing = entries
            .last()
            .is_none_or(|last| entry.relative_offset > last.relative_offset && entry.position > last.position);
        if !increasing || u64::from(entry.position) >= log_bytes {
            return (entries, false);
        }
        entries.push(entry);
    }
    (entries, bytes.len().is_multiple_of(OFFSET_ENTRY_BYTES))
}

/// Decodes a time index, keeping the longest prefix with non-decreasing timestamps and offsets.
pub(crate) fn decode_time_index(bytes: &[u8]) -> (Vec<TimeEntry>, bool) {
    let whole = bytes.len() / TIME_ENTRY_BYTES;
    let mut entries: Vec<TimeEntry> = Vec::with_capacity(whole);
    let mut chunk = bytes;
    for _ in 0..whole {
        let entry = TimeEntry { timestamp: chunk.get_i64(), relative_offset: chunk.get_u32() };
        let increasing = entries
            .last()
            .is_none_or(|last| entry.timestamp >= last.timestamp && entry.relative_offset >= last.relative_offset);
        if !increasing {
            return (entries, false);
        }
        entries.push(entry);
    }
    (entries, bytes.len().is_multiple_of(TIME_ENTRY_BYTES))
}

/// The entry with the largest relative offset not above `relative_offset`.
pub(crate) fn floor_offset(entries: &[OffsetEntry], relative_offset: u32) -> Option<OffsetEntry> {
    let at = entries.partition_point(|e| e.relative_offset <= relative_offset);
    at.checked_sub(1).map(|i| entries[i])
}

/// The last time entry whose timestamp is below `timestamp`: every record up to its offset is
/// older than `timestamp`, so a search may start after it.
pub(crate) fn last_before_timestamp(entries: &[TimeEntry], timestamp: i64) -> Option<TimeEntry> {
    let at = entries.partition_point(|e| e.timestamp < timestamp);
    at.checked_sub(1).map(|i| entries[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_all(entries: &[OffsetEntry]) -> Vec<u8> {
        entries.iter().flat_map(|e| e.encode()).collect()
    }

    #[test]
    fn valid_index_round_trips() {
        let entries =
            vec![OffsetEntry { relative_offset: 3, position: 100 }, OffsetEntry { relative_offset: 9, position: 5000 }];
        let (decoded, whole) = decode_offset_index(&encode_all(&entries), 6000);
        assert!(whole);
        assert_eq!(decoded, entries);
        assert_eq!(floor_offset(&decoded, 8), Some(entries[0]));
        assert_eq!(floor_offset(&decoded, 9), Some(entries[1]));
        assert_eq!(floor_offset(&decoded, 2), None);
    }

    #[test]
    fn torn_or_out_of_bounds_entries_are_dropped() {
        let entries =
            vec![OffsetEntry { relative_offset: 3, position: 100 }, OffsetEntry { relative_offset: 9, position: 5000 }];
        let mut bytes = encode_all(&entries);
        bytes.extend_from_slice(&[1, 2, 3]);
        let (decoded, whole) = decode_offset_index(&bytes, 6000);
        assert!(!whole);
        assert_eq!(decoded.len(), 2);
        let (decoded, whole) = decode_offset_index(&encode_all(&entries), 4000);
        assert!(!whole, "an entry past the end of the log is damage");
        assert_eq!(decoded.len(), 1);
    }

    #[test]
    fn time_lookup_finds_the_last_entry_strictly_older() {
        let entries =
            vec![TimeEntry { timestamp: 10, relative_offset: 1 }, TimeEntry { timestamp: 20, relative_offset: 5 }];
        assert_eq!(last_before_timestamp(&entries, 10), None);
        assert_eq!(last_before_timestamp(&entries, 15), Some(entries[0]));
        assert_eq!(last_before_timestamp(&entries, 99), Some(entries[1]));
    }
}
