//! The input side of a batch round trip over whatever records the embedder holds
//! ([`InputBatch`]): the encoded size, the encoding straight into guest memory, and what a
//! forward of one of the records (`keep-input`) counts against the output caps.
//!
//! Generic so that the transform runner encodes its own records without first building a list
//! of [`InputRecord`] views, and so the per-record work is a few stores, not calls.

use crate::wasm::abi::{InputRecord, ABI_VERSION};

/// The batch header: version, partition, record count.
const BATCH_HEADER_BYTES: usize = 4 + 4 + 4;
/// The fixed part of one input record: offset, timestamp, key and value lengths, header count.
const RECORD_FIXED_BYTES: usize = 8 + 8 + 4 + 4 + 4;
/// The fixed part of one plain output record: index, timestamp, key and value lengths, header
/// count.
const OUTPUT_RECORD_FIXED_BYTES: usize = 4 + 8 + 4 + 4 + 4;
/// Byte-string length meaning null.
const NULL_LEN: i32 = -1;

/// A batch of input records, as a host holds them.
pub(crate) trait InputBatch {
    /// Bytes the batch takes encoded (header included), saturating so that an absurd batch is
    /// refused by the size cap rather than overflowing.
    fn encoded_len(&self) -> usize;
    /// Encodes the batch into `out`, exactly [`InputBatch::encoded_len`] bytes.
    fn write(&self, partition: i32, out: &mut [u8]);
    /// For a forward of record `index`: its value's length and its size as a plain output
    /// record. `None` when there is no such record.
    fn forward_sizes(&self, index: usize) -> Option<ForwardSizes>;
}

/// What a forwarded input counts against the output caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ForwardSizes {
    pub(crate) value_bytes: usize,
    pub(crate) plain_output_bytes: usize,
}

impl ForwardSizes {
    /// Sizes of a record with this key, value and headers (`(name, value)` lengths).
    pub(crate) fn of(
        key: Option<usize>,
        value: Option<usize>,
        headers: impl Iterator<Item = (usize, Option<usize>)>,
    ) -> Self {
        let body = record_body_len(key, value, headers);
        ForwardSizes {
            value_bytes: value.unwrap_or(0),
            plain_output_bytes: body.saturating_add(OUTPUT_RECORD_FIXED_BYTES),
        }
    }
}

/// Key, value and header bytes of a record plus the per-header lengths, saturating.
fn record_body_len(
    key: Option<usize>,
    value: Option<usize>,
    headers: impl Iterator<Item = (usize, Option<usize>)>,
) -> usize {
    let mut size = key.unwrap_or(0).saturating_add(value.unwrap_or(0));
    for (name, value) in headers {
        size = size.saturating_add(8 + name).saturating_add(value.unwrap_or(0));
    }
    size
}

/// Bytes one input record takes encoded.
pub(crate) fn input_record_len(
    key: Option<usize>,
    value: Option<usize>,
    headers: impl Iterator<Item = (usize, Option<usize>)>,
) -> usize {
    record_body_len(key, value, headers).saturating_add(RECORD_FIXED_BYTES)
}

/// The encoded size of a batch whose records take `record_lens` bytes each.
pub(crate) fn batch_len(record_lens: impl Iterator<Item = usize>) -> usize {
    record_lens.fold(BATCH_HEADER_BYTES, usize::saturating_add)
}

/// Writes a batch into guest memory: the header, then each record through
/// [`BatchWriter::record`]. Fixed-size fields are plain stores; only key, value and header
/// bytes are copied.
pub(crate) struct BatchWriter<'o> {
    out: &'o mut [u8],
    position: usize,
}

impl<'o> BatchWriter<'o> {
    /// Starts a batch of `records` records in `out` (exactly the batch's encoded size).
    pub(crate) fn new(out: &'o mut [u8], partition: i32, records: usize) -> Self {
        let mut writer = BatchWriter { out, position: 0 };
        writer.fixed((ABI_VERSION as u32).to_le_bytes());
        writer.fixed(partition.to_le_bytes());
        writer.fixed(count(records).to_le_bytes());
        writer
    }

    /// Appends one record.
    #[inline]
    pub(crate) fn record<'h>(
        &mut self,
        offset: i64,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl ExactSizeIterator<Item = (&'h [u8], Option<&'h [u8]>)>,
    ) {
        self.fixed(offset.to_le_bytes());
        self.fixed(timestamp_ms.to_le_bytes());
        self.bytes(key);
        self.bytes(value);
        self.fixed(count(headers.len()).to_le_bytes());
        for (name, value) in headers {
            self.bytes(Some(name));
            self.bytes(value);
        }
    }

    /// Checks that the batch filled `out` exactly.
    pub(crate) fn finish(self) {
        assert_eq!(self.position, self.out.len(), "encoded input length disagrees with its size");
    }

    #[inline]
    fn fixed<const N: usize>(&mut self, bytes: [u8; N]) {
        // Panics (slice bounds) if the buffer is smaller than the batch's encoded size said.
        self.out[self.position..self.position + N].copy_from_slice(&bytes);
        self.position += N;
    }

    #[inline]
    fn bytes(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            None => self.fixed(NULL_LEN.to_le_bytes()),
            Some(bytes) => {
                // Lengths fit `i32`: the whole batch is at most `i32::MAX` bytes.
                let len = i32::try_from(bytes.len()).expect("length bounded by the batch size cap");
                self.fixed(len.to_le_bytes());
                self.out[self.position..self.position + bytes.len()].copy_from_slice(bytes);
                self.position += bytes.len();
            }
        }
    }
}

/// Counts fit `u32`: the whole batch is at most `i32::MAX` bytes.
fn count(count: usize) -> u32 {
    u32::try_from(count).expect("count bounded by the batch size cap")
}

fn optional_len(bytes: Option<&[u8]>) -> Option<usize> {
    bytes.map(<[u8]>::len)
}

fn header_lens<'a>(record: &'a InputRecord<'_>) -> impl Iterator<Item = (usize, Option<usize>)> + 'a {
    record.headers.iter().map(|h| (h.name.len(), optional_len(h.value)))
}

impl InputBatch for [InputRecord<'_>] {
    fn encoded_len(&self) -> usize {
        batch_len(self.iter().map(|r| input_record_len(optional_len(r.key), optional_len(r.value), header_lens(r))))
    }

    fn write(&self, partition: i32, out: &mut [u8]) {
        let mut writer = BatchWriter::new(out, partition, self.len());
        for r in self {
            writer.record(r.offset, r.timestamp_ms, r.key, r.value, r.headers.iter().map(|h| (h.name, h.value)));
        }
        writer.finish();
    }

    fn forward_sizes(&self, index: usize) -> Option<ForwardSizes> {
        let r = self.get(index)?;
        Some(ForwardSizes::of(optional_len(r.key), optional_len(r.value), header_lens(r)))
    }
}
