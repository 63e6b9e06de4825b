//! `runnel bench`: drives a running Runnel (or any Kafka broker) with librdkafka and reports
//! throughput and latency as ratios to this machine's ceiling, measured in the same run.
//!
//! The ceiling is the same bytes pushed through a raw loopback TCP socket into a file: what a
//! broker could do if protocol, batching and bookkeeping cost nothing.
//!
//! ```text
//! runnel bench all --records 200000 --record-size 1024 --partitions 6
//! ```

mod ceiling;
pub mod compaction;
mod connect;
mod cpu;
mod group;
mod kafka;
mod native_batch;
mod sql;
mod transform;

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};

pub use ceiling::measure_ceiling;
pub use cpu::CpuUse;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Produce throughput (MB/s, records/s) and its ratio to the ceiling
    Produce(BenchArgs),
    /// Consume throughput from the start of a topic and its ratio to the ceiling (fills the topic first; a `--topic` that already holds `--records` is read as it is)
    Consume(BenchArgs),
    /// End-to-end latency (produce → consume) at a fixed rate: p50/p99/p999 (`--clients` producers share the rate, as many consumers the partitions)
    E2e(E2eArgs),
    /// The pipeline's peak: the e2e clients producing flat out while the consumers read along; records/s until the consumers hold every record
    Pipeline(BenchArgs),
    /// Everything in one run: ceiling, produce acks=1 and acks=all, consume, e2e at half of the lower of the produce and consume peaks, the pipeline's peak and e2e at half of it
    All(BenchArgs),
    /// Consumer-group throughput: the same topic read by groups of each size in `--members`
    Group(GroupArgs),
    /// WASM transforms on an embedded broker: WASM vs native closure (host and pipeline),
    /// the latency a transform adds, and produce latency while hostile modules spin
    Transform(transform::TransformArgs),
    /// Hosted connectors on an embedded broker: PostgreSQL sink rows/s against `psql \copy` of
    /// the same rows in the same run, and source throughput
    Connect(connect::ConnectArgs),
    /// SQL on an embedded broker: an ad-hoc GROUP BY against DuckDB on the same records, and
    /// continuous Nexmark queries (q1, q2, q5, q7) in events/s per core
    Sql(sql::SqlArgs),
    /// Log cleaner throughput (MB/s read and written, share kept) on a generated log, in process
    Compaction(compaction::CompactionArgs),
}

#[derive(Args, Debug, Clone)]
pub struct GroupArgs {
    #[command(flatten)]
    pub common: BenchArgs,
    /// Group sizes to measure, each a fresh group reading the whole topic
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub members: Vec<u32>,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Kafka bootstrap address(es)
    #[arg(long, env = "RUNNEL_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Admin HTTP address: the broker's CPU time is read from its /metrics before and after each
    /// phase (left out when it does not answer)
    #[arg(long, env = "RUNNEL_ADMIN", default_value = "http://127.0.0.1:9644")]
    pub admin: String,
    /// Records to send
    #[arg(long, default_value_t = 200_000)]
    pub records: u64,
    /// Bytes of each record value
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Partitions of the benchmark topic (created if missing)
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Producer acks
    #[arg(long, value_enum, default_value_t = Acks::One)]
    pub acks: Acks,
    /// Producer compression
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Topic to use (default: a fresh one per run)
    #[arg(long)]
    pub topic: Option<String>,
    /// librdkafka clients run in parallel threads (records, or partitions for consumers, are
    /// split between them): one client's per-record cost can cap a run before the broker does
    #[arg(long, default_value_t = 2)]
    pub clients: u32,
    /// librdkafka property for every producer and consumer the run creates, `KEY=VALUE`
    /// (like kcat's -X); applied after the benchmark's own settings, so it overrides them
    #[arg(short = 'X', long = "client-config", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub client_config: Vec<(String, String)>,
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

#[derive(Args, Debug, Clone)]
pub struct E2eArgs {
    #[command(flatten)]
    pub common: BenchArgs,
    /// Records per second to send; the issue's target is measured at half of peak
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    #[value(name = "0")]
    Zero,
    #[value(name = "1")]
    One,
    #[value(name = "all")]
    All,
}

impl Acks {
    fn as_config(self) -> &'static str {
        match self {
            Acks::Zero => "0",
            Acks::One => "1",
            Acks::All => "all",
        }
    }
}

