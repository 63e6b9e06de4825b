//! The WASM host against hand-written ABI v1 modules (`tests/fixtures/*.wat`): well-behaved
//! transforms, hostile ones, and the precompiled-module cache.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel_runtime::{
    HostConfig, InputRecord, InstanceConfig, InstantiateError, Limits, LoadError, LogLevel, MemoryStateStore,
    ModuleSource, OutputCap, ProcessError, RecordHeader, StateChange, TransformInstance, TransformModule, WasmHost,
};

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn fixture(name: &str) -> Vec<u8> {
    wat::parse_file(fixture_path(name)).unwrap_or_else(|error| panic!("{name}: {error}"))
}

fn host() -> WasmHost {
    WasmHost::new(HostConfig::default()).expect("host")
}

fn load(host: &WasmHost, name: &str) -> TransformModule {
    host.load(&fixture(name)).unwrap_or_else(|error| panic!("{name}: {error}"))
}

fn instance(module: &TransformModule) -> TransformInstance {
    module.instantiate(InstanceConfig::new(3, 1, MemoryStateStore::new())).expect("instantiate")
}

fn record<'a>(offset: i64, key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> InputRecord<'a> {
    InputRecord { offset, timestamp_ms: 1_700_000_000_000 + offset, key, value, headers: &[] }
}

#[test]
fn uppercase_wasm_matches_its_source() {
    let assembled = fixture("uppercase.wat");
    let committed = fixture_path("uppercase.wasm");
    if std::env::var_os("RUNNEL_BLESS").is_some() {
        std::fs::write(&committed, &assembled).expect("bless uppercase.wasm");
    }
    assert_eq!(
        runnel_runtime::bench::UPPERCASE_WASM,
        &assembled[..],
        "tests/fixtures/uppercase.wasm is stale: rerun this test with RUNNEL_BLESS=1"
    );
}

#[test]
fn uppercase_map_keeps_keys_headers_nulls_and_timestamps() {
    let host = host();
    let module = load(&host, "uppercase.wat");
    assert_eq!(module.source(), ModuleSource::Compiled);
    let mut instance = instance(&module);
    let headers = [RecordHeader { name: b"trace", value: Some(b"abc") }, RecordHeader { name: b"empty", value: None }];
    let records = [
        InputRecord { headers: &headers, ..record(10, Some(b"key"), Some(b"hello, World 42")) },
        record(11, None, None),
        record(12, Some(b""), Some(b"")),
    ];
    let output = instance.process(&records).expect("process");
    assert_eq!(output.records.len(), 3);
    let first = &output.records[0];
    assert_eq!(first.output_index, 0);
    assert_eq!(first.timestamp_ms, Some(1_700_000_000_010));
    assert_eq!(first.key.as_deref(), Some(&b"key"[..]));
    assert_eq!(first.value.as_deref(), Some(&b"HELLO, WORLD 42"[..]));
    assert_eq!(first.headers.len(), 2);
    assert_eq!(first.headers[0].name.as_ref(), b"trace");
    assert_eq!(first.headers[0].value.as_deref(), Some(&b"abc"[..]));
    assert_eq!(first.headers[1].value, None);
    assert_eq!((output.records[1].key.clone(), output.records[1].value.clone()), (None, None));
    assert_eq!(output.records[2].key.as_deref(), Some(&b""[..]));
    assert_eq!(output.records[2].value.as_deref(), Some(&b""[..]));
    assert!(output.state_changes.is_empty());
    // Every byte value, at every alignment of the guest's eight-byte loop.
    let all_bytes: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    for start in 0..9 {
        let value = &all_bytes[start..];
        let output = instance.process(&[record(13, None, Some(value))]).expect("all bytes");
        assert_eq!(output.records[0].value.as_deref(), Some(&value.to_ascii_uppercase()[..]), "from {start}");
    }
    // An empty batch is a batch too.
    assert!(instance.process(&[]).expect("empty").records.is_empty());
}

