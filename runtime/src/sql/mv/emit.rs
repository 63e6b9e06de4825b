//! A step's output records: view rows as JSON (key = window start and group key, value = the
//! SELECT list plus `window_start`/`window_end`), tombstones for retracted rows, and copies
//! of late input records; grouped by destination partition for idempotent encoding.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, RecordBatchOptions};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::RowConverter;
use bytes::Bytes;
use datafusion::physical_expr::PhysicalExpr;
use runnel_broker::Broker;

use super::super::SqlError;
use super::aggregate::evaluate;
use super::checkpoint::ViewCheckpoint;
use super::plan::AggregatePlan;
use super::state::Emitted;
use super::task::{encode_pending, output_partition};
use super::ViewDef;
use crate::transform::checkpoint::PendingOutput;
use crate::transform::records::Outgoing;

pub(crate) const WINDOW_START: &str = "window_start";
pub(crate) const WINDOW_END: &str = "window_end";

pub(crate) struct Outputs {
    output_topic: String,
    late_topic: String,
    output_partitions: i32,
    late_partitions: i32,
    grouped: BTreeMap<(String, i32), Vec<Outgoing>>,
    emitted: u64,
}

impl Outputs {
    pub(crate) fn new(broker: &Broker, def: &ViewDef) -> Outputs {
        let partitions = |topic: &str| broker.topic(topic).map_or(1, |t| t.partitions.max(1));
        Outputs {
            output_topic: def.name.clone(),
            late_topic: def.late_topic(),
            output_partitions: partitions(&def.name),
            late_partitions: partitions(&def.late_topic()),
            grouped: BTreeMap::new(),
            emitted: 0,
        }
    }

    pub(crate) fn emitted_rows(&self) -> u64 {
        self.emitted
    }

    pub(crate) fn push_output(
        &mut self,
        key: Option<Bytes>,
        value: Option<Bytes>,
        timestamp_ms: i64,
    ) -> Result<(), SqlError> {
        let partition = output_partition(key.as_ref(), self.output_partitions);
        self.emitted += 1;
        self.grouped.entry((self.output_topic.clone(), partition)).or_default().push(Outgoing {
            timestamp_ms,
            key,
            value,
            headers: Vec::new(),
        });
        Ok(())
    }

    pub(crate) fn push_late(&mut self, source_partition: i32, record: Outgoing) {
        let partition = source_partition.rem_euclid(self.late_partitions);
        self.grouped.entry((self.late_topic.clone(), partition)).or_default().push(record);
    }

    pub(crate) fn encode(self, checkpoint: &mut ViewCheckpoint) -> Result<Vec<PendingOutput>, SqlError> {
        encode_pending(self.grouped, checkpoint)
    }

    /// Rows (and tombstones) for emitted groups.
    pub(crate) fn push_emitted(
        &mut self,
        plan: &AggregatePlan,
        converter: Option<&RowConverter>,
        emitted: &[Emitted],
        max_event_ms: i64,
    ) -> Result<(), SqlError> {
        if emitted.is_empty() {
            return Ok(());
        }
        let key_arrays = match converter {
            Some(converter) => {
                let parser = converter.parser();
                converter
                    .convert_rows(emitted.iter().map(|e| parser.parse(&e.key)))
                    .map_err(|e| SqlError::Internal(format!("group keys: {e}")))?
            }
            None => Vec::new(),
        };
        let windowed = plan.window.is_some();
        let starts: ArrayRef = Arc::new(Int64Array::from_iter_values(emitted.iter().map(|e| e.start)));
        let ends: ArrayRef = Arc::new(Int64Array::from_iter_values(emitted.iter().map(|e| e.end)));
        let mut key_fields = Vec::new();
        let mut key_columns = Vec::new();
        if windowed {
            key_fields.push(Field::new(WINDOW_START, DataType::Int64, false));
            key_columns.push(Arc::clone(&starts));
        }
        for (field, array) in plan.key_fields.iter().zip(&key_arrays) {
            key_fields.push(field.clone());
            key_columns.push(Arc::clone(array));
        }
        let keys = json_lines(&Arc::new(Schema::new(key_fields)), key_columns, emitted.len())?;
        let values = self.values(plan, emitted, &key_arrays, &starts, &ends)?;
        for (index, (e, key)) in emitted.iter().zip(keys).enumerate() {
            let timestamp_ms = if windowed { e.end.saturating_sub(1) } else { max_event_ms.max(0) };
            let value = if e.accumulators.is_some() { values.get(index).cloned().flatten() } else { None };
            self.push_output(Some(key), value, timestamp_ms)?;
        }
        Ok(())
    }

