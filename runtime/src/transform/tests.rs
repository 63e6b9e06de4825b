//! The transform service end to end on a real broker in a temp dir, with native processors:
//! outputs, state across restarts, error policies, pause/resume, upgrade, and a crash between
//! the changelog commit and the output appends.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_broker::config::BrokerConfig;
use runnel_broker::metadata::MetadataCommand;
use runnel_broker::Broker;

use super::log_io;
use super::pool::ComputePool;
use super::processor::*;
use super::records::{encode_batch, Outgoing};
use super::service::TransformService;
use super::spec::{OnError, StartFrom, TransformSpec};

/// Fault injection: when set, the next commit stops after its changelog batch, as if the
/// broker died before appending the outputs.
pub(super) static CRASH_AFTER_CHANGELOG: AtomicBool = AtomicBool::new(false);

/// Uppercases values and counts records per key in state; output value `UPPER:count`.
/// A value `boom` fails the batch.
struct Counter {
    state: Arc<SharedState>,
}

impl Processor for Counter {
    fn process(&mut self, records: &[InRecord]) -> Result<Processed, Failure> {
        let state = &self.state;
        let mut staged: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut out = Processed::default();
        for record in records {
            let value = record.value.clone().unwrap_or_default();
            if value.as_ref() == b"boom" {
                return Err(Failure::new("guest", format!("boom at offset {}", record.offset)));
            }
            let key = record.key.clone().unwrap_or_default().to_vec();
            let previous = staged
                .get(&key)
                .copied()
                .or_else(|| state.get(&key).and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()));
            let count = previous.unwrap_or(0) + 1;
            staged.insert(key, count);
            let upper = String::from_utf8_lossy(&value).to_uppercase();
            out.records.push(OutRecord {
                output: 0,
                timestamp_ms: record.timestamp_ms,
                key: record.key.clone(),
                value: Some(Bytes::from(format!("{upper}:{count}"))),
                headers: Vec::new(),
            });
        }
        out.state_changes = staged.into_iter().map(|(k, v)| (k, Some(v.to_string().into_bytes()))).collect();
        Ok(out)
    }
}

/// Modules are a name: `counter` runs [`Counter`]; `bad` is refused at deploy.
struct Factory {
    instances: AtomicUsize,
}

impl ProcessorFactory for Factory {
    fn validate(&self, module: &[u8]) -> Result<(), Failure> {
        match module {
            b"counter" | b"counter-v2" => Ok(()),
            _ => Err(Failure::new("abi", "not a module")),
        }
    }

    fn instantiate(&self, setup: InstanceSetup<'_>) -> Result<Box<dyn Processor>, Failure> {
        self.instances.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(Counter { state: setup.state }))
    }
}

fn open(dir: &Path) -> Arc<Broker> {
    let config = BrokerConfig { data_dir: dir.to_path_buf(), ..Default::default() };
    Broker::open(config).expect("broker opens")
}

fn create(broker: &Broker, name: &str, partitions: i32) {
    broker
        .propose(MetadataCommand::CreateTopic {
            name: name.into(),
            topic_id: uuid::Uuid::new_v4().to_string(),
            partitions,
            configs: BTreeMap::new(),
        })
        .expect("create topic");
}

