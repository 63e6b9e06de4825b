//! Rows checked against their table before COPY, without I/O, so that a COPY rarely fails: a
//! failed COPY rolls its transaction back and the batch is written again without the row it
//! names, which costs a whole batch per bad row. Only rejections PostgreSQL would certainly
//! make are made here (a boolean in a bigint column, a missing NOT NULL value, an integer out of
//! a column's range); anything unsure is left to PostgreSQL, whose error names the row.

use std::collections::BTreeMap;

use super::cells::{Cell, Kind, Row, RowId, Rows};

/// A column as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ColumnInfo {
    /// The type as `format_type` spells it.
    pub(crate) sql_type: String,
    pub(crate) not_null: bool,
    /// A default, an identity or a generated value: a row may leave it out.
    pub(crate) has_default: bool,
}

/// A table's columns, and whether triggers may change a row before its constraints apply.
#[derive(Debug, Clone, Default)]
pub(crate) struct TableInfo {
    pub(crate) columns: BTreeMap<String, ColumnInfo>,
    pub(crate) has_triggers: bool,
}

/// What values a column's type takes, as far as the checks go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Integer {
        min: i64,
        max: i64,
    },
    Float,
    Numeric,
    Boolean,
    /// Text, JSON and every other type: left to PostgreSQL.
    Other,
}

fn class_of(sql_type: &str) -> Class {
    match sql_type {
        "bigint" => Class::Integer { min: i64::MIN, max: i64::MAX },
        "integer" => Class::Integer { min: i32::MIN.into(), max: i32::MAX.into() },
        "smallint" => Class::Integer { min: i16::MIN.into(), max: i16::MAX.into() },
        "double precision" | "real" => Class::Float,
        "boolean" => Class::Boolean,
        t if t == "numeric" || t.starts_with("numeric(") => Class::Numeric,
        _ => Class::Other,
    }
}

/// The rows among `ids` (write rows and delete keys of table `name`) that PostgreSQL would
/// refuse, with its SQLSTATE in the reason.
pub(crate) fn refused(rows: &Rows, ids: &[RowId], name: &str, info: &TableInfo) -> Vec<(usize, String)> {
    // Per column id: its class and info, looked up once per batch rather than per cell.
    let columns: Vec<Option<(Class, &ColumnInfo)>> = (0..rows.column_count() as u32)
        .map(|id| info.columns.get(rows.name(id)).map(|c| (class_of(&c.sql_type), c)))
        .collect();
    // Triggers may fill in NULLs: then NOT NULL is PostgreSQL's to judge.
    let required: Vec<&String> = if info.has_triggers {
        Vec::new()
    } else {
        info.columns.iter().filter(|(_, c)| c.not_null && !c.has_default).map(|(n, _)| n).collect()
    };
    let required_ids: Vec<Option<u32>> = required.iter().map(|n| rows.column_id(n)).collect();
    let mut refused = Vec::new();
    for &id in ids {
        let row = rows.row(id);
        if let Some(reason) = refusal(rows, row, &columns, info.has_triggers) {
            refused.push((row.record, format!("{reason} (in {name}; found before COPY)")));
            continue;
        }
        if row.delete {
            continue; // only the key is written, into a staging table
        }
        let missing = required.iter().zip(&required_ids).find(|(_, id)| id.is_none_or(|c| rows.cell(row, c).is_none()));
        if let Some((column, _)) = missing {
            refused.push((
                row.record,
                format!("null value in column {column:?} violates not-null constraint (SQLSTATE 23502; in {name}; found before COPY)"),
            ));
        }
    }
    refused
}

/// Why one of the row's cells cannot go into its column, if it certainly cannot.
fn refusal(rows: &Rows, row: &Row, columns: &[Option<(Class, &ColumnInfo)>], has_triggers: bool) -> Option<String> {
    for cell in rows.cells(row) {
        let Some(Some((class, info))) = columns.get(cell.column as usize) else { continue };
        if cell.kind == Kind::Null {
            if info.not_null && !has_triggers {
                let column = rows.name(cell.column);
                return Some(format!("null value in column {column:?} violates not-null constraint (SQLSTATE 23502)"));
            }
            continue;
        }
        if let Some(reason) = type_refusal(rows, row, cell, *class) {
            return Some(format!("{reason} for type {} (column {:?})", info.sql_type, rows.name(cell.column)));
        }
    }
    None
}

