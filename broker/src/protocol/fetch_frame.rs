//! Fetch responses without copying their records into the frame.
//!
//! A fetch response is mostly record bytes already read from a segment. Encoding it with the
//! codec would copy every byte into the frame buffer once more. Instead each non-empty record
//! set is swapped for a 16-byte random marker, the (now small) response is encoded by the
//! codec as usual, and the frame is split at each marker: the marker and its length prefix are
//! replaced by the real prefix and the record set's own buffer. The connection then writes the
//! pieces in order.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, FetchResponse};

use super::frame::{encode_response, FrameError};

const MARKER_BYTES: usize = 16;
/// Flexible versions (v12+) use compact (varint length + 1) byte strings.
const FIRST_FLEXIBLE_VERSION: i16 = 12;

/// Encodes `response` as a size-prefixed frame in pieces, records sent from their buffers.
pub fn encode_fetch_response(
    correlation_id: i32,
    version: i16,
    mut response: FetchResponse,
) -> Result<Vec<Bytes>, FrameError> {
    let mut swapped: Vec<([u8; MARKER_BYTES], Bytes)> = Vec::new();
    for topic in &mut response.responses {
        for partition in &mut topic.partitions {
            if let Some(records) = partition.records.take_if(|r| !r.is_empty()) {
                let marker = *uuid::Uuid::new_v4().as_bytes();
                partition.records = Some(Bytes::copy_from_slice(&marker));
                swapped.push((marker, records));
            }
        }
    }
    let small = encode_response(ApiKey::Fetch, correlation_id, version, &response)?;
    if swapped.is_empty() {
        return Ok(vec![small]);
    }
    let flexible = version >= FIRST_FLEXIBLE_VERSION;
    let marker_prefix: Vec<u8> = length_prefix(MARKER_BYTES, flexible);
    let mut pieces = Vec::with_capacity(2 * swapped.len() + 1);
    let mut cursor = 0;
    let mut total = small.len() - 4;
    for (marker, records) in swapped {
        let at = find(&small[cursor..], &marker)
            .map(|i| cursor + i)
            .ok_or_else(|| encode_error(version, "record marker not found in encoded fetch response"))?;
        let prefix_at = at
            .checked_sub(marker_prefix.len())
            .filter(|p| small[*p..at] == marker_prefix[..] && *p >= cursor)
            .ok_or_else(|| encode_error(version, "record marker without its length prefix"))?;
        let mut head = BytesMut::from(&small[cursor..prefix_at]);
        head.put_slice(&length_prefix(records.len(), flexible));
        total = total - marker_prefix.len() - MARKER_BYTES + (head.len() - (prefix_at - cursor)) + records.len();
        pieces.push(head.freeze());
        pieces.push(records);
        cursor = at + MARKER_BYTES;
    }
    pieces.push(small.slice(cursor..));
    // The codec sized the frame for the markers; write the real size.
    let size = i32::try_from(total).map_err(|_| encode_error(version, "fetch response larger than 2 GiB"))?;
    let mut first = BytesMut::from(&pieces[0][..]);
    (&mut first[0..4]).put_i32(size);
    pieces[0] = first.freeze();
    Ok(pieces)
}

fn length_prefix(len: usize, flexible: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(5);
    if flexible {
        let mut value = len as u64 + 1;
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    } else {
        out.put_i32(len as i32);
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn encode_error(version: i16, message: &str) -> FrameError {
    FrameError::Encode { api: ApiKey::Fetch, version, message: message.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;

    fn response(sizes: &[usize]) -> FetchResponse {
        let mut topic = FetchableTopicResponse::default();
        topic.topic = TopicName(StrBytes::from_static_str("events"));
        for (i, size) in sizes.iter().enumerate() {
            let mut partition = PartitionData::default();
            partition.partition_index = i as i32;
            partition.high_watermark = 1000 + i as i64;
            partition.last_stable_offset = 1000 + i as i64;
            partition.log_start_offset = 0;
            partition.aborted_transactions =
                if i % 2 == 0 { Some(Vec::new()) } else { Some(vec![AbortedTransaction::default()]) };
            partition.records = Some(Bytes::from((0..*size).map(|b| (b * 7 % 251) as u8).collect::<Vec<u8>>()));
            topic.partitions.push(partition);
        }
        let mut response = FetchResponse::default();
        response.responses = vec![topic];
        response
    }

    #[test]
    fn pieces_are_byte_for_byte_the_codec_encoding_at_every_version() {
        // Sizes straddle the varint boundaries of compact lengths (127/128, 16383/16384).
        let sizes = [0usize, 1, 126, 127, 128, 16_383, 16_384, 70_000];
        for version in 4..=16i16 {
            let reference = encode_response(ApiKey::Fetch, 9, version, &response(&sizes)).expect("codec encodes");
            let pieces = encode_fetch_response(9, version, response(&sizes)).expect("pieces encode");
            let joined: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
            assert_eq!(joined.len(), reference.len(), "v{version}");
            assert!(joined == reference[..], "v{version}: pieces differ from the codec's frame");
        }
    }

    #[test]
    fn responses_without_records_are_one_piece() {
        let pieces = encode_fetch_response(1, 11, response(&[0, 0])).expect("encodes");
        assert_eq!(pieces.len(), 1);
    }
}
