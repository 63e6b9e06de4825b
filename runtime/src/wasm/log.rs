//! Guest log lines: per-batch rate and size limits, and a bounded ring per instance that the
//! broker shows with `transform logs`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Severity of a guest log line (ABI `log` levels; WASI stdout is `Info`, stderr `Warn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl LogLevel {
    /// ABI level numbers; anything unknown is `Debug` rather than a failure.
    pub(crate) fn from_abi(level: i32) -> Self {
        match level {
            0 => LogLevel::Error,
            1 => LogLevel::Warn,
            2 => LogLevel::Info,
            _ => LogLevel::Debug,
        }
    }
}

/// One line logged by the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub level: LogLevel,
    /// Sequence number of the `process` call that logged it (0: `runnel_init`).
    pub batch: u64,
    pub message: String,
}

/// The last lines of one instance, shared with the embedder. Bounded: the oldest lines go.
#[derive(Clone, Debug)]
pub struct LogRing {
    lines: Arc<Mutex<VecDeque<LogLine>>>,
    capacity: usize,
}

impl LogRing {
    pub fn new(capacity: usize) -> Self {
        Self { lines: Arc::new(Mutex::new(VecDeque::with_capacity(capacity.min(1024)))), capacity }
    }

    /// A copy of the lines kept, oldest first.
    pub fn snapshot(&self) -> Vec<LogLine> {
        let lines = self.lines.lock().unwrap_or_else(|poison| poison.into_inner());
        lines.iter().cloned().collect()
    }

    pub(crate) fn extend(&self, new_lines: &[LogLine]) {
        if self.capacity == 0 {
            return;
        }
        let mut lines = self.lines.lock().unwrap_or_else(|poison| poison.into_inner());
        for line in new_lines {
            if lines.len() == self.capacity {
                lines.pop_front();
            }
            lines.push_back(line.clone());
        }
    }
}

/// Lines of the batch in progress, with the ABI limits applied as they arrive.
#[derive(Debug, Default)]
pub(crate) struct BatchLog {
    pub(crate) lines: Vec<LogLine>,
    pub(crate) dropped: usize,
    /// Partial WASI stdout/stderr lines, flushed at a newline or at the end of the batch.
    pending_stdout: Vec<u8>,
    pending_stderr: Vec<u8>,
}

impl BatchLog {
    pub(crate) fn clear(&mut self) {
        self.lines.clear();
        self.dropped = 0;
        self.pending_stdout.clear();
        self.pending_stderr.clear();
    }

    pub(crate) fn push(&mut self, level: LogLevel, batch: u64, bytes: &[u8], lines_max: usize, line_bytes_max: usize) {
        if self.lines.len() >= lines_max {
            self.dropped += 1;
            return;
        }
        let message = truncate_utf8_lossy(bytes, line_bytes_max);
        self.lines.push(LogLine { level, batch, message });
    }

    /// WASI `fd_write` to stdout (`stderr == false`) or stderr: split into lines.
    pub(crate) fn write_stream(
        &mut self,
        stderr: bool,
        batch: u64,
        bytes: &[u8],
        lines_max: usize,
        line_bytes_max: usize,
    ) {
        let level = if stderr { LogLevel::Warn } else { LogLevel::Info };
        let mut pending = std::mem::take(if stderr { &mut self.pending_stderr } else { &mut self.pending_stdout });
        for &byte in bytes {
            if byte == b'\n' {
                self.push(level, batch, &pending, lines_max, line_bytes_max);
                pending.clear();
            } else if pending.len() <= line_bytes_max {
                // Bytes past the line cap would be truncated anyway: do not buffer them.
                pending.push(byte);
            }
        }
        if stderr {
            self.pending_stderr = pending;
        } else {
            self.pending_stdout = pending;
        }
    }

    /// Ends the batch: flushes partial stream lines and notes dropped lines.
    pub(crate) fn finish(&mut self, batch: u64, lines_max: usize, line_bytes_max: usize) {
        for stderr in [false, true] {
            let pending = std::mem::take(if stderr { &mut self.pending_stderr } else { &mut self.pending_stdout });
            if !pending.is_empty() {
                let level = if stderr { LogLevel::Warn } else { LogLevel::Info };
                self.push(level, batch, &pending, lines_max, line_bytes_max);
            }
        }
        if self.dropped > 0 {
            self.lines.push(LogLine {
                level: LogLevel::Warn,
                batch,
                message: format!("[runnel] {} log line(s) dropped: at most {lines_max} per batch", self.dropped),
            });
        }
    }
}

/// At most `bytes_max` bytes of `bytes` as text, cut at a character boundary, with a marker
/// when cut. Invalid UTF-8 is replaced rather than refused: logs are for people.
pub(crate) fn truncate_utf8_lossy(bytes: &[u8], bytes_max: usize) -> String {
    if bytes.len() <= bytes_max {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let mut text = String::from_utf8_lossy(&bytes[..bytes_max]).into_owned();
    while text.len() > bytes_max {
        text.pop();
    }
    text.push_str(" [truncated]");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_log_limits_lines_and_bytes() {
        let mut log = BatchLog::default();
        for _ in 0..5 {
            log.push(LogLevel::Info, 1, b"abcdef", 3, 4);
        }
        log.write_stream(true, 1, b"partial", 3, 4);
        log.finish(1, 3, 4);
        assert_eq!(log.lines.len(), 4);
        assert_eq!(log.lines[0].message, "abcd [truncated]");
        assert_eq!(log.dropped, 3);
        assert!(log.lines[3].message.contains("3 log line(s) dropped"));
    }

    #[test]
    fn ring_keeps_the_newest_lines() {
        let ring = LogRing::new(2);
        let line = |n: u64| LogLine { level: LogLevel::Info, batch: n, message: n.to_string() };
        ring.extend(&[line(1), line(2), line(3)]);
        let kept: Vec<u64> = ring.snapshot().iter().map(|l| l.batch).collect();
        assert_eq!(kept, vec![2, 3]);
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let text = "ééé".as_bytes();
        assert_eq!(truncate_utf8_lossy(text, 3), "é [truncated]");
    }
}
