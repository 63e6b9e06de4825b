//! The guest SDK for Runnel WebAssembly plugins.
//!
//! This crate has no dependencies and builds with Rust 1.63 for `wasm32-unknown-unknown` and
//! `wasm32-wasi`, and with stable Rust natively so plugin logic can be unit-tested.
//! The plugin ABI arrives with the transforms issue; today it carries the record type the
//! broker and plugins share.

/// One Kafka record as a plugin sees it: key and value are optional, as in Kafka,
/// where a missing value is a tombstone and must stay distinct from an empty one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The record key, `None` when the producer sent a null key.
    pub key: Option<Vec<u8>>,
    /// The record value, `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

impl Record {
    /// A record is a tombstone when its value is null: compaction deletes its key.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_value_is_a_tombstone_but_empty_value_is_not() {
        let tombstone = Record { key: Some(b"k".to_vec()), value: None, timestamp_ms: 1 };
        let empty = Record { key: Some(b"k".to_vec()), value: Some(Vec::new()), timestamp_ms: 1 };
        assert!(tombstone.is_tombstone());
        assert!(!empty.is_tombstone());
    }
}
