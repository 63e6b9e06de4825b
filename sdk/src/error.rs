//! The error a transform returns instead of trapping: its message reaches the host through
//! `set_error` and the transform's `--on-error` policy decides what happens to the batch.

use std::fmt;

/// A transform failure with a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Error { message: message.into() }
    }

    /// The message, as the host will log it.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error with `context: ` in front, e.g. which record or setting it concerns.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Error { message: format!("{context}: {}", self.message) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error::new(message)
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::new(message)
    }
}

impl From<std::str::Utf8Error> for Error {
    fn from(err: std::str::Utf8Error) -> Self {
        Error::new(format!("invalid UTF-8: {err}"))
    }
}

impl From<std::string::FromUtf8Error> for Error {
    fn from(err: std::string::FromUtf8Error) -> Self {
        Error::new(format!("invalid UTF-8: {err}"))
    }
}

impl From<crate::json::JsonError> for Error {
    fn from(err: crate::json::JsonError) -> Self {
        Error::new(format!("invalid JSON: {err}"))
    }
}
