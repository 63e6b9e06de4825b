//! The [`Transform`] trait every entry-point macro builds, and the adapters that turn a plain
//! user function (map, filter, filter_map, flat_map, processor) into one.

use crate::{Error, Output, Record, RecordRef, State};
use std::marker::PhantomData;

/// Where a transform puts the records it emits for the current input record.
#[derive(Debug, Default)]
pub struct Outputs {
    items: Vec<Emitted>,
}

/// One thing emitted for the current input record.
#[derive(Debug)]
pub(crate) enum Emitted {
    /// A record built by the transform.
    Output(Output),
    /// The input record itself, unchanged, to this output index.
    Input(u32),
}

impl Outputs {
    /// Emits one record (to the output index it carries).
    pub fn push(&mut self, output: impl Into<Output>) {
        self.items.push(Emitted::Output(output.into()));
    }

    /// Emits the current input record unchanged (key, value, headers, timestamp) to output
    /// `index`. This is the cheapest way to pass a record on: the SDK does not copy it, and a
    /// host that accepts the `keep-input` extension (Runnel does) gets only its position in the
    /// batch. Not included in [`Outputs::into_vec`], which has no record to give for it.
    pub fn forward_input(&mut self, index: u32) {
        self.items.push(Emitted::Input(index));
    }

    /// Sets the timestamp of the outputs from `from` on that have none.
    pub(crate) fn fill_missing_timestamps(&mut self, from: usize, timestamp_ms: i64) {
        for item in self.items.iter_mut().skip(from) {
            if let Emitted::Output(output) = item {
                output.timestamp_ms.get_or_insert(timestamp_ms);
            }
        }
    }

    /// Everything pushed so far, in order (inputs passed on with [`Outputs::forward_input`]
    /// are left out).
    pub fn into_vec(self) -> Vec<Output> {
        self.items
            .into_iter()
            .filter_map(|item| match item {
                Emitted::Output(output) => Some(output),
                Emitted::Input(_) => None,
            })
            .collect()
    }

    /// Takes what was emitted so far, in order, leaving the buffer empty for reuse.
    pub(crate) fn drain(&mut self) -> std::vec::Drain<'_, Emitted> {
        self.items.drain(..)
    }

    /// How many records were emitted so far for the current input record (the outputs of
    /// earlier records are already encoded into the batch).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing was emitted yet for the current input record.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// One transform instance: called once per input record, in offset order. An instance lives as
/// long as the WebAssembly instance (one input partition), so it may keep in-memory caches, but
/// anything that must survive a restart belongs in [`State`].
pub trait Transform {
    /// Handles one record, pushing zero or more outputs. An error fails the whole batch.
    fn process(&mut self, record: Record, out: &mut Outputs) -> Result<(), Error>;

    /// Handles one record seen in place in the input batch; this is what the SDK calls. The
    /// default copies it into an owned [`Record`] for [`Transform::process`]; a transform that
    /// can work on the borrowed record overrides it and saves that copy (see [`filter_ref`]).
    fn process_ref(&mut self, record: &RecordRef<'_>, out: &mut Outputs) -> Result<(), Error> {
        self.process(record.to_record(), out)
    }

