//! The fast path of [`find`](super::find): one pass over the bytes that only answers *where*
//! the field is, or that the document is not valid; the exact error (reason and position) is
//! then computed by the original scanner, which runs only for invalid documents.
//!
//! Why it is faster, natively and much more so in WebAssembly:
//! - UTF-8 is checked inside strings while they are scanned (everything outside strings must be
//!   ASCII anyway), instead of in a separate pass over the whole document first;
//! - strings are scanned eight bytes per step, and the step that meets the end of the run says
//!   exactly where (lowest flagged byte), so short strings and keys take one step;
//! - a key is compared with the wanted name only when their lengths agree;
//! - every function takes and returns plain positions (`usize`, [`FAIL`] for "not valid"), so
//!   the position lives in registers (WebAssembly locals) instead of in a struct in linear
//!   memory, and results are not returned through memory.
//!
//! It accepts exactly what the original scanner accepts: the rules below mirror `find.rs` and
//! `parse.rs` one for one (strict RFC 8259, [`MAX_DEPTH`], finite numbers), and the tests in
//! `json/tests.rs` compare both on valid, invalid and randomly mutated documents.

use super::parse::MAX_DEPTH;
use std::ops::Range;

/// The position every function returns when the document is not valid. No real position can
/// be `usize::MAX`: a slice that long does not fit in memory.
const FAIL: usize = usize::MAX;

/// Where the field is, and whether it is known to be a string without escapes (so that
/// [`super::Raw::plain_str_bytes`] need not look for a backslash again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hit {
    pub(super) range: Range<usize>,
    pub(super) plain_string: bool,
}

/// What the fast path found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Found {
    /// The field's JSON text is `bytes[range]`.
    At(Hit),
    /// The document is valid and the field is absent (or the path crosses a non-object).
    Absent,
    /// The document is not valid: the original scanner reports why.
    Invalid,
}

/// Finds `path` (dotted, as in [`find`](super::find); empty = the whole document) in `bytes`.
#[inline(always)]
pub(super) fn find(bytes: &[u8], path: &[u8]) -> Found {
    find_in(bytes, if path.is_empty() { None } else { Some(Dotted(path)) })
}

/// [`find`] with a path already split into segments (`None`/empty = the whole document).
#[inline(always)]
pub(super) fn find_segments(bytes: &[u8], segments: &[Segment]) -> Found {
    find_in(bytes, if segments.is_empty() { None } else { Some(segments) })
}

/// One segment of a path split ahead of time ([`super::Path`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Segment {
    pub(super) name: Vec<u8>,
    pub(super) has_backslash: bool,
}

/// A path the search walks one object level at a time.
trait Level<'p>: Copy {
    /// The member name to look for at this level, whether it has a backslash, and the path
    /// below (`None` at the last segment).
    fn split(self) -> (&'p [u8], bool, Option<Self>);
}

/// A dotted path, split on the fly at each level (for [`find`], which takes a `&str`).
#[derive(Clone, Copy)]
struct Dotted<'p>(&'p [u8]);

impl<'p> Level<'p> for Dotted<'p> {
    #[inline]
    fn split(self) -> (&'p [u8], bool, Option<Self>) {
        let (head, rest) = match self.0.iter().position(|&c| c == b'.') {
            Some(dot) => (&self.0[..dot], Some(Dotted(&self.0[dot + 1..]))),
            None => (self.0, None),
        };
        (head, has_backslash(head), rest)
    }
}

impl<'p> Level<'p> for &'p [Segment] {
    #[inline]
    fn split(self) -> (&'p [u8], bool, Option<Self>) {
        match self.split_first() {
            Some((head, rest)) => (&head.name, head.has_backslash, if rest.is_empty() { None } else { Some(rest) }),
            // Not reached: an empty path is the whole document and never split.
            None => (&[], false, None),
        }
    }
}

// Out of line in WebAssembly: inlined into a caller that first asks the host for the answer
// (`json-find`), the scanner's many live values would make the whole caller spill to the stack.
#[cfg_attr(target_arch = "wasm32", inline(never))]
fn find_in<'p, P: Level<'p>>(bytes: &[u8], path: Option<P>) -> Found {
    let start = skip_ws(bytes, 0);
    let mut found = None;
    let end = match path {
        None => {
            let end = value(bytes, start, 0);
            found = Some(Hit { range: start..end, plain_string: false });
            end
        }
        Some(path) => value_find(bytes, start, 0, path, &mut found),
    };
    if end == FAIL || skip_ws(bytes, end) != bytes.len() {
        return Found::Invalid;
    }
    match found {
        Some(hit) => Found::At(hit),
        None => Found::Absent,
    }
}