#[test]
fn counter_stages_state_per_batch_and_reads_its_own_writes() {
    let host = host();
    let module = load(&host, "counter.wat");
    let state = MemoryStateStore::new();
    let mut instance = module.instantiate(InstanceConfig::new(0, 1, state.clone())).expect("instantiate");
    let count = |output: &runnel_runtime::ProcessOutput| -> Vec<u64> {
        output
            .records
            .iter()
            .map(|r| u64::from_le_bytes(r.value.as_deref().expect("value").try_into().expect("8 bytes")))
            .collect()
    };
    let batch =
        [record(0, Some(b"a"), Some(b"x")), record(1, Some(b"a"), Some(b"x")), record(2, Some(b"b"), Some(b"x"))];
    let output = instance.process(&batch).expect("batch 1");
    assert_eq!(count(&output), vec![1, 2, 1], "reads see the batch's own writes");
    assert_eq!(output.records[0].timestamp_ms, None, "-1 means the input's timestamp");
    assert_eq!(
        output.state_changes,
        vec![
            StateChange { key: b"a".to_vec(), value: Some(2u64.to_le_bytes().to_vec()) },
            StateChange { key: b"b".to_vec(), value: Some(1u64.to_le_bytes().to_vec()) },
        ]
    );
    // Not committed: the next batch starts from the committed (empty) store again.
    let output = instance.process(&batch[..1]).expect("batch 2");
    assert_eq!(count(&output), vec![1]);
    state.apply(&output.state_changes);
    let output = instance.process(&batch[..1]).expect("batch 3");
    assert_eq!(count(&output), vec![2]);
    state.apply(&output.state_changes);
    // A null value deletes.
    let output = instance.process(&[record(4, Some(b"a"), None)]).expect("delete");
    assert!(output.records.is_empty());
    assert_eq!(output.state_changes, vec![StateChange { key: b"a".to_vec(), value: None }]);
    state.apply(&output.state_changes);
    assert!(state.is_empty());
}

#[test]
fn failed_batch_discards_its_state_writes() {
    let host = host();
    let module = load(&host, "counter.wat");
    let state = MemoryStateStore::new();
    let mut config = InstanceConfig::new(0, 1, state.clone());
    // "a"+8 and "bb"+8 fit in 20 bytes, "ccc"+8 does not: state_put refuses, the guest fails.
    config.limits.state_batch_bytes_max = 20;
    let mut instance = module.instantiate(config).expect("instantiate");
    let batch =
        [record(0, Some(b"a"), Some(b"x")), record(1, Some(b"bb"), Some(b"x")), record(2, Some(b"ccc"), Some(b"x"))];
    let error = instance.process(&batch).expect_err("state cap");
    assert!(matches!(error, ProcessError::GuestError { code: -1, .. }), "{error}");
    assert!(!error.discards_instance());
    let output = instance.process(&batch[..1]).expect("next batch");
    assert_eq!(output.state_changes.len(), 1, "nothing of the failed batch leaked");
    assert_eq!(instance.instantiations(), 1);
}

