//! Records to Arrow: the metadata columns of each record, and its JSON value decoded into the
//! typed columns with `arrow-json`.
//!
//! Rows are decoded many at a time (one `Decoder` call per row, one flush per chunk). A value
//! that is not one JSON object of the declared types (malformed, a bare scalar, two objects, a
//! type conflict) makes the chunk fall back to decoding row by row, where each bad row gets
//! null typed columns and is counted — never an error for the query.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    new_null_array, ArrayRef, Int32Builder, Int64Builder, MapBuilder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::compute::concat_batches;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_json::ReaderBuilder;

use super::catalog::{MetaColumn, TableLayout};
use super::records::RecordRef;
use super::SqlError;

/// Rows per Arrow batch produced by a scan: DataFusion's default batch size.
pub(crate) const CHUNK_ROWS: usize = 8192;

/// What a column of the output is built from.
enum Source {
    Meta(MetaColumn),
    /// Index into the decoded JSON batch's columns.
    Json(usize),
}

/// Builders for one chunk of rows of a projected table layout.
pub(crate) struct BatchBuilder {
    schema: SchemaRef,
    sources: Vec<Source>,
    /// The JSON fields to decode, under their names in the JSON.
    json_schema: Option<SchemaRef>,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    key: StringBuilder,
    value: StringBuilder,
    headers: MapBuilder<StringBuilder, StringBuilder>,
    json: Vec<u8>,
    /// Per row: the value's bytes in `json`, or `None` for a null value.
    rows: Vec<Option<Range<usize>>>,
    needs: [bool; 6],
}

impl BatchBuilder {
    /// A builder for `projection` (indices into the layout's schema; `None`: every column).
    pub(crate) fn new(layout: &TableLayout, projection: Option<&[usize]>) -> BatchBuilder {
        let all: Vec<usize> = (0..layout.schema.fields().len()).collect();
        let projection = projection.unwrap_or(&all);
        let mut sources = Vec::with_capacity(projection.len());
        let mut json_fields = Vec::new();
        let mut needs = [false; 6];
        for &index in projection {
            match layout.column(index) {
                Ok(meta) => {
                    needs[meta as usize] = true;
                    sources.push(Source::Meta(meta));
                }
                Err(json_index) => {
                    sources.push(Source::Json(json_fields.len()));
                    json_fields.push(layout.json_fields[json_index].clone());
                }
            }
        }
        let schema = Arc::new(layout.schema.project(projection).unwrap_or_else(|_| Schema::empty()));
        let json_schema = (!json_fields.is_empty()).then(|| Arc::new(Schema::new(json_fields)));
        BatchBuilder {
            schema,
            sources,
            json_schema,
            partition: Int32Builder::with_capacity(CHUNK_ROWS),
            offset: Int64Builder::with_capacity(CHUNK_ROWS),
            timestamp: TimestampMillisecondBuilder::with_capacity(CHUNK_ROWS).with_timezone("+00:00"),
            key: StringBuilder::new(),
            value: StringBuilder::new(),
            headers: MapBuilder::new(None, StringBuilder::new(), StringBuilder::new()),
            json: Vec::new(),
            rows: Vec::with_capacity(CHUNK_ROWS),
            needs,
        }
    }

    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    pub(crate) fn push(&mut self, partition: i32, record: &RecordRef<'_>) {
        if self.needs[MetaColumn::Partition as usize] {
            self.partition.append_value(partition);
        }
        if self.needs[MetaColumn::Offset as usize] {
            self.offset.append_value(record.offset);
        }
        if self.needs[MetaColumn::Timestamp as usize] {
            self.timestamp.append_value(record.timestamp_ms);
        }
        if self.needs[MetaColumn::Key as usize] {
            append_text(&mut self.key, record.key);
        }
        if self.needs[MetaColumn::Value as usize] {
            append_text(&mut self.value, record.value);
        }
        if self.needs[MetaColumn::Headers as usize] {
            for (name, value) in record.headers() {
                self.headers.keys().append_value(String::from_utf8_lossy(name));
                append_text(self.headers.values(), value);
            }
            // Appending an entry cannot fail: keys and values were appended in pairs.
            let _ = self.headers.append(true);
        }
        if self.json_schema.is_some() {
            let range = record.value.map(|value| {
                let start = self.json.len();
                self.json.extend_from_slice(value);
                start..self.json.len()
            });
            self.rows.push(range);
        } else {
            self.rows.push(None);
        }
    }

    /// Builds the batch of the rows pushed since the last call; returns it with the number of
    /// rows whose value did not decode.
    pub(crate) fn finish(&mut self) -> Result<(RecordBatch, u64), SqlError> {
        let rows = self.rows.len();
        let (decoded, malformed) = match &self.json_schema {
            Some(schema) => decode_json(schema, &self.json, &self.rows)?,
            None => (None, 0),
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.sources.len());
        let mut meta: [Option<ArrayRef>; 6] = Default::default();
        let needs = self.needs;
        for (index, needed) in needs.iter().enumerate() {
            if *needed {
                meta[index] = Some(self.finish_meta(index));
            }
        }
        for source in &self.sources {
            let column = match source {
                Source::Meta(column) => meta[*column as usize].clone(),
                Source::Json(index) => decoded.as_ref().map(|batch| Arc::clone(batch.column(*index))),
            };
            columns.push(column.ok_or_else(|| SqlError::Internal("a projected column was not built".into()))?);
        }
        self.json.clear();
        self.rows.clear();
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
        let batch = RecordBatch::try_new_with_options(Arc::clone(&self.schema), columns, &options)
            .map_err(|e| SqlError::Internal(format!("assembling a batch: {e}")))?;
        Ok((batch, malformed))
    }

