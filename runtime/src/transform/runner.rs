//! One running instance: a (transform, input partition) pair that reads its input partition
//! straight from the log, runs batches through its processor on a blocking thread, and
//! commits outputs, state and position together (see `checkpoint`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use runnel_broker::Broker;
use serde::Serialize;
use tokio::sync::watch;

use super::checkpoint::Checkpoint;
use super::log_io;
use super::processor::{
    Failure, InRecord, InstanceSetup, LogSink, OutRecord, Processed, Processor, ProcessorFactory, SharedState,
};
use super::records::decode_input;
use super::spec::{OnError, TransformSpec};
use super::TransformError;

/// Records per batch handed to an instance: large enough to amortise the WASM boundary,
/// small enough that one batch's outputs and state changes fit a commit comfortably.
pub(crate) const BATCH_RECORDS_MAX: usize = 10_000;
/// Consecutive records that run into the CPU deadline while a failed batch is retried record by
/// record, before the rest of the batch is failed without running it.
const DEADLINES_BEFORE_GIVING_UP: u32 = 3;
/// How long an idle instance waits for an append before looking again (and at its controls).
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// Log lines kept per transform for `runnel transform logs`.
pub(crate) const LOG_LINES_MAX: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "error", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    Starting,
    Running,
    Paused,
    Failed(String),
    Stopped,
}

/// What the service and the API see of an instance.
#[derive(Debug)]
pub(crate) struct InstanceShared {
    pub(crate) partition: i32,
    pub(crate) processed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) position: AtomicI64,
    pub(crate) state: Mutex<InstanceState>,
}

impl InstanceShared {
    pub(crate) fn new(partition: i32) -> InstanceShared {
        InstanceShared {
            partition,
            processed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            position: AtomicI64::new(-1),
            state: Mutex::new(InstanceState::Starting),
        }
    }

    pub(crate) fn state(&self) -> InstanceState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_state(&self, state: InstanceState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }
}

/// Bounded log of one transform's instances.
#[derive(Debug, Default)]
pub(crate) struct LogRing {
    lines: Mutex<VecDeque<String>>,
}

impl LogRing {
    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    pub(crate) fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() >= LOG_LINES_MAX {
            lines.pop_front();
        }
        lines.push_back(line);
    }
}

/// A log sink that prefixes lines with the instance's partition.
struct PartitionLog {
    ring: Arc<LogRing>,
    partition: i32,
}

impl LogSink for PartitionLog {
    fn line(&self, level: &str, message: &str) {
        self.ring.push(format!("[p{}] {level}: {message}", self.partition));
    }
}

/// Controls an instance: pause and stop are observed between batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Run,
    Pause,
    Stop,
}

/// Everything an instance needs, moved into its task.
pub(crate) struct Instance {
    pub(crate) broker: Arc<Broker>,
    pub(crate) factory: Arc<dyn ProcessorFactory>,
    pub(crate) pool: Arc<super::pool::ComputePool>,
    pub(crate) spec: TransformSpec,
    pub(crate) module: Arc<[u8]>,
    pub(crate) shared: Arc<InstanceShared>,
    pub(crate) logs: Arc<LogRing>,
    pub(crate) control: watch::Receiver<Control>,
    /// Set by `replay`: after restoring, move the position here (state is kept).
    pub(crate) rewind: Option<super::spec::StartFrom>,
}

type Isolated = (Box<dyn Processor>, (Processed, Vec<(InRecord, Failure)>));

/// Refuses outputs addressed to an index that names no output.
fn check_outputs(processed: Processed, outputs: usize) -> Result<Processed, Failure> {
    if let Some(bad) = processed.records.iter().find(|r| r.output as usize >= outputs) {
        return Err(Failure::new(
            "output",
            format!("output index {} does not name one of the {outputs} outputs", bad.output),
        ));
    }
    Ok(processed)
}

/// An instance's processor, ready to be created on a pool thread (and again after a failure).
struct Blueprint {
    factory: Arc<dyn ProcessorFactory>,
    module: Arc<[u8]>,
    env: std::collections::BTreeMap<String, String>,
    partition: i32,
    outputs: u32,
    state: Arc<SharedState>,
    log: Arc<dyn LogSink>,
}

impl Blueprint {
    fn instantiate(&self) -> Result<Box<dyn Processor>, TransformError> {
        let setup = InstanceSetup {
            module: &self.module,
            partition: self.partition,
            outputs: self.outputs,
            env: &self.env,
            state: Arc::clone(&self.state),
            log: Arc::clone(&self.log),
        };
        self.factory.instantiate(setup).map_err(TransformError::Module)
    }
}

