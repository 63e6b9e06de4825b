//! Connector configs: Kafka Connect's flat map of strings, with Connect's key names where they
//! exist (`connector.class`, `tasks.max`, `topics`, `errors.tolerance`, ...). Everything is
//! checked before a connector is stored, so a refused config changes nothing.

use std::collections::BTreeMap;

use serde::Serialize;

use super::ConnectError;

/// A connector's config as the user wrote it.
pub type ConfigMap = BTreeMap<String, String>;

/// Tasks per connector: each task holds a PostgreSQL connection or a file, so a typo such as
/// `tasks.max=1000` must not open a thousand of them.
pub const TASKS_MAX_LIMIT: u32 = 64;
/// Entries and bytes of a config: it is stored in `__runnel_connect_configs` and shown by the API.
pub const CONFIG_ENTRIES_MAX: usize = 256;
pub const CONFIG_BYTES_MAX: usize = 256 * 1024;
/// Environment handed to a connector's WASM module: `wasm.env.<NAME>` keys.
const WASM_ENV_PREFIX: &str = "wasm.env.";
/// Compiled size of a `topics.regex`: it is matched against every topic name at each metadata
/// change, so a pathological pattern must be refused rather than slow every sink task.
const TOPICS_REGEX_BYTES_MAX: usize = 1024 * 1024;
/// Internal topics (`__consumer_offsets`, `__runnel_*`) are never read by a `topics.regex`.
pub const INTERNAL_TOPIC_PREFIX: &str = "__";

/// The connectors Runnel hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConnectorClass {
    PostgresSink,
    FileSink,
    FileSource,
    HttpSource,
    PostgresSource,
    DatagenSource,
}

impl ConnectorClass {
    pub const ALL: [ConnectorClass; 6] = [
        ConnectorClass::PostgresSink,
        ConnectorClass::FileSink,
        ConnectorClass::FileSource,
        ConnectorClass::HttpSource,
        ConnectorClass::PostgresSource,
        ConnectorClass::DatagenSource,
    ];

    /// Runnel's names, and the Kafka Connect class names of the connectors they stand in for.
    pub fn parse(text: &str) -> Option<ConnectorClass> {
        let simple = text.rsplit('.').next().unwrap_or(text);
        Some(match (text, simple) {
            ("postgres-sink", _) | (_, "JdbcSinkConnector") => ConnectorClass::PostgresSink,
            ("file-sink", _) | (_, "FileStreamSinkConnector" | "FileStreamSink") => ConnectorClass::FileSink,
            ("file-source", _) | (_, "FileStreamSourceConnector" | "FileStreamSource") => ConnectorClass::FileSource,
            ("http-source", _) => ConnectorClass::HttpSource,
            ("postgres-source", _) | (_, "JdbcSourceConnector") => ConnectorClass::PostgresSource,
            ("datagen-source", _) | (_, "DatagenConnector") => ConnectorClass::DatagenSource,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ConnectorClass::PostgresSink => "postgres-sink",
            ConnectorClass::FileSink => "file-sink",
            ConnectorClass::FileSource => "file-source",
            ConnectorClass::HttpSource => "http-source",
            ConnectorClass::PostgresSource => "postgres-source",
            ConnectorClass::DatagenSource => "datagen-source",
        }
    }

    pub fn is_sink(self) -> bool {
        matches!(self, ConnectorClass::PostgresSink | ConnectorClass::FileSink)
    }

    /// Connect's `type` field.
    pub fn kind(self) -> &'static str {
        if self.is_sink() {
            "sink"
        } else {
            "source"
        }
    }

    /// How many tasks run for `tasks.max`: connectors that own one resource (a file, a port, a
    /// table, a generator's sequence) run one task whatever is asked, as Connect's do.
    pub fn tasks(self, tasks_max: u32) -> u32 {
        match self {
            ConnectorClass::PostgresSink => tasks_max,
            _ => 1,
        }
    }
}

/// Connect's `errors.tolerance`: what a record that cannot be delivered does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tolerance {
    /// The task fails (the record is not skipped; a restart retries it).
    None,
    /// The record is skipped, or sent to the dead-letter topic when one is configured.
    All,
}

/// The settings every connector has.
#[derive(Debug, Clone)]
pub struct Common {
    pub name: String,
    pub class: ConnectorClass,
    pub tasks_max: u32,
    /// Sinks: the topics read (`topics`), empty when `topics_regex` selects them.
    pub topics: Vec<String>,
    /// Sinks: `topics.regex`, anchored (a topic matches when the whole name matches, as with
    /// Connect's Java pattern); topics are matched as they appear.
    pub topics_regex: Option<regex::Regex>,
    pub tolerance: Tolerance,
    pub dlq_topic: Option<String>,
    /// `errors.deadletterqueue.context.headers.enable`: error and source position in headers.
    pub dlq_context_headers: bool,
    /// Retries of an operation that may succeed later (a lost connection) before the task fails.
    pub max_retries: u32,
    pub retry_backoff_ms: u64,
    /// `wasm.module`: a module file read at create (its bytes are stored with the config).
    pub wasm_module: Option<String>,
    pub wasm_env: BTreeMap<String, String>,
}

