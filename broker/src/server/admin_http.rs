//! The admin HTTP endpoint: `GET /v1/health` and `GET /metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Broker;

#[derive(Clone)]
struct AdminState {
    broker: Arc<Broker>,
    ready: Arc<AtomicBool>,
}

pub(super) async fn run(
    broker: Arc<Broker>,
    listener: TcpListener,
    routes: Router,
    ready: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(AdminState { broker, ready })
        .merge(routes);
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "admin HTTP server stopped");
    }
}

async fn health(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "{\"status\":\"ok\"}\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "{\"status\":\"starting\"}\n")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let body = state.broker.render_metrics();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
}
