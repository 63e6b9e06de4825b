//! The broker's state: metadata, the partitions' logs, and the hooks between them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::config::BrokerConfig;
use crate::groups::{GroupConfig, GroupCoordinator};
use crate::metadata::{
    LocalMetadataStore, MetadataCommand, MetadataError, MetadataImage, MetadataStore, TopicMetadata,
};
use crate::metrics::Metrics;
use crate::storage::{Clock, PartitionLog, StorageError, SystemClock};

/// A committed position of a consumer group, as in-process consumers (connectors) read and
/// write it: the same offsets `OffsetCommit`/`OffsetFetch` serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub metadata: String,
}

/// Why an in-process offset commit was refused (e.g. the group has members of its own).
#[derive(Debug, thiserror::Error)]
#[error("cannot commit offsets of group {group_id}: {reason}")]
pub struct GroupCommitError {
    pub group_id: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("data directory {path} is in use by another runnel process")]
    DataDirLocked { path: PathBuf },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// One partition: its log behind a short-held lock, and the flush serializer that turns
/// concurrent acks=all waits into one fsync (group commit).
#[derive(Debug)]
pub struct Partition {
    pub topic: String,
    pub index: i32,
    log: Mutex<PartitionLog>,
    sync_lock: tokio::sync::Mutex<()>,
    /// The log cleaner's checkpoint for this partition, loaded on its first visit.
    pub(crate) clean_state: Mutex<Option<crate::storage::cleaner::PartitionCleanState>>,
}

impl Partition {
    /// Locks the log. Holders do only in-memory work and page-cache I/O, never fsync.
    pub fn log(&self) -> MutexGuard<'_, PartitionLog> {
        self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until every record below `offset` is fsynced. Callers that arrive while a flush
    /// runs queue on `sync_lock` and usually find their data already covered when they get it.
    pub async fn sync_to(&self, offset: i64) -> Result<(), StorageError> {
        if self.log().flushed_offset() >= offset {
            return Ok(());
        }
        let _turn = self.sync_lock.lock().await;
        let plan = {
            let mut log = self.log();
            if log.flushed_offset() >= offset {
                return Ok(());
            }
            log.sync_plan()
        };
        let plan = tokio::task::spawn_blocking(move || plan.execute().map(|()| plan))
            .await
            .map_err(|e| StorageError::io(Path::new("<flush task>"), std::io::Error::other(e.to_string())))??;
        self.log().mark_flushed(plan.offset);
        Ok(())
    }
}

type PartitionMap = HashMap<String, Vec<Arc<Partition>>>;

/// Producer ids reserved per metadata-log entry (Kafka's controller hands out blocks of 1000).
const PRODUCER_ID_BLOCK: i64 = 1000;

#[derive(Debug)]
pub struct Broker {
    pub config: BrokerConfig,
    pub cluster_id: String,
    metadata: Box<dyn MetadataStore>,
    partitions: RwLock<PartitionMap>,
    clock: Arc<dyn Clock>,
    /// Bumped after every append, so long-polling fetches wake up.
    appended: tokio::sync::watch::Sender<u64>,
    /// Set when shutdown begins: parked long polls answer at once instead of holding it up.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Held for the broker's lifetime: a second broker on the same data directory is refused.
    _data_dir_lock: std::fs::File,
    pub(crate) metrics: Metrics,
    /// The reserved block producer ids are handed out from: (next, end).
    producer_ids: Mutex<(i64, i64)>,
    /// Consumer groups and committed offsets (persisted in `__consumer_offsets`).
    groups: GroupCoordinator,
    /// Transactions (persisted in `__transaction_state`).
    txns: crate::txn::TxnCoordinator,
}

impl Broker {
    /// Opens the data directory: replays metadata, then opens (and recovers) every partition.
    pub fn open(config: BrokerConfig) -> Result<Arc<Broker>, BrokerError> {
        Self::open_with_clock(config, Arc::new(SystemClock))
    }

