//! The SQL engine: one statement at a time, dispatched to the ad-hoc query path (a fresh
//! DataFusion session per query, with its own memory pool, a timeout and a cancel handle),
//! schema declarations (`CREATE TABLE`, `DROP TABLE`) or materialized views.
//!
//! An ad-hoc query sees every partition up to its last stable offset as of planning: a
//! consistent snapshot, whatever is appended while it runs.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{ObjectType, Statement as SqlStatement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use futures::StreamExt;
use runnel_broker::Broker;
use tokio::sync::Notify;

use super::catalog::{infer_layout, SchemaSource, TableLayout};
use super::mv::ViewService;
use super::registry::Registry;
use super::scan::{ScanStats, TopicTable};
use super::SqlError;

/// Memory a query may use unless it asks for less (or more, up to the maximum).
pub(crate) const MEMORY_BYTES_DEFAULT: usize = 512 * 1024 * 1024;
/// No query may take more than this: the broker has other work (a quarter of this machine).
pub(crate) const MEMORY_BYTES_MAX: usize = 6 * 1024 * 1024 * 1024;
pub(crate) const TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
pub(crate) const TIMEOUT_MAX: Duration = Duration::from_secs(3600);
/// Rows returned unless asked otherwise; the rest is cut and `truncated` is set.
pub(crate) const ROWS_DEFAULT: usize = 100_000;
/// A JSON answer past this many rows is better read from a topic (or with LIMIT).
pub(crate) const ROWS_MAX: usize = 10_000_000;
/// Queries running at once: each one holds a memory pool and threads of its own.
const RUNNING_QUERIES_MAX: usize = 16;

/// Limits of one query.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub timeout: Duration,
    pub memory_bytes: usize,
    pub max_rows: usize,
}

impl Default for QueryLimits {
    fn default() -> QueryLimits {
        QueryLimits { timeout: TIMEOUT_DEFAULT, memory_bytes: MEMORY_BYTES_DEFAULT, max_rows: ROWS_DEFAULT }
    }
}

impl QueryLimits {
    /// The limits clamped to what the engine allows.
    pub fn clamped(self) -> QueryLimits {
        QueryLimits {
            timeout: self.timeout.clamp(Duration::from_millis(1), TIMEOUT_MAX),
            memory_bytes: self.memory_bytes.clamp(1024 * 1024, MEMORY_BYTES_MAX),
            max_rows: self.max_rows.min(ROWS_MAX),
        }
    }
}

/// What a query read, as reported with its result.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueryStatsSnapshot {
    pub rows_read: u64,
    pub bytes_read: u64,
    pub malformed_rows: u64,
    pub segments_total: u64,
    pub segments_skipped: u64,
    pub elapsed_ms: u64,
}

impl QueryStatsSnapshot {
    fn of(stats: &ScanStats, elapsed: Duration) -> QueryStatsSnapshot {
        QueryStatsSnapshot {
            rows_read: stats.rows_read.load(Ordering::Relaxed),
            bytes_read: stats.bytes_read.load(Ordering::Relaxed),
            malformed_rows: stats.malformed_rows.load(Ordering::Relaxed),
            segments_total: stats.segments_total.load(Ordering::Relaxed),
            segments_skipped: stats.segments_skipped.load(Ordering::Relaxed),
            elapsed_ms: elapsed.as_millis() as u64,
        }
    }
}

/// A statement's answer.
#[derive(Debug)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// More rows than `max_rows`: the rest were not returned.
    pub truncated: bool,
    pub stats: QueryStatsSnapshot,
}

impl QueryOutput {
    /// A one-column, one-row answer for statements that change something.
    pub(crate) fn message(text: &str) -> QueryOutput {
        let schema = Arc::new(Schema::new(vec![Field::new("result", DataType::Utf8, false)]));
        let column = Arc::new(StringArray::from(vec![text.to_string()]));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![column])
            .unwrap_or_else(|_| RecordBatch::new_empty(Arc::clone(&schema)));
        QueryOutput { schema, batches: vec![batch], truncated: false, stats: QueryStatsSnapshot::default() }
    }
}

/// A query in flight, for listing and cancellation.
#[derive(Debug)]
struct Running {
    sql: String,
    started: Instant,
    cancel: Arc<Notify>,
}

