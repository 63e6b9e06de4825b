//! Seeded tests of the log cleaner against a model: after cleaning, the log holds for each key
//! exactly its latest record, at its original offset, in order; tombstones stay readable until
//! their delete horizon; passes with a tiny key map converge; a crash at any swap step is
//! recovered on reopen; appends and fetches during a pass lose nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use kafka_protocol::records::{Compression, RecordBatchDecoder};

use super::cleaner::{cleaning_priority, CleanStats, Cleaner, CrashPoint, PartitionCleanState};
use super::keymap::ENTRY_BYTES;
use super::record_codec::tests::{client_batch, KeyValue};
use super::*;
use crate::config::{CompactionConfig, LogConfig};
use crate::protocol::batch::split_batches;

/// splitmix64, as in `tests.rs`: every failure reproduces from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const DELETE_RETENTION_MS: i64 = 10_000;

fn compacted_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        segment_ms: i64::MAX / 2,
        retention_ms: -1,
        retention_bytes: -1,
        compaction: CompactionConfig {
            enabled: true,
            min_cleanable_dirty_ratio: 0.0,
            delete_retention_ms: DELETE_RETENTION_MS,
            ..CompactionConfig::default()
        },
        index_interval_bytes: 512,
        max_message_bytes: 1 << 20,
        flush_messages: u64::MAX,
        flush_ms: i64::MAX / 2,
    }
}

/// One record as a consumer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    offset: i64,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

/// What was produced: every record by offset, and when.
#[derive(Debug, Default)]
struct Model {
    produced: BTreeMap<i64, Seen>,
}

impl Model {
    /// The latest record of each key.
    fn latest(&self) -> BTreeMap<Vec<u8>, Seen> {
        let mut latest = BTreeMap::new();
        for seen in self.produced.values() {
            latest.insert(seen.key.clone(), seen.clone());
        }
        latest
    }
}

const CODECS: [Compression; 5] =
    [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];

/// Appends a random batch of updates and tombstones over `keys` keys.
fn append_random(log: &mut PartitionLog, rng: &mut Rng, model: &mut Model, keys: u64, now_ms: i64) {
    let count = 1 + rng.below(6) as usize;
    let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    for _ in 0..count {
        let key = format!("key-{}", rng.below(keys)).into_bytes();
        let value = (rng.below(8) != 0).then(|| format!("v{}", rng.next()).into_bytes());
        records.push((key, value));
    }
    let borrowed: Vec<KeyValue<'_>> = records.iter().map(|(k, v)| (Some(k.as_slice()), v.as_deref())).collect();
    let codec = CODECS[rng.below(CODECS.len() as u64) as usize];
    let info = log.append(&client_batch(&borrowed, now_ms, codec)).expect("append");
    for (i, (key, value)) in records.into_iter().enumerate() {
        let offset = info.base_offset + i as i64;
        model.produced.insert(offset, Seen { offset, key, value });
    }
}

/// Every record the log serves from its start, decoded by `kafka-protocol` as a client would,
/// with batch CRCs checked and offsets strictly increasing.
fn consume_all(log: &mut PartitionLog) -> Vec<Seen> {
    let mut seen: Vec<Seen> = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let Some(slice) = log.read(offset, 1 << 20).expect("read") else { break };
        let bytes = slice.read().expect("slice reads");
        let batches = split_batches(&bytes).expect("whole, valid batches");
        assert!(!batches.is_empty(), "a read below the end returns a batch");
        for (header, range) in batches {
            assert!(header.base_offset >= offset, "batches come in offset order");
            let set = RecordBatchDecoder::decode(&mut bytes.slice(range)).expect("a client decodes it");
            for record in set.records {
                if let Some(last) = seen.last() {
                    assert!(
                        record.offset > last.offset,
                        "offsets strictly increase: {} after {}",
                        record.offset,
                        last.offset
                    );
                }
                let key = record.key.map(|k| k.to_vec()).unwrap_or_default();
                seen.push(Seen { offset: record.offset, key, value: record.value.map(|v| v.to_vec()) });
            }
            offset = header.next_offset();
        }
    }
    seen
}

