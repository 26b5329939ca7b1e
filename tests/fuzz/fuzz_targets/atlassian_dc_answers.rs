//! What a Data Center instance answers: who a PAT is, the PAT list's `expiringAt` and the
//! ids of the PATs of one name, and a PAT the broker created. Whatever is kept is bounded
//! printable text that never repeats the PAT sent. Each parser gets the input as it came
//! and as the field it reads, inside the answer's shape.
#![no_main]
use libfuzzer_sys::fuzz_target;

use credbroker_providers::atlassian_dc::{created_pat, pat_expiry, pat_ids_named, pat_user};
use secrecy::ExposeSecret;
use serde_json::json;

/// The PAT the requests sent: what an instance (or a proxy) echoes of it is never kept.
const PAT: &str = "NjQ2MzE5ODQ0NTc3OqZ1dC9yJtk5";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let me = json!({ "name": text }).to_string();
    let list = json!([{ "id": 1, "expiringAt": text, "name": "n" }, { "id": text, "name": "n" }, { "id": "abc", "name": text }]).to_string();
    let created = json!({ "rawToken": text, "id": text }).to_string();
    // The input beside the PAT, as the user's name and as the expiry.
    let echo = format!("{text}{}", &PAT[..12]);
    let me_echo = json!({ "name": echo }).to_string();
    let list_echo = json!([{ "id": 1, "expiringAt": echo }]).to_string();
    for body in [
        data,
        me.as_bytes(),
        list.as_bytes(),
        created.as_bytes(),
        me_echo.as_bytes(),
        list_echo.as_bytes(),
    ] {
        if let Some(user) = pat_user(body, &[PAT]) {
            assert!(!user.is_empty() && user.chars().count() <= 100);
            assert!(!user.chars().any(char::is_control), "{user:?}");
            assert!(!user.contains(&PAT[..8]), "the PAT was echoed: {user}");
        }
        for id in ["1", "abc"] {
            if let Some(e) = pat_expiry(body, Some(id), &[PAT]) {
                assert!(!e.is_empty() && e.len() <= 40 && e.bytes().all(|b| b.is_ascii_graphic()));
                assert!(!e.contains(&PAT[..8]), "the PAT was echoed: {e}");
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
