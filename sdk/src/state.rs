//! The per-partition key-value store of a stateful transform ([`processor!`](crate::processor)).
//!
//! The store lives in the host and belongs to one (transform, input partition) instance. Writes
//! made while a batch is processed are committed atomically with that batch's outputs and input
//! offset; if the batch fails they are discarded, so a retried batch sees the old state.

use crate::host;
use crate::Error;

/// Handle to the store; all calls go to the host (`state_get`/`state_put`/`state_delete`).
#[derive(Debug)]
pub struct State {
    _private: (),
}

impl State {
    /// The handle; only the SDK creates it, so state is used only where the host allows it.
    pub(crate) fn new() -> Self {
        State { _private: () }
    }

    /// The value stored under `key`, `None` if absent.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, Error> {
        let key = key.as_ref();
        host::read_grow(|dst| host::host_state_get(key, dst))
            .map_err(|code| Error::new(format!("state_get failed with code {code}")))
    }

    /// Stores `value` under `key`. Fails when the host refuses it (key, value or store size caps).
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), Error> {
        let (key, value) = (key.as_ref(), value.as_ref());
        match host::host_state_put(key, value) {
            0 => Ok(()),
            code => Err(Error::new(format!(
                "state_put refused ({} byte key, {} byte value): code {code}",
                key.len(),
                value.len()
            ))),
        }
    }

    /// Removes `key` (absent keys are fine).
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<(), Error> {
        match host::host_state_delete(key.as_ref()) {
            0 => Ok(()),
            code => Err(Error::new(format!("state_delete failed with code {code}"))),
        }
    }

    /// The value under `key` as a little-endian `i64`, the usual encoding for counters and
    /// timestamps; `None` if absent, an error if the stored value is not 8 bytes.
    pub fn get_i64(&self, key: impl AsRef<[u8]>) -> Result<Option<i64>, Error> {
        match self.get(key)? {
            None => Ok(None),
            Some(bytes) => match <[u8; 8]>::try_from(bytes.as_slice()) {
                Ok(arr) => Ok(Some(i64::from_le_bytes(arr))),
                Err(_) => Err(Error::new(format!("state value is {} bytes, expected an 8-byte i64", bytes.len()))),
            },
        }
    }

    /// Stores `value` as a little-endian `i64`.
    pub fn put_i64(&mut self, key: impl AsRef<[u8]>, value: i64) -> Result<(), Error> {
        self.put(key, value.to_le_bytes())
    }
}
