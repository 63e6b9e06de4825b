//! The records of `__consumer_offsets`, in Kafka's formats so that the topic stays readable
//! by Kafka's tools:
//! - offset commit: key `version: i16 = 1, group, topic: string, partition: i32`, value
//!   `version: i16 = 3, offset: i64, leader_epoch: i32, metadata: string, commit_timestamp: i64`;
//! - group metadata: key `version: i16 = 2, group: string`, value GroupMetadataValue v3
//!   (`protocol_type, generation, protocol?, leader?, current_state_timestamp, members[...]`);
//! - a null value is a tombstone: the key's group or offset is deleted.
//!
//! Decoding accepts every version Kafka wrote before the flexible ones (offset values v0–v3,
//! group values v0–v3) and refuses anything else with an error, never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

use super::group::{CommittedOffset, Group};

const OFFSET_KEY_VERSION: i16 = 1;
const GROUP_KEY_VERSION: i16 = 2;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed __consumer_offsets record: {0}")]
pub(crate) struct DecodeError(&'static str);

/// A key of `__consumer_offsets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordKey {
    Offset { group: String, topic: String, partition: i32 },
    Group { group: String },
}

/// A member as stored in GroupMetadataValue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredMember {
    pub(crate) member_id: String,
    pub(crate) group_instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) session_timeout_ms: i32,
    pub(crate) subscription: Bytes,
    pub(crate) assignment: Bytes,
}

/// GroupMetadataValue: the group as of its last stored generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredGroup {
    pub(crate) protocol_type: String,
    pub(crate) generation_id: i32,
    pub(crate) protocol_name: Option<String>,
    pub(crate) leader_id: Option<String>,
    pub(crate) state_timestamp_ms: i64,
    pub(crate) members: Vec<StoredMember>,
}

/// One record to append: key and value (`None` is a tombstone).
pub(crate) type KeyValue = (Bytes, Option<Bytes>);

pub(crate) fn offset_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(OFFSET_KEY_VERSION);
    put_string(&mut buf, group);
    put_string(&mut buf, topic);
    buf.put_i32(partition);
    buf.freeze()
}

pub(crate) fn group_key(group: &str) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(GROUP_KEY_VERSION);
    put_string(&mut buf, group);
    buf.freeze()
}

pub(crate) fn offset_value(offset: &CommittedOffset) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(OFFSET_VALUE_VERSION);
    buf.put_i64(offset.offset);
    buf.put_i32(offset.leader_epoch);
    put_string(&mut buf, &offset.metadata);
    buf.put_i64(offset.commit_timestamp_ms);
    buf.freeze()
}

/// The group's metadata record value; `assignments` overrides the members' current ones
/// (the leader's SyncGroup is stored before it is applied).
pub(crate) fn group_value(group: &Group, assignments: Option<&[(String, Bytes)]>) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(GROUP_VALUE_VERSION);
    put_string(&mut buf, group.protocol_type.as_deref().unwrap_or(""));
    buf.put_i32(group.generation_id);
    put_nullable_string(&mut buf, group.protocol_name.as_deref());
    put_nullable_string(&mut buf, group.leader_id.as_deref());
    buf.put_i64(group.state_timestamp_ms());
    let members = group.members();
    buf.put_i32(members.len() as i32);
    for member in members {
        let assignment = match assignments {
            Some(given) => given.iter().find(|(id, _)| *id == member.member_id).map(|(_, a)| a.clone()),
            None => Some(member.assignment.clone()),
        };
        put_string(&mut buf, &member.member_id);
        put_nullable_string(&mut buf, member.group_instance_id.as_deref());
        put_string(&mut buf, &member.client_id);
        put_string(&mut buf, &member.client_host);
        buf.put_i32(member.rebalance_timeout_ms);
        buf.put_i32(member.session_timeout_ms);
        put_bytes(&mut buf, &member.metadata(group.protocol_name.as_deref()));
        put_bytes(&mut buf, &assignment.unwrap_or_default());
    }
    buf.freeze()
}

