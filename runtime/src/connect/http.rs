//! The Kafka Connect REST API on the admin port, so existing scripts and tools fit:
//!
//! - `GET /connectors` (`?expand=status`, `?expand=info`), `POST /connectors`
//!   (`{"name": ..., "config": {...}}`, 201; 409 if it exists)
//! - `GET /connectors/{name}`, `DELETE /connectors/{name}` (204)
//! - `GET|PUT /connectors/{name}/config` (PUT creates (201) or reconfigures (200))
//! - `GET /connectors/{name}/status`, `GET /connectors/{name}/tasks`,
//!   `GET /connectors/{name}/tasks/{id}/status`
//! - `PUT /connectors/{name}/pause`, `PUT /connectors/{name}/resume` (202)
//! - `POST /connectors/{name}/restart?includeTasks=&onlyFailed=` (204, or 202 with the status
//!   when `includeTasks=true`), `POST /connectors/{name}/tasks/{id}/restart` (204)
//! - `GET /connector-plugins`; Runnel's own: `GET /connectors/{name}/logs`
//!
//! Errors are Connect's `{"error_code": <status>, "message": "..."}` (400 bad config, 404
//! unknown connector, 409 name taken, 500).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;

use super::config::{ConfigMap, ConnectorClass};
use super::service::ConnectService;
use super::ConnectError;

/// A config document is small; this bounds what a request may make the broker parse.
const BODY_BYTES_MAX: usize = 1024 * 1024;

pub fn routes(service: Arc<ConnectService>) -> Router {
    Router::new()
        .route("/connectors", get(list).post(create))
        .route("/connectors/{name}", get(info).delete(remove))
        .route("/connectors/{name}/config", get(config).put(put_config))
        .route("/connectors/{name}/status", get(status))
        .route("/connectors/{name}/tasks", get(tasks))
        .route("/connectors/{name}/tasks/{id}/status", get(task_status))
        .route("/connectors/{name}/tasks/{id}/restart", post(restart_task))
        .route("/connectors/{name}/pause", put(pause))
        .route("/connectors/{name}/resume", put(resume))
        .route("/connectors/{name}/restart", post(restart))
        .route("/connectors/{name}/logs", get(logs))
        .route("/connector-plugins", get(plugins))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(service)
}

type Service = State<Arc<ConnectService>>;

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn error(e: ConnectError) -> Response {
    let status = match &e {
        ConnectError::InvalidConfig(_) | ConnectError::Module(_) => StatusCode::BAD_REQUEST,
        ConnectError::NotFound(_) => StatusCode::NOT_FOUND,
        ConnectError::Exists(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json(status, &serde_json::json!({ "error_code": status.as_u16(), "message": e.to_string() }))
}

fn bad_request(message: String) -> Response {
    error(ConnectError::InvalidConfig(message))
}

/// A JSON object of config values; numbers and booleans are accepted and kept as strings.
fn config_map(value: &serde_json::Value) -> Result<ConfigMap, String> {
    let object = value.as_object().ok_or("the config must be a JSON object")?;
    object
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k.clone(), s.clone())),
            serde_json::Value::Number(n) => Ok((k.clone(), n.to_string())),
            serde_json::Value::Bool(b) => Ok((k.clone(), b.to_string())),
            _ => Err(format!("config {k:?}: values are strings")),
        })
        .collect()
}

fn query_flag(query: &Option<String>, name: &str) -> bool {
    let query = query.as_deref().unwrap_or("");
    form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == name && v.eq_ignore_ascii_case("true"))
}

async fn list(State(service): Service, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    let expand: Vec<String> =
        form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == "expand").map(|(_, v)| v.into_owned()).collect();
    let names = service.list();
    if expand.is_empty() {
        return json(StatusCode::OK, &names);
    }
    let mut out = serde_json::Map::new();
    for name in names {
        let mut entry = serde_json::Map::new();
        if expand.iter().any(|e| e == "status") {
            if let Ok(status) = service.status(&name) {
                entry.insert("status".into(), serde_json::to_value(status).unwrap_or_default());
            }
        }
        if expand.iter().any(|e| e == "info") {
            if let Ok(info) = service.info(&name) {
                entry.insert("info".into(), serde_json::to_value(info).unwrap_or_default());
            }
        }
        out.insert(name, serde_json::Value::Object(entry));
    }
    json(StatusCode::OK, &out)
}

