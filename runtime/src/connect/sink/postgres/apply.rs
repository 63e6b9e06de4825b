//! A batch's statements inside its transaction: rows COPYed straight into the table (inserts),
//! through the connection's staging table and `INSERT ... ON CONFLICT` (upserts), and keys
//! through a staging table and `DELETE ... USING` (deletes). A row PostgreSQL refuses is
//! returned (a COPY error names its line); the caller then rolls the transaction back and
//! writes the batch again without it — no savepoint per COPY, since rows were checked before.

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::SinkExt;
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

/// Applies one segment inside the transaction; returns the rows PostgreSQL refused.
pub(super) async fn apply_segment(
    tx: &Transaction<'_>,
    target: &Target<'_>,
    rows: &Rows,
    segment: Segment,
) -> Result<Refused, ConnectError> {
    match segment {
        Segment::Delete(keys) => delete(tx, target, rows, &keys).await,
        Segment::Write(ids) if target.mode == InsertMode::Insert || target.pk.is_empty() => {
            for (shape, group) in by_shape(rows, &ids) {
                let columns = target.columns(rows, rows.shape_columns(shape).collect());
                if let Some(refused) = copy_rows(tx, target.name, rows, &group, &columns).await? {
                    return Ok(vec![refused]);
                }
            }
            Ok(Vec::new())
        }
        Segment::Write(ids) => upsert(tx, target, rows, &ids).await,
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
    if let Some(refused) = copy_rows(tx, &stage, rows, keys, &columns).await? {
        return Ok(vec![refused]);
    }
    let matches: Vec<String> = target.pk.iter().map(|c| format!("t.{0} = s.{0}", quote(c))).collect();
    let delete = format!("DELETE FROM {} t USING {stage} s WHERE {}", target.name, matches.join(" AND "));
    tx.batch_execute(&delete).await.map_err(classify)?;
    Ok(Vec::new())
}

/// Upsert through the staging table: COPY the rows there, then `INSERT ... SELECT ... ON
/// CONFLICT DO UPDATE` into the table. That statement's errors name no row (e.g. a foreign
/// key): then the rows are tried one by one, inside savepoints, to find the ones that fail.
async fn upsert(
    tx: &Transaction<'_>,
    target: &Target<'_>,
    rows: &Rows,
    ids: &[RowId],
) -> Result<Refused, ConnectError> {
    let stage =
        target.upsert_stage.ok_or_else(|| ConnectError::Internal(format!("no staging table for {}", target.name)))?;
    for (shape, group) in by_shape(rows, ids) {
        let columns = target.columns(rows, rows.shape_columns(shape).collect());
        if let Some(refused) = copy_rows(tx, stage, rows, &group, &columns).await? {
            return Ok(vec![refused]);
        }
    }
    // Every column: the staged rows hold defaults for the fields their records lack.
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
    let insert =
        format!("INSERT INTO {} ({list}) SELECT {list} FROM {stage} ON CONFLICT ({conflict}) DO {action}", target.name);
    tx.batch_execute("SAVEPOINT runnel_upsert").await.map_err(classify)?;
    match tx.batch_execute(&insert).await {
        Ok(()) => {
            tx.batch_execute("RELEASE SAVEPOINT runnel_upsert").await.map_err(classify)?;
            Ok(Vec::new())
        }
        Err(e) if is_data_error(&e) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT runnel_upsert").await.map_err(classify)?;
            isolate(tx, target, rows, ids, stage, &insert).await
        }
        Err(e) => Err(classify(e)),
    }
}

/// Finds the rows whose upsert fails on its own (no line to blame), one savepoint per row.
async fn isolate(
    tx: &Transaction<'_>,
    target: &Target<'_>,
    rows: &Rows,
    ids: &[RowId],
    stage: &str,
    insert: &str,
) -> Result<Refused, ConnectError> {
    let mut refused = Vec::new();
    for &id in ids {
        tx.batch_execute(&format!("SAVEPOINT runnel_row; TRUNCATE {stage}")).await.map_err(classify)?;
        let columns = target.columns(rows, rows.shape_columns(rows.row(id).shape).collect());
        let failed = match copy_rows(tx, stage, rows, &[id], &columns).await? {
            Some(failure) => Some(failure),
            None => tx.batch_execute(insert).await.err().map(|e| (rows.row(id).record, describe(&e))),
        };
        let end = if failed.is_some() { "ROLLBACK TO SAVEPOINT runnel_row" } else { "RELEASE SAVEPOINT runnel_row" };
        tx.batch_execute(end).await.map_err(classify)?;
        refused.extend(failed);
    }
    Ok(refused)
}

/// COPYs rows into `table`; a row PostgreSQL refuses (the error names its line) is returned.
async fn copy_rows(
    tx: &Transaction<'_>,
    table: &str,
    rows: &Rows,
    ids: &[RowId],
    columns: &CopyColumns,
) -> Result<Option<(usize, String)>, ConnectError> {
    if ids.is_empty() {
        return Ok(None);
    }
    let list: Vec<String> = columns.ids().iter().map(|&c| quote(rows.name(c))).collect();
    let statement = format!("COPY {table} ({}) FROM STDIN (FORMAT csv)", list.join(", "));
    let Err(e) = copy_once(tx, &statement, rows, ids, columns).await else { return Ok(None) };
    let line = e
        .as_db_error()
        .filter(|_| is_data_error(&e))
        .and_then(|db| db.where_())
        .and_then(copy_error_line)
        .filter(|line| (1..=ids.len()).contains(line));
    match line {
        Some(line) => Ok(Some((rows.row(ids[line - 1]).record, describe(&e)))),
        None => Err(classify(e)),
    }
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