/// The live state of a running instance between batches.
pub(super) struct Position {
    pub(super) checkpoint: Checkpoint,
    pub(super) state: Arc<SharedState>,
}

impl Instance {
    #[tracing::instrument(name = "transform", skip(self), fields(name = %self.spec.name, partition = self.shared.partition))]
    pub(crate) async fn run(mut self) {
        let partition = self.shared.partition;
        match self.run_inner().await {
            Ok(()) => self.shared.set_state(InstanceState::Stopped),
            Err(e) => {
                tracing::error!(name = %self.spec.name, partition, error = %e, "transform instance failed");
                self.logs.push(format!("[p{partition}] error: {e}"));
                self.shared.set_state(InstanceState::Failed(e.to_string()));
            }
        }
    }

    async fn run_inner(&mut self) -> Result<(), TransformError> {
        let mut position = self.restore().await?;
        let mut processor = self.instantiate(&position.state).await?;
        let mut appends = self.broker.subscribe_appends();
        loop {
            match self.wait_while_paused().await {
                Control::Stop => return Ok(()),
                Control::Pause | Control::Run => {}
            }
            self.shared.set_state(InstanceState::Running);
            let next = position.checkpoint.next_offset;
            let input = self.read_batch(next)?;
            let Some((records, after)) = input else {
                tokio::select! {
                    _ = appends.changed() => {}
                    _ = tokio::time::sleep(IDLE_WAIT) => {}
                    _ = self.control.changed() => {}
                }
                continue;
            };
            if records.is_empty() {
                position.checkpoint.next_offset = after; // only control batches: nothing to run
                continue;
            }
            let (returned, result) = self.process(processor, records.clone()).await?;
            processor = returned;
            let outcome = match result {
                Ok(processed) => check_outputs(processed, self.spec.outputs.len()),
                Err(failure) => Err(failure),
            };
            match outcome {
                Ok(processed) => {
                    let count = records.len() as u64;
                    self.commit(&mut position, processed, after, count, 0).await?;
                }
                Err(failure) => {
                    self.logs.push(format!("[p{}] batch at offset {next} failed: {failure}", self.shared.partition));
                    // Find the records that fail on their own, so the rest of the batch still
                    // produces its outputs and only the bad ones are skipped or dead-lettered.
                    let count = records.len();
                    let stop = self.spec.on_error == OnError::Stop;
                    let (returned, isolated) = self.isolate(records, &position.state, stop).await?;
                    processor = returned;
                    let (mut processed, failures) = isolated;
                    if stop {
                        // Commit what ran before the failing record, then halt there; a resume
                        // retries from the failing record on a fresh instance.
                        if let Some((record, failure)) = failures.first() {
                            let ran = (record.offset - next).max(0) as u64;
                            self.commit(&mut position, processed, record.offset, ran, 0).await?;
                            self.shared
                                .set_state(InstanceState::Failed(format!("offset {}: {failure}", record.offset)));
                            if self.wait_for_resume().await == Control::Stop {
                                return Ok(());
                            }
                            processor = self.instantiate(&position.state).await?;
                        }
                        continue;
                    }
                    for (record, failure) in &failures {
                        self.logs.push(format!(
                            "[p{}] record at offset {} failed: {failure}",
                            self.shared.partition, record.offset
                        ));
                        if self.spec.on_error == OnError::DeadLetter {
                            processed.records.push(self.dead_letter(record, failure));
                        }
                    }
                    let succeeded = (count - failures.len()) as u64;
                    self.commit(&mut position, processed, after, succeeded, failures.len() as u64).await?;
                }
            }
        }
    }

    /// Everything needed to create this instance's processor, owned, for a pool thread.
    fn blueprint(&self, state: &Arc<SharedState>) -> Blueprint {
        Blueprint {
            factory: Arc::clone(&self.factory),
            module: Arc::clone(&self.module),
            env: self.spec.env.clone(),
            partition: self.shared.partition,
            outputs: self.spec.outputs.len() as u32,
            state: Arc::clone(state),
            log: Arc::new(PartitionLog { ring: Arc::clone(&self.logs), partition: self.shared.partition }),
        }
    }

    async fn instantiate(&self, state: &Arc<SharedState>) -> Result<Box<dyn Processor>, TransformError> {
        let blueprint = self.blueprint(state);
        self.pool.run(move || blueprint.instantiate()).await?
    }