    pub fn open_with_clock(config: BrokerConfig, clock: Arc<dyn Clock>) -> Result<Arc<Broker>, BrokerError> {
        let io = |path: &Path, source| BrokerError::Io { path: path.to_path_buf(), source };
        let meta_dir = config.data_dir.join("meta");
        std::fs::create_dir_all(&meta_dir).map_err(|e| io(&meta_dir, e))?;
        let data_dir_lock = lock_data_dir(&config.data_dir)?;
        let cluster_id = load_or_create_cluster_id(&meta_dir.join("cluster_id")).map_err(|e| io(&meta_dir, e))?;
        let metadata = LocalMetadataStore::open(&meta_dir)?;
        let broker = Arc::new(Broker {
            groups: GroupCoordinator::new(GroupConfig::from_broker(&config)),
            txns: crate::txn::TxnCoordinator::new(config.transactions.clone()),
            config,
            cluster_id,
            metadata: Box::new(metadata),
            partitions: RwLock::new(HashMap::new()),
            clock,
            appended: tokio::sync::watch::channel(0).0,
            stopping: tokio::sync::watch::channel(false).0,
            _data_dir_lock: data_dir_lock,
            metrics: Metrics::new(),
            producer_ids: Mutex::new((0, 0)),
        });
        let image = broker.metadata.image();
        broker.reconcile(&image)?;
        broker.remove_orphan_directories(&image)?;
        broker.groups.load(&broker)?;
        // After the groups: completing an interrupted transaction publishes its offsets.
        broker.txns.load(&broker)?;
        Ok(broker)
    }

    fn log_dir(&self) -> PathBuf {
        self.config.data_dir.join("log")
    }

    fn partition_dir(&self, topic: &str, index: i32) -> PathBuf {
        self.log_dir().join(format!("{topic}-{index}"))
    }

    pub(crate) fn groups(&self) -> &GroupCoordinator {
        &self.groups
    }

    pub(crate) fn txns(&self) -> &crate::txn::TxnCoordinator {
        &self.txns
    }

    /// Commits `offsets` for `group_id` as a client without group management does (generation
    /// -1, no member id) and waits until the commit is fsynced. A group with active members
    /// refuses it (UNKNOWN_MEMBER_ID), as Kafka does.
    pub async fn commit_group_offsets(&self, group_id: &str, offsets: &[GroupOffset]) -> Result<(), GroupCommitError> {
        let refused = |reason: String| GroupCommitError { group_id: group_id.to_string(), reason };
        let request = crate::groups::CommitRequest {
            group_id: group_id.to_string(),
            member_id: String::new(),
            group_instance_id: None,
            generation_id: -1,
            missing_group_error: crate::groups::GroupError::GroupIdNotFound,
            partitions: offsets
                .iter()
                .map(|o| crate::groups::CommitPartition {
                    topic: o.topic.clone(),
                    partition: o.partition,
                    offset: o.offset,
                    leader_epoch: -1,
                    metadata: Some(o.metadata.clone()),
                })
                .collect(),
        };
        let reply = self.groups.commit(self, request);
        if let Some((o, Err(e))) = offsets.iter().zip(&reply.results).find(|(_, r)| r.is_err()) {
            return Err(refused(format!("{}-{}: {e}", o.topic, o.partition)));
        }
        if let Some(durable) = reply.durable {
            durable.wait().await.map_err(|e| refused(e.to_string()))?;
        }
        Ok(())
    }

    /// Every offset `group_id` has committed (none for an unknown group).
    pub fn group_offsets(&self, group_id: &str) -> Vec<GroupOffset> {
        let mut found = Vec::new();
        for (topic, partitions) in self.groups.fetch_offsets(group_id, None) {
            for (partition, committed) in partitions {
                if let Some(c) = committed {
                    found.push(GroupOffset { topic: topic.clone(), partition, offset: c.offset, metadata: c.metadata });
                }
            }
        }
        found
    }

    pub fn metadata(&self) -> Arc<MetadataImage> {
        self.metadata.image()
    }

