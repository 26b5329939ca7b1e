//! What IAM Service Account Credentials answers to `generateAccessToken`: an access token with
//! an absolute RFC 3339 `expireTime`, or a `{"error": {code, message, status, details}}` body,
//! under any status; and whether an answer is the refusal of a missing principal grant (the
//! proof a probe takes that a foreign subject cannot impersonate). Never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

use credbroker_providers::gcp_wif::answer::{iam_answer, refused_by_grant};

const STATUSES: [u16; 8] = [200, 400, 401, 403, 404, 429, 500, 503];

/// A secret the request sent (an assertion, a federated token).
const SENT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjYi1ab3EifQ.Zq3sIgNaTuRe_x-Y";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let status = STATUSES[usize::from(selector) % STATUSES.len()];
    // The lifetime asked for: one hour, or the longest an extended lifetime allows.
    let lifetime_s = if selector & 0x80 == 0 { 3600 } else { 43_200 };
    // What the request sent is never quoted back, whatever the answer.
    if let Err(e) = iam_answer(status, body, lifetime_s, &[SENT]) {
        assert!(!credbroker_providers::echoes(&e.to_string(), &[SENT]), "{e}");
    }
    if refused_by_grant(status, body) {
        let v: serde_json::Value = serde_json::from_slice(body).expect("a JSON body");
        assert_eq!(status, 403);
        assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
    }
    let shaped =
        serde_json::json!({"error": {"code": 403, "status": String::from_utf8_lossy(body)}})
            .to_string();
    assert_eq!(
        refused_by_grant(403, shaped.as_bytes()),
        body == b"PERMISSION_DENIED"
    );
});
