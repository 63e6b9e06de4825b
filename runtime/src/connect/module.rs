//! An optional WASM module between a connector and its topics, through the transform seam
//! (`ProcessorFactory`/`Processor`, ABI v1 unchanged): a sink module maps each record to a row
//! (value = the JSON row, key = the primary key, null value = delete); a source module parses
//! raw input (a line, an HTTP body, a row) into the records written. Modules run on the
//! transform pool, one call per batch; a failing batch is run again record by record so only
//! the records that fail on their own are rejected.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use super::task::{LogRing, TaskContext};
use super::ConnectError;
use crate::transform::{
    ComputePool, Failure, InRecord, InstanceSetup, LogSink, OutRecord, Processor, ProcessorFactory, SharedState,
};

/// What a batch became: outputs and failures, each with the index of its input record.
#[derive(Debug, Default)]
pub(crate) struct Mapped {
    pub(crate) outputs: Vec<(usize, OutRecord)>,
    pub(crate) failures: Vec<(usize, Failure)>,
}

/// Everything needed to create the processor on a pool thread (and again after a failure).
#[derive(Clone)]
struct Blueprint {
    factory: Arc<dyn ProcessorFactory>,
    module: Bytes,
    env: BTreeMap<String, String>,
    task_id: u32,
    log: Arc<LogRing>,
}

impl Blueprint {
    fn instantiate(&self) -> Result<Box<dyn Processor>, Failure> {
        let log: Arc<dyn LogSink> = Arc::clone(&self.log) as Arc<dyn LogSink>;
        let setup = InstanceSetup {
            module: &self.module,
            partition: self.task_id as i32,
            outputs: 1,
            env: &self.env,
            // Connectors keep no module state: the connector's position is their state.
            state: SharedState::new(Default::default()),
            log,
        };
        self.factory.instantiate(setup)
    }
}

pub(crate) struct Module {
    blueprint: Blueprint,
    pool: Arc<ComputePool>,
    processor: Option<Box<dyn Processor>>,
}

impl Module {
    /// The task's module, if its connector has one.
    pub(crate) async fn for_task(ctx: &TaskContext) -> Result<Option<Module>, ConnectError> {
        let Some(module) = ctx.module.clone() else { return Ok(None) };
        let blueprint = Blueprint {
            factory: Arc::clone(&ctx.factory),
            module,
            env: ctx.common.wasm_env.clone(),
            task_id: ctx.task_id,
            log: Arc::clone(&ctx.logs),
        };
        let made = blueprint.clone();
        let processor = ctx.pool.run(move || made.instantiate()).await?.map_err(ConnectError::Module)?;
        Ok(Some(Module { blueprint, pool: Arc::clone(&ctx.pool), processor: Some(processor) }))
    }

    /// Runs `records` through the module.
    pub(crate) async fn map(&mut self, records: Vec<InRecord>) -> Result<Mapped, ConnectError> {
        let processor = match self.processor.take() {
            Some(p) => p,
            None => {
                let blueprint = self.blueprint.clone();
                self.pool.run(move || blueprint.instantiate()).await?.map_err(ConnectError::Module)?
            }
        };
        let blueprint = self.blueprint.clone();
        let (processor, mapped) = self.pool.run(move || run_batch(processor, &blueprint, records)).await?;
        self.processor = processor;
        Ok(mapped)
    }
}

/// One call for the batch; on failure, one call per record on fresh instances.
fn run_batch(
    mut processor: Box<dyn Processor>,
    blueprint: &Blueprint,
    records: Vec<InRecord>,
) -> (Option<Box<dyn Processor>>, Mapped) {
    let whole = processor.process(&records).and_then(|p| only_output_zero(p.records));
    if let Ok(outputs) = whole {
        let count = records.len();
        let outputs = if outputs.len() == count {
            outputs.into_iter().enumerate().collect()
        } else {
            // Not one output per input: the batch's last record stands for all of them.
            outputs.into_iter().map(|o| (count.saturating_sub(1), o)).collect()
        };
        return (Some(processor), Mapped { outputs, failures: Vec::new() });
    }
    let mut mapped = Mapped::default();
    let mut current = Some(processor);
    for (index, record) in records.into_iter().enumerate() {
        let mut processor = match current.take() {
            Some(p) => p,
            None => match blueprint.instantiate() {
                Ok(p) => p,
                Err(failure) => {
                    mapped.failures.push((index, failure));
                    continue;
                }
            },
        };
        match processor.process(std::slice::from_ref(&record)).and_then(|p| only_output_zero(p.records)) {
            Ok(outputs) => {
                mapped.outputs.extend(outputs.into_iter().map(|o| (index, o)));
                current = Some(processor);
            }
            // A trapped instance may be left in any state: the next record gets a fresh one.
            Err(failure) => mapped.failures.push((index, failure)),
        }
    }
    (current, mapped)
}

/// A connector module has one output (index 0).
fn only_output_zero(records: Vec<OutRecord>) -> Result<Vec<OutRecord>, Failure> {
    if let Some(bad) = records.iter().find(|r| r.output != 0) {
        return Err(Failure::new(
            "output",
            format!("output index {} (a connector module has one output, 0)", bad.output),
        ));
    }
    Ok(records)
}
