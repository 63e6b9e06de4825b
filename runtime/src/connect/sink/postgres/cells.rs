//! A batch's rows as cells that point into the records' bytes, without I/O. Each JSON value's
//! top-level fields are found with serde_json's validating parser (`RawValue`: no tree is
//! built), column names are interned once per batch, and a row is a run of cells — no map,
//! `String` or `serde_json::Value` per row or field. A string with escapes (rare) is unescaped
//! once into the batch's scratch buffer; everything else stays in the record's `Bytes`.
//!
//! A row's set of columns (its *shape*) is interned too: rows of one shape are copied with one
//! column list, so a field a record lacks gets the column's default.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use serde::de::{DeserializeSeed, Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The JSON type of a cell; numbers are split the way column types are inferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Null,
    Bool,
    /// An integer literal that fits an i64.
    Integer,
    /// An integer literal beyond i64.
    BigInteger,
    /// A number with a fraction or an exponent.
    Float,
    String,
    /// An object or an array.
    Json,
}

/// Which bytes a span is in: the record's key, its value, or the batch's scratch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Key,
    Value,
    Scratch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    source: Source,
    start: u32,
    end: u32,
}

/// One field of a row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cell {
    pub(crate) column: u32,
    pub(crate) kind: Kind,
    /// The value as JSON text (a string with its quotes and escapes).
    json: Span,
    /// The value as text: a string's content, unescaped; any other kind its JSON text.
    text: Span,
}

/// One row: the record it came from, its cells and its shape.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// Index of the record in its batch.
    pub(crate) record: usize,
    /// A delete (a tombstone): the cells are the key's.
    pub(crate) delete: bool,
    pub(crate) shape: u32,
    key: Bytes,
    value: Bytes,
    cells: Range<usize>,
}

/// Index of a row in [`Rows`].
pub(crate) type RowId = usize;

/// A row being built (between [`Rows::begin`] and [`Rows::finish`] or [`Rows::abandon`]).
#[derive(Debug)]
struct Building {
    record: usize,
    key: Bytes,
    value: Bytes,
    cells_start: usize,
    scratch_start: usize,
}

/// The rows of one batch.
#[derive(Debug, Default)]
pub(crate) struct Rows {
    names: Vec<String>,
    index: HashMap<String, u32>,
    cells: Vec<Cell>,
    rows: Vec<Row>,
    scratch: Vec<u8>,
    shapes: Vec<Vec<u64>>,
    shape_index: HashMap<Vec<u64>, u32>,
    /// The columns of the row being built (a bit per interned column).
    bits: Vec<u64>,
    building: Option<Building>,
    /// Field order of the previous key and value object: column ids by field position, tried
    /// before the name index since a topic's records almost always list their fields in the
    /// same order.
    order_hint: [Vec<u32>; 2],
}

impl Rows {
    /// Starts a row for record `record`.
    pub(crate) fn begin(&mut self, record: usize, key: Option<&Bytes>, value: Option<&Bytes>) {
        assert!(self.building.is_none(), "a row is already being built");
        self.bits.iter_mut().for_each(|w| *w = 0);
        self.building = Some(Building {
            record,
            key: key.cloned().unwrap_or_default(),
            value: value.cloned().unwrap_or_default(),
            cells_start: self.cells.len(),
            scratch_start: self.scratch.len(),
        });
    }

    /// Drops the row being built (its record was rejected).
    pub(crate) fn abandon(&mut self) {
        if let Some(building) = self.building.take() {
            self.cells.truncate(building.cells_start);
            self.scratch.truncate(building.scratch_start);
        }
    }

    /// Ends the row being built.
    pub(crate) fn finish(&mut self, delete: bool) -> RowId {
        let building = self.building.take().expect("finish without begin");
        let words = self.bits.iter().rposition(|w| *w != 0).map_or(0, |last| last + 1);
        let shape = match self.shape_index.get(&self.bits[..words]) {
            Some(shape) => *shape,
            None => {
                let shape = self.shapes.len() as u32;
                self.shapes.push(self.bits[..words].to_vec());
                self.shape_index.insert(self.bits[..words].to_vec(), shape);
                shape
            }
        };
        self.rows.push(Row {
            record: building.record,
            delete,
            shape,
            key: building.key,
            value: building.value,
            cells: building.cells_start..self.cells.len(),
        });
        self.rows.len() - 1
    }