    fn finish_meta(&mut self, index: usize) -> ArrayRef {
        match index {
            0 => Arc::new(self.partition.finish()),
            1 => Arc::new(self.offset.finish()),
            2 => Arc::new(self.timestamp.finish()),
            3 => Arc::new(self.key.finish()),
            4 => Arc::new(self.value.finish()),
            _ => Arc::new(self.headers.finish()),
        }
    }
}

fn append_text(builder: &mut StringBuilder, bytes: Option<&[u8]>) {
    match bytes {
        // Keys and values are bytes; non-UTF-8 ones are shown with replacement characters.
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => builder.append_value(text),
            Err(_) => builder.append_value(String::from_utf8_lossy(bytes)),
        },
        None => builder.append_null(),
    }
}

/// Decodes each row's JSON value into `schema`'s columns. Null values give null rows and do
/// not count as malformed.
pub(crate) fn decode_json(
    schema: &SchemaRef,
    json: &[u8],
    rows: &[Option<Range<usize>>],
) -> Result<(Option<RecordBatch>, u64), SqlError> {
    if let Some(batch) = decode_chunk(schema, json, rows) {
        return Ok((Some(batch), 0));
    }
    // Slow path: some row is bad. Decode each row on its own.
    let mut parts = Vec::with_capacity(rows.len());
    let mut malformed = 0;
    for row in rows {
        let single = decode_chunk(schema, json, std::slice::from_ref(row));
        match single {
            Some(batch) => parts.push(batch),
            None => {
                malformed += 1;
                parts.push(null_row(schema));
            }
        }
    }
    let batch = concat_batches(schema, &parts).map_err(|e| SqlError::Internal(format!("concat: {e}")))?;
    Ok((Some(batch), malformed))
}

/// Decodes every row, or `None` if any row is not exactly one JSON object of the schema.
fn decode_chunk(schema: &SchemaRef, json: &[u8], rows: &[Option<Range<usize>>]) -> Option<RecordBatch> {
    let mut decoder =
        ReaderBuilder::new(Arc::clone(schema)).with_batch_size(rows.len().max(1) + 1).build_decoder().ok()?;
    for (index, row) in rows.iter().enumerate() {
        match row {
            Some(range) => {
                let consumed = decoder.decode(&json[range.clone()]).ok()?;
                if consumed != range.len() {
                    return None;
                }
            }
            // A null value (tombstone): an empty object gives the row null typed columns.
            None => {
                decoder.decode(b"{}").ok()?;
            }
        }
        if decoder.has_partial_record() || decoder.len() != index + 1 {
            return None;
        }
    }
    match decoder.flush() {
        Ok(Some(batch)) if batch.num_rows() == rows.len() => Some(batch),
        Ok(None) if rows.is_empty() => Some(RecordBatch::new_empty(Arc::clone(schema))),
        _ => None,
    }
}

fn null_row(schema: &SchemaRef) -> RecordBatch {
    let columns = schema.fields().iter().map(|f| new_null_array(f.data_type(), 1)).collect();
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(1));
    RecordBatch::try_new_with_options(Arc::clone(schema), columns, &options)
        .unwrap_or_else(|_| RecordBatch::new_empty(Arc::clone(schema)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true), Field::new("s", DataType::Utf8, true)]))
    }

    fn rows_of(values: &[Option<&str>]) -> (Vec<u8>, Vec<Option<Range<usize>>>) {
        let mut json = Vec::new();
        let mut rows = Vec::new();
        for value in values {
            rows.push(value.map(|v| {
                let start = json.len();
                json.extend_from_slice(v.as_bytes());
                start..json.len()
            }));
        }
        (json, rows)
    }

    #[test]
    fn good_rows_decode_in_one_pass() {
        let (json, rows) = rows_of(&[Some(r#"{"a":1,"s":"x"}"#), None, Some(r#"{"a":3,"extra":true}"#)]);
        let (batch, malformed) = decode_json(&schema(), &json, &rows).expect("decode");
        let batch = batch.expect("batch");
        assert_eq!(malformed, 0);
        let a = batch.column(0).as_any().downcast_ref::<Int64Array>().expect("ints");
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![Some(1), None, Some(3)]);
    }

    #[test]
    fn bad_rows_become_nulls_and_are_counted() {
        let (json, rows) = rows_of(&[
            Some(r#"{"a":1,"s":"x"}"#),
            Some(r#"{"a":"#),
            Some("42"),
            Some(r#"{"a":"not a number"}"#),
            Some(r#"{"a":5}{"a":6}"#),
            Some(""),
            Some(r#"{"a":7,"s":"y"}"#),
        ]);
        let (batch, malformed) = decode_json(&schema(), &json, &rows).expect("decode");
        let batch = batch.expect("batch");
        assert_eq!(malformed, 5);
        assert_eq!(batch.num_rows(), 7);
        let a = batch.column(0).as_any().downcast_ref::<Int64Array>().expect("ints");
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![Some(1), None, None, None, None, None, Some(7)]);
        let s = batch.column(1).as_any().downcast_ref::<StringArray>().expect("strings");
        assert_eq!(s.value(6), "y");
    }
}
