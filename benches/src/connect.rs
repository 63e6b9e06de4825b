//! `runnel bench connect`: hosted connectors on an embedded broker (a temp dir) against a
//! PostgreSQL the benchmark starts itself (initdb + pg_ctl on a free port; or `--postgres-url`).
//!
//! 1. **Sink**: N JSON rows in a topic, the `postgres-sink` connector (insert mode, then upsert
//!    mode, each into a fresh table) timed from creation until every row is in the table — and
//!    `psql \copy` of the same rows (the same CSV the rows make) into an identical table, in the
//!    same run, on the same server. The figure is the ratio sink / COPY.
//!    Also measured: multi-row `INSERT ... VALUES` statements of the same rows, the alternative
//!    to COPY the sink could have used.
//! 2. **Sources**: `datagen-source` (as fast as it goes) and `file-source` (N lines), timed until
//!    the topic holds every record; records/s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use clap::Args;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use runnel_broker::metadata::MetadataCommand;
use runnel_broker::Broker;
use runnel_runtime::connect::ConnectService;
use runnel_runtime::transform::{ComputePool, WasmProcessorFactory};

#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Admin HTTP address (unused: this benchmark embeds its own broker)
    #[arg(long, env = "RUNNEL_ADMIN", default_value = "http://127.0.0.1:9644")]
    pub admin: String,
    /// Kafka address (unused: this benchmark embeds its own broker)
    #[arg(long, env = "RUNNEL_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Rows (and source records) per run
    #[arg(long, default_value_t = 200_000)]
    pub records: usize,
    /// Partitions of the sink's topic
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Sink tasks
    #[arg(long, default_value_t = 2)]
    pub tasks: u32,
    /// Records per sink transaction (the connector's batch.size)
    #[arg(long, default_value_t = 10_000)]
    pub batch_size: u32,
    /// A PostgreSQL to use (e.g. postgresql://postgres@127.0.0.1:5432/postgres) instead of
    /// starting a throwaway one
    #[arg(long)]
    pub postgres_url: Option<String>,
}

/// Bound on each timed run.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

pub(crate) fn run(args: ConnectArgs) -> anyhow::Result<()> {
    let server = match &args.postgres_url {
        Some(_) => None,
        None => Some(pg::Throwaway::start()?),
    };
    let url = args.postgres_url.clone().or_else(|| server.as_ref().map(|s| s.url())).context("no PostgreSQL")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(measure(&args, &url));
    drop(server);
    result
}

async fn measure(args: &ConnectArgs, url: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = open_broker(dir.path())?;
    let rows = rows(args.records);
    fill_topic(&broker, "rows", args.partitions, &rows)?;
    let factory = Arc::new(WasmProcessorFactory::new(None).map_err(|e| anyhow::anyhow!("{e}"))?);
    let service = ConnectService::start(Arc::clone(&broker), factory, ComputePool::new(1))?;
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    println!(
        "connect benchmark: {} rows of ~{} bytes, {} partitions, {} sink tasks, batch.size {}; load average {}",
        rows.len(),
        rows.iter().map(|(_, v)| v.len()).sum::<usize>() / rows.len().max(1),
        args.partitions,
        args.tasks,
        args.batch_size,
        load_average()
    );
    let settings: Vec<tokio_postgres::Row> = client
        .query("SELECT name || '=' || setting FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync', 'wal_level') ORDER BY name", &[])
        .await?;
    let settings: Vec<String> = settings.iter().map(|r| r.get(0)).collect();
    println!("PostgreSQL: {} (the same for \\copy and the sink: one server, default sessions)", settings.join(", "));
    let csv = write_csv(&rows, dir.path())?;
    // Each measurement is bracketed by `\copy` runs and compared with their mean, so that load
    // from other processes that comes or goes during the run lands on both sides.
    let mut copies = vec![copy_run(url, &client, rows.len(), &csv).await?];
    let multi_row = multi_row_baseline(&client, &rows, args.batch_size as usize).await?;
    copies.push(copy_run(url, &client, rows.len(), &csv).await?);
    report("multi-row INSERT (1000 rows/stmt)", rows.len(), multi_row, &copies[copies.len() - 2..]);
    let cases = [
        ("postgres-sink insert", SinkCase { mode: "insert", fresh: true }),
        ("postgres-sink upsert (new keys)", SinkCase { mode: "upsert", fresh: true }),
        ("postgres-sink upsert (keys exist)", SinkCase { mode: "upsert", fresh: false }),
    ];
    for (what, case) in cases {
        let elapsed = sink_run(&service, &client, url, args, &case, rows.len()).await?;
        copies.push(copy_run(url, &client, rows.len(), &csv).await?);
        report(what, rows.len(), elapsed, &copies[copies.len() - 2..]);
    }
    let times: Vec<String> = copies.iter().map(|c| format!("{:.0}", rate(rows.len(), *c))).collect();
    println!("psql \\copy runs (rows/s, in order): {}", times.join(", "));
    sources(&service, &broker, args, &rows, dir.path()).await?;
    println!("load average at the end: {}", load_average());
    service.shutdown().await;
    broker.close();
    Ok(())
}

