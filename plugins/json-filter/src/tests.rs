use runnel_sdk::testing::Harness;
use runnel_sdk::Record;

fn harness(env: &[(&str, &str)]) -> Harness {
    env.iter().fold(Harness::new(crate::runnel_instance), |h, (k, v)| h.env(k, v))
}

/// Runs the values through a filter configured by `env` and returns the kept values.
fn kept(env: &[(&str, &str)], values: &[&str]) -> Vec<String> {
    let out = harness(env).run_values(values).expect("batch succeeds");
    out.iter().map(|o| o.value_str().unwrap_or("<none>").to_string()).collect()
}

const EVENTS: [&str; 4] = [
    r#"{"user":"u1","action":"click","page":"/home","ms":120}"#,
    r#"{"user":"u2","action":"view","page":"/cart","ms":30}"#,
    r#"{"user":"u3","action":"click","page":"/cart","ms":7.5,"tags":["new","mobile"]}"#,
    r#"{"user":"u4","page":"/home","geo":{"country":"FR"}}"#,
];

#[test]
fn equals_keeps_matching_string_fields() {
    assert_eq!(kept(&[("FIELD", "action"), ("EQUALS", "click")], &EVENTS), vec![EVENTS[0], EVENTS[2]]);
}

#[test]
fn not_equals_also_keeps_records_without_the_field() {
    assert_eq!(kept(&[("FIELD", "action"), ("NOT_EQUALS", "click")], &EVENTS), vec![EVENTS[1], EVENTS[3]]);
}

#[test]
fn numeric_comparisons_use_numbers_and_combine_with_and() {
    assert_eq!(kept(&[("FIELD", "ms"), ("GT", "10")], &EVENTS), vec![EVENTS[0], EVENTS[1]]);
    assert_eq!(kept(&[("FIELD", "ms"), ("GTE", "30"), ("LT", "120")], &EVENTS), vec![EVENTS[1]]);
    assert_eq!(kept(&[("FIELD", "ms"), ("LTE", "7.5")], &EVENTS), vec![EVENTS[2]]);
    assert_eq!(kept(&[("FIELD", "ms"), ("EQUALS", "120.0")], &EVENTS), vec![EVENTS[0]]);
}

#[test]
fn string_ordering_is_lexicographic() {
    assert_eq!(kept(&[("FIELD", "page"), ("LT", "/d")], &EVENTS), vec![EVENTS[1], EVENTS[2]]);
}

#[test]
fn nested_paths_contains_and_exists() {
    assert_eq!(kept(&[("FIELD", "geo.country"), ("EQUALS", "FR")], &EVENTS), vec![EVENTS[3]]);
    assert_eq!(kept(&[("FIELD", "tags"), ("CONTAINS", "mobile")], &EVENTS), vec![EVENTS[2]]);
    assert_eq!(kept(&[("FIELD", "page"), ("CONTAINS", "car")], &EVENTS), vec![EVENTS[1], EVENTS[2]]);
    assert_eq!(kept(&[("FIELD", "geo"), ("EXISTS", "true")], &EVENTS), vec![EVENTS[3]]);
    assert_eq!(kept(&[("FIELD", "action"), ("EXISTS", "false")], &EVENTS), vec![EVENTS[3]]);
}

#[test]
fn invalid_json_follows_on_invalid_and_tombstones_are_kept() {
    let values = ["not json", r#"{"action":"click"}"#];
    let base = [("FIELD", "action"), ("EQUALS", "click")];
    assert_eq!(kept(&base, &values), vec![values[1]]);
    assert_eq!(kept(&[base[0], base[1], ("ON_INVALID", "keep")], &values), values.to_vec());
    let err = harness(&[base[0], base[1], ("ON_INVALID", "fail")]).run_values(&values).expect_err("fails");
    assert!(err.message.contains("record at offset 0: invalid JSON"), "{}", err.message);

    let tombstone = Record { key: Some(b"k".to_vec()), ..Record::default() };
    let out = harness(&base).run(vec![tombstone]).expect("batch");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].value, None);
}

#[test]
fn configuration_errors_name_the_setting() {
    let err = |env: &[(&str, &str)]| harness(env).init().expect_err("bad config").message;
    assert!(err(&[("EQUALS", "x")]).contains("FIELD"));
    assert!(err(&[("FIELD", "a")]).contains("no condition"));
    assert!(err(&[("FIELD", "a"), ("EXISTS", "maybe")]).contains("EXISTS"));
    assert!(err(&[("FIELD", "a"), ("EQUALS", "x"), ("ON_INVALID", "explode")]).contains("ON_INVALID"));
}

/// `matches_raw` on what `json::find` returns answers as `matches` on the parsed tree.
#[test]
fn raw_and_parsed_fields_match_alike() {
    use crate::condition::{Condition, Op};
    use runnel_sdk::json;
    let docs = [
        r#"{"f":"click"}"#,
        r#"{"f":"cl\u0069ck"}"#,
        r#"{"f":"/cart"}"#,
        r#"{"f":""}"#,
        r#"{"f":120}"#,
        r#"{"f":7.5}"#,
        r#"{"f":true}"#,
        r#"{"f":null}"#,
        r#"{"f":["click","x"]}"#,
        r#"{"f":{"g":1}}"#,
        r#"{"g":1}"#,
    ];
    let operands = ["click", "/d", "120", "7.5", "true", "null", "", "li"];
    for doc in docs {
        let tree = json::parse(doc.as_bytes()).expect("valid");
        let raw = json::find(doc.as_bytes(), "f").expect("valid");
        for op in Op::ALL {
            for operand in operands {
                let operand = if op == Op::Exists {
                    if operand.len() % 2 == 0 {
                        "true"
                    } else {
                        "false"
                    }
                } else {
                    operand
                };
                let condition = Condition::new(op, operand).expect("condition");
                assert_eq!(
                    condition.matches_raw(raw),
                    condition.matches(tree.get_path("f")),
                    "{doc} {} {operand}",
                    op.env_name()
                );
            }
        }
    }
}
