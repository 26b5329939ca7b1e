//! Checks on what an upstream hands back before the broker passes it on.

use time::OffsetDateTime;

/// Whether `v` is 1..=`max` bytes of printable ASCII (no spaces, no line breaks): what a
/// worker may put into a header or a credentials file as it is, and what a log line or an
/// audit record may quote.
pub fn is_printable(v: &str, max: usize) -> bool {
    !v.is_empty() && v.len() <= max && v.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether `c` reorders the text around it on a terminal or a page (Unicode's Bidi_Control
/// characters: the marks, embeddings, overrides and isolates).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Whether `c` is a character [`quoted`] drops: a control character (line breaks, escapes),
/// Unicode's line and paragraph separators, a bidirectional override or mark (which make a
/// line read other than it is), or a zero-width or otherwise invisible character (which make
/// two texts look alike).
pub fn is_unshowable(c: char) -> bool {
    c.is_control()
        || is_bidi_control(c)
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{200b}'..='\u{200d}'
                | '\u{feff}'
                | '\u{00ad}'
                | '\u{034f}'
                | '\u{115f}'
                | '\u{1160}'
                | '\u{17b4}'
                | '\u{17b5}'
                | '\u{180b}'..='\u{180f}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{ffa0}'
                | '\u{2060}'..='\u{206f}'
                | '\u{fe00}'..='\u{fe0f}'
                | '\u{fff0}'..='\u{fffb}'
                | '\u{1bca0}'..='\u{1bca3}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0000}'..='\u{e0fff}'
        )
}

/// Upstream text as an error message, a log line or an audit record may quote it: every
/// [`is_unshowable`] character dropped, at most `max` characters.
pub fn quoted(v: &str, max: usize) -> String {
    v.chars().filter(|&c| !is_unshowable(c)).take(max).collect()
}

/// The shortest run of a sent secret (bytes) that, found again in an answer, counts as an echo
/// of it.
const ECHO_RUN: usize = 8;

/// As [`echoes`], ASCII letters compared without case and the sent values as sent only:
/// for text an upstream gave that is kept in lower case (a content type).
pub fn echoes_ignoring_case(text: &str, sent: &[&str]) -> bool {
    sent.iter()
        .any(|s| repeats(text.as_bytes(), s.as_bytes(), u8::to_ascii_lowercase))
}

/// Whether `text` holds any [`ECHO_RUN`] consecutive bytes of `secret` (a shorter one whole),
/// each byte compared as `fold` gives it.
///
/// In time linear in both lengths (a sorted table of the secret's runs, one pass over the
/// text): both may be long and chosen by an upstream (an answer of up to a MiB, a pasted
/// secret of kilobytes, a successor the upstream created), and comparing every run with
/// every run held a runtime thread for minutes. The table is a copy of the secret, wiped.
fn repeats(text: &[u8], secret: &[u8], fold: fn(&u8) -> u8) -> bool {
    if secret.is_empty() {
        return false;
    }
    if secret.len() < ECHO_RUN {
        return text
            .windows(secret.len())
            .any(|t| t.iter().zip(secret).all(|(a, b)| fold(a) == fold(b)));
    }
    let pack = |acc: u64, b: &u8| (acc << 8) | u64::from(fold(b));
    let mut runs = zeroize::Zeroizing::new(
        secret
            .windows(ECHO_RUN)
            .map(|w| w.iter().fold(0, pack))
            .collect::<Vec<u64>>(),
    );
    runs.sort_unstable();
    // The last ECHO_RUN bytes of the text (folded), the oldest in the high bits.
    let mut last = 0u64;
    text.iter().enumerate().any(|(i, b)| {
        last = pack(last, b);
        i + 1 >= ECHO_RUN && runs.binary_search(&last).is_ok()
    })
}

/// Whether `text` repeats what a request sent (`sent`: its secrets, a client secret or an
/// assertion): any [`ECHO_RUN`] consecutive bytes of one of them (a shorter one whole),
/// as sent or as a form encodes it. An upstream, or a proxy before it, that echoes the
/// request in an error would otherwise put the platform's secret into a message a worker or
/// a browser is shown, or into the log.
pub fn echoes(text: &str, sent: &[&str]) -> bool {
    // The copies of a secret made are the form-encoded one and the table of its runs, both
    // wiped.
    let as_is = |b: &u8| *b;
    sent.iter().any(|s| {
        let encoded = zeroize::Zeroizing::new(
            form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>(),
        );
        repeats(text.as_bytes(), s.as_bytes(), as_is)
            || repeats(text.as_bytes(), encoded.as_bytes(), as_is)
    })
}

/// Upstream text as [`quoted`] gives it, or a stand-in when it [`echoes`] what the request
/// sent (checked on the text as it came and as quoted: dropping a control character must
/// not join a secret's pieces).
pub fn quoted_unless_echo(v: &str, max: usize, sent: &[&str]) -> String {
    let q = quoted(v, max);
    if echoes(v, sent) || echoes(&q, sent) {
        "(withheld: it repeats what the request sent)".to_owned()
    } else {
        q
    }
}

/// An OAuth `error` code (RFC 6749 §5.2) as a message may name it: 1–64 of `[a-z_]`, and not
/// one that [`echoes`] the request; anything else reads as `unrecognised_error`.
pub fn oauth_error_code(v: &str, sent: &[&str]) -> String {
    if !v.is_empty()
        && v.len() <= 64
        && v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        && !echoes(v, sent)
    {
        v.to_owned()
    } else {
        "unrecognised_error".to_owned()
    }
}

/// Whether every byte of `v` is one a compact JWT is made of (base64url, `.`, padding): a
/// token handed out as it is goes into a worker's `Authorization` header, so no segment may
/// carry a space or a line break.
pub fn is_jwt_text(v: &str) -> bool {
    v.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

/// An upstream's stated expiry, but never later than `longest` (now plus what was asked
/// for, or the most the upstream documents): a broken or malicious upstream cannot make the
/// broker cache and serve a credential past its real end. A cut expiry is whole seconds.
pub fn no_later_than(stated: OffsetDateTime, longest: OffsetDateTime) -> OffsetDateTime {
    if stated > longest {
        longest.replace_nanosecond(0).unwrap_or(longest)
    } else {
        stated
    }
}

/// `Err` (saying so, as `who`'s answer) when the JSON `text` holds more than `max` nodes by
/// [`json_node_bound`]: it is not to be parsed.
///
/// # Errors
/// The message to hand back.
pub fn json_nodes_within(text: &[u8], max: usize, who: &str) -> Result<(), String> {
    if json_node_bound(text, max) > max {
        return Err(format!(
            "{who}'s answer holds more than {max} JSON values: not parsed"
        ));
    }
    Ok(())
}

/// An upper bound on the nodes (values and object keys) `serde_json` would build from the
/// JSON `text`, counted without parsing it, stopping once past `stop`: one for the root and
/// one after each `[`, `{`, `,` and `:` outside a string. A parsed `Value` costs tens of bytes
/// per node whatever the text spends on it (`[0,0,…]` is two bytes a node), so a bound on the
/// answer's bytes alone lets a malicious upstream make the broker hold many times them.
pub fn json_node_bound(text: &[u8], stop: usize) -> usize {
    let mut nodes = 1usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' | b',' | b':' => {
                nodes = nodes.saturating_add(1);
                if nodes > stop {
                    return nodes;
                }
            }
            _ => {}
        }
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_of_what_was_sent_is_withheld() {
        let secret = "s3cr3t+Value/with=signs-0123456789";
        let sent = [secret];
        assert!(echoes(&format!("bad client {secret}"), &sent));
        assert!(echoes("prefix s3cr3t+Va and no more", &sent));
        assert!(echoes("ue/with=signs", &sent));
        // As the form encoded it.
        assert!(echoes("s3cr3t%2BValue%2Fwith%3Dsigns", &sent));
        assert!(!echoes("invalid_client: the secret is wrong", &sent));
        assert!(echoes("xx short yy", &["short"]));
        assert!(!echoes("anything", &[""]));
        assert_eq!(
            quoted_unless_echo("no: s3cr3t\n+Value", 100, &sent),
            "(withheld: it repeats what the request sent)"
        );
        assert_eq!(
            quoted_unless_echo("Application is disabled.", 100, &sent),
            "Application is disabled."
        );
        assert_eq!(oauth_error_code("invalid_client", &sent), "invalid_client");
        assert_eq!(oauth_error_code(secret, &sent), "unrecognised_error");
        assert_eq!(
            oauth_error_code("abcdefghij", &["abcdefghij"]),
            "unrecognised_error"
        );
        assert_eq!(oauth_error_code("bad\r\nline", &sent), "unrecognised_error");
    }

    /// The runs compared one by one with every run: what the table must answer as.
    fn repeats_slowly(text: &[u8], secret: &[u8], fold: fn(&u8) -> u8) -> bool {
        if secret.is_empty() {
            return false;
        }
        let run = secret.len().min(ECHO_RUN);
        secret.windows(run).any(|w| {
            text.windows(run)
                .any(|t| t.iter().zip(w).all(|(a, b)| fold(a) == fold(b)))
        })
    }

    #[test]
    fn the_run_table_finds_what_comparing_every_run_finds() {
        // Texts and secrets over a small alphabet (so runs recur), from a fixed generator.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let alphabet = b"aAbB%1";
        let mut found = 0;
        for _ in 0..4000 {
            let mut make = |max: u64| -> Vec<u8> {
                let len = next(max);
                (0..len)
                    .map(|_| alphabet[usize::try_from(next(6)).unwrap()])
                    .collect()
            };
            let (text, secret) = (make(40), make(14));
            for fold in [(|b: &u8| *b) as fn(&u8) -> u8, u8::to_ascii_lowercase] {
                let fast = repeats(&text, &secret, fold);
                assert_eq!(
                    fast,
                    repeats_slowly(&text, &secret, fold),
                    "{text:?} {secret:?}"
                );
                found += usize::from(fast);
            }
        }
        // Both answers occur often (at least a tenth of the 8,000 times each).
        assert!((800..7200).contains(&found), "{found}");
    }

    /// An upstream answering with a MiB of text, for a secret of kilobytes that shares no run
    /// with it (a pasted 8 KiB PAT of one character, 24 KiB form-encoded): compared run by run
    /// that held a runtime thread for minutes, every probe.
    #[test]
    fn a_long_answer_to_a_long_secret_is_checked_at_once() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let secret = "!".repeat(8192);
            let text = "a".repeat(1 << 20);
            let _ = tx.send(echoes(&text, &[&secret]) || echoes_ignoring_case(&text, &[&secret]));
        });
        let echoed = rx.recv_timeout(std::time::Duration::from_secs(20));
        assert_eq!(echoed, Ok(false), "not answered within 20 s");
    }

    #[test]
    fn quoted_text_stays_on_its_line_and_reads_as_it_is() {
        assert_eq!(quoted("a\nb\r\u{1b}[31mc", 100), "ab[31mc");
        assert_eq!(quoted("x\u{2028}y\u{2029}z", 100), "xyz");
        assert_eq!(quoted("admin\u{202e}nimda\u{2066}", 100), "adminnimda");
        assert_eq!(
            quoted("a\u{2063}d\u{e0041}m\u{00ad}i\u{fe0f}n", 100),
            "admin"
        );
        assert_eq!(
            quoted("a\u{200b}d\u{200f}m\u{061c}i\u{feff}n", 100),
            "admin"
        );
        // Fillers and blanks that render as nothing, or as a space that is not one.
        assert_eq!(
            quoted(
                "a\u{3164}d\u{115f}m\u{034f}i\u{180b}n\u{2800}\u{ffa0}\u{180f}\u{1d173}\u{2065}\u{fff0}\u{e0080}",
                100
            ),
            "admin"
        );
        assert_eq!(quoted("été", 2), "ét");
    }

    /// Nodes as serde_json builds them: values, and keys of objects.
    fn nodes(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(a) => 1 + a.iter().map(nodes).sum::<usize>(),
            serde_json::Value::Object(o) => 1 + o.values().map(|v| 1 + nodes(v)).sum::<usize>(),
            _ => 1,
        }
    }

    #[test]
    fn the_node_bound_holds_and_ignores_what_strings_hold() {
        for (text, bound) in [
            ("[0,0,0]", 4),
            (r#"{"a":1,"b":[2]}"#, 6),
            (r#""a,b:[{""#, 1),
            (r#"["a\",b",{"c\\":"d,:"}]"#, 5),
            ("[]", 2),
            ("", 1),
        ] {
            assert_eq!(
                json_node_bound(text.as_bytes(), usize::MAX),
                bound,
                "{text}"
            );
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
                assert!(nodes(&v) <= bound, "{text}: {} nodes", nodes(&v));
            }
        }
        // It stops counting past `stop`.
        let dense = format!("[{}0]", "0,".repeat(1000));
        assert_eq!(json_node_bound(dense.as_bytes(), 10), 11);
    }
}
