//! Records to rows, without I/O: the primary key from the record key or value fields,
//! tombstones to deletes, a batch to the statements that apply it with the same effect as
//! applying its records one by one, and column types inferred from schemaless JSON. Rows are
//! [`Rows`] cells pointing into the records' bytes (see `cells`).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::Value;

use super::cells::{kind_of, Kind, RowId, Rows};

/// Column name for a key that is not a JSON object, when `pk.fields` does not name one.
const SCALAR_KEY_COLUMN: &str = "id";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InsertMode {
    Insert,
    Upsert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PkMode {
    None,
    RecordKey,
    RecordValue,
}

/// How records map to rows (`pk.mode`, `pk.fields`, `delete.enabled`).
#[derive(Debug, Clone)]
pub(crate) struct Mapping {
    pub(crate) pk_mode: PkMode,
    pub(crate) pk_fields: Vec<String>,
    pub(crate) delete_enabled: bool,
}

/// Statements for one table, applied in order: rows to write, or keys to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Write(Vec<RowId>),
    Delete(Vec<RowId>),
}

impl Mapping {
    /// Adds the row of record `index` to `rows`: `None` for a tombstone when deletes are off
    /// (skipped); an error names why the record cannot be a row.
    pub(crate) fn add(
        &self,
        rows: &mut Rows,
        index: usize,
        key: Option<&Bytes>,
        value: Option<&Bytes>,
    ) -> Result<Option<RowId>, String> {
        rows.begin(index, key, value);
        match self.fill(rows, key, value) {
            Ok(Some(delete)) => Ok(Some(rows.finish(delete))),
            other => {
                rows.abandon();
                other.map(|_| None)
            }
        }
    }

    /// Fills the row being built; `Some(true)` for a delete, `None` to skip the record.
    fn fill(&self, rows: &mut Rows, key: Option<&Bytes>, value: Option<&Bytes>) -> Result<Option<bool>, String> {
        let Some(value) = value else {
            if !self.delete_enabled {
                return Ok(None);
            }
            self.add_key(rows, key)?;
            return Ok(Some(true));
        };
        if value.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(match serde_json::from_slice::<&RawValue>(value) {
                Err(e) => format!("value is not JSON: {e}"),
                Ok(raw) => format!("value is not a JSON object but {}", kind_name(kind_of(raw.get()))),
            });
        }
        rows.add_object(false, None).map_err(|e| format!("value is not JSON: {e}"))?;
        match self.pk_mode {
            PkMode::None => {}
            PkMode::RecordKey => self.add_key(rows, key)?,
            PkMode::RecordValue => {
                for field in &self.pk_fields {
                    if rows.building_has(field).is_none_or(|kind| kind == Kind::Null) {
                        return Err(format!("primary key field {field:?} is missing or null in the value"));
                    }
                }
            }
        }
        Ok(Some(false))
    }

    /// Adds the key's columns (they replace value fields of the same names).
    fn add_key(&self, rows: &mut Rows, key: Option<&Bytes>) -> Result<(), String> {
        let key = key.ok_or("the record has no key (pk.mode=record_key needs one)")?;
        let Ok(raw) = serde_json::from_slice::<&RawValue>(key) else {
            // Not JSON: the key's text is the one key column.
            let column = self.scalar_key_column()?;
            rows.add_text(column, &String::from_utf8_lossy(key));
            return Ok(());
        };
        match kind_of(raw.get()) {
            Kind::Null => Err("the record key is JSON null".into()),
            Kind::Json if raw.get().starts_with('{') => {
                if self.pk_fields.is_empty() {
                    let added = rows.add_object(true, None).map_err(|e| format!("the record key: {e}"))?;
                    if added == 0 {
                        return Err("the record key is an empty JSON object".into());
                    }
                    return Ok(());
                }
                let added = rows.add_object(true, Some(&self.pk_fields)).map_err(|e| format!("the record key: {e}"))?;
                for field in &self.pk_fields {
                    if added < self.pk_fields.len() || rows.building_has(field).is_none_or(|kind| kind == Kind::Null) {
                        return Err(format!("primary key field {field:?} is missing or null in the key"));
                    }
                }
                Ok(())
            }
            _ => {
                let column = self.scalar_key_column()?;
                rows.add_whole(true, column, raw);
                Ok(())
            }
        }
    }

    fn scalar_key_column(&self) -> Result<&str, String> {
        if self.pk_fields.len() > 1 {
            return Err(format!("the key is a single value but pk.fields names {}", self.pk_fields.len()));
        }
        Ok(self.pk_fields.first().map_or(SCALAR_KEY_COLUMN, String::as_str))
    }

    /// The primary key columns, in order; without `pk.fields`, a record key's fields.
    pub(crate) fn pk_columns(&self, sample_key: Option<&[u8]>) -> Vec<String> {
        match self.pk_mode {
            PkMode::None => Vec::new(),
            PkMode::RecordValue => self.pk_fields.clone(),
            PkMode::RecordKey if !self.pk_fields.is_empty() => self.pk_fields.clone(),
            PkMode::RecordKey => match sample_key.map(serde_json::from_slice::<Value>) {
                Some(Ok(Value::Object(fields))) => fields.into_iter().map(|(name, _)| name).collect(),
                _ => vec![SCALAR_KEY_COLUMN.to_string()],
            },
        }
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Null => "null",
        Kind::Bool => "a boolean",
        Kind::Integer | Kind::BigInteger | Kind::Float => "a number",
        Kind::String => "a string",
        Kind::Json => "an array",
    }
}

