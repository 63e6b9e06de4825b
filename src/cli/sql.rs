//! `runnel sql "SELECT ..."`: one statement through the admin API's `POST /v1/sql`, printed as
//! a table (default), JSON or CSV. Ctrl-C cancels the query on the broker.

use std::io::{Read, Write};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use hyper::Method;

use super::admin_http::{check, request, request_with_headers};
use super::ConnectArgs;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SqlFormat {
    Table,
    Json,
    Csv,
}

#[derive(Args, Debug)]
pub(crate) struct SqlArgs {
    /// The statement; read from stdin when absent or "-"
    pub(crate) statement: Option<String>,
    /// Output format
    #[arg(long, value_enum, default_value = "table")]
    pub(crate) format: SqlFormat,
    /// Give up after this long (the broker caps it at an hour)
    #[arg(long, value_name = "MS")]
    pub(crate) timeout_ms: Option<u64>,
    /// Memory the query may use on the broker
    #[arg(long, value_name = "BYTES")]
    pub(crate) memory_bytes: Option<usize>,
    /// Rows to return at most (the rest is cut, and a note says so)
    #[arg(long)]
    pub(crate) max_rows: Option<usize>,
    /// Do not print the statistics line (rows read, malformed rows, segments skipped) to stderr
    #[arg(long)]
    pub(crate) quiet: bool,
}

pub(crate) async fn run(connect: &ConnectArgs, args: SqlArgs) -> anyhow::Result<()> {
    let statement = match args.statement.as_deref() {
        Some(text) if text != "-" => text.to_string(),
        _ => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("reading the statement from stdin")?;
            text
        }
    };
    if statement.trim().is_empty() {
        anyhow::bail!("no statement given");
    }
    let query_id = format!(
        "cli-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
    );
    let format = match args.format {
        SqlFormat::Table => "table",
        SqlFormat::Json => "json",
        SqlFormat::Csv => "csv",
    };
    let mut body = serde_json::json!({ "sql": statement, "format": format, "query_id": query_id });
    if let Some(ms) = args.timeout_ms {
        body["timeout_ms"] = ms.into();
    }
    if let Some(bytes) = args.memory_bytes {
        body["memory_bytes"] = bytes.into();
    }
    if let Some(rows) = args.max_rows {
        body["max_rows"] = rows.into();
    }
    let admin = connect.admin.as_str();
    let sent = request_with_headers(admin, Method::POST, "/v1/sql", Bytes::from(body.to_string()));
    let (status, headers, body) = tokio::select! {
        answer = sent => answer?,
        _ = tokio::signal::ctrl_c() => {
            let _ = request(admin, Method::DELETE, &format!("/v1/sql/queries/{query_id}"), Bytes::new()).await;
            anyhow::bail!("cancelled");
        }
    };
    check(status, &body)?;
    std::io::stdout().write_all(&body)?;
    if args.format == SqlFormat::Json {
        println!();
    }
    if !args.quiet {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
        let stats = match args.format {
            SqlFormat::Json => stats_from_json(&body),
            _ => Some(Stats {
                rows_read: header("x-runnel-rows-read"),
                malformed: header("x-runnel-malformed-rows"),
                skipped: header("x-runnel-segments-skipped"),
                total: header("x-runnel-segments-total"),
                elapsed_ms: header("x-runnel-elapsed-ms"),
                truncated: header("x-runnel-truncated") == "true",
            }),
        };
        if let Some(stats) = stats {
            eprintln!(
                "{} rows read in {} ms, {} malformed, {} of {} segments skipped{}",
                stats.rows_read,
                stats.elapsed_ms,
                stats.malformed,
                stats.skipped,
                stats.total,
                if stats.truncated { "; result truncated (--max-rows)" } else { "" }
            );
        }
    }
    Ok(())
}

struct Stats {
    rows_read: String,
    malformed: String,
    skipped: String,
    total: String,
    elapsed_ms: String,
    truncated: bool,
}

fn stats_from_json(body: &Bytes) -> Option<Stats> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let stats = value.get("stats")?;
    let field = |name: &str| stats.get(name).map(|v| v.to_string()).unwrap_or_else(|| "?".into());
    Some(Stats {
        rows_read: field("rows_read"),
        malformed: field("malformed_rows"),
        skipped: field("segments_skipped"),
        total: field("segments_total"),
        elapsed_ms: field("elapsed_ms"),
        truncated: value.get("truncated").and_then(|v| v.as_bool()).unwrap_or(false),
    })
}
