//! Secret field objects (admin bodies, opened secret payloads) round-trip or fail cleanly.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(fields) = credbroker_providers::SecretFields::from_json(data) {
        let again = credbroker_providers::SecretFields::from_json(&fields.to_json_zeroizing()).expect("own output parses");
        assert_eq!(again.len(), fields.len());
    }
});
