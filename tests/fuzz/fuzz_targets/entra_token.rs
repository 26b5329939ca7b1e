//! What Entra answers: the token endpoint's 200 answer as a mint reads it, an issued token's
//! claims (decoded, then checked) and error bodies.
#![no_main]
use libfuzzer_sys::fuzz_target;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use credbroker_providers::entra::{
    check_claims, claims::issuer_tenant, decode_claims, parse_error, token::read_token_answer,
};
use secrecy::ExposeSecret;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let hosts = [
        "sts.windows.net".to_owned(),
        "login.microsoftonline.com".to_owned(),
    ];
    if let Ok(claims) = decode_claims(&text) {
        let _ = check_claims(
            &claims,
            "11111111-2222-4333-8444-555555555555",
            "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
            &hosts,
        );
    }
    let _ = issuer_tenant(&text, &hosts);
    // The answer as it came; then the input as a token's claims inside a well-formed answer
    // (the first four bytes its `expires_in`), and the next eight bytes as the token's `exp`:
    // there, what may be accepted is known.
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let expires_in = u32::from_le_bytes(std::array::from_fn(byte));
    let exp = i64::from_le_bytes(std::array::from_fn(|i| byte(i + 4)));
    let answer = |claims: &[u8]| {
        serde_json::json!({
            "token_type": "Bearer",
            "expires_in": expires_in,
            "access_token": format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(claims)),
        })
        .to_string()
    };
    check_answer(data, None);
    check_answer(
        answer(data.get(4..).unwrap_or_default()).as_bytes(),
        Some((expires_in, None)),
    );
    let with_exp = answer(serde_json::json!({ "exp": exp }).to_string().as_bytes());
    check_answer(with_exp.as_bytes(), Some((expires_in, Some(exp))));
    let e = parse_error(data);
    assert!(e.description.chars().count() <= 200);
});

/// Whatever is accepted is a token a worker can carry as it is, within its lifetime bounds;
/// with `known` (`expires_in` and the token's `exp`), within those too.
fn check_answer(data: &[u8], known: Option<(u32, Option<i64>)>) {
    let before = time::OffsetDateTime::now_utc();
    if let Ok(answer) = read_token_answer(data, None) {
        // A token handed out goes into a worker's Authorization header as it is, and expires
        // within a day but not within the next 30 s.
        let token = answer.token.expose_secret();
        assert!(!token.is_empty());
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'=')));
        let now = time::OffsetDateTime::now_utc();
        assert!(answer.expires_at > before + time::Duration::seconds(30));
        assert!(answer.expires_at <= now + time::Duration::seconds(86_400));
        if let Some((expires_in, exp)) = known {
            // Entra's documented range, and never past the token's own end.
            assert!((60..=86_400).contains(&expires_in), "{expires_in}");
            assert!(answer.expires_at <= now + time::Duration::seconds(i64::from(expires_in)));
            if let Some(exp) = exp {
                assert!(answer.expires_at.unix_timestamp() <= exp);
            }
        }
    }
}