impl Common {
    /// Reads and checks the common settings of connector `name`.
    pub fn parse(name: &str, config: &ConfigMap) -> Result<Common, ConnectError> {
        check_name(name)?;
        check_size(config)?;
        let settings = Settings(config);
        let class_name = settings.required("connector.class")?;
        let class = ConnectorClass::parse(class_name).ok_or_else(|| {
            let known: Vec<&str> = ConnectorClass::ALL.iter().map(|c| c.name()).collect();
            invalid(format!("connector.class {class_name:?} is not known; use one of {}", known.join(", ")))
        })?;
        let tasks_max = settings.u64_or("tasks.max", 1)?;
        if tasks_max == 0 || tasks_max > TASKS_MAX_LIMIT as u64 {
            return Err(invalid(format!("tasks.max must be 1 to {TASKS_MAX_LIMIT}, got {tasks_max}")));
        }
        let topics = settings.list("topics");
        let topics_regex = settings.str("topics.regex").map(compile_topics_regex).transpose()?;
        if class.is_sink() && topics.is_empty() == topics_regex.is_none() {
            return Err(invalid(
                "a sink needs one of topics (comma-separated topic names) or topics.regex, not both".into(),
            ));
        }
        if !class.is_sink() && topics_regex.is_some() {
            return Err(invalid("topics.regex is a sink setting; a source writes to `topic`".into()));
        }
        let tolerance = match settings.one_of("errors.tolerance", "none", &["none", "all"])? {
            "all" => Tolerance::All,
            _ => Tolerance::None,
        };
        let dlq_topic = settings.str("errors.deadletterqueue.topic.name").map(str::to_string);
        if dlq_topic.is_some() && tolerance == Tolerance::None {
            return Err(invalid("errors.deadletterqueue.topic.name needs errors.tolerance=all".into()));
        }
        let read = |t: &String| topics.contains(t) || topics_regex.as_ref().is_some_and(|r| r.is_match(t));
        if dlq_topic.as_ref().is_some_and(read) {
            return Err(invalid(
                "the dead-letter topic may not be one of the topics read (topics or topics.regex)".into(),
            ));
        }
        let wasm_env = config
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(WASM_ENV_PREFIX).map(|k| (k.to_string(), v.clone())))
            .collect();
        Ok(Common {
            name: name.to_string(),
            class,
            tasks_max: tasks_max as u32,
            topics,
            topics_regex,
            tolerance,
            dlq_topic,
            dlq_context_headers: settings.bool_or("errors.deadletterqueue.context.headers.enable", true)?,
            max_retries: settings.u64_or("max.retries", 10)?.min(u32::MAX as u64) as u32,
            retry_backoff_ms: settings.u64_or("retry.backoff.ms", 3000)?,
            wasm_module: settings.str("wasm.module").map(str::to_string),
            wasm_env,
        })
    }

    /// Tasks that actually run.
    pub fn tasks(&self) -> u32 {
        self.class.tasks(self.tasks_max)
    }

    /// Whether a sink reads `topic`: listed in `topics`, or matched by `topics.regex` (which
    /// never matches an internal topic).
    pub fn reads_topic(&self, topic: &str) -> bool {
        match &self.topics_regex {
            Some(pattern) => !topic.starts_with(INTERNAL_TOPIC_PREFIX) && pattern.is_match(topic),
            None => self.topics.iter().any(|t| t == topic),
        }
    }
}

/// Compiles `topics.regex` anchored at both ends: Connect matches the whole topic name.
fn compile_topics_regex(pattern: &str) -> Result<regex::Regex, ConnectError> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(TOPICS_REGEX_BYTES_MAX)
        .build()
        .map_err(|e| invalid(format!("topics.regex {pattern:?}: {e}")))
}

/// Typed access to a config map.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a>(pub &'a ConfigMap);

impl<'a> Settings<'a> {
    /// The trimmed value of `key`, if set and not empty.
    pub fn str(&self, key: &str) -> Option<&'a str> {
        self.0.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    pub fn required(&self, key: &str) -> Result<&'a str, ConnectError> {
        self.str(key).ok_or_else(|| invalid(format!("{key} is required")))
    }

    pub fn u64_or(&self, key: &str, default: u64) -> Result<u64, ConnectError> {
        match self.str(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| invalid(format!("{key}={v:?}: expected a non-negative integer"))),
        }
    }

    pub fn i64_or(&self, key: &str, default: i64) -> Result<i64, ConnectError> {
        match self.str(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| invalid(format!("{key}={v:?}: expected an integer"))),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConnectError> {
        match self.str(key) {
            None => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(invalid(format!("{key}={v:?}: expected true or false"))),
        }
    }

    /// A comma-separated list, without empty entries.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.str(key)
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// The value of `key` (or `default`), which must be one of `allowed`.
    pub fn one_of(&self, key: &str, default: &'a str, allowed: &[&str]) -> Result<&'a str, ConnectError> {
        let value = self.str(key).unwrap_or(default);
        if allowed.contains(&value) {
            Ok(value)
        } else {
            Err(invalid(format!("{key}={value:?}: expected one of {}", allowed.join(", "))))
        }
    }
}

pub(crate) fn invalid(message: String) -> ConnectError {
    ConnectError::InvalidConfig(message)
}

fn check_name(name: &str) -> Result<(), ConnectError> {
    let valid =
        (1..=200).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(invalid(format!("connector name {name:?}: use 1-200 characters of [a-zA-Z0-9._-]")))
    }
}