    /// The JSON value of each emitted group (`None` for tombstones).
    fn values(
        &self,
        plan: &AggregatePlan,
        emitted: &[Emitted],
        key_arrays: &[ArrayRef],
        starts: &ArrayRef,
        ends: &ArrayRef,
    ) -> Result<Vec<Option<Bytes>>, SqlError> {
        let live: Vec<usize> = (0..emitted.len()).filter(|&i| emitted[i].accumulators.is_some()).collect();
        let indices = arrow::array::UInt32Array::from_iter_values(live.iter().map(|&i| i as u32));
        let take = |array: &ArrayRef| {
            arrow::compute::take(array, &indices, None).map_err(|e| SqlError::Internal(format!("take: {e}")))
        };
        let schema = relaxed(&plan.aggregate_schema);
        let groups = plan.key_fields.len() + usize::from(plan.window.is_some());
        let mut columns = Vec::with_capacity(schema.fields().len());
        let mut next_key = 0;
        for (position, field) in schema.fields().iter().enumerate() {
            let column = if position < groups {
                if Some(position) == plan.window_position {
                    take(starts)?
                } else {
                    next_key += 1;
                    take(&key_arrays[next_key - 1])?
                }
            } else {
                let aggregate = position - groups;
                let accumulators: Vec<_> =
                    live.iter().filter_map(|&i| emitted[i].accumulators.as_ref().map(|a| &a[aggregate])).collect();
                evaluate(&accumulators, &plan.aggregates[aggregate].output_type)?
            };
            columns.push(cast(&column, field.data_type()).map_err(|e| SqlError::Internal(format!("cast: {e}")))?);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(live.len()));
        let batch = RecordBatch::try_new_with_options(schema, columns, &options)
            .map_err(|e| SqlError::Internal(format!("aggregate batch: {e}")))?;
        let extra = if plan.window.is_some() {
            vec![(WINDOW_START, take(starts)?), (WINDOW_END, take(ends)?)]
        } else {
            Vec::new()
        };
        let encoded = encode_rows(&plan.projection, &plan.output_schema, &batch, &extra)?;
        let mut values = vec![None; emitted.len()];
        for (i, value) in live.into_iter().zip(encoded) {
            values[i] = Some(value);
        }
        Ok(values)
    }
}

fn relaxed(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>()))
}

/// Evaluates `exprs` over `batch` and encodes each row as one JSON object, with the `extra`
/// columns appended unless the SELECT list already names them.
pub(crate) fn encode_rows(
    exprs: &[Arc<dyn PhysicalExpr>],
    schema: &SchemaRef,
    batch: &RecordBatch,
    extra: &[(&str, ArrayRef)],
) -> Result<Vec<Bytes>, SqlError> {
    let rows = batch.num_rows();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
    let mut columns = Vec::with_capacity(fields.len() + extra.len());
    for expr in exprs {
        let value = expr.evaluate(batch).and_then(|v| v.into_array(rows)).map_err(SqlError::from_datafusion)?;
        columns.push(value);
    }
    for (name, array) in extra {
        if fields.iter().all(|f| f.name() != name) {
            fields.push(Field::new(*name, array.data_type().clone(), true));
            columns.push(Arc::clone(array));
        }
    }
    // Evaluated types can differ from the planned ones in nullability only.
    for (field, column) in fields.iter_mut().zip(&columns) {
        if field.data_type() != column.data_type() {
            *field = Field::new(field.name(), column.data_type().clone(), true);
        }
    }
    json_lines(&Arc::new(Schema::new(fields)), columns, rows)
}

/// One JSON object per row.
fn json_lines(schema: &SchemaRef, columns: Vec<ArrayRef>, rows: usize) -> Result<Vec<Bytes>, SqlError> {
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    let batch = RecordBatch::try_new_with_options(Arc::clone(schema), columns, &options)
        .map_err(|e| SqlError::Internal(format!("output batch: {e}")))?;
    let mut buffer = Vec::new();
    {
        let mut writer = arrow_json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow_json::writer::LineDelimited>(&mut buffer);
        writer.write(&batch).map_err(|e| SqlError::Internal(format!("encoding rows: {e}")))?;
        writer.finish().map_err(|e| SqlError::Internal(format!("encoding rows: {e}")))?;
    }
    let buffer = Bytes::from(buffer);
    // JSON escapes newlines inside strings, so every newline ends a row.
    let mut lines = Vec::with_capacity(rows);
    let mut start = 0;
    for (i, byte) in buffer.iter().enumerate() {
        if *byte == b'\n' {
            lines.push(buffer.slice(start..i));
            start = i + 1;
        }
    }
    if lines.len() != rows {
        return Err(SqlError::Internal(format!("encoded {} rows of {rows}", lines.len())));
    }
    Ok(lines)
}
