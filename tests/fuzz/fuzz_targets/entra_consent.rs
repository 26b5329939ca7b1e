//! The sign-in callback's query string (anyone on the internet can send one), and the
//! token endpoint's answer to the redemption of its code: the `id_token` read and checked.
#![no_main]
use libfuzzer_sys::fuzz_target;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use credbroker_providers::entra::{check_sign_in, parse_consent_query, read_sign_in_answer};
use secrecy::ExposeSecret;

const TENANT: &str = "11111111-2222-4333-8444-555555555555";
const CLIENT: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const NONCE: &str = "n0nce";
const ADMINS: [&str; 2] = [
    "62e90394-69f5-4237-9190-012177145e10",
    "e8611ab8-c189-46e8-94e1-60213ab1f814",
];

fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data);
    if let Ok(c) = parse_consent_query(&query) {
        // What the parser accepts is what the broker relies on.
        assert!(!c.state.is_empty() && c.state.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(c.code.is_some() || c.error.is_some());
        if let Some(code) = &c.code {
            let code = code.expose_secret();
            assert!(!code.is_empty() && code.len() <= 2048);
        }
    }
    let hosts = ["login.microsoftonline.com".to_owned()];
    // The answer as it came; then the input as an id_token's claims in a well-formed answer.
    let wrapped = serde_json::json!({
        "token_type": "Bearer",
        "access_token": "x",
        "id_token": format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(data)),
    })
    .to_string();
    for answer in [data, wrapped.as_bytes()] {
        if let Ok(claims) = read_sign_in_answer(answer) {
            if check_sign_in(&claims, TENANT, CLIENT, NONCE, &hosts, 1_700_000_000).is_ok() {
                // Accepted only for our app, the pinned tenant, this nonce, unexpired, and
                // an administrator who can grant the app's permissions.
                assert!(claims.aud.unwrap().eq_ignore_ascii_case(CLIENT));
                assert_eq!(claims.tid.unwrap().to_ascii_lowercase(), TENANT);
                assert_eq!(claims.nonce.as_deref(), Some(NONCE));
                assert!(claims.exp.unwrap() > 1_700_000_000);
                assert!(claims
                    .wids
                    .unwrap()
                    .iter()
                    .any(|w| ADMINS.contains(&w.to_ascii_lowercase().as_str())));
            }
        }
    }
});
