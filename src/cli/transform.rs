//! `runnel transform deploy|list|describe|logs|pause|resume|remove`: the admin API's
//! `/v1/transforms` from the command line.

use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use clap::Subcommand;
use hyper::Method;

use super::admin_http::{check, request};
use super::ConnectArgs;

#[derive(Subcommand, Debug)]
pub(crate) enum TransformCommand {
    /// Deploy a WASM module as a transform, or upgrade the one with this name in place
    Deploy {
        /// The module (.wasm) to run
        file: PathBuf,
        /// Transform name
        #[arg(long)]
        name: String,
        /// Input topic
        #[arg(long)]
        input: String,
        /// Output topic, repeatable; the module addresses them by index in this order
        #[arg(long = "output", required = true)]
        outputs: Vec<String>,
        /// Environment for the module, repeatable
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Where a new transform starts: earliest, latest, an offset, or a time (ISO 8601 or @<ms>)
        #[arg(long, default_value = "latest", value_parser = parse_from)]
        from: String,
        /// What a failing batch does: skip, dead-letter (to <name>.dlq) or stop
        #[arg(long, default_value = "skip")]
        on_error: String,
    },
    /// List transforms with status, lag and counts
    List,
    /// Show one transform and its per-partition instances
    Describe { name: String },
    /// Show a transform's recent log lines
    Logs { name: String },
    /// Pause a transform (instances stop between batches)
    Pause { name: String },
    /// Resume a paused (or stopped-on-error) transform
    Resume { name: String },
    /// Move a transform's input position (earliest, an offset, or a time) and run on from there; state is kept
    Replay {
        name: String,
        /// earliest, latest, an offset, or a time (ISO 8601 or @<ms>)
        #[arg(long, value_parser = parse_from)]
        from: String,
    },
    /// Remove a transform (its changelog and dead-letter topics stay)
    Remove { name: String },
}

pub(crate) async fn run(connect: &ConnectArgs, command: TransformCommand) -> anyhow::Result<()> {
    let admin = connect.admin.as_str();
    match command {
        TransformCommand::Deploy { file, name, input, outputs, env, from, on_error } => {
            let module = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("input", &input);
            for output in &outputs {
                query.append_pair("output", output);
            }
            for pair in &env {
                anyhow::ensure!(pair.contains('='), "--env {pair}: expected KEY=VALUE");
                query.append_pair("env", pair);
            }
            query.append_pair("from", &from);
            query.append_pair("on_error", &on_error);
            let path = format!("/v1/transforms/{}?{}", encode(&name), query.finish());
            let (status, body) = request(admin, Method::PUT, &path, Bytes::from(module)).await?;
            check(status, &body)?;
            let info: serde_json::Value = serde_json::from_slice(&body).context("reading the deploy answer")?;
            println!(
                "deployed {name} v{} ({} partitions of {input})",
                info["version"],
                info["instances"].as_array().map_or(0, Vec::len)
            );
        }
        TransformCommand::List => {
            let infos = get(admin, "/v1/transforms").await?;
            println!(
                "{:<24} {:<9} {:<24} {:>10} {:>10} {:>8}",
                "NAME", "STATUS", "INPUT", "PROCESSED", "FAILED", "LAG"
            );
            for info in infos.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<9} {:<24} {:>10} {:>10} {:>8}",
                    text(&info["name"]),
                    text(&info["status"]),
                    text(&info["input"]),
                    text(&info["processed"]),
                    text(&info["failed"]),
                    text(&info["lag"])
                );
            }
        }
        TransformCommand::Describe { name } => {
            let info = get(admin, &format!("/v1/transforms/{}", encode(&name))).await?;
            describe(&info);
        }
        TransformCommand::Logs { name } => {
            let lines = get(admin, &format!("/v1/transforms/{}/logs", encode(&name))).await?;
            for line in lines.as_array().into_iter().flatten() {
                println!("{}", text(line));
            }
        }
        TransformCommand::Pause { name } => control(admin, &name, "pause").await?,
        TransformCommand::Resume { name } => control(admin, &name, "resume").await?,
        TransformCommand::Replay { name, from } => {
            let path = format!("/v1/transforms/{}/replay?from={}", encode(&name), encode(&from));
            let (status, body) = request(admin, Method::POST, &path, Bytes::new()).await?;
            check(status, &body)?;
            println!("{name}: replaying from {from}");
        }
        TransformCommand::Remove { name } => {
            let (status, body) =
                request(admin, Method::DELETE, &format!("/v1/transforms/{}", encode(&name)), Bytes::new()).await?;
            check(status, &body)?;
            println!("removed {name}");
        }
    }
    Ok(())
}

async fn get(admin: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let (status, body) = request(admin, Method::GET, path, Bytes::new()).await?;
    check(status, &body)?;
    serde_json::from_slice(&body).context("reading the admin answer")
}

async fn control(admin: &str, name: &str, action: &str) -> anyhow::Result<()> {
    let (status, body) =
        request(admin, Method::POST, &format!("/v1/transforms/{}/{action}", encode(name)), Bytes::new()).await?;
    check(status, &body)?;
    let info: serde_json::Value = serde_json::from_slice(&body).context("reading the admin answer")?;
    println!("{name}: {}", text(&info["status"]));
    Ok(())
}

fn describe(info: &serde_json::Value) {
    println!("name:      {}", text(&info["name"]));
    println!("version:   {}", info["version"]);
    println!("status:    {}", text(&info["status"]));
    println!("input:     {}", text(&info["input"]));
    let outputs: Vec<String> = info["outputs"].as_array().into_iter().flatten().map(text).collect();
    println!("outputs:   {}", outputs.join(", "));
    println!("on error:  {}", text(&info["on_error"]));
    println!("module:    {} bytes", info["module_bytes"]);
    println!("processed: {}  failed: {}  lag: {}", info["processed"], info["failed"], info["lag"]);
    println!();
    println!("{:>9} {:>12} {:>8} {:>10} {:>8}  STATE", "PARTITION", "POSITION", "LAG", "PROCESSED", "FAILED");
    for instance in info["instances"].as_array().into_iter().flatten() {
        let state = match instance.get("error").and_then(|e| e.as_str()) {
            Some(error) => format!("{} ({error})", text(&instance["state"])),
            None => text(&instance["state"]),
        };
        println!(
            "{:>9} {:>12} {:>8} {:>10} {:>8}  {state}",
            text(&instance["partition"]),
            text(&instance["position"]),
            text(&instance["lag"]),
            text(&instance["processed"]),
            text(&instance["failed"])
        );
    }
}

/// `earliest`, `latest`, an offset, `@<ms>`, or an ISO 8601 time (sent as `@<ms>`).
fn parse_from(text: &str) -> Result<String, String> {
    if text == "earliest" || text == "latest" || text.starts_with('@') || text.parse::<u64>().is_ok() {
        return Ok(text.to_string());
    }
    super::group::parse_datetime_ms(text)
        .map(|ms| format!("@{ms}"))
        .map_err(|e| format!("expected earliest, latest, an offset or a time: {e}"))
}

fn text(value: &serde_json::Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_string)
}

fn encode(segment: &str) -> String {
    form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}
