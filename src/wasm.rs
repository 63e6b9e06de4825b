//! The processor factory `runnel serve` gives the transform service.

use std::path::Path;
use std::sync::Arc;

use runnel_runtime::transform::{Failure, ProcessorFactory};

/// Placeholder until the WASM host is wired in: refuses every module.
struct NoEngine;

impl ProcessorFactory for NoEngine {
    fn validate(&self, _module: &[u8]) -> Result<(), Failure> {
        Err(Failure::new("engine", "this build has no WASM engine"))
    }

    fn instantiate(
        &self,
        _setup: runnel_runtime::transform::InstanceSetup<'_>,
    ) -> Result<Box<dyn runnel_runtime::transform::Processor>, Failure> {
        Err(Failure::new("engine", "this build has no WASM engine"))
    }
}

pub(crate) fn factory(_data_dir: &Path) -> anyhow::Result<Arc<dyn ProcessorFactory>> {
    Ok(Arc::new(NoEngine))
}
