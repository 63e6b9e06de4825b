//! The server layer: owns the sockets. `serve(broker, shutdown)` runs the Kafka listener, the
//! admin HTTP endpoint and the background flush/retention tasks until `shutdown` resolves,
//! then drains in-flight requests and closes the logs.

mod admin_http;
mod connection;
mod handlers;
mod sendfile;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::Broker;

pub use connection::MAX_IN_FLIGHT_PER_CONNECTION;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("admin HTTP server failed: {0}")]
    Admin(std::io::Error),
}

/// How often the flusher looks for logs whose `flush.ms` has passed.
const FLUSH_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// How often the flusher hands newly appended bytes to the kernel's writeback: often enough
/// that at 1 GB/s a partition's fsync never finds more than ~10 MB left to write.
const WRITEBACK_INTERVAL: Duration = Duration::from_millis(10);
/// A partition's appended bytes wait for the next tick below this: smaller write-outs cost a
/// system call each for little gain, and the fsync takes what is left.
const WRITEBACK_MIN_BYTES: u64 = 256 * 1024;
/// How long shutdown waits for connections to finish their in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Listeners already bound, so callers (and tests) can bind port 0 and learn the port.
pub struct Listeners {
    pub kafka: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(broker: &Broker) -> Result<Listeners, ServerError> {
        let kafka_addr = broker.config.listen;
        let admin_addr = broker.config.admin_listen;
        let kafka =
            TcpListener::bind(kafka_addr).await.map_err(|source| ServerError::Bind { addr: kafka_addr, source })?;
        let admin =
            TcpListener::bind(admin_addr).await.map_err(|source| ServerError::Bind { addr: admin_addr, source })?;
        Ok(Listeners { kafka, admin })
    }
}

/// Handles one request frame (without its size prefix) and returns the size-prefixed
/// response, or `None` when Kafka sends none (acks=0). The socket-free entry point for fuzzing
/// and tests; an `Err` is what makes a connection close.
pub async fn respond_to(
    broker: &Arc<Broker>,
    frame: bytes::Bytes,
) -> Result<Option<bytes::Bytes>, crate::protocol::frame::FrameError> {
    let request = crate::protocol::frame::decode_request(frame)?;
    let (api, version) = (request.api_key, request.api_version);
    Ok(match handlers::dispatch(broker, request).await? {
        handlers::Reply::Ready(bytes) => Some(bytes),
        // A segment that vanished between the fetch and this read fails the request, as it
        // would fail the send on a connection.
        handlers::Reply::Pieces(pieces) => {
            Some(
                crate::protocol::fetch_frame::concat(pieces)
                    .map_err(|e| crate::protocol::frame::FrameError::Encode { api, version, message: e.to_string() })?,
            )
        }
        handlers::Reply::Later(future) => Some(future.await),
        handlers::Reply::None => None,
    })
}

/// Binds the configured addresses and serves until `shutdown` resolves.
pub async fn serve(broker: Arc<Broker>, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let listeners = Listeners::bind(&broker).await?;
    serve_on(broker, listeners, shutdown).await
}

pub async fn serve_on(
    broker: Arc<Broker>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    serve_with_routes(broker, listeners, axum::Router::new(), shutdown).await
}

