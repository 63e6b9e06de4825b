//! File tail (`file-source`, Connect's `FileStreamSourceConnector`): each complete line
//! (ending in `\n`; a trailing `\r` is dropped) becomes a record with that line as its value.
//! The position is the byte offset after the last line written (`{"offset": n}`), so a restart
//! resumes exactly there. A file that became shorter than the position was truncated or
//! replaced: it is read again from its start.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

use super::{Polled, Source, SourceRecord};
use crate::connect::config::Settings;
use crate::connect::ConnectError;

/// Bytes read per poll; a line longer than this is cut into records of this size.
const READ_BYTES_MAX: usize = 1024 * 1024;
const POLL_INTERVAL_DEFAULT_MS: u64 = 200;

#[derive(Debug, Clone)]
pub(crate) struct FileTailSettings {
    path: PathBuf,
    topic: String,
    poll_interval: Duration,
}

pub(crate) struct FileTail {
    settings: FileTailSettings,
    offset: u64,
}

impl FileTail {
    pub(crate) fn settings(settings: Settings<'_>) -> Result<FileTailSettings, ConnectError> {
        Ok(FileTailSettings {
            path: PathBuf::from(settings.required("file")?),
            topic: settings.required("topic")?.to_string(),
            poll_interval: Duration::from_millis(settings.u64_or("poll.interval.ms", POLL_INTERVAL_DEFAULT_MS)?),
        })
    }

    pub(crate) fn new(settings: Settings<'_>) -> Result<FileTail, ConnectError> {
        Ok(FileTail { settings: FileTail::settings(settings)?, offset: 0 })
    }
}

/// Reads from `offset`: the complete lines there and the offset after them.
fn read_lines(path: &std::path::Path, offset: u64, max_lines: usize) -> std::io::Result<Option<(Vec<Bytes>, u64)>> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let length = file.metadata()?.len();
    let mut offset = offset;
    if length < offset {
        tracing::warn!(file = %path.display(), length, offset, "file is shorter than the position (truncated or replaced); reading it from the start");
        offset = 0;
    }
    if length == offset {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut buffer = Vec::with_capacity(READ_BYTES_MAX.min((length - offset) as usize));
    file.take(READ_BYTES_MAX as u64).read_to_end(&mut buffer)?;
    let mut lines = Vec::new();
    let mut consumed = 0;
    while lines.len() < max_lines {
        let rest = &buffer[consumed..];
        let Some(end) = rest.iter().position(|b| *b == b'\n') else { break };
        let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
        lines.push(Bytes::copy_from_slice(line));
        consumed += end + 1;
    }
    if lines.is_empty() && buffer.len() == READ_BYTES_MAX {
        // One line longer than a read: pass it on in pieces rather than stall.
        lines.push(Bytes::from(buffer));
        consumed = READ_BYTES_MAX;
    }
    if lines.is_empty() {
        return Ok(None); // a partial last line: wait for its newline
    }
    Ok(Some((lines, offset + consumed as u64)))
}

impl Source for FileTail {
    fn topic(&self) -> &str {
        &self.settings.topic
    }

    async fn open(&mut self, position: Option<&serde_json::Value>) -> Result<(), ConnectError> {
        self.offset = position.and_then(|p| p.get("offset")).and_then(|o| o.as_u64()).unwrap_or(0);
        Ok(())
    }

    async fn poll(&mut self, max: usize) -> Result<Option<Polled>, ConnectError> {
        let path = self.settings.path.clone();
        let offset = self.offset;
        let read = tokio::task::spawn_blocking(move || read_lines(&path, offset, max))
            .await
            .map_err(|e| ConnectError::Internal(e.to_string()))?
            .map_err(|e| ConnectError::Io(format!("{}: {e}", self.settings.path.display())))?;
        let Some((lines, after)) = read else { return Ok(None) };
        self.offset = after;
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let records = lines
            .into_iter()
            .map(|line| SourceRecord { timestamp_ms: now, key: None, value: Some(line), headers: Vec::new() })
            .collect();
        Ok(Some(Polled { records, position: serde_json::json!({ "offset": after }) }))
    }

    fn idle(&self) -> Duration {
        self.settings.poll_interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_lines_only_and_restarts_at_the_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.txt");
        std::fs::write(&path, b"one\r\ntwo\nthr").expect("write");
        let (lines, after) = read_lines(&path, 0, 100).expect("read").expect("lines");
        assert_eq!(lines, vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]);
        assert_eq!(after, 9);
        assert!(read_lines(&path, after, 100).expect("read").is_none(), "a partial line waits");
        let (first, after_one) = read_lines(&path, 0, 1).expect("read").expect("lines");
        assert_eq!((first.len(), after_one), (1, 5));
        // Truncated below the position: read again from the start.
        std::fs::write(&path, b"x\n").expect("write");
        assert_eq!(read_lines(&path, 9, 100).expect("read").expect("lines").1, 2);
        assert!(read_lines(&dir.path().join("missing"), 0, 10).expect("read").is_none());
    }
}
