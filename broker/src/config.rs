//! Broker and topic configuration, named as Kafka names them.
//!
//! Every topic config has a broker-level default (`log.segment.bytes` → `segment.bytes`),
//! so `DescribeConfigs` can list each one with its value, its default and where it came from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown config '{name}'")]
    Unknown { name: String },
    #[error("invalid value '{value}' for config '{name}': {reason}")]
    InvalidValue { name: String, value: String, reason: String },
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot parse config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Long {
        min: i64,
    },
    Int {
        min: i64,
    },
    Double,
    Bool,
    /// One of a fixed list; `cleanup.policy` takes a comma list of these.
    Choice(&'static [&'static str]),
    CleanupPolicy,
}

/// One topic-level config, its broker-level key and its built-in default.
#[derive(Debug, Clone, Copy)]
pub struct TopicConfigDef {
    pub name: &'static str,
    pub broker_name: &'static str,
    pub default: &'static str,
    kind: Kind,
}

const LONG_MAX: &str = "9223372036854775807";

/// All topic configs Runnel knows, in the order DescribeConfigs lists them.
pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    def("cleanup.policy", "log.cleanup.policy", "delete", Kind::CleanupPolicy),
    def(
        "compression.type",
        "compression.type",
        "producer",
        Kind::Choice(&["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"]),
    ),
    def("delete.retention.ms", "log.cleaner.delete.retention.ms", "86400000", Kind::Long { min: 0 }),
    def("file.delete.delay.ms", "log.segment.delete.delay.ms", "60000", Kind::Long { min: 0 }),
    def("flush.messages", "log.flush.interval.messages", LONG_MAX, Kind::Long { min: 1 }),
    // Kafka leaves flushing to the OS by default; Runnel bounds the window of acks=1 data at
    // risk from a power loss to one second, at a cost the benchmark measures.
    def("flush.ms", "log.flush.interval.ms", "1000", Kind::Long { min: 0 }),
    def("index.interval.bytes", "log.index.interval.bytes", "4096", Kind::Int { min: 0 }),
    def("max.compaction.lag.ms", "log.cleaner.max.compaction.lag.ms", LONG_MAX, Kind::Long { min: 1 }),
    def("max.message.bytes", "message.max.bytes", "1048588", Kind::Int { min: 0 }),
    def("message.timestamp.type", "log.message.timestamp.type", "CreateTime", Kind::Choice(&["CreateTime"])),
    def("min.cleanable.dirty.ratio", "log.cleaner.min.cleanable.ratio", "0.5", Kind::Double),
    def("min.compaction.lag.ms", "log.cleaner.min.compaction.lag.ms", "0", Kind::Long { min: 0 }),
    def("min.insync.replicas", "min.insync.replicas", "1", Kind::Int { min: 1 }),
    def("retention.bytes", "log.retention.bytes", "-1", Kind::Long { min: -1 }),
    def("retention.ms", "log.retention.ms", "604800000", Kind::Long { min: -1 }),
    def("segment.bytes", "log.segment.bytes", "1073741824", Kind::Int { min: 14 }),
    def("segment.index.bytes", "log.index.size.max.bytes", "10485760", Kind::Int { min: 4 }),
    def("segment.ms", "log.roll.ms", "604800000", Kind::Long { min: 1 }),
    def("unclean.leader.election.enable", "unclean.leader.election.enable", "false", Kind::Bool),
];

const fn def(name: &'static str, broker_name: &'static str, default: &'static str, kind: Kind) -> TopicConfigDef {
    TopicConfigDef { name, broker_name, default, kind }
}

