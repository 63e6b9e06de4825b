//! The lifecycle of connectors and their tasks: create, reconfigure, pause, resume, restart and
//! delete, each stored in `__runnel_connect_configs` first, so a broker restart brings every
//! connector back in the state it was left (tasks resume from their stored positions).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use runnel_broker::Broker;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::config::{Common, ConfigMap, Settings};
use super::registry::{self, Stored};
use super::task::{Control, LogRing, TaskContext, TaskShared, TaskState};
use super::{sink, source, ConnectError, ConnectorClass};
use crate::transform::service::MODULE_BYTES_MAX;
use crate::transform::{ComputePool, ProcessorFactory};

/// Connectors per broker: each runs tasks and may hold connections.
pub const CONNECTORS_MAX: usize = 1000;
/// How long a stopping task may take to reach its next batch boundary before it is aborted:
/// shorter than the test harness's and a service manager's stop timeouts.
const TASK_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Connect reports which worker runs a task; here it is always this broker.
const WORKER_ID: &str = "runnel";

/// Connect's connector description (`GET /connectors/{name}`).
#[derive(Debug, Clone, Serialize)]
pub struct ConnectorInfo {
    pub name: String,
    pub config: ConfigMap,
    pub tasks: Vec<TaskId>,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskId {
    pub connector: String,
    pub task: u32,
}

/// Connect's status document (`GET /connectors/{name}/status`), with record counts added.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectorStatus {
    pub name: String,
    pub connector: StateEntry,
    pub tasks: Vec<TaskStatus>,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct StateEntry {
    pub state: TaskState,
    pub worker_id: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskStatus {
    pub id: u32,
    pub state: TaskState,
    pub worker_id: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// Records delivered, and records rejected (skipped or dead-lettered).
    pub records: u64,
    pub failed: u64,
}

struct TaskSlot {
    shared: Arc<TaskShared>,
    control: watch::Sender<Control>,
    handle: Option<JoinHandle<()>>,
}

struct Running {
    common: Common,
    config: ConfigMap,
    module: Option<Bytes>,
    paused: bool,
    logs: Arc<LogRing>,
    tasks: Vec<TaskSlot>,
}

pub struct ConnectService {
    broker: Arc<Broker>,
    factory: Arc<dyn ProcessorFactory>,
    pool: Arc<ComputePool>,
    connectors: Mutex<BTreeMap<String, Running>>,
    /// One administrative change at a time (they wait for tasks to stop).
    admin: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ConnectService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectService").finish_non_exhaustive()
    }
}

impl ConnectService {
    /// Replays the stored connectors and starts them. Call inside a tokio runtime.
    pub fn start(
        broker: Arc<Broker>,
        factory: Arc<dyn ProcessorFactory>,
        pool: Arc<ComputePool>,
    ) -> Result<Arc<ConnectService>, ConnectError> {
        let replayed = registry::replay(&broker)?;
        source::ensure_offsets_topic(&broker)?;
        let service = Arc::new(ConnectService {
            broker,
            factory,
            pool,
            connectors: Mutex::new(BTreeMap::new()),
            admin: tokio::sync::Mutex::new(()),
        });
        for (name, stored) in replayed.connectors {
            let module = replayed.modules.get(&name).cloned();
            match Common::parse(&name, &stored.config) {
                Ok(common) => service.launch(common, stored.config, module, stored.paused),
                Err(e) => tracing::error!(%name, error = %e, "stored connector config is no longer valid; not started"),
            }
        }
        Ok(service)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Running>> {
        self.connectors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a connector; refused if one of that name exists.
    pub async fn create(&self, name: &str, config: ConfigMap) -> Result<ConnectorInfo, ConnectError> {
        let _admin = self.admin.lock().await;
        if self.lock().contains_key(name) {
            return Err(ConnectError::Exists(name.to_string()));
        }
        self.store_and_launch(name, config, false).await?;
        self.info(name)
    }

    /// Creates or reconfigures a connector (`PUT /connectors/{name}/config`); true if created.
    pub async fn put_config(&self, name: &str, config: ConfigMap) -> Result<(ConnectorInfo, bool), ConnectError> {
        let _admin = self.admin.lock().await;
        let paused = self.lock().get(name).map(|r| r.paused);
        let (common, module) = self.check(name, &config).await?;
        if paused.is_some() {
            self.stop(name).await;
        }
        registry::put(
            &self.broker,
            name,
            &Stored { config: config.clone(), paused: paused.unwrap_or(false) },
            Some(module.as_ref()),
        )?;
        self.launch(common, config, module, paused.unwrap_or(false));
        Ok((self.info(name)?, paused.is_none()))
    }

    async fn store_and_launch(&self, name: &str, config: ConfigMap, paused: bool) -> Result<(), ConnectError> {
        if self.lock().len() >= CONNECTORS_MAX {
            return Err(ConnectError::InvalidConfig(format!("this broker runs at most {CONNECTORS_MAX} connectors")));
        }
        let (common, module) = self.check(name, &config).await?;
        registry::put(&self.broker, name, &Stored { config: config.clone(), paused }, Some(module.as_ref()))?;
        self.launch(common, config, module, paused);
        Ok(())
    }

    /// Validates a config and loads its module; nothing is stored or started.
    async fn check(&self, name: &str, config: &ConfigMap) -> Result<(Common, Option<Bytes>), ConnectError> {
        let common = Common::parse(name, config)?;
        let settings = Settings(config);
        match common.class {
            ConnectorClass::PostgresSink => sink::postgres::PostgresSink::validate(settings)?,
            ConnectorClass::FileSink => sink::file::FileSink::validate(settings)?,
            source_class => source::validate(source_class, settings)?,
        }
        for topic in &common.topics {
            if self.broker.topic(topic).is_none() {
                return Err(ConnectError::InvalidConfig(format!("topic {topic:?} does not exist")));
            }
        }
        let module = match &common.wasm_module {
            None => None,
            Some(path) => Some(self.load_module(path).await?),
        };
        Ok((common, module))
    }

    async fn load_module(&self, path: &str) -> Result<Bytes, ConnectError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| ConnectError::InvalidConfig(format!("wasm.module {path:?}: {e}")))?;
        if bytes.len() > MODULE_BYTES_MAX {
            return Err(ConnectError::InvalidConfig(format!("wasm.module is larger than {MODULE_BYTES_MAX} bytes")));
        }
        let bytes = Bytes::from(bytes);
        let factory = Arc::clone(&self.factory);
        let checked = bytes.clone();
        self.pool.run(move || factory.validate(&checked)).await?.map_err(ConnectError::Module)?;
        Ok(bytes)
    }

