//! `runnel bench compaction`: the log cleaner's throughput, in process, on a generated log.
//!
//! Writes `--updates` records over `--keys` keys (seeded, uniformly random keys) into a
//! compacted partition log in a temporary directory, in batches of `--batch-records` with the
//! chosen compression, then runs cleaner passes until the partition needs none and reports
//! MB/s read (key map + rewrite) and written, and how much of the log was kept. The log is
//! fresh in the page cache, so the figure is the cleaner's CPU cost plus page-cache I/O and
//! the fsyncs of the swap.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::Args;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use runnel_broker::config::{CompactionConfig, LogConfig};
use runnel_broker::storage::cleaner::{cleaning_priority, CleanStats, Cleaner, PartitionCleanState};
use runnel_broker::storage::{Clock, PartitionLog, SystemClock};

#[derive(Args, Debug, Clone)]
pub struct CompactionArgs {
    /// Records written before cleaning (updates of the keys)
    #[arg(long, default_value_t = 1_000_000)]
    pub updates: u64,
    /// Distinct keys the updates go to
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Bytes of each value
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Records per batch
    #[arg(long, default_value_t = 200)]
    pub batch_records: u64,
    /// Batch compression: none, gzip, snappy, lz4, zstd
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// segment.bytes of the generated log (the active, last segment is never cleaned)
    #[arg(long, default_value_t = 1024 * 1024)]
    pub segment_bytes: u64,
    /// log.cleaner.dedupe.buffer.size: the key map's budget (small values force several passes)
    #[arg(long, default_value_t = 128 * 1024 * 1024)]
    pub dedupe_buffer_bytes: usize,
    /// Directory for the generated log (default: a temporary directory, removed afterwards)
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Seed of the key sequence
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// What one benchmark run measured.
#[derive(Debug, Clone)]
pub struct CompactionResult {
    pub log_bytes_before: u64,
    pub log_bytes_after: u64,
    pub passes: usize,
    pub stats: CleanStats,
    pub elapsed: Duration,
}

impl CompactionResult {
    fn mb_per_s(&self, bytes: u64) -> f64 {
        bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn compression(name: &str) -> anyhow::Result<Compression> {
    Ok(match name {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        other => anyhow::bail!("unknown compression {other}"),
    })
}

/// splitmix64: the key sequence is a function of the seed.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn log_config(args: &CompactionArgs) -> LogConfig {
    LogConfig {
        segment_bytes: args.segment_bytes,
        segment_ms: i64::MAX / 2,
        retention_ms: -1,
        retention_bytes: -1,
        compaction: CompactionConfig { enabled: true, min_cleanable_dirty_ratio: 0.0, ..CompactionConfig::default() },
        index_interval_bytes: 4096,
        max_message_bytes: 64 * 1024 * 1024,
        flush_messages: u64::MAX,
        flush_ms: i64::MAX / 2,
    }
}

/// Writes the updates into the log, batch by batch.
fn generate(log: &mut PartitionLog, args: &CompactionArgs, now_ms: i64) -> anyhow::Result<()> {
    let codec = compression(&args.compression)?;
    let options = RecordEncodeOptions { version: 2, compression: codec };
    let value = Bytes::from(vec![b'v'; args.value_size]);
    let mut random = args.seed;
    let mut written = 0u64;
    while written < args.updates {
        let count = args.batch_records.min(args.updates - written).max(1);
        let records: Vec<Record> = (0..count)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // The encoder starts a new batch when offset minus sequence changes.
                sequence: i as i32 - 1,
                timestamp: now_ms,
                key: Some(Bytes::from(format!("key-{:012}", next_random(&mut random) % args.keys.max(1)))),
                value: Some(value.clone()),
                headers: Default::default(),
            })
            .collect();
        let mut batch = BytesMut::new();
        RecordBatchEncoder::encode(&mut batch, &records, &options)?;
        log.append(&batch)?;
        written += count;
    }
    log.flush()?;
    Ok(())
}

fn lock(log: &Mutex<PartitionLog>) -> MutexGuard<'_, PartitionLog> {
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Generates the log and cleans it until no pass is due (at most 100,000 passes).
pub fn run(args: &CompactionArgs) -> anyhow::Result<CompactionResult> {
    let temp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| temp.path().join("bench-compaction-0"));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut log = PartitionLog::open(&dir, log_config(args), Arc::clone(&clock))?;
    let generating = Instant::now();
    generate(&mut log, args, clock.now_ms())?;
    let log_bytes_before = log.size_bytes();
    println!(
        "generated {} updates over {} keys: {:.1} MB in {} segments in {:.2} s",
        args.updates,
        args.keys,
        log_bytes_before as f64 / 1e6,
        log.segment_count(),
        generating.elapsed().as_secs_f64()
    );
    let log = Mutex::new(log);
    let mut cleaner = Cleaner::new(args.dedupe_buffer_bytes);
    let mut state = PartitionCleanState::load(&dir);
    let mut total = CleanStats::default();
    let mut passes = 0;
    let started = Instant::now();
    while passes < 100_000 && cleaning_priority(&lock(&log), &state, clock.now_ms()).is_some() {
        let stats = cleaner.clean(&|| lock(&log), &mut state, clock.now_ms(), &|| false)?;
        total.map_bytes_read += stats.map_bytes_read;
        total.bytes_read += stats.bytes_read;
        total.bytes_written += stats.bytes_written;
        total.bytes_replaced += stats.bytes_replaced;
        total.segments_rewritten += stats.segments_rewritten;
        total.records_removed += stats.records_removed;
        total.cleaned_to_offset = stats.cleaned_to_offset;
        passes += 1;
    }
    let elapsed = started.elapsed();
    let log_bytes_after = lock(&log).size_bytes();
    Ok(CompactionResult { log_bytes_before, log_bytes_after, passes, stats: total, elapsed })
}

/// Runs the benchmark and prints its figures.
pub fn report(args: &CompactionArgs) -> anyhow::Result<()> {
    let result = run(args)?;
    let stats = &result.stats;
    if result.passes == 0 {
        anyhow::bail!("nothing was cleanable: the log fits in its active segment; lower --segment-bytes");
    }
    let read = stats.map_bytes_read + stats.bytes_read;
    println!(
        "compaction: {} passes in {:.2} s; read {:.1} MB = {:.1} MB/s (key map {:.1} MB, rewrite {:.1} MB); \
         wrote {:.1} MB = {:.1} MB/s",
        result.passes,
        result.elapsed.as_secs_f64(),
        read as f64 / 1e6,
        result.mb_per_s(read),
        stats.map_bytes_read as f64 / 1e6,
        stats.bytes_read as f64 / 1e6,
        stats.bytes_written as f64 / 1e6,
        result.mb_per_s(stats.bytes_written),
    );
    println!(
        "  log {:.1} MB → {:.1} MB (kept {:.2} %); {} records removed of {}; cleaned to offset {}; \
         segments rewritten {} ({:.1} MB of input → {:.1} MB)",
        result.log_bytes_before as f64 / 1e6,
        result.log_bytes_after as f64 / 1e6,
        100.0 * result.log_bytes_after as f64 / result.log_bytes_before.max(1) as f64,
        stats.records_removed,
        args.updates,
        stats.cleaned_to_offset,
        stats.segments_rewritten,
        stats.bytes_replaced as f64 / 1e6,
        stats.bytes_written as f64 / 1e6,
    );
    println!(
        "  throughput over the dirty log: {:.1} MB/s ({:.0} records/s)",
        result.mb_per_s(result.log_bytes_before),
        args.updates as f64 / result.elapsed.as_secs_f64().max(1e-9)
    );
    Ok(())
}
