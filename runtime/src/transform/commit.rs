//! Restoring an instance from its changelog and committing a processed batch.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use runnel_broker::partitioner::partition_for_key;

use super::checkpoint::{encode_commit, Checkpoint, PendingOutput, Restored};
use super::log_io;
use super::processor::{Processed, SharedState};
use super::records::{encode_batch, Outgoing};
use super::runner::{Instance, Position};
use super::spec::StartFrom;
use super::TransformError;

/// Retries of an append that fails (e.g. disk full) before the instance stops with the error.
const APPEND_ATTEMPTS: u32 = 5;
const APPEND_BACKOFF: Duration = Duration::from_millis(200);

impl Instance {
    /// Rebuilds state and position from the changelog, then finishes the last commit's
    /// output appends (duplicates of what had landed are recognised and skipped).
    pub(super) async fn restore(&self) -> Result<Position, TransformError> {
        let broker = std::sync::Arc::clone(&self.broker);
        let topic = self.spec.changelog_topic();
        let partition = self.shared.partition;
        let restored = tokio::task::spawn_blocking(move || {
            let mut restored = Restored::default();
            log_io::scan(&broker, &topic, partition, |record| {
                restored.apply(record.key.as_deref(), record.value.as_ref())
            })?;
            Ok::<_, TransformError>(restored)
        })
        .await
        .map_err(|e| TransformError::Internal(e.to_string()))??;
        let state = SharedState::new(restored.state);
        let checkpoint = match restored.checkpoint {
            Some(mut checkpoint) => {
                for pending in &checkpoint.pending {
                    self.append_with_retry(pending).await?;
                }
                if let Some(from) = self.rewind {
                    // Replay: same state, sequences and producer; only the position moves.
                    checkpoint.next_offset = self.resolve(from)?;
                    checkpoint.pending.clear();
                    self.append_commit(&[], &checkpoint).await?;
                    tracing::info!(name = %self.spec.name, partition, offset = checkpoint.next_offset, "transform instance rewound");
                }
                tracing::info!(name = %self.spec.name, partition, offset = checkpoint.next_offset, keys = state.len(), "transform instance restored");
                checkpoint
            }
            None => {
                let checkpoint = Checkpoint {
                    next_offset: self.resolve(self.rewind.unwrap_or(self.spec.from))?,
                    producer_id: self
                        .broker
                        .allocate_producer_id()
                        .map_err(|e| TransformError::Storage(e.to_string()))?,
                    ..Checkpoint::default()
                };
                // Pin the start position, so a restart before the first batch does not
                // re-resolve `latest` or a timestamp to somewhere else.
                self.append_commit(&[], &checkpoint).await?;
                checkpoint
            }
        };
        self.publish(&checkpoint);
        Ok(Position { checkpoint, state })
    }

    /// The input offset a start position names today.
    fn resolve(&self, from: StartFrom) -> Result<i64, TransformError> {
        let handle = self.broker.partition(&self.spec.input, self.shared.partition).ok_or_else(|| {
            TransformError::UnknownPartition { topic: self.spec.input.clone(), partition: self.shared.partition }
        })?;
        let mut log = handle.log();
        let (start, end) = (log.log_start_offset(), log.high_watermark());
        Ok(match from {
            StartFrom::Earliest => start,
            StartFrom::Latest => end,
            StartFrom::Offset(offset) => offset.clamp(start, end),
            StartFrom::Timestamp(ms) => match log.offset_for_timestamp(ms) {
                Ok(Some((offset, _))) => offset,
                Ok(None) => end,
                Err(e) => return Err(TransformError::Storage(e.to_string())),
            },
        })
    }