/// Why a non-null value cannot be read as the class's type, if it certainly cannot.
fn type_refusal(rows: &Rows, row: &Row, cell: &Cell, class: Class) -> Option<String> {
    let text = rows.text(row, cell);
    let syntax = || {
        let shown: String = String::from_utf8_lossy(text).chars().take(SHOWN_CHARS_MAX).collect();
        Some(format!("invalid input syntax (SQLSTATE 22P02): {shown:?}"))
    };
    let range = || Some(format!("value {} is out of range (SQLSTATE 22003)", String::from_utf8_lossy(text)));
    match (class, cell.kind) {
        (Class::Other, _) => None,
        (_, Kind::Json) => syntax(),
        (Class::Integer { .. }, Kind::Bool | Kind::Float) => syntax(),
        (Class::Integer { .. }, Kind::BigInteger) => range(),
        (Class::Integer { min, max }, Kind::Integer) => match rows.integer(row, cell) {
            Some(n) if n < min || n > max => range(),
            _ => None,
        },
        // No digit at all: no version of PostgreSQL reads it as an integer.
        (Class::Integer { .. }, Kind::String) if !text.iter().any(u8::is_ascii_digit) => syntax(),
        (Class::Float | Class::Numeric, Kind::Bool) => syntax(),
        (Class::Boolean, Kind::Integer) if text != b"0" && text != b"1" => syntax(),
        (Class::Boolean, Kind::Float | Kind::BigInteger) => syntax(),
        _ => None,
    }
}

/// How much of a refused value a reason shows.
const SHOWN_CHARS_MAX: usize = 64;

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn column(sql_type: &str, not_null: bool, has_default: bool) -> ColumnInfo {
        ColumnInfo { sql_type: sql_type.into(), not_null, has_default }
    }

    fn table(has_triggers: bool) -> TableInfo {
        TableInfo {
            columns: [
                ("id".to_string(), column("bigint", true, false)),
                ("n".to_string(), column("integer", false, false)),
                ("f".to_string(), column("double precision", false, false)),
                ("b".to_string(), column("boolean", false, false)),
                ("t".to_string(), column("text", false, false)),
                ("at".to_string(), column("timestamp with time zone", true, true)),
            ]
            .into(),
            has_triggers,
        }
    }

    fn refused_values(values: &[&str], info: &TableInfo) -> Vec<usize> {
        let mut rows = Rows::default();
        for (index, value) in values.iter().enumerate() {
            let value = Bytes::copy_from_slice(value.as_bytes());
            rows.begin(index, None, Some(&value));
            rows.add_object(false, None).expect("object");
            rows.finish(false);
        }
        let ids: Vec<RowId> = (0..values.len()).collect();
        refused(&rows, &ids, "t", info).into_iter().map(|(index, _)| index).collect()
    }

    #[test]
    fn values_postgres_certainly_refuses_are_found() {
        let values = [
            r#"{"id": 1, "n": 5, "f": 1, "b": true, "t": {"any": "thing"}}"#, // fine
            r#"{"id": 2, "n": "forty-two"}"#,                                 // no digit: refused
            r#"{"id": 3, "n": " 42 "}"#,                                      // PostgreSQL may take it
            r#"{"id": 4, "n": 3000000000}"#,                                  // beyond integer
            r#"{"id": 5, "n": 1.5}"#,                                         // not an integer
            r#"{"id": 6, "f": true}"#,                                        // a boolean as a float
            r#"{"id": 7, "b": 2}"#,                                           // only 0 and 1 are booleans
            r#"{"id": 8, "b": 1, "f": "NaN"}"#,                               // fine
            r#"{"n": 1}"#,                                                    // id is NOT NULL, no default
            r#"{"id": null}"#,                                                // explicit null
            r#"{"id": 11, "at": "2024-01-01", "t": [1]}"#,                    // fine (left to PostgreSQL)
            r#"{"id": 12, "n": {"a": 1}}"#,                                   // an object as an integer
        ];
        assert_eq!(refused_values(&values, &table(false)), vec![1, 3, 4, 5, 6, 8, 9, 11]);
        // With triggers, NOT NULL is left to PostgreSQL; types are still checked.
        assert_eq!(refused_values(&values, &table(true)), vec![1, 3, 4, 5, 6, 11]);
    }

    #[test]
    fn reasons_carry_the_sqlstate() {
        let mut rows = Rows::default();
        let value = Bytes::from_static(br#"{"id": 1, "n": "forty-two"}"#);
        rows.begin(7, None, Some(&value));
        rows.add_object(false, None).expect("object");
        rows.finish(false);
        let reasons = refused(&rows, &[0], "t", &table(false));
        assert_eq!(reasons.len(), 1);
        assert_eq!(reasons[0].0, 7, "the record's index in its batch");
        assert!(reasons[0].1.contains("22P02") && reasons[0].1.contains("forty-two"), "{}", reasons[0].1);
    }
}
