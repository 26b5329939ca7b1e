//! Checks on what an upstream hands back before the broker passes it on.

use time::OffsetDateTime;

/// Whether `v` is 1..=`max` bytes of printable ASCII (no spaces, no line breaks): what a
/// worker may put into a header or a credentials file as it is, and what a log line or an
/// audit record may quote.
pub fn is_printable(v: &str, max: usize) -> bool {
    !v.is_empty() && v.len() <= max && v.bytes().all(|b| b.is_ascii_graphic())
}

/// Upstream text as an error message, a log line or an audit record may quote it: control
/// characters (line breaks, escapes) dropped, at most `max` characters.
pub fn quoted(v: &str, max: usize) -> String {
    v.chars().filter(|c| !c.is_control()).take(max).collect()
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
