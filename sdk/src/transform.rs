//! The [`Transform`] trait every entry-point macro builds, and the adapters that turn a plain
//! user function (map, filter, filter_map, flat_map, processor) into one.

use crate::{Error, Output, Record, State};
use std::marker::PhantomData;

/// Where a transform puts the records it emits for the current input record.
#[derive(Debug, Default)]
pub struct Outputs {
    items: Vec<Output>,
}

impl Outputs {
    /// Emits one record (to the output index it carries).
    pub fn push(&mut self, output: impl Into<Output>) {
        self.items.push(output.into());
    }

    /// Sets the timestamp of the outputs from `from` on that have none.
    pub(crate) fn fill_missing_timestamps(&mut self, from: usize, timestamp_ms: i64) {
        for output in self.items.iter_mut().skip(from) {
            output.timestamp_ms.get_or_insert(timestamp_ms);
        }
    }

    /// Everything emitted so far, in order.
    pub fn into_vec(self) -> Vec<Output> {
        self.items
    }

    /// Takes what was emitted so far, in order, leaving the buffer empty for reuse.
    pub(crate) fn drain(&mut self) -> std::vec::Drain<'_, Output> {
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

struct Filter<F>(F);

impl<F: FnMut(&Record) -> Result<bool, Error>> Transform for Filter<F> {
    fn process(&mut self, record: Record, out: &mut Outputs) -> Result<(), Error> {
        if (self.0)(&record)? {
            out.push(record);
        }
        Ok(())
    }
}

/// Keeps the records for which `f` returns true, unchanged, on output 0.
pub fn filter<F>(f: F) -> impl Transform
where
    F: FnMut(&Record) -> Result<bool, Error>,
{
    Filter(f)
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