#[test]
fn log_env_and_set_error_reach_the_host() {
    let host = host();
    let module = load(&host, "log_env.wat");
    let mut config = InstanceConfig::new(0, 1, MemoryStateStore::new());
    config.env = BTreeMap::from([("GREETING".to_string(), "bonjour".to_string())]);
    let mut instance = module.instantiate(config).expect("instantiate");
    let ring = instance.log_ring().clone();
    assert_eq!(ring.snapshot()[0].message, "init", "runnel_init ran and logged");

    let output = instance.process(&[record(0, None, Some(b"one"))]).expect("process");
    assert_eq!(output.records[0].value.as_deref(), Some(&b"bonjour"[..]));
    assert_eq!(output.logs.len(), 1);
    assert_eq!((output.logs[0].level, output.logs[0].message.as_str()), (LogLevel::Info, "one"));

    // Rate limit: 150 lines logged, 100 kept, one note about the rest.
    let values: Vec<String> = (0..150).map(|n| format!("line {n}")).collect();
    let batch: Vec<InputRecord<'_>> = values.iter().map(|value| record(1, None, Some(value.as_bytes()))).collect();
    let output = instance.process(&batch).expect("chatty batch");
    assert_eq!(output.records.len(), 150);
    assert_eq!(output.logs.len(), 101);
    assert!(output.logs[100].message.contains("50 log line(s) dropped"), "{:?}", output.logs[100]);
    // Size limit: a 5000-byte line is cut to 4 KiB.
    let long = vec![b'x'; 5000];
    let output = instance.process(&[record(2, None, Some(&long))]).expect("long line");
    assert!(output.logs[0].message.len() < 4200 && output.logs[0].message.ends_with("[truncated]"));

    let error = instance.process(&[record(3, None, Some(b"fail"))]).expect_err("fail");
    match &error {
        ProcessError::GuestError { code: -1, message: Some(message) } => assert_eq!(message, "asked to fail"),
        other => panic!("expected GuestError, got {other:?}"),
    }
    assert_eq!(instance.instantiations(), 1, "a guest error keeps the instance");
    assert!(ring.snapshot().iter().any(|line| line.message == "fail"), "failed batches log too");
}

#[test]
fn missing_env_is_null() {
    let host = host();
    let mut instance = instance(&load(&host, "log_env.wat"));
    let output = instance.process(&[record(0, None, Some(b"x"))]).expect("process");
    assert_eq!(output.records[0].value, None);
}

#[test]
fn wasi_preview1_subset_is_locked_down() {
    let host = host();
    let mut instance = instance(&load(&host, "wasi.wat"));
    let output = instance.process(&[record(0, None, None)]).expect("process");
    let value = output.records[0].value.clone().expect("value");
    let errno = |n: usize| i32::from_le_bytes(value[n * 4..n * 4 + 4].try_into().expect("4 bytes"));
    // random_get, clock_time_get, environ_sizes_get ok; no preopens (EBADF); path_open ENOSYS;
    // fd 5 does not exist (EBADF).
    assert_eq!((0..6).map(errno).collect::<Vec<_>>(), vec![0, 0, 0, 8, 52, 8]);
    let now_ns = u64::from_le_bytes(value[24..32].try_into().expect("8 bytes"));
    assert!(now_ns > 1_600_000_000_000_000_000, "realtime clock: {now_ns}");
    let logs: Vec<(LogLevel, &str)> = output.logs.iter().map(|l| (l.level, l.message.as_str())).collect();
    assert_eq!(logs, vec![(LogLevel::Info, "hello stdout"), (LogLevel::Warn, "partial stderr")]);

    let error = instance.process(&[record(1, None, None), record(2, None, None)]).expect_err("proc_exit");
    assert!(matches!(error, ProcessError::Exit { code: 3 }), "{error}");
    assert!(instance.process(&[record(3, None, None)]).is_ok(), "recovers after proc_exit");
}

/// A clock stopped at a fixed instant, as a simulation would supply.
struct FixedClock;

impl runnel_runtime::GuestClock for FixedClock {
    fn realtime_ns(&self) -> u64 {
        1_234_567_890_000_000_000
    }

    fn monotonic_ns(&self) -> u64 {
        42
    }
}

#[test]
fn guest_time_comes_from_the_configured_clock() {
    let host = host();
    let module = load(&host, "wasi.wat");
    let mut config = InstanceConfig::new(0, 1, MemoryStateStore::new());
    config.clock = Arc::new(FixedClock);
    let mut instance = module.instantiate(config).expect("instantiate");
    let output = instance.process(&[record(0, None, None)]).expect("process");
    let value = output.records[0].value.clone().expect("value");
    assert_eq!(u64::from_le_bytes(value[24..32].try_into().expect("8 bytes")), 1_234_567_890_000_000_000);
}

