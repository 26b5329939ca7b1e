//! The intake page's form, parsed from untrusted bytes: `application/x-www-form-urlencoded`
//! decoded into buffers wiped on drop, each grown at most once, so a pasted secret leaves no
//! copy behind. Never panics on any input (fuzzed).

use zeroize::Zeroizing;

use credbroker_providers::SecretFields;

/// Parses an intake form body: its `csrf` value and the `f_<name>` fields among `allowed`
/// (empty values dropped). Never panics on any input (fuzzed).
///
/// # Errors
/// What is wrong with the form, for the page.
pub fn parse_intake_form(
    body: &[u8],
    allowed: &[String],
) -> Result<(String, SecretFields), &'static str> {
    if body.len() > 64 * 1024 {
        return Err("The form is too large.");
    }
    let mut csrf = None;
    let mut fields = SecretFields::new();
    // The pairs as `form_urlencoded::parse` splits them (empty pieces skipped, the name ends
    // at the first `=`); values are decoded here, into zeroizing buffers, because its
    // decoding copies a value with `+` or `%` escapes through buffers it frees unwiped.
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &[][..]),
        };
        let k = form_text(form_decode(k));
        let v = form_text(form_decode(v));
        if *k == "csrf" {
            if csrf.replace(v.to_string()).is_some() {
                return Err("The form carried its token twice.");
            }
            continue;
        }
        let Some(name) = k
            .strip_prefix("f_")
            .filter(|n| allowed.iter().any(|f| f == n))
        else {
            return Err("The form carried a field it does not ask for.");
        };
        if v.len() > 8192 {
            return Err("A value is too long.");
        }
        if fields.expose(name).is_some() {
            return Err("The form carried a field twice.");
        }
        if !v.is_empty() {
            fields.insert(name.to_owned(), secrecy::SecretString::from(v.as_str()));
        }
    }
    Ok((csrf.unwrap_or_default(), fields))
}

/// `application/x-www-form-urlencoded` decoding of one name or value, as `form_urlencoded`
/// does it (`+` is a space, then `percent_encoding` decodes), into one zeroizing buffer sized
/// at the raw length (never outgrown: decoding only shortens). A `+` cannot sit inside a
/// `%XX` escape, so the pieces between them decode alone.
fn form_decode(raw: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(raw.len()));
    for (i, piece) in raw.split(|b| *b == b'+').enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend(percent_encoding::percent_decode(piece));
    }
    out
}

/// The decoded bytes as text: moved into the string when they are UTF-8 (no copy), else
/// with invalid sequences replaced by U+FFFD as `String::from_utf8_lossy` does, into a
/// zeroizing string sized once (the refused buffer wiped).
fn form_text(mut bytes: Zeroizing<Vec<u8>>) -> Zeroizing<String> {
    let bytes = match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => return Zeroizing::new(text),
        Err(e) => Zeroizing::new(e.into_bytes()),
    };
    let len: usize = bytes
        .utf8_chunks()
        .map(|c| c.valid().len() + if c.invalid().is_empty() { 0 } else { 3 })
        .sum();
    let mut out = Zeroizing::new(String::with_capacity(len));
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_decodes_as_form_urlencoded_does() {
        let allowed = ["a".to_owned(), "b".to_owned()];
        let cases: &[&[u8]] = &[
            b"csrf=x&f_a=1&f_b=2",
            b"&&csrf=t%20k&&f_a=p%41ss+word%2B%25&",
            b"f_a=%zz%4&f_b=%",
            b"f_a=%e2%82%ac%ff%fe+%C3",
            b"f_a&csrf",
            b"f_a==x=y",
            b"f_%61=1",
            b"f_a=\xff\xfe",
        ];
        for case in cases {
            let mut want_csrf = String::new();
            let mut want = std::collections::BTreeMap::new();
            for (k, v) in form_urlencoded::parse(case) {
                match k.strip_prefix("f_") {
                    _ if k == "csrf" => want_csrf = v.into_owned(),
                    Some(name) if !v.is_empty() => {
                        want.insert(name.to_owned(), v.into_owned());
                    }
                    _ => {}
                }
            }
            let (csrf, fields) = parse_intake_form(case, &allowed).unwrap();
            assert_eq!(csrf, want_csrf, "{}", String::from_utf8_lossy(case));
            let got: std::collections::BTreeMap<String, String> = fields
                .names()
                .map(|n| (n.to_owned(), fields.expose(n).unwrap_or("").to_owned()))
                .collect();
            assert_eq!(got, want, "{}", String::from_utf8_lossy(case));
        }
        let decoded = form_decode(b"p%41ss+w%2B%2");
        assert_eq!(&decoded[..], b"pAss w+%2");
        assert_eq!(decoded.capacity(), 13, "one buffer at the raw length");
    }

    #[test]
    fn a_value_or_a_form_past_its_limit_is_refused() {
        let allowed = ["a".to_owned()];
        let at_most = format!("f_a={}", "x".repeat(8192));
        assert!(parse_intake_form(at_most.as_bytes(), &allowed).is_ok());
        let over = format!("f_a={}", "x".repeat(8193));
        assert_eq!(
            parse_intake_form(over.as_bytes(), &allowed).err(),
            Some("A value is too long.")
        );
        // Escapes count as what they decode to.
        let escaped = format!("f_a={}", "%41".repeat(8193));
        assert_eq!(
            parse_intake_form(escaped.as_bytes(), &allowed).err(),
            Some("A value is too long.")
        );
        let big = format!("csrf={}", "x".repeat(64 * 1024));
        assert_eq!(
            parse_intake_form(big.as_bytes(), &allowed).err(),
            Some("The form is too large.")
        );
    }
}
