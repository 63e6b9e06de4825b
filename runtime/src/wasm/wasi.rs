//! A locked-down WASI preview 1 (`wasi_snapshot_preview1`) for modules built for
//! `wasm32-wasip1`: what Rust's std and the usual C libcs call at start-up and for printing.
//!
//! Why not `wasmtime-wasi`: it is a large build (cap-std, tokio, the component model) for
//! capabilities a transform is denied anyway: no files, no sockets, no environment, no
//! arguments. What is left fits in this file: stdout/stderr go to the instance's log, clocks
//! and randomness work, `proc_exit` ends the batch, and every other preview 1 function a
//! module imports is linked to a stub that returns `ENOSYS`.

use wasmtime::{Caller, FuncType, Linker, Val, ValType};

use crate::wasm::error::HostFault;
use crate::wasm::host::{sig, HostSignature, Wasm};
use crate::wasm::store::{guest_memory, guest_range, write_guest, HostState};

pub(crate) const WASI_MODULE: &str = "wasi_snapshot_preview1";

// WASI preview 1 errno values.
const ESUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EINVAL: i32 = 28;
const ENOSYS: i32 = 52;
const ESPIPE: i32 = 70;

/// The functions implemented here (the rest of [`PREVIEW1_FUNCTIONS`] get `ENOSYS` stubs).
pub(crate) const WASI_IMPORTS: &[HostSignature] = &[
    sig("fd_write", &[Wasm::I32; 4], &[Wasm::I32]),
    sig("fd_read", &[Wasm::I32; 4], &[Wasm::I32]),
    sig("fd_close", &[Wasm::I32], &[Wasm::I32]),
    sig("fd_seek", &[Wasm::I32, Wasm::I64, Wasm::I32, Wasm::I32], &[Wasm::I32]),
    sig("fd_fdstat_get", &[Wasm::I32, Wasm::I32], &[Wasm::I32]),
    sig("fd_prestat_get", &[Wasm::I32, Wasm::I32], &[Wasm::I32]),
    sig("fd_prestat_dir_name", &[Wasm::I32; 3], &[Wasm::I32]),
    sig("environ_get", &[Wasm::I32, Wasm::I32], &[Wasm::I32]),
    sig("environ_sizes_get", &[Wasm::I32, Wasm::I32], &[Wasm::I32]),
    sig("args_get", &[Wasm::I32, Wasm::I32], &[Wasm::I32]),
    sig("args_sizes_get", &[Wasm::I32, Wasm::I32], &[Wasm::I32]),
    sig("proc_exit", &[Wasm::I32], &[]),
    sig("random_get", &[Wasm::I32, Wasm::I32], &[Wasm::I32]),
    sig("clock_time_get", &[Wasm::I32, Wasm::I64, Wasm::I32], &[Wasm::I32]),
    sig("clock_res_get", &[Wasm::I32, Wasm::I32], &[Wasm::I32]),
    sig("sched_yield", &[], &[Wasm::I32]),
];

/// Every function of WASI preview 1. A module may import any of them; one not in
/// [`WASI_IMPORTS`] is linked to an `ENOSYS` stub. Other names in the WASI module are refused.
pub(crate) const PREVIEW1_FUNCTIONS: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "fd_advise",
    "fd_allocate",
    "fd_close",
    "fd_datasync",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_fdstat_set_rights",
    "fd_filestat_get",
    "fd_filestat_set_size",
    "fd_filestat_set_times",
    "fd_pread",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_pwrite",
    "fd_read",
    "fd_readdir",
    "fd_renumber",
    "fd_seek",
    "fd_sync",
    "fd_tell",
    "fd_write",
    "path_create_directory",
    "path_filestat_get",
    "path_filestat_set_times",
    "path_link",
    "path_open",
    "path_readlink",
    "path_remove_directory",
    "path_rename",
    "path_symlink",
    "path_unlink_file",
    "poll_oneoff",
    "proc_exit",
    "proc_raise",
    "sched_yield",
    "random_get",
    "sock_accept",
    "sock_recv",
    "sock_send",
    "sock_shutdown",
];

const STDIN: i32 = 0;
const STDOUT: i32 = 1;
const STDERR: i32 = 2;

