//! One segment: a `.log` file of whole batches plus its `.index` and `.timeindex`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::index::{self, OffsetEntry, TimeEntry};
use super::{segment_file_name, Result, StorageError};
use crate::protocol::batch::{validate_batch, BatchHeader, BATCH_HEADER_BYTES};

#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base_offset: i64,
    log_path: PathBuf,
    index_path: PathBuf,
    time_index_path: PathBuf,
    pub(crate) log: Arc<File>,
    /// Bytes of whole batches in the log file.
    pub(crate) size: u64,
    /// The offset after the last batch here (the base offset while empty).
    pub(crate) next_offset: i64,
    /// Largest batch timestamp here, or the time the segment was created while it has none.
    pub(crate) max_timestamp: i64,
    /// When the first batch was appended: `segment.ms` counts from here.
    pub(crate) created_ms: i64,
    /// The offset index, loaded on first use for sealed segments so startup stays cheap.
    offsets: Option<Vec<OffsetEntry>>,
    times: Vec<TimeEntry>,
    /// Open for appending only while this is the active segment.
    writers: Option<IndexWriters>,
    bytes_since_index_entry: u64,
}

#[derive(Debug)]
struct IndexWriters {
    offsets: File,
    times: File,
}

/// The first batch found at or after a position, and where it starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchAt {
    pub(crate) position: u64,
    pub(crate) header: BatchHeader,
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new().create(true).append(true).read(true).open(path).map_err(|e| StorageError::io(path, e))
}

impl Segment {
    fn paths(dir: &Path, base_offset: i64) -> (PathBuf, PathBuf, PathBuf) {
        (
            dir.join(segment_file_name(base_offset, "log")),
            dir.join(segment_file_name(base_offset, "index")),
            dir.join(segment_file_name(base_offset, "timeindex")),
        )
    }

    /// Creates an empty active segment.
    pub(crate) fn create(dir: &Path, base_offset: i64, now_ms: i64) -> Result<Segment> {
        let (log_path, index_path, time_index_path) = Self::paths(dir, base_offset);
        let log = open_append(&log_path)?;
        let writers = IndexWriters { offsets: open_append(&index_path)?, times: open_append(&time_index_path)? };
        Ok(Segment {
            base_offset,
            log_path,
            index_path,
            time_index_path,
            log: Arc::new(log),
            size: 0,
            next_offset: base_offset,
            max_timestamp: now_ms,
            created_ms: now_ms,
            offsets: Some(Vec::new()),
            times: Vec::new(),
            writers: Some(writers),
            bytes_since_index_entry: 0,
        })
    }

    /// Opens a sealed segment whose successor starts at `next_offset`. Reads only the tail of
    /// its time index (for retention); the offset index waits until a read needs it.
    pub(crate) fn open_sealed(dir: &Path, base_offset: i64, next_offset: i64) -> Result<Segment> {
        let (log_path, index_path, time_index_path) = Self::paths(dir, base_offset);
        let log = OpenOptions::new().read(true).open(&log_path).map_err(|e| StorageError::io(&log_path, e))?;
        let metadata = log.metadata().map_err(|e| StorageError::io(&log_path, e))?;
        let modified_ms = metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let times = std::fs::read(&time_index_path).map(|b| index::decode_time_index(&b).0).unwrap_or_default();
        let max_timestamp = times.last().map(|t| t.timestamp).unwrap_or(modified_ms);
        Ok(Segment {
            base_offset,
            log_path,
            index_path,
            time_index_path,
            log: Arc::new(log),
            size: metadata.len(),
            next_offset,
            max_timestamp,
            created_ms: modified_ms,
            offsets: None,
            times,
            writers: None,
            bytes_since_index_entry: 0,
        })
    }

