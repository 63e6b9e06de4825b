//! The guest side of ABI v1: the bodies of the exports the entry-point macros generate
//! (`runnel_abi_version`, `runnel_abi_features`, `runnel_alloc`, `runnel_init`,
//! `runnel_process`), and [`process_batch`], the target-independent core the native harness
//! runs too.
//!
//! Buffers handed to the host are plain `Vec<u8>`s the SDK keeps owning (a registry of live
//! input allocations, and the last output), so this module needs no unsafe code: the host's
//! pointer is looked up, never dereferenced.

use crate::transform::{BoxedTransform, Emitted};
use crate::{host, wire, Error, Outputs};
use std::cell::{Cell, RefCell};

/// The ABI version `runnel_abi_version` returns.
pub const ABI_VERSION: i32 = 1;
/// ABI v1 extension `keep-input` (ABI.md, "Extensions"): an output record may name an input
/// record of the batch to forward unchanged, instead of carrying a copy of it.
pub const FEATURE_KEEP_INPUT: i64 = 1;
/// ABI v1 extension `json-find` (ABI.md, "Extensions"): the host provides the `json_find`
/// import, which locates a JSON path in many documents in one call; [`crate::json::find`] and
/// [`crate::json::find_path`] use it for the values of the batch.
pub const FEATURE_JSON_FIND: i64 = 2;
/// ABI v1 extension `json-equals` (ABI.md, "Extensions"): the host provides the `json_equals`
/// import, which tests "the field at a path is this string" on many documents in one call;
/// [`crate::json::StrEquals::test`] uses it for the values of the batch (a pushdown).
pub const FEATURE_JSON_EQUALS: i64 = 4;
/// The extensions this SDK can use, answered to the host's offer in `runnel_abi_features`.
pub const FEATURES_SUPPORTED: i64 = FEATURE_KEEP_INPUT | FEATURE_JSON_FIND | FEATURE_JSON_EQUALS;
/// `runnel_process` code: processing error (message via `set_error`).
pub const ERR_PROCESSING: i64 = -1;
/// `runnel_process` code: malformed input batch.
pub const ERR_MALFORMED: i64 = -2;
/// `runnel_process` code: allocation failure.
pub const ERR_ALLOC: i64 = -3;

/// Why a batch failed: the code `runnel_process` returns and the message given to `set_error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// One of [`ERR_PROCESSING`], [`ERR_MALFORMED`], [`ERR_ALLOC`].
    pub code: i64,
    /// What went wrong.
    pub message: String,
}

impl Failure {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }
}

/// Decodes `input`, runs every record through `transform` and encodes the outputs in the plain
/// ABI v1 layout (no extension). A user error names the offset of the record that caused it.
pub fn process_batch(input: &[u8], transform: &mut dyn crate::Transform) -> Result<Vec<u8>, Failure> {
    process_batch_into(input, transform, Vec::new())
}

/// [`process_batch`] encoding into `buf` (cleared first): the guest passes the previous batch's
/// output buffer so its capacity is reused. Each record's outputs are encoded as soon as it is
/// processed, so no list of the batch's outputs is built.
pub fn process_batch_into(
    input: &[u8],
    transform: &mut dyn crate::Transform,
    buf: Vec<u8>,
) -> Result<Vec<u8>, Failure> {
    process_batch_with(input, transform, buf, 0)
}

/// [`process_batch_into`] with the extensions the host accepted (`features`, bits of
/// [`FEATURES_SUPPORTED`]). Records are seen in place ([`crate::RecordRef`]); with
/// [`FEATURE_KEEP_INPUT`] a forwarded input is encoded as its index in the batch.
pub fn process_batch_with(
    input: &[u8],
    transform: &mut dyn crate::Transform,
    buf: Vec<u8>,
    features: i64,
) -> Result<Vec<u8>, Failure> {
    let records = wire::decode_input_refs(input).map_err(|m| Failure::new(ERR_MALFORMED, m.to_string()))?;
    let keep_input = features & FEATURE_KEEP_INPUT != 0;
    // Until it is dropped, at the end of the batch, `json::find` and `StrEquals::test` may ask
    // the host.
    let (find_on, equals_on) = (features & FEATURE_JSON_FIND != 0, features & FEATURE_JSON_EQUALS != 0);
    let _json_finds = (find_on || equals_on).then(|| crate::json::batch::enter(&records, find_on, equals_on));
    let mut encoder = wire::OutputEncoder::new(buf).map_err(encode_failure)?;
    // Outputs are at most about as large as the input unless the transform adds to records:
    // one reservation instead of regrowing. Forwarded inputs take 8 bytes each.
    let estimate = if keep_input { input.len() / 4 } else { input.len() };
    encoder.reserve(estimate).map_err(encode_failure)?;
    let mut kept = Vec::new();
    match transform.keep_batch(&records, &mut kept) {
        Some(decided) => {
            decided.map_err(|(position, e)| user_error(records.get(position).map_or(-1, |r| r.offset), e))?;
            encode_kept(&records, &kept, keep_input, &mut encoder)?;
        }
        None => process_each(&records, transform, keep_input, &mut encoder)?,
    }
    encoder.finish().map_err(encode_failure)
}

