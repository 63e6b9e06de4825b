//! RecordBatch v2 headers, read and stamped in place.
//!
//! The broker never decodes records on the hot path: it walks the fixed 61-byte batch header,
//! verifies the CRC32C and lengths, and rewrites only the base offset and the partition leader
//! epoch, which sit *before* the CRC'd region so the producer's CRC stays valid.

use bytes::{Buf, BufMut, BytesMut};

/// Bytes in a RecordBatch v2 header, up to and including the record count.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Offset of the `batchLength` field; the length counts the bytes after it.
pub const LENGTH_FIELD_END: usize = 12;
const PARTITION_LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
/// The CRC covers everything from the attributes to the end of the batch.
const CRC_COVERS_FROM: usize = 21;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORD_COUNT_AT: usize = 57;

const ATTRIBUTE_COMPRESSION_MASK: i16 = 0x07;
const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;
const ATTRIBUTE_CONTROL: i16 = 0x20;

/// Why a batch was refused; each maps to one Kafka error code at the protocol edge.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch truncated: {available} bytes available, {needed} needed")]
    Truncated { available: usize, needed: usize },
    #[error("unsupported record batch magic {magic}; only v2 is accepted")]
    UnsupportedMagic { magic: i8 },
    #[error("batch CRC mismatch: header says {expected:#010x}, computed {computed:#010x}")]
    CrcMismatch { expected: u32, computed: u32 },
    #[error("invalid batch: {reason}")]
    Invalid { reason: &'static str },
}

/// The header fields of one RecordBatch v2, as read from its first 61 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Bytes after the length field; the whole batch is `batch_length + 12` bytes.
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Reads a header from the start of `bytes` without checking the CRC.
    pub fn parse(bytes: &[u8]) -> Result<Self, BatchError> {
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::Truncated { available: bytes.len(), needed: BATCH_HEADER_BYTES });
        }
        let mut b = &bytes[..BATCH_HEADER_BYTES];
        Ok(BatchHeader {
            base_offset: b.get_i64(),
            batch_length: b.get_i32(),
            partition_leader_epoch: b.get_i32(),
            magic: b.get_i8(),
            crc: b.get_u32(),
            attributes: b.get_i16(),
            last_offset_delta: b.get_i32(),
            base_timestamp: b.get_i64(),
            max_timestamp: b.get_i64(),
            producer_id: b.get_i64(),
            producer_epoch: b.get_i16(),
            base_sequence: b.get_i32(),
            record_count: b.get_i32(),
        })
    }

    /// Total bytes of the batch on the wire and on disk.
    pub fn total_bytes(&self) -> usize {
        self.batch_length.max(0) as usize + LENGTH_FIELD_END
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    pub fn compression_codec(&self) -> i16 {
        self.attributes & ATTRIBUTE_COMPRESSION_MASK
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTRIBUTE_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTRIBUTE_CONTROL != 0
    }
}

/// Length of the batch that starts at `bytes`, from its first 12 bytes; `None` when fewer
/// than 12 bytes are there or the length is negative.
pub fn peek_batch_bytes(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < LENGTH_FIELD_END {
        return None;
    }
    let length = (&bytes[8..12]).get_i32();
    usize::try_from(length).ok().map(|len| len + LENGTH_FIELD_END)
}

/// Checks one whole batch: header bounds, magic, CRC32C and offset/count consistency.
/// `bytes` must hold exactly one batch.
pub fn validate_batch(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    if header.magic != 2 {
        return Err(BatchError::UnsupportedMagic { magic: header.magic });
    }
    if header.batch_length < (BATCH_HEADER_BYTES - LENGTH_FIELD_END) as i32 {
        return Err(BatchError::Invalid { reason: "batch length shorter than its header" });
    }
    if header.total_bytes() != bytes.len() {
        return Err(BatchError::Truncated { available: bytes.len(), needed: header.total_bytes() });
    }
    let computed = crc32c::crc32c(&bytes[CRC_COVERS_FROM..]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch { expected: header.crc, computed });
    }
    if header.last_offset_delta < 0 || header.record_count < 0 {
        return Err(BatchError::Invalid { reason: "negative record count or offset delta" });
    }
    Ok(header)
}

/// Splits a produce payload (one or more concatenated batches) into validated batches.
/// Returns the header and byte range of each.
pub fn split_batches(bytes: &[u8]) -> Result<Vec<(BatchHeader, std::ops::Range<usize>)>, BatchError> {
    let mut batches = Vec::new();
    let mut position = 0;
    while position < bytes.len() {
        let rest = &bytes[position..];
        let Some(total) = peek_batch_bytes(rest) else {
            return Err(BatchError::Truncated { available: rest.len(), needed: LENGTH_FIELD_END });
        };
        if total > rest.len() {
            return Err(BatchError::Truncated { available: rest.len(), needed: total });
        }
        let header = validate_batch(&rest[..total])?;
        batches.push((header, position..position + total));
        position += total;
    }
    Ok(batches)
}

