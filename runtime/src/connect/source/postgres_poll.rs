//! PostgreSQL table polling (`postgres-source`, in the shape of Connect's JDBC source): rows
//! newer than the position, by an incrementing column (`mode=incrementing`), a timestamp
//! column (`mode=timestamp`) or both (`mode=timestamp+incrementing`), in that column's order.
//! Each row becomes a record whose value is the row as JSON (`row_to_json`) and whose key is
//! the incrementing column's value (none in timestamp mode). The topic is `topic`, or
//! `topic.prefix` + the table name.
//!
//! Timestamp mode reads whole groups of equal timestamps, so a batch limit never splits rows
//! that share one. Like Connect's, it cannot see a row committed later with an older timestamp.

use std::time::Duration;

use bytes::Bytes;
use runnel_broker::Broker;
use tokio_postgres::Client;

use super::{Polled, Source, SourceRecord};
use crate::connect::config::{invalid, Settings};
use crate::connect::pg::{classify, connect, connection_config, quote, quote_table};
use crate::connect::ConnectError;

const POLL_INTERVAL_DEFAULT_MS: u64 = 5000;
const BATCH_ROWS_DEFAULT: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Incrementing,
    Timestamp,
    TimestampIncrementing,
}

#[derive(Debug, Clone)]
pub(crate) struct PollSettings {
    pg: tokio_postgres::Config,
    table: String,
    mode: Mode,
    incrementing: Option<String>,
    timestamp: Option<String>,
    topic: String,
    poll_interval: Duration,
    batch_rows: i64,
}

pub(crate) struct PostgresPoll {
    settings: PollSettings,
    broker: std::sync::Arc<Broker>,
    client: Option<Client>,
    query: String,
    /// Last incrementing value and last timestamp (as text) read.
    last_id: i64,
    last_ts: Option<String>,
}

impl PostgresPoll {
    pub(crate) fn settings(settings: Settings<'_>) -> Result<PollSettings, ConnectError> {
        let pg = connection_config(settings)?;
        let table = settings
            .str("table")
            .or(settings.str("table.whitelist"))
            .ok_or_else(|| invalid("table is required".into()))?;
        if table.contains(',') {
            return Err(invalid("postgres-source reads one table per connector".into()));
        }
        let mode =
            match settings.one_of("mode", "incrementing", &["incrementing", "timestamp", "timestamp+incrementing"])? {
                "timestamp" => Mode::Timestamp,
                "timestamp+incrementing" => Mode::TimestampIncrementing,
                _ => Mode::Incrementing,
            };
        let incrementing = settings.str("incrementing.column.name").map(str::to_string);
        let timestamp = settings.str("timestamp.column.name").map(str::to_string);
        if mode != Mode::Timestamp && incrementing.is_none() {
            return Err(invalid("this mode needs incrementing.column.name".into()));
        }
        if mode != Mode::Incrementing && timestamp.is_none() {
            return Err(invalid("this mode needs timestamp.column.name".into()));
        }
        let topic = match settings.str("topic") {
            Some(topic) => topic.to_string(),
            None => format!("{}{table}", settings.str("topic.prefix").unwrap_or("")),
        };
        let batch_rows = settings.u64_or("batch.max.rows", BATCH_ROWS_DEFAULT)?.clamp(1, 100_000) as i64;
        Ok(PollSettings {
            pg,
            table: table.to_string(),
            mode,
            incrementing,
            timestamp,
            topic,
            poll_interval: Duration::from_millis(settings.u64_or("poll.interval.ms", POLL_INTERVAL_DEFAULT_MS)?),
            batch_rows,
        })
    }

    pub(crate) fn new(settings: Settings<'_>, broker: &std::sync::Arc<Broker>) -> Result<PostgresPoll, ConnectError> {
        Ok(PostgresPoll {
            settings: PostgresPoll::settings(settings)?,
            broker: std::sync::Arc::clone(broker),
            client: None,
            query: String::new(),
            last_id: i64::MIN,
            last_ts: None,
        })
    }

