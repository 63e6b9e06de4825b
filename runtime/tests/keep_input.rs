//! The `keep-input` extension of ABI v1 (`sdk/ABI.md`, "Extensions") against hand-built
//! modules: negotiated through `runnel_abi_features`, a forwarded input comes back as the input
//! record itself; a module that does not negotiate keeps plain ABI v1; and every misuse of the
//! new output form fails its batch (or the deploy) cleanly.

use bytes::Bytes;
use runnel_runtime::{
    Emitted, HostConfig, InputRecord, InstanceConfig, InstantiateError, Limits, LoadError, MemoryStateStore, OutputCap,
    ProcessError, RecordHeader, TransformInstance, TransformModule, WasmHost, FEATURE_KEEP_INPUT, HOST_FEATURES,
};

/// `keep-input`: an output index with this bit set is a forwarded input.
const FORWARD: u32 = 1 << 31;
/// Where the modules below keep their output; inputs are placed at 8192.
const OUTPUT_AT: u32 = 4096;

/// How a test module answers `runnel_abi_features`.
enum Answer {
    /// It does not export the function: an ABI v1 module from before the extension.
    NotExported,
    /// The host's offer, masked with this (what the SDK does).
    Masked(i64),
    /// This, whatever was offered.
    Always(i64),
}

/// A module whose `runnel_process` returns `output` (an encoded output batch) for any input.
fn module_wasm(answer: Answer, output: &[u8]) -> Vec<u8> {
    let features = match answer {
        Answer::NotExported => String::new(),
        Answer::Masked(mask) => format!(
            r#"(func (export "runnel_abi_features") (param $offered i64) (result i64)
                 (i64.and (local.get $offered) (i64.const {mask})))"#
        ),
        Answer::Always(value) => {
            format!(r#"(func (export "runnel_abi_features") (param i64) (result i64) (i64.const {value}))"#)
        }
    };
    let data: String = output.iter().map(|b| format!("\\{b:02x}")).collect();
    let packed = (u64::from(OUTPUT_AT) << 32) | output.len() as u64;
    wat::parse_str(format!(
        r#"(module
             (memory (export "memory") 1)
             (data (i32.const {OUTPUT_AT}) "{data}")
             (func (export "runnel_abi_version") (result i32) (i32.const 1))
             {features}
             (func (export "runnel_alloc") (param i32) (result i32) (i32.const 8192))
             (func (export "runnel_process") (param i32 i32) (result i64) (i64.const {packed})))"#
    ))
    .expect("wat")
}

/// Builds an output batch.
#[derive(Default)]
struct Output(Vec<u8>, u32);

impl Output {
    fn forward(mut self, output_index: u32, input_index: u32) -> Self {
        self.0.extend_from_slice(&(output_index | FORWARD).to_le_bytes());
        self.0.extend_from_slice(&input_index.to_le_bytes());
        self.1 += 1;
        self
    }

    fn record(mut self, output_index: u32, value: &[u8]) -> Self {
        self.0.extend_from_slice(&output_index.to_le_bytes());
        self.0.extend_from_slice(&(-1i64).to_le_bytes());
        self.0.extend_from_slice(&(-1i32).to_le_bytes());
        self.0.extend_from_slice(&(value.len() as i32).to_le_bytes());
        self.0.extend_from_slice(value);
        self.0.extend_from_slice(&0u32.to_le_bytes());
        self.1 += 1;
        self
    }

    /// Zero bytes after the records, so a plain-v1 reader finds room for a whole record.
    fn padded(mut self, bytes: usize) -> Self {
        self.0.resize(self.0.len() + bytes, 0);
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut batch = self.1.to_le_bytes().to_vec();
        batch.extend_from_slice(&self.0);
        batch
    }
}

fn host() -> WasmHost {
    WasmHost::new(HostConfig::default()).expect("host")
}

fn load(host: &WasmHost, wasm: &[u8]) -> TransformModule {
    host.load(wasm).expect("load")
}

fn instance_with(module: &TransformModule, outputs: u32, limits: Limits) -> TransformInstance {
    let mut config = InstanceConfig::new(0, outputs, MemoryStateStore::new());
    config.limits = limits;
    module.instantiate(config).expect("instantiate")
}