/// Skips whitespace. Records are mostly compact JSON, so the first byte is tested before any
/// loop: in WebAssembly every loop entry costs an interruption check, even for no iteration.
#[inline(always)]
fn skip_ws(b: &[u8], pos: usize) -> usize {
    match b.get(pos) {
        Some(b' ' | b'\t' | b'\n' | b'\r') => skip_ws_run(b, pos + 1),
        _ => pos,
    }
}

#[inline(never)]
fn skip_ws_run(b: &[u8], mut pos: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(pos) {
        pos += 1;
    }
    pos
}

/// Skips the value at `pos` (whitespace already skipped); returns the position after it.
fn value(b: &[u8], pos: usize, depth: usize) -> usize {
    match b.get(pos) {
        Some(b'"') => string(b, pos + 1),
        Some(b'{') => object(b, pos, depth),
        Some(b'[') => array(b, pos, depth),
        Some(b'-' | b'0'..=b'9') => number(b, pos),
        Some(b'n') => literal(b, pos, b"null"),
        Some(b't') => literal(b, pos, b"true"),
        Some(b'f') => literal(b, pos, b"false"),
        _ => FAIL,
    }
}

/// [`value`] for a member of an object or array: strings and numbers, what record fields mostly
/// hold, are scanned in the caller's loop (in WebAssembly a call costs about as much as
/// scanning a short string), anything else by a call.
#[inline(always)]
fn member_value(b: &[u8], pos: usize, depth: usize) -> usize {
    match b.get(pos) {
        Some(b'"') => string(b, pos + 1),
        Some(b'-' | b'0'..=b'9') => number(b, pos),
        _ => value(b, pos, depth),
    }
}

/// Like [`value`], searching an object for `path`: `found` is set to the value at the path
/// when this value is an object that has it. A repeated key: the last one decides.
fn value_find<'p, P: Level<'p>>(b: &[u8], pos: usize, depth: usize, path: P, found: &mut Option<Hit>) -> usize {
    if b.get(pos) != Some(&b'{') {
        return value(b, pos, depth);
    }
    let (head, head_has_backslash, rest) = path.split();
    let mut search = Search { head_has_backslash, rest, found: None };
    let end = object_search(b, pos, depth, head, &mut search);
    *found = search.found;
    end
}

/// What the member loop of [`object_search`] needs besides the name it looks for, behind one
/// pointer: the loop keeps few values live, so they stay in registers in WebAssembly too.
struct Search<P> {
    head_has_backslash: bool,
    /// The path below this object, `None` when `head` is its last segment.
    rest: Option<P>,
    /// The value at the path, per the last member named `head`.
    found: Option<Hit>,
}

/// The object at `pos`, searched for the member `head` (see [`value_find`]).
fn object_search<'p, P: Level<'p>>(b: &[u8], pos: usize, depth: usize, head: &[u8], search: &mut Search<P>) -> usize {
    let depth = depth + 1;
    if depth > MAX_DEPTH {
        return FAIL;
    }
    let mut pos = skip_ws(b, pos + 1);
    if b.get(pos) == Some(&b'}') {
        return pos + 1;
    }
    loop {
        if b.get(pos) != Some(&b'"') {
            return FAIL;
        }
        let key_start = pos + 1;
        pos = string(b, key_start);
        if pos == FAIL {
            return FAIL;
        }
        let key = &b[key_start..pos - 1];
        // Most keys are shorter than the name, or differ in length: no byte is compared.
        let matched = key.len() >= head.len() && key_matches(key, head, search.head_has_backslash);
        pos = match (matched, b.get(pos..pos + 2)) {
            // Compact JSON, `"key":"value"`: no whitespace to skip, no dispatch on the value.
            (false, Some(b":\"")) => string(b, pos + 2),
            (false, _) => colon_then(b, pos, |pos| member_value(b, pos, depth)),
            (true, _) => colon_then(b, pos, |pos| matched_member(b, pos, depth, search)),
        };
        // Compact JSON, `,"`: the next key follows at once.
        if pos != FAIL && b.get(pos..pos + 2) == Some(b",\"") {
            pos += 1;
            continue;
        }
        match after_member(b, pos, b'}') {
            Next::Member(next) => pos = next,
            Next::End(end) => return end,
        }
    }
}

