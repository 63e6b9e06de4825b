//! Request frames: the size-prefixed envelope, the request header, and response encoding.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};

/// Smallest request: api key (2), api version (2), correlation id (4).
pub const MIN_REQUEST_BYTES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("request of {bytes} bytes is shorter than a request header")]
    TooShort { bytes: usize },
    #[error("unknown API key {api_key}")]
    UnknownApiKey { api_key: i16 },
    #[error("malformed request header: {message}")]
    BadHeader { message: String },
    #[error("malformed {api:?} v{version} request: {message}")]
    BadBody { api: ApiKey, version: i16, message: String },
    #[error("cannot encode {api:?} v{version} response: {message}")]
    Encode { api: ApiKey, version: i16, message: String },
}

/// A request whose header is decoded and whose body is still bytes.
#[derive(Debug)]
pub struct RequestFrame {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub header: RequestHeader,
    pub body: Bytes,
}

/// The api key and version at the front of a frame, read before anything else.
pub fn peek_api(frame: &[u8]) -> Result<(i16, i16, i32), FrameError> {
    if frame.len() < MIN_REQUEST_BYTES {
        return Err(FrameError::TooShort { bytes: frame.len() });
    }
    let mut b = frame;
    Ok((b.get_i16(), b.get_i16(), b.get_i32()))
}

/// Decodes the request header. An ApiVersions request of a version we do not know is read
/// with the v1 header (no tagged fields), so we can answer it in the v0 format as Kafka does.
pub fn decode_request(mut frame: Bytes) -> Result<RequestFrame, FrameError> {
    let (raw_key, api_version, _) = peek_api(&frame)?;
    let api_key = ApiKey::try_from(raw_key).map_err(|_| FrameError::UnknownApiKey { api_key: raw_key })?;
    let codec = api_key.valid_versions();
    let header_version = if api_version > codec.max || api_version < codec.min {
        1
    } else {
        api_key.request_header_version(api_version)
    };
    let header = guarded(|| RequestHeader::decode(&mut frame, header_version))
        .map_err(|message| FrameError::BadHeader { message })?;
    Ok(RequestFrame { api_key, api_version, header, body: frame })
}

/// Decodes a request body of a known type, turning any codec failure into an error.
pub fn decode_body<T: Decodable>(frame: &RequestFrame) -> Result<T, FrameError> {
    let mut body = frame.body.clone();
    guarded(|| T::decode(&mut body, frame.api_version)).map_err(|message| FrameError::BadBody {
        api: frame.api_key,
        version: frame.api_version,
        message,
    })
}

/// Runs a codec call, catching a panic inside the codec as an error: a client's bytes must
/// never take the broker down, whatever the codec's internals do with them.
fn guarded<T>(decode: impl FnOnce() -> anyhow::Result<T>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("codec panicked on malformed input".to_string()),
    }
}

/// Encodes a size-prefixed response frame.
pub fn encode_response<R: Encodable + HeaderVersion>(
    api: ApiKey,
    correlation_id: i32,
    version: i16,
    response: &R,
) -> Result<Bytes, FrameError> {
    let encode_error = |e: anyhow::Error| FrameError::Encode { api, version, message: e.to_string() };
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    let header_version = R::header_version(version);
    // Sized up front: fetch responses carry megabytes of records, and growing the buffer by
    // doubling would copy them again on every step.
    let body_bytes = response.compute_size(version).map_err(encode_error)?;
    let mut buf = BytesMut::with_capacity(4 + 16 + body_bytes);
    buf.put_i32(0);
    header.encode(&mut buf, header_version).map_err(encode_error)?;
    response.encode(&mut buf, version).map_err(encode_error)?;
    let size = (buf.len() - 4) as i32;
    (&mut buf[0..4]).put_i32(size);
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ApiVersionsRequest;
    use kafka_protocol::protocol::{encode_request_header_into_buffer, StrBytes};

    fn request_bytes(version: i16) -> Bytes {
        let mut buf = BytesMut::new();
        let mut header = RequestHeader::default();
        header.request_api_key = ApiKey::ApiVersions as i16;
        header.request_api_version = version;
        header.correlation_id = 7;
        header.client_id = Some(StrBytes::from_static_str("test"));
        encode_request_header_into_buffer(&mut buf, &header).expect("encode header");
        let mut body = ApiVersionsRequest::default();
        body.client_software_name = StrBytes::from_static_str("t");
        body.client_software_version = StrBytes::from_static_str("1");
        body.encode(&mut buf, version).expect("encode body");
        buf.freeze()
    }

    #[test]
    fn decodes_a_flexible_header_and_body() {
        let frame = decode_request(request_bytes(3)).expect("decodes");
        assert_eq!(frame.header.correlation_id, 7);
        let body: ApiVersionsRequest = decode_body(&frame).expect("body");
        assert_eq!(body.client_software_name.as_str(), "t");
    }

    #[test]
    fn every_prefix_of_a_request_fails_cleanly() {
        let whole = request_bytes(3);
        for len in 0..whole.len() {
            if let Ok(frame) = decode_request(whole.slice(..len)) {
                let _ = decode_body::<ApiVersionsRequest>(&frame);
            }
        }
    }

    #[test]
    fn unknown_api_key_is_an_error() {
        let bytes = Bytes::from_static(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1]);
        assert!(matches!(decode_request(bytes), Err(FrameError::UnknownApiKey { .. })));
    }
}
