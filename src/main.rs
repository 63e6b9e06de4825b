//! `runnel`: the broker (`runnel serve`) and the command-line client for it.

mod cli;
mod serve;
mod wasm;

#[global_allocator]
static GLOBAL: runnel_broker::alloc::Allocator = runnel_broker::alloc::Allocator;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "runnel", version, about = "Kafka-compatible event streaming with WebAssembly next to the partitions")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker (embedded defaults: data in ./runnel-data, Kafka on 127.0.0.1:9092, admin on 127.0.0.1:9644)
    Serve(serve::ServeArgs),
    /// Create, list, describe, delete and configure topics
    Topic {
        #[command(flatten)]
        connect: cli::ConnectArgs,
        #[command(subcommand)]
        command: cli::TopicCommand,
    },
    /// List, describe, reset offsets of and delete consumer groups
    Group {
        #[command(flatten)]
        connect: cli::ConnectArgs,
        #[command(subcommand)]
        command: cli::GroupCommand,
    },
    /// Produce one record per stdin line
    Produce {
        #[command(flatten)]
        connect: cli::ConnectArgs,
        #[command(flatten)]
        args: cli::ProduceArgs,
    },
    /// Consume records and print them
    Consume {
        #[command(flatten)]
        connect: cli::ConnectArgs,
        #[command(flatten)]
        args: cli::ConsumeArgs,
    },
    /// Deploy and operate WASM transforms (through the admin API)
    Transform {
        #[command(flatten)]
        connect: cli::ConnectArgs,
        #[command(subcommand)]
        command: cli::TransformCommand,
    },
    /// Create and operate hosted connectors (Kafka Connect's REST API on the admin port)
    Connector {
        #[command(flatten)]
        connect: cli::ConnectArgs,
        #[command(subcommand)]
        command: cli::ConnectorCommand,
    },
    /// Run a SQL statement against the broker's topics (through the admin API)
    Sql {
        #[command(flatten)]
        connect: cli::ConnectArgs,
        #[command(flatten)]
        args: cli::SqlArgs,
    },
    /// Benchmark a running broker with librdkafka; results are ratios to this machine's ceiling
    Bench {
        #[command(subcommand)]
        command: runnel_bench::BenchCommand,
    },
}

fn main() -> ExitCode {
    runnel_broker::alloc::tune_system_allocator();
    let cli = Cli::parse();
    match try_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // Output piped into `head` and the like: the reader left, which is not an error.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        // librdkafka runs its own threads; the benchmark needs no async runtime.
        Command::Bench { command } => runnel_bench::run(command),
        Command::Serve(args) => runtime()?.block_on(serve::run(args)),
        Command::Topic { connect, command } => runtime()?.block_on(cli::run_topic(&connect, command)),
        Command::Group { connect, command } => runtime()?.block_on(cli::run_group(&connect, command)),
        Command::Produce { connect, args } => runtime()?.block_on(cli::run_produce(&connect, args)),
        Command::Consume { connect, args } => runtime()?.block_on(cli::run_consume(&connect, args)),
        Command::Transform { connect, command } => runtime()?.block_on(cli::run_transform(&connect, command)),
        Command::Connector { connect, command } => runtime()?.block_on(cli::run_connector(&connect, command)),
        Command::Sql { connect, args } => runtime()?.block_on(cli::run_sql(&connect, args)),
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}