/// The value of a member named like the path's head: the value at the path is there or below.
#[inline(always)]
fn matched_member<'p, P: Level<'p>>(b: &[u8], pos: usize, depth: usize, search: &mut Search<P>) -> usize {
    match search.rest {
        Some(rest) => nested_member(b, pos, depth, rest, search),
        None => {
            // A string whose first stop is its closing quote has no escape (nor anything but
            // ASCII): the caller may compare its bytes as they are.
            if b.get(pos) == Some(&b'"') {
                let stop = plain_run_words(b, pos + 1);
                if b.get(stop) == Some(&b'"') {
                    search.found = Some(Hit { range: pos..stop + 1, plain_string: true });
                    return stop + 1;
                }
            }
            let end = member_value(b, pos, depth);
            search.found = Some(Hit { range: pos..end, plain_string: false });
            end
        }
    }
}

/// [`matched_member`] when the path goes on below it: a search one level down.
#[inline(never)]
fn nested_member<'p, P: Level<'p>>(b: &[u8], pos: usize, depth: usize, rest: P, search: &mut Search<P>) -> usize {
    let mut inner = None;
    let end = value_find(b, pos, depth, rest, &mut inner);
    search.found = inner;
    end
}

/// [`colon`], then `value` from where the value starts ([`FAIL`] passes through).
#[inline(always)]
fn colon_then(b: &[u8], pos: usize, value: impl FnOnce(usize) -> usize) -> usize {
    match colon(b, pos) {
        FAIL => FAIL,
        start => value(start),
    }
}

/// `:` and the whitespace around it, after a key; returns where the value starts.
#[inline(always)]
fn colon(b: &[u8], pos: usize) -> usize {
    match b.get(pos) {
        Some(b':') => skip_ws(b, pos + 1),
        Some(b' ' | b'\t' | b'\n' | b'\r') => {
            let pos = skip_ws_run(b, pos + 1);
            match b.get(pos) {
                Some(b':') => skip_ws(b, pos + 1),
                _ => FAIL,
            }
        }
        _ => FAIL,
    }
}

/// Where a member of an object or an element of an array leads.
enum Next {
    /// After a `,`: the next member starts here.
    Member(usize),
    /// After the closing bracket, or [`FAIL`].
    End(usize),
}

/// What follows a member (or element) that ended at `pos` ([`FAIL`] passes through): a comma
/// and the next one, or `close`.
#[inline(always)]
fn after_member(b: &[u8], pos: usize, close: u8) -> Next {
    if pos == FAIL {
        return Next::End(FAIL);
    }
    let mut pos = pos;
    let mut c = b.get(pos).copied();
    if let Some(b' ' | b'\t' | b'\n' | b'\r') = c {
        pos = skip_ws_run(b, pos + 1);
        c = b.get(pos).copied();
    }
    match c {
        Some(b',') => Next::Member(skip_ws(b, pos + 1)),
        Some(c) if c == close => Next::End(pos + 1),
        _ => Next::End(FAIL),
    }
}

/// Whether a key's raw content (between the quotes, already validated) names `wanted`.
/// An escape is at least two bytes for what decodes to at most as many, so a key with escapes
/// is longer raw than decoded: a raw key shorter than `wanted` never names it, and one of the
/// same length does exactly when the bytes are equal, unless either has a backslash.
#[inline(always)]
fn key_matches(raw: &[u8], wanted: &[u8], wanted_has_backslash: bool) -> bool {
    match raw.len().cmp(&wanted.len()) {
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal if !wanted_has_backslash => bytes_equal(raw, wanted),
        _ => has_backslash(raw) && escaped_key_matches(raw, wanted),
    }
}

/// Rare: an escaped key is decoded to compare it (validated, so it is UTF-8).
#[cold]
fn escaped_key_matches(raw: &[u8], wanted: &[u8]) -> bool {
    match (std::str::from_utf8(raw), std::str::from_utf8(wanted)) {
        (Ok(raw), Ok(wanted)) => super::find::key_equals(raw, wanted),
        _ => false,
    }
}

/// `a == b` for the short slices keys are, four bytes per step (a slice comparison is a call
/// to a byte-by-byte `memcmp` in WebAssembly).
#[inline(always)]
pub(super) fn bytes_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i + 4 <= a.len() {
        let (mut x, mut y) = ([0u8; 4], [0u8; 4]);
        x.copy_from_slice(&a[i..i + 4]);
        y.copy_from_slice(&b[i..i + 4]);
        if x != y {
            return false;
        }
        i += 4;
    }
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