pub fn topic_config_def(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

impl TopicConfigDef {
    /// Kafka's DescribeConfigs type code: 1 BOOLEAN, 2 STRING, 3 INT, 5 LONG, 6 DOUBLE, 7 LIST.
    pub fn config_type(&self) -> i8 {
        match self.kind {
            Kind::Bool => 1,
            Kind::Choice(_) => 2,
            Kind::Int { .. } => 3,
            Kind::Long { .. } => 5,
            Kind::Double => 6,
            Kind::CleanupPolicy => 7,
        }
    }

    /// Checks a value against this config's type and range.
    pub fn validate(&self, value: &str) -> Result<(), ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidValue {
            name: self.name.to_string(),
            value: value.to_string(),
            reason,
        };
        match self.kind {
            Kind::Long { min } | Kind::Int { min } => {
                let parsed: i64 = value.trim().parse().map_err(|_| invalid("not an integer".into()))?;
                if parsed < min {
                    return Err(invalid(format!("must be at least {min}")));
                }
                if matches!(self.kind, Kind::Int { .. }) && parsed > i64::from(i32::MAX) {
                    return Err(invalid("must fit in a 32-bit integer".into()));
                }
            }
            Kind::Double => {
                let parsed: f64 = value.trim().parse().map_err(|_| invalid("not a number".into()))?;
                if !(0.0..=1.0).contains(&parsed) {
                    return Err(invalid("must be between 0 and 1".into()));
                }
            }
            Kind::Bool => {
                if value != "true" && value != "false" {
                    return Err(invalid("must be true or false".into()));
                }
            }
            Kind::Choice(choices) => {
                if !choices.contains(&value) {
                    return Err(invalid(format!("must be one of {}", choices.join(", "))));
                }
            }
            Kind::CleanupPolicy => {
                for policy in value.split(',').map(str::trim) {
                    match policy {
                        // Compaction is done by the log cleaner (storage/cleaner.rs).
                        "delete" | "compact" => {}
                        _ => return Err(invalid("must be delete, compact or compact,delete".into())),
                    }
                }
            }
        }
        Ok(())
    }
}

/// Validates a set of topic config overrides.
pub fn validate_topic_configs(configs: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (name, value) in configs {
        let def = topic_config_def(name).ok_or_else(|| ConfigError::Unknown { name: name.clone() })?;
        def.validate(value)?;
    }
    Ok(())
}

/// Where a config value came from, with Kafka's DescribeConfigs source codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    TopicOverride = 1,
    StaticBroker = 4,
    Default = 5,
}

/// Resolved log settings for one partition: topic override, else broker setting, else default.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    /// `cleanup.policy` contains `compact`, and the settings the log cleaner reads.
    pub compaction: CompactionConfig,
    pub index_interval_bytes: u64,
    pub max_message_bytes: u64,
    pub flush_messages: u64,
    pub flush_ms: i64,
}

/// A topic's compaction settings (Kafka's names in brackets); `enabled` is false unless
/// `cleanup.policy` contains `compact`.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactionConfig {
    pub enabled: bool,
    /// [`min.cleanable.dirty.ratio`] Dirty bytes over all sealed bytes before a clean is worth it.
    pub min_cleanable_dirty_ratio: f64,
    /// [`min.compaction.lag.ms`] Records younger than this are never compacted away.
    pub min_compaction_lag_ms: i64,
    /// [`max.compaction.lag.ms`] A dirty record older than this forces a clean, whatever the ratio.
    pub max_compaction_lag_ms: i64,
    /// [`delete.retention.ms`] How long a tombstone stays readable after its first clean.
    pub delete_retention_ms: i64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            enabled: false,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            delete_retention_ms: 86_400_000,
        }
    }
}

/// The log cleaner's broker settings (Kafka's `log.cleaner.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanerConfig {
    /// [`log.cleaner.enable`]
    pub enable: bool,
    /// [`log.cleaner.threads`] Partitions cleaned at the same time.
    pub threads: usize,
    /// [`log.cleaner.dedupe.buffer.size`] Bytes of key map shared by all cleaner threads: the
    /// bound on the cleaner's memory. A dirty section with more keys is cleaned in several passes.
    pub dedupe_buffer_bytes: usize,
    /// [`log.cleaner.backoff.ms`] Sleep between checks when no partition needs cleaning.
    pub backoff_ms: u64,
}

impl Default for CleanerConfig {
    fn default() -> Self {
        CleanerConfig { enable: true, threads: 1, dedupe_buffer_bytes: 128 * 1024 * 1024, backoff_ms: 15_000 }
    }
}

