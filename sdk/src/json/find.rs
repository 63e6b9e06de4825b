//! [`find`]: one field of a JSON document, without building a [`Value`] tree.
//!
//! The whole document is still checked, with the same rules as [`parse`](super::parse) (UTF-8,
//! strict RFC 8259, [`MAX_DEPTH`]): `find` fails exactly when `parse` would, so a transform that
//! switches from `parse(..)?.get_path(..)` to `find` treats invalid records the same way. What it
//! saves is every allocation: values are skipped in place and the field is returned as a slice
//! of the input ([`Raw`]), converted only when asked.

use super::parse::{parse_str, JsonError, MAX_DEPTH};
use super::{Number, Value};
use std::borrow::Cow;

/// The JSON text of one value inside a document, already validated by [`find`] (so it is
/// UTF-8 and parses). Kept as bytes: turning it into `&str` costs a UTF-8 check, paid only by
/// the accessors that return text.
#[derive(Debug, Clone, Copy)]
pub struct Raw<'a> {
    bytes: &'a [u8],
    /// Known to be a string without escapes (the scanner saw its closing quote as the first
    /// special byte); `false` means "not known", not "not a plain string".
    plain_string: bool,
}

/// Two views are equal when their JSON texts are.
impl PartialEq for Raw<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Raw<'_> {}

impl<'a> Raw<'a> {
    /// The value's JSON text, exactly as it appears in the document (`"click"`, `42`, `{...}`).
    #[inline]
    pub fn json(&self) -> &'a str {
        // `find` validated the document, so this always converts.
        std::str::from_utf8(self.bytes).unwrap_or("")
    }

    /// [`Raw::json`] as bytes, without the UTF-8 check.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The content of a string that has no escapes, as bytes: what [`Raw::as_str`] borrows,
    /// without the UTF-8 check. `None` for other values and for strings with escapes (use
    /// `as_str`). Comparing these bytes is comparing the strings (UTF-8 orders like text).
    #[inline]
    pub fn plain_str_bytes(&self) -> Option<&'a [u8]> {
        let bytes = self.bytes;
        if self.plain_string && bytes.len() >= 2 {
            return Some(&bytes[1..bytes.len() - 1]);
        }
        // `find` validated the text: a string is quoted at both ends (a one-byte `"` is not).
        if bytes.len() < 2 || bytes[0] != b'"' || bytes[bytes.len() - 1] != b'"' {
            return None;
        }
        let inner = &bytes[1..bytes.len() - 1];
        if super::fast::has_backslash(inner) {
            return None;
        }
        Some(inner)
    }

    /// The string's content (escapes decoded), if this is a string. Borrows from the document
    /// unless the string has escapes.
    #[inline]
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        if let Some(inner) = self.plain_str_bytes() {
            return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
        }
        if self.bytes.first() != Some(&b'"') {
            return None;
        }
        match self.to_value() {
            Value::String(s) => Some(Cow::Owned(s)),
            _ => None,
        }
    }

    /// Whether this is a string whose content (escapes decoded) is `text`: what comparing
    /// [`Raw::as_str`] with `text` answers, without converting a string that has no escapes.
    #[inline]
    pub fn str_equals(&self, text: &str) -> bool {
        field_is_string(self.bytes, self.plain_string, text.as_bytes())
    }

    /// The number, if this is one: exact ([`Number::Int`]) when it is an integer that fits `i64`,
    /// as [`parse`](super::parse) reads it.
    pub fn as_number(&self) -> Option<Number> {
        let text = self.json();
        match text.as_bytes().first() {
            Some(b'-' | b'0'..=b'9') => {}
            _ => return None,
        }
        if !text.contains(['.', 'e', 'E']) {
            if let Ok(i) = text.parse::<i64>() {
                return Some(Number::Int(i));
            }
        }
        text.parse::<f64>().ok().map(Number::Float)
    }

    /// The number as `f64`, if this is a number.
    pub fn as_f64(&self) -> Option<f64> {
        self.as_number().map(Number::as_f64)
    }

    /// The integer, if this is a number that is an exact integer fitting `i64` (as
    /// [`Value::as_i64`]).
    pub fn as_i64(&self) -> Option<i64> {
        self.as_number().and_then(|n| Value::Number(n).as_i64())
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self.bytes {
            b"true" => Some(true),
            b"false" => Some(false),
            _ => None,
        }
    }

    /// Whether this is `null`.
    pub fn is_null(&self) -> bool {
        self.bytes == b"null"
    }

    /// The value as a [`Value`] tree (allocates; parses only this value's text).
    pub fn to_value(&self) -> Value {
        // `find` validated this text with the parser's rules, so it parses.
        parse_str(self.json()).unwrap_or(Value::Null)
    }
}

