//! The tutorial transform of `sdk/README.md`: reads user-activity events such as
//! `{"user":"u1","action":"click","page":"/home"}`, replaces the user id with a salted hash
//! (so downstream topics carry no raw ids), keys the record by that hash, and routes clicks to
//! the first output and every other action to the second.
//!
//! Deploy with two outputs, in this order:
//! `runnel transform deploy hello_transform.wasm --name hello --input user-activity
//!  --output clicks --output other-activity --env SALT=...`

use runnel_sdk::json::Value;
use runnel_sdk::{env, Error, Output, Record};

/// Output indices: the order of the `--output` flags at deploy.
const CLICKS: u32 = 0;
const OTHER: u32 = 1;

/// Settings read once per instance from `--env`.
pub struct Config {
    salt: String,
}

impl Config {
    fn from_env() -> Result<Config, Error> {
        Ok(Config { salt: env::get("SALT").unwrap_or_default() })
    }
}

/// A stable pseudonym for a user id (FNV-1a over salt and id; not cryptographic).
pub fn mask(salt: &str, user: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in salt.bytes().chain([0u8]).chain(user.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("u-{:08x}", hash >> 32)
}

fn enrich(config: &Config, record: Record) -> Result<Option<Output>, Error> {
    // Not JSON: log it and drop the record rather than failing the whole batch.
    let mut event = match record.json() {
        Ok(event) => event,
        Err(e) => {
            runnel_sdk::warn!("dropping record at offset {}: {}", record.offset, e);
            return Ok(None);
        }
    };
    // No user: a broken producer. Fail the batch; `--on-error` decides (skip, dlq or stop).
    let user = event.get("user").and_then(Value::as_str).ok_or("event has no \"user\" string")?;
    let masked = mask(&config.salt, user);
    event.insert("user", Value::from(masked.as_str()));

    let index = match event.get("action").and_then(Value::as_str) {
        Some("click") => CLICKS,
        _ => OTHER,
    };
    Ok(Some(Output::from(record).with_key(masked).with_value(event.to_vec()).to(index)))
}

runnel_sdk::filter_map!(enrich, config = Config::from_env);

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_sdk::log::Level;
    use runnel_sdk::testing::Harness;

    #[test]
    fn masks_the_user_and_routes_clicks_to_the_first_output() {
        let mut h = Harness::new(runnel_instance).env("SALT", "s3cret");
        let out = h
            .run_values(&[
                r#"{"user":"u1","action":"click","page":"/home"}"#,
                r#"{"user":"u1","action":"view","page":"/cart"}"#,
            ])
            .expect("batch succeeds");
        let masked = mask("s3cret", "u1");
        assert_eq!(out[0].index, CLICKS);
        assert_eq!(
            out[0].value_str(),
            Some(format!(r#"{{"user":"{masked}","action":"click","page":"/home"}}"#).as_str())
        );
        assert_eq!(out[0].key.as_deref(), Some(masked.as_bytes()));
        assert_eq!(out[1].index, OTHER);
        assert!(!out[1].value_str().unwrap_or("u1").contains("\"u1\""));
    }

    #[test]
    fn the_salt_changes_the_pseudonym_but_it_is_stable() {
        assert_eq!(mask("a", "u1"), mask("a", "u1"));
        assert_ne!(mask("a", "u1"), mask("b", "u1"));
        assert_ne!(mask("a", "u1"), mask("a", "u2"));
    }

    #[test]
    fn non_json_is_dropped_with_a_warning() {
        let mut h = Harness::new(runnel_instance);
        let out = h.run_values(&["oops", r#"{"user":"u2","action":"click"}"#]).expect("batch succeeds");
        assert_eq!(out.len(), 1);
        assert_eq!(h.logs()[0].0, Level::Warn);
        assert!(h.logs()[0].1.contains("offset 0"));
    }

    #[test]
    fn an_event_without_user_fails_the_batch_with_a_message() {
        let mut h = Harness::new(runnel_instance);
        let err = h.run_values(&[r#"{"action":"click"}"#]).expect_err("no user");
        assert!(err.message.contains("no \"user\""), "{}", err.message);
    }
}
