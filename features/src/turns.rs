//! Decoding the CSV's JSON-list text fields (`prompt`, `response_a`, `response_b`).
//!
//! Each field is a JSON list with one string per conversation turn, e.g. `["Hi","OK, and?"]`.
//! Real rows contain `null` items and lone UTF-16 surrogate escapes (`"\ud83d"`) that strict
//! JSON decoders reject, so this module has its own small, tolerant decoder: it never panics
//! and never drops text.

use std::fmt;

/// The decoded turns of one field, plus what (if anything) was irregular about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turns {
    pub turns: Vec<String>,
    pub issue: Option<TurnsIssue>,
}

/// Irregularities found while decoding. When several occur, the most severe is reported:
/// `NotAList` over `LoneSurrogates` over `NullItems`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnsIssue {
    /// This many list items were `null`; each became an empty turn.
    NullItems(usize),
    /// This many `\uXXXX` escapes were unpaired surrogates; each became U+FFFD.
    LoneSurrogates(usize),
    /// The value was not a JSON list of strings/nulls; the raw text was kept as one turn.
    NotAList,
}

impl fmt::Display for TurnsIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TurnsIssue::NullItems(n) => write!(f, "{n} null turn(s) kept as empty text"),
            TurnsIssue::LoneSurrogates(n) => {
                write!(f, "{n} lone UTF-16 surrogate escape(s) replaced by U+FFFD")
            }
            TurnsIssue::NotAList => {
                write!(
                    f,
                    "not a JSON list of strings; raw text kept as a single turn"
                )
            }
        }
    }
}

/// Decodes a JSON list of strings (or nulls) into turns; see the module docs for tolerance rules.
pub fn parse_turns(raw: &str) -> Turns {
    match decode_list(raw) {
        Some(decoded) => {
            let issue = if decoded.lone_surrogates > 0 {
                Some(TurnsIssue::LoneSurrogates(decoded.lone_surrogates))
            } else if decoded.null_items > 0 {
                Some(TurnsIssue::NullItems(decoded.null_items))
            } else {
                None
            };
            Turns {
                turns: decoded.turns,
                issue,
            }
        }
        None => Turns {
            turns: vec![raw.to_owned()],
            issue: Some(TurnsIssue::NotAList),
        },
    }
}

struct DecodedList {
    turns: Vec<String>,
    null_items: usize,
    lone_surrogates: usize,
}

/// Byte cursor over the raw field; every method returns `None` on malformed input.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

