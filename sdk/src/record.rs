//! The input record a transform receives, decoded from the host's batch.

use crate::Error;

/// One record header. Kafka header names are byte strings in the wire format, so they are kept
/// as bytes; a header value may be null.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The header name (never null).
    pub name: Vec<u8>,
    /// The header value, `None` when null.
    pub value: Option<Vec<u8>>,
}

impl Header {
    /// A header with a non-null value.
    pub fn new(name: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Header { name: name.into(), value: Some(value.into()) }
    }
}

/// One Kafka record as a transform sees it: key and value are optional, as in Kafka,
/// where a missing value is a tombstone and must stay distinct from an empty one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The record key, `None` when the producer sent a null key.
    pub key: Option<Vec<u8>>,
    /// The record value, `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Record headers in their original order (names may repeat).
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Offset of the record in its input partition.
    pub offset: i64,
    /// The input partition (one transform instance serves one partition).
    pub partition: i32,
}

impl Record {
    /// A record with this value and nothing else set, for tests and synthesized records.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Record { value: Some(value.into()), ..Record::default() }
    }

    /// The same record with this key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The same record with this timestamp.
    pub fn with_timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    /// The same record with this offset.
    pub fn with_offset(mut self, offset: i64) -> Self {
        self.offset = offset;
        self
    }

    /// The same record with one more header.
    pub fn with_header(mut self, name: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }

    /// A record is a tombstone when its value is null: compaction deletes its key.
    #[inline]
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The value as UTF-8 text; an error for tombstones and invalid UTF-8.
    pub fn value_str(&self) -> Result<&str, Error> {
        match &self.value {
            Some(bytes) => Ok(std::str::from_utf8(bytes)?),
            None => Err(Error::new("record has no value (tombstone)")),
        }
    }

    /// The key as UTF-8 text, `None` for a null or non-UTF-8 key.
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref().and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The value of the last header with this name (Kafka allows repeats; the last one wins,
    /// as with most client libraries' `lastHeader`). `None` if absent or null.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().rev().find(|h| h.name == name.as_bytes()).and_then(|h| h.value.as_deref())
    }

    /// The value parsed as JSON.
    pub fn json(&self) -> Result<crate::json::Value, Error> {
        match &self.value {
            Some(bytes) => Ok(crate::json::parse(bytes)?),
            None => Err(Error::new("record has no value (tombstone)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_value_is_a_tombstone_but_empty_value_is_not() {
        let tombstone = Record { key: Some(b"k".to_vec()), value: None, ..Record::default() };
        let empty = Record::new("").with_key("k");
        assert!(tombstone.is_tombstone());
        assert!(!empty.is_tombstone());
        assert!(tombstone.value_str().is_err());
        assert_eq!(empty.value_str(), Ok(""));
    }

    #[test]
    fn header_lookup_takes_the_last_occurrence() {
        let record = Record::new("v").with_header("h", "first").with_header("other", "x").with_header("h", "last");
        assert_eq!(record.header("h"), Some(&b"last"[..]));
        assert_eq!(record.header("missing"), None);
    }
}
