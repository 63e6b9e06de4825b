//! A partition's log: an ordered set of segments, the last one active.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::producers::{self, ProducerStates, SequenceCheck};
use super::segment::Segment;
use super::transactions::{self, AbortedIndex, AbortedTxn};
use super::{Clock, Result, StorageError};
use crate::config::LogConfig;
use crate::protocol::batch::{split_batches, stamp_batch, BatchHeader, STAMPED_HEAD_BYTES};

/// Bytes read to learn a marker's type during replay: its header and the start of its record.
const MARKER_READ_BYTES: usize = 128;

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub log_start_offset: i64,
}

/// Slices up to this size are read through the segment's open handle into a zeroed buffer.
const SMALL_READ_BYTES: usize = 64 * 1024;

/// A byte range of one segment to send to a consumer, read (or sent straight from the file)
/// after the log lock is released. It holds whole batches only.
#[derive(Debug, Clone)]
pub struct FetchSlice {
    file: Arc<File>,
    path: PathBuf,
    position: u64,
    bytes: usize,
}

impl FetchSlice {
    /// Bytes in the slice.
    pub fn len(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The segment file the bytes are in (kept open by the slice: retention or the cleaner
    /// may unlink the file meanwhile, and the bytes stay readable through this handle).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where the bytes start in [`Self::file`].
    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the slice: whole batches, as it was cut.
    pub fn read(&self) -> Result<Bytes> {
        // Large slices go through a fresh descriptor into unzeroed memory; small ones, or when
        // that descriptor is unusable, through the slice's own file into a zeroed buffer
        // (zeroing a few KB costs less than the system calls of opening a file).
        if self.bytes > SMALL_READ_BYTES {
            if let Some(buf) = self.read_uninitialized().filter(|b| b.len() == self.bytes) {
                return Ok(buf.freeze());
            }
        }
        let mut buf = BytesMut::zeroed(self.bytes);
        self.file.read_exact_at(&mut buf, self.position).map_err(|e| StorageError::io(&self.path, e))?;
        Ok(buf.freeze())
    }
}

impl FetchSlice {
    /// Reads through a fresh descriptor of the segment, into capacity that is never zeroed
    /// first (zeroing megabytes per fetch showed up in profiles). `None` if the segment is
    /// gone (retention deleted it since); the caller then reads through its open handle.
    fn read_uninitialized(&self) -> Option<BytesMut> {
        use std::io::{Read, Seek, SeekFrom};
        use std::os::unix::fs::MetadataExt;
        let mut file = File::open(&self.path).ok()?;
        // The log cleaner may have swapped a cleaned file in under the same name since: its
        // bytes sit at other positions, so only the file this slice was cut from will do.
        let (opened, sliced) = (file.metadata().ok()?, self.file.metadata().ok()?);
        if (opened.dev(), opened.ino()) != (sliced.dev(), sliced.ino()) {
            return None;
        }
        file.seek(SeekFrom::Start(self.position)).ok()?;
        let mut buf = Vec::with_capacity(self.bytes);
        file.take(self.bytes as u64).read_to_end(&mut buf).ok()?;
        Some(BytesMut::from(Bytes::from(buf)))
    }
}

/// Bytes of the active segment to hand to the kernel's writeback (see `writeback.rs`): a hint
/// that spreads disk writes out, not a flush.
#[derive(Debug)]
pub struct WritebackRange {
    file: Arc<File>,
    path: PathBuf,
    offset: u64,
    bytes: u64,
}

impl WritebackRange {
    /// Starts the write-out; blocking (the device queue may be full), so call it off the async
    /// runtime.
    pub fn start(&self) -> Result<()> {
        super::writeback::start(&self.file, self.offset, self.bytes).map_err(|e| StorageError::io(&self.path, e))
    }

    /// Where the range starts in its segment file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// What a flush must fsync to make everything up to `offset` durable.
#[derive(Debug)]
pub struct SyncPlan {
    pub files: Vec<(PathBuf, Arc<File>)>,
    pub offset: i64,
}

impl SyncPlan {
    /// Runs the fsyncs; blocking, so call it off the async runtime.
    pub fn execute(&self) -> Result<()> {
        for (path, file) in &self.files {
            file.sync_data().map_err(|e| StorageError::io(path, e))?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    config: LogConfig,
    clock: Arc<dyn Clock>,
    segments: BTreeMap<i64, Segment>,
    log_start_offset: i64,
    leader_epoch: i32,
    /// Offset up to which every record is known to be fsynced.
    flushed_offset: i64,
    /// Sealed segments written since the last flush: the next flush must fsync them too.
    unflushed_sealed: Vec<(PathBuf, Arc<File>)>,
    unflushed_messages: u64,
    last_flush_ms: i64,
    /// How much of which segment was handed to writeback: (segment base offset, bytes).
    writeback_started: (i64, u64),
    /// Idempotent producers' recent sequences, for duplicate and gap detection.
    producers: ProducerStates,
    /// Aborted transactions (`.txnindex` files), for read_committed fetches.
    aborted: AbortedIndex,
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering the active segment's tail.
    pub fn open(dir: &Path, config: LogConfig, clock: Arc<dyn Clock>) -> Result<PartitionLog> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
        // Finish or discard a log cleaner swap a crash interrupted, before segments are listed.
        super::cleaner::recover_swaps(dir)?;
        let mut bases: Vec<i64> = std::fs::read_dir(dir)
            .map_err(|e| StorageError::io(dir, e))?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse::<i64>().ok()
            })
            .collect();
        bases.sort_unstable();
        let now_ms = clock.now_ms();
        let mut segments = BTreeMap::new();
        match bases.split_last() {
            None => {
                segments.insert(0, Segment::create(dir, 0, now_ms)?);
            }
            Some((&active, sealed)) => {
                for (i, &base) in sealed.iter().enumerate() {
                    let next = bases[i + 1];
                    segments.insert(base, Segment::open_sealed(dir, base, next)?);
                }
                segments.insert(active, Segment::recover_active(dir, active, config.index_interval_bytes, now_ms)?);
            }
        }
        let log_start_offset = *segments.keys().next().expect("a log always has a segment");
        let mut log = PartitionLog {
            dir: dir.to_path_buf(),
            config,
            clock,
            segments,
            log_start_offset,
            leader_epoch: 0,
            flushed_offset: 0,
            unflushed_sealed: Vec::new(),
            unflushed_messages: 0,
            last_flush_ms: now_ms,
            writeback_started: (-1, 0),
            producers: ProducerStates::default(),
            aborted: AbortedIndex::default(),
        };
        // What survived recovery is on disk; treat it as flushed.
        log.flushed_offset = log.log_end_offset();
        let bases: Vec<i64> = log.segments.keys().copied().collect();
        log.aborted = AbortedIndex::load(dir, &bases, log.log_end_offset())?;
        log.recover_producers()?;
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset
    }

    /// Single node: everything appended is committed. Replication will move this separately.
    pub fn high_watermark(&self) -> i64 {
        self.log_end_offset()
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Base offsets of the segments, oldest first (SQL scans report the segments they skip).
    pub fn segment_base_offsets(&self) -> Vec<i64> {
        self.segments.keys().copied().collect()
    }

    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    pub fn set_leader_epoch(&mut self, epoch: i32) {
        assert!(epoch >= self.leader_epoch, "leader epochs never go back");
        self.leader_epoch = epoch;
    }

    fn active(&self) -> &Segment {
        self.segments.values().next_back().expect("a log always has a segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments.values_mut().next_back().expect("a log always has a segment")
    }

    /// Validates, stamps and appends a produce payload of one or more batches.
    pub fn append(&mut self, payload: &[u8]) -> Result<AppendInfo> {
        if payload.len() as u64 > self.config.max_message_bytes {
            return Err(StorageError::BatchTooLarge { bytes: payload.len(), max_bytes: self.config.max_message_bytes });
        }
        let batches = split_batches(payload)?;
        if batches.is_empty() {
            return Err(StorageError::InvalidBatch(crate::protocol::batch::BatchError::Invalid {
                reason: "no record batch",
            }));
        }
        // Idempotent batches come one per partition per request (Kafka requires it from
        // Produce v3 on), so the sequence check of the single batch decides for the payload.
        if batches.len() > 1 && batches.iter().any(|(h, _)| h.producer_id >= 0) {
            return Err(StorageError::InvalidBatch(crate::protocol::batch::BatchError::Invalid {
                reason: "an idempotent produce must carry exactly one batch per partition",
            }));
        }
        if let [(header, _)] = batches.as_slice() {
            match self.producers.check(header) {
                SequenceCheck::Append => {}
                // A retry: answer with the offsets the batch got the first time.
                SequenceCheck::Duplicate { base_offset, last_offset } => {
                    return Ok(AppendInfo { base_offset, last_offset, log_start_offset: self.log_start_offset })
                }
                SequenceCheck::OutOfOrder { expected, found } => {
                    return Err(StorageError::OutOfOrderSequence { producer_id: header.producer_id, expected, found })
                }
                SequenceCheck::StaleEpoch => {
                    return Err(StorageError::InvalidProducerEpoch {
                        producer_id: header.producer_id,
                        epoch: header.producer_epoch,
                    })
                }
                SequenceCheck::UnknownProducer => {
                    return Err(StorageError::UnknownProducerId { producer_id: header.producer_id })
                }
            }
        }
        let base_offset = self.log_end_offset();
        let mut next = base_offset;
        let mut last_offset = base_offset;
        for (header, range) in &batches {
            let header = BatchHeader { base_offset: next, partition_leader_epoch: self.leader_epoch, ..*header };
            let batch = &payload[range.clone()];
            let mut head = [0u8; STAMPED_HEAD_BYTES];
            head.copy_from_slice(&batch[..STAMPED_HEAD_BYTES]);
            stamp_batch(&mut head, next, self.leader_epoch);
            self.maybe_roll(range.len() as u64, header.last_offset())?;
            let interval = self.config.index_interval_bytes;
            self.active_mut().append(&head, batch, &header, interval)?;
            self.producers.record(&header);
            let control = transactions::is_marker(&header).then(|| transactions::control_type(batch)).flatten();
            self.track_transaction(&header, control)?;
            last_offset = header.last_offset();
            next = header.next_offset();
            self.unflushed_messages += header.record_count.max(0) as u64;
        }
        Ok(AppendInfo { base_offset, last_offset, log_start_offset: self.log_start_offset })
    }

    fn maybe_roll(&mut self, batch_bytes: u64, last_offset: i64) -> Result<()> {
        let now_ms = self.clock.now_ms();
        let active = self.active();
        let full = active.size + batch_bytes > self.config.segment_bytes;
        let old = now_ms - active.created_ms >= self.config.segment_ms;
        let offsets_exhausted = !active.can_hold_offset(last_offset);
        if active.size > 0 && (full || old || offsets_exhausted) {
            self.roll(now_ms)?;
        }
        Ok(())
    }

    fn roll(&mut self, now_ms: i64) -> Result<()> {
        let next_offset = self.log_end_offset();
        let active = self.active_mut();
        active.seal()?;
        let sealed = (active.log_path().to_path_buf(), Arc::clone(&active.log));
        self.unflushed_sealed.push(sealed);
        let segment = Segment::create(&self.dir, next_offset, now_ms)?;
        self.segments.insert(next_offset, segment);
        self.snapshot_producers(next_offset);
        tracing::debug!(dir = %self.dir.display(), base_offset = next_offset, "rolled segment");
        Ok(())
    }

    /// Finds the bytes to return for a fetch at `offset`, bounded by `max_bytes` except that
    /// the first batch is always whole.
    pub fn read(&mut self, offset: i64, max_bytes: usize) -> Result<Option<FetchSlice>> {
        let end = self.log_end_offset();
        if offset < self.log_start_offset || offset > end {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset: end,
            });
        }
        let starts: Vec<i64> = self.segments.range(..=offset).next_back().map(|(b, _)| *b).into_iter().collect();
        let first = starts.first().copied().unwrap_or(self.log_start_offset);
        for (_, segment) in self.segments.range_mut(first..) {
            if let Some(at) = segment.find_batch(offset)? {
                // Whole batches only, so the bytes can be sent straight from the file: to the
                // segment's end when that is within `max_bytes` (a segment holds whole
                // batches), else to the last batch boundary within it (KIP-74: at least the
                // first batch).
                let limit = at.position.saturating_add(max_bytes as u64);
                let first_end = at.position + at.header.total_bytes() as u64;
                let end = if segment.size <= limit {
                    segment.size
                } else if first_end >= limit {
                    first_end
                } else {
                    segment.whole_batches_end(first_end, limit)?
                };
                let bytes = (end - at.position) as usize;
                return Ok(Some(FetchSlice {
                    file: Arc::clone(&segment.log),
                    path: segment.log_path().to_path_buf(),
                    position: at.position,
                    bytes,
                }));
            }
        }
        Ok(None)
    }

    /// The earliest offset whose batch has a timestamp at or after `timestamp`, and that
    /// batch's max timestamp. The offset is the batch's first offset at or after the search
    /// start; records inside one batch share the batch's position.
    pub fn offset_for_timestamp(&mut self, timestamp: i64) -> Result<Option<(i64, i64)>> {
        let start = self.log_start_offset;
        for (_, segment) in self.segments.range_mut(start..) {
            if segment.size == 0 || segment.max_timestamp < timestamp {
                continue;
            }
            let mut offset = segment.time_search_start(timestamp);
            while let Some(at) = segment.find_batch(offset)? {
                if at.header.max_timestamp >= timestamp {
                    return Ok(Some((at.header.base_offset.max(offset), at.header.max_timestamp)));
                }
                offset = at.header.next_offset();
            }
        }
        Ok(None)
    }

    /// Calls `visit` with every batch from the log start to the end, in order — how internal
    /// topics (`__consumer_offsets`, `__transaction_state`) are replayed at startup. A batch
    /// that does not parse ends the replay there, logged with `what`: what came before it
    /// still counts.
    pub fn replay_batches(&mut self, what: &str, mut visit: impl FnMut(&BatchHeader, Bytes)) -> Result<()> {
        // Large reads: a replay streams the whole log once.
        const REPLAY_READ_BYTES: usize = 4 * 1024 * 1024;
        let mut offset = self.log_start_offset();
        let end = self.log_end_offset();
        while offset < end {
            let Some(slice) = self.read(offset, REPLAY_READ_BYTES)? else { break };
            let bytes = slice.read()?;
            let batches = match split_batches(&bytes) {
                Ok(batches) if !batches.is_empty() => batches,
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(offset, error = %e, "{what} is damaged; loaded up to here");
                    break;
                }
            };
            for (header, range) in batches {
                offset = header.next_offset();
                visit(&header, bytes.slice(range));
            }
        }
        Ok(())
    }

    /// Reads the whole batch that holds `offset` (for per-record timestamp lookups).
    pub fn read_batch_at(&mut self, offset: i64) -> Result<Option<Bytes>> {
        match self.read(offset, 0)? {
            Some(slice) => slice.read().map(Some),
            None => Ok(None),
        }
    }

    /// Whether `flush.ms` or `flush.messages` ask for a background flush now.
    pub fn flush_due(&self) -> bool {
        if self.flushed_offset >= self.log_end_offset() && self.unflushed_sealed.is_empty() {
            return false;
        }
        let elapsed = self.clock.now_ms() - self.last_flush_ms;
        elapsed >= self.config.flush_ms || self.unflushed_messages >= self.config.flush_messages
    }

    pub fn flushed_offset(&self) -> i64 {
        self.flushed_offset
    }

    /// What to fsync to make the log durable up to its current end.
    pub fn sync_plan(&mut self) -> SyncPlan {
        let mut files = std::mem::take(&mut self.unflushed_sealed);
        let active = self.active();
        files.push((active.log_path().to_path_buf(), Arc::clone(&active.log)));
        self.unflushed_messages = 0;
        self.last_flush_ms = self.clock.now_ms();
        SyncPlan { files, offset: self.log_end_offset() }
    }

    /// The active segment's bytes not yet handed to writeback, once there are at least
    /// `min_bytes` of them; they count as handed from now on. The tail of a segment rolled
    /// before it was handed is left to the next fsync.
    pub fn take_writeback(&mut self, min_bytes: u64) -> Option<WritebackRange> {
        let active = self.active();
        let (base, started) = self.writeback_started;
        // A truncation can shrink the segment below what was handed; start again from its end.
        let from = if base == active.base_offset { started.min(active.size) } else { 0 };
        if active.size - from < min_bytes.max(1) {
            return None;
        }
        let range = WritebackRange {
            file: Arc::clone(&active.log),
            path: active.log_path().to_path_buf(),
            offset: from,
            bytes: active.size - from,
        };
        self.writeback_started = (active.base_offset, active.size);
        Some(range)
    }

    /// Records that a [`SyncPlan`] finished.
    pub fn mark_flushed(&mut self, offset: i64) {
        self.flushed_offset = self.flushed_offset.max(offset);
    }

    /// Flushes synchronously (shutdown, tests).
    pub fn flush(&mut self) -> Result<()> {
        let plan = self.sync_plan();
        plan.execute()?;
        self.mark_flushed(plan.offset);
        Ok(())
    }

    /// Deletes whole segments past `retention.ms` or beyond `retention.bytes`; never the
    /// active one (it is rolled first when all of it has expired). Returns segments removed.
    pub fn enforce_retention(&mut self) -> Result<usize> {
        let now_ms = self.clock.now_ms();
        let retention_ms = self.config.retention_ms;
        let expired = |segment: &Segment| retention_ms >= 0 && now_ms - segment.max_timestamp > retention_ms;
        if self.active().size > 0 && expired(self.active()) {
            self.roll(now_ms)?;
        }
        let mut total = self.size_bytes() as i64;
        let mut removed = 0;
        while self.segments.len() > 1 {
            let (&base, oldest) = self.segments.iter().next().expect("checked non-empty");
            let over_size =
                self.config.retention_bytes >= 0 && total - oldest.size as i64 >= self.config.retention_bytes;
            if !(expired(oldest) || over_size) {
                break;
            }
            let segment = self.segments.remove(&base).expect("present");
            total -= segment.size as i64;
            segment.delete_files()?;
            self.aborted.remove_segment(&self.dir, base)?;
            removed += 1;
        }
        let first = *self.segments.keys().next().expect("a log always has a segment");
        self.log_start_offset = self.log_start_offset.max(first);
        if removed > 0 {
            tracing::info!(dir = %self.dir.display(), removed, log_start_offset = self.log_start_offset, "retention deleted segments");
        }
        Ok(removed)
    }

    /// Removes every record at or after `offset` (a batch boundary). Replication uses this to
    /// cut a follower back to the leader's log; the log never shrinks below its start.
    pub fn truncate_to(&mut self, offset: i64) -> Result<()> {
        assert!(offset >= self.log_start_offset, "truncating below the log start {}", self.log_start_offset);
        if offset >= self.log_end_offset() {
            return Ok(());
        }
        let doomed: Vec<i64> = self.segments.range(offset..).map(|(b, _)| *b).collect();
        for base in doomed {
            let segment = self.segments.remove(&base).expect("listed above");
            segment.delete_files()?;
            self.aborted.remove_segment(&self.dir, base)?;
        }
        self.aborted.truncate_to(&self.dir, offset)?;
        let now_ms = self.clock.now_ms();
        let interval = self.config.index_interval_bytes;
        match self.segments.iter_mut().next_back() {
            None => {
                self.segments.insert(offset, Segment::create(&self.dir, offset, now_ms)?);
            }
            Some((&base, segment)) => {
                segment.truncate_to(offset)?;
                // Reopen as the active segment: index writers and the recovered end offset.
                let reopened = Segment::recover_active(&self.dir, base, interval, now_ms)?;
                self.segments.insert(base, reopened);
            }
        }
        self.flushed_offset = self.flushed_offset.min(self.log_end_offset());
        // Snapshots past the cut describe batches that are gone; rebuild from an older one.
        let end = self.log_end_offset();
        self.producers = ProducerStates::default();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| StorageError::io(&self.dir, e))?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.strip_suffix(".snapshot").and_then(|o| o.parse::<i64>().ok()).is_some_and(|o| o > end) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        self.recover_producers()
    }