fn produce(broker: &Broker, topic: &str, partition: i32, records: &[(&str, &str)]) {
    let outgoing: Vec<Outgoing> = records
        .iter()
        .map(|(k, v)| Outgoing {
            timestamp_ms: 1_000,
            key: Some(Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: Vec::new(),
        })
        .collect();
    let batch = encode_batch(&outgoing, None).expect("encode");
    log_io::append(broker, topic, partition, &batch).expect("append");
    broker.notify_appended();
}

/// Every (key, value) of a topic, partition by partition.
type Row = (String, String, Vec<(String, String)>);

fn read_all(broker: &Broker, topic: &str) -> Vec<Row> {
    let partitions = broker.topic(topic).map_or(0, |t| t.partitions);
    let mut all = Vec::new();
    for partition in 0..partitions {
        log_io::scan(broker, topic, partition, |r| {
            let text =
                |b: &Option<Bytes>| b.as_deref().map(|b| String::from_utf8_lossy(b).to_string()).unwrap_or_default();
            let headers = r
                .headers
                .iter()
                .map(|(k, v)| {
                    (k.to_string(), v.as_deref().map(|b| String::from_utf8_lossy(b).to_string()).unwrap_or_default())
                })
                .collect();
            all.push((text(&r.key), text(&r.value), headers));
            Ok(())
        })
        .expect("scan");
    }
    all
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spec(on_error: OnError) -> TransformSpec {
    TransformSpec {
        name: "upper".into(),
        input: "in".into(),
        outputs: vec!["out".into()],
        env: BTreeMap::new(),
        from: StartFrom::Earliest,
        on_error,
        version: 0,
        paused: false,
    }
}

fn factory() -> Arc<Factory> {
    Arc::new(Factory { instances: AtomicUsize::new(0) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_and_state_survive_restarts_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let broker = open(dir.path());
        create(&broker, "in", 2);
        create(&broker, "out", 3);
        produce(&broker, "in", 0, &[("a", "x"), ("b", "y"), ("a", "z")]);
        produce(&broker, "in", 1, &[("c", "w")]);
        let service = TransformService::start(Arc::clone(&broker), factory(), ComputePool::new(2)).expect("start");
        service.deploy(spec(OnError::Skip), Bytes::from_static(b"counter")).await.expect("deploy");
        wait_for("4 outputs", || read_all(&broker, "out").len() == 4).await;
        service.shutdown().await;
        broker.close();
    }
    {
        // The registry brings the transform back; state continues the counts.
        let broker = open(dir.path());
        let service = TransformService::start(Arc::clone(&broker), factory(), ComputePool::new(2)).expect("restart");
        produce(&broker, "in", 0, &[("a", "again")]);
        wait_for("5 outputs", || read_all(&broker, "out").len() == 5).await;
        // Nothing more arrives: no output was repeated by the restart.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut values: Vec<String> = read_all(&broker, "out").into_iter().map(|(_, v, _)| v).collect();
        values.sort();
        assert_eq!(values, vec!["AGAIN:3", "W:1", "X:1", "Y:1", "Z:2"]);
        let info = service.describe("upper").expect("describe");
        assert_eq!((info.processed, info.failed, info.lag), (5, 0, 0));
        service.shutdown().await;
        broker.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_changelog_and_outputs_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let broker = open(dir.path());
        create(&broker, "in", 1);
        create(&broker, "out", 1);
        produce(&broker, "in", 0, &[("a", "1"), ("a", "2")]);
        let service = TransformService::start(Arc::clone(&broker), factory(), ComputePool::new(2)).expect("start");
        service.deploy(spec(OnError::Skip), Bytes::from_static(b"counter")).await.expect("deploy");
        wait_for("2 outputs", || read_all(&broker, "out").len() == 2).await;
        CRASH_AFTER_CHANGELOG.store(true, Ordering::SeqCst);
        produce(&broker, "in", 0, &[("a", "3"), ("b", "4")]);
        wait_for("the injected crash", || service.describe("upper").is_ok_and(|i| i.status == "FAILED")).await;
        assert_eq!(read_all(&broker, "out").len(), 2, "outputs of the crashed commit are not appended yet");
        service.shutdown().await;
        broker.close();
    }
    let broker = open(dir.path());
    let service = TransformService::start(Arc::clone(&broker), factory(), ComputePool::new(2)).expect("restart");
    wait_for("4 outputs", || read_all(&broker, "out").len() == 4).await;
    produce(&broker, "in", 0, &[("a", "5")]);
    wait_for("5 outputs", || read_all(&broker, "out").len() == 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let values: Vec<String> = read_all(&broker, "out").into_iter().map(|(_, v, _)| v).collect();
    assert_eq!(values, vec!["1:1", "2:2", "3:3", "4:1", "5:4"]);
    service.shutdown().await;
    broker.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_policies_skip_dead_letter_and_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(dir.path());
    create(&broker, "in", 1);
    create(&broker, "out", 1);
    produce(&broker, "in", 0, &[("a", "ok")]);
    produce(&broker, "in", 0, &[("a", "boom")]);
    produce(&broker, "in", 0, &[("a", "fine")]);
    let service = TransformService::start(Arc::clone(&broker), factory(), ComputePool::new(2)).expect("start");
    service.deploy(spec(OnError::DeadLetter), Bytes::from_static(b"counter")).await.expect("deploy");
    wait_for("2 outputs", || read_all(&broker, "out").len() == 2).await;
    let dead = read_all(&broker, "upper.dlq");
    assert_eq!(dead.len(), 1);
    let (key, value, headers) = &dead[0];
    assert_eq!((key.as_str(), value.as_str()), ("a", "boom"));
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(header("runnel.source.offset").as_deref(), Some("1"));
    assert!(header("runnel.error").is_some_and(|e| e.contains("boom at offset 1")));
    assert_eq!(service.describe("upper").expect("describe").failed, 1);
    // `stop`: the failing batch halts the instance until resumed; nothing after it runs.
    let stop = TransformSpec {
        name: "halt".into(),
        on_error: OnError::Stop,
        outputs: vec!["out2".into()],
        ..spec(OnError::Stop)
    };
    create(&broker, "out2", 1);
    service.deploy(stop, Bytes::from_static(b"counter")).await.expect("deploy");
    wait_for("halt to fail", || service.describe("halt").is_ok_and(|i| i.status == "FAILED")).await;
    assert_eq!(read_all(&broker, "out2").len(), 1, "only the batch before the failure ran");
    assert!(service.logs("halt").expect("logs").iter().any(|l| l.contains("boom")));
    service.shutdown().await;
    broker.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_upgrade_and_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(dir.path());
    create(&broker, "in", 1);
    create(&broker, "out", 1);
    let factory = factory();
    let service = TransformService::start(Arc::clone(&broker), factory.clone(), ComputePool::new(2)).expect("start");
    assert!(service.deploy(spec(OnError::Skip), Bytes::from_static(b"junk")).await.is_err(), "bad module refused");
    assert!(service.describe("upper").is_err(), "a refused deploy stores nothing");
    let missing = TransformSpec { input: "nope".into(), ..spec(OnError::Skip) };
    assert!(service.deploy(missing, Bytes::from_static(b"counter")).await.is_err());
    service.deploy(spec(OnError::Skip), Bytes::from_static(b"counter")).await.expect("deploy");
    produce(&broker, "in", 0, &[("k", "a")]);
    wait_for("1 output", || read_all(&broker, "out").len() == 1).await;
    service.set_paused("upper", true).expect("pause");
    wait_for("paused", || service.describe("upper").is_ok_and(|i| i.status == "PAUSED")).await;
    produce(&broker, "in", 0, &[("k", "b")]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(read_all(&broker, "out").len(), 1, "a paused transform does not run");
    assert_eq!(service.describe("upper").expect("describe").lag, 1);
    service.set_paused("upper", false).expect("resume");
    wait_for("2 outputs", || read_all(&broker, "out").len() == 2).await;
    // Upgrade in place: a new version, same state and position.
    let info = service.deploy(spec(OnError::Skip), Bytes::from_static(b"counter-v2")).await.expect("upgrade");
    assert_eq!(info.spec.version, 2);
    produce(&broker, "in", 0, &[("k", "c")]);
    wait_for("3 outputs", || read_all(&broker, "out").len() == 3).await;
    let values: Vec<String> = read_all(&broker, "out").into_iter().map(|(_, v, _)| v).collect();
    assert_eq!(values, vec!["A:1", "B:2", "C:3"]);
    // Replay from the start: the three inputs run again, and the kept state counts on.
    service.replay("upper", StartFrom::Earliest).await.expect("replay");
    wait_for("6 outputs", || read_all(&broker, "out").len() == 6).await;
    let values: Vec<String> = read_all(&broker, "out").into_iter().map(|(_, v, _)| v).collect();
    assert_eq!(values[3..], ["A:4", "B:5", "C:6"]);
    service.remove("upper").await.expect("remove");
    assert!(service.describe("upper").is_err());
    service.shutdown().await;
    broker.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_to_the_input_get_instances() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(dir.path());
    create(&broker, "in", 1);
    create(&broker, "out", 1);
    let service = TransformService::start(Arc::clone(&broker), factory(), ComputePool::new(2)).expect("start");
    service.deploy(spec(OnError::Skip), Bytes::from_static(b"counter")).await.expect("deploy");
    assert_eq!(service.adopt_new_partitions().expect("adopt"), 0);
    broker.propose(MetadataCommand::CreatePartitions { name: "in".into(), total: 3 }).expect("grow the input");
    produce(&broker, "in", 2, &[("k", "new")]);
    assert_eq!(service.adopt_new_partitions().expect("adopt"), 2);
    wait_for("the new partition's output", || read_all(&broker, "out").len() == 1).await;
    assert_eq!(read_all(&broker, "out")[0].1, "NEW:1");
    assert_eq!(broker.topic("__runnel_transform_upper_changelog").map(|t| t.partitions), Some(3));
    assert_eq!(service.describe("upper").expect("describe").instances.len(), 3);
    service.shutdown().await;
    broker.close();
}
