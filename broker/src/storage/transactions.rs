//! Transactions as one partition sees them: the aborted-transaction index (Kafka's
//! `.txnindex`, one file per segment) and the control records that end transactions.
//!
//! The first offset of every producer's open transaction lives in the producer state
//! (`producers.rs`), so it is snapshotted and replayed with it; this module holds what a
//! read_committed fetch needs besides: which ranges of the log belong to aborted transactions.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::{Result, StorageError};
use crate::protocol::batch::{BatchHeader, BATCH_HEADER_BYTES};

/// Control record types (the key's second field).
pub const CONTROL_TYPE_ABORT: i16 = 0;
pub const CONTROL_TYPE_COMMIT: i16 = 1;

/// Bytes of one `.txnindex` entry: version i16, producer id i64, first offset i64, last offset
/// i64, last stable offset i64 (Kafka's `AbortedTxn` layout).
pub(crate) const ENTRY_BYTES: usize = 34;
const ENTRY_VERSION: i16 = 0;

/// Bound on aborted transactions returned for one fetched partition: a fetch returns at most
/// a few MiB of batches, and each aborted transaction needs at least two batches (data and
/// marker), so a larger list would describe data the fetch does not carry.
pub(crate) const ABORTED_PER_FETCH_MAX: usize = 100_000;

/// One aborted transaction: its producer and the range from its first data batch to its
/// abort marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub last_stable_offset: i64,
}

impl AbortedTxn {
    pub(crate) fn encode(&self) -> [u8; ENTRY_BYTES] {
        let mut out = [0u8; ENTRY_BYTES];
        let mut buf = &mut out[..];
        buf.put_i16(ENTRY_VERSION);
        buf.put_i64(self.producer_id);
        buf.put_i64(self.first_offset);
        buf.put_i64(self.last_offset);
        buf.put_i64(self.last_stable_offset);
        out
    }

    /// Decodes one entry; `None` for a wrong version or an impossible range.
    pub(crate) fn decode(bytes: &[u8]) -> Option<AbortedTxn> {
        let field = |at: usize| -> Option<i64> { Some(i64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?)) };
        let version = i16::from_be_bytes(bytes.get(0..2)?.try_into().ok()?);
        let entry = AbortedTxn {
            producer_id: field(2)?,
            first_offset: field(10)?,
            last_offset: field(18)?,
            last_stable_offset: field(26)?,
        };
        (version == ENTRY_VERSION && entry.first_offset >= 0 && entry.first_offset <= entry.last_offset)
            .then_some(entry)
    }
}

pub(crate) fn txn_index_path(dir: &Path, segment_base: i64) -> PathBuf {
    dir.join(super::segment_file_name(segment_base, "txnindex"))
}

/// The aborted transactions of a partition, grouped by the segment holding their marker
/// (so deleting a segment drops its entries with it).
#[derive(Debug, Default)]
pub(crate) struct AbortedIndex {
    by_segment: BTreeMap<i64, Vec<AbortedTxn>>,
}