    /// Opens the active (last) segment after a restart: trusts the index up to its last valid
    /// entry, then walks and CRC-checks every batch after it, truncating a torn tail. The walk
    /// covers at most `index.interval.bytes` plus one batch, so it does not grow with the log.
    pub(crate) fn recover_active(
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u64,
        now_ms: i64,
    ) -> Result<Segment> {
        let (log_path, index_path, time_index_path) = Self::paths(dir, base_offset);
        let log = open_append(&log_path)?;
        let file_bytes = log.metadata().map_err(|e| StorageError::io(&log_path, e))?.len();
        let raw_index = std::fs::read(&index_path).unwrap_or_default();
        let (mut offsets, _) = index::decode_offset_index(&raw_index, file_bytes);
        let raw_times = std::fs::read(&time_index_path).unwrap_or_default();
        let (mut times, _) = index::decode_time_index(&raw_times);

        // Start at the last indexed batch: everything before it was written whole before the
        // index entry was, so a process crash cannot have torn it.
        let mut position = offsets.last().map(|e| u64::from(e.position)).unwrap_or(0);
        let mut next_offset = base_offset + offsets.last().map(|e| i64::from(e.relative_offset)).unwrap_or(0);
        let mut max_timestamp = times.last().map(|t| t.timestamp).unwrap_or(i64::MIN);
        let mut bytes_since_index_entry = 0;
        while let Some(header) = read_valid_batch(&log, position, file_bytes) {
            if header.base_offset < next_offset {
                break; // offsets must increase; anything else is damage
            }
            next_offset = header.next_offset();
            max_timestamp = max_timestamp.max(header.max_timestamp);
            position += header.total_bytes() as u64;
            bytes_since_index_entry += header.total_bytes() as u64;
        }
        if position < file_bytes {
            tracing::warn!(path = %log_path.display(), valid_bytes = position, file_bytes, "truncating torn tail of active segment");
            log.set_len(position).map_err(|e| StorageError::io(&log_path, e))?;
            log.sync_all().map_err(|e| StorageError::io(&log_path, e))?;
        }
        // Index entries that point at or past the new end are gone with the tail.
        offsets.retain(|e| u64::from(e.position) < position);
        let last_relative = (next_offset - base_offset - 1).max(0) as u32;
        times.retain(|t| t.relative_offset <= last_relative);
        rewrite_file(&index_path, offsets.iter().flat_map(|e| e.encode()).collect())?;
        rewrite_file(&time_index_path, times.iter().flat_map(|e| e.encode()).collect())?;
        let writers = IndexWriters { offsets: open_append(&index_path)?, times: open_append(&time_index_path)? };
        if next_offset == base_offset && offsets.is_empty() && position == 0 {
            max_timestamp = now_ms;
        }
        let _ = index_interval_bytes;
        Ok(Segment {
            base_offset,
            log_path,
            index_path,
            time_index_path,
            log: Arc::new(log),
            size: position,
            next_offset,
            max_timestamp,
            created_ms: now_ms,
            offsets: Some(offsets),
            times,
            writers: Some(writers),
            bytes_since_index_entry,
        })
    }

    /// Appends one stamped batch. On a failed write the file is cut back so no partial batch
    /// stays behind.
    /// `stamped_head` replaces the batch's first bytes (base offset, length, leader epoch) so
    /// the producer's buffer is written as it is, without a copy to stamp it.
    pub(crate) fn append(
        &mut self,
        stamped_head: &[u8],
        batch: &[u8],
        header: &BatchHeader,
        index_interval_bytes: u64,
    ) -> Result<()> {
        assert!(header.base_offset >= self.next_offset, "offsets must increase within a segment");
        assert!(self.writers.is_some(), "append goes to the active segment only");
        assert!(stamped_head.len() <= batch.len(), "stamped head longer than the batch");
        let position = self.size;
        if let Err(e) = write_all_vectored(&self.log, stamped_head, &batch[stamped_head.len()..]) {
            let _ = self.log.set_len(position);
            return Err(StorageError::io(&self.log_path, e));
        }
        if self.size == 0 {
            self.max_timestamp = header.max_timestamp;
        }
        self.size += batch.len() as u64;
        self.next_offset = header.next_offset();
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        self.bytes_since_index_entry += batch.len() as u64;
        if self.bytes_since_index_entry >= index_interval_bytes && position > 0 {
            let entry = OffsetEntry { relative_offset: self.relative(header.base_offset), position: position as u32 };
            let writers = self.writers.as_mut().expect("checked above");
            writers.offsets.write_all(&entry.encode()).map_err(|e| StorageError::io(&self.index_path, e))?;
            self.offsets.get_or_insert_with(Vec::new).push(entry);
            self.bytes_since_index_entry = 0;
            self.push_time_entry(header.last_offset())?;
        }
        Ok(())
    }

