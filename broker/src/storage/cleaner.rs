//! The log cleaner: compaction of partitions whose `cleanup.policy` contains `compact`.
//!
//! A pass over one partition, as Kafka's `Cleaner.doClean` does it:
//! 1. Under the partition lock, take a snapshot of the sealed segments (the active segment is
//!    never cleaned) and work out the dirty section: from the first dirty offset (the
//!    `cleaner-offset-checkpoint` file) to the first uncleanable offset (the active segment, or
//!    the first segment with a record younger than `min.compaction.lag.ms`).
//! 2. Outside the lock, read the dirty section into a [`KeyMap`] of key hash → latest offset.
//!    The map has a byte budget; when the section has more keys than fit, the pass covers the
//!    prefix that fits and the next pass continues from there.
//! 3. Outside the lock, rewrite every sealed segment from the log start up to the end of what
//!    the map covers, keeping a record only if it is the latest of its key (by the map), and a
//!    tombstone only until its delete horizon (KIP-534: the first clean that keeps a tombstone
//!    stamps `now + delete.retention.ms` into its batch's base timestamp and sets attribute bit
//!    6; a later clean past that horizon drops it). Batches keep their base offset, last offset
//!    delta, producer id/epoch/sequence, leader epoch, codec and max timestamp; a batch that
//!    loses every record is dropped (offset gaps are normal in a compacted Kafka log).
//!    Transactional and control batches are copied untouched (see docs/STORAGE.md).
//!    A segment that keeps every byte is not rewritten.
//! 4. Swap each rewritten segment in under a brief lock (see [`recover_swaps`] for the
//!    crash-safe file protocol); a fetch that already holds the old file keeps reading it.
//!
//! Time comes in as `now_ms`: the cleaner never reads the clock, so tests drive tombstone
//! expiry from a [`super::ManualClock`].

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::MutexGuard;

use super::index::{OffsetEntry, TimeEntry};
use super::keymap::KeyMap;
use super::log::SealedSegment;
use super::record_codec::{decode_records, delete_horizon, encode_retained};
use super::{segment_file_name, PartitionLog, StorageError};
use crate::config::LogConfig;
use crate::protocol::batch::{peek_batch_bytes, validate_batch, BatchHeader, LENGTH_FIELD_END};

/// Per partition: the offset before which the log is clean, and the earliest tombstone horizon.
pub const CHECKPOINT_FILE: &str = "cleaner-offset-checkpoint";
/// Segments are read in chunks of this size (or one batch, if larger): the cleaner's read
/// buffer, per thread.
const READ_CHUNK_BYTES: usize = 1 << 20;
/// Bytes buffered before a write to the cleaned segment.
const WRITE_BUFFER_BYTES: usize = 1 << 20;
/// How often (in batches) a pass checks whether the broker is shutting down.
const STOP_CHECK_BATCHES: u64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum CleanerError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("corrupt batch in {path} at position {position}: {reason}")]
    Corrupt { path: PathBuf, position: u64, reason: String },
    #[error(
        "a batch of {records} records does not fit the key map ({capacity} keys): raise log.cleaner.dedupe.buffer.size"
    )]
    MapTooSmall { records: usize, capacity: usize },
    #[error("the cleaning pass was stopped")]
    Stopped,
}

impl CleanerError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        CleanerError::Storage(StorageError::io(path, source))
    }
}

/// What the cleaner remembers about one partition between passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCleanState {
    /// Everything below this offset was cleaned at least once.
    pub first_dirty_offset: i64,
    /// The earliest delete horizon of a tombstone still in the log: a pass is due then, even
    /// if nothing is dirty.
    pub tombstone_horizon_ms: Option<i64>,
}

impl PartitionCleanState {
    /// Reads the checkpoint of the partition in `dir`; a missing or damaged one means the
    /// whole log is dirty (one extra pass, nothing lost).
    pub fn load(dir: &Path) -> PartitionCleanState {
        let text = std::fs::read_to_string(dir.join(CHECKPOINT_FILE)).unwrap_or_default();
        let mut numbers = text.split_whitespace().map(|n| n.parse::<i64>().ok());
        match (numbers.next().flatten(), numbers.next().flatten()) {
            (Some(first_dirty_offset), Some(horizon)) => PartitionCleanState {
                first_dirty_offset,
                tombstone_horizon_ms: (horizon != i64::MAX).then_some(horizon),
            },
            _ => PartitionCleanState { first_dirty_offset: 0, tombstone_horizon_ms: None },
        }
    }

