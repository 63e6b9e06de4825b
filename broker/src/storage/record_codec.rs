//! A record-level view of RecordBatch v2, for the log cleaner only: the produce and fetch
//! paths never decode records (see `protocol/batch.rs`).
//!
//! The cleaner keeps a batch's base offset, so a retained record's offset delta stays valid and
//! its bytes after the timestamp delta (key, value, headers) are copied as they are. Only the
//! timestamp delta is re-encoded, when the cleaner moves the base timestamp to a tombstone
//! delete horizon (KIP-534). Compression goes through the `kafka-protocol` codecs, which cover
//! every codec a client may send (gzip, snappy, lz4, zstd).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Decompressor, Gzip, Lz4, Snappy, Zstd};

use crate::protocol::batch::{build_batch, stamp_batch, validate_batch, BatchHeader, BATCH_HEADER_BYTES};

/// Attribute bit 6: the base timestamp holds the delete horizon of the batch's tombstones.
pub(crate) const ATTRIBUTE_DELETE_HORIZON: i16 = 0x40;
/// Attribute bit 3: timestamps are the broker's log-append time, not the records' own.
const ATTRIBUTE_LOG_APPEND_TIME: i16 = 0x08;
/// A decompressed batch larger than this is not cleaned (kept as it is): it bounds the memory
/// one batch can take in the cleaner. Produce bounds the compressed size by
/// `max.message.bytes`; a compression ratio beyond 64x on top of that is not a normal batch.
pub(crate) const DECOMPRESSED_BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CodecError {
    #[error("batch does not validate: {0}")]
    Batch(#[from] crate::protocol::batch::BatchError),
    #[error("records of the batch at offset {base_offset} are malformed: {reason}")]
    Malformed { base_offset: i64, reason: &'static str },
    #[error("compression codec {codec} of the batch at offset {base_offset}: {reason}")]
    Compression { base_offset: i64, codec: i16, reason: String },
}

/// One record of a batch: what the cleaner decides on, and the bytes it copies back.
#[derive(Debug, Clone)]
pub(crate) struct RecordView {
    pub(crate) attributes: i8,
    pub(crate) timestamp_delta: i64,
    pub(crate) offset_delta: i32,
    /// `None`: a record without a key (never deduplicated).
    pub(crate) key: Option<Bytes>,
    /// A null value: a tombstone.
    pub(crate) is_tombstone: bool,
    /// The record's bytes from the key length on (key, value, headers), copied unchanged.
    pub(crate) tail: Bytes,
}

/// Decodes the records of one whole, CRC-checked batch.
pub(crate) fn decode_records(batch: &[u8]) -> Result<(BatchHeader, Vec<RecordView>), CodecError> {
    let header = validate_batch(batch)?;
    let base_offset = header.base_offset;
    let malformed = |reason| CodecError::Malformed { base_offset, reason };
    let mut records_bytes = decompress(&header, &batch[BATCH_HEADER_BYTES..])?;
    // Each record takes at least 7 bytes, so the count cannot ask for more than the bytes hold.
    let count = usize::try_from(header.record_count).map_err(|_| malformed("negative record count"))?;
    if count > records_bytes.len() / 7 + 1 {
        return Err(malformed("record count larger than the records"));
    }
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let length = read_varint(&mut records_bytes).ok_or_else(|| malformed("record length"))?;
        let length = usize::try_from(length).map_err(|_| malformed("negative record length"))?;
        if length > records_bytes.len() || length == 0 {
            return Err(malformed("record runs past the batch"));
        }
        let mut record = records_bytes.split_to(length);
        let attributes = record.get_i8();
        let timestamp_delta = read_varlong(&mut record).ok_or_else(|| malformed("timestamp delta"))?;
        let offset_delta = read_varint(&mut record).ok_or_else(|| malformed("offset delta"))?;
        let tail = record.clone();
        let key = read_nullable_bytes(&mut record).ok_or_else(|| malformed("key"))?;
        let value_length = read_varint(&mut record).ok_or_else(|| malformed("value length"))?;
        if value_length >= 0 && value_length as usize > record.len() {
            return Err(malformed("value runs past the record"));
        }
        records.push(RecordView {
            attributes,
            timestamp_delta,
            offset_delta,
            key,
            is_tombstone: value_length < 0,
            tail,
        });
    }
    if !records_bytes.is_empty() {
        return Err(malformed("bytes after the last record"));
    }
    Ok((header, records))
}

/// Re-encodes a batch with only `kept` of its records. The header keeps everything the
/// original had (base offset, last offset delta, producer id/epoch/base sequence, leader
/// epoch, compression codec, max timestamp); `delete_horizon_ms` moves the base timestamp to
/// the tombstones' delete horizon and sets attribute bit 6.
pub(crate) fn encode_retained(
    original: &BatchHeader,
    kept: &[&RecordView],
    delete_horizon_ms: Option<i64>,
) -> Result<BytesMut, CodecError> {
    let base_timestamp = delete_horizon_ms.unwrap_or(original.base_timestamp);
    let mut raw = BytesMut::new();
    let mut previous_delta = -1i64;
    for record in kept {
        assert!(i64::from(record.offset_delta) > previous_delta, "retained records keep their order");
        previous_delta = i64::from(record.offset_delta);
        let timestamp = original.base_timestamp.wrapping_add(record.timestamp_delta);
        let timestamp_delta = timestamp.wrapping_sub(base_timestamp);
        let mut head = BytesMut::with_capacity(16);
        head.put_i8(record.attributes);
        put_varlong(&mut head, timestamp_delta);
        put_varint(&mut head, record.offset_delta);
        put_varint(&mut raw, (head.len() + record.tail.len()) as i32);
        raw.put_slice(&head);
        raw.put_slice(&record.tail);
    }
    let records = compress(original, raw)?;
    let mut attributes = original.attributes;
    if delete_horizon_ms.is_some() {
        attributes |= ATTRIBUTE_DELETE_HORIZON;
    }
    let mut batch = build_batch(
        attributes,
        original.last_offset_delta,
        base_timestamp,
        original.max_timestamp,
        original.producer_id,
        original.producer_epoch,
        original.base_sequence,
        kept.len() as i32,
        &records,
    );
    stamp_batch(&mut batch, original.base_offset, original.partition_leader_epoch);
    // Verified after the rewrite as before it: what reaches the cleaned segment is a valid batch.
    let written = validate_batch(&batch)?;
    assert_eq!(written.base_offset, original.base_offset, "a cleaned batch keeps its base offset");
    assert_eq!(written.last_offset(), original.last_offset(), "a cleaned batch keeps its last offset");
    Ok(batch)
}

/// The delete horizon of a batch the cleaner already stamped, if any.
pub(crate) fn delete_horizon(header: &BatchHeader) -> Option<i64> {
    // With log-append time the base timestamp is the broker's, never a horizon.
    let stamped = header.attributes & ATTRIBUTE_DELETE_HORIZON != 0;
    (stamped && header.attributes & ATTRIBUTE_LOG_APPEND_TIME == 0).then_some(header.base_timestamp)
}

fn decompress(header: &BatchHeader, payload: &[u8]) -> Result<Bytes, CodecError> {
    let codec = header.compression_codec();
    let error = |reason: String| CodecError::Compression { base_offset: header.base_offset, codec, reason };
    let mut input = Bytes::copy_from_slice(payload);
    let take_all = |buf: &mut Bytes| Ok(buf.copy_to_bytes(buf.remaining()));
    let out = match codec {
        0 => Ok(input),
        1 => <Gzip as Decompressor<Bytes>>::decompress(&mut input, take_all),
        2 => <Snappy as Decompressor<Bytes>>::decompress(&mut input, take_all),
        3 => <Lz4 as Decompressor<Bytes>>::decompress(&mut input, take_all),
        4 => <Zstd as Decompressor<Bytes>>::decompress(&mut input, take_all),
        other => return Err(error(format!("unknown codec {other}"))),
    }
    .map_err(|e| error(e.to_string()))?;
    if out.len() > DECOMPRESSED_BATCH_BYTES_MAX {
        return Err(error(format!("decompresses to {} bytes", out.len())));
    }
    Ok(out)
}

fn compress(header: &BatchHeader, raw: BytesMut) -> Result<Bytes, CodecError> {
    let codec = header.compression_codec();
    let error = |reason: String| CodecError::Compression { base_offset: header.base_offset, codec, reason };
    let mut out = BytesMut::with_capacity(raw.len() / 2 + 64);
    let put = |buf: &mut BytesMut| {
        buf.put_slice(&raw);
        Ok(())
    };
    match codec {
        0 => return Ok(raw.freeze()),
        1 => <Gzip as Compressor<BytesMut>>::compress(&mut out, put),
        2 => <Snappy as Compressor<BytesMut>>::compress(&mut out, put),
        3 => <Lz4 as Compressor<BytesMut>>::compress(&mut out, put),
        4 => <Zstd as Compressor<BytesMut>>::compress(&mut out, put),
        other => return Err(error(format!("unknown codec {other}"))),
    }
    .map_err(|e| error(e.to_string()))?;
    Ok(out.freeze())
}

fn read_varlong(buf: &mut Bytes) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let byte = buf.get_u8();
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

fn read_varint(buf: &mut Bytes) -> Option<i32> {
    read_varlong(buf).and_then(|v| i32::try_from(v).ok())
}

fn read_nullable_bytes(buf: &mut Bytes) -> Option<Option<Bytes>> {
    let length = read_varint(buf)?;
    if length < 0 {
        return Some(None);
    }
    let length = length as usize;
    (length <= buf.len()).then(|| Some(buf.split_to(length)))
}

fn put_varlong(buf: &mut BytesMut, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        buf.put_u8((zigzag as u8 & 0x7f) | 0x80);
        zigzag >>= 7;
    }
    buf.put_u8(zigzag as u8);
}

