//! The `runnel` import module (ABI v1 "Host imports"): log, set_error, state_*, env_get, and
//! json_find and json_equals (in `json_find.rs`).
//!
//! Every guest pointer is bounds-checked; an out-of-bounds one traps the call with a
//! [`HostFault`], which fails the batch. Caps on state writes are answered with negative
//! return codes instead, as the ABI says, so a guest can react.

use wasmtime::{Caller, Linker};

use crate::wasm::error::HostFault;
use crate::wasm::log::{truncate_utf8_lossy, LogLevel};
use crate::wasm::store::{guest_memory, guest_range, HostState};

/// Name of the host's import module.
pub(crate) const RUNNEL_MODULE: &str = "runnel";

/// A WebAssembly value type in a host function signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wasm {
    I32,
    I64,
}

/// The signature of one function the host provides, for refusing mismatched imports at
/// load with a message naming both signatures.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HostSignature {
    pub(crate) name: &'static str,
    pub(crate) params: &'static [Wasm],
    pub(crate) results: &'static [Wasm],
}

pub(crate) const RUNNEL_IMPORTS: &[HostSignature] = &[
    sig("log", &[Wasm::I32, Wasm::I32, Wasm::I32], &[]),
    sig("set_error", &[Wasm::I32, Wasm::I32], &[]),
    sig("state_get", &[Wasm::I32; 4], &[Wasm::I32]),
    sig("state_put", &[Wasm::I32; 4], &[Wasm::I32]),
    sig("state_delete", &[Wasm::I32, Wasm::I32], &[Wasm::I32]),
    sig("env_get", &[Wasm::I32; 4], &[Wasm::I32]),
    sig("json_find", &[Wasm::I32; 5], &[Wasm::I32]),
    sig("json_equals", &[Wasm::I32; 7], &[Wasm::I32]),
];

pub(crate) const fn sig(name: &'static str, params: &'static [Wasm], results: &'static [Wasm]) -> HostSignature {
    HostSignature { name, params, results }
}

/// `state_get`/`env_get`: key absent.
const ABSENT: i32 = -1;
/// `state_put` refused: the key is longer than `Limits::state_key_bytes_max`.
pub const STATE_PUT_KEY_TOO_LARGE: i32 = -1;
/// `state_put` refused: the value is longer than `Limits::state_value_bytes_max`.
pub const STATE_PUT_VALUE_TOO_LARGE: i32 = -2;
/// `state_put`/`state_delete` refused: the batch's writes would exceed
/// `Limits::state_batch_bytes_max`.
pub const STATE_PUT_BATCH_FULL: i32 = -3;

pub(crate) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(RUNNEL_MODULE, "log", log)?;
    linker.func_wrap(RUNNEL_MODULE, "set_error", set_error)?;
    linker.func_wrap(RUNNEL_MODULE, "state_get", state_get)?;
    linker.func_wrap(RUNNEL_MODULE, "state_put", state_put)?;
    linker.func_wrap(RUNNEL_MODULE, "state_delete", state_delete)?;
    linker.func_wrap(RUNNEL_MODULE, "env_get", env_get)?;
    linker.func_wrap(RUNNEL_MODULE, "json_find", crate::wasm::json_find::json_find)?;
    linker.func_wrap(RUNNEL_MODULE, "json_equals", crate::wasm::json_find::json_equals)?;
    Ok(())
}

fn log(mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32) -> wasmtime::Result<()> {
    let memory = guest_memory(&caller, "log")?;
    let (data, host) = memory.data_and_store_mut(&mut caller);
    let range = guest_range("log", ptr, len, data.len())?;
    let (lines_max, line_bytes_max) = (host.limits.log_lines_per_batch_max, host.limits.log_line_bytes_max);
    let batch = host.batch;
    host.log.push(LogLevel::from_abi(level), batch, &data[range], lines_max, line_bytes_max);
    Ok(())
}

