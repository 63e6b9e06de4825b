//! `json-filter`: keeps the records whose JSON value has a field matching every configured
//! condition. Configuration (`--env`):
//!
//! - `FIELD` (required): dotted path of the field, e.g. `action` or `user.country`;
//! - one or more conditions: `EQUALS`, `NOT_EQUALS`, `GT`, `GTE`, `LT`, `LTE`, `CONTAINS`,
//!   `EXISTS` (`true`/`false`); see [`condition`] for how values compare;
//! - `ON_INVALID` = `drop` (default), `keep` or `fail`: what to do with a value that is not JSON.
//!
//! Tombstones (null values) are always kept: they carry deletes for compacted topics.

pub mod condition;

use condition::{Condition, Op};
use runnel_sdk::{env, json, Error, RecordRef};

/// What to do with a record whose value is not JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInvalid {
    /// Drop it.
    Drop,
    /// Keep it.
    Keep,
    /// Fail the batch (the transform's `--on-error` policy then applies).
    Fail,
}

impl OnInvalid {
    /// Reads `ON_INVALID` (default `drop`).
    pub fn from_env() -> Result<Self, Error> {
        match env::get("ON_INVALID").as_deref().map(str::trim) {
            None | Some("drop") => Ok(OnInvalid::Drop),
            Some("keep") => Ok(OnInvalid::Keep),
            Some("fail") => Ok(OnInvalid::Fail),
            Some(other) => Err(Error::new(format!("ON_INVALID={other:?}: expected drop, keep or fail"))),
        }
    }
}

/// The parsed configuration.
#[derive(Debug)]
pub struct Config {
    field: json::Path,
    conditions: Vec<Condition>,
    /// The conditions as string tests ([`Condition::as_str_test`], negated or not), when every
    /// one of them is such a test: the host then answers them for the whole batch.
    str_tests: Option<Vec<(json::StrEquals, bool)>>,
    on_invalid: OnInvalid,
}

/// Reads the configuration once per instance; errors name the bad setting.
pub fn config() -> Result<Config, Error> {
    let field = env::require("FIELD")?;
    let mut conditions = Vec::new();
    for op in Op::ALL {
        if let Some(operand) = env::get(op.env_name()) {
            conditions.push(Condition::new(op, &operand)?);
        }
    }
    if conditions.is_empty() {
        let names: Vec<&str> = Op::ALL.iter().map(|op| op.env_name()).collect();
        return Err(Error::new(format!("no condition given: set one of {}", names.join(", "))));
    }
    let field = json::Path::new(&field);
    let str_tests = conditions.iter().map(|c| c.as_str_test(&field)).collect();
    Ok(Config { field, conditions, str_tests, on_invalid: OnInvalid::from_env()? })
}

/// What `ON_INVALID` makes of a value that is not JSON.
fn invalid(config: &Config, error: json::JsonError) -> Result<bool, Error> {
    match config.on_invalid {
        OnInvalid::Drop => Ok(false),
        OnInvalid::Keep => Ok(true),
        OnInvalid::Fail => Err(error.into()),
    }
}

fn keep(config: &Config, record: &RecordRef<'_>) -> Result<bool, Error> {
    if record.is_tombstone() {
        return Ok(true);
    }
    let bytes = record.value.unwrap_or_default();
    if let Some(tests) = &config.str_tests {
        // `EQUALS`/`NOT_EQUALS` a string: asked of the host once per batch, where it offers
        // `json-equals`; the same answers as the comparison below.
        for (test, negated) in tests {
            match test.test(bytes) {
                Ok(answer) if (answer == Some(true)) == *negated => return Ok(false),
                Ok(_) => {}
                Err(e) => return invalid(config, e),
            }
        }
        return Ok(true);
    }
    // Only the one field is needed: `find_path` checks the whole value like `parse` does but
    // builds no tree (the path was split once, in `config`), and a string field is compared
    // where it lies.
    let field = match json::find_path(bytes, &config.field) {
        Ok(field) => field,
        Err(e) => return invalid(config, e),
    };
    Ok(config.conditions.iter().all(|c| c.matches_raw(field)))
}

// `filter_ref!`: the record is read where it lies in the input batch and a kept one is passed
// on by its position, so nothing is copied per record.
runnel_sdk::filter_ref!(keep, config = config);

#[cfg(test)]
mod tests;
