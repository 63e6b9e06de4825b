//! `runnel bench sql`: SQL over topics, on an embedded broker (a temp dir, nothing to start):
//!
//! 1. **Ad-hoc GROUP BY against DuckDB**: `--records` JSON records written to a topic and, the
//!    same bytes, to an NDJSON file; the same GROUP BY timed in Runnel (`SqlEngine`, straight
//!    from the segments) and in DuckDB (Python `duckdb`, `read_json` of the file), in this run.
//!    The answers are compared before any time is reported.
//! 2. **Continuous queries, Nexmark**: `--nexmark-events` events from the `nexmark` crate as
//!    JSON in one partition; materialized views for q1 (projection), q2 (filter), q5 (bids per
//!    auction per hopping window; the hottest auction per window is a query over the view) and
//!    q7 (highest price per tumbling window; Nexmark's q7 then joins back to the bid, which
//!    views do not do). Each is timed from CREATE until every event is committed; events/s
//!    per core divides by the CPU seconds the process used meanwhile.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::array::AsArray;
use clap::Args;
use runnel_broker::Broker;
use runnel_runtime::sql::{QueryLimits, SqlEngine};

use crate::transform::{create, encode, open_broker};

#[derive(Args, Debug, Clone)]
pub struct SqlArgs {
    /// Admin HTTP address (unused: this benchmark embeds its own broker)
    #[arg(long, env = "RUNNEL_ADMIN", default_value = "http://127.0.0.1:9644")]
    pub admin: String,
    /// Kafka address (unused: this benchmark embeds its own broker)
    #[arg(long, env = "RUNNEL_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// JSON records for the ad-hoc GROUP BY
    #[arg(long, default_value_t = 10_000_000)]
    pub records: usize,
    /// Partitions of the ad-hoc topic (a scan reads them in parallel)
    #[arg(long, default_value_t = 2)]
    pub partitions: i32,
    /// Timed runs of each engine's query; the best is reported (and all are printed)
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Nexmark events per continuous query
    #[arg(long, default_value_t = 2_000_000)]
    pub nexmark_events: usize,
    /// A Python with the `duckdb` package [default: the test venv, $RUNNEL_VENV or ~/.cache/runnel/venv]
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Only the ad-hoc part
    #[arg(long)]
    pub skip_nexmark: bool,
    /// Only the Nexmark part
    #[arg(long)]
    pub skip_adhoc: bool,
}

const GROUP_BY: &str = "SELECT \"user\", COUNT(*) AS n, SUM(amount) AS total FROM {table} GROUP BY \"user\"";

pub(crate) fn run(args: SqlArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        if !args.skip_adhoc {
            adhoc(&args).await?;
        }
        if !args.skip_nexmark {
            nexmark(&args).await?;
        }
        Ok(())
    })
}

/// A user, amount and page per record, from a seeded generator.
fn click(i: usize, state: &mut u64) -> String {
    *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let r = *state >> 33;
    format!(
        r#"{{"user":"u{}","amount":{},"page":"/p{}","ts":{}}}"#,
        r % 1000,
        (r >> 10) % 1000,
        (r >> 20) % 13,
        1_700_000_000_000u64 + i as u64
    )
}

async fn adhoc(args: &SqlArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = open_broker(dir.path())?;
    create(&broker, "clicks", args.partitions)?;
    let ndjson_path = dir.path().join("clicks.ndjson");
    let started = Instant::now();
    let bytes = write_clicks(&broker, args, &ndjson_path)?;
    println!(
        "ad-hoc: {} records, {:.0} MB of JSON, written to the topic and to NDJSON in {:.1} s",
        args.records,
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let engine = SqlEngine::start(Arc::clone(&broker)).await?;
    let limits = QueryLimits { timeout: Duration::from_secs(3600), max_rows: 1_000_000, ..QueryLimits::default() };
    engine
        .execute("CREATE TABLE clicks (\"user\" VARCHAR, amount BIGINT, page VARCHAR, ts BIGINT)", limits, None)
        .await?;
    let statement = GROUP_BY.replace("{table}", "clicks");
    let mut times = Vec::new();
    let mut answer = (0, 0);
    for _ in 0..args.runs.max(1) {
        let started = Instant::now();
        let output = engine.execute(&statement, limits, None).await?;
        times.push(started.elapsed().as_secs_f64());
        answer = summarize(&output.batches)?;
    }
    let runnel = best(&times);
    println!(
        "  runnel: {} groups, {} rows counted; runs {:?} s, best {runnel:.3} s",
        answer.0,
        answer.1,
        rounded(&times)
    );
    anyhow::ensure!(answer.1 as usize == args.records, "runnel counted {} of {} records", answer.1, args.records);
    match duckdb(args, &ndjson_path)? {
        Some((duck_times, groups, count)) => {
            anyhow::ensure!(
                (groups, count) == answer,
                "DuckDB answered {groups} groups / {count} rows, Runnel {answer:?}: not the same query"
            );
            let duck = best(&duck_times);
            println!(
                "  duckdb: {groups} groups, {count} rows counted; runs {:?} s, best {duck:.3} s",
                rounded(&duck_times)
            );
            println!(
                "  => Runnel runs at {:.2}x DuckDB's speed ({:.1} M records/s vs {:.1} M records/s); target >= 0.50",
                duck / runnel,
                args.records as f64 / runnel / 1e6,
                args.records as f64 / duck / 1e6
            );
        }
        None => println!("  duckdb: not measured (no Python with the duckdb package; see --python)"),
    }
    drop(engine);
    broker.close();
    Ok(())
}

fn write_clicks(broker: &Broker, args: &SqlArgs, ndjson_path: &Path) -> anyhow::Result<usize> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(ndjson_path)?);
    let mut state = 42u64;
    let mut bytes = 0;
    const BATCH: usize = 5000;
    let mut i = 0;
    let mut round = 0;
    while i < args.records {
        let count = BATCH.min(args.records - i);
        let values: Vec<Vec<u8>> = (i..i + count).map(|n| click(n, &mut state).into_bytes()).collect();
        for value in &values {
            file.write_all(value)?;
            file.write_all(b"\n")?;
            bytes += value.len();
        }
        let batch = encode(&values, broker.now_ms())?;
        let partition = round % args.partitions.max(1);
        broker.partition("clicks", partition).context("partition")?.log().append(&batch)?;
        i += count;
        round += 1;
    }
    file.flush()?;
    Ok(bytes)
}

