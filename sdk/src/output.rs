//! The output record type: a record plus the index of the output topic it goes to.

use crate::{Header, Record};

/// A record a transform emits. `index` selects the output topic, in the order the `--output`
/// flags were given at deploy (0 = first).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    /// Which output topic (0 = first `--output`).
    pub index: u32,
    /// `None` takes the timestamp of the input record that produced it (the SDK fills it in).
    pub timestamp_ms: Option<i64>,
    /// The key, `None` for a null key.
    pub key: Option<Vec<u8>>,
    /// The value, `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Headers in order.
    pub headers: Vec<Header>,
}

impl Output {
    /// An output to index 0 with this value, no key, no headers and the input's timestamp.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Output { value: Some(value.into()), ..Output::default() }
    }

    /// A tombstone (null value) for this key, to index 0.
    pub fn tombstone(key: impl Into<Vec<u8>>) -> Self {
        Output { key: Some(key.into()), ..Output::default() }
    }

    /// The same output sent to output `index` instead.
    pub fn to(mut self, index: u32) -> Self {
        self.index = index;
        self
    }

    /// The same output with this value.
    pub fn with_value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// The same output with this key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The same output with this timestamp (milliseconds since the epoch, not negative: the host
    /// refuses negative output timestamps, so the SDK fails the batch on one).
    pub fn with_timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// The same output with one more header.
    pub fn with_header(mut self, name: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }

    /// The value as UTF-8 text, if it is some.
    pub fn value_str(&self) -> Option<&str> {
        self.value.as_deref().and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// Forwarding a record unchanged: same key, value, headers and timestamp, to output 0.
impl From<Record> for Output {
    fn from(record: Record) -> Self {
        Output {
            index: 0,
            // Kafka's "no timestamp" (-1) and other negatives mean "as the input" on output.
            timestamp_ms: if record.timestamp_ms >= 0 { Some(record.timestamp_ms) } else { None },
            key: record.key,
            value: record.value,
            headers: record.headers,
        }
    }
}

impl Record {
    /// This record forwarded unchanged to output `index`.
    pub fn to(self, index: u32) -> Output {
        Output::from(self).to(index)
    }
}
