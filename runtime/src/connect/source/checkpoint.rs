//! A source task's checkpoint in `__runnel_connect_offsets` (compacted, key
//! `<connector>/<task>`): the source position after the last committed poll, the task's
//! producer id and next sequence per output partition, counters, and the **already encoded
//! output batches** of that poll. It is appended before the batches themselves; after a crash
//! the batches are appended again and the ones that had landed are recognised as duplicates by
//! their producer sequence (the transform changelog's pattern, `transform/checkpoint.rs`).

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::connect::ConnectError;
use crate::transform::checkpoint::PendingOutput;

const VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SourceCheckpoint {
    pub(crate) header: Header,
    pub(crate) pending: Vec<PendingOutput>,
}

/// The JSON part of a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Header {
    /// Where the source resumes (its own shape: a byte offset, a column value, a count).
    pub(crate) position: Option<serde_json::Value>,
    pub(crate) producer_id: i64,
    /// (topic, partition, next sequence).
    pub(crate) sequences: Vec<(String, i32, i32)>,
    pub(crate) records: u64,
    pub(crate) batches: u64,
}

impl Header {
    pub(crate) fn sequence_map(&self) -> BTreeMap<(String, i32), i32> {
        self.sequences.iter().map(|(t, p, s)| ((t.clone(), *p), *s)).collect()
    }
}

impl SourceCheckpoint {
    pub(crate) fn encode(&self) -> Result<Bytes, ConnectError> {
        let header = serde_json::to_vec(&self.header).map_err(|e| ConnectError::Internal(e.to_string()))?;
        let mut out = BytesMut::with_capacity(header.len() + 16);
        out.put_u32(VERSION);
        out.put_u32(header.len() as u32);
        out.put_slice(&header);
        PendingOutput::put_all(&mut out, &self.pending);
        Ok(out.freeze())
    }

    pub(crate) fn decode(mut bytes: Bytes) -> Result<SourceCheckpoint, ConnectError> {
        let corrupt = |what: &str| ConnectError::Corrupt(format!("source checkpoint: {what}"));
        let version = bytes.try_get_u32().map_err(|_| corrupt("short"))?;
        if version != VERSION {
            return Err(corrupt(&format!("unknown version {version}")));
        }
        let len = bytes.try_get_u32().map_err(|_| corrupt("short"))? as usize;
        if bytes.remaining() < len {
            return Err(corrupt("header"));
        }
        let header: Header = serde_json::from_slice(&bytes.split_to(len)).map_err(|e| corrupt(&e.to_string()))?;
        let pending = PendingOutput::take_all(&mut bytes).map_err(corrupt)?;
        Ok(SourceCheckpoint { header, pending })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_truncation_is_an_error() {
        let checkpoint = SourceCheckpoint {
            header: Header {
                position: Some(serde_json::json!({"offset": 42})),
                producer_id: 7,
                sequences: vec![("t".into(), 1, 99)],
                records: 10,
                batches: 2,
            },
            pending: vec![PendingOutput { topic: "t".into(), partition: 1, batch: Bytes::from_static(b"batch") }],
        };
        let bytes = checkpoint.encode().expect("encode");
        assert_eq!(SourceCheckpoint::decode(bytes.clone()).expect("decode"), checkpoint);
        for cut in 0..bytes.len() {
            assert!(SourceCheckpoint::decode(bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
    }
}