fn check_size(config: &ConfigMap) -> Result<(), ConnectError> {
    let bytes: usize = config.iter().map(|(k, v)| k.len() + v.len()).sum();
    if config.len() > CONFIG_ENTRIES_MAX || bytes > CONFIG_BYTES_MAX {
        return Err(invalid(format!(
            "a config is limited to {CONFIG_ENTRIES_MAX} entries and {CONFIG_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> ConfigMap {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn classes_parse_by_runnel_and_connect_names() {
        assert_eq!(ConnectorClass::parse("postgres-sink"), Some(ConnectorClass::PostgresSink));
        assert_eq!(
            ConnectorClass::parse("io.confluent.connect.jdbc.JdbcSinkConnector"),
            Some(ConnectorClass::PostgresSink)
        );
        assert_eq!(ConnectorClass::parse("FileStreamSource"), Some(ConnectorClass::FileSource));
        assert_eq!(ConnectorClass::parse("mongo-sink"), None);
        for class in ConnectorClass::ALL {
            assert_eq!(ConnectorClass::parse(class.name()), Some(class));
        }
    }

    #[test]
    fn topics_regex_matches_whole_names_and_never_internal_topics() {
        let config = map(&[("connector.class", "postgres-sink"), ("topics.regex", "orders-.*|audit")]);
        let common = Common::parse("n", &config).expect("valid");
        assert!(common.topics.is_empty());
        for (topic, read) in [
            ("orders-eu", true),
            ("orders-", true),
            ("audit", true),
            ("audit-log", false),
            ("old-orders-eu", false),
            ("__orders-x", false),
        ] {
            assert_eq!(common.reads_topic(topic), read, "{topic}");
        }
        let mut internal = config.clone();
        internal.insert("topics.regex".into(), ".*".into());
        assert!(!Common::parse("n", &internal).expect("valid").reads_topic("__consumer_offsets"));
        let mut broken = config.clone();
        broken.insert("topics.regex".into(), "orders-(".into());
        let error = Common::parse("n", &broken).expect_err("unbalanced pattern");
        assert!(error.to_string().contains("topics.regex"), "{error}");
        let mut dlq = config.clone();
        dlq.extend(map(&[("errors.tolerance", "all"), ("errors.deadletterqueue.topic.name", "orders-dead")]));
        assert!(Common::parse("n", &dlq).is_err(), "the dead-letter topic matches the pattern");
        let source = map(&[("connector.class", "file-source"), ("topics.regex", "a.*"), ("file", "/x")]);
        assert!(Common::parse("n", &source).is_err());
    }

    #[test]
    fn common_settings_are_checked() {
        let ok = map(&[("connector.class", "file-sink"), ("topics", "a, b"), ("file", "/tmp/x")]);
        let common = Common::parse("n", &ok).expect("valid");
        assert_eq!(common.topics, vec!["a", "b"]);
        assert_eq!((common.tasks_max, common.tolerance, common.max_retries), (1, Tolerance::None, 10));
        let with = |extra: &[(&str, &str)]| {
            let mut m = ok.clone();
            m.extend(map(extra));
            Common::parse("n", &m)
        };
        assert!(with(&[("tasks.max", "0")]).is_err());
        assert!(with(&[("tasks.max", "65")]).is_err());
        assert!(with(&[("errors.tolerance", "some")]).is_err());
        assert!(with(&[("errors.deadletterqueue.topic.name", "dlq")]).is_err(), "DLQ needs tolerance all");
        assert!(with(&[("errors.tolerance", "all"), ("errors.deadletterqueue.topic.name", "a")]).is_err());
        assert!(with(&[("errors.tolerance", "all"), ("errors.deadletterqueue.topic.name", "dlq")]).is_ok());
        assert!(Common::parse("bad/name", &ok).is_err());
        assert!(Common::parse("n", &map(&[("connector.class", "file-sink")])).is_err(), "a sink needs topics");
        assert!(Common::parse("n", &map(&[("connector.class", "nope")])).is_err());
        let env = with(&[("wasm.env.FIELDS", "a,b")]).expect("valid");
        assert!(with(&[("topics.regex", "a.*")]).is_err(), "topics and topics.regex together");
        assert_eq!(env.wasm_env.get("FIELDS").map(String::as_str), Some("a,b"));
    }
}
