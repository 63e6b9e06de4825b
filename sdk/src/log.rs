//! Logging through the host's `log` import (the host rate- and size-limits it: 100 lines per
//! batch, 4 KiB per line by default). Use the [`error!`](crate::error), [`warn!`](crate::warn),
//! [`info!`](crate::info) and [`debug!`](crate::debug) macros, or [`log`] directly.

use crate::host;

/// Log levels, numbered as in the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// 0
    Error = 0,
    /// 1
    Warn = 1,
    /// 2
    Info = 2,
    /// 3
    Debug = 3,
}

/// Longest line the host keeps by default; longer lines are cut here, on a character boundary,
/// so the part that matters (the start) survives instead of the host dropping the line.
pub const MAX_LINE: usize = 4096;

/// Sends one line to the host log.
pub fn log(level: Level, message: &str) {
    let mut end = message.len().min(MAX_LINE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    host::host_log(level as i32, &message.as_bytes()[..end]);
}