/// One throughput result.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub bytes: u64,
    pub records: u64,
    pub elapsed: Duration,
    /// What the clients and the broker spent meanwhile (runs against a broker only).
    pub cpu: Option<CpuUse>,
}

impl Throughput {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub count: u64,
    /// What the clients and the broker spent from the first send until the last record arrived.
    pub cpu: Option<CpuUse>,
    /// Bytes of record values carried.
    pub bytes: u64,
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Produce(args) => {
            let ceiling = report_ceiling(&args)?;
            let topic = kafka::prepare_topic(&args)?;
            let result = kafka::produce(&args, &topic)?;
            kafka::remove_scratch_topic(&args, &topic);
            report("produce", &args, result, ceiling);
        }
        BenchCommand::Consume(args) => {
            let ceiling = report_ceiling(&args)?;
            let topic = kafka::prepare_topic(&args)?;
            // A named topic that already holds the records is read as it is, so the consume
            // can be measured (or profiled) apart from the produce that filled it.
            let present = if args.topic.is_some() { kafka::records_in(&args, &topic)? } else { 0 };
            if present < args.records {
                kafka::produce(&BenchArgs { records: args.records - present, ..args.clone() }, &topic)?;
            }
            let result = kafka::consume(&args, &topic)?;
            kafka::remove_scratch_topic(&args, &topic);
            report("consume", &args, result, ceiling);
        }
        BenchCommand::E2e(args) => {
            let topic = kafka::prepare_topic(&args.common)?;
            let latency = kafka::end_to_end(&args.common, &topic, args.rate)?;
            kafka::remove_scratch_topic(&args.common, &topic);
            report_latency(args.rate, latency);
        }
        BenchCommand::Pipeline(args) => {
            let topic = kafka::prepare_topic(&args)?;
            let result = kafka::pipeline_peak(&args, &topic)?;
            kafka::remove_scratch_topic(&args, &topic);
            report_plain("pipeline peak", &args, result);
        }
        BenchCommand::All(args) => run_all(args)?,
        BenchCommand::Group(args) => run_group(args)?,
        BenchCommand::Transform(args) => transform::run(args)?,
        BenchCommand::Compaction(args) => compaction::report(&args)?,
        BenchCommand::Connect(args) => connect::run(args)?,
        BenchCommand::Sql(args) => sql::run(args)?,
    }
    Ok(())
}

