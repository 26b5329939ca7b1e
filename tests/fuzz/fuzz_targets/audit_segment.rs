//! Audit log segments as `audit verify` and the writer's start-up read them: header, seal
//! and record lines, NUL padding, torn lines. Whoever can write the data directory (or hands
//! an auditor a copy) controls these bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("fuzz-audit-segment-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("fuzz directory");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let verifier = credbroker::keys::AuditVerifier::parse(
        br#"{"algorithm":"ed25519","public_key":"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="}"#,
    )
    .expect("fixed key parses");
    let path = dir().join(credbroker::audit::segments::segment_name(1));
    std::fs::write(&path, data).expect("write segment");
    let _ = credbroker::audit::verify_log(dir(), &verifier, 1128);
    let _ = credbroker::audit::verify_since_last_checkpoint(dir(), &verifier, 1128);
    // The same file handed over on its own (`audit verify --segment`).
    let _ = credbroker::audit::verify_segment(&path, &verifier);
    if let Ok(file) = std::fs::File::open(&path) {
        let _ = credbroker::audit::segments::scan(&file);
    }
    for line in data.split(|b| *b == b'\n') {
        let _ = credbroker::audit::segments::classify(line);
    }
});
