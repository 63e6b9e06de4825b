//! Shared by the integration tests that run the SDK-built json-filter plugin.

use runnel_runtime::{InputRecord, InstanceConfig, MemoryStateStore, TransformModule, WasmHost};

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
