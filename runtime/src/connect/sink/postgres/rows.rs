//! Records to rows, without I/O: the primary key from the record key or value fields,
//! tombstones to deletes, a batch to the statements that apply it with the same effect as
//! applying its records one by one, column types inferred from schemaless JSON, and rows
//! encoded as CSV for `COPY ... FROM STDIN`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

/// Columns of one row (a JSON object's top-level fields, plus the key's).
pub(crate) type Row = BTreeMap<String, Value>;

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

/// What one record asks for; `index` is its place in the batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    Write { index: usize, row: Row },
    Delete { index: usize, key: Row },
}

/// Statements for one table, applied in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Segment {
    Write(Vec<(usize, Row)>),
    Delete(Vec<(usize, Row)>),
}

impl Mapping {
    /// The operation for one record; `None` for a tombstone when deletes are off (skipped).
    pub(crate) fn op(&self, index: usize, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Option<Op>, String> {
        let Some(value) = value else {
            if !self.delete_enabled {
                return Ok(None);
            }
            return Ok(Some(Op::Delete { index, key: self.key_columns(key)? }));
        };
        let parsed: Value = serde_json::from_slice(value).map_err(|e| format!("value is not JSON: {e}"))?;
        let Value::Object(fields) = parsed else {
            return Err(format!("value is not a JSON object but {}", kind(&parsed)));
        };
        let mut row: Row = fields.into_iter().collect();
        match self.pk_mode {
            PkMode::None => {}
            PkMode::RecordKey => row.extend(self.key_columns(key)?),
            PkMode::RecordValue => {
                for field in &self.pk_fields {
                    if row.get(field).is_none_or(Value::is_null) {
                        return Err(format!("primary key field {field:?} is missing or null in the value"));
                    }
                }
            }
        }
        Ok(Some(Op::Write { index, row }))
    }

    /// The primary key columns, in order; without `pk.fields`, a record key's fields.
    pub(crate) fn pk_columns(&self, sample_key: Option<&[u8]>) -> Vec<String> {
        match self.pk_mode {
            PkMode::None => Vec::new(),
            PkMode::RecordValue => self.pk_fields.clone(),
            PkMode::RecordKey if !self.pk_fields.is_empty() => self.pk_fields.clone(),
            PkMode::RecordKey => self.key_columns(sample_key).map(|k| k.into_keys().collect()).unwrap_or_default(),
        }
    }

    fn key_columns(&self, key: Option<&[u8]>) -> Result<Row, String> {
        let key = key.ok_or("the record has no key (pk.mode=record_key needs one)")?;
        let parsed: Value =
            serde_json::from_slice(key).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(key).into_owned()));
        match parsed {
            Value::Object(fields) if self.pk_fields.is_empty() => {
                if fields.is_empty() {
                    return Err("the record key is an empty JSON object".into());
                }
                Ok(fields.into_iter().collect())
            }
            Value::Object(mut fields) => self
                .pk_fields
                .iter()
                .map(|f| match fields.remove(f) {
                    Some(v) if !v.is_null() => Ok((f.clone(), v)),
                    _ => Err(format!("primary key field {f:?} is missing or null in the key")),
                })
                .collect(),
            Value::Null => Err("the record key is JSON null".into()),
            scalar => {
                if self.pk_fields.len() > 1 {
                    return Err(format!("the key is a single value but pk.fields names {}", self.pk_fields.len()));
                }
                let column = self.pk_fields.first().map_or(SCALAR_KEY_COLUMN, String::as_str);
                Ok([(column.to_string(), scalar)].into_iter().collect())
            }
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Orders a table's operations into segments with the effect of applying them one by one.
/// Upsert: the keys deleted anywhere in the batch are deleted first, then each key's last
/// write is upserted (a write after a delete re-creates the row). Insert: runs of writes and
/// deletes in record order.
pub(crate) fn plan(ops: Vec<Op>, mode: InsertMode, pk: &[String]) -> Vec<Segment> {
    if mode == InsertMode::Insert || pk.is_empty() {
        let mut segments: Vec<Segment> = Vec::new();
        for op in ops {
            match (op, segments.last_mut()) {
                (Op::Write { index, row }, Some(Segment::Write(rows))) => rows.push((index, row)),
                (Op::Delete { index, key }, Some(Segment::Delete(keys))) => keys.push((index, key)),
                (Op::Write { index, row }, _) => segments.push(Segment::Write(vec![(index, row)])),
                (Op::Delete { index, key }, _) => segments.push(Segment::Delete(vec![(index, key)])),
            }
        }
        return segments;
    }
    let key_of = |row: &Row| -> String {
        let values: Vec<&Value> = pk.iter().map(|c| row.get(c).unwrap_or(&Value::Null)).collect();
        serde_json::to_string(&values).unwrap_or_default()
    };
    let mut deletes: Vec<(usize, Row)> = Vec::new();
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let mut last_write: HashMap<String, Option<(usize, Row)>> = HashMap::new();
    for op in ops {
        match op {
            Op::Delete { index, key } => {
                let k = key_of(&key);
                if deleted.insert(k.clone()) {
                    deletes.push((index, key));
                }
                last_write.insert(k, None);
            }
            Op::Write { index, row } => {
                last_write.insert(key_of(&row), Some((index, row)));
            }
        }
    }
    let mut writes: Vec<(usize, Row)> = last_write.into_values().flatten().collect();
    writes.sort_by_key(|(index, _)| *index);
    let mut segments = Vec::new();
    if !deletes.is_empty() {
        segments.push(Segment::Delete(deletes));
    }
    if !writes.is_empty() {
        segments.push(Segment::Write(writes));
    }
    segments
}

/// The columns any of `rows` has, sorted.
pub(crate) fn columns_of<'a>(rows: impl Iterator<Item = &'a Row>) -> Vec<String> {
    let mut columns = BTreeSet::new();
    for row in rows {
        columns.extend(row.keys().cloned());
    }
    columns.into_iter().collect()
}

/// The PostgreSQL type for a column holding `values` (JSON nulls say nothing): integers are
/// bigint, other numbers double precision, booleans boolean, strings text, objects and arrays
/// jsonb; a mix widens (bigint + double → double precision; anything + jsonb → jsonb; other
/// mixes → text); only nulls → text.
pub(crate) fn infer_type<'a>(values: impl Iterator<Item = &'a Value>) -> &'static str {
    let mut inferred: Option<&'static str> = None;
    for value in values {
        let this = match value {
            Value::Null => continue,
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() => "bigint",
            Value::Number(n) if n.is_u64() => "numeric",
            Value::Number(_) => "double precision",
            Value::String(_) => "text",
            Value::Array(_) | Value::Object(_) => "jsonb",
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

/// Whether a column of this type (as `format_type` spells it) takes JSON text.
pub(crate) fn is_json_type(sql_type: &str) -> bool {
    sql_type == "json" || sql_type == "jsonb"
}

/// Appends one CSV line (COPY's csv format: NULL is an unquoted empty field) for `row`'s values
/// of `columns`; `json_columns[i]` says column `i` takes JSON text.
pub(crate) fn csv_line(out: &mut Vec<u8>, row: &Row, columns: &[String], json_columns: &[bool]) {
    for (i, column) in columns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match row.get(column) {
            None | Some(Value::Null) => {}
            // Numbers and booleans need no quotes; everything else is quoted.
            Some(Value::Number(n)) if !json_columns[i] => out.extend_from_slice(n.to_string().as_bytes()),
            Some(Value::Bool(b)) if !json_columns[i] => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Some(Value::String(s)) if !json_columns[i] => quoted(out, s.as_bytes()),
            Some(value) => quoted(out, value.to_string().as_bytes()),
        }
    }
    out.push(b'\n');
}

/// A CSV field in quotes, inner quotes doubled.
fn quoted(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'"');
    for &byte in text {
        if byte == b'"' {
            out.push(b'"');
        }
        out.push(byte);
    }
    out.push(b'"');
}