    fn save(&self, dir: &Path) -> Result<(), CleanerError> {
        let path = dir.join(CHECKPOINT_FILE);
        let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
        let text = format!("{} {}\n", self.first_dirty_offset, self.tombstone_horizon_ms.unwrap_or(i64::MAX));
        std::fs::write(&tmp, text).map_err(|e| CleanerError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| CleanerError::io(&path, e))
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanStats {
    /// Bytes read to build the key map (the dirty section).
    pub map_bytes_read: u64,
    /// Bytes read while rewriting (the whole cleanable log).
    pub bytes_read: u64,
    /// Bytes of the segments swapped in.
    pub bytes_written: u64,
    /// Bytes of the segments they replaced.
    pub bytes_replaced: u64,
    pub segments_rewritten: u64,
    pub records_removed: u64,
    pub tombstones_removed: u64,
    /// The offset the pass cleaned up to: the next pass starts there.
    pub cleaned_to_offset: i64,
    /// The dirty section had more keys than the map holds: another pass follows at once.
    pub map_was_full: bool,
}

/// Where a test stops a swap, as a crash would.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashPoint {
    /// After the `.cleaned` files are written and fsynced; nothing renamed.
    Cleaned,
    /// After every `.cleaned` file is renamed to `.swap`.
    SwapRenamed,
    /// After the index files are in place; the log is still `.log.swap`.
    IndexesInstalled,
}

/// One cleaner thread: its key map and read buffer, reused from pass to pass.
#[derive(Debug)]
pub struct Cleaner {
    map: KeyMap,
    /// Whether cleaned files are fsynced before the swap. Only tests turn it off (fsyncs
    /// dominate their run time); the crash tests keep it on.
    fsync: bool,
    #[cfg(test)]
    pub(crate) crash: Option<CrashPoint>,
}

/// How dirty a compacted partition is, when it needs a pass; `None` when it does not.
/// The value orders partitions: the dirtiest first; forced passes (tombstone horizon reached,
/// `max.compaction.lag.ms` exceeded) count as fully dirty.
pub fn cleaning_priority(log: &PartitionLog, state: &PartitionCleanState, now_ms: i64) -> Option<f64> {
    let config = log.config();
    if !config.compaction.enabled {
        return None;
    }
    let segments = log.sealed_segments();
    let (first_dirty, first_uncleanable) = dirty_bounds(&segments, state, config, now_ms)?;
    let clean_bytes: u64 = segments.iter().filter(|s| s.next_offset <= first_dirty).map(|s| s.size).sum();
    let dirty: Vec<&SealedSegment> =
        segments.iter().filter(|s| s.next_offset > first_dirty && s.base_offset < first_uncleanable).collect();
    let dirty_bytes: u64 = dirty.iter().map(|s| s.size).sum();
    let horizon_due = state.tombstone_horizon_ms.is_some_and(|h| now_ms >= h);
    let lag_exceeded =
        dirty.first().is_some_and(|s| now_ms.saturating_sub(s.max_timestamp) > config.compaction.max_compaction_lag_ms);
    let ratio = dirty_bytes as f64 / (clean_bytes + dirty_bytes).max(1) as f64;
    if horizon_due || (dirty_bytes > 0 && lag_exceeded) {
        return Some(1.0);
    }
    (dirty_bytes > 0 && ratio >= config.compaction.min_cleanable_dirty_ratio).then_some(ratio)
}

/// The dirty section as (first dirty offset, first uncleanable offset), both at batch
/// boundaries; `None` when there is no sealed segment old enough to clean.
fn dirty_bounds(
    segments: &[SealedSegment],
    state: &PartitionCleanState,
    config: &LogConfig,
    now_ms: i64,
) -> Option<(i64, i64)> {
    let log_start = segments.first()?.base_offset;
    let lag = config.compaction.min_compaction_lag_ms;
    // The first segment holding a record younger than the lag, and all after it, wait. With
    // no lag nothing waits, even records stamped ahead of the broker's clock (as in Kafka).
    let first_uncleanable = segments
        .iter()
        .find(|s| lag > 0 && now_ms.saturating_sub(s.max_timestamp) < lag)
        .map(|s| s.base_offset)
        .unwrap_or_else(|| segments.last().map(|s| s.next_offset).unwrap_or(log_start));
    if first_uncleanable <= log_start {
        return None;
    }
    Some((state.first_dirty_offset.clamp(log_start, first_uncleanable), first_uncleanable))
}

impl Cleaner {
    /// A cleaner whose key map never takes more than `dedupe_buffer_bytes`.
    pub fn new(dedupe_buffer_bytes: usize) -> Cleaner {
        Cleaner {
            map: KeyMap::with_budget(dedupe_buffer_bytes),
            fsync: true,
            #[cfg(test)]
            crash: None,
        }
    }

