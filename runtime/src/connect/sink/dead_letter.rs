//! The dead-letter topic (`errors.deadletterqueue.topic.name`): records a sink cannot write go
//! there with Kafka Connect's context headers (`__connect.errors.*`: source topic, partition,
//! offset, connector, task, error message). They are appended and fsynced before the batch
//! that skips them commits, so none is lost; a crash in between sends them again (the dead-
//! letter topic is at-least-once).

use std::collections::BTreeMap;

use bytes::Bytes;
use runnel_broker::partitioner::partition_for_key;

use super::SinkRecord;
use crate::connect::task::TaskContext;
use crate::connect::ConnectError;
use crate::transform::log_io;
use crate::transform::records::{encode_batch, Outgoing};

pub(crate) struct DeadLetters {
    topic: Option<String>,
    partitions: i32,
    pending: BTreeMap<i32, Vec<Outgoing>>,
    sent: usize,
}

impl DeadLetters {
    /// Creates the dead-letter topic (broker defaults) when it is configured and missing.
    pub(crate) fn new(ctx: &TaskContext) -> Result<DeadLetters, ConnectError> {
        let Some(topic) = ctx.common.dlq_topic.clone() else {
            return Ok(DeadLetters { topic: None, partitions: 0, pending: BTreeMap::new(), sent: 0 });
        };
        ctx.broker.auto_create_topic(&topic).map_err(|e| ConnectError::Storage(e.to_string()))?;
        let partitions = ctx.broker.topic(&topic).map_or(0, |t| t.partitions);
        if partitions <= 0 {
            return Err(ConnectError::Storage(format!("dead-letter topic {topic:?} has no partitions")));
        }
        Ok(DeadLetters { topic: Some(topic), partitions, pending: BTreeMap::new(), sent: 0 })
    }

    /// Records handled (sent or skipped) since the last [`DeadLetters::reset`].
    pub(crate) fn sent(&self) -> usize {
        self.sent
    }

    pub(crate) fn reset(&mut self) {
        self.sent = 0;
    }

    /// Queues one rejected record (or skips it when no dead-letter topic is configured).
    pub(crate) fn send(&mut self, ctx: &TaskContext, record: &SinkRecord, error: &str) -> Result<(), ConnectError> {
        self.sent += 1;
        if self.topic.is_none() {
            return Ok(());
        }
        let mut headers = record.headers.clone();
        if ctx.common.dlq_context_headers {
            let mut add = |name: &str, value: String| headers.push((name.to_string(), Some(Bytes::from(value))));
            add("__connect.errors.topic", record.topic.clone());
            add("__connect.errors.partition", record.partition.to_string());
            add("__connect.errors.offset", record.offset.to_string());
            add("__connect.errors.connector.name", ctx.common.name.clone());
            add("__connect.errors.task.id", ctx.task_id.to_string());
            add("__connect.errors.stage", "TASK_PUT".to_string());
            add("__connect.errors.exception.message", error.to_string());
        }
        let partition = match &record.key {
            Some(key) => partition_for_key(key, self.partitions as u32) as i32,
            None => record.partition.rem_euclid(self.partitions),
        };
        self.pending.entry(partition).or_default().push(Outgoing {
            timestamp_ms: record.timestamp_ms,
            key: record.key.clone(),
            value: record.value.clone(),
            headers,
        });
        Ok(())
    }

    /// Appends and fsyncs what is queued.
    pub(crate) async fn flush(&mut self, ctx: &TaskContext) -> Result<(), ConnectError> {
        let Some(topic) = &self.topic else { return Ok(()) };
        for (partition, records) in std::mem::take(&mut self.pending) {
            let batch = encode_batch(&records, None)?;
            let last = log_io::append(&ctx.broker, topic, partition, &batch)?;
            if let Some(handle) = ctx.broker.partition(topic, partition) {
                handle.sync_to(last + 1).await.map_err(|e| ConnectError::Storage(e.to_string()))?;
            }
        }
        ctx.broker.notify_appended();
        Ok(())
    }
}