pub(crate) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(WASI_MODULE, "fd_write", fd_write)?;
    linker.func_wrap(WASI_MODULE, "fd_read", fd_read)?;
    linker.func_wrap(WASI_MODULE, "fd_close", |_: Caller<'_, HostState>, _fd: i32| EBADF)?;
    linker.func_wrap(WASI_MODULE, "fd_seek", fd_seek)?;
    linker.func_wrap(WASI_MODULE, "fd_fdstat_get", fd_fdstat_get)?;
    // No preopened directories: std's preopen scan stops at the first EBADF.
    linker.func_wrap(WASI_MODULE, "fd_prestat_get", |_: Caller<'_, HostState>, _fd: i32, _buf: i32| EBADF)?;
    linker.func_wrap(
        WASI_MODULE,
        "fd_prestat_dir_name",
        |_: Caller<'_, HostState>, _fd: i32, _path: i32, _len: i32| EBADF,
    )?;
    // No environment and no arguments: nothing to list, zero counts to report.
    linker.func_wrap(WASI_MODULE, "environ_get", |_: Caller<'_, HostState>, _: i32, _: i32| ESUCCESS)?;
    linker.func_wrap(WASI_MODULE, "environ_sizes_get", zero_sizes("environ_sizes_get"))?;
    linker.func_wrap(WASI_MODULE, "args_get", |_: Caller<'_, HostState>, _: i32, _: i32| ESUCCESS)?;
    linker.func_wrap(WASI_MODULE, "args_sizes_get", zero_sizes("args_sizes_get"))?;
    linker.func_wrap(WASI_MODULE, "proc_exit", |_: Caller<'_, HostState>, code: i32| -> wasmtime::Result<()> {
        Err(HostFault::Exit { code }.into())
    })?;
    linker.func_wrap(WASI_MODULE, "random_get", random_get)?;
    linker.func_wrap(WASI_MODULE, "clock_time_get", clock_time_get)?;
    linker.func_wrap(WASI_MODULE, "clock_res_get", clock_res_get)?;
    linker.func_wrap(WASI_MODULE, "sched_yield", |_: Caller<'_, HostState>| ESUCCESS)?;
    Ok(())
}

/// Links an `ENOSYS` stub for a preview 1 function not implemented here, with the type the
/// module declares. Only functions returning a single `i32` errno can be stubbed (all of
/// preview 1 but `proc_exit`, which is implemented); false when `ty` is not such a type.
pub(crate) fn define_enosys_stub(linker: &mut Linker<HostState>, name: &str, ty: &FuncType) -> wasmtime::Result<bool> {
    let results: Vec<ValType> = ty.results().collect();
    if results.len() != 1 || !matches!(results[0], ValType::I32) {
        return Ok(false);
    }
    linker.func_new(
        WASI_MODULE,
        name,
        ty.clone(),
        |_: Caller<'_, HostState>, _params: &[Val], results: &mut [Val]| {
            results[0] = Val::I32(ENOSYS);
            Ok(())
        },
    )?;
    Ok(true)
}

/// `fd_write(fd, iovs, iovs_len, nwritten) -> errno`: stdout and stderr become log lines.
fn fd_write(
    mut caller: Caller<'_, HostState>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nwritten: i32,
) -> wasmtime::Result<i32> {
    const IMPORT: &str = "fd_write";
    if fd != STDOUT && fd != STDERR {
        return Ok(EBADF);
    }
    let memory = guest_memory(&caller, IMPORT)?;
    let (data, host) = memory.data_and_store_mut(&mut caller);
    let iovs_bytes = (iovs_len as u32).checked_mul(8).ok_or(HostFault::OutOfBounds {
        import: IMPORT,
        ptr: iovs as u32,
        len: iovs_len as u32,
        memory_bytes: data.len(),
    })?;
    let iovs = guest_range(IMPORT, iovs, iovs_bytes as i32, data.len())?;
    let (lines_max, line_bytes_max) = (host.limits.log_lines_per_batch_max, host.limits.log_line_bytes_max);
    let batch = host.batch;
    let mut written: u32 = 0;
    for iov in data[iovs].chunks_exact(8) {
        let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        let range = guest_range(IMPORT, ptr, len, data.len())?;
        written = written.saturating_add(range.len() as u32);
        host.log.write_stream(fd == STDERR, batch, &data[range], lines_max, line_bytes_max);
    }
    write_guest(data, IMPORT, nwritten, &written.to_le_bytes())?;
    Ok(ESUCCESS)
}

/// `fd_read`: stdin is empty (end of file), other descriptors do not exist.
fn fd_read(
    mut caller: Caller<'_, HostState>,
    fd: i32,
    _iovs: i32,
    _iovs_len: i32,
    nread: i32,
) -> wasmtime::Result<i32> {
    if fd != STDIN {
        return Ok(EBADF);
    }
    let memory = guest_memory(&caller, "fd_read")?;
    write_guest(memory.data_mut(&mut caller), "fd_read", nread, &0u32.to_le_bytes())?;
    Ok(ESUCCESS)
}

fn fd_seek(_: Caller<'_, HostState>, fd: i32, _offset: i64, _whence: i32, _out: i32) -> i32 {
    if (STDIN..=STDERR).contains(&fd) {
        ESPIPE
    } else {
        EBADF
    }
}

/// `fd_fdstat_get`: stdin/stdout/stderr are character devices with no rights beyond
/// read/write; nothing else exists.
fn fd_fdstat_get(mut caller: Caller<'_, HostState>, fd: i32, buf: i32) -> wasmtime::Result<i32> {
    const FILETYPE_CHARACTER_DEVICE: u8 = 2;
    const RIGHT_FD_READ: u64 = 1 << 1;
    const RIGHT_FD_WRITE: u64 = 1 << 6;
    if !(STDIN..=STDERR).contains(&fd) {
        return Ok(EBADF);
    }
    let rights = if fd == STDIN { RIGHT_FD_READ } else { RIGHT_FD_WRITE };
    // struct fdstat { u8 filetype; u16 flags @2; u64 rights_base @8; u64 rights_inheriting @16 }
    let mut fdstat = [0u8; 24];
    fdstat[0] = FILETYPE_CHARACTER_DEVICE;
    fdstat[8..16].copy_from_slice(&rights.to_le_bytes());
    let memory = guest_memory(&caller, "fd_fdstat_get")?;
    write_guest(memory.data_mut(&mut caller), "fd_fdstat_get", buf, &fdstat)?;
    Ok(ESUCCESS)
}

/// `environ_sizes_get`/`args_sizes_get(count_ptr, size_ptr)`: zero and zero.
fn zero_sizes(
    import: &'static str,
) -> impl Fn(Caller<'_, HostState>, i32, i32) -> wasmtime::Result<i32> + Send + Sync + 'static {
    move |mut caller: Caller<'_, HostState>, count: i32, size: i32| {
        let memory = guest_memory(&caller, import)?;
        let data = memory.data_mut(&mut caller);
        write_guest(data, import, count, &0u32.to_le_bytes())?;
        write_guest(data, import, size, &0u32.to_le_bytes())?;
        Ok(ESUCCESS)
    }
}

fn random_get(mut caller: Caller<'_, HostState>, buf: i32, len: i32) -> wasmtime::Result<i32> {
    let memory = guest_memory(&caller, "random_get")?;
    let (data, host) = memory.data_and_store_mut(&mut caller);
    let range = guest_range("random_get", buf, len, data.len())?;
    host.random.fill(&mut data[range]);
    Ok(ESUCCESS)
}

/// `clock_time_get(id, precision, out)`: realtime (0) is the wall clock, monotonic (1) counts
/// from the instance's creation; the CPU-time clocks are not offered.
fn clock_time_get(
    mut caller: Caller<'_, HostState>,
    clock_id: i32,
    _precision: i64,
    out: i32,
) -> wasmtime::Result<i32> {
    const REALTIME: i32 = 0;
    const MONOTONIC: i32 = 1;
    let nanos: u64 = match clock_id {
        REALTIME => caller.data().clock.realtime_ns(),
        MONOTONIC => caller.data().clock.monotonic_ns(),
        _ => return Ok(EINVAL),
    };
    let memory = guest_memory(&caller, "clock_time_get")?;
    write_guest(memory.data_mut(&mut caller), "clock_time_get", out, &nanos.to_le_bytes())?;
    Ok(ESUCCESS)
}

fn clock_res_get(mut caller: Caller<'_, HostState>, clock_id: i32, out: i32) -> wasmtime::Result<i32> {
    if !(0..=1).contains(&clock_id) {
        return Ok(EINVAL);
    }
    let resolution_nanos: u64 = 1_000;
    let memory = guest_memory(&caller, "clock_res_get")?;
    write_guest(memory.data_mut(&mut caller), "clock_res_get", out, &resolution_nanos.to_le_bytes())?;
    Ok(ESUCCESS)
}
