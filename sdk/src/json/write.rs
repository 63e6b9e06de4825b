//! Serialization: compact JSON text, via `Display` (`value.to_string()`).

use super::{Number, Value};
use std::fmt::{self, Write};

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => f.write_str(if *b { "true" } else { "false" }),
            Value::Number(n) => write_number(f, *n),
            Value::String(s) => write_string(f, s),
            Value::Array(items) => {
                f.write_char('[')?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    item.fmt(f)?;
                }
                f.write_char(']')
            }
            Value::Object(members) => {
                f.write_char('{')?;
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    write_string(f, key)?;
                    f.write_char(':')?;
                    value.fmt(f)?;
                }
                f.write_char('}')
            }
        }
    }
}

fn write_number(f: &mut fmt::Formatter<'_>, n: Number) -> fmt::Result {
    match n {
        Number::Int(i) => write!(f, "{i}"),
        // Debug prints the shortest text that reads back to the same f64, keeps a `.0` on
        // integral values (so they stay floats) and switches to exponent form for very large or
        // small magnitudes; all of these are valid JSON. Non-finite floats cannot be built.
        Number::Float(x) if x.is_finite() => write!(f, "{x:?}"),
        Number::Float(_) => f.write_str("null"),
    }
}

/// Writes a JSON string literal: quotes, backslashes and control characters escaped, all other
/// characters (including non-ASCII) written as UTF-8.
fn write_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('"')?;
    let mut run_start = 0;
    for (i, c) in s.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        f.write_str(&s[run_start..i])?;
        if escape.is_empty() {
            write!(f, "\\u{:04x}", c as u32)?;
        } else {
            f.write_str(escape)?;
        }
        run_start = i + c.len_utf8();
    }
    f.write_str(&s[run_start..])?;
    f.write_char('"')
}