#[test]
fn modules_that_break_the_abi_are_refused_at_load() {
    let host = host();
    let wrong_abi = host.load(&fixture("wrong_abi.wat")).expect_err("abi 2");
    assert!(matches!(wrong_abi, LoadError::AbiVersion { found: 2, supported: 1 }), "{wrong_abi}");
    let message = wrong_abi.to_string();
    assert!(message.contains("version 2") && message.contains("version 1"), "{message}");

    let missing = host.load(&fixture("missing_export.wat")).expect_err("missing");
    assert!(matches!(missing, LoadError::MissingExport { name: "runnel_process", .. }), "{missing}");

    let unknown = host.load(&fixture("unknown_import.wat")).expect_err("unknown import");
    match &unknown {
        LoadError::UnknownImport { module, name } => assert_eq!((module.as_str(), name.as_str()), ("env", "now")),
        other => panic!("expected UnknownImport, got {other:?}"),
    }

    let mistyped = host.load(&fixture("wrong_import_type.wat")).expect_err("import type");
    assert!(matches!(mistyped, LoadError::ImportType { .. }), "{mistyped}");
    assert!(mistyped.to_string().contains("func (i32, i32, i32) -> ()"), "{mistyped}");

    let invalid = host.load(b"\0asm\x01\0\0\0garbage").expect_err("invalid");
    assert!(matches!(invalid, LoadError::Invalid { .. }), "{invalid}");

    let small = WasmHost::new(HostConfig { module_bytes_max: 16, ..HostConfig::default() }).expect("host");
    let too_large = small.load(&fixture("uppercase.wat")).expect_err("too large");
    assert!(matches!(too_large, LoadError::TooLarge { max_bytes: 16, .. }), "{too_large}");

    let no_memory =
        wat::parse_str(r#"(module (func (export "runnel_abi_version") (result i32) (i32.const 1)))"#).expect("wat");
    let error = host.load(&no_memory).expect_err("no memory");
    assert!(matches!(error, LoadError::MissingExport { name: "memory", .. }), "{error}");

    let wrong_type = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "runnel_abi_version") (result i64) (i64.const 1)))"#,
    )
    .expect("wat");
    let error = host.load(&wrong_type).expect_err("export type");
    assert!(matches!(error, LoadError::ExportType { name: "runnel_abi_version", .. }), "{error}");

    let huge_memory = wat::parse_str(
        r#"(module (memory (export "memory") 2000)
             (func (export "runnel_abi_version") (result i32) (i32.const 1))
             (func (export "runnel_alloc") (param i32) (result i32) (i32.const 0))
             (func (export "runnel_process") (param i32 i32) (result i64) (i64.const 0)))"#,
    )
    .expect("wat");
    let huge_table = wat::parse_str(
        r#"(module (memory (export "memory") 1) (table 200000 funcref)
             (func (export "runnel_abi_version") (result i32) (i32.const 1))
             (func (export "runnel_alloc") (param i32) (result i32) (i32.const 0))
             (func (export "runnel_process") (param i32 i32) (result i64) (i64.const 0)))"#,
    )
    .expect("wat");
    let error = host.load(&huge_table).expect_err("initial table over the cap");
    assert!(matches!(error, LoadError::Instantiate(InstantiateError::MemoryLimit { .. })), "{error}");
    let error = host.load(&huge_memory).expect_err("initial memory over the cap");
    assert!(matches!(error, LoadError::Instantiate(InstantiateError::MemoryLimit { .. })), "{error}");
}

/// What a hostile batch must fail with.
type Expect = fn(&ProcessError) -> bool;