    /// Checks a batch against the producer state without appending it.
    pub fn check_sequence(&self, header: &BatchHeader) -> SequenceCheck {
        self.producers.check(header)
    }

    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }

    /// Rebuilds producer state: the newest snapshot, then the batch headers after it.
    fn recover_producers(&mut self) -> Result<()> {
        let end = self.log_end_offset();
        let (mut offset, states) =
            producers::load_snapshot(&self.dir, end).unwrap_or((self.log_start_offset, ProducerStates::default()));
        self.producers = states;
        offset = offset.max(self.log_start_offset);
        let first = self.segments.range(..=offset).next_back().map(|(b, _)| *b).unwrap_or(self.log_start_offset);
        let mut replayed = 0u64;
        // Aborts found by the replay: (segment, producer, first offset, marker offset).
        let mut aborted = Vec::new();
        for (_, segment) in self.segments.range_mut(first..) {
            let Some(at) = segment.find_batch(offset)? else { continue };
            let mut position = at.position;
            while position < segment.size {
                let header = segment.read_header(position)?;
                if header.base_offset >= offset {
                    self.producers.record(&header);
                    if transactions::is_marker(&header) {
                        // Commit or abort is in the marker's record key, just past the header.
                        let mut head = vec![0u8; header.total_bytes().min(MARKER_READ_BYTES)];
                        segment.log.read_exact_at(&mut head, position).map_err(|e| StorageError::io(&self.dir, e))?;
                        let first_offset = self.producers.end_transaction(header.producer_id);
                        if let (Some(first_offset), Some(transactions::CONTROL_TYPE_ABORT)) =
                            (first_offset, transactions::control_type(&head))
                        {
                            aborted.push((segment.base_offset, header.producer_id, first_offset, header.base_offset));
                        }
                    } else if header.is_transactional() {
                        self.producers.begin_transaction(&header);
                    }
                    replayed += 1;
                }
                position += header.total_bytes() as u64;
                offset = offset.max(header.next_offset());
            }
        }
        if replayed > 0 {
            tracing::debug!(dir = %self.dir.display(), replayed, "replayed batch headers into producer state");
        }
        // Entries already in the `.txnindex` files are recognised and not written twice.
        let last_stable_offset = self.last_stable_offset();
        for (segment_base, producer_id, first_offset, last_offset) in aborted {
            let entry = AbortedTxn { producer_id, first_offset, last_offset, last_stable_offset };
            if let Some(file) = self.aborted.push(&self.dir, segment_base, entry)? {
                self.unflushed_sealed.push(file);
            }
        }
        Ok(())
    }

    /// Follows transactions through appended batches: a transactional data batch opens its
    /// producer's transaction, a marker closes it; an abort marker adds an aborted-index entry.
    fn track_transaction(&mut self, header: &BatchHeader, control: Option<i16>) -> Result<()> {
        if !header.is_transactional() {
            return Ok(());
        }
        if !header.is_control() {
            self.producers.begin_transaction(header);
            return Ok(());
        }
        let first_offset = self.producers.end_transaction(header.producer_id);
        if let (Some(first_offset), Some(transactions::CONTROL_TYPE_ABORT)) = (first_offset, control) {
            let entry = AbortedTxn {
                producer_id: header.producer_id,
                first_offset,
                last_offset: header.base_offset,
                last_stable_offset: self.last_stable_offset(),
            };
            let segment_base = *self.segments.range(..=header.base_offset).next_back().map(|(b, _)| b).unwrap_or(&0);
            if let Some(file) = self.aborted.push(&self.dir, segment_base, entry)? {
                // Fsynced with the log by the next flush, like a sealed segment.
                self.unflushed_sealed.push(file);
            }
        }
        Ok(())
    }

    /// The last stable offset: every record below it belongs to no open transaction.
    pub fn last_stable_offset(&self) -> i64 {
        let high_watermark = self.high_watermark();
        self.producers.first_unstable_offset().map_or(high_watermark, |first| first.min(high_watermark))
    }

    /// Whether any aborted transaction is indexed (read_committed fetches skip work if not).
    pub fn has_aborted_transactions(&self) -> bool {
        !self.aborted.is_empty()
    }

    /// Aborted transactions overlapping `[from_offset, upper_offset)` (read_committed fetch).
    pub fn aborted_transactions(&self, from_offset: i64, upper_offset: i64) -> Vec<AbortedTxn> {
        self.aborted.overlapping(from_offset, upper_offset)
    }

    /// Best effort: a failed snapshot only makes the next recovery replay more.
    fn snapshot_producers(&self, offset: i64) {
        if let Err(e) = producers::write_snapshot(&self.dir, offset, &self.producers) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write producer snapshot");
        }
    }

    /// Flushes and seals the active segment's indexes: the clean-shutdown path.
    pub fn close(&mut self) -> Result<()> {
        self.flush()?;
        self.snapshot_producers(self.log_end_offset());
        self.active_mut().seal()
    }

    /// Deletes the partition's directory (topic deletion).
    pub fn delete(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir).map_err(|e| StorageError::io(&self.dir, e))
    }
}

