//! HTML escaping, for the pages the broker makes (the intake form, the audit report).

/// HTML-escapes `s` for text and double-quoted attribute values; control characters, and
/// the invisible and bidi ones that would reorder or hide a cell's text (an actor or detail
/// of the audit report), are dropped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if credbroker_providers::is_unshowable(c) => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn markup_is_escaped_and_what_would_reorder_or_hide_text_dropped() {
        assert_eq!(
            super::escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(
            super::escape("op\u{202e}nimda\u{2066}x\u{200b}y\u{7}"),
            "opnimdaxy"
        );
    }
}