    pub fn topic(&self, name: &str) -> Option<TopicMetadata> {
        self.metadata.image().topics.get(name).cloned()
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Proposes a metadata change and brings the partitions in line with the result.
    pub fn propose(&self, command: MetadataCommand) -> Result<Arc<MetadataImage>, BrokerError> {
        let image = self.metadata.propose(command)?;
        self.reconcile(&image)?;
        Ok(image)
    }

    /// Opens logs for partitions the image has and this node lacks, closes and deletes the
    /// ones it no longer has, and pushes config changes into open logs.
    fn reconcile(&self, image: &MetadataImage) -> Result<(), BrokerError> {
        let mut partitions = self.partitions.write().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<String> = partitions.keys().filter(|t| !image.topics.contains_key(*t)).cloned().collect();
        for topic in gone {
            for partition in partitions.remove(&topic).unwrap_or_default() {
                let dir = partition.log().dir().to_path_buf();
                remove_dir(&dir)?;
            }
        }
        for topic in image.topics.values() {
            let config = self.config.log_config(&topic.configs);
            let open = partitions.entry(topic.name.clone()).or_default();
            for partition in open.iter() {
                partition.log().set_config(config.clone());
            }
            for index in open.len() as i32..topic.partitions {
                let dir = self.partition_dir(&topic.name, index);
                claim_partition_dir(&dir, &topic.topic_id)?;
                let log = PartitionLog::open(&dir, config.clone(), Arc::clone(&self.clock))?;
                open.push(Arc::new(Partition {
                    topic: topic.name.clone(),
                    index,
                    log: Mutex::new(log),
                    sync_lock: tokio::sync::Mutex::new(()),
                    clean_state: Mutex::new(None),
                }));
            }
        }
        Ok(())
    }

    /// Directories left by a topic deleted just before a crash are removed at startup.
    fn remove_orphan_directories(&self, image: &MetadataImage) -> Result<(), BrokerError> {
        let dir = self.log_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().to_string();
            let known = name.rsplit_once('-').is_some_and(|(topic, index)| {
                let index: i32 = index.parse().unwrap_or(-1);
                image.topics.get(topic).is_some_and(|t| (0..t.partitions).contains(&index))
            });
            if !known {
                tracing::warn!(dir = %entry.path().display(), "removing directory of a deleted topic");
                remove_dir(&entry.path())?;
            }
        }
        Ok(())
    }

    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        let partitions = self.partitions.read().unwrap_or_else(|p| p.into_inner());
        partitions.get(topic).and_then(|p| p.get(usize::try_from(index).ok()?)).cloned()
    }

    pub fn all_partitions(&self) -> Vec<Arc<Partition>> {
        let partitions = self.partitions.read().unwrap_or_else(|p| p.into_inner());
        partitions.values().flatten().cloned().collect()
    }

    /// Creates a topic with broker defaults (auto-creation on Metadata or Produce).
    pub fn auto_create_topic(&self, name: &str) -> Result<(), BrokerError> {
        let command = MetadataCommand::CreateTopic {
            name: name.to_string(),
            topic_id: uuid::Uuid::new_v4().to_string(),
            partitions: self.config.num_partitions,
            configs: Default::default(),
        };
        match self.propose(command) {
            Ok(_) | Err(BrokerError::Metadata(MetadataError::TopicExists { .. })) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A producer id never handed out before. Ids come from blocks reserved through the
    /// metadata log, so a restart (or, later, another broker) cannot reuse one.
    pub fn allocate_producer_id(&self) -> Result<i64, BrokerError> {
        let mut ids = self.producer_ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.0 >= ids.1 {
            let first = self.metadata.image().next_producer_id;
            self.propose(MetadataCommand::AllocateProducerIds { first, count: PRODUCER_ID_BLOCK })?;
            *ids = (first, first + PRODUCER_ID_BLOCK);
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    pub fn notify_appended(&self) {
        self.appended.send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    pub fn subscribe_appends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Starts shutdown: waiters such as long-polling fetches stop waiting.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Whether shutdown has begun (polled by long blocking work such as a cleaner pass).
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolves once shutdown has begun.
    pub(crate) async fn stopping(&self) {
        let mut stopping = self.stopping.subscribe();
        let _ = stopping.wait_for(|stop| *stop).await;
    }

    /// Flushes logs whose `flush.ms`/`flush.messages` are due; run by a background task.
    pub async fn flush_due(&self) {
        for partition in self.all_partitions() {
            let due = partition.log().flush_due();
            if due {
                let target = partition.log().log_end_offset();
                if let Err(e) = partition.sync_to(target).await {
                    tracing::error!(topic = %partition.topic, partition = partition.index, error = %e, "background flush failed");
                }
            }
        }
    }

    /// Hands what each log appended since the last call, once it is at least `min_bytes`, to
    /// the kernel's writeback; returns the bytes handed. Blocking: the flusher runs it off the
    /// async runtime. Makes nothing durable (see `storage/writeback.rs`).
    pub fn start_writeback(&self, min_bytes: u64) -> u64 {
        let mut handed = 0;
        for partition in self.all_partitions() {
            let Some(range) = partition.log().take_writeback(min_bytes) else { continue };
            match range.start() {
                Ok(()) => handed += range.bytes(),
                Err(e) => {
                    tracing::warn!(topic = %partition.topic, partition = partition.index, error = %e, "starting writeback failed")
                }
            }
        }
        handed
    }

    /// Applies retention to every partition; run by a background task.
    pub fn enforce_retention(&self) {
        for partition in self.all_partitions() {
            if let Err(e) = partition.log().enforce_retention() {
                tracing::error!(topic = %partition.topic, partition = partition.index, error = %e, "retention failed");
            }
        }
    }

    /// Flushes and seals every log: the last step of a clean shutdown.
    pub fn close(&self) {
        for partition in self.all_partitions() {
            if let Err(e) = partition.log().close() {
                tracing::error!(topic = %partition.topic, partition = partition.index, error = %e, "close failed");
            }
        }
    }

    /// Refreshes gauges that are cheaper to read on demand than to track.
    pub(crate) fn refresh_gauges(&self) {
        let partitions = self.all_partitions();
        let bytes: u64 = partitions.iter().map(|p| p.log().size_bytes()).sum();
        self.metrics.partitions.set(partitions.len() as i64);
        self.metrics.log_size_bytes.set(bytes as i64);
    }

    pub fn render_metrics(&self) -> String {
        self.refresh_gauges();
        self.metrics.render()
    }
}

/// Writes `partition.metadata` with the topic id, wiping a directory that belonged to an
/// older topic of the same name.
fn claim_partition_dir(dir: &Path, topic_id: &uuid::Uuid) -> Result<(), BrokerError> {
    let io = |path: &Path, source| BrokerError::Io { path: path.to_path_buf(), source };
    let marker = dir.join("partition.metadata");
    let expected = format!("version: 0\ntopic_id: {topic_id}\n");
    match std::fs::read_to_string(&marker) {
        Ok(found) if found == expected => return Ok(()),
        Ok(_) => {
            tracing::warn!(dir = %dir.display(), "partition directory belongs to an older topic; wiping it");
            remove_dir(dir)?;
        }
        Err(_) => {}
    }
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    std::fs::write(&marker, expected).map_err(|e| io(&marker, e))
}

fn remove_dir(dir: &Path) -> Result<(), BrokerError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BrokerError::Io { path: dir.to_path_buf(), source }),
    }
}

/// Takes an exclusive lock on `<data-dir>/.lock` (released by the OS when the process dies).
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, BrokerError> {
    let io = |path: &Path, source| BrokerError::Io { path: path.to_path_buf(), source };
    std::fs::create_dir_all(data_dir).map_err(|e| io(data_dir, e))?;
    let path = data_dir.join(".lock");
    let file =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(BrokerError::DataDirLocked { path: data_dir.to_path_buf() }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(&path, e)),
    }
}