fn set_error(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> wasmtime::Result<()> {
    let memory = guest_memory(&caller, "set_error")?;
    let (data, host) = memory.data_and_store_mut(&mut caller);
    let range = guest_range("set_error", ptr, len, data.len())?;
    let message = truncate_utf8_lossy(&data[range], host.limits.error_message_bytes_max);
    host.error_message = Some(message);
    Ok(())
}

fn state_get(
    mut caller: Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
    dst_ptr: i32,
    dst_cap: i32,
) -> wasmtime::Result<i32> {
    let memory = guest_memory(&caller, "state_get")?;
    let (data, host) = memory.data_and_store_mut(&mut caller);
    let key = guest_range("state_get", key_ptr, key_len, data.len())?;
    let dst = guest_range("state_get", dst_ptr, dst_cap, data.len())?;
    let key = &data[key];
    let committed;
    let value = match host.overlay.get(key) {
        Some(staged) => staged,
        None => {
            committed = host.state.get(key).map_err(|error| HostFault::StateStore { message: error.message })?;
            committed.as_deref()
        }
    };
    Ok(copy_if_fits(value, data, dst))
}

/// The lookup convention of `state_get` and `env_get`: -1 if absent, else the value's length,
/// with the value copied into `dst` only when it fits.
fn copy_if_fits(value: Option<&[u8]>, data: &mut [u8], dst: std::ops::Range<usize>) -> i32 {
    let Some(value) = value else {
        return ABSENT;
    };
    // Values are capped far below 2 GiB on the way in; saturate rather than wrap regardless.
    let Ok(len) = i32::try_from(value.len()) else {
        return i32::MAX;
    };
    if value.len() <= dst.len() {
        data[dst.start..dst.start + value.len()].copy_from_slice(value);
    }
    len
}

fn state_put(
    mut caller: Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
    value_ptr: i32,
    value_len: i32,
) -> wasmtime::Result<i32> {
    let memory = guest_memory(&caller, "state_put")?;
    let (data, host) = memory.data_and_store_mut(&mut caller);
    let key = guest_range("state_put", key_ptr, key_len, data.len())?;
    let value = guest_range("state_put", value_ptr, value_len, data.len())?;
    if key.len() > host.limits.state_key_bytes_max {
        return Ok(STATE_PUT_KEY_TOO_LARGE);
    }
    if value.len() > host.limits.state_value_bytes_max {
        return Ok(STATE_PUT_VALUE_TOO_LARGE);
    }
    let batch_bytes_max = host.limits.state_batch_bytes_max;
    if !host.overlay.stage(&data[key], Some(&data[value]), batch_bytes_max) {
        return Ok(STATE_PUT_BATCH_FULL);
    }
    Ok(0)
}

fn state_delete(mut caller: Caller<'_, HostState>, key_ptr: i32, key_len: i32) -> wasmtime::Result<i32> {
    let memory = guest_memory(&caller, "state_delete")?;
    let (data, host) = memory.data_and_store_mut(&mut caller);
    let key = guest_range("state_delete", key_ptr, key_len, data.len())?;
    if key.len() > host.limits.state_key_bytes_max {
        // No such key can have been stored: deleting it is a no-op.
        return Ok(0);
    }
    let batch_bytes_max = host.limits.state_batch_bytes_max;
    if !host.overlay.stage(&data[key], None, batch_bytes_max) {
        return Ok(STATE_PUT_BATCH_FULL);
    }
    Ok(0)
}

fn env_get(
    mut caller: Caller<'_, HostState>,
    name_ptr: i32,
    name_len: i32,
    dst_ptr: i32,
    dst_cap: i32,
) -> wasmtime::Result<i32> {
    let memory = guest_memory(&caller, "env_get")?;
    let (data, host) = memory.data_and_store_mut(&mut caller);
    let name = guest_range("env_get", name_ptr, name_len, data.len())?;
    let dst = guest_range("env_get", dst_ptr, dst_cap, data.len())?;
    let value = std::str::from_utf8(&data[name]).ok().and_then(|name| host.env.get(name)).map(|value| value.as_bytes());
    Ok(copy_if_fits(value, data, dst))
}

impl HostSignature {
    /// True when a module's import type is exactly this signature.
    pub(crate) fn matches(&self, ty: &wasmtime::FuncType) -> bool {
        fn same(expected: &[Wasm], found: impl ExactSizeIterator<Item = wasmtime::ValType>) -> bool {
            found.len() == expected.len()
                && found.zip(expected).all(|(found, expected)| match expected {
                    Wasm::I32 => matches!(found, wasmtime::ValType::I32),
                    Wasm::I64 => matches!(found, wasmtime::ValType::I64),
                })
        }
        same(self.params, ty.params()) && same(self.results, ty.results())
    }

    /// `func (i32, i32) -> (i32)`, the form [`describe_func`] uses for the module's side.
    pub(crate) fn describe(&self) -> String {
        let names = |types: &[Wasm]| {
            types
                .iter()
                .map(|ty| match ty {
                    Wasm::I32 => "i32",
                    Wasm::I64 => "i64",
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!("func ({}) -> ({})", names(self.params), names(self.results))
    }
}

/// A module-side function type in the same form as [`HostSignature::describe`].
pub(crate) fn describe_func(ty: &wasmtime::FuncType) -> String {
    let names = |types: &mut dyn Iterator<Item = wasmtime::ValType>| {
        types
            .map(|ty| match ty {
                wasmtime::ValType::I32 => "i32".to_string(),
                wasmtime::ValType::I64 => "i64".to_string(),
                wasmtime::ValType::F32 => "f32".to_string(),
                wasmtime::ValType::F64 => "f64".to_string(),
                wasmtime::ValType::V128 => "v128".to_string(),
                wasmtime::ValType::Ref(reference) => reference.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("func ({}) -> ({})", names(&mut ty.params()), names(&mut ty.results()))
}
