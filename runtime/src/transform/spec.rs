//! What a user deploys: the module's inputs and outputs, its environment, where it starts and
//! what happens when a batch fails.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::TransformError;

/// Outputs per transform: enough for fan-out routers, small enough that a misconfigured deploy
/// cannot open thousands of partitions' worth of producer state.
pub const OUTPUTS_MAX: usize = 16;
/// Environment entries and their size: they are handed to every instance.
pub const ENV_ENTRIES_MAX: usize = 128;
pub const ENV_BYTES_MAX: usize = 64 * 1024;

/// Where a transform deployed for the first time starts reading its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    Earliest,
    Latest,
    Offset(i64),
    Timestamp(i64),
}

impl StartFrom {
    /// `earliest`, `latest`, an offset, or a timestamp written `@<ms>` or as RFC 3339 is left
    /// to the CLI; the API takes `earliest|latest|<offset>|@<timestamp ms>`.
    pub fn parse(text: &str) -> Result<StartFrom, TransformError> {
        let bad = || {
            TransformError::InvalidSpec(format!(
                "--from {text:?}: expected earliest, latest, an offset or @<timestamp ms>"
            ))
        };
        match text {
            "earliest" => Ok(StartFrom::Earliest),
            "latest" => Ok(StartFrom::Latest),
            _ => match text.strip_prefix('@') {
                Some(ms) => ms.parse().map(StartFrom::Timestamp).map_err(|_| bad()),
                None => text.parse().ok().filter(|o: &i64| *o >= 0).map(StartFrom::Offset).ok_or_else(bad),
            },
        }
    }
}

/// What happens to a batch whose processing fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Skip the batch (counted as failed) and go on.
    Skip,
    /// Send the batch's records to `<name>.dlq` with the error and source position in headers.
    DeadLetter,
    /// Stop this instance; `runnel transform resume` retries the batch.
    Stop,
}

impl OnError {
    pub fn parse(text: &str) -> Result<OnError, TransformError> {
        match text {
            "skip" => Ok(OnError::Skip),
            "dead-letter" | "dlq" => Ok(OnError::DeadLetter),
            "stop" => Ok(OnError::Stop),
            _ => Err(TransformError::InvalidSpec(format!("--on-error {text:?}: expected skip, dead-letter or stop"))),
        }
    }
}

/// A deployed transform, as stored in `__runnel_transforms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransformSpec {
    pub name: String,
    pub input: String,
    pub outputs: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub from: StartFrom,
    pub on_error: OnError,
    /// Bumped by every deploy under this name; the module is stored under it.
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub paused: bool,
}

impl TransformSpec {
    /// The topic dead letters go to.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}.dlq", self.name)
    }

    /// The compacted topic that holds this transform's state and checkpoints.
    pub fn changelog_topic(&self) -> String {
        format!("__runnel_transform_{}_changelog", self.name)
    }

    /// Checks what the broker cannot fix for the user: names, counts and sizes.
    pub fn validate(&self) -> Result<(), TransformError> {
        let invalid = |m: String| Err(TransformError::InvalidSpec(m));
        if !valid_name(&self.name) {
            return invalid(format!("transform name {:?}: use 1-200 characters of [a-zA-Z0-9._-]", self.name));
        }
        if self.input.is_empty() {
            return invalid("an input topic is required".into());
        }
        if self.outputs.is_empty() || self.outputs.len() > OUTPUTS_MAX {
            return invalid(format!("1 to {OUTPUTS_MAX} output topics are required, got {}", self.outputs.len()));
        }
        if self.outputs.iter().any(|o| o == &self.input) {
            return invalid(format!("output {:?} is also the input: a transform may not feed itself", self.input));
        }
        let env_bytes: usize = self.env.iter().map(|(k, v)| k.len() + v.len()).sum();
        if self.env.len() > ENV_ENTRIES_MAX || env_bytes > ENV_BYTES_MAX {
            return invalid(format!("env is limited to {ENV_ENTRIES_MAX} entries and {ENV_BYTES_MAX} bytes"));
        }
        Ok(())
    }
}

fn valid_name(name: &str) -> bool {
    (1..=200).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TransformSpec {
        TransformSpec {
            name: "t".into(),
            input: "in".into(),
            outputs: vec!["out".into()],
            env: BTreeMap::new(),
            from: StartFrom::Earliest,
            on_error: OnError::Skip,
            version: 1,
            paused: false,
        }
    }

    #[test]
    fn start_positions_parse() {
        assert_eq!(StartFrom::parse("earliest").ok(), Some(StartFrom::Earliest));
        assert_eq!(StartFrom::parse("latest").ok(), Some(StartFrom::Latest));
        assert_eq!(StartFrom::parse("42").ok(), Some(StartFrom::Offset(42)));
        assert_eq!(StartFrom::parse("@1700000000000").ok(), Some(StartFrom::Timestamp(1_700_000_000_000)));
        assert!(StartFrom::parse("-1").is_err());
        assert!(StartFrom::parse("soon").is_err());
    }

    #[test]
    fn specs_are_validated() {
        assert!(spec().validate().is_ok());
        assert!(TransformSpec { name: "a/b".into(), ..spec() }.validate().is_err());
        assert!(TransformSpec { outputs: vec![], ..spec() }.validate().is_err());
        assert!(TransformSpec { outputs: vec!["in".into()], ..spec() }.validate().is_err());
        let many = (0..=OUTPUTS_MAX).map(|i| format!("o{i}")).collect();
        assert!(TransformSpec { outputs: many, ..spec() }.validate().is_err());
    }

    #[test]
    fn specs_round_trip_through_json() {
        let original = TransformSpec { on_error: OnError::DeadLetter, from: StartFrom::Offset(7), ..spec() };
        let json = serde_json::to_string(&original).expect("serialize");
        let back: TransformSpec = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, original);
    }
}