    /// A cleaner that skips fsyncs: for tests that do not simulate power loss.
    #[cfg(test)]
    pub(crate) fn without_fsync(dedupe_buffer_bytes: usize) -> Cleaner {
        Cleaner { fsync: false, ..Cleaner::new(dedupe_buffer_bytes) }
    }

    /// Runs one pass over the partition behind `lock` (see the module docs). `stop` is polled
    /// between batches; a stopped pass leaves the log valid (swapped segments are whole) and
    /// the checkpoint where it was.
    pub fn clean<'m>(
        &mut self,
        lock: &dyn Fn() -> MutexGuard<'m, PartitionLog>,
        state: &mut PartitionCleanState,
        now_ms: i64,
        stop: &dyn Fn() -> bool,
    ) -> Result<CleanStats, CleanerError> {
        let (segments, config, dir) = {
            let log = lock();
            (log.sealed_segments(), log.config().clone(), log.dir().to_path_buf())
        };
        let mut stats = CleanStats::default();
        let Some((first_dirty, first_uncleanable)) = dirty_bounds(&segments, state, &config, now_ms) else {
            return Ok(stats);
        };
        let span = tracing::info_span!("clean", dir = %dir.display(), first_dirty, first_uncleanable);
        let _entered = span.enter();
        let end_offset = self.build_map(&segments, first_dirty, first_uncleanable, stop, &mut stats)?;
        stats.cleaned_to_offset = end_offset;
        let mut horizon: Option<i64> = None;
        for segment in segments.iter().filter(|s| s.base_offset < end_offset) {
            if stop() {
                return Err(CleanerError::Stopped);
            }
            self.clean_segment(lock, &dir, segment, &config, now_ms, stop, &mut stats, &mut horizon)?;
        }
        // One directory fsync makes the pass's renames durable before the checkpoint moves. A
        // rename lost to a power failure only brings back an older, valid version of a
        // segment (recovery finishes or discards half-done swaps), never a broken one.
        if self.fsync && stats.segments_rewritten > 0 {
            sync_dir(&dir);
        }
        // Tombstones past the cleaned range are not stamped yet: their horizon is set by the
        // pass that first cleans them.
        *state = PartitionCleanState { first_dirty_offset: end_offset, tombstone_horizon_ms: horizon };
        state.save(&dir)?;
        tracing::info!(
            cleaned_to = end_offset,
            segments = stats.segments_rewritten,
            removed = stats.records_removed,
            tombstones = stats.tombstones_removed,
            bytes_read = stats.bytes_read,
            bytes_written = stats.bytes_written,
            "cleaned"
        );
        Ok(stats)
    }

    /// Fills the map from the dirty section; returns the offset the map covers up to.
    fn build_map(
        &mut self,
        segments: &[SealedSegment],
        first_dirty: i64,
        first_uncleanable: i64,
        stop: &dyn Fn() -> bool,
        stats: &mut CleanStats,
    ) -> Result<i64, CleanerError> {
        self.map.reset();
        let mut batches = 0u64;
        for segment in segments.iter().filter(|s| s.next_offset > first_dirty && s.base_offset < first_uncleanable) {
            let mut scan = SegmentScan::new(segment);
            while let Some((position, batch)) = scan.next_batch()? {
                batches += 1;
                if batches.is_multiple_of(STOP_CHECK_BATCHES) && stop() {
                    return Err(CleanerError::Stopped);
                }
                let header = checked(segment, position, batch)?;
                if header.last_offset() < first_dirty {
                    continue;
                }
                stats.map_bytes_read += batch.len() as u64;
                if header.is_transactional() || header.is_control() {
                    continue; // left untouched in this version: their keys do not supersede
                }
                let Ok((_, records)) = decode_records(batch) else { continue };
                if !self.map.reserve(records.len()) {
                    if self.map.len() == 0 {
                        return Err(CleanerError::MapTooSmall {
                            records: records.len(),
                            capacity: self.map.capacity_max(),
                        });
                    }
                    stats.map_was_full = true;
                    return Ok(header.base_offset);
                }
                for record in &records {
                    if let Some(key) = &record.key {
                        self.map.put(key, header.base_offset + i64::from(record.offset_delta));
                    }
                }
            }
        }
        Ok(first_uncleanable)
    }

