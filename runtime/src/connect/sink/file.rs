//! The JSON-lines file sink (`file-sink`, Connect's `FileStreamSinkConnector`): one line per
//! record — the value when it is JSON (compacted onto one line), else the value as a JSON
//! string, `null` for a tombstone; with `file.format=envelope`, an object with topic,
//! partition, offset, timestamp, key and value.
//!
//! Exactly-once: lines are written and fsynced, then the positions are committed under the
//! group `connect-<name>` with the file's length in the commit metadata. On start the file is
//! cut back to that length (dropping lines written after the last commit) and reading resumes
//! from the committed positions.
//!
//! Fencing: the file sink runs one task, so a rebalance never gives its partitions to another
//! writer; what can overlap is a task that was aborted (it did not stop in time) while its
//! write and fsync still run on a blocking thread, and the task started after it. The task
//! holds an exclusive lock on the file (`flock`) while it has it open, so the next one opens it
//! only once that write is over (and cuts it back); and each write checks that the file is as
//! long as this task left it, or it is [fenced](ConnectError::Fenced) and reopens.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use runnel_broker::GroupOffset;

use super::{group_id, Advance, Positions, Sink, SinkRecord, Written};
use crate::connect::config::Settings;
use crate::connect::task::TaskContext;
use crate::connect::ConnectError;

const METADATA_PREFIX: &str = "file.bytes=";
/// Records per write (one write and one fsync each).
const BATCH_RECORDS_MAX: usize = 5000;

pub(crate) struct FileSink {
    path: PathBuf,
    envelope: bool,
    broker: Arc<runnel_broker::Broker>,
    group: String,
    file: Option<Arc<std::fs::File>>,
    bytes: u64,
}

impl FileSink {
    pub(crate) fn new(ctx: &TaskContext) -> Result<FileSink, ConnectError> {
        let settings = Settings(&ctx.config);
        let envelope = settings.one_of("file.format", "value", &["value", "envelope"])? == "envelope";
        Ok(FileSink {
            path: PathBuf::from(settings.required("file")?),
            envelope,
            broker: Arc::clone(&ctx.broker),
            group: group_id(&ctx.common.name),
            file: None,
            bytes: 0,
        })
    }

    /// Checks the file-specific settings.
    pub(crate) fn validate(settings: Settings<'_>) -> Result<(), ConnectError> {
        settings.required("file")?;
        settings.one_of("file.format", "value", &["value", "envelope"])?;
        Ok(())
    }
}

impl Sink for FileSink {
    async fn open(&mut self, partitions: &[(String, i32)]) -> Result<Positions, ConnectError> {
        let mut committed = self.broker.group_offsets(&self.group);
        let path = self.path.clone();
        let io = |e: std::io::Error| ConnectError::Io(format!("{}: {e}", path.display()));
        self.file = None; // releases this task's own lock before taking it again
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(io)?;
        lock_exclusive(&file, &self.path)?;
        let current = file.metadata().map_err(io)?.len();
        let mut length =
            committed.iter().filter_map(|o| o.metadata.strip_prefix(METADATA_PREFIX)?.parse::<u64>().ok()).max();
        if length.is_none() && !partitions.is_empty() {
            // First start: where this connector's lines begin is committed before any is
            // written, or a crash between the first write and its commit would leave lines that
            // the restart (reading from the log start again) writes a second time.
            let start: Vec<GroupOffset> = partitions
                .iter()
                .map(|(topic, partition)| GroupOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: self.broker.partition(topic, *partition).map_or(0, |p| p.log().log_start_offset()),
                    metadata: format!("{METADATA_PREFIX}{current}"),
                })
                .collect();
            self.broker
                .commit_group_offsets(&self.group, &start)
                .await
                .map_err(|e| ConnectError::Storage(e.to_string()))?;
            committed = start;
            length = Some(current);
        }
        self.bytes = match length {
            Some(length) if length < current => {
                // Lines written after the last commit: they are written again from the positions.
                file.set_len(length).map_err(io)?;
                file.sync_all().map_err(io)?;
                length
            }
            Some(length) if length > current => {
                tracing::warn!(file = %self.path.display(), length, current, "file is shorter than committed (truncated by someone else?)");
                current
            }
            _ => current,
        };
        self.file = Some(Arc::new(file));
        Ok(committed.into_iter().map(|o| ((o.topic, o.partition), o.offset)).collect())
    }

    async fn write(&mut self, records: &[SinkRecord], _advance: &Advance<'_>) -> Result<Written, ConnectError> {
        let file = self.file.clone().ok_or_else(|| ConnectError::Internal("file sink not open".into()))?;
        let length = file.metadata().map_err(|e| ConnectError::Io(format!("{}: {e}", self.path.display())))?.len();
        if length != self.bytes {
            return Err(ConnectError::Fenced(format!(
                "{} is {length} bytes long, this task left it at {}: written by someone else",
                self.path.display(),
                self.bytes
            )));
        }
        let mut buffer = Vec::with_capacity(records.len() * 64);
        for record in records {
            let line = if self.envelope { envelope(record) } else { value_json(record.value.as_deref()) };
            serde_json::to_writer(&mut buffer, &line).map_err(|e| ConnectError::Internal(e.to_string()))?;
            buffer.push(b'\n');
        }
        let written = buffer.len() as u64;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            (&*file).write_all(&buffer)?;
            file.sync_data()
        })
        .await
        .map_err(|e| ConnectError::Internal(e.to_string()))?
        .map_err(|e| ConnectError::Io(format!("{}: {e}", path.display())))?;
        self.bytes += written;
        Ok(Written::Committed)
    }

    fn batch_max(&self) -> usize {
        BATCH_RECORDS_MAX
    }

    fn group_metadata(&self) -> Option<String> {
        Some(format!("{METADATA_PREFIX}{}", self.bytes))
    }
}

/// Takes the file's exclusive lock, or fails (retriably) while another writer holds it.
fn lock_exclusive(file: &std::fs::File, path: &std::path::Path) -> Result<(), ConnectError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(ConnectError::Io(format!(
            "{}: locked by another writer (a task still finishing its last write?)",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(ConnectError::Io(format!("{}: lock: {e}", path.display()))),
    }
}

/// A value as JSON: parsed when it is JSON, else a string; `null` for a tombstone.
fn value_json(value: Option<&[u8]>) -> serde_json::Value {
    match value {
        None => serde_json::Value::Null,
        Some(bytes) => serde_json::from_slice(bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned())),
    }
}

fn envelope(record: &SinkRecord) -> serde_json::Value {
    serde_json::json!({
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp_ms,
        "key": record.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
        "value": value_json(record.value.as_deref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_writer_holds_the_file_at_a_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("out.jsonl");
        let open = || std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("open");
        let first = open();
        lock_exclusive(&first, &path).expect("first writer locks");
        let second = open();
        let refused = lock_exclusive(&second, &path).expect_err("a second writer waits");
        assert!(refused.is_retriable() && refused.to_string().contains("locked"), "{refused}");
        drop(first);
        lock_exclusive(&second, &path).expect("free once the first is gone");
    }

    #[test]
    fn values_become_one_json_line_each() {
        assert_eq!(value_json(Some(b"{\"a\": 1,\n \"b\": [2]}")).to_string(), r#"{"a":1,"b":[2]}"#);
        assert_eq!(value_json(Some(b"plain text")).to_string(), r#""plain text""#);
        assert_eq!(value_json(None).to_string(), "null");
    }
}
