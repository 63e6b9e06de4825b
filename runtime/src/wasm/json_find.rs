//! The `json_find` import (ABI v1 extension `json-find`, `sdk/ABI.md`): locates one JSON path
//! in many documents of guest memory in one call, natively, with the SDK's own scanner
//! ([`runnel_sdk::json::locate`]), so a guest's answer is the one its scan would give. A filter
//! on a JSON field spends most of its time in that scan, which runs several times slower as
//! WebAssembly than natively; with this the guest only compares the field.
//!
//! Hostile guests: every span and the entry table are bounds-checked against the memory (an
//! out-of-bounds one traps the call with a [`HostFault`], as the other imports do), and one call
//! scans at most [`Limits::input_bytes_max`] bytes of documents and
//! [`JSON_FIND_DOCUMENTS_MAX`] documents, refusing more with [`JSON_FIND_TOO_MUCH`]: the call is
//! native code the epoch deadline cannot interrupt, so its length must be bounded like one
//! batch's. A guest that calls it in a loop is interrupted between calls.

use runnel_sdk::json::locate::{ENTRY_BYTES, SPAN_BYTES};
use runnel_sdk::json::Path;
use wasmtime::Caller;

use crate::wasm::error::HostFault;
use crate::wasm::limits::Limits;
use crate::wasm::store::{guest_memory, guest_range, HostState};

/// Documents one call may name: more records than a default input batch can hold (16 MiB at
/// 28 bytes per empty record is about 600,000), so the SDK's one call per batch fits, and
/// bounded so that even empty documents cannot keep the host in one call for long (about
/// 10 ns each).
pub const JSON_FIND_DOCUMENTS_MAX: usize = 1 << 20;
/// Longest path in bytes (a dotted path of object keys; keys longer than that do not occur).
pub const JSON_FIND_PATH_BYTES_MAX: usize = 4 * 1024;
/// `json_find`: the documents exceed [`JSON_FIND_DOCUMENTS_MAX`] or their bytes
/// [`Limits::input_bytes_max`]; entries are unspecified.
pub const JSON_FIND_TOO_MUCH: i32 = -1;
/// `json_find`: the path is not UTF-8, or longer than [`JSON_FIND_PATH_BYTES_MAX`].
pub const JSON_FIND_BAD_PATH: i32 = -2;
/// A span length meaning "no document" (a null value): its entry says absent.
const NO_DOCUMENT: u32 = u32::MAX;

const IMPORT: &str = "json_find";

/// `json_find(path_ptr, path_len, spans_ptr, count, entries_ptr) -> i32`: for each of the
/// `count` spans (`u32 ptr, u32 len`) at `spans_ptr`, the entry `[status, start, end]` of
/// `path` in that document, written at `entries_ptr` (12 bytes each). 0, or a negative code.
pub(crate) fn json_find(
    mut caller: Caller<'_, HostState>,
    path_ptr: i32,
    path_len: i32,
    spans_ptr: i32,
    count: i32,
    entries_ptr: i32,
) -> wasmtime::Result<i32> {
    let memory = guest_memory(&caller, IMPORT)?;
    let (data, host) = memory.data_and_store_mut(&mut caller);
    let path = guest_range(IMPORT, path_ptr, path_len, data.len())?;
    let count = count as u32 as usize;
    if count > JSON_FIND_DOCUMENTS_MAX {
        return Ok(JSON_FIND_TOO_MUCH);
    }
    // Within the documents cap these products fit an i32.
    let spans = guest_range(IMPORT, spans_ptr, (count * SPAN_BYTES) as i32, data.len())?;
    let entries = guest_range(IMPORT, entries_ptr, (count * ENTRY_BYTES) as i32, data.len())?;
    let path = match std::str::from_utf8(&data[path]) {
        Ok(path) if path.len() <= JSON_FIND_PATH_BYTES_MAX => Path::new(path),
        _ => return Ok(JSON_FIND_BAD_PATH),
    };
    Ok(locate_all(data, &path, spans.start, entries.start, count, &host.limits)?)
}

/// The entries of `count` spans; spans and entries were checked to lie in `data`. Each span is
/// read just before its document is scanned (a guest whose entries overlap its spans only
/// garbles its own answers) and checked against the memory.
fn locate_all(
    data: &mut [u8],
    path: &Path,
    spans: usize,
    entries: usize,
    count: usize,
    limits: &Limits,
) -> Result<i32, HostFault> {
    let mut budget_bytes = limits.input_bytes_max;
    for i in 0..count {
        let (ptr, len) = (u32_at(data, spans + i * SPAN_BYTES), u32_at(data, spans + i * SPAN_BYTES + 4));
        let entry = if len == NO_DOCUMENT {
            [runnel_sdk::json::locate::ABSENT, 0, 0]
        } else {
            if len as usize > budget_bytes {
                return Ok(JSON_FIND_TOO_MUCH);
            }
            budget_bytes -= len as usize;
            let document = guest_range(IMPORT, ptr as i32, len as i32, data.len())?;
            runnel_sdk::json::locate::locate(&data[document], path)
        };
        let at = entries + i * ENTRY_BYTES;
        for (n, word) in entry.iter().enumerate() {
            data[at + 4 * n..at + 4 * n + 4].copy_from_slice(&word.to_le_bytes());
        }
    }
    Ok(0)
}

/// The little-endian `u32` at `at` (the caller checked the range).
fn u32_at(data: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&data[at..at + 4]);
    u32::from_le_bytes(word)
}