    /// Rewrites one segment if cleaning changes it, and swaps the result in.
    #[allow(clippy::too_many_arguments)]
    fn clean_segment<'m>(
        &mut self,
        lock: &dyn Fn() -> MutexGuard<'m, PartitionLog>,
        dir: &Path,
        segment: &SealedSegment,
        config: &LogConfig,
        now_ms: i64,
        stop: &dyn Fn() -> bool,
        stats: &mut CleanStats,
        horizon: &mut Option<i64>,
    ) -> Result<(), CleanerError> {
        let mut scan = SegmentScan::new(segment);
        let mut index = IndexBuilder::new(segment.base_offset, config.index_interval_bytes);
        let mut out: Option<CleanedWriter> = None;
        let mut out_position = 0u64;
        let mut batches = 0u64;
        let delete_retention_ms = config.compaction.delete_retention_ms;
        while let Some((position, batch)) = scan.next_batch()? {
            batches += 1;
            if batches.is_multiple_of(STOP_CHECK_BATCHES) && stop() {
                discard(dir, segment.base_offset);
                return Err(CleanerError::Stopped);
            }
            let header = checked(segment, position, batch)?;
            stats.bytes_read += batch.len() as u64;
            let decision = self.decide(batch, &header, now_ms, delete_retention_ms, stats, horizon);
            if !matches!(decision, Decision::Keep) && out.is_none() {
                // First change: the bytes before it are the same in the cleaned segment.
                out = Some(CleanedWriter::create(dir, segment, position)?);
            }
            let written = match &decision {
                Decision::Keep => batch,
                Decision::Rewrite(bytes) => &bytes[..],
                Decision::Drop => continue,
            };
            let written_header = BatchHeader::parse(written).map_err(|e| corrupt(segment, position, e))?;
            if let Some(out) = out.as_mut() {
                out.write(written)?;
            }
            index.add(out_position, &written_header);
            out_position += written.len() as u64;
        }
        let Some(out) = out else { return Ok(()) };
        let (offsets, times) = index.finish(segment.max_timestamp);
        out.finish(&offsets, &times, self.fsync)?;
        // A re-encoded batch can come out a few bytes larger than it went in (recompression,
        // a longer timestamp delta after a delete horizon), so the segment may grow slightly.
        #[cfg(test)]
        if self.crash == Some(CrashPoint::Cleaned) {
            return Err(CleanerError::Stopped);
        }
        #[cfg(test)]
        let crash = self.crash;
        #[cfg(not(test))]
        let crash = None;
        // The directory may belong to a new topic of the same name by now (the partition was
        // deleted and created again while this pass ran): never rename into it.
        let swapped = still_on_disk(segment)
            && lock().swap_cleaned_segment(segment, || commit_swap(dir, segment.base_offset, crash))?;
        if !swapped {
            tracing::debug!(base_offset = segment.base_offset, "segment changed while cleaning; discarding");
            discard(dir, segment.base_offset);
            return Ok(());
        }
        stats.segments_rewritten += 1;
        stats.bytes_written += out_position;
        stats.bytes_replaced += segment.size;
        Ok(())
    }

    /// What happens to one batch.
    fn decide(
        &self,
        batch: &[u8],
        header: &BatchHeader,
        now_ms: i64,
        delete_retention_ms: i64,
        stats: &mut CleanStats,
        horizon: &mut Option<i64>,
    ) -> Decision {
        if header.is_transactional() || header.is_control() {
            return Decision::Keep;
        }
        let records = match decode_records(batch) {
            Ok((_, records)) => records,
            Err(e) => {
                tracing::warn!(base_offset = header.base_offset, error = %e, "batch not cleaned: its records do not decode");
                return Decision::Keep;
            }
        };
        let stamped = delete_horizon(header);
        let tombstones_expired = stamped.is_some_and(|h| now_ms >= h);
        let mut kept = Vec::with_capacity(records.len());
        let mut keeps_tombstone = false;
        for record in &records {
            let offset = header.base_offset + i64::from(record.offset_delta);
            let latest = record.key.as_ref().is_none_or(|key| self.map.get(key).is_none_or(|o| offset >= o));
            if !latest {
                stats.records_removed += 1;
                continue;
            }
            if record.is_tombstone && record.key.is_some() {
                if tombstones_expired {
                    stats.tombstones_removed += 1;
                    continue;
                }
                keeps_tombstone = true;
            }
            kept.push(record);
        }
        let new_horizon = (keeps_tombstone && stamped.is_none()).then(|| now_ms.saturating_add(delete_retention_ms));
        if keeps_tombstone {
            let batch_horizon = new_horizon.or(stamped).unwrap_or(i64::MAX);
            *horizon = Some(horizon.map_or(batch_horizon, |h| h.min(batch_horizon)));
        }
        if kept.is_empty() {
            return Decision::Drop;
        }
        if kept.len() == records.len() && new_horizon.is_none() {
            return Decision::Keep;
        }
        match encode_retained(header, &kept, new_horizon.or(stamped)) {
            Ok(bytes) => Decision::Rewrite(bytes),
            Err(e) => {
                tracing::warn!(base_offset = header.base_offset, error = %e, "batch not cleaned: cannot re-encode it");
                Decision::Keep
            }
        }
    }
}