fn run_all(args: BenchArgs) -> anyhow::Result<()> {
    let ceiling = report_ceiling(&args)?;
    let acks1 = BenchArgs { acks: Acks::One, topic: None, ..args.clone() };
    let topic = kafka::prepare_topic(&acks1)?;
    let produce1 = kafka::produce(&acks1, &topic)?;
    report("produce acks=1", &acks1, produce1, ceiling);
    let consume = kafka::consume(&acks1, &topic)?;
    kafka::remove_scratch_topic(&acks1, &topic);
    report("consume", &acks1, consume, ceiling);
    let acks_all = BenchArgs { acks: Acks::All, topic: None, ..args.clone() };
    let topic_all = kafka::prepare_topic(&acks_all)?;
    let produce_all = kafka::produce(&acks_all, &topic_all)?;
    kafka::remove_scratch_topic(&acks_all, &topic_all);
    report("produce acks=all", &acks_all, produce_all, ceiling);
    // A record's end-to-end trip needs both sides: the lower of the two one-way peaks.
    let half_peak = (produce1.records_per_s().min(consume.records_per_s()) / 2.0).max(1.0) as u64;
    let latency = e2e_at(&args, half_peak)?;
    // Both directions at once share the cores with the clients here, so the pipeline's own
    // peak is lower than either one-way peak; latency at half of it is the figure with
    // headroom left, which is what the one-way reading assumes of a broker whose clients run
    // elsewhere.
    let pipeline_args = BenchArgs { acks: Acks::One, topic: None, ..args.clone() };
    let topic_pipeline = kafka::prepare_topic(&pipeline_args)?;
    let pipeline = kafka::pipeline_peak(&pipeline_args, &topic_pipeline)?;
    kafka::remove_scratch_topic(&pipeline_args, &topic_pipeline);
    report_plain("pipeline peak", &pipeline_args, pipeline);
    let half_pipeline = (pipeline.records_per_s() / 2.0).max(1.0) as u64;
    let pipeline_latency = e2e_at(&args, half_pipeline)?;
    println!();
    println!(
        "summary ({} records of {} B, {} partitions, compression {}, {} clients):",
        args.records, args.record_size, args.partitions, args.compression, args.clients
    );
    println!("  ceiling (loopback TCP → file)   {:>9.1} MB/s", ceiling.mb_per_s());
    let stolen =
        [ceiling.cpu, produce1.cpu, consume.cpu, produce_all.cpu, latency.cpu, pipeline.cpu, pipeline_latency.cpu]
            .iter()
            .filter_map(|cpu| cpu.and_then(|c| c.machine))
            .map(|m| m.stolen)
            .fold(None, |most: Option<f64>, s| Some(most.map_or(s, |m| m.max(s))));
    if let Some(stolen) = stolen {
        println!(
            "  stolen by the host               {:>6.1} %   (the most of any phase; a busy host slows every phase, ceiling included){}",
            stolen * 100.0,
            if stolen > STOLEN_NOISE { " — too much: these ratios measure the host; run again" } else { "" }
        );
    }
    println!("  produce acks=1 / ceiling        {:>9.2}   (target ≥ 0.60)", produce1.mb_per_s() / ceiling.mb_per_s());
    println!(
        "  produce acks=all / acks=1       {:>9.2}   (target ≥ 0.50)",
        produce_all.mb_per_s() / produce1.mb_per_s()
    );
    println!("  consume / ceiling               {:>9.2}   (target ≥ 0.80)", consume.mb_per_s() / ceiling.mb_per_s());
    // What the consume target asks of this machine at the CPU cost per byte this run measured
    // (clients and broker share its cores here).
    if let Some(cores) = cores_needed(consume.cpu, consume.bytes, 0.8 * ceiling.mb_per_s()) {
        println!(
            "    0.80 of the ceiling ({:.0} MB/s) at this run's consume cost needs ≈ {cores:.1} cores (here: {})",
            0.8 * ceiling.mb_per_s(),
            consume.cpu.map_or(1, |c| c.cores)
        );
    }
    println!(
        "  e2e p99 at half peak ({half_peak} rec/s) {:>6.2} ms (target < 5 ms){}",
        latency.p99_us as f64 / 1000.0,
        busy(latency.cpu)
    );
    println!(
        "  pipeline peak / lower one-way   {:>9.2}   ({:.0} rec/s with both directions at once)",
        pipeline.records_per_s() / produce1.records_per_s().min(consume.records_per_s()).max(1e-9),
        pipeline.records_per_s()
    );
    println!(
        "  e2e p99 at half pipeline peak ({half_pipeline} rec/s) {:>6.2} ms{}",
        pipeline_latency.p99_us as f64 / 1000.0,
        busy(pipeline_latency.cpu)
    );
    Ok(())
}

/// Above this share of the machine's time taken by the hypervisor during any phase, a run's
/// ratios say more about the host than about the broker: on this project's VM, runs with
/// 13-57 % stolen had ceilings of 0.5-1.1 GB/s against 1.4-2.1 GB/s with under 5 % stolen.
const STOLEN_NOISE: f64 = 0.05;

/// ", cores N % busy" for a summary line, when the run knows it.
fn busy(cpu: Option<CpuUse>) -> String {
    cpu.and_then(|c| c.busy()).map(|b| format!(", cores {:.0} % busy", b * 100.0)).unwrap_or_default()
}

/// An e2e run at `rate` on a fresh topic, about ten seconds long at most, reported.
fn e2e_at(args: &BenchArgs, rate: u64) -> anyhow::Result<Latency> {
    let e2e_args = BenchArgs { acks: Acks::One, topic: None, records: args.records.min(rate * 10), ..args.clone() };
    let topic = kafka::prepare_topic(&e2e_args)?;
    let latency = kafka::end_to_end(&e2e_args, &topic, rate)?;
    kafka::remove_scratch_topic(&e2e_args, &topic);
    report_latency(rate, latency);
    Ok(latency)
}

