//! The ABI v1 batch layouts (ABI.md): decoding the host's input batch and encoding the output
//! batch, plus the mirror images (encode input, decode output) used by the native test harness.
//!
//! Decoding never trusts the input: every length is checked against the bytes that remain, and
//! counts never size an allocation before the bytes backing them have been seen, so a malformed
//! batch yields [`Malformed`] (ABI code -2) instead of a panic or a huge allocation.

use crate::record_ref::HeadersRef;
use crate::{Header, Output, Record, RecordRef};
use std::fmt;

/// The batch layout version this SDK reads and writes.
pub const BATCH_VERSION: u32 = 1;

/// The smallest encoding of one input record (offset, timestamp, two null byte strings, no
/// headers); bounds how many records a batch of a given size can hold.
const MIN_INPUT_RECORD: usize = 8 + 8 + 4 + 4 + 4;
/// The smallest encoding of one output record.
const MIN_OUTPUT_RECORD: usize = 4 + 8 + 4 + 4 + 4;
/// The smallest encoding of one header (two null/empty byte strings).
const MIN_HEADER: usize = 4 + 4;
/// With the `keep-input` extension (ABI.md, "Extensions"), an output record whose output index
/// has this bit set is followed by the index of an input record of the batch, forwarded as is.
pub const FORWARD_INPUT_FLAG: u32 = 1 << 31;
/// The encoding of one forwarded input: flagged output index, input index.
const FORWARD_INPUT_RECORD: usize = 4 + 4;

/// Why a batch could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// What was wrong.
    pub reason: String,
    /// Byte position in the batch where it was noticed.
    pub at: usize,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed batch at byte {}: {}", self.at, self.reason)
    }
}

/// A bounds-checked little-endian cursor over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn malformed(&self, reason: impl Into<String>) -> Malformed {
        Malformed { reason: reason.into(), at: self.pos }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Malformed> {
        if n > self.remaining() {
            return Err(self.malformed(format!("{what}: needs {n} bytes, {} left", self.remaining())));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Malformed> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &str) -> Result<i32, Malformed> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &str) -> Result<i64, Malformed> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    /// A byte string: `i32 len` then `len` bytes, `-1` = null; other negatives are malformed.
    fn bytes(&mut self, what: &str) -> Result<Option<Vec<u8>>, Malformed> {
        let len = self.i32(what)?;
        if len == -1 {
            return Ok(None);
        }
        if len < 0 {
            return Err(self.malformed(format!("{what}: negative length {len}")));
        }
        Ok(Some(self.take(len as usize, what)?.to_vec()))
    }

    /// [`Self::bytes`] without copying.
    fn bytes_ref(&mut self, what: &str) -> Result<Option<&'a [u8]>, Malformed> {
        let len = self.i32(what)?;
        if len == -1 {
            return Ok(None);
        }
        if len < 0 {
            return Err(self.malformed(format!("{what}: negative length {len}")));
        }
        Ok(Some(self.take(len as usize, what)?))
    }

    /// [`Self::headers`] without copying: checks them and returns them still encoded.
    fn headers_ref(&mut self) -> Result<HeadersRef<'a>, Malformed> {
        let count = self.count("header count", MIN_HEADER)?;
        let start = self.pos;
        for _ in 0..count {
            if self.bytes_ref("header name")?.is_none() {
                return Err(self.malformed("header name is null"));
            }
            self.bytes_ref("header value")?;
        }
        Ok(HeadersRef::encoded(&self.buf[start..self.pos], count as u32))
    }

    /// A count of items each at least `min_size` bytes long, checked against what remains.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize, Malformed> {
        let count = self.u32(what)? as usize;
        if count > self.remaining() / min_size {
            return Err(self.malformed(format!("{what} {count} cannot fit in {} bytes", self.remaining())));
        }
        Ok(count)
    }

    fn headers(&mut self) -> Result<Vec<Header>, Malformed> {
        let count = self.count("header count", MIN_HEADER)?;
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let name = match self.bytes("header name")? {
                Some(name) => name,
                None => return Err(self.malformed("header name is null")),
            };
            let value = self.bytes("header value")?;
            headers.push(Header { name, value });
        }
        Ok(headers)
    }

    fn finish(&self) -> Result<(), Malformed> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.malformed(format!("{n} trailing bytes after the last record"))),
        }
    }
}

