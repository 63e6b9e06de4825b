//! `router`: sends each record, unchanged, to the output chosen by a JSON field's value.
//! Configuration (`--env`):
//!
//! - `FIELD` (required): dotted path of the field, e.g. `action`;
//! - `ROUTES` (required): `value:index` pairs, comma-separated, e.g. `click:1,purchase:2`; the
//!   index counts `--output` flags from 0. A field matches by its text (a string's content, or
//!   the JSON text of numbers and booleans: `42`, `true`). The last `:` separates the index, so
//!   values may contain `:` but not `,`;
//! - `DEFAULT`: the index for records that match no route (missing field, other value, not
//!   JSON, tombstone), or `drop`; default `0`.
//!
//! An index beyond the configured outputs fails the batch in the host, so check `ROUTES` against
//! the `--output` list at deploy.

use runnel_sdk::{env, json, Error, Output, Record};

/// Where unmatched records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// To this output index.
    Output(u32),
    /// Nowhere.
    Drop,
}

/// The parsed configuration.
#[derive(Debug)]
pub struct Config {
    field: String,
    routes: Vec<(String, u32)>,
    default: Default,
}

fn parse_index(setting: &str, text: &str) -> Result<u32, Error> {
    text.trim().parse().map_err(|_| Error::new(format!("{setting}: {text:?} is not an output index")))
}

/// Parses `ROUTES`.
pub fn parse_routes(text: &str) -> Result<Vec<(String, u32)>, Error> {
    let mut routes = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (value, index) =
            item.rsplit_once(':').ok_or_else(|| Error::new(format!("ROUTES: {item:?} should be value:index")))?;
        routes.push((value.trim().to_string(), parse_index("ROUTES", index)?));
    }
    if routes.is_empty() {
        return Err(Error::new("ROUTES is empty"));
    }
    Ok(routes)
}

/// Reads the configuration once per instance.
pub fn config() -> Result<Config, Error> {
    let field = env::require("FIELD")?;
    let routes = parse_routes(&env::require("ROUTES")?)?;
    let default = match env::get("DEFAULT") {
        None => Default::Output(0),
        Some(text) if text.trim() == "drop" => Default::Drop,
        Some(text) => Default::Output(parse_index("DEFAULT", &text)?),
    };
    Ok(Config { field, routes, default })
}

/// The output index for a record, `None` to drop it.
pub fn route_of(config: &Config, record: &Record) -> Option<u32> {
    // One field is needed: `find` reads it without building the value's tree.
    let field = record.value.as_deref().and_then(|value| json::find(value, &config.field).ok().flatten());
    let matched = field.and_then(|raw| {
        let text = raw.to_value().to_plain_string();
        config.routes.iter().find(|(v, _)| *v == text).map(|(_, index)| *index)
    });
    match (matched, config.default) {
        (Some(index), _) | (None, Default::Output(index)) => Some(index),
        (None, Default::Drop) => None,
    }
}

fn route(config: &Config, record: Record) -> Result<Option<Output>, Error> {
    Ok(route_of(config, &record).map(|index| record.to(index)))
}

runnel_sdk::filter_map!(route, config = config);

#[cfg(test)]
mod tests {
    use runnel_sdk::testing::Harness;
    use runnel_sdk::Record;

    fn harness(env: &[(&str, &str)]) -> Harness {
        env.iter().fold(Harness::new(crate::runnel_instance), |h, (k, v)| h.env(k, v))
    }

    const EVENTS: [&str; 5] = [
        r#"{"action":"click"}"#,
        r#"{"action":"purchase"}"#,
        r#"{"action":"view"}"#,
        r#"{"page":"/home"}"#,
        "not json",
    ];

    #[test]
    fn routes_by_value_and_sends_the_rest_to_default() {
        let mut h = harness(&[("FIELD", "action"), ("ROUTES", "click:1, purchase:2"), ("DEFAULT", "3")]);
        let out = h.run_values(&EVENTS).expect("batch");
        let got: Vec<_> = out.iter().map(|o| (o.index, o.value_str().unwrap_or(""))).collect();
        assert_eq!(got, vec![(1, EVENTS[0]), (2, EVENTS[1]), (3, EVENTS[2]), (3, EVENTS[3]), (3, EVENTS[4])]);
    }

    #[test]
    fn default_is_output_zero_or_drop() {
        let routes = [("FIELD", "action"), ("ROUTES", "click:1")];
        let out = harness(&routes).run_values(&EVENTS).expect("batch");
        assert_eq!(out.iter().map(|o| o.index).collect::<Vec<_>>(), vec![1, 0, 0, 0, 0]);
        let out = harness(&[routes[0], routes[1], ("DEFAULT", "drop")]).run_values(&EVENTS).expect("batch");
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn numbers_booleans_nested_paths_and_values_with_colons_match_by_text() {
        let mut h = harness(&[("FIELD", "a.b"), ("ROUTES", "42:1,true:2,x:y:3")]);
        let out = h.run_values(&[r#"{"a":{"b":42}}"#, r#"{"a":{"b":true}}"#, r#"{"a":{"b":"x:y"}}"#]).expect("batch");
        assert_eq!(out.iter().map(|o| o.index).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn records_are_forwarded_unchanged() {
        let mut h = harness(&[("FIELD", "action"), ("ROUTES", "click:1")]);
        let rec = Record::new(EVENTS[0]).with_key("u1").with_timestamp(9).with_header("h", "v");
        let out = h.run(vec![rec.clone()]).expect("batch");
        assert_eq!(out, vec![rec.to(1)]);
    }

    #[test]
    fn configuration_errors_name_the_setting() {
        let err = |env: &[(&str, &str)]| harness(env).init().expect_err("bad config").message;
        assert!(err(&[("ROUTES", "a:1")]).contains("FIELD"));
        assert!(err(&[("FIELD", "a")]).contains("ROUTES"));
        assert!(err(&[("FIELD", "a"), ("ROUTES", "a")]).contains("value:index"));
        assert!(err(&[("FIELD", "a"), ("ROUTES", "a:-1")]).contains("not an output index"));
        assert!(err(&[("FIELD", "a"), ("ROUTES", "a:1"), ("DEFAULT", "x")]).contains("DEFAULT"));
    }
}