/// The broker's own settings (from flags and `runnel.toml`).
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: i32,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// host:port given to clients in Metadata; defaults to `listen`.
    pub advertised_listener: Option<String>,
    pub admin_listen: SocketAddr,
    pub num_partitions: i32,
    pub auto_create_topics: bool,
    /// Kafka's `socket.request.max.bytes`: larger frames close the connection.
    pub socket_request_max_bytes: usize,
    /// Kafka's `queued.max.request.bytes`: request bytes held across all connections at once.
    pub queued_max_request_bytes: usize,
    pub max_connections: usize,
    pub retention_check_interval_ms: u64,
    /// Kafka's `group.initial.rebalance.delay.ms`: the first rebalance of an empty group waits
    /// this long for more members.
    pub group_initial_rebalance_delay_ms: i64,
    /// Kafka's `group.min.session.timeout.ms` / `group.max.session.timeout.ms`.
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    /// Kafka's `group.max.size` (Kafka: unlimited; bounded here to bound memory).
    pub group_max_size: usize,
    /// Kafka's `offsets.retention.minutes`: offsets of a group empty this long are deleted.
    pub offsets_retention_minutes: i64,
    /// The transaction coordinator's configs (`transaction.*`, `transactional.id.*`).
    pub transactions: crate::txn::TxnConfig,
    /// The log cleaner (compaction): `log.cleaner.*`.
    pub cleaner: CleanerConfig,
    /// Broker-level values of topic configs, by broker name (`log.segment.bytes`).
    pub topic_defaults: BTreeMap<String, String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 0,
            data_dir: PathBuf::from("runnel-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            advertised_listener: None,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9644)),
            num_partitions: 1,
            auto_create_topics: true,
            socket_request_max_bytes: 100 * 1024 * 1024,
            queued_max_request_bytes: 512 * 1024 * 1024,
            max_connections: 10_000,
            retention_check_interval_ms: 30_000,
            group_initial_rebalance_delay_ms: 3000,
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            group_max_size: 1000,
            offsets_retention_minutes: 7 * 24 * 60,
            transactions: Default::default(),
            cleaner: CleanerConfig::default(),
            topic_defaults: BTreeMap::new(),
        }
    }
}

impl BrokerConfig {
    /// Applies `runnel.toml`. Keys are Kafka's names; TOML tables are flattened back to dotted
    /// names, so both `"log.segment.bytes" = 1` and `[log] segment.bytes = 1` work.
    pub fn apply_file(&mut self, path: &std::path::Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        let mut flat = BTreeMap::new();
        flatten("", &toml::Value::Table(table), &mut flat);
        for (key, value) in flat {
            self.set(&key, &value)?;
        }
        Ok(())
    }

