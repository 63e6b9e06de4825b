//! `/v1/transforms` on the admin port: the API behind `runnel transform ...`.
//!
//! - `GET /v1/transforms` — every transform with status, lag and counts
//! - `PUT /v1/transforms/{name}?input=T&output=T1&output=T2&env=K=V&from=earliest&on_error=skip`
//!   with the module's bytes as the body — deploy, or upgrade in place
//! - `GET /v1/transforms/{name}`, `GET /v1/transforms/{name}/logs`
//! - `POST /v1/transforms/{name}/pause`, `POST /v1/transforms/{name}/resume`
//! - `POST /v1/transforms/{name}/replay?from=earliest|<offset>|@<ms>` — move the position,
//!   keep the state
//! - `DELETE /v1/transforms/{name}`
//!
//! Errors are JSON `{"error": "..."}` with 400 (bad request or module), 404 (no such
//! transform) or 500.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::service::{TransformService, MODULE_BYTES_MAX};
use super::spec::{OnError, StartFrom, TransformSpec};
use super::TransformError;

pub fn routes(service: Arc<TransformService>) -> Router {
    Router::new()
        .route("/v1/transforms", get(list))
        .route("/v1/transforms/{name}", get(describe).put(deploy).delete(remove))
        .route("/v1/transforms/{name}/logs", get(logs))
        .route("/v1/transforms/{name}/pause", post(pause))
        .route("/v1/transforms/{name}/resume", post(resume))
        .route("/v1/transforms/{name}/replay", post(replay))
        .layer(DefaultBodyLimit::max(MODULE_BYTES_MAX))
        .with_state(service)
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn error(e: TransformError) -> Response {
    let status = match &e {
        TransformError::InvalidSpec(_) | TransformError::Module(_) => StatusCode::BAD_REQUEST,
        TransformError::NotFound(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json(status, &serde_json::json!({ "error": e.to_string() }))
}

async fn list(State(service): State<Arc<TransformService>>) -> Response {
    json(StatusCode::OK, &service.list())
}

async fn describe(State(service): State<Arc<TransformService>>, Path(name): Path<String>) -> Response {
    service.describe(&name).map_or_else(error, |info| json(StatusCode::OK, &info))
}

async fn logs(State(service): State<Arc<TransformService>>, Path(name): Path<String>) -> Response {
    service.logs(&name).map_or_else(error, |lines| json(StatusCode::OK, &lines))
}

async fn pause(State(service): State<Arc<TransformService>>, Path(name): Path<String>) -> Response {
    service.set_paused(&name, true).map_or_else(error, |info| json(StatusCode::OK, &info))
}

async fn resume(State(service): State<Arc<TransformService>>, Path(name): Path<String>) -> Response {
    service.set_paused(&name, false).map_or_else(error, |info| json(StatusCode::OK, &info))
}

async fn replay(
    State(service): State<Arc<TransformService>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    let from = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "from").map(|(_, v)| v.to_string());
    let Some(from) = from else {
        return error(TransformError::InvalidSpec("the from parameter is required".into()));
    };
    match StartFrom::parse(&from) {
        Ok(from) => service.replay(&name, from).await.map_or_else(error, |info| json(StatusCode::OK, &info)),
        Err(e) => error(e),
    }
}

async fn remove(State(service): State<Arc<TransformService>>, Path(name): Path<String>) -> Response {
    match service.remove(&name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(e),
    }
}

async fn deploy(
    State(service): State<Arc<TransformService>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let spec = match spec_from_query(name, query.as_deref().unwrap_or("")) {
        Ok(spec) => spec,
        Err(e) => return error(e),
    };
    match service.deploy(spec, body).await {
        Ok(info) => json(StatusCode::OK, &info),
        Err(e) => error(e),
    }
}

/// Reads a spec from the query string; `output` and `env` repeat.
pub(crate) fn spec_from_query(name: String, query: &str) -> Result<TransformSpec, TransformError> {
    let mut input = None;
    let mut outputs = Vec::new();
    let mut env = BTreeMap::new();
    let mut from = StartFrom::Latest;
    let mut on_error = OnError::Skip;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "input" => input = Some(value.to_string()),
            "output" => outputs.push(value.to_string()),
            "env" => {
                let (k, v) = value
                    .split_once('=')
                    .ok_or_else(|| TransformError::InvalidSpec(format!("env {value:?}: expected KEY=VALUE")))?;
                env.insert(k.to_string(), v.to_string());
            }
            "from" => from = StartFrom::parse(&value)?,
            "on_error" => on_error = OnError::parse(&value)?,
            other => return Err(TransformError::InvalidSpec(format!("unknown parameter {other:?}"))),
        }
    }
    let input = input.ok_or_else(|| TransformError::InvalidSpec("the input parameter is required".into()))?;
    Ok(TransformSpec { name, input, outputs, env, from, on_error, version: 0, paused: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_become_specs() {
        let spec =
            spec_from_query("t".into(), "input=in&output=a&output=b&env=K%3DV=x&from=earliest&on_error=dead-letter")
                .expect("spec");
        assert_eq!(spec.outputs, vec!["a", "b"]);
        assert_eq!(spec.env.get("K"), Some(&"V=x".to_string()));
        assert_eq!((spec.from, spec.on_error), (StartFrom::Earliest, OnError::DeadLetter));
        assert!(spec_from_query("t".into(), "output=a").is_err());
        assert!(spec_from_query("t".into(), "input=i&bogus=1").is_err());
        assert!(spec_from_query("t".into(), "input=i&env=novalue").is_err());
    }
}
