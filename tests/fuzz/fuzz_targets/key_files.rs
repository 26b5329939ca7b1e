//! Key files read at start (KEK keyring, audit public key).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = credbroker::keys::Keyring::parse(data);
    let _ = credbroker::keys::AuditVerifier::parse(data);
});