#[test]
fn hostile_modules_fail_their_batch_and_the_host_recovers() {
    let host = host();
    // A well-behaved instance of another transform keeps working throughout, on its own thread.
    let neighbour = load(&host, "uppercase.wat");
    let stop = Arc::new(AtomicBool::new(false));
    let neighbour_batches = Arc::new(AtomicU64::new(0));
    let worker = {
        let (stop, batches) = (Arc::clone(&stop), Arc::clone(&neighbour_batches));
        let mut instance = instance(&neighbour);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let output = instance.process(&[record(0, None, Some(b"ok"))]).expect("neighbour batch");
                assert_eq!(output.records[0].value.as_deref(), Some(&b"OK"[..]));
                batches.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    let cases: &[(&str, Expect)] = &[
        ("loop.wat", |e| matches!(e, ProcessError::Deadline { budget_ms: 1000 })),
        ("memory_bomb.wat", |e| matches!(e, ProcessError::MemoryLimit { limit_bytes: 67_108_864 })),
        ("memory_spin.wat", |e| matches!(e, ProcessError::MemoryLimit { .. })),
        ("trap.wat", |e| matches!(e, ProcessError::Trap { message } if message.contains("unreachable"))),
        ("recursion.wat", |e| matches!(e, ProcessError::Trap { message } if message.contains("stack"))),
        ("huge_output.wat", |e| {
            matches!(e, ProcessError::OutputTooLarge { cap: OutputCap::Bytes, found: 0xffff_fff0, .. })
        }),
        ("too_many_records.wat", |e| {
            matches!(e, ProcessError::OutputTooLarge { cap: OutputCap::Records, found: 200_000, .. })
        }),
        ("oob_output.wat", |e| matches!(e, ProcessError::OutputOutOfBounds { ptr: 0x7fff_0000, len: 16, .. })),
        ("malformed_output.wat", |e| matches!(e, ProcessError::MalformedOutput { .. })),
        ("bad_index.wat", |e| matches!(e, ProcessError::BadOutputIndex { output_index: 7, outputs: 1, .. })),
        ("oob_import.wat", |e| matches!(e, ProcessError::HostCallOutOfBounds { import: "log", .. })),
        ("json_find_oob.wat", |e| matches!(e, ProcessError::HostCallOutOfBounds { import: "json_find", .. })),
        ("json_equals_oob.wat", |e| matches!(e, ProcessError::HostCallOutOfBounds { import: "json_equals", .. })),
    ];
    for (name, expected) in cases {
        let module = load(&host, name);
        let mut hostile = instance(&module);
        let started = Instant::now();
        let error = hostile.process(&[record(0, None, Some(b"x"))]).expect_err(name);
        let elapsed = started.elapsed();
        println!("{name}: {error} (returned after {elapsed:?})");
        assert!(expected(&error), "{name}: unexpected {error:?}");
        assert!(elapsed < Duration::from_secs(10), "{name}: took {elapsed:?}");
        // The same instance serves the next batch (re-instantiated if memory was lost).
        let output = hostile.process(&[]).unwrap_or_else(|e| panic!("{name} after failure: {e}"));
        assert!(output.records.is_empty());
        let expected_instantiations = if error.discards_instance() { 2 } else { 1 };
        assert_eq!(hostile.instantiations(), expected_instantiations, "{name}");
        // And an explicit reset works too.
        hostile.reset().expect("reset");
        assert!(hostile.process(&[]).is_ok());
    }

    stop.store(true, Ordering::Relaxed);
    worker.join().expect("neighbour thread");
    assert!(neighbour_batches.load(Ordering::Relaxed) > 0);
    println!("neighbour processed {} batches meanwhile", neighbour_batches.load(Ordering::Relaxed));
}

#[test]
fn guest_errors_and_traps_in_log_env() {
    let host = host();
    let mut instance = instance(&load(&host, "log_env.wat"));
    let error = instance.process(&[record(0, None, Some(b"trap"))]).expect_err("trap");
    assert!(matches!(error, ProcessError::Trap { .. }), "{error}");
    let error = instance.process(&[record(0, None, Some(b"oobl"))]).expect_err("oob");
    assert!(matches!(error, ProcessError::HostCallOutOfBounds { import: "log", .. }), "{error}");
    assert!(instance.process(&[record(0, None, Some(b"fine"))]).is_ok());
    assert_eq!(instance.instantiations(), 3);
}

#[test]
fn input_that_cannot_fit_the_guest_fails_cleanly() {
    let host = host();
    let module = load(&host, "uppercase.wat");
    let mut config = InstanceConfig::new(0, 1, MemoryStateStore::new());
    config.limits = Limits { memory_bytes_max: 1 << 20, ..Limits::default() };
    let mut instance = module.instantiate(config).expect("instantiate");
    let big = vec![b'a'; 2 << 20];
    let error = instance.process(&[record(0, None, Some(&big))]).expect_err("too big for memory");
    assert!(matches!(error, ProcessError::AllocFailed { .. }), "{error}");
    assert!(instance.process(&[record(0, None, Some(b"small"))]).is_ok());

    let mut config = InstanceConfig::new(0, 1, MemoryStateStore::new());
    config.limits.input_bytes_max = 100;
    let mut instance = module.instantiate(config).expect("instantiate");
    let error = instance.process(&[record(0, None, Some(&big))]).expect_err("over input cap");
    assert!(matches!(error, ProcessError::InputTooLarge { max_bytes: 100, .. }), "{error}");
}

#[test]
fn instances_of_one_module_run_concurrently() {
    let host = host();
    let module = load(&host, "uppercase.wat");
    let threads: Vec<_> = (0..4)
        .map(|partition| {
            let module = module.clone();
            std::thread::spawn(move || {
                let mut instance = module
                    .instantiate(InstanceConfig::new(partition, 1, MemoryStateStore::new()))
                    .expect("instantiate");
                for offset in 0..200 {
                    let value = format!("p{partition} o{offset}");
                    let output = instance.process(&[record(offset, None, Some(value.as_bytes()))]).expect("process");
                    assert_eq!(output.records[0].value.as_deref(), Some(value.to_uppercase().as_bytes()));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread");
    }
}

#[test]
fn precompiled_cache_is_hit_and_survives_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = HostConfig { cache_dir: Some(dir.path().to_path_buf()), ..HostConfig::default() };
    let wasm = fixture("uppercase.wat");
    let check = |module: &TransformModule| {
        let mut instance = instance(module);
        let output = instance.process(&[record(0, None, Some(b"cached"))]).expect("process");
        assert_eq!(output.records[0].value.as_deref(), Some(&b"CACHED"[..]));
    };

    let first = WasmHost::new(config.clone()).expect("host").load(&wasm).expect("load");
    assert_eq!(first.source(), ModuleSource::Compiled);
    check(&first);
    let files: Vec<PathBuf> =
        std::fs::read_dir(dir.path()).expect("cache dir").map(|entry| entry.expect("entry").path()).collect();
    assert_eq!(files.len(), 1, "one artifact, no temporary files: {files:?}");
    assert!(files[0].to_string_lossy().contains(&first.digest_hex()));

    // A new host (a broker restart) loads the artifact instead of compiling.
    let started = Instant::now();
    let second = WasmHost::new(config.clone()).expect("host").load(&wasm).expect("load");
    println!("cache hit load: {:?}", started.elapsed());
    assert_eq!(second.source(), ModuleSource::Cache);
    check(&second);

    // Flip a byte in the middle of the artifact: detected, recompiled, rewritten.
    let mut bytes = std::fs::read(&files[0]).expect("read artifact");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&files[0], &bytes).expect("corrupt");
    let third = WasmHost::new(config.clone()).expect("host").load(&wasm).expect("load");
    assert_eq!(third.source(), ModuleSource::Compiled);
    check(&third);
    let fourth = WasmHost::new(config.clone()).expect("host").load(&wasm).expect("load");
    assert_eq!(fourth.source(), ModuleSource::Cache, "the recompiled artifact was stored");

    // A truncated file and a file of garbage fall back the same way.
    for damaged in [bytes[..bytes.len() / 3].to_vec(), b"not an artifact".to_vec()] {
        std::fs::write(&files[0], &damaged).expect("damage");
        let module = WasmHost::new(config.clone()).expect("host").load(&wasm).expect("load");
        assert_eq!(module.source(), ModuleSource::Compiled);
        check(&module);
    }
}

#[test]
fn deadline_is_configurable_and_reported() {
    let host = host();
    let module = load(&host, "loop.wat");
    let mut config = InstanceConfig::new(0, 1, MemoryStateStore::new());
    config.limits.process_deadline = Duration::from_millis(100);
    let mut instance = module.instantiate(config).expect("instantiate");
    let started = Instant::now();
    let error = instance.process(&[record(0, None, Some(b"x"))]).expect_err("deadline");
    println!("100 ms deadline returned after {:?}", started.elapsed());
    assert!(matches!(error, ProcessError::Deadline { budget_ms: 100 }), "{error}");
    assert!(error.discards_instance());
}

/// The SDK-built plugins, when `plugins/build.sh` has been run (they are build outputs, not
/// committed): each loads, starts with its settings and processes a JSON batch.
#[test]
fn sdk_built_plugins_run_if_present() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // (path, outputs, env, records expected from the batch below)
    type Case = (&'static str, u32, &'static [(&'static str, &'static str)], usize);
    let cases: &[Case] = &[
        ("plugins/dist/json-filter.wasm", 1, &[("FIELD", "action"), ("EQUALS", "click")], 2),
        ("plugins/dist/json-project.wasm", 1, &[("FIELDS", "user")], 3),
        ("plugins/dist/router.wasm", 3, &[("FIELD", "action"), ("ROUTES", "click:1,buy:2")], 3),
        ("plugins/dist/dedup.wasm", 1, &[("WINDOW_MS", "10000")], 1),
        ("plugins/dist/hello-transform.wasm", 2, &[("SALT", "s")], 3),
        ("examples/hello-transform/target/wasm32-wasi/release/hello_transform.wasm", 2, &[("SALT", "s")], 3),
    ];
    let host = host();
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let cached_host =
        WasmHost::new(HostConfig { cache_dir: Some(cache_dir.path().to_path_buf()), ..HostConfig::default() })
            .expect("host");
    let values = [
        br#"{"user":"u1","action":"click","page":"/"}"#.as_slice(),
        br#"{"user":"u2","action":"buy","page":"/cart"}"#.as_slice(),
        br#"{"user":"u1","action":"click","page":"/a"}"#.as_slice(),
    ];
    let batch: Vec<InputRecord<'_>> =
        values.iter().enumerate().map(|(n, value)| record(n as i64, Some(b"same-key"), Some(value))).collect();
    for (path, outputs, env, expected_records) in cases {
        let Ok(wasm) = std::fs::read(root.join(path)) else {
            println!("{path}: not built, skipped");
            continue;
        };
        let started = Instant::now();
        let module = host.load(&wasm).unwrap_or_else(|e| panic!("{path}: {e}"));
        let compile = started.elapsed();
        let started = Instant::now();
        let cached = cached_host.load(&wasm).unwrap_or_else(|e| panic!("{path}: {e}"));
        let cold_cache = started.elapsed();
        let started = Instant::now();
        let cached = cached_host.load(&wasm).map(|again| (again.source(), cached.source()));
        let warm_cache = started.elapsed();
        assert_eq!(cached.expect("cached load").0, ModuleSource::Cache, "{path}");
        println!("{path}: load {compile:?} compiling, {cold_cache:?} compiling into the cache, {warm_cache:?} from it");
        let mut config = InstanceConfig::new(0, *outputs, MemoryStateStore::new());
        config.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut instance = module.instantiate(config).unwrap_or_else(|e| panic!("{path}: {e}"));
        let output = instance.process(&batch).unwrap_or_else(|e| panic!("{path}: {e}"));
        println!(
            "{path}: {} bytes, {} -> {} records, {} state changes",
            wasm.len(),
            batch.len(),
            output.records.len(),
            output.state_changes.len()
        );
        assert_eq!(output.records.len(), *expected_records, "{path}: {output:?}");
    }
}

/// A minimal module around `body` (extra module fields), with an empty-output `runnel_process`
/// that fails with -1 unless the global `$ready` is 1.
fn module_with(body: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
             (import "runnel" "set_error" (func $set_error (param i32 i32)))
             (memory (export "memory") 1)
             (data (i32.const 16) "init said no")
             (global $ready (mut i32) (i32.const 0))
             (func (export "runnel_abi_version") (result i32) (i32.const 1))
             (func (export "runnel_alloc") (param i32) (result i32) (i32.const 8192))
             (func (export "runnel_process") (param i32 i32) (result i64)
               (if (i32.ne (global.get $ready) (i32.const 1)) (then (return (i64.const -1))))
               (i32.store (i32.const 4096) (i32.const 0))
               (i64.const 0x0000100000000004))
             {body})"#
    ))
    .expect("wat")
}