/// Decodes an input batch (host → guest) into records carrying the batch's partition.
pub fn decode_input(buf: &[u8]) -> Result<Vec<Record>, Malformed> {
    Ok(decode_input_refs(buf)?.iter().map(RecordRef::to_record).collect())
}

/// Decodes an input batch into views of its records: nothing is copied, and the only
/// allocation is the list itself. Checks the whole batch before returning, as
/// [`decode_input`] does, with the same errors.
pub fn decode_input_refs(buf: &[u8]) -> Result<Vec<RecordRef<'_>>, Malformed> {
    match decode_refs_fast(buf) {
        Some(records) => Ok(records),
        // Only malformed batches get here: the checked decoder says what is wrong and where.
        None => decode_refs_checked(buf),
    }
}

/// The checked decoder: every field through [`Reader`], each failure with its reason.
fn decode_refs_checked(buf: &[u8]) -> Result<Vec<RecordRef<'_>>, Malformed> {
    let mut r = Reader::new(buf);
    let version = r.u32("batch version")?;
    if version != BATCH_VERSION {
        return Err(r.malformed(format!("batch version {version}, this SDK reads {BATCH_VERSION}")));
    }
    let partition = r.i32("partition")?;
    let count = r.count("record count", MIN_INPUT_RECORD)?;
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let offset = r.i64("offset")?;
        let timestamp_ms = r.i64("timestamp")?;
        let key = r.bytes_ref("key")?;
        let value = r.bytes_ref("value")?;
        let headers = r.headers_ref()?;
        records.push(RecordRef { key, value, headers, timestamp_ms, offset, partition });
    }
    r.finish()?;
    Ok(records)
}

/// The decoder every well-formed batch takes: the same checks as [`decode_refs_checked`] but
/// plain positions and `None` for "malformed" (no message built, nothing returned through
/// memory in WebAssembly), which makes it several times cheaper per record.
fn decode_refs_fast(buf: &[u8]) -> Option<Vec<RecordRef<'_>>> {
    if u32_at(buf, 0)? != BATCH_VERSION {
        return None;
    }
    let partition = u32_at(buf, 4)? as i32;
    let count = u32_at(buf, 8)? as usize;
    if count > (buf.len() - 12) / MIN_INPUT_RECORD {
        return None;
    }
    let mut records = Vec::with_capacity(count);
    let mut pos = 12;
    for _ in 0..count {
        let offset = u64_at(buf, pos)? as i64;
        let timestamp_ms = u64_at(buf, pos + 8)? as i64;
        let (key, at) = bytes_at(buf, pos + 16)?;
        let (value, at) = bytes_at(buf, at)?;
        let header_count = u32_at(buf, at)?;
        let headers_start = at + 4;
        pos = headers_start;
        for _ in 0..header_count {
            let (name, at) = bytes_at(buf, pos)?;
            name?;
            pos = bytes_at(buf, at)?.1;
        }
        let headers = HeadersRef::encoded(&buf[headers_start..pos], header_count);
        records.push(RecordRef { key, value, headers, timestamp_ms, offset, partition });
    }
    if pos != buf.len() {
        return None;
    }
    Some(records)
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let mut word = [0u8; 4];
    word.copy_from_slice(buf.get(at..at.checked_add(4)?)?);
    Some(u32::from_le_bytes(word))
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    let mut word = [0u8; 8];
    word.copy_from_slice(buf.get(at..at.checked_add(8)?)?);
    Some(u64::from_le_bytes(word))
}

/// A byte string at `at` (`i32` length, -1 = null; other negatives are malformed): the bytes
/// and the position after them.
fn bytes_at(buf: &[u8], at: usize) -> Option<(Option<&[u8]>, usize)> {
    let len = u32_at(buf, at)? as i32;
    let start = at + 4;
    if len == -1 {
        return Some((None, start));
    }
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    Some((Some(buf.get(start..end)?), end))
}

