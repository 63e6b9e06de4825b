//! The changelog of one (transform, partition) instance: its key-value state and checkpoints,
//! in a compacted topic partition. Each commit is **one record batch** (a batch is appended
//! atomically, and recovery truncates a torn one), holding:
//!
//! - `s<user key>` → value (null deletes) for every state change of the input batch;
//! - `c` → the checkpoint: the next input offset, the output producer id and next sequence per
//!   output partition, counters, and the encoded output batches of this commit.
//!
//! Outputs are appended to their topics only after the changelog batch, with idempotent
//! sequences. After a crash the last checkpoint's output batches are appended again: the ones
//! that had landed are recognised as duplicates, the rest land now. State, outputs and input
//! position therefore move together, and no output is lost or duplicated.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::processor::{StateChange, StateMap};
use super::records::{encode_batch, Outgoing};
use super::TransformError;

const CHECKPOINT_VERSION: u32 = 1;
const CHECKPOINT_KEY: &[u8] = b"c";
const STATE_PREFIX: u8 = b's';

/// An output batch to append to `topic`-`partition`, encoded with its sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingOutput {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) batch: Bytes,
}

impl PendingOutput {
    /// Appends `pending`: a count, then each batch with its topic and partition. Every
    /// checkpoint that carries its outputs (transforms, sources, views) ends with this.
    pub(crate) fn put_all(out: &mut BytesMut, pending: &[PendingOutput]) {
        out.put_u32(pending.len() as u32);
        for pending in pending {
            put_str(out, &pending.topic);
            out.put_i32(pending.partition);
            out.put_u32(pending.batch.len() as u32);
            out.put_slice(&pending.batch);
        }
    }

    /// Reads what [`PendingOutput::put_all`] wrote; the error names the part that is short.
    pub(crate) fn take_all(bytes: &mut Bytes) -> Result<Vec<PendingOutput>, &'static str> {
        let count = take_u32(bytes).ok_or("output count")?;
        // Each entry takes at least 10 bytes: a count larger than that is corruption, and must
        // not size an allocation.
        let mut pending = Vec::with_capacity((count as usize).min(bytes.remaining() / 10));
        for _ in 0..count {
            let topic = take_str(bytes).ok_or("output topic")?;
            let partition = bytes.try_get_i32().map_err(|_| "output partition")?;
            let len = take_u32(bytes).ok_or("output length")? as usize;
            if bytes.remaining() < len {
                return Err("output batch");
            }
            pending.push(PendingOutput { topic, partition, batch: bytes.split_to(len) });
        }
        Ok(pending)
    }
}

/// Where an instance stands after its last commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub(crate) next_offset: i64,
    pub(crate) producer_id: i64,
    /// Next sequence per output (topic, partition).
    pub(crate) sequences: BTreeMap<(String, i32), i32>,
    pub(crate) processed: u64,
    pub(crate) failed: u64,
    pub(crate) pending: Vec<PendingOutput>,
}

