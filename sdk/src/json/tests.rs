use super::*;

fn p(text: &str) -> Value {
    match parse_str(text) {
        Ok(v) => v,
        Err(e) => panic!("{text:?} should parse: {e}"),
    }
}

#[test]
fn parses_all_value_kinds_and_keeps_member_order() {
    let v = p(r#" {"b": [1, -2.5, 3e2, true, false, null], "a": {"s": "x"}} "#);
    let members: Vec<&str> = v.as_object().map(|m| m.iter().map(|(k, _)| k.as_str()).collect()).unwrap_or_default();
    assert_eq!(members, vec!["b", "a"]);
    let b = v.get("b").and_then(Value::as_array).unwrap_or(&[]);
    assert_eq!(b[0], Value::Number(Number::Int(1)));
    assert_eq!(b[1].as_f64(), Some(-2.5));
    assert_eq!(b[2], Value::Number(Number::Float(300.0)));
    assert_eq!(b[3].as_bool(), Some(true));
    assert!(b[5].is_null());
    assert_eq!(v.get_path("a.s").and_then(Value::as_str), Some("x"));
}

#[test]
fn serializes_compactly_and_round_trips() {
    let text = r#"{"b":[1,-2.5,300.0,true,false,null],"a":{"s":"x"},"e":{},"f":[]}"#;
    assert_eq!(p(text).to_string(), text);
}

#[test]
fn large_integers_stay_exact_and_overflowing_ones_become_floats() {
    assert_eq!(p("9007199254740993").to_string(), "9007199254740993");
    assert_eq!(p("-9223372036854775808").as_i64(), Some(i64::MIN));
    assert_eq!(p("9223372036854775808"), Value::Number(Number::Float(9.223372036854776e18)));
    assert_eq!(p("1e300").to_string(), "1e300");
    assert!(parse_str("1e400").is_err(), "infinity has no JSON form");
}

#[test]
fn string_escapes_and_unicode_decode() {
    assert_eq!(p(r#""a\"b\\c\/d\b\f\n\r\t""#).as_str(), Some("a\"b\\c/d\u{8}\u{c}\n\r\t"));
    assert_eq!(p(r#""\u00e9\u4e2d""#).as_str(), Some("é中"));
    assert_eq!(p(r#""\ud83d\ude00""#).as_str(), Some("😀"));
    assert_eq!(p("\"raw é 😀\"").as_str(), Some("raw é 😀"));
}

#[test]
fn serialization_escapes_quotes_backslashes_and_control_characters_only() {
    let v = Value::from("q\"b\\n\nt\tc\u{1}é😀");
    assert_eq!(v.to_string(), "\"q\\\"b\\\\n\\nt\\tc\\u0001é😀\"");
    assert_eq!(p(&v.to_string()), v);
}

#[test]
fn rejects_malformed_text() {
    let bad = [
        "",
        "{",
        "[1,]",
        "{\"a\":1,}",
        "{a:1}",
        "01",
        "1.",
        "-",
        "1e",
        "tru",
        "nul",
        "\"unterminated",
        "\"bad \\x escape\"",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\ud800\\u0041\"",
        "\"\\u12\"",
        "\"tab\tinside\"",
        "1 2",
        "[1] x",
        "{\"a\" 1}",
    ];
    for text in bad {
        assert!(parse_str(text).is_err(), "{text:?} should be rejected");
    }
    assert!(parse(&[b'"', 0xff, b'"']).is_err(), "invalid UTF-8");
}

#[test]
fn nesting_is_bounded() {
    let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    assert!(parse_str(&ok).is_ok());
    let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
    assert_eq!(parse_str(&deep).map_err(|e| e.reason), Err("nesting too deep"));
    // Far deeper than any stack: rejected by the limit, not by overflowing.
    assert!(parse_str(&"{\"a\":".repeat(100_000)).is_err());
}

#[test]
fn duplicate_keys_read_the_last_and_insert_deduplicates() {
    let mut v = p(r#"{"a":1,"b":2,"a":3}"#);
    assert_eq!(v.get("a").and_then(Value::as_i64), Some(3));
    assert_eq!(v.insert("a", Value::from(9)), Some(Value::from(3)));
    assert_eq!(v.to_string(), r#"{"a":9,"b":2}"#);
}

#[test]
fn path_operations_create_replace_and_remove() {
    let mut v = p(r#"{"user":{"id":"u1","name":"Ann"},"x":1}"#);
    assert_eq!(v.set_path("user.name", Value::from("***")), Some(Value::from("Ann")));
    assert_eq!(v.set_path("geo.country", Value::from("FR")), None);
    assert_eq!(v.set_path("x.y", Value::from(true)), None, "a non-object intermediate is replaced");
    assert_eq!(v.remove_path("user.id"), Some(Value::from("u1")));
    assert_eq!(v.remove_path("nope.id"), None);
    assert_eq!(v.to_string(), r#"{"user":{"name":"***"},"x":{"y":true},"geo":{"country":"FR"}}"#);
    assert_eq!(Value::from(1).set_path("a", Value::Null), None, "non-objects are left alone");
}

#[test]
fn plain_string_compares_strings_by_text_and_others_by_json() {
    assert_eq!(p(r#""click""#).to_plain_string(), "click");
    assert_eq!(p("42").to_plain_string(), "42");
    assert_eq!(p("true").to_plain_string(), "true");
    assert_eq!(Value::from(f64::NAN), Value::Null);
}

#[test]
fn mutated_documents_never_panic_and_what_parses_round_trips() {
    let doc = br#"{"a":[1,-2.5e3,"x\u00e9\ud83d\ude00",{"b":null,"c":[true,false]}],"d":"\n\"q\""}"#;
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    let alphabet = b"{}[]\",:\\u0123456789eE.-+ tfnalrsx\xff\xc3";
    for _ in 0..20_000 {
        let mut buf = doc.to_vec();
        for _ in 0..(next() % 3 + 1) {
            let at = (next() as usize) % buf.len();
            buf[at] = alphabet[(next() as usize) % alphabet.len()];
        }
        if let Ok(value) = parse(&buf) {
            assert_eq!(parse_str(&value.to_string()).ok(), Some(value));
        }
    }
}

/// Documents and paths on which `find` must agree with `parse(..).get_path(..)`.
const FIND_CORPUS: &[&str] = &[
    r#"{"id":1,"user":"u1","action":"click","page":"/p1","pad":"xxxx"}"#,
    r#" { "a" : { "b" : [1, {"c": 2}], "c": {"d": "e\"\\\u00e9"} }, "z": null } "#,
    r#"{"a":{"b":1},"a":{"c":2}}"#,
    r#"{"a":{"b":1},"a":3}"#,
    r#"{"a":3,"a":{"b":1}}"#,
    r#"{"a\u002eb":1,"a":{"b":2},"\u0061ction":"view"}"#,
    r#"{"action":"cl\u0069ck","n":-0.5e-3,"t":true,"f":false,"big":123456789012345678901234567890}"#,
    r#"[{"action":"click"}]"#,
    r#""action""#,
    "42",
    "{}",
    r#"{"emoji":"\ud83d\ude00","k":"v"}"#,
    // Invalid: every one of these must be refused by both.
    "",
    "not json",
    r#"{"action":"click""#,
    r#"{"action":"click",}"#,
    r#"{"action":"click"} x"#,
    r#"{"a":[1,2,]}"#,
    r#"{"a":01}"#,
    r#"{"a":1.}"#,
    r#"{"a":1e}"#,
    r#"{"a":1e400}"#,
    r#"{"a":"\x"}"#,
    r#"{"a":"\ud800"}"#,
    r#"{"a":"\udc00"}"#,
    r#"{"a":"\ud800\u0041"}"#,
    "{\"a\":\"tab\there\"}",
    r#"{"a":tru}"#,
    r#"{a:1}"#,
    r#"{"a" 1}"#,
    r#"{"a":{"b":1}"#,
    r#"{"a":"\u12"}"#,
];

const FIND_PATHS: &[&str] =
    &["", "action", "a", "a.b", "a.c", "a.c.d", "a.b.c", "z", "n", "big", "emoji", "a.b", "x.y"];

#[test]
fn find_agrees_with_parse_and_get_path() {
    for doc in FIND_CORPUS {
        let parsed = parse(doc.as_bytes());
        for path in FIND_PATHS {
            let found = find(doc.as_bytes(), path);
            match (&parsed, &found) {
                (Ok(tree), Ok(raw)) => {
                    let expected = tree.get_path(path);
                    assert_eq!(raw.map(|r| r.to_value()).as_ref(), expected, "{doc:?} at {path:?}");
                }
                (Err(a), Err(b)) => assert_eq!(a.reason, b.reason, "{doc:?} at {path:?}"),
                _ => panic!("{doc:?} at {path:?}: parse {parsed:?}, find {found:?}"),
            }
        }
    }
    // An escaped key is compared decoded, never by its raw text.
    assert_eq!(find(br#"{"a\n":1}"#, "a\\n"), Ok(None));
    assert_eq!(find(br#"{"a\n":1}"#, "a\n").ok().flatten().map(|r| r.json()), Some("1"));
    let utf8 = find(b"{\"a\":\"\xff\"}", "a").expect_err("invalid UTF-8");
    assert_eq!(utf8.reason, "invalid UTF-8");
}

#[test]
fn find_returns_the_raw_text_and_typed_accessors() {
    let doc = br#"{"s":"plain","e":"a\"b","i":-12,"f":2.5,"x":1e2,"t":true,"n":null,"o":{"k":[1]}}"#;
    let get = |path: &str| find(doc, path).ok().flatten().unwrap_or_else(|| panic!("{path} present"));
    assert_eq!(get("s").as_str().as_deref(), Some("plain"));
    assert!(matches!(get("s").as_str(), Some(std::borrow::Cow::Borrowed(_))), "no escapes: borrowed");
    assert_eq!(get("e").as_str().as_deref(), Some("a\"b"));
    assert_eq!(get("e").json(), r#""a\"b""#);
    assert_eq!(get("i").as_i64(), Some(-12));
    assert_eq!(get("i").as_number(), Some(Number::Int(-12)));
    assert_eq!(get("f").as_f64(), Some(2.5));
    assert_eq!(get("f").as_i64(), None);
    assert_eq!(get("x").as_i64(), Some(100));
    assert_eq!(get("t").as_bool(), Some(true));
    assert!(get("n").is_null());
    assert_eq!(get("o").json(), r#"{"k":[1]}"#);
    assert_eq!(get("o").as_str(), None);
    assert_eq!(get("s").as_f64(), None);
    assert_eq!(find(doc, "o.k.0"), Ok(None), "paths name object keys only");
}

#[test]
fn find_bounds_nesting_like_parse() {
    let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
    assert_eq!(find(deep.as_bytes(), "a").expect_err("too deep").reason, "nesting too deep");
    let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    assert_eq!(find(ok.as_bytes(), "a"), Ok(None));
    let nested = format!("{}1{}", r#"{"a":"#.repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
    let path = vec!["a"; MAX_DEPTH].join(".");
    assert_eq!(find(nested.as_bytes(), &path).ok().flatten().map(|r| r.json()), Some("1"));
}

/// Random mutations of valid documents: `find` never panics and accepts exactly what `parse` does.
#[test]
fn find_accepts_exactly_what_parse_accepts_under_mutation() {
    let mut next = xorshift(0x0f1e_2d3c_4b5a_6978);
    let alphabet = b"{}[]\",:\\u0123456789abcdefntrl.eE+- \t";
    for round in 0..30_000 {
        let base = FIND_CORPUS[round % 12].as_bytes();
        let mut doc = base.to_vec();
        for _ in 0..1 + next() % 3 {
            let at = (next() as usize) % (doc.len() + 1);
            let byte = alphabet[(next() as usize) % alphabet.len()];
            match next() % 3 {
                0 if at < doc.len() => doc[at] = byte,
                1 if at < doc.len() => {
                    doc.remove(at);
                }
                _ => doc.insert(at, byte),
            }
        }
        let path = FIND_PATHS[(next() as usize) % FIND_PATHS.len()];
        match (parse(&doc), find(&doc, path)) {
            (Ok(tree), Ok(raw)) => assert_eq!(raw.map(|r| r.to_value()).as_ref(), tree.get_path(path)),
            (Err(_), Err(_)) => {}
            (parsed, found) => {
                panic!("{:?} at {path:?}: parse {parsed:?}, find {found:?}", String::from_utf8_lossy(&doc))
            }
        }
    }
}

#[test]
fn find_word_at_a_time_scan_stops_at_every_special_byte() {
    // Each byte value at each position of a long string: quotes, backslashes and control
    // characters must be seen wherever they fall in an 8-byte word.
    for byte in 0u8..=255 {
        for at in 0..17 {
            let mut doc = br#"{"k":"0123456789abcdefghij"}"#.to_vec();
            doc[6 + at] = byte;
            let parsed = parse(&doc);
            let found = find(&doc, "k");
            match (&parsed, &found) {
                (Ok(tree), Ok(raw)) => assert_eq!(raw.map(|r| r.to_value()).as_ref(), tree.get("k")),
                (Err(a), Err(b)) => assert_eq!(a, b, "byte {byte:#x} at {at}"),
                _ => panic!("byte {byte:#x} at {at}: parse {parsed:?}, find {found:?}"),
            }
        }
    }
}

/// The fast path of `find` and the original scanner (`find_checked`) agree on every document:
/// same answer when valid, both refuse when not. Mutations here include non-ASCII bytes, which
/// the fast path validates inside strings only.
#[test]
fn find_fast_path_agrees_with_the_checked_scanner() {
    use super::find::find_checked;
    let mut next = xorshift(0x5eed_f00d_1234_5678);
    let alphabet: &[u8] = b"{}[]\",:\\u0123456789abcdefntrl.eE+- \t\x80\xbf\xc2\xdf\xe0\xed\xef\xf0\xf4\xf5\xff";
    let mut corpus: Vec<Vec<u8>> = FIND_CORPUS.iter().map(|d| d.as_bytes().to_vec()).collect();
    corpus.push("{\"k\":\"é€😀\",\"k2\":\"ascii then é\"}".as_bytes().to_vec());
    for round in 0..60_000 {
        let mut doc = corpus[round % corpus.len()].clone();
        for _ in 0..1 + next() % 3 {
            let at = (next() as usize) % (doc.len() + 1);
            let byte = alphabet[(next() as usize) % alphabet.len()];
            match next() % 3 {
                0 if at < doc.len() => doc[at] = byte,
                1 if at < doc.len() => {
                    doc.remove(at);
                }
                _ => doc.insert(at, byte),
            }
        }
        let path = FIND_PATHS[(next() as usize) % FIND_PATHS.len()];
        let fast = super::fast::find(&doc, path.as_bytes());
        match (&fast, find_checked(&doc, path)) {
            (super::fast::Found::At(hit), Ok(Some(raw))) => {
                let text = &doc[hit.range.clone()];
                assert_eq!(text, raw.json().as_bytes());
                // "Plain string" is a promise: quoted, and no backslash inside.
                if hit.plain_string {
                    assert!(text.len() >= 2 && text[0] == b'"' && text[text.len() - 1] == b'"', "{text:?}");
                    assert!(!text[1..text.len() - 1].contains(&b'\\'), "{text:?}");
                }
            }
            (super::fast::Found::Absent, Ok(None)) | (super::fast::Found::Invalid, Err(_)) => {}
            (fast, checked) => {
                panic!("{:?} at {path:?}: fast {fast:?}, checked {checked:?}", String::from_utf8_lossy(&doc))
            }
        }
        // Whatever path answers, `find` and `find_path` report what the checked scanner reports.
        assert_eq!(find(&doc, path), find_checked(&doc, path));
        assert_eq!(find_path(&doc, &Path::new(path)), find_checked(&doc, path));
    }
}

/// Multi-byte UTF-8 inside strings, at every alignment: the fast path accepts exactly what
/// `std::str::from_utf8` accepts (overlong forms, surrogates, out-of-range and truncated
/// sequences refused).
#[test]
fn find_fast_path_validates_utf8_like_std() {
    let leads = [0xc1u8, 0xc2, 0xdf, 0xe0, 0xe1, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf4, 0xf5];
    let seconds = [0x7fu8, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0];
    for lead in leads {
        for second in seconds {
            for third in [0x80u8, 0xbf, 0x41] {
                for at in 0..10 {
                    let mut content = b"0123456789abcdef".to_vec();
                    let sequence = [lead, second, third, 0x80];
                    content.splice(at..at, sequence.iter().copied());
                    let mut doc = br#"{"k":""#.to_vec();
                    doc.extend_from_slice(&content);
                    doc.extend_from_slice(br#""}"#);
                    let valid = std::str::from_utf8(&content).is_ok();
                    let fast = super::fast::find(&doc, b"k");
                    assert_eq!(
                        !matches!(fast, super::fast::Found::Invalid),
                        valid,
                        "{:x?} at {at}: fast {fast:?}",
                        sequence
                    );
                }
            }
        }
    }
}

/// `find_path` answers exactly as `find` for every corpus document and path (mutated documents:
/// `find_fast_path_agrees_with_the_checked_scanner`).
#[test]
fn find_path_agrees_with_find() {
    let paths: Vec<Path> = FIND_PATHS.iter().map(|p| Path::new(p)).collect();
    for doc in FIND_CORPUS {
        for (text, path) in FIND_PATHS.iter().zip(&paths) {
            assert_eq!(find_path(doc.as_bytes(), path), find(doc.as_bytes(), text), "{doc:?} at {text:?}");
            assert_eq!(path.as_str(), *text);
        }
    }
    let escaped = Path::new("a\\n");
    assert_eq!(find_path(br#"{"a\n":1}"#, &escaped), Ok(None));
    let dotted = Path::new("a\n.b");
    assert_eq!(find_path(br#"{"a\n":{"b":2}}"#, &dotted).ok().flatten().map(|r| r.json()), Some("2"));
    assert_eq!(find_path(br#"{"a\u000a":{"b":2}}"#, &dotted).ok().flatten().map(|r| r.json()), Some("2"));
}

/// Strings that end within the last eight bytes of a document, for every document length and
/// every position of a special byte: the fast path's last, shifted word finds the same stops.
#[test]
fn find_fast_path_handles_strings_ending_near_the_end_of_short_and_long_documents() {
    for len in 0..24 {
        let content: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        for special in [None, Some(b'"'), Some(b'\\'), Some(0x01), Some(0xc3), Some(b'x')] {
            for at in 0..len.max(1) {
                let mut content = content.clone();
                if let (Some(byte), true) = (special, at < content.len()) {
                    content[at] = byte;
                }
                for wrap in [&b"\"\""[..], &b"[\"\"]"[..], &b"{\"k\":\"\"}"[..]] {
                    let split = wrap.len() - wrap.iter().rev().position(|&c| c == b'"').unwrap_or(0) - 1;
                    let mut doc = wrap[..split].to_vec();
                    doc.extend_from_slice(&content);
                    doc.extend_from_slice(&wrap[split..]);
                    let fast = super::fast::find(&doc, b"");
                    let checked = super::find::find_checked(&doc, "");
                    match (&fast, &checked) {
                        (super::fast::Found::At(hit), Ok(Some(raw))) => {
                            assert_eq!(&doc[hit.range.clone()], raw.as_bytes())
                        }
                        (super::fast::Found::Invalid, Err(_)) => {}
                        _ => panic!("{:?}: fast {fast:?}, checked {checked:?}", String::from_utf8_lossy(&doc)),
                    }
                }
            }
        }
    }
}

/// The documents the `json-find` tests run through both paths: the find corpus, values that
/// are tricky for a host's answer (escapes, non-ASCII, nesting, repeated keys, invalid text,
/// the empty value), and mutations of them.
fn batch_corpus() -> Vec<Vec<u8>> {
    let mut docs: Vec<Vec<u8>> = FIND_CORPUS.iter().map(|d| d.as_bytes().to_vec()).collect();
    for extra in [
        &br#"{"action":"cl\"ick","a":{"b":{"c":"\u00e9t\u00e9"}}}"#[..],
        br#"{"action":"caf\xc3\xa9","a":[]}"#,
        b"{\"action\":\"\xff\"}",
        br#"{"action":"click" , "a" : { "b" : 1 } }"#,
        br#"{"action":{"nested":"click"},"a":{"b":[{"c":1}]}}"#,
        br#"{"a":{"b":1},"a":{"b":2},"action":null}"#,
        br#"{"action":"click",}"#,
        b"",
        br#"{"action":"click"}   "#,
        br#"{"action":1e400}"#,
        br#"{"action":"\ud800"}"#,
    ] {
        docs.push(extra.to_vec());
    }
    let base = docs.len();
    let mut next = xorshift(0x1234_5678_9abc_def1);
    let alphabet = b"{}[]\",:\\u0123456789abcdefntrl.eE+- \t\xc3\xa9";
    for round in 0..2_000 {
        let mut doc = docs[round % base].clone();
        for _ in 0..1 + next() % 3 {
            let at = (next() as usize) % (doc.len() + 1);
            let byte = alphabet[(next() as usize) % alphabet.len()];
            match next() % 3 {
                0 if at < doc.len() => doc[at] = byte,
                1 if at < doc.len() => {
                    doc.remove(at);
                }
                _ => doc.insert(at, byte),
            }
        }
        docs.push(doc);
    }
    docs
}

/// What a lookup answers, in a form that also tells where the field lies in the value (its
/// offset) and whether it is known to be a plain string: a host answer that found the same
/// text elsewhere, or lost the hint, would differ.
fn answer(value: &[u8], found: Result<Option<Raw<'_>>, JsonError>) -> String {
    match found {
        Ok(Some(raw)) => {
            let at = raw.as_bytes().as_ptr() as usize - value.as_ptr() as usize;
            format!("at {at}: {:?} plain {:?}", raw.as_bytes(), raw.plain_str_bytes())
        }
        other => format!("{other:?}"),
    }
}

/// The batch corpus as one encoded input batch, a tombstone after every `tombstone_every`-th
/// value (counting from the first).
fn encoded_corpus_batch(tombstone_every: usize) -> Vec<u8> {
    let mut records: Vec<crate::Record> = Vec::new();
    for (i, doc) in batch_corpus().into_iter().enumerate() {
        records.push(crate::Record { value: Some(doc), offset: i as i64, ..crate::Record::default() });
        if i % tombstone_every == 0 {
            records.push(crate::Record::default());
        }
    }
    crate::wire::encode_input(0, &records).expect("encodes")
}

/// With the `json-find` extension on, `find` and `find_path` on the values of the batch are
/// answered by the (simulated) host in one call per path, and answer exactly as the scan does:
/// in order, out of order, by text and by `Path`, for values outside the batch, past the
/// number of paths a batch locates, and when the host refuses.
#[test]
fn batch_lookups_answer_as_the_scan_does() {
    use crate::host::fake::with_host;
    let encoded = encoded_corpus_batch(7);
    let refs = crate::wire::decode_input_refs(&encoded).expect("decodes");
    let values: Vec<&[u8]> = refs.iter().filter_map(|r| r.value).collect();
    let paths: Vec<Path> = FIND_PATHS.iter().map(|p| Path::new(p)).collect();
    // Paths compare by text; each `Path::new` is its own path for the lookup (clones share).
    assert_eq!(paths[3], Path::new("a.b"));
    assert_ne!(paths[3], paths[4]);
    let scanned = |value: &[u8], i: usize| answer(value, find_path(value, &paths[i]));
    let expected: Vec<Vec<String>> = values.iter().map(|v| (0..paths.len()).map(|i| scanned(v, i)).collect()).collect();

    for refuses in [false, true] {
        with_host(|h| {
            h.json_find_calls = 0;
            h.json_find_refuses = refuses;
        });
        let scope = super::batch::enter(&refs, true, false);
        for (value, wanted) in values.iter().zip(&expected) {
            for (i, path) in paths.iter().enumerate() {
                assert_eq!(answer(value, find_path(value, path)), wanted[i], "{value:?} at {:?}", FIND_PATHS[i]);
                assert_eq!(answer(value, find(value, FIND_PATHS[i])), wanted[i], "{value:?} at {:?}", FIND_PATHS[i]);
            }
        }
        for (value, wanted) in values.iter().zip(&expected).rev() {
            assert_eq!(answer(value, find_path(value, &paths[1])), wanted[1], "{value:?}, backwards");
        }
        // Paths built per record (new ids, texts that may reuse a freed path's memory).
        for (value, wanted) in values.iter().zip(&expected) {
            for i in [2, 1, 5] {
                assert_eq!(answer(value, find_path(value, &Path::new(FIND_PATHS[i]))), wanted[i], "{value:?}");
            }
        }
        let copy = values[0].to_vec();
        assert_eq!(answer(&copy, find_path(&copy, &paths[1])), scanned(&copy, 1), "a value outside the batch");
        drop(scope);
        // One call per distinct path, up to the four a batch locates ("a.b" repeats).
        assert_eq!(with_host(|h| h.json_find_calls), 4, "refuses {refuses}");
        // After the batch, nothing is asked.
        assert_eq!(answer(values[0], find_path(values[0], &paths[1])), expected[0][1]);
        assert_eq!(with_host(|h| h.json_find_calls), 4);
    }
    with_host(|h| h.json_find_refuses = false);
}

/// `StrEquals::test` answers as `find_path` + `Raw::str_equals` on the mutated corpus: scanned
/// (no batch), answered by the (simulated) host with `json-equals` in one call per condition,
/// out of order, on a value outside the batch, past the conditions a batch answers, with the
/// host refusing, and with only `json-find` on.
#[test]
fn str_equals_answers_as_find_and_compare() {
    use crate::host::fake::with_host;
    let encoded = encoded_corpus_batch(5);
    let refs = crate::wire::decode_input_refs(&encoded).expect("decodes");
    let values: Vec<&[u8]> = refs.iter().filter_map(|r| r.value).collect();
    let tests: Vec<StrEquals> = [("a.b", "x"), ("action", "click"), ("a", "caf\u{e9}"), ("", "x"), ("c", "")]
        .iter()
        .map(|(path, text)| StrEquals::new(Path::new(path), text))
        .collect();
    let reference = |value: &[u8], test: &StrEquals| {
        find_path(value, test.path()).map(|field| field.map(|raw| raw.str_equals(test.text())))
    };
    let expected: Vec<Vec<_>> = values.iter().map(|v| tests.iter().map(|t| reference(v, t)).collect()).collect();
    assert!(expected.iter().flatten().any(|answer| *answer == Ok(Some(true))), "the corpus has matches");
    assert!(expected.iter().flatten().any(|answer| *answer == Ok(Some(false))));
    for (find_on, equals_on, refuses) in
        [(false, false, false), (false, true, false), (true, true, false), (true, true, true), (true, false, false)]
    {
        let setting = format!("find {find_on}, equals {equals_on}, refuses {refuses}");
        with_host(|h| {
            h.json_equals_calls = 0;
            h.json_find_refuses = refuses;
        });
        let scope = super::batch::enter(&refs, find_on, equals_on);
        for (value, wanted) in values.iter().zip(&expected) {
            for (test, wanted) in tests.iter().zip(wanted) {
                assert_eq!(&test.test(value), wanted, "{value:?} {test:?}, {setting}");
            }
        }
        for (value, wanted) in values.iter().zip(&expected).rev() {
            assert_eq!(tests[1].test(value), wanted[1], "{value:?}, backwards, {setting}");
        }
        let copy = values[0].to_vec();
        assert_eq!(tests[0].test(&copy), expected[0][0], "a value outside the batch, {setting}");
        drop(scope);
        // One call per condition, up to the four a batch answers.
        let calls = if equals_on { 4 } else { 0 };
        assert_eq!(with_host(|h| h.json_equals_calls), calls, "{setting}");
    }
    with_host(|h| h.json_find_refuses = false);
    // The host's bytes mean what they say; one it cannot send is not trusted.
    let doc = br#"{"a":"x","b":"y","c":1}"#;
    let (a, b, c) = (Path::new("a"), Path::new("b"), Path::new("c"));
    use super::locate::{equals, EQUALS_ABSENT, EQUALS_FALSE, EQUALS_INVALID, EQUALS_TRUE};
    assert_eq!(equals(doc, &a, b"x"), EQUALS_TRUE);
    assert_eq!(equals(doc, &b, b"x"), EQUALS_FALSE);
    assert_eq!(equals(doc, &c, b"1"), EQUALS_FALSE, "a number is not a string");
    assert_eq!(equals(doc, &Path::new("d"), b"x"), EQUALS_ABSENT);
    assert_eq!(equals(b"{", &a, b"x"), EQUALS_INVALID);
}

/// The host's entries decode only when they can be right; anything else is scanned instead.
#[test]
fn impossible_host_entries_are_not_trusted() {
    use super::fast::{Found, Hit};
    use super::locate::{decode, locate, ABSENT, FOUND, FOUND_PLAIN_STRING, INVALID};
    assert_eq!(decode([ABSENT, 0, 0], 5), Some(Found::Absent));
    assert_eq!(decode([INVALID, 0, 0], 5), Some(Found::Invalid));
    assert_eq!(decode([FOUND, 1, 5], 5), Some(Found::At(Hit { range: 1..5, plain_string: false })));
    assert_eq!(decode([FOUND_PLAIN_STRING, 0, 2], 5), Some(Found::At(Hit { range: 0..2, plain_string: true })));
    assert_eq!(decode([FOUND, 1, 6], 5), None, "past the end");
    assert_eq!(decode([FOUND, 3, 3], 5), None, "a JSON value is never empty");
    assert_eq!(decode([FOUND, 4, 2], 5), None);
    assert_eq!(decode([9, 0, 0], 5), None, "unknown status");
    let doc = br#"{"a":{"b":"x"},"c":[1]}"#;
    assert_eq!(locate(doc, &Path::new("a.b")), [FOUND_PLAIN_STRING, 10, 13]);
    assert_eq!(locate(doc, &Path::new("c")), [FOUND, 19, 22]);
    assert_eq!(locate(doc, &Path::new("c.d")), [ABSENT, 0, 0]);
    assert_eq!(locate(b"{", &Path::new("c")), [INVALID, 0, 0]);
}

/// A seeded xorshift64 generator: every mutation test reproduces from its seed.
fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