    /// Commits one batch: the changelog batch (state changes + checkpoint with the encoded
    /// outputs) first, then the outputs themselves.
    pub(super) async fn commit(
        &self,
        position: &mut Position,
        processed: Processed,
        next_offset: i64,
        processed_count: u64,
        failed_count: u64,
    ) -> Result<(), TransformError> {
        let mut checkpoint = position.checkpoint.clone();
        checkpoint.pending = self.encode_outputs(&mut checkpoint, processed.records)?;
        checkpoint.next_offset = next_offset;
        checkpoint.processed += processed_count;
        checkpoint.failed += failed_count;
        self.append_commit(&processed.state_changes, &checkpoint).await?;
        #[cfg(test)]
        if super::tests::CRASH_AFTER_CHANGELOG.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(TransformError::Internal("injected crash after the changelog commit".into()));
        }
        for pending in &checkpoint.pending {
            self.append_with_retry(pending).await?;
        }
        position.state.apply(&processed.state_changes);
        self.broker.notify_appended();
        self.publish(&checkpoint);
        position.checkpoint = checkpoint;
        Ok(())
    }

    fn publish(&self, checkpoint: &Checkpoint) {
        self.shared.position.store(checkpoint.next_offset, Ordering::Relaxed);
        self.shared.processed.store(checkpoint.processed, Ordering::Relaxed);
        self.shared.failed.store(checkpoint.failed, Ordering::Relaxed);
    }

    /// Groups outputs by destination partition (Kafka's key hash; keyless records follow the
    /// input partition, so replays place them identically) and encodes one idempotent batch
    /// per partition, advancing that partition's sequence.
    fn encode_outputs(
        &self,
        checkpoint: &mut Checkpoint,
        records: Vec<super::processor::OutRecord>,
    ) -> Result<Vec<PendingOutput>, TransformError> {
        let mut grouped: BTreeMap<(String, i32), Vec<Outgoing>> = BTreeMap::new();
        for record in records {
            let topic = match self.spec.outputs.get(record.output as usize) {
                Some(topic) => topic.clone(),
                None => self.spec.dead_letter_topic(),
            };
            let partitions = self.broker.topic(&topic).map(|t| t.partitions).unwrap_or(0);
            if partitions <= 0 {
                return Err(TransformError::UnknownPartition { topic, partition: 0 });
            }
            let partition = match &record.key {
                Some(key) => partition_for_key(key, partitions as u32) as i32,
                None => self.shared.partition.rem_euclid(partitions),
            };
            grouped.entry((topic, partition)).or_default().push(Outgoing {
                timestamp_ms: record.timestamp_ms,
                key: record.key,
                value: record.value,
                headers: record.headers,
            });
        }
        let mut pending = Vec::with_capacity(grouped.len());
        for ((topic, partition), records) in grouped {
            let sequence = checkpoint.sequences.entry((topic.clone(), partition)).or_insert(0);
            let batch = encode_batch(&records, Some((checkpoint.producer_id, *sequence)))?;
            // Sequences wrap at i32::MAX like Kafka's.
            *sequence = ((*sequence as i64 + records.len() as i64) % (i32::MAX as i64 + 1)) as i32;
            pending.push(PendingOutput { topic, partition, batch });
        }
        Ok(pending)
    }

    async fn append_commit(
        &self,
        changes: &[(Vec<u8>, Option<Vec<u8>>)],
        checkpoint: &Checkpoint,
    ) -> Result<(), TransformError> {
        let batch = encode_commit(changes, checkpoint, self.broker.now_ms())?;
        let pending = PendingOutput { topic: self.spec.changelog_topic(), partition: self.shared.partition, batch };
        self.append_with_retry(&pending).await
    }

    async fn append_with_retry(&self, pending: &PendingOutput) -> Result<(), TransformError> {
        let mut attempt = 1;
        loop {
            match log_io::append(&self.broker, &pending.topic, pending.partition, &pending.batch) {
                Ok(_) => return Ok(()),
                Err(e) if attempt < APPEND_ATTEMPTS => {
                    tracing::warn!(topic = %pending.topic, partition = pending.partition, attempt, error = %e, "transform append failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(APPEND_BACKOFF * attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
