//! The transform's configuration: the `--env K=V` pairs given at deploy, read through the host's
//! `env_get` import (the process environment is not visible, even under WASI).

use crate::host;
use crate::Error;
use std::str::FromStr;

/// The value of `name`, `None` when it was not given (or is not UTF-8).
pub fn get(name: &str) -> Option<String> {
    let bytes = host::read_grow(|dst| host::host_env_get(name.as_bytes(), dst)).ok()??;
    String::from_utf8(bytes).ok()
}

/// The value of `name`, or an error naming the missing setting.
pub fn require(name: &str) -> Result<String, Error> {
    get(name).ok_or_else(|| Error::new(format!("missing required setting {name} (deploy with --env {name}=...)")))
}

/// The value of `name` parsed as `T`; `Ok(None)` when absent, an error naming the setting when
/// it does not parse.
pub fn parse<T: FromStr>(name: &str) -> Result<Option<T>, Error>
where
    T::Err: std::fmt::Display,
{
    match get(name) {
        None => Ok(None),
        Some(text) => {
            text.trim().parse().map(Some).map_err(|e| Error::new(format!("setting {name}={text:?} is invalid: {e}")))
        }
    }
}
