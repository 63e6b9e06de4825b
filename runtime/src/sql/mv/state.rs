//! The grouping state of a view: one group per (window start, key), its accumulators, the
//! watermark, and what changed since the last commit.
//!
//! Rows are applied one at a time in input order, so which events are late depends only on
//! that order, never on how the input was cut into batches. Closing windows, emitting rows
//! and collecting state changes happen at commit time ([`ViewState::take_changes`]).

use std::collections::{BTreeMap, HashMap};

use super::aggregate::{Accumulator, Argument};
use super::plan::AggregateKind;
use super::window::WindowSpec;

/// When a group's row goes to the output topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EmitMode {
    /// Once, when the window closes (windowed views only).
    Final,
    /// At every commit that changed the group.
    Update,
}

/// One group's state, as kept in memory and in the changelog.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Group {
    pub(crate) end: i64,
    pub(crate) accumulators: Vec<Accumulator>,
    /// A row for this group is in the output topic (a merged-away session needs a tombstone).
    pub(crate) emitted: bool,
    /// Changed since the last commit (listed in `ViewState::dirty`).
    #[serde(skip)]
    pub(crate) dirty: bool,
}

/// A row (or a tombstone, without accumulators) bound for the output topic.
#[derive(Debug, Clone)]
pub(crate) struct Emitted {
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) key: Box<[u8]>,
    pub(crate) accumulators: Option<Vec<Accumulator>>,
}

/// A state change for the changelog: group id → the group, or `None` to delete it.
pub(crate) type GroupChange = (Vec<u8>, Option<Group>);

/// Why an input row was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LateReason {
    /// Every window it belongs to had closed.
    Late,
    /// Its event time is null.
    NoEventTime,
}

pub(crate) struct ViewState {
    window: Option<WindowSpec>,
    lateness_ms: i64,
    emit: EmitMode,
    aggregates: Vec<(AggregateKind, arrow::datatypes::DataType)>,
    /// Groups by window start (0 for views without a window), then by key row.
    groups: BTreeMap<i64, HashMap<Box<[u8]>, Group>>,
    /// Session windows: each key's session starts.
    sessions: HashMap<Box<[u8]>, Vec<i64>>,
    dirty: Vec<(i64, Box<[u8]>)>,
    /// Groups removed by a session merge, with whether they had been emitted.
    merged_away: Vec<(i64, Box<[u8]>, bool)>,
    /// Largest event time applied so far (`i64::MIN` before any).
    pub(crate) max_event_ms: i64,
    starts: Vec<i64>,
}

impl ViewState {
    pub(crate) fn new(
        window: Option<WindowSpec>,
        lateness_ms: i64,
        emit: EmitMode,
        aggregates: Vec<(AggregateKind, arrow::datatypes::DataType)>,
    ) -> ViewState {
        ViewState {
            window,
            lateness_ms,
            emit,
            aggregates,
            groups: BTreeMap::new(),
            sessions: HashMap::new(),
            dirty: Vec::new(),
            merged_away: Vec::new(),
            max_event_ms: i64::MIN,
            starts: Vec::new(),
        }
    }

    /// Windows ending at or before the watermark are closed.
    pub(crate) fn watermark(&self) -> i64 {
        self.max_event_ms.saturating_sub(self.lateness_ms)
    }

    pub(crate) fn group_count(&self) -> usize {
        self.groups.values().map(HashMap::len).sum()
    }

    fn fresh(&self, end: i64) -> Group {
        Group {
            end,
            accumulators: self.aggregates.iter().map(|(kind, output)| Accumulator::new(*kind, output)).collect(),
            emitted: false,
            dirty: false,
        }
    }

