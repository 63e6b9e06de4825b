//! The `json_equals` import (ABI v1 extension `json-equals`, `sdk/ABI.md`) against hand-built
//! modules: its answers are the SDK's (`locate::equals`), document by document; every
//! out-of-bounds pointer traps the call; too much work, a bad path, a text over the cap and a
//! negative count are refused with the documented codes; and the instance serves the next batch
//! after each. Also: the SDK-built json-filter, which pushes `EQUALS` down to the host, keeps
//! what the SDK's own test keeps (when `plugins/build.sh` ran).

mod support;

use runnel_runtime::{
    Limits, ProcessError, TransformInstance, FEATURE_JSON_EQUALS, HOST_FEATURES, JSON_EQUALS_TEXT_BYTES_MAX,
    JSON_FIND_BAD_PATH, JSON_FIND_TOO_MUCH,
};
use runnel_sdk::json::locate::{equals, EQUALS_ABSENT, EQUALS_FALSE, EQUALS_INVALID, EQUALS_TRUE};
use runnel_sdk::json::{Path, StrEquals};

/// Where the generated modules keep things (4 pages of memory; a long text grows it).
const PATH_AT: u32 = 0x100;
const SPANS_AT: u32 = 0x1000;
const OUTPUT_AT: u32 = 0x2000;
const DOCUMENTS_AT: u32 = 0x8000;
const INPUT_AT: u32 = 0x20000;
const TEXT_AT: u32 = 0x30000;
/// The output record's value (the answers) starts after count, index, timestamp, key, length.
const ANSWERS_AT: u32 = OUTPUT_AT + 4 + 4 + 8 + 4 + 4;
const PAGE_BYTES: i64 = 65536;