/// Checks the cleaned log against the model; `clean_below` is the offset below which the log
/// was cleaned (duplicates may remain above it); `expired` is whether tombstones below it
/// have passed their horizon.
fn check_against_model(log: &mut PartitionLog, model: &Model, clean_below: i64, tombstones_expired: bool, seed: u64) {
    let seen = consume_all(log);
    for record in &seen {
        assert_eq!(model.produced.get(&record.offset), Some(record), "seed {seed}: offsets and contents are preserved");
    }
    let mut last_seen: BTreeMap<Vec<u8>, Seen> = BTreeMap::new();
    let mut cleaned_keys = std::collections::BTreeSet::new();
    for record in &seen {
        if record.offset < clean_below {
            assert!(
                cleaned_keys.insert(record.key.clone()),
                "seed {seed}: key {:?} twice in the cleaned region",
                record.key
            );
        }
        last_seen.insert(record.key.clone(), record.clone());
    }
    for (key, latest) in model.latest() {
        match last_seen.get(&key) {
            Some(found) => assert_eq!(found, &latest, "seed {seed}: the last record of a key is its latest"),
            None => assert!(
                latest.value.is_none() && tombstones_expired && latest.offset < clean_below,
                "seed {seed}: key {key:?} lost (latest {latest:?})"
            ),
        }
        if latest.value.is_none() && latest.offset < clean_below && !tombstones_expired {
            assert!(last_seen.contains_key(&key), "seed {seed}: a tombstone stays readable before its horizon");
        }
    }
    assert!(seen.len() <= model.produced.len());
}

fn lock(log: &Mutex<PartitionLog>) -> MutexGuard<'_, PartitionLog> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs passes until the partition needs none (bounded).
fn clean_until_done(
    cleaner: &mut Cleaner,
    log: &Mutex<PartitionLog>,
    state: &mut PartitionCleanState,
    now_ms: i64,
) -> Vec<CleanStats> {
    let mut passes = Vec::new();
    for _ in 0..10_000 {
        if cleaning_priority(&lock(log), state, now_ms).is_none() {
            return passes;
        }
        let stats = cleaner.clean(&|| lock(log), state, now_ms, &|| false).expect("clean");
        passes.push(stats);
    }
    panic!("cleaning did not converge in 10,000 passes");
}

fn open(dir: &std::path::Path, config: LogConfig, clock: &Arc<ManualClock>) -> PartitionLog {
    PartitionLog::open(dir, config, Arc::clone(clock) as Arc<dyn Clock>).expect("log opens")
}

/// The offset below which everything is sealed (and so cleanable).
fn active_base(log: &PartitionLog) -> i64 {
    log.sealed_segments().last().map(|s| s.next_offset).unwrap_or(0)
}

#[test]
fn random_updates_clean_to_the_model_and_tombstones_expire_after_their_horizon() {
    for seed in 0..24u64 {
        let mut rng = Rng(seed);
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(1_000_000));
        let log = Mutex::new(open(dir.path(), compacted_config(1_500 + rng.below(3_000)), &clock));
        let mut model = Model::default();
        let keys = 5 + rng.below(60);
        for _ in 0..(100 + rng.below(300)) {
            append_random(&mut lock(&log), &mut rng, &mut model, keys, clock.now_ms());
            clock.advance(rng.below(3) as i64);
        }
        let mut cleaner = Cleaner::without_fsync(1 << 20);
        let mut state = PartitionCleanState::load(dir.path());
        let passes = clean_until_done(&mut cleaner, &log, &mut state, clock.now_ms());
        assert!(!passes.is_empty(), "seed {seed}: a dirty compacted log is cleaned");
        let removed: u64 = passes.iter().map(|p| p.records_removed).sum();
        assert!(removed > 0, "seed {seed}: updates over {keys} keys leave something to remove");
        let clean_below = active_base(&lock(&log));
        assert_eq!(state.first_dirty_offset, clean_below, "seed {seed}");
        check_against_model(&mut lock(&log), &model, clean_below, false, seed);

        // Not yet past the horizon: another pass keeps the tombstones.
        clock.advance(DELETE_RETENTION_MS / 2);
        clean_until_done(&mut cleaner, &log, &mut state, clock.now_ms());
        check_against_model(&mut lock(&log), &model, clean_below, false, seed);
        // Past it: the tombstones in the cleaned region go.
        clock.advance(DELETE_RETENTION_MS);
        let has_tombstones = state.tombstone_horizon_ms.is_some();
        let passes = clean_until_done(&mut cleaner, &log, &mut state, clock.now_ms());
        if has_tombstones {
            assert!(passes.iter().map(|p| p.tombstones_removed).sum::<u64>() > 0, "seed {seed}");
        }
        check_against_model(&mut lock(&log), &model, clean_below, true, seed);
        assert_eq!(state.tombstone_horizon_ms, None, "seed {seed}: no tombstone left to wait for");

        // The cleaned log survives a restart: indexes rebuilt, checkpoint reloaded.
        let config = lock(&log).config().clone();
        drop(log);
        let mut reopened = open(dir.path(), config, &clock);
        check_against_model(&mut reopened, &model, clean_below, true, seed);
        assert_eq!(PartitionCleanState::load(dir.path()), state, "seed {seed}");
    }
}