/// A user error, naming the offset of the record that caused it.
fn user_error(offset: i64, error: Error) -> Failure {
    Failure::new(ERR_PROCESSING, format!("record at offset {offset}: {error}"))
}

/// The records a filter kept ([`crate::Transform::keep_batch`]), unchanged, to output 0.
fn encode_kept(
    records: &[crate::RecordRef<'_>],
    kept: &[u32],
    keep_input: bool,
    encoder: &mut wire::OutputEncoder,
) -> Result<(), Failure> {
    for &position in kept {
        let encoded = match records.get(position as usize) {
            Some(_) if keep_input => encoder.push_input(0, position),
            Some(record) => encoder.push_record(0, record),
            None => return Err(Failure::new(ERR_PROCESSING, format!("kept record {position} is not in the batch"))),
        };
        encoded.map_err(encode_failure)?;
    }
    Ok(())
}

/// Runs the records one by one ([`crate::Transform::process_ref`]), encoding what each emits.
fn process_each(
    records: &[crate::RecordRef<'_>],
    transform: &mut dyn crate::Transform,
    keep_input: bool,
    encoder: &mut wire::OutputEncoder,
) -> Result<(), Failure> {
    let mut out = Outputs::default();
    for (position, record) in records.iter().enumerate() {
        transform.process_ref(record, &mut out).map_err(|e| user_error(record.offset, e))?;
        // The host sees a batch, not which input produced which output, so "the input's
        // timestamp" (`None`) is resolved here, where that is known. Only an input without a
        // timestamp (negative, e.g. Kafka's -1) leaves -1 for the host.
        if record.timestamp_ms >= 0 {
            out.fill_missing_timestamps(0, record.timestamp_ms);
        }
        for emitted in out.drain() {
            let encoded = match emitted {
                Emitted::Output(output) => encoder.push(&output),
                // The batch holds at most `u32::MAX` records (its count is a u32).
                Emitted::Input(index) if keep_input => encoder.push_input(index, position as u32),
                Emitted::Input(index) => encoder.push_record(index, record),
            };
            encoded.map_err(encode_failure)?;
        }
    }
    Ok(())
}

fn encode_failure(e: wire::EncodeError) -> Failure {
    match e {
        wire::EncodeError::OutOfMemory => Failure::new(ERR_ALLOC, "out of memory encoding the output batch"),
        wire::EncodeError::TooLong => Failure::new(ERR_PROCESSING, "an output field is longer than 2 GiB"),
        wire::EncodeError::BadTimestamp(ts) => {
            Failure::new(ERR_PROCESSING, format!("output timestamp {ts} is negative (use -1/None for the input's)"))
        }
    }
}

thread_local! {
    /// Input buffers handed out by `runnel_alloc` and not yet consumed by `runnel_process`.
    static ALLOCATIONS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// The last consumed input buffer, kept for the next `runnel_alloc` (batches are of similar
    /// size, so this saves an allocation and a free per batch).
    static SPARE_INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The last output batch; the host copies it before calling into the guest again.
    static OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// This module instance's transform, built by `runnel_init` or the first batch.
    static INSTANCE: RefCell<Option<BoxedTransform>> = const { RefCell::new(None) };
    /// The ABI extensions the host accepted through `runnel_abi_features` (none until then:
    /// a host that does not call it speaks plain ABI v1).
    static FEATURES: Cell<i64> = const { Cell::new(0) };
}

/// Body of `runnel_abi_features`: the host offers the extensions it understands, the SDK keeps
/// those it can use and answers them. Called before `runnel_init` and any batch.
pub fn negotiate_features(offered: i64) -> i64 {
    let accepted = offered & FEATURES_SUPPORTED;
    FEATURES.with(|features| features.set(accepted));
    accepted
}

/// Body of `runnel_alloc`: a zeroed buffer of `len` bytes, or 0 when `len` is negative or the
/// memory cannot grow.
pub fn alloc(len: i32) -> i32 {
    if len < 0 {
        return 0;
    }
    let mut buf = SPARE_INPUT.with(|spare| std::mem::take(&mut *spare.borrow_mut()));
    let len = len as usize;
    // The previous batch's bytes are kept where the new one will lie (the host overwrites all
    // `len` of them): only memory beyond the previous length is zeroed, not the whole batch.
    buf.truncate(len);
    if buf.try_reserve_exact(len - buf.len()).is_err() {
        return 0;
    }
    buf.resize(len, 0);
    let ptr = buf.as_ptr() as usize as i32;
    ALLOCATIONS.with(|a| a.borrow_mut().push(buf));
    ptr
}

/// Takes back the buffer `runnel_alloc` returned at `ptr`, if there is one.
fn take_allocation(ptr: i32) -> Option<Vec<u8>> {
    ALLOCATIONS.with(|a| {
        let mut a = a.borrow_mut();
        let i = a.iter().position(|b| b.as_ptr() as usize as i32 == ptr)?;
        Some(a.swap_remove(i))
    })
}

/// Makes sure the instance exists, building it with `factory` on first use.
fn ensure_instance(factory: fn() -> Result<BoxedTransform, Error>) -> Result<(), Failure> {
    INSTANCE.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            let instance =
                factory().map_err(|e| Failure::new(ERR_PROCESSING, format!("initialization failed: {e}")))?;
            *slot = Some(instance);
        }
        Ok(())
    })
}