    /// For transforms that only keep or drop records unchanged (the filter adapters): decides a
    /// whole batch in one loop, pushing the positions of the kept records to `kept`, so the
    /// SDK makes no per-record call through the `dyn Transform` nor per-record output lists.
    /// `None` (the default) means "not such a transform": [`Transform::process_ref`] is called
    /// per record instead. An error names the position of the record that caused it.
    fn keep_batch(&mut self, records: &[RecordRef<'_>], kept: &mut Vec<u32>) -> Option<Result<(), (usize, Error)>> {
        let _ = (records, kept);
        None
    }
}

/// The filter loop of [`Transform::keep_batch`]: `keep` runs on each record in turn.
#[inline(always)]
fn keep_each(
    records: &[RecordRef<'_>],
    kept: &mut Vec<u32>,
    mut keep: impl FnMut(&RecordRef<'_>) -> Result<bool, Error>,
) -> Result<(), (usize, Error)> {
    for (position, record) in records.iter().enumerate() {
        // A batch holds fewer than `u32::MAX` records (its count is a `u32`).
        match keep(record) {
            Ok(true) => kept.push(position as u32),
            Ok(false) => {}
            Err(error) => return Err((position, error)),
        }
    }
    Ok(())
}

/// A boxed instance, as built by the `runnel_instance` function the macros generate.
pub type BoxedTransform = Box<dyn Transform>;

/// Builds an instance from a factory; the macros call this so closures infer their types.
pub fn instantiate<T, F>(factory: F) -> Result<BoxedTransform, Error>
where
    T: Transform + 'static,
    F: FnOnce() -> Result<T, Error>,
{
    Ok(Box::new(factory()?))
}

struct Map<F, O>(F, PhantomData<fn() -> O>);

impl<F: FnMut(Record) -> Result<O, Error>, O: Into<Output>> Transform for Map<F, O> {
    fn process(&mut self, record: Record, out: &mut Outputs) -> Result<(), Error> {
        out.push((self.0)(record)?);
        Ok(())
    }
}

/// One output per input: `f` returns a [`Record`] (forwarded to output 0) or an [`Output`].
pub fn map<F, O>(f: F) -> impl Transform
where
    F: FnMut(Record) -> Result<O, Error>,
    O: Into<Output>,
{
    Map(f, PhantomData)
}

struct Filter<F> {
    keep: F,
    /// The record handed to `keep`, reused from record to record: after the first records of a
    /// batch, no allocation.
    scratch: Record,
}

impl<F: FnMut(&Record) -> Result<bool, Error>> Transform for Filter<F> {
    fn process(&mut self, record: Record, out: &mut Outputs) -> Result<(), Error> {
        if (self.keep)(&record)? {
            out.push(record);
        }
        Ok(())
    }

    fn process_ref(&mut self, record: &RecordRef<'_>, out: &mut Outputs) -> Result<(), Error> {
        record.copy_into(&mut self.scratch);
        if (self.keep)(&self.scratch)? {
            out.forward_input(0);
        }
        Ok(())
    }

    fn keep_batch(&mut self, records: &[RecordRef<'_>], kept: &mut Vec<u32>) -> Option<Result<(), (usize, Error)>> {
        let (keep, scratch) = (&mut self.keep, &mut self.scratch);
        Some(keep_each(records, kept, |record| {
            record.copy_into(scratch);
            keep(scratch)
        }))
    }
}

/// Keeps the records for which `f` returns true, unchanged, on output 0.
pub fn filter<F>(f: F) -> impl Transform
where
    F: FnMut(&Record) -> Result<bool, Error>,
{
    Filter { keep: f, scratch: Record::default() }
}

struct FilterRef<F>(F);

impl<F: FnMut(&RecordRef<'_>) -> Result<bool, Error>> Transform for FilterRef<F> {
    fn process(&mut self, record: Record, out: &mut Outputs) -> Result<(), Error> {
        if (self.0)(&RecordRef::from(&record))? {
            out.push(record);
        }
        Ok(())
    }

    fn process_ref(&mut self, record: &RecordRef<'_>, out: &mut Outputs) -> Result<(), Error> {
        if (self.0)(record)? {
            out.forward_input(0);
        }
        Ok(())
    }

    fn keep_batch(&mut self, records: &[RecordRef<'_>], kept: &mut Vec<u32>) -> Option<Result<(), (usize, Error)>> {
        Some(keep_each(records, kept, &mut self.0))
    }
}

/// [`filter`] on records seen in place ([`RecordRef`]): nothing is copied or allocated per
/// record, the fastest shape for a filter.
pub fn filter_ref<F>(f: F) -> impl Transform
where
    F: FnMut(&RecordRef<'_>) -> Result<bool, Error>,
{
    FilterRef(f)
}

struct FilterMap<F, O>(F, PhantomData<fn() -> O>);

impl<F: FnMut(Record) -> Result<Option<O>, Error>, O: Into<Output>> Transform for FilterMap<F, O> {
    fn process(&mut self, record: Record, out: &mut Outputs) -> Result<(), Error> {
        if let Some(o) = (self.0)(record)? {
            out.push(o);
        }
        Ok(())
    }
}

/// Zero or one output per input.
pub fn filter_map<F, O>(f: F) -> impl Transform
where
    F: FnMut(Record) -> Result<Option<O>, Error>,
    O: Into<Output>,
{
    FilterMap(f, PhantomData)
}

struct FlatMap<F, I>(F, PhantomData<fn() -> I>);

impl<F, I> Transform for FlatMap<F, I>
where
    F: FnMut(Record) -> Result<I, Error>,
    I: IntoIterator,
    I::Item: Into<Output>,
{
    fn process(&mut self, record: Record, out: &mut Outputs) -> Result<(), Error> {
        for o in (self.0)(record)? {
            out.push(o);
        }
        Ok(())
    }
}

/// Zero or more outputs per input, each to any output index (e.g. a `Vec<Output>`).
pub fn flat_map<F, I>(f: F) -> impl Transform
where
    F: FnMut(Record) -> Result<I, Error>,
    I: IntoIterator,
    I::Item: Into<Output>,
{
    FlatMap(f, PhantomData)
}

struct Processor<F, I>(F, PhantomData<fn() -> I>);

impl<F, I> Transform for Processor<F, I>
where
    F: FnMut(Record, &mut State) -> Result<I, Error>,
    I: IntoIterator,
    I::Item: Into<Output>,
{
    fn process(&mut self, record: Record, out: &mut Outputs) -> Result<(), Error> {
        let mut state = State::new();
        for o in (self.0)(record, &mut state)? {
            out.push(o);
        }
        Ok(())
    }
}

/// Like [`flat_map`], with the instance's key-value [`State`].
pub fn processor<F, I>(f: F) -> impl Transform
where
    F: FnMut(Record, &mut State) -> Result<I, Error>,
    I: IntoIterator,
    I::Item: Into<Output>,
{
    Processor(f, PhantomData)
}