/// Orders a table's rows into segments with the effect of applying them one by one.
/// Upsert: the keys deleted anywhere in the batch are deleted first, then each key's last
/// write is upserted (a write after a delete re-creates the row). Insert: runs of writes and
/// deletes in record order.
pub(crate) fn plan(rows: &Rows, ids: &[RowId], mode: InsertMode, pk: &[Option<u32>]) -> Vec<Segment> {
    if mode == InsertMode::Insert || pk.is_empty() {
        let mut segments: Vec<Segment> = Vec::new();
        for &id in ids {
            let delete = rows.row(id).delete;
            match segments.last_mut() {
                Some(Segment::Delete(keys)) if delete => keys.push(id),
                Some(Segment::Write(writes)) if !delete => writes.push(id),
                _ if delete => segments.push(Segment::Delete(vec![id])),
                _ => segments.push(Segment::Write(vec![id])),
            }
        }
        return segments;
    }
    let mut deletes: Vec<RowId> = Vec::new();
    let mut deleted: HashSet<KeyOf<'_>> = HashSet::new();
    let mut last_write: HashMap<KeyOf<'_>, Option<RowId>> = HashMap::with_capacity(ids.len());
    for &id in ids {
        let key = KeyOf { rows, row: id, pk };
        if rows.row(id).delete {
            if deleted.insert(key) {
                deletes.push(id);
            }
            last_write.insert(key, None);
        } else {
            last_write.insert(key, Some(id));
        }
    }
    let mut writes: Vec<RowId> = last_write.into_values().flatten().collect();
    writes.sort_unstable();
    let mut segments = Vec::new();
    if !deletes.is_empty() {
        segments.push(Segment::Delete(deletes));
    }
    if !writes.is_empty() {
        segments.push(Segment::Write(writes));
    }
    segments
}

/// A row's primary key, compared as PostgreSQL would compare the values: strings by their
/// unescaped text, numbers by value (`1`, `1.0` and `1e0` are one key).
#[derive(Clone, Copy)]
struct KeyOf<'a> {
    rows: &'a Rows,
    row: RowId,
    /// Column ids of the key (`None`: a column no row has).
    pk: &'a [Option<u32>],
}

#[derive(Debug, PartialEq, Eq, Hash)]
enum KeyPart<'a> {
    Missing,
    Null,
    Integer(i64),
    Float(u64),
    Text(&'a [u8]),
    Raw(Kind, &'a [u8]),
}

impl<'a> KeyOf<'a> {
    fn parts(&self) -> impl Iterator<Item = KeyPart<'a>> + '_ {
        let row = self.rows.row(self.row);
        self.pk.iter().map(move |column| {
            let Some(cell) = column.and_then(|c| self.rows.cell(row, c)) else { return KeyPart::Missing };
            let text = self.rows.text(row, cell);
            match cell.kind {
                Kind::Null => KeyPart::Null,
                Kind::Integer => {
                    self.rows.integer(row, cell).map_or(KeyPart::Raw(Kind::Integer, text), KeyPart::Integer)
                }
                Kind::Float => {
                    let float: f64 = std::str::from_utf8(text).ok().and_then(|t| t.parse().ok()).unwrap_or(f64::NAN);
                    // An integral float is the integer (1.0 = 1); -0.0 = 0.
                    if float.fract() == 0.0 && float.abs() < 9.0e15 {
                        KeyPart::Integer(float as i64)
                    } else {
                        KeyPart::Float(float.to_bits())
                    }
                }
                Kind::String => KeyPart::Text(text),
                kind => KeyPart::Raw(kind, text),
            }
        })
    }
}

impl Hash for KeyOf<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().for_each(|part| part.hash(state));
    }
}