/// Why an output batch could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A key, value or header is longer than an `i32` length can say.
    TooLong,
    /// The buffer could not grow (ABI code -3).
    OutOfMemory,
    /// An output timestamp is negative but not -1 ("take the input's"), which the ABI forbids.
    BadTimestamp(i64),
}

/// Appends to a buffer, reporting allocation failure instead of aborting: in a 64 MiB guest a
/// large output must fail the batch with -3, not trap.
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.buf.try_reserve(bytes.len()).map_err(|_| EncodeError::OutOfMemory)?;
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn bytes(&mut self, value: Option<&[u8]>) -> Result<(), EncodeError> {
        match value {
            None => self.put(&(-1i32).to_le_bytes()),
            Some(bytes) => {
                let len = i32::try_from(bytes.len()).map_err(|_| EncodeError::TooLong)?;
                self.put(&len.to_le_bytes())?;
                self.put(bytes)
            }
        }
    }

    fn headers(&mut self, headers: &[Header]) -> Result<(), EncodeError> {
        let count = u32::try_from(headers.len()).map_err(|_| EncodeError::TooLong)?;
        self.put(&count.to_le_bytes())?;
        for header in headers {
            self.bytes(Some(&header.name))?;
            self.bytes(header.value.as_deref())?;
        }
        Ok(())
    }
}

/// Encodes an output batch (guest → host).
pub fn encode_output(outputs: &[Output]) -> Result<Vec<u8>, EncodeError> {
    let mut encoder = OutputEncoder::new(Vec::new())?;
    for out in outputs {
        encoder.push(out)?;
    }
    encoder.finish()
}

/// Encodes an output batch record by record into a buffer the caller keeps (its capacity is
/// reused from batch to batch), so outputs need not be collected first.
pub struct OutputEncoder {
    w: Writer,
    count: u32,
}

impl OutputEncoder {
    /// Starts a batch in `buf` (cleared; its capacity is kept).
    pub fn new(mut buf: Vec<u8>) -> Result<Self, EncodeError> {
        buf.clear();
        let mut w = Writer { buf };
        // The record count, patched by `finish`.
        w.put(&0u32.to_le_bytes())?;
        Ok(OutputEncoder { w, count: 0 })
    }

    /// Reserves room for `bytes` more bytes up front (an estimate; the buffer still grows).
    pub fn reserve(&mut self, bytes: usize) -> Result<(), EncodeError> {
        self.w.buf.try_reserve(bytes).map_err(|_| EncodeError::OutOfMemory)
    }

    /// Appends one record.
    pub fn push(&mut self, out: &Output) -> Result<(), EncodeError> {
        self.count = self.count.checked_add(1).ok_or(EncodeError::TooLong)?;
        self.w.put(&out.index.to_le_bytes())?;
        let timestamp = match out.timestamp_ms {
            None => -1,
            Some(ts) if ts < 0 => return Err(EncodeError::BadTimestamp(ts)),
            Some(ts) => ts,
        };
        self.w.put(&timestamp.to_le_bytes())?;
        self.w.bytes(out.key.as_deref())?;
        self.w.bytes(out.value.as_deref())?;
        self.w.headers(&out.headers)
    }

    /// Appends a forwarded input (the `keep-input` extension, which the host must have
    /// accepted): input record `input_index` of the batch, unchanged, to output `index`.
    pub fn push_input(&mut self, index: u32, input_index: u32) -> Result<(), EncodeError> {
        if index & FORWARD_INPUT_FLAG != 0 {
            return Err(EncodeError::TooLong);
        }
        self.count = self.count.checked_add(1).ok_or(EncodeError::TooLong)?;
        self.w.put(&(index | FORWARD_INPUT_FLAG).to_le_bytes())?;
        self.w.put(&input_index.to_le_bytes())
    }

