//! The PostgreSQL sink (`postgres-sink`, in the shape of Connect's JDBC sink): insert or upsert
//! (`ON CONFLICT` on a key from the record key or value fields), delete on tombstone,
//! `auto.create` and `auto.evolve` from schemaless JSON values, batches written with
//! `COPY ... FROM STDIN` (straight into the table for inserts, through a temporary staging
//! table for upserts).
//!
//! Exactly-once: each batch's rows and the positions it brings its partitions to are written
//! in **one database transaction** (table `runnel_connect_offsets`), and a task resumes from
//! that table — after a broker crash, a lost connection or a PostgreSQL restart alike, since a
//! commit whose outcome is unknown is settled by reading the table again.
//!
//! Fencing: a batch moves a partition's stored position only from where the task read it
//! (`UPDATE ... WHERE next_offset = from`), so of two tasks writing one partition at once (a
//! rebalance in progress, or a task aborted with its commit in flight) only the first commits;
//! the other's transaction is rolled back whole and it reopens from the stored position.

mod apply;
mod cells;
mod check;
mod copy_csv;
mod rows;
mod schema;

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::{Client, Transaction};

use self::apply::{apply_segment, Target};
use self::cells::Rows;
use self::check::TableInfo;
use self::rows::{plan, InsertMode, Mapping, PkMode};
use self::schema::TableRows;
use super::{Advance, Positions, Sink, SinkRecord, Written};
use crate::connect::config::{invalid, Settings};
use crate::connect::pg::{classify, connect, quote, quote_table};
use crate::connect::task::TaskContext;
use crate::connect::ConnectError;

/// Connect's JDBC sink default: records per transaction.
const BATCH_SIZE_DEFAULT: u64 = 3000;
/// A bound on `batch.size`: one batch's rows are held in memory and in one transaction.
const BATCH_SIZE_MAX: u64 = 100_000;
const OFFSETS_TABLE_DEFAULT: &str = "runnel_connect_offsets";

/// The sink's settings.
#[derive(Debug, Clone)]
struct PgSinkSettings {
    pg: tokio_postgres::Config,
    table_format: Vec<String>,
    mode: InsertMode,
    mapping: Mapping,
    auto_create: bool,
    auto_evolve: bool,
    batch_size: usize,
    offsets_table: String,
}

impl PgSinkSettings {
    fn parse(settings: Settings<'_>) -> Result<PgSinkSettings, ConnectError> {
        let pg = crate::connect::pg::connection_config(settings)?;
        let mode = match settings.one_of("insert.mode", "insert", &["insert", "upsert"])? {
            "upsert" => InsertMode::Upsert,
            _ => InsertMode::Insert,
        };
        let pk_mode = match settings.one_of("pk.mode", "none", &["none", "record_key", "record_value"])? {
            "record_key" => PkMode::RecordKey,
            "record_value" => PkMode::RecordValue,
            _ => PkMode::None,
        };
        let pk_fields = settings.list("pk.fields");
        let delete_enabled = settings.bool_or("delete.enabled", false)?;
        if mode == InsertMode::Upsert && pk_mode == PkMode::None {
            return Err(invalid("insert.mode=upsert needs pk.mode record_key or record_value".into()));
        }
        if pk_mode == PkMode::RecordValue && pk_fields.is_empty() {
            return Err(invalid("pk.mode=record_value needs pk.fields".into()));
        }
        if delete_enabled && pk_mode != PkMode::RecordKey {
            return Err(invalid("delete.enabled=true needs pk.mode=record_key".into()));
        }
        let batch_size = settings.u64_or("batch.size", BATCH_SIZE_DEFAULT)?;
        if batch_size == 0 || batch_size > BATCH_SIZE_MAX {
            return Err(invalid(format!("batch.size must be 1 to {BATCH_SIZE_MAX}")));
        }
        let format = settings.str("table.name.format").unwrap_or("${topic}");
        let table_format: Vec<String> = format.split('.').map(str::to_string).collect();
        if table_format.iter().any(|p| p.is_empty()) || table_format.len() > 2 {
            return Err(invalid(format!("table.name.format {format:?}: expected [schema.]table")));
        }
        Ok(PgSinkSettings {
            pg,
            table_format,
            mode,
            mapping: Mapping { pk_mode, pk_fields, delete_enabled },
            auto_create: settings.bool_or("auto.create", false)?,
            auto_evolve: settings.bool_or("auto.evolve", false)?,
            batch_size: batch_size as usize,
            offsets_table: quote(settings.str("offsets.table.name").unwrap_or(OFFSETS_TABLE_DEFAULT)),
        })
    }

    /// The table (schema-qualified parts) records of `topic` go to.
    fn table_for(&self, topic: &str) -> Vec<String> {
        self.table_format.iter().map(|p| p.replace("${topic}", topic)).collect()
    }
}