fn decode_list(raw: &str) -> Option<DecodedList> {
    let mut cursor = Cursor { text: raw, pos: 0 };
    let mut decoded = DecodedList {
        turns: Vec::new(),
        null_items: 0,
        lone_surrogates: 0,
    };
    cursor.skip_whitespace();
    cursor.expect(b'[')?;
    cursor.skip_whitespace();
    if cursor.peek() == Some(b']') {
        cursor.pos += 1;
    } else {
        loop {
            cursor.skip_whitespace();
            match cursor.peek()? {
                b'"' => {
                    let turn = cursor.string(&mut decoded.lone_surrogates)?;
                    decoded.turns.push(turn);
                }
                b'n' if cursor.text[cursor.pos..].starts_with("null") => {
                    cursor.pos += 4;
                    decoded.null_items += 1;
                    decoded.turns.push(String::new());
                }
                _ => return None,
            }
            cursor.skip_whitespace();
            match cursor.next_byte()? {
                b',' => continue,
                b']' => break,
                _ => return None,
            }
        }
    }
    cursor.skip_whitespace();
    (cursor.pos == raw.len()).then_some(decoded)
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn next_byte(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next_byte()? == byte).then_some(())
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Decodes a JSON string starting at the opening quote.
    fn string(&mut self, lone_surrogates: &mut usize) -> Option<String> {
        self.expect(b'"')?;
        let bytes = self.text.as_bytes();
        let mut out = String::new();
        loop {
            // Copy the run of plain bytes up to the next quote or backslash in one go.
            let run_end = bytes[self.pos..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\')
                .map(|offset| self.pos + offset)?;
            // Both delimiters are ASCII, so the run ends on a char boundary.
            out.push_str(&self.text[self.pos..run_end]);
            self.pos = run_end + 1;
            if bytes[run_end] == b'"' {
                return Some(out);
            }
            match self.next_byte()? {
                b'"' => out.push('"'),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\u{8}'),
                b'f' => out.push('\u{c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' => out.push(self.unicode_escape(lone_surrogates)?),
                _ => return None,
            }
        }
    }

    /// Decodes the rest of a `\uXXXX` escape (the `\u` is consumed), pairing surrogates.
    fn unicode_escape(&mut self, lone_surrogates: &mut usize) -> Option<char> {
        let unit = self.hex4()?;
        match unit {
            0xD800..=0xDBFF => {
                // A high surrogate needs a following `\uDC00..\uDFFF` escape.
                let rest = &self.text.as_bytes()[self.pos..];
                if rest.starts_with(b"\\u") {
                    let saved = self.pos;
                    self.pos += 2;
                    if let Some(low @ 0xDC00..=0xDFFF) = self.hex4() {
                        let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                        return char::from_u32(code);
                    }
                    // Not a low surrogate: leave that escape to be decoded on its own.
                    self.pos = saved;
                }
                *lone_surrogates += 1;
                Some(char::REPLACEMENT_CHARACTER)
            }
            0xDC00..=0xDFFF => {
                *lone_surrogates += 1;
                Some(char::REPLACEMENT_CHARACTER)
            }
            _ => char::from_u32(unit),
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.text.get(self.pos..self.pos + 4)?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.pos += 4;
        u32::from_str_radix(digits, 16).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(turns: &[&str]) -> Turns {
        Turns {
            turns: turns.iter().map(|t| t.to_string()).collect(),
            issue: None,
        }
    }

    #[test]
    fn normal_list() {
        assert_eq!(parse_turns(r#"["Hi","OK, and?"]"#), ok(&["Hi", "OK, and?"]));
        assert_eq!(parse_turns(" [ \"a\" ,\n\"b\" ] "), ok(&["a", "b"]));
        assert_eq!(parse_turns("[]"), ok(&[]));
    }

    #[test]
    fn escapes_quotes_newlines_and_unicode() {
        let parsed = parse_turns(r#"["say \"hi\"\nthen\\go\t\/ \u00e9 \u4e2d", "x"]"#);
        assert_eq!(parsed, ok(&["say \"hi\"\nthen\\go\t/ é 中", "x"]));
        // Raw non-ASCII passes through untouched.
        assert_eq!(parse_turns(r#"["héllo 😀"]"#), ok(&["héllo 😀"]));
    }

    #[test]
    fn null_items_become_empty_turns() {
        let parsed = parse_turns(r#"["a", null, "b", null]"#);
        assert_eq!(parsed.turns, vec!["a", "", "b", ""]);
        assert_eq!(parsed.issue, Some(TurnsIssue::NullItems(2)));
        assert_eq!(parse_turns("[null]").turns, vec![""]);
    }

    #[test]
    fn lone_surrogates_become_replacement_chars() {
        let parsed = parse_turns(r#"["x\ud83d y", "\ude00", "\ud83d\u0041"]"#);
        assert_eq!(parsed.turns, vec!["x\u{FFFD} y", "\u{FFFD}", "\u{FFFD}A"]);
        assert_eq!(parsed.issue, Some(TurnsIssue::LoneSurrogates(3)));
        // A lone surrogate at the very end of a string.
        let parsed = parse_turns(r#"["end\ud83d"]"#);
        assert_eq!(parsed.turns, vec!["end\u{FFFD}"]);
        assert_eq!(parsed.issue, Some(TurnsIssue::LoneSurrogates(1)));
    }

    #[test]
    fn valid_surrogate_pair_decodes_to_the_char() {
        assert_eq!(parse_turns(r#"["\ud83d\ude00!"]"#), ok(&["😀!"]));
        // Agrees with serde_json on valid input.
        let raw = r#"["\ud83d\ude00 \"q\" \n", "b"]"#;
        let strict: Vec<String> = serde_json::from_str(raw).unwrap();
        assert_eq!(parse_turns(raw).turns, strict);
    }

    #[test]
    fn non_lists_are_kept_whole() {
        for raw in [
            "hello",
            r#""just a string""#,
            r#"["unterminated"#,
            r#"["a", 3]"#,
            r#"["a"] trailing"#,
            r#"["bad \x escape"]"#,
            r#"["short \u12"]"#,
            r#"{"a": "b"}"#,
            "",
        ] {
            let parsed = parse_turns(raw);
            assert_eq!(parsed.turns, vec![raw.to_string()], "{raw}");
            assert_eq!(parsed.issue, Some(TurnsIssue::NotAList), "{raw}");
        }
    }

    #[test]
    fn issues_display_readably() {
        assert_eq!(
            TurnsIssue::NullItems(2).to_string(),
            "2 null turn(s) kept as empty text"
        );
        assert!(TurnsIssue::NotAList.to_string().contains("single turn"));
    }
}
