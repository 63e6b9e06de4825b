//! Cluster metadata — topics, partitions and their configs — as a replicated state machine.
//!
//! Every change is a [`MetadataCommand`] proposed to a [`MetadataStore`]. The store orders
//! commands in a log and applies them, in order, to a [`MetadataImage`]; `apply` is pure and
//! deterministic, so the openraft controller quorum can later replace [`LocalMetadataStore`]
//! (one node, a local fsynced log) without touching the image or the callers.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::config::{validate_topic_configs, ConfigError};

/// Kafka's limit, so a topic name plus partition suffix stays a valid file name.
pub const TOPIC_NAME_MAX_BYTES: usize = 249;
/// A bound on partitions per topic: each is a directory with open files.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("topic '{name}' already exists")]
    TopicExists { name: String },
    #[error("unknown topic '{name}'")]
    UnknownTopic { name: String },
    #[error("invalid topic name '{name}': {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    #[error("invalid partition count {count}: {reason}")]
    InvalidPartitions { count: i32, reason: String },
    #[error(transparent)]
    InvalidConfig(#[from] ConfigError),
    #[error("producer id block must start at {next}, not {first}")]
    InvalidProducerIdBlock { first: i64, next: i64 },
    #[error("metadata log I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("metadata log {path} line {line} is corrupt: {message}")]
    Corrupt { path: PathBuf, line: usize, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetadataCommand {
    CreateTopic {
        name: String,
        topic_id: String,
        partitions: i32,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    CreatePartitions {
        name: String,
        total: i32,
    },
    AlterTopicConfig {
        name: String,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
    },
    /// Reserves producer ids `[first, first + count)`; ids are never handed out twice, even
    /// across restarts, because the reservation is logged before any id in it is used.
    AllocateProducerIds {
        first: i64,
        count: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    pub name: String,
    pub topic_id: uuid::Uuid,
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
}

/// The state every command has been applied to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataImage {
    pub topics: BTreeMap<String, TopicMetadata>,
    /// Index of the last applied command.
    pub applied_index: u64,
    /// The first producer id not yet reserved.
    pub next_producer_id: i64,
}

pub fn validate_topic_name(name: &str) -> Result<(), MetadataError> {
    let invalid = |reason| Err(MetadataError::InvalidTopicName { name: name.to_string(), reason });
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > TOPIC_NAME_MAX_BYTES {
        return invalid("longer than 249 characters");
    }
    if name == "." || name == ".." {
        return invalid("'.' and '..' are reserved");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return invalid("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

impl MetadataImage {
    /// Checks a command against this image without changing it.
    pub fn check(&self, command: &MetadataCommand) -> Result<(), MetadataError> {
        self.clone().apply(command)
    }

    /// Applies one command. Pure: the same commands in the same order give the same image.
    pub fn apply(&mut self, command: &MetadataCommand) -> Result<(), MetadataError> {
        match command {
            MetadataCommand::CreateTopic { name, topic_id, partitions, configs } => {
                validate_topic_name(name)?;
                if self.topics.contains_key(name) {
                    return Err(MetadataError::TopicExists { name: name.clone() });
                }
                check_partitions(*partitions)?;
                validate_topic_configs(configs)?;
                let topic_id = uuid::Uuid::parse_str(topic_id)
                    .map_err(|_| MetadataError::InvalidTopicName { name: name.clone(), reason: "bad topic id" })?;
                let topic =
                    TopicMetadata { name: name.clone(), topic_id, partitions: *partitions, configs: configs.clone() };
                self.topics.insert(name.clone(), topic);
            }
            MetadataCommand::DeleteTopic { name } => {
                self.topics.remove(name).ok_or_else(|| MetadataError::UnknownTopic { name: name.clone() })?;
            }
            MetadataCommand::CreatePartitions { name, total } => {
                let topic =
                    self.topics.get_mut(name).ok_or_else(|| MetadataError::UnknownTopic { name: name.clone() })?;
                check_partitions(*total)?;
                if *total <= topic.partitions {
                    return Err(MetadataError::InvalidPartitions {
                        count: *total,
                        reason: format!("topic has {} partitions; the count can only grow", topic.partitions),
                    });
                }
                topic.partitions = *total;
            }
            MetadataCommand::AlterTopicConfig { name, set, delete } => {
                let topic =
                    self.topics.get_mut(name).ok_or_else(|| MetadataError::UnknownTopic { name: name.clone() })?;
                validate_topic_configs(set)?;
                let mut configs = topic.configs.clone();
                for key in delete {
                    configs.remove(key);
                }
                configs.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
                topic.configs = configs;
            }
            MetadataCommand::AllocateProducerIds { first, count } => {
                if *first != self.next_producer_id || *count <= 0 {
                    return Err(MetadataError::InvalidProducerIdBlock { first: *first, next: self.next_producer_id });
                }
                self.next_producer_id = first.saturating_add(*count);
            }
        }
        self.applied_index += 1;
        Ok(())
    }
}

fn check_partitions(count: i32) -> Result<(), MetadataError> {
    if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&count) {
        return Err(MetadataError::InvalidPartitions {
            count,
            reason: format!("must be between 1 and {PARTITIONS_PER_TOPIC_MAX}"),
        });
    }
    Ok(())
}

/// Orders and applies metadata commands. Today one node; the controller quorum implements
/// the same trait over openraft.
pub trait MetadataStore: Send + Sync + std::fmt::Debug {
    /// Orders `command` after every earlier one, applies it and returns the new image; a
    /// command the image refuses is not logged.
    fn propose(&self, command: MetadataCommand) -> Result<Arc<MetadataImage>, MetadataError>;
    /// The latest applied image.
    fn image(&self) -> Arc<MetadataImage>;
}

/// A single-node store: an append-only, fsynced JSON-lines log in `meta/metadata.log`.
#[derive(Debug)]
pub struct LocalMetadataStore {
    path: PathBuf,
    log: Mutex<File>,
    image: RwLock<Arc<MetadataImage>>,
}

impl LocalMetadataStore {
    /// Opens the log and replays it. A torn last line (a crash mid-append) is cut off; damage
    /// anywhere else is an error, because later commands depend on it.
    pub fn open(dir: &Path) -> Result<LocalMetadataStore, MetadataError> {
        let io = |path: &Path, source| MetadataError::Io { path: path.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = dir.join("metadata.log");
        let text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&path, e)),
        };
        let mut image = MetadataImage::default();
        let mut valid_bytes = 0;
        let lines: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
        for (number, line) in lines.iter().enumerate() {
            let is_last = number + 1 == lines.len();
            let parsed =
                if line.ends_with(b"\n") { serde_json::from_slice::<MetadataCommand>(line).ok() } else { None };
            match parsed {
                Some(command) => {
                    image.apply(&command).map_err(|e| MetadataError::Corrupt {
                        path: path.clone(),
                        line: number + 1,
                        message: e.to_string(),
                    })?;
                    valid_bytes += line.len();
                }
                None if is_last => {
                    tracing::warn!(path = %path.display(), "cutting torn last line of metadata log");
                    break;
                }
                None => {
                    return Err(MetadataError::Corrupt {
                        path,
                        line: number + 1,
                        message: "not a metadata command".into(),
                    });
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| io(&path, e))?;
        file.set_len(valid_bytes as u64).map_err(|e| io(&path, e))?;
        Ok(LocalMetadataStore { path, log: Mutex::new(file), image: RwLock::new(Arc::new(image)) })
    }
}

impl MetadataStore for LocalMetadataStore {
    fn propose(&self, command: MetadataCommand) -> Result<Arc<MetadataImage>, MetadataError> {
        // The log lock orders proposals: check, persist, then publish the new image.
        let mut log = self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = (*self.image()).clone();
        next.apply(&command)?;
        let mut line = serde_json::to_vec(&command).expect("metadata commands always serialize");
        line.push(b'\n');
        let io = |source| MetadataError::Io { path: self.path.clone(), source };
        log.write_all(&line).map_err(io)?;
        log.sync_data().map_err(io)?;
        let next = Arc::new(next);
        *self.image.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::clone(&next);
        Ok(next)
    }

    fn image(&self) -> Arc<MetadataImage> {
        Arc::clone(&self.image.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, partitions: i32) -> MetadataCommand {
        MetadataCommand::CreateTopic {
            name: name.into(),
            topic_id: uuid::Uuid::new_v4().to_string(),
            partitions,
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn commands_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = LocalMetadataStore::open(dir.path()).expect("open");
            store.propose(create("a", 3)).expect("create a");
            store.propose(create("b", 1)).expect("create b");
            store.propose(MetadataCommand::CreatePartitions { name: "b".into(), total: 4 }).expect("grow b");
        }
        let log_path = dir.path().join("metadata.log");
        let mut bytes = std::fs::read(&log_path).expect("read");
        bytes.extend_from_slice(b"{\"type\":\"delete_to");
        std::fs::write(&log_path, bytes).expect("write torn");
        let store = LocalMetadataStore::open(dir.path()).expect("reopen");
        let image = store.image();
        assert_eq!(image.topics["a"].partitions, 3);
        assert_eq!(image.topics["b"].partitions, 4);
        assert_eq!(image.applied_index, 3);
        store.propose(MetadataCommand::DeleteTopic { name: "a".into() }).expect("delete after torn tail");
        let store = LocalMetadataStore::open(dir.path()).expect("reopen again");
        assert!(!store.image().topics.contains_key("a"));
    }

    #[test]
    fn refused_commands_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalMetadataStore::open(dir.path()).expect("open");
        store.propose(create("t", 2)).expect("create");
        assert!(matches!(store.propose(create("t", 2)), Err(MetadataError::TopicExists { .. })));
        assert!(matches!(
            store.propose(MetadataCommand::CreatePartitions { name: "t".into(), total: 1 }),
            Err(MetadataError::InvalidPartitions { .. })
        ));
        assert!(matches!(store.propose(create("bad/name", 1)), Err(MetadataError::InvalidTopicName { .. })));
        assert!(matches!(store.propose(create("zero", 0)), Err(MetadataError::InvalidPartitions { .. })));
        assert_eq!(store.image().applied_index, 1);
        let reopened = LocalMetadataStore::open(dir.path()).expect("reopen");
        assert_eq!(reopened.image().topics.len(), 1);
    }
}
