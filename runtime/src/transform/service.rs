//! The transform registry and the lifecycle of instances.
//!
//! Specs and modules live in the internal topic `__runnel_transforms` (key `spec/<name>` →
//! JSON, `module/<name>` → the module's bytes; tombstones on removal), replayed at startup.
//! Each transform runs one instance per input partition; an upgrade stops the instances at a
//! batch boundary and starts new ones on the new module, which restore state and position
//! from the changelog, so nothing is lost or repeated.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use runnel_broker::metadata::{MetadataCommand, MetadataError};
use runnel_broker::{Broker, BrokerError};
use serde::Serialize;
use tokio::sync::watch;

use super::log_io;
use super::pool::ComputePool;
use super::processor::ProcessorFactory;
use super::records::{encode_batch, Outgoing};
use super::runner::{Control, Instance, InstanceShared, InstanceState, LogRing};
use super::spec::{OnError, StartFrom, TransformSpec};
use super::TransformError;

pub const REGISTRY_TOPIC: &str = "__runnel_transforms";
/// Modules and checkpoints (which carry a batch's outputs) can be large: internal topics take
/// records up to this size.
pub(crate) const INTERNAL_MESSAGE_BYTES_MAX: &str = "67108864";
/// How often running transforms look for partitions added to their inputs.
const PARTITION_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// A module larger than this is refused at deploy.
pub const MODULE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// The registry's contents: specs by name and modules by transform name.
type Registry = (BTreeMap<String, TransformSpec>, HashMap<String, Bytes>);

/// One deployed transform and its instances.
struct Deployed {
    spec: TransformSpec,
    module: Arc<[u8]>,
    logs: Arc<LogRing>,
    control: watch::Sender<Control>,
    instances: Vec<Arc<InstanceShared>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What `list`/`describe` show.
#[derive(Debug, Clone, Serialize)]
pub struct TransformInfo {
    #[serde(flatten)]
    pub spec: TransformSpec,
    pub module_bytes: usize,
    pub processed: u64,
    pub failed: u64,
    pub lag: i64,
    pub status: String,
    pub instances: Vec<InstanceInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceInfo {
    pub partition: i32,
    pub position: i64,
    pub lag: i64,
    pub processed: u64,
    pub failed: u64,
    #[serde(flatten)]
    pub state: InstanceState,
}

pub struct TransformService {
    broker: Arc<Broker>,
    factory: Arc<dyn ProcessorFactory>,
    pool: Arc<ComputePool>,
    transforms: Mutex<HashMap<String, Deployed>>,
}

impl std::fmt::Debug for TransformService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransformService").finish_non_exhaustive()
    }
}

