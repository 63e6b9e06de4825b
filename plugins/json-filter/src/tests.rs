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

/// With the host locating the field (extension `json-find`, the harness's default) and testing
/// string conditions (`json-equals`, a pushdown), with either, without both, and with a host
/// that refuses the calls, the filter keeps the same records and fails the same way, on values
/// that are tricky for the host's answers.
#[test]
fn json_find_and_json_equals_on_or_off_keep_the_same_records() {
    use runnel_sdk::abi::{FEATURES_SUPPORTED, FEATURE_JSON_EQUALS, FEATURE_JSON_FIND};
    let values = [
        r#"{"action":"click"}"#,
        r#"{"action":"cl\u0069ck"}"#,
        r#"{"action":"cl\"ick"}"#,
        r#" { "action" : "click" } "#,
        r#"{"action":{"action":"click"}}"#,
        r#"{"action":"view","action":"click"}"#,
        r#"{"x":[{"action":"click"}]}"#,
        r#"{"geo":{"country":"FR"},"action":"café"}"#,
        r#"{"action":"click","#,
        r#"{"action":"click"} x"#,
        "",
        r#"{"action":1e400}"#,
        r#"{"action":true}"#,
    ];
    for (conditions, pushed_down) in [
        (&[("FIELD", "action"), ("EQUALS", "click")][..], true),
        (&[("FIELD", "action"), ("NOT_EQUALS", "click"), ("ON_INVALID", "keep")], true),
        (&[("FIELD", "action"), ("EQUALS", "café"), ("NOT_EQUALS", "click")], true),
        (&[("FIELD", "geo.country"), ("EXISTS", "true")], false),
        (&[("FIELD", "action"), ("CONTAINS", "lic")], false),
        (&[("FIELD", "action"), ("EQUALS", "true")], false),
        (&[("FIELD", "action"), ("EQUALS", "click"), ("ON_INVALID", "fail")], true),
    ] {
        let run = |features: i64, refuse: bool| {
            let mut h = harness(conditions).abi_features(features);
            if refuse {
                h = h.refuse_json_find();
            }
            let out = h.run_values(&values);
            (out, (h.json_find_calls(), h.json_equals_calls()))
        };
        let (plain, plain_calls) = run(FEATURES_SUPPORTED & !FEATURE_JSON_FIND & !FEATURE_JSON_EQUALS, false);
        let (found, found_calls) = run(FEATURES_SUPPORTED & !FEATURE_JSON_EQUALS, false);
        let (tested, tested_calls) = run(FEATURES_SUPPORTED & !FEATURE_JSON_FIND, false);
        let (both, both_calls) = run(FEATURES_SUPPORTED, false);
        let (refused, refused_calls) = run(FEATURES_SUPPORTED, true);
        for (name, out) in [("json-find", &found), ("json-equals", &tested), ("both", &both), ("refused", &refused)] {
            assert_eq!(out, &plain, "{conditions:?} with {name}");
        }
        // One call per condition (or path) and batch; a refused test falls back to json_find.
        let equals_calls = usize::from(pushed_down) * conditions.iter().filter(|(k, _)| k.contains("EQUALS")).count();
        assert_eq!(plain_calls, (0, 0), "{conditions:?}");
        assert_eq!(found_calls, (1, 0), "{conditions:?}");
        assert_eq!(tested_calls, (0, equals_calls), "{conditions:?}");
        assert_eq!(both_calls, (usize::from(!pushed_down), equals_calls), "{conditions:?}");
        assert_eq!(refused_calls, (1, equals_calls), "{conditions:?}");
        assert!(plain.map_or_else(|e| e.message.contains("invalid JSON"), |out| !out.is_empty()), "{conditions:?}");
    }
}
