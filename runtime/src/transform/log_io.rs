//! Reading and appending partitions of the local broker directly: the runner's only path to
//! the log (no network hop, no protocol encoding).

use bytes::Bytes;
use kafka_protocol::records::{Record, RecordBatchDecoder};
use runnel_broker::storage::{AbortedTxn, StorageError};
use runnel_broker::Broker;

use super::TransformError;

/// Bytes read per step when scanning or feeding an instance.
pub(crate) const READ_BYTES_MAX: usize = 1024 * 1024;

/// Reads whole batches at `offset`, up to about `max_bytes`, as a read_committed consumer
/// would see them; `None` at the end of the log.
/// An offset below the log start (retention removed it) reads from the log start instead.
pub(crate) fn read_from(
    broker: &Broker,
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: usize,
) -> Result<Option<Slice>, TransformError> {
    let handle = broker
        .partition(topic, partition)
        .ok_or_else(|| TransformError::UnknownPartition { topic: topic.to_string(), partition })?;
    let mut log = handle.log();
    let mut offset = offset;
    if offset < log.log_start_offset() {
        tracing::warn!(
            topic,
            partition,
            offset,
            log_start = log.log_start_offset(),
            "position was removed by retention; continuing at the log start"
        );
        offset = log.log_start_offset();
    }
    // read_committed: an open transaction holds everything from its first offset back.
    let upper = log.last_stable_offset();
    if offset >= upper {
        return Ok(None);
    }
    let slice = match log.read(offset, max_bytes) {
        Ok(Some(slice)) => slice,
        Ok(None) => return Ok(None),
        Err(StorageError::OffsetOutOfRange { .. }) => return Ok(None),
        Err(e) => return Err(TransformError::Storage(e.to_string())),
    };
    let aborted = if log.has_aborted_transactions() { log.aborted_transactions(offset, upper) } else { Vec::new() };
    drop(log);
    let bytes = slice.read().map_err(|e| TransformError::Storage(e.to_string()))?;
    Ok(Some(Slice { from: offset, bytes, upper, aborted }))
}

/// Batches read from a partition: from `from`, committed data below `upper` (the last stable
/// offset), and the aborted transactions in that range (their batches are skipped).
pub(crate) struct Slice {
    pub(crate) from: i64,
    pub(crate) bytes: Bytes,
    pub(crate) upper: i64,
    pub(crate) aborted: Vec<AbortedTxn>,
}

/// Calls `apply` with every record of a partition from its start to its end, in order.
pub(crate) fn scan(
    broker: &Broker,
    topic: &str,
    partition: i32,
    mut apply: impl FnMut(&Record) -> Result<(), TransformError>,
) -> Result<(), TransformError> {
    let mut offset = 0;
    while let Some(Slice { from, mut bytes, .. }) = read_from(broker, topic, partition, offset, READ_BYTES_MAX)? {
        offset = from;
        let start = offset;
        while !bytes.is_empty() {
            let Some(length) = runnel_broker::protocol::batch::peek_batch_bytes(&bytes) else { break };
            if length > bytes.len() {
                break;
            }
            let mut batch = bytes.split_to(length);
            let set = RecordBatchDecoder::decode(&mut batch).map_err(|e| TransformError::Corrupt(e.to_string()))?;
            for record in &set.records {
                if record.offset >= offset {
                    if !record.control {
                        apply(record)?;
                    }
                    offset = record.offset + 1;
                }
            }
        }
        if offset == start {
            return Err(TransformError::Corrupt(format!("{topic}-{partition}: no progress reading at {offset}")));
        }
    }
    Ok(())
}

/// Appends one encoded batch; a batch the partition already holds (same producer sequence)
/// is acknowledged without writing it again.
pub(crate) fn append(broker: &Broker, topic: &str, partition: i32, batch: &Bytes) -> Result<i64, TransformError> {
    let handle = broker
        .partition(topic, partition)
        .ok_or_else(|| TransformError::UnknownPartition { topic: topic.to_string(), partition })?;
    let info = handle
        .log()
        .append(batch)
        .map_err(|e| TransformError::Storage(format!("append to {topic}-{partition}: {e}")))?;
    Ok(info.last_offset)
}