fn object(b: &[u8], pos: usize, depth: usize) -> usize {
    let depth = depth + 1;
    if depth > MAX_DEPTH {
        return FAIL;
    }
    let mut pos = skip_ws(b, pos + 1);
    if b.get(pos) == Some(&b'}') {
        return pos + 1;
    }
    loop {
        if b.get(pos) != Some(&b'"') {
            return FAIL;
        }
        pos = string(b, pos + 1);
        if pos == FAIL {
            return FAIL;
        }
        pos = colon(b, pos);
        if pos == FAIL {
            return FAIL;
        }
        match after_member(b, member_value(b, pos, depth), b'}') {
            Next::Member(next) => pos = next,
            Next::End(end) => return end,
        }
    }
}

fn array(b: &[u8], pos: usize, depth: usize) -> usize {
    let depth = depth + 1;
    if depth > MAX_DEPTH {
        return FAIL;
    }
    let mut pos = skip_ws(b, pos + 1);
    if b.get(pos) == Some(&b']') {
        return pos + 1;
    }
    loop {
        match after_member(b, member_value(b, pos, depth), b']') {
            Next::Member(next) => pos = next,
            Next::End(end) => return end,
        }
    }
}

#[inline(always)]
fn literal(b: &[u8], pos: usize, word: &[u8]) -> usize {
    match b.get(pos..pos + word.len()) {
        Some(found) if found == word => pos + word.len(),
        _ => FAIL,
    }
}

#[inline(always)]
fn digits(b: &[u8], mut pos: usize) -> usize {
    while let Some(b'0'..=b'9') = b.get(pos) {
        pos += 1;
    }
    pos
}

#[inline(always)]
fn number(b: &[u8], start: usize) -> usize {
    let mut pos = start;
    if b.get(pos) == Some(&b'-') {
        pos += 1;
    }
    pos = match b.get(pos) {
        Some(b'0') => pos + 1,
        Some(b'1'..=b'9') => digits(b, pos + 1),
        _ => return FAIL,
    };
    let mut integer = true;
    if b.get(pos) == Some(&b'.') {
        integer = false;
        let end = digits(b, pos + 1);
        if end == pos + 1 {
            return FAIL;
        }
        pos = end;
    }
    if let Some(b'e' | b'E') = b.get(pos) {
        integer = false;
        pos += 1;
        if let Some(b'+' | b'-') = b.get(pos) {
            pos += 1;
        }
        let end = digits(b, pos);
        if end == pos {
            return FAIL;
        }
        pos = end;
    }
    // As the parser: what does not stay a finite `f64` is refused (only an exponent, or an
    // integer of over 300 digits, can overflow).
    if (!integer || pos - start > 300) && !is_finite(&b[start..pos]) {
        return FAIL;
    }
    pos
}

/// Whether a number's text (already checked against the grammar) is a finite `f64`. Out of
/// line: most numbers in records are small integers, which never need it.
#[inline(never)]
fn is_finite(text: &[u8]) -> bool {
    let parsed = std::str::from_utf8(text).ok().and_then(|t| t.parse::<f64>().ok());
    parsed.map_or(false, f64::is_finite)
}

/// Whether `bytes` holds a backslash: eight bytes per step (a slice search is a call in
/// WebAssembly, which costs more than this for the short strings fields hold).
#[inline(always)]
pub(super) fn has_backslash(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    for eight in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(eight);
        let word = u64::from_le_bytes(word) ^ (ONES * u64::from(b'\\'));
        if word.wrapping_sub(ONES) & !word & HIGHS != 0 {
            return true;
        }
    }
    words.remainder().contains(&b'\\')
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The bytes of `word` (little-endian: byte i is bits 8i..8i+8) that end a run of plain ASCII
/// string characters: `"`, `\`, control characters and non-ASCII bytes. Each flagged byte has
/// its top bit set. Bits above the lowest flagged byte may be false positives (borrows), but
/// the lowest one is exact, which is all the caller uses.
#[inline(always)]
fn stops_in(word: u64) -> u64 {
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    has_zero(word ^ (ONES * u64::from(b'"')))
        | has_zero(word ^ (ONES * u64::from(b'\\')))
        | below_space
        | (word & HIGHS)
}

