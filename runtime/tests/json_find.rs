//! The `json_find` import (ABI v1 extension `json-find`, `sdk/ABI.md`) against hand-built
//! modules: its answers are the SDK scanner's, document by document; every out-of-bounds
//! pointer traps the call; too much work, a bad path and a negative count are refused with the
//! documented codes; and the instance serves the next batch after each. Also: the SDK-built
//! json-filter keeps what the SDK's scan keeps, with the extension (when `plugins/build.sh` ran).

mod support;

use runnel_runtime::{
    Limits, ProcessError, TransformInstance, FEATURE_JSON_FIND, HOST_FEATURES, JSON_FIND_BAD_PATH, JSON_FIND_TOO_MUCH,
};
use runnel_sdk::json::locate::{locate, ABSENT, FOUND, FOUND_PLAIN_STRING, INVALID};
use runnel_sdk::json::Path;

/// Where the generated modules keep things (4 pages of memory).
const PATH_AT: u32 = 0x100;
const SPANS_AT: u32 = 0x1000;
const OUTPUT_AT: u32 = 0x2000;
const DOCUMENTS_AT: u32 = 0x8000;
const INPUT_AT: u32 = 0x20000;
/// The output record's value (the entries) starts after count, index, timestamp, key, length.
const ENTRIES_AT: u32 = OUTPUT_AT + 4 + 4 + 8 + 4 + 4;

/// The arguments the module passes to `json_find`.
#[derive(Clone, Copy)]
struct Call {
    path_ptr: i64,
    path_len: i64,
    spans_ptr: i64,
    count: i64,
    entries_ptr: i64,
}

/// A module that calls `json_find` once per batch with `call` (the path, spans and documents
/// in its data) and outputs one record whose value is the entries, or fails the batch with the
/// import's code when it is not 0.
fn module_wat(path: &[u8], documents: &[Option<&[u8]>], call: Call) -> String {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("\\{b:02x}")).collect::<String>();
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
    let entries_len = documents.len() as u32 * 12;
    let mut output = Vec::new();
    output.extend_from_slice(&1u32.to_le_bytes());
    output.extend_from_slice(&0u32.to_le_bytes());
    output.extend_from_slice(&(-1i64).to_le_bytes());
    output.extend_from_slice(&(-1i32).to_le_bytes());
    output.extend_from_slice(&entries_len.to_le_bytes());
    output.resize(output.len() + entries_len as usize + 4, 0);
    let packed = (u64::from(OUTPUT_AT) << 32) | output.len() as u64;
    let Call { path_ptr, path_len, spans_ptr, count, entries_ptr } = call;
    format!(
        r#"(module
             (import "runnel" "json_find" (func $json_find (param i32 i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 4)
             (data (i32.const {PATH_AT}) "{path}")
             (data (i32.const {SPANS_AT}) "{spans}")
             (data (i32.const {OUTPUT_AT}) "{output}")
             (data (i32.const {DOCUMENTS_AT}) "{data}")
             (func (export "runnel_abi_version") (result i32) (i32.const 1))
             (func (export "runnel_abi_features") (param $offered i64) (result i64)
               (i64.and (local.get $offered) (i64.const {FEATURE_JSON_FIND})))
             (func (export "runnel_alloc") (param i32) (result i32) (i32.const {INPUT_AT}))
             (func (export "runnel_process") (param i32 i32) (result i64)
               (local $code i32)
               (local.set $code (call $json_find (i32.const {path_ptr}) (i32.const {path_len})
                 (i32.const {spans_ptr}) (i32.const {count}) (i32.const {entries_ptr})))
               (if (i32.ne (local.get $code) (i32.const 0))
                 (then (return (i64.extend_i32_s (local.get $code)))))
               (i64.const {packed})))"#,
        path = hex(path),
        spans = hex(&spans),
        output = hex(&output),
        data = hex(&data),
    )
}

/// The call that names everything the module holds.
fn honest(path: &[u8], documents: usize) -> Call {
    Call {
        path_ptr: PATH_AT.into(),
        path_len: path.len() as i64,
        spans_ptr: SPANS_AT.into(),
        count: documents as i64,
        entries_ptr: ENTRIES_AT.into(),
    }
}

fn instance(path: &[u8], documents: &[Option<&[u8]>], call: Call, limits: Limits) -> TransformInstance {
    support::instantiate_wat(&module_wat(path, documents, call), limits)
}

/// The entries the module got back, decoded from its output record.
fn entries(instance: &mut TransformInstance) -> Result<Vec<[u32; 3]>, ProcessError> {
    let value = support::first_output_of_one_record(instance)?;
    let words: Vec<u32> = value.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect();
    Ok(words.chunks_exact(3).map(|e| [e[0], e[1], e[2]]).collect())
}

const DOCUMENTS: &[&[u8]] = &[
    br#"{"a":{"b":"x"},"c":[1]}"#,
    br#"{"user":"u1","action":"click","page":"/home"}"#,
    br#" { "action" : "cl\u0069ck" , "a" : { "b" : [ 1 , { "c" : 2 } ] } } "#,
    br#"{"a":{"b":1},"a":{"b":"last"}}"#,
    br#"{"a\u002eb":1,"a":{"b":2},"\u0061ction":"view"}"#,
    "{\"action\":\"caf\u{e9}\",\"a\":null}".as_bytes(),
    b"{\"action\":\"\xff\"}",
    br#"{"action":"click""#,
    br#"{"action":1e400}"#,
    br#"[{"action":"click"}]"#,
    b"",
    b"42",
];

#[test]
fn the_host_offers_json_find() {
    assert_eq!(HOST_FEATURES & FEATURE_JSON_FIND, FEATURE_JSON_FIND);
}

