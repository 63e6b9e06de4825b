//! Shared by the integration tests of the JSON host calls: hand-written modules, and the
//! SDK-built json-filter plugin.

use runnel_runtime::{
    InputRecord, InstanceConfig, Limits, MemoryStateStore, ProcessError, TransformInstance, TransformModule, WasmHost,
};

/// The json-filter of `plugins/dist` compiled, or `None` (the test is skipped) when
/// `plugins/build.sh` has not been run. Says whether the module imports `import`.
pub(crate) fn json_filter(import: &str) -> Option<TransformModule> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let Ok(wasm) = std::fs::read(root.join("plugins/dist/json-filter.wasm")) else {
        println!("plugins/dist/json-filter.wasm: not built, skipped");
        return None;
    };
    let imports = wasm.windows(import.len()).any(|w| w == import.as_bytes());
    println!("json-filter.wasm imports {import}: {imports}");
    Some(WasmHost::new(Default::default()).expect("host").load(&wasm).expect("load"))
}

/// The values a fresh instance configured with `env` keeps of one batch of `values`.
pub(crate) fn kept_values(
    module: &TransformModule,
    env: &[(&str, &str)],
    values: &[Option<Vec<u8>>],
) -> Vec<Option<Vec<u8>>> {
    let mut config = InstanceConfig::new(0, 1, MemoryStateStore::new());
    config.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut instance = module.instantiate(config).expect("instantiate");
    let records: Vec<InputRecord<'_>> = values
        .iter()
        .enumerate()
        .map(|(i, v)| InputRecord { offset: i as i64, timestamp_ms: 0, key: None, value: v.as_deref(), headers: &[] })
        .collect();
    instance.process(&records).expect("batch").records.into_iter().map(|r| r.value.map(|v| v.to_vec())).collect()
}

/// An instance of a hand-written module, with `limits`.
pub(crate) fn instantiate_wat(wat: &str, limits: Limits) -> TransformInstance {
    let wasm = wat::parse_str(wat).expect("wat");
    let module = WasmHost::new(Default::default()).expect("host").load(&wasm).expect("load");
    let mut config = InstanceConfig::new(0, 1, MemoryStateStore::new());
    config.limits = limits;
    module.instantiate(config).expect("instantiate")
}

/// The value of the first output record when `instance` processes one small record.
pub(crate) fn first_output_of_one_record(instance: &mut TransformInstance) -> Result<Vec<u8>, ProcessError> {
    let records = [InputRecord { offset: 0, timestamp_ms: 0, key: None, value: Some(b"x"), headers: &[] }];
    let output = instance.process(&records)?;
    Ok(output.records[0].value.clone().unwrap_or_default().to_vec())
}