    /// The polling query for the configured mode; `ts_type` is the timestamp column's type.
    /// Parameters: $1 last id, $2 last timestamp (text), $3 limit; columns: row JSON, id, ts.
    fn build_query(&self, ts_type: &str) -> String {
        let table: Vec<String> = self.settings.table.split('.').map(str::to_string).collect();
        let table = quote_table(&table);
        let id = self.settings.incrementing.as_deref().map(quote).unwrap_or_else(|| "NULL".into());
        let ts = self.settings.timestamp.as_deref().map(quote).unwrap_or_else(|| "NULL".into());
        let id_out = self
            .settings
            .incrementing
            .as_deref()
            .map_or("NULL::bigint".to_string(), |c| format!("(t.{})::bigint", quote(c)));
        let ts_out =
            self.settings.timestamp.as_deref().map_or("NULL::text".to_string(), |c| format!("(t.{})::text", quote(c)));
        let columns = format!("row_to_json(t)::text, {id_out}, {ts_out}");
        let last_ts = format!("$2::text::{ts_type}");
        match self.settings.mode {
            Mode::Incrementing => format!(
                "SELECT {columns} FROM {table} t WHERE t.{id} > $1::bigint AND ($2::text IS NULL OR TRUE) \
                 ORDER BY t.{id} LIMIT $3"
            ),
            Mode::Timestamp => format!(
                "SELECT {columns} FROM {table} t WHERE ($1::bigint IS NULL OR TRUE) AND ($2::text IS NULL OR t.{ts} > {last_ts}) \
                 AND t.{ts} <= (SELECT max(c) FROM (SELECT u.{ts} AS c FROM {table} u \
                 WHERE $2::text IS NULL OR u.{ts} > {last_ts} ORDER BY u.{ts} LIMIT $3) AS cut) ORDER BY t.{ts}"
            ),
            Mode::TimestampIncrementing => format!(
                "SELECT {columns} FROM {table} t WHERE $2::text IS NULL OR (t.{ts}, t.{id}) > ({last_ts}, $1::bigint) \
                 ORDER BY t.{ts}, t.{id} LIMIT $3"
            ),
        }
    }
}

impl Source for PostgresPoll {
    fn topic(&self) -> &str {
        &self.settings.topic
    }

    async fn open(&mut self, position: Option<&serde_json::Value>) -> Result<(), ConnectError> {
        self.client = None;
        self.last_id = position.and_then(|p| p.get("incrementing")).and_then(|v| v.as_i64()).unwrap_or(i64::MIN);
        self.last_ts = position.and_then(|p| p.get("timestamp")).and_then(|v| v.as_str()).map(str::to_string);
        let client = connect(&self.settings.pg).await?;
        let ts_type = match &self.settings.timestamp {
            None => "timestamptz".to_string(),
            Some(column) => {
                let table: Vec<String> = self.settings.table.split('.').map(str::to_string).collect();
                let row = client
                    .query_opt(
                        "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a \
                         WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped",
                        &[&quote_table(&table), column],
                    )
                    .await
                    .map_err(classify)?;
                let Some(row) = row else {
                    return Err(ConnectError::PostgresRetriable(format!(
                        "table {} has no column {column:?} (or does not exist yet)",
                        self.settings.table
                    )));
                };
                row.get(0)
            }
        };
        self.query = self.build_query(&ts_type);
        self.client = Some(client);
        Ok(())
    }

    async fn poll(&mut self, max: usize) -> Result<Option<Polled>, ConnectError> {
        let client = self.client.as_ref().ok_or_else(|| ConnectError::PostgresRetriable("not connected".into()))?;
        let limit = self.settings.batch_rows.min(max as i64);
        let rows = client.query(&self.query, &[&self.last_id, &self.last_ts, &limit]).await.map_err(classify)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let now = self.broker.now_ms();
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            let json: String = row.get(0);
            let id: Option<i64> = row.get(1);
            let ts: Option<String> = row.get(2);
            if let Some(id) = id {
                self.last_id = id;
            }
            if ts.is_some() {
                self.last_ts = ts;
            }
            records.push(SourceRecord {
                timestamp_ms: now,
                key: id.filter(|_| self.settings.mode != Mode::Timestamp).map(|id| Bytes::from(id.to_string())),
                value: Some(Bytes::from(json)),
                headers: Vec::new(),
            });
        }
        let mut position = serde_json::Map::new();
        if self.settings.incrementing.is_some() {
            position.insert("incrementing".into(), self.last_id.into());
        }
        if let Some(ts) = &self.last_ts {
            position.insert("timestamp".into(), ts.clone().into());
        }
        Ok(Some(Polled { records, position: serde_json::Value::Object(position) }))
    }

    fn idle(&self) -> Duration {
        self.settings.poll_interval
    }
}