enum Decision {
    Keep,
    Drop,
    Rewrite(bytes::BytesMut),
}

fn corrupt(segment: &SealedSegment, position: u64, reason: impl std::fmt::Display) -> CleanerError {
    CleanerError::Corrupt { path: segment.log_path.clone(), position, reason: reason.to_string() }
}

/// Verifies a batch (lengths, magic, CRC) before the cleaner trusts any of it.
fn checked(segment: &SealedSegment, position: u64, batch: &[u8]) -> Result<BatchHeader, CleanerError> {
    validate_batch(batch).map_err(|e| corrupt(segment, position, e))
}

/// Reads a sealed segment's batches in order, through the open file (so a segment that
/// retention unlinks meanwhile still reads whole), with a bounded buffer.
struct SegmentScan<'a> {
    segment: &'a SealedSegment,
    next: u64,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    buf_position: u64,
}

impl<'a> SegmentScan<'a> {
    fn new(segment: &'a SealedSegment) -> Self {
        SegmentScan { segment, next: 0, buf: Vec::new(), buf_position: 0 }
    }

    fn next_batch(&mut self) -> Result<Option<(u64, &[u8])>, CleanerError> {
        let size = self.segment.size;
        if self.next >= size {
            return Ok(None);
        }
        let position = self.next;
        self.fill(position, LENGTH_FIELD_END)?;
        let at = (position - self.buf_position) as usize;
        let length = peek_batch_bytes(&self.buf[at..]).ok_or_else(|| corrupt(self.segment, position, "length"))?;
        if length < LENGTH_FIELD_END || position + length as u64 > size {
            return Err(corrupt(self.segment, position, "batch runs past the segment"));
        }
        self.fill(position, length)?;
        let at = (position - self.buf_position) as usize;
        self.next = position + length as u64;
        Ok(Some((position, &self.buf[at..at + length])))
    }

    /// Makes `[at, at + need)` available in the buffer; `need` is within the segment.
    fn fill(&mut self, at: u64, need: usize) -> Result<(), CleanerError> {
        let end = self.buf_position + self.buf.len() as u64;
        if at >= self.buf_position && at + need as u64 <= end {
            return Ok(());
        }
        let remaining = (self.segment.size - at) as usize;
        let want = need.max(READ_CHUNK_BYTES).min(remaining);
        self.buf.resize(want, 0);
        self.segment.log.read_exact_at(&mut self.buf, at).map_err(|e| CleanerError::io(&self.segment.log_path, e))?;
        self.buf_position = at;
        Ok(())
    }
}

/// Builds the offset and time index of a cleaned segment the way `Segment::append` does.
struct IndexBuilder {
    base_offset: i64,
    interval_bytes: u64,
    offsets: Vec<OffsetEntry>,
    times: Vec<TimeEntry>,
    bytes_since_entry: u64,
    max_timestamp: i64,
    last_offset: Option<i64>,
}

