//! `runnel connector create|list|status|pause|resume|restart|delete|config|logs`: the Kafka
//! Connect REST API on the admin port (`/connectors`) from the command line.

use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use clap::Subcommand;
use hyper::Method;

use super::admin_http::{check, request};
use super::ConnectArgs;

#[derive(Subcommand, Debug)]
pub(crate) enum ConnectorCommand {
    /// Create a connector from a JSON file: {"name": ..., "config": {...}} (Connect's shape), or
    /// a flat config object with a "name" key
    Create {
        #[arg(long)]
        file: PathBuf,
    },
    /// Replace a connector's config (or create it) from a JSON file with the config object
    Update {
        name: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// List connectors with their state
    List,
    /// Show a connector's state and its tasks' (with the last error of a failed task)
    Status { name: String },
    /// Show a connector's config
    Config { name: String },
    /// Show a connector's recent log lines (retries, rejected records, errors)
    Logs { name: String },
    /// Pause a connector (its tasks stop between batches; stored, so it survives restarts)
    Pause { name: String },
    /// Resume a paused connector
    Resume { name: String },
    /// Restart a connector's tasks (from their stored positions)
    Restart {
        name: String,
        /// Only the failed tasks
        #[arg(long)]
        only_failed: bool,
    },
    /// Delete a connector (sink positions and source offsets stay, as in Kafka Connect)
    Delete { name: String },
}

pub(crate) async fn run(connect: &ConnectArgs, command: ConnectorCommand) -> anyhow::Result<()> {
    let admin = connect.admin.as_str();
    match command {
        ConnectorCommand::Create { file } => {
            let document = read_json(&file)?;
            let document = match document.get("config") {
                Some(_) => document,
                None => {
                    let name = document.get("name").cloned().context("the file needs a \"name\"")?;
                    serde_json::json!({ "name": name, "config": document })
                }
            };
            let body = serde_json::to_vec(&document)?;
            let (status, body) = request(admin, Method::POST, "/connectors", Bytes::from(body)).await?;
            check(status, &body)?;
            let info: serde_json::Value = serde_json::from_slice(&body).context("reading the answer")?;
            println!("created {} ({} tasks)", text(&info["name"]), info["tasks"].as_array().map_or(0, Vec::len));
        }
        ConnectorCommand::Update { name, file } => {
            let mut config = read_json(&file)?;
            if let Some(inner) = config.get("config") {
                config = inner.clone();
            }
            let path = format!("/connectors/{}/config", encode(&name));
            let (status, body) = request(admin, Method::PUT, &path, Bytes::from(serde_json::to_vec(&config)?)).await?;
            check(status, &body)?;
            println!("{} {name}", if status == hyper::StatusCode::CREATED { "created" } else { "updated" });
        }
        ConnectorCommand::List => {
            let all = get(admin, "/connectors?expand=status&expand=info").await?;
            println!("{:<28} {:<7} {:<16} {:<8} {:>6}", "NAME", "TYPE", "CLASS", "STATE", "TASKS");
            for (name, entry) in all.as_object().into_iter().flatten() {
                let status = &entry["status"];
                println!(
                    "{:<28} {:<7} {:<16} {:<8} {:>6}",
                    name,
                    text(&status["type"]),
                    text(&entry["info"]["config"]["connector.class"]),
                    text(&status["connector"]["state"]),
                    status["tasks"].as_array().map_or(0, Vec::len)
                );
            }
        }
        ConnectorCommand::Status { name } => {
            let status = get(admin, &format!("/connectors/{}/status", encode(&name))).await?;
            println!("{name} ({}): {}", text(&status["type"]), text(&status["connector"]["state"]));
            println!("{:>4} {:<8} {:>12} {:>10}  ERROR", "TASK", "STATE", "RECORDS", "FAILED");
            for task in status["tasks"].as_array().into_iter().flatten() {
                println!(
                    "{:>4} {:<8} {:>12} {:>10}  {}",
                    text(&task["id"]),
                    text(&task["state"]),
                    text(&task["records"]),
                    text(&task["failed"]),
                    task.get("trace").map(text).unwrap_or_default()
                );
            }
        }
        ConnectorCommand::Config { name } => {
            let config = get(admin, &format!("/connectors/{}/config", encode(&name))).await?;
            println!("{}", serde_json::to_string_pretty(&config)?);
        }
        ConnectorCommand::Logs { name } => {
            let lines = get(admin, &format!("/connectors/{}/logs", encode(&name))).await?;
            for line in lines.as_array().into_iter().flatten() {
                println!("{}", text(line));
            }
        }
        ConnectorCommand::Pause { name } => control(admin, Method::PUT, &name, "pause", "paused").await?,
        ConnectorCommand::Resume { name } => control(admin, Method::PUT, &name, "resume", "resumed").await?,
        ConnectorCommand::Restart { name, only_failed } => {
            let action = format!("restart?includeTasks=true&onlyFailed={only_failed}");
            control(admin, Method::POST, &name, &action, "restarted").await?
        }
        ConnectorCommand::Delete { name } => {
            let path = format!("/connectors/{}", encode(&name));
            let (status, body) = request(admin, Method::DELETE, &path, Bytes::new()).await?;
            check(status, &body)?;
            println!("deleted {name}");
        }
    }
    Ok(())
}

fn read_json(file: &PathBuf) -> anyhow::Result<serde_json::Value> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", file.display()))
}

async fn get(admin: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let (status, body) = request(admin, Method::GET, path, Bytes::new()).await?;
    check(status, &body)?;
    serde_json::from_slice(&body).context("reading the admin answer")
}

async fn control(admin: &str, method: Method, name: &str, action: &str, done: &str) -> anyhow::Result<()> {
    let path = format!("/connectors/{}/{action}", encode(name));
    let (status, body) = request(admin, method, &path, Bytes::new()).await?;
    check(status, &body)?;
    println!("{done} {name}");
    Ok(())
}

fn text(value: &serde_json::Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_string)
}

fn encode(segment: &str) -> String {
    form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}
