//! What Google's Security Token Service answers to the token exchange: a federated token
//! (`expires_in` a number or a string) or an OAuth error body, under any status; and whether
//! an answer is the attribute condition's refusal (the proof a probe takes that the
//! condition pins the subject). Never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

use credbroker_providers::gcp_wif::answer::{refused_by_condition, sts_answer};

const STATUSES: [u16; 8] = [200, 400, 401, 403, 404, 429, 500, 503];

/// A secret the request sent (an assertion, a federated token).
const SENT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjYi1ab3EifQ.Zq3sIgNaTuRe_x-Y";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let status = STATUSES[usize::from(selector) % STATUSES.len()];
    // What the request sent is never quoted back, whatever the answer.
    if let Err(e) = sts_answer(status, body, &[SENT]) {
        assert!(!credbroker_providers::echoes(&e.to_string(), &[SENT]), "{e}");
    }
    // Taken as the condition's refusal only for a 400 whose OAuth error is
    // unauthorized_client or invalid_grant and whose description names the condition.
    if refused_by_condition(status, body) {
        let v: serde_json::Value = serde_json::from_slice(body).expect("a JSON body");
        assert_eq!(status, 400);
        assert!(matches!(
            v["error"].as_str(),
            Some("unauthorized_client" | "invalid_grant")
        ));
        assert!(v["error_description"]
            .as_str()
            .is_some_and(|d| d.to_ascii_lowercase().contains("attribute condition")));
    }
    // The same shape with the input as the description.
    let shaped = serde_json::json!({
        "error": "unauthorized_client",
        "error_description": String::from_utf8_lossy(body),
    })
    .to_string();
    assert_eq!(
        refused_by_condition(400, shaped.as_bytes()),
        String::from_utf8_lossy(body)
            .to_ascii_lowercase()
            .contains("attribute condition")
    );
    assert!(!refused_by_condition(403, shaped.as_bytes()));
});