fn run_group(args: GroupArgs) -> anyhow::Result<()> {
    let common = args.common;
    let topic = kafka::prepare_topic(&common)?;
    let produced = kafka::produce(&common, &topic)?;
    report_plain("produce", &common, produced);
    let mut runs = Vec::new();
    for members in &args.members {
        let run = group::consume_with_group(&common, &topic, *members)?;
        println!(
            "group of {}: formed in {:.2} s, then {:.1} MB/s, {:.0} records/s ({} records in {:.2} s)",
            run.members,
            run.join.as_secs_f64(),
            run.throughput.mb_per_s(),
            run.throughput.records_per_s(),
            run.throughput.records,
            run.throughput.elapsed.as_secs_f64()
        );
        runs.push(run);
    }
    kafka::remove_scratch_topic(&common, &topic);
    if let Some(first) = runs.first() {
        println!();
        println!("summary ({} records of {} B, {} partitions):", common.records, common.record_size, common.partitions);
        for run in &runs {
            println!(
                "  group of {:<2} {:>10.0} records/s = {:.2} of the group of {}",
                run.members,
                run.throughput.records_per_s(),
                run.throughput.records_per_s() / first.throughput.records_per_s().max(1e-9),
                first.members
            );
        }
    }
    Ok(())
}

fn report_plain(name: &str, args: &BenchArgs, result: Throughput) {
    println!(
        "{name}: {:.1} MB/s, {:.0} records/s ({} records of {} B in {:.2} s)",
        result.mb_per_s(),
        result.records_per_s(),
        result.records,
        args.record_size,
        result.elapsed.as_secs_f64()
    );
    report_cpu(result.cpu, result.bytes);
}

/// The CPU line under a result, when the run measured it.
fn report_cpu(cpu: Option<CpuUse>, bytes: u64) {
    if let Some(cpu) = cpu {
        println!("  {}", cpu.describe(bytes));
    }
}

/// Cores that clients and broker together would keep busy moving `mb_per_s` at the CPU cost
/// per byte `cpu` measured, or `None` without the broker's figure.
fn cores_needed(cpu: Option<CpuUse>, bytes: u64, mb_per_s: f64) -> Option<f64> {
    let cpu = cpu?;
    let (clients, broker) = cpu.per_gb(bytes);
    Some((clients + broker?) * mb_per_s / 1000.0)
}

/// Ceiling runs per benchmark; the fastest counts.
const CEILING_RUNS: usize = 3;

/// The machine's ceiling as the best of [`CEILING_RUNS`] runs: whatever else the machine does
/// (page-cache writeback of the broker's data, other processes) only ever slows a run down, so
/// the fastest is the truest figure of what it can do — and the one that makes every ratio
/// against it the least flattering.
fn report_ceiling(args: &BenchArgs) -> anyhow::Result<Throughput> {
    let mut runs = Vec::with_capacity(CEILING_RUNS);
    let meter = cpu::CpuMeter::start(&args.admin);
    for _ in 0..CEILING_RUNS {
        runs.push(measure_ceiling(args.records * args.record_size as u64)?);
    }
    let machine = meter.stop();
    let all: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.mb_per_s())).collect();
    let ceiling = runs.into_iter().max_by(|a, b| a.mb_per_s().total_cmp(&b.mb_per_s())).context("no ceiling run")?;
    println!(
        "ceiling: {:.1} MB/s through loopback TCP into a file ({} bytes; best of {CEILING_RUNS} runs: {} MB/s)",
        ceiling.mb_per_s(),
        ceiling.bytes,
        all.join(", ")
    );
    if let Some(line) = machine.describe_machine() {
        println!("  {line} during the ceiling runs");
    }
    let ceiling = Throughput { cpu: Some(machine), ..ceiling };
    Ok(ceiling)
}

fn report(name: &str, args: &BenchArgs, result: Throughput, ceiling: Throughput) {
    println!(
        "{name}: {:.1} MB/s, {:.0} records/s ({} records of {} B in {:.2} s, acks={}, compression={}, {} clients) = {:.2} of ceiling",
        result.mb_per_s(),
        result.records_per_s(),
        result.records,
        args.record_size,
        result.elapsed.as_secs_f64(),
        args.acks.as_config(),
        args.compression,
        args.clients,
        result.mb_per_s() / ceiling.mb_per_s(),
    );
    report_cpu(result.cpu, result.bytes);
}

fn report_latency(rate: u64, latency: Latency) {
    println!(
        "e2e at {rate} records/s: p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms over {} records",
        latency.p50_us as f64 / 1000.0,
        latency.p99_us as f64 / 1000.0,
        latency.p999_us as f64 / 1000.0,
        latency.max_us as f64 / 1000.0,
        latency.count
    );
    report_cpu(latency.cpu, latency.bytes);
}
