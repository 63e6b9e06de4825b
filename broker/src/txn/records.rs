//! The records of `__transaction_state`, in Kafka's formats:
//! - key (TransactionLogKey v0): `version: i16 = 0, transactional_id: string`;
//! - value (TransactionLogValue v0): `version: i16 = 0, producer_id: i64, producer_epoch: i16,
//!   transaction_timeout_ms: i32, transaction_status: i8, transaction_partitions:
//!   [topic: string, partition_ids: [i32]] (nullable), transaction_last_update_timestamp_ms: i64,
//!   transaction_start_timestamp_ms: i64`;
//! - a null value is a tombstone (the id expired).
//!
//! Decoding never panics: malformed input is an error the replay skips.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::state::{TxnMetadata, TxnState};

const KEY_VERSION: i16 = 0;
const VALUE_VERSION: i16 = 0;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed __transaction_state record: {0}")]
pub(crate) struct DecodeError(&'static str);

pub(crate) fn key(transactional_id: &str) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(KEY_VERSION);
    put_string(&mut buf, transactional_id);
    buf.freeze()
}

pub(crate) fn value(txn: &TxnMetadata) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(VALUE_VERSION);
    buf.put_i64(txn.producer_id);
    buf.put_i16(txn.producer_epoch);
    buf.put_i32(txn.timeout_ms);
    buf.put_i8(txn.state.code());
    // Partitions grouped by topic, as Kafka stores them.
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for (topic, partition) in &txn.partitions {
        match topics.last_mut() {
            Some((last, partitions)) if *last == topic.as_str() => partitions.push(*partition),
            _ => topics.push((topic.as_str(), vec![*partition])),
        }
    }
    buf.put_i32(topics.len() as i32);
    for (topic, partitions) in topics {
        put_string(&mut buf, topic);
        buf.put_i32(partitions.len() as i32);
        for partition in partitions {
            buf.put_i32(partition);
        }
    }
    buf.put_i64(txn.last_update_ms);
    buf.put_i64(txn.start_ms);
    buf.freeze()
}

pub(crate) fn decode_key(mut bytes: &[u8]) -> Result<String, DecodeError> {
    let version = take_i16(&mut bytes)?;
    if version != KEY_VERSION {
        return Err(DecodeError("unknown key version"));
    }
    take_string(&mut bytes)
}

pub(crate) fn decode_value(transactional_id: String, mut bytes: &[u8]) -> Result<TxnMetadata, DecodeError> {
    let version = take_i16(&mut bytes)?;
    if version != VALUE_VERSION {
        return Err(DecodeError("unknown value version"));
    }
    let producer_id = take_i64(&mut bytes)?;
    let producer_epoch = take_i16(&mut bytes)?;
    let timeout_ms = take_i32(&mut bytes)?;
    let state = TxnState::from_code(take_i8(&mut bytes)?).ok_or(DecodeError("unknown state"))?;
    let mut txn = TxnMetadata::new(transactional_id, producer_id, timeout_ms, 0);
    txn.producer_epoch = producer_epoch;
    txn.state = state;
    let topics = take_i32(&mut bytes)?;
    // A count can never exceed the bytes left: a hostile count cannot make us loop long.
    for _ in 0..topics.max(0).min(bytes.len() as i32) {
        let topic = take_string(&mut bytes)?;
        let partitions = take_i32(&mut bytes)?;
        for _ in 0..partitions.max(0).min(bytes.len() as i32) {
            txn.partitions.insert((topic.clone(), take_i32(&mut bytes)?));
        }
    }
    txn.last_update_ms = take_i64(&mut bytes)?;
    txn.start_ms = take_i64(&mut bytes)?;
    Ok(txn)
}

fn put_string(buf: &mut BytesMut, s: &str) {
    // Transactional ids and topic names are checked to fit before they are stored.
    let len = s.len().min(i16::MAX as usize);
    buf.put_i16(len as i16);
    buf.put_slice(&s.as_bytes()[..len]);
}

fn need(bytes: &[u8], n: usize) -> Result<(), DecodeError> {
    if bytes.len() < n {
        Err(DecodeError("truncated"))
    } else {
        Ok(())
    }
}

fn take_i8(bytes: &mut &[u8]) -> Result<i8, DecodeError> {
    need(bytes, 1)?;
    Ok(bytes.get_i8())
}

fn take_i16(bytes: &mut &[u8]) -> Result<i16, DecodeError> {
    need(bytes, 2)?;
    Ok(bytes.get_i16())
}

fn take_i32(bytes: &mut &[u8]) -> Result<i32, DecodeError> {
    need(bytes, 4)?;
    Ok(bytes.get_i32())
}

fn take_i64(bytes: &mut &[u8]) -> Result<i64, DecodeError> {
    need(bytes, 8)?;
    Ok(bytes.get_i64())
}

fn take_string(bytes: &mut &[u8]) -> Result<String, DecodeError> {
    let len = usize::try_from(take_i16(bytes)?).map_err(|_| DecodeError("null string"))?;
    need(bytes, len)?;
    let s = std::str::from_utf8(&bytes[..len]).map_err(|_| DecodeError("string is not UTF-8"))?.to_string();
    bytes.advance(len);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let mut txn = TxnMetadata::new("tx-1".to_string(), 42, 30_000, 5);
        txn.producer_epoch = 3;
        txn.state = TxnState::PrepareCommit;
        txn.start_ms = 4;
        txn.partitions.extend([("a".to_string(), 0), ("a".to_string(), 2), ("b".to_string(), 1)]);
        let key = key("tx-1");
        let value = value(&txn);
        let id = decode_key(&key).expect("key");
        assert_eq!(decode_value(id, &value).expect("value"), txn);
        for cut in 0..value.len() {
            assert!(decode_value(String::new(), &value[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_key(&[0, 1, 0]).is_err());
    }
}