fn put_varint(buf: &mut BytesMut, value: i32) {
    put_varlong(buf, i64::from(value));
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    /// A record as a test writes it: key and value, either may be null.
    pub(crate) type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

    /// Encodes `(key, value)` records with `kafka-protocol`, as a client would send them.
    pub(crate) fn client_batch(records: &[KeyValue<'_>], timestamp: i64, compression: Compression) -> BytesMut {
        let records: Vec<Record> = records
            .iter()
            .enumerate()
            .map(|(i, (key, value))| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // The encoder starts a new batch when offset minus sequence changes.
                sequence: i as i32 - 1,
                timestamp: timestamp + i as i64,
                key: key.map(Bytes::copy_from_slice),
                value: value.map(Bytes::copy_from_slice),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression };
        RecordBatchEncoder::encode(&mut buf, &records, &options).expect("encodes");
        buf
    }

    #[test]
    fn every_codec_round_trips_a_filtered_batch_with_its_offsets() {
        for compression in
            [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd]
        {
            let mut batch = client_batch(
                &[(Some(b"a"), Some(b"1")), (Some(b"b"), None), (Some(b"a"), Some(b"2")), (None, Some(b"x"))],
                1_000,
                compression,
            );
            stamp_batch(&mut batch, 500, 3);
            let (header, records) = decode_records(&batch).expect("decodes");
            assert_eq!(records.len(), 4);
            assert!(records[1].is_tombstone && !records[0].is_tombstone);
            assert_eq!(records[3].key, None);
            let kept = [&records[1], &records[2]];
            let out = encode_retained(&header, &kept, Some(9_999)).expect("encodes");
            let decoded = kafka_protocol::records::RecordBatchDecoder::decode(&mut out.clone().freeze())
                .expect("a client decodes the cleaned batch");
            let offsets: Vec<i64> = decoded.records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, vec![501, 502], "{compression:?}");
            assert_eq!(decoded.records[0].timestamp, 1_001, "record timestamps survive a new base");
            assert_eq!(decoded.records[0].value, None, "a tombstone stays null");
            assert_eq!(decoded.records[1].value.as_deref(), Some(&b"2"[..]));
            let (again, _) = decode_records(&out).expect("re-decodes");
            assert_eq!(again.last_offset(), 503, "the last offset delta is kept");
            assert_eq!(again.compression_codec(), header.compression_codec());
            assert_eq!(delete_horizon(&again), Some(9_999));
        }
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let batch = client_batch(&[(Some(b"key"), Some(b"value"))], 0, Compression::None);
        for cut in BATCH_HEADER_BYTES..batch.len() {
            // Rebuild a valid CRC over truncated records: only the record parser sees the damage.
            let header = validate_batch(&batch).expect("valid");
            let broken = build_batch(
                header.attributes,
                header.last_offset_delta,
                header.base_timestamp,
                header.max_timestamp,
                -1,
                -1,
                -1,
                1,
                &batch[BATCH_HEADER_BYTES..cut],
            );
            assert!(decode_records(&broken).is_err(), "cut at {cut}");
        }
    }
}