    /// Applies row `row`: its event time (`None` without a window), key and arguments.
    pub(crate) fn apply(
        &mut self,
        event_ms: Option<Option<i64>>,
        key: &[u8],
        arguments: &[Argument],
        row: usize,
    ) -> Result<(), LateReason> {
        let Some(window) = self.window else {
            let group = self.group_mut(0, i64::MAX, key);
            update(group, arguments, row);
            return Ok(());
        };
        let ts = event_ms.flatten().ok_or(LateReason::NoEventTime)?;
        self.max_event_ms = self.max_event_ms.max(ts);
        let watermark = self.watermark();
        if let WindowSpec::Session { gap_ms } = window {
            if ts + gap_ms <= watermark {
                return Err(LateReason::Late);
            }
            let start = self.merge_sessions(key, ts, ts + gap_ms, watermark);
            let group = self.group_mut(start, ts + gap_ms, key);
            update(group, arguments, row);
            return Ok(());
        }
        let mut starts = std::mem::take(&mut self.starts);
        window.starts(ts, &mut starts);
        let mut counted = false;
        for &start in &starts {
            let end = window.end(start);
            if end <= watermark {
                continue; // that window has closed
            }
            counted = true;
            let group = self.group_mut(start, end, key);
            update(group, arguments, row);
        }
        self.starts = starts;
        if counted {
            Ok(())
        } else {
            Err(LateReason::Late)
        }
    }

    fn group_mut(&mut self, start: i64, end: i64, key: &[u8]) -> &mut Group {
        let groups = self.groups.entry(start).or_default();
        if !groups.contains_key(key) {
            let accumulators = self.aggregates.iter().map(|(kind, output)| Accumulator::new(*kind, output)).collect();
            groups.insert(Box::from(key), Group { end, accumulators, emitted: false, dirty: false });
        }
        let group = groups.get_mut(key).expect("inserted above");
        if !group.dirty {
            group.dirty = true;
            self.dirty.push((start, Box::from(key)));
        }
        group.end = group.end.max(end);
        group
    }

    /// Merges the open sessions of `key` that overlap `[from, to)` into one (with the new
    /// event's window) and returns the merged session's start.
    fn merge_sessions(&mut self, key: &[u8], from: i64, to: i64, watermark: i64) -> i64 {
        let starts = self.sessions.entry(Box::from(key)).or_default();
        let mut overlapping = Vec::new();
        starts.retain(|&start| {
            let end = self.groups.get(&start).and_then(|g| g.get(key)).map_or(i64::MIN, |g| g.end);
            let open = end > watermark;
            let overlaps = start < to && from < end;
            if open && overlaps {
                overlapping.push((start, end));
                false
            } else {
                end != i64::MIN
            }
        });
        let start = overlapping.iter().map(|(s, _)| *s).min().unwrap_or(from).min(from);
        let end = overlapping.iter().map(|(_, e)| *e).max().unwrap_or(to).max(to);
        starts.push(start);
        let mut merged = self.fresh(end);
        for (old_start, _) in overlapping {
            let Some(group) = self.groups.get_mut(&old_start).and_then(|g| g.remove(key)) else { continue };
            for (into, from) in merged.accumulators.iter_mut().zip(&group.accumulators) {
                into.merge(from);
            }
            if old_start == start {
                merged.emitted = group.emitted;
                merged.dirty = group.dirty;
            } else {
                self.merged_away.push((old_start, Box::from(key), group.emitted));
            }
        }
        self.groups.entry(start).or_default().insert(Box::from(key), merged);
        start
    }

