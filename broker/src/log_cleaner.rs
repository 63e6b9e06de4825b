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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use kafka_protocol::records::Compression;

    use crate::config::BrokerConfig;
    use crate::metadata::MetadataCommand;
    use crate::storage::record_codec::tests::client_batch;
    use crate::storage::{Clock, ManualClock};
    use crate::Broker;

    fn create(broker: &Broker, name: &str, configs: &[(&str, &str)]) {
        let configs: BTreeMap<String, String> = configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let command = MetadataCommand::CreateTopic {
            name: name.to_string(),
            topic_id: uuid::Uuid::new_v4().to_string(),
            partitions: 1,
            configs,
        };
        broker.propose(command).expect("topic created");
    }

    fn fill(broker: &Broker, topic: &str, now_ms: i64) {
        let partition = broker.partition(topic, 0).expect("partition");
        for i in 0..300 {
            // Key "gone" is written once, then deleted; the rest are updates of ten keys.
            let key = if i == 100 || i == 150 { "gone".to_string() } else { format!("k{}", i % 10) };
            let value = format!("value-{i}-{}", "x".repeat(40));
            let records = [(Some(key.as_bytes()), (i != 150).then_some(value.as_bytes()))];
            partition.log().append(&client_batch(&records, now_ms, Compression::Snappy)).expect("append");
        }
    }

    #[test]
    fn the_broker_cleans_compacted_topics_only_and_expires_tombstones_on_its_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..Default::default() };
        config.set("log.cleaner.threads", "2").expect("valid");
        let clock = Arc::new(ManualClock::new(1_000_000));
        let broker = Broker::open_with_clock(config, Arc::clone(&clock) as Arc<dyn Clock>).expect("opens");
        let compact = [("cleanup.policy", "compact"), ("segment.bytes", "2048"), ("delete.retention.ms", "1000")];
        create(&broker, "compacted", &compact);
        create(&broker, "damaged", &compact);
        create(&broker, "plain", &[("segment.bytes", "2048")]);
        for topic in ["compacted", "damaged", "plain"] {
            fill(&broker, topic, clock.now_ms());
        }
        // Damage the first segment of one compacted partition: its passes fail, the others go on.
        let damaged = broker.partition("damaged", 0).expect("partition").log().dir().join(format!("{:020}.log", 0));
        let mut bytes = std::fs::read(&damaged).expect("segment");
        bytes[70] ^= 0xFF;
        std::fs::write(&damaged, bytes).expect("damage");
        let plain_before = broker.partition("plain", 0).expect("partition").log().size_bytes();
        let compacted_before = broker.partition("compacted", 0).expect("partition").log().size_bytes();

        assert!(broker.clean_logs() > 0);
        let metrics = &broker.metrics.cleaner;
        assert!(metrics.errors.get() >= 1, "the damaged partition's pass failed");
        assert!(metrics.records_removed.get() > 250, "removed {}", metrics.records_removed.get());
        assert_eq!(metrics.tombstones_removed.get(), 0, "tombstones wait for their horizon");
        assert_eq!(broker.partition("plain", 0).expect("partition").log().size_bytes(), plain_before);
        assert!(broker.partition("compacted", 0).expect("partition").log().size_bytes() < compacted_before / 3);

        clock.advance(1_001);
        broker.clean_logs();
        assert_eq!(metrics.tombstones_removed.get(), 1, "the tombstone of \"gone\" goes after delete.retention.ms");
        let errors = metrics.errors.get();
        assert_eq!(broker.clean_logs(), 1, "only the damaged partition is due: retried once per call, not in a loop");
        assert_eq!(metrics.errors.get(), errors + 1);
    }
}
