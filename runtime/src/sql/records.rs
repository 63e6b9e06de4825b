//! Records of a partition as SQL reads them: whole batches from the log (read_committed, up to
//! a snapshot offset), walked in place without a per-record allocation. The scan and the
//! continuous queries both read through here.
//!
//! The broker validated every batch's CRC on append and recovery truncates torn tails, so this
//! path does not check CRCs again; it does bound every length it reads.

use bytes::{Buf, Bytes};
use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};
use runnel_broker::protocol::batch::{peek_batch_bytes, BatchHeader, BATCH_HEADER_BYTES};
use runnel_broker::Broker;

use super::SqlError;
use crate::transform::log_io;

/// Bytes read from the log per step.
pub(crate) const READ_BYTES_MAX: usize = 4 * 1024 * 1024;
/// A decompressed batch beyond this is refused: it bounds what one batch can cost in memory.
const DECOMPRESSED_BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Attribute bit 3: timestamps are the broker's append time (the batch's max timestamp).
const ATTRIBUTE_LOG_APPEND_TIME: i16 = 0x08;

/// One record, borrowing from its (decompressed) batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordRef<'a> {
    pub(crate) offset: i64,
    pub(crate) timestamp_ms: i64,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    /// The raw header section: a varint count, then (key, value) pairs.
    headers: &'a [u8],
}

impl<'a> RecordRef<'a> {
    /// The record's headers as (name, value) pairs; a malformed section yields what parsed.
    pub(crate) fn headers(&self) -> Vec<(&'a [u8], Option<&'a [u8]>)> {
        let mut buf = self.headers;
        let mut out = Vec::new();
        let Some(count) = read_varint(&mut buf) else { return out };
        for _ in 0..count.max(0) {
            let Some(Some(name)) = read_nullable(&mut buf) else { break };
            let Some(value) = read_nullable(&mut buf) else { break };
            out.push((name, value));
        }
        out
    }
}

