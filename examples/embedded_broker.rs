//! Embeds a Runnel broker in your own program, e.g. for integration tests of a Kafka app.
//!
//! `cargo run --example embedded_broker -- 127.0.0.1:19092 /tmp/runnel-embedded`
//! then point any Kafka client at 127.0.0.1:19092; Ctrl-C stops it cleanly.

use runnel_broker::config::BrokerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut config = BrokerConfig::default();
    config.set("listeners", &args.next().unwrap_or_else(|| "127.0.0.1:19092".into()))?;
    config.data_dir = args.next().unwrap_or_else(|| "runnel-embedded-data".into()).into();
    config.set("admin.listen", &args.next().unwrap_or_else(|| "127.0.0.1:19644".into()))?;
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let broker = runnel_broker::Broker::open(config)?;
    runnel_broker::server::serve(broker, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
