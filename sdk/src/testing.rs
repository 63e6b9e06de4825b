//! Native test harness (non-wasm targets only): runs a transform over records through the same
//! ABI path the WebAssembly exports use (encode batch → [`process_batch_with`] → decode
//! outputs), against an in-memory host with a state store, `--env` settings and a log. Like
//! Runnel's host it accepts the ABI extensions the SDK supports (see [`Harness::abi_features`]).
//!
//! ```
//! use runnel_sdk::testing::Harness;
//! use runnel_sdk::{Error, Record};
//!
//! fn non_empty(r: &Record) -> Result<bool, Error> {
//!     Ok(r.value.as_ref().map_or(false, |v| !v.is_empty()))
//! }
//! runnel_sdk::filter!(non_empty);
//!
//! let mut h = Harness::new(runnel_instance);
//! let out = h.run(vec![Record::new("a"), Record::new("")]).expect("batch succeeds");
//! assert_eq!(out.len(), 1);
//! ```
//!
//! Like the real host, a failed batch discards the state writes it made.

use crate::abi::{process_batch_with, Failure, ERR_PROCESSING, FEATURES_SUPPORTED};
use crate::host::fake::{with_host, FakeHost};
use crate::log::Level;
use crate::transform::BoxedTransform;
use crate::{wire, Error, Output, Record};
use std::collections::BTreeMap;

/// The `runnel_instance` function the entry-point macros generate.
pub type Factory = fn() -> Result<BoxedTransform, Error>;

/// One simulated transform instance (one input partition) and its host.
pub struct Harness {
    factory: Factory,
    instance: Option<BoxedTransform>,
    partition: i32,
    /// The ABI extensions the simulated host accepted.
    features: i64,
    host: FakeHost,
}

impl Harness {
    /// A harness for the transform `factory` builds (pass the generated `runnel_instance`).
    pub fn new(factory: Factory) -> Self {
        Harness { factory, instance: None, partition: 0, features: FEATURES_SUPPORTED, host: FakeHost::default() }
    }

    /// Sets a `--env` value, as `runnel transform deploy --env NAME=VALUE` would.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.host.env.insert(name.to_string(), value.to_string());
        self
    }

    /// Sets the input partition reported in batches (default 0).
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = partition;
        self
    }

    /// Sets the ABI extensions the simulated host accepts (bits of
    /// [`FEATURES_SUPPORTED`](crate::abi::FEATURES_SUPPORTED); all of them by default, as
    /// Runnel's host). `0` runs the plain ABI v1 layout, as an older host would see it. The
    /// outputs a test gets back are the same either way.
    pub fn abi_features(mut self, features: i64) -> Self {
        self.features = features;
        self
    }

    /// Makes the state store refuse puts whose key + value exceed `bytes`, like the host's caps.
    pub fn max_state_entry(mut self, bytes: usize) -> Self {
        self.host.max_entry_bytes = Some(bytes);
        self
    }

    /// Makes the simulated host refuse every `json_find` and `json_equals` call (extensions
    /// `json-find`, `json-equals`), as a host may: the SDK then scans the values itself, with
    /// the same results.
    pub fn refuse_json_find(mut self) -> Self {
        self.host.json_find_refuses = true;
        self
    }

    /// How many `json_find` calls the transform made so far: one per path a batch looked up,
    /// when the `json-find` extension is on.
    pub fn json_find_calls(&self) -> usize {
        self.host.json_find_calls
    }

    /// How many `json_equals` calls the transform made so far: one per
    /// [`StrEquals`](crate::json::StrEquals) a batch tested, when the `json-equals` extension
    /// is on.
    pub fn json_equals_calls(&self) -> usize {
        self.host.json_equals_calls
    }

    /// Builds the instance now (as `runnel_init` does at deploy), to test configuration errors.
    pub fn init(&mut self) -> Result<(), Failure> {
        if self.instance.is_none() {
            let factory = self.factory;
            let built = self.with_installed_host(factory);
            let instance =
                built.map_err(|e| Failure { code: ERR_PROCESSING, message: format!("initialization failed: {e}") })?;
            self.instance = Some(instance);
        }
        Ok(())
    }

    /// Runs one batch. Records keep their keys, values, headers, offsets and timestamps; their
    /// partition becomes the harness's. Returns the outputs as the host would decode them, or the
    /// failure code and message the host would get.
    pub fn run(&mut self, records: Vec<Record>) -> Result<Vec<Output>, Failure> {
        self.init()?;
        let input = wire::encode_input(self.partition, &records)
            .map_err(|e| Failure { code: ERR_PROCESSING, message: format!("cannot encode input: {e:?}") })?;
        self.run_encoded(&input)
    }

    /// Runs one batch given as raw ABI bytes, e.g. to check malformed input is rejected.
    pub fn run_encoded(&mut self, input: &[u8]) -> Result<Vec<Output>, Failure> {
        self.init()?;
        let mut instance = match self.instance.take() {
            Some(instance) => instance,
            None => return Err(Failure { code: ERR_PROCESSING, message: "no instance".to_string() }),
        };
        let before = self.host.state.clone();
        let features = self.features;
        let result = self.with_installed_host(|| process_batch_with(input, instance.as_mut(), Vec::new(), features));
        self.instance = Some(instance);
        match result {
            Ok(encoded) => {
                // Forwarded inputs name records of the batch, which then decoded.
                let inputs = wire::decode_input(input).unwrap_or_default();
                wire::decode_output_for(&encoded, &inputs).map_err(|m| Failure {
                    code: ERR_PROCESSING,
                    message: format!("guest wrote a bad output batch: {m}"),
                })
            }
            Err(failure) => {
                // The host discards the state writes of a failed batch.
                self.host.state = before;
                self.host.error = Some(failure.message.clone());
                Err(failure)
            }
        }
    }

    /// Convenience: runs one batch of records with these UTF-8 values (offsets 0, 1, 2, ...).
    pub fn run_values(&mut self, values: &[&str]) -> Result<Vec<Output>, Failure> {
        let records = values.iter().enumerate().map(|(i, v)| Record::new(*v).with_offset(i as i64)).collect();
        self.run(records)
    }

    /// The state store as it is after the last batch.
    pub fn state(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.host.state
    }

    /// Sets a state entry directly, e.g. to start a test from existing state.
    pub fn put_state(&mut self, key: &[u8], value: &[u8]) {
        self.host.state.insert(key.to_vec(), value.to_vec());
    }

    /// Log lines written so far, with their levels.
    pub fn logs(&self) -> Vec<(Level, String)> {
        let level = |n: i32| match n {
            0 => Level::Error,
            1 => Level::Warn,
            2 => Level::Info,
            _ => Level::Debug,
        };
        self.host.logs.iter().map(|(n, line)| (level(*n), line.clone())).collect()
    }

    /// The message of the last failed batch.
    pub fn last_error(&self) -> Option<&str> {
        self.host.error.as_deref()
    }

    /// Moves this harness's host into the thread's fake host for the duration of `f`.
    fn with_installed_host<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let mine = std::mem::take(&mut self.host);
        let previous = with_host(|h| std::mem::replace(h, mine));
        let result = f();
        self.host = with_host(|h| std::mem::replace(h, previous));
        result
    }
}

#[cfg(test)]
mod tests;
