use runnel_sdk::testing::Harness;
use runnel_sdk::{Output, Record};

fn run(env: &[(&str, &str)], values: &[&str]) -> Vec<Output> {
    let mut h = env.iter().fold(Harness::new(crate::runnel_instance), |h, (k, v)| h.env(k, v));
    h.run_values(values).expect("batch succeeds")
}

fn values(out: &[Output]) -> Vec<&str> {
    out.iter().map(|o| o.value_str().unwrap_or("<none>")).collect()
}

const EVENT: &str = r#"{"user":"u1","action":"click","page":"/home","ctx":{"ip":"10.0.0.1","ua":"x"}}"#;

#[test]
fn fields_keeps_only_listed_fields_in_order_with_renames_and_nested_paths() {
    let out = run(&[("FIELDS", "page:url, user, ctx.ip:ip, missing")], &[EVENT]);
    assert_eq!(values(&out), vec![r#"{"url":"/home","user":"u1","ip":"10.0.0.1"}"#]);
}

#[test]
fn rename_and_drop_keep_the_other_fields() {
    let out = run(&[("RENAME", "user:user_id,ctx.ua:agent"), ("DROP", "ctx.ip,action")], &[EVENT]);
    assert_eq!(values(&out), vec![r#"{"page":"/home","ctx":{},"user_id":"u1","agent":"x"}"#]);
}

#[test]
fn destination_paths_build_nested_objects() {
    let out = run(&[("FIELDS", "user:who.id,action:who.did")], &[EVENT]);
    assert_eq!(values(&out), vec![r#"{"who":{"id":"u1","did":"click"}}"#]);
}

#[test]
fn key_timestamp_and_headers_are_kept_and_tombstones_pass() {
    let mut h = Harness::new(crate::runnel_instance).env("FIELDS", "user");
    let rec = Record::new(EVENT).with_key("k").with_timestamp(5).with_header("h", "v");
    let tombstone = Record { key: Some(b"k".to_vec()), ..Record::default() };
    let out = h.run(vec![rec, tombstone]).expect("batch");
    assert_eq!(out[0], Output::new(r#"{"user":"u1"}"#).with_key("k").with_timestamp(5).with_header("h", "v"));
    assert_eq!(out[1].value, None);
}

#[test]
fn non_objects_follow_on_invalid() {
    let inputs = ["[1,2]", "nope", EVENT];
    assert_eq!(values(&run(&[("FIELDS", "user")], &inputs)), vec![r#"{"user":"u1"}"#]);
    assert_eq!(
        values(&run(&[("FIELDS", "user"), ("ON_INVALID", "keep")], &inputs)),
        vec!["[1,2]", "nope", r#"{"user":"u1"}"#]
    );
    let mut h = Harness::new(crate::runnel_instance).env("FIELDS", "user").env("ON_INVALID", "fail");
    let err = h.run_values(&inputs).expect_err("fails");
    assert!(err.message.contains("not a JSON object"), "{}", err.message);
}

#[test]
fn configuration_errors_name_the_setting() {
    let err = |env: &[(&str, &str)]| {
        let mut h = env.iter().fold(Harness::new(crate::runnel_instance), |h, (k, v)| h.env(k, v));
        h.init().expect_err("bad config").message
    };
    assert!(err(&[]).contains("nothing to do"));
    assert!(err(&[("RENAME", "a")]).contains("src:dst"));
    assert!(err(&[("FIELDS", " , ")]).contains("FIELDS is empty"));
    assert!(err(&[("FIELDS", "a:")]).contains("empty path"));
}
