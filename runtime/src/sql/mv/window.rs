//! Event-time windows: which windows a timestamp falls in, and when a window is closed.
//!
//! - `TUMBLE(ts, size)`: `[k·size, (k+1)·size)`, one per event.
//! - `HOP(ts, slide, size)`: every `[k·slide, k·slide + size)` that holds `ts` (size/slide of
//!   them).
//! - `SESSION(ts, gap)`: events of a key closer than `gap` merge into one session
//!   `[first, last + gap)` (merging is the state's job; this gives an event's own window).
//!
//! A window is closed once the watermark (largest event time seen minus the allowed
//! lateness) reaches its end; an event none of whose windows is still open is late.

use datafusion::logical_expr::Expr;

use super::super::SqlError;
use super::plan::interval_ms;

/// Windows beyond this many per event (HOP size/slide) are refused: each costs state per event.
const HOP_WINDOWS_PER_EVENT_MAX: i64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum WindowSpec {
    Tumble { size_ms: i64 },
    Hop { slide_ms: i64, size_ms: i64 },
    Session { gap_ms: i64 },
}

impl WindowSpec {
    /// The window a GROUP BY call names: `tumble(ts, size)`, `hop(ts, slide, size)` or
    /// `session(ts, gap)`; `intervals` are the arguments after the event time.
    pub(crate) fn from_call(name: &str, intervals: &[Expr]) -> Result<WindowSpec, SqlError> {
        let ms = |i: usize| {
            intervals.get(i).ok_or_else(|| SqlError::Plan(format!("{name}(): missing interval"))).and_then(interval_ms)
        };
        let spec = match name {
            "tumble" => WindowSpec::Tumble { size_ms: ms(0)? },
            "hop" => WindowSpec::Hop { slide_ms: ms(0)?, size_ms: ms(1)? },
            _ => WindowSpec::Session { gap_ms: ms(0)? },
        };
        if let WindowSpec::Hop { slide_ms, size_ms } = spec {
            if size_ms % slide_ms != 0 || size_ms / slide_ms > HOP_WINDOWS_PER_EVENT_MAX {
                return Err(SqlError::Plan(format!(
                    "hop(): the size must be a multiple of the slide, at most {HOP_WINDOWS_PER_EVENT_MAX} times it"
                )));
            }
        }
        Ok(spec)
    }

    /// Starts of the tumbling or hopping windows holding `ts`, oldest first (sessions: `ts`).
    pub(crate) fn starts(&self, ts: i64, out: &mut Vec<i64>) {
        out.clear();
        match *self {
            WindowSpec::Tumble { size_ms } => out.push(ts.div_euclid(size_ms) * size_ms),
            WindowSpec::Hop { slide_ms, size_ms } => {
                let last = ts.div_euclid(slide_ms) * slide_ms;
                let mut start = last - size_ms + slide_ms;
                while start <= last {
                    out.push(start);
                    start += slide_ms;
                }
            }
            WindowSpec::Session { .. } => out.push(ts),
        }
    }

    /// End of the window starting at `start` (sessions: of the event's own window).
    pub(crate) fn end(&self, start: i64) -> i64 {
        match *self {
            WindowSpec::Tumble { size_ms } => start + size_ms,
            WindowSpec::Hop { size_ms, .. } => start + size_ms,
            WindowSpec::Session { gap_ms } => start + gap_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_and_hopping_windows_hold_the_event() {
        let mut out = Vec::new();
        WindowSpec::Tumble { size_ms: 60_000 }.starts(125_000, &mut out);
        assert_eq!(out, vec![120_000]);
        WindowSpec::Tumble { size_ms: 10 }.starts(-5, &mut out);
        assert_eq!(out, vec![-10], "negative times round down");
        let hop = WindowSpec::Hop { slide_ms: 2, size_ms: 6 };
        hop.starts(7, &mut out);
        assert_eq!(out, vec![2, 4, 6]);
        for start in &out {
            assert!(*start <= 7 && 7 < hop.end(*start));
        }
        assert_eq!(WindowSpec::Session { gap_ms: 5 }.end(10), 15);
    }
}
