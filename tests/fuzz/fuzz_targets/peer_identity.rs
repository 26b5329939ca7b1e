//! Client certificate DER to SPIFFE identity (x509-parser plus our SAN rules).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = credbroker::identity::peer_identity(data, "example.org");
    let _ = credbroker::identity::parse_spiffe_id(&String::from_utf8_lossy(data), "example.org");
});