/// Runs SQL statements against this broker's topics.
pub struct SqlEngine {
    broker: Arc<Broker>,
    registry: Registry,
    /// Declared schemas by topic: the statement (for `SHOW`) and the layout.
    declared: RwLock<HashMap<String, (String, TableLayout)>>,
    views: Arc<ViewService>,
    running: Mutex<HashMap<String, Running>>,
}

impl std::fmt::Debug for SqlEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlEngine").finish_non_exhaustive()
    }
}

impl SqlEngine {
    /// Replays the registry (declared schemas, then views, which start running). Call inside a
    /// tokio runtime.
    pub async fn start(broker: Arc<Broker>) -> Result<Arc<SqlEngine>, SqlError> {
        let opened = {
            let broker = Arc::clone(&broker);
            tokio::task::spawn_blocking(move || Registry::open(broker))
                .await
                .map_err(|e| SqlError::Internal(e.to_string()))??
        };
        let (registry, entries) = opened;
        let views = ViewService::new(Arc::clone(&broker));
        let engine = Arc::new(SqlEngine {
            broker,
            registry,
            declared: RwLock::new(HashMap::new()),
            views,
            running: Mutex::new(HashMap::new()),
        });
        for (name, statement) in &entries.tables {
            match engine.plan_declaration(statement).await {
                Ok((_, layout)) => {
                    engine.write_declared().insert(name.clone(), (statement.clone(), layout));
                }
                Err(e) => tracing::error!(%name, error = %e, "unreadable table declaration; skipping"),
            }
        }
        engine.views.restore(&engine, entries.views).await;
        Ok(engine)
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn views(&self) -> &Arc<ViewService> {
        &self.views
    }

    fn write_declared(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, (String, TableLayout)>> {
        self.declared.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one statement. `query_id` names it for [`SqlEngine::cancel`].
    #[tracing::instrument(name = "sql", skip(self, sql, limits), fields(query_id))]
    pub async fn execute(
        &self,
        sql: &str,
        limits: QueryLimits,
        query_id: Option<String>,
    ) -> Result<QueryOutput, SqlError> {
        let limits = limits.clamped();
        if is_show_materialized_views(sql) {
            return self.views.show();
        }
        let statement = parse_one(sql)?;
        if let DfStatement::Statement(inner) = &statement {
            match inner.as_ref() {
                SqlStatement::CreateView(create) if create.materialized => {
                    return self.views.create(self, sql, create).await;
                }
                SqlStatement::Drop { object_type: ObjectType::MaterializedView, names, if_exists, .. } => {
                    return self.views.drop_views(self, names, *if_exists).await;
                }
                SqlStatement::CreateTable(create) if create.query.is_none() => {
                    return self.declare(sql, &statement).await;
                }
                SqlStatement::Drop { object_type: ObjectType::Table, names, if_exists, .. } => {
                    return self.undeclare(names, *if_exists);
                }
                SqlStatement::Query(_)
                | SqlStatement::Explain { .. }
                | SqlStatement::ShowTables { .. }
                | SqlStatement::ShowColumns { .. } => {}
                other => {
                    return Err(SqlError::Plan(format!(
                        "not supported here: {}; topics are read-only to SQL (SELECT, EXPLAIN, CREATE TABLE to declare a schema, CREATE/DROP MATERIALIZED VIEW, SHOW MATERIALIZED VIEWS)",
                        first_words(&other.to_string())
                    )))
                }
            }
        } else if !matches!(statement, DfStatement::Explain(_)) {
            return Err(SqlError::Plan("only queries, EXPLAIN and the statements of docs/SQL.md are supported".into()));
        }
        let id = query_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        tracing::Span::current().record("query_id", id.as_str());
        let cancel = self.register(&id, sql)?;
        let started = Instant::now();
        let stats = Arc::new(ScanStats::default());
        let run = self.run_query(statement, limits, Arc::clone(&stats));
        let result = tokio::select! {
            result = run => result,
            _ = tokio::time::sleep(limits.timeout) => Err(SqlError::Timeout(limits.timeout.as_millis() as u64)),
            _ = cancel.notified() => Err(SqlError::Cancelled),
        };
        self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        let (schema, batches, truncated) = result?;
        Ok(QueryOutput { schema, batches, truncated, stats: QueryStatsSnapshot::of(&stats, started.elapsed()) })
    }

    fn register(&self, id: &str, sql: &str) -> Result<Arc<Notify>, SqlError> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.len() >= RUNNING_QUERIES_MAX {
            return Err(SqlError::ResourcesExhausted(format!("{RUNNING_QUERIES_MAX} queries are running already")));
        }
        if running.contains_key(id) {
            return Err(SqlError::Plan(format!("a query with id {id:?} is running already")));
        }
        let cancel = Arc::new(Notify::new());
        running.insert(
            id.to_string(),
            Running { sql: sql.to_string(), started: Instant::now(), cancel: Arc::clone(&cancel) },
        );
        Ok(cancel)
    }

    /// Cancels a running query; false if no query has that id.
    pub fn cancel(&self, id: &str) -> bool {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        match running.get(id) {
            Some(query) => {
                // notify_one stores a permit, so a cancel that races the select still lands.
                query.cancel.notify_one();
                true
            }
            None => false,
        }
    }

    /// The queries running now: (id, sql, milliseconds so far).
    pub fn running(&self) -> Vec<(String, String, u64)> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<_> =
            running.iter().map(|(id, q)| (id.clone(), q.sql.clone(), q.started.elapsed().as_millis() as u64)).collect();
        list.sort();
        list
    }

    async fn run_query(
        &self,
        statement: DfStatement,
        limits: QueryLimits,
        stats: Arc<ScanStats>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>, bool), SqlError> {
        let ctx = self.session(limits.memory_bytes)?;
        let references = ctx.state().resolve_table_references(&statement).map_err(SqlError::from_datafusion)?;
        for reference in references {
            if reference.schema() == Some("information_schema") {
                continue; // DataFusion's own catalog tables
            }
            let provider = self.table_provider(reference.table(), &stats).await?;
            ctx.register_table(reference, provider).map_err(SqlError::from_datafusion)?;
        }
        let plan = ctx.state().statement_to_plan(statement).await.map_err(SqlError::from_datafusion)?;
        if matches!(plan, LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Copy(_) | LogicalPlan::Statement(_))
        {
            return Err(SqlError::Plan("only queries are supported here".into()));
        }
        let frame = ctx.execute_logical_plan(plan).await.map_err(SqlError::from_datafusion)?;
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let mut stream = frame.execute_stream().await.map_err(SqlError::from_datafusion)?;
        let mut batches = Vec::new();
        let mut rows = 0usize;
        let mut truncated = false;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(SqlError::from_datafusion)?;
            let room = limits.max_rows - rows;
            if batch.num_rows() > room {
                batches.push(batch.slice(0, room));
                truncated = true;
                break;
            }
            rows += batch.num_rows();
            batches.push(batch);
        }
        Ok((schema, batches, truncated))
    }