/// Skips the rest of a string whose opening quote is just before `pos`; returns the position
/// after the closing quote. Inlined: most strings are keys and short values, for which a call
/// (a stack check, saved registers and an interruption check in WebAssembly) costs as much as
/// the scan.
#[inline(always)]
fn string(b: &[u8], pos: usize) -> usize {
    let stop = plain_run_words(b, pos);
    match b.get(stop) {
        Some(b'"') => stop + 1,
        _ => string_rest(b, stop),
    }
}

/// The rest of a string from a byte that is not a closing quote: an escape, a non-ASCII
/// character, a byte of an input shorter than eight bytes, or an error. Out of line, so the
/// common case inlined in the scanner's loops stays small.
#[inline(never)]
fn string_rest(b: &[u8], mut pos: usize) -> usize {
    loop {
        pos = match b.get(pos) {
            Some(b'"') => return pos + 1,
            Some(b'\\') => escape(b, pos + 1),
            Some(0..=0x1f) | None => return FAIL,
            Some(0x80..=0xff) => utf8_char(b, pos),
            // A plain byte of an input shorter than eight bytes.
            Some(_) => pos + 1,
        };
        if pos == FAIL {
            return FAIL;
        }
        pos = plain_run_words(b, pos);
    }
}

/// Skips plain string bytes from `pos`: returns the first stop (see [`stops_in`]) at or after
/// it, or the end of the input. Eight bytes per step; the step that meets a stop lands on it.
#[inline(always)]
fn plain_run_words(b: &[u8], mut pos: usize) -> usize {
    while let Some(eight) = b.get(pos..pos + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(eight);
        let stops = stops_in(u64::from_le_bytes(word));
        if stops != 0 {
            return pos + (stops.trailing_zeros() / 8) as usize;
        }
        pos += 8;
    }
    plain_run_tail(b, pos)
}

/// [`plain_run_words`] with fewer than eight bytes left (where a document's last string ends):
/// the input's last eight bytes, shifted so the word starts at `pos`. The zero bytes shifted in
/// count as stops, so the first stop is at the end of the input at the latest.
#[inline(never)]
fn plain_run_tail(b: &[u8], pos: usize) -> usize {
    let len = b.len();
    if pos >= len || len < 8 {
        return pos;
    }
    let mut word = [0u8; 8];
    word.copy_from_slice(&b[len - 8..]);
    let stops = stops_in(u64::from_le_bytes(word) >> (8 * (pos + 8 - len)));
    pos + (stops.trailing_zeros() / 8) as usize
}

/// One escape after its backslash.
fn escape(b: &[u8], pos: usize) -> usize {
    match b.get(pos) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => pos + 1,
        Some(b'u') => match hex4(b, pos + 1) {
            Some(0xD800..=0xDBFF) => {
                // A high surrogate must be followed by an escaped low one.
                if b.get(pos + 5..pos + 7) != Some(b"\\u") {
                    return FAIL;
                }
                match hex4(b, pos + 7) {
                    Some(0xDC00..=0xDFFF) => pos + 11,
                    _ => FAIL,
                }
            }
            Some(0xDC00..=0xDFFF) | None => FAIL,
            Some(_) => pos + 5,
        },
        _ => FAIL,
    }
}

fn hex4(b: &[u8], pos: usize) -> Option<u32> {
    let digits = b.get(pos..pos + 4)?;
    let mut n = 0u32;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return None,
        };
        n = n * 16 + u32::from(v);
    }
    Some(n)
}

/// One UTF-8 encoded character starting with the non-ASCII byte at `pos`, checked as
/// `std::str::from_utf8` does (shortest form, no surrogates, at most U+10FFFF).
fn utf8_char(b: &[u8], pos: usize) -> usize {
    let continuation = |at: usize| matches!(b.get(at), Some(0x80..=0xbf));
    let (second_ok, len) = match b[pos] {
        0xc2..=0xdf => (continuation(pos + 1), 2),
        0xe0 => (matches!(b.get(pos + 1), Some(0xa0..=0xbf)), 3),
        0xe1..=0xec | 0xee..=0xef => (continuation(pos + 1), 3),
        0xed => (matches!(b.get(pos + 1), Some(0x80..=0x9f)), 3),
        0xf0 => (matches!(b.get(pos + 1), Some(0x90..=0xbf)), 4),
        0xf1..=0xf3 => (continuation(pos + 1), 4),
        0xf4 => (matches!(b.get(pos + 1), Some(0x80..=0x8f)), 4),
        _ => return FAIL,
    };
    if !second_ok || !(2..len).all(|i| continuation(pos + i)) {
        return FAIL;
    }
    pos + len
}