impl IndexBuilder {
    fn new(base_offset: i64, interval_bytes: u64) -> Self {
        IndexBuilder {
            base_offset,
            interval_bytes,
            offsets: Vec::new(),
            times: Vec::new(),
            bytes_since_entry: 0,
            max_timestamp: i64::MIN,
            last_offset: None,
        }
    }

    fn relative(&self, offset: i64) -> u32 {
        let relative = offset - self.base_offset;
        assert!((0..=i64::from(u32::MAX)).contains(&relative), "offset {offset} outside segment {}", self.base_offset);
        relative as u32
    }

    fn add(&mut self, position: u64, header: &BatchHeader) {
        if let Some(last) = self.last_offset {
            assert!(
                header.base_offset > last,
                "offsets strictly increase in a cleaned segment ({last} then {})",
                header.base_offset
            );
        }
        self.last_offset = Some(header.last_offset());
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        self.bytes_since_entry += header.total_bytes() as u64;
        if self.bytes_since_entry >= self.interval_bytes && position > 0 {
            let relative_offset = self.relative(header.base_offset);
            self.offsets.push(OffsetEntry { relative_offset, position: position as u32 });
            self.bytes_since_entry = 0;
            self.push_time(header.last_offset());
        }
    }

    fn push_time(&mut self, last_offset: i64) {
        if self.times.last().is_some_and(|t| t.timestamp >= self.max_timestamp) {
            return;
        }
        let relative_offset = self.relative(last_offset);
        self.times.push(TimeEntry { timestamp: self.max_timestamp, relative_offset });
    }

    /// Closes the time index with the original segment's largest timestamp, so time-based
    /// retention (`compact,delete`) sees the segment as old as it was.
    fn finish(mut self, segment_max_timestamp: i64) -> (Vec<OffsetEntry>, Vec<TimeEntry>) {
        self.max_timestamp = self.max_timestamp.max(segment_max_timestamp);
        self.push_time(self.last_offset.unwrap_or(self.base_offset));
        (self.offsets, self.times)
    }
}

fn cleaned_path(dir: &Path, base_offset: i64, extension: &str, suffix: &str) -> PathBuf {
    dir.join(format!("{}.{suffix}", segment_file_name(base_offset, extension)))
}

const EXTENSIONS: [&str; 3] = ["index", "timeindex", "log"];

/// The `.cleaned` files of one segment being written.
struct CleanedWriter {
    dir: PathBuf,
    base_offset: i64,
    log: std::io::BufWriter<File>,
    log_path: PathBuf,
}

impl CleanedWriter {
    /// Starts `<base>.log.cleaned` with the first `prefix_bytes` of the original, unchanged.
    fn create(dir: &Path, segment: &SealedSegment, prefix_bytes: u64) -> Result<Self, CleanerError> {
        let log_path = cleaned_path(dir, segment.base_offset, "log", "cleaned");
        let file = File::create(&log_path).map_err(|e| CleanerError::io(&log_path, e))?;
        let mut writer = CleanedWriter {
            dir: dir.to_path_buf(),
            base_offset: segment.base_offset,
            log: std::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
            log_path,
        };
        let mut chunk = vec![0u8; READ_CHUNK_BYTES.min(prefix_bytes as usize)];
        let mut copied = 0u64;
        while copied < prefix_bytes {
            let n = chunk.len().min((prefix_bytes - copied) as usize);
            segment.log.read_exact_at(&mut chunk[..n], copied).map_err(|e| CleanerError::io(&segment.log_path, e))?;
            writer.write(&chunk[..n])?;
            copied += n as u64;
        }
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), CleanerError> {
        self.log.write_all(bytes).map_err(|e| CleanerError::io(&self.log_path, e))
    }

    /// Flushes the log and writes both indexes; all three are fsynced before any rename.
    fn finish(self, offsets: &[OffsetEntry], times: &[TimeEntry], fsync: bool) -> Result<(), CleanerError> {
        let file = self.log.into_inner().map_err(|e| CleanerError::io(&self.log_path, e.into_error()))?;
        if fsync {
            file.sync_all().map_err(|e| CleanerError::io(&self.log_path, e))?;
        }
        let index: Vec<u8> = offsets.iter().flat_map(|e| e.encode()).collect();
        let time_index: Vec<u8> = times.iter().flat_map(|e| e.encode()).collect();
        for (extension, bytes) in [("index", index), ("timeindex", time_index)] {
            let path = cleaned_path(&self.dir, self.base_offset, extension, "cleaned");
            let mut file = File::create(&path).map_err(|e| CleanerError::io(&path, e))?;
            file.write_all(&bytes).map_err(|e| CleanerError::io(&path, e))?;
            if fsync {
                file.sync_all().map_err(|e| CleanerError::io(&path, e))?;
            }
        }
        Ok(())
    }
}

