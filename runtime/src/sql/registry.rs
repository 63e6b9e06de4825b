//! The SQL registry: declared table schemas and materialized view definitions, kept in the
//! compacted internal topic `__runnel_sql` (key `table/<name>` → the `CREATE TABLE`
//! statement, `view/<name>` → the view's JSON definition; tombstones on drop) and replayed at
//! startup.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use runnel_broker::Broker;

use super::SqlError;
use crate::transform::log_io;
use crate::transform::records::{encode_batch, Outgoing};
use crate::transform::service::ensure_topic;

pub(crate) const REGISTRY_TOPIC: &str = "__runnel_sql";

/// What the registry holds, by name.
#[derive(Debug, Default)]
pub(crate) struct Entries {
    pub(crate) tables: BTreeMap<String, String>,
    pub(crate) views: BTreeMap<String, Bytes>,
}

#[derive(Debug)]
pub(crate) struct Registry {
    broker: Arc<Broker>,
}

impl Registry {
    /// Creates the registry topic if needed and reads what it holds.
    pub(crate) fn open(broker: Arc<Broker>) -> Result<(Registry, Entries), SqlError> {
        ensure_topic(&broker, REGISTRY_TOPIC, 1)?;
        let mut entries = Entries::default();
        log_io::scan(&broker, REGISTRY_TOPIC, 0, |record| {
            let key = record.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default().to_string();
            if let Some(name) = key.strip_prefix("table/") {
                match &record.value {
                    Some(value) => {
                        entries.tables.insert(name.to_string(), String::from_utf8_lossy(value).to_string());
                    }
                    None => {
                        entries.tables.remove(name);
                    }
                }
            } else if let Some(name) = key.strip_prefix("view/") {
                match &record.value {
                    Some(value) => {
                        entries.views.insert(name.to_string(), value.clone());
                    }
                    None => {
                        entries.views.remove(name);
                    }
                }
            }
            Ok(())
        })?;
        Ok((Registry { broker }, entries))
    }

    pub(crate) fn put_table(&self, name: &str, statement: Option<&str>) -> Result<(), SqlError> {
        self.put(format!("table/{name}"), statement.map(|s| Bytes::from(s.to_string())))
    }

    pub(crate) fn put_view(&self, name: &str, definition: Option<Bytes>) -> Result<(), SqlError> {
        self.put(format!("view/{name}"), definition)
    }

    fn put(&self, key: String, value: Option<Bytes>) -> Result<(), SqlError> {
        let record =
            Outgoing { timestamp_ms: self.broker.now_ms(), key: Some(Bytes::from(key)), value, headers: Vec::new() };
        let batch = encode_batch(&[record], None)?;
        log_io::append(&self.broker, REGISTRY_TOPIC, 0, &batch)?;
        self.broker.notify_appended();
        Ok(())
    }
}