#[test]
fn a_tiny_key_map_takes_many_passes_and_converges() {
    for seed in 100..103u64 {
        let mut rng = Rng(seed);
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(0));
        let log = Mutex::new(open(dir.path(), compacted_config(2_000), &clock));
        let mut model = Model::default();
        for _ in 0..400 {
            append_random(&mut lock(&log), &mut rng, &mut model, 300, clock.now_ms());
        }
        // 40 slots hold 36 keys: far fewer than the 300 keys of the dirty section.
        let mut cleaner = Cleaner::without_fsync(ENTRY_BYTES * 40);
        let mut state = PartitionCleanState::load(dir.path());
        let passes = clean_until_done(&mut cleaner, &log, &mut state, clock.now_ms());
        let full = passes.iter().filter(|p| p.map_was_full).count();
        assert!(full >= 5, "seed {seed}: only {full} of {} passes filled the map", passes.len());
        let clean_below = active_base(&lock(&log));
        check_against_model(&mut lock(&log), &model, clean_below, false, seed);
    }
}

#[test]
fn a_crash_at_any_swap_step_is_recovered_on_reopen() {
    for crash in [CrashPoint::Cleaned, CrashPoint::SwapRenamed, CrashPoint::IndexesInstalled] {
        let mut rng = Rng(7);
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(0));
        let config = compacted_config(3_000);
        let log = Mutex::new(open(dir.path(), config.clone(), &clock));
        let mut model = Model::default();
        for _ in 0..200 {
            append_random(&mut lock(&log), &mut rng, &mut model, 10, clock.now_ms());
        }
        let sizes_before: Vec<u64> = lock(&log).sealed_segments().iter().map(|s| s.size).collect();
        let mut cleaner = Cleaner::new(1 << 20);
        cleaner.crash = Some(crash);
        let mut state = PartitionCleanState::load(dir.path());
        assert!(cleaner.clean(&|| lock(&log), &mut state, clock.now_ms(), &|| false).is_err(), "{crash:?}");
        drop(log); // the crash: nothing in memory survives

        let log = Mutex::new(open(dir.path(), config.clone(), &clock));
        let leftovers: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".cleaned") || n.ends_with(".swap"))
            .collect();
        assert!(leftovers.is_empty(), "{crash:?}: recovery leaves no cleaner files: {leftovers:?}");
        let first_size = lock(&log).sealed_segments()[0].size;
        if crash == CrashPoint::Cleaned {
            assert_eq!(first_size, sizes_before[0], "an uncommitted swap is discarded");
        } else {
            assert!(first_size < sizes_before[0], "{crash:?}: a committed swap is finished");
        }
        check_against_model(&mut lock(&log), &model, 0, false, 7);
        let mut cleaner = Cleaner::new(1 << 20);
        let mut state = PartitionCleanState::load(dir.path());
        clean_until_done(&mut cleaner, &log, &mut state, clock.now_ms());
        let clean_below = active_base(&lock(&log));
        check_against_model(&mut lock(&log), &model, clean_below, false, 7);
    }
}