/// The swap, run under the partition lock. The rename of `.log.cleaned` to `.log.swap` is the
/// commit point: recovery finishes a swap whose `.log.swap` exists and discards one without.
fn commit_swap(dir: &Path, base_offset: i64, crash: Option<CrashPointOrNone>) -> Result<(), StorageError> {
    let rename = |from: &Path, to: &Path| std::fs::rename(from, to).map_err(|e| StorageError::io(from, e));
    for extension in EXTENSIONS {
        rename(
            &cleaned_path(dir, base_offset, extension, "cleaned"),
            &cleaned_path(dir, base_offset, extension, "swap"),
        )?;
    }
    crash_here(crash, 1)?;
    for extension in EXTENSIONS {
        if extension == "log" {
            crash_here(crash, 2)?;
        }
        rename(
            &cleaned_path(dir, base_offset, extension, "swap"),
            &dir.join(segment_file_name(base_offset, extension)),
        )?;
    }
    Ok(())
}

#[cfg(test)]
type CrashPointOrNone = CrashPoint;
#[cfg(not(test))]
type CrashPointOrNone = std::convert::Infallible;

/// Test builds stop a swap at a step, as a crash would; release builds never do.
fn crash_here(crash: Option<CrashPointOrNone>, step: u8) -> Result<(), StorageError> {
    #[cfg(test)]
    {
        let stop =
            matches!((crash, step), (Some(CrashPoint::SwapRenamed), 1) | (Some(CrashPoint::IndexesInstalled), 2));
        if stop {
            return Err(StorageError::io(Path::new("<crash point>"), std::io::Error::other("simulated crash")));
        }
    }
    #[cfg(not(test))]
    let _ = (crash, step);
    Ok(())
}

/// Whether the segment's path still names the file the pass read.
fn still_on_disk(segment: &SealedSegment) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(&segment.log_path), segment.log.metadata()) {
        (Ok(on_disk), Ok(read)) => (on_disk.dev(), on_disk.ino()) == (read.dev(), read.ino()),
        _ => false,
    }
}

/// Removes the `.cleaned` and `.swap` files of one segment (best effort).
fn discard(dir: &Path, base_offset: i64) {
    for extension in EXTENSIONS {
        for suffix in ["cleaned", "swap"] {
            let _ = std::fs::remove_file(cleaned_path(dir, base_offset, extension, suffix));
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
}

/// Finishes or discards swaps a crash interrupted, before the log lists its segments:
/// - `<base>.log.swap` exists and `<base>.log` too: the swap was committed; the remaining
///   `.swap` files are renamed over the originals (the indexes may already be in place).
/// - otherwise (only `.cleaned` files, or index `.swap` files without the log's): the swap
///   never committed, the original segment is whole; the leftovers are deleted.
pub(crate) fn recover_swaps(dir: &Path) -> Result<(), StorageError> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    let names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    let mut touched = false;
    for name in &names {
        let Some(base) = name.strip_suffix(".log.swap").and_then(|b| b.parse::<i64>().ok()) else { continue };
        touched = true;
        if !dir.join(segment_file_name(base, "log")).exists() {
            continue; // the segment is gone (deleted after the swap); the leftovers go below
        }
        for extension in EXTENSIONS {
            let swap = cleaned_path(dir, base, extension, "swap");
            if swap.exists() {
                let target = dir.join(segment_file_name(base, extension));
                std::fs::rename(&swap, &target).map_err(|e| StorageError::io(&swap, e))?;
            }
        }
        tracing::warn!(dir = %dir.display(), base_offset = base, "finished a cleaner swap interrupted by a crash");
    }
    for name in &names {
        if name.ends_with(".cleaned") || name.ends_with(".swap") {
            touched = true;
            match std::fs::remove_file(dir.join(name)) {
                Ok(()) => tracing::warn!(dir = %dir.display(), file = %name, "discarded an unfinished cleaner file"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io(&dir.join(name), e)),
            }
        }
    }
    if touched {
        sync_dir(dir);
    }
    Ok(())
}
