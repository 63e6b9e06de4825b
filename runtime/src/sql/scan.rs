//! The `TableProvider` of a topic and its `ExecutionPlan`: one stream per topic partition,
//! reading straight from the segments into Arrow batches.
//!
//! Filters on `partition`, `offset` and `timestamp` are pushed down (as inexact: DataFusion
//! still applies them) and turned into one offset range per partition before anything is
//! read: `partition = / IN / <, >` select partitions, `offset` comparisons bound the range,
//! and a lower bound on `timestamp` moves the start to the first batch at or after it through
//! the time index (`PartitionLog::offset_for_timestamp`). Segments outside a range are never
//! opened; `EXPLAIN` shows the ranges and the segments they skip.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    ReplaceChildrenOptions, SendableRecordBatchStream,
};
use runnel_broker::Broker;

use super::catalog::{MetaColumn, TableLayout};
use super::decode::{BatchBuilder, CHUNK_ROWS};
use super::records::for_each_record;
use super::SqlError;

/// What a query read, summed over its scans: reported with the result and in metrics.
#[derive(Debug, Default)]
pub struct ScanStats {
    pub rows_read: AtomicU64,
    pub bytes_read: AtomicU64,
    pub malformed_rows: AtomicU64,
    pub segments_total: AtomicU64,
    pub segments_skipped: AtomicU64,
}

/// Offsets of one partition to read: `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionRange {
    pub(crate) partition: i32,
    pub(crate) from: i64,
    pub(crate) to: i64,
    pub(crate) segments_read: usize,
    pub(crate) segments_total: usize,
}

/// A topic as a table, planned against a snapshot taken when the scan is planned.
#[derive(Debug)]
pub(crate) struct TopicTable {
    broker: Arc<Broker>,
    topic: String,
    layout: TableLayout,
    stats: Arc<ScanStats>,
}

impl TopicTable {
    pub(crate) fn new(broker: Arc<Broker>, topic: String, layout: TableLayout, stats: Arc<ScanStats>) -> TopicTable {
        TopicTable { broker, topic, layout, stats }
    }

    /// The per-partition ranges `bounds` leave of the topic as it is now (read_committed: up
    /// to each partition's last stable offset).
    pub(crate) fn plan_ranges(&self, bounds: &Bounds) -> Result<Vec<PartitionRange>, SqlError> {
        let partitions =
            self.broker.topic(&self.topic).ok_or_else(|| SqlError::UnknownTable(self.topic.clone()))?.partitions;
        let mut ranges = Vec::new();
        for partition in 0..partitions {
            if !bounds.admits_partition(partition) {
                continue;
            }
            let Some(handle) = self.broker.partition(&self.topic, partition) else { continue };
            let mut log = handle.log();
            let start = log.log_start_offset();
            let end = log.last_stable_offset();
            let mut from = start.max(bounds.offset_from);
            let to = end.min(bounds.offset_to);
            if let Some(timestamp_ms) = bounds.timestamp_from_ms {
                match log.offset_for_timestamp(timestamp_ms) {
                    Ok(Some((offset, _))) => from = from.max(offset),
                    Ok(None) => from = to,
                    Err(e) => return Err(SqlError::Storage(e.to_string())),
                }
            }
            let bases = log.segment_base_offsets();
            drop(log);
            let segments_read = segments_overlapping(&bases, end, from, to);
            ranges.push(PartitionRange {
                partition,
                from,
                to: to.max(from),
                segments_read,
                segments_total: bases.len(),
            });
        }
        Ok(ranges)
    }
}

/// Segments (by base offset; the last one ends at `end`) that hold offsets in `[from, to)`.
fn segments_overlapping(bases: &[i64], end: i64, from: i64, to: i64) -> usize {
    if from >= to {
        return 0;
    }
    (0..bases.len())
        .filter(|&i| {
            let segment_end = bases.get(i + 1).copied().unwrap_or(end.max(bases[i] + 1));
            bases[i] < to && segment_end > from
        })
        .count()
}

