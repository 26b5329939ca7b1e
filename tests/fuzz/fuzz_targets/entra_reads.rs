//! What the broker reads with the Entra tokens it mints: pages of ARM and Graph answers
//! (`value`, `nextLink`), our principal's role assignments, the subscriptions it sees and
//! the grants a consent created. Each gets the input as it came, and as the fields it reads
//! inside a page of the answer's shape.
#![no_main]
use libfuzzer_sys::fuzz_target;

use credbroker_providers::entra::{newest_grant, page_of, roles_held, undeclared_subscription};
use serde_json::{json, Value};

const OID: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const BASE: &str = "https://management.azure.com";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let shaped = json!({
        "nextLink": text,
        "value": [
            {"properties": {"principalId": OID.to_uppercase(), "roleDefinitionId": text}},
            {"subscriptionId": text, "createdDateTime": text},
        ],
    });
    let pages = [serde_json::from_slice::<Value>(data).ok(), Some(shaped)];
    for v in pages.into_iter().flatten() {
        check(v);
    }
});

fn check(v: Value) {
    let (items, next) = page_of(v, BASE);
    // Our token is sent to the next page only on the same host.
    if let Some(next) = next {
        assert!(next.starts_with("https://management.azure.com/"), "{next}");
    }
    if let Ok(roles) = roles_held(&items, OID) {
        // What the ceiling is checked against: lower-case GUIDs, each once.
        for (i, r) in roles.iter().enumerate() {
            assert_eq!(r.len(), 36, "{r}");
            assert!(r
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-'));
            assert!(!roles[..i].contains(r));
        }
    }
    let scopes = ["/subscriptions/11111111-2222-4333-8444-555555555555".to_owned()];
    if let Some(id) = undeclared_subscription(&items, &scopes) {
        assert!(!scopes[0].eq_ignore_ascii_case(&format!("/subscriptions/{id}")));
    }
    let _ = newest_grant(&items);
}
