//! Forge invocation token claims (the payload of an untrusted FIT, after its signature would
//! have been checked — parsed anyway, as a forged one is): raw bytes, and a valid claim set
//! with arbitrary text in each field a strict struct or a URL/ARI parser reads. Never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const APP: &str = "ari:cloud:ecosystem::app/5b8e4b0c-1f3a-4c2d-9e7f-0a1b2c3d4e5f";

/// The claims Forge sends, with `text` (or `number`) at `pointer`.
fn claims_with(pointer: &str, value: Value) -> Vec<u8> {
    let mut c = json!({
        "iss": "forge/invocation-token",
        "aud": APP,
        "iat": 1_800_000_000_i64,
        "nbf": 1_800_000_000_i64,
        "exp": 1_800_000_025_i64,
        "jti": "0b7c2d4e-1111-4222-8333-444444444444",
        "app": {
            "id": APP,
            "installationId": "ari:cloud:ecosystem::installation/aaaaaaaa-1111-4222-8333-444444444444",
            "apiBaseUrl": "https://api.atlassian.com/ex/jira/11111111-2222-4333-8444-555555555555",
            "environment": {"type": "PRODUCTION", "id": "ari:cloud:ecosystem::environment/x/y"},
            "module": {"type": "scheduledTrigger", "key": "credbroker-hourly"}
        },
        "context": {"cloudId": "11111111-2222-4333-8444-555555555555"},
        "principal": "5b10ac8d82e05b22cc7d4ef5"
    });
    if let Some(slot) = c.pointer_mut(pointer) {
        *slot = value;
    }
    serde_json::to_vec(&c).unwrap_or_default()
}

const POINTERS: &[&str] = &[
    "/iss",
    "/aud",
    "/iat",
    "/nbf",
    "/exp",
    "/app",
    "/app/id",
    "/app/installationId",
    "/app/apiBaseUrl",
    "/app/environment",
    "/app/environment/type",
    "/app/module",
    "/app/module/type",
    "/context",
    "/principal",
];

/// A system token kept from an invocation's header still works, and says it works for at
/// most 4 h.
fn check_kept(expires_at: Option<i64>) {
    if let Some(exp) = expires_at {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(exp > now - 60, "an expired system token was kept");
        assert!(
            exp <= now + 4 * 3600,
            "a system token living longer than 4 h was kept"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // The bytes themselves as the payload (and as the system token header).
    check_kept(credbroker_providers::atlassian_forge::fuzz_fit_claims(data));
    // A well-formed claim set with the rest of the input in one field: as text, as a number,
    // or as whatever JSON it parses to.
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let pointer = POINTERS[usize::from(selector) % POINTERS.len()];
    let text = String::from_utf8_lossy(rest).into_owned();
    let value = match selector / 64 {
        0 => Value::String(text),
        1 => serde_json::from_slice(rest).unwrap_or(Value::String(text)),
        2 => json!(rest
            .iter()
            .fold(0i64, |a, b| a.wrapping_mul(257).wrapping_add(i64::from(*b)))),
        _ => Value::String(format!("https://api.atlassian.com/ex/jira/{text}")),
    };
    let _ = credbroker_providers::atlassian_forge::fuzz_fit_claims(&claims_with(pointer, value));
});