    fn launch(&self, common: Common, config: ConfigMap, module: Option<Bytes>, paused: bool) {
        let name = common.name.clone();
        let mut running =
            Running { common, config, module, paused, logs: Arc::new(LogRing::default()), tasks: Vec::new() };
        for task_id in 0..running.common.tasks() {
            let slot = self.spawn_task(&running, task_id);
            running.tasks.push(slot);
        }
        tracing::info!(%name, class = running.common.class.name(), tasks = running.tasks.len(), paused, "connector started");
        self.lock().insert(name, running);
    }

    fn spawn_task(&self, running: &Running, task_id: u32) -> TaskSlot {
        let initial = if running.paused { Control::Pause } else { Control::Run };
        let (control, receiver) = watch::channel(initial);
        let shared = Arc::new(TaskShared::new(task_id));
        let ctx = TaskContext {
            broker: Arc::clone(&self.broker),
            common: running.common.clone(),
            config: running.config.clone(),
            task_id,
            tasks: running.common.tasks(),
            shared: Arc::clone(&shared),
            logs: Arc::clone(&running.logs),
            control: receiver,
            factory: Arc::clone(&self.factory),
            pool: Arc::clone(&self.pool),
            module: running.module.clone(),
        };
        TaskSlot { shared, control, handle: Some(tokio::spawn(run_task(ctx))) }
    }

    /// Stops every task of a connector and forgets it.
    async fn stop(&self, name: &str) -> Option<Running> {
        let mut running = self.lock().remove(name)?;
        for slot in &running.tasks {
            let _ = slot.control.send(Control::Stop);
        }
        for slot in &mut running.tasks {
            if let Some(handle) = slot.handle.take() {
                join_or_abort(handle, name).await;
            }
        }
        Some(running)
    }

    pub async fn delete(&self, name: &str) -> Result<(), ConnectError> {
        let _admin = self.admin.lock().await;
        self.stop(name).await.ok_or_else(|| ConnectError::NotFound(name.to_string()))?;
        registry::remove(&self.broker, name)
    }

    /// Pauses or resumes every task; stored, so it survives a restart.
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<(), ConnectError> {
        let _admin = self.admin.lock().await;
        let config = {
            let mut connectors = self.lock();
            let running = connectors.get_mut(name).ok_or_else(|| ConnectError::NotFound(name.to_string()))?;
            running.paused = paused;
            for slot in &running.tasks {
                let _ = slot.control.send(if paused { Control::Pause } else { Control::Run });
            }
            running.config.clone()
        };
        registry::put(&self.broker, name, &Stored { config, paused }, None)
    }

    /// Restarts the connector's tasks (only the failed ones with `only_failed`).
    pub async fn restart(&self, name: &str, only_failed: bool) -> Result<ConnectorStatus, ConnectError> {
        let ids: Vec<u32> = {
            let connectors = self.lock();
            let running = connectors.get(name).ok_or_else(|| ConnectError::NotFound(name.to_string()))?;
            running
                .tasks
                .iter()
                .filter(|s| !only_failed || s.shared.state().0 == TaskState::Failed)
                .map(|s| s.shared.id)
                .collect()
        };
        for id in ids {
            self.restart_task(name, id).await?;
        }
        self.status(name)
    }