    /// Sets one broker config by its Kafka name.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let invalid = |reason: &str| ConfigError::InvalidValue {
            name: key.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        };
        match key {
            "node.id" | "broker.id" => self.node_id = value.parse().map_err(|_| invalid("not an integer"))?,
            "log.dirs" | "log.dir" | "data.dir" => self.data_dir = PathBuf::from(value),
            "listeners" | "listen" => {
                self.listen = parse_listener(value).ok_or_else(|| invalid("expected host:port"))?
            }
            "advertised.listeners" | "advertised.listener" => {
                self.advertised_listener = Some(strip_scheme(value).to_string())
            }
            "admin.listen" => self.admin_listen = parse_listener(value).ok_or_else(|| invalid("expected host:port"))?,
            "num.partitions" => {
                self.num_partitions =
                    value.parse().ok().filter(|n: &i32| *n > 0).ok_or_else(|| invalid("must be a positive integer"))?
            }
            "auto.create.topics.enable" => {
                self.auto_create_topics = value.parse().map_err(|_| invalid("must be true or false"))?
            }
            "socket.request.max.bytes" => {
                self.socket_request_max_bytes =
                    parse_positive(value).ok_or_else(|| invalid("must be a positive integer"))?
            }
            "queued.max.request.bytes" => {
                self.queued_max_request_bytes =
                    parse_positive(value).ok_or_else(|| invalid("must be a positive integer"))?
            }
            "max.connections" => {
                self.max_connections = parse_positive(value).ok_or_else(|| invalid("must be a positive integer"))?
            }
            "log.retention.check.interval.ms" => {
                self.retention_check_interval_ms =
                    parse_positive(value).ok_or_else(|| invalid("must be a positive integer"))? as u64
            }
            "group.initial.rebalance.delay.ms" => {
                self.group_initial_rebalance_delay_ms =
                    value.trim().parse().ok().filter(|n: &i64| *n >= 0).ok_or_else(|| invalid("must be at least 0"))?
            }
            "group.min.session.timeout.ms" => {
                self.group_min_session_timeout_ms =
                    value.trim().parse().ok().filter(|n: &i32| *n > 0).ok_or_else(|| invalid("must be positive"))?
            }
            "group.max.session.timeout.ms" => {
                self.group_max_session_timeout_ms =
                    value.trim().parse().ok().filter(|n: &i32| *n > 0).ok_or_else(|| invalid("must be positive"))?
            }
            "group.max.size" => {
                self.group_max_size = parse_positive(value).ok_or_else(|| invalid("must be a positive integer"))?
            }
            "offsets.retention.minutes" => {
                self.offsets_retention_minutes =
                    value.trim().parse().ok().filter(|n: &i64| *n > 0).ok_or_else(|| invalid("must be positive"))?
            }
            key if crate::txn::TxnConfig::owns(key) => self.transactions.set(key, value)?,
            "log.cleaner.enable" => {
                self.cleaner.enable = value.parse().map_err(|_| invalid("must be true or false"))?
            }
            "log.cleaner.threads" => {
                // Two cleaners per core at most: more only adds contention on a small machine.
                self.cleaner.threads =
                    parse_positive(value).filter(|n| *n <= 64).ok_or_else(|| invalid("must be between 1 and 64"))?
            }
            "log.cleaner.dedupe.buffer.size" => {
                // Kafka's minimum is 1 MiB; tests use less to force many passes, so allow 1 KiB.
                self.cleaner.dedupe_buffer_bytes =
                    parse_positive(value).filter(|n| *n >= 1024).ok_or_else(|| invalid("must be at least 1024"))?
            }
            "log.cleaner.backoff.ms" => {
                self.cleaner.backoff_ms =
                    parse_positive(value).ok_or_else(|| invalid("must be a positive integer"))? as u64
            }
            _ => {
                let def = TOPIC_CONFIGS
                    .iter()
                    .find(|d| d.broker_name == key)
                    .ok_or_else(|| ConfigError::Unknown { name: key.to_string() })?;
                def.validate(value)?;
                self.topic_defaults.insert(def.broker_name.to_string(), value.to_string());
            }
        }
        Ok(())
    }

    /// The value and source of a topic config when the topic does not override it.
    pub fn topic_default(&self, def: &TopicConfigDef) -> (String, ConfigSource) {
        match self.topic_defaults.get(def.broker_name) {
            Some(value) => (value.clone(), ConfigSource::StaticBroker),
            None => (def.default.to_string(), ConfigSource::Default),
        }
    }

    /// Resolves one topic config: the override, else the broker's value, else the default.
    pub fn resolve(&self, overrides: &BTreeMap<String, String>, def: &TopicConfigDef) -> (String, ConfigSource) {
        match overrides.get(def.name) {
            Some(value) => (value.clone(), ConfigSource::TopicOverride),
            None => self.topic_default(def),
        }
    }

    /// The log settings for a topic with these overrides.
    pub fn log_config(&self, overrides: &BTreeMap<String, String>) -> LogConfig {
        let number = |name: &str| -> i64 {
            let def = topic_config_def(name).expect("LogConfig reads only known configs");
            let (value, _) = self.resolve(overrides, def);
            // Values were validated when stored; a default that fails to parse is a bug here.
            value.trim().parse().unwrap_or_else(|_| def.default.parse().expect("built-in defaults parse"))
        };
        let policy = self.resolve(overrides, topic_config_def("cleanup.policy").expect("known config")).0;
        let compact = policy.split(',').any(|p| p.trim() == "compact");
        // `compact` without `delete`: nothing is deleted by age or size, only by the cleaner.
        let delete = policy.split(',').any(|p| p.trim() == "delete");
        let ratio = {
            let def = topic_config_def("min.cleanable.dirty.ratio").expect("known config");
            self.resolve(overrides, def).0.trim().parse().unwrap_or(0.5)
        };
        LogConfig {
            segment_bytes: number("segment.bytes").max(14) as u64,
            segment_ms: number("segment.ms"),
            retention_ms: if delete { number("retention.ms") } else { -1 },
            retention_bytes: if delete { number("retention.bytes") } else { -1 },
            compaction: CompactionConfig {
                enabled: compact,
                min_cleanable_dirty_ratio: ratio,
                min_compaction_lag_ms: number("min.compaction.lag.ms"),
                max_compaction_lag_ms: number("max.compaction.lag.ms"),
                delete_retention_ms: number("delete.retention.ms"),
            },
            index_interval_bytes: number("index.interval.bytes").max(0) as u64,
            max_message_bytes: number("max.message.bytes").max(0) as u64,
            flush_messages: number("flush.messages").max(1) as u64,
            flush_ms: number("flush.ms"),
        }
    }

    /// The host:port clients are told to connect to.
    pub fn advertised(&self) -> (String, i32) {
        let text = self.advertised_listener.clone().unwrap_or_else(|| self.listen.to_string());
        match text.rsplit_once(':') {
            Some((host, port)) => {
                (host.trim_matches(|c| c == '[' || c == ']').to_string(), port.parse().unwrap_or(9092))
            }
            None => (text, 9092),
        }
    }
}

