//! What the broker reads with the Entra tokens it mints: pages of ARM and Graph answers
//! (`value`, `nextLink`), our principal's role assignments, the subscriptions it sees and
//! the grants a consent created. Each gets the input as it came, and as the fields it reads
//! inside a page of the answer's shape, where what it must find is known.
#![no_main]
use libfuzzer_sys::fuzz_target;

use credbroker_providers::entra::{newest_grant, page_of, roles_held, undeclared_subscription};
use serde_json::{json, Value};

const OID: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const SUBSCRIPTION: &str = "11111111-2222-4333-8444-555555555555";
const BASE: &str = "https://management.azure.com";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        let answered_a_list = v.get("value").is_some_and(Value::is_array);
        let link = |k: &str| match v.get(k) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(other) => Some(other.clone()),
        };
        let followable = match (link("nextLink"), link("@odata.nextLink")) {
            (Some(a), Some(b)) if a != b => false,
            (a, b) => a.or(b).is_none_or(|n| {
                n.as_str()
                    .is_some_and(|n| n.starts_with(&format!("{BASE}/")))
            }),
        };
        match page_of(v, BASE) {
            Ok((items, next)) => {
                assert!(answered_a_list && followable);
                check(&items, next);
            }
            // An answer without a list is an error, never an empty page; one whose next page
            // is elsewhere is an error, never a short list.
            Err(_) => assert!(!answered_a_list || !followable),
        }
    }
    // A next page the broker will not follow is an error, whatever the page holds.
    let elsewhere = page_of(json!({"value": [], "nextLink": text}), BASE);
    assert_eq!(
        elsewhere.is_ok(),
        text.is_empty() || text.starts_with(&format!("{BASE}/")),
        "{text}"
    );
    let shaped = json!({
        "nextLink": format!("{BASE}/{text}"),
        "value": [
            {"properties": {"principalId": OID.to_uppercase(), "roleDefinitionId": text}},
            {"subscriptionId": text, "createdDateTime": text},
        ],
    });
    let (items, next) = page_of(shaped, BASE).expect("a page with a value list");
    check(&items, next);
    // The assignment to our principal: its role is the GUID the id ends in, or an error.
    let role = text.rsplit('/').next().unwrap_or_default();
    let is_guid = role.len() == 36
        && role.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    // The assignment alone: the subscription beside it names no principal type, so it
    // counts (failing closed) and, without a role definition, makes the whole list an error.
    match roles_held(&items[..1], OID) {
        Ok(roles) => assert!(is_guid && roles == [role.to_ascii_lowercase()], "{roles:?}"),
        Err(_) => assert!(!is_guid, "{role}"),
    }
    // A subscription that is not the declared one is reported; the declared one is not.
    let scopes = [format!("/subscriptions/{SUBSCRIPTION}")];
    let undeclared = undeclared_subscription(&items[1..], &scopes);
    assert_eq!(
        undeclared.is_some(),
        !text.eq_ignore_ascii_case(SUBSCRIPTION),
        "{text}"
    );
});

fn check(items: &[Value], next: Option<String>) {
    // Our token is sent to the next page only on the same host.
    if let Some(next) = next {
        assert!(next.starts_with("https://management.azure.com/"), "{next}");
    }
    if let Ok(roles) = roles_held(items, OID) {
        // What the ceiling is checked against: lower-case GUIDs, each once.
        for (i, r) in roles.iter().enumerate() {
            assert_eq!(r.len(), 36, "{r}");
            assert!(r
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-'));
            assert!(!roles[..i].contains(r));
        }
    }
    let scopes = [format!("/subscriptions/{SUBSCRIPTION}")];
    if let Some(id) = undeclared_subscription(items, &scopes) {
        assert!(!scopes[0].eq_ignore_ascii_case(&format!("/subscriptions/{id}")));
    }
    let _ = newest_grant(items);
}