pub(crate) struct PostgresSink {
    settings: PgSinkSettings,
    connector: String,
    client: Option<Client>,
    tables: HashMap<String, TableInfo>,
    /// Upsert staging tables of this connection, by table: (name, columns it was made with).
    stages: HashMap<String, (String, usize)>,
    /// Per table: upserts left that go straight to the staging table (no COPY into the table first).
    conflict_backoff: HashMap<String, u32>,
}

/// A batch as rows, per table (by quoted name), and the records that cannot be rows.
struct Batch {
    rows: Rows,
    tables: BTreeMap<String, TableRows>,
    rejected: Vec<(usize, String)>,
}

impl PostgresSink {
    pub(crate) fn new(ctx: &TaskContext) -> Result<PostgresSink, ConnectError> {
        Ok(PostgresSink {
            settings: PgSinkSettings::parse(Settings(&ctx.config))?,
            connector: ctx.common.name.clone(),
            client: None,
            tables: HashMap::new(),
            stages: HashMap::new(),
            conflict_backoff: HashMap::new(),
        })
    }

    pub(crate) fn validate(settings: Settings<'_>) -> Result<(), ConnectError> {
        PgSinkSettings::parse(settings).map(|_| ())
    }

    /// Records to rows per table; records that cannot become rows are rejected.
    fn batch(&self, records: &[SinkRecord]) -> Batch {
        let mut batch = Batch { rows: Rows::default(), tables: BTreeMap::new(), rejected: Vec::new() };
        // Table names by topic: a batch holds few topics, so a list beats a map.
        let mut names: Vec<(&str, String)> = Vec::new();
        for (index, record) in records.iter().enumerate() {
            let mapping = &self.settings.mapping;
            let id = match mapping.add(&mut batch.rows, index, record.key.as_ref(), record.value.as_ref()) {
                Ok(Some(id)) => id,
                Ok(None) => continue,
                Err(e) => {
                    batch.rejected.push((index, e));
                    continue;
                }
            };
            let name = match names.iter().find(|(topic, _)| *topic == record.topic) {
                Some((_, name)) => name,
                None => {
                    names.push((&record.topic, quote_table(&self.settings.table_for(&record.topic))));
                    &names[names.len() - 1].1
                }
            };
            if let Some(table) = batch.tables.get_mut(name) {
                table.ids.push(id);
            } else {
                let pk = mapping.pk_columns(record.key.as_deref());
                batch.tables.insert(name.clone(), TableRows { pk, ids: vec![id] });
            }
        }
        batch
    }
}

impl Sink for PostgresSink {
    async fn open(&mut self, _partitions: &[(String, i32)]) -> Result<Positions, ConnectError> {
        self.client = None;
        self.tables.clear();
        self.stages.clear(); // temporary tables end with their connection
        let client = connect(&self.settings.pg).await?;
        let table = &self.settings.offsets_table;
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {table} (connector text NOT NULL, topic text NOT NULL, \
             partition integer NOT NULL, next_offset bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (connector, topic, partition))"
        );
        if let Err(e) = client.batch_execute(&create).await {
            // Tasks creating it at once race in the catalog; one of them wins.
            if e.code().is_none_or(|c| !matches!(c.code(), "23505" | "42P07" | "42710")) {
                return Err(classify(e));
            }
        }
        let rows = client
            .query(
                &format!("SELECT topic, partition, next_offset FROM {table} WHERE connector = $1"),
                &[&self.connector],
            )
            .await
            .map_err(classify)?;
        let mut positions = Positions::new();
        for row in rows {
            let (topic, partition, offset): (String, i32, i64) = (row.get(0), row.get(1), row.get(2));
            positions.insert((topic, partition), offset);
        }
        self.client = Some(client);
        Ok(positions)
    }

    async fn write(&mut self, records: &[SinkRecord], advance: &Advance<'_>) -> Result<Written, ConnectError> {
        let batch = self.batch(records);
        if !batch.rejected.is_empty() {
            return Ok(Written::Rejected(batch.rejected));
        }
        let PostgresSink { settings, connector, client, tables: cache, stages, conflict_backoff } = self;
        let client = client.as_mut().ok_or_else(|| ConnectError::PostgresRetriable("not connected".into()))?;
        let mut rejected = Vec::new();
        for (name, table) in &batch.tables {
            rejected.extend(schema::ensure_table(client, cache, settings, &batch.rows, name, table).await?);
        }
        if rejected.is_empty() {
            for (name, table) in &batch.tables {
                let info = cache.get(name).ok_or_else(|| ConnectError::Internal(format!("{name} is not loaded")))?;
                rejected.extend(check::refused(&batch.rows, &table.ids, name, info));
            }
        }
        if !rejected.is_empty() {
            return Ok(Written::Rejected(rejected));
        }
        for (name, table) in &batch.tables {
            if settings.mode == InsertMode::Upsert && !table.pk.is_empty() {
                let columns = cache.get(name).map_or(0, |info| info.columns.len());
                schema::ensure_stage(client, stages, name, columns).await?;
            }
        }
        let tx = client.transaction().await.map_err(classify)?;
        for (staging, (name, table)) in batch.tables.iter().enumerate() {
            let info = cache.get(name).ok_or_else(|| ConnectError::Internal(format!("{name} is not loaded")))?;
            let pk_ids: Vec<Option<u32>> = table.pk.iter().map(|c| batch.rows.column_id(c)).collect();
            let backoff = conflict_backoff.entry(name.clone()).or_default();
            let copy_first = *backoff == 0;
            *backoff = backoff.saturating_sub(1);
            for (segment_index, segment) in
                plan(&batch.rows, &table.ids, settings.mode, &pk_ids).into_iter().enumerate()
            {
                let target = Target {
                    name,
                    info,
                    pk: &table.pk,
                    pk_ids: &pk_ids,
                    mode: settings.mode,
                    staging: staging * SEGMENTS_PER_TABLE_MAX + segment_index,
                    upsert_stage: stages.get(name).map(|(stage, _)| stage.as_str()),
                    copy_first,
                };
                let applied = apply_segment(&tx, &target, &batch.rows, segment).await?;
                if applied.conflicted {
                    *conflict_backoff.entry(name.clone()).or_default() = CONFLICT_BACKOFF_BATCHES;
                }
                if !applied.refused.is_empty() {
                    let _ = tx.rollback().await;
                    return Ok(Written::Rejected(applied.refused));
                }
            }
        }
        if let Err(e) = write_offsets(&tx, &settings.offsets_table, connector, advance).await {
            let _ = tx.rollback().await;
            return Err(e);
        }
        tx.commit().await.map_err(classify)?;
        Ok(Written::Committed)
    }

    fn batch_max(&self) -> usize {
        self.settings.batch_size
    }
}