/// Calls `visit` with every data record of `partition` in `[from, to)`, in offset order, as a
/// read_committed consumer sees them (aborted transactions and markers skipped). `visit`
/// returns false to stop early. Returns the offset after the last record visited or skipped.
pub(crate) fn for_each_record(
    broker: &Broker,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    mut on_bytes: impl FnMut(usize),
    mut visit: impl FnMut(&RecordRef<'_>) -> bool,
) -> Result<i64, SqlError> {
    let mut next = from;
    while next < to {
        let slice = log_io::read_from(broker, topic, partition, next, READ_BYTES_MAX)
            .map_err(|e| SqlError::Storage(e.to_string()))?;
        let Some(slice) = slice else { break };
        on_bytes(slice.bytes.len());
        let start = next.max(slice.from);
        next = start;
        let mut bytes = slice.bytes.clone();
        while let Some(length) = peek_batch_bytes(&bytes) {
            if length > bytes.len() || length < BATCH_HEADER_BYTES {
                break;
            }
            let batch = bytes.split_to(length);
            let header = BatchHeader::parse(&batch).map_err(|e| SqlError::Corrupt(e.to_string()))?;
            if header.next_offset() <= next {
                continue;
            }
            if header.base_offset >= to.min(slice.upper) {
                return Ok(next);
            }
            let aborted = header.is_transactional()
                && slice.aborted.iter().any(|a| {
                    a.producer_id == header.producer_id
                        && a.first_offset <= header.base_offset
                        && header.base_offset <= a.last_offset
                });
            if !(header.is_control() || aborted) {
                let keep_going = walk_batch(&header, &batch, |record| {
                    if record.offset < next || record.offset >= to {
                        return true;
                    }
                    visit(record)
                })?;
                if !keep_going {
                    return Ok(next);
                }
            }
            // Compaction may leave gaps inside a batch: its end is the next position.
            next = header.next_offset();
        }
        if next == start {
            return Err(SqlError::Corrupt(format!("{topic}-{partition}: no progress reading at offset {next}")));
        }
    }
    Ok(next.min(to))
}

/// Walks the records of one whole batch; `visit` returns false to stop.
pub(crate) fn walk_batch(
    header: &BatchHeader,
    batch: &Bytes,
    mut visit: impl FnMut(&RecordRef<'_>) -> bool,
) -> Result<bool, SqlError> {
    let corrupt = |what: &str| SqlError::Corrupt(format!("batch at offset {}: {what}", header.base_offset));
    if batch.len() < BATCH_HEADER_BYTES {
        return Err(corrupt("shorter than a batch header"));
    }
    let records = decompress(header, batch.slice(BATCH_HEADER_BYTES..))?;
    let mut buf: &[u8] = &records;
    let log_append_time = header.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0;
    for _ in 0..header.record_count.max(0) {
        let length = read_varint(&mut buf).ok_or_else(|| corrupt("record length"))?;
        let length = usize::try_from(length).map_err(|_| corrupt("negative record length"))?;
        if length > buf.len() || length == 0 {
            return Err(corrupt("record runs past the batch"));
        }
        let (mut record, rest) = buf.split_at(length);
        buf = rest;
        record.advance(1); // attributes: unused in v2 records
        let timestamp_delta = read_varlong(&mut record).ok_or_else(|| corrupt("timestamp delta"))?;
        let offset_delta = read_varint(&mut record).ok_or_else(|| corrupt("offset delta"))?;
        let key = read_nullable(&mut record).ok_or_else(|| corrupt("key"))?;
        let value = read_nullable(&mut record).ok_or_else(|| corrupt("value"))?;
        let timestamp_ms =
            if log_append_time { header.max_timestamp } else { header.base_timestamp.wrapping_add(timestamp_delta) };
        let record = RecordRef {
            offset: header.base_offset + i64::from(offset_delta),
            timestamp_ms,
            key,
            value,
            headers: record,
        };
        if !visit(&record) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The records section of a batch, decompressed (uncompressed batches are not copied).
fn decompress(header: &BatchHeader, payload: Bytes) -> Result<Bytes, SqlError> {
    let codec = header.compression_codec();
    if codec == 0 {
        return Ok(payload);
    }
    let error = |reason: String| {
        SqlError::Corrupt(format!("batch at offset {} (compression codec {codec}): {reason}", header.base_offset))
    };
    let mut input = payload;
    let take_all = |buf: &mut Bytes| Ok(buf.copy_to_bytes(buf.remaining()));
    let out = match codec {
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

fn read_varlong(buf: &mut &[u8]) -> Option<i64> {
    let mut raw: u64 = 0;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        raw |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            // Zig-zag decoding.
            return Some((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    None
}

fn read_varint(buf: &mut &[u8]) -> Option<i32> {
    let value = read_varlong(buf)?;
    i32::try_from(value).ok()
}

/// A varint length then that many bytes; a negative length is null. `None` when malformed.
fn read_nullable<'a>(buf: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let length = read_varint(buf)?;
    if length < 0 {
        return Some(None);
    }
    let length = length as usize;
    if length > buf.len() {
        return None;
    }
    let (bytes, rest) = buf.split_at(length);
    *buf = rest;
    Some(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::records::{encode_batch, Outgoing};

    #[test]
    fn records_walk_with_keys_values_headers_and_timestamps() {
        let records = vec![
            Outgoing {
                timestamp_ms: 1_000,
                key: Some(Bytes::from_static(b"k1")),
                value: Some(Bytes::from_static(b"{\"a\":1}")),
                headers: vec![("h".into(), Some(Bytes::from_static(b"v"))), ("n".into(), None)],
            },
            Outgoing { timestamp_ms: 1_005, key: None, value: None, headers: vec![] },
        ];
        let batch = encode_batch(&records, None).expect("encode");
        let header = BatchHeader::parse(&batch).expect("header");
        let mut seen = Vec::new();
        walk_batch(&header, &batch, |r| {
            let headers: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                r.headers().into_iter().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect();
            seen.push((r.offset, r.timestamp_ms, r.key.map(<[u8]>::to_vec), r.value.map(<[u8]>::to_vec), headers));
            true
        })
        .expect("walk");
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].0, 0);
        assert_eq!(seen[0].1, 1_000);
        assert_eq!(seen[0].2.as_deref(), Some(&b"k1"[..]));
        assert_eq!(seen[0].3.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(seen[0].4, vec![(b"h".to_vec(), Some(b"v".to_vec())), (b"n".to_vec(), None)]);
        assert_eq!((seen[1].0, seen[1].1, seen[1].2.clone(), seen[1].3.clone()), (1, 1_005, None, None));
    }

    #[test]
    fn truncated_batches_are_errors_not_panics() {
        let records = vec![Outgoing {
            timestamp_ms: 1,
            key: Some(Bytes::from_static(b"key")),
            value: Some(Bytes::from_static(b"value")),
            headers: vec![],
        }];
        let batch = encode_batch(&records, None).expect("encode");
        let header = BatchHeader::parse(&batch).expect("header");
        for cut in BATCH_HEADER_BYTES..batch.len() {
            let result = walk_batch(&header, &batch.slice(..cut), |_| true);
            assert!(result.is_err(), "cut at {cut}");
        }
    }
}
