//! Materialized views: continuous queries over a topic, maintained exactly-once.
//!
//! ```sql
//! CREATE MATERIALIZED VIEW clicks_per_user
//!   WITH (emit = 'final', lateness = '5 seconds')
//!   AS SELECT user_id, COUNT(*) AS clicks
//!      FROM clicks GROUP BY user_id, TUMBLE(timestamp, INTERVAL '1' MINUTE)
//! ```
//!
//! - `plan`: DataFusion plans the SELECT; the pieces become physical expressions.
//! - `window`, `aggregate`, `state`: our incremental operators (windows, watermark, groups).
//! - `task` + `checkpoint` + `emit`: one task per view reads every source partition and
//!   commits group changes, input positions and outputs in one changelog batch.
//! - `table`: `SELECT * FROM <view>` reads the view's output topic (latest row per key).
//!
//! Topics of a view `v`: `v` (its rows; compacted, keyed by window start and group key),
//! `v.late` (late input records, copied as they were) and `__runnel_mv_v` (its changelog).

mod aggregate;
mod checkpoint;
mod emit;
mod plan;
mod state;
mod table;
mod task;
mod window;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use bytes::Bytes;
use datafusion::catalog::TableProvider;
use datafusion::sql::sqlparser::ast::{CreateTableOptions, CreateView, ObjectName, SqlOption};
use runnel_broker::metadata::{MetadataCommand, MetadataError};
use runnel_broker::{Broker, BrokerError};
use tokio::sync::watch;

use super::catalog::{timestamp_type, SchemaSource, TableLayout};
use super::query::{object_name, parse_one, QueryOutput, QueryStatsSnapshot, SqlEngine};
use super::scan::ScanStats;
use super::SqlError;
use crate::transform::service::{ensure_topic, INTERNAL_MESSAGE_BYTES_MAX};
use plan::{compile, CompiledView, Shape};
use state::{EmitMode, ViewState};
use task::{ViewShared, ViewTask};

/// Prefix of a view's changelog topic.
const CHANGELOG_PREFIX: &str = "__runnel_mv_";

/// A view as stored in the registry.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct ViewDef {
    pub(crate) name: String,
    /// The whole `CREATE MATERIALIZED VIEW` statement, as given.
    pub(crate) sql: String,
    /// The SELECT, as the planner reads it back.
    pub(crate) select: String,
    pub(crate) source: String,
    pub(crate) emit: EmitMode,
    pub(crate) lateness_ms: i64,
    pub(crate) partitions: i32,
    /// Start at the source's end instead of its beginning.
    pub(crate) from_latest: bool,
    /// The source's typed columns when the view was created (name → Arrow type, as an IPC
    /// schema in hex): a later declaration or different sample does not change a view.
    pub(crate) source_schema: String,
}

impl ViewDef {
    pub(crate) fn changelog_topic(&self) -> String {
        format!("{CHANGELOG_PREFIX}{}", self.name)
    }

    pub(crate) fn late_topic(&self) -> String {
        format!("{}.late", self.name)
    }

    pub(crate) fn new_state(&self, view: &CompiledView) -> ViewState {
        match &view.shape {
            Shape::Aggregate(plan) => ViewState::new(
                plan.window.as_ref().map(|w| w.spec),
                self.lateness_ms,
                self.emit,
                plan.aggregates.iter().map(|a| (a.kind, a.output_type.clone())).collect(),
            ),
            Shape::Stream { .. } => ViewState::new(None, 0, EmitMode::Update, Vec::new()),
        }
    }

    fn layout(&self) -> Result<TableLayout, SqlError> {
        let bytes = decode_hex(&self.source_schema).ok_or_else(|| SqlError::Corrupt("view source schema".into()))?;
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| SqlError::Corrupt(format!("view source schema: {e}")))?;
        let fields: Vec<FieldRef> = reader.schema().fields().iter().cloned().collect();
        Ok(TableLayout::new(&fields, SchemaSource::Declared))
    }
}

/// A view known to the service: running, or failed to start.
struct Registered {
    def: ViewDef,
    view: Option<Arc<CompiledView>>,
    shared: Arc<ViewShared>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub struct ViewService {
    broker: Arc<Broker>,
    views: Mutex<HashMap<String, Registered>>,
}

impl std::fmt::Debug for ViewService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewService").finish_non_exhaustive()
    }
}

