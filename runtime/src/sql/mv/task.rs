//! The task that maintains one view: restore from the changelog, then repeatedly read the
//! next records of every source partition, evaluate and aggregate them, and commit group
//! changes, input positions and outputs together (see `checkpoint`).
//!
//! One task per view reads all source partitions (so a GROUP BY sees every partition's rows
//! in one state); its steps run on a blocking thread.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimeUnit};
use arrow::row::{RowConverter, SortField};
use bytes::Bytes;
use runnel_broker::partitioner::partition_for_key;
use runnel_broker::Broker;
use tokio::sync::watch;

use super::super::decode::BatchBuilder;
use super::super::records::for_each_record;
use super::super::SqlError;
use super::aggregate::Argument;
use super::checkpoint::{encode_commit, restore_record, ViewCheckpoint};
use super::emit::{encode_rows, Outputs};
use super::plan::{AggregatePlan, CompiledView, Shape};
use super::state::{GroupChange, LateReason, ViewState};
use super::ViewDef;
use crate::transform::checkpoint::PendingOutput;
use crate::transform::log_io;
use crate::transform::records::{encode_batch, Outgoing};

/// Input rows per step (one commit): enough to amortise a commit, small enough to bound the
/// memory of one step's batch and outputs.
pub(crate) const STEP_ROWS_MAX: usize = 65_536;
/// How long an idle view waits for an append before looking again.
const IDLE_WAIT: Duration = Duration::from_millis(200);
const APPEND_ATTEMPTS: u32 = 5;
const APPEND_BACKOFF: Duration = Duration::from_millis(200);

/// What `SHOW MATERIALIZED VIEWS` sees of a running view.
#[derive(Debug, Default)]
pub(crate) struct ViewShared {
    pub(crate) processed: AtomicU64,
    pub(crate) late: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) emitted: AtomicU64,
    pub(crate) groups: AtomicU64,
    pub(crate) watermark_ms: AtomicI64,
    pub(crate) positions: Mutex<BTreeMap<i32, i64>>,
    pub(crate) status: Mutex<String>,
}

impl ViewShared {
    pub(crate) fn set_status(&self, status: impl Into<String>) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status.into();
    }

    pub(crate) fn status(&self) -> String {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn publish(&self, checkpoint: &ViewCheckpoint, state: &ViewState) {
        self.processed.store(checkpoint.processed, Ordering::Relaxed);
        self.late.store(checkpoint.late, Ordering::Relaxed);
        self.malformed.store(checkpoint.malformed, Ordering::Relaxed);
        self.emitted.store(checkpoint.emitted, Ordering::Relaxed);
        self.groups.store(state.group_count() as u64, Ordering::Relaxed);
        self.watermark_ms.store(state.watermark(), Ordering::Relaxed);
        *self.positions.lock().unwrap_or_else(|p| p.into_inner()) = checkpoint.positions.clone();
    }
}

pub(crate) struct ViewTask {
    pub(crate) broker: Arc<Broker>,
    pub(crate) def: ViewDef,
    pub(crate) view: Arc<CompiledView>,
    pub(crate) shared: Arc<ViewShared>,
    pub(crate) stop: watch::Receiver<bool>,
}

/// Everything a step needs, owned, for a blocking thread.
struct Step {
    broker: Arc<Broker>,
    def: ViewDef,
    view: Arc<CompiledView>,
    state: ViewState,
    converter: Option<RowConverter>,
    round: usize,
}

impl ViewTask {
    pub(crate) async fn run(mut self) {
        match self.run_inner().await {
            Ok(()) => self.shared.set_status("STOPPED"),
            Err(e) => {
                tracing::error!(view = %self.def.name, error = %e, "materialized view failed");
                self.shared.set_status(format!("FAILED: {e}"));
            }
        }
    }

