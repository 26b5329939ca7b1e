//! What Forge posts to the remote after a verified FIT: invocation, scheduled-trigger and
//! lifecycle-event bodies (`avi:forge:installed:app`, `avi:forge:upgraded:app`), and the
//! admin page's connect code (`{"code": …}`). Raw bytes, and the real shapes with arbitrary
//! text in each field. Never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fn shapes(text: &str, parsed: &Value) -> [Value; 5] {
    [
        json!({"eventType": text, "id": "ari:cloud:ecosystem::installation/aaaaaaaa-1111-4222-8333-444444444444",
               "installerAccountId": "5b10ac8d82e05b22cc7d4ef5",
               "app": {"id": "ari:cloud:ecosystem::app/5b8e4b0c-1f3a-4c2d-9e7f-0a1b2c3d4e5f", "version": "3.7.0"},
               "context": {"cloudId": "11111111-2222-4333-8444-555555555555", "moduleKey": "credbroker-lifecycle"}}),
        json!({"eventType": "avi:forge:installed:app", "id": text, "app": parsed, "context": parsed}),
        json!({"eventType": "avi:forge:upgraded:app", "id": parsed, "upgraderAccountId": text,
               "app": {"id": text, "version": parsed}}),
        json!({"context": {"cloudId": text, "moduleKey": parsed}, "contextToken": text}),
        json!({"call": {"functionKey": text, "payload": parsed}, "context": parsed}),
    ]
}

fuzz_target!(|data: &[u8]| {
    use credbroker_providers::atlassian_forge::{fuzz_connect_body, fuzz_invocation_body};
    fuzz_invocation_body(data);
    fuzz_connect_body(data);
    let text = String::from_utf8_lossy(data);
    let parsed: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
    for body in shapes(&text, &parsed) {
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        fuzz_invocation_body(&bytes);
    }
    for body in [
        json!({ "code": text }),
        json!({ "code": parsed }),
        json!({ "code": format!("  {text}  "), "extra": parsed }),
    ] {
        fuzz_connect_body(&serde_json::to_vec(&body).unwrap_or_default());
    }
});
