//! The admin-consent callback's query string (anyone on the internet can send one).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data);
    if let Ok(c) = credbroker_providers::entra::parse_consent_query(&query) {
        // What the parser accepts is what the broker relies on.
        assert!(!c.state.is_empty() && c.state.bytes().all(|b| b.is_ascii_alphanumeric()));
        if let Some(t) = &c.tenant {
            assert!(credbroker_providers::entra::claims::is_guid(t));
        }
    }
});
