//! `--format` for `runnel consume`: parsed once, then rendered per record as raw bytes
//! (keys and values are not necessarily UTF-8 and are written unchanged).

use anyhow::{bail, Result};

/// One record as the format sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordView<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp_ms: i64,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(Vec<u8>),
    Key,
    Value,
    Partition,
    Offset,
    TimestampMs,
    Topic,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutputFormat {
    tokens: Vec<Token>,
}

impl OutputFormat {
    /// Parses `%k %v %p %o %t %T %%` and the escapes `\n \t \\`; anything else after `%` or
    /// `\` is an error rather than silently printed, so a typo is noticed at once.
    pub(crate) fn parse(text: &str) -> Result<OutputFormat> {
        let mut tokens = Vec::new();
        let mut literal = Vec::new();
        let mut characters = text.chars();
        while let Some(character) = characters.next() {
            let field = match character {
                '%' => match characters.next() {
                    Some('k') => Token::Key,
                    Some('v') => Token::Value,
                    Some('p') => Token::Partition,
                    Some('o') => Token::Offset,
                    Some('t') => Token::TimestampMs,
                    Some('T') => Token::Topic,
                    Some('%') => {
                        literal.push(b'%');
                        continue;
                    }
                    Some(other) => bail!("unknown format token '%{other}' (known: %k %v %p %o %t %T %%)"),
                    None => bail!("format ends with a lone '%' (write %% for a percent sign)"),
                },
                '\\' => {
                    match characters.next() {
                        Some('n') => literal.push(b'\n'),
                        Some('t') => literal.push(b'\t'),
                        Some('\\') => literal.push(b'\\'),
                        Some(other) => bail!("unknown escape '\\{other}' in format (known: \\n \\t \\\\)"),
                        None => bail!("format ends with a lone '\\' (write \\\\ for a backslash)"),
                    }
                    continue;
                }
                other => {
                    let mut encoded = [0u8; 4];
                    literal.extend_from_slice(other.encode_utf8(&mut encoded).as_bytes());
                    continue;
                }
            };
            if !literal.is_empty() {
                tokens.push(Token::Literal(std::mem::take(&mut literal)));
            }
            tokens.push(field);
        }
        // One record per line unless the user already ends the format with a newline.
        if !literal.ends_with(b"\n") {
            literal.push(b'\n');
        }
        tokens.push(Token::Literal(literal));
        Ok(OutputFormat { tokens })
    }

    /// Appends the rendered record to `out`. Null keys and values render as nothing.
    pub(crate) fn render(&self, record: &RecordView<'_>, out: &mut Vec<u8>) {
        for token in &self.tokens {
            match token {
                Token::Literal(bytes) => out.extend_from_slice(bytes),
                Token::Key => out.extend_from_slice(record.key.unwrap_or_default()),
                Token::Value => out.extend_from_slice(record.value.unwrap_or_default()),
                Token::Partition => out.extend_from_slice(record.partition.to_string().as_bytes()),
                Token::Offset => out.extend_from_slice(record.offset.to_string().as_bytes()),
                Token::TimestampMs => out.extend_from_slice(record.timestamp_ms.to_string().as_bytes()),
                Token::Topic => out.extend_from_slice(record.topic.as_bytes()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RecordView<'static> {
        RecordView {
            topic: "orders",
            partition: 2,
            offset: 41,
            timestamp_ms: 1_700_000_000_123,
            key: Some(b"k1"),
            value: Some(b"hello"),
        }
    }

    fn render(format: &str, record: &RecordView<'_>) -> String {
        let mut out = Vec::new();
        OutputFormat::parse(format).expect("valid format").render(record, &mut out);
        String::from_utf8(out).expect("utf-8 output")
    }

    #[test]
    fn default_format_prints_the_value_and_a_newline() {
        assert_eq!(render("%v", &sample()), "hello\n");
    }

    #[test]
    fn every_token_renders() {
        assert_eq!(render("%T/%p@%o %t %k=%v 100%%", &sample()), "orders/2@41 1700000000123 k1=hello 100%\n");
    }

    #[test]
    fn escapes_render_and_a_trailing_newline_is_not_doubled() {
        assert_eq!(render("%k\\t%v\\n", &sample()), "k1\thello\n");
        assert_eq!(render("%v\\n\\n", &sample()), "hello\n\n");
        assert_eq!(render("a\\\\b", &sample()), "a\\b\n");
    }

    #[test]
    fn null_key_and_value_render_empty() {
        let record = RecordView { key: None, value: None, ..sample() };
        assert_eq!(render("[%k][%v]", &record), "[][]\n");
    }

    #[test]
    fn non_ascii_literals_and_binary_values_pass_through() {
        let record = RecordView { value: Some(&[0xff, 0x00]), ..sample() };
        let mut out = Vec::new();
        OutputFormat::parse("é%v").expect("valid").render(&record, &mut out);
        assert_eq!(out, vec![0xc3, 0xa9, 0xff, 0x00, b'\n']);
    }

    #[test]
    fn mistakes_are_rejected() {
        assert!(OutputFormat::parse("%x").is_err());
        assert!(OutputFormat::parse("%v%").is_err());
        assert!(OutputFormat::parse("\\q").is_err());
        assert!(OutputFormat::parse("%v\\").is_err());
    }
}
