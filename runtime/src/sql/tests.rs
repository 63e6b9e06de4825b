//! SQL end to end on a real broker in a temp dir: answers compared with references computed
//! here from the same generated records, pruning by the indexes, limits, declared schemas,
//! and materialized views across restarts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use bytes::Bytes;
use runnel_broker::config::BrokerConfig;
use runnel_broker::metadata::MetadataCommand;
use runnel_broker::Broker;

use super::query::{QueryLimits, QueryOutput, SqlEngine};
use super::SqlError;
use crate::transform::log_io;
use crate::transform::records::{encode_batch, Outgoing};

fn open(dir: &Path) -> Arc<Broker> {
    let config = BrokerConfig { data_dir: dir.to_path_buf(), ..Default::default() };
    Broker::open(config).expect("broker opens")
}

fn create(broker: &Broker, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    broker
        .propose(MetadataCommand::CreateTopic {
            name: name.into(),
            topic_id: uuid::Uuid::new_v4().to_string(),
            partitions,
            configs: configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        })
        .expect("create topic");
}

/// Appends `(timestamp, key, value)` records to one partition as one batch.
fn produce(broker: &Broker, topic: &str, partition: i32, records: &[(i64, Option<&str>, &str)]) {
    let outgoing: Vec<Outgoing> = records
        .iter()
        .map(|(ts, k, v)| Outgoing {
            timestamp_ms: *ts,
            key: k.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: vec![("source".into(), Some(Bytes::from_static(b"test")))],
        })
        .collect();
    let batch = encode_batch(&outgoing, None).expect("encode");
    log_io::append(broker, topic, partition, &batch).expect("append");
    broker.notify_appended();
}

async fn run(engine: &SqlEngine, sql: &str) -> Result<QueryOutput, SqlError> {
    engine.execute(sql, QueryLimits::default(), None).await
}