impl TransformService {
    /// Replays the registry and starts every transform it holds. Call inside a tokio runtime.
    pub fn start(
        broker: Arc<Broker>,
        factory: Arc<dyn ProcessorFactory>,
        pool: Arc<ComputePool>,
    ) -> Result<Arc<TransformService>, TransformError> {
        ensure_topic(&broker, REGISTRY_TOPIC, 1)?;
        let service = Arc::new(TransformService { broker, factory, pool, transforms: Mutex::new(HashMap::new()) });
        let watched = Arc::downgrade(&service);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PARTITION_CHECK_INTERVAL).await;
                let Some(service) = watched.upgrade() else { return };
                if let Err(e) = service.adopt_new_partitions() {
                    tracing::warn!(error = %e, "cannot start instances for new input partitions");
                }
            }
        });
        let (specs, modules) = service.replay_registry()?;
        for (name, spec) in specs {
            let Some(module) = modules.get(&name) else {
                tracing::error!(%name, "transform spec without its module in {REGISTRY_TOPIC}; skipping");
                continue;
            };
            if let Err(e) = service.launch(spec, Arc::from(module.as_ref()), None) {
                tracing::error!(%name, error = %e, "cannot start transform");
            }
        }
        Ok(service)
    }

    fn replay_registry(&self) -> Result<Registry, TransformError> {
        let mut specs = BTreeMap::new();
        let mut modules = HashMap::new();
        log_io::scan(&self.broker, REGISTRY_TOPIC, 0, |record| {
            let key = record.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default().to_string();
            if let Some(name) = key.strip_prefix("spec/") {
                match &record.value {
                    Some(value) => match serde_json::from_slice::<TransformSpec>(value) {
                        Ok(spec) => {
                            specs.insert(name.to_string(), spec);
                        }
                        Err(e) => tracing::error!(%name, error = %e, "unreadable transform spec; skipping"),
                    },
                    None => {
                        specs.remove(name);
                    }
                }
            } else if let Some(name) = key.strip_prefix("module/") {
                match &record.value {
                    Some(value) => modules.insert(name.to_string(), value.clone()),
                    None => modules.remove(name),
                };
            }
            Ok(())
        })?;
        Ok((specs, modules))
    }

    /// Deploys (or upgrades in place) a transform. Validation happens before anything is
    /// stored, so a refused deploy changes nothing.
    pub async fn deploy(&self, mut spec: TransformSpec, module: Bytes) -> Result<TransformInfo, TransformError> {
        spec.validate()?;
        if module.len() > MODULE_BYTES_MAX {
            return Err(TransformError::InvalidSpec(format!(
                "module is {} bytes; the limit is {MODULE_BYTES_MAX}",
                module.len()
            )));
        }
        let input = self
            .broker
            .topic(&spec.input)
            .ok_or_else(|| TransformError::InvalidSpec(format!("input topic {:?} does not exist", spec.input)))?;
        for output in &spec.outputs {
            if self.broker.topic(output).is_none() {
                return Err(TransformError::InvalidSpec(format!("output topic {output:?} does not exist")));
            }
        }
        let factory = Arc::clone(&self.factory);
        let checked = module.clone();
        self.pool.run(move || factory.validate(&checked)).await?.map_err(TransformError::Module)?;
        ensure_topic(&self.broker, &spec.changelog_topic(), input.partitions)?;
        if spec.on_error == OnError::DeadLetter {
            ensure_topic(&self.broker, &spec.dead_letter_topic(), input.partitions)?;
        }
        let previous = self.stop(&spec.name).await;
        spec.version = previous.as_ref().map_or(1, |p| p.version + 1);
        spec.paused = false;
        self.persist(&spec, Some(&module))?;
        self.launch(spec.clone(), Arc::from(module.as_ref()), None)?;
        self.describe(&spec.name)
    }

    fn persist(&self, spec: &TransformSpec, module: Option<&Bytes>) -> Result<(), TransformError> {
        let now = self.broker.now_ms();
        let mut records = Vec::new();
        if let Some(module) = module {
            records.push(Outgoing {
                timestamp_ms: now,
                key: Some(Bytes::from(format!("module/{}", spec.name))),
                value: Some(module.clone()),
                headers: Vec::new(),
            });
        }
        let json = serde_json::to_vec(spec).map_err(|e| TransformError::Encode(e.to_string()))?;
        records.push(Outgoing {
            timestamp_ms: now,
            key: Some(Bytes::from(format!("spec/{}", spec.name))),
            value: Some(Bytes::from(json)),
            headers: Vec::new(),
        });
        self.append_registry(&records)
    }

    fn append_registry(&self, records: &[Outgoing]) -> Result<(), TransformError> {
        let batch = encode_batch(records, None)?;
        log_io::append(&self.broker, REGISTRY_TOPIC, 0, &batch)?;
        self.broker.notify_appended();
        Ok(())
    }

    fn launch(&self, spec: TransformSpec, module: Arc<[u8]>, rewind: Option<StartFrom>) -> Result<(), TransformError> {
        let input = self
            .broker
            .topic(&spec.input)
            .ok_or_else(|| TransformError::InvalidSpec(format!("input topic {:?} does not exist", spec.input)))?;
        ensure_topic(&self.broker, &spec.changelog_topic(), input.partitions)?;
        let initial = if spec.paused { Control::Pause } else { Control::Run };
        let (control, _) = watch::channel(initial);
        let logs = Arc::new(LogRing::default());
        let mut deployed =
            Deployed { spec: spec.clone(), module, logs, control, instances: Vec::new(), tasks: Vec::new() };
        for partition in 0..input.partitions {
            self.spawn_instance(&mut deployed, partition, rewind);
        }
        tracing::info!(name = %spec.name, version = spec.version, partitions = input.partitions, "transform started");
        self.lock().insert(spec.name.clone(), deployed);
        Ok(())
    }

    fn spawn_instance(&self, deployed: &mut Deployed, partition: i32, rewind: Option<StartFrom>) {
        let shared = Arc::new(InstanceShared::new(partition));
        let instance = Instance {
            broker: Arc::clone(&self.broker),
            factory: Arc::clone(&self.factory),
            pool: Arc::clone(&self.pool),
            spec: deployed.spec.clone(),
            module: Arc::clone(&deployed.module),
            shared: Arc::clone(&shared),
            logs: Arc::clone(&deployed.logs),
            control: deployed.control.subscribe(),
            rewind,
        };
        deployed.tasks.push(tokio::spawn(instance.run()));
        deployed.instances.push(shared);
    }

    /// Starts instances for partitions added to an input topic since its transform started
    /// (they read their new partition from the start), growing the changelog to match.
    pub fn adopt_new_partitions(&self) -> Result<usize, TransformError> {
        let mut transforms = self.lock();
        let mut started = 0;
        for deployed in transforms.values_mut() {
            let Some(input) = self.broker.topic(&deployed.spec.input) else { continue };
            let running = deployed.instances.len() as i32;
            if input.partitions <= running {
                continue;
            }
            ensure_topic(&self.broker, &deployed.spec.changelog_topic(), input.partitions)?;
            for partition in running..input.partitions {
                self.spawn_instance(deployed, partition, Some(StartFrom::Earliest));
                started += 1;
            }
            tracing::info!(name = %deployed.spec.name, partitions = input.partitions, "transform adopted new input partitions");
        }
        Ok(started)
    }

    /// Stops a transform's instances at their next batch boundary and forgets them; returns
    /// the spec they ran.
    async fn stop(&self, name: &str) -> Option<TransformSpec> {
        let deployed = self.lock().remove(name)?;
        let _ = deployed.control.send(Control::Stop);
        for task in deployed.tasks {
            let _ = task.await;
        }
        Some(deployed.spec)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Deployed>> {
        self.transforms.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn list(&self) -> Vec<TransformInfo> {
        let transforms = self.lock();
        let mut infos: Vec<TransformInfo> = transforms.values().map(|d| self.info(d)).collect();
        infos.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        infos
    }

    pub fn describe(&self, name: &str) -> Result<TransformInfo, TransformError> {
        let transforms = self.lock();
        let deployed = transforms.get(name).ok_or_else(|| TransformError::NotFound(name.to_string()))?;
        Ok(self.info(deployed))
    }

    pub fn logs(&self, name: &str) -> Result<Vec<String>, TransformError> {
        let transforms = self.lock();
        let deployed = transforms.get(name).ok_or_else(|| TransformError::NotFound(name.to_string()))?;
        Ok(deployed.logs.lines())
    }

    /// Pauses or resumes a transform (a resume also retries a batch stopped by `--on-error stop`).
    pub fn set_paused(&self, name: &str, paused: bool) -> Result<TransformInfo, TransformError> {
        let spec = {
            let mut transforms = self.lock();
            let deployed = transforms.get_mut(name).ok_or_else(|| TransformError::NotFound(name.to_string()))?;
            deployed.spec.paused = paused;
            let _ = deployed.control.send(if paused { Control::Pause } else { Control::Run });
            deployed.spec.clone()
        };
        self.persist(&spec, None)?;
        self.describe(name)
    }

    /// Moves every instance's input position to `from` and runs on from there, keeping state
    /// (to reprocess history after a fix, or to skip ahead).
    pub async fn replay(&self, name: &str, from: StartFrom) -> Result<TransformInfo, TransformError> {
        let module = {
            let transforms = self.lock();
            let deployed = transforms.get(name).ok_or_else(|| TransformError::NotFound(name.to_string()))?;
            Arc::clone(&deployed.module)
        };
        let spec = self.stop(name).await.ok_or_else(|| TransformError::NotFound(name.to_string()))?;
        self.launch(spec, module, Some(from))?;
        self.describe(name)
    }

    /// Removes a transform: its instances stop and its spec and module are deleted. Its
    /// changelog and dead-letter topics stay, like Kafka Streams' internal topics.
    pub async fn remove(&self, name: &str) -> Result<(), TransformError> {
        self.stop(name).await.ok_or_else(|| TransformError::NotFound(name.to_string()))?;
        let now = self.broker.now_ms();
        let tombstone =
            |key: String| Outgoing { timestamp_ms: now, key: Some(Bytes::from(key)), value: None, headers: Vec::new() };
        self.append_registry(&[tombstone(format!("spec/{name}")), tombstone(format!("module/{name}"))])
    }

    fn info(&self, deployed: &Deployed) -> TransformInfo {
        let mut instances = Vec::new();
        for shared in &deployed.instances {
            let position = shared.position.load(Ordering::Relaxed);
            let end = self
                .broker
                .partition(&deployed.spec.input, shared.partition)
                .map(|p| p.log().high_watermark())
                .unwrap_or(position);
            instances.push(InstanceInfo {
                partition: shared.partition,
                position,
                lag: if position < 0 { 0 } else { (end - position).max(0) },
                processed: shared.processed.load(Ordering::Relaxed),
                failed: shared.failed.load(Ordering::Relaxed),
                state: shared.state(),
            });
        }
        let status = summarize(deployed.spec.paused, &instances);
        TransformInfo {
            spec: deployed.spec.clone(),
            module_bytes: deployed.module.len(),
            processed: instances.iter().map(|i| i.processed).sum(),
            failed: instances.iter().map(|i| i.failed).sum(),
            lag: instances.iter().map(|i| i.lag).sum(),
            status,
            instances,
        }
    }

    /// Stops every instance (broker shutdown).
    pub async fn shutdown(&self) {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        for name in names {
            self.stop(&name).await;
        }
    }
}

/// One word for a transform: FAILED if any instance failed, else PAUSED (as asked: instances
/// park at their next batch boundary), STARTING, STOPPED or RUNNING.
fn summarize(paused: bool, instances: &[InstanceInfo]) -> String {
    let any = |f: fn(&InstanceState) -> bool| instances.iter().any(|i| f(&i.state));
    if any(|s| matches!(s, InstanceState::Failed(_))) {
        "FAILED"
    } else if paused {
        "PAUSED"
    } else if any(|s| matches!(s, InstanceState::Starting)) {
        "STARTING"
    } else if !instances.is_empty() && instances.iter().all(|i| matches!(i.state, InstanceState::Stopped)) {
        "STOPPED"
    } else {
        "RUNNING"
    }
    .to_string()
}

/// Creates an internal topic if missing (compacted, never expired by time), or grows it to
/// `partitions`.
pub(crate) fn ensure_topic(broker: &Broker, name: &str, partitions: i32) -> Result<(), TransformError> {
    if let Some(existing) = broker.topic(name) {
        if existing.partitions >= partitions {
            return Ok(());
        }
        // The input grew: one changelog partition per input partition.
        return broker
            .propose(MetadataCommand::CreatePartitions { name: name.to_string(), total: partitions })
            .map(|_| ())
            .map_err(|e| TransformError::Storage(format!("growing topic {name} to {partitions} partitions: {e}")));
    }
    let configs: BTreeMap<String, String> = [
        // The latest value per key is the state (changelog: state keys and the checkpoint;
        // registry: specs and modules), so compaction keeps them bounded.
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("retention.ms".to_string(), "-1".to_string()),
        ("max.message.bytes".to_string(), INTERNAL_MESSAGE_BYTES_MAX.to_string()),
    ]
    .into_iter()
    .collect();
    let command = MetadataCommand::CreateTopic {
        name: name.to_string(),
        topic_id: uuid::Uuid::new_v4().to_string(),
        partitions,
        configs,
    };
    match broker.propose(command) {
        Ok(_) | Err(BrokerError::Metadata(MetadataError::TopicExists { .. })) => Ok(()),
        Err(e) => Err(TransformError::Storage(format!("creating topic {name}: {e}"))),
    }
}
