//! Checks on text an upstream hands back before the broker passes it on.

/// Whether `v` is 1..=`max` bytes of printable ASCII (no spaces, no line breaks): what a
/// worker may put into a header or a credentials file as it is, and what a log line or an
/// audit record may quote.
pub fn is_printable(v: &str, max: usize) -> bool {
    !v.is_empty() && v.len() <= max && v.bytes().all(|b| b.is_ascii_graphic())
}
