//! What a Data Center instance answers: who a PAT is, the PAT list's `expiringAt` and the
//! ids of the PATs of one name, and a PAT the broker created. Whatever is kept is bounded printable text. Each parser gets the
//! input as it came and as the field it reads, inside the answer's shape.
#![no_main]
use libfuzzer_sys::fuzz_target;

use credbroker_providers::atlassian_dc::{created_pat, pat_expiry, pat_ids_named, pat_user};
use secrecy::ExposeSecret;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let me = json!({ "name": text }).to_string();
    let list = json!([{ "id": 1, "expiringAt": text, "name": "n" }, { "id": text, "name": "n" }, { "id": "abc", "name": text }]).to_string();
    let created = json!({ "rawToken": text, "id": text }).to_string();
    for body in [data, me.as_bytes(), list.as_bytes(), created.as_bytes()] {
        let user = pat_user(body);
        assert!(!user.is_empty() && user.chars().count() <= 100);
        assert!(!user.chars().any(char::is_control), "{user:?}");
        for id in ["1", "abc"] {
            if let Some(e) = pat_expiry(body, Some(id)) {
                assert!(!e.is_empty() && e.len() <= 40 && e.bytes().all(|b| b.is_ascii_graphic()));
            }
        }
        for name in ["n", text.as_ref()] {
            let ids = pat_ids_named(body, name);
            assert!(ids.len() <= 16);
            for id in ids {
                // Safe in a DELETE path.
                assert!((1..=64).contains(&id.len()));
                assert!(
                    id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'),
                    "{id:?}"
                );
            }
        }
        if let Ok((raw, id)) = created_pat(body) {
            let raw = raw.expose_secret();
            assert!(!raw.is_empty() && raw.len() <= 1024);
            assert!(raw.bytes().all(|b| b.is_ascii_graphic()));
            if let Some(id) = id {
                assert!(
                    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic())
                );
            }
        }
    }
});