/// Serves like [`serve_on`], with `routes` (e.g. the runtime's `/v1/transforms`) merged into
/// the admin HTTP endpoint next to health and metrics.
pub async fn serve_with_routes(
    broker: Arc<Broker>,
    listeners: Listeners,
    routes: axum::Router,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admin = tokio::spawn(admin_http::run(
        Arc::clone(&broker),
        listeners.admin,
        routes,
        Arc::clone(&ready),
        stop_rx.clone(),
    ));
    let background = tokio::spawn(background_tasks(Arc::clone(&broker), stop_rx.clone()));
    let flusher = tokio::spawn(flusher_task(Arc::clone(&broker), stop_rx.clone()));
    let cleaner = tokio::spawn(cleaner_task(Arc::clone(&broker), stop_rx.clone()));

    let connections = Arc::new(Semaphore::new(broker.config.max_connections));
    // One request may not exceed the whole budget, or it could never be admitted.
    let budget_bytes = broker.config.queued_max_request_bytes.max(broker.config.socket_request_max_bytes);
    let request_bytes = Arc::new(Semaphore::new(budget_bytes.min(Semaphore::MAX_PERMITS)));
    let mut tasks = tokio::task::JoinSet::new();
    tracing::info!(listen = %broker.config.listen, admin = %broker.config.admin_listen, data_dir = %broker.config.data_dir.display(), "runnel broker ready");
    ready.store(true, std::sync::atomic::Ordering::SeqCst);

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listeners.kafka.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                    tracing::warn!(%peer, limit = broker.config.max_connections, "connection limit reached; closing new connection");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let broker = Arc::clone(&broker);
                let stop = stop_rx.clone();
                let request_bytes = Arc::clone(&request_bytes);
                tasks.spawn(async move {
                    connection::run(broker, stream, peer, stop, request_bytes).await;
                    drop(permit);
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    drop(listeners.kafka);
    broker.begin_shutdown();
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("connections did not drain in time; closing them");
        tasks.abort_all();
    }
    let _ = background.await;
    let _ = flusher.await;
    let _ = cleaner.await;
    let broker_for_close = Arc::clone(&broker);
    let _ = tokio::task::spawn_blocking(move || broker_for_close.close()).await;
    admin.abort();
    tracing::info!("shutdown complete");
    Ok(())
}

/// Flushes off the request path: starts writeback of appended bytes every
/// [`WRITEBACK_INTERVAL`] and fsyncs the logs whose `flush.ms`/`flush.messages` are due. Its own
/// task, so an fsync never holds up group or transaction timers.
async fn flusher_task(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let mut writeback = tokio::time::interval(WRITEBACK_INTERVAL);
    let mut flush = tokio::time::interval(FLUSH_CHECK_INTERVAL);
    writeback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = writeback.tick() => {
                let broker = Arc::clone(&broker);
                let _ = tokio::task::spawn_blocking(move || broker.start_writeback(WRITEBACK_MIN_BYTES)).await;
            }
            _ = flush.tick() => broker.flush_due().await,
        }
    }
}

async fn background_tasks(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let mut retention = tokio::time::interval(Duration::from_millis(broker.config.retention_check_interval_ms));
    retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let txn_check = Duration::from_millis(broker.config.transactions.abort_timed_out_check_interval_ms);
    let mut txn_timers = tokio::time::interval(txn_check);
    txn_timers.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => {
                // Parked JoinGroup/SyncGroup requests answer NOT_COORDINATOR instead of holding up the drain.
                broker.groups().shutdown();
                return;
            }
            // Group deadlines: session expiry, join rounds, sync phases, initial rebalance delay.
            _ = broker.groups().wait_for_timers(broker.now_ms()) => broker.groups().run_timers(&broker),
            // Transaction timeouts (abort and fence) and transactional id expiry.
            _ = txn_timers.tick() => broker.txns().run_timers(&broker),
            _ = retention.tick() => {
                let broker = Arc::clone(&broker);
                let _ = tokio::task::spawn_blocking(move || broker.enforce_retention()).await;
            }
        }
    }
}

/// Runs the log cleaner on the blocking pool: a round every `log.cleaner.backoff.ms`, each
/// cleaning until no compacted partition needs it. Apart from `background_tasks` so that a
/// long pass never holds up flushes or group timers; a pass polls for shutdown and stops.
async fn cleaner_task(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    if !broker.config.cleaner.enable {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(broker.config.cleaner.backoff_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {
                let broker = Arc::clone(&broker);
                let _ = tokio::task::spawn_blocking(move || broker.clean_logs()).await;
            }
        }
    }
}
