//! What each wasmtime `Store` carries for the host imports (`HostState`), and the guest
//! memory helpers every import uses to bounds-check guest pointers.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::ops::Range;
use std::sync::Arc;

use wasmtime::{Caller, Memory};

use crate::wasm::clock::GuestClock;
use crate::wasm::error::HostFault;
use crate::wasm::limits::{Limits, MemoryLimiter};
use crate::wasm::log::BatchLog;
use crate::wasm::state::{Overlay, StateStore};

/// The store data of one instance.
pub(crate) struct HostState {
    pub(crate) limiter: MemoryLimiter,
    /// The guest's exported memory, set right after instantiation.
    pub(crate) memory: Option<Memory>,
    pub(crate) limits: Arc<Limits>,
    pub(crate) env: Arc<BTreeMap<String, String>>,
    pub(crate) state: Arc<dyn StateStore>,
    pub(crate) overlay: Overlay,
    pub(crate) log: BatchLog,
    /// Last `set_error` message of the call in progress.
    pub(crate) error_message: Option<String>,
    /// Sequence number of the batch in progress (0 during instantiation and `runnel_init`).
    pub(crate) batch: u64,
    pub(crate) random: SplitMix64,
    /// The clocks of WASI `clock_time_get`.
    pub(crate) clock: Arc<dyn GuestClock>,
}

impl HostState {
    pub(crate) fn new(
        limits: Arc<Limits>,
        env: Arc<BTreeMap<String, String>>,
        state: Arc<dyn StateStore>,
        random_seed: u64,
        clock: Arc<dyn GuestClock>,
    ) -> Self {
        Self {
            limiter: MemoryLimiter::new(&limits),
            memory: None,
            limits,
            env,
            state,
            overlay: Overlay::default(),
            log: BatchLog::default(),
            error_message: None,
            batch: 0,
            random: SplitMix64(random_seed),
            clock,
        }
    }

    /// Clears everything a previous call left behind.
    pub(crate) fn begin_call(&mut self, batch: u64) {
        self.batch = batch;
        self.limiter.growth_refused = false;
        self.overlay.clear();
        self.log.clear();
        self.error_message = None;
    }
}

/// A small non-cryptographic generator for WASI `random_get` (hash-map seeds and the like in
/// guests). Seedable so a run can be reproduced; guests must not use it for secrets.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// A seed from the OS's randomness (std's per-process hash keys), for instances not given one.
pub(crate) fn os_seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x5eed);
    hasher.finish()
}

/// The guest memory of the calling instance, or a fault if the import ran before it was set
/// (from a start function).
pub(crate) fn guest_memory(caller: &Caller<'_, HostState>, import: &'static str) -> Result<Memory, HostFault> {
    caller.data().memory.ok_or(HostFault::NoMemory { import })
}

/// `ptr..ptr+len` as a range of `memory_bytes`, both read as unsigned 32-bit values; a fault
/// if any byte lies outside the memory.
pub(crate) fn guest_range(
    import: &'static str,
    ptr: i32,
    len: i32,
    memory_bytes: usize,
) -> Result<Range<usize>, HostFault> {
    let (ptr, len) = (ptr as u32, len as u32);
    let start = ptr as usize;
    let end = start + len as usize;
    if end > memory_bytes {
        return Err(HostFault::OutOfBounds { import, ptr, len, memory_bytes });
    }
    Ok(start..end)
}

/// Writes a little-endian value at `ptr`, bounds-checked.
pub(crate) fn write_guest(data: &mut [u8], import: &'static str, ptr: i32, bytes: &[u8]) -> Result<(), HostFault> {
    let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
    let range = guest_range(import, ptr, len, data.len())?;
    data[range].copy_from_slice(bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ranges_are_unsigned_and_bounded() {
        assert_eq!(guest_range("t", 10, 5, 15).ok(), Some(10..15));
        assert!(guest_range("t", 10, 6, 15).is_err());
        assert!(guest_range("t", -1, 1, 15).is_err());
        assert!(guest_range("t", 0, -1, 15).is_err());
        assert_eq!(guest_range("t", 15, 0, 15).ok(), Some(15..15));
        assert!(guest_range("t", 16, 0, 15).is_err());
    }
}
