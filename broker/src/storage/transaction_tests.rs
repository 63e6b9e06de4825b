//! Transactions in the log: last stable offset, aborted-transaction index, and both surviving
//! a crash (no clean close), a clean restart, truncation and retention.

use std::sync::Arc;

use super::*;
use crate::config::LogConfig;
use crate::protocol::batch::build_batch;

const TRANSACTIONAL: i16 = 1 << 4;

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        segment_ms: i64::MAX / 2,
        retention_ms: -1,
        retention_bytes: -1,
        index_interval_bytes: 256,
        max_message_bytes: 1 << 20,
        flush_messages: u64::MAX,
        flush_ms: i64::MAX / 2,
        compaction: Default::default(),
    }
}

fn open(dir: &std::path::Path, segment_bytes: u64) -> PartitionLog {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_000));
    PartitionLog::open(dir, config(segment_bytes), clock).expect("log opens")
}

/// A transactional data batch of `count` records from `producer` at `sequence`.
fn data(producer: i64, sequence: i32, count: i32) -> Vec<u8> {
    build_batch(TRANSACTIONAL, count - 1, 1_000, 1_000, producer, 0, sequence, count, b"records").to_vec()
}

fn plain(count: i32) -> Vec<u8> {
    build_batch(0, count - 1, 1_000, 1_000, -1, -1, -1, count, b"records").to_vec()
}

fn marker(producer: i64, commit: bool) -> Bytes {
    encode_marker(producer, 0, commit, 0, 1_000)
}

use bytes::Bytes;

#[test]
fn lso_stops_at_the_oldest_open_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), 1 << 20);
    log.append(&plain(2)).expect("append"); // 0..2
    log.append(&data(1, 0, 3)).expect("append"); // 2..5, producer 1 opens at 2
    log.append(&data(2, 0, 1)).expect("append"); // 5, producer 2 opens at 5
    log.append(&plain(1)).expect("append"); // 6
    assert_eq!((log.last_stable_offset(), log.high_watermark()), (2, 7));
    log.append(&marker(1, true)).expect("commit"); // 7
    assert_eq!(log.last_stable_offset(), 5, "now held by producer 2");
    log.append(&marker(2, false)).expect("abort"); // 8
    assert_eq!(log.last_stable_offset(), 9);
    assert_eq!(
        log.aborted_transactions(0, 9),
        vec![AbortedTxn { producer_id: 2, first_offset: 5, last_offset: 8, last_stable_offset: 9 }]
    );
    assert!(log.aborted_transactions(9, 20).is_empty(), "a range after the marker overlaps nothing");
    assert!(log.aborted_transactions(0, 5).is_empty(), "a range before the first offset overlaps nothing");
    // A second marker (coordinator retry after a crash) changes nothing.
    log.append(&marker(2, false)).expect("abort again");
    assert_eq!(log.aborted_transactions(0, 100).len(), 1);
}

#[test]
fn open_transactions_and_aborts_survive_a_crash_and_a_clean_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        // Small segments: the state crosses rolls (snapshots) and the replay after them.
        let mut log = open(dir.path(), 300);
        for round in 0..6i64 {
            log.append(&data(round % 2, (round / 2) as i32 * 2, 2)).expect("data");
            log.append(&plain(1)).expect("plain");
            log.append(&marker(round % 2, round % 3 != 0)).expect("marker");
        }
        log.append(&data(7, 0, 2)).expect("open transaction");
        assert!(log.segment_count() > 1);
        // Dropped without close: a crash.
    }
    let (lso, aborted) = {
        let log = open(dir.path(), 300);
        let lso = log.last_stable_offset();
        assert_eq!(lso, 24, "the open transaction still holds the LSO after the crash");
        let aborted = log.aborted_transactions(0, i64::MAX);
        assert_eq!(aborted.iter().map(|a| a.first_offset).collect::<Vec<_>>(), vec![0, 12]);
        (lso, aborted)
    };
    let mut log = open(dir.path(), 300);
    assert_eq!(log.last_stable_offset(), lso);
    assert_eq!(log.aborted_transactions(0, i64::MAX), aborted, "reopening does not duplicate entries");
    log.append(&marker(7, false)).expect("abort the open one");
    log.close().expect("close");
    let log = open(dir.path(), 300);
    assert_eq!(log.last_stable_offset(), log.high_watermark());
    assert_eq!(log.aborted_transactions(0, i64::MAX).len(), 3);
}

#[test]
fn truncation_and_retention_drop_index_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), 200);
    for sequence in 0..4 {
        log.append(&data(3, sequence, 1)).expect("data");
        log.append(&marker(3, false)).expect("abort");
    }
    assert_eq!(log.aborted_transactions(0, i64::MAX).len(), 4);
    log.truncate_to(6).expect("truncate");
    assert_eq!(log.aborted_transactions(0, i64::MAX).len(), 3, "the entry of the cut marker is gone");
    let mut config = config(200);
    config.retention_bytes = 0;
    log.set_config(config);
    log.enforce_retention().expect("retention");
    let remaining = log.aborted_transactions(0, i64::MAX);
    assert!(remaining.iter().all(|a| a.last_offset >= log.log_start_offset()), "entries of deleted segments dropped");
    let files = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".txnindex"))
        .count();
    assert!(files <= remaining.len().max(1), "index files of deleted segments removed");
}
