//! The segmented log: one directory per partition, holding RecordBatch v2 bytes exactly as
//! producers sent them, with a sparse offset index and a time index per segment.
//!
//! Layout and recovery are described in `docs/STORAGE.md`. The log never reads the wall clock
//! itself: time arrives through [`Clock`] so retention and rolling can be tested from a seed.

pub mod cleaner;
mod index;
mod keymap;
mod log;
mod producers;
pub(crate) mod record_codec;
mod segment;
mod transactions;
mod writeback;

pub use log::{AppendInfo, FetchSlice, PartitionLog, SyncPlan, WritebackRange};
pub use producers::SequenceCheck;
pub use transactions::{control_type, encode_marker, AbortedTxn, CONTROL_TYPE_ABORT, CONTROL_TYPE_COMMIT};

use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error on {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("offset {offset} is out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange { offset: i64, log_start_offset: i64, log_end_offset: i64 },
    #[error("corrupt batch in {path} at position {position}")]
    Corrupt { path: std::path::PathBuf, position: u64 },
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] crate::protocol::batch::BatchError),
    #[error("producer {producer_id}: expected sequence {expected}, got {found}")]
    OutOfOrderSequence { producer_id: i64, expected: i32, found: i32 },
    #[error("producer {producer_id}: epoch {epoch} is older than the current one")]
    InvalidProducerEpoch { producer_id: i64, epoch: i16 },
    #[error("producer {producer_id} is unknown to this partition and did not start at sequence 0")]
    UnknownProducerId { producer_id: i64 },
    #[error("batch of {bytes} bytes exceeds max.message.bytes {max_bytes}")]
    BatchTooLarge { bytes: usize, max_bytes: u64 },
}

impl StorageError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        StorageError::Io { path: path.to_path_buf(), source }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Milliseconds since the Unix epoch, supplied to the log so tests control time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> i64;
}

/// The real wall clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }
}

/// A clock that only moves when told to: for deterministic retention and roll tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        ManualClock(AtomicI64::new(now_ms))
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// File name of a segment file: the base offset, zero-padded to 20 digits, as Kafka does.
pub(crate) fn segment_file_name(base_offset: i64, extension: &str) -> String {
    format!("{base_offset:020}.{extension}")
}

#[cfg(test)]
mod cleaner_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod transaction_tests;