impl ViewService {
    pub(crate) fn new(broker: Arc<Broker>) -> Arc<ViewService> {
        Arc::new(ViewService { broker, views: Mutex::new(HashMap::new()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Registered>> {
        self.views.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the views the registry holds.
    pub(crate) async fn restore(&self, _engine: &SqlEngine, views: BTreeMap<String, Bytes>) {
        for (name, bytes) in views {
            let def: ViewDef = match serde_json::from_slice(&bytes) {
                Ok(def) => def,
                Err(e) => {
                    tracing::error!(%name, error = %e, "unreadable view definition; skipping");
                    continue;
                }
            };
            let compiled = match def.layout() {
                Ok(layout) => compile(&def.select, &def.source, layout).await,
                Err(e) => Err(e),
            };
            match compiled {
                Ok(view) => self.launch(def, Arc::new(view)),
                Err(e) => {
                    tracing::error!(%name, error = %e, "cannot start materialized view");
                    let shared = Arc::new(ViewShared::default());
                    shared.set_status(format!("FAILED: {e}"));
                    let (stop, _) = watch::channel(false);
                    self.lock().insert(name, Registered { def, view: None, shared, stop, task: None });
                }
            }
        }
    }

    fn launch(&self, def: ViewDef, view: Arc<CompiledView>) {
        let shared = Arc::new(ViewShared::default());
        shared.set_status("STARTING");
        let (stop, stop_rx) = watch::channel(false);
        let task = ViewTask {
            broker: Arc::clone(&self.broker),
            def: def.clone(),
            view: Arc::clone(&view),
            shared: Arc::clone(&shared),
            stop: stop_rx,
        };
        let handle = tokio::spawn(task.run());
        tracing::info!(view = %def.name, source = %def.source, "materialized view started");
        self.lock().insert(def.name.clone(), Registered { def, view: Some(view), shared, stop, task: Some(handle) });
    }

    pub(crate) fn exists(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// `CREATE MATERIALIZED VIEW`: checks and compiles the query, creates the view's topics,
    /// stores the definition and starts the view.
    pub(crate) async fn create(
        &self,
        engine: &SqlEngine,
        sql: &str,
        create: &CreateView,
    ) -> Result<QueryOutput, SqlError> {
        let name = object_name(&create.name);
        if self.exists(&name) {
            if create.if_not_exists {
                return Ok(QueryOutput::message(&format!("materialized view {name} exists")));
            }
            return Err(SqlError::Plan(format!("materialized view {name:?} exists")));
        }
        if create.or_replace {
            return Err(SqlError::Plan("OR REPLACE is not supported: DROP the view first".into()));
        }
        if name.starts_with("__") || name.is_empty() || name.len() > 200 || !name.chars().all(valid_topic_char) {
            return Err(SqlError::Plan(format!("{name:?} cannot name a view: its output topic takes the name")));
        }
        if self.broker.topic(&name).is_some() {
            return Err(SqlError::Plan(format!("a topic named {name:?} exists; a view writes to a topic of its name")));
        }
        let options = ViewOptions::parse(&create.options)?;
        let select = create.query.to_string();
        let source = source_of(engine, &select)?;
        let layout = engine.layout(&source).await?;
        let view = match compile(&select, &source, layout.clone()).await {
            Ok(view) => view,
            Err(SqlError::Plan(message)) if layout.source == (SchemaSource::Inferred { sampled: 0 }) => {
                return Err(SqlError::Plan(format!(
                    "{message} ({source:?} has no JSON records to infer its columns from: declare them with CREATE TABLE {source} (...))"
                )))
            }
            Err(e) => return Err(e),
        };
        if let (Shape::Stream { .. }, Some(_)) = (&view.shape, options.emit) {
            return Err(SqlError::Plan("emit applies to views with GROUP BY".into()));
        }
        let emit = options.emit.unwrap_or(if has_window(&view) { EmitMode::Final } else { EmitMode::Update });
        if emit == EmitMode::Final && !has_window(&view) {
            return Err(SqlError::Plan(
                "emit = 'final' needs a window (TUMBLE, HOP or SESSION) in the GROUP BY".into(),
            ));
        }
        let source_partitions = self.broker.topic(&source).map_or(1, |t| t.partitions);
        let def = ViewDef {
            name: name.clone(),
            sql: sql.to_string(),
            select,
            source,
            emit,
            lateness_ms: options.lateness_ms,
            partitions: options.partitions,
            from_latest: options.from_latest,
            source_schema: encode_schema(&layout)?,
        };
        self.create_topics(&def, &view, source_partitions)?;
        let bytes = serde_json::to_vec(&def).map_err(|e| SqlError::Internal(e.to_string()))?;
        engine.registry().put_view(&name, Some(Bytes::from(bytes)))?;
        self.launch(def, Arc::new(view));
        Ok(QueryOutput::message(&format!("created materialized view {name}")))
    }

    fn create_topics(&self, def: &ViewDef, view: &CompiledView, source_partitions: i32) -> Result<(), SqlError> {
        ensure_topic(&self.broker, &def.changelog_topic(), 1)?;
        // Aggregate rows replace each other by key: compaction keeps the latest. A stream
        // view's rows are events, kept by time like any topic.
        // An aggregate's rows are its current result, and late records keep their (possibly
        // old) timestamps, which retention would count from: neither expires by time. A stream
        // view's rows are events, kept like the source's.
        let keep = ("retention.ms", "-1");
        match view.shape {
            Shape::Aggregate(_) => {
                create_topic(&self.broker, &def.name, def.partitions, &[("cleanup.policy", "compact"), keep])?
            }
            Shape::Stream { .. } => create_topic(&self.broker, &def.name, def.partitions, &[])?,
        }
        create_topic(&self.broker, &def.late_topic(), source_partitions, &[keep])?;
        Ok(())
    }

    /// `DROP MATERIALIZED VIEW`: stops the view and deletes it with its three topics.
    pub(crate) async fn drop_views(
        &self,
        engine: &SqlEngine,
        names: &[ObjectName],
        if_exists: bool,
    ) -> Result<QueryOutput, SqlError> {
        let mut dropped = Vec::new();
        for name in names {
            let name = object_name(name);
            let registered = self.lock().remove(&name);
            let Some(registered) = registered else {
                if if_exists {
                    continue;
                }
                return Err(SqlError::Plan(format!("no materialized view named {name:?}")));
            };
            let _ = registered.stop.send(true);
            if let Some(task) = registered.task {
                let _ = task.await;
            }
            engine.registry().put_view(&name, None)?;
            for topic in [registered.def.changelog_topic(), registered.def.late_topic(), name.clone()] {
                match self.broker.propose(MetadataCommand::DeleteTopic { name: topic.clone() }) {
                    Ok(_) | Err(BrokerError::Metadata(MetadataError::UnknownTopic { .. })) => {}
                    Err(e) => return Err(SqlError::Storage(format!("deleting topic {topic}: {e}"))),
                }
            }
            dropped.push(name);
        }
        Ok(QueryOutput::message(&format!("dropped materialized view {}", dropped.join(", "))))
    }

    /// `SHOW MATERIALIZED VIEWS`: one row per view with its status and progress.
    pub(crate) fn show(&self) -> Result<QueryOutput, SqlError> {
        let views = self.lock();
        let mut names: Vec<&String> = views.keys().collect();
        names.sort();
        let text = |f: &dyn Fn(&Registered) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(names.iter().map(|n| f(&views[*n]))))
        };
        let number = |f: &dyn Fn(&Registered) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(names.iter().map(|n| f(&views[*n]))))
        };
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("name", text(&|r| r.def.name.clone())),
            ("status", text(&|r| r.shared.status())),
            ("source", text(&|r| r.def.source.clone())),
            ("emit", text(&|r| format!("{:?}", r.def.emit).to_lowercase())),
            ("lag", number(&|r| self.lag(r))),
            ("processed", number(&|r| r.shared.processed.load(Ordering::Relaxed) as i64)),
            ("late", number(&|r| r.shared.late.load(Ordering::Relaxed) as i64)),
            ("malformed", number(&|r| r.shared.malformed.load(Ordering::Relaxed) as i64)),
            ("emitted", number(&|r| r.shared.emitted.load(Ordering::Relaxed) as i64)),
            ("groups", number(&|r| r.shared.groups.load(Ordering::Relaxed) as i64)),
            ("watermark_ms", number(&|r| r.shared.watermark_ms.load(Ordering::Relaxed))),
            ("sql", text(&|r| r.def.sql.clone())),
        ];
        let schema = Arc::new(Schema::new(
            columns.iter().map(|(name, array)| Field::new(*name, array.data_type().clone(), false)).collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns.into_iter().map(|(_, a)| a).collect())
            .map_err(|e| SqlError::Internal(e.to_string()))?;
        Ok(QueryOutput { schema, batches: vec![batch], truncated: false, stats: QueryStatsSnapshot::default() })
    }

    /// Records of the source not yet committed by the view.
    fn lag(&self, registered: &Registered) -> i64 {
        let positions = registered.shared.positions.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let partitions = self.broker.topic(&registered.def.source).map_or(0, |t| t.partitions);
        (0..partitions)
            .map(|p| {
                let end = self.broker.partition(&registered.def.source, p).map_or(0, |h| h.log().last_stable_offset());
                let position = positions.get(&p).copied().unwrap_or(0);
                (end - position).max(0)
            })
            .sum()
    }

    /// A view's status and input records processed so far (benchmarks and tests poll this).
    pub fn progress(&self, name: &str) -> Option<(String, u64)> {
        let views = self.lock();
        let registered = views.get(name)?;
        Some((registered.shared.status(), registered.shared.processed.load(Ordering::Relaxed)))
    }

    /// The table `SELECT ... FROM <view>` reads.
    pub(crate) fn table(&self, name: &str, stats: &Arc<ScanStats>) -> Option<Arc<dyn TableProvider>> {
        let views = self.lock();
        let registered = views.get(name)?;
        let view = registered.view.as_ref()?;
        let (schema, latest_per_key) = view_schema(view);
        Some(Arc::new(table::ViewTable::new(
            Arc::clone(&self.broker),
            name.to_string(),
            schema,
            latest_per_key,
            Arc::clone(stats),
        )))
    }

    /// Stops every view at its next step (broker shutdown).
    pub async fn shutdown(&self) {
        let tasks: Vec<_> = {
            let mut views = self.lock();
            views
                .values_mut()
                .filter_map(|r| {
                    let _ = r.stop.send(true);
                    r.task.take()
                })
                .collect()
        };
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// The schema of a view's rows, and whether only the latest row per key counts.
fn view_schema(view: &CompiledView) -> (SchemaRef, bool) {
    match &view.shape {
        Shape::Stream { output_schema, .. } => (relaxed(output_schema), false),
        Shape::Aggregate(plan) => {
            let mut fields: Vec<Field> =
                plan.output_schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
            if plan.window.is_some() {
                for name in [emit::WINDOW_START, emit::WINDOW_END] {
                    if fields.iter().all(|f| f.name() != name) {
                        fields.push(Field::new(name, timestamp_type(), true));
                    }
                }
            }
            (Arc::new(Schema::new(fields)), true)
        }
    }
}

fn relaxed(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>()))
}

fn has_window(view: &CompiledView) -> bool {
    matches!(&view.shape, Shape::Aggregate(plan) if plan.window.is_some())
}

fn valid_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// The one topic a view's SELECT reads.
fn source_of(engine: &SqlEngine, select: &str) -> Result<String, SqlError> {
    let statement = parse_one(select)?;
    let ctx = datafusion::prelude::SessionContext::new();
    let references = ctx.state().resolve_table_references(&statement).map_err(SqlError::from_datafusion)?;
    match references.as_slice() {
        [one] => {
            let name = one.table().to_string();
            if engine.views().exists(&name) {
                return Err(SqlError::Plan(format!("{name:?} is a materialized view; views read topics")));
            }
            Ok(name)
        }
        _ => Err(SqlError::Plan("a materialized view reads exactly one topic".into())),
    }
}

/// `WITH (...)` options of a view.
#[derive(Debug, PartialEq, Eq)]
struct ViewOptions {
    emit: Option<EmitMode>,
    lateness_ms: i64,
    partitions: i32,
    from_latest: bool,
}

impl ViewOptions {
    fn parse(options: &CreateTableOptions) -> Result<ViewOptions, SqlError> {
        let mut parsed = ViewOptions { emit: None, lateness_ms: 0, partitions: 1, from_latest: false };
        let list: &[SqlOption] = match options {
            CreateTableOptions::None => &[],
            CreateTableOptions::With(list) | CreateTableOptions::Options(list) => list,
            _ => return Err(SqlError::Plan("view options go in WITH (key = 'value', ...)".into())),
        };
        for option in list {
            let SqlOption::KeyValue { key, value } = option else {
                return Err(SqlError::Plan(format!("unsupported view option {option}")));
            };
            let value = value.to_string();
            let value = value.trim_matches('\'').trim();
            match key.value.to_ascii_lowercase().as_str() {
                "emit" => {
                    parsed.emit = Some(match value.to_ascii_lowercase().as_str() {
                        "final" | "on window close" | "window_close" => EmitMode::Final,
                        "update" | "changes" | "on update" => EmitMode::Update,
                        other => return Err(SqlError::Plan(format!("emit = {other:?}: 'final' or 'update'"))),
                    })
                }
                "lateness" | "allowed_lateness" => parsed.lateness_ms = parse_duration_ms(value)?,
                "partitions" => {
                    parsed.partitions = value
                        .parse::<i32>()
                        .ok()
                        .filter(|p| (1..=1000).contains(p))
                        .ok_or_else(|| SqlError::Plan(format!("partitions = {value:?}: 1 to 1000")))?
                }
                "start" => {
                    parsed.from_latest = match value.to_ascii_lowercase().as_str() {
                        "earliest" => false,
                        "latest" => true,
                        other => return Err(SqlError::Plan(format!("start = {other:?}: 'earliest' or 'latest'"))),
                    }
                }
                other => {
                    return Err(SqlError::Plan(format!(
                        "unknown view option {other:?} (emit, lateness, partitions, start)"
                    )))
                }
            }
        }
        Ok(parsed)
    }
}

/// `"5 seconds"`, `"500 ms"`, `"2 minutes"`, `"1 hour"` or a number of milliseconds.
fn parse_duration_ms(text: &str) -> Result<i64, SqlError> {
    let bad = || SqlError::Plan(format!("{text:?} is not a duration (e.g. '5 seconds', '500 ms')"));
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().map_err(|_| bad())?;
    let unit_ms = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
        "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        _ => return Err(bad()),
    };
    number.checked_mul(unit_ms).ok_or_else(bad)
}

fn create_topic(broker: &Broker, name: &str, partitions: i32, configs: &[(&str, &str)]) -> Result<(), SqlError> {
    let mut map: BTreeMap<String, String> = configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    map.entry("max.message.bytes".into()).or_insert_with(|| INTERNAL_MESSAGE_BYTES_MAX.to_string());
    let command = MetadataCommand::CreateTopic {
        name: name.to_string(),
        topic_id: uuid::Uuid::new_v4().to_string(),
        partitions,
        configs: map,
    };
    match broker.propose(command) {
        Ok(_) | Err(BrokerError::Metadata(MetadataError::TopicExists { .. })) => Ok(()),
        Err(e) => Err(SqlError::Storage(format!("creating topic {name}: {e}"))),
    }
}

fn encode_schema(layout: &TableLayout) -> Result<String, SqlError> {
    let schema = Schema::new(layout.json_fields.clone());
    let mut bytes = Vec::new();
    {
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &schema)
            .map_err(|e| SqlError::Internal(format!("encoding a schema: {e}")))?;
        writer.finish().map_err(|e| SqlError::Internal(format!("encoding a schema: {e}")))?;
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::DataType;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_ms("5 seconds").ok(), Some(5_000));
        assert_eq!(parse_duration_ms("500 ms").ok(), Some(500));
        assert_eq!(parse_duration_ms("250").ok(), Some(250));
        assert_eq!(parse_duration_ms("2 minutes").ok(), Some(120_000));
        assert_eq!(parse_duration_ms("1 hour").ok(), Some(3_600_000));
        assert!(parse_duration_ms("soon").is_err());
        assert!(parse_duration_ms("5 fortnights").is_err());
    }

    #[test]
    fn schemas_survive_the_hex_round_trip() {
        let fields: Vec<FieldRef> = vec![Arc::new(Field::new("n", DataType::Int64, true))];
        let layout = TableLayout::new(&fields, SchemaSource::Declared);
        let def = ViewDef {
            name: "v".into(),
            sql: String::new(),
            select: String::new(),
            source: "t".into(),
            emit: EmitMode::Final,
            lateness_ms: 0,
            partitions: 1,
            from_latest: false,
            source_schema: encode_schema(&layout).expect("encode"),
        };
        let back = def.layout().expect("decode");
        assert_eq!(back.schema, layout.schema);
    }
}