    /// What the last rows changed: rows to emit, and changelog changes. Closes every window
    /// the watermark has passed (its state is deleted).
    pub(crate) fn take_changes(&mut self) -> (Vec<Emitted>, Vec<GroupChange>) {
        let watermark = if self.window.is_some() { self.watermark() } else { i64::MIN };
        let mut emitted = Vec::new();
        let mut changes = Vec::new();
        for (start, key, was_emitted) in self.merged_away.drain(..) {
            changes.push((group_id(start, &key), None));
            if was_emitted {
                emitted.push(Emitted { start, end: start, key, accumulators: None });
            }
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort();
        dirty.dedup();
        let update = self.emit == EmitMode::Update || self.window.is_none();
        for (start, key) in dirty {
            let Some(group) = self.groups.get_mut(&start).and_then(|g| g.get_mut(&key)) else { continue };
            if !group.dirty {
                continue; // a session merged into another since
            }
            group.dirty = false;
            if update {
                group.emitted = true;
                emitted.push(Emitted {
                    start,
                    end: group.end,
                    key: key.clone(),
                    accumulators: Some(group.accumulators.clone()),
                });
            }
            if group.end > watermark {
                changes.push((group_id(start, &key), Some(group.clone())));
            }
        }
        self.close(watermark, update, &mut emitted, &mut changes);
        (emitted, changes)
    }

    fn close(&mut self, watermark: i64, update: bool, emitted: &mut Vec<Emitted>, changes: &mut Vec<GroupChange>) {
        let Some(window) = self.window else { return };
        // Sessions end at least a gap after they start; other windows at start + size.
        let horizon = match window {
            WindowSpec::Session { gap_ms } => watermark.saturating_sub(gap_ms),
            other => watermark.saturating_sub(other.end(0)),
        };
        let candidates: Vec<i64> = self.groups.range(..=horizon).map(|(s, _)| *s).collect();
        for start in candidates {
            let Some(groups) = self.groups.get_mut(&start) else { continue };
            let closing: Vec<Box<[u8]>> =
                groups.iter().filter(|(_, g)| g.end <= watermark).map(|(k, _)| k.clone()).collect();
            for key in closing {
                let Some(group) = groups.remove(&key) else { continue };
                // Update mode emitted this group's last change when it was made.
                if !update {
                    emitted.push(Emitted {
                        start,
                        end: group.end,
                        key: key.clone(),
                        accumulators: Some(group.accumulators),
                    });
                }
                changes.push((group_id(start, &key), None));
                if let Some(starts) = self.sessions.get_mut(&key) {
                    starts.retain(|s| *s != start);
                    if starts.is_empty() {
                        self.sessions.remove(&key);
                    }
                }
            }
            if groups.is_empty() {
                self.groups.remove(&start);
            }
        }
    }

    /// Puts back a group read from the changelog.
    pub(crate) fn restore(&mut self, id: &[u8], group: Group) {
        let Some((start, key)) = split_group_id(id) else { return };
        if matches!(self.window, Some(WindowSpec::Session { .. })) {
            self.sessions.entry(Box::from(key)).or_default().push(start);
        }
        self.groups.entry(start).or_default().insert(Box::from(key), group);
    }
}

fn update(group: &mut Group, arguments: &[Argument], row: usize) {
    for (accumulator, argument) in group.accumulators.iter_mut().zip(arguments) {
        accumulator.update(argument, row);
    }
}

/// A group's id in the changelog: the window start (big-endian, sign bit flipped so ids sort
/// by time) then the key row.
pub(crate) fn group_id(start: i64, key: &[u8]) -> Vec<u8> {
    let mut id = Vec::with_capacity(8 + key.len());
    id.extend_from_slice(&((start as u64) ^ (1 << 63)).to_be_bytes());
    id.extend_from_slice(key);
    id
}

pub(crate) fn split_group_id(id: &[u8]) -> Option<(i64, &[u8])> {
    let (start, key) = id.split_at_checked(8)?;
    let start = u64::from_be_bytes(start.try_into().ok()?) ^ (1 << 63);
    Some((start as i64, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::DataType;

    fn counting(window: WindowSpec, lateness_ms: i64, emit: EmitMode) -> ViewState {
        ViewState::new(Some(window), lateness_ms, emit, vec![(AggregateKind::Count, DataType::Int64)])
    }

    fn counts(emitted: &[Emitted]) -> Vec<(i64, i64, Vec<u8>, Option<i64>)> {
        emitted
            .iter()
            .map(|e| {
                let count = e.accumulators.as_ref().map(|a| match a[0] {
                    Accumulator::Count(c) => c,
                    _ => -1,
                });
                (e.start, e.end, e.key.to_vec(), count)
            })
            .collect()
    }

    #[test]
    fn tumbling_windows_emit_once_when_closed_and_late_rows_are_refused() {
        let mut state = counting(WindowSpec::Tumble { size_ms: 10 }, 5, EmitMode::Final);
        let none = [Argument::None];
        for ts in [1, 2, 11, 3] {
            state.apply(Some(Some(ts)), b"a", &none, 0).expect("on time");
        }
        let (emitted, _) = state.take_changes();
        assert!(emitted.is_empty(), "watermark 6 closes nothing");
        state.apply(Some(Some(25)), b"a", &none, 0).expect("on time");
        assert_eq!(state.apply(Some(Some(9)), b"a", &none, 0), Err(LateReason::Late), "[0,10) closed at watermark 20");
        assert_eq!(state.apply(Some(Some(16)), b"a", &none, 0), Err(LateReason::Late), "[10,20) closed at 20 too");
        state.apply(Some(Some(21)), b"a", &none, 0).expect("[20,30) is open");
        assert_eq!(state.apply(Some(None), b"a", &none, 0), Err(LateReason::NoEventTime));
        let (emitted, changes) = state.take_changes();
        assert_eq!(counts(&emitted), vec![(0, 10, b"a".to_vec(), Some(3)), (10, 20, b"a".to_vec(), Some(1))]);
        assert!(changes.iter().any(|(id, g)| split_group_id(id).map(|(s, _)| s) == Some(0) && g.is_none()));
        assert_eq!(state.group_count(), 1);
    }

    #[test]
    fn update_mode_emits_every_change() {
        let mut state = counting(WindowSpec::Tumble { size_ms: 10 }, 0, EmitMode::Update);
        let none = [Argument::None];
        state.apply(Some(Some(1)), b"a", &none, 0).expect("on time");
        let (emitted, _) = state.take_changes();
        assert_eq!(counts(&emitted), vec![(0, 10, b"a".to_vec(), Some(1))]);
        state.apply(Some(Some(2)), b"a", &none, 0).expect("on time");
        state.apply(Some(Some(30)), b"b", &none, 0).expect("on time");
        let (emitted, _) = state.take_changes();
        // [0,10) for a: its update (2), then it closes without a second row.
        assert_eq!(counts(&emitted), vec![(0, 10, b"a".to_vec(), Some(2)), (30, 40, b"b".to_vec(), Some(1))]);
    }

    #[test]
    fn sessions_merge_and_retract_what_they_replace() {
        let mut state = counting(WindowSpec::Session { gap_ms: 10 }, 100, EmitMode::Update);
        let none = [Argument::None];
        state.apply(Some(Some(0)), b"k", &none, 0).expect("on time");
        state.apply(Some(Some(30)), b"k", &none, 0).expect("on time");
        let (emitted, _) = state.take_changes();
        assert_eq!(emitted.len(), 2);
        state.apply(Some(Some(25)), b"k", &none, 0).expect("[25,35) overlaps the second session");
        state.apply(Some(Some(5)), b"k", &none, 0).expect("joins the first");
        let (emitted, _) = state.take_changes();
        let rows = counts(&emitted);
        assert!(rows.contains(&(0, 15, b"k".to_vec(), Some(2))), "{rows:?}");
        // 25 joined [30,40) into [25,40); the old row at start 30 is retracted.
        assert!(rows.contains(&(30, 30, b"k".to_vec(), None)), "{rows:?}");
        assert!(rows.contains(&(25, 40, b"k".to_vec(), Some(2))), "{rows:?}");
        assert_eq!(rows.len(), 3, "{rows:?}");
    }

    #[test]
    fn hopping_windows_count_an_event_in_each() {
        let mut state = counting(WindowSpec::Hop { slide_ms: 5, size_ms: 10 }, 0, EmitMode::Final);
        let ints = [Argument::Int(Int64Array::from(vec![1]))];
        state.apply(Some(Some(7)), b"", &ints, 0).expect("on time");
        state.apply(Some(Some(100)), b"", &ints, 0).expect("on time");
        let (emitted, _) = state.take_changes();
        assert_eq!(counts(&emitted), vec![(0, 10, vec![], Some(1)), (5, 15, vec![], Some(1))]);
    }

    #[test]
    fn group_ids_round_trip_and_sort_by_time() {
        for start in [i64::MIN, -5, 0, 7, i64::MAX] {
            let id = group_id(start, b"key");
            assert_eq!(split_group_id(&id), Some((start, &b"key"[..])));
        }
        assert!(group_id(-1, b"") < group_id(1, b""));
    }
}
