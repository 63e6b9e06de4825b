//! Schedules the log cleaner (`storage/cleaner.rs`) over the broker's partitions: the
//! dirtiest compacted partitions first, up to `log.cleaner.threads` at a time, each thread
//! with its share of `log.cleaner.dedupe.buffer.size`.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::broker::Partition;
use crate::storage::cleaner::{cleaning_priority, CleanStats, Cleaner, CleanerError, PartitionCleanState};
use crate::Broker;

/// Passes per call of [`Broker::clean_logs`]: the cleaner task calls again after
/// `log.cleaner.backoff.ms`, so one call never runs unbounded.
const PASSES_PER_ROUND_MAX: usize = 10_000;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Broker {
    /// Cleans compacted partitions until none needs it or shutdown begins; a partition whose
    /// pass fails is skipped until the next call. Blocking: run it off the async runtime. Returns the passes run.
    pub fn clean_logs(&self) -> usize {
        let threads = self.config.cleaner.threads.max(1);
        let budget_bytes = self.config.cleaner.dedupe_buffer_bytes / threads;
        let mut cleaners: Vec<Cleaner> = (0..threads).map(|_| Cleaner::new(budget_bytes)).collect();
        let mut passes = 0;
        // Partitions whose pass failed sit out the rest of this call, so one damaged partition
        // cannot starve the others; they are retried on the next call.
        let mut failed: Vec<Arc<Partition>> = Vec::new();
        while passes < PASSES_PER_ROUND_MAX && !self.is_stopping() {
            let now_ms = self.now_ms();
            let mut due = self.partitions_due(now_ms);
            due.retain(|p| !failed.iter().any(|f| Arc::ptr_eq(f, p)));
            due.truncate(threads);
            if due.is_empty() {
                break;
            }
            let outcomes: Vec<bool> = if let ([partition], [cleaner, ..]) = (due.as_slice(), cleaners.as_mut_slice()) {
                vec![self.clean_partition(partition, cleaner, now_ms)]
            } else {
                std::thread::scope(|scope| {
                    let handles: Vec<_> = due
                        .iter()
                        .zip(cleaners.iter_mut())
                        .map(|(partition, cleaner)| {
                            scope.spawn(move || self.clean_partition(partition, cleaner, now_ms))
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap_or(false)).collect()
                })
            };
            passes += due.len();
            for (partition, ok) in due.into_iter().zip(outcomes) {
                if !ok {
                    failed.push(partition);
                }
            }
        }
        passes
    }

    /// Compacted partitions that need a pass, dirtiest first.
    fn partitions_due(&self, now_ms: i64) -> Vec<Arc<Partition>> {
        let mut due: Vec<(f64, Arc<Partition>)> = Vec::new();
        for partition in self.all_partitions() {
            let priority = {
                // Lock order everywhere: the clean state, then the log.
                let mut state = lock(&partition.clean_state);
                let log = partition.log();
                if !log.config().compaction.enabled {
                    continue;
                }
                let state = state.get_or_insert_with(|| PartitionCleanState::load(log.dir()));
                cleaning_priority(&log, state, now_ms)
            };
            if let Some(priority) = priority {
                due.push((priority, partition));
            }
        }
        due.sort_by(|a, b| b.0.total_cmp(&a.0));
        due.into_iter().map(|(_, partition)| partition).collect()
    }

    /// One pass over one partition; false if it failed.
    fn clean_partition(&self, partition: &Arc<Partition>, cleaner: &mut Cleaner, now_ms: i64) -> bool {
        let span = tracing::info_span!("cleaner", topic = %partition.topic, partition = partition.index);
        let _entered = span.enter();
        let mut state = {
            let mut slot = lock(&partition.clean_state);
            slot.get_or_insert_with(|| PartitionCleanState::load(partition.log().dir())).clone()
        };
        let result = cleaner.clean(&|| partition.log(), &mut state, now_ms, &|| self.is_stopping());
        match result {
            Ok(stats) => {
                *lock(&partition.clean_state) = Some(state);
                self.record_clean(&stats);
                true
            }
            Err(CleanerError::Stopped) => false,
            Err(e) => {
                self.metrics.cleaner.errors.inc();
                tracing::error!(error = %e, "log cleaner pass failed; retrying after log.cleaner.backoff.ms");
                false
            }
        }
    }

    fn record_clean(&self, stats: &CleanStats) {
        let metrics = &self.metrics.cleaner;
        metrics.passes.inc();
        metrics.bytes_read.inc_by(stats.map_bytes_read + stats.bytes_read);
        metrics.bytes_written.inc_by(stats.bytes_written);
        metrics.segments_rewritten.inc_by(stats.segments_rewritten);
        metrics.records_removed.inc_by(stats.records_removed);
        metrics.tombstones_removed.inc_by(stats.tombstones_removed);
    }
}
