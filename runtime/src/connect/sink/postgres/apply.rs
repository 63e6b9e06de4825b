//! A batch's statements inside its transaction: rows COPYed straight into the table (inserts),
//! through the connection's staging table and `INSERT ... ON CONFLICT` (upserts), and keys
//! through a staging table and `DELETE ... USING` (deletes).
//!
//! An upsert first COPYs its rows straight into the table, inside a savepoint: when none of its
//! keys exists that is the whole upsert, at the cost of an insert (`ON CONFLICT`'s speculative
//! insertion of each row from a staging table costs about three times as much). A key that
//! exists fails that COPY (unique violation): it is rolled back to the savepoint and the rows
//! go through the staging table; the table then goes straight there for a while.
//!
//! A row PostgreSQL refuses is returned (a COPY error names its line); the caller rolls the
//! transaction back and writes the batch again without it. An error that names no row (a
//! foreign key, checked at the end of the statement) is rolled back to the segment's
//! savepoint, and the segment's rows are then applied one by one, each in a savepoint of its
//! own, to find the ones that fail.

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::Transaction;

use super::cells::{RowId, Rows};
use super::check::TableInfo;
use super::copy_csv::{copy_error_line, csv_line, CopyColumns};
use super::rows::{InsertMode, Segment};
use crate::connect::pg::{classify, describe, quote};
use crate::connect::ConnectError;

/// COPY data is sent in chunks of about this size (PostgreSQL parses one while the next is
/// encoded; one chunk is the most a COPY holds in memory besides its rows).
const COPY_CHUNK_BYTES: usize = 1024 * 1024;

/// Rows refused by PostgreSQL: (index of the record in its batch, why).
pub(super) type Refused = Vec<(usize, String)>;

/// What applying a segment did.
#[derive(Debug, Default)]
pub(super) struct Applied {
    /// Rows PostgreSQL refused (the transaction must be rolled back).
    pub(super) refused: Refused,
    /// An upsert's COPY into the table met an existing key (and `ON CONFLICT` did the work).
    pub(super) conflicted: bool,
}

impl From<Refused> for Applied {
    fn from(refused: Refused) -> Applied {
        Applied { refused, conflicted: false }
    }
}

/// Where a segment goes.
pub(super) struct Target<'a> {
    pub(super) name: &'a str,
    pub(super) info: &'a TableInfo,
    /// Primary key columns, and their column ids in the batch (`None`: no row has it).
    pub(super) pk: &'a [String],
    pub(super) pk_ids: &'a [Option<u32>],
    pub(super) mode: InsertMode,
    /// A number unique within the transaction, for staging table names.
    pub(super) staging: usize,
    /// The connection's upsert staging table for this table.
    pub(super) upsert_stage: Option<&'a str>,
    /// Upserts try a COPY straight into the table first.
    pub(super) copy_first: bool,
}

impl Target<'_> {
    fn columns(&self, rows: &Rows, ids: Vec<u32>) -> CopyColumns {
        let info = self.info;
        CopyColumns::new(rows, ids, |name| info.columns.get(name).is_some_and(|c| is_json_type(&c.sql_type)))
    }
}

/// Whether a column of this type (as `format_type` spells it) takes JSON text.
fn is_json_type(sql_type: &str) -> bool {
    sql_type == "json" || sql_type == "jsonb"
}

/// Applies one segment inside the transaction.
pub(super) async fn apply_segment(
    tx: &Transaction<'_>,
    target: &Target<'_>,
    rows: &Rows,
    segment: Segment,
) -> Result<Applied, ConnectError> {
    match segment {
        Segment::Delete(keys) => delete(tx, target, rows, &keys).await.map(Applied::from),
        Segment::Write(ids) if target.mode == InsertMode::Insert || target.pk.is_empty() => {
            insert(tx, target, rows, &ids).await.map(Applied::from)
        }
        Segment::Write(ids) => upsert(tx, target, rows, &ids).await,
    }
}

/// Insert: COPY straight into the table.
async fn insert(
    tx: &Transaction<'_>,
    target: &Target<'_>,
    rows: &Rows,
    ids: &[RowId],
) -> Result<Refused, ConnectError> {
    tx.batch_execute("SAVEPOINT runnel_segment").await.map_err(classify)?;
    match copy_groups(tx, target, target.name, rows, ids).await? {
        None => {
            tx.batch_execute("RELEASE SAVEPOINT runnel_segment").await.map_err(classify)?;
            Ok(Vec::new())
        }
        Some(refusal) if refusal.record.is_some() => Ok(refusal.into_refused()),
        Some(unlocated) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT runnel_segment").await.map_err(classify)?;
            let refused = isolate(tx, target, rows, ids, target.name, None).await?;
            // Every row went in on its own: the failure came from the rows together.
            if refused.is_empty() {
                return Err(ConnectError::Postgres(unlocated.message));
            }
            Ok(refused)
        }
    }
}

