//! Connector configs, target states (running or paused) and WASM modules, durable in the
//! compacted internal topic `__runnel_connect_configs` and replayed at startup:
//! `connector/<name>` → JSON `{"config": {...}, "paused": bool}`, `module/<name>` → the
//! module's bytes; tombstones on delete.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use runnel_broker::Broker;
use serde::{Deserialize, Serialize};

use super::config::ConfigMap;
use super::ConnectError;
use crate::transform::log_io;
use crate::transform::records::{encode_batch, Outgoing};
use crate::transform::service::ensure_topic;

pub(crate) const CONFIGS_TOPIC: &str = "__runnel_connect_configs";

/// What is stored per connector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) config: ConfigMap,
    #[serde(default)]
    pub(crate) paused: bool,
}

/// Everything the topic holds, by connector name.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    pub(crate) connectors: BTreeMap<String, Stored>,
    pub(crate) modules: HashMap<String, Bytes>,
}

pub(crate) fn replay(broker: &Broker) -> Result<Replayed, ConnectError> {
    ensure_topic(broker, CONFIGS_TOPIC, 1)?;
    let mut replayed = Replayed::default();
    log_io::scan(broker, CONFIGS_TOPIC, 0, |record| {
        let key = record.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default().to_string();
        if let Some(name) = key.strip_prefix("connector/") {
            match &record.value {
                Some(value) => match serde_json::from_slice::<Stored>(value) {
                    Ok(stored) => {
                        replayed.connectors.insert(name.to_string(), stored);
                    }
                    Err(e) => tracing::error!(%name, error = %e, "unreadable connector config; skipping"),
                },
                None => {
                    replayed.connectors.remove(name);
                }
            }
        } else if let Some(name) = key.strip_prefix("module/") {
            match &record.value {
                Some(value) => replayed.modules.insert(name.to_string(), value.clone()),
                None => replayed.modules.remove(name),
            };
        }
        Ok(())
    })?;
    Ok(replayed)
}

/// Stores a connector's config and state, and its module when given (`Some(None)` removes it).
pub(crate) fn put(
    broker: &Broker,
    name: &str,
    stored: &Stored,
    module: Option<Option<&Bytes>>,
) -> Result<(), ConnectError> {
    let now = broker.now_ms();
    let mut records = Vec::new();
    if let Some(module) = module {
        records.push(record(now, format!("module/{name}"), module.cloned()));
    }
    let json = serde_json::to_vec(stored).map_err(|e| ConnectError::Internal(e.to_string()))?;
    records.push(record(now, format!("connector/{name}"), Some(Bytes::from(json))));
    append(broker, &records)
}

pub(crate) fn remove(broker: &Broker, name: &str) -> Result<(), ConnectError> {
    let now = broker.now_ms();
    append(broker, &[record(now, format!("module/{name}"), None), record(now, format!("connector/{name}"), None)])
}

fn record(timestamp_ms: i64, key: String, value: Option<Bytes>) -> Outgoing {
    Outgoing { timestamp_ms, key: Some(Bytes::from(key)), value, headers: Vec::new() }
}

fn append(broker: &Broker, records: &[Outgoing]) -> Result<(), ConnectError> {
    let batch = encode_batch(records, None)?;
    log_io::append(broker, CONFIGS_TOPIC, 0, &batch)?;
    broker.notify_appended();
    Ok(())
}
