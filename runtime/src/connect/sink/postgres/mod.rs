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

mod rows;

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::{Client, Transaction};

use self::rows::{
    columns_of, copy_error_line, csv_line, infer_type, is_json_type, plan, InsertMode, Mapping, Op, PkMode, Row,
    Segment,
};
use super::{Positions, Sink, SinkRecord, Written};
use crate::connect::config::{invalid, Settings};
use crate::connect::pg::{classify, connect, describe, quote, quote_table};
use crate::connect::task::TaskContext;
use crate::connect::ConnectError;

/// Connect's JDBC sink default: records per transaction.
const BATCH_SIZE_DEFAULT: u64 = 3000;
/// A bound on `batch.size`: one batch's rows are held in memory and in one transaction.
const BATCH_SIZE_MAX: u64 = 100_000;
/// COPY data is sent in chunks of about this size.
const COPY_CHUNK_BYTES: usize = 1024 * 1024;
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

/// A table's columns and their types as `format_type` spells them.
#[derive(Debug, Clone, Default)]
struct TableInfo {
    columns: BTreeMap<String, String>,
}

pub(crate) struct PostgresSink {
    settings: PgSinkSettings,
    connector: String,
    client: Option<Client>,
    tables: HashMap<String, TableInfo>,
    /// Upsert staging tables of this connection, by table: (name, columns it was made with).
    /// Made once (`ON COMMIT DELETE ROWS`), not per transaction: creating and dropping a table's
    /// files every batch cost more than the COPY into it.
    stages: HashMap<String, (String, usize)>,
}

/// A table's operations in one batch.
struct TableOps {
    parts: Vec<String>,
    /// Primary key columns (from `pk.fields`, or the first record's key).
    pk: Vec<String>,
    ops: Vec<Op>,
}

impl PostgresSink {
    pub(crate) fn new(ctx: &TaskContext) -> Result<PostgresSink, ConnectError> {
        Ok(PostgresSink {
            settings: PgSinkSettings::parse(Settings(&ctx.config))?,
            connector: ctx.common.name.clone(),
            client: None,
            tables: HashMap::new(),
            stages: HashMap::new(),
        })
    }

    pub(crate) fn validate(settings: Settings<'_>) -> Result<(), ConnectError> {
        PgSinkSettings::parse(settings).map(|_| ())
    }

    /// Records to operations per table; records that cannot become rows are rejected.
    fn operations(&self, records: &[SinkRecord]) -> (BTreeMap<String, TableOps>, Vec<(usize, String)>) {
        let mut tables: BTreeMap<String, TableOps> = BTreeMap::new();
        let mut rejected = Vec::new();
        for (index, record) in records.iter().enumerate() {
            match self.settings.mapping.op(index, record.key.as_deref(), record.value.as_deref()) {
                Ok(Some(op)) => {
                    let parts = self.settings.table_for(&record.topic);
                    let name = quote_table(&parts);
                    let pk = || self.settings.mapping.pk_columns(record.key.as_deref());
                    tables.entry(name).or_insert_with(|| TableOps { parts, pk: pk(), ops: Vec::new() }).ops.push(op);
                }
                Ok(None) => {}
                Err(e) => rejected.push((index, e)),
            }
        }
        (tables, rejected)
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

    async fn write(&mut self, records: &[SinkRecord], positions: &Positions) -> Result<Written, ConnectError> {
        let (tables, mut rejected) = self.operations(records);
        if !rejected.is_empty() {
            return Ok(Written::Rejected(rejected));
        }
        let PostgresSink { settings, connector, client, tables: cache, stages } = self;
        let client = client.as_mut().ok_or_else(|| ConnectError::PostgresRetriable("not connected".into()))?;
        for (name, table) in &tables {
            rejected.extend(ensure_table(client, cache, settings, table).await?);
            if settings.mode == InsertMode::Upsert && !table.pk.is_empty() {
                let columns = cache.get(name).map_or(0, |info| info.columns.len());
                ensure_stage(client, stages, name, columns).await?;
            }
        }
        if !rejected.is_empty() {
            return Ok(Written::Rejected(rejected));
        }
        let tx = client.transaction().await.map_err(classify)?;
        let mut staging = 0;
        for (name, table) in tables {
            let info = cache.get(&name).cloned().unwrap_or_default();
            let pk = table.pk;
            for segment in plan(table.ops, settings.mode, &pk) {
                staging += 1;
                let upsert_stage = stages.get(&name).map(|(stage, _)| stage.as_str());
                let target = Target { name: &name, info: &info, pk: &pk, staging, upsert_stage };
                rejected.extend(apply_segment(&tx, &target, settings.mode, segment).await?);
            }
        }
        if !rejected.is_empty() {
            let _ = tx.rollback().await;
            return Ok(Written::Rejected(rejected));
        }
        write_offsets(&tx, &settings.offsets_table, connector, positions).await?;
        tx.commit().await.map_err(classify)?;
        Ok(Written::Committed)
    }

    fn batch_max(&self) -> usize {
        self.settings.batch_size
    }
}

/// Where a segment goes.
struct Target<'a> {
    name: &'a str,
    info: &'a TableInfo,
    pk: &'a [String],
    /// A number unique within the transaction, for staging table names.
    staging: usize,
    /// The connection's upsert staging table for this table.
    upsert_stage: Option<&'a str>,
}