/// One line: rows/s, and the ratio to the mean time of the `\copy` runs around it.
fn report(what: &str, rows: usize, elapsed: Duration, copies: &[Duration]) {
    let copy = copies.iter().map(Duration::as_secs_f64).sum::<f64>() / copies.len().max(1) as f64;
    println!(
        "{what:<34} {:>10.0} rows/s  ({:.2} s) = {:.0}% of \\copy ({:.0} rows/s, mean of the runs before and after)",
        rate(rows, elapsed),
        elapsed.as_secs_f64(),
        100.0 * copy / elapsed.as_secs_f64(),
        rows as f64 / copy.max(1e-9)
    );
}

async fn sources(
    service: &ConnectService,
    broker: &Broker,
    args: &ConnectArgs,
    rows: &[(String, String)],
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let datagen = source_run(
        service,
        broker,
        "datagen",
        args.records,
        BTreeMap::from([
            ("connector.class".to_string(), "datagen-source".to_string()),
            ("max.records".to_string(), args.records.to_string()),
            ("records.per.second".to_string(), "0".to_string()),
        ]),
    )
    .await?;
    println!("datagen-source:                    {:>10.0} records/s", rate(args.records, datagen));
    let file = dir.join("lines.txt");
    let text: String = rows.iter().map(|(_, v)| format!("{v}\n")).collect();
    std::fs::write(&file, text)?;
    let tail = source_run(
        service,
        broker,
        "filetail",
        args.records,
        BTreeMap::from([
            ("connector.class".to_string(), "file-source".to_string()),
            ("file".to_string(), file.display().to_string()),
            ("poll.interval.ms".to_string(), "10".to_string()),
        ]),
    )
    .await?;
    println!("file-source:                       {:>10.0} records/s", rate(args.records, tail));
    Ok(())
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`), for the record of each run.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn rate(records: usize, elapsed: Duration) -> f64 {
    records as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn open_broker(dir: &std::path::Path) -> anyhow::Result<Arc<Broker>> {
    let mut config = runnel_broker::config::BrokerConfig { data_dir: dir.to_path_buf(), ..Default::default() };
    config.set("log.flush.interval.ms", "9223372036854775807")?;
    Ok(Broker::open(config)?)
}

/// (key, value): `{"id": i}` and a JSON object of six fields, like the README tour's events.
fn rows(count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            let action = ["click", "view", "scroll", "purchase"][i % 4];
            let value = format!(
                r#"{{"user":"u{}","action":"{action}","page":"/p{}","amount":{},"score":{:.3},"ok":{}}}"#,
                i % 97,
                i % 13,
                i * 7 % 1000,
                (i % 1000) as f64 / 7.0,
                i % 2 == 0
            );
            (format!(r#"{{"id":{i}}}"#), value)
        })
        .collect()
}

fn fill_topic(broker: &Broker, topic: &str, partitions: i32, rows: &[(String, String)]) -> anyhow::Result<()> {
    broker.propose(MetadataCommand::CreateTopic {
        name: topic.into(),
        topic_id: format!("{:032x}", std::process::id() as u128 * 7919 + partitions as u128),
        partitions,
        configs: BTreeMap::new(),
    })?;
    for (index, chunk) in rows.chunks(1000).enumerate() {
        let partition = index as i32 % partitions;
        let records: Vec<Record> = chunk
            .iter()
            .enumerate()
            .map(|(i, (k, v))| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32 - 1,
                timestamp: broker.now_ms(),
                key: Some(Bytes::from(k.clone())),
                value: Some(Bytes::from(v.clone())),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions { version: 2, compression: Compression::None },
        )
        .map_err(|e| anyhow::anyhow!("encoding: {e}"))?;
        broker.partition(topic, partition).context("partition")?.log().append(&buf.freeze())?;
    }
    Ok(())
}

/// Every table of the benchmark (`\copy`'s, multi-row INSERT's, the sink's) is made by this
/// DDL: same columns, same primary key (the upsert needs it, so inserts have it too). No
/// autovacuum on them, so that a vacuum of one run's table does not land on the next run.
fn create_table(name: &str) -> String {
    format!(
        "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id bigint PRIMARY KEY, action text, amount bigint, \
         ok boolean, page text, score double precision, \"user\" text) WITH (autovacuum_enabled = false)"
    )
}

/// The rows as the CSV `\copy` loads (columns in the sink's order), written once.
fn write_csv(rows: &[(String, String)], dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let mut csv = String::with_capacity(rows.len() * 80);
    for (key, value) in rows {
        let key: serde_json::Value = serde_json::from_str(key)?;
        let v: serde_json::Value = serde_json::from_str(value)?;
        csv.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            key["id"],
            v["action"].as_str().unwrap_or(""),
            v["amount"],
            v["ok"],
            v["page"].as_str().unwrap_or(""),
            v["score"],
            v["user"].as_str().unwrap_or("")
        ));
    }
    let path = dir.join("rows.csv");
    std::fs::write(&path, csv)?;
    Ok(path)
}

/// `psql \copy` of the CSV into a fresh table, timed from psql's start to its exit. Every run
/// (`\copy`, multi-row INSERT, sink) starts after a CHECKPOINT, so none inherits the dirty
/// buffers and WAL of the run before it.
async fn copy_run(
    url: &str,
    client: &tokio_postgres::Client,
    rows: usize,
    csv: &std::path::Path,
) -> anyhow::Result<Duration> {
    client.batch_execute(&create_table("copy_baseline")).await?;
    client.batch_execute("CHECKPOINT").await?;
    let started = Instant::now();
    let status = std::process::Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c"])
        .arg(format!(
            "\\copy copy_baseline (id, action, amount, ok, page, score, \"user\") FROM '{}' WITH (FORMAT csv)",
            csv.display()
        ))
        .status()
        .context("running psql (apt-get install postgresql-client)")?;
    let elapsed = started.elapsed();
    anyhow::ensure!(status.success(), "psql \\copy failed");
    let copied: i64 = client.query_one("SELECT count(*) FROM copy_baseline", &[]).await?.get(0);
    anyhow::ensure!(copied as usize == rows, "\\copy loaded {copied} of {rows} rows");
    Ok(elapsed)
}

/// The alternative to COPY the issue asks to measure: multi-row `INSERT ... VALUES` statements
/// (1000 rows each, bound parameters, `batch` rows per transaction) over one connection.
async fn multi_row_baseline(
    client: &tokio_postgres::Client,
    rows: &[(String, String)],
    batch: usize,
) -> anyhow::Result<Duration> {
    const ROWS_PER_STATEMENT: usize = 1000;
    client.batch_execute(&create_table("multi_row")).await?;
    client.batch_execute("CHECKPOINT").await?;
    let mut parsed = Vec::with_capacity(rows.len());
    for (key, value) in rows {
        let key: serde_json::Value = serde_json::from_str(key)?;
        let v: serde_json::Value = serde_json::from_str(value)?;
        parsed.push((
            key["id"].as_i64().unwrap_or_default(),
            v["action"].as_str().unwrap_or("").to_string(),
            v["amount"].as_i64().unwrap_or_default(),
            v["ok"].as_bool().unwrap_or_default(),
            v["page"].as_str().unwrap_or("").to_string(),
            v["score"].as_f64().unwrap_or_default(),
            v["user"].as_str().unwrap_or("").to_string(),
        ));
    }
    let placeholders: Vec<String> = (0..ROWS_PER_STATEMENT)
        .map(|r| {
            format!(
                "(${},${},${},${},${},${},${})",
                r * 7 + 1,
                r * 7 + 2,
                r * 7 + 3,
                r * 7 + 4,
                r * 7 + 5,
                r * 7 + 6,
                r * 7 + 7
            )
        })
        .collect();
    let full = format!(
        "INSERT INTO multi_row (id, action, amount, ok, page, score, \"user\") VALUES {}",
        placeholders.join(",")
    );
    let started = Instant::now();
    let statement = client.prepare(&full).await?;
    for transaction in parsed.chunks(batch.max(1)) {
        client.batch_execute("BEGIN").await?;
        for chunk in transaction.chunks(ROWS_PER_STATEMENT) {
            let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::with_capacity(chunk.len() * 7);
            for (id, action, amount, ok, page, score, user) in chunk {
                params.extend([
                    id as &(dyn tokio_postgres::types::ToSql + Sync),
                    action,
                    amount,
                    ok,
                    page,
                    score,
                    user,
                ]);
            }
            if chunk.len() == ROWS_PER_STATEMENT {
                client.execute(&statement, &params).await?;
            } else {
                let tail = format!(
                    "INSERT INTO multi_row (id, action, amount, ok, page, score, \"user\") VALUES {}",
                    placeholders[..chunk.len()].join(",")
                );
                client.execute(tail.as_str(), &params).await?;
            }
        }
        client.batch_execute("COMMIT").await?;
    }
    Ok(started.elapsed())
}

/// One sink run: insert or upsert mode, into a fresh table or (`fresh: false`) into the table
/// the previous upsert run filled, so that every key exists and each row is an update.
struct SinkCase {
    mode: &'static str,
    fresh: bool,
}

async fn sink_run(
    service: &ConnectService,
    client: &tokio_postgres::Client,
    url: &str,
    args: &ConnectArgs,
    case: &SinkCase,
    expected: usize,
) -> anyhow::Result<Duration> {
    let (mode, name) = (case.mode, format!("sink_{}", case.mode));
    // A previous run's positions (the table may not exist yet: that is fine).
    let _ = client.batch_execute(&format!("DELETE FROM runnel_connect_offsets WHERE connector = '{name}'")).await;
    if case.fresh {
        client.batch_execute(&create_table(&name)).await?;
    }
    client.batch_execute("CHECKPOINT").await?;
    let config: BTreeMap<String, String> = [
        ("connector.class", "postgres-sink"),
        ("connection.url", url),
        ("topics", "rows"),
        ("table.name.format", name.as_str()),
        ("insert.mode", mode),
        ("pk.mode", "record_key"),
        ("tasks.max", &args.tasks.to_string()),
        ("batch.size", &args.batch_size.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let started = Instant::now();
    service.create(&name, config).await?;
    // Progress from the tasks' counters (each counts rows once their transaction committed), so
    // the timing puts no query load on PostgreSQL; the table is checked once at the end.
    loop {
        let status = service.status(&name)?;
        anyhow::ensure!(status.tasks.iter().all(|t| t.trace.is_none()), "the sink failed: {:?}", status.tasks);
        let written: u64 = status.tasks.iter().map(|t| t.records).sum();
        if written as usize >= expected {
            break;
        }
        anyhow::ensure!(started.elapsed() < RUN_TIMEOUT, "the sink stalled at {written} of {expected}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let count: i64 = client.query_one(&format!("SELECT count(*) FROM {name}"), &[]).await?.get(0);
    anyhow::ensure!(count as usize == expected, "{name} holds {count} rows, not {expected}");
    service.delete(&name).await?;
    Ok(elapsed)
}

async fn source_run(
    service: &ConnectService,
    broker: &Broker,
    name: &str,
    expected: usize,
    mut config: BTreeMap<String, String>,
) -> anyhow::Result<Duration> {
    let topic = format!("{name}-out");
    config.insert("topic".into(), topic.clone());
    broker.propose(MetadataCommand::CreateTopic {
        name: topic.clone(),
        topic_id: format!("{:032x}", std::process::id() as u128 * 104_729 + name.len() as u128),
        partitions: 4,
        configs: BTreeMap::new(),
    })?;
    let started = Instant::now();
    service.create(name, config).await?;
    loop {
        let total: i64 = (0..4).filter_map(|p| broker.partition(&topic, p)).map(|p| p.log().high_watermark()).sum();
        if total as usize >= expected {
            break;
        }
        anyhow::ensure!(started.elapsed() < RUN_TIMEOUT, "the source stalled at {total} of {expected}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    service.delete(name).await?;
    Ok(elapsed)
}

/// A throwaway PostgreSQL: initdb into a temp dir (as the `postgres` user when run as root,
/// since initdb refuses root), pg_ctl on a free 127.0.0.1 port, stopped on drop.
mod pg {
    use anyhow::Context;

    pub(crate) struct Throwaway {
        dir: std::path::PathBuf,
        port: u16,
        bin: std::path::PathBuf,
    }

    fn bin_dir() -> anyhow::Result<std::path::PathBuf> {
        let mut found: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL is not installed (apt-get install postgresql), or pass --postgres-url")?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .collect();
        found.sort();
        found.pop().context("no initdb under /usr/lib/postgresql/*/bin")
    }

    fn as_postgres(program: &std::path::Path) -> std::process::Command {
        // initdb and postgres refuse to run as root: run them as the postgres user then.
        use std::os::unix::fs::MetadataExt;
        let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        if root {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            std::process::Command::new(program)
        }
    }

    impl Throwaway {
        pub(crate) fn start() -> anyhow::Result<Throwaway> {
            let bin = bin_dir()?;
            let dir = std::env::temp_dir().join(format!("runnel-bench-pg-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let _ = std::process::Command::new("chown").args(["postgres:postgres"]).arg(&dir).status();
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let data = dir.join("data");
            let status = as_postgres(&bin.join("initdb"))
                .args(["-D"])
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "--no-sync"])
                .stdout(std::process::Stdio::null())
                .status()?;
            anyhow::ensure!(status.success(), "initdb failed");
            let options = format!("-p {port} -k {} -c listen_addresses=127.0.0.1", dir.display());
            let status = as_postgres(&bin.join("pg_ctl"))
                .args(["-D"])
                .arg(&data)
                .args(["-l"])
                .arg(dir.join("log"))
                .args(["-o", &options, "-w", "start"])
                .stdout(std::process::Stdio::null())
                .status()?;
            anyhow::ensure!(status.success(), "pg_ctl start failed (log: {})", dir.join("log").display());
            Ok(Throwaway { dir, port, bin })
        }

        pub(crate) fn url(&self) -> String {
            format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
        }
    }

    impl Drop for Throwaway {
        fn drop(&mut self) {
            let _ = as_postgres(&self.bin.join("pg_ctl"))
                .args(["-D"])
                .arg(self.dir.join("data"))
                .args(["-m", "fast", "-w", "stop"])
                .stdout(std::process::Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
