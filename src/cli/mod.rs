//! `runnel topic|produce|consume`: a small Kafka client that talks to any Kafka-compatible
//! broker (Runnel or Apache Kafka) over the wire protocol.
//!
//! Layout: `client` owns one framed TCP connection and version negotiation; `cluster` adds
//! metadata and leader connections on top; `topic`, `produce` and `consume` are the commands;
//! `partitioner`, `format` and `error` are pure helpers with unit tests.

mod admin_http;
mod client;
mod cluster;
mod connector;
mod consume;
mod error;
mod format;
mod group;
mod offsets;
use runnel_broker::partitioner;
mod produce;
mod sql;
mod topic;
mod transform;

use clap::{Args, Subcommand, ValueEnum};

pub(crate) use connector::{run as run_connector, ConnectorCommand};
pub(crate) use group::GroupCommand;
pub(crate) use sql::{run as run_sql, SqlArgs};
pub(crate) use transform::{run as run_transform, TransformCommand};

/// Where the brokers are. Shared by every client command; `global` so that
/// `runnel topic list --brokers …` works as well as `runnel topic --brokers … list`.
#[derive(Args, Debug)]
pub(crate) struct ConnectArgs {
    /// Kafka bootstrap address(es), comma separated
    #[arg(long, global = true, env = "RUNNEL_BROKERS", default_value = "127.0.0.1:9092")]
    pub(crate) brokers: String,
    /// Admin HTTP address
    #[arg(long, global = true, env = "RUNNEL_ADMIN", default_value = "http://127.0.0.1:9644")]
    pub(crate) admin: String,
}

#[derive(Subcommand, Debug)]
pub(crate) enum TopicCommand {
    /// Create a topic (replication factor 1)
    Create {
        /// Topic name
        name: String,
        /// Number of partitions [default: the broker's num.partitions]
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        partitions: Option<i32>,
        /// Topic config, repeatable
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
    },
    /// List topics, one per line, sorted
    List {
        /// Also list internal topics (names starting with "__")
        #[arg(long)]
        all: bool,
    },
    /// Show partitions, leaders, offsets and configs of a topic
    Describe {
        /// Topic name
        name: String,
    },
    /// Delete a topic and all its data
    Delete {
        /// Topic name
        name: String,
    },
    /// Add partitions to a topic (existing records stay where they are; keys hash over the new
    /// count from now on, so per-key order holds only for records produced after the change)
    #[command(group(clap::ArgGroup::new("how_many").required(true).args(["num", "total"])))]
    AddPartitions {
        /// Topic name
        name: String,
        /// Partitions to add (like `rpk topic add-partitions --num`)
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        num: Option<i32>,
        /// The topic's new partition count (like `kafka-topics --alter --partitions`)
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        total: Option<i32>,
    },
    /// Set or remove topic configs
    AlterConfig {
        /// Topic name
        name: String,
        /// Config to set, repeatable
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        set: Vec<(String, String)>,
        /// Config to reset to its default, repeatable
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
    },
}

/// Which replicas must have a record before the broker acknowledges it.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Acks {
    /// All in-sync replicas (-1)
    #[value(name = "all", alias = "-1")]
    All,
    /// The leader only
    #[value(name = "1")]
    Leader,
    /// No acknowledgement: the broker sends no response at all
    #[value(name = "0")]
    None,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CompressionArg {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// Produce one record per stdin line.
#[derive(Args, Debug)]
pub(crate) struct ProduceArgs {
    /// Topic to produce to
    pub(crate) topic: String,
    /// Split each line at the first SEP into key and value (lines without SEP get a null key)
    #[arg(long, value_name = "SEP", value_parser = parse_separator)]
    pub(crate) key_separator: Option<String>,
    /// Write every record to this partition instead of hashing the key
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    pub(crate) partition: Option<i32>,
    /// Acknowledgements to wait for
    #[arg(long, value_enum, default_value = "all")]
    pub(crate) acks: Acks,
    /// Compression codec for record batches
    #[arg(long, value_enum, default_value = "none")]
    pub(crate) compression: CompressionArg,
}

/// Print records from a topic (no consumer group: partitions are assigned directly).
#[derive(Args, Debug)]
pub(crate) struct ConsumeArgs {
    /// Topic to consume from
    pub(crate) topic: String,
    /// Start at the earliest offset instead of the end of the log
    #[arg(long, conflicts_with = "offset")]
    pub(crate) from_beginning: bool,
    /// Start at this absolute offset (in --partition, or in every partition)
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
    pub(crate) offset: Option<i64>,
    /// Only consume this partition
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    pub(crate) partition: Option<i32>,
    /// Exit after this many records
    #[arg(long)]
    pub(crate) num: Option<u64>,
    /// Output format: %k key, %v value, %p partition, %o offset, %t timestamp (ms), %T topic,
    /// %% percent; \n newline, \t tab, \\ backslash. A newline is added if the format does not
    /// end with one.
    #[arg(long, value_name = "FMT", default_value = "%v")]
    pub(crate) format: String,
    /// Exit (successfully) after this long without new records
    #[arg(long, value_name = "MS")]
    pub(crate) timeout_ms: Option<u64>,
}

pub(crate) async fn run_topic(connect: &ConnectArgs, command: TopicCommand) -> anyhow::Result<()> {
    topic::run(connect, command).await
}

pub(crate) async fn run_group(connect: &ConnectArgs, command: GroupCommand) -> anyhow::Result<()> {
    group::run(connect, command).await
}

pub(crate) async fn run_produce(connect: &ConnectArgs, args: ProduceArgs) -> anyhow::Result<()> {
    produce::run(connect, args).await
}

pub(crate) async fn run_consume(connect: &ConnectArgs, args: ConsumeArgs) -> anyhow::Result<()> {
    consume::run(connect, args).await
}

/// `KEY=VALUE` → (KEY, VALUE); the value may be empty or contain further `=`.
fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got '{text}'")),
    }
}