impl Checkpoint {
    fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u32(CHECKPOINT_VERSION);
        out.put_i64(self.next_offset);
        out.put_i64(self.producer_id);
        out.put_u64(self.processed);
        out.put_u64(self.failed);
        out.put_u32(self.sequences.len() as u32);
        for ((topic, partition), sequence) in &self.sequences {
            put_str(&mut out, topic);
            out.put_i32(*partition);
            out.put_i32(*sequence);
        }
        PendingOutput::put_all(&mut out, &self.pending);
        out.freeze()
    }

    fn decode(mut bytes: Bytes) -> Result<Checkpoint, TransformError> {
        let corrupt = |what: &str| TransformError::Corrupt(format!("checkpoint: {what}"));
        let version = take_u32(&mut bytes).ok_or_else(|| corrupt("short"))?;
        if version != CHECKPOINT_VERSION {
            return Err(corrupt(&format!("unknown version {version}")));
        }
        if bytes.remaining() < 32 {
            return Err(corrupt("short"));
        }
        let mut checkpoint = Checkpoint {
            next_offset: bytes.get_i64(),
            producer_id: bytes.get_i64(),
            processed: bytes.get_u64(),
            failed: bytes.get_u64(),
            ..Checkpoint::default()
        };
        let count = take_u32(&mut bytes).ok_or_else(|| corrupt("short"))?;
        for _ in 0..count {
            let topic = take_str(&mut bytes).ok_or_else(|| corrupt("sequence topic"))?;
            if bytes.remaining() < 8 {
                return Err(corrupt("sequence"));
            }
            let partition = bytes.get_i32();
            checkpoint.sequences.insert((topic, partition), bytes.get_i32());
        }
        checkpoint.pending = PendingOutput::take_all(&mut bytes).map_err(corrupt)?;
        Ok(checkpoint)
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    // Topic names are at most 249 bytes; u16 is ample.
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn take_u32(bytes: &mut Bytes) -> Option<u32> {
    bytes.try_get_u32().ok()
}

fn take_str(bytes: &mut Bytes) -> Option<String> {
    let len = bytes.try_get_u16().ok()? as usize;
    if bytes.remaining() < len {
        return None;
    }
    String::from_utf8(bytes.split_to(len).to_vec()).ok()
}

/// Encodes one commit as a single changelog batch: the state changes, then the checkpoint.
pub(crate) fn encode_commit(
    changes: &[StateChange],
    checkpoint: &Checkpoint,
    now_ms: i64,
) -> Result<Bytes, TransformError> {
    let mut records: Vec<Outgoing> = changes
        .iter()
        .map(|(key, value)| {
            let mut prefixed = Vec::with_capacity(key.len() + 1);
            prefixed.push(STATE_PREFIX);
            prefixed.extend_from_slice(key);
            Outgoing {
                timestamp_ms: now_ms,
                key: Some(Bytes::from(prefixed)),
                value: value.clone().map(Bytes::from),
                headers: Vec::new(),
            }
        })
        .collect();
    records.push(Outgoing {
        timestamp_ms: now_ms,
        key: Some(Bytes::from_static(CHECKPOINT_KEY)),
        value: Some(checkpoint.encode()),
        headers: Vec::new(),
    });
    encode_batch(&records, None)
}

/// State and the last checkpoint rebuilt from a changelog partition's records, in order.
#[derive(Debug, Default)]
pub(crate) struct Restored {
    pub(crate) state: StateMap,
    pub(crate) checkpoint: Option<Checkpoint>,
}

impl Restored {
    /// Applies one changelog record.
    pub(crate) fn apply(&mut self, key: Option<&[u8]>, value: Option<&Bytes>) -> Result<(), TransformError> {
        match key {
            Some(CHECKPOINT_KEY) => {
                if let Some(value) = value {
                    self.checkpoint = Some(Checkpoint::decode(value.clone())?);
                }
            }
            Some([STATE_PREFIX, user_key @ ..]) => match value {
                Some(value) => {
                    self.state.insert(user_key.to_vec(), value.to_vec());
                }
                None => {
                    self.state.remove(user_key);
                }
            },
            _ => tracing::warn!("ignoring an unknown changelog record"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn a_commit_restores_state_and_checkpoint() {
        let checkpoint = Checkpoint {
            next_offset: 42,
            producer_id: 9,
            sequences: [(("out".to_string(), 1), 17)].into_iter().collect(),
            processed: 40,
            failed: 2,
            pending: vec![PendingOutput { topic: "out".into(), partition: 1, batch: Bytes::from_static(b"xyz") }],
        };
        let changes = vec![(b"a".to_vec(), Some(b"1".to_vec())), (b"b".to_vec(), None)];
        let mut batch = encode_commit(&changes, &checkpoint, 5).expect("encode");
        let set = RecordBatchDecoder::decode(&mut batch).expect("decode");
        let mut restored = Restored::default();
        restored.state.insert(b"b".to_vec(), b"old".to_vec());
        for record in &set.records {
            restored.apply(record.key.as_deref(), record.value.as_ref()).expect("apply");
        }
        assert_eq!(restored.state.into_iter().collect::<Vec<_>>(), vec![(b"a".to_vec(), b"1".to_vec())]);
        assert_eq!(restored.checkpoint, Some(checkpoint));
    }

    #[test]
    fn truncated_checkpoints_are_errors_not_panics() {
        let checkpoint = Checkpoint {
            pending: vec![PendingOutput { topic: "o".into(), partition: 0, batch: Bytes::from_static(b"batch") }],
            ..Checkpoint::default()
        };
        let bytes = checkpoint.encode();
        for cut in 0..bytes.len() {
            assert!(Checkpoint::decode(bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert!(Checkpoint::decode(bytes).is_ok());
    }
}
