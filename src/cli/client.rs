//! One TCP connection to one Kafka broker: framing, correlation ids and version negotiation.
//!
//! A request is `size (i32 BE) | request header | body`; a response is
//! `size | response header | body`. The connection is strictly request/response (we never
//! pipeline), so a correlation id mismatch means the stream is out of sync and is fatal.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{encode_request_header_into_buffer, Decodable, Encodable, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a TCP connect may take before we try the next bootstrap address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Upper bound on one request/response round trip. Long enough for a broker under load,
/// short enough that a wedged broker does not hang a shell script forever. Fetches wait at
/// most a second on the broker side, so they fit comfortably.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest response frame we accept. Fetches ask for at most `consume::FETCH_MAX_BYTES`
/// (a few MiB); anything far beyond that is a corrupt size prefix, not data, and allocating it
/// would let a broken peer exhaust our memory.
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The largest request we send; produce batches are capped well below this.
const REQUEST_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Kafka's UNSUPPORTED_VERSION: an ApiVersions request newer than the broker knows is
/// answered with this code and a v0-encoded body listing what the broker does support.
const UNSUPPORTED_VERSION: i16 = 35;

/// The newest ApiVersions we speak; v3 adds the client software name and tagged fields.
const API_VERSIONS_VERSION_MAX: i16 = 3;

const CLIENT_ID: &str = "runnel-cli";

/// The highest version of each API whose fields this client fills in correctly. Lower bounds
/// are the oldest versions we can encode at all (e.g. Produce needs record batches, v3+).
/// Versions above a cap change field meaning (Fetch/Produce v13 address topics by id only).
const CLIENT_VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    // `runnel group`: v4 batches FindCoordinator keys; OffsetFetch v8 batches groups (not used).
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::OffsetFetch, 2, 7),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::DeleteGroups, 0, 2),
];

/// A connected, version-negotiated broker connection.
pub(crate) struct Client {
    stream: TcpStream,
    address: String,
    next_correlation_id: i32,
    /// The version chosen for each API both sides speak; absent means unusable.
    versions: HashMap<ApiKey, i16>,
}

impl Client {
    /// Connects to the first reachable address of a comma-separated bootstrap list.
    pub(crate) async fn connect_any(brokers: &str) -> Result<Client> {
        let addresses = parse_broker_list(brokers)?;
        let mut failures = Vec::with_capacity(addresses.len());
        for address in &addresses {
            match Client::connect(address).await {
                Ok(client) => return Ok(client),
                Err(error) => failures.push(format!("{error:#}")),
            }
        }
        bail!("could not connect to any broker: {}", failures.join("; "))
    }