/// (groups, sum of counts) of a GROUP BY answer.
fn summarize(batches: &[arrow::array::RecordBatch]) -> anyhow::Result<(u64, u64)> {
    let mut groups = 0;
    let mut count = 0;
    for batch in batches {
        groups += batch.num_rows() as u64;
        let counts = batch.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        count += counts.iter().flatten().sum::<i64>() as u64;
    }
    Ok((groups, count))
}

const DUCKDB_SCRIPT: &str = r#"
import duckdb, json, sys, time
path, runs = sys.argv[1], int(sys.argv[2])
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
sql = ("SELECT \"user\", COUNT(*) AS n, SUM(amount) AS total FROM read_json(?, format='newline_delimited', "
       "columns={'user': 'VARCHAR', 'amount': 'BIGINT', 'page': 'VARCHAR', 'ts': 'BIGINT'}) GROUP BY \"user\"")
times = []
for _ in range(runs):
    started = time.perf_counter()
    rows = con.execute(sql, [path]).fetchall()
    times.append(time.perf_counter() - started)
print(json.dumps({"times": times, "groups": len(rows), "count": sum(r[1] for r in rows), "threads": con.execute("SELECT current_setting('threads')").fetchone()[0]}))
"#;

/// DuckDB's times, groups and rows counted; `None` without a Python that has duckdb.
fn duckdb(args: &SqlArgs, path: &Path) -> anyhow::Result<Option<(Vec<f64>, u64, u64)>> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let venv = std::env::var("RUNNEL_VENV").unwrap_or_else(|_| format!("{home}/.cache/runnel/venv"));
    let python = args.python.clone().unwrap_or_else(|| PathBuf::from(format!("{venv}/bin/python")));
    if !python.exists() {
        return Ok(None);
    }
    let output = std::process::Command::new(&python)
        .arg("-c")
        .arg(DUCKDB_SCRIPT)
        .arg(path)
        .arg(args.runs.max(1).to_string())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No module named 'duckdb'") {
            return Ok(None);
        }
        anyhow::bail!("duckdb failed: {stderr}");
    }
    // The answer is the last line (DuckDB may print before it).
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    let answer: serde_json::Value =
        serde_json::from_str(last).with_context(|| format!("duckdb's answer: {stdout:?}"))?;
    let times = answer["times"].as_array().context("times")?.iter().filter_map(|t| t.as_f64()).collect();
    println!("  duckdb threads: {}", answer["threads"]);
    Ok(Some((times, answer["groups"].as_u64().unwrap_or(0), answer["count"].as_u64().unwrap_or(0))))
}

fn best(times: &[f64]) -> f64 {
    times.iter().copied().fold(f64::INFINITY, f64::min)
}

fn rounded(times: &[f64]) -> Vec<f64> {
    times.iter().map(|t| (t * 1000.0).round() / 1000.0).collect()
}

/// Nexmark's events as JSON, one object per event with `event_type` 0 (person), 1 (auction)
/// or 2 (bid).
fn nexmark_json(event: &nexmark::event::Event) -> String {
    use nexmark::event::Event;
    match event {
        Event::Person(p) => serde_json::json!({
            "event_type": 0, "id": p.id, "name": p.name, "email_address": p.email_address,
            "credit_card": p.credit_card, "city": p.city, "state": p.state, "date_time": p.date_time,
        })
        .to_string(),
        Event::Auction(a) => serde_json::json!({
            "event_type": 1, "id": a.id, "item_name": a.item_name, "initial_bid": a.initial_bid,
            "reserve": a.reserve, "date_time": a.date_time, "expires": a.expires, "seller": a.seller,
            "category": a.category,
        })
        .to_string(),
        Event::Bid(b) => serde_json::json!({
            "event_type": 2, "auction": b.auction, "bidder": b.bidder, "price": b.price,
            "channel": b.channel, "url": b.url, "date_time": b.date_time,
        })
        .to_string(),
    }
}