    /// Appends `record` unchanged to output `index` in the plain layout (what a forwarded input
    /// becomes when the host did not accept `keep-input`): like `Output::from(record)`, a
    /// negative timestamp is written as -1.
    pub fn push_record(&mut self, index: u32, record: &RecordRef<'_>) -> Result<(), EncodeError> {
        self.count = self.count.checked_add(1).ok_or(EncodeError::TooLong)?;
        self.w.put(&index.to_le_bytes())?;
        self.w.put(&record.timestamp_ms.max(-1).to_le_bytes())?;
        self.w.bytes(record.key)?;
        self.w.bytes(record.value)?;
        let count = u32::try_from(record.headers.len()).map_err(|_| EncodeError::TooLong)?;
        self.w.put(&count.to_le_bytes())?;
        for header in record.headers.iter() {
            self.w.bytes(Some(header.name))?;
            self.w.bytes(header.value)?;
        }
        Ok(())
    }

    /// The encoded batch.
    pub fn finish(mut self) -> Result<Vec<u8>, EncodeError> {
        self.w.buf[..4].copy_from_slice(&self.count.to_le_bytes());
        Ok(self.w.buf)
    }
}

/// Encodes an input batch as the host would (used by the native harness and host tests).
pub fn encode_input(partition: i32, records: &[Record]) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer { buf: Vec::new() };
    w.put(&BATCH_VERSION.to_le_bytes())?;
    w.put(&partition.to_le_bytes())?;
    let count = u32::try_from(records.len()).map_err(|_| EncodeError::TooLong)?;
    w.put(&count.to_le_bytes())?;
    for rec in records {
        w.put(&rec.offset.to_le_bytes())?;
        w.put(&rec.timestamp_ms.to_le_bytes())?;
        w.bytes(rec.key.as_deref())?;
        w.bytes(rec.value.as_deref())?;
        w.headers(&rec.headers)?;
    }
    Ok(w.buf)
}

/// Decodes an output batch as the host would (used by the native harness). A timestamp of -1
/// decodes to `None` ("take the input's").
pub fn decode_output(buf: &[u8]) -> Result<Vec<Output>, Malformed> {
    let mut r = Reader::new(buf);
    let count = r.count("output count", MIN_OUTPUT_RECORD)?;
    let mut outputs = Vec::with_capacity(count);
    for _ in 0..count {
        let index = r.u32("output index")?;
        let timestamp = r.i64("timestamp")?;
        let key = r.bytes("key")?;
        let value = r.bytes("value")?;
        let headers = r.headers()?;
        let timestamp_ms = if timestamp == -1 { None } else { Some(timestamp) };
        outputs.push(Output { index, timestamp_ms, key, value, headers });
    }
    r.finish()?;
    Ok(outputs)
}