    /// Connects to one `host:port` and negotiates API versions.
    pub(crate) async fn connect(address: &str) -> Result<Client> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| anyhow::anyhow!("timed out after {CONNECT_TIMEOUT:?}"))
            .and_then(|result| result.map_err(anyhow::Error::from))
            .with_context(|| format!("connecting to {address}"))?;
        // Requests are small and written whole; Nagle would only add latency.
        stream.set_nodelay(true).with_context(|| format!("configuring socket to {address}"))?;
        let mut client =
            Client { stream, address: address.to_string(), next_correlation_id: 0, versions: HashMap::new() };
        let broker_ranges =
            client.fetch_api_versions().await.with_context(|| format!("negotiating API versions with {address}"))?;
        client.versions = negotiate(&broker_ranges);
        Ok(client)
    }

    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// The version to use for `api`, or an error naming both sides' ranges.
    pub(crate) fn version(&self, api: ApiKey) -> Result<i16> {
        if let Some(version) = self.versions.get(&api) {
            return Ok(*version);
        }
        match client_range(api) {
            Some((min, max)) => bail!(
                "broker {} does not support {api:?} versions {min}..={max} that this client implements",
                self.address
            ),
            None => bail!("this client does not implement {api:?}"),
        }
    }

    /// Sends `request` at `version` and decodes the response.
    pub(crate) async fn send<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        let api = api_key_of::<R>()?;
        let mut body = self
            .round_trip(api, version, request)
            .await
            .with_context(|| format!("{api:?} v{version} request to {}", self.address))?;
        R::Response::decode(&mut body, version)
            .with_context(|| format!("decoding {api:?} v{version} response from {}", self.address))
    }

    /// Sends `request` for which the broker sends no response (Produce with acks=0).
    pub(crate) async fn send_without_response<R: Request>(&mut self, request: &R, version: i16) -> Result<()> {
        let api = api_key_of::<R>()?;
        let correlation_id = self.take_correlation_id();
        let frame = encode_frame(api, version, correlation_id, request)?;
        tokio::time::timeout(REQUEST_TIMEOUT, self.stream.write_all(&frame))
            .await
            .map_err(|_| anyhow::anyhow!("timed out writing to {}", self.address))?
            .with_context(|| format!("writing {api:?} request to {}", self.address))
    }

    /// Flushes and half-closes the connection so that fire-and-forget requests are delivered
    /// before the process exits.
    pub(crate) async fn shutdown(&mut self) -> Result<()> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.stream.shutdown())
            .await
            .map_err(|_| anyhow::anyhow!("timed out closing connection to {}", self.address))?
            .with_context(|| format!("closing connection to {}", self.address))
    }

    /// Writes one request and reads its response, returning the body after the header.
    async fn round_trip<R: Encodable>(&mut self, api: ApiKey, version: i16, request: &R) -> Result<Bytes> {
        let correlation_id = self.take_correlation_id();
        let frame = encode_frame(api, version, correlation_id, request)?;
        let exchange = async {
            self.stream.write_all(&frame).await.context("writing request")?;
            read_frame(&mut self.stream).await
        };
        let mut response = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("no response within {REQUEST_TIMEOUT:?}"))??;
        let header = ResponseHeader::decode(&mut response, api.response_header_version(version))
            .context("decoding response header")?;
        ensure!(
            header.correlation_id == correlation_id,
            "response correlation id {} does not match request {correlation_id}",
            header.correlation_id
        );
        Ok(response)
    }

    /// Asks the broker which versions of each API it serves.
    async fn fetch_api_versions(&mut self) -> Result<HashMap<ApiKey, (i16, i16)>> {
        let mut request = ApiVersionsRequest::default();
        request.client_software_name = StrBytes::from_static_str(CLIENT_ID);
        request.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let mut body = self.round_trip(ApiKey::ApiVersions, API_VERSIONS_VERSION_MAX, &request).await?;
        // Every ApiVersions response version starts with the error code, so we can look at it
        // before choosing how to decode: an older broker answers in v0 with UNSUPPORTED_VERSION.
        ensure!(body.len() >= 2, "ApiVersions response is only {} bytes", body.len());
        let error_code = i16::from_be_bytes([body[0], body[1]]);
        let decode_version = if error_code == UNSUPPORTED_VERSION { 0 } else { API_VERSIONS_VERSION_MAX };
        let response =
            ApiVersionsResponse::decode(&mut body, decode_version).context("decoding ApiVersions response")?;
        if response.error_code != 0 && response.error_code != UNSUPPORTED_VERSION {
            bail!("ApiVersions failed: {}", super::error::describe(response.error_code, None));
        }
        let mut ranges = HashMap::new();
        for api in &response.api_keys {
            if let Ok(key) = ApiKey::try_from(api.api_key) {
                ranges.insert(key, (api.min_version, api.max_version));
            }
        }
        Ok(ranges)
    }

    fn take_correlation_id(&mut self) -> i32 {
        let id = self.next_correlation_id;
        // Wrapping is harmless: only the one in-flight request has to match.
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        id
    }
}

/// Splits `host:port,host:port` into addresses, rejecting empty entries.
pub(crate) fn parse_broker_list(brokers: &str) -> Result<Vec<String>> {
    let addresses: Vec<String> =
        brokers.split(',').map(str::trim).filter(|address| !address.is_empty()).map(str::to_string).collect();
    ensure!(!addresses.is_empty(), "no broker address given (--brokers or RUNNEL_BROKERS)");
    for address in &addresses {
        ensure!(
            address.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()),
            "broker address '{address}' is not host:port"
        );
    }
    Ok(addresses)
}

