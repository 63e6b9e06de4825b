//! The process allocator: the system allocator, except that very large requests are served
//! by `mmap(MAP_NORESERVE)`.
//!
//! Why: the `kafka-protocol` codec pre-allocates `Vec::with_capacity(n)` from an array count a
//! client sends before it checks that `n` elements can follow. With a hostile count the
//! request can be tens of gigabytes; the system allocator refuses it and Rust aborts the
//! process. Reserving address space without committing memory lets that allocation succeed
//! cheaply (no page is touched), the decode then fails on the missing bytes, and the
//! connection is closed — the broker stays up.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

/// Install with `#[global_allocator] static GLOBAL: runnel_broker::alloc::Allocator = runnel_broker::alloc::Allocator;`
pub struct Allocator;

/// Requests at least this large go to mmap; below it, the system allocator's usual path.
const HUGE_BYTES: usize = 1 << 30;
/// mmap returns page-aligned memory; larger alignments fall back to the system allocator.
const PAGE_BYTES: usize = 4096;

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE_BYTES && layout.align() <= PAGE_BYTES
}

// SAFETY: every pointer handed out is either from `System` (and returned to it) or from a
// private anonymous mapping of exactly `layout.size()` bytes (and unmapped with that size);
// `is_huge` depends only on the layout, which Rust passes unchanged to `dealloc`.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_huge(&layout) {
            // SAFETY: forwarded with the caller's layout.
            return unsafe { System.alloc(layout) };
        }
        // SAFETY: an anonymous private mapping with no fixed address has no preconditions.
        let pointer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if pointer == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            pointer.cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // SAFETY: anonymous mappings are zero-filled.
            unsafe { self.alloc(layout) }
        } else {
            // SAFETY: forwarded with the caller's layout.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            // SAFETY: `pointer` came from our mmap of exactly `layout.size()` bytes.
            unsafe {
                libc::munmap(pointer.cast(), layout.size());
            }
        } else {
            // SAFETY: `pointer` came from `System` with this layout.
            unsafe { System.dealloc(pointer, layout) }
        }
    }
}

/// Keeps request and fetch buffers (up to a few MB each) in the allocator's arenas instead of
/// fresh mappings. Call once, first thing in `main`.
///
/// Why: glibc serves blocks above its mmap threshold (128 KiB at start, raised adaptively) by
/// `mmap` and returns freed arena memory above 128 KiB to the kernel. A broker allocates and
/// frees megabyte buffers per request, so each one was faulted in page by page, zeroed by the
/// kernel, and unmapped again: a profile of a 1 GB consume put page faults, page clearing and
/// unmapping at ≈30 % of the broker's CPU, and these two settings halved its CPU-seconds for
/// the same consume (1.0 → 0.5 s, `benches/README.md`). The cost is that freed memory stays
/// with the process up to the trim threshold, like a JVM heap that does not shrink.
pub fn tune_system_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// glibc's largest mmap threshold on 64-bit (half a thread arena's 64 MiB heap).
        const MMAP_THRESHOLD: i32 = 32 << 20;
        const TRIM_THRESHOLD: i32 = 512 << 20;
        // SAFETY: mallopt only sets allocator parameters; called before other threads start.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_sized_allocation_succeeds_without_committing_memory() {
        // 64 GiB: more than this machine has, as a hostile array count would ask for.
        let layout = Layout::from_size_align(64 << 30, 8).expect("layout");
        // SAFETY: the pointer is checked for null and released with the same layout.
        unsafe {
            let pointer = Allocator.alloc(layout);
            assert!(!pointer.is_null(), "huge reservation must succeed");
            *pointer = 7; // one page touched, not 64 GiB
            assert_eq!(*pointer, 7);
            Allocator.dealloc(pointer, layout);
        }
        let small = Layout::from_size_align(100, 8).expect("layout");
        // SAFETY: as above.
        unsafe {
            let pointer = Allocator.alloc_zeroed(small);
            assert!(!pointer.is_null());
            assert_eq!(*pointer, 0);
            Allocator.dealloc(pointer, small);
        }
    }
}