    /// Adds the fields of the JSON object in the record's value (`from_key`: in its key) to the
    /// row; a field the row has already is replaced. With `only`, other fields are left out.
    /// Returns the number of fields added.
    pub(crate) fn add_object(&mut self, from_key: bool, only: Option<&[String]>) -> Result<usize, serde_json::Error> {
        let building = self.building.as_ref().expect("add_object without begin");
        let (bytes, source) =
            if from_key { (building.key.clone(), Source::Key) } else { (building.value.clone(), Source::Value) };
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let added = de.deserialize_map(Fields { rows: self, bytes: &bytes, source, only, position: 0 })?;
        de.end()?;
        Ok(added)
    }

    /// Adds one JSON value (the whole key or value, already known to be valid JSON) as `column`.
    pub(crate) fn add_whole(&mut self, from_key: bool, column: &str, raw: &RawValue) {
        let building = self.building.as_ref().expect("add_whole without begin");
        let (bytes, source) =
            if from_key { (building.key.clone(), Source::Key) } else { (building.value.clone(), Source::Value) };
        let column = self.intern(column);
        self.add_raw(column, &bytes, source, raw);
    }

    /// Adds a text that is not JSON (a plain key) as a string in `column`.
    pub(crate) fn add_text(&mut self, column: &str, text: &str) {
        let column = self.intern(column);
        let text_span = self.push_scratch(text.as_bytes());
        let quoted = serde_json::to_string(text).unwrap_or_default();
        let json = self.push_scratch(quoted.as_bytes());
        self.put(Cell { column, kind: Kind::String, json, text: text_span });
    }

    /// The column id of `name` and whether the row being built has it, and with a null.
    pub(crate) fn building_has(&self, name: &str) -> Option<Kind> {
        let column = *self.index.get(name)?;
        let start = self.building.as_ref()?.cells_start;
        self.cells[start..].iter().find(|c| c.column == column).map(|c| c.kind)
    }

    #[cfg(test)]
    pub(crate) fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub(crate) fn row(&self, row: RowId) -> &Row {
        &self.rows[row]
    }

    pub(crate) fn cells(&self, row: &Row) -> &[Cell] {
        &self.cells[row.cells.clone()]
    }

    /// The row's cell of `column`, if it has one.
    pub(crate) fn cell(&self, row: &Row, column: u32) -> Option<&Cell> {
        self.cells(row).iter().find(|c| c.column == column)
    }

    /// A cell as text: a string's content, unescaped; any other kind its JSON text.
    pub(crate) fn text<'a>(&'a self, row: &'a Row, cell: &Cell) -> &'a [u8] {
        self.bytes(row, cell.text)
    }

    /// A cell as JSON text.
    pub(crate) fn json<'a>(&'a self, row: &'a Row, cell: &Cell) -> &'a [u8] {
        self.bytes(row, cell.json)
    }

    /// The integer of an [`Kind::Integer`] cell.
    pub(crate) fn integer(&self, row: &Row, cell: &Cell) -> Option<i64> {
        std::str::from_utf8(self.text(row, cell)).ok()?.parse().ok()
    }

    pub(crate) fn name(&self, column: u32) -> &str {
        &self.names[column as usize]
    }

    pub(crate) fn column_id(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    /// Column names interned so far (ids are indexes).
    pub(crate) fn column_count(&self) -> usize {
        self.names.len()
    }

    /// The columns of a shape, by id.
    pub(crate) fn shape_columns(&self, shape: u32) -> impl Iterator<Item = u32> + '_ {
        self.shapes[shape as usize]
            .iter()
            .enumerate()
            .flat_map(|(w, word)| (0..64).filter(move |b| word & (1u64 << b) != 0).map(move |b| (w * 64 + b) as u32))
    }

    fn bytes<'a>(&'a self, row: &'a Row, span: Span) -> &'a [u8] {
        let range = span.start as usize..span.end as usize;
        match span.source {
            Source::Key => &row.key[range],
            Source::Value => &row.value[range],
            Source::Scratch => &self.scratch[range],
        }
    }

    fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.index.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), id);
        id
    }

    /// The column of the field at `position` named `name`, trying the previous object's order.
    fn column_at(&mut self, source: Source, position: usize, name: &str) -> u32 {
        let hint = usize::from(source == Source::Key);
        if let Some(&id) = self.order_hint[hint].get(position) {
            if self.names[id as usize] == name {
                return id;
            }
        }
        let id = self.intern(name);
        let order = &mut self.order_hint[hint];
        if position < order.len() {
            order[position] = id;
        } else if position == order.len() && position < ORDER_HINT_FIELDS_MAX {
            order.push(id);
        }
        id
    }

    fn push_scratch(&mut self, bytes: &[u8]) -> Span {
        let start = self.scratch.len();
        self.scratch.extend_from_slice(bytes);
        Span { source: Source::Scratch, start: offset(start), end: offset(self.scratch.len()) }
    }

    /// Adds a field's value, found by the parser in `bytes`.
    fn add_raw(&mut self, column: u32, bytes: &[u8], source: Source, raw: &RawValue) {
        let text = raw.get();
        let start = (text.as_ptr() as usize).checked_sub(bytes.as_ptr() as usize);
        let start = start.filter(|s| s + text.len() <= bytes.len() && !text.is_empty());
        let start = start.expect("a raw JSON value lies inside the bytes it was parsed from");
        let end = start + text.len();
        let json = Span { source, start: offset(start), end: offset(end) };
        let kind = kind_of(text);
        let text = match kind {
            Kind::String if !text.as_bytes().contains(&b'\\') => {
                Span { start: json.start + 1, end: json.end - 1, ..json }
            }
            Kind::String => {
                // Valid JSON (the parser checked it), so this cannot fail.
                let unescaped: String = serde_json::from_str(text).unwrap_or_default();
                self.push_scratch(unescaped.as_bytes())
            }
            _ => json,
        };
        self.put(Cell { column, kind, json, text });
    }

    /// Adds a cell to the row being built, replacing its column's cell if it has one.
    fn put(&mut self, cell: Cell) {
        let (word, bit) = (cell.column as usize / 64, cell.column % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & (1 << bit) != 0 {
            let start = self.building.as_ref().map_or(0, |b| b.cells_start);
            if let Some(existing) = self.cells[start..].iter_mut().find(|c| c.column == cell.column) {
                *existing = cell;
                return;
            }
        }
        self.bits[word] |= 1 << bit;
        self.cells.push(cell);
    }
}

/// Fields per object whose order is remembered (beyond, names are looked up).
const ORDER_HINT_FIELDS_MAX: usize = 256;

/// Offsets are u32: record keys and values are far smaller than 4 GiB (`message.max.bytes`).
fn offset(position: usize) -> u32 {
    u32::try_from(position).expect("record bytes under 4 GiB")
}

/// The kind of a valid JSON value from its text.
pub(crate) fn kind_of(text: &str) -> Kind {
    match text.as_bytes().first() {
        Some(b'"') => Kind::String,
        Some(b't' | b'f') => Kind::Bool,
        Some(b'n') | None => Kind::Null,
        Some(b'{' | b'[') => Kind::Json,
        Some(_) if text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) => Kind::Float,
        Some(_) if text.parse::<i64>().is_ok() => Kind::Integer,
        Some(_) => Kind::BigInteger,
    }
}

/// The visitor that adds an object's fields to the row being built.
struct Fields<'r, 'b> {
    rows: &'r mut Rows,
    bytes: &'b [u8],
    source: Source,
    only: Option<&'b [String]>,
    position: usize,
}

impl<'de> Visitor<'de> for Fields<'_, '_> {
    /// Fields added.
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<usize, A::Error> {
        while let Some(name) = map.next_key_seed(FieldName)? {
            let raw: &'de RawValue = map.next_value()?;
            if self.only.is_some_and(|only| !only.iter().any(|o| o.as_str() == name)) {
                continue;
            }
            let column = self.rows.column_at(self.source, self.position, &name);
            self.position += 1;
            self.rows.add_raw(column, self.bytes, self.source, raw);
        }
        Ok(self.position)
    }
}

/// A field name, borrowed from the input unless it has escapes.
struct FieldName;

