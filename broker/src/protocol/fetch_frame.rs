//! Fetch responses without copying their records into the frame.
//!
//! A fetch response is mostly record bytes already read from a segment. Encoding it with the
//! codec would copy every byte into the frame buffer once more. Instead each non-empty record
//! set is swapped for a 16-byte random marker, the (now small) response is encoded by the
//! codec as usual, and the frame is split at each marker: the marker and its length prefix are
//! replaced by the real prefix and the record set's own buffer — or, for records still in a
//! segment, by the file range itself, which the connection sends with `sendfile` (no copy
//! through user space at all). The connection then writes the pieces in order.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, FetchResponse};

use super::frame::{encode_response, FrameError};
use crate::storage::{FetchSlice, StorageError};

/// One piece of a response frame: bytes in memory, or whole batches still in a segment file.
#[derive(Debug, Clone)]
pub enum Piece {
    Bytes(Bytes),
    File(FetchSlice),
}

impl Piece {
    pub fn len(&self) -> usize {
        match self {
            Piece::Bytes(bytes) => bytes.len(),
            Piece::File(slice) => slice.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The piece's bytes in memory (reads a file piece): for callers without a socket.
    pub fn into_bytes(self) -> Result<Bytes, StorageError> {
        match self {
            Piece::Bytes(bytes) => Ok(bytes),
            Piece::File(slice) => slice.read(),
        }
    }
}

/// Joins pieces into one frame in memory.
pub fn concat(pieces: Vec<Piece>) -> Result<Bytes, StorageError> {
    let mut out = BytesMut::with_capacity(pieces.iter().map(Piece::len).sum());
    for piece in pieces {
        out.put_slice(&piece.into_bytes()?);
    }
    Ok(out.freeze())
}

const MARKER_BYTES: usize = 16;
/// Flexible versions (v12+) use compact (varint length + 1) byte strings.
const FIRST_FLEXIBLE_VERSION: i16 = 12;

/// Encodes `response` as a size-prefixed frame in pieces, records sent from their buffers.
/// `files[i]`, when present and not empty, holds the records of the i-th partition of the
/// response (topics, then partitions, in order) in place of that partition's `records`.
pub fn encode_fetch_response(
    correlation_id: i32,
    version: i16,
    mut response: FetchResponse,
    mut files: Vec<Option<FetchSlice>>,
) -> Result<Vec<Piece>, FrameError> {
    let mut swapped: Vec<([u8; MARKER_BYTES], Piece)> = Vec::new();
    let mut index = 0;
    for topic in &mut response.responses {
        for partition in &mut topic.partitions {
            let file = files.get_mut(index).and_then(Option::take).filter(|f| !f.is_empty());
            index += 1;
            let piece = match file {
                Some(file) => Piece::File(file),
                None => match partition.records.take_if(|r| !r.is_empty()) {
                    Some(records) => Piece::Bytes(records),
                    None => continue,
                },
            };
            let marker = *uuid::Uuid::new_v4().as_bytes();
            partition.records = Some(Bytes::copy_from_slice(&marker));
            swapped.push((marker, piece));
        }
    }
    let small = encode_response(ApiKey::Fetch, correlation_id, version, &response)?;
    if swapped.is_empty() {
        return Ok(vec![Piece::Bytes(small)]);
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
        pieces.push(Piece::Bytes(head.freeze()));
        pieces.push(records);
        cursor = at + MARKER_BYTES;
    }
    pieces.push(Piece::Bytes(small.slice(cursor..)));
    // The codec sized the frame for the markers; write the real size into the first piece
    // (always bytes: the frame's head).
    let size = i32::try_from(total).map_err(|_| encode_error(version, "fetch response larger than 2 GiB"))?;
    if let Some(Piece::Bytes(first)) = pieces.first_mut() {
        let mut patched = BytesMut::from(&first[..]);
        (&mut patched[0..4]).put_i32(size);
        *first = patched.freeze();
    }
    debug_assert_eq!(pieces.iter().map(Piece::len).sum::<usize>(), total + 4);
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
            let pieces = encode_fetch_response(9, version, response(&sizes), Vec::new()).expect("pieces encode");
            let joined = concat(pieces).expect("joined");
            assert_eq!(joined.len(), reference.len(), "v{version}");
            assert!(joined == reference[..], "v{version}: pieces differ from the codec's frame");
        }
    }

    #[test]
    fn file_pieces_frame_exactly_like_their_bytes() {
        use crate::protocol::batch::tests::sample_batch;
        use crate::storage::{PartitionLog, SystemClock};
        let dir = tempfile::tempdir().expect("tempdir");
        let config = crate::config::BrokerConfig::default().log_config(&Default::default());
        let mut log = PartitionLog::open(dir.path(), config, std::sync::Arc::new(SystemClock)).expect("log");
        for i in 0..20 {
            log.append(&sample_batch(3, i, &vec![b'r'; 200 + 50 * i as usize])).expect("append");
        }
        // A file piece for partitions 0 and 2; partition 1 keeps in-memory records.
        let slices = [log.read(0, 1_000).expect("read"), log.read(30, 1 << 20).expect("read")];
        let [Some(first), Some(second)] = slices else { panic!("both slices have data") };
        for version in [4i16, 11, 12, 16] {
            let mut reference = response(&[0, 300, 0]);
            let partitions = &mut reference.responses[0].partitions;
            partitions[0].records = Some(first.read().expect("reads"));
            partitions[2].records = Some(second.read().expect("reads"));
            let expected = encode_response(ApiKey::Fetch, 9, version, &reference).expect("codec encodes");
            let files = vec![Some(first.clone()), None, Some(second.clone())];
            let pieces = encode_fetch_response(9, version, response(&[0, 300, 0]), files).expect("pieces");
            assert_eq!(pieces.iter().filter(|p| matches!(p, Piece::File(_))).count(), 2, "records stay in the file");
            assert!(
                concat(pieces).expect("joined") == expected,
                "v{version}: file pieces differ from the codec's frame"
            );
        }
    }

    #[test]
    fn responses_without_records_are_one_piece() {
        let pieces = encode_fetch_response(1, 11, response(&[0, 0]), Vec::new()).expect("encodes");
        assert_eq!(pieces.len(), 1);
    }
}
