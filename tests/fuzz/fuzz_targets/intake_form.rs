//! The intake page's form body (anyone holding a link can post one): only fields the form
//! asks for, never empty, and decoded exactly as `form_urlencoded` decodes them (the broker
//! decodes values itself, into zeroizing buffers).
#![no_main]
use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let allowed = ["client_id".to_owned(), "client_secret".to_owned()];
    if let Ok((csrf, fields)) = credbroker::admin::parse_intake_form(data, &allowed) {
        let mut want_csrf = String::new();
        let mut want = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(data) {
            if k == "csrf" {
                want_csrf = v.into_owned();
            } else if let Some(name) = k.strip_prefix("f_") {
                if !v.is_empty() {
                    want.insert(name.to_owned(), v.into_owned());
                }
            }
        }
        assert_eq!(csrf, want_csrf);
        let got: BTreeMap<String, String> = fields
            .names()
            .map(|n| (n.to_owned(), fields.expose(n).unwrap_or("").to_owned()))
            .collect();
        assert_eq!(got, want);
        for (name, value) in &got {
            assert!(allowed.iter().any(|a| a == name));
            assert!(!value.is_empty());
        }
    }
});
