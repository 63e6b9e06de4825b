//! What the `json_find` host import (ABI v1 extension `json-find`, see `ABI.md`) answers for
//! one document: the result entry [`locate`] computes, shared by Runnel's host (which runs it
//! natively over every record value of a batch in one call) and by this SDK (which decodes the
//! entries, and computes them itself in the native test harness). One function on both sides
//! is what makes the host's answer the one [`find_path`](super::find_path) would compute in the
//! guest.
//!
//! [`equals`] is the same for the `json_equals` import (extension `json-equals`): one byte per
//! document saying whether the field is a given string.
//!
//! An entry is three little-endian `u32`s: `[status, start, end]`; `start..end` is the field's
//! JSON text within the document when `status` is [`FOUND`] or [`FOUND_PLAIN_STRING`], and
//! both are 0 otherwise.

use super::fast::{self, Found, Hit};
use super::Path;

/// The document is valid JSON and the path is absent (or crosses a non-object), or there was
/// no document (a null value).
pub const ABSENT: u32 = 0;
/// The field's JSON text is `document[start..end]`.
pub const FOUND: u32 = 1;
/// As [`FOUND`], and the field is a string without escapes or non-ASCII bytes: its content,
/// `document[start + 1..end - 1]`, can be compared as it is.
pub const FOUND_PLAIN_STRING: u32 = 2;
/// The document is not valid JSON (strict RFC 8259, nesting at most [`MAX_DEPTH`](super::MAX_DEPTH)):
/// the SDK scans it itself to name the error.
pub const INVALID: u32 = 3;

/// Bytes of one document span the guest passes: `u32 ptr`, `u32 len` (`len = u32::MAX`: no
/// document).
pub const SPAN_BYTES: usize = 8;
/// Bytes of one result entry the host writes.
pub const ENTRY_BYTES: usize = 12;

/// The result entry for `path` in `document`: what [`find_path`](super::find_path) finds, as
/// numbers.
#[inline]
pub fn locate(document: &[u8], path: &Path) -> [u32; 3] {
    encode(fast::find_segments(document, &path.segments))
}

/// The entry for a [`Found`]. Documents are shorter than 4 GiB (they lie in a 32-bit guest
/// memory), so positions fit; one that does not is reported invalid, which only makes the
/// guest scan it itself.
fn encode(found: Found) -> [u32; 3] {
    match found {
        Found::Absent => [ABSENT, 0, 0],
        Found::Invalid => [INVALID, 0, 0],
        Found::At(hit) => match (u32::try_from(hit.range.start), u32::try_from(hit.range.end)) {
            (Ok(start), Ok(end)) => [if hit.plain_string { FOUND_PLAIN_STRING } else { FOUND }, start, end],
            _ => [INVALID, 0, 0],
        },
    }
}

/// An entry read back for a document of `len` bytes; `None` for one that cannot be right (an
/// unknown status, a range outside the document), which the caller treats as "not answered"
/// and scans the document itself.
#[inline]
pub(super) fn decode(entry: [u32; 3], len: usize) -> Option<Found> {
    let [status, start, end] = entry;
    let (start, end) = (start as usize, end as usize);
    match status {
        ABSENT => Some(Found::Absent),
        INVALID => Some(Found::Invalid),
        FOUND | FOUND_PLAIN_STRING if start < end && end <= len => {
            Some(Found::At(Hit { range: start..end, plain_string: status == FOUND_PLAIN_STRING }))
        }
        _ => None,
    }
}

/// `json_equals` answer: the document is valid JSON and the path is absent (or crosses a
/// non-object), or there was no document (a null value).
pub const EQUALS_ABSENT: u8 = 0;
/// `json_equals` answer: the field is a string whose content, escapes decoded, is the text.
pub const EQUALS_TRUE: u8 = 1;
/// `json_equals` answer: the field is present and is not a string with that content (another
/// string, or a number, object, array, `true`, `false`, `null`).
pub const EQUALS_FALSE: u8 = 2;
/// `json_equals` answer: the document is not valid JSON (as [`INVALID`]).
pub const EQUALS_INVALID: u8 = 3;

/// The `json_equals` answer for `path` and the string `text` in `document`: what
/// [`StrEquals::test`](super::StrEquals::test) computes, as a byte.
#[inline]
pub fn equals(document: &[u8], path: &Path, text: &[u8]) -> u8 {
    match fast::find_segments(document, &path.segments) {
        Found::Absent => EQUALS_ABSENT,
        Found::Invalid => EQUALS_INVALID,
        Found::At(hit) => {
            let plain_string = hit.plain_string;
            if super::find::field_is_string(&document[hit.range], plain_string, text) {
                EQUALS_TRUE
            } else {
                EQUALS_FALSE
            }
        }
    }
}
