//! A small HTTP/1.1 client for the admin API (`--admin`), used by `runnel transform ...` and
//! `runnel connector ...`.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The admin API answers small JSON documents; a body beyond this is a misconfigured address.
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// One request to the admin API; returns the status and body, or an error naming the address.
pub(crate) async fn request(
    admin: &str,
    method: hyper::Method,
    path_and_query: &str,
    body: Bytes,
) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let (status, _, body) = request_with_headers(admin, method, path_and_query, body).await?;
    Ok((status, body))
}

/// Like [`request`], also returning the response headers (`runnel sql` reads its stats there).
pub(crate) async fn request_with_headers(
    admin: &str,
    method: hyper::Method,
    path_and_query: &str,
    body: Bytes,
) -> anyhow::Result<(hyper::StatusCode, hyper::HeaderMap, Bytes)> {
    let base = admin.trim_end_matches('/');
    let base = if base.contains("://") { base.to_string() } else { format!("http://{base}") };
    let uri: hyper::Uri =
        format!("{base}{path_and_query}").parse().with_context(|| format!("bad --admin address {admin:?}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = hyper::Request::builder()
        .method(method)
        .uri(uri.clone())
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .body(Full::new(body))
        .context("building the admin request")?;
    let response = client
        .request(request)
        .await
        .with_context(|| format!("cannot reach the admin API at {base} (is runnel serve running? see --admin)"))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = http_body_util::Limited::new(response.into_body(), RESPONSE_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the admin response from {uri}: {e}"))?
        .to_bytes();
    Ok((status, headers, body))
}

/// Turns a non-2xx answer into an error carrying the server's `{"error": ...}` message.
pub(crate) fn check(status: hyper::StatusCode, body: &Bytes) -> anyhow::Result<()> {
    if status.is_success() {
        return Ok(());
    }
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        // Runnel's `{"error": ...}`, or Kafka Connect's `{"error_code": ..., "message": ...}`.
        .and_then(|v| v.get("error").or_else(|| v.get("message")).and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    // One line, whatever the server wrote.
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    anyhow::bail!("{message} (HTTP {})", status.as_u16())
}