    fn push_time_entry(&mut self, last_offset: i64) -> Result<()> {
        if self.times.last().is_some_and(|t| t.timestamp >= self.max_timestamp) {
            return Ok(());
        }
        let entry = TimeEntry { timestamp: self.max_timestamp, relative_offset: self.relative(last_offset) };
        if let Some(writers) = self.writers.as_mut() {
            writers.times.write_all(&entry.encode()).map_err(|e| StorageError::io(&self.time_index_path, e))?;
        }
        self.times.push(entry);
        Ok(())
    }

    /// Makes this segment read-only: writes the closing time-index entry (so retention finds
    /// the segment's largest timestamp after a restart) and drops the index writers.
    pub(crate) fn seal(&mut self) -> Result<()> {
        if self.size > 0 {
            self.push_time_entry(self.next_offset - 1)?;
        }
        if let Some(writers) = self.writers.take() {
            writers.offsets.sync_all().map_err(|e| StorageError::io(&self.index_path, e))?;
            writers.times.sync_all().map_err(|e| StorageError::io(&self.time_index_path, e))?;
        }
        Ok(())
    }

    fn relative(&self, offset: i64) -> u32 {
        let relative = offset - self.base_offset;
        assert!((0..=i64::from(u32::MAX)).contains(&relative), "offset {offset} outside segment {}", self.base_offset);
        relative as u32
    }

    /// Whether an offset this far past the base still fits a relative index entry.
    pub(crate) fn can_hold_offset(&self, offset: i64) -> bool {
        offset - self.base_offset < i64::from(u32::MAX)
    }

    fn offset_index(&mut self) -> &[OffsetEntry] {
        if self.offsets.is_none() {
            let raw = std::fs::read(&self.index_path).unwrap_or_default();
            let (entries, whole) = index::decode_offset_index(&raw, self.size);
            if !whole {
                tracing::warn!(path = %self.index_path.display(), kept = entries.len(), "offset index damaged; using its valid prefix");
            }
            self.offsets = Some(entries);
        }
        self.offsets.as_deref().unwrap_or_default()
    }

    /// The batch holding `offset` (or the first batch after it, past a gap), if any is here.
    pub(crate) fn find_batch(&mut self, offset: i64) -> Result<Option<BatchAt>> {
        if offset >= self.next_offset {
            return Ok(None);
        }
        let relative = (offset - self.base_offset).max(0) as u32;
        let mut position =
            index::floor_offset(self.offset_index(), relative).map(|e| u64::from(e.position)).unwrap_or(0);
        while position < self.size {
            let header = self.read_header(position)?;
            if header.last_offset() >= offset {
                return Ok(Some(BatchAt { position, header }));
            }
            position += header.total_bytes() as u64;
        }
        Ok(None)
    }

    /// The end of the last whole batch that ends at or before `limit`, walking from
    /// `first_end`, a batch boundary below `limit` (the end of the batch a fetch starts with,
    /// which it returns whole in any case). Headers are read from the offset index's last entry
    /// at or below `limit` onwards, so the walk covers at most about one index interval.
    pub(crate) fn whole_batches_end(&mut self, first_end: u64, limit: u64) -> Result<u64> {
        let entries = self.offset_index();
        let at = entries.partition_point(|e| u64::from(e.position) <= limit);
        let mut position =
            at.checked_sub(1).map(|i| u64::from(entries[i].position)).filter(|p| *p > first_end).unwrap_or(first_end);
        while position < self.size {
            let end = position + self.read_header(position)?.total_bytes() as u64;
            if end > limit {
                break;
            }
            position = end;
        }
        Ok(position)
    }

