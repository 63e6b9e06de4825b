//! [`StrEquals`]: "the field at this path is this string", a condition a transform builds once
//! and tests on every record value.
//!
//! It is a *pushdown*: on a host that offers the `json-equals` extension (Runnel does), the
//! first test in a batch asks the host, in one call, for the answer on every record value of
//! the batch, and the host finds the field and compares it natively (with this SDK's own code,
//! [`super::locate::equals`]); later tests read one byte. The condition is all the host
//! learns, and its answers are the ones the test computes in the guest, which it still does
//! for anything that is not a value of the batch, on hosts without the extension, when the
//! call is refused, past four conditions a batch, and to name the error of an invalid value.

use super::batch::Answer;
use super::fast::Found;
use super::find::{field_is_string, find_checked, next_id};
use super::locate::{EQUALS_ABSENT, EQUALS_FALSE, EQUALS_INVALID, EQUALS_TRUE};
use super::{JsonError, Path};

/// Whether the field at a [`Path`] is a string with a given content (escapes decoded): the
/// test behind a filter such as `action == "click"`, built once per instance.
///
/// ```
/// use runnel_sdk::json::{Path, StrEquals};
///
/// let clicks = StrEquals::new(Path::new("action"), "click");
/// assert_eq!(clicks.test(br#"{"action":"click"}"#), Ok(Some(true)));
/// assert_eq!(clicks.test(br#"{"action":"cl\u0069ck"}"#), Ok(Some(true)));
/// assert_eq!(clicks.test(br#"{"action":1}"#), Ok(Some(false)));
/// assert_eq!(clicks.test(br#"{"page":"/"}"#), Ok(None));
/// assert!(clicks.test(b"{").is_err());
/// ```
#[derive(Debug, Clone)]
pub struct StrEquals {
    path: Path,
    text: String,
    /// Unique per `StrEquals::new` (clones share it, and their path and text): how a batch's
    /// answers are found again without comparing texts. Never 0.
    id: u64,
}

/// Conditions are equal when their paths and texts are.
impl PartialEq for StrEquals {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.text == other.text
    }
}

impl Eq for StrEquals {}

impl StrEquals {
    /// The condition "the field at `path` is the string `text`".
    pub fn new(path: Path, text: &str) -> StrEquals {
        StrEquals { path, text: text.to_string(), id: next_id() }
    }

    /// The path of the field.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The string it must be.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// Tests the JSON document `bytes`: `Ok(Some(true))` when the field is a string equal to
    /// the text, `Ok(Some(false))` when it is present and anything else, `Ok(None)` when it is
    /// absent (or the path crosses a non-object). Fails exactly when
    /// [`find_path`](super::find_path) fails, with the same error; the same answer as
    /// `find_path(bytes, path)` followed by [`Raw::str_equals`](super::Raw::str_equals).
    #[inline]
    pub fn test(&self, bytes: &[u8]) -> Result<Option<bool>, JsonError> {
        let found = match super::batch::lookup_equals(bytes, self) {
            Answer::Equals(EQUALS_TRUE) => return Ok(Some(true)),
            Answer::Equals(EQUALS_FALSE) => return Ok(Some(false)),
            Answer::Equals(EQUALS_ABSENT) => return Ok(None),
            // The checked scanner below names the error (and, should the host be wrong, finds
            // the field all the same).
            Answer::Equals(EQUALS_INVALID) => Found::Invalid,
            Answer::Found(found) => found,
            // No answer, or one the host cannot send: the test runs here.
            Answer::Equals(_) | Answer::None => super::fast::find_segments(bytes, &self.path.segments),
        };
        self.compare(bytes, found)
    }

    /// The test on what the lookup of the field found.
    #[inline]
    fn compare(&self, bytes: &[u8], found: Found) -> Result<Option<bool>, JsonError> {
        match found {
            Found::Absent => Ok(None),
            Found::At(hit) => Ok(Some(field_is_string(&bytes[hit.range], hit.plain_string, self.text.as_bytes()))),
            Found::Invalid => self.checked(bytes),
        }
    }

    /// The test by the checked scanner, for a value that is not valid JSON: the error is the
    /// one [`find_path`](super::find_path) reports.
    #[cold]
    #[inline(never)]
    fn checked(&self, bytes: &[u8]) -> Result<Option<bool>, JsonError> {
        let field = find_checked(bytes, self.path.as_str())?;
        Ok(field.map(|raw| raw.str_equals(&self.text)))
    }
}
