//! What the GitHub install callback reads from outside: the browser's `Cookie` header and
//! GitHub's `GET /user/installations` page.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        headers.append(http::header::COOKIE, v);
    }
    let _ = credbroker::callbacks::install_cookie(&headers);
    if let Ok(page) = serde_json::from_slice::<serde_json::Value>(data) {
        let id = data.first().copied().map_or(0, u64::from);
        if let Ok(Some(account)) = credbroker_providers::github::installation_in_page(&page, id) {
            // An account the audit record and the pin check quote is printable and named.
            assert!(account.id > 0);
            assert!(!account.login.is_empty() && account.login.len() <= 100);
            assert!(account.login.bytes().all(|b| b.is_ascii_graphic()));
        }
    }
});