/// The 1-based line a COPY error names in its context (`COPY t, line 3, column v: ...`).
pub(crate) fn copy_error_line(context: &str) -> Option<usize> {
    let rest = &context[context.find(", line ")? + ", line ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(value: Value) -> Row {
        value.as_object().expect("object").clone().into_iter().collect()
    }

    fn by_key() -> Mapping {
        Mapping { pk_mode: PkMode::RecordKey, pk_fields: vec![], delete_enabled: true }
    }

    #[test]
    fn keys_come_from_the_record_key_or_the_value() {
        let op = by_key().op(0, Some(br#"{"id": 7}"#), Some(br#"{"name": "a"}"#)).expect("op");
        assert_eq!(op, Some(Op::Write { index: 0, row: row(json!({"id": 7, "name": "a"})) }));
        let scalar = by_key().op(1, Some(b"alice"), Some(br#"{"n": 1}"#)).expect("op");
        assert_eq!(scalar, Some(Op::Write { index: 1, row: row(json!({"id": "alice", "n": 1})) }));
        let named = Mapping { pk_fields: vec!["user".into()], ..by_key() };
        assert_eq!(
            named.op(2, Some(b"42"), Some(b"{}")).expect("op"),
            Some(Op::Write { index: 2, row: row(json!({"user": 42})) })
        );
        assert!(by_key().op(3, None, Some(b"{}")).is_err(), "record_key needs a key");
        let by_value = Mapping { pk_mode: PkMode::RecordValue, pk_fields: vec!["id".into()], delete_enabled: false };
        assert!(by_value.op(4, None, Some(br#"{"id": 1}"#)).is_ok());
        assert!(by_value.op(5, None, Some(br#"{"name": 1}"#)).is_err());
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
        assert!(by_key().op(0, Some(b"1"), Some(b"not json")).is_err());
        assert!(by_key().op(0, Some(b"1"), Some(b"[1,2]")).is_err());
        assert_eq!(
            by_key().op(0, Some(b"1"), None).expect("delete"),
            Some(Op::Delete { index: 0, key: row(json!({"id": 1})) })
        );
        let no_deletes = Mapping { delete_enabled: false, ..by_key() };
        assert_eq!(no_deletes.op(0, Some(b"1"), None).expect("skip"), None);
    }

    #[test]
    fn upsert_plans_match_applying_records_in_order() {
        let w = |index, id: i64, v: i64| Op::Write { index, row: row(json!({"id": id, "v": v})) };
        let d = |index, id: i64| Op::Delete { index, key: row(json!({"id": id})) };
        let ops = vec![w(0, 1, 10), w(1, 2, 20), d(2, 1), w(3, 2, 21), d(4, 3), w(5, 3, 30), d(6, 4)];
        let segments = plan(ops, InsertMode::Upsert, &["id".to_string()]);
        assert_eq!(
            segments,
            vec![
                Segment::Delete(vec![
                    (2, row(json!({"id": 1}))),
                    (4, row(json!({"id": 3}))),
                    (6, row(json!({"id": 4})))
                ]),
                Segment::Write(vec![(3, row(json!({"id": 2, "v": 21}))), (5, row(json!({"id": 3, "v": 30})))]),
            ]
        );
        let inserts = plan(vec![w(0, 1, 1), w(1, 2, 2), d(2, 1), w(3, 1, 3)], InsertMode::Insert, &["id".into()]);
        assert_eq!(inserts.len(), 3);
    }

    #[test]
    fn types_are_inferred_and_widened() {
        let infer = |values: Vec<Value>| infer_type(values.iter());
        assert_eq!(infer(vec![json!(1), json!(null)]), "bigint");
        assert_eq!(infer(vec![json!(1), json!(1.5)]), "double precision");
        assert_eq!(infer(vec![json!(true)]), "boolean");
        assert_eq!(infer(vec![json!("x"), json!(1)]), "text");
        assert_eq!(infer(vec![json!({"a": 1}), json!(1)]), "jsonb");
        assert_eq!(infer(vec![json!(u64::MAX)]), "numeric");
        assert_eq!(infer(vec![json!(null)]), "text");
    }

    #[test]
    fn csv_lines_quote_and_mark_nulls() {
        let mut out = Vec::new();
        let columns = vec!["a".to_string(), "b".to_string(), "c".to_string(), "d".to_string()];
        csv_line(
            &mut out,
            &row(json!({"a": "x\"y,\n", "c": {"k": [1]}, "d": ""})),
            &columns,
            &[false, false, true, false],
        );
        assert_eq!(String::from_utf8(out).expect("utf8"), "\"x\"\"y,\n\",,\"{\"\"k\"\":[1]}\",\"\"\n");
        assert_eq!(copy_error_line("COPY runnel_stage, line 17, column v: \"x\""), Some(17));
        assert_eq!(copy_error_line("SQL statement"), None);
    }
}