async fn create(State(service): Service, body: Bytes) -> Response {
    let document: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(document) => document,
        Err(e) => return bad_request(format!("the body is not JSON: {e}")),
    };
    let config = match document.get("config").map(config_map) {
        Some(Ok(config)) => config,
        Some(Err(e)) => return bad_request(e),
        None => return bad_request("the body needs a config object".into()),
    };
    let name = document.get("name").and_then(|n| n.as_str()).or(config.get("name").map(String::as_str));
    let Some(name) = name.map(str::to_string) else { return bad_request("the body needs a name".into()) };
    if config.get("name").is_some_and(|n| *n != name) {
        return bad_request("the config's name differs from the connector's".into());
    }
    match service.create(&name, config).await {
        Ok(info) => json(StatusCode::CREATED, &info),
        Err(e) => error(e),
    }
}

async fn info(State(service): Service, Path(name): Path<String>) -> Response {
    service.info(&name).map_or_else(error, |info| json(StatusCode::OK, &info))
}

async fn remove(State(service): Service, Path(name): Path<String>) -> Response {
    match service.delete(&name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(e),
    }
}

async fn config(State(service): Service, Path(name): Path<String>) -> Response {
    service.config(&name).map_or_else(error, |config| json(StatusCode::OK, &config))
}

async fn put_config(State(service): Service, Path(name): Path<String>, body: Bytes) -> Response {
    let config = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(value) => match config_map(&value) {
            Ok(config) => config,
            Err(e) => return bad_request(e),
        },
        Err(e) => return bad_request(format!("the body is not JSON: {e}")),
    };
    if config.get("name").is_some_and(|n| *n != name) {
        return bad_request("the config's name differs from the connector's".into());
    }
    match service.put_config(&name, config).await {
        Ok((info, true)) => json(StatusCode::CREATED, &info),
        Ok((info, false)) => json(StatusCode::OK, &info),
        Err(e) => error(e),
    }
}

async fn status(State(service): Service, Path(name): Path<String>) -> Response {
    service.status(&name).map_or_else(error, |status| json(StatusCode::OK, &status))
}

async fn tasks(State(service): Service, Path(name): Path<String>) -> Response {
    match service.info(&name) {
        Ok(info) => {
            let tasks: Vec<serde_json::Value> =
                info.tasks.iter().map(|id| serde_json::json!({ "id": id, "config": info.config })).collect();
            json(StatusCode::OK, &tasks)
        }
        Err(e) => error(e),
    }
}

async fn task_status(State(service): Service, Path((name, id)): Path<(String, u32)>) -> Response {
    match service.status(&name) {
        Ok(status) => match status.tasks.into_iter().find(|t| t.id == id) {
            Some(task) => json(StatusCode::OK, &task),
            None => error(ConnectError::NotFound(format!("{name} task {id}"))),
        },
        Err(e) => error(e),
    }
}

async fn restart_task(State(service): Service, Path((name, id)): Path<(String, u32)>) -> Response {
    match service.restart_task(&name, id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(e),
    }
}

async fn pause(State(service): Service, Path(name): Path<String>) -> Response {
    match service.set_paused(&name, true).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => error(e),
    }
}

async fn resume(State(service): Service, Path(name): Path<String>) -> Response {
    match service.set_paused(&name, false).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => error(e),
    }
}

async fn restart(State(service): Service, Path(name): Path<String>, RawQuery(query): RawQuery) -> Response {
    let include_tasks = query_flag(&query, "includeTasks");
    let only_failed = query_flag(&query, "onlyFailed");
    match service.restart(&name, only_failed).await {
        Ok(status) if include_tasks => json(StatusCode::ACCEPTED, &status),
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(e),
    }
}

async fn logs(State(service): Service, Path(name): Path<String>) -> Response {
    service.logs(&name).map_or_else(error, |lines| json(StatusCode::OK, &lines))
}

async fn plugins() -> Response {
    let plugins: Vec<serde_json::Value> = ConnectorClass::ALL
        .iter()
        .map(|c| serde_json::json!({ "class": c.name(), "type": c.kind(), "version": env!("CARGO_PKG_VERSION") }))
        .collect();
    json(StatusCode::OK, &plugins)
}