    /// A session for one query: its own memory pool of `memory_bytes`.
    fn session(&self, memory_bytes: usize) -> Result<SessionContext, SqlError> {
        // No spilling: the limit is a limit (a broker's disk is for the log), and a query that
        // needs more fails with a clear error instead of filling a temp directory.
        let disk = DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(memory_bytes, 1.0)
            .with_disk_manager_builder(disk)
            .build_arc()
            .map_err(SqlError::from_datafusion)?;
        let config = SessionConfig::new().with_information_schema(true);
        Ok(SessionContext::new_with_config_rt(config, runtime))
    }

    /// The table a name refers to: a materialized view, else a topic (declared or inferred).
    pub(crate) async fn table_provider(
        &self,
        name: &str,
        stats: &Arc<ScanStats>,
    ) -> Result<Arc<dyn TableProvider>, SqlError> {
        if let Some(view) = self.views.table(name, stats) {
            return Ok(view);
        }
        let layout = self.layout(name).await?;
        Ok(Arc::new(TopicTable::new(Arc::clone(&self.broker), name.to_string(), layout, Arc::clone(stats))))
    }

    /// The layout of a topic: declared, else inferred from a sample.
    pub(crate) async fn layout(&self, topic: &str) -> Result<TableLayout, SqlError> {
        if let Some((_, layout)) = self.declared.read().unwrap_or_else(|p| p.into_inner()).get(topic) {
            return Ok(layout.clone());
        }
        if self.broker.topic(topic).is_none() {
            return Err(SqlError::UnknownTable(topic.to_string()));
        }
        let broker = Arc::clone(&self.broker);
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || infer_layout(&broker, &topic))
            .await
            .map_err(|e| SqlError::Internal(e.to_string()))?
    }

    /// `CREATE TABLE <topic> (<columns>)`: declares the typed columns of a topic's JSON values.
    async fn declare(&self, sql: &str, _statement: &DfStatement) -> Result<QueryOutput, SqlError> {
        let (name, layout) = self.plan_declaration(sql).await?;
        if self.broker.topic(&name).is_none() {
            return Err(SqlError::UnknownTable(name));
        }
        if self.views.exists(&name) {
            return Err(SqlError::Plan(format!("{name:?} is a materialized view")));
        }
        self.registry.put_table(&name, Some(sql))?;
        let columns = layout.json_fields.len();
        self.write_declared().insert(name.clone(), (sql.to_string(), layout));
        Ok(QueryOutput::message(&format!("declared {columns} typed columns for topic {name}")))
    }

    /// The topic a `CREATE TABLE` names and the layout its column list gives.
    async fn plan_declaration(&self, sql: &str) -> Result<(String, TableLayout), SqlError> {
        let statement = parse_one(sql)?;
        let ctx = SessionContext::new();
        let plan = ctx.state().statement_to_plan(statement).await.map_err(SqlError::from_datafusion)?;
        let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) = plan else {
            return Err(SqlError::Plan("expected CREATE TABLE <topic> (<column> <type>, ...)".into()));
        };
        let schema = create.input.schema().as_arrow().clone();
        if schema.fields().is_empty() {
            return Err(SqlError::Plan("CREATE TABLE needs at least one column".into()));
        }
        let fields: Vec<_> = schema.fields().iter().cloned().collect();
        Ok((create.name.table().to_string(), TableLayout::new(&fields, SchemaSource::Declared)))
    }

    fn undeclare(
        &self,
        names: &[datafusion::sql::sqlparser::ast::ObjectName],
        if_exists: bool,
    ) -> Result<QueryOutput, SqlError> {
        let mut dropped = Vec::new();
        for name in names {
            let name = object_name(name);
            let known = self.write_declared().remove(&name).is_some();
            if !known && !if_exists {
                return Err(SqlError::Plan(format!("no declared schema for {name:?}")));
            }
            if known {
                self.registry.put_table(&name, None)?;
                dropped.push(name);
            }
        }
        Ok(QueryOutput::message(&format!("dropped the declared schema of {}", dropped.join(", "))))
    }
}