fn parse_separator(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("the key separator must not be empty".to_string());
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Mirrors how main.rs mounts these arguments.
    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(subcommand)]
        command: TestCommand,
    }

    #[derive(Subcommand, Debug)]
    enum TestCommand {
        Topic {
            #[command(flatten)]
            connect: ConnectArgs,
            #[command(subcommand)]
            command: TopicCommand,
        },
        Produce {
            #[command(flatten)]
            connect: ConnectArgs,
            #[command(flatten)]
            args: ProduceArgs,
        },
        Consume {
            #[command(flatten)]
            connect: ConnectArgs,
            #[command(flatten)]
            args: ConsumeArgs,
        },
    }

    fn parse(arguments: &[&str]) -> Result<TestCommand, clap::Error> {
        TestCli::try_parse_from(std::iter::once("runnel").chain(arguments.iter().copied())).map(|cli| cli.command)
    }

    #[test]
    fn brokers_may_follow_the_topic_subcommand() {
        for arguments in [["topic", "--brokers", "h:1", "list"], ["topic", "list", "--brokers", "h:1"]] {
            let TestCommand::Topic { connect, .. } = parse(&arguments).expect("parses") else { panic!("not topic") };
            assert_eq!(connect.brokers, "h:1", "{arguments:?}");
        }
    }

    #[test]
    fn key_value_splits_at_the_first_equals_sign() {
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".to_string(), "b=c".to_string())));
        assert_eq!(parse_key_value("a="), Ok(("a".to_string(), String::new())));
        assert!(parse_key_value("=b").is_err());
        assert!(parse_key_value("ab").is_err());
    }

    #[test]
    fn command_line_definitions_are_consistent() {
        use clap::CommandFactory;
        TestCli::command().debug_assert();
    }

    #[test]
    fn produce_defaults_are_acks_all_and_no_compression() {
        let TestCommand::Produce { args, .. } = parse(&["produce", "orders"]).expect("parses") else {
            panic!("not produce")
        };
        assert_eq!(args.acks, Acks::All);
        assert_eq!(args.compression, CompressionArg::None);
        let parsed = parse(&["produce", "orders", "--acks", "0", "--compression", "zstd"]).expect("parses");
        let TestCommand::Produce { args, .. } = parsed else { panic!("not produce") };
        assert_eq!(args.acks, Acks::None);
        assert_eq!(args.compression, CompressionArg::Zstd);
        assert!(parse(&["produce", "orders", "--acks", "2"]).is_err());
        assert!(parse(&["produce", "orders", "--key-separator", ""]).is_err());
    }

    #[test]
    fn consume_rejects_both_start_positions() {
        assert!(parse(&["consume", "t", "--from-beginning", "--offset", "3"]).is_err());
        assert!(parse(&["consume", "t", "--offset", "-3"]).is_err());
        let parsed = parse(&["consume", "t", "--offset", "3", "--partition", "1"]).expect("parses");
        let TestCommand::Consume { args, .. } = parsed else { panic!("not consume") };
        assert_eq!((args.offset, args.partition, args.format.as_str()), (Some(3), Some(1), "%v"));
    }

    #[test]
    fn topic_alter_config_collects_repeated_flags() {
        let parsed =
            parse(&["topic", "alter-config", "t", "--set", "a=1", "--set", "b=2", "--delete", "c"]).expect("parses");
        let TestCommand::Topic { command: TopicCommand::AlterConfig { name, set, delete }, .. } = parsed else {
            panic!("not alter-config: {parsed:?}")
        };
        assert_eq!(name, "t");
        assert_eq!(set, vec![("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())]);
        assert_eq!(delete, vec!["c".to_string()]);
    }
}