impl PartialEq for KeyOf<'_> {
    fn eq(&self, other: &KeyOf<'_>) -> bool {
        self.parts().eq(other.parts())
    }
}

impl Eq for KeyOf<'_> {}

/// The PostgreSQL type for a column holding values of these kinds (nulls say nothing):
/// integers are bigint (beyond i64 numeric), other numbers double precision, booleans boolean,
/// strings text, objects and arrays jsonb; a mix widens (bigint + double → double precision;
/// numbers + numeric → numeric; anything + jsonb → jsonb; other mixes → text); only nulls → text.
pub(crate) fn infer_type(kinds: impl Iterator<Item = Kind>) -> &'static str {
    let mut inferred: Option<&'static str> = None;
    for kind in kinds {
        let this = match kind {
            Kind::Null => continue,
            Kind::Bool => "boolean",
            Kind::Integer => "bigint",
            Kind::BigInteger => "numeric",
            Kind::Float => "double precision",
            Kind::String => "text",
            Kind::Json => "jsonb",
        };
        inferred = Some(match (inferred, this) {
            (None, t) => t,
            (Some(a), b) if a == b => a,
            (Some("jsonb"), _) | (Some(_), "jsonb") => "jsonb",
            (Some("bigint" | "double precision"), "bigint" | "double precision") => "double precision",
            (Some("bigint" | "double precision" | "numeric"), "bigint" | "double precision" | "numeric") => "numeric",
            _ => "text",
        });
    }
    inferred.unwrap_or("text")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_key() -> Mapping {
        Mapping { pk_mode: PkMode::RecordKey, pk_fields: vec![], delete_enabled: true }
    }

    /// The row as (column, text) pairs sorted by column, or the error.
    fn row_of(
        mapping: &Mapping,
        key: Option<&str>,
        value: Option<&str>,
    ) -> Result<Option<Vec<(String, String)>>, String> {
        let mut rows = Rows::default();
        let key = key.map(|k| Bytes::copy_from_slice(k.as_bytes()));
        let value = value.map(|v| Bytes::copy_from_slice(v.as_bytes()));
        let Some(id) = mapping.add(&mut rows, 0, key.as_ref(), value.as_ref())? else { return Ok(None) };
        let row = rows.row(id);
        let mut cells: Vec<(String, String)> = rows
            .cells(row)
            .iter()
            .map(|c| (rows.name(c.column).to_string(), String::from_utf8_lossy(rows.text(row, c)).into_owned()))
            .collect();
        cells.sort();
        Ok(Some(cells))
    }

    fn pairs(items: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(items.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect())
    }

    #[test]
    fn keys_come_from_the_record_key_or_the_value() {
        assert_eq!(
            row_of(&by_key(), Some(r#"{"id": 7}"#), Some(r#"{"name": "a"}"#)),
            Ok(pairs(&[("id", "7"), ("name", "a")]))
        );
        assert_eq!(row_of(&by_key(), Some("alice"), Some(r#"{"n": 1}"#)), Ok(pairs(&[("id", "alice"), ("n", "1")])));
        assert_eq!(row_of(&by_key(), Some(r#""bob""#), Some("{}")), Ok(pairs(&[("id", "bob")])));
        let named = Mapping { pk_fields: vec!["user".into()], ..by_key() };
        assert_eq!(row_of(&named, Some("42"), Some("{}")), Ok(pairs(&[("user", "42")])));
        assert_eq!(
            row_of(&named, Some(r#"{"user": 1, "other": 2}"#), Some(r#"{"user": 9}"#)),
            Ok(pairs(&[("user", "1")])),
            "the key's field replaces the value's; other key fields are left out"
        );
        assert!(row_of(&named, Some(r#"{"other": 2}"#), Some(r#"{"user": 9}"#)).is_err(), "the key lacks the field");
        assert!(row_of(&by_key(), None, Some("{}")).is_err(), "record_key needs a key");
        assert!(row_of(&by_key(), Some("{}"), Some("{}")).is_err(), "an empty key object");
        assert!(row_of(&by_key(), Some("null"), Some("{}")).is_err(), "a null key");
        let by_value = Mapping { pk_mode: PkMode::RecordValue, pk_fields: vec!["id".into()], delete_enabled: false };
        assert!(row_of(&by_value, None, Some(r#"{"id": 1}"#)).is_ok());
        assert!(row_of(&by_value, None, Some(r#"{"name": 1}"#)).is_err());
        assert!(row_of(&by_value, None, Some(r#"{"id": null}"#)).is_err());
    }

    #[test]
    fn primary_keys_come_from_the_key_not_the_value() {
        assert_eq!(by_key().pk_columns(Some(br#"{"a": 1, "b": 2}"#)), vec!["a", "b"]);
        assert_eq!(by_key().pk_columns(Some(b"plain")), vec!["id"]);
        let named = Mapping { pk_fields: vec!["k".into()], ..by_key() };
        assert_eq!(named.pk_columns(Some(br#"{"a": 1}"#)), vec!["k"]);
    }

    #[test]
    fn bad_values_and_tombstones() {
        let error = row_of(&by_key(), Some("1"), Some("not json")).expect_err("not JSON");
        assert!(error.starts_with("value is not JSON"), "{error}");
        let error = row_of(&by_key(), Some("1"), Some("[1,2]")).expect_err("an array");
        assert_eq!(error, "value is not a JSON object but an array");
        assert!(row_of(&by_key(), Some("1"), Some("{\"a\": 1")).is_err(), "truncated");
        assert_eq!(row_of(&by_key(), Some("1"), None), Ok(pairs(&[("id", "1")])));
        let no_deletes = Mapping { delete_enabled: false, ..by_key() };
        assert_eq!(row_of(&no_deletes, Some("1"), None), Ok(None));
    }

    /// Builds rows from (key id, value) records; a `None` value is a delete.
    fn batch(records: &[(i64, Option<&str>)]) -> Rows {
        let mut rows = Rows::default();
        for (index, (id, value)) in records.iter().enumerate() {
            let key = Bytes::from(format!(r#"{{"id": {id}}}"#));
            let value = value.map(|v| Bytes::copy_from_slice(v.as_bytes()));
            by_key().add(&mut rows, index, Some(&key), value.as_ref()).expect("row").expect("not skipped");
        }
        rows
    }

    #[test]
    fn upsert_plans_match_applying_records_in_order() {
        let rows = batch(&[
            (1, Some(r#"{"v": 10}"#)),
            (2, Some(r#"{"v": 20}"#)),
            (1, None),
            (2, Some(r#"{"v": 21}"#)),
            (3, None),
            (3, Some(r#"{"v": 30}"#)),
            (4, None),
        ]);
        let ids: Vec<RowId> = (0..rows.rows().len()).collect();
        let pk = [rows.column_id("id")];
        assert_eq!(
            plan(&rows, &ids, InsertMode::Upsert, &pk),
            vec![Segment::Delete(vec![2, 4, 6]), Segment::Write(vec![3, 5])]
        );
        assert_eq!(
            plan(&rows, &ids, InsertMode::Insert, &pk),
            vec![
                Segment::Write(vec![0, 1]),
                Segment::Delete(vec![2]),
                Segment::Write(vec![3]),
                Segment::Delete(vec![4]),
                Segment::Write(vec![5]),
                Segment::Delete(vec![6])
            ]
        );
    }

    #[test]
    fn keys_that_postgres_sees_as_equal_are_one_key() {
        let mut rows = Rows::default();
        for (index, key) in
            [r#"{"id": 1}"#, r#"{"id": 1.0}"#, r#"{"id": 1e0}"#, r#"{"id": "a"}"#, r#"{"id": "\u0061"}"#]
                .into_iter()
                .enumerate()
        {
            let key = Bytes::from(key);
            let value = Bytes::from(format!(r#"{{"n": {index}}}"#));
            by_key().add(&mut rows, index, Some(&key), Some(&value)).expect("row");
        }
        let pk = [rows.column_id("id")];
        assert_eq!(plan(&rows, &[0, 1, 2, 3, 4], InsertMode::Upsert, &pk), vec![Segment::Write(vec![2, 4])]);
    }

    #[test]
    fn types_are_inferred_and_widened() {
        let infer = |kinds: &[Kind]| infer_type(kinds.iter().copied());
        assert_eq!(infer(&[Kind::Integer, Kind::Null]), "bigint");
        assert_eq!(infer(&[Kind::Integer, Kind::Float]), "double precision");
        assert_eq!(infer(&[Kind::Bool]), "boolean");
        assert_eq!(infer(&[Kind::String, Kind::Integer]), "text");
        assert_eq!(infer(&[Kind::Json, Kind::Integer]), "jsonb");
        assert_eq!(infer(&[Kind::BigInteger]), "numeric");
        assert_eq!(infer(&[Kind::BigInteger, Kind::Float]), "numeric");
        assert_eq!(infer(&[Kind::Null]), "text");
    }
}