/// Batches of a table whose upsert goes straight to the staging table after its COPY into the
/// table met an existing key: a stream that updates rows would waste a COPY on most batches,
/// one that mostly adds rows tries again soon.
const CONFLICT_BACKOFF_BATCHES: u32 = 16;

/// Staging names are unique per (table, segment): segments of a table are at most its rows.
const SEGMENTS_PER_TABLE_MAX: usize = BATCH_SIZE_MAX as usize + 1;

/// Moves the stored positions of the partitions the batch advanced, in the batch's
/// transaction, and only from where this task stands (`advance.from`): a partition whose stored
/// position is elsewhere, or that has a row when the task found none, was written by another
/// task, and the write is [fenced](ConnectError::Fenced). Two writers racing on one row
/// serialize on its lock; the second sees the first's committed position (READ COMMITTED
/// re-checks the `WHERE` on the new row version; an `INSERT ... ON CONFLICT DO NOTHING` waits
/// for the first's insert), so it matches nothing.
async fn write_offsets(
    tx: &Transaction<'_>,
    table: &str,
    connector: &str,
    advance: &Advance<'_>,
) -> Result<(), ConnectError> {
    let moved = advance.moved();
    if moved.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = moved.iter().map(|((t, _), _, _)| t.as_str()).collect();
    let partitions: Vec<i32> = moved.iter().map(|((_, p), _, _)| *p).collect();
    let from: Vec<i64> = moved.iter().map(|(_, from, _)| *from).collect();
    let to: Vec<i64> = moved.iter().map(|(_, _, to)| *to).collect();
    // One round trip. Every part of the statement sees one snapshot: `added` inserts rows the
    // snapshot lacks, `moved` updates the rows it has that still stand at `from`.
    let statement = format!(
        "WITH u AS (SELECT * FROM unnest($2::text[], $3::int4[], $4::int8[], $5::int8[]) AS u(t, p, f, n)), \
         moved AS (UPDATE {table} o SET next_offset = u.n, updated_at = now() FROM u \
           WHERE o.connector = $1 AND o.topic = u.t AND o.partition = u.p AND o.next_offset = u.f RETURNING 1), \
         added AS (INSERT INTO {table} (connector, topic, partition, next_offset) SELECT $1, u.t, u.p, u.n FROM u \
           WHERE NOT EXISTS (SELECT 1 FROM {table} o WHERE o.connector = $1 AND o.topic = u.t AND o.partition = u.p) \
           ON CONFLICT DO NOTHING RETURNING 1) \
         SELECT (SELECT count(*) FROM moved) + (SELECT count(*) FROM added)"
    );
    let row = tx.query_one(&statement, &[&connector, &topics, &partitions, &from, &to]).await.map_err(classify)?;
    let written: i64 = row.try_get(0).map_err(classify)?;
    if written != moved.len() as i64 {
        let names: Vec<String> = moved.iter().map(|((t, p), f, _)| format!("{t}-{p}@{f}")).collect();
        return Err(ConnectError::Fenced(format!(
            "the stored positions of {connector} are no longer where this task read them for {} of {} partitions \
             ({}); another task committed them",
            moved.len() as i64 - written,
            moved.len(),
            names.join(", ")
        )));
    }
    Ok(())
}
