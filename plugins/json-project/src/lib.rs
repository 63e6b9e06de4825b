//! `json-project`: reshapes JSON values by keeping, renaming and dropping fields.
//! Configuration (`--env`), applied in this order:
//!
//! - `FIELDS`: comma-separated dotted paths to keep, each optionally renamed with `src:dst`,
//!   e.g. `user,page:url,ctx.ip:ip`; the output holds only these, in this order (missing fields
//!   are left out). Without `FIELDS` the whole value is kept.
//! - `RENAME`: `src:dst` pairs moved within the value (other fields stay).
//! - `DROP`: dotted paths removed, e.g. `password,ctx.secret`.
//! - `ON_INVALID` = `drop` (default), `keep` or `fail`: what to do with a value that is not a
//!   JSON object.
//!
//! Keys, headers and timestamps are kept. Tombstones pass through unchanged.

pub mod spec;

use runnel_sdk::json::Value;
use runnel_sdk::{env, Error, Output, Record};
use spec::{parse_paths, parse_renames, Rename};

/// What to do with a record whose value is not a JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnInvalid {
    Drop,
    Keep,
    Fail,
}

/// The parsed configuration.
#[derive(Debug)]
pub struct Config {
    fields: Option<Vec<Rename>>,
    renames: Vec<Rename>,
    drops: Vec<String>,
    on_invalid: OnInvalid,
}

/// Reads the configuration once per instance.
pub fn config() -> Result<Config, Error> {
    let fields = env::get("FIELDS").map(|s| parse_renames("FIELDS", &s, true)).transpose()?;
    let renames = env::get("RENAME").map(|s| parse_renames("RENAME", &s, false)).transpose()?.unwrap_or_default();
    let drops = env::get("DROP").map(|s| parse_paths("DROP", &s)).transpose()?.unwrap_or_default();
    if fields.is_none() && renames.is_empty() && drops.is_empty() {
        return Err(Error::new("nothing to do: set FIELDS, RENAME or DROP"));
    }
    let on_invalid = match env::get("ON_INVALID").as_deref().map(str::trim) {
        None | Some("drop") => OnInvalid::Drop,
        Some("keep") => OnInvalid::Keep,
        Some("fail") => OnInvalid::Fail,
        Some(other) => return Err(Error::new(format!("ON_INVALID={other:?}: expected drop, keep or fail"))),
    };
    Ok(Config { fields, renames, drops, on_invalid })
}

/// Applies FIELDS, RENAME and DROP to an object.
pub fn reshape(config: &Config, input: Value) -> Value {
    let mut value = match &config.fields {
        None => input,
        Some(fields) => {
            let mut out = Value::object();
            for f in fields {
                if let Some(v) = input.get_path(&f.from) {
                    out.set_path(&f.to, v.clone());
                }
            }
            out
        }
    };
    for r in &config.renames {
        if let Some(v) = value.remove_path(&r.from) {
            value.set_path(&r.to, v);
        }
    }
    for path in &config.drops {
        value.remove_path(path);
    }
    value
}

fn project(config: &Config, record: Record) -> Result<Option<Output>, Error> {
    if record.is_tombstone() {
        return Ok(Some(record.into()));
    }
    let parsed = match record.json() {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Error::new("value is not a JSON object")),
        Err(e) => Err(e),
    };
    match (parsed, config.on_invalid) {
        (Ok(value), _) => {
            let reshaped = reshape(config, value).to_vec();
            Ok(Some(Output::from(record).with_value(reshaped)))
        }
        (Err(_), OnInvalid::Drop) => Ok(None),
        (Err(_), OnInvalid::Keep) => Ok(Some(record.into())),
        (Err(e), OnInvalid::Fail) => Err(e),
    }
}

runnel_sdk::filter_map!(project, config = config);

#[cfg(test)]
mod tests;
