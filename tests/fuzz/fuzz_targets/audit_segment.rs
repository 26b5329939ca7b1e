//! Audit log segments as `audit verify` and the writer's start-up read them: header, seal
//! and record lines, NUL padding, torn lines. Whoever can write the data directory (or hands
//! an auditor a copy) controls these bytes. Three inputs in sixteen (by the first byte) are
//! opened by the writer itself, as `serve` does at start-up: as the live segment, as the
//! single-file log of an earlier release, or as the live segment and the checkpoint file at
//! once (the tail readers, the torn-tail cut, the checkpoint reader, a forensic start).
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

/// A directory of its own for the writer's start-up (emptied before each opening), and the
/// key it signs with.
fn writer_dir() -> &'static (std::path::PathBuf, std::path::PathBuf) {
    static DIR: std::sync::OnceLock<(std::path::PathBuf, std::path::PathBuf)> =
        std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("fuzz-audit-writer-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("fuzz directory");
        let key = d.join("audit.key");
        credbroker::keys::AuditSigner::generate(&key, &d.join("audit.pub")).expect("audit key");
        (d.join("audit"), key)
    })
}

/// Opens the writer over an audit directory holding `data` as the file(s) `mode` names, as
/// a forensic start does (past a log that does not verify), then closes it.
fn open_writer(mode: u8, data: &[u8]) {
    let (dir, key) = writer_dir();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("audit directory");
    let segment = dir.join(credbroker::audit::segments::segment_name(1));
    match mode {
        1 => std::fs::write(&segment, data).expect("write segment"),
        2 => std::fs::write(credbroker::audit::legacy_log_path(dir), data).expect("write log"),
        _ => {
            std::fs::write(&segment, data).expect("write segment");
            std::fs::write(credbroker::audit::checkpoints_path(dir), data)
                .expect("write checkpoints");
        }
    }
    let signer = credbroker::keys::AuditSigner::load(key).expect("audit key loads");
    let config = credbroker::audit::AuditConfig {
        dir: dir.clone(),
        segment_bytes: 1 << 20,
        segment_records: 0,
        live_segments: 2,
        max_batch: 64,
        checkpoint_every_records: 1024,
        checkpoint_interval: std::time::Duration::from_secs(3600),
        forensic_start: true,
    };
    if let Ok(log) = credbroker::audit::AuditLog::open(config, signer) {
        log.close();
    }
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
    if let Some(mode @ 1..=3) = data.first().map(|b| b % 16) {
        open_writer(mode, data);
    }
});
