//! What a ServiceNow instance answers to the token request (a 200's body, and what every
//! status and content type means), the instance or Data Center base URL an operator (or an
//! intake) hands the broker, Data Center's PAT expiry times, and the roles the application
//! user's `sys_user_has_role` rows name.
#![no_main]
use libfuzzer_sys::fuzz_target;

use credbroker_providers::servicenow::{application_roles, parse_token_answer, token_or_error};

/// The client secret the token request sent.
const SENT: &str = "Zq9!xK2#client-secret-4471";
/// One made only of what an OAuth error code is made of (`[a-z_]`): only the echo check
/// keeps it out.
const SENT_PLAIN: &str = "plain_lowercase_secret";

fuzz_target!(|data: &[u8]| {
    // Whatever the answer, no part of the client secret is handed on as the token.
    if let Ok(t) = parse_token_answer(data, &[SENT]) {
        use secrecy::ExposeSecret;
        assert!(
            !t.access_token.expose_secret().contains(&SENT[..8]),
            "the secret was handed on as the token"
        );
    }
    // The `scope` of a 200 (handed to the worker) as the input beside the client secret.
    let scoped = serde_json::json!({
        "access_token": "abc",
        "token_type": "Bearer",
        "expires_in": 1799,
        "scope": format!("{}{SENT}", String::from_utf8_lossy(data)),
    })
    .to_string();
    if let Ok(t) = parse_token_answer(scoped.as_bytes(), &[SENT]) {
        assert!(
            t.scope.as_deref().is_none_or(|s| !s.contains(&SENT[..8])),
            "the secret was echoed: {:?}",
            t.scope
        );
    }
    // The application user's roles (held to the ceiling by the probe): as the whole answer,
    // and as one row's role name beside a known one.
    let text = String::from_utf8_lossy(data);
    let rows = serde_json::json!([{ "role.name": "snc_read_only" }, { "role.name": text }]);
    for result in [serde_json::from_slice(data).unwrap_or_default(), rows] {
        if let Ok(roles) = application_roles(&result) {
            // Every row's name, none skipped: sorted, each once, none empty.
            assert!(!roles.is_empty() && roles.len() < 1000);
            assert!(roles.windows(2).all(|w| w[0] < w[1]), "{roles:?}");
            assert!(roles.iter().all(|r| !r.is_empty()));
            let listed = result.as_array().map_or(0, Vec::len);
            assert!(roles.len() <= listed);
        }
    }
    // The `error` field as the client secret (one with symbols, one of `[a-z_]` only),
    // alone and beside the input.
    let input = String::from_utf8_lossy(data);
    for sent in [SENT, SENT_PLAIN] {
        for error in [
            format!("{input}{sent}"),
            format!("{sent}{input}"),
            sent.to_owned(),
        ] {
            let answer = credbroker_providers::http::Answer {
                status: 400,
                request_id: None,
                content_type: "application/json".to_owned(),
                body: bytes::Bytes::from(serde_json::json!({ "error": error }).to_string()),
            };
            if let Err(e) = token_or_error(&answer, "snow.acme.example", &[sent]) {
                assert!(
                    !e.to_string().contains(&sent[..8]),
                    "the secret was echoed: {e}"
                );
            }
        }
    }
    // The first two bytes pick the status, the third the content type.
    // The body as it came, and the rest of the input as the `error` field of a JSON body.
    if let [a, b, c, body @ ..] = data {
        let wrapped = serde_json::json!({ "error": String::from_utf8_lossy(body) }).to_string();
        for body in [body, wrapped.as_bytes()] {
            let answer = credbroker_providers::http::Answer {
                status: u16::from_le_bytes([*a, *b]) % 600,
                request_id: None,
                content_type: if c % 2 == 0 {
                    "application/json"
                } else {
                    "text/html"
                }
                .to_owned(),
                body: bytes::Bytes::copy_from_slice(body),
            };
            if let Err(e) = token_or_error(&answer, "snow.acme.example", &[SENT]) {
                // What the answer says reaches the worker and the audit record only as text
                // without control characters, and never repeats the client secret.
                let told = e.to_string();
                assert!(!told.chars().any(char::is_control), "{e}");
                assert!(!told.contains(&SENT[..8]), "the secret was echoed: {e}");
            }
        }
    }
    let url = String::from_utf8_lossy(data);
    let allowed = ["snow.acme.example".to_owned()];
    if let Ok((origin, _)) = credbroker_providers::servicenow::settings_parse_config(
        &serde_json::json!({ "instance_url": url }),
        &allowed,
    ) {
        // Whatever passes is https (or allow-listed loopback http) on an allowed host.
        assert!(origin.starts_with("https://") || origin.starts_with("http://"));
    }
    let _ = credbroker_providers::atlassian_dc::parse_config(
        &serde_json::json!({ "base_url": url, "product": "jira" }),
        &allowed,
    );
    let _ = credbroker_providers::atlassian_dc::parse_time(&url);
});