fn parse_positive(value: &str) -> Option<usize> {
    value.trim().parse().ok().filter(|n: &usize| *n > 0)
}

fn strip_scheme(value: &str) -> &str {
    // Kafka writes listeners as PLAINTEXT://host:port.
    value.split_once("://").map(|(_, rest)| rest).unwrap_or(value)
}

fn parse_listener(value: &str) -> Option<SocketAddr> {
    let addr = strip_scheme(value.trim());
    let addr = addr.replace("localhost", "127.0.0.1");
    addr.parse().ok()
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, inner) in table {
                let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                flatten(&name, inner, out);
            }
        }
        toml::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_dotted_and_quoted_keys_both_reach_kafka_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("runnel.toml");
        std::fs::write(&path, "\"num.partitions\" = 6\n[log]\nsegment.bytes = 2048\n").expect("write");
        let mut config = BrokerConfig::default();
        config.apply_file(&path).expect("valid file");
        assert_eq!(config.num_partitions, 6);
        assert_eq!(config.log_config(&BTreeMap::new()).segment_bytes, 2048);
        let def = topic_config_def("segment.bytes").expect("known");
        assert_eq!(config.topic_default(def), ("2048".to_string(), ConfigSource::StaticBroker));
    }

    #[test]
    fn topic_override_beats_broker_value() {
        let mut config = BrokerConfig::default();
        config.set("log.retention.ms", "1000").expect("valid");
        let overrides = BTreeMap::from([("retention.ms".to_string(), "5".to_string())]);
        assert_eq!(config.log_config(&overrides).retention_ms, 5);
        assert_eq!(config.log_config(&BTreeMap::new()).retention_ms, 1000);
    }

    #[test]
    fn compact_policies_are_accepted_and_resolved() {
        let def = topic_config_def("cleanup.policy").expect("known");
        for ok in ["compact", "delete", "compact,delete", "delete, compact"] {
            def.validate(ok).expect(ok);
        }
        assert!(def.validate("compacted").is_err());
        let mut config = BrokerConfig::default();
        let overrides = BTreeMap::from([
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("retention.ms".to_string(), "5".to_string()),
            ("delete.retention.ms".to_string(), "7".to_string()),
        ]);
        let log = config.log_config(&overrides);
        assert!(log.compaction.enabled);
        assert_eq!(log.retention_ms, -1, "compact alone never deletes by age");
        assert_eq!(log.compaction.delete_retention_ms, 7);
        assert_eq!(log.compaction.min_cleanable_dirty_ratio, 0.5);
        config.set("log.cleanup.policy", "compact,delete").expect("broker default");
        config.set("log.cleaner.dedupe.buffer.size", "4096").expect("small map");
        assert!(config.set("log.cleaner.threads", "0").is_err());
        let log = config.log_config(&BTreeMap::from([("retention.ms".to_string(), "5".to_string())]));
        assert!(log.compaction.enabled);
        assert_eq!(log.retention_ms, 5);
        assert_eq!(config.cleaner.dedupe_buffer_bytes, 4096);
        assert!(!BrokerConfig::default().log_config(&BTreeMap::new()).compaction.enabled);
    }

    #[test]
    fn bad_values_and_unknown_names_are_refused() {
        let mut config = BrokerConfig::default();
        assert!(matches!(config.set("log.segment.bytes", "abc"), Err(ConfigError::InvalidValue { .. })));
        assert!(matches!(config.set("no.such.thing", "1"), Err(ConfigError::Unknown { .. })));
        let bad = BTreeMap::from([("retention.ms".to_string(), "-7".to_string())]);
        assert!(validate_topic_configs(&bad).is_err());
        let unknown = BTreeMap::from([("retention.weeks".to_string(), "1".to_string())]);
        assert!(validate_topic_configs(&unknown).is_err());
    }
}