/// The arguments the module passes to `json_equals`.
#[derive(Clone, Copy)]
struct Call {
    path_ptr: i64,
    path_len: i64,
    text_ptr: i64,
    text_len: i64,
    spans_ptr: i64,
    count: i64,
    answers_ptr: i64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A module that calls `json_equals` once per batch with `call` (path, text, spans and
/// documents in its data) and outputs one record whose value is the answers, or fails the
/// batch with the import's code when it is not 0.
fn module_wat(path: &[u8], text: &[u8], documents: &[Option<&[u8]>], call: Call) -> String {
    let (mut spans, mut data) = (Vec::new(), Vec::new());
    for document in documents {
        let (ptr, len) = match document {
            Some(document) => (DOCUMENTS_AT + data.len() as u32, document.len() as u32),
            None => (0, u32::MAX),
        };
        spans.extend_from_slice(&ptr.to_le_bytes());
        spans.extend_from_slice(&len.to_le_bytes());
        data.extend_from_slice(document.unwrap_or_default());
    }
    let answers_len = documents.len() as u32;
    let mut output = Vec::new();
    output.extend_from_slice(&1u32.to_le_bytes());
    output.extend_from_slice(&0u32.to_le_bytes());
    output.extend_from_slice(&(-1i64).to_le_bytes());
    output.extend_from_slice(&(-1i32).to_le_bytes());
    output.extend_from_slice(&answers_len.to_le_bytes());
    output.resize(output.len() + answers_len as usize + 4, 0);
    let packed = (u64::from(OUTPUT_AT) << 32) | output.len() as u64;
    let pages = (i64::from(TEXT_AT) + text.len() as i64 + PAGE_BYTES - 1) / PAGE_BYTES;
    let Call { path_ptr, path_len, text_ptr, text_len, spans_ptr, count, answers_ptr } = call;
    format!(
        r#"(module
             (import "runnel" "json_equals"
               (func $json_equals (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
             (memory (export "memory") {pages})
             (data (i32.const {PATH_AT}) "{path}")
             (data (i32.const {SPANS_AT}) "{spans}")
             (data (i32.const {OUTPUT_AT}) "{output}")
             (data (i32.const {DOCUMENTS_AT}) "{data}")
             (data (i32.const {TEXT_AT}) "{text}")
             (func (export "runnel_abi_version") (result i32) (i32.const 1))
             (func (export "runnel_abi_features") (param $offered i64) (result i64)
               (i64.and (local.get $offered) (i64.const {FEATURE_JSON_EQUALS})))
             (func (export "runnel_alloc") (param i32) (result i32) (i32.const {INPUT_AT}))
             (func (export "runnel_process") (param i32 i32) (result i64)
               (local $code i32)
               (local.set $code (call $json_equals (i32.const {path_ptr}) (i32.const {path_len})
                 (i32.const {text_ptr}) (i32.const {text_len})
                 (i32.const {spans_ptr}) (i32.const {count}) (i32.const {answers_ptr})))
               (if (i32.ne (local.get $code) (i32.const 0))
                 (then (return (i64.extend_i32_s (local.get $code)))))
               (i64.const {packed})))"#,
        path = hex(path),
        spans = hex(&spans),
        output = hex(&output),
        data = hex(&data),
        text = hex(text),
    )
}

/// The call that names everything the module holds.
fn honest(path: &[u8], text: &[u8], documents: usize) -> Call {
    Call {
        path_ptr: PATH_AT.into(),
        path_len: path.len() as i64,
        text_ptr: TEXT_AT.into(),
        text_len: text.len() as i64,
        spans_ptr: SPANS_AT.into(),
        count: documents as i64,
        answers_ptr: ANSWERS_AT.into(),
    }
}

fn instance(path: &[u8], text: &[u8], documents: &[Option<&[u8]>], call: Call, limits: Limits) -> TransformInstance {
    support::instantiate_wat(&module_wat(path, text, documents, call), limits)
}

/// The answers the module got back, from its output record.
fn answers(instance: &mut TransformInstance) -> Result<Vec<u8>, ProcessError> {
    support::first_output_of_one_record(instance)
}

const DOCUMENTS: &[&[u8]] = &[
    br#"{"a":{"b":"x"},"c":[1]}"#,
    br#"{"user":"u1","action":"click","page":"/home"}"#,
    br#" { "action" : "cl\u0069ck" , "a" : { "b" : [ 1 , { "c" : 2 } ] } } "#,
    br#"{"action":"click","action":"view"}"#,
    br#"{"a\u002eb":1,"a":{"b":"x"},"\u0061ction":"click"}"#,
    "{\"action\":\"caf\u{e9}\",\"a\":null}".as_bytes(),
    b"{\"action\":\"\xff\"}",
    br#"{"action":"click""#,
    br#"{"action":1e400}"#,
    br#"[{"action":"click"}]"#,
    br#"{"action":{"click":1},"a":"x"}"#,
    b"",
    b"\"click\"",
];

#[test]
fn the_host_offers_json_equals() {
    assert_eq!(HOST_FEATURES & FEATURE_JSON_EQUALS, FEATURE_JSON_EQUALS);
}

#[test]
fn answers_are_the_sdks_for_every_document() {
    let mut documents: Vec<Option<&[u8]>> = DOCUMENTS.iter().map(|d| Some(*d)).collect();
    documents.insert(3, None);
    for (path, text) in [("action", "click"), ("a.b", "x"), ("", "click"), ("a", "x"), ("action", "caf\u{e9}")] {
        let (path_bytes, text_bytes) = (path.as_bytes(), text.as_bytes());
        let call = honest(path_bytes, text_bytes, documents.len());
        let mut instance = instance(path_bytes, text_bytes, &documents, call, Limits::default());
        let got = answers(&mut instance).expect("batch");
        let expected: Vec<u8> =
            documents.iter().map(|d| d.map_or(EQUALS_ABSENT, |d| equals(d, &Path::new(path), text_bytes))).collect();
        assert_eq!(got, expected, "{path} == {text}");
        // And the same as the SDK's test in the guest (which the SDK falls back to).
        let test = StrEquals::new(Path::new(path), text);
        for (document, answer) in documents.iter().zip(&got) {
            let Some(document) = document else { continue };
            let wanted = match test.test(document) {
                Ok(None) => EQUALS_ABSENT,
                Ok(Some(true)) => EQUALS_TRUE,
                Ok(Some(false)) => EQUALS_FALSE,
                Err(_) => EQUALS_INVALID,
            };
            assert_eq!(*answer, wanted, "{path} == {text} in {document:?}");
        }
        if path == "action" && text == "click" {
            // Not only the same as the SDK: right.
            assert_eq!(&got[..6], &[EQUALS_ABSENT, EQUALS_TRUE, EQUALS_TRUE, EQUALS_ABSENT, EQUALS_FALSE, EQUALS_TRUE]);
            assert_eq!(got[7], EQUALS_INVALID, "invalid UTF-8");
            assert_eq!(got[11], EQUALS_FALSE, "an object is not the string");
        }
    }
}

#[test]
fn out_of_bounds_pointers_trap_the_call_and_the_instance_recovers() {
    let documents: Vec<Option<&[u8]>> = DOCUMENTS.iter().map(|d| Some(*d)).collect();
    let call = honest(b"action", b"click", documents.len());
    let memory = 4 * PAGE_BYTES;
    for (what, bad) in [
        ("path", Call { path_ptr: memory - 1, path_len: 2, ..call }),
        ("text", Call { text_ptr: memory - 2, text_len: 5, ..call }),
        ("text", Call { text_len: -1, ..call }),
        ("spans", Call { spans_ptr: memory - 8, ..call }),
        ("answers", Call { answers_ptr: memory - 1, ..call }),
        ("answers", Call { answers_ptr: -4, ..call }),
    ] {
        let mut instance = instance(b"action", b"click", &documents, bad, Limits::default());
        let error = answers(&mut instance).expect_err(what);
        assert!(matches!(error, ProcessError::HostCallOutOfBounds { import: "json_equals", .. }), "{what}: {error:?}");
        assert!(error.discards_instance(), "{what}");
        // Re-instantiated, it fails the same way again rather than hanging or panicking.
        assert!(answers(&mut instance).is_err(), "{what}");
        assert_eq!(instance.instantiations(), 2, "{what}");
    }
    // A span that points outside memory (its table is in bounds): the hostile fixture
    // (wasm_host.rs, json_equals_oob.wat) covers it with a document at 0xffffff00.
}

#[test]
fn too_much_work_a_bad_path_a_long_text_and_a_negative_count_are_refused_with_codes() {
    let documents: Vec<Option<&[u8]>> = DOCUMENTS.iter().map(|d| Some(*d)).collect();
    let call = honest(b"action", b"click", documents.len());
    let code = |instance: &mut TransformInstance| match answers(instance) {
        Err(ProcessError::GuestError { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Documents over the input batch cap in total.
    let total: usize = DOCUMENTS.iter().map(|d| d.len()).sum();
    let limits = Limits { input_bytes_max: total - 1, ..Limits::default() };
    assert_eq!(code(&mut instance(b"action", b"click", &documents, call, limits)), i64::from(JSON_FIND_TOO_MUCH));
    let limits = Limits { input_bytes_max: total, ..Limits::default() };
    assert!(answers(&mut instance(b"action", b"click", &documents, call, limits)).is_ok(), "exactly at the cap");
    // A negative count is a huge one.
    let negative = Call { count: -1, ..call };
    assert_eq!(code(&mut instance(b"action", b"click", &documents, negative, Limits::default())), -1);
    // A path that is not UTF-8.
    let bad_path = honest(b"\xff", b"click", documents.len());
    let mut bad_path = instance(b"\xff", b"click", &documents, bad_path, Limits::default());
    assert_eq!(code(&mut bad_path), i64::from(JSON_FIND_BAD_PATH));
    // A text over the cap; at the cap it is answered (nothing equals it).
    for (len, refused) in [(JSON_EQUALS_TEXT_BYTES_MAX + 1, true), (JSON_EQUALS_TEXT_BYTES_MAX, false)] {
        let text = vec![b'x'; len];
        let call = honest(b"action", &text, documents.len());
        let mut long = instance(b"action", &text, &documents, call, Limits::default());
        match refused {
            true => assert_eq!(code(&mut long), i64::from(JSON_FIND_BAD_PATH)),
            false => assert!(answers(&mut long).expect("answered").iter().all(|a| *a != EQUALS_TRUE)),
        }
    }
    // Refusals are answers, not faults: the instance stays.
    assert_eq!(bad_path.instantiations(), 1);
}

/// The SDK-built json-filter (when `plugins/build.sh` has been run) keeps exactly what the
/// SDK's own test keeps, with `EQUALS` and `NOT_EQUALS` pushed down to the host.
#[test]
fn the_sdk_json_filter_keeps_what_the_test_keeps() {
    let Some(module) = support::json_filter("json_equals") else { return };
    let mut values: Vec<Option<Vec<u8>>> = DOCUMENTS.iter().map(|d| Some(d.to_vec())).collect();
    values.push(None);
    values.push(Some(br#"{"action":"cl\"ick"}"#.to_vec()));
    let test = StrEquals::new(Path::new("action"), "click");
    for (condition, on_invalid) in [("EQUALS", "drop"), ("EQUALS", "keep"), ("NOT_EQUALS", "drop")] {
        let env = [("FIELD", "action"), (condition, "click"), ("ON_INVALID", on_invalid)];
        let kept = support::kept_values(&module, &env, &values);
        let expected: Vec<Option<Vec<u8>>> = values
            .iter()
            .filter(|v| match v {
                None => true,
                Some(v) => match test.test(v) {
                    Ok(answer) => (answer == Some(true)) == (condition == "EQUALS"),
                    Err(_) => on_invalid == "keep",
                },
            })
            .cloned()
            .collect();
        assert_eq!(kept, expected, "{condition} ON_INVALID={on_invalid}");
        assert!(kept.len() > 1 && kept.len() < values.len(), "the batch kept some and dropped some");
    }
}
