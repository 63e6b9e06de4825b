//! The sink's tables in the catalog: what a table's columns are (types, NOT NULL, defaults),
//! creating a table (`auto.create`) or adding the columns a batch brings (`auto.evolve`), and
//! the connection's upsert staging tables. All of it runs outside the batch's transaction.

use std::collections::{BTreeSet, HashMap};

use tokio_postgres::Client;

use super::cells::{RowId, Rows};
use super::check::{ColumnInfo, TableInfo};
use super::rows::infer_type;
use super::PgSinkSettings;
use crate::connect::pg::{classify, quote};
use crate::connect::ConnectError;

/// A table's rows in one batch.
#[derive(Debug)]
pub(super) struct TableRows {
    /// Primary key columns (from `pk.fields`, or the first record's key).
    pub(super) pk: Vec<String>,
    pub(super) ids: Vec<RowId>,
}

/// The table's columns, or `None` when it does not exist.
async fn load_table(client: &Client, name: &str) -> Result<Option<TableInfo>, ConnectError> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
             a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '', c.relhastriggers \
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&name],
        )
        .await
        .map_err(classify)?;
    let Some(first) = rows.first() else { return Ok(None) };
    let has_triggers: bool = first.get(4);
    let columns = rows
        .iter()
        .map(|r| (r.get(0), ColumnInfo { sql_type: r.get(1), not_null: r.get(2), has_default: r.get(3) }))
        .collect();
    Ok(Some(TableInfo { columns, has_triggers }))
}

/// The columns any of the rows has, by id.
fn columns_of(rows: &Rows, ids: &[RowId]) -> BTreeSet<u32> {
    let shapes: BTreeSet<u32> = ids.iter().map(|&id| rows.row(id).shape).collect();
    shapes.into_iter().flat_map(|shape| rows.shape_columns(shape)).collect()
}

/// Makes sure table `name` exists with every column its rows write (`auto.create`,
/// `auto.evolve`); without `auto.evolve`, rows with unknown columns are returned as refused.
pub(super) async fn ensure_table(
    client: &Client,
    cache: &mut HashMap<String, TableInfo>,
    settings: &PgSinkSettings,
    rows: &Rows,
    name: &str,
    table: &TableRows,
) -> Result<Vec<(usize, String)>, ConnectError> {
    if !cache.contains_key(name) {
        if let Some(info) = load_table(client, name).await? {
            cache.insert(name.to_string(), info);
        }
    }
    let columns = columns_of(rows, &table.ids);
    let definition = |column: u32| {
        let kinds = table.ids.iter().filter_map(|&id| rows.cell(rows.row(id), column).map(|c| c.kind));
        format!("{} {}", quote(rows.name(column)), infer_type(kinds))
    };
    let ddl = match cache.get(name) {
        None if !settings.auto_create => {
            return Err(ConnectError::Postgres(format!("table {name} does not exist (auto.create=false)")));
        }
        None => {
            let mut parts: Vec<String> = columns.iter().map(|&c| definition(c)).collect();
            if !table.pk.is_empty() {
                let pk: Vec<String> = table.pk.iter().map(|c| quote(c)).collect();
                parts.push(format!("PRIMARY KEY ({})", pk.join(", ")));
            }
            format!("CREATE TABLE IF NOT EXISTS {name} ({})", parts.join(", "))
        }
        Some(info) => {
            let missing: Vec<u32> =
                columns.iter().copied().filter(|&c| !info.columns.contains_key(rows.name(c))).collect();
            if missing.is_empty() {
                return Ok(Vec::new());
            }
            if !settings.auto_evolve {
                return Ok(unknown_columns(rows, &table.ids, name, info));
            }
            let adds: Vec<String> =
                missing.iter().map(|&c| format!("ADD COLUMN IF NOT EXISTS {}", definition(c))).collect();
            format!("ALTER TABLE {name} {}", adds.join(", "))
        }
    };
    tracing::info!(table = %name, ddl = %ddl, "evolving the sink's table");
    let outcome = client.batch_execute(&ddl).await;
    // Another task may have changed the table at the same time: what counts is the result.
    let info = load_table(client, name).await?;
    match (outcome, info) {
        (_, Some(info)) if columns.iter().all(|&c| info.columns.contains_key(rows.name(c))) => {
            cache.insert(name.to_string(), info);
            Ok(Vec::new())
        }
        (Err(e), _) => Err(classify(e)),
        (Ok(()), _) => Err(ConnectError::Postgres(format!("table {name} lacks columns after {ddl}"))),
    }
}

/// The rows that name a column the table lacks (`auto.evolve=false`).
fn unknown_columns(rows: &Rows, ids: &[RowId], name: &str, info: &TableInfo) -> Vec<(usize, String)> {
    ids.iter()
        .filter_map(|&id| {
            let row = rows.row(id);
            let unknown =
                rows.cells(row).iter().map(|c| rows.name(c.column)).find(|c| !info.columns.contains_key(*c))?;
            Some((row.record, format!("column {unknown:?} does not exist in {name} (auto.evolve=false)")))
        })
        .collect()
}

/// Makes the upsert staging table of `table` (again, when the table gained columns): one per
/// connection and table, emptied at every commit (`ON COMMIT DELETE ROWS`) — creating and
/// dropping a table's files every batch cost more than the COPY into it.
pub(super) async fn ensure_stage(
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
