//! Secret field objects (admin bodies, opened secret payloads): the zeroizing parser accepts
//! exactly what serde_json accepts as a map of strings with valid names, with the same
//! values, and its own output parses back to the same fields.
#![no_main]
use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ours = credbroker_providers::SecretFields::from_json(data);
    let theirs = serde_json::from_slice::<BTreeMap<String, String>>(data)
        .ok()
        .filter(|m| {
            m.keys()
                .all(|k| credbroker_providers::validate_field_name(k).is_ok())
        });
    match (&ours, &theirs) {
        (Ok(fields), Some(map)) => {
            assert_eq!(
                fields.names().collect::<Vec<_>>(),
                map.keys().map(String::as_str).collect::<Vec<_>>()
            );
            for (name, value) in map {
                assert_eq!(fields.expose(name), Some(value.as_str()), "value of {name}");
            }
        }
        (Err(_), None) => {}
        (ours, theirs) => panic!(
            "parsers disagree: ours ok {}, serde_json ok {}",
            ours.is_ok(),
            theirs.is_some()
        ),
    }
    if let Ok(fields) = ours {
        let again = credbroker_providers::SecretFields::from_json(&fields.to_json_zeroizing())
            .expect("own output parses");
        assert_eq!(again.len(), fields.len());
        for name in fields.names() {
            assert_eq!(again.expose(name), fields.expose(name));
        }
    }
});
