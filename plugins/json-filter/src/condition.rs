//! One comparison of a JSON field with a configured operand.
//!
//! - `EQUALS`/`NOT_EQUALS`: numbers compare numerically when the operand is a number (`1` equals
//!   `1.0`); everything else compares the field's text (a string's content, or the JSON text of
//!   `true`, `false`, `null`) with the operand. A missing field is not equal to anything.
//! - `GT`/`GTE`/`LT`/`LTE`: numeric when the field is a number and the operand parses as one,
//!   lexicographic when the field is a string (ISO-8601 timestamps order correctly); no match
//!   otherwise.
//! - `CONTAINS`: substring of a string field, or an element of an array field (by text).
//! - `EXISTS`: `true` matches a present field (even `null`), `false` an absent one.

use runnel_sdk::json::{Path, Raw, StrEquals, Value};
use runnel_sdk::Error;
use std::cmp::Ordering;

/// The comparison operators, each configured by the env variable of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `EQUALS`
    Equals,
    /// `NOT_EQUALS`
    NotEquals,
    /// `GT`
    Gt,
    /// `GTE`
    Gte,
    /// `LT`
    Lt,
    /// `LTE`
    Lte,
    /// `CONTAINS`
    Contains,
    /// `EXISTS`
    Exists,
}

impl Op {
    /// Every operator, in the order conditions are read.
    pub const ALL: [Op; 8] = [Op::Equals, Op::NotEquals, Op::Gt, Op::Gte, Op::Lt, Op::Lte, Op::Contains, Op::Exists];

    /// The env variable that configures it.
    pub fn env_name(self) -> &'static str {
        match self {
            Op::Equals => "EQUALS",
            Op::NotEquals => "NOT_EQUALS",
            Op::Gt => "GT",
            Op::Gte => "GTE",
            Op::Lt => "LT",
            Op::Lte => "LTE",
            Op::Contains => "CONTAINS",
            Op::Exists => "EXISTS",
        }
    }
}

/// One operator with its operand, the number parsed once up front.
#[derive(Debug, Clone)]
pub struct Condition {
    op: Op,
    text: String,
    number: Option<f64>,
    exists: bool,
}

impl Condition {
    /// Builds a condition; `EXISTS` must be `true` or `false`.
    pub fn new(op: Op, operand: &str) -> Result<Self, Error> {
        let exists = match (op, operand.trim()) {
            (Op::Exists, "true") => true,
            (Op::Exists, "false") => false,
            (Op::Exists, other) => return Err(Error::new(format!("EXISTS={other:?}: expected true or false"))),
            _ => false,
        };
        let number = operand.trim().parse::<f64>().ok().filter(|n| n.is_finite());
        Ok(Condition { op, text: operand.to_string(), number, exists })
    }

    /// This condition as a [`StrEquals`] test on the field at `path`, and whether its answer
    /// is negated: for `EQUALS` and `NOT_EQUALS` with an operand that is neither a number nor
    /// the JSON text of anything, which only a string field can equal (a non-string field
    /// compares by its JSON text). The test is a pushdown: Runnel's host answers it for the
    /// whole batch (`json-equals`). `None` for every other condition.
    pub fn as_str_test(&self, path: &Path) -> Option<(StrEquals, bool)> {
        let negated = match self.op {
            Op::Equals => false,
            Op::NotEquals => true,
            _ => return None,
        };
        if self.number.is_some() || runnel_sdk::json::parse_str(&self.text).is_ok() {
            return None;
        }
        Some((StrEquals::new(path.clone(), &self.text), negated))
    }

    /// Whether `field` (`None` = absent) satisfies the condition.
    pub fn matches(&self, field: Option<&Value>) -> bool {
        match self.op {
            Op::Exists => field.is_some() == self.exists,
            Op::Equals => field.map_or(false, |f| self.equals(f)),
            Op::NotEquals => field.map_or(true, |f| !self.equals(f)),
            Op::Gt => self.order(field) == Some(Ordering::Greater),
            Op::Gte => self.order(field).map_or(false, |o| o != Ordering::Less),
            Op::Lt => self.order(field) == Some(Ordering::Less),
            Op::Lte => self.order(field).map_or(false, |o| o != Ordering::Greater),
            Op::Contains => match field {
                Some(Value::String(s)) => s.contains(&self.text),
                Some(Value::Array(items)) => items.iter().any(|item| self.equals(item)),
                _ => false,
            },
        }
    }

    /// [`Self::matches`] on a field as [`json::find`](runnel_sdk::json::find) returns it: a
    /// string is compared in place (no `Value` built, and without escapes not even converted
    /// to `&str`), anything else is converted first.
    #[inline]
    pub fn matches_raw(&self, field: Option<Raw<'_>>) -> bool {
        let raw = match field {
            Some(raw) => raw,
            None => return self.matches(None),
        };
        if let Some(bytes) = raw.plain_str_bytes() {
            return self.matches_str(bytes);
        }
        match raw.as_str() {
            Some(text) => self.matches_str(text.as_bytes()),
            None => self.matches(Some(&raw.to_value())),
        }
    }

    /// What [`Self::matches`] answers for a present string field holding the UTF-8 bytes `s`
    /// (UTF-8 bytes order as their text does).
    #[inline(always)]
    fn matches_str(&self, s: &[u8]) -> bool {
        let order = || s.cmp(self.text.as_bytes());
        match self.op {
            Op::Exists => self.exists,
            Op::Equals => same_bytes(s, self.text.as_bytes()),
            Op::NotEquals => !same_bytes(s, self.text.as_bytes()),
            Op::Gt => order() == Ordering::Greater,
            Op::Gte => order() != Ordering::Less,
            Op::Lt => order() == Ordering::Less,
            Op::Lte => order() != Ordering::Greater,
            Op::Contains => std::str::from_utf8(s).map_or(false, |s| s.contains(&self.text)),
        }
    }

    fn equals(&self, field: &Value) -> bool {
        match (field, field.as_f64(), self.number) {
            (_, Some(a), Some(b)) => a == b,
            // What `to_plain_string` gives for a string, without copying it.
            (Value::String(s), _, _) => *s == self.text,
            _ => field.to_plain_string() == self.text,
        }
    }

    /// How the field orders against the operand, `None` when they do not compare.
    fn order(&self, field: Option<&Value>) -> Option<Ordering> {
        match field? {
            Value::Number(n) => n.as_f64().partial_cmp(&self.number?),
            Value::String(s) => Some(s.as_str().cmp(self.text.as_str())),
            _ => None,
        }
    }
}

/// `a == b`, four bytes per step: a slice comparison is a call to a byte-by-byte `memcmp` in
/// WebAssembly, which costs more than the comparison of the short strings fields hold.
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a_words, mut b_words) = (a.chunks_exact(4), b.chunks_exact(4));
    for (x, y) in (&mut a_words).zip(&mut b_words) {
        if u32::from_le_bytes([x[0], x[1], x[2], x[3]]) != u32::from_le_bytes([y[0], y[1], y[2], y[3]]) {
            return false;
        }
    }
    a_words.remainder().iter().zip(b_words.remainder()).all(|(x, y)| x == y)
}
