//! The threads that run user code. Transforms are CPU-bound and untrusted: they run on a fixed
//! number of threads at a lower scheduling priority, so a module that spins until its
//! deadline takes spare CPU, not the broker's — the Kafka listener, fetches and fsyncs keep
//! their cores and their latency.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::TransformError;

type Job = Box<dyn FnOnce() + Send>;

/// Jobs queued beyond the running ones; instances wait (asynchronously) for a slot.
const QUEUED_JOBS_MAX: usize = 64;
/// `nice` of the pool's threads: below every broker thread (0), above idle work.
const POOL_NICE: i32 = 19;

#[derive(Debug)]
pub struct ComputePool {
    jobs: mpsc::Sender<Job>,
    threads: usize,
}

impl ComputePool {
    /// Starts `threads` worker threads (at least one).
    pub fn new(threads: usize) -> Arc<ComputePool> {
        let threads = threads.max(1);
        let (jobs, receiver) = mpsc::channel::<Job>(QUEUED_JOBS_MAX);
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads {
            let receiver = Arc::clone(&receiver);
            let spawned = std::thread::Builder::new().name(format!("runnel-wasm-{index}")).spawn(move || {
                lower_priority();
                loop {
                    // One idle thread waits in `recv` at a time; the others wait for the lock.
                    let job = receiver.lock().unwrap_or_else(|p| p.into_inner()).blocking_recv();
                    let Some(job) = job else { return };
                    // A panicking job must not take the thread (and the pool's capacity) with it.
                    if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
                        tracing::error!("a transform job panicked; its caller gets an error");
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a transform thread");
            }
        }
        Arc::new(ComputePool { jobs, threads })
    }

    /// The default size: every core but one (at least one), so the broker always keeps a core
    /// to itself — measured with `runnel bench transform`, modules spinning on every core
    /// stretched produce p99 tens of times even at the lowest priority. More threads
    /// (`runnel serve --transform-threads`) let more transforms run at once.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `work` on the pool and waits for its result.
    pub async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, TransformError> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        self.jobs.send(job).await.map_err(|_| TransformError::Internal("the transform pool has stopped".into()))?;
        result.await.map_err(|_| TransformError::Internal("a transform job panicked".into()))
    }
}

/// Lowers the calling thread's priority (Linux applies `nice` per thread). Best effort: a
/// failure leaves the thread at normal priority, which is only slower to yield.
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: setpriority only reads its integer arguments; who = 0 names the calling thread.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, POOL_NICE) };
    if result != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower the transform threads' priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_and_a_panic_is_an_error_not_a_lost_thread() {
        let pool = ComputePool::new(1);
        assert_eq!(pool.run(|| 2 + 2).await.ok(), Some(4));
        let panicked = pool.run(|| -> u32 { panic!("boom") }).await;
        assert!(panicked.is_err());
        // The single thread survived the panic.
        assert_eq!(pool.run(|| "still here").await.ok(), Some("still here"));
    }
}