/// Rows grouped by their set of columns (in order of first appearance), so that each group is
/// copied with its own column list and a field a record lacks gets the column's default.
fn by_shape(rows: &Rows, ids: &[RowId]) -> Vec<(u32, Vec<RowId>)> {
    let mut groups: Vec<(u32, Vec<RowId>)> = Vec::new();
    let mut index: HashMap<u32, usize> = HashMap::new();
    for &id in ids {
        let shape = rows.row(id).shape;
        let group = *index.entry(shape).or_insert_with(|| {
            groups.push((shape, Vec::new()));
            groups.len() - 1
        });
        groups[group].1.push(id);
    }
    groups
}

/// COPYs the rows into `table`, one COPY per shape; stops at the first row refused.
async fn copy_groups(
    tx: &Transaction<'_>,
    target: &Target<'_>,
    table: &str,
    rows: &Rows,
    ids: &[RowId],
) -> Result<Option<Refusal>, ConnectError> {
    for (shape, group) in by_shape(rows, ids) {
        let columns = target.columns(rows, rows.shape_columns(shape).collect());
        if let Some(refusal) = copy_rows(tx, table, rows, &group, &columns).await? {
            return Ok(Some(refusal));
        }
    }
    Ok(None)
}

async fn delete(
    tx: &Transaction<'_>,
    target: &Target<'_>,
    rows: &Rows,
    keys: &[RowId],
) -> Result<Refused, ConnectError> {
    let stage = format!("runnel_stage_{}", target.staging);
    let select = target.pk.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
    let create =
        format!("CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {select} FROM {} WITH NO DATA", target.name);
    tx.batch_execute(&create).await.map_err(classify)?;
    // The key columns some row has (a key column no row has stays NULL and matches nothing).
    let columns = target.columns(rows, target.pk_ids.iter().flatten().copied().collect());
    match copy_rows(tx, &stage, rows, keys, &columns).await? {
        Some(refusal) if refusal.record.is_some() => return Ok(refusal.into_refused()),
        Some(unlocated) => return Err(ConnectError::Postgres(unlocated.message)),
        None => {}
    }
    let matches: Vec<String> = target.pk.iter().map(|c| format!("t.{0} = s.{0}", quote(c))).collect();
    let delete = format!("DELETE FROM {} t USING {stage} s WHERE {}", target.name, matches.join(" AND "));
    tx.batch_execute(&delete).await.map_err(classify)?;
    Ok(Vec::new())
}

/// Upsert: COPY straight into the table (when `copy_first`); when a key exists, through the
/// staging table and `INSERT ... SELECT ... ON CONFLICT DO UPDATE`.
async fn upsert(
    tx: &Transaction<'_>,
    target: &Target<'_>,
    rows: &Rows,
    ids: &[RowId],
) -> Result<Applied, ConnectError> {
    let stage =
        target.upsert_stage.ok_or_else(|| ConnectError::Internal(format!("no staging table for {}", target.name)))?;
    tx.batch_execute("SAVEPOINT runnel_segment").await.map_err(classify)?;
    let mut conflicted = false;
    if target.copy_first {
        match copy_groups(tx, target, target.name, rows, ids).await? {
            None => {
                tx.batch_execute("RELEASE SAVEPOINT runnel_segment").await.map_err(classify)?;
                return Ok(Applied::default());
            }
            Some(refusal) if refusal.record.is_some() && refusal.code != Some(SqlState::UNIQUE_VIOLATION) => {
                return Ok(refusal.into_refused().into());
            }
            // A key exists (or a row is refused for reasons the upsert below meets again).
            Some(refusal) => {
                conflicted = refusal.code == Some(SqlState::UNIQUE_VIOLATION);
                tx.batch_execute("ROLLBACK TO SAVEPOINT runnel_segment").await.map_err(classify)?;
            }
        }
    }
    match copy_groups(tx, target, stage, rows, ids).await? {
        Some(refusal) if refusal.record.is_some() => {
            return Ok(Applied { refused: refusal.into_refused(), conflicted })
        }
        Some(unlocated) => return Err(ConnectError::Postgres(unlocated.message)),
        None => {}
    }
    let insert = upsert_statement(target, stage);
    match tx.batch_execute(&insert).await {
        Ok(()) => {
            tx.batch_execute("RELEASE SAVEPOINT runnel_segment").await.map_err(classify)?;
            Ok(Applied { refused: Vec::new(), conflicted })
        }
        Err(e) if is_data_error(&e) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT runnel_segment").await.map_err(classify)?;
            let refused = isolate(tx, target, rows, ids, stage, Some(&insert)).await?;
            if refused.is_empty() {
                return Err(ConnectError::Postgres(describe(&e)));
            }
            Ok(Applied { refused, conflicted })
        }
        Err(e) => Err(classify(e)),
    }
}