#[async_trait::async_trait]
impl TableProvider for TopicTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.layout.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|filter| {
                let mut bounds = Bounds::default();
                if bounds.add(filter) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut bounds = Bounds::default();
        for filter in filters {
            bounds.add(filter);
        }
        let ranges = self.plan_ranges(&bounds).map_err(|e| e.into_datafusion())?;
        for range in &ranges {
            self.stats.segments_total.fetch_add(range.segments_total as u64, Ordering::Relaxed);
            self.stats
                .segments_skipped
                .fetch_add((range.segments_total - range.segments_read) as u64, Ordering::Relaxed);
        }
        let builder = BatchBuilder::new(&self.layout, projection.map(Vec::as_slice));
        let schema = Arc::clone(builder.schema());
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(ranges.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Arc::new(TopicScanExec {
            broker: Arc::clone(&self.broker),
            topic: self.topic.clone(),
            layout: self.layout.clone(),
            projection: projection.cloned(),
            schema,
            ranges,
            limit,
            stats: Arc::clone(&self.stats),
            properties: Arc::new(properties),
        }))
    }
}

/// What the pushed-down filters allow: the conjunction of every bound understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub(crate) partitions: Option<BTreeSet<i32>>,
    pub(crate) partition_from: i64,
    pub(crate) partition_to: i64,
    pub(crate) offset_from: i64,
    pub(crate) offset_to: i64,
    pub(crate) timestamp_from_ms: Option<i64>,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            partitions: None,
            partition_from: i64::MIN,
            partition_to: i64::MAX,
            offset_from: i64::MIN,
            offset_to: i64::MAX,
            timestamp_from_ms: None,
        }
    }
}

impl Bounds {
    fn admits_partition(&self, partition: i32) -> bool {
        let p = i64::from(partition);
        p >= self.partition_from
            && p < self.partition_to
            && self.partitions.as_ref().is_none_or(|set| set.contains(&partition))
    }

    /// Narrows the bounds by `filter`; returns whether any of it was understood.
    pub(crate) fn add(&mut self, filter: &Expr) -> bool {
        match filter {
            Expr::BinaryExpr(binary) if binary.op == Operator::And => {
                let left = self.add(&binary.left);
                let right = self.add(&binary.right);
                left || right
            }
            Expr::BinaryExpr(binary) => {
                if let (Some(column), Some(value)) = (meta_column(&binary.left), literal(&binary.right)) {
                    self.compare(column, binary.op, value)
                } else if let (Some(value), Some(column)) = (literal(&binary.left), meta_column(&binary.right)) {
                    match binary.op.swap() {
                        Some(op) => self.compare(column, op, value),
                        None => false,
                    }
                } else {
                    false
                }
            }
            Expr::Between(between) if !between.negated => {
                let Some(column) = meta_column(&between.expr) else { return false };
                let (Some(low), Some(high)) = (literal(&between.low), literal(&between.high)) else { return false };
                let low_ok = self.compare(column, Operator::GtEq, low);
                let high_ok = self.compare(column, Operator::LtEq, high);
                low_ok || high_ok
            }
            Expr::InList(list) if !list.negated => {
                if meta_column(&list.expr) != Some(MetaColumn::Partition) {
                    return false;
                }
                let mut set = BTreeSet::new();
                for item in &list.list {
                    match literal(item).and_then(|v| v.as_int()) {
                        Some(p) => {
                            if let Ok(p) = i32::try_from(p) {
                                set.insert(p);
                            }
                        }
                        None => return false,
                    }
                }
                self.intersect_partitions(set);
                true
            }
            _ => false,
        }
    }

    fn intersect_partitions(&mut self, set: BTreeSet<i32>) {
        self.partitions = Some(match self.partitions.take() {
            Some(existing) => existing.intersection(&set).copied().collect(),
            None => set,
        });
    }

