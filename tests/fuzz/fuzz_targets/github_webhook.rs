//! GitHub webhooks: the signature check on arbitrary headers and bodies, and the event parser
//! behind it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let header = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or_default();
    let _ = credbroker_providers::github::verify_signature(
        b"fuzz-webhook-secret-xxxxxxxx",
        body,
        Some(&header),
    );
    for event in ["installation", "ping", ""] {
        let _ = credbroker_providers::github::parse_installation_event(event, body);
    }
});