/// `INSERT ... SELECT` every column from the staging table (the staged rows hold defaults for
/// the fields their records lack) `ON CONFLICT (pk) DO UPDATE` every other column.
fn upsert_statement(target: &Target<'_>, stage: &str) -> String {
    let columns: Vec<String> = target.info.columns.keys().map(|c| quote(c)).collect();
    let list = columns.join(", ");
    let conflict = target.pk.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
    let updates: Vec<String> = target
        .info
        .columns
        .keys()
        .filter(|c| !target.pk.contains(c))
        .map(|c| format!("{0} = EXCLUDED.{0}", quote(c)))
        .collect();
    let action = if updates.is_empty() { "NOTHING".to_string() } else { format!("UPDATE SET {}", updates.join(", ")) };
    format!("INSERT INTO {} ({list}) SELECT {list} FROM {stage} ON CONFLICT ({conflict}) DO {action}", target.name)
}

/// Applies the rows one by one, each in a savepoint, to find the ones that fail on their own
/// (those that do not fail stay applied): a COPY of the row into `table`, then `insert` (an
/// upsert from `table`, the staging table) when given.
async fn isolate(
    tx: &Transaction<'_>,
    target: &Target<'_>,
    rows: &Rows,
    ids: &[RowId],
    table: &str,
    insert: Option<&str>,
) -> Result<Refused, ConnectError> {
    let mut refused = Vec::new();
    for &id in ids {
        let start = match insert {
            Some(_) => format!("SAVEPOINT runnel_row; TRUNCATE {table}"),
            None => "SAVEPOINT runnel_row".to_string(),
        };
        tx.batch_execute(&start).await.map_err(classify)?;
        let record = rows.row(id).record;
        let columns = target.columns(rows, rows.shape_columns(rows.row(id).shape).collect());
        let mut failed = copy_rows(tx, table, rows, &[id], &columns).await?.map(|r| (record, r.message));
        if let (None, Some(insert)) = (&failed, insert) {
            failed = tx.batch_execute(insert).await.err().map(|e| (record, describe(&e)));
        }
        let end = if failed.is_some() { "ROLLBACK TO SAVEPOINT runnel_row" } else { "RELEASE SAVEPOINT runnel_row" };
        tx.batch_execute(end).await.map_err(classify)?;
        refused.extend(failed);
    }
    Ok(refused)
}

/// A COPY PostgreSQL refused for the data in it.
#[derive(Debug)]
struct Refusal {
    /// Index in the batch of the record whose row the error names (`None`: it names none, e.g.
    /// a foreign key checked at the end of the statement).
    record: Option<usize>,
    message: String,
    code: Option<SqlState>,
}

impl Refusal {
    fn into_refused(self) -> Refused {
        self.record.map(|record| (record, self.message)).into_iter().collect()
    }
}

/// COPYs rows into `table`; a data error is returned with the row it names, if any.
async fn copy_rows(
    tx: &Transaction<'_>,
    table: &str,
    rows: &Rows,
    ids: &[RowId],
    columns: &CopyColumns,
) -> Result<Option<Refusal>, ConnectError> {
    if ids.is_empty() {
        return Ok(None);
    }
    let list: Vec<String> = columns.ids().iter().map(|&c| quote(rows.name(c))).collect();
    let statement = format!("COPY {table} ({}) FROM STDIN (FORMAT csv)", list.join(", "));
    let Err(e) = copy_once(tx, &statement, rows, ids, columns).await else { return Ok(None) };
    if !is_data_error(&e) {
        return Err(classify(e));
    }
    let line = e
        .as_db_error()
        .and_then(|db| db.where_())
        .and_then(copy_error_line)
        .filter(|line| (1..=ids.len()).contains(line));
    let record = line.map(|line| rows.row(ids[line - 1]).record);
    Ok(Some(Refusal { record, message: describe(&e), code: e.code().cloned() }))
}

async fn copy_once(
    tx: &Transaction<'_>,
    statement: &str,
    rows: &Rows,
    ids: &[RowId],
    columns: &CopyColumns,
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in::<_, Bytes>(statement).await?;
    let mut sink = std::pin::pin!(sink);
    let mut buffer = Vec::with_capacity(COPY_CHUNK_BYTES + 4096);
    let mut slots = Vec::new();
    for &id in ids {
        csv_line(&mut buffer, rows, rows.row(id), columns, &mut slots);
        if buffer.len() >= COPY_CHUNK_BYTES {
            sink.send(Bytes::from(std::mem::replace(&mut buffer, Vec::with_capacity(COPY_CHUNK_BYTES + 4096)))).await?;
        }
    }
    if !buffer.is_empty() {
        sink.send(Bytes::from(buffer)).await?;
    }
    let copied = sink.as_mut().finish().await?;
    assert_eq!(copied, ids.len() as u64, "COPY into {statement} took {copied} of {} rows", ids.len());
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