#[test]
fn appends_and_fetches_during_cleaning_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let log = Arc::new(Mutex::new(open(dir.path(), compacted_config(4_000), &clock)));
    let model = Arc::new(Mutex::new(Model::default()));
    {
        let mut rng = Rng(42);
        for _ in 0..300 {
            append_random(&mut lock(&log), &mut rng, &mut model.lock().expect("model"), 40, 0);
        }
    }
    // A fetch that has its slice before the swap reads the old file whole.
    let slice = lock(&log).read(0, 1 << 20).expect("read").expect("data");
    let before = slice.read().expect("reads");
    let writer = {
        let (log, model) = (Arc::clone(&log), Arc::clone(&model));
        std::thread::spawn(move || {
            let mut rng = Rng(43);
            for _ in 0..3_000 {
                append_random(&mut lock(&log), &mut rng, &mut model.lock().expect("model"), 40, 0);
            }
        })
    };
    let mut cleaner = Cleaner::without_fsync(1 << 20);
    let mut state = PartitionCleanState::load(dir.path());
    let mut passes = 0;
    while !writer.is_finished() || passes == 0 {
        cleaner.clean(&|| lock(&log), &mut state, 0, &|| false).expect("clean while appending");
        passes += 1;
    }
    writer.join().expect("writer");
    clean_until_done(&mut cleaner, &log, &mut state, 0);
    let after = slice.read().expect("the old slice still reads");
    assert_eq!(after, before, "a fetch in progress reads the segment it started on");
    let model = model.lock().expect("model");
    let mut log = lock(&log);
    assert_eq!(log.log_end_offset(), *model.produced.keys().next_back().expect("records") + 1);
    let clean_below = active_base(&log);
    check_against_model(&mut log, &model, clean_below, false, 42);
}

#[test]
fn a_log_without_compact_is_never_cleaned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let mut config = compacted_config(1_000);
    config.compaction.enabled = false;
    let mut log = open(dir.path(), config, &clock);
    let mut rng = Rng(1);
    let mut model = Model::default();
    for _ in 0..100 {
        append_random(&mut log, &mut rng, &mut model, 3, 0);
    }
    assert_eq!(cleaning_priority(&log, &PartitionCleanState::load(dir.path()), 0), None);
}

#[test]
fn reads_at_removed_offsets_get_the_next_batch_and_time_lookups_still_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let log = Mutex::new(open(dir.path(), compacted_config(1_500), &clock));
    let mut model = Model::default();
    let mut rng = Rng(9);
    for i in 0..200 {
        append_random(&mut lock(&log), &mut rng, &mut model, 8, i * 10);
    }
    let mut cleaner = Cleaner::without_fsync(1 << 20);
    let mut state = PartitionCleanState::load(dir.path());
    clean_until_done(&mut cleaner, &log, &mut state, 10_000);
    let kept: Vec<i64> = consume_all(&mut lock(&log)).iter().map(|s| s.offset).collect();
    let mut log = lock(&log);
    let end = log.log_end_offset();
    assert!(kept.len() < model.produced.len() / 2, "cleaning removed most records");
    for offset in log.log_start_offset()..end {
        let bytes =
            log.read(offset, 1).expect("read").expect("a batch at or after every offset").read().expect("reads");
        let header = crate::protocol::batch::validate_batch(&bytes).expect("one whole batch");
        assert!(header.last_offset() >= offset, "never a batch wholly before the offset asked for");
        let first_kept = kept.iter().copied().find(|k| *k >= offset).expect("the last record is never removed");
        let set = RecordBatchDecoder::decode(&mut bytes.clone()).expect("decodes");
        let mut served_first = set.records.iter().map(|r| r.offset).find(|o| *o >= offset);
        if served_first.is_none() {
            // A batch keeps its last offset when its last records go (as in Kafka): a client
            // moves on to the batch's next offset, where the next batch holds a record.
            let next = log.read(header.next_offset(), 1).expect("read").expect("a next batch").read().expect("reads");
            let set = RecordBatchDecoder::decode(&mut next.clone()).expect("decodes");
            served_first = set.records.first().map(|r| r.offset);
        }
        assert_eq!(served_first, Some(first_kept), "offset {offset}: the next existing record comes first");
    }
    // Timestamps were 0, 10, 20, ...: a lookup lands on a kept record at or after the time.
    let (found, _) = log.offset_for_timestamp(995).expect("search").expect("found");
    assert!(kept.iter().any(|k| *k >= found), "offset {found} is at or before a kept record");
}