/// Makes the upsert staging table of `table` (again, when the table gained columns).
async fn ensure_stage(
    client: &Client,
    stages: &mut HashMap<String, (String, usize)>,
    table: &str,
    columns: usize,
) -> Result<(), ConnectError> {
    if stages.get(table).is_some_and(|(_, made_with)| *made_with == columns) {
        return Ok(());
    }
    if let Some((stage, _)) = stages.remove(table) {
        client.batch_execute(&format!("DROP TABLE IF EXISTS {stage}")).await.map_err(classify)?;
    }
    // Named after the table and its width: stable for the connection, distinct per table.
    let stage = format!("runnel_upsert_{:08x}_{columns}", crc32c::crc32c(table.as_bytes()));
    let create = format!(
        "DROP TABLE IF EXISTS {stage}; CREATE TEMP TABLE {stage} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) \
         ON COMMIT DELETE ROWS"
    );
    client.batch_execute(&create).await.map_err(classify)?;
    stages.insert(table.to_string(), (stage, columns));
    Ok(())
}

async fn load_table(client: &Client, name: &str) -> Result<Option<TableInfo>, ConnectError> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&name],
        )
        .await
        .map_err(classify)?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(TableInfo { columns: rows.into_iter().map(|r| (r.get(0), r.get(1))).collect() }))
}

