//! HTTP ingest (`http-source`): listens on its own address (`http.listen`, e.g.
//! `127.0.0.1:8090`). `POST /` (or `/records`) with a JSON array body makes one record per
//! element (each re-serialized compactly); any other body is one record. The key comes from the
//! `key` query parameter or the `X-Runnel-Key` header.
//!
//! Backpressure: requests wait in a bounded queue (`http.queue.max` requests); when it is full
//! the answer is 429 with `Retry-After`. A request is answered 200 only after its records are
//! appended and fsynced (exactly once: they are part of a committed checkpoint); a request that
//! gets no answer (crash, task stopped) may be retried by the client.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes as BodyBytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use runnel_broker::Broker;
use tokio::sync::{mpsc, oneshot};

use super::{Polled, Source, SourceRecord};
use crate::connect::config::{invalid, Settings};
use crate::connect::ConnectError;

const QUEUE_DEFAULT: u64 = 64;
/// Bounds on the queue and a body: together they bound what waits in memory.
const QUEUE_MAX: u64 = 10_000;
const BODY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// How long a poll waits for a request before reporting "nothing yet".
const POLL_WAIT: Duration = Duration::from_millis(100);
/// A client answered 429 is told to come back after this many seconds.
const RETRY_AFTER_S: &str = "1";

#[derive(Debug, Clone)]
pub(crate) struct HttpSettings {
    listen: SocketAddr,
    topic: String,
    queue: usize,
}

/// One request waiting to be written.
struct Ingest {
    records: Vec<SourceRecord>,
    done: oneshot::Sender<usize>,
}

pub(crate) struct HttpIngest {
    settings: HttpSettings,
    broker: std::sync::Arc<Broker>,
    queue: Option<mpsc::Receiver<Ingest>>,
    server: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    /// Requests in the last poll, answered once it is committed.
    waiting: Vec<(oneshot::Sender<usize>, usize)>,
    /// A request taken from the queue that did not fit the last poll.
    held: Option<Ingest>,
    ingested: u64,
}

impl HttpIngest {
    pub(crate) fn settings(settings: Settings<'_>) -> Result<HttpSettings, ConnectError> {
        let listen = settings.required("http.listen")?;
        let listen: SocketAddr = listen
            .parse()
            .map_err(|_| invalid(format!("http.listen {listen:?}: expected host:port, e.g. 127.0.0.1:8090")))?;
        let queue = settings.u64_or("http.queue.max", QUEUE_DEFAULT)?;
        if queue == 0 || queue > QUEUE_MAX {
            return Err(invalid(format!("http.queue.max must be 1 to {QUEUE_MAX}")));
        }
        Ok(HttpSettings { listen, topic: settings.required("topic")?.to_string(), queue: queue as usize })
    }

    pub(crate) fn new(settings: Settings<'_>, broker: &std::sync::Arc<Broker>) -> Result<HttpIngest, ConnectError> {
        Ok(HttpIngest {
            settings: HttpIngest::settings(settings)?,
            broker: std::sync::Arc::clone(broker),
            queue: None,
            server: None,
            waiting: Vec::new(),
            held: None,
            ingested: 0,
        })
    }
}

impl Drop for HttpIngest {
    fn drop(&mut self) {
        if let Some((stop, _)) = self.server.take() {
            let _ = stop.send(());
        }
    }
}

#[derive(Clone)]
struct Ingress {
    queue: mpsc::Sender<Ingest>,
    broker: std::sync::Arc<Broker>,
}

impl Source for HttpIngest {
    fn topic(&self) -> &str {
        &self.settings.topic
    }

    async fn open(&mut self, position: Option<&serde_json::Value>) -> Result<(), ConnectError> {
        self.ingested = position.and_then(|p| p.get("ingested")).and_then(|n| n.as_u64()).unwrap_or(0);
        if self.server.is_some() {
            return Ok(());
        }
        let listener = tokio::net::TcpListener::bind(self.settings.listen)
            .await
            .map_err(|e| ConnectError::Io(format!("http.listen {}: {e}", self.settings.listen)))?;
        let (sender, receiver) = mpsc::channel(self.settings.queue);
        let app = Router::new()
            .route("/", post(ingest))
            .route("/records", post(ingest))
            .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
            .with_state(Ingress { queue: sender, broker: std::sync::Arc::clone(&self.broker) });
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "http source server failed");
            }
        });
        tracing::info!(listen = %self.settings.listen, topic = %self.settings.topic, "http source listening");
        self.queue = Some(receiver);
        self.server = Some((stop, handle));
        Ok(())
    }

    async fn poll(&mut self, max: usize) -> Result<Option<Polled>, ConnectError> {
        let queue = self.queue.as_mut().ok_or_else(|| ConnectError::Internal("http source not open".into()))?;
        let first = match self.held.take() {
            Some(held) => held,
            None => match tokio::time::timeout(POLL_WAIT, queue.recv()).await {
                Ok(Some(ingest)) => ingest,
                Ok(None) | Err(_) => return Ok(None),
            },
        };
        let mut records = Vec::new();
        let mut next = Some(first);
        while let Some(ingest) = next.take() {
            // A request's records stay together in one poll; the first always fits.
            if !records.is_empty() && records.len() + ingest.records.len() > max {
                self.held = Some(ingest);
                break;
            }
            self.waiting.push((ingest.done, ingest.records.len()));
            records.extend(ingest.records);
            next = queue.try_recv().ok();
        }
        self.ingested += records.len() as u64;
        Ok(Some(Polled { records, position: serde_json::json!({ "ingested": self.ingested }) }))
    }

    fn idle(&self) -> Duration {
        Duration::ZERO // poll already waited for a request
    }

    fn needs_fsync(&self) -> bool {
        true
    }

    fn committed(&mut self) {
        for (done, count) in self.waiting.drain(..) {
            let _ = done.send(count);
        }
    }
}

async fn ingest(
    State(ingress): State<Ingress>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: BodyBytes,
) -> Response {
    let query = query.unwrap_or_default();
    let key = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "key")
        .map(|(_, v)| Bytes::from(v.into_owned()))
        .or_else(|| headers.get("x-runnel-key").map(|v| Bytes::copy_from_slice(v.as_bytes())));
    let now = ingress.broker.now_ms();
    let record =
        |value: Bytes| SourceRecord { timestamp_ms: now, key: key.clone(), value: Some(value), headers: Vec::new() };
    let records: Vec<SourceRecord> = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Array(items)) => items.iter().map(|item| record(Bytes::from(item.to_string()))).collect(),
        _ => vec![record(Bytes::copy_from_slice(&body))],
    };
    if records.is_empty() {
        return answer(StatusCode::OK, serde_json::json!({ "records": 0 }));
    }
    let (done, written) = oneshot::channel();
    match ingress.queue.try_send(Ingest { records, done }) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            let mut response = answer(
                StatusCode::TOO_MANY_REQUESTS,
                serde_json::json!({ "error": "ingest queue is full; retry later" }),
            );
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static(RETRY_AFTER_S));
            return response;
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            return answer(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "error": "the source is stopping" }));
        }
    }
    match written.await {
        Ok(count) => answer(StatusCode::OK, serde_json::json!({ "records": count })),
        Err(_) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": "the source stopped before the records were written; retry" }),
        ),
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
