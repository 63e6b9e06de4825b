//! [`RecordRef`]: an input record seen in place, borrowing its key, value and headers from the
//! host's input batch instead of copying them into a [`Record`]'s vectors.
//!
//! Decoding a batch into owned records costs one allocation and one copy per key, value and
//! header for every record; a transform that only looks at a record (a filter) and then keeps
//! it or not needs none of that. `RecordRef` has the same fields and read helpers as `Record`
//! and converts to one with [`RecordRef::to_record`] when ownership is needed.

use crate::{Error, Header, Record};

/// One input record, borrowed from the batch (or from a [`Record`]): the same fields as
/// `Record`, as slices. `None` key/value is null (a tombstone for the value), distinct from an
/// empty slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The record key, `None` when the producer sent a null key.
    pub key: Option<&'a [u8]>,
    /// The record value, `None` for a tombstone.
    pub value: Option<&'a [u8]>,
    /// Record headers in their original order (names may repeat).
    pub headers: HeadersRef<'a>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Offset of the record in its input partition.
    pub offset: i64,
    /// The input partition (one transform instance serves one partition).
    pub partition: i32,
}

impl<'a> RecordRef<'a> {
    /// A record is a tombstone when its value is null: compaction deletes its key.
    #[inline]
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The value as UTF-8 text; an error for tombstones and invalid UTF-8.
    #[inline]
    pub fn value_str(&self) -> Result<&'a str, Error> {
        match self.value {
            Some(bytes) => Ok(std::str::from_utf8(bytes)?),
            None => Err(Error::new("record has no value (tombstone)")),
        }
    }

    /// The key as UTF-8 text, `None` for a null or non-UTF-8 key.
    #[inline]
    pub fn key_str(&self) -> Option<&'a str> {
        self.key.and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The value of the last header with this name (as [`Record::header`]). `None` if absent
    /// or null.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        let mut last = None;
        for header in self.headers.iter() {
            if header.name == name.as_bytes() {
                last = Some(header.value);
            }
        }
        last.flatten()
    }

    /// The value parsed as JSON.
    pub fn json(&self) -> Result<crate::json::Value, Error> {
        match self.value {
            Some(bytes) => Ok(crate::json::parse(bytes)?),
            None => Err(Error::new("record has no value (tombstone)")),
        }
    }

    /// An owned copy of the record.
    pub fn to_record(&self) -> Record {
        let mut record = Record::default();
        self.copy_into(&mut record);
        record
    }

    /// Overwrites `record` with a copy of this one, reusing its buffers (after the first
    /// records, copying allocates nothing).
    pub fn copy_into(&self, record: &mut Record) {
        copy_optional(self.key, &mut record.key);
        copy_optional(self.value, &mut record.value);
        record.headers.truncate(self.headers.len());
        for (i, header) in self.headers.iter().enumerate() {
            match record.headers.get_mut(i) {
                Some(slot) => {
                    slot.name.clear();
                    slot.name.extend_from_slice(header.name);
                    copy_optional(header.value, &mut slot.value);
                }
                None => {
                    record.headers.push(Header { name: header.name.to_vec(), value: header.value.map(<[u8]>::to_vec) })
                }
            }
        }
        record.timestamp_ms = self.timestamp_ms;
        record.offset = self.offset;
        record.partition = self.partition;
    }
}

fn copy_optional(from: Option<&[u8]>, to: &mut Option<Vec<u8>>) {
    match (from, to.as_mut()) {
        (None, _) => *to = None,
        (Some(bytes), Some(buffer)) => {
            buffer.clear();
            buffer.extend_from_slice(bytes);
        }
        (Some(bytes), None) => *to = Some(bytes.to_vec()),
    }
}

impl<'a> From<&'a Record> for RecordRef<'a> {
    fn from(record: &'a Record) -> Self {
        RecordRef {
            key: record.key.as_deref(),
            value: record.value.as_deref(),
            headers: HeadersRef { inner: HeadersInner::Owned(&record.headers) },
            timestamp_ms: record.timestamp_ms,
            offset: record.offset,
            partition: record.partition,
        }
    }
}

/// One header, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRef<'a> {
    /// The header name (never null).
    pub name: &'a [u8],
    /// The header value, `None` when null.
    pub value: Option<&'a [u8]>,
}

/// The headers of a [`RecordRef`], in order: iterate with [`HeadersRef::iter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadersRef<'a> {
    inner: HeadersInner<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadersInner<'a> {
    /// `count` headers as the ABI encodes them (validated when the batch was decoded).
    Encoded {
        bytes: &'a [u8],
        count: u32,
    },
    Owned(&'a [Header]),
}