impl<'de> DeserializeSeed<'de> for FieldName {
    type Value = Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldName {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(name))
    }

    fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_of(rows: &mut Rows, value: &'static str) -> RowId {
        let value = Bytes::from_static(value.as_bytes());
        rows.begin(0, None, Some(&value));
        rows.add_object(false, None).expect("object");
        rows.finish(false)
    }

    fn fields(rows: &Rows, row: RowId) -> Vec<(String, Kind, String, String)> {
        let row = rows.row(row);
        rows.cells(row)
            .iter()
            .map(|c| {
                let text = String::from_utf8(rows.text(row, c).to_vec()).expect("utf8");
                let json = String::from_utf8(rows.json(row, c).to_vec()).expect("utf8");
                (rows.name(c.column).to_string(), c.kind, text, json)
            })
            .collect()
    }

    #[test]
    fn fields_become_cells_of_each_kind() {
        let mut rows = Rows::default();
        let row = row_of(
            &mut rows,
            r#" {"s": "a\"b\u00e9", "p": "plain", "i": -12, "big": 123456789012345678901, "f": 1.5e3,
                "b": true, "n": null, "o": {"k": [1, 2]}, "a": [] } "#,
        );
        let expected = [
            ("s", Kind::String, "a\"bé", r#""a\"b\u00e9""#),
            ("p", Kind::String, "plain", r#""plain""#),
            ("i", Kind::Integer, "-12", "-12"),
            ("big", Kind::BigInteger, "123456789012345678901", "123456789012345678901"),
            ("f", Kind::Float, "1.5e3", "1.5e3"),
            ("b", Kind::Bool, "true", "true"),
            ("n", Kind::Null, "null", "null"),
            ("o", Kind::Json, r#"{"k": [1, 2]}"#, r#"{"k": [1, 2]}"#),
            ("a", Kind::Json, "[]", "[]"),
        ];
        let got = fields(&rows, row);
        assert_eq!(got.len(), expected.len());
        for (got, want) in got.iter().zip(expected) {
            assert_eq!((got.0.as_str(), got.1, got.2.as_str(), got.3.as_str()), want);
        }
        assert_eq!(rows.integer(rows.row(row), &rows.cells(rows.row(row))[2]), Some(-12));
    }

    #[test]
    fn a_repeated_field_keeps_its_last_value_and_shapes_are_shared() {
        let mut rows = Rows::default();
        let first = row_of(&mut rows, r#"{"a": 1, "b": 2, "a": 3}"#);
        assert_eq!(
            fields(&rows, first).iter().map(|f| (f.0.as_str(), f.2.as_str())).collect::<Vec<_>>(),
            [("a", "3"), ("b", "2")]
        );
        let second = row_of(&mut rows, r#"{"b": 5, "a": 6}"#);
        let third = row_of(&mut rows, r#"{"b": 5, "c": 6}"#);
        assert_eq!(rows.row(first).shape, rows.row(second).shape, "same columns in another order");
        assert_ne!(rows.row(first).shape, rows.row(third).shape);
        let names: Vec<&str> = rows.shape_columns(rows.row(third).shape).map(|c| rows.name(c)).collect();
        assert_eq!(names, ["b", "c"]);
    }

    #[test]
    fn bad_json_is_an_error_and_leaves_nothing_behind() {
        let mut rows = Rows::default();
        for bad in [&b"{\"a\": 1,"[..], b"{\"a\": tru}", b"[1]", b"{\"a\": \"\xff\"}", b"{\"a\": 1} x"] {
            let value = Bytes::copy_from_slice(bad);
            rows.begin(0, None, Some(&value));
            assert!(rows.add_object(false, None).is_err(), "{bad:?}");
            rows.abandon();
        }
        assert!(rows.rows().is_empty());
        let good = row_of(&mut rows, r#"{"z": "\n"}"#);
        assert_eq!(fields(&rows, good), [("z".to_string(), Kind::String, "\n".to_string(), r#""\n""#.to_string())]);
        assert_eq!(rows.cells.len(), 1, "cells of abandoned rows are gone");
    }

    #[test]
    fn kinds_of_numbers() {
        assert_eq!(kind_of("0"), Kind::Integer);
        assert_eq!(kind_of("-9223372036854775808"), Kind::Integer);
        assert_eq!(kind_of("9223372036854775808"), Kind::BigInteger);
        assert_eq!(kind_of("1E5"), Kind::Float);
        assert_eq!(kind_of("-0.0"), Kind::Float);
    }
}