#[test]
fn wasi_reactor_initialize_runs_before_runnel_init() {
    let host = host();
    let wasm = module_with(
        r#"(func (export "_initialize") (global.set $ready (i32.const 1)))
           (func (export "runnel_init") (result i32)
             (if (result i32) (i32.eq (global.get $ready) (i32.const 1))
               (then (global.set $ready (i32.const 1)) (i32.const 0))
               (else (i32.const 9))))"#,
    );
    let mut instance = instance(&host.load(&wasm).expect("load"));
    assert!(instance.process(&[]).is_ok());
}

#[test]
fn failing_runnel_init_refuses_the_instance() {
    let host = host();
    let wasm = module_with(
        r#"(func (export "runnel_init") (result i32)
             (call $set_error (i32.const 16) (i32.const 12))
             (i32.const 7))"#,
    );
    let module = host.load(&wasm).expect("load");
    let error = module.instantiate(InstanceConfig::new(0, 1, MemoryStateStore::new())).expect_err("init fails");
    match &error {
        InstantiateError::InitFailed { code: 7, message: Some(message) } => {
            assert_eq!(message, "init said no")
        }
        other => panic!("expected InitFailed, got {other:?}"),
    }
    let trapping = module_with(r#"(func (export "runnel_init") (result i32) unreachable)"#);
    let error = host
        .load(&trapping)
        .expect("load")
        .instantiate(InstanceConfig::new(0, 1, MemoryStateStore::new()))
        .expect_err("init traps");
    assert!(
        matches!(&error, InstantiateError::InitFault(inner) if matches!(**inner, ProcessError::Trap { .. })),
        "{error}"
    );
}

