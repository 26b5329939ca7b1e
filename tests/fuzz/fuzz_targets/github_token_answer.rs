//! GitHub installation token answers: the token, expiry and grant checks a mint applies to
//! whatever the upstream sends, against a narrowed request and the installation's selection.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let named = serde_json::json!({
        "permissions": {"contents": "read", "issues": "write"},
        "repositories": ["api", "web"],
    });
    let all = serde_json::json!({"permissions": {"metadata": "read"}});
    for wanted in [&named, &all] {
        if let Ok(cred) = credbroker_providers::github::read_token_answer(data, Some("id"), wanted)
        {
            // Whatever was accepted is bounded: it expires, within the hour.
            let expires = cred.expires_at.expect("an installation token expires");
            assert!(expires <= time::OffsetDateTime::now_utc() + time::Duration::hours(1));
        }
    }
});