    async fn process(
        &self,
        mut processor: Box<dyn Processor>,
        records: Vec<InRecord>,
    ) -> Result<(Box<dyn Processor>, Result<Processed, Failure>), TransformError> {
        self.pool
            .run(move || {
                let result = processor.process(&records);
                (processor, result)
            })
            .await
    }

    /// A failed record, bound for `<name>.dlq` (output index = outputs.len()) with the error
    /// and its source position in headers.
    fn dead_letter(&self, record: &InRecord, failure: &Failure) -> OutRecord {
        let mut headers = record.headers.clone();
        headers.push(("runnel.error".into(), Some(Bytes::from(failure.to_string()))));
        headers.push(("runnel.source.topic".into(), Some(Bytes::from(self.spec.input.clone()))));
        headers.push(("runnel.source.partition".into(), Some(Bytes::from(self.shared.partition.to_string()))));
        headers.push(("runnel.source.offset".into(), Some(Bytes::from(record.offset.to_string()))));
        OutRecord {
            output: self.spec.outputs.len() as u32,
            timestamp_ms: record.timestamp_ms,
            key: record.key.clone(),
            value: record.value.clone(),
            headers,
        }
    }

    /// Runs a failed batch again record by record (on a fresh instance, and a fresh one after
    /// each failure), carrying state changes forward. Returns the combined result of the
    /// records that succeed and each failing record with its failure (only the first, and
    /// nothing after it, with `stop_at_failure`).
    async fn isolate(
        &self,
        records: Vec<InRecord>,
        state: &Arc<SharedState>,
        stop_at_failure: bool,
    ) -> Result<Isolated, TransformError> {
        let blueprint = self.blueprint(state);
        let outputs = blueprint.outputs;
        let state = Arc::clone(state);
        self.pool
            .run(move || {
                let fresh = || blueprint.instantiate();
                let mut processor = fresh()?;
                let mut combined = Processed::default();
                let mut failures: Vec<(InRecord, Failure)> = Vec::new();
                let mut deadlines_in_a_row = 0;
                for record in records {
                    // A module that spins on every record would cost a full deadline per
                    // record: after a few in a row, the rest fails the same way, unrun.
                    if deadlines_in_a_row >= DEADLINES_BEFORE_GIVING_UP {
                        let failure =
                            failures.last().map_or_else(|| Failure::new("deadline", "deadline"), |(_, f)| f.clone());
                        failures.push((record, failure));
                        if stop_at_failure {
                            break;
                        }
                        continue;
                    }
                    let result = processor
                        .process(std::slice::from_ref(&record))
                        .and_then(|p| check_outputs(p, outputs as usize));
                    match result {
                        Ok(processed) => {
                            deadlines_in_a_row = 0;
                            // Later records see earlier ones' writes. Applying before the commit
                            // is safe: a failed commit fails the instance, which restarts from
                            // the changelog.
                            state.apply(&processed.state_changes);
                            combined.state_changes.extend(processed.state_changes);
                            combined.records.extend(processed.records);
                        }
                        Err(failure) => {
                            deadlines_in_a_row = if failure.kind == "deadline" { deadlines_in_a_row + 1 } else { 0 };
                            failures.push((record, failure));
                            processor = fresh()?;
                            if stop_at_failure {
                                break;
                            }
                        }
                    }
                }
                Ok((processor, (combined, failures)))
            })
            .await?
    }

    fn read_batch(&self, next: i64) -> Result<Option<(Vec<InRecord>, i64)>, TransformError> {
        let read =
            log_io::read_from(&self.broker, &self.spec.input, self.shared.partition, next, log_io::READ_BYTES_MAX)?;
        let Some(slice) = read else { return Ok(None) };
        let (records, after) = decode_input(&slice, BATCH_RECORDS_MAX)?;
        if after <= next && records.is_empty() {
            return Ok(None);
        }
        Ok(Some((records, after)))
    }

    async fn wait_while_paused(&mut self) -> Control {
        let control = *self.control.borrow_and_update();
        if control == Control::Pause {
            self.shared.set_state(InstanceState::Paused);
            return self.wait_for_resume().await;
        }
        control
    }

    /// Parks (paused, or failed under `--on-error stop`) until the next run or stop signal;
    /// a resume after a failure retries the batch.
    async fn wait_for_resume(&mut self) -> Control {
        loop {
            if self.control.changed().await.is_err() {
                return Control::Stop;
            }
            match *self.control.borrow_and_update() {
                Control::Pause => continue,
                control => return control,
            }
        }
    }
}
