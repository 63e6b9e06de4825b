//! `SELECT ... FROM <view>`: the view's current result, read from its output topic as of
//! the query's start — the latest row per key for aggregate views (tombstones delete), every
//! row for stream views.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result as DfResult;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::TableType;
use datafusion::physical_plan::ExecutionPlan;
use runnel_broker::Broker;

use super::super::decode::{decode_json, CHUNK_ROWS};
use super::super::records::for_each_record;
use super::super::scan::ScanStats;
use super::super::SqlError;

#[derive(Debug)]
pub(crate) struct ViewTable {
    broker: Arc<Broker>,
    topic: String,
    schema: SchemaRef,
    latest_per_key: bool,
    stats: Arc<ScanStats>,
}

impl ViewTable {
    pub(crate) fn new(
        broker: Arc<Broker>,
        topic: String,
        schema: SchemaRef,
        latest_per_key: bool,
        stats: Arc<ScanStats>,
    ) -> ViewTable {
        ViewTable { broker, topic, schema, latest_per_key, stats }
    }

    /// The view's rows as JSON values, in output order.
    fn read_values(&self) -> Result<Vec<Vec<u8>>, SqlError> {
        let partitions = self.broker.topic(&self.topic).map_or(0, |t| t.partitions);
        let mut latest: HashMap<Vec<u8>, (usize, Option<Vec<u8>>)> = HashMap::new();
        let mut all = Vec::new();
        let mut sequence = 0usize;
        for partition in 0..partitions {
            let Some(handle) = self.broker.partition(&self.topic, partition) else { continue };
            let (start, end) = {
                let log = handle.log();
                (log.log_start_offset(), log.last_stable_offset())
            };
            let stats = &self.stats;
            for_each_record(
                &self.broker,
                &self.topic,
                partition,
                start,
                end,
                |bytes| {
                    stats.bytes_read.fetch_add(bytes as u64, Ordering::Relaxed);
                },
                |record| {
                    stats.rows_read.fetch_add(1, Ordering::Relaxed);
                    sequence += 1;
                    let value = record.value.map(<[u8]>::to_vec);
                    match (self.latest_per_key, record.key) {
                        (true, Some(key)) => {
                            latest.insert(key.to_vec(), (sequence, value));
                        }
                        _ => {
                            if let Some(value) = value {
                                all.push(value);
                            }
                        }
                    }
                    true
                },
            )?;
        }
        if self.latest_per_key {
            let mut rows: Vec<(usize, Vec<u8>)> =
                latest.into_values().filter_map(|(sequence, value)| value.map(|v| (sequence, v))).collect();
            rows.sort_by_key(|(sequence, _)| *sequence);
            all.extend(rows.into_iter().map(|(_, v)| v));
        }
        Ok(all)
    }

    fn batches(&self) -> Result<Vec<RecordBatch>, SqlError> {
        let values = self.read_values()?;
        let mut batches = Vec::new();
        for chunk in values.chunks(CHUNK_ROWS) {
            let mut json = Vec::new();
            let mut rows: Vec<Option<Range<usize>>> = Vec::with_capacity(chunk.len());
            for value in chunk {
                let start = json.len();
                json.extend_from_slice(value);
                rows.push(Some(start..json.len()));
            }
            let (batch, malformed) = decode_json(&self.schema, &json, &rows)?;
            self.stats.malformed_rows.fetch_add(malformed, Ordering::Relaxed);
            if let Some(batch) = batch {
                batches.push(batch);
            }
        }
        Ok(batches)
    }
}

#[async_trait::async_trait]
impl TableProvider for ViewTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let reader = ViewTable {
            broker: Arc::clone(&self.broker),
            topic: self.topic.clone(),
            schema: Arc::clone(&self.schema),
            latest_per_key: self.latest_per_key,
            stats: Arc::clone(&self.stats),
        };
        let batches = tokio::task::spawn_blocking(move || reader.batches())
            .await
            .map_err(|e| SqlError::Internal(e.to_string()).into_datafusion())?
            .map_err(SqlError::into_datafusion)?;
        let table = MemTable::try_new(Arc::clone(&self.schema), vec![batches])?;
        table.scan(state, projection, filters, limit).await
    }
}