/// The last part of a (possibly qualified) name, as DataFusion normalizes it: unquoted
/// identifiers are lowercased.
pub(crate) fn object_name(name: &datafusion::sql::sqlparser::ast::ObjectName) -> String {
    let parts = &name.0;
    match parts.last().and_then(|p| p.as_ident()) {
        Some(ident) if ident.quote_style.is_some() => ident.value.clone(),
        Some(ident) => ident.value.to_lowercase(),
        None => name.to_string(),
    }
}

pub(crate) fn parse_one(sql: &str) -> Result<DfStatement, SqlError> {
    let mut statements =
        DFParser::parse_sql_with_dialect(sql, &GenericDialect {}).map_err(|e| SqlError::Plan(e.to_string()))?;
    match (statements.pop_front(), statements.is_empty()) {
        (Some(statement), true) => Ok(statement),
        (None, _) => Err(SqlError::Plan("no statement".into())),
        (Some(_), false) => Err(SqlError::Plan("one statement at a time".into())),
    }
}

fn is_show_materialized_views(sql: &str) -> bool {
    let words: Vec<String> =
        sql.trim().trim_end_matches(';').split_whitespace().map(|w| w.to_ascii_uppercase()).collect();
    words == ["SHOW", "MATERIALIZED", "VIEWS"]
}

fn first_words(text: &str) -> String {
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
