//! What Entra answers: an issued token's claims (decoded, then checked) and error bodies.
#![no_main]
use libfuzzer_sys::fuzz_target;

use credbroker_providers::entra::{
    check_claims, claims::issuer_tenant, decode_claims, parse_error,
};

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
    let e = parse_error(data);
    assert!(e.description.chars().count() <= 200);
});
