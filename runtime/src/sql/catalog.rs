//! Topics as tables: the columns every topic has (`partition`, `offset`, `timestamp`, `key`,
//! `value`, `headers`) followed by typed columns decoded from JSON values.
//!
//! Typed columns come from a declaration (`CREATE TABLE <topic> (<columns>)`, stored in the
//! SQL registry) or, when nothing is declared, are inferred from a sample of the newest
//! records of each partition. A JSON field whose name is one of the metadata columns is
//! exposed as `json_<name>`.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use runnel_broker::Broker;

use super::records::for_each_record;
use super::SqlError;

/// Records sampled (newest first, spread over the partitions) to infer a topic's JSON schema.
pub(crate) const SAMPLE_RECORDS_MAX: usize = 1000;

/// The metadata columns, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaColumn {
    Partition = 0,
    Offset = 1,
    Timestamp = 2,
    Key = 3,
    Value = 4,
    Headers = 5,
}

const META_COLUMNS: [MetaColumn; 6] = [
    MetaColumn::Partition,
    MetaColumn::Offset,
    MetaColumn::Timestamp,
    MetaColumn::Key,
    MetaColumn::Value,
    MetaColumn::Headers,
];

impl MetaColumn {
    pub(crate) fn name(self) -> &'static str {
        match self {
            MetaColumn::Partition => "partition",
            MetaColumn::Offset => "offset",
            MetaColumn::Timestamp => "timestamp",
            MetaColumn::Key => "key",
            MetaColumn::Value => "value",
            MetaColumn::Headers => "headers",
        }
    }

    fn field(self) -> Field {
        let data_type = match self {
            MetaColumn::Partition => DataType::Int32,
            MetaColumn::Offset => DataType::Int64,
            MetaColumn::Timestamp => timestamp_type(),
            MetaColumn::Key | MetaColumn::Value => DataType::Utf8,
            MetaColumn::Headers => headers_type(),
        };
        let nullable = matches!(self, MetaColumn::Key | MetaColumn::Value);
        Field::new(self.name(), data_type, nullable)
    }
}

/// Record timestamps: milliseconds, UTC (the zone `now()` uses, so comparisons need no cast).
pub(crate) fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into()))
}

fn headers_type() -> DataType {
    // What arrow's MapBuilder builds with default field names.
    let entries = Field::new(
        "entries",
        DataType::Struct(
            vec![Field::new("keys", DataType::Utf8, false), Field::new("values", DataType::Utf8, true)].into(),
        ),
        false,
    );
    DataType::Map(Arc::new(entries), false)
}

/// Where a table's typed columns came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaSource {
    Declared,
    Inferred { sampled: usize },
}

/// A topic's table: its Arrow schema and how columns map to record parts.
#[derive(Debug, Clone)]
pub struct TableLayout {
    pub schema: SchemaRef,
    /// The typed columns under their JSON names (same order and types as in `schema`).
    pub(crate) json_fields: Vec<FieldRef>,
    pub source: SchemaSource,
}

impl TableLayout {
    /// The layout for typed `fields` (named as in the JSON values).
    pub fn new(fields: &[FieldRef], source: SchemaSource) -> TableLayout {
        let mut columns: Vec<Field> = META_COLUMNS.iter().map(|m| m.field()).collect();
        let mut json_fields = Vec::with_capacity(fields.len());
        for field in fields {
            let exposed = if META_COLUMNS.iter().any(|m| m.name() == field.name()) {
                format!("json_{}", field.name())
            } else {
                field.name().clone()
            };
            // Typed columns are nullable: any record may lack the field or fail to decode.
            columns.push(Field::new(exposed, field.data_type().clone(), true));
            json_fields.push(Arc::new(Field::new(field.name(), field.data_type().clone(), true)));
        }
        TableLayout { schema: Arc::new(Schema::new(columns)), json_fields, source }
    }

    /// What column `index` is: a metadata column, or the index of a typed (JSON) field.
    pub(crate) fn column(&self, index: usize) -> Result<MetaColumn, usize> {
        match META_COLUMNS.get(index) {
            Some(meta) => Ok(*meta),
            None => Err(index - META_COLUMNS.len()),
        }
    }
}

/// Infers the typed columns of `topic` from up to [`SAMPLE_RECORDS_MAX`] of its newest records
/// (values that are JSON objects; others are ignored). Fields come sorted by name.
pub(crate) fn infer_layout(broker: &Broker, topic: &str) -> Result<TableLayout, SqlError> {
    let partitions = broker.topic(topic).ok_or_else(|| SqlError::UnknownTable(topic.to_string()))?.partitions;
    let per_partition = (SAMPLE_RECORDS_MAX / partitions.max(1) as usize).max(1) as i64;
    let mut values = Vec::new();
    for partition in 0..partitions {
        let Some(handle) = broker.partition(topic, partition) else { continue };
        let (start, end) = {
            let log = handle.log();
            (log.log_start_offset(), log.last_stable_offset())
        };
        let from = (end - per_partition).max(start);
        for_each_record(
            broker,
            topic,
            partition,
            from,
            end,
            |_| {},
            |record| {
                if let Some(Ok(value @ serde_json::Value::Object(_))) =
                    record.value.map(serde_json::from_slice::<serde_json::Value>)
                {
                    values.push(value);
                }
                true
            },
        )?;
    }
    let sampled = values.len();
    let inferred = arrow_json::reader::infer_json_schema_from_iterator(values.into_iter().map(Ok))
        .map_err(|e| SqlError::Plan(format!("cannot infer the schema of {topic:?}: {e}")))?;
    let mut fields: Vec<FieldRef> = inferred.fields().iter().cloned().collect();
    fields.sort_by(|a, b| a.name().cmp(b.name()));
    Ok(TableLayout::new(&fields, SchemaSource::Inferred { sampled }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields_that_collide_with_metadata_are_renamed() {
        let fields: Vec<FieldRef> = vec![
            Arc::new(Field::new("timestamp", DataType::Utf8, false)),
            Arc::new(Field::new("n", DataType::Int64, true)),
        ];
        let layout = TableLayout::new(&fields, SchemaSource::Declared);
        let names: Vec<&str> = layout.schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, vec!["partition", "offset", "timestamp", "key", "value", "headers", "json_timestamp", "n"]);
        assert_eq!(layout.json_fields[0].name(), "timestamp");
        assert!(layout.schema.field(6).is_nullable());
        assert_eq!(layout.column(2), Ok(MetaColumn::Timestamp));
        assert_eq!(layout.column(7), Err(1));
    }
}