const HEADERS: [RecordHeader<'static>; 2] =
    [RecordHeader { name: b"trace", value: Some(b"t-1") }, RecordHeader { name: b"empty", value: None }];

fn inputs() -> [InputRecord<'static>; 2] {
    [
        InputRecord { offset: 10, timestamp_ms: 1_000, key: Some(b"k0"), value: Some(b"first"), headers: &HEADERS },
        InputRecord { offset: 11, timestamp_ms: 2_000, key: None, value: None, headers: &[] },
    ]
}

#[test]
fn the_host_offers_keep_input() {
    assert_eq!(HOST_FEATURES & FEATURE_KEEP_INPUT, FEATURE_KEEP_INPUT);
}

#[test]
fn forwarded_inputs_come_back_as_the_input_records_in_order() {
    let output = Output::default().forward(0, 1).record(1, b"built").forward(1, 0).forward(0, 0);
    let module = load(&host(), &module_wasm(Answer::Masked(FEATURE_KEEP_INPUT), &output.bytes()));
    let mut instance = instance_with(&module, 2, Limits::default());
    let inputs = inputs();

    let emitted = instance.process_emitted(&inputs).expect("process_emitted");
    assert!(matches!(emitted.records[0], Emitted::Input { output_index: 0, input_index: 1 }));
    assert!(matches!(&emitted.records[1], Emitted::Record(r) if r.value.as_deref() == Some(&b"built"[..])));
    assert!(matches!(emitted.records[2], Emitted::Input { output_index: 1, input_index: 0 }));
    assert!(matches!(emitted.records[3], Emitted::Input { output_index: 0, input_index: 0 }));
    // Forwards take eight bytes of guest output each.
    assert_eq!(emitted.output_bytes, output.bytes().len());

    // `process` hands every output over as a record: forwards are copies of their input.
    let records = instance.process(&inputs).expect("process").records;
    assert_eq!(records.len(), 4);
    let forwarded = &records[2];
    assert_eq!(forwarded.output_index, 1);
    assert_eq!(forwarded.timestamp_ms, Some(1_000));
    assert_eq!(forwarded.key, Some(Bytes::from_static(b"k0")));
    assert_eq!(forwarded.value, Some(Bytes::from_static(b"first")));
    let headers: Vec<_> = forwarded.headers.iter().map(|h| (h.name.to_vec(), h.value.clone())).collect();
    assert_eq!(headers, vec![(b"trace".to_vec(), Some(Bytes::from_static(b"t-1"))), (b"empty".to_vec(), None)]);
    // Null key and tombstone stay null, not empty.
    assert_eq!((records[0].key.clone(), records[0].value.clone()), (None, None));
    assert_eq!(records[0].timestamp_ms, Some(2_000));
}

#[test]
fn a_module_without_the_export_speaks_plain_v1_and_a_flagged_index_is_refused() {
    // The same bytes from a module that did not negotiate: output index 2^31 names no output
    // (padded to the size of a plain record, else the batch is just too short for its count).
    let output = Output::default().forward(0, 0).padded(16);
    let module = load(&host(), &module_wasm(Answer::NotExported, &output.bytes()));
    let mut instance = instance_with(&module, 1, Limits::default());
    let error = instance.process(&inputs()).expect_err("not negotiated");
    assert!(matches!(error, ProcessError::BadOutputIndex { output_index: FORWARD, outputs: 1, .. }), "{error:?}");

    // An old module's plain records still work.
    let plain = load(&host(), &module_wasm(Answer::NotExported, &Output::default().record(0, b"v").bytes()));
    let records = instance_with(&plain, 1, Limits::default()).process(&inputs()).expect("plain v1").records;
    assert_eq!(records[0].value.as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_module_that_declines_the_offer_gets_plain_v1() {
    let output = Output::default().forward(0, 0).padded(16);
    let module = load(&host(), &module_wasm(Answer::Always(0), &output.bytes()));
    let error = instance_with(&module, 1, Limits::default()).process(&inputs()).expect_err("declined");
    assert!(matches!(error, ProcessError::BadOutputIndex { output_index: FORWARD, .. }), "{error:?}");
}

#[test]
fn accepting_what_was_not_offered_refuses_the_deploy() {
    let unknown = HOST_FEATURES << 1;
    let error =
        host().load(&module_wasm(Answer::Always(unknown), &Output::default().bytes())).expect_err("not offered");
    assert!(
        matches!(&error, LoadError::Instantiate(InstantiateError::AbiFeatures { accepted, offered })
            if *accepted == unknown && *offered == HOST_FEATURES),
        "{error:?}"
    );
    assert!(error.to_string().contains("runnel_abi_features"), "{error}");
}

#[test]
fn a_trap_in_the_negotiation_refuses_the_deploy() {
    let wasm = wat::parse_str(
        r#"(module
             (memory (export "memory") 1)
             (func (export "runnel_abi_version") (result i32) (i32.const 1))
             (func (export "runnel_abi_features") (param i64) (result i64) unreachable)
             (func (export "runnel_alloc") (param i32) (result i32) (i32.const 8192))
             (func (export "runnel_process") (param i32 i32) (result i64) (i64.const 0)))"#,
    )
    .expect("wat");
    let error = host().load(&wasm).expect_err("trap");
    assert!(matches!(error, LoadError::Instantiate(InstantiateError::InitFault(_))), "{error:?}");
}

#[test]
fn a_mistyped_negotiation_export_refuses_the_deploy() {
    let wasm = wat::parse_str(
        r#"(module
             (memory (export "memory") 1)
             (func (export "runnel_abi_version") (result i32) (i32.const 1))
             (func (export "runnel_abi_features") (param i32) (result i32) (i32.const 1))
             (func (export "runnel_alloc") (param i32) (result i32) (i32.const 8192))
             (func (export "runnel_process") (param i32 i32) (result i64) (i64.const 0)))"#,
    )
    .expect("wat");
    let error = host().load(&wasm).expect_err("mistyped");
    assert!(matches!(error, LoadError::ExportType { name: "runnel_abi_features", .. }), "{error:?}");
}

/// Hostile uses of the forward form: each fails its batch with the error that names it, and the
/// instance serves the next batch.
#[test]
fn misused_forwards_fail_the_batch_cleanly() {
    type Expect = fn(&ProcessError) -> bool;
    let small = Limits { output_bytes_max: 60, output_records_max: 2, output_value_bytes_max: 4, ..Limits::default() };
    let cases: Vec<(&str, Output, Limits, Expect)> = vec![
        (
            "input index past the batch",
            Output::default().forward(0, 2),
            Limits::default(),
            |e| matches!(e, ProcessError::MalformedOutput { reason, .. } if reason.contains("input index")),
        ),
        ("output index past the outputs", Output::default().forward(1, 0), Limits::default(), |e| {
            matches!(e, ProcessError::BadOutputIndex { output_index: 1, outputs: 1, .. })
        }),
        ("truncated forward", Output(FORWARD.to_le_bytes().to_vec(), 1), Limits::default(), |e| {
            matches!(e, ProcessError::MalformedOutput { .. })
        }),
        (
            "forwards over the record cap",
            Output::default().forward(0, 1).forward(0, 1).forward(0, 1),
            small.clone(),
            |e| matches!(e, ProcessError::OutputTooLarge { cap: OutputCap::Records, found: 3, max: 2 }),
        ),
        ("a forwarded value over the value cap", Output::default().forward(0, 0), small.clone(), |e| {
            matches!(e, ProcessError::OutputTooLarge { cap: OutputCap::ValueBytes, found: 5, max: 4 })
        }),
        // Input 0 takes 24 + 2 + 5 + (8 + 5 + 3) + (8 + 5) = 60 bytes as a plain record: twice is
        // over 60 even though the forwards themselves take 4 + 16 bytes.
        (
            "forwards over the byte cap",
            Output::default().forward(0, 1).forward(0, 0),
            Limits { output_value_bytes_max: 64, ..small },
            |e| matches!(e, ProcessError::OutputTooLarge { cap: OutputCap::Bytes, found: 88, max: 60 }),
        ),
    ];
    let host = host();
    for (name, output, limits, expected) in cases {
        let module = load(&host, &module_wasm(Answer::Masked(FEATURE_KEEP_INPUT), &output.bytes()));
        let mut instance = instance_with(&module, 1, limits);
        let error = instance.process_emitted(&inputs()).expect_err(name);
        assert!(expected(&error), "{name}: {error:?}");
        // The guest returned normally: its instance is kept for the next batch.
        assert!(!error.discards_instance(), "{name}");
        assert_eq!(instance.instantiations(), 1, "{name}");
    }
}
