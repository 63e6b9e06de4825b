//! Rows as `COPY ... FROM STDIN (FORMAT csv)` lines, written straight from the cells' bytes
//! (NULL is an unquoted empty field; strings and JSON are quoted, inner quotes doubled), and
//! the line a COPY error names.

use super::cells::{Kind, Row, Rows};

/// The columns of one COPY, in order, and which of them take JSON text.
#[derive(Debug)]
pub(crate) struct CopyColumns {
    ids: Vec<u32>,
    json: Vec<bool>,
    /// Position in `ids` by column id (`NOT_COPIED` for the others).
    position: Vec<u32>,
}

const NOT_COPIED: u32 = u32::MAX;

impl CopyColumns {
    pub(crate) fn new(rows: &Rows, ids: Vec<u32>, is_json: impl Fn(&str) -> bool) -> CopyColumns {
        let json = ids.iter().map(|&id| is_json(rows.name(id))).collect();
        let mut position = vec![NOT_COPIED; rows.column_count()];
        for (i, &id) in ids.iter().enumerate() {
            position[id as usize] = i as u32;
        }
        CopyColumns { ids, json, position }
    }

    pub(crate) fn ids(&self) -> &[u32] {
        &self.ids
    }
}

/// Appends one CSV line for `row`'s cells of `columns` (a column the row lacks is NULL);
/// `slots` is scratch space, reused across lines.
pub(crate) fn csv_line(out: &mut Vec<u8>, rows: &Rows, row: &Row, columns: &CopyColumns, slots: &mut Vec<usize>) {
    const EMPTY: usize = usize::MAX;
    slots.clear();
    slots.resize(columns.ids.len(), EMPTY);
    let cells = rows.cells(row);
    for (index, cell) in cells.iter().enumerate() {
        if let Some(&position) = columns.position.get(cell.column as usize).filter(|p| **p != NOT_COPIED) {
            slots[position as usize] = index;
        }
    }
    for (position, &slot) in slots.iter().enumerate() {
        if position > 0 {
            out.push(b',');
        }
        let Some(cell) = cells.get(slot) else { continue };
        match cell.kind {
            Kind::Null => {}
            // Numbers and booleans need no quotes, and their JSON text is also their text.
            Kind::Integer | Kind::BigInteger | Kind::Float | Kind::Bool => out.extend_from_slice(rows.text(row, cell)),
            Kind::String if !columns.json[position] => quoted(out, rows.text(row, cell)),
            Kind::String | Kind::Json => quoted(out, rows.json(row, cell)),
        }
    }
    out.push(b'\n');
}

/// A CSV field in quotes, inner quotes doubled.
fn quoted(out: &mut Vec<u8>, mut text: &[u8]) {
    out.push(b'"');
    while let Some(quote) = text.iter().position(|&b| b == b'"') {
        out.extend_from_slice(&text[..=quote]);
        out.push(b'"');
        text = &text[quote + 1..];
    }
    out.extend_from_slice(text);
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
    use bytes::Bytes;

    use super::*;

    #[test]
    fn csv_lines_quote_and_mark_nulls() {
        let mut rows = Rows::default();
        let value = Bytes::from_static(
            br#"{"a": "x\"y,\n", "c": {"k": [1]}, "d": "", "e": null, "f": 2.5, "g": "q\"", "h": false}"#,
        );
        rows.begin(0, None, Some(&value));
        rows.add_object(false, None).expect("object");
        let id = rows.finish(false);
        let mut names = vec!["a", "b", "c", "d", "e", "f", "g", "h"];
        let wanted: Vec<u32> = names.drain(..).filter_map(|n| rows.column_id(n)).collect();
        let columns = CopyColumns::new(&rows, wanted, |name| name == "c" || name == "g");
        let mut out = Vec::new();
        csv_line(&mut out, &rows, rows.row(id), &columns, &mut Vec::new());
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "\"x\"\"y,\n\",\"{\"\"k\"\": [1]}\",\"\",,2.5,\"\"\"q\\\"\"\"\"\",false\n"
        );
        assert_eq!(copy_error_line("COPY runnel_stage, line 17, column v: \"x\""), Some(17));
        assert_eq!(copy_error_line("SQL statement"), None);
    }

    #[test]
    fn a_column_the_row_lacks_is_null() {
        let mut rows = Rows::default();
        for value in [r#"{"a": 1, "b": "x"}"#, r#"{"b": "y"}"#] {
            let value = Bytes::copy_from_slice(value.as_bytes());
            rows.begin(0, None, Some(&value));
            rows.add_object(false, None).expect("object");
            rows.finish(false);
        }
        let ids = vec![rows.column_id("b").expect("b"), rows.column_id("a").expect("a")];
        let columns = CopyColumns::new(&rows, ids, |_| false);
        let mut out = Vec::new();
        let mut slots = Vec::new();
        for row in rows.rows() {
            csv_line(&mut out, &rows, row, &columns, &mut slots);
        }
        assert_eq!(String::from_utf8(out).expect("utf8"), "\"x\",1\n\"y\",\n");
    }
}
