//! The processor factory `runnel serve` gives the transform service: the wasmtime host, with
//! compiled modules cached under the data directory.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use runnel_runtime::transform::{ProcessorFactory, WasmProcessorFactory};

pub(crate) fn factory(data_dir: &Path) -> anyhow::Result<Arc<dyn ProcessorFactory>> {
    let cache_dir = data_dir.join("wasm-cache");
    let factory = WasmProcessorFactory::new(Some(cache_dir.clone()))
        .with_context(|| format!("starting the WASM host (module cache {})", cache_dir.display()))?;
    Ok(Arc::new(factory))
}