/// A sealed segment as the log cleaner sees it (`storage/cleaner.rs`): read outside the lock
/// through `log`, swapped back only if the segment is still this one.
#[derive(Debug, Clone)]
pub(crate) struct SealedSegment {
    pub(crate) base_offset: i64,
    pub(crate) next_offset: i64,
    pub(crate) size: u64,
    pub(crate) max_timestamp: i64,
    pub(crate) log: Arc<File>,
    pub(crate) log_path: PathBuf,
}

/// Hooks for the log cleaner; the cleaning itself lives in `storage/cleaner.rs`.
impl PartitionLog {
    pub(crate) fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Every segment but the active one, oldest first: the active segment is never cleaned.
    pub(crate) fn sealed_segments(&self) -> Vec<SealedSegment> {
        let sealed = self.segments.len().saturating_sub(1);
        self.segments
            .values()
            .take(sealed)
            .map(|s| SealedSegment {
                base_offset: s.base_offset,
                next_offset: s.next_offset,
                size: s.size,
                max_timestamp: s.max_timestamp,
                log: Arc::clone(&s.log),
                log_path: s.log_path().to_path_buf(),
            })
            .collect()
    }

    /// Replaces `expected` by its cleaned version: if the segment is still the one the cleaner
    /// read (same open file, same size, still sealed), runs `commit` (the renames) and reopens
    /// it. Returns false, without running `commit`, when retention or truncation got there
    /// first. Readers holding the old `Arc<File>` keep reading the old, unlinked file.
    pub(crate) fn swap_cleaned_segment(
        &mut self,
        expected: &SealedSegment,
        commit: impl FnOnce() -> Result<()>,
    ) -> Result<bool> {
        let active = self.segments.keys().next_back().copied();
        let Some(current) = self.segments.get(&expected.base_offset) else { return Ok(false) };
        let same = Arc::ptr_eq(&current.log, &expected.log) && current.size == expected.size;
        if !same || active == Some(expected.base_offset) {
            return Ok(false);
        }
        let next_offset = current.next_offset;
        commit()?;
        let cleaned = Segment::open_sealed(&self.dir, expected.base_offset, next_offset)?;
        self.segments.insert(expected.base_offset, cleaned);
        Ok(true)
    }
}