/// One instance per (transform, partition): a broker holds many at once. Each reserves
/// address space for its memory (not RAM): check a thousand coexist and all work.
#[test]
fn a_thousand_instances_coexist() {
    let host = host();
    let module = load(&host, "uppercase.wat");
    let started = Instant::now();
    let mut instances: Vec<TransformInstance> = (0..1000).map(|_| instance(&module)).collect();
    println!("1000 instances in {:?}", started.elapsed());
    for instance in &mut instances {
        let output = instance.process(&[record(0, None, Some(b"x"))]).expect("process");
        assert_eq!(output.records[0].value.as_deref(), Some(&b"X"[..]));
    }
}

/// A state store that fails every read, as a broken disk would.
struct BrokenStore;

impl runnel_runtime::StateStore for BrokenStore {
    fn get(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, runnel_runtime::StateStoreError> {
        Err(runnel_runtime::StateStoreError { message: "disk on fire".to_string() })
    }
}

#[test]
fn state_store_failures_are_host_failures() {
    let host = host();
    let module = load(&host, "counter.wat");
    let mut instance = module.instantiate(InstanceConfig::new(0, 1, Arc::new(BrokenStore))).expect("instantiate");
    let error = instance.process(&[record(0, Some(b"k"), Some(b"v"))]).expect_err("store fails");
    assert!(matches!(&error, ProcessError::StateStore { message } if message == "disk on fire"), "{error}");
    assert!(error.is_host_failure() && error.discards_instance());
    // Deletes need no read: the instance came back and works.
    let output = instance.process(&[record(1, Some(b"k"), None)]).expect("delete");
    assert_eq!(output.state_changes.len(), 1);
    assert_eq!(instance.instantiations(), 2);
}
