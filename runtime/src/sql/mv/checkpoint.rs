//! A view's changelog (`__runnel_mv_<name>`, one compacted partition): its groups and its
//! checkpoints. Each commit is **one record batch**, the pattern transforms use
//! (`transform/checkpoint.rs`, docs/TRANSFORMS.md): `g<group id>` → the group (JSON; null
//! deletes it) for every group the commit changed, then `c` → the checkpoint: the next input
//! offset of every source partition, the watermark's basis, the output producer id and next
//! sequence per output partition, counters, and the encoded output batches of the commit.
//! Outputs are appended after the changelog batch; after a crash they are appended again and
//! the partitions drop the duplicates by producer sequence.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::super::SqlError;
use super::state::{split_group_id, Group, GroupChange};
use crate::transform::checkpoint::PendingOutput;
use crate::transform::records::{encode_batch, Outgoing};

const CHECKPOINT_KEY: &[u8] = b"c";
const GROUP_PREFIX: u8 = b'g';
const CHECKPOINT_VERSION: u32 = 1;

/// Where a view stands after its last commit.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ViewCheckpoint {
    /// Next input offset per source partition.
    pub(crate) positions: BTreeMap<i32, i64>,
    pub(crate) producer_id: i64,
    /// Next sequence per output (topic, partition).
    pub(crate) sequences: Vec<(String, i32, i32)>,
    pub(crate) max_event_ms: i64,
    pub(crate) processed: u64,
    pub(crate) late: u64,
    pub(crate) malformed: u64,
    pub(crate) emitted: u64,
    #[serde(skip)]
    pub(crate) pending: Vec<PendingOutput>,
}

impl ViewCheckpoint {
    /// The next sequence for (topic, partition), advanced by `count` records.
    pub(crate) fn take_sequence(&mut self, topic: &str, partition: i32, count: usize) -> i32 {
        let entry = match self.sequences.iter_mut().find(|(t, p, _)| t == topic && *p == partition) {
            Some(entry) => entry,
            None => {
                self.sequences.push((topic.to_string(), partition, 0));
                self.sequences.last_mut().expect("just pushed")
            }
        };
        let sequence = entry.2;
        // Sequences wrap at i32::MAX like Kafka's.
        entry.2 = ((i64::from(sequence) + count as i64) % (i64::from(i32::MAX) + 1)) as i32;
        sequence
    }

    fn encode(&self) -> Result<Bytes, SqlError> {
        let meta = serde_json::to_vec(self).map_err(|e| SqlError::Internal(format!("checkpoint: {e}")))?;
        let mut out = BytesMut::new();
        out.put_u32(CHECKPOINT_VERSION);
        out.put_u32(meta.len() as u32);
        out.put_slice(&meta);
        PendingOutput::put_all(&mut out, &self.pending);
        Ok(out.freeze())
    }

    fn decode(mut bytes: Bytes) -> Result<ViewCheckpoint, SqlError> {
        let corrupt = |what: &str| SqlError::Corrupt(format!("view checkpoint: {what}"));
        let version = bytes.try_get_u32().map_err(|_| corrupt("short"))?;
        if version != CHECKPOINT_VERSION {
            return Err(corrupt(&format!("unknown version {version}")));
        }
        let length = bytes.try_get_u32().map_err(|_| corrupt("short"))? as usize;
        if bytes.remaining() < length {
            return Err(corrupt("short"));
        }
        let mut checkpoint: ViewCheckpoint =
            serde_json::from_slice(&bytes.split_to(length)).map_err(|e| corrupt(&e.to_string()))?;
        checkpoint.pending = PendingOutput::take_all(&mut bytes).map_err(corrupt)?;
        Ok(checkpoint)
    }
}

/// One commit as a single changelog batch: the group changes, then the checkpoint.
pub(crate) fn encode_commit(
    changes: &[GroupChange],
    checkpoint: &ViewCheckpoint,
    now_ms: i64,
) -> Result<Bytes, SqlError> {
    let mut records = Vec::with_capacity(changes.len() + 1);
    for (id, group) in changes {
        let mut key = Vec::with_capacity(id.len() + 1);
        key.push(GROUP_PREFIX);
        key.extend_from_slice(id);
        let value = match group {
            Some(group) => {
                Some(Bytes::from(serde_json::to_vec(group).map_err(|e| SqlError::Internal(format!("group: {e}")))?))
            }
            None => None,
        };
        records.push(Outgoing { timestamp_ms: now_ms, key: Some(Bytes::from(key)), value, headers: Vec::new() });
    }
    records.push(Outgoing {
        timestamp_ms: now_ms,
        key: Some(Bytes::from_static(CHECKPOINT_KEY)),
        value: Some(checkpoint.encode()?),
        headers: Vec::new(),
    });
    Ok(encode_batch(&records, None)?)
}

/// Applies one changelog record to the state being restored.
pub(crate) fn restore_record(
    groups: &mut BTreeMap<Vec<u8>, Group>,
    checkpoint: &mut Option<ViewCheckpoint>,
    key: Option<&[u8]>,
    value: Option<&Bytes>,
) -> Result<(), SqlError> {
    match key {
        Some(CHECKPOINT_KEY) => {
            if let Some(value) = value {
                *checkpoint = Some(ViewCheckpoint::decode(value.clone())?);
            }
        }
        Some([GROUP_PREFIX, id @ ..]) => match value {
            Some(value) => {
                let group: Group =
                    serde_json::from_slice(value).map_err(|e| SqlError::Corrupt(format!("view group: {e}")))?;
                if split_group_id(id).is_none() {
                    return Err(SqlError::Corrupt("view group id".into()));
                }
                groups.insert(id.to_vec(), group);
            }
            None => {
                groups.remove(id);
            }
        },
        _ => tracing::warn!("ignoring an unknown view changelog record"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_truncations_are_errors() {
        let mut checkpoint = ViewCheckpoint {
            positions: [(0, 10), (1, 20)].into_iter().collect(),
            producer_id: 7,
            max_event_ms: 99,
            processed: 30,
            late: 2,
            pending: vec![PendingOutput { topic: "v".into(), partition: 0, batch: Bytes::from_static(b"batch") }],
            ..ViewCheckpoint::default()
        };
        assert_eq!(checkpoint.take_sequence("v", 0, 3), 0);
        assert_eq!(checkpoint.take_sequence("v", 0, 2), 3);
        let bytes = checkpoint.encode().expect("encode");
        assert_eq!(ViewCheckpoint::decode(bytes.clone()).expect("decode"), checkpoint);
        for cut in 0..bytes.len() {
            assert!(ViewCheckpoint::decode(bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
    }
}