impl AbortedIndex {
    /// Loads the `.txnindex` of every segment; entries whose marker lies at or past
    /// `log_end_offset` (cut off by tail recovery) are dropped and the file rewritten.
    pub(crate) fn load(dir: &Path, segment_bases: &[i64], log_end_offset: i64) -> Result<AbortedIndex> {
        let mut index = AbortedIndex::default();
        for &base in segment_bases {
            let path = txn_index_path(dir, base);
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io(&path, e)),
            };
            // A torn last entry (crash mid-write) is not a whole entry: ignore it.
            let entries: Vec<AbortedTxn> = bytes.chunks_exact(ENTRY_BYTES).map_while(AbortedTxn::decode).collect();
            let mut kept: Vec<AbortedTxn> =
                entries.iter().copied().filter(|e| e.last_offset < log_end_offset).collect();
            kept.sort_by_key(|e| e.last_offset);
            if kept.len() * ENTRY_BYTES != bytes.len() {
                tracing::warn!(path = %path.display(), kept = kept.len(), "rewriting damaged or stale txn index");
                rewrite(&path, &kept)?;
            }
            if !kept.is_empty() {
                index.by_segment.insert(base, kept);
            }
        }
        Ok(index)
    }

    /// Records an aborted transaction whose marker is in segment `segment_base`, appending it
    /// to the segment's file. Returns the file, which the next flush must fsync; `None` when
    /// the entry was already known (replay after restart re-derives entries).
    pub(crate) fn push(
        &mut self,
        dir: &Path,
        segment_base: i64,
        entry: AbortedTxn,
    ) -> Result<Option<(PathBuf, Arc<File>)>> {
        let entries = self.by_segment.entry(segment_base).or_default();
        if entries.iter().any(|e| e.producer_id == entry.producer_id && e.last_offset == entry.last_offset) {
            return Ok(None);
        }
        // Markers arrive in offset order, except when a replay re-derives an entry a damaged
        // file lacked: keep memory sorted either way (file order does not matter, load sorts).
        let at = entries.partition_point(|e| e.last_offset < entry.last_offset);
        entries.insert(at, entry);
        let path = txn_index_path(dir, segment_base);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| StorageError::io(&path, e))?;
        file.write_all(&entry.encode()).map_err(|e| StorageError::io(&path, e))?;
        Ok(Some((path, Arc::new(file))))
    }

    /// Forgets a deleted segment's entries and removes its file.
    pub(crate) fn remove_segment(&mut self, dir: &Path, segment_base: i64) -> Result<()> {
        self.by_segment.remove(&segment_base);
        let path = txn_index_path(dir, segment_base);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io(&path, e)),
        }
    }

    /// Drops entries whose marker is at or after `offset` (truncation).
    pub(crate) fn truncate_to(&mut self, dir: &Path, offset: i64) -> Result<()> {
        let bases: Vec<i64> = self.by_segment.keys().copied().collect();
        for base in bases {
            let Some(entries) = self.by_segment.get_mut(&base) else { continue };
            let before = entries.len();
            entries.retain(|e| e.last_offset < offset);
            if entries.len() != before {
                let kept = entries.clone();
                rewrite(&txn_index_path(dir, base), &kept)?;
            }
        }
        self.by_segment.retain(|_, entries| !entries.is_empty());
        Ok(())
    }

    /// Aborted transactions overlapping `[from_offset, upper_offset)`, in marker order.
    pub(crate) fn overlapping(&self, from_offset: i64, upper_offset: i64) -> Vec<AbortedTxn> {
        // A marker at or after `from_offset` lies in the segment holding `from_offset` or a
        // later one: earlier segments are skipped (consumers mostly read near the tail).
        let start = self.by_segment.range(..=from_offset).next_back().map_or(i64::MIN, |(base, _)| *base);
        self.by_segment
            .range(start..)
            .flat_map(|(_, entries)| entries)
            .filter(|e| e.last_offset >= from_offset && e.first_offset < upper_offset)
            .take(ABORTED_PER_FETCH_MAX)
            .copied()
            .collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_segment.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_segment.values().map(Vec::len).sum()
    }
}

fn rewrite(path: &Path, entries: &[AbortedTxn]) -> Result<()> {
    let mut bytes = Vec::with_capacity(entries.len() * ENTRY_BYTES);
    for entry in entries {
        bytes.extend_from_slice(&entry.encode());
    }
    let tmp = path.with_extension("txnindex.tmp");
    std::fs::write(&tmp, &bytes).map_err(|e| StorageError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| StorageError::io(path, e))
}

