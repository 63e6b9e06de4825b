//! SQL over topics, next to the log: every topic is a table (`catalog`), read by a DataFusion
//! `TableProvider` straight from the segments with partition/offset/timestamp pruning
//! (`scan`); ad-hoc queries run with a memory limit, a timeout and cancellation (`query`);
//! continuous queries are materialized views maintained exactly-once (`mv`); `http` serves
//! `POST /v1/sql` on the admin port. See `docs/SQL.md`.
//!
//! - `records`: the zero-copy walk over a partition's batches that every reader uses.
//! - `decode`: records to Arrow batches (metadata columns, JSON values via `arrow-json`).
//! - `registry`: declared table schemas and view definitions in `__runnel_sql`.

mod catalog;
mod decode;
pub mod http;
pub mod mv;
mod query;
mod records;
mod registry;
mod scan;
#[cfg(test)]
mod tests;

pub use catalog::{SchemaSource, TableLayout};
pub use query::{QueryLimits, QueryOutput, QueryStatsSnapshot, SqlEngine};
pub use scan::ScanStats;

/// Why a SQL statement failed.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The statement does not parse, names something that does not exist, or is not supported.
    #[error("{0}")]
    Plan(String),
    #[error("no topic or view named {0:?}")]
    UnknownTable(String),
    #[error("the query ran longer than its timeout of {0} ms")]
    Timeout(u64),
    #[error("the query was cancelled")]
    Cancelled,
    #[error("the query needs more memory than its limit: {0}")]
    ResourcesExhausted(String),
    #[error("execution: {0}")]
    Execution(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl SqlError {
    /// Carries the error through DataFusion (scans run inside its streams).
    pub(crate) fn into_datafusion(self) -> datafusion::error::DataFusionError {
        datafusion::error::DataFusionError::External(Box::new(self))
    }

    /// Classifies a DataFusion error: planning problems are the user's, the rest execution's.
    pub(crate) fn from_datafusion(error: datafusion::error::DataFusionError) -> SqlError {
        use datafusion::error::DataFusionError as E;
        match error.find_root() {
            E::External(inner) => {
                if let Some(sql) = inner.downcast_ref::<SqlError>() {
                    return match sql {
                        SqlError::Storage(m) => SqlError::Storage(m.clone()),
                        SqlError::Corrupt(m) => SqlError::Corrupt(m.clone()),
                        other => SqlError::Execution(other.to_string()),
                    };
                }
                SqlError::Execution(inner.to_string())
            }
            E::ResourcesExhausted(message) => SqlError::ResourcesExhausted(message.clone()),
            E::SQL(..) | E::Plan(_) | E::SchemaError(..) | E::NotImplemented(_) | E::Configuration(_) => {
                SqlError::Plan(error.find_root().to_string())
            }
            _ => SqlError::Execution(error.to_string()),
        }
    }
}

impl From<crate::transform::TransformError> for SqlError {
    fn from(error: crate::transform::TransformError) -> SqlError {
        SqlError::Storage(error.to_string())
    }
}
