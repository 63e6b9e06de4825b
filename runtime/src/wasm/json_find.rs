//! The `json_find` import (ABI v1 extension `json-find`, `sdk/ABI.md`): locates one JSON path
//! in many documents of guest memory in one call, natively, with the SDK's own scanner
//! ([`runnel_sdk::json::locate`]), so a guest's answer is the one its scan would give. A filter
//! on a JSON field spends most of its time in that scan, which runs several times slower as
//! WebAssembly than natively; with this the guest only compares the field.
//!
//! The `json_equals` import (extension `json-equals`) goes one step further, a pushdown: it
//! also compares the field with a string the guest gives, and answers one byte per document
//! ([`runnel_sdk::json::locate::equals`]), so a filter on "field == string" only reads a byte
//! per record.
//!
//! Hostile guests: every span and the entry table are bounds-checked against the memory (an
//! out-of-bounds one traps the call with a [`HostFault`], as the other imports do), and one call
//! scans at most [`Limits::input_bytes_max`] bytes of documents and
//! [`JSON_FIND_DOCUMENTS_MAX`] documents, refusing more with [`JSON_FIND_TOO_MUCH`]: the call is
//! native code the epoch deadline cannot interrupt, so its length must be bounded like one
//! batch's. A guest that calls it in a loop is interrupted between calls.

use runnel_sdk::json::locate::{equals, locate, ENTRY_BYTES, EQUALS_ABSENT, SPAN_BYTES};
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
/// `json_equals`: the same, or the text is longer than [`JSON_EQUALS_TEXT_BYTES_MAX`].
pub const JSON_FIND_BAD_PATH: i32 = -2;
/// Longest string `json_equals` compares with: operands of filters are short, and the copy
/// the host makes of it per call must stay small. A guest with a longer one tests itself.
pub const JSON_EQUALS_TEXT_BYTES_MAX: usize = 64 * 1024;
/// A span length meaning "no document" (a null value): its entry says absent.
const NO_DOCUMENT: u32 = u32::MAX;

const IMPORT: &str = "json_find";
const IMPORT_EQUALS: &str = "json_equals";

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
    let Some(table) = Table::of(IMPORT, data.len(), spans_ptr, count, entries_ptr, ENTRY_BYTES)? else {
        return Ok(JSON_FIND_TOO_MUCH);
    };
    let Some(path) = path_of(&data[path]) else {
        return Ok(JSON_FIND_BAD_PATH);
    };
    let answered = answer_all(IMPORT, data, table, &host.limits, |document| {
        let entry = document.map_or([runnel_sdk::json::locate::ABSENT, 0, 0], |d| locate(d, &path));
        let mut bytes = [0u8; ENTRY_BYTES];
        for (n, word) in entry.iter().enumerate() {
            bytes[4 * n..4 * n + 4].copy_from_slice(&word.to_le_bytes());
        }
        bytes
    })?;
    Ok(answered)
}

/// `json_equals(path_ptr, path_len, text_ptr, text_len, spans_ptr, count, answers_ptr) -> i32`:
/// for each of the `count` spans at `spans_ptr`, one byte at `answers_ptr`: whether the field
/// at `path` in that document is a string whose content is `text` (`locate::equals`). 0, or a
/// negative code.
#[allow(clippy::too_many_arguments)]
pub(crate) fn json_equals(
    mut caller: Caller<'_, HostState>,
    path_ptr: i32,
    path_len: i32,
    text_ptr: i32,
    text_len: i32,
    spans_ptr: i32,
    count: i32,
    answers_ptr: i32,
) -> wasmtime::Result<i32> {
    let memory = guest_memory(&caller, IMPORT_EQUALS)?;
    let (data, host) = memory.data_and_store_mut(&mut caller);
    let path = guest_range(IMPORT_EQUALS, path_ptr, path_len, data.len())?;
    let text = guest_range(IMPORT_EQUALS, text_ptr, text_len, data.len())?;
    let Some(table) = Table::of(IMPORT_EQUALS, data.len(), spans_ptr, count, answers_ptr, 1)? else {
        return Ok(JSON_FIND_TOO_MUCH);
    };
    let (Some(path), true) = (path_of(&data[path]), text.len() <= JSON_EQUALS_TEXT_BYTES_MAX) else {
        return Ok(JSON_FIND_BAD_PATH);
    };
    // Copied: the answers are written into the same memory.
    let text = data[text].to_vec();
    let answered = answer_all(IMPORT_EQUALS, data, table, &host.limits, |document| {
        [document.map_or(EQUALS_ABSENT, |d| equals(d, &path, &text))]
    })?;
    Ok(answered)
}

/// The path a guest passed, `None` when it is not UTF-8 or too long.
fn path_of(bytes: &[u8]) -> Option<Path> {
    match std::str::from_utf8(bytes) {
        Ok(path) if path.len() <= JSON_FIND_PATH_BYTES_MAX => Some(Path::new(path)),
        _ => None,
    }
}

/// Where the spans and the answers lie in guest memory, checked.
#[derive(Clone, Copy)]
struct Table {
    spans: usize,
    answers: usize,
    count: usize,
}

impl Table {
    /// The table of `count` spans at `spans_ptr` and `count` answers of `answer_bytes` at
    /// `answers_ptr`; `None` (refused) over [`JSON_FIND_DOCUMENTS_MAX`] (a negative count is a
    /// huge one), a trap when either lies outside the memory.
    fn of(
        import: &'static str,
        memory_bytes: usize,
        spans_ptr: i32,
        count: i32,
        answers_ptr: i32,
        answer_bytes: usize,
    ) -> Result<Option<Table>, HostFault> {
        let count = count as u32 as usize;
        if count > JSON_FIND_DOCUMENTS_MAX {
            return Ok(None);
        }
        // Within the documents cap these products fit an i32.
        let spans = guest_range(import, spans_ptr, (count * SPAN_BYTES) as i32, memory_bytes)?;
        let answers = guest_range(import, answers_ptr, (count * answer_bytes) as i32, memory_bytes)?;
        Ok(Some(Table { spans: spans.start, answers: answers.start, count }))
    }
}

/// Writes `answer` of each span's document (`None`: no document) into the table; spans and
/// answers were checked to lie in `data`. Each span is read just before its document is
/// scanned (a guest whose answers overlap its spans only garbles its own answers) and checked
/// against the memory. At most [`Limits::input_bytes_max`] bytes of documents in all.
fn answer_all<const N: usize>(
    import: &'static str,
    data: &mut [u8],
    table: Table,
    limits: &Limits,
    answer: impl Fn(Option<&[u8]>) -> [u8; N],
) -> Result<i32, HostFault> {
    let mut budget_bytes = limits.input_bytes_max;
    for i in 0..table.count {
        let span = table.spans + i * SPAN_BYTES;
        let (ptr, len) = (u32_at(data, span), u32_at(data, span + 4));
        let bytes = if len == NO_DOCUMENT {
            answer(None)
        } else {
            if len as usize > budget_bytes {
                return Ok(JSON_FIND_TOO_MUCH);
            }
            budget_bytes -= len as usize;
            let document = guest_range(import, ptr as i32, len as i32, data.len())?;
            answer(Some(&data[document]))
        };
        let at = table.answers + i * N;
        data[at..at + N].copy_from_slice(&bytes);
    }
    Ok(0)
}

/// The little-endian `u32` at `at` (the caller checked the range).
fn u32_at(data: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&data[at..at + 4]);
    u32::from_le_bytes(word)
}
