//! Idempotent-producer state of one partition: per producer id, its epoch and the last five
//! batches' sequence ranges, so a retried batch is recognised and answered with its original
//! offset, and a gap in sequences is refused.
//!
//! The state is rebuilt on open from a snapshot (written at segment roll and on clean close)
//! plus a replay of batch headers after the snapshot's offset, so recovery cost follows the
//! active segment, not the whole log.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::batch::BatchHeader;

/// Kafka keeps the last five batches per producer: `max.in.flight.requests.per.connection`
/// may be at most 5 for idempotence, so a retry is always among them.
pub(crate) const BATCHES_PER_PRODUCER: usize = 5;
/// Bound on producers remembered per partition; the least recently seen are forgotten first.
pub(crate) const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BatchSequence {
    pub(crate) first_sequence: i32,
    pub(crate) last_sequence: i32,
    pub(crate) base_offset: i64,
    pub(crate) last_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProducerEntry {
    pub(crate) epoch: i16,
    pub(crate) batches: VecDeque<BatchSequence>,
    /// Offset of the last append: the staleness order for eviction.
    pub(crate) last_offset: i64,
}

/// What appending a batch from a producer would mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Not an idempotent batch, or the next in sequence: append it.
    Append,
    /// A retry of a batch already in the log at these offsets: answer success, write nothing.
    Duplicate { base_offset: i64, last_offset: i64 },
    /// The producer's epoch is older than one already seen.
    StaleEpoch,
    /// A gap or reordering in sequence numbers.
    OutOfOrder { expected: i32, found: i32 },
    /// A producer this partition does not know sends a sequence other than 0.
    UnknownProducer,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProducerStates {
    producers: BTreeMap<i64, ProducerEntry>,
    /// First offset of each producer's open transaction. Kept apart from `producers` so the
    /// eviction of idle producers never forgets a transaction that still holds back the
    /// last stable offset. `default` reads snapshots written before transactions existed.
    #[serde(default)]
    ongoing_transactions: BTreeMap<i64, i64>,
}

fn next_sequence(sequence: i32) -> i32 {
    // Sequences wrap at i32::MAX back to 0, as in Kafka.
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

impl ProducerStates {
    pub(crate) fn check(&self, header: &BatchHeader) -> SequenceCheck {
        if header.producer_id < 0 || header.base_sequence < 0 {
            return SequenceCheck::Append;
        }
        let Some(entry) = self.producers.get(&header.producer_id) else {
            return if header.base_sequence == 0 { SequenceCheck::Append } else { SequenceCheck::UnknownProducer };
        };
        if header.producer_epoch < entry.epoch {
            return SequenceCheck::StaleEpoch;
        }
        if header.producer_epoch > entry.epoch {
            // A bumped epoch starts its sequences again at 0.
            return if header.base_sequence == 0 {
                SequenceCheck::Append
            } else {
                SequenceCheck::OutOfOrder { expected: 0, found: header.base_sequence }
            };
        }
        let last_sequence = header.base_sequence.wrapping_add(header.last_offset_delta);
        if let Some(seen) =
            entry.batches.iter().find(|b| b.first_sequence == header.base_sequence && b.last_sequence == last_sequence)
        {
            return SequenceCheck::Duplicate { base_offset: seen.base_offset, last_offset: seen.last_offset };
        }
        let expected = entry.batches.back().map(|b| next_sequence(b.last_sequence)).unwrap_or(0);
        if header.base_sequence != expected {
            return SequenceCheck::OutOfOrder { expected, found: header.base_sequence };
        }
        SequenceCheck::Append
    }

    /// Records an appended batch (with its assigned offsets).
    pub(crate) fn record(&mut self, header: &BatchHeader) {
        if header.producer_id < 0 {
            return;
        }
        let entry = self.producers.entry(header.producer_id).or_insert_with(|| ProducerEntry {
            epoch: header.producer_epoch,
            batches: VecDeque::new(),
            last_offset: header.last_offset(),
        });
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        if header.base_sequence >= 0 {
            entry.batches.push_back(BatchSequence {
                first_sequence: header.base_sequence,
                last_sequence: header.base_sequence.wrapping_add(header.last_offset_delta),
                base_offset: header.base_offset,
                last_offset: header.last_offset(),
            });
            while entry.batches.len() > BATCHES_PER_PRODUCER {
                entry.batches.pop_front();
            }
        }
        entry.last_offset = header.last_offset();
        if self.producers.len() > PRODUCERS_PER_PARTITION_MAX {
            let stalest = self.producers.iter().min_by_key(|(_, e)| e.last_offset).map(|(id, _)| *id);
            if let Some(id) = stalest {
                self.producers.remove(&id);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.producers.len()
    }

    /// Notes a transactional data batch: the producer's transaction starts here unless it
    /// is already open.
    pub(crate) fn begin_transaction(&mut self, header: &BatchHeader) {
        self.ongoing_transactions.entry(header.producer_id).or_insert(header.base_offset);
    }

    /// Ends the producer's open transaction; returns its first offset (`None` if it had
    /// written nothing here, as when a marker is written twice after a coordinator restart).
    pub(crate) fn end_transaction(&mut self, producer_id: i64) -> Option<i64> {
        self.ongoing_transactions.remove(&producer_id)
    }

    /// The first offset of the oldest open transaction: the last stable offset's bound.
    pub(crate) fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing_transactions.values().min().copied()
    }
}

/// Snapshot files: `<offset>.snapshot` holds the state after every batch below `offset`.
pub(crate) fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(super::segment_file_name(offset, "snapshot"))
}

/// Writes a snapshot atomically (temp file, fsync, rename) and removes older ones.
pub(crate) fn write_snapshot(dir: &Path, offset: i64, states: &ProducerStates) -> std::io::Result<()> {
    let path = snapshot_path(dir, offset);
    let tmp = path.with_extension("snapshot.tmp");
    let bytes = serde_json::to_vec(states).map_err(std::io::Error::other)?;
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    for (older, older_path) in list_snapshots(dir) {
        if older < offset {
            let _ = std::fs::remove_file(older_path);
        }
    }
    Ok(())
}

/// The newest readable snapshot at or below `max_offset`, with its offset.
pub(crate) fn load_snapshot(dir: &Path, max_offset: i64) -> Option<(i64, ProducerStates)> {
    let mut snapshots = list_snapshots(dir);
    snapshots.sort_by_key(|(offset, _)| std::cmp::Reverse(*offset));
    snapshots.into_iter().filter(|(offset, _)| *offset <= max_offset).find_map(|(offset, path)| {
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(states) => Some((offset, states)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable producer snapshot");
                None
            }
        }
    })
}

fn list_snapshots(dir: &Path) -> Vec<(i64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let offset = name.strip_suffix(".snapshot")?.parse().ok()?;
            Some((offset, e.path()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(producer_id: i64, epoch: i16, base_sequence: i32, count: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: epoch,
            base_sequence,
            record_count: count,
        }
    }

    #[test]
    fn sequences_must_follow_and_retries_are_duplicates() {
        let mut states = ProducerStates::default();
        assert_eq!(states.check(&batch(7, 0, 0, 3, 0)), SequenceCheck::Append);
        states.record(&batch(7, 0, 0, 3, 0));
        assert_eq!(states.check(&batch(7, 0, 3, 2, 3)), SequenceCheck::Append);
        states.record(&batch(7, 0, 3, 2, 3));
        assert_eq!(states.check(&batch(7, 0, 0, 3, 99)), SequenceCheck::Duplicate { base_offset: 0, last_offset: 2 });
        assert_eq!(states.check(&batch(7, 0, 6, 1, 99)), SequenceCheck::OutOfOrder { expected: 5, found: 6 });
        assert_eq!(states.check(&batch(8, 0, 4, 1, 99)), SequenceCheck::UnknownProducer);
        assert_eq!(states.check(&batch(-1, -1, -1, 1, 99)), SequenceCheck::Append);
    }

    #[test]
    fn epochs_fence_and_restart_sequences() {
        let mut states = ProducerStates::default();
        states.record(&batch(7, 1, 0, 1, 0));
        assert_eq!(states.check(&batch(7, 0, 1, 1, 1)), SequenceCheck::StaleEpoch);
        assert_eq!(states.check(&batch(7, 2, 5, 1, 1)), SequenceCheck::OutOfOrder { expected: 0, found: 5 });
        assert_eq!(states.check(&batch(7, 2, 0, 1, 1)), SequenceCheck::Append);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let mut states = ProducerStates::default();
        for i in 0..7 {
            states.record(&batch(1, 0, i, 1, i as i64));
        }
        assert!(matches!(states.check(&batch(1, 0, 2, 1, 50)), SequenceCheck::Duplicate { .. }));
        assert!(matches!(states.check(&batch(1, 0, 1, 1, 50)), SequenceCheck::OutOfOrder { .. }), "older than five");
        let mut wrap = ProducerStates::default();
        wrap.record(&batch(2, 0, 100, 1, 0));
        wrap.record(&batch(2, 0, 101, i32::MAX - 100, 1));
        assert_eq!(wrap.check(&batch(2, 0, 0, 1, 5)), SequenceCheck::Append, "after i32::MAX comes 0");
    }

    #[test]
    fn snapshots_round_trip_and_old_ones_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut states = ProducerStates::default();
        states.record(&batch(3, 0, 0, 2, 0));
        write_snapshot(dir.path(), 2, &states).expect("write");
        states.record(&batch(3, 0, 2, 2, 2));
        write_snapshot(dir.path(), 4, &states).expect("write");
        assert_eq!(list_snapshots(dir.path()).len(), 1);
        let (offset, loaded) = load_snapshot(dir.path(), 10).expect("load");
        assert_eq!(offset, 4);
        assert_eq!(loaded, states);
        assert!(load_snapshot(dir.path(), 3).is_none());
    }
}
