//! Audit export verification (and with it audit record and checkpoint decoding): auditors
//! feed it files from anywhere.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let verifier = credbroker::keys::AuditVerifier::parse(
        br#"{"algorithm":"ed25519","public_key":"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="}"#,
    )
    .expect("fixed key parses");
    let _ = credbroker::audit::verify_export(data, &verifier);
    // The whole file as `audit verify --export` reads it: split into documents by position,
    // each read by two cursors side by side.
    let _ = credbroker::audit::verify_exports(&data, &verifier);
    let _ =
        serde_json::from_slice::<credbroker::audit::AuditRecord>(data).map(|r| r.compute_hash());
});
