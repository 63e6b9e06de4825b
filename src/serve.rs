//! `runnel serve`: configuration from defaults, `runnel.toml` and flags, then the broker.

use std::path::PathBuf;

use anyhow::Context;
use runnel_broker::config::BrokerConfig;

#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// Directory for logs and metadata
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Kafka listener address (host:port)
    #[arg(long)]
    listen: Option<String>,
    /// host:port that clients are told to connect to (default: the listen address)
    #[arg(long)]
    advertised_listener: Option<String>,
    /// Admin HTTP address (health, metrics)
    #[arg(long)]
    admin_listen: Option<String>,
    /// This broker's node id
    #[arg(long)]
    node_id: Option<i32>,
    /// Config file with Kafka config names, e.g. "log.segment.bytes" = 1048576
    #[arg(long)]
    config: Option<PathBuf>,
    /// Set one broker config by its Kafka name (repeatable), e.g. --set num.partitions=6
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Threads that run WASM transforms, at lower priority [default: cores - 1, at least 1]
    #[arg(long)]
    transform_threads: Option<usize>,
    /// Log filter, e.g. info or runnel_broker=debug (env RUST_LOG)
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
}

/// Builds the broker config: defaults, then the file, then `--set`, then the named flags.
fn broker_config(args: &ServeArgs) -> anyhow::Result<BrokerConfig> {
    let mut config = BrokerConfig::default();
    if let Some(path) = &args.config {
        config.apply_file(path)?;
    }
    for pair in &args.set {
        let (key, value) = pair.split_once('=').with_context(|| format!("--set {pair}: expected KEY=VALUE"))?;
        config.set(key.trim(), value.trim())?;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(listen) = &args.listen {
        config.set("listeners", listen)?;
    }
    if let Some(advertised) = &args.advertised_listener {
        config.set("advertised.listeners", advertised)?;
    }
    if let Some(admin) = &args.admin_listen {
        config.set("admin.listen", admin)?;
    }
    if let Some(node_id) = args.node_id {
        config.node_id = node_id;
    }
    Ok(config)
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let config = broker_config(&args)?;
    let data_dir = config.data_dir.clone();
    let broker = tokio::task::spawn_blocking(move || runnel_broker::Broker::open(config))
        .await?
        .with_context(|| format!("cannot open data directory {}", data_dir.display()))?;
    let factory = crate::wasm::factory(&data_dir)?;
    let threads = args.transform_threads.unwrap_or_else(runnel_runtime::transform::ComputePool::default_threads);
    let pool = runnel_runtime::transform::ComputePool::new(threads);
    let service = runnel_runtime::transform::TransformService::start(
        std::sync::Arc::clone(&broker),
        std::sync::Arc::clone(&factory),
        std::sync::Arc::clone(&pool),
    )
    .context("starting transforms")?;
    let connect = runnel_runtime::connect::ConnectService::start(std::sync::Arc::clone(&broker), factory, pool)
        .context("starting connectors")?;
    let sql = runnel_runtime::sql::SqlEngine::start(std::sync::Arc::clone(&broker)).await.context("starting SQL")?;
    let routes = runnel_runtime::transform::http::routes(std::sync::Arc::clone(&service))
        .merge(runnel_runtime::connect::http::routes(std::sync::Arc::clone(&connect)))
        .merge(runnel_runtime::sql::http::routes(std::sync::Arc::clone(&sql)));
    let listeners = runnel_broker::server::Listeners::bind(&broker).await?;
    // Transforms, connectors and views stop at a batch boundary before the server drains and the logs close.
    let shutdown = async move {
        shutdown_signal().await;
        connect.shutdown().await;
        service.shutdown().await;
        sql.views().shutdown().await;
    };
    runnel_broker::server::serve_with_routes(broker, listeners, routes, shutdown).await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
