//! `dedup`: drops a record when a record with the same key was forwarded less than `WINDOW_MS`
//! milliseconds before it (by record timestamps), using the per-partition state store.
//! Configuration (`--env`):
//!
//! - `WINDOW_MS` (required, > 0): the window;
//! - `KEY_FIELD` (optional): dedup by this dotted JSON path of the value instead of the record
//!   key (compared by text).
//!
//! The window starts at the last record *forwarded* for the key, so a key repeated every second
//! with `WINDOW_MS=10000` comes through once every 10 s. Timestamps are compared in both
//! directions, so a late (out-of-order) duplicate inside the window is dropped too.
//! Records without a dedup key (null key, missing field, not JSON) pass through. A tombstone
//! passes through and forgets its key, so the state shrinks as keys are deleted; otherwise the
//! store holds one 8-byte entry per distinct key (the host's store caps bound it).

use runnel_sdk::{env, Error, Output, Record, State};

/// The parsed configuration.
#[derive(Debug)]
pub struct Config {
    window_ms: u64,
    key_field: Option<String>,
}

/// Reads the configuration once per instance.
pub fn config() -> Result<Config, Error> {
    let window_ms: i64 = env::parse("WINDOW_MS")?.ok_or_else(|| Error::new("missing required setting WINDOW_MS"))?;
    if window_ms <= 0 {
        return Err(Error::new(format!("WINDOW_MS={window_ms} must be positive")));
    }
    Ok(Config { window_ms: window_ms as u64, key_field: env::get("KEY_FIELD") })
}

/// The key records are deduplicated by, `None` when the record has none.
fn dedup_key(config: &Config, record: &Record) -> Option<Vec<u8>> {
    match &config.key_field {
        None => record.key.clone(),
        Some(path) => {
            let value = record.json().ok()?;
            Some(value.get_path(path)?.to_plain_string().into_bytes())
        }
    }
}

fn dedup(config: &Config, record: Record, state: &mut State) -> Result<Option<Output>, Error> {
    if record.is_tombstone() {
        if let (None, Some(key)) = (&config.key_field, &record.key) {
            state.delete(key)?;
        }
        return Ok(Some(record.into()));
    }
    let key = match dedup_key(config, &record) {
        Some(key) => key,
        None => return Ok(Some(record.into())),
    };
    if let Some(last) = state.get_i64(&key)? {
        if record.timestamp_ms.abs_diff(last) < config.window_ms {
            return Ok(None);
        }
    }
    state.put_i64(&key, record.timestamp_ms)?;
    Ok(Some(record.into()))
}

runnel_sdk::processor!(dedup, config = config);

#[cfg(test)]
mod tests {
    use runnel_sdk::testing::Harness;
    use runnel_sdk::{Output, Record};

    fn keyed(key: &str, ts: i64) -> Record {
        Record::new(format!("{key}@{ts}")).with_key(key).with_timestamp(ts)
    }

    fn values(out: &[Output]) -> Vec<&str> {
        out.iter().map(|o| o.value_str().unwrap_or("<tombstone>")).collect()
    }

    #[test]
    fn drops_repeats_within_the_window_measured_from_the_last_forwarded_record() {
        let mut h = Harness::new(crate::runnel_instance).env("WINDOW_MS", "1000");
        let batch = vec![keyed("a", 0), keyed("a", 500), keyed("b", 600), keyed("a", 999), keyed("a", 1000)];
        assert_eq!(values(&h.run(batch).expect("batch")), vec!["a@0", "b@600", "a@1000"]);
    }

    #[test]
    fn state_carries_across_batches_and_late_duplicates_are_dropped() {
        let mut h = Harness::new(crate::runnel_instance).env("WINDOW_MS", "1000");
        h.run(vec![keyed("a", 5000)]).expect("batch 1");
        assert_eq!(h.state().get(&b"a"[..]), Some(&5000i64.to_le_bytes().to_vec()));
        let out = h.run(vec![keyed("a", 5500), keyed("a", 4200), keyed("a", 3000)]).expect("batch 2");
        assert_eq!(values(&out), vec!["a@3000"]);
    }

    #[test]
    fn records_without_a_key_pass_and_tombstones_forget_the_key() {
        let mut h = Harness::new(crate::runnel_instance).env("WINDOW_MS", "1000");
        let unkeyed = Record::new("x").with_timestamp(1);
        let tombstone = Record { key: Some(b"a".to_vec()), timestamp_ms: 2, ..Record::default() };
        let out = h.run(vec![keyed("a", 0), unkeyed.clone(), unkeyed, tombstone, keyed("a", 3)]).expect("batch");
        assert_eq!(values(&out), vec!["a@0", "x", "x", "<tombstone>", "a@3"]);
    }

    #[test]
    fn key_field_dedups_by_a_json_field() {
        let mut h = Harness::new(crate::runnel_instance).env("WINDOW_MS", "60000").env("KEY_FIELD", "user");
        let rec = |v: &str, ts: i64| Record::new(v).with_timestamp(ts);
        let out = h
            .run(vec![rec(r#"{"user":"u1","n":1}"#, 0), rec(r#"{"user":"u1","n":2}"#, 10), rec(r#"{"user":"u2"}"#, 20)])
            .expect("batch");
        assert_eq!(values(&out), vec![r#"{"user":"u1","n":1}"#, r#"{"user":"u2"}"#]);
    }

    #[test]
    fn window_must_be_a_positive_number() {
        for bad in [None, Some("0"), Some("-5"), Some("soon")] {
            let mut h = Harness::new(crate::runnel_instance);
            if let Some(v) = bad {
                h = h.env("WINDOW_MS", v);
            }
            assert!(h.init().expect_err("bad window").message.contains("WINDOW_MS"), "{bad:?}");
        }
    }
}
