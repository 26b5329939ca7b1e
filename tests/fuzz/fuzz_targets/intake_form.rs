//! The intake page's form body (anyone holding a link can post one).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let allowed = ["client_id".to_owned(), "client_secret".to_owned()];
    if let Ok((_, fields)) = credbroker::admin::parse_intake_form(data, &allowed) {
        // Only fields the form asks for, never empty.
        for name in fields.names() {
            assert!(allowed.iter().any(|a| a == name));
            assert!(!fields.expose(name).unwrap_or("").is_empty());
        }
    }
});
