//! Record batches in and out: decoding what the input log holds into [`InRecord`]s, and
//! encoding outputs as idempotent batches (producer id + sequence) so that re-appending the
//! same batch after a crash is recognised by the partition as a duplicate.

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::log_io::Slice;
use super::processor::InRecord;
use super::TransformError;

/// Decodes every data record at or after `from_offset` in `bytes` (whole batches as the log
/// stores them), at most `max_records`. Control batches (transaction markers) are skipped.
/// Returns the records and the offset to read next.
pub(crate) fn decode_input(slice: &Slice, max_records: usize) -> Result<(Vec<InRecord>, i64), TransformError> {
    let mut bytes = slice.bytes.clone();
    let mut records = Vec::new();
    let mut next = slice.from;
    while bytes.len() >= runnel_broker::protocol::batch::BATCH_HEADER_BYTES && records.len() < max_records {
        let Some(length) = runnel_broker::protocol::batch::peek_batch_bytes(&bytes) else { break };
        if length > bytes.len() {
            break; // a fetch slice may end inside a batch
        }
        let header = runnel_broker::protocol::batch::BatchHeader::parse(&bytes[..length])
            .map_err(|e| TransformError::Corrupt(e.to_string()))?;
        let mut batch = bytes.split_to(length);
        if header.next_offset() <= next {
            continue;
        }
        // read_committed: nothing at or past the last stable offset (an open transaction).
        if header.base_offset >= slice.upper {
            break;
        }
        // Markers, and the data of aborted transactions, are not records a transform sees.
        let aborted = header.is_transactional()
            && slice.aborted.iter().any(|a| {
                a.producer_id == header.producer_id
                    && a.first_offset <= header.base_offset
                    && header.base_offset <= a.last_offset
            });
        if header.is_control() || aborted {
            next = header.next_offset();
            continue;
        }
        let set = RecordBatchDecoder::decode(&mut batch).map_err(|e| TransformError::Corrupt(e.to_string()))?;
        let mut batch_complete = true;
        for record in set.records {
            if record.offset < next {
                continue;
            }
            if records.len() >= max_records {
                batch_complete = false;
                break;
            }
            next = record.offset + 1;
            records.push(InRecord {
                offset: record.offset,
                timestamp_ms: record.timestamp,
                key: record.key,
                value: record.value,
                headers: record.headers.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            });
        }
        if batch_complete {
            // Compaction may leave gaps inside a batch: the batch's end is the next position.
            next = next.max(header.next_offset());
        }
    }
    Ok((records, next))
}

/// A record to encode: key, value, headers and timestamp.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) timestamp_ms: i64,
    pub(crate) key: Option<Bytes>,
    pub(crate) value: Option<Bytes>,
    pub(crate) headers: Vec<(String, Option<Bytes>)>,
}

/// Encodes records as one uncompressed batch; with `producer` = (id, base sequence) the batch
/// is idempotent.
pub(crate) fn encode_batch(records: &[Outgoing], producer: Option<(i64, i32)>) -> Result<Bytes, TransformError> {
    let (producer_id, producer_epoch, base_sequence) = match producer {
        Some((id, sequence)) => (id, 0, sequence),
        None => (-1, -1, -1),
    };
    let encoded: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(index, out)| {
            let mut headers = IndexMap::new();
            for (name, value) in &out.headers {
                headers.insert(StrBytes::from_string(name.clone()), value.clone());
            }
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id,
                producer_epoch,
                timestamp_type: TimestampType::Creation,
                offset: index as i64,
                // kafka-protocol starts a new batch wherever `offset - sequence` changes, so
                // records without a producer count up from -1 too: one batch, base sequence -1.
                sequence: base_sequence.wrapping_add(index as i32),
                timestamp: out.timestamp_ms,
                key: out.key.clone(),
                value: out.value.clone(),
                headers,
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(&mut buf, &encoded, &options).map_err(|e| TransformError::Encode(e.to_string()))?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(value: &str) -> Outgoing {
        Outgoing {
            timestamp_ms: 1_000,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers: vec![("h".into(), None)],
        }
    }

    /// Stamps a base offset into an encoded batch the way the log does on append.
    fn at_offset(batch: &Bytes, base_offset: i64) -> Bytes {
        let mut bytes = batch.to_vec();
        bytes[..8].copy_from_slice(&base_offset.to_be_bytes());
        Bytes::from(bytes)
    }

    #[test]
    fn encoded_batches_decode_from_any_offset_inside() {
        let batch = encode_batch(&[outgoing("a"), outgoing("b"), outgoing("c")], Some((7, 10))).expect("encode");
        let header = runnel_broker::protocol::batch::BatchHeader::parse(&batch).expect("header");
        assert_eq!((header.producer_id, header.base_sequence, header.record_count), (7, 10, 3));
        let mut log = BytesMut::new();
        log.extend_from_slice(&at_offset(&batch, 100));
        log.extend_from_slice(&at_offset(&batch, 103));
        let slice = |bytes: Bytes, from: i64| Slice { from, bytes, upper: i64::MAX, aborted: Vec::new() };
        let (records, next) = decode_input(&slice(log.clone().freeze(), 101), 100).expect("decode");
        assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![101, 102, 103, 104, 105]);
        assert_eq!(next, 106);
        assert_eq!(records[0].value.as_deref(), Some(&b"b"[..]));
        assert_eq!(records[0].headers, vec![("h".to_string(), None)]);
        let (first_two, next) = decode_input(&slice(log.freeze(), 100), 2).expect("decode");
        assert_eq!((first_two.len(), next), (2, 102));
    }

    #[test]
    fn a_truncated_slice_yields_only_whole_batches() {
        let batch = at_offset(&encode_batch(&[outgoing("a")], None).expect("encode"), 5);
        let mut bytes = batch.to_vec();
        bytes.extend_from_slice(&batch[..batch.len() - 3]);
        let slice = Slice { from: 0, bytes: Bytes::from(bytes), upper: i64::MAX, aborted: Vec::new() };
        let (records, next) = decode_input(&slice, 100).expect("decode");
        assert_eq!((records.len(), next), (1, 6));
    }
}
