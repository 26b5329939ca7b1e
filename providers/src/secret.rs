//! Secret field maps held only in zeroizing memory.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// Why secret fields could not be parsed. Carries no value, only what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretFieldsError {
    /// Not a JSON object whose values are all strings.
    NotAnObjectOfStrings,
    /// A name breaks the field-name rule (the rule, as [`validate_field_name`] states it).
    BadName(String),
}

impl fmt::Display for SecretFieldsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretFieldsError::NotAnObjectOfStrings => {
                f.write_str("secret fields must be a JSON object of strings")
            }
            SecretFieldsError::BadName(rule) => f.write_str(rule),
        }
    }
}

/// A set of named secret values (e.g. `client_id`, `client_secret`, `token`).
///
/// Values are [`SecretString`]s: zeroized on drop, and neither this type nor its values
/// implement `Display`; `Debug` prints field names only. The only ways to read a value are
/// [`SecretFields::expose`] and [`SecretFields::to_json_zeroizing`], which the core calls
/// while sealing a secret or writing one resolve response.
#[derive(Default, Clone)]
pub struct SecretFields {
    fields: BTreeMap<String, SecretString>,
}

impl fmt::Debug for SecretFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretFields")
            .field("names", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SecretFields {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces one field.
    pub fn insert(&mut self, name: impl Into<String>, value: SecretString) {
        self.fields.insert(name.into(), value);
    }

    /// Field names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.keys().map(String::as_str)
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The value of one field, to be used immediately (e.g. in an upstream request).
    pub fn expose(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(|v| v.expose_secret())
    }

    /// A copy restricted to `names`; `None` when a name is not present.
    pub fn subset<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Option<SecretFields> {
        let mut out = SecretFields::new();
        for name in names {
            let value = self.fields.get(name)?;
            out.fields.insert(name.to_owned(), value.clone());
        }
        Some(out)
    }

    /// Parses a JSON object of string values. The input buffer is the caller's to zeroize;
    /// nothing this parse allocates keeps a copy of a value once it returns (serde_json's
    /// unescaping scratch would: see `secret_json`). A name given twice keeps its last value.
    ///
    /// # Errors
    /// When the input is not a JSON object whose values are all strings, or a name is not
    /// a valid field name.
    pub fn from_json(bytes: &[u8]) -> Result<SecretFields, SecretFieldsError> {
        let members = crate::secret_json::string_members(bytes)
            .map_err(|_| SecretFieldsError::NotAnObjectOfStrings)?;
        let mut out = SecretFields::new();
        for (name, value) in &members {
            validate_field_name(name).map_err(SecretFieldsError::BadName)?;
            out.insert(name.as_str(), SecretString::from(value.as_str()));
        }
        Ok(out)
    }

    /// Serializes to a JSON object inside a zeroizing buffer, allocated once at its exact
    /// final size: a growing Vec would copy the secret and free the old buffer unzeroized.
    pub fn to_json_zeroizing(&self) -> Zeroizing<Vec<u8>> {
        let len = 2
            + self.fields.len().saturating_sub(1)
            + self
                .fields
                .iter()
                .map(|(name, value)| {
                    json_string_len(name) + 1 + json_string_len(value.expose_secret())
                })
                .sum::<usize>();
        let mut out = Zeroizing::new(Vec::with_capacity(len));
        out.push(b'{');
        for (i, (name, value)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_string(&mut out, name);
            out.push(b':');
            write_json_string(&mut out, value.expose_secret());
        }
        out.push(b'}');
        debug_assert_eq!(out.len(), len, "capacity computed exactly");
        out
    }
}

/// Bytes `write_json_string` produces for `s`. Bytewise: every character that needs an
/// escape is ASCII, and no byte of a multi-byte UTF-8 sequence is below 0x80.
fn json_string_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' => 2,
            b if b < 0x20 => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// Field names are identifiers: 1–64 characters of `[A-Za-z0-9_.-]`.
///
/// # Errors
/// When the name is empty, too long or has another character.
pub fn validate_field_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err("secret field names are 1-64 characters of [A-Za-z0-9_.-]".to_owned())
    }
}

/// Writes `s` as a JSON string literal without an intermediate allocation that would escape
/// zeroization. Bytewise, like [`json_string_len`].
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    // Runs of bytes that need no escape are copied in one go.
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_escapes_control_characters() {
        let input = br#"{"a":"x\"y\\z\n\u0001","b":"plain"}"#;
        let fields = SecretFields::from_json(input).unwrap();
        let out = fields.to_json_zeroizing();
        let again = SecretFields::from_json(&out).unwrap();
        assert_eq!(again.expose("a"), Some("x\"y\\z\n\u{1}"));
        assert_eq!(again.expose("b"), Some("plain"));
    }

    #[test]
    fn json_buffer_is_allocated_once_at_its_final_size() {
        let big = format!("{}\"\\\u{1}é\n{}", "p".repeat(5000), "q".repeat(300));
        let input =
            serde_json::to_vec(&serde_json::json!({"password": big, "user": "u\t"})).unwrap();
        let fields = SecretFields::from_json(&input).unwrap();
        let out = fields.to_json_zeroizing();
        assert_eq!(
            out.capacity(),
            out.len(),
            "no reallocation left a copy behind"
        );
        let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(back["password"].as_str(), Some(big.as_str()));
        assert_eq!(back["user"].as_str(), Some("u\t"));
    }

    #[test]
    fn every_character_round_trips_through_the_bytewise_escaper() {
        let every: String = (0u32..0x250)
            .chain([0x7ff, 0x800, 0xffff, 0x1f600, 0x10ffff])
            .filter_map(char::from_u32)
            .collect();
        let mut fields = SecretFields::new();
        fields.insert("all", SecretString::from(every.as_str()));
        let out = fields.to_json_zeroizing();
        assert_eq!(out.capacity(), out.len(), "length computed exactly");
        let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(back["all"].as_str(), Some(every.as_str()));
    }

    #[test]
    fn debug_never_prints_values() {
        let fields = SecretFields::from_json(br#"{"password":"hunter2-canary"}"#).unwrap();
        let dbg = format!("{fields:?}");
        assert!(dbg.contains("password"));
        assert!(!dbg.contains("hunter2"));
    }

    #[test]
    fn rejects_non_string_values_and_bad_names() {
        assert!(SecretFields::from_json(br#"{"a":1}"#).is_err());
        assert!(SecretFields::from_json(br#"["a"]"#).is_err());
        assert!(SecretFields::from_json(br#"{"":"x"}"#).is_err());
        assert!(SecretFields::from_json(br#"{"a b":"x"}"#).is_err());
    }

    #[test]
    fn subset_requires_every_name() {
        let fields = SecretFields::from_json(br#"{"a":"1","b":"2"}"#).unwrap();
        assert_eq!(fields.subset(["a"]).unwrap().len(), 1);
        assert!(fields.subset(["a", "c"]).is_none());
    }
}