async fn query(engine: &SqlEngine, sql: &str) -> QueryOutput {
    run(engine, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Rows as strings, via arrow's display of each value.
fn rows(output: &QueryOutput) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for batch in &output.batches {
        for row in 0..batch.num_rows() {
            all.push(
                batch
                    .columns()
                    .iter()
                    .map(|c| arrow::util::display::array_value_to_string(c, row).unwrap_or_default())
                    .collect(),
            );
        }
    }
    all
}

fn single_i64(output: &QueryOutput) -> i64 {
    let batch: &RecordBatch = output.batches.iter().find(|b| b.num_rows() > 0).expect("a row");
    batch.column(0).as_primitive::<Int64Type>().value(0)
}

/// A seeded generator, so any failure reproduces.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[tokio::test]
async fn group_by_matches_a_reference_and_malformed_rows_are_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(dir.path());
    create(&broker, "clicks", 3, &[]);
    let mut rng = Lcg(42);
    let mut reference: BTreeMap<String, (i64, i64, BTreeSet<i64>)> = BTreeMap::new();
    for partition in 0..3 {
        for chunk in 0..4 {
            let mut records = Vec::new();
            let mut texts = Vec::new();
            for i in 0..250 {
                let user = format!("u{}", rng.next() % 7);
                let amount = (rng.next() % 100) as i64;
                let page = (rng.next() % 5) as i64;
                let entry = reference.entry(user.clone()).or_default();
                entry.0 += 1;
                entry.1 += amount;
                entry.2.insert(page);
                texts.push((1_000 + i, format!(r#"{{"user":"{user}","amount":{amount},"page":{page}}}"#)));
            }
            if chunk == 1 {
                texts.push((5_000, "not json".to_string()));
                texts.push((5_001, r#"{"user":"#.to_string()));
            }
            for (ts, text) in &texts {
                records.push((*ts, Some("k"), text.as_str()));
            }
            produce(&broker, "clicks", partition, &records);
        }
    }
    let engine = SqlEngine::start(Arc::clone(&broker)).await.expect("engine");
    let output = query(
        &engine,
        "SELECT \"user\", COUNT(*) AS n, SUM(amount) AS total, COUNT(DISTINCT page) AS pages \
         FROM clicks WHERE \"user\" IS NOT NULL GROUP BY \"user\" ORDER BY \"user\"",
    )
    .await;
    let expected: Vec<Vec<String>> = reference
        .iter()
        .map(|(user, (n, total, pages))| vec![user.clone(), n.to_string(), total.to_string(), pages.len().to_string()])
        .collect();
    assert_eq!(rows(&output), expected);
    assert_eq!(output.stats.malformed_rows, 6, "two bad values in each of three partitions");
    assert_eq!(output.stats.rows_read, 3 * 4 * 250 + 6);
    let total = query(&engine, "SELECT COUNT(*) FROM clicks").await;
    assert_eq!(single_i64(&total), 3006, "malformed rows are still rows");
    let meta = query(&engine, "SELECT partition, MIN(\"offset\"), MAX(\"offset\"), COUNT(key) FROM clicks GROUP BY partition ORDER BY partition").await;
    assert_eq!(rows(&meta)[1], vec!["1", "0", "1001", "1002"]);
}

#[tokio::test]
async fn a_time_filter_reads_only_the_segments_that_hold_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(dir.path());
    // Small segments: about one batch of 100 records each.
    create(&broker, "events", 1, &[("segment.bytes", "4096")]);
    let base = 1_700_000_000_000i64;
    for batch in 0..50 {
        let texts: Vec<String> = (0..100).map(|i| format!(r#"{{"n":{}}}"#, batch * 100 + i)).collect();
        let records: Vec<(i64, Option<&str>, &str)> =
            texts.iter().enumerate().map(|(i, t)| (base + batch * 60_000 + i as i64, None, t.as_str())).collect();
        produce(&broker, "events", 0, &records);
    }
    let segments = broker.partition("events", 0).expect("partition").log().segment_count();
    assert!(segments >= 40, "expected many segments, got {segments}");
    let engine = SqlEngine::start(Arc::clone(&broker)).await.expect("engine");
    // The last two batches (minutes 48 and 49).
    let from = base + 48 * 60_000;
    let sql = format!("SELECT COUNT(*), MIN(n), MAX(n) FROM events WHERE timestamp >= to_timestamp_millis({from})");
    let output = query(&engine, &sql).await;
    assert_eq!(rows(&output), vec![vec!["200", "4800", "4999"]]);
    assert!(
        output.stats.segments_skipped as usize >= segments - 4,
        "skipped {} of {segments}",
        output.stats.segments_skipped
    );
    assert!(output.stats.rows_read <= 300, "read {} rows for 200", output.stats.rows_read);
    let explain = query(&engine, &format!("EXPLAIN {sql}")).await;
    let text = rows(&explain).concat().join("\n");
    assert!(text.contains("TopicScanExec: topic=events, ranges=[p0: offsets 4800..5000"), "{text}");
    // Offsets and partitions prune too.
    let output =
        query(&engine, "SELECT COUNT(*) FROM events WHERE \"offset\" >= 100 AND \"offset\" < 150 AND partition = 0")
            .await;
    assert_eq!(single_i64(&output), 50);
    assert!(output.stats.rows_read <= 100);
    let output = query(&engine, "SELECT COUNT(*) FROM events WHERE partition = 7").await;
    assert_eq!(single_i64(&output), 0);
    assert_eq!(output.stats.rows_read, 0);
}

#[tokio::test]
async fn declared_schemas_type_the_columns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(dir.path());
    create(&broker, "orders", 1, &[]);
    produce(
        &broker,
        "orders",
        0,
        &[(1, None, r#"{"id":"7","price":2.5,"timestamp":"x"}"#), (2, None, r#"{"id":"8","price":"oops"}"#)],
    );
    let engine = SqlEngine::start(Arc::clone(&broker)).await.expect("engine");
    let inferred = query(&engine, "SELECT id, json_timestamp FROM orders ORDER BY \"offset\"").await;
    assert_eq!(rows(&inferred)[0], vec!["7", "x"]);
    query(&engine, "CREATE TABLE orders (id BIGINT, price DOUBLE)").await;
    let typed = query(&engine, "SELECT SUM(id), SUM(price) FROM orders").await;
    assert_eq!(
        rows(&typed),
        vec![vec!["7", "2.5"]],
        "the second row's price does not decode: its typed columns are null"
    );
    assert_eq!(typed.stats.malformed_rows, 1);
    // The declaration survives a restart.
    drop(engine);
    let engine = SqlEngine::start(Arc::clone(&broker)).await.expect("engine");
    let typed = query(&engine, "SELECT arrow_typeof(id) FROM orders LIMIT 1").await;
    assert_eq!(rows(&typed), vec![vec!["Int64"]]);
    query(&engine, "DROP TABLE orders").await;
    assert!(matches!(run(&engine, "CREATE TABLE nope (a INT)").await, Err(SqlError::UnknownTable(_))));
    assert!(matches!(
        run(&engine, "SELECT * FROM missing").await,
        Err(SqlError::UnknownTable(_)) | Err(SqlError::Plan(_))
    ));
    assert!(matches!(run(&engine, "INSERT INTO orders VALUES (1)").await, Err(SqlError::Plan(_))));
    assert!(matches!(run(&engine, "SELEC 1").await, Err(SqlError::Plan(_))));
}

#[tokio::test]
async fn limits_time_out_cap_memory_and_cancel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(dir.path());
    create(&broker, "big", 1, &[]);
    for chunk in 0..20 {
        let texts: Vec<String> = (0..1000).map(|i| format!(r#"{{"k":"{}-{}","v":{i}}}"#, chunk, i)).collect();
        let records: Vec<(i64, Option<&str>, &str)> = texts.iter().map(|t| (1, None, t.as_str())).collect();
        produce(&broker, "big", 0, &records);
    }
    let engine = Arc::new(SqlEngine::start(Arc::clone(&broker)).await.expect("engine"));
    // 4·10⁸ string concatenations: about 2 s on this 2-core machine. (`a.v + b.v` took 0.3 s
    // idle, too close to the limit; a three-way join runs out of memory before it times out.)
    let slow = "SELECT COUNT(*) FROM big a, big b WHERE a.k || b.k = 'never'";
    let limits = QueryLimits { timeout: Duration::from_millis(300), ..QueryLimits::default() };
    let timed_out = engine.execute(slow, limits, None).await;
    assert!(matches!(timed_out, Err(SqlError::Timeout(300))), "{:?}", timed_out.map(|o| o.batches));
    let small = QueryLimits { memory_bytes: 1024 * 1024, ..QueryLimits::default() };
    let hungry = engine.execute("SELECT k, COUNT(*) FROM big GROUP BY k ORDER BY k", small, None).await;
    assert!(matches!(hungry, Err(SqlError::ResourcesExhausted(_))), "{hungry:?}");
    let running = Arc::clone(&engine);
    let handle = tokio::spawn(async move { running.execute(slow, QueryLimits::default(), Some("q1".into())).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !engine.cancel("q1") {
        assert!(Instant::now() < deadline, "the query never showed up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(matches!(handle.await.expect("join"), Err(SqlError::Cancelled)));
    let capped =
        engine.execute("SELECT v FROM big", QueryLimits { max_rows: 10, ..QueryLimits::default() }, None).await;
    let capped = capped.expect("capped");
    assert!(capped.truncated);
    assert_eq!(capped.batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 10);
}

/// Waits until `sql`'s first column of the first row equals `expected` (views are async).
async fn wait_for_rows(engine: &SqlEngine, sql: &str, expected: &[Vec<String>]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = query(engine, sql).await;
        let found = rows(&output);
        if found == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: expected {expected:?}, found {found:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn tumbling_view_counts_exactly_and_sends_late_events_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(dir.path());
    create(&broker, "clicks", 1, &[]);
    // Event times in seconds, out of order; lateness 5 s, windows of 10 s.
    let times = [1, 3, 12, 2, 15, 9, 27, 4, 22, 31, 18, 45, 33, 29, 44, 60, 38];
    let mut reference: HashMap<(i64, String), i64> = HashMap::new();
    let mut late = 0;
    let mut max_seen = i64::MIN;
    let mut records = Vec::new();
    let texts: Vec<String> =
        times.iter().enumerate().map(|(i, t)| format!(r#"{{"user":"u{}","t":{}}}"#, i % 2, t * 1000)).collect();
    for (i, t) in times.iter().enumerate() {
        let ms = t * 1000;
        max_seen = max_seen.max(ms);
        let window = ms.div_euclid(10_000) * 10_000;
        if window + 10_000 <= max_seen - 5_000 {
            late += 1;
        } else {
            *reference.entry((window, format!("u{}", i % 2))).or_default() += 1;
        }
        records.push((ms, Some("k"), texts[i].as_str()));
    }
    produce(&broker, "clicks", 0, &records);
    let engine = SqlEngine::start(Arc::clone(&broker)).await.expect("engine");
    query(
        &engine,
        "CREATE MATERIALIZED VIEW per_user WITH (lateness = '5 seconds') AS \
         SELECT \"user\", COUNT(*) AS n FROM clicks GROUP BY \"user\", TUMBLE(timestamp, INTERVAL '10' SECOND)",
    )
    .await;
    // Final emission: only windows the watermark (60 - 5 = 55 s) has passed.
    let mut expected: Vec<Vec<String>> = reference
        .iter()
        .filter(|((window, _), _)| window + 10_000 <= 55_000)
        .map(|((window, user), n)| vec![window.to_string(), user.clone(), n.to_string()])
        .collect();
    expected.sort();
    let sql_ms = "SELECT CAST(window_start AS BIGINT) AS w, \"user\", n FROM per_user ORDER BY w, \"user\"";
    wait_for_rows(&engine, sql_ms, &expected).await;
    let late_count = query(&engine, "SELECT COUNT(*) FROM \"per_user.late\"").await;
    assert_eq!(single_i64(&late_count), late);
    assert!(late > 0, "the data has late events");
    let shown = query(&engine, "SHOW MATERIALIZED VIEWS").await;
    let shown = rows(&shown);
    assert_eq!(shown[0][0], "per_user");
    assert_eq!(shown[0][1], "RUNNING");
    // Restart: the state comes back, nothing is counted twice.
    engine.views().shutdown().await;
    drop(engine);
    let engine = SqlEngine::start(Arc::clone(&broker)).await.expect("engine");
    produce(&broker, "clicks", 0, &[(100_000, Some("k"), r#"{"user":"u0"}"#)]);
    for ((window, user), n) in &reference {
        if window + 10_000 > 55_000 {
            expected.push(vec![window.to_string(), user.clone(), n.to_string()]);
        }
    }
    expected.sort();
    wait_for_rows(&engine, sql_ms, &expected).await;
    query(&engine, "DROP MATERIALIZED VIEW per_user").await;
    assert!(broker.topic("per_user").is_none());
    assert!(run(&engine, "SELECT * FROM per_user").await.is_err());
}

#[tokio::test]
async fn unwindowed_and_hopping_views_and_stream_views() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(dir.path());
    create(&broker, "bids", 2, &[]);
    let mut rng = Lcg(7);
    let mut texts = Vec::new();
    for i in 0..2000i64 {
        let auction = rng.next() % 10;
        let price = rng.next() % 1000;
        texts.push((i, auction, price, format!(r#"{{"auction":{auction},"price":{price},"ts":{}}}"#, i * 10)));
    }
    let mut by_auction: BTreeMap<u64, (i64, u64, u64, f64)> = BTreeMap::new();
    for (_, auction, price, _) in &texts {
        let e = by_auction.entry(*auction).or_insert((0, u64::MAX, 0, 0.0));
        e.0 += 1;
        e.1 = e.1.min(*price);
        e.2 = e.2.max(*price);
        e.3 += *price as f64;
    }
    for partition in 0..2 {
        let records: Vec<(i64, Option<&str>, &str)> = texts
            .iter()
            .filter(|(i, ..)| i % 2 == partition as i64)
            .map(|(i, _, _, t)| (*i * 10, Some("k"), t.as_str()))
            .collect();
        produce(&broker, "bids", partition, &records);
    }
    let engine = SqlEngine::start(Arc::clone(&broker)).await.expect("engine");
    query(
        &engine,
        "CREATE MATERIALIZED VIEW stats AS SELECT auction, COUNT(*) AS n, MIN(price) AS lo, MAX(price) AS hi, \
         AVG(price) AS mean FROM bids GROUP BY auction",
    )
    .await;
    let expected: Vec<Vec<String>> = by_auction
        .iter()
        .map(|(a, (n, lo, hi, sum))| {
            vec![a.to_string(), n.to_string(), lo.to_string(), hi.to_string(), format!("{:.3}", sum / *n as f64)]
        })
        .collect();
    wait_for_rows(&engine, "SELECT auction, n, lo, hi, ROUND(mean, 3) FROM stats ORDER BY auction", &expected).await;
    // Hopping windows on a column's event time, emitted on every update. The two partitions
    // are read in turn, so their event times interleave coarsely: a lateness above the data's
    // 20 s span keeps every event on time.
    query(
        &engine,
        "CREATE MATERIALIZED VIEW hot WITH (emit = 'update', lateness = '1 minute') AS SELECT auction, COUNT(*) AS n FROM bids \
         GROUP BY auction, HOP(to_timestamp_millis(ts), INTERVAL '2' SECOND, INTERVAL '10' SECOND)",
    )
    .await;
    let mut hop: BTreeMap<(i64, u64), i64> = BTreeMap::new();
    for (i, auction, ..) in &texts {
        let ms = i * 10;
        let last = ms.div_euclid(2000) * 2000;
        let mut start = last - 8000;
        while start <= last {
            *hop.entry((start, *auction)).or_default() += 1;
            start += 2000;
        }
    }
    let total: i64 = hop.values().sum();
    wait_for_rows(&engine, "SELECT SUM(n) FROM hot", &[vec![total.to_string()]]).await;
    let groups = query(&engine, "SELECT COUNT(*) FROM hot").await;
    assert_eq!(single_i64(&groups), hop.len() as i64);
    // A stream view: filter and projection, one output row per input row.
    query(
        &engine,
        "CREATE MATERIALIZED VIEW cheap AS SELECT auction, price * 2 AS doubled FROM bids WHERE price < 100",
    )
    .await;
    let cheap = texts.iter().filter(|(_, _, p, _)| *p < 100).count();
    wait_for_rows(&engine, "SELECT COUNT(*) FROM cheap", &[vec![cheap.to_string()]]).await;
    let doubled = query(&engine, "SELECT MAX(doubled) FROM cheap").await;
    let max = texts.iter().filter(|(_, _, p, _)| *p < 100).map(|(_, _, p, _)| p * 2).max().expect("some");
    assert_eq!(rows(&doubled), vec![vec![max.to_string()]]);
    // Refusals are clear.
    for bad in [
        "CREATE MATERIALIZED VIEW x AS SELECT a.auction FROM bids a JOIN bids b ON a.auction = b.auction",
        "CREATE MATERIALIZED VIEW x WITH (emit = 'final') AS SELECT auction, COUNT(*) FROM bids GROUP BY auction",
        "CREATE MATERIALIZED VIEW x WITH (colour = 'red') AS SELECT auction FROM bids",
        "CREATE MATERIALIZED VIEW bids AS SELECT auction FROM bids",
        "CREATE MATERIALIZED VIEW x AS SELECT auction, COUNT(*) FROM nope GROUP BY auction",
    ] {
        assert!(run(&engine, bad).await.is_err(), "{bad}");
    }
    let avg: f64 = {
        let output = query(&engine, "SELECT AVG(price) FROM bids").await;
        output.batches[0].column(0).as_primitive::<Float64Type>().value(0)
    };
    assert!(avg > 0.0);
    engine.views().shutdown().await;
}
