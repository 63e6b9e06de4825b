//! `/v1/sql` on the admin port: the API behind `runnel sql`.
//!
//! - `POST /v1/sql` with `{"sql": "...", "format": "json|csv|table|arrow", "timeout_ms": N,
//!   "memory_bytes": N, "max_rows": N, "query_id": "..."}` (only `sql` is required; a body
//!   that is not JSON is taken as the SQL text). `json` answers
//!   `{"query_id", "columns": [{"name", "type"}], "rows": [{...}], "truncated", "stats"}`;
//!   `csv` and `table` answer text with the stats in `x-runnel-*` headers; `arrow` (or
//!   `Accept: application/vnd.apache.arrow.stream`) answers an Arrow IPC stream.
//! - `GET /v1/sql/queries` — running queries; `DELETE /v1/sql/queries/{id}` — cancel one.
//!
//! Errors are JSON `{"error": "...", "kind": "..."}`: 400 (bad statement), 404 (no such
//! topic or view), 408 (timeout), 409 (cancelled), 503 (memory limit or too many queries),
//! 500 otherwise.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::Deserialize;

use super::query::{QueryLimits, QueryOutput, SqlEngine};
use super::SqlError;

/// A statement is text; anything bigger than this is not a query someone typed.
const REQUEST_BYTES_MAX: usize = 1024 * 1024;
const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