/// The leading bytes the broker rewrites: base offset, batch length (unchanged), leader epoch.
pub const STAMPED_HEAD_BYTES: usize = 16;

/// Writes the broker-assigned base offset and leader epoch into a batch (or just its first
/// [`STAMPED_HEAD_BYTES`]) in place. Both fields sit before the CRC'd region, so the
/// producer's CRC still holds.
pub fn stamp_batch(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    assert!(batch.len() >= STAMPED_HEAD_BYTES, "stamping a batch shorter than its header");
    (&mut batch[0..8]).put_i64(base_offset);
    (&mut batch[PARTITION_LEADER_EPOCH_AT..PARTITION_LEADER_EPOCH_AT + 4]).put_i32(leader_epoch);
}

/// Builds a batch header in front of already-encoded record bytes; used by tests and by the
/// broker for control batches. Records must be encoded as RecordBatch v2 records.
#[allow(clippy::too_many_arguments)]
pub fn build_batch(
    attributes: i16,
    last_offset_delta: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    record_count: i32,
    records: &[u8],
) -> BytesMut {
    let mut batch = BytesMut::with_capacity(BATCH_HEADER_BYTES + records.len());
    batch.put_i64(0);
    batch.put_i32((BATCH_HEADER_BYTES - LENGTH_FIELD_END + records.len()) as i32);
    batch.put_i32(0);
    batch.put_i8(2);
    batch.put_u32(0);
    batch.put_i16(attributes);
    batch.put_i32(last_offset_delta);
    batch.put_i64(base_timestamp);
    batch.put_i64(max_timestamp);
    batch.put_i64(producer_id);
    batch.put_i16(producer_epoch);
    batch.put_i32(base_sequence);
    batch.put_i32(record_count);
    batch.put_slice(records);
    let crc = crc32c::crc32c(&batch[CRC_COVERS_FROM..]);
    (&mut batch[CRC_AT..CRC_AT + 4]).put_u32(crc);
    debug_assert_eq!(batch[MAGIC_AT], 2);
    let _ = (ATTRIBUTES_AT, LAST_OFFSET_DELTA_AT, BASE_TIMESTAMP_AT, MAX_TIMESTAMP_AT);
    let _ = (PRODUCER_ID_AT, PRODUCER_EPOCH_AT, BASE_SEQUENCE_AT, RECORD_COUNT_AT);
    batch
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid batch of `count` records with opaque record bytes (the broker never parses them).
    pub(crate) fn sample_batch(count: i32, timestamp: i64, payload: &[u8]) -> BytesMut {
        build_batch(0, count - 1, timestamp, timestamp, -1, -1, -1, count, payload)
    }

    #[test]
    fn valid_batch_round_trips_its_header() {
        let batch = sample_batch(3, 1_000, b"records");
        let header = validate_batch(&batch).expect("valid");
        assert_eq!(header.record_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.total_bytes(), batch.len());
    }

    #[test]
    fn stamping_keeps_the_crc_valid() {
        let mut batch = sample_batch(2, 5, b"xyz");
        stamp_batch(&mut batch, 42, 7);
        let header = validate_batch(&batch).expect("still valid after stamping");
        assert_eq!(header.base_offset, 42);
        assert_eq!(header.partition_leader_epoch, 7);
        assert_eq!(header.next_offset(), 44);
    }

    #[test]
    fn flipped_bit_is_a_crc_mismatch() {
        let mut batch = sample_batch(1, 5, b"payload");
        let last = batch.len() - 1;
        batch[last] ^= 0x01;
        assert!(matches!(validate_batch(&batch), Err(BatchError::CrcMismatch { .. })));
    }

    #[test]
    fn old_magic_is_refused() {
        let mut batch = sample_batch(1, 5, b"p");
        batch[MAGIC_AT] = 1;
        assert_eq!(validate_batch(&batch), Err(BatchError::UnsupportedMagic { magic: 1 }));
    }

    #[test]
    fn split_finds_each_batch_and_rejects_a_torn_tail() {
        let mut two = sample_batch(1, 1, b"a");
        two.extend_from_slice(&sample_batch(2, 2, b"bb"));
        let batches = split_batches(&two).expect("two whole batches");
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[1].0.record_count, 2);
        let torn = &two[..two.len() - 3];
        assert!(matches!(split_batches(torn), Err(BatchError::Truncated { .. })));
    }

    #[test]
    fn header_parse_never_panics_on_short_or_garbage_input() {
        for len in 0..80 {
            let garbage: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = validate_batch(&garbage);
            let _ = split_batches(&garbage);
        }
    }
}