    fn compare(&mut self, column: MetaColumn, op: Operator, value: Literal) -> bool {
        match column {
            MetaColumn::Timestamp => {
                let Some(ms) = value.as_timestamp_ms() else { return false };
                // Only lower bounds prune: the time index knows the largest timestamp so far,
                // not the smallest ahead. Upper bounds are left to the filter.
                match op {
                    Operator::Gt | Operator::GtEq | Operator::Eq => {
                        self.timestamp_from_ms = Some(self.timestamp_from_ms.map_or(ms, |t| t.max(ms)));
                        true
                    }
                    _ => false,
                }
            }
            MetaColumn::Partition | MetaColumn::Offset => {
                let Some(v) = value.as_int() else { return false };
                let (from, to) = match column {
                    MetaColumn::Partition => (&mut self.partition_from, &mut self.partition_to),
                    _ => (&mut self.offset_from, &mut self.offset_to),
                };
                match op {
                    Operator::Eq => {
                        *from = (*from).max(v);
                        *to = (*to).min(v.saturating_add(1));
                    }
                    Operator::Gt => *from = (*from).max(v.saturating_add(1)),
                    Operator::GtEq => *from = (*from).max(v),
                    Operator::Lt => *to = (*to).min(v),
                    Operator::LtEq => *to = (*to).min(v.saturating_add(1)),
                    _ => return false,
                }
                true
            }
            _ => false,
        }
    }
}

/// A literal in a pushed-down comparison.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Literal {
    Int(i64),
    /// A timestamp in some unit, with that unit's length in nanoseconds.
    Timestamp {
        value: i64,
        nanos_per_unit: i64,
    },
}

impl Literal {
    fn as_int(self) -> Option<i64> {
        match self {
            Literal::Int(v) => Some(v),
            Literal::Timestamp { .. } => None,
        }
    }

    /// Milliseconds, rounded down: a lower bound stays a lower bound.
    fn as_timestamp_ms(self) -> Option<i64> {
        match self {
            Literal::Timestamp { value, nanos_per_unit } => {
                let nanos = i128::from(value) * i128::from(nanos_per_unit);
                i64::try_from(nanos.div_euclid(1_000_000)).ok()
            }
            Literal::Int(_) => None,
        }
    }
}

fn literal(expr: &Expr) -> Option<Literal> {
    let Expr::Literal(value, _) = expr else { return None };
    let int = |v: Option<i64>| v.map(Literal::Int);
    let ts = |v: &Option<i64>, nanos_per_unit| v.map(|value| Literal::Timestamp { value, nanos_per_unit });
    match value {
        ScalarValue::Int8(v) => int(v.map(i64::from)),
        ScalarValue::Int16(v) => int(v.map(i64::from)),
        ScalarValue::Int32(v) => int(v.map(i64::from)),
        ScalarValue::Int64(v) => int(*v),
        ScalarValue::UInt8(v) => int(v.map(i64::from)),
        ScalarValue::UInt16(v) => int(v.map(i64::from)),
        ScalarValue::UInt32(v) => int(v.map(i64::from)),
        ScalarValue::UInt64(v) => int(v.and_then(|v| i64::try_from(v).ok())),
        ScalarValue::TimestampSecond(v, _) => ts(v, 1_000_000_000),
        ScalarValue::TimestampMillisecond(v, _) => ts(v, 1_000_000),
        ScalarValue::TimestampMicrosecond(v, _) => ts(v, 1_000),
        ScalarValue::TimestampNanosecond(v, _) => ts(v, 1),
        _ => None,
    }
}

/// The metadata column an expression names (possibly through casts).
fn meta_column(expr: &Expr) -> Option<MetaColumn> {
    match expr {
        Expr::Column(column) => match column.name.as_str() {
            "partition" => Some(MetaColumn::Partition),
            "offset" => Some(MetaColumn::Offset),
            "timestamp" => Some(MetaColumn::Timestamp),
            _ => None,
        },
        Expr::Cast(cast) => meta_column(&cast.expr),
        Expr::TryCast(cast) => meta_column(&cast.expr),
        _ => None,
    }
}

