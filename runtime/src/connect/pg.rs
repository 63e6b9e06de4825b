//! What the PostgreSQL sink and source share: connection settings in Connect's names
//! (`connection.url` — `jdbc:postgresql://...`, `postgresql://...` or `host=... dbname=...` —
//! `connection.user`, `connection.password`), connecting, quoting identifiers, and sorting
//! errors into retriable (the server went away or is restarting) and not.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::config::{invalid, Settings};
use super::ConnectError;

/// How long a connection attempt may take before it counts as failed (and is retried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection settings from a connector config.
pub(crate) fn connection_config(settings: Settings<'_>) -> Result<tokio_postgres::Config, ConnectError> {
    let url = settings.required("connection.url")?;
    let url = url.strip_prefix("jdbc:").unwrap_or(url);
    let mut config =
        tokio_postgres::Config::from_str(url).map_err(|e| invalid(format!("connection.url {url:?}: {e}")))?;
    if let Some(user) = settings.str("connection.user") {
        config.user(user);
    }
    if let Some(password) = settings.str("connection.password") {
        config.password(password);
    }
    if config.get_user().is_none() {
        config.user("postgres");
    }
    config.connect_timeout(CONNECT_TIMEOUT);
    config.application_name("runnel-connect");
    Ok(config)
}

/// Opens a connection; its driver runs on a task of its own until the client is dropped.
pub(crate) async fn connect(config: &tokio_postgres::Config) -> Result<Client, ConnectError> {
    let (client, connection) = config.connect(NoTls).await.map_err(classify)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// Sorts a driver error: lost connections and transient server states are retriable.
pub(crate) fn classify(e: tokio_postgres::Error) -> ConnectError {
    let message = describe(&e);
    let retriable = match e.code() {
        None => true, // I/O, closed connection, timeout
        Some(code) => {
            let code = code.code();
            code.starts_with("08") // connection exceptions
                || code.starts_with("53") // insufficient resources
                || code.starts_with("57P") // admin/crash shutdown, cannot connect now
                || code == "40001" // serialization failure
                || code == "40P01" // deadlock
                || code == "58000" || code == "58030"
        }
    };
    if retriable || e.is_closed() {
        ConnectError::PostgresRetriable(message)
    } else {
        ConnectError::Postgres(message)
    }
}

/// The server's message with its SQLSTATE and context, or the driver's.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; {detail}"));
            }
            text
        }
        None => e.to_string(),
    }
}

/// A quoted identifier: `"name"` with inner quotes doubled.
pub(crate) fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// A quoted, possibly schema-qualified table name: `a.b` names table `b` in schema `a`.
pub(crate) fn quote_table(parts: &[String]) -> String {
    parts.iter().map(|p| quote(p)).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_table(&["s".into(), "t.x".into()]), "\"s\".\"t.x\"");
    }

    #[test]
    fn connection_urls_in_jdbc_and_libpq_forms() {
        let config = |url: &str| {
            let map: BTreeMap<String, String> = [("connection.url".to_string(), url.to_string())].into();
            connection_config(Settings(&map))
        };
        let jdbc = config("jdbc:postgresql://127.0.0.1:5433/db?user=u").expect("jdbc");
        assert_eq!(jdbc.get_ports(), &[5433]);
        assert_eq!(jdbc.get_user(), Some("u"));
        let kv = config("host=127.0.0.1 port=6000 dbname=x").expect("key=value");
        assert_eq!((kv.get_ports(), kv.get_user()), (&[6000u16][..], Some("postgres")));
        assert!(config("postgresql://[bad").is_err());
    }
}