    /// Where to start looking for the first record at or after `timestamp`.
    pub(crate) fn time_search_start(&self, timestamp: i64) -> i64 {
        index::last_before_timestamp(&self.times, timestamp)
            .map(|t| self.base_offset + i64::from(t.relative_offset) + 1)
            .unwrap_or(self.base_offset)
    }

    pub(crate) fn read_header(&self, position: u64) -> Result<BatchHeader> {
        let mut buf = [0u8; BATCH_HEADER_BYTES];
        self.log.read_exact_at(&mut buf, position).map_err(|e| StorageError::io(&self.log_path, e))?;
        let header = BatchHeader::parse(&buf)?;
        // Whole batches only reach the file, so a header that runs past the end is corruption.
        if header.batch_length < 49 || position + header.total_bytes() as u64 > self.size {
            return Err(StorageError::Corrupt { path: self.log_path.clone(), position });
        }
        Ok(header)
    }

    /// Truncates this segment so its last batch ends before `offset`. `offset` must be a batch
    /// boundary or past the end.
    pub(crate) fn truncate_to(&mut self, offset: i64) -> Result<()> {
        let Some(at) = self.find_batch(offset)? else { return Ok(()) };
        self.log.set_len(at.position).map_err(|e| StorageError::io(&self.log_path, e))?;
        self.size = at.position;
        self.next_offset = at.header.base_offset.min(offset);
        let limit = self.size;
        if let Some(offsets) = self.offsets.as_mut() {
            offsets.retain(|e| u64::from(e.position) < limit);
        }
        let last_relative = (self.next_offset - self.base_offset - 1).max(0) as u32;
        self.times.retain(|t| t.relative_offset <= last_relative);
        let offsets: Vec<u8> = self.offset_index().iter().flat_map(|e| e.encode()).collect();
        rewrite_file(&self.index_path, offsets)?;
        rewrite_file(&self.time_index_path, self.times.iter().flat_map(|e| e.encode()).collect())?;
        self.writers = None;
        Ok(())
    }

    /// Removes the segment's files; readers holding the `Arc<File>` keep reading the unlinked file.
    pub(crate) fn delete_files(&self) -> Result<()> {
        for path in [&self.log_path, &self.index_path, &self.time_index_path] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io(path, e)),
            }
        }
        Ok(())
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }
}

/// Writes `head` then `tail` with as few syscalls as the kernel allows.
fn write_all_vectored(mut file: &File, head: &[u8], tail: &[u8]) -> std::io::Result<()> {
    let mut slices = [std::io::IoSlice::new(head), std::io::IoSlice::new(tail)];
    let mut remaining: &mut [std::io::IoSlice<'_>] = &mut slices;
    while !remaining.is_empty() {
        match file.write_vectored(remaining) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => std::io::IoSlice::advance_slices(&mut remaining, written),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads and fully validates the batch at `position`; `None` at the end or at damage.
fn read_valid_batch(log: &File, position: u64, file_bytes: u64) -> Option<BatchHeader> {
    if position + BATCH_HEADER_BYTES as u64 > file_bytes {
        return None;
    }
    let mut head = [0u8; BATCH_HEADER_BYTES];
    log.read_exact_at(&mut head, position).ok()?;
    let header = BatchHeader::parse(&head).ok()?;
    if header.batch_length < (BATCH_HEADER_BYTES - 12) as i32 || position + header.total_bytes() as u64 > file_bytes {
        return None;
    }
    let mut whole = vec![0u8; header.total_bytes()];
    log.read_exact_at(&mut whole, position).ok()?;
    validate_batch(&whole).ok()
}

fn rewrite_file(path: &Path, bytes: Vec<u8>) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, &bytes).map_err(|e| StorageError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| StorageError::io(path, e))
}