/// Reads the planned ranges, one DataFusion partition per topic partition.
#[derive(Debug)]
pub(crate) struct TopicScanExec {
    broker: Arc<Broker>,
    topic: String,
    layout: TableLayout,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    ranges: Vec<PartitionRange>,
    limit: Option<usize>,
    stats: Arc<ScanStats>,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for TopicScanExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicScanExec: topic={}, ranges=[", self.topic)?;
        for (i, range) in self.ranges.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(
                f,
                "p{}: offsets {}..{} ({} of {} segments)",
                range.partition, range.from, range.to, range.segments_read, range.segments_total
            )?;
        }
        write!(f, "]")?;
        if let Some(limit) = self.limit {
            write!(f, ", limit={limit}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for TopicScanExec {
    fn name(&self) -> &str {
        "TopicScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let mut stream = RecordBatchReceiverStream::builder(Arc::clone(&self.schema), 2);
        let Some(range) = self.ranges.get(partition).cloned() else {
            // No partition to read (every one pruned): one empty stream.
            return Ok(stream.build());
        };
        let tx = stream.tx();
        let broker = Arc::clone(&self.broker);
        let topic = self.topic.clone();
        let mut builder = BatchBuilder::new(&self.layout, self.projection.as_deref());
        let stats = Arc::clone(&self.stats);
        let limit = self.limit.unwrap_or(usize::MAX);
        stream.spawn_blocking(move || {
            let mut failure = None;
            let mut flush = |builder: &mut BatchBuilder| -> bool {
                match builder.finish() {
                    Ok((batch, malformed)) => {
                        stats.malformed_rows.fetch_add(malformed, Ordering::Relaxed);
                        stats.rows_read.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                        // The receiver is gone when the query was cancelled or finished early.
                        tx.blocking_send(Ok(batch)).is_ok()
                    }
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                }
            };
            let mut pushed = 0usize;
            let read = for_each_record(
                &broker,
                &topic,
                range.partition,
                range.from,
                range.to,
                |bytes| {
                    stats.bytes_read.fetch_add(bytes as u64, Ordering::Relaxed);
                },
                |record| {
                    builder.push(range.partition, record);
                    pushed += 1;
                    if builder.len() >= CHUNK_ROWS && !flush(&mut builder) {
                        return false;
                    }
                    pushed < limit
                },
            );
            if let Err(e) = read {
                return Err(e.into_datafusion());
            }
            if builder.len() > 0 {
                flush(&mut builder);
            }
            match failure {
                Some(e) => Err(e.into_datafusion()),
                None => Ok(()),
            }
        });
        Ok(stream.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn comparisons_and_lists_become_bounds() {
        let mut bounds = Bounds::default();
        let filter = col("offset").gt_eq(lit(10i64)).and(col("offset").lt(lit(20i64))).and(col("partition").eq(lit(1)));
        assert!(bounds.add(&filter));
        assert_eq!((bounds.offset_from, bounds.offset_to), (10, 20));
        assert!(bounds.admits_partition(1) && !bounds.admits_partition(0) && !bounds.admits_partition(2));
        let mut bounds = Bounds::default();
        assert!(bounds.add(&lit(5i64).lt(col("offset"))), "literal on the left");
        assert_eq!(bounds.offset_from, 6);
        let mut bounds = Bounds::default();
        assert!(bounds.add(&col("partition").in_list(vec![lit(0), lit(2)], false)));
        assert!(bounds.admits_partition(2) && !bounds.admits_partition(1));
        let mut bounds = Bounds::default();
        let ts = lit(ScalarValue::TimestampNanosecond(Some(1_500_999_999), None));
        assert!(bounds.add(&col("timestamp").gt(ts.clone())));
        assert_eq!(bounds.timestamp_from_ms, Some(1_500));
        assert!(!Bounds::default().add(&col("timestamp").lt(ts)), "upper time bounds do not prune");
        assert!(!Bounds::default().add(&col("amount").gt(lit(1))));
        assert!(!Bounds::default().add(&col("offset").gt(lit(1)).or(col("offset").lt(lit(0)))));
    }

    #[test]
    fn segments_overlapping_a_range_are_counted() {
        let bases = [0, 100, 200, 300];
        assert_eq!(segments_overlapping(&bases, 350, 0, 350), 4);
        assert_eq!(segments_overlapping(&bases, 350, 250, 350), 2);
        assert_eq!(segments_overlapping(&bases, 350, 300, 301), 1);
        assert_eq!(segments_overlapping(&bases, 350, 350, 350), 0);
        assert_eq!(segments_overlapping(&bases, 350, 99, 101), 2);
    }
}