const NEXMARK_TABLE: &str = "CREATE TABLE nexmark (event_type INT, id BIGINT, auction BIGINT, bidder BIGINT, \
    price BIGINT, channel VARCHAR, url VARCHAR, date_time BIGINT, seller BIGINT, category BIGINT)";

const NEXMARK_QUERIES: [(&str, &str, f64); 4] = [
    ("q1", "SELECT auction, bidder, 0.908 * price AS price, date_time FROM nexmark WHERE event_type = 2", 158_000.0),
    ("q2", "SELECT auction, price FROM nexmark WHERE event_type = 2 AND auction % 123 = 0", 175_000.0),
    (
        "q5",
        "SELECT auction, COUNT(*) AS num FROM nexmark WHERE event_type = 2 \
         GROUP BY auction, HOP(to_timestamp_millis(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND)",
        22_000.0,
    ),
    (
        "q7",
        "SELECT MAX(price) AS maxprice FROM nexmark WHERE event_type = 2 \
         GROUP BY TUMBLE(to_timestamp_millis(date_time), INTERVAL '10' SECOND)",
        12_300.0,
    ),
];

async fn nexmark(args: &SqlArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = open_broker(dir.path())?;
    create(&broker, "nexmark", 1)?;
    let config = nexmark::config::NexmarkConfig { base_time: 1_700_000_000_000, ..Default::default() };
    let generator = nexmark::EventGenerator::new(config);
    let mut values = Vec::with_capacity(5000);
    let mut bytes = 0;
    for event in generator.take(args.nexmark_events) {
        let json = nexmark_json(&event).into_bytes();
        bytes += json.len();
        values.push(json);
        if values.len() == 5000 {
            broker.partition("nexmark", 0).context("partition")?.log().append(&encode(&values, broker.now_ms())?)?;
            values.clear();
        }
    }
    if !values.is_empty() {
        broker.partition("nexmark", 0).context("partition")?.log().append(&encode(&values, broker.now_ms())?)?;
    }
    println!(
        "nexmark: {} events ({:.0} MB of JSON) in one partition; one view task per query",
        args.nexmark_events,
        bytes as f64 / 1e6
    );
    let engine = SqlEngine::start(Arc::clone(&broker)).await?;
    let limits = QueryLimits { timeout: Duration::from_secs(3600), ..QueryLimits::default() };
    engine.execute(NEXMARK_TABLE, limits, None).await?;
    for (name, select, flink) in NEXMARK_QUERIES {
        let cpu_before = process_cpu_seconds();
        let started = Instant::now();
        engine.execute(&format!("CREATE MATERIALIZED VIEW {name} AS {select}"), limits, None).await?;
        wait_processed(&engine, name, args.nexmark_events).await?;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = (process_cpu_seconds() - cpu_before).max(1e-9);
        let per_core = args.nexmark_events as f64 / cpu;
        println!(
            "  {name}: {:.0} events/s wall, {cpu:.2} CPU-s => {:.0} events/s per core = {:.1}x Flink's {:.0} (target 5x)",
            args.nexmark_events as f64 / elapsed,
            per_core,
            per_core / flink,
            flink
        );
        if name == "q5" {
            let hottest = engine
                .execute(
                    "SELECT COUNT(*) AS rows, COUNT(DISTINCT window_start) AS windows FROM (SELECT window_start, \
                     auction, num, RANK() OVER (PARTITION BY window_start ORDER BY num DESC) AS r FROM q5) WHERE r = 1",
                    limits,
                    None,
                )
                .await?;
            let value = |column: usize| {
                hottest
                    .batches
                    .first()
                    .map_or(0, |b| b.column(column).as_primitive::<arrow::datatypes::Int64Type>().value(0))
            };
            println!(
                "      hottest auction per window (a query over the view): {} rows over {} windows",
                value(0),
                value(1)
            );
        }
        engine.execute(&format!("DROP MATERIALIZED VIEW {name}"), limits, None).await?;
    }
    engine.views().shutdown().await;
    broker.close();
    Ok(())
}

async fn wait_processed(engine: &SqlEngine, view: &str, events: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let shown = engine.views().progress(view).context("the view is gone")?;
        anyhow::ensure!(!shown.0.starts_with("FAILED"), "view {view}: {}", shown.0);
        if shown.1 as usize >= events {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "view {view} stalled at {} of {events}", shown.1);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// User + system CPU seconds of this process so far (Linux: /proc/self/stat, 100 ticks/s).
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the parenthesised command name: state is field 3; utime 14, stime 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