/// Makes sure the table exists with every column the batch writes (`auto.create`,
/// `auto.evolve`); without `auto.evolve`, records with unknown columns are rejected.
async fn ensure_table(
    client: &Client,
    cache: &mut HashMap<String, TableInfo>,
    settings: &PgSinkSettings,
    table: &TableOps,
) -> Result<Vec<(usize, String)>, ConnectError> {
    let name = quote_table(&table.parts);
    if !cache.contains_key(&name) {
        if let Some(info) = load_table(client, &name).await? {
            cache.insert(name.clone(), info);
        }
    }
    let rows: Vec<(usize, &Row)> = table
        .ops
        .iter()
        .map(|op| match op {
            Op::Write { index, row } => (*index, row),
            Op::Delete { index, key } => (*index, key),
        })
        .collect();
    let columns = columns_of(rows.iter().map(|(_, r)| *r));
    let definition = |column: &String| {
        let sql_type = infer_type(rows.iter().filter_map(|(_, r)| r.get(column)));
        format!("{} {sql_type}", quote(column))
    };
    let ddl = match cache.get(&name) {
        None if !settings.auto_create => {
            return Err(ConnectError::Postgres(format!("table {name} does not exist (auto.create=false)")));
        }
        None => {
            let pk = &table.pk;
            let mut parts: Vec<String> = columns.iter().map(definition).collect();
            if !pk.is_empty() {
                parts.push(format!("PRIMARY KEY ({})", pk.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")));
            }
            format!("CREATE TABLE IF NOT EXISTS {name} ({})", parts.join(", "))
        }
        Some(info) => {
            let missing: Vec<&String> = columns.iter().filter(|c| !info.columns.contains_key(*c)).collect();
            if missing.is_empty() {
                return Ok(Vec::new());
            }
            if !settings.auto_evolve {
                return Ok(rows
                    .iter()
                    .filter_map(|(index, row)| {
                        let unknown = row.keys().find(|c| !info.columns.contains_key(*c))?;
                        Some((*index, format!("column {unknown:?} does not exist in {name} (auto.evolve=false)")))
                    })
                    .collect());
            }
            let adds: Vec<String> =
                missing.iter().map(|c| format!("ADD COLUMN IF NOT EXISTS {}", definition(c))).collect();
            format!("ALTER TABLE {name} {}", adds.join(", "))
        }
    };
    tracing::info!(table = %name, ddl = %ddl, "evolving the sink's table");
    let outcome = client.batch_execute(&ddl).await;
    // Another task may have changed the table at the same time: what counts is the result.
    let info = load_table(client, &name).await?;
    match (outcome, info) {
        (_, Some(info)) if columns.iter().all(|c| info.columns.contains_key(c)) => {
            cache.insert(name, info);
            Ok(Vec::new())
        }
        (Err(e), _) => Err(classify(e)),
        (Ok(()), _) => Err(ConnectError::Postgres(format!("table {name} lacks columns after {ddl}"))),
    }
}

/// Applies one segment inside the transaction; returns the records PostgreSQL refused.
async fn apply_segment(
    tx: &Transaction<'_>,
    target: &Target<'_>,
    mode: InsertMode,
    segment: Segment,
) -> Result<Vec<(usize, String)>, ConnectError> {
    match segment {
        Segment::Delete(keys) => {
            let stage = format!("runnel_stage_{}", target.staging);
            let columns: Vec<String> = target.pk.to_vec();
            let select = columns.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
            let create = format!(
                "CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {select} FROM {} WITH NO DATA",
                target.name
            );
            tx.batch_execute(&create).await.map_err(classify)?;
            let (keys, bad) = copy_rows(tx, &stage, target.info, &columns, keys).await?;
            if !keys.is_empty() {
                let matches: Vec<String> = columns.iter().map(|c| format!("t.{0} = s.{0}", quote(c))).collect();
                let delete = format!("DELETE FROM {} t USING {stage} s WHERE {}", target.name, matches.join(" AND "));
                tx.batch_execute(&delete).await.map_err(classify)?;
            }
            Ok(bad)
        }
        Segment::Write(rows) => {
            // Rows are copied in groups of the same columns, so a field a record lacks gets the
            // column's default (NULL when none) whatever else its batch holds.
            let groups = group_by_columns(rows);
            if mode == InsertMode::Insert || target.pk.is_empty() {
                let mut bad = Vec::new();
                for (columns, rows) in groups {
                    bad.extend(copy_rows(tx, target.name, target.info, &columns, rows).await?.1);
                }
                return Ok(bad);
            }
            upsert(tx, target, groups).await
        }
    }
}

/// Rows (with their index in the batch) that have the same columns.
type ColumnGroup = (Vec<String>, Vec<(usize, Row)>);

/// Rows grouped by their set of columns, in order of first appearance.
fn group_by_columns(rows: Vec<(usize, Row)>) -> Vec<ColumnGroup> {
    let mut groups: Vec<ColumnGroup> = Vec::new();
    for (index, row) in rows {
        // Compared in place: rows almost always share their columns, so no allocation per row.
        match groups.iter_mut().find(|(c, _)| c.iter().eq(row.keys())) {
            Some((_, group)) => group.push((index, row)),
            None => groups.push((row.keys().cloned().collect(), vec![(index, row)])),
        }
    }
    groups
}

/// Upsert through a staging table: COPY the rows there (bad values are found by line), then
/// `INSERT ... SELECT ... ON CONFLICT DO UPDATE` into the table.
async fn upsert(
    tx: &Transaction<'_>,
    target: &Target<'_>,
    groups: Vec<ColumnGroup>,
) -> Result<Vec<(usize, String)>, ConnectError> {
    let stage =
        target.upsert_stage.ok_or_else(|| ConnectError::Internal(format!("no staging table for {}", target.name)))?;
    let mut bad = Vec::new();
    let mut staged = Vec::new();
    for (columns, rows) in groups {
        let (copied, refused) = copy_rows(tx, stage, target.info, &columns, rows).await?;
        bad.extend(refused);
        staged.extend(copied.into_iter().map(|(index, row)| (columns.clone(), index, row)));
    }
    if staged.is_empty() {
        return Ok(bad);
    }
    // Every column: the staged rows hold defaults for the fields their records lack.
    let columns: Vec<String> = target.info.columns.keys().cloned().collect();
    let list = columns.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
    let conflict = target.pk.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
    let updates: Vec<String> =
        columns.iter().filter(|c| !target.pk.contains(c)).map(|c| format!("{0} = EXCLUDED.{0}", quote(c))).collect();
    let action = if updates.is_empty() { "NOTHING".to_string() } else { format!("UPDATE SET {}", updates.join(", ")) };
    let insert =
        format!("INSERT INTO {} ({list}) SELECT {list} FROM {stage} ON CONFLICT ({conflict}) DO {action}", target.name);
    tx.batch_execute("SAVEPOINT runnel_upsert").await.map_err(classify)?;
    match tx.batch_execute(&insert).await {
        Ok(()) => {
            tx.batch_execute("RELEASE SAVEPOINT runnel_upsert").await.map_err(classify)?;
            Ok(bad)
        }
        Err(e) if is_data_error(&e) => {
            // No line to blame (e.g. a foreign key): find the rows that fail on their own.
            tx.batch_execute("ROLLBACK TO SAVEPOINT runnel_upsert").await.map_err(classify)?;
            for (row_columns, index, row) in staged {
                tx.batch_execute(&format!("SAVEPOINT runnel_row; TRUNCATE {stage}")).await.map_err(classify)?;
                let (_, mut one_bad) = copy_rows(tx, stage, target.info, &row_columns, vec![(index, row)]).await?;
                let failed = match one_bad.pop() {
                    Some(failure) => Some(failure),
                    None => tx.batch_execute(&insert).await.err().map(|e| (index, describe(&e))),
                };
                let end =
                    if failed.is_some() { "ROLLBACK TO SAVEPOINT runnel_row" } else { "RELEASE SAVEPOINT runnel_row" };
                tx.batch_execute(end).await.map_err(classify)?;
                bad.extend(failed);
            }
            Ok(bad)
        }
        Err(e) => Err(classify(e)),
    }
}

/// COPYs `rows` into `table`; a row PostgreSQL refuses (the error names its line) is taken
/// out and the COPY runs again without it. Returns the rows copied and the refused ones.
async fn copy_rows(
    tx: &Transaction<'_>,
    table: &str,
    info: &TableInfo,
    columns: &[String],
    mut rows: Vec<(usize, Row)>,
) -> Result<(Vec<(usize, Row)>, Vec<(usize, String)>), ConnectError> {
    let json: Vec<bool> = columns.iter().map(|c| info.columns.get(c).is_some_and(|t| is_json_type(t))).collect();
    let list = columns.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
    let statement = format!("COPY {table} ({list}) FROM STDIN (FORMAT csv)");
    let mut bad = Vec::new();
    loop {
        if rows.is_empty() {
            return Ok((rows, bad));
        }
        tx.batch_execute("SAVEPOINT runnel_copy").await.map_err(classify)?;
        match copy_once(tx, &statement, &rows, columns, &json).await {
            Ok(()) => {
                tx.batch_execute("RELEASE SAVEPOINT runnel_copy").await.map_err(classify)?;
                return Ok((rows, bad));
            }
            Err(e) => {
                let line = e
                    .as_db_error()
                    .filter(|_| is_data_error(&e))
                    .and_then(|db| db.where_())
                    .and_then(copy_error_line)
                    .filter(|line| (1..=rows.len()).contains(line));
                let Some(line) = line else { return Err(classify(e)) };
                tx.batch_execute("ROLLBACK TO SAVEPOINT runnel_copy").await.map_err(classify)?;
                let (index, _) = rows.remove(line - 1);
                bad.push((index, describe(&e)));
            }
        }
    }
}

async fn copy_once(
    tx: &Transaction<'_>,
    statement: &str,
    rows: &[(usize, Row)],
    columns: &[String],
    json: &[bool],
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in::<_, Bytes>(statement).await?;
    let mut sink = std::pin::pin!(sink);
    let mut buffer = Vec::with_capacity(COPY_CHUNK_BYTES + 4096);
    for (_, row) in rows {
        csv_line(&mut buffer, row, columns, json);
        if buffer.len() >= COPY_CHUNK_BYTES {
            sink.send(Bytes::from(std::mem::take(&mut buffer))).await?;
        }
    }
    if !buffer.is_empty() {
        sink.send(Bytes::from(buffer)).await?;
    }
    let copied = sink.as_mut().finish().await?;
    assert_eq!(copied, rows.len() as u64, "COPY into {statement} took {copied} of {} rows", rows.len());
    Ok(())
}

/// Errors that belong to the data of a row: class 22 (data exception), 23 (integrity
/// constraint violation) and 42804 (datatype mismatch).
fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        let code = c.code();
        code.starts_with("22") || code.starts_with("23") || code == "42804"
    })
}

async fn write_offsets(
    tx: &Transaction<'_>,
    table: &str,
    connector: &str,
    positions: &Positions,
) -> Result<(), ConnectError> {
    let topics: Vec<&str> = positions.keys().map(|(t, _)| t.as_str()).collect();
    let partitions: Vec<i32> = positions.keys().map(|(_, p)| *p).collect();
    let offsets: Vec<i64> = positions.values().copied().collect();
    let statement = format!(
        "INSERT INTO {table} (connector, topic, partition, next_offset) \
         SELECT $1, t, p, o FROM unnest($2::text[], $3::int4[], $4::int8[]) AS u(t, p, o) \
         ON CONFLICT (connector, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
    );
    tx.execute(&statement, &[&connector, &topics, &partitions, &offsets]).await.map_err(classify)?;
    Ok(())
}