    async fn run_inner(&mut self) -> Result<(), SqlError> {
        let (state, mut checkpoint) = self.restore().await?;
        let converter = key_converter(&self.view)?;
        let mut step = Step {
            broker: Arc::clone(&self.broker),
            def: self.def.clone(),
            view: Arc::clone(&self.view),
            state,
            converter,
            round: 0,
        };
        self.shared.publish(&checkpoint, &step.state);
        self.shared.set_status("RUNNING");
        let mut appends = self.broker.subscribe_appends();
        loop {
            if *self.stop.borrow() {
                return Ok(());
            }
            let base = checkpoint.clone();
            let (returned, result) = tokio::task::spawn_blocking(move || {
                let result = step.run(&base);
                (step, result)
            })
            .await
            .map_err(|e| SqlError::Internal(format!("view step: {e}")))?;
            step = returned;
            match result? {
                Some((next, changes)) => {
                    self.commit(&changes, &next).await?;
                    checkpoint = next;
                    self.shared.publish(&checkpoint, &step.state);
                }
                None => {
                    tokio::select! {
                        _ = appends.changed() => {}
                        _ = tokio::time::sleep(IDLE_WAIT) => {}
                        _ = self.stop.changed() => {}
                    }
                }
            }
        }
    }

    /// Rebuilds groups and position from the changelog and finishes the last commit's appends.
    async fn restore(&self) -> Result<(ViewState, ViewCheckpoint), SqlError> {
        let broker = Arc::clone(&self.broker);
        let changelog = self.def.changelog_topic();
        let (groups, checkpoint) = tokio::task::spawn_blocking(move || {
            let mut groups = BTreeMap::new();
            let mut checkpoint = None;
            log_io::scan(&broker, &changelog, 0, |record| {
                restore_record(&mut groups, &mut checkpoint, record.key.as_deref(), record.value.as_ref())
                    .map_err(|e| crate::transform::TransformError::Corrupt(e.to_string()))
            })?;
            Ok::<_, SqlError>((groups, checkpoint))
        })
        .await
        .map_err(|e| SqlError::Internal(e.to_string()))??;
        let mut state = self.def.new_state(&self.view);
        for (id, group) in groups {
            state.restore(&id, group);
        }
        let checkpoint = match checkpoint {
            Some(checkpoint) => {
                for pending in &checkpoint.pending {
                    self.append_with_retry(pending).await?;
                }
                state.max_event_ms = checkpoint.max_event_ms;
                tracing::info!(view = %self.def.name, groups = state.group_count(), "materialized view restored");
                checkpoint
            }
            None => {
                let checkpoint = self.first_checkpoint()?;
                // Pin the start, so a restart before the first step does not move it.
                self.commit(&[], &checkpoint).await?;
                checkpoint
            }
        };
        Ok((state, checkpoint))
    }

    fn first_checkpoint(&self) -> Result<ViewCheckpoint, SqlError> {
        let source = &self.view.source;
        let partitions = self.broker.topic(source).ok_or_else(|| SqlError::UnknownTable(source.clone()))?.partitions;
        let mut positions = BTreeMap::new();
        for partition in 0..partitions {
            let handle =
                self.broker.partition(source, partition).ok_or_else(|| SqlError::UnknownTable(source.clone()))?;
            let log = handle.log();
            let offset = if self.def.from_latest { log.high_watermark() } else { log.log_start_offset() };
            positions.insert(partition, offset);
        }
        let producer_id = self.broker.allocate_producer_id().map_err(|e| SqlError::Storage(e.to_string()))?;
        Ok(ViewCheckpoint { positions, producer_id, max_event_ms: i64::MIN, ..ViewCheckpoint::default() })
    }

    async fn commit(&self, changes: &[GroupChange], checkpoint: &ViewCheckpoint) -> Result<(), SqlError> {
        let batch = encode_commit(changes, checkpoint, self.broker.now_ms())?;
        let changelog = PendingOutput { topic: self.def.changelog_topic(), partition: 0, batch };
        self.append_with_retry(&changelog).await?;
        for pending in &checkpoint.pending {
            self.append_with_retry(pending).await?;
        }
        self.broker.notify_appended();
        Ok(())
    }