/// [`Raw::str_equals`] on a field's validated JSON text `bytes` (with the scanner's plain-string
/// hint), for any bytes `text`: the host answers `json_equals` with it.
#[inline]
pub(super) fn field_is_string(bytes: &[u8], plain_string: bool, text: &[u8]) -> bool {
    let raw = Raw { bytes, plain_string };
    match raw.plain_str_bytes() {
        Some(content) => super::fast::bytes_equal(content, text),
        None => raw.as_str().map_or(false, |content| content.as_bytes() == text),
    }
}

/// The value at a dotted path of object keys (`"user.address.city"`) in the JSON document
/// `bytes`; an empty path is the whole document. Same answer as
/// `parse(bytes)?.get_path(path)` (a repeated key: the last one wins), same errors, but
/// without allocating: `Ok(None)` when the path is absent or crosses a non-object.
#[inline]
pub fn find<'a>(bytes: &'a [u8], path: &str) -> Result<Option<Raw<'a>>, JsonError> {
    let found = match super::batch::lookup(bytes, path.as_bytes(), 0) {
        Some(found) => found,
        None => super::fast::find(bytes, path.as_bytes()),
    };
    match found {
        super::fast::Found::Absent => return Ok(None),
        // The fast path checked the text; this only turns the slice into `&str` (cheap: it is
        // the field alone, usually a few bytes).
        super::fast::Found::At(hit) => {
            return Ok(Some(Raw { bytes: &bytes[hit.range], plain_string: hit.plain_string }))
        }
        super::fast::Found::Invalid => {}
    }
    // Invalid: the scanner below names the error exactly as `parse` would.
    find_checked(bytes, path)
}

/// A dotted path of object keys (`"user.address.city"`) split once, for [`find_path`]: a
/// transform that reads the same field of every record builds it when it starts instead of
/// splitting the path for every record.
#[derive(Debug, Clone)]
pub struct Path {
    text: String,
    pub(super) segments: Vec<super::fast::Segment>,
    /// Unique per `Path::new` (clones share it, and their text): lets the `json-find` lookup
    /// recognise the path of the previous record without comparing text. Never 0.
    id: u64,
}

/// Paths are equal when their texts are.
impl PartialEq for Path {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Path {}

/// The last [`Path`] id handed out. 64 bits: it cannot wrap, however many paths an instance
/// builds (a repeated id could name another path's answers).
static PATH_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A new id for a [`Path`] or a [`StrEquals`](super::StrEquals), never 0.
pub(super) fn next_id() -> u64 {
    PATH_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

impl Path {
    /// Splits `path` at its dots; the empty path names the whole document (as in [`find`]).
    pub fn new(path: &str) -> Path {
        let segments = if path.is_empty() {
            Vec::new()
        } else {
            path.split('.')
                .map(|name| super::fast::Segment { name: name.as_bytes().to_vec(), has_backslash: name.contains('\\') })
                .collect()
        };
        Path { text: path.to_string(), segments, id: next_id() }
    }

    /// The path as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }
}

/// [`find`] with a [`Path`] built ahead: the same answers and errors.
#[inline]
pub fn find_path<'a>(bytes: &'a [u8], path: &Path) -> Result<Option<Raw<'a>>, JsonError> {
    let found = match super::batch::lookup(bytes, path.text.as_bytes(), path.id) {
        Some(found) => found,
        None => super::fast::find_segments(bytes, &path.segments),
    };
    match found {
        super::fast::Found::Absent => return Ok(None),
        super::fast::Found::At(hit) => {
            return Ok(Some(Raw { bytes: &bytes[hit.range], plain_string: hit.plain_string }))
        }
        super::fast::Found::Invalid => {}
    }
    find_checked(bytes, &path.text)
}