#[test]
fn min_compaction_lag_holds_young_segments_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let mut config = compacted_config(1_500);
    config.compaction.min_compaction_lag_ms = 60_000;
    let log = Mutex::new(open(dir.path(), config, &clock));
    let mut model = Model::default();
    let mut rng = Rng(5);
    for _ in 0..100 {
        append_random(&mut lock(&log), &mut rng, &mut model, 5, clock.now_ms());
    }
    let mut state = PartitionCleanState::load(dir.path());
    assert_eq!(cleaning_priority(&lock(&log), &state, clock.now_ms()), None, "everything is younger than the lag");
    clock.advance(61_000);
    let mut cleaner = Cleaner::without_fsync(1 << 20);
    let passes = clean_until_done(&mut cleaner, &log, &mut state, clock.now_ms());
    assert!(passes.iter().map(|p| p.records_removed).sum::<u64>() > 0, "old enough now");
    let clean_below = active_base(&lock(&log));
    check_against_model(&mut lock(&log), &model, clean_below, false, 5);
}

/// The batches of the log, as raw bytes, in order.
fn raw_batches(log: &mut PartitionLog) -> Vec<bytes::Bytes> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let Some(slice) = log.read(offset, 1 << 20).expect("read") else { break };
        let bytes = slice.read().expect("reads");
        for (header, range) in split_batches(&bytes).expect("valid") {
            out.push(bytes.slice(range));
            offset = header.next_offset();
        }
    }
    out
}

#[test]
fn transactional_and_control_batches_are_left_untouched() {
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let log = Mutex::new(open(dir.path(), compacted_config(1_000), &clock));
    let record = |offset: i64, key: &[u8], transactional: bool, control: bool, producer_id: i64| Record {
        transactional,
        control,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id,
        producer_epoch: if producer_id >= 0 { 0 } else { -1 },
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: if producer_id >= 0 { offset as i32 } else { offset as i32 - 1 },
        timestamp: 0,
        key: Some(bytes::Bytes::copy_from_slice(key)),
        value: Some(bytes::Bytes::from_static(b"old")),
        headers: Default::default(),
    };
    let options = RecordEncodeOptions { version: 2, compression: Compression::Lz4 };
    let mut transactional = bytes::BytesMut::new();
    let records = [record(0, b"key-0", true, false, 1_000), record(1, b"key-1", true, false, 1_000)];
    RecordBatchEncoder::encode(&mut transactional, &records, &options).expect("encodes");
    let mut control = bytes::BytesMut::new();
    RecordBatchEncoder::encode(&mut control, &[record(0, b"\0\0\0\0", false, true, -1)], &options).expect("encodes");
    lock(&log).append(&transactional).expect("append transactional");
    lock(&log).append(&control).expect("append control");
    let mut model = Model::default();
    let mut rng = Rng(3);
    for _ in 0..100 {
        append_random(&mut lock(&log), &mut rng, &mut model, 2, 0);
    }
    let before: Vec<bytes::Bytes> = raw_batches(&mut lock(&log)).into_iter().take(2).collect();
    let mut cleaner = Cleaner::without_fsync(1 << 20);
    let mut state = PartitionCleanState::load(dir.path());
    let passes = clean_until_done(&mut cleaner, &log, &mut state, 0);
    assert!(passes.iter().map(|p| p.records_removed).sum::<u64>() > 0, "the plain updates were compacted");
    let after = raw_batches(&mut lock(&log));
    let mut kept: Vec<_> = after
        .iter()
        .filter(|b| crate::protocol::batch::BatchHeader::parse(b).is_ok_and(|h| h.is_transactional() || h.is_control()))
        .cloned()
        .collect();
    kept.truncate(2);
    assert_eq!(kept, before, "transactional and control batches keep every byte, even superseded keys");
}