/// For each API we implement, the highest version inside both our range and the broker's.
fn negotiate(broker_ranges: &HashMap<ApiKey, (i16, i16)>) -> HashMap<ApiKey, i16> {
    let mut chosen = HashMap::new();
    for (api, client_min, client_max) in CLIENT_VERSIONS {
        // Never exceed what the codec itself can encode, whatever our table says.
        let codec = api.valid_versions();
        let Some((broker_min, broker_max)) = broker_ranges.get(api) else { continue };
        let high = (*client_max).min(*broker_max).min(codec.max);
        let low = (*client_min).max(*broker_min).max(codec.min);
        if low <= high {
            chosen.insert(*api, high);
        }
    }
    chosen
}

fn client_range(api: ApiKey) -> Option<(i16, i16)> {
    CLIENT_VERSIONS.iter().find(|(key, _, _)| *key == api).map(|(_, min, max)| (*min, *max))
}

fn api_key_of<R: Request>() -> Result<ApiKey> {
    ApiKey::try_from(R::KEY).map_err(|()| anyhow::anyhow!("unknown API key {}", R::KEY))
}

/// Encodes `size | header | body` for one request.
fn encode_frame<R: Encodable>(api: ApiKey, version: i16, correlation_id: i32, request: &R) -> Result<Bytes> {
    let mut header = RequestHeader::default();
    header.request_api_key = api as i16;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_static_str(CLIENT_ID));
    let mut frame = BytesMut::new();
    frame.put_i32(0); // size placeholder, patched below once the length is known
    encode_request_header_into_buffer(&mut frame, &header).context("encoding request header")?;
    request.encode(&mut frame, version).with_context(|| format!("encoding {api:?} v{version} request"))?;
    let size = frame.len() - 4;
    ensure!(size <= REQUEST_BYTES_MAX, "{api:?} request is {size} bytes, above the {REQUEST_BYTES_MAX} byte limit");
    let size = i32::try_from(size).context("request size overflows i32")?;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    Ok(frame.freeze())
}