#[test]
fn answers_are_the_sdk_scanners_for_every_document() {
    let mut documents: Vec<Option<&[u8]>> = DOCUMENTS.iter().map(|d| Some(*d)).collect();
    documents.insert(3, None);
    for path in ["a.b", "action", "", "a", "c", "a.b.c", "x"] {
        let mut instance =
            instance(path.as_bytes(), &documents, honest(path.as_bytes(), documents.len()), Limits::default());
        let got = entries(&mut instance).expect("batch");
        let expected: Vec<[u32; 3]> =
            documents.iter().map(|d| d.map_or([ABSENT, 0, 0], |d| locate(d, &Path::new(path)))).collect();
        assert_eq!(got, expected, "{path}");
        if path == "a.b" {
            // Not only the same as the SDK: right.
            assert_eq!(got[0], [FOUND_PLAIN_STRING, 10, 13]);
            assert_eq!(got[2], [FOUND, 43, 62]);
            assert_eq!(got[3], [ABSENT, 0, 0], "no document");
            assert_eq!(&DOCUMENTS[3][got[4][1] as usize..got[4][2] as usize], br#""last""#);
            assert_eq!(got[7], [INVALID, 0, 0], "invalid UTF-8");
        }
    }
}

#[test]
fn out_of_bounds_pointers_trap_the_call_and_the_instance_recovers() {
    let documents: Vec<Option<&[u8]>> = DOCUMENTS.iter().map(|d| Some(*d)).collect();
    let call = honest(b"a", documents.len());
    let memory = 4 * 65536;
    for (what, bad) in [
        ("path", Call { path_ptr: memory - 1, path_len: 2, ..call }),
        ("spans", Call { spans_ptr: memory - 8, ..call }),
        ("entries", Call { entries_ptr: memory - 12, ..call }),
        ("entries", Call { entries_ptr: -4, ..call }),
    ] {
        let mut instance = instance(b"a", &documents, bad, Limits::default());
        let error = entries(&mut instance).expect_err(what);
        assert!(matches!(error, ProcessError::HostCallOutOfBounds { import: "json_find", .. }), "{what}: {error:?}");
        assert!(error.discards_instance(), "{what}");
        // Re-instantiated, it fails the same way again rather than hanging or panicking.
        assert!(entries(&mut instance).is_err(), "{what}");
        assert_eq!(instance.instantiations(), 2, "{what}");
    }
    // A span that points outside memory (its table is in bounds): the fixture hostile test
    // (wasm_host.rs, json_find_oob.wat) covers it with a document at 0xffffff00.
}

#[test]
fn too_much_work_a_bad_path_and_a_negative_count_are_refused_with_codes() {
    let documents: Vec<Option<&[u8]>> = DOCUMENTS.iter().map(|d| Some(*d)).collect();
    let call = honest(b"a", documents.len());
    let code = |instance: &mut TransformInstance| match entries(instance) {
        Err(ProcessError::GuestError { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Documents over the input batch cap in total.
    let total: usize = DOCUMENTS.iter().map(|d| d.len()).sum();
    let limits = Limits { input_bytes_max: total - 1, ..Limits::default() };
    assert_eq!(code(&mut instance(b"a", &documents, call, limits)), i64::from(JSON_FIND_TOO_MUCH));
    let limits = Limits { input_bytes_max: total, ..Limits::default() };
    assert!(entries(&mut instance(b"a", &documents, call, limits)).is_ok(), "exactly at the cap");
    // A negative count is a huge one.
    assert_eq!(code(&mut instance(b"a", &documents, Call { count: -1, ..call }, Limits::default())), -1);
    // A path that is not UTF-8.
    let mut bad_path = instance(b"\xff", &documents, honest(b"\xff", documents.len()), Limits::default());
    assert_eq!(code(&mut bad_path), i64::from(JSON_FIND_BAD_PATH));
    // Refusals are answers, not faults: the instance stays.
    assert_eq!(bad_path.instantiations(), 1);
}

/// The SDK-built json-filter (when `plugins/build.sh` has been run) keeps exactly what the
/// SDK's own scan keeps, on values that are tricky for the host's answers.
#[test]
fn the_sdk_json_filter_keeps_what_the_scan_keeps() {
    let Some(module) = support::json_filter("json_find") else { return };
    let mut values: Vec<Option<Vec<u8>>> = DOCUMENTS.iter().map(|d| Some(d.to_vec())).collect();
    values.push(None);
    values.push(Some(br#"{"action":"click"}"#.to_vec()));
    values.push(Some(br#"{"action":"cl\"ick"}"#.to_vec()));
    values.push(Some(br#"{"action":"cl\u0069ck","x":[{"action":"view"}]}"#.to_vec()));
    for on_invalid in ["drop", "keep"] {
        let env = [("FIELD", "action"), ("EQUALS", "click"), ("ON_INVALID", on_invalid)];
        let kept = support::kept_values(&module, &env, &values);
        let path = Path::new("action");
        let expected: Vec<Option<Vec<u8>>> = values
            .iter()
            .filter(|v| match v {
                None => true,
                Some(v) => match runnel_sdk::json::find_path(v, &path) {
                    Ok(Some(raw)) => raw.as_str().is_some_and(|s| s == "click"),
                    Ok(None) => false,
                    Err(_) => on_invalid == "keep",
                },
            })
            .cloned()
            .collect();
        assert_eq!(kept, expected, "ON_INVALID={on_invalid}");
        assert_eq!(kept.len(), if on_invalid == "keep" { 9 } else { 5 }, "the batch kept something");
    }
}