    /// Stops one task at its next batch boundary and starts it again from its stored position.
    pub async fn restart_task(&self, name: &str, task_id: u32) -> Result<(), ConnectError> {
        let _admin = self.admin.lock().await;
        let handle = {
            let mut connectors = self.lock();
            let running = connectors.get_mut(name).ok_or_else(|| ConnectError::NotFound(name.to_string()))?;
            let slot = running
                .tasks
                .get_mut(task_id as usize)
                .ok_or_else(|| ConnectError::NotFound(format!("{name} task {task_id}")))?;
            let _ = slot.control.send(Control::Stop);
            slot.handle.take()
        };
        if let Some(handle) = handle {
            join_or_abort(handle, name).await;
        }
        let mut connectors = self.lock();
        let running = connectors.get_mut(name).ok_or_else(|| ConnectError::NotFound(name.to_string()))?;
        let slot = self.spawn_task(running, task_id);
        running.tasks[task_id as usize] = slot;
        Ok(())
    }

    pub fn list(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    pub fn info(&self, name: &str) -> Result<ConnectorInfo, ConnectError> {
        let connectors = self.lock();
        let running = connectors.get(name).ok_or_else(|| ConnectError::NotFound(name.to_string()))?;
        Ok(ConnectorInfo {
            name: name.to_string(),
            config: running.config.clone(),
            tasks: running.tasks.iter().map(|s| TaskId { connector: name.to_string(), task: s.shared.id }).collect(),
            kind: running.common.class.kind(),
        })
    }

    pub fn config(&self, name: &str) -> Result<ConfigMap, ConnectError> {
        self.info(name).map(|info| info.config)
    }

    pub fn logs(&self, name: &str) -> Result<Vec<String>, ConnectError> {
        let connectors = self.lock();
        let running = connectors.get(name).ok_or_else(|| ConnectError::NotFound(name.to_string()))?;
        Ok(running.logs.lines())
    }

    pub fn status(&self, name: &str) -> Result<ConnectorStatus, ConnectError> {
        let connectors = self.lock();
        let running = connectors.get(name).ok_or_else(|| ConnectError::NotFound(name.to_string()))?;
        let tasks: Vec<TaskStatus> = running
            .tasks
            .iter()
            .map(|slot| {
                let (state, trace) = slot.shared.state();
                TaskStatus {
                    id: slot.shared.id,
                    state,
                    worker_id: WORKER_ID,
                    trace,
                    records: slot.shared.records.load(Ordering::Relaxed),
                    failed: slot.shared.failed.load(Ordering::Relaxed),
                }
            })
            .collect();
        // The connector is FAILED when every task failed, PAUSED when asked, else RUNNING.
        let all_failed = !tasks.is_empty() && tasks.iter().all(|t| t.state == TaskState::Failed);
        let state = if all_failed {
            TaskState::Failed
        } else if running.paused {
            TaskState::Paused
        } else {
            TaskState::Running
        };
        let trace = if all_failed { tasks.first().and_then(|t| t.trace.clone()) } else { None };
        Ok(ConnectorStatus {
            name: name.to_string(),
            connector: StateEntry { state, worker_id: WORKER_ID, trace },
            tasks,
            kind: running.common.class.kind(),
        })
    }

    /// Stops every task (broker shutdown); their positions are already stored.
    pub async fn shutdown(&self) {
        let _admin = self.admin.lock().await;
        let names = self.list();
        for name in names {
            self.stop(&name).await;
        }
    }
}

/// Waits for a stopping task; one that does not stop in time (a database that stopped
/// answering) is aborted. That is safe: an unfinished PostgreSQL transaction is rolled back with
/// its connection, a file sink cuts its file back to the committed length at its next start,
/// and a source's checkpoint is written before its batches.
async fn join_or_abort(mut handle: JoinHandle<()>, name: &str) {
    if tokio::time::timeout(TASK_STOP_WAIT, &mut handle).await.is_err() {
        tracing::warn!(connector = %name, "a task did not stop in {TASK_STOP_WAIT:?}; aborting it");
        handle.abort();
        let _ = handle.await;
    }
}

#[tracing::instrument(name = "connector_task", skip(ctx), fields(connector = %ctx.common.name, task = ctx.task_id))]
async fn run_task(mut ctx: TaskContext) {
    let result = if ctx.common.class.is_sink() { sink::run(&mut ctx).await } else { source::run(&mut ctx).await };
    match result {
        Ok(()) => ctx.shared.set(TaskState::Unassigned, None),
        Err(e) => {
            tracing::error!(connector = %ctx.common.name, task = ctx.task_id, error = %e, "connector task failed");
            ctx.log(format!("failed: {e}"));
            ctx.shared.set(TaskState::Failed, Some(e.to_string()));
        }
    }
}