pub(crate) fn decode_key(mut buf: &[u8]) -> Result<RecordKey, DecodeError> {
    let version = get_i16(&mut buf)?;
    let key = match version {
        0 | 1 => RecordKey::Offset {
            group: get_string(&mut buf)?,
            topic: get_string(&mut buf)?,
            partition: get_i32(&mut buf)?,
        },
        2 => RecordKey::Group { group: get_string(&mut buf)? },
        _ => return Err(DecodeError("unknown key version")),
    };
    Ok(key)
}

pub(crate) fn decode_offset_value(mut buf: &[u8]) -> Result<CommittedOffset, DecodeError> {
    let version = get_i16(&mut buf)?;
    if !(0..=3).contains(&version) {
        return Err(DecodeError("unknown offset value version"));
    }
    let offset = get_i64(&mut buf)?;
    let leader_epoch = if version >= 3 { get_i32(&mut buf)? } else { -1 };
    let metadata = get_string(&mut buf)?;
    let commit_timestamp_ms = get_i64(&mut buf)?;
    if version == 1 {
        let _expire_timestamp = get_i64(&mut buf)?;
    }
    Ok(CommittedOffset { offset, leader_epoch, metadata, commit_timestamp_ms })
}

pub(crate) fn decode_group_value(mut buf: &[u8]) -> Result<StoredGroup, DecodeError> {
    let version = get_i16(&mut buf)?;
    if !(0..=3).contains(&version) {
        return Err(DecodeError("unknown group value version"));
    }
    let protocol_type = get_string(&mut buf)?;
    let generation_id = get_i32(&mut buf)?;
    let protocol_name = get_nullable_string(&mut buf)?;
    let leader_id = get_nullable_string(&mut buf)?;
    let state_timestamp_ms = if version >= 2 { get_i64(&mut buf)? } else { -1 };
    let count = get_i32(&mut buf)?;
    // A member takes well over 16 bytes; a larger count cannot fit in what is left.
    if count < 0 || count as usize > buf.remaining() / 16 {
        return Err(DecodeError("bad member count"));
    }
    let mut members = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let member_id = get_string(&mut buf)?;
        let group_instance_id = if version >= 3 { get_nullable_string(&mut buf)? } else { None };
        let client_id = get_string(&mut buf)?;
        let client_host = get_string(&mut buf)?;
        let rebalance_timeout_ms = if version >= 1 { get_i32(&mut buf)? } else { -1 };
        let session_timeout_ms = get_i32(&mut buf)?;
        let rebalance_timeout_ms = if rebalance_timeout_ms < 0 { session_timeout_ms } else { rebalance_timeout_ms };
        let subscription = get_bytes(&mut buf)?;
        let assignment = get_bytes(&mut buf)?;
        members.push(StoredMember {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Ok(StoredGroup { protocol_type, generation_id, protocol_name, leader_id, state_timestamp_ms, members })
}

/// Encodes records as one uncompressed RecordBatch v2 (offsets are assigned on append).
/// Encodes records as one batch; with `producer` (id, epoch) a transactional batch (offsets
/// committed by TxnOffsetCommit, published by the transaction's marker).
pub(crate) fn encode_batch(
    records: &[KeyValue],
    timestamp_ms: i64,
    producer: Option<(i64, i16)>,
) -> Result<Bytes, String> {
    let (producer_id, producer_epoch) = producer.unwrap_or((-1, -1));
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(index, (key, value))| Record {
            transactional: producer.is_some(),
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: index as i64,
            // kafka-protocol starts a new batch wherever `offset - sequence` changes: counting
            // up from -1 keeps one batch (base sequence -1), so a commit (transactional or not)
            // is appended atomically; coordinator writes carry no sequence checking.
            sequence: index as i32 - 1,
            timestamp: timestamp_ms,
            key: Some(key.clone()),
            value: value.clone(),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(&mut buf, &records, &options).map_err(|e| e.to_string())?;
    Ok(buf.freeze())
}

fn put_string(buf: &mut BytesMut, s: &str) {
    // Names are bounded well below i16::MAX by the protocol that delivered them.
    let len = s.len().min(i16::MAX as usize);
    buf.put_i16(len as i16);
    buf.put_slice(&s.as_bytes()[..len]);
}

fn put_nullable_string(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_string(buf, s),
        None => buf.put_i16(-1),
    }
}

fn put_bytes(buf: &mut BytesMut, bytes: &[u8]) {
    buf.put_i32(bytes.len() as i32);
    buf.put_slice(bytes);
}

fn get_i16(buf: &mut &[u8]) -> Result<i16, DecodeError> {
    if buf.remaining() < 2 {
        return Err(DecodeError("truncated"));
    }
    Ok(buf.get_i16())
}

fn get_i32(buf: &mut &[u8]) -> Result<i32, DecodeError> {
    if buf.remaining() < 4 {
        return Err(DecodeError("truncated"));
    }
    Ok(buf.get_i32())
}

fn get_i64(buf: &mut &[u8]) -> Result<i64, DecodeError> {
    if buf.remaining() < 8 {
        return Err(DecodeError("truncated"));
    }
    Ok(buf.get_i64())
}

fn get_nullable_string(buf: &mut &[u8]) -> Result<Option<String>, DecodeError> {
    let len = get_i16(buf)?;
    if len < 0 {
        return Ok(None);
    }
    let len = len as usize;
    if buf.remaining() < len {
        return Err(DecodeError("truncated string"));
    }
    let text = std::str::from_utf8(&buf[..len]).map_err(|_| DecodeError("string is not UTF-8"))?.to_string();
    buf.advance(len);
    Ok(Some(text))
}

fn get_string(buf: &mut &[u8]) -> Result<String, DecodeError> {
    get_nullable_string(buf)?.ok_or(DecodeError("null where a string is required"))
}

fn get_bytes(buf: &mut &[u8]) -> Result<Bytes, DecodeError> {
    let len = get_i32(buf)?;
    if len < 0 {
        return Ok(Bytes::new());
    }
    let len = len as usize;
    if buf.remaining() < len {
        return Err(DecodeError("truncated bytes"));
    }
    let bytes = Bytes::copy_from_slice(&buf[..len]);
    buf.advance(len);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_offset_values_round_trip() {
        let key = offset_key("g", "orders", 7);
        assert_eq!(decode_key(&key), Ok(RecordKey::Offset { group: "g".into(), topic: "orders".into(), partition: 7 }));
        assert_eq!(decode_key(&group_key("g")), Ok(RecordKey::Group { group: "g".into() }));
        let offset = CommittedOffset { offset: 42, leader_epoch: 3, metadata: "m".into(), commit_timestamp_ms: 9 };
        assert_eq!(decode_offset_value(&offset_value(&offset)), Ok(offset));
    }

    #[test]
    fn kafka_offset_value_v1_with_expire_timestamp_decodes() {
        let mut buf = BytesMut::new();
        buf.put_i16(1);
        buf.put_i64(5);
        put_string(&mut buf, "meta");
        buf.put_i64(100);
        buf.put_i64(200);
        let decoded = decode_offset_value(&buf).expect("v1 decodes");
        assert_eq!((decoded.offset, decoded.leader_epoch, decoded.metadata.as_str()), (5, -1, "meta"));
    }

    #[test]
    fn every_prefix_and_garbage_fails_cleanly() {
        let key = offset_key("group", "topic", 1);
        for len in 0..key.len() {
            assert!(decode_key(&key[..len]).is_err());
        }
        for seed in 0..200u32 {
            let garbage: Vec<u8> = (0..(seed % 60)).map(|i| (i.wrapping_mul(seed) % 251) as u8).collect();
            let _ = decode_key(&garbage);
            let _ = decode_offset_value(&garbage);
            let _ = decode_group_value(&garbage);
        }
    }
}