/// Decodes an output batch as the host does when it accepted `keep-input`: a forwarded input
/// becomes that record of `inputs` unchanged, to its output (its timestamp as
/// `Output::from(record)` gives it). Used by the native harness.
pub fn decode_output_for(buf: &[u8], inputs: &[Record]) -> Result<Vec<Output>, Malformed> {
    let mut r = Reader::new(buf);
    let count = r.count("output count", FORWARD_INPUT_RECORD)?;
    let mut outputs = Vec::with_capacity(count);
    for _ in 0..count {
        let index = r.u32("output index")?;
        if index & FORWARD_INPUT_FLAG != 0 {
            let input_index = r.u32("input index")? as usize;
            let input = inputs
                .get(input_index)
                .ok_or_else(|| r.malformed(format!("input index {input_index} out of range")))?;
            outputs.push(input.clone().to(index & !FORWARD_INPUT_FLAG));
            continue;
        }
        let timestamp = r.i64("timestamp")?;
        let key = r.bytes("key")?;
        let value = r.bytes("value")?;
        let headers = r.headers()?;
        let timestamp_ms = if timestamp == -1 { None } else { Some(timestamp) };
        outputs.push(Output { index, timestamp_ms, key, value, headers });
    }
    r.finish()?;
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record::new("v1").with_key("k1").with_timestamp(10).with_offset(5).with_header("h", "x"),
            Record { key: None, value: None, offset: 6, timestamp_ms: 11, ..Record::default() },
            Record {
                key: Some(Vec::new()),
                value: Some(Vec::new()),
                headers: vec![Header { name: b"n".to_vec(), value: None }],
                offset: 7,
                ..Record::default()
            },
        ]
    }

    #[test]
    fn input_round_trips_keeping_null_and_empty_distinct() {
        let buf = encode_input(3, &sample()).expect("encode");
        let decoded = decode_input(&buf).expect("decode");
        let mut expected = sample();
        for rec in &mut expected {
            rec.partition = 3;
        }
        assert_eq!(decoded, expected);
        assert_eq!(decoded[1].value, None);
        assert_eq!(decoded[2].value, Some(Vec::new()));
    }

    #[test]
    fn input_layout_matches_the_abi_byte_for_byte() {
        let rec = Record { key: None, value: Some(b"ab".to_vec()), offset: 1, timestamp_ms: 2, ..Record::default() };
        let buf = encode_input(-1, &[rec]).expect("encode");
        let mut expected = Vec::new();
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.extend_from_slice(&(-1i32).to_le_bytes());
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.extend_from_slice(&1i64.to_le_bytes());
        expected.extend_from_slice(&2i64.to_le_bytes());
        expected.extend_from_slice(&(-1i32).to_le_bytes());
        expected.extend_from_slice(&2i32.to_le_bytes());
        expected.extend_from_slice(b"ab");
        expected.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(buf, expected);
    }

    #[test]
    fn output_layout_encodes_index_and_missing_timestamp_as_minus_one() {
        let out = Output::new("z").to(2);
        let buf = encode_output(std::slice::from_ref(&out)).expect("encode");
        assert_eq!(&buf[0..4], &1u32.to_le_bytes());
        assert_eq!(&buf[4..8], &2u32.to_le_bytes());
        assert_eq!(&buf[8..16], &(-1i64).to_le_bytes());
        assert_eq!(decode_output(&buf).expect("decode"), vec![out]);
    }

    #[test]
    fn negative_output_timestamps_are_refused() {
        let err = encode_output(&[Output::new("v").with_timestamp(-5)]).expect_err("negative");
        assert_eq!(err, EncodeError::BadTimestamp(-5));
    }

    #[test]
    fn every_truncation_of_a_valid_batch_is_rejected_without_panicking() {
        let buf = encode_input(0, &sample()).expect("encode");
        for len in 0..buf.len() {
            assert!(decode_input(&buf[..len]).is_err(), "prefix of {len} bytes accepted");
        }
    }

    #[test]
    fn corrupted_batches_are_rejected_or_decoded_but_never_panic() {
        let buf = encode_input(0, &sample()).expect("encode");
        // Overwrite every 4-byte window with hostile values (huge counts, negative lengths).
        for pos in 0..buf.len().saturating_sub(4) {
            for hostile in [u32::MAX, 0x7fff_ffff, 0xffff_fffe, 1000] {
                let mut bad = buf.clone();
                bad[pos..pos + 4].copy_from_slice(&hostile.to_le_bytes());
                let _ = decode_input(&bad);
            }
        }
    }

    /// A tiny deterministic generator (no dependencies): xorshift64.
    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn random_bytes_and_random_mutations_never_panic_and_round_trip_when_valid() {
        let valid = encode_input(0, &sample()).expect("encode");
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut buf = valid.clone();
            for _ in 0..(next(&mut seed) % 4 + 1) {
                let at = (next(&mut seed) as usize) % buf.len();
                buf[at] = next(&mut seed) as u8;
            }
            if let Ok(records) = decode_input(&buf) {
                // Whatever decodes must re-encode to exactly the same bytes.
                assert_eq!(encode_input(records.first().map_or(0, |r| r.partition), &records).ok(), Some(buf));
            }
            let len = (next(&mut seed) % 64) as usize;
            let noise: Vec<u8> = (0..len).map(|_| next(&mut seed) as u8).collect();
            let _ = decode_input(&noise);
            let _ = decode_output(&noise);
        }
    }

    #[test]
    fn the_fast_and_checked_input_decoders_agree_on_every_mutation() {
        let valid = encode_input(2, &sample()).expect("encode");
        let mut seed = 0x0123_4567_89ab_cdef;
        for round in 0..20_000 {
            let mut buf = valid.clone();
            for _ in 0..(next(&mut seed) % 3 + 1) {
                let at = (next(&mut seed) as usize) % buf.len();
                buf[at] = if round % 2 == 0 { next(&mut seed) as u8 } else { [0, 1, 0xff, 0x7f][at % 4] };
            }
            match (decode_refs_fast(&buf), decode_refs_checked(&buf)) {
                (Some(fast), Ok(checked)) => assert_eq!(fast, checked),
                (None, Err(_)) => {}
                (fast, checked) => panic!("{buf:?}: fast {fast:?}, checked {checked:?}"),
            }
        }
        assert_eq!(decode_refs_fast(&valid).map(|r| r.len()), Some(3));
    }

    #[test]
    fn a_forwarded_input_is_its_flagged_index_then_its_position() {
        let mut encoder = OutputEncoder::new(Vec::new()).expect("encoder");
        encoder.push_input(2, 7).expect("forward");
        let buf = encoder.finish().expect("finish");
        let mut expected = 1u32.to_le_bytes().to_vec();
        expected.extend_from_slice(&(2u32 | FORWARD_INPUT_FLAG).to_le_bytes());
        expected.extend_from_slice(&7u32.to_le_bytes());
        assert_eq!(buf, expected);
        // An output index that already has the flag cannot be forwarded to.
        let mut encoder = OutputEncoder::new(Vec::new()).expect("encoder");
        assert_eq!(encoder.push_input(FORWARD_INPUT_FLAG, 0), Err(EncodeError::TooLong));
    }

    #[test]
    fn forwarded_and_copied_records_decode_alike() {
        let inputs = sample();
        let batch = encode_input(0, &inputs).expect("encode");
        let refs = decode_input_refs(&batch).expect("decode");
        let mut forwarded = OutputEncoder::new(Vec::new()).expect("encoder");
        let mut copied = OutputEncoder::new(Vec::new()).expect("encoder");
        for (position, record) in refs.iter().enumerate() {
            forwarded.push_input(1, position as u32).expect("forward");
            copied.push_record(1, record).expect("copy");
        }
        let forwarded = decode_output_for(&forwarded.finish().expect("finish"), &inputs).expect("decode");
        let copied = decode_output_for(&copied.finish().expect("finish"), &inputs).expect("decode");
        assert_eq!(forwarded, copied);
        let expected: Vec<Output> = inputs.into_iter().map(|r| r.to(1)).collect();
        assert_eq!(forwarded, expected);
        // A forward past the inputs is malformed.
        let mut encoder = OutputEncoder::new(Vec::new()).expect("encoder");
        encoder.push_input(0, 3).expect("forward");
        let err = decode_output_for(&encoder.finish().expect("finish"), &sample()).expect_err("past the inputs");
        assert!(err.reason.contains("input index 3"), "{err}");
    }

    #[test]
    fn huge_record_count_is_rejected_before_allocating() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&1u32.to_le_bytes());
        buf.extend_from_slice(&0i32.to_le_bytes());
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = decode_input(&buf).expect_err("count cannot fit");
        assert!(err.reason.contains("record count"), "{err}");
    }

    #[test]
    fn wrong_version_null_header_name_and_trailing_bytes_are_malformed() {
        let mut buf = encode_input(0, &[]).expect("encode");
        buf[0] = 2;
        assert!(decode_input(&buf).expect_err("version").reason.contains("version 2"));

        let mut buf = encode_input(0, &[]).expect("encode");
        buf.push(0);
        assert!(decode_input(&buf).expect_err("trailing").reason.contains("trailing"));

        let rec = Record::new("v").with_header("h", "x");
        let mut buf = encode_input(0, &[rec]).expect("encode");
        // The header name length sits after version, partition, count, offset, ts, key, value.
        let name_len_at = 4 + 4 + 4 + 8 + 8 + 4 + (4 + 1) + 4;
        buf[name_len_at..name_len_at + 4].copy_from_slice(&(-1i32).to_le_bytes());
        assert!(decode_input(&buf).expect_err("null name").reason.contains("header name is null"));
    }
}