/// Body of `runnel_init`: builds the instance so configuration errors show at deploy.
pub fn init(factory: fn() -> Result<BoxedTransform, Error>) -> i32 {
    match ensure_instance(factory) {
        Ok(()) => 0,
        Err(f) => {
            host::host_set_error(f.message.as_bytes());
            1
        }
    }
}

/// Body of `runnel_process`.
pub fn process(ptr: i32, len: i32, factory: fn() -> Result<BoxedTransform, Error>) -> i64 {
    match process_at(ptr, len, factory) {
        Ok(packed) => packed,
        Err(f) => {
            host::host_set_error(f.message.as_bytes());
            f.code
        }
    }
}

fn process_at(ptr: i32, len: i32, factory: fn() -> Result<BoxedTransform, Error>) -> Result<i64, Failure> {
    let input = take_allocation(ptr)
        .ok_or_else(|| Failure::new(ERR_MALFORMED, format!("input at {ptr} was not allocated by runnel_alloc")))?;
    if len < 0 || len as usize > input.len() {
        return Err(Failure::new(ERR_MALFORMED, format!("input length {len} exceeds its allocation")));
    }
    ensure_instance(factory)?;
    // The previous output was copied by the host before this call: its buffer is reused.
    let previous = OUTPUT.with(|o| std::mem::take(&mut *o.borrow_mut()));
    let encoded = INSTANCE.with(|slot| match slot.borrow_mut().as_mut() {
        Some(instance) => {
            let features = FEATURES.with(Cell::get);
            process_batch_with(&input[..len as usize], instance.as_mut(), previous, features)
        }
        None => Err(Failure::new(ERR_PROCESSING, "no transform instance")),
    });
    // The input is released here, before returning, as the ABI says (kept for the next
    // `runnel_alloc`, which hands it out again; the host never keeps a pointer across calls).
    SPARE_INPUT.with(|spare| *spare.borrow_mut() = input);
    let encoded = encoded?;
    OUTPUT.with(|o| {
        let mut o = o.borrow_mut();
        *o = encoded;
        let out_ptr = o.as_ptr() as usize as u64;
        let out_len = o.len() as u64;
        // A negative result means failure, so the output must start below 2 GiB (always the case
        // under the host's default 64 MiB memory cap).
        if out_ptr >= 1 << 31 || out_len > u64::from(u32::MAX) {
            return Err(Failure::new(ERR_ALLOC, "output buffer lies above 2 GiB of guest memory"));
        }
        Ok(((out_ptr << 32) | out_len) as i64)
    })
}