    async fn append_with_retry(&self, pending: &PendingOutput) -> Result<(), SqlError> {
        let mut attempt = 1;
        loop {
            match log_io::append(&self.broker, &pending.topic, pending.partition, &pending.batch) {
                Ok(_) => return Ok(()),
                Err(e) if attempt < APPEND_ATTEMPTS => {
                    tracing::warn!(topic = %pending.topic, attempt, error = %e, "view append failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(APPEND_BACKOFF * attempt).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The row format of a view's group keys (none for a view without keys).
fn key_converter(view: &CompiledView) -> Result<Option<RowConverter>, SqlError> {
    let Shape::Aggregate(plan) = &view.shape else { return Ok(None) };
    if plan.key_fields.is_empty() {
        return Ok(None);
    }
    let fields = plan.key_fields.iter().map(|f| SortField::new(f.data_type().clone())).collect();
    RowConverter::new(fields).map(Some).map_err(|e| SqlError::Plan(format!("group keys: {e}")))
}

/// One read input row that was not counted, to be copied to `<view>.late`.
struct Refused {
    partition: i32,
    offset: i64,
    reason: LateReason,
}

impl Step {
    /// Reads and processes the next rows after `base`; `None` when there is nothing new.
    fn run(&mut self, base: &ViewCheckpoint) -> Result<Option<(ViewCheckpoint, Vec<GroupChange>)>, SqlError> {
        let mut next = base.clone();
        next.pending.clear();
        let (batch, malformed) = match self.read(&mut next)? {
            Some(read) => read,
            None if next.positions != base.positions => {
                // Only markers or aborted data were passed: move on without output.
                return Ok(Some((next, Vec::new())));
            }
            None => return Ok(None),
        };
        let rows = batch.num_rows() as u64;
        let batch = self.filter(batch)?;
        let mut outputs = Outputs::new(&self.broker, &self.def);
        let mut refused = Vec::new();
        let view = Arc::clone(&self.view);
        let changes = match &view.shape {
            Shape::Stream { projection, output_schema } => {
                let values = encode_rows(projection, output_schema, &batch, &[])?;
                let keys = batch.column(3).as_string_opt::<i32>().cloned();
                let times = batch.column(2).as_primitive_opt::<arrow::datatypes::TimestampMillisecondType>().cloned();
                for (row, value) in values.into_iter().enumerate() {
                    let key =
                        keys.as_ref().and_then(|k| k.is_valid(row).then(|| Bytes::from(k.value(row).to_string())));
                    let timestamp = times.as_ref().map_or(0, |t| t.value(row));
                    outputs.push_output(key, Some(value), timestamp)?;
                }
                Vec::new()
            }
            Shape::Aggregate(plan) => {
                let plan: &AggregatePlan = plan;
                self.aggregate(plan, &batch, &mut refused)?;
                let (emitted, changes) = self.state.take_changes();
                outputs.push_emitted(plan, self.converter.as_ref(), &emitted, self.state.max_event_ms)?;
                changes
            }
        };
        for refused_row in &refused {
            self.copy_late(refused_row, &mut outputs)?;
        }
        next.processed += rows;
        next.late += refused.len() as u64;
        next.malformed += malformed;
        next.emitted += outputs.emitted_rows();
        next.max_event_ms = self.state.max_event_ms;
        next.pending = outputs.encode(&mut next)?;
        Ok(Some((next, changes)))
    }

    /// Reads up to [`STEP_ROWS_MAX`] rows, starting each step at the next partition in turn
    /// so none starves; advances `next.positions`.
    fn read(&mut self, next: &mut ViewCheckpoint) -> Result<Option<(RecordBatch, u64)>, SqlError> {
        let view = Arc::clone(&self.view);
        let mut builder = BatchBuilder::new(&view.layout, Some(&view.columns_used));
        let partitions: Vec<i32> = next.positions.keys().copied().collect();
        self.round = self.round.wrapping_add(1);
        for i in 0..partitions.len() {
            let partition = partitions[(i + self.round) % partitions.len()];
            let from = next.positions[&partition];
            let Some(handle) = self.broker.partition(&view.source, partition) else { continue };
            let end = handle.log().last_stable_offset();
            if from >= end || builder.len() >= STEP_ROWS_MAX {
                continue;
            }
            let mut last = None;
            let reached = for_each_record(
                &self.broker,
                &view.source,
                partition,
                from,
                end,
                |_| {},
                |record| {
                    builder.push(partition, record);
                    last = Some(record.offset);
                    builder.len() < STEP_ROWS_MAX
                },
            )?;
            let after = match last {
                Some(offset) if builder.len() >= STEP_ROWS_MAX => offset + 1,
                Some(offset) => (offset + 1).max(reached),
                None => reached.max(from),
            };
            next.positions.insert(partition, after);
        }
        if builder.len() == 0 {
            return Ok(None);
        }
        let (projected, malformed) = builder.finish()?;
        Ok(Some((widen(&view, projected)?, malformed)))
    }

    fn filter(&self, batch: RecordBatch) -> Result<RecordBatch, SqlError> {
        let Some(predicate) = &self.view.predicate else { return Ok(batch) };
        let mask = evaluate(predicate.as_ref(), &batch)?;
        let mask = mask.as_boolean_opt().ok_or_else(|| SqlError::Plan("WHERE must be a boolean condition".into()))?;
        filter_record_batch(&batch, mask).map_err(|e| SqlError::Execution(format!("filter: {e}")))
    }

    fn aggregate(
        &mut self,
        plan: &AggregatePlan,
        batch: &RecordBatch,
        refused: &mut Vec<Refused>,
    ) -> Result<(), SqlError> {
        let rows = batch.num_rows();
        let event_ms = match &plan.window {
            Some(window) => Some(event_times(&evaluate(window.event_time.as_ref(), batch)?)?),
            None => None,
        };
        let keys = match &self.converter {
            Some(converter) => {
                let columns = plan.keys.iter().map(|k| evaluate(k.as_ref(), batch)).collect::<Result<Vec<_>, _>>()?;
                Some(converter.convert_columns(&columns).map_err(|e| SqlError::Execution(format!("group keys: {e}")))?)
            }
            None => None,
        };
        let mut arguments = Vec::with_capacity(plan.aggregates.len());
        for aggregate in &plan.aggregates {
            arguments.push(match &aggregate.argument {
                Some(expr) => Argument::from_array(&evaluate(expr.as_ref(), batch)?, aggregate.kind)?,
                None => Argument::None,
            });
        }
        let partitions = batch.column(0).as_primitive::<Int32Type>();
        let offsets = batch.column(1).as_primitive::<Int64Type>();
        for row in 0..rows {
            let key: &[u8] = match &keys {
                Some(keys) => keys.row(row).data(),
                None => &[],
            };
            let time = event_ms.as_ref().map(|times| times.is_valid(row).then(|| times.value(row)));
            if let Err(reason) = self.state.apply(time, key, &arguments, row) {
                refused.push(Refused { partition: partitions.value(row), offset: offsets.value(row), reason });
            }
        }
        Ok(())
    }

    /// Copies a refused input record, as it is, to `<view>.late` with headers saying why.
    fn copy_late(&self, refused: &Refused, outputs: &mut Outputs) -> Result<(), SqlError> {
        let mut original = None;
        for_each_record(
            &self.broker,
            &self.view.source,
            refused.partition,
            refused.offset,
            refused.offset + 1,
            |_| {},
            |r| {
                let mut headers: Vec<(String, Option<Bytes>)> = r
                    .headers()
                    .into_iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k).to_string(), v.map(Bytes::copy_from_slice)))
                    .collect();
                let reason = match refused.reason {
                    LateReason::Late => "late",
                    LateReason::NoEventTime => "no-event-time",
                };
                headers.push(("runnel.late.reason".into(), Some(Bytes::from_static(reason.as_bytes()))));
                headers.push(("runnel.source.partition".into(), Some(Bytes::from(refused.partition.to_string()))));
                headers.push(("runnel.source.offset".into(), Some(Bytes::from(refused.offset.to_string()))));
                original = Some(Outgoing {
                    timestamp_ms: r.timestamp_ms,
                    key: r.key.map(Bytes::copy_from_slice),
                    value: r.value.map(Bytes::copy_from_slice),
                    headers,
                });
                false
            },
        )?;
        if let Some(record) = original {
            outputs.push_late(refused.partition, record);
        }
        Ok(())
    }
}

fn evaluate(expr: &dyn datafusion::physical_expr::PhysicalExpr, batch: &RecordBatch) -> Result<ArrayRef, SqlError> {
    expr.evaluate(batch).and_then(|value| value.into_array(batch.num_rows())).map_err(SqlError::from_datafusion)
}

/// Event times in milliseconds: timestamps of any unit, epoch-millisecond integers, or text
/// that parses as a timestamp.
fn event_times(array: &ArrayRef) -> Result<arrow::array::Int64Array, SqlError> {
    let millis = match array.data_type() {
        DataType::Int64 => Arc::clone(array),
        DataType::Int32 | DataType::UInt32 | DataType::UInt64 | DataType::Int16 => {
            cast(array, &DataType::Int64).map_err(|e| SqlError::Execution(e.to_string()))?
        }
        _ => {
            let as_ms = cast(array, &DataType::Timestamp(TimeUnit::Millisecond, None)).map_err(|e| {
                SqlError::Plan(format!("the window's event time ({}) is not a time: {e}", array.data_type()))
            })?;
            cast(&as_ms, &DataType::Int64).map_err(|e| SqlError::Execution(e.to_string()))?
        }
    };
    Ok(millis.as_primitive::<Int64Type>().clone())
}

/// A batch of the view's projected columns, widened to the source layout (null columns for
/// what the view does not read), so compiled expressions find columns at their positions.
fn widen(view: &CompiledView, projected: RecordBatch) -> Result<RecordBatch, SqlError> {
    let rows = projected.num_rows();
    let mut columns = Vec::with_capacity(view.layout.schema.fields().len());
    for (index, field) in view.layout.schema.fields().iter().enumerate() {
        match view.columns_used.iter().position(|&used| used == index) {
            Some(at) => columns.push(Arc::clone(projected.column(at))),
            None => columns.push(new_null_array(field.data_type(), rows)),
        }
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    RecordBatch::try_new_with_options(Arc::clone(&view.layout.schema), columns, &options)
        .map_err(|e| SqlError::Internal(format!("widening a view batch: {e}")))
}

/// Bytes of records per output batch below which a commit's records stay in one batch.
const OUTPUT_BATCH_BYTES: usize = 1024 * 1024;
/// Batches per (topic, partition) per commit: a partition recognises a re-appended batch as a
/// duplicate only among a producer's last five (`BATCHES_PER_PRODUCER` in the broker).
const OUTPUT_BATCHES_PER_COMMIT_MAX: usize = 5;

/// Encodes idempotent batches per (topic, partition), advancing the checkpoint's sequences.
pub(crate) fn encode_pending(
    grouped: BTreeMap<(String, i32), Vec<Outgoing>>,
    checkpoint: &mut ViewCheckpoint,
) -> Result<Vec<PendingOutput>, SqlError> {
    let mut pending = Vec::with_capacity(grouped.len());
    for ((topic, partition), records) in grouped {
        let bytes: usize = records
            .iter()
            .map(|r| 32 + r.key.as_ref().map_or(0, Bytes::len) + r.value.as_ref().map_or(0, Bytes::len))
            .sum();
        let chunks = bytes.div_ceil(OUTPUT_BATCH_BYTES).clamp(1, OUTPUT_BATCHES_PER_COMMIT_MAX);
        let per_chunk = records.len().div_ceil(chunks).max(1);
        for chunk in records.chunks(per_chunk) {
            let sequence = checkpoint.take_sequence(&topic, partition, chunk.len());
            let batch = encode_batch(chunk, Some((checkpoint.producer_id, sequence)))?;
            pending.push(PendingOutput { topic: topic.clone(), partition, batch });
        }
    }
    Ok(pending)
}

/// The output partition of a record: Kafka's key hash (keyless records: partition 0).
pub(crate) fn output_partition(key: Option<&Bytes>, partitions: i32) -> i32 {
    match key {
        Some(key) => partition_for_key(key, partitions.max(1) as u32) as i32,
        None => 0,
    }
}