/// Reads one size-prefixed frame, refusing sizes outside `1..=RESPONSE_BYTES_MAX`.
async fn read_frame(stream: &mut TcpStream) -> Result<Bytes> {
    let mut size_bytes = [0u8; 4];
    stream.read_exact(&mut size_bytes).await.map_err(|error| match error.kind() {
        std::io::ErrorKind::UnexpectedEof => anyhow::anyhow!("broker closed the connection"),
        _ => anyhow::Error::from(error).context("reading response size"),
    })?;
    let size = (&size_bytes[..]).get_i32();
    ensure!(size > 0, "response size {size} is not positive");
    let size = usize::try_from(size).context("response size")?;
    ensure!(size <= RESPONSE_BYTES_MAX, "response of {size} bytes exceeds the {RESPONSE_BYTES_MAX} byte limit");
    let mut frame = vec![0u8; size];
    stream.read_exact(&mut frame).await.context("reading response body")?;
    Ok(Bytes::from(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_the_highest_common_version_within_our_cap() {
        let broker: HashMap<ApiKey, (i16, i16)> = [
            (ApiKey::Produce, (0, 11)),
            (ApiKey::Fetch, (4, 16)),
            (ApiKey::Metadata, (0, 5)),
            (ApiKey::DeleteTopics, (7, 9)),
        ]
        .into_iter()
        .collect();
        let chosen = negotiate(&broker);
        assert_eq!(chosen.get(&ApiKey::Produce), Some(&11));
        // Fetch v13+ addresses topics by id, which we do not fill in.
        assert_eq!(chosen.get(&ApiKey::Fetch), Some(&12));
        assert_eq!(chosen.get(&ApiKey::Metadata), Some(&5));
        // No overlap: unusable rather than a version the broker would reject.
        assert_eq!(chosen.get(&ApiKey::DeleteTopics), None);
        // Not advertised by the broker at all.
        assert_eq!(chosen.get(&ApiKey::CreateTopics), None);
    }

    #[test]
    fn broker_list_is_split_and_validated() {
        assert_eq!(parse_broker_list(" a:1, b:2 ,").expect("valid list"), vec!["a:1".to_string(), "b:2".to_string()]);
        assert!(parse_broker_list("").is_err());
        assert!(parse_broker_list("localhost").is_err());
        assert!(parse_broker_list("localhost:notaport").is_err());
    }

    /// A one-connection fake broker: answers the first request with `respond(correlation_id)`.
    async fn fake_broker(respond: impl FnOnce(i32) -> BytesMut + Send + 'static) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut size = [0u8; 4];
            socket.read_exact(&mut size).await.expect("size");
            let mut request = vec![0u8; usize::try_from(i32::from_be_bytes(size)).expect("size")];
            socket.read_exact(&mut request).await.expect("request");
            let correlation_id = i32::from_be_bytes([request[4], request[5], request[6], request[7]]);
            let body = respond(correlation_id);
            let mut frame = BytesMut::new();
            frame.put_i32(i32::try_from(body.len()).expect("small"));
            frame.extend_from_slice(&body);
            socket.write_all(&frame).await.expect("write");
            // Keep the socket open until the client is done with it.
            let mut rest = Vec::new();
            let _ = socket.read_to_end(&mut rest).await;
        });
        address
    }

    fn api_versions_v0_reply(correlation_id: i32, error_code: i16) -> BytesMut {
        use kafka_protocol::messages::api_versions_response::ApiVersion;
        let mut body = BytesMut::new();
        let mut header = ResponseHeader::default();
        header.correlation_id = correlation_id;
        header.encode(&mut body, 0).expect("header");
        let mut response = ApiVersionsResponse::default();
        response.error_code = error_code;
        let mut metadata = ApiVersion::default();
        metadata.api_key = ApiKey::Metadata as i16;
        metadata.min_version = 0;
        metadata.max_version = 7;
        response.api_keys = vec![metadata];
        response.encode(&mut body, 0).expect("body");
        body
    }

    #[tokio::test]
    async fn an_old_broker_answering_unsupported_version_in_v0_is_understood() {
        let address = fake_broker(|correlation_id| api_versions_v0_reply(correlation_id, UNSUPPORTED_VERSION)).await;
        let client = Client::connect(&address).await.expect("negotiates from the v0 fallback body");
        assert_eq!(client.version(ApiKey::Metadata).expect("metadata usable"), 7);
        let missing = client.version(ApiKey::Fetch).expect_err("fetch not advertised");
        assert!(format!("{missing:#}").contains(&address), "{missing:#}");
    }

    #[tokio::test]
    async fn a_mismatched_correlation_id_is_an_error() {
        let address = fake_broker(|correlation_id| api_versions_v0_reply(correlation_id + 1, 0)).await;
        let error = Client::connect(&address).await.err().expect("must fail");
        assert!(format!("{error:#}").contains("correlation id"), "{error:#}");
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_address() {
        // Bind then drop to get a port that is (almost certainly) closed.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        drop(listener);
        let error = Client::connect_any(&address).await.err().expect("must fail");
        assert!(format!("{error:#}").contains(&address), "{error:#}");
    }

    #[test]
    fn frame_size_prefix_counts_everything_after_itself() {
        let request = ApiVersionsRequest::default();
        let frame = encode_frame(ApiKey::ApiVersions, 0, 7, &request).expect("encodes");
        let size = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        assert_eq!(usize::try_from(size).expect("positive"), frame.len() - 4);
        // api key, api version, correlation id follow the size.
        assert_eq!(&frame[4..6], &(ApiKey::ApiVersions as i16).to_be_bytes());
        assert_eq!(&frame[6..8], &0i16.to_be_bytes());
        assert_eq!(&frame[8..12], &7i32.to_be_bytes());
    }
}
