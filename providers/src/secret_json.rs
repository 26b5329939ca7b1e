//! A JSON object of string values, parsed into zeroizing memory.
//!
//! serde_json unescapes a string that holds an escape into a growing scratch buffer that it
//! frees without wiping, so a secret with a quote, a backslash or a newline (a PEM key) left
//! plaintext in freed memory every time a sealed secret was opened. This parser writes each
//! string once, into a zeroizing buffer allocated at the string's escaped length (a string
//! unescaped is never longer than its escaped form, so the buffer never grows), and accepts
//! exactly what serde_json accepts as a `BTreeMap<String, String>`: the `secret_fields` fuzz
//! target compares the two on every input.

use zeroize::{Zeroize, Zeroizing};

/// The input is not a JSON object whose values are all strings.
#[derive(Debug)]
pub(crate) struct Malformed;

/// One member of the object: name and value, unescaped.
pub(crate) type Member = (Zeroizing<String>, Zeroizing<String>);

/// The members of the object in `bytes`, in order (duplicates kept: the caller's map keeps
/// the last, as serde_json's does). Every string is valid UTF-8.
pub(crate) fn string_members(bytes: &[u8]) -> Result<Vec<Member>, Malformed> {
    let mut c = Cursor { b: bytes, i: 0 };
    let mut members = Vec::new();
    c.ws();
    c.eat(b'{')?;
    c.ws();
    if c.peek() == Some(b'}') {
        c.i += 1;
    } else {
        loop {
            let name = c.string()?;
            c.ws();
            c.eat(b':')?;
            c.ws();
            let value = c.string()?;
            members.push((name, value));
            c.ws();
            match c.peek() {
                Some(b',') => {
                    c.i += 1;
                    c.ws();
                }
                Some(b'}') => {
                    c.i += 1;
                    break;
                }
                _ => return Err(Malformed),
            }
        }
    }
    c.ws();
    if c.i == bytes.len() {
        Ok(members)
    } else {
        Err(Malformed)
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// JSON whitespace: space, tab, line feed, carriage return.
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Result<(), Malformed> {
        if self.peek() == Some(byte) {
            self.i += 1;
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    /// One string literal, unescaped. Runs without escapes are found with `memchr` and
    /// copied whole (a secret is mostly such a run).
    fn string(&mut self) -> Result<Zeroizing<String>, Malformed> {
        self.eat(b'"')?;
        let rest = self.b.get(self.i..).ok_or(Malformed)?;
        // Its extent: up to the first quote that no backslash escapes.
        let mut end = 0;
        loop {
            let from = rest.get(end..).ok_or(Malformed)?;
            end += memchr::memchr2(b'"', b'\\', from).ok_or(Malformed)?;
            if rest.get(end) == Some(&b'"') {
                break;
            }
            end += 2;
        }
        let raw = rest.get(..end).ok_or(Malformed)?;
        let mut out = Zeroizing::new(Vec::with_capacity(raw.len()));
        let mut k = 0;
        loop {
            let tail = raw.get(k..).unwrap_or_default();
            let plain = tail
                .get(..memchr::memchr(b'\\', tail).unwrap_or(tail.len()))
                .unwrap_or_default();
            // Control characters must be escaped (folded, not searched: no early exit).
            if plain.iter().fold(false, |bad, b| bad | (*b < 0x20)) {
                return Err(Malformed);
            }
            out.extend_from_slice(plain);
            k += plain.len();
            if k >= raw.len() {
                break;
            }
            // `raw[k]` is a backslash.
            let escape = raw.get(k + 1).copied().ok_or(Malformed)?;
            k += 2;
            match escape {
                b'"' | b'\\' | b'/' => out.push(escape),
                b'b' => out.push(0x08),
                b'f' => out.push(0x0c),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'u' => {
                    let (c, used) = unicode_escape(raw.get(k..).unwrap_or_default())?;
                    k += used;
                    let mut utf8 = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                    utf8.zeroize();
                }
                _ => return Err(Malformed),
            }
        }
        // Escapes always produce whole characters, so the result is valid exactly when the
        // raw bytes between them are. Validated once, and the buffer moves into the string
        // (no copy); refused bytes are wiped on the way out too.
        let text = match String::from_utf8(std::mem::take(&mut *out)) {
            Ok(text) => Zeroizing::new(text),
            Err(e) => {
                drop(Zeroizing::new(e.into_bytes()));
                return Err(Malformed);
            }
        };
        self.i += end + 1;
        Ok(text)
    }
}

/// The character of `XXXX` (after `\u`), or of a surrogate pair `XXXX\uYYYY`; and how many
/// bytes of `rest` it used. A lone surrogate is refused, as serde_json refuses it.
fn unicode_escape(rest: &[u8]) -> Result<(char, usize), Malformed> {
    let first = hex4(rest.get(..4))?;
    let code = match first {
        0xD800..=0xDBFF => {
            if rest.get(4..6) != Some(b"\\u".as_slice()) {
                return Err(Malformed);
            }
            let second = hex4(rest.get(6..10))?;
            if !(0xDC00..=0xDFFF).contains(&second) {
                return Err(Malformed);
            }
            return char::from_u32(0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00))
                .map(|c| (c, 10))
                .ok_or(Malformed);
        }
        0xDC00..=0xDFFF => return Err(Malformed),
        code => code,
    };
    char::from_u32(code).map(|c| (c, 4)).ok_or(Malformed)
}

fn hex4(digits: Option<&[u8]>) -> Result<u32, Malformed> {
    let digits = digits.ok_or(Malformed)?;
    digits.iter().try_fold(0u32, |acc, d| {
        let v = char::from(*d).to_digit(16).ok_or(Malformed)?;
        Ok((acc << 4) | v)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    type Parsed = Option<BTreeMap<String, String>>;

    /// What serde_json makes of `input` as a map of strings, and what this parser makes.
    fn both(input: &[u8]) -> (Parsed, Parsed) {
        let theirs = serde_json::from_slice::<BTreeMap<String, String>>(input).ok();
        let ours = string_members(input).ok().map(|members| {
            members
                .into_iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        });
        (theirs, ours)
    }

    #[test]
    fn agrees_with_serde_json() {
        let cases: &[&[u8]] = &[
            br#"{}"#,
            b" \t\r\n{ } \n",
            br#"{"a":"b"}"#,
            br#"{"a" : "b" , "c":"d"}"#,
            br#"{"a":"x\"y\\z\/\b\f\n\r\t"}"#,
            br#"{"a":"\u0041\u00e9\u20ac\ud83d\ude00"}"#,
            br#"{"\u0061":"1","a":"2"}"#,
            "{\"a\":\"caf\u{e9} \u{1f600}\"}".as_bytes(),
            br#"{"a":"\ud83d"}"#,
            br#"{"a":"\ude00"}"#,
            br#"{"a":"\ud83d\u0041"}"#,
            br#"{"a":"\ud83dx"}"#,
            br#"{"a":"\u12"}"#,
            br#"{"a":"\u12g4"}"#,
            br#"{"a":"\x"}"#,
            b"{\"a\":\"tab\there\"}",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":\"\xe2\x82\"}",
            br#"{"a":1}"#,
            br#"{"a":"b",}"#,
            br#"{"a":"b"} x"#,
            br#"{"a":"b""#,
            br#"{"a":"b\"#,
            br#"{"a""b"}"#,
            br#"["a"]"#,
            br#"{,}"#,
            br#""#,
            br#"{"a":"b"}}"#,
        ];
        for case in cases {
            let (theirs, ours) = both(case);
            assert_eq!(theirs, ours, "{}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn a_value_never_outgrows_its_first_buffer() {
        let input = br#"{"k":"\ud83d\ude00\n\"\\plain\u00e9"}"#;
        let members = string_members(input).unwrap();
        let (_, value) = &members[0];
        // Allocated at the escaped length, and never reallocated.
        assert_eq!(value.capacity(), r#"\ud83d\ude00\n\"\\plain\u00e9"#.len());
        assert_eq!(value.as_str(), "\u{1f600}\n\"\\plain\u{e9}");
    }
}