fn load_or_create_cluster_id(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            // Kafka cluster ids are 22 characters of URL-safe base64 of a UUID; a simple form does.
            let id = uuid::Uuid::new_v4().simple().to_string()[..22].to_string();
            std::fs::write(path, &id)?;
            Ok(id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Arc<Broker> {
        Broker::open(BrokerConfig { data_dir: dir.to_path_buf(), ..Default::default() }).expect("open")
    }

    #[tokio::test]
    async fn in_process_offset_commits_are_durable_and_fetchable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let offset =
            |partition, offset| GroupOffset { topic: "t".into(), partition, offset, metadata: format!("m{offset}") };
        {
            let broker = open(dir.path());
            let command = MetadataCommand::CreateTopic {
                name: "t".into(),
                topic_id: uuid::Uuid::new_v4().to_string(),
                partitions: 2,
                configs: Default::default(),
            };
            broker.propose(command).expect("create topic");
            assert!(broker.group_offsets("connect-x").is_empty());
            broker.commit_group_offsets("connect-x", &[offset(0, 5), offset(1, 7)]).await.expect("commit");
            broker.commit_group_offsets("connect-x", &[offset(1, 9)]).await.expect("commit");
            // A partition that does not exist is refused, naming it.
            let refused = broker.commit_group_offsets("connect-x", &[offset(4, 1)]).await;
            assert!(refused.is_err_and(|e| e.reason.contains("t-4")));
            broker.close();
        }
        let broker = open(dir.path());
        let mut found = broker.group_offsets("connect-x");
        found.sort_by_key(|o| o.partition);
        assert_eq!(found, vec![offset(0, 5), offset(1, 9)]);
    }
}
