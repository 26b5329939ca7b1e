//! The intake page's HTML: a masked form with exactly the binding's fields, and the result
//! pages. No script, no inline style, nothing echoed that the customer typed; every value
//! that is shown is HTML-escaped.

use http::StatusCode;

/// The cookie that carries the form's CSRF nonce (`__Host-`: Secure, no Domain, Path=/).
pub const INTAKE_COOKIE: &str = "__Host-credbroker-intake";

/// The security headers of every intake answer.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cache-control", "no-store"),
    // The pages take secrets and are reached from links in mail: a browser that has seen
    // one never tries the host over plain http for a year.
    ("strict-transport-security", "max-age=31536000"),
];

/// An intake answer: status, page, and the cookie to set.
pub struct IntakeAnswer {
    /// HTTP status.
    pub status: StatusCode,
    /// The page.
    pub html: String,
    /// `Set-Cookie`.
    pub set_cookie: Option<String>,
}

impl From<crate::broker::Answer> for IntakeAnswer {
    /// The broker's own refusal (busy, failed) as a plain page.
    fn from(a: crate::broker::Answer) -> Self {
        refused(
            a.status,
            "The service is busy or could not finish; try again shortly.",
        )
    }
}

pub use crate::html::escape;

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><meta name=\"referrer\" content=\"no-referrer\"><title>{}</title></head><body><main>\n{body}\n</main></body></html>\n",
        escape(title)
    )
}

/// The same plain answer for a link that was used, expired, revoked or never issued.
pub fn invalid() -> IntakeAnswer {
    IntakeAnswer {
        status: StatusCode::NOT_FOUND,
        html: page(
            "Link no longer valid",
            "<h1>This link is no longer valid</h1><p>Ask the person who sent it for a new one.</p>",
        ),
        set_cookie: None,
    }
}

/// A plain refusal (a bad form, a stale CSRF token).
pub fn refused(status: StatusCode, message: &str) -> IntakeAnswer {
    IntakeAnswer {
        status,
        html: page(
            "Not accepted",
            &format!(
                "<h1 id=\"refused\">Not accepted</h1><p>{}</p><p>Open the link again to start over.</p>",
                escape(message)
            ),
        ),
        set_cookie: None,
    }
}

/// The form: who it is for, and one masked input per field.
pub fn form(
    tenant: &str,
    connector: &str,
    destination: Option<&str>,
    fields: &[String],
    csrf: &str,
    expires: &str,
    cookie: String,
) -> IntakeAnswer {
    let mut inputs = String::new();
    for f in fields {
        let name = escape(f);
        inputs.push_str(&format!(
            "<p><label for=\"f_{name}\">{name}</label><br><input type=\"password\" id=\"f_{name}\" name=\"f_{name}\" autocomplete=\"off\" spellcheck=\"false\"></p>\n"
        ));
    }
    // Where the credential goes, so that a link made for someone else's instance is seen
    // for what it is before anything is pasted.
    // The host on its own (a path can be made to read like another host's name), then the
    // whole URL.
    let destination = destination.map_or(String::new(), |d| {
        let host = d
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_owned))
            .unwrap_or_else(|| d.to_owned());
        format!(
            "<p>It is used with <strong id=\"destination\">{}</strong> only (<code>{}</code>): if that is not your instance, do not enter anything.</p>\n",
            escape(&host),
            escape(d)
        )
    });
    let body = format!(
        "<h1>Provide a credential</h1>\n<p>For <strong id=\"tenant\">{}</strong>, connection <strong id=\"connector\">{}</strong>.</p>\n{destination}<p>What you enter goes over TLS straight into sealed storage; no one can read it back, and this page never shows it again. The link works until {} or until a credential that works has been stored.</p>\n<form method=\"post\" action=\"\">\n<input type=\"hidden\" name=\"csrf\" value=\"{}\">\n{inputs}<p><button type=\"submit\" id=\"submit\">Store</button></p>\n</form>",
        escape(tenant),
        escape(connector),
        escape(expires),
        escape(csrf),
    );
    IntakeAnswer {
        status: StatusCode::OK,
        html: page("Provide a credential", &body),
        set_cookie: Some(cookie),
    }
}

/// The result after a submission was stored and probed.
pub fn result(passed: bool, detail: &str, tries_left: u32) -> IntakeAnswer {
    let body = if passed {
        "<h1 id=\"result\">Stored and verified</h1><p>The credential was stored and checked against your system. You can close this page; the link no longer works.</p>".to_owned()
    } else {
        format!(
            "<h1 id=\"result\">Stored, but it did not work</h1><p>{}</p><p>{}</p>",
            escape(detail),
            if tries_left > 0 {
                format!("Open the link again to try once more ({tries_left} attempt(s) left).")
            } else {
                "No attempts are left: ask for a new link.".to_owned()
            }
        )
    };
    IntakeAnswer {
        status: if passed {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        },
        html: page(if passed { "Stored" } else { "Not verified" }, &body),
        set_cookie: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_no_script() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        let f = form(
            "T<",
            "c",
            Some("https://jira.example.com/a&b"),
            &["token".into()],
            "abc",
            "soon",
            "c=1".into(),
        );
        assert!(!f.html.contains("<script"));
        assert!(!f.html.contains("style="));
        assert!(f.html.contains("type=\"password\""));
        assert!(f.html.contains(
            "<strong id=\"destination\">jira.example.com</strong> only (<code>https://jira.example.com/a&amp;b</code>)"
        ));
        assert!(f.html.contains("T&lt;"));
    }
}
