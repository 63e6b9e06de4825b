//! Per-instance resource limits and the memory limiter that enforces them.
//!
//! Every number here is a default from `sdk/ABI.md` ("Limits"), configurable per transform.

use std::time::Duration;

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// The bounds one transform instance runs within. `Default` is the ABI v1 host default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory cap per instance (ABI: 64 MiB). Growth past it fails (`memory.grow` = -1)
    /// and a batch that then fails is reported as [`crate::ProcessError::MemoryLimit`].
    pub memory_bytes_max: usize,
    /// Table elements cap per table: a module cannot reserve host memory through huge tables.
    pub table_elements_max: usize,
    /// Wall-clock budget of one `runnel_process` call (ABI: 1 s), enforced by epoch
    /// interruption; rounded up to whole epoch ticks.
    pub process_deadline: Duration,
    /// Budget of `runnel_init` and of the deploy-time `runnel_abi_version` check.
    pub init_deadline: Duration,
    /// Largest encoded input batch the host hands to the guest. The broker splits bigger
    /// batches; the guest needs room for input and output inside `memory_bytes_max`.
    pub input_bytes_max: usize,
    /// Output batch cap in bytes (ABI: 16 MiB).
    pub output_bytes_max: usize,
    /// Output records per input batch (ABI: 100,000).
    pub output_records_max: usize,
    /// One output record value (ABI: 1 MiB).
    pub output_value_bytes_max: usize,
    /// `log` lines kept per batch (ABI: 100); the rest are counted and dropped.
    pub log_lines_per_batch_max: usize,
    /// One `log` line (ABI: 4 KiB); longer lines are truncated.
    pub log_line_bytes_max: usize,
    /// `set_error` message cap: it is shown to operators, not a data channel.
    pub error_message_bytes_max: usize,
    /// One state key (`state_put` refuses longer keys with [`STATE_PUT_KEY_TOO_LARGE`]).
    ///
    /// [`STATE_PUT_KEY_TOO_LARGE`]: crate::STATE_PUT_KEY_TOO_LARGE
    pub state_key_bytes_max: usize,
    /// One state value (`state_put` refuses with [`STATE_PUT_VALUE_TOO_LARGE`]).
    ///
    /// [`STATE_PUT_VALUE_TOO_LARGE`]: crate::STATE_PUT_VALUE_TOO_LARGE
    pub state_value_bytes_max: usize,
    /// Keys plus values written by one batch (`state_put` refuses with
    /// [`STATE_PUT_BATCH_FULL`]): the overlay is committed atomically with the batch, so it
    /// must stay a size the commit path can carry.
    ///
    /// [`STATE_PUT_BATCH_FULL`]: crate::STATE_PUT_BATCH_FULL
    pub state_batch_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        const MIB: usize = 1024 * 1024;
        Self {
            memory_bytes_max: 64 * MIB,
            table_elements_max: 100_000,
            process_deadline: Duration::from_secs(1),
            init_deadline: Duration::from_secs(1),
            input_bytes_max: 16 * MIB,
            output_bytes_max: 16 * MIB,
            output_records_max: 100_000,
            output_value_bytes_max: MIB,
            log_lines_per_batch_max: 100,
            log_line_bytes_max: 4 * 1024,
            error_message_bytes_max: 4 * 1024,
            state_key_bytes_max: 4 * 1024,
            state_value_bytes_max: MIB,
            state_batch_bytes_max: 16 * MIB,
        }
    }
}

/// Wraps wasmtime's [`StoreLimits`] and remembers that a growth was refused, so a batch that
/// fails afterwards (a trap from the guest's out-of-memory path, or a deadline while it spins)
/// is reported as a memory-limit failure rather than as whatever symptom followed.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    inner: StoreLimits,
    /// Set when a memory or table growth was refused; cleared at the start of each call.
    pub(crate) growth_refused: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        let inner = StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes_max)
            .table_elements(limits.table_elements_max)
            // One instance, one memory, a few tables: what a transform module needs and no more.
            .instances(1)
            .memories(1)
            .tables(4)
            .build();
        Self { inner, growth_refused: false }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if !allowed {
            self.growth_refused = true;
        }
        Ok(allowed)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.inner.table_growing(current, desired, maximum)?;
        if !allowed {
            self.growth_refused = true;
        }
        Ok(allowed)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Whole epoch ticks covering `budget`, at least one.
pub(crate) fn deadline_ticks(budget: Duration, tick: Duration) -> u64 {
    let tick_nanos = tick.as_nanos().max(1);
    let ticks = budget.as_nanos().div_ceil(tick_nanos);
    u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_rounds_up_to_whole_ticks() {
        let tick = Duration::from_millis(10);
        assert_eq!(deadline_ticks(Duration::from_secs(1), tick), 100);
        assert_eq!(deadline_ticks(Duration::from_millis(15), tick), 2);
        assert_eq!(deadline_ticks(Duration::ZERO, tick), 1);
    }
}
