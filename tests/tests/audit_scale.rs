//! `audit verify`, `audit export`, `audit report` and `audit verify --export` on a large log
//! keep their memory flat: each reads the log (or the export) a line at a time. A log is
//! written here record by record the way the writer writes it (sealed records, a signed
//! checkpoint every 1,000), then each command runs as a child process whose peak resident
//! memory is asserted.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use credbroker::audit::{AuditEvent, AuditRecord, Checkpoint, GENESIS_HASH};
use credbroker::keys::AuditSigner;
use credbroker_tests::*;

/// Records of the log `audit verify` checks (about 500 MiB).
const RECORDS: u64 = 1_000_000;
/// Records of the log `audit export` and `audit report` read (about 100 MiB; each reads it
/// several times over, and this suite runs unoptimized).
const SMALLER: u64 = 200_000;
/// Far below either log's size: what a reader holding it whole would need.
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// Writes `n` chained records and a checkpoint every 1,000 into `audit_dir`.
fn write_log(audit_dir: &Path, signer: &AuditSigner, n: u64) {
    std::fs::create_dir_all(audit_dir).unwrap();
    std::fs::write(audit_dir.join("audit.log"), b"").unwrap();
    std::fs::write(audit_dir.join("checkpoints.log"), b"").unwrap();
    append_log(audit_dir, signer, 1, GENESIS_HASH, n);
}

/// Appends records `from..from + n` after the record whose hash is `prev` (and their
/// checkpoints, one every 1,000), as the writer would; returns the last hash.
fn append_log(audit_dir: &Path, signer: &AuditSigner, from: u64, prev: &str, n: u64) -> String {
    let open = |name: &str| {
        std::fs::OpenOptions::new()
            .append(true)
            .open(audit_dir.join(name))
            .unwrap()
    };
    let mut log = std::io::BufWriter::with_capacity(1 << 20, open("audit.log"));
    let mut cps = open("checkpoints.log");
    let base = time::OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap();
    let mut prev = prev.to_owned();
    for seq in from..from + n {
        let time = (base + time::Duration::milliseconds(seq as i64 * 10))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let mut rec = AuditRecord {
            replica: None,
            seq,
            time: time.clone(),
            event: AuditEvent {
                kind: "resolve".into(),
                action: "resolve".into(),
                request_id: format!("req_{seq:032x}"),
                actor: "worker:w1".into(),
                tenant: Some(format!("t{}", seq % 10)),
                instance: Some("i1".into()),
                binding: Some("b1".into()),
                provider: Some("pasted_secret".into()),
                outcome: if seq % 50 == 0 { "denied" } else { "allowed" }.into(),
                error_code: (seq % 50 == 0).then(|| "instance_disabled".into()),
                latency_us: 120,
                ..Default::default()
            },
            prev_hash: prev.clone(),
            hash: String::new(),
        };
        let line = rec.seal();
        log.write_all(&line).unwrap();
        log.write_all(b"\n").unwrap();
        prev.clone_from(&rec.hash);
        if seq % 1000 == 0 {
            let sig = signer.sign(&Checkpoint::signed_message(seq, &rec.hash, &time));
            let cp = Checkpoint {
                seq,
                hash: rec.hash.clone(),
                time,
                signature: B64.encode(sig),
            };
            writeln!(cps, "{}", serde_json::to_string(&cp).unwrap()).unwrap();
        }
    }
    log.flush().unwrap();
    prev
}

