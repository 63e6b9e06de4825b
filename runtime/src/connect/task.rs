//! What a running task shares with the service and the API: its state, counters and controls,
//! and the context every task is started with.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use runnel_broker::Broker;
use serde::Serialize;
use tokio::sync::watch;

use super::config::{Common, ConfigMap};
use crate::transform::{ComputePool, ProcessorFactory};

/// Log lines kept per connector (shown in task traces and `GET /connectors/{name}/status`).
const LOG_LINES_MAX: usize = 200;
/// The longest single wait between retries, whatever `retry.backoff.ms` and the attempt say.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Connect's task states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    Unassigned,
    Running,
    Paused,
    Failed,
}

/// Controls a task: pause and stop are observed between batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Run,
    Pause,
    Stop,
}

/// One task as the service and the API see it.
#[derive(Debug)]
pub(crate) struct TaskShared {
    pub(crate) id: u32,
    pub(crate) records: AtomicU64,
    pub(crate) failed: AtomicU64,
    state: Mutex<(TaskState, Option<String>)>,
}

impl TaskShared {
    pub(crate) fn new(id: u32) -> TaskShared {
        TaskShared {
            id,
            records: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            state: Mutex::new((TaskState::Unassigned, None)),
        }
    }

    pub(crate) fn state(&self) -> (TaskState, Option<String>) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set(&self, state: TaskState, error: Option<String>) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (state, error);
    }

    pub(crate) fn add(&self, records: u64, failed: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.failed.fetch_add(failed, Ordering::Relaxed);
    }
}

/// A connector's recent log lines (errors, retries, skipped records).
#[derive(Debug, Default)]
pub(crate) struct LogRing {
    lines: Mutex<VecDeque<String>>,
}

impl LogRing {
    pub(crate) fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() >= LOG_LINES_MAX {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

impl crate::transform::LogSink for LogRing {
    fn line(&self, level: &str, message: &str) {
        self.push(format!("module {level}: {message}"));
    }
}

/// Everything a task is started with.
#[derive(Clone)]
pub(crate) struct TaskContext {
    pub(crate) broker: Arc<Broker>,
    pub(crate) common: Common,
    pub(crate) config: ConfigMap,
    pub(crate) task_id: u32,
    pub(crate) tasks: u32,
    pub(crate) shared: Arc<TaskShared>,
    pub(crate) logs: Arc<LogRing>,
    pub(crate) control: watch::Receiver<Control>,
    pub(crate) factory: Arc<dyn ProcessorFactory>,
    pub(crate) pool: Arc<ComputePool>,
    pub(crate) module: Option<Bytes>,
}

impl TaskContext {
    pub(crate) fn log(&self, line: impl std::fmt::Display) {
        self.logs.push(format!("[task {}] {line}", self.task_id));
    }

    /// Waits while paused (state PAUSED); returns `Stop` when the task must end.
    pub(crate) async fn checkpoint_control(&mut self) -> Control {
        loop {
            let control = *self.control.borrow_and_update();
            match control {
                Control::Run => {
                    if self.shared.state().0 != TaskState::Running {
                        self.shared.set(TaskState::Running, None);
                    }
                    return Control::Run;
                }
                Control::Stop => return Control::Stop,
                Control::Pause => {
                    self.shared.set(TaskState::Paused, None);
                    if self.control.changed().await.is_err() {
                        return Control::Stop;
                    }
                }
            }
        }
    }

    /// Sleeps for `duration` unless a control change (pause, stop) comes first.
    pub(crate) async fn sleep(&mut self, duration: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = self.control.changed() => {}
        }
    }

    pub(crate) fn stopping(&self) -> bool {
        *self.control.borrow() == Control::Stop
    }

    /// The wait before retry `attempt` (1-based): `retry.backoff.ms` doubled per attempt, capped.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let base = Duration::from_millis(self.common.retry_backoff_ms.max(1));
        base.saturating_mul(1 << attempt.saturating_sub(1).min(10)).min(BACKOFF_MAX)
    }
}