impl<'a> HeadersRef<'a> {
    /// Headers still in their ABI encoding, already validated by the batch decoder.
    pub(crate) fn encoded(bytes: &'a [u8], count: u32) -> Self {
        HeadersRef { inner: HeadersInner::Encoded { bytes, count } }
    }

    /// No headers.
    pub fn empty() -> Self {
        HeadersRef { inner: HeadersInner::Owned(&[]) }
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        match self.inner {
            HeadersInner::Encoded { count, .. } => count as usize,
            HeadersInner::Owned(headers) => headers.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The headers in order.
    pub fn iter(&self) -> HeadersIter<'a> {
        HeadersIter { inner: self.inner, next: 0, at: 0 }
    }
}

impl<'a> IntoIterator for HeadersRef<'a> {
    type Item = HeaderRef<'a>;
    type IntoIter = HeadersIter<'a>;

    fn into_iter(self) -> HeadersIter<'a> {
        self.iter()
    }
}

/// Iterator over [`HeadersRef`].
#[derive(Debug, Clone)]
pub struct HeadersIter<'a> {
    inner: HeadersInner<'a>,
    /// Index of the next header.
    next: usize,
    /// Byte position of the next encoded header.
    at: usize,
}

impl<'a> Iterator for HeadersIter<'a> {
    type Item = HeaderRef<'a>;

    fn next(&mut self) -> Option<HeaderRef<'a>> {
        match self.inner {
            HeadersInner::Owned(headers) => {
                let header = headers.get(self.next)?;
                self.next += 1;
                Some(HeaderRef { name: &header.name, value: header.value.as_deref() })
            }
            HeadersInner::Encoded { bytes, count } => {
                if self.next >= count as usize {
                    return None;
                }
                // The batch decoder checked these bytes: a name is never null and every length
                // lies inside `bytes`. Should that ever not hold, the iteration just ends.
                let (name, at) = encoded_bytes(bytes, self.at)?;
                let (value, at) = encoded_bytes(bytes, at)?;
                self.next += 1;
                self.at = at;
                Some(HeaderRef { name: name?, value })
            }
        }
    }
}

/// One ABI byte string at `at` (`i32` length, -1 = null): the bytes and the next position.
fn encoded_bytes(bytes: &[u8], at: usize) -> Option<(Option<&[u8]>, usize)> {
    let mut len = [0u8; 4];
    len.copy_from_slice(bytes.get(at..at + 4)?);
    let len = i32::from_le_bytes(len);
    if len == -1 {
        return Some((None, at + 4));
    }
    let end = (at + 4).checked_add(usize::try_from(len).ok()?)?;
    Some((Some(bytes.get(at + 4..end)?), end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_of_a_record_reads_like_the_record_and_copies_back_equal() {
        let record = Record::new("v")
            .with_key("k")
            .with_header("h", "first")
            .with_header("other", "x")
            .with_header("h", "last")
            .with_offset(7)
            .with_timestamp(9);
        let view = RecordRef::from(&record);
        assert_eq!(view.key_str(), Some("k"));
        assert_eq!(view.value_str(), Ok("v"));
        assert_eq!(view.header("h"), Some(&b"last"[..]));
        assert_eq!(view.header("missing"), None);
        assert_eq!(view.headers.len(), 3);
        assert_eq!(view.to_record(), record);
    }

    #[test]
    fn copy_into_reuses_a_record_of_any_shape() {
        let big = Record::new("a long value").with_key("key").with_header("a", "1").with_header("b", "2");
        let small = Record {
            key: None,
            value: None,
            headers: vec![Header { name: b"n".to_vec(), value: None }],
            ..Record::default()
        };
        let mut scratch = Record::default();
        for source in [&big, &small, &big, &Record::default(), &small] {
            RecordRef::from(source).copy_into(&mut scratch);
            assert_eq!(&scratch, source);
        }
    }

    #[test]
    fn tombstones_and_null_headers_stay_null() {
        let record = Record { key: Some(Vec::new()), value: None, ..Record::default() }.with_header("h", "");
        let view = RecordRef::from(&record);
        assert!(view.is_tombstone());
        assert!(view.value_str().is_err());
        assert_eq!(view.key, Some(&b""[..]));
        assert_eq!(view.header("h"), Some(&b""[..]));
    }
}
