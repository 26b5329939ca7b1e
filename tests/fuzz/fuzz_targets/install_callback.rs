//! What the GitHub install callback reads from outside: the install link's query, the
//! browser's `Cookie` header,
//! GitHub's `GET /user/installations` page, and its `GET /user/memberships/orgs/{org}` and
//! `GET /user` answers.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        headers.append(http::header::COOKIE, v);
    }
    let _ = credbroker::callbacks::install_cookie(&headers, "state0123456789");
    if let Ok(text) = std::str::from_utf8(data) {
        // As it came, and as the value of a `state` pair (so the checks of the value are
        // reached at once).
        for query in [
            text.to_owned(),
            format!("state={text}"),
            format!("x=1&state={text}"),
        ] {
            // A state that is looked up in the store (and quoted in records) is only ever
            // what the broker issues, taken whole from the query's own `state=` pair.
            if let Some(state) = credbroker::callbacks::link_state(&query) {
                assert!((1..=128).contains(&state.len()));
                assert!(state.bytes().all(|b| b.is_ascii_alphanumeric()));
                assert!(query.split('&').any(|p| p == format!("state={state}")));
            }
        }
    }
    if let Ok(page) = serde_json::from_slice::<serde_json::Value>(data) {
        let id = data.first().copied().map_or(0, u64::from);
        if let Ok(Some(listed)) = credbroker_providers::github::installation_in_page(&page, id) {
            // An account the audit record, the pin check and a URL path quote is named with
            // a login's characters only.
            let account = &listed.account;
            assert!(account.id > 0);
            assert!(!account.login.is_empty() && account.login.len() <= 100);
            assert!(account
                .login
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')));
        }
        let account = credbroker_providers::InstalledAccount {
            login: "acme".into(),
            id: u64::from(data.first().copied().unwrap_or(1)),
        };
        // An owner is only ever an active admin of that very organization.
        if credbroker_providers::github::owner_in_membership(&page, &account).is_ok() {
            assert_eq!(page["state"], "active");
            assert_eq!(page["role"], "admin");
            assert_eq!(page["organization"]["id"].as_u64(), Some(account.id));
        }
        if credbroker_providers::github::same_user(&page, &account).is_ok() {
            assert_eq!(page["id"].as_u64(), Some(account.id));
        }
    }
});