/// Runs the CLI with `args`; exit code, stdout, and the child's peak RSS (KiB).
fn run_measured(args: &[&str]) -> (i32, String, u64) {
    let mut child = Command::new(daemon_bin())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap());
    // VmHWM only grows: its last reading before the exit is the peak, give or take the
    // last few milliseconds.
    let mut peak = 0;
    loop {
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code().unwrap_or(-1), reader.join().unwrap(), peak);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn verify_export_and_report_of_a_million_records_stay_in_bounded_memory() {
    init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = data.to_str().unwrap();
    let (code, _, err) = run_cli(&["init", "--data-dir", d]);
    assert_eq!(code, 0, "{err}");
    let signer = AuditSigner::load(&data.join("keys/audit-signing.key")).unwrap();
    let t = std::time::Instant::now();
    write_log(&data.join("audit"), &signer, RECORDS);
    let size = std::fs::metadata(data.join("audit/audit.log"))
        .unwrap()
        .len();
    println!(
        "wrote {RECORDS} records ({} MiB) in {:.1} s",
        size >> 20,
        t.elapsed().as_secs_f64()
    );

    let t = std::time::Instant::now();
    let (code, out, peak) = run_measured(&["audit", "verify", "--data-dir", d, "--output", "json"]);
    println!(
        "audit verify: {:.1} s, peak RSS {} MiB",
        t.elapsed().as_secs_f64(),
        peak >> 10
    );
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["chains"][0]["records"], RECORDS, "{v}");
    assert!(peak < RSS_BOUND_KIB, "audit verify peaked at {peak} KiB");

    // A smaller log for export and report.
    std::fs::remove_file(data.join("audit/audit.log")).unwrap();
    write_log(&data.join("audit"), &signer, SMALLER);
    let export = tmp.path().join("t3.jsonl");
    let t = std::time::Instant::now();
    let (code, _, peak) = run_measured(&[
        "audit",
        "export",
        "--data-dir",
        d,
        "--tenant",
        "t3",
        "--output",
        export.to_str().unwrap(),
    ]);
    println!(
        "audit export --tenant: {:.1} s, peak RSS {} MiB",
        t.elapsed().as_secs_f64(),
        peak >> 10
    );
    assert_eq!(code, 0);
    assert!(peak < RSS_BOUND_KIB, "audit export peaked at {peak} KiB");
    let key = data.join("keys/audit-signing.pub");
    let (code, out, err) = run_cli(&[
        "audit",
        "verify",
        "--export",
        export.to_str().unwrap(),
        "--public-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{} records", SMALLER / 10)), "{out}");

    // The whole log exported (about 130 MiB with its attestations) and verified from the
    // file: read by position, records and attestations side by side, never whole.
    let full = tmp.path().join("full.jsonl");
    let (code, _, _) = run_measured(&[
        "audit",
        "export",
        "--data-dir",
        d,
        "--output",
        full.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    let size = std::fs::metadata(&full).unwrap().len();
    let t = std::time::Instant::now();
    let (code, out, peak) = run_measured(&[
        "audit",
        "verify",
        "--export",
        full.to_str().unwrap(),
        "--public-key",
        key.to_str().unwrap(),
    ]);
    println!(
        "audit verify --export ({} MiB): {:.1} s, peak RSS {} MiB",
        size >> 20,
        t.elapsed().as_secs_f64(),
        peak >> 10
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{SMALLER} records")), "{out}");
    assert!(
        peak < RSS_BOUND_KIB && size > 2 * (RSS_BOUND_KIB << 10),
        "audit verify --export of {size} bytes peaked at {peak} KiB"
    );

    let summary = tmp.path().join("report.json");
    let t = std::time::Instant::now();
    let (code, _, peak) = run_measured(&[
        "audit",
        "report",
        "--data-dir",
        d,
        "--json",
        summary.to_str().unwrap(),
    ]);
    println!(
        "audit report: {:.1} s, peak RSS {} MiB",
        t.elapsed().as_secs_f64(),
        peak >> 10
    );
    assert_eq!(code, 0);
    assert!(peak < RSS_BOUND_KIB, "audit report peaked at {peak} KiB");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(
        v["resolves_by_outcome"]["denied"],
        SMALLER / 50,
        "{}",
        v["resolves_by_outcome"]
    );
}

/// `audit report` verifies the log twice and compares: a daemon appending records and
/// signing a checkpoint between the two passes is not a change of what was verified.
#[test]
fn a_second_pass_over_a_growing_log_verifies_the_same_records() {
    init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let signer = AuditSigner::generate(&keys.join("a.key"), &keys.join("a.pub")).unwrap();
    let audit = tmp.path().join("audit");
    write_log(&audit, &signer, 2500);
    let max = credbroker::config::AuditSettings::default().max_unanchored();
    let verifier = signer.verifier();
    let silent = credbroker::progress::Silent;
    let first = credbroker::audit::verify_log_with(&audit, &verifier, max, &silent).unwrap();
    // Meanwhile the daemon appends, and signs a checkpoint past what was verified.
    let last = first.last_hash.clone().unwrap();
    append_log(&audit, &signer, 2501, &last, 1000);
    let mut seen = 0;
    let second = credbroker::audit::verify_log_visit(
        &audit,
        &verifier,
        max,
        Some((first.bytes, first.last_seq.unwrap())),
        None,
        &silent,
        &mut |_| seen += 1,
    )
    .unwrap();
    assert_eq!(
        (second.records, second.last_seq, &second.last_hash),
        (first.records, first.last_seq, &first.last_hash)
    );
    assert_eq!(seen, 2500);
    // The whole log, read again, is longer and verifies too.
    let all = credbroker::audit::verify_log_with(&audit, &verifier, max, &silent).unwrap();
    assert_eq!(all.records, 3500);
}