/// [`find`] by the original scanner: UTF-8 first, then the document; slower, but it reports
/// the same error (reason and position) as [`parse`](super::parse).
pub(super) fn find_checked<'a>(bytes: &'a [u8], path: &str) -> Result<Option<Raw<'a>>, JsonError> {
    let text = std::str::from_utf8(bytes).map_err(|e| JsonError { reason: "invalid UTF-8", at: e.valid_up_to() })?;
    let mut scanner = Scanner { text, bytes: text.as_bytes(), pos: 0, depth: 0 };
    scanner.skip_ws();
    let start = scanner.pos;
    let found = if path.is_empty() {
        scanner.value(None)?;
        Some(Raw { bytes: &text.as_bytes()[start..scanner.pos], plain_string: false })
    } else {
        scanner.value(Some(path))?
    };
    scanner.skip_ws();
    if scanner.pos != scanner.bytes.len() {
        return Err(scanner.err("trailing characters"));
    }
    Ok(found)
}

/// Bytes that end a run of plain string characters: `"`, `\\` and control characters.
const ENDS_PLAIN_RUN: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Whether any of these 8 bytes is in [`ENDS_PLAIN_RUN`], tested on them as one `u64` (SWAR:
/// a byte of `v` is zero, or below 0x20, exactly when the expressions below set its top bit).
fn word_ends_plain_run(eight: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut word = [0u8; 8];
    word.copy_from_slice(eight);
    let v = u64::from_le_bytes(word);
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let below_space = v.wrapping_sub(ONES * 0x20) & !v & HIGHS;
    (has_zero(v ^ (ONES * u64::from(b'"'))) | has_zero(v ^ (ONES * u64::from(b'\\'))) | below_space) != 0
}

/// Validates and skips values in place; mirrors `parse::Parser` rule for rule.
struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Scanner<'a> {
    fn err(&self, reason: &'static str) -> JsonError {
        JsonError { reason, at: self.pos }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        // The position stays in a local in the loops that run per byte: the compiler need not
        // store it back on every step (this matters most in WebAssembly).
        let mut pos = self.pos;
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(pos) {
            pos += 1;
        }
        self.pos = pos;
    }

    /// Skips one value. With `path`, the value is searched for that path: the result is the
    /// value there (`None` if absent or if this value is not an object).
    fn value(&mut self, path: Option<&str>) -> Result<Option<Raw<'a>>, JsonError> {
        match self.peek() {
            None => Err(self.err("unexpected end of input")),
            Some(b'n') => self.literal("null"),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'"') => self.string().map(|_| None),
            Some(b'[') => self.array().map(|()| None),
            Some(b'{') => self.object(path),
            Some(b'-' | b'0'..=b'9') => self.number().map(|()| None),
            Some(_) => Err(self.err("unexpected character")),
        }
    }

    fn literal(&mut self, word: &'static str) -> Result<Option<Raw<'a>>, JsonError> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(None)
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn enter(&mut self) -> Result<(), JsonError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        self.pos += 1; // the opening bracket
        self.skip_ws();
        Ok(())
    }

    fn array(&mut self) -> Result<(), JsonError> {
        self.enter()?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            self.value(None)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b']') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    /// An object; with `path`, the value at it (the last member named like its first segment
    /// decides, as `Value::get` keeps the last of repeated keys).
    fn object(&mut self, path: Option<&str>) -> Result<Option<Raw<'a>>, JsonError> {
        let (head, rest) = match path {
            Some(path) => match path.split_once('.') {
                Some((head, rest)) => (Some(head), Some(rest)),
                None => (Some(path), None),
            },
            None => (None, None),
        };
        self.enter()?;
        let mut found = None;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(found);
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a string key"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected ':'"));
            }
            self.pos += 1;
            self.skip_ws();
            let matches = match head {
                Some(head) => key_equals(key, head),
                None => false,
            };
            if !matches {
                self.value(None)?;
            } else if rest.is_some() {
                found = self.value(rest)?;
            } else {
                let start = self.pos;
                self.value(None)?;
                found = Some(Raw { bytes: &self.bytes[start..self.pos], plain_string: false });
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(found);
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            integer = false;
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number: digits expected after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            integer = false;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number: digits expected in exponent"));
            }
        }
        // Only an exponent can overflow `f64` (an integer would need over 300 digits, which
        // the parse below also catches); the parser refuses what does not stay finite.
        let text = &self.text[start..self.pos];
        if (!integer || text.len() > 300) && !text.parse::<f64>().map_or(false, f64::is_finite) {
            return Err(JsonError { reason: "number out of range", at: start });
        }
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self.bytes.get(self.pos..self.pos + 4).ok_or_else(|| self.err("truncated \\u escape"))?;
        let mut n = 0u32;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.err("invalid \\u escape")),
            };
            n = n * 16 + u32::from(v);
        }
        self.pos += 4;
        Ok(n)
    }

    /// Skips a string, checking its escapes; returns its raw content (escapes not decoded).
    fn string(&mut self) -> Result<&'a str, JsonError> {
        self.pos += 1; // the opening quote
        let start = self.pos;
        let bytes = self.bytes;
        loop {
            // The run of plain characters: eight bytes per step while none of them ends it,
            // then one table lookup per byte.
            let mut pos = self.pos;
            while pos + 8 <= bytes.len() && !word_ends_plain_run(&bytes[pos..pos + 8]) {
                pos += 8;
            }
            while pos < bytes.len() && !ENDS_PLAIN_RUN[usize::from(bytes[pos])] {
                pos += 1;
            }
            self.pos = pos;
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    let content = &self.text[start..self.pos];
                    self.pos += 1;
                    return Ok(content);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape()?;
                }
                Some(_) => return Err(self.err("control character in string")),
            }
        }
    }

    fn escape(&mut self) -> Result<(), JsonError> {
        let c = self.peek().ok_or_else(|| self.err("unterminated escape"))?;
        self.pos += 1;
        match c {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(()),
            b'u' => self.unicode_escape(),
            _ => Err(self.err("invalid escape")),
        }
    }

    /// `\uXXXX`, a UTF-16 surrogate pair written as two escapes.
    fn unicode_escape(&mut self) -> Result<(), JsonError> {
        match self.hex4()? {
            0xD800..=0xDBFF => {
                if !self.bytes[self.pos..].starts_with(b"\\u") {
                    return Err(self.err("lone high surrogate"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.err("invalid low surrogate"));
                }
                Ok(())
            }
            0xDC00..=0xDFFF => Err(self.err("lone low surrogate")),
            _ => Ok(()),
        }
    }
}

/// Whether a key's raw content (escapes undecoded, already validated) names `wanted`.
pub(super) fn key_equals(raw: &str, wanted: &str) -> bool {
    // Byte search, not `str::contains(char)`: this runs for every key of the document.
    if !raw.as_bytes().contains(&b'\\') {
        return raw == wanted;
    }
    // Rare: an escaped key is decoded (one allocation) to compare it.
    let mut quoted = String::with_capacity(raw.len() + 2);
    quoted.push('"');
    quoted.push_str(raw);
    quoted.push('"');
    matches!(parse_str(&quoted), Ok(Value::String(key)) if key == wanted)
}
