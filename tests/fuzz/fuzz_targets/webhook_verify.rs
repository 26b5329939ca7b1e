//! The `POST /v1/webhooks/verify` parser and every scheme's check over the parsed headers
//! and body: a worker's bytes (and through them a vendor's) are untrusted. The first byte
//! picks the scheme; the rest is the request.
#![no_main]
use credbroker::store::records::WebhookScheme;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, raw)) = data.split_first() else {
        return;
    };
    let Ok(parsed) = credbroker::webhooks::parse_verify_request(raw, 4096) else {
        return;
    };
    let scheme = match pick % 5 {
        0 => WebhookScheme::Github,
        1 => WebhookScheme::Gitlab,
        2 => WebhookScheme::HmacSha256 {
            header: "x-signature".into(),
            prefix: "v1=".into(),
        },
        3 => WebhookScheme::Token {
            header: "x-token".into(),
        },
        _ => WebhookScheme::Unsigned,
    };
    let secrets: [&[u8]; 2] = [b"current-secret", b"previous-secret"];
    let _ = credbroker::webhooks::verify(&scheme, &secrets, &parsed.headers, &parsed.body);
});
