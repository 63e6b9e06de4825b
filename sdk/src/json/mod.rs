//! Dependency-free JSON for transforms: parse record values into a small [`Value`] tree, read and
//! change fields (also by dotted path, `"user.id"`), and serialize back.
//!
//! To read one field, [`find`] walks the bytes without building a tree or allocating (same
//! validation and answers as `parse` + [`Value::get_path`]) and returns it as a [`Raw`] slice;
//! [`find_path`] does the same with a [`Path`] split once, for the field of every record.
//! On a host that offers the `json-find` extension (Runnel does), both are answered for the
//! values of the batch being processed by the host, which locates a path in all of them in one
//! call (natively, with the same scanner: [`locate`]); the answers are the same.
//! [`StrEquals`] tests "this field is this string" and, on a host with the `json-equals`
//! extension, pushes that test down to the host for the whole batch (one byte per record).
//!
//! Object members keep their order. Integers that fit an `i64` stay exact ([`Number::Int`]);
//! other numbers are `f64`. Parsing is strict RFC 8259 (UTF-8, no trailing commas, no lone
//! surrogates) and nesting is limited to [`MAX_DEPTH`] so hostile input cannot exhaust the stack.

pub(crate) mod batch;
mod equals;
mod fast;
mod find;
pub mod locate;
mod parse;
mod write;

pub use equals::StrEquals;
pub use find::{find, find_path, Path, Raw};
pub use parse::{parse, parse_str, JsonError, MAX_DEPTH};

/// A JSON number: exact when it is an integer that fits an `i64`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// An integer without fraction or exponent that fits an `i64`.
    Int(i64),
    /// Any other (finite) number.
    Float(f64),
}

impl Number {
    /// The number as `f64` (integers beyond 2^53 round).
    pub fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

/// A JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number.
    Number(Number),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object, members in document order.
    Object(Vec<(String, Value)>),
}

impl Value {
    /// An empty object.
    pub fn object() -> Value {
        Value::Object(Vec::new())
    }

    /// The member `key` of an object (the last one if the key repeats, as most parsers keep).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Mutable access to the member `key` of an object.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        match self {
            Value::Object(members) => members.iter_mut().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets member `key` of an object, replacing (and de-duplicating) an existing one in place,
    /// or appending it. Returns the previous value. Does nothing on non-objects (returns `None`).
    pub fn insert(&mut self, key: &str, value: Value) -> Option<Value> {
        let members = match self {
            Value::Object(members) => members,
            _ => return None,
        };
        let previous = remove_member(members, key);
        match previous {
            Some((index, old)) => {
                members.insert(index, (key.to_string(), value));
                Some(old)
            }
            None => {
                members.push((key.to_string(), value));
                None
            }
        }
    }

    /// Removes member `key` (every occurrence) from an object, returning the last value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        match self {
            Value::Object(members) => remove_member(members, key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value at a dotted path of object keys: `"user.address.city"`.
    /// An empty path is the value itself.
    pub fn get_path(&self, path: &str) -> Option<&Value> {
        if path.is_empty() {
            return Some(self);
        }
        path.split('.').try_fold(self, |v, key| v.get(key))
    }

    /// Sets the value at a dotted path, creating intermediate objects (and replacing non-object
    /// intermediates). Returns the previous value. Does nothing if `self` is not an object.
    pub fn set_path(&mut self, path: &str, value: Value) -> Option<Value> {
        match path.split_once('.') {
            None => self.insert(path, value),
            Some((head, rest)) => {
                if !matches!(self, Value::Object(_)) {
                    return None;
                }
                if !matches!(self.get(head), Some(Value::Object(_))) {
                    self.insert(head, Value::object());
                }
                self.get_mut(head).and_then(|child| child.set_path(rest, value))
            }
        }
    }

    /// Removes the value at a dotted path, returning it.
    pub fn remove_path(&mut self, path: &str) -> Option<Value> {
        match path.rsplit_once('.') {
            None => self.remove(path),
            Some((parent, last)) => self.get_path_mut(parent)?.remove(last),
        }
    }

    fn get_path_mut(&mut self, path: &str) -> Option<&mut Value> {
        path.split('.').try_fold(self, |v, key| v.get_mut(key))
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is a number that is an exact integer fitting `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(Number::Int(i)) => Some(*i),
            Value::Number(Number::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(*f as i64),
            _ => None,
        }
    }

    /// The number as `f64`, if this is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(n.as_f64()),
            _ => None,
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The members, if this is an object.
    pub fn as_object(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Whether this is `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The text a string value holds, or the JSON text of any other value (`42`, `true`,
    /// `null`): how plugins compare a field with a configured string.
    pub fn to_plain_string(&self) -> String {
        match self {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    /// The JSON text as bytes, ready to be a record value.
    pub fn to_vec(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

/// Removes every member named `key`; returns the position of the first and the last value.
fn remove_member(members: &mut Vec<(String, Value)>, key: &str) -> Option<(usize, Value)> {
    let first = members.iter().position(|(k, _)| k == key)?;
    let mut last = None;
    let mut i = first;
    while i < members.len() {
        if members[i].0 == key {
            last = Some(members.remove(i).1);
        } else {
            i += 1;
        }
    }
    last.map(|v| (first, v))
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Number(Number::Int(i))
    }
}

/// Non-finite floats have no JSON form and become `null`.
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        if f.is_finite() {
            Value::Number(Number::Float(f))
        } else {
            Value::Null
        }
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

#[cfg(test)]
mod tests;