pub fn routes(engine: Arc<SqlEngine>) -> Router {
    Router::new()
        .route("/v1/sql", post(run))
        .route("/v1/sql/queries", get(running))
        .route("/v1/sql/queries/{id}", delete(cancel))
        .layer(axum::extract::DefaultBodyLimit::max(REQUEST_BYTES_MAX))
        .with_state(engine)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
    format: Option<String>,
    timeout_ms: Option<u64>,
    memory_bytes: Option<usize>,
    max_rows: Option<usize>,
    query_id: Option<String>,
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

pub(crate) fn error(e: SqlError) -> Response {
    let (status, kind) = match &e {
        SqlError::Plan(_) => (StatusCode::BAD_REQUEST, "plan"),
        SqlError::UnknownTable(_) => (StatusCode::NOT_FOUND, "unknown_table"),
        SqlError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "timeout"),
        SqlError::Cancelled => (StatusCode::CONFLICT, "cancelled"),
        SqlError::ResourcesExhausted(_) => (StatusCode::SERVICE_UNAVAILABLE, "resources_exhausted"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    json(status, &serde_json::json!({ "error": e.to_string(), "kind": kind }))
}

async fn run(State(engine): State<Arc<SqlEngine>>, headers: HeaderMap, body: Bytes) -> Response {
    let request = match serde_json::from_slice::<SqlRequest>(&body) {
        Ok(request) => request,
        Err(e) if body.first() == Some(&b'{') => {
            return error(SqlError::Plan(format!("request body: {e}")));
        }
        Err(_) => SqlRequest {
            sql: String::from_utf8_lossy(&body).to_string(),
            format: None,
            timeout_ms: None,
            memory_bytes: None,
            max_rows: None,
            query_id: None,
        },
    };
    let wants_arrow =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains(ARROW_STREAM));
    let format = request.format.clone().unwrap_or_else(|| if wants_arrow { "arrow" } else { "json" }.to_string());
    if !matches!(format.as_str(), "json" | "csv" | "table" | "arrow") {
        return error(SqlError::Plan(format!("unknown format {format:?}: json, csv, table or arrow")));
    }
    let defaults = QueryLimits::default();
    let limits = QueryLimits {
        timeout: request.timeout_ms.map_or(defaults.timeout, Duration::from_millis),
        memory_bytes: request.memory_bytes.unwrap_or(defaults.memory_bytes),
        max_rows: request.max_rows.unwrap_or(defaults.max_rows),
    };
    let query_id = request.query_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    match engine.execute(&request.sql, limits, Some(query_id.clone())).await {
        Ok(output) => match render(&output, &format, &query_id) {
            Ok(response) => response,
            Err(e) => error(e),
        },
        Err(e) => error(e),
    }
}

fn render(output: &QueryOutput, format: &str, query_id: &str) -> Result<Response, SqlError> {
    let encode = |e: arrow::error::ArrowError| SqlError::Internal(format!("encoding the result: {e}"));
    let (content_type, body) = match format {
        "json" => return render_json(output, query_id),
        "csv" => {
            let mut body = Vec::new();
            {
                let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(&mut body);
                if output.batches.is_empty() {
                    writer.write(&RecordBatch::new_empty(output.schema.clone())).map_err(encode)?;
                }
                for batch in &output.batches {
                    writer.write(batch).map_err(encode)?;
                }
            }
            ("text/csv", body)
        }
        "table" => {
            // With the schema, an empty answer still shows its column names.
            let table = arrow::util::pretty::pretty_format_batches_with_schema(output.schema.clone(), &output.batches)
                .map_err(encode)?;
            ("text/plain; charset=utf-8", format!("{table}\n").into_bytes())
        }
        _ => {
            let mut body = Vec::new();
            {
                let mut writer =
                    arrow::ipc::writer::StreamWriter::try_new(&mut body, &output.schema).map_err(encode)?;
                for batch in &output.batches {
                    writer.write(batch).map_err(encode)?;
                }
                writer.finish().map_err(encode)?;
            }
            (ARROW_STREAM, body)
        }
    };
    let mut response = (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response();
    let stats = &output.stats;
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-runnel-query-id", query_id.to_string()),
        ("x-runnel-rows-read", stats.rows_read.to_string()),
        ("x-runnel-bytes-read", stats.bytes_read.to_string()),
        ("x-runnel-malformed-rows", stats.malformed_rows.to_string()),
        ("x-runnel-segments-skipped", stats.segments_skipped.to_string()),
        ("x-runnel-segments-total", stats.segments_total.to_string()),
        ("x-runnel-truncated", output.truncated.to_string()),
        ("x-runnel-elapsed-ms", stats.elapsed_ms.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    Ok(response)
}

fn render_json(output: &QueryOutput, query_id: &str) -> Result<Response, SqlError> {
    let mut rows = Vec::new();
    {
        let mut writer = arrow_json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow_json::writer::JsonArray>(&mut rows);
        for batch in &output.batches {
            writer.write(batch).map_err(|e| SqlError::Internal(format!("encoding rows: {e}")))?;
        }
        writer.finish().map_err(|e| SqlError::Internal(format!("encoding rows: {e}")))?;
    }
    if rows.is_empty() {
        rows.extend_from_slice(b"[]");
    }
    let columns: Vec<serde_json::Value> = output
        .schema
        .fields()
        .iter()
        .map(|f| serde_json::json!({ "name": f.name(), "type": f.data_type().to_string() }))
        .collect();
    let head = serde_json::json!({
        "query_id": query_id,
        "columns": columns,
        "row_count": output.batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
        "truncated": output.truncated,
        "stats": output.stats,
    });
    // {"query_id":..., ..., "rows": [...]} without re-parsing the rows.
    let mut body = serde_json::to_vec(&head).map_err(|e| SqlError::Internal(e.to_string()))?;
    body.pop(); // the closing brace
    body.extend_from_slice(b",\"rows\":");
    body.extend_from_slice(&rows);
    body.push(b'}');
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn running(State(engine): State<Arc<SqlEngine>>) -> Response {
    let list: Vec<serde_json::Value> = engine
        .running()
        .into_iter()
        .map(|(id, sql, elapsed_ms)| serde_json::json!({ "query_id": id, "sql": sql, "elapsed_ms": elapsed_ms }))
        .collect();
    json(StatusCode::OK, &list)
}

async fn cancel(State(engine): State<Arc<SqlEngine>>, Path(id): Path<String>) -> Response {
    if engine.cancel(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": format!("no running query {id:?}"), "kind": "not_found" }),
        )
    }
}
