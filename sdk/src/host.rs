//! The host imports of ABI v1 (module `runnel`), behind slice-based functions so the rest of the
//! SDK is safe code and the same on every target.
//!
//! On wasm32 they are the real imports. Natively (tests) they are an in-memory fake host held in
//! a thread-local, which `testing::Harness` fills and reads; it follows the same conventions
//! (e.g. `state_get` copies only when the value fits) so the SDK's retry logic is exercised too.

#[cfg(target_arch = "wasm32")]
pub(crate) use wasm_imports::*;

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use fake::*;

/// Length of a slice as the ABI's `i32`; every slice the SDK passes lives in a 32-bit memory.
#[cfg(target_arch = "wasm32")]
fn len_i32(bytes: &[u8]) -> i32 {
    bytes.len() as i32
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod wasm_imports {
    use super::len_i32;

    #[link(wasm_import_module = "runnel")]
    extern "C" {
        fn log(level: i32, ptr: i32, len: i32);
        fn set_error(ptr: i32, len: i32);
        fn state_get(key_ptr: i32, key_len: i32, dst_ptr: i32, dst_cap: i32) -> i32;
        fn state_put(key_ptr: i32, key_len: i32, val_ptr: i32, val_len: i32) -> i32;
        fn state_delete(key_ptr: i32, key_len: i32) -> i32;
        fn env_get(name_ptr: i32, name_len: i32, dst_ptr: i32, dst_cap: i32) -> i32;
        fn json_find(path_ptr: i32, path_len: i32, spans_ptr: i32, count: i32, entries_ptr: i32) -> i32;
        fn json_equals(
            path_ptr: i32,
            path_len: i32,
            text_ptr: i32,
            text_len: i32,
            spans_ptr: i32,
            count: i32,
            answers_ptr: i32,
        ) -> i32;
    }

    fn ptr(bytes: &[u8]) -> i32 {
        bytes.as_ptr() as usize as i32
    }

    // SAFETY (all below): the host reads `ptr..ptr+len` of slices we own and, for `dst`, writes
    // at most `dst_cap` bytes into a buffer we own exclusively for the duration of the call.

    pub(crate) fn host_log(level: i32, msg: &[u8]) {
        unsafe { log(level, ptr(msg), len_i32(msg)) }
    }

    pub(crate) fn host_set_error(msg: &[u8]) {
        unsafe { set_error(ptr(msg), len_i32(msg)) }
    }

    pub(crate) fn host_state_get(key: &[u8], dst: &mut [u8]) -> i32 {
        unsafe { state_get(ptr(key), len_i32(key), dst.as_mut_ptr() as usize as i32, len_i32(dst)) }
    }

    pub(crate) fn host_state_put(key: &[u8], value: &[u8]) -> i32 {
        unsafe { state_put(ptr(key), len_i32(key), ptr(value), len_i32(value)) }
    }

    pub(crate) fn host_state_delete(key: &[u8]) -> i32 {
        unsafe { state_delete(ptr(key), len_i32(key)) }
    }

    pub(crate) fn host_env_get(name: &[u8], dst: &mut [u8]) -> i32 {
        unsafe { env_get(ptr(name), len_i32(name), dst.as_mut_ptr() as usize as i32, len_i32(dst)) }
    }

    /// `json_find` (extension `json-find`): `spans` are `[address, length]` of documents in our
    /// memory, and the host writes one `[status, start, end]` entry per span into `entries`
    /// (as long as `spans`). Returns 0, or a negative code when the host refused the call.
    pub(crate) fn host_json_find(path: &[u8], spans: &[[usize; 2]], entries: &mut [[u32; 3]]) -> i32 {
        if spans.len() != entries.len() {
            return -1;
        }
        let count = spans.len() as i32;
        let (spans, entries) = (spans.as_ptr() as usize as i32, entries.as_mut_ptr() as usize as i32);
        unsafe { json_find(ptr(path), len_i32(path), spans, count, entries) }
    }

    /// `json_equals` (extension `json-equals`): as [`host_json_find`], with the string `text`
    /// the field must be, and one answer byte per span written into `answers`.
    pub(crate) fn host_json_equals(path: &[u8], text: &[u8], spans: &[[usize; 2]], answers: &mut [u8]) -> i32 {
        if spans.len() != answers.len() {
            return -1;
        }
        let count = spans.len() as i32;
        let (spans, answers) = (spans.as_ptr() as usize as i32, answers.as_mut_ptr() as usize as i32);
        unsafe { json_equals(ptr(path), len_i32(path), ptr(text), len_i32(text), spans, count, answers) }
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod fake {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// The in-memory host one native thread sees.
    #[derive(Default)]
    pub(crate) struct FakeHost {
        pub(crate) env: BTreeMap<String, String>,
        pub(crate) state: BTreeMap<Vec<u8>, Vec<u8>>,
        pub(crate) logs: Vec<(i32, String)>,
        pub(crate) error: Option<String>,
        /// Like the host's store caps: a put whose key + value exceed this is refused.
        pub(crate) max_entry_bytes: Option<usize>,
        /// `json_find` calls answered so far (extension `json-find`).
        pub(crate) json_find_calls: usize,
        /// Makes `json_find` and `json_equals` refuse every call, as a host may (the SDK then
        /// scans itself).
        pub(crate) json_find_refuses: bool,
        /// `json_equals` calls answered (or refused) so far (extension `json-equals`).
        pub(crate) json_equals_calls: usize,
    }

    thread_local! {
        static HOST: RefCell<FakeHost> = RefCell::new(FakeHost::default());
    }

    /// Runs `f` with the fake host of this thread.
    pub(crate) fn with_host<T>(f: impl FnOnce(&mut FakeHost) -> T) -> T {
        HOST.with(|h| f(&mut h.borrow_mut()))
    }

    /// The `state_get`/`env_get` convention: copy only when the value fits, return its length.
    fn copy_if_fits(value: Option<&[u8]>, dst: &mut [u8]) -> i32 {
        match value {
            None => -1,
            Some(v) => {
                if v.len() <= dst.len() {
                    dst[..v.len()].copy_from_slice(v);
                }
                v.len() as i32
            }
        }
    }

    pub(crate) fn host_log(level: i32, msg: &[u8]) {
        let line = String::from_utf8_lossy(msg).into_owned();
        with_host(|h| h.logs.push((level, line)));
    }

    pub(crate) fn host_set_error(msg: &[u8]) {
        let msg = String::from_utf8_lossy(msg).into_owned();
        with_host(|h| h.error = Some(msg));
    }

    pub(crate) fn host_state_get(key: &[u8], dst: &mut [u8]) -> i32 {
        with_host(|h| copy_if_fits(h.state.get(key).map(|v| v.as_slice()), dst))
    }

    pub(crate) fn host_state_put(key: &[u8], value: &[u8]) -> i32 {
        with_host(|h| {
            if h.max_entry_bytes.map_or(false, |max| key.len() + value.len() > max) {
                return -1;
            }
            h.state.insert(key.to_vec(), value.to_vec());
            0
        })
    }

    pub(crate) fn host_state_delete(key: &[u8]) -> i32 {
        with_host(|h| {
            h.state.remove(key);
            0
        })
    }

    pub(crate) fn host_env_get(name: &[u8], dst: &mut [u8]) -> i32 {
        with_host(|h| {
            let value = std::str::from_utf8(name).ok().and_then(|n| h.env.get(n));
            copy_if_fits(value.map(|v| v.as_bytes()), dst)
        })
    }

    /// `json_find` as Runnel's host answers it, over copies of the documents (natively there is
    /// no guest memory to read them from): [`crate::json::locate::locate`] on each.
    pub(crate) fn host_json_find(path: &[u8], documents: &[Option<Vec<u8>>], entries: &mut [[u32; 3]]) -> i32 {
        let refused = with_host(|h| {
            h.json_find_calls += 1;
            h.json_find_refuses
        });
        let path = match std::str::from_utf8(path) {
            Ok(path) if !refused && documents.len() == entries.len() => crate::json::Path::new(path),
            _ => return -1,
        };
        for (document, entry) in documents.iter().zip(entries.iter_mut()) {
            *entry = match document {
                Some(document) => crate::json::locate::locate(document, &path),
                None => [crate::json::locate::ABSENT, 0, 0],
            };
        }
        0
    }

    /// `json_equals` as Runnel's host answers it, over copies of the documents:
    /// [`crate::json::locate::equals`] on each.
    pub(crate) fn host_json_equals(path: &[u8], text: &[u8], documents: &[Option<Vec<u8>>], answers: &mut [u8]) -> i32 {
        let refused = with_host(|h| {
            h.json_equals_calls += 1;
            h.json_find_refuses
        });
        let path = match std::str::from_utf8(path) {
            Ok(path) if !refused && documents.len() == answers.len() => crate::json::Path::new(path),
            _ => return -1,
        };
        for (document, answer) in documents.iter().zip(answers.iter_mut()) {
            *answer = match document {
                Some(document) => crate::json::locate::equals(document, &path, text),
                None => crate::json::locate::EQUALS_ABSENT,
            };
        }
        0
    }
}

/// Reads a value through a `state_get`-style import: start with a small buffer and, when the host
/// says the value is longer, grow to exactly that length and ask again. `Err` carries a
/// negative code other than -1, or a value that keeps changing size (which the ABI rules out).
pub(crate) fn read_grow(mut call: impl FnMut(&mut [u8]) -> i32) -> Result<Option<Vec<u8>>, i32> {
    let mut buf = vec![0u8; 256];
    for _ in 0..3 {
        let n = call(&mut buf);
        if n == -1 {
            return Ok(None);
        }
        if n < 0 {
            return Err(n);
        }
        let n = n as usize;
        if n <= buf.len() {
            buf.truncate(n);
            return Ok(Some(buf));
        }
        buf = vec![0u8; n];
    }
    Err(-1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_grow_retries_once_with_the_exact_size() {
        let value = vec![7u8; 1000];
        let mut calls = Vec::new();
        let got = read_grow(|dst| {
            calls.push(dst.len());
            if value.len() <= dst.len() {
                dst[..value.len()].copy_from_slice(&value);
            }
            value.len() as i32
        });
        assert_eq!(got, Ok(Some(value.clone())));
        assert_eq!(calls, vec![256, 1000]);
    }

    #[test]
    fn read_grow_reports_absent_and_host_errors() {
        assert_eq!(read_grow(|_| -1), Ok(None));
        assert_eq!(read_grow(|_| -5), Err(-5));
        let mut size = 300;
        // A value whose size keeps growing never fits: give up instead of looping.
        assert_eq!(
            read_grow(|_| {
                size *= 2;
                size
            }),
            Err(-1)
        );
    }
}