/// The control type (abort 0 / commit 1) of a control batch, read from its first record's
/// key. Control batches are never compressed. `None` if the bytes are not a readable control
/// record.
pub fn control_type(batch: &[u8]) -> Option<i16> {
    let mut rest = batch.get(BATCH_HEADER_BYTES..)?;
    let _record_length = read_varint(&mut rest)?;
    let (_attributes, tail) = rest.split_first()?;
    rest = tail;
    let _timestamp_delta = read_varint(&mut rest)?;
    let _offset_delta = read_varint(&mut rest)?;
    let key_length = read_varint(&mut rest)?;
    if key_length < 4 {
        return None;
    }
    let key = rest.get(..4)?;
    let _version = i16::from_be_bytes([key[0], key[1]]);
    Some(i16::from_be_bytes([key[2], key[3]]))
}

/// A zigzag varint (varlong) as Kafka's record format uses; at most 10 bytes.
fn read_varint(bytes: &mut &[u8]) -> Option<i64> {
    let mut value: u64 = 0;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

/// Encodes a control batch ending a transaction: one record, key `version 0, type`, value
/// Kafka's EndTxnMarker (`version 0, coordinator_epoch`), attributes transactional+control.
pub fn encode_marker(
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    now_ms: i64,
) -> Bytes {
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    let mut key = BytesMut::with_capacity(4);
    key.put_i16(0);
    key.put_i16(if commit { CONTROL_TYPE_COMMIT } else { CONTROL_TYPE_ABORT });
    let mut value = BytesMut::with_capacity(6);
    value.put_i16(0);
    value.put_i32(coordinator_epoch);
    let record = Record {
        transactional: true,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id,
        producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: now_ms,
        key: Some(key.freeze()),
        value: Some(value.freeze()),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    // Encoding one small record into memory cannot fail.
    RecordBatchEncoder::encode(&mut buf, [&record], &options).expect("a control record encodes");
    buf.freeze()
}

/// Whether the header belongs to a batch that ends a transaction.
pub(crate) fn is_marker(header: &BatchHeader) -> bool {
    header.is_control() && header.is_transactional()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::batch::validate_batch;

    #[test]
    fn markers_round_trip_their_type() {
        for commit in [true, false] {
            let marker = encode_marker(7, 3, commit, 0, 1000);
            let header = validate_batch(&marker).expect("valid batch");
            assert!(is_marker(&header));
            assert_eq!(header.producer_id, 7);
            assert_eq!(header.producer_epoch, 3);
            assert_eq!(control_type(&marker), Some(if commit { CONTROL_TYPE_COMMIT } else { CONTROL_TYPE_ABORT }));
        }
        assert_eq!(control_type(&[0u8; 70]), None);
    }

    #[test]
    fn index_persists_drops_torn_tails_and_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut index = AbortedIndex::default();
        let entry = |first, last| AbortedTxn {
            producer_id: 1,
            first_offset: first,
            last_offset: last,
            last_stable_offset: last + 1,
        };
        index.push(dir.path(), 0, entry(0, 5)).expect("push");
        assert!(index.push(dir.path(), 0, entry(0, 5)).expect("push").is_none(), "duplicates ignored");
        index.push(dir.path(), 10, entry(10, 12)).expect("push");
        index.push(dir.path(), 10, entry(13, 20)).expect("push");
        let loaded = AbortedIndex::load(dir.path(), &[0, 10], 15).expect("load");
        assert_eq!(loaded.len(), 2, "the entry past the log end is cut");
        assert_eq!(loaded.overlapping(6, 11), vec![entry(10, 12)]);
        assert_eq!(loaded.overlapping(0, 100).len(), 2);
        let mut loaded = loaded;
        loaded.remove_segment(dir.path(), 0).expect("remove");
        assert!(!txn_index_path(dir.path(), 0).exists());
        let reloaded = AbortedIndex::load(dir.path(), &[10], 100).expect("load");
        assert_eq!(reloaded.len(), 1);
        // A torn entry (crash mid-write) is ignored.
        let mut file = std::fs::OpenOptions::new().append(true).open(txn_index_path(dir.path(), 10)).expect("open");
        file.write_all(&[0, 0, 1]).expect("write");
        assert_eq!(AbortedIndex::load(dir.path(), &[10], 100).expect("load").len(), 1);
    }
}
