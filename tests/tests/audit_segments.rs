//! The segmented audit log across releases and archives. `tests/fixtures/audit-legacy-251e3b6`
//! is the audit directory and audit key of the previous release's `credbroker dev` (commit
//! 251e3b6: a single `audit.log`, 26 resolves and the bootstrap's admin records, one final
//! checkpoint). This release verifies it as it is, a daemon continues its chain in segments,
//! sealed segments — the old log among them — move to the archive, and a byte changed in
//! an archived file names its record.

use std::path::{Path, PathBuf};

use credbroker::audit::segments::{self, segment_name};
use credbroker_tests::*;
use serde_json::{json, Value};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audit-legacy-251e3b6")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn verify_json(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["audit", "verify", "--output", "json"];
    all.extend_from_slice(args);
    let (c, out, err) = run_cli(&all);
    let v = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}{err}"));
    (c, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_the_previous_release_verifies_and_is_continued_in_archived_segments() {
    let fx = fixture();
    let public_key = fx.join("keys/audit-signing.pub");
    let pinned = public_key.to_str().unwrap();

    // As it is: the previous release's directory, verified by this one.
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old");
    copy_dir(&fx.join("audit"), &old.join("audit"));
    let (c, v) = verify_json(&["--data-dir", old.to_str().unwrap(), "--public-key", pinned]);
    assert_eq!(c, 0, "{v}");
    assert_eq!(v["chains"][0]["records"], 32, "{v}");
    assert_eq!(v["chains"][0]["last_checkpoint"], 32, "{v}");
    assert_eq!(
        (&v["public_key_pinned"], &v["notes"]),
        (&json!(true), &json!([])),
        "{v}"
    );

    // A daemon on it: a segment every 5 records, none kept beside the live one.
    let (tmp, pki) = setup();
    let options = DaemonOptions {
        extra_toml: "[audit]\nsegment_records = 5\nlive_segments = 0\n".into(),
        ..DaemonOptions::default()
    };
    let mut daemon = Daemon::start(tmp.path(), &pki, &options);
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    daemon.stop();
    let audit = daemon.data_dir.join("audit");
    std::fs::remove_dir_all(&audit).unwrap();
    copy_dir(&fx.join("audit"), &audit);
    for key in ["audit-signing.key", "audit-signing.pub"] {
        let to = daemon.data_dir.join("keys").join(key);
        std::fs::copy(fx.join("keys").join(key), &to).unwrap();
        // A checkout carries no file mode but 644 or 755; the daemon refuses a key others
        // can read.
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    daemon.restart();
    let mut w1 = pki.client_for("w1", &daemon.url);
    for _ in 0..12 {
        let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
        assert_eq!(s, 200, "{v}");
    }
    daemon.stop();

    let config = daemon.config.to_str().unwrap();
    let (c, v) = verify_json(&["--config", config, "--public-key", pinned]);
    assert_eq!(c, 0, "{v}");
    let records = v["chains"][0]["records"].as_u64().unwrap();
    assert!(records >= 32 + 12, "{v}");
    assert_eq!(v["chains"][0]["last_seq"], records, "{v}");

    // The old log was never written again, and is in the archive with the sealed segments.
    let listed = segments::list(&audit).unwrap();
    assert_eq!(listed[0].n, 0);
    assert!(listed[0].archived, "{listed:?}");
    assert_eq!(
        std::fs::read(&listed[0].path).unwrap(),
        std::fs::read(fx.join("audit/audit.log")).unwrap()
    );
    assert!(listed.len() >= 4, "{listed:?}");
    assert!(listed[1..listed.len() - 1].iter().all(|s| s.archived));
    assert!(!listed.last().unwrap().archived);
    // Segment 1 continues the old log's chain.
    let first = segment_bytes(&listed[1].path);
    let header: Value =
        serde_json::from_slice(first.split(|b| *b == b'\n').next().unwrap()).unwrap();
    let old_last: Value = serde_json::from_str(
        std::fs::read_to_string(fx.join("audit/audit.log"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["segment"]["first_seq"], 33);
    assert_eq!(header["segment"]["prev_hash"], old_last["hash"]);

    // One byte changed in an archived file names its record: in the old log, and in a
    // sealed segment.
    let flip = |path: &Path, seq: u64| {
        let original = std::fs::read(path).unwrap();
        let needle = format!("{{\"seq\":{seq},\"time\":\"");
        let at = original
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap_or_else(|| panic!("record {seq} not in {}", path.display()));
        let mut bytes = original.clone();
        let digit = at + needle.len() + 3; // inside the year
        bytes[digit] = if bytes[digit] == b'7' { b'8' } else { b'7' };
        std::fs::write(path, &bytes).unwrap();
        let (c, v) = verify_json(&["--config", config, "--public-key", pinned]);
        std::fs::write(path, &original).unwrap();
        (c, v)
    };
    let (c, v) = flip(&listed[0].path, 5);
    assert_eq!(c, 1, "{v}");
    assert_eq!(v["chains"][0]["failure"]["seq"], 5, "{v}");
    let sealed = &listed[2];
    let seq = segments::scan(&std::fs::File::open(&sealed.path).unwrap())
        .unwrap()
        .header
        .unwrap()
        .first_seq
        + 1;
    let (c, v) = flip(&sealed.path, seq);
    assert_eq!(c, 1, "{v}");
    assert_eq!(v["chains"][0]["failure"]["seq"], seq, "{v}");

    // One sealed segment on its own, as an auditor handed only that file checks it: its
    // records chain from its header and its seal verifies.
    let alone =
        |path: &Path| verify_json(&["--segment", path.to_str().unwrap(), "--public-key", pinned]);
    let (c, v) = alone(&sealed.path);
    assert_eq!(c, 0, "{v}");
    assert_eq!(v["chains"][0]["first_seq"], seq - 1, "{v}");
    assert_eq!(v["chains"][0]["checkpoints"], 1, "{v}");
    // What one file does not prove is said in the JSON too.
    assert!(
        v["notes"][0]
            .as_str()
            .unwrap()
            .contains("It does not prove it is the whole segment"),
        "{v}"
    );
    let whole = segment_bytes(&sealed.path);
    let text = String::from_utf8(whole.clone()).unwrap();
    let body: Vec<&str> = text.lines().collect();
    let copy = tmp.path().join("handed-over.log");
    let alone_with = |bytes: &[u8]| {
        std::fs::write(&copy, bytes).unwrap();
        alone(&copy)
    };
    let needle = format!("{{\"seq\":{seq},\"time\":\"");
    let at = text.find(&needle).unwrap() + needle.len() + 3;
    let mut flipped = whole.clone();
    flipped[at] = if flipped[at] == b'7' { b'8' } else { b'7' };
    let (c, v) = alone_with(&flipped);
    assert_eq!(
        (c, &v["chains"][0]["failure"]["seq"]),
        (1, &json!(seq)),
        "{v}"
    );
    let unsealed = body[..body.len() - 1].join("\n") + "\n";
    let (c, v) = alone_with(unsealed.as_bytes());
    assert_eq!(c, 1, "{v}");
    assert!(v.to_string().contains("is not sealed"), "{v}");
    let seal = body[body.len() - 1];
    let sig_at = seal.find("\"signature\":\"").unwrap() + 13;
    let mut forged = seal.as_bytes().to_vec();
    forged[sig_at] = if forged[sig_at] == b'A' { b'B' } else { b'A' };
    let forged = [
        body[..body.len() - 1].join("\n").as_bytes(),
        b"\n",
        &forged,
        b"\n",
    ]
    .concat();
    let (c, v) = alone_with(&forged);
    assert_eq!(c, 1, "{v}");
    assert!(v.to_string().contains("seal signature is invalid"), "{v}");
    // A header with the segment before's seal and no record: a genuine signature over
    // nothing this segment holds.
    let before = String::from_utf8(segment_bytes(&listed[1].path)).unwrap();
    let empty = format!("{}\n{}\n", body[0], before.lines().last().unwrap());
    let (c, v) = alone_with(empty.as_bytes());
    assert_eq!(c, 1, "{v}");
    assert!(v.to_string().contains("holds no record"), "{v}");
    // Zeros after the seal (space filled ahead) are fine; a line hidden behind a NUL is not.
    let (c, v) = alone_with(&[whole.as_slice(), &[0u8; 4096]].concat());
    assert_eq!(c, 0, "{v}");
    let (c, v) = alone_with(&[whole.as_slice(), b"\0\0{\"seq\":999}\n"].concat());
    assert_eq!(c, 1, "{v}");
    assert!(v.to_string().contains("after its seal"), "{v}");
    let renamed = tmp.path().join(segment_name(sealed.n + 1));
    std::fs::write(&renamed, &whole).unwrap();
    let (c, v) = alone(&renamed);
    assert_eq!(c, 1, "{v}");
    assert!(v.to_string().contains("renamed or swapped"), "{v}");
    let (c, v) = alone(&listed.last().unwrap().path);
    assert_eq!(c, 1, "{v}");
    assert!(v.to_string().contains("is not sealed"), "{v}");
    let (c, v) = alone(&listed[0].path);
    assert_eq!(c, 1, "{v}");
    assert!(v.to_string().contains("not a segment"), "{v}");

    // The same hidden line in the archived segment itself: the directory walk refuses it.
    let original = std::fs::read(&sealed.path).unwrap();
    std::fs::write(
        &sealed.path,
        [original.as_slice(), b"\0{\"seq\":999}\n"].concat(),
    )
    .unwrap();
    let (c, v) = verify_json(&["--config", config, "--public-key", pinned]);
    std::fs::write(&sealed.path, &original).unwrap();
    assert_eq!(c, 1, "{v}");
    assert!(v.to_string().contains("after its seal"), "{v}");

    // Restored, it verifies again; an archived segment removed is named.
    let (c, v) = verify_json(&["--config", config, "--public-key", pinned]);
    assert_eq!(c, 0, "{v}");
    std::fs::remove_file(&sealed.path).unwrap();
    let (c, v) = verify_json(&["--config", config, "--public-key", pinned]);
    assert_eq!(c, 1, "{v}");
    let reason = v["chains"][0]["failure"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("{} is missing", segment_name(sealed.n))),
        "{v}"
    );
}

/// Sequence numbers at the very end of the range are refused, not overflowed: a handed-over
/// segment is hostile input, and its header chooses where the chain starts.
#[test]
fn a_segment_numbered_at_the_end_of_the_range_is_refused_without_overflow() {
    init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let signer = credbroker::keys::AuditSigner::generate(
        &tmp.path().join("audit.key"),
        &tmp.path().join("audit.pub"),
    )
    .unwrap();
    let verifier = signer.verifier();
    let prev = "ab".repeat(32);
    let mut rec = credbroker::audit::AuditRecord {
        replica: None,
        seq: u64::MAX,
        time: "2026-01-01T00:00:00Z".into(),
        event: credbroker::audit::AuditEvent {
            kind: "resolve".into(),
            ..Default::default()
        },
        prev_hash: prev.clone(),
        hash: String::new(),
    };
    let line = rec.seal();
    let header = segments::header_line(&segments::SegmentHeader {
        n: 7,
        first_seq: u64::MAX,
        prev_hash: prev,
        created: "2026-01-01T00:00:00Z".into(),
    });
    let path = tmp.path().join("handed-over.log");
    for tail in [&b""[..], &line[..]] {
        let bytes = [&header[..], &line, b"\n", tail, b"\n"].concat();
        std::fs::write(&path, bytes).unwrap();
        let e = credbroker::audit::verify_segment(&path, &verifier).unwrap_err();
        assert!(!e.reason.is_empty(), "{e}");
    }
}

/// What an auditor is handed is hostile input, and `audit verify` prints what it found in it:
/// a segment whose header quotes escape sequences (one cut inside a character, where a
/// quotation once fell back to the whole text), and a configuration whose key is one, reach
/// the terminal as text.
#[test]
fn escape_sequences_in_a_handed_over_log_or_config_never_reach_the_terminal() {
    init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let public_key = keys.join("audit.pub");
    credbroker::keys::AuditSigner::generate(&keys.join("audit.key"), &public_key).unwrap();
    let audit = tmp.path().join("handed/audit");
    std::fs::create_dir_all(&audit).unwrap();
    // ESC ] 0 ; … BEL sets a terminal's title; ESC [ 2 J clears its screen. `é` straddles
    // the 12th byte.
    let hostile = "\u{1b}]0;pwned\u{7}a\u{e9}\u{1b}[2J\u{9b}31m\u{202e}audit OK";
    let header = segments::header_line(&segments::SegmentHeader {
        n: 1,
        first_seq: 1,
        prev_hash: hostile.into(),
        created: "2026-01-01T00:00:00Z".into(),
    });
    let mut record = credbroker::audit::AuditRecord {
        replica: None,
        seq: 1,
        time: "2026-01-01T00:00:00Z".into(),
        event: credbroker::audit::AuditEvent {
            kind: "resolve".into(),
            ..Default::default()
        },
        prev_hash: hostile.into(),
        hash: String::new(),
    };
    let line = record.seal();
    std::fs::write(
        audit.join(segment_name(1)),
        [&header[..], &line, b"\n"].concat(),
    )
    .unwrap();
    let clean = |text: &str| {
        !text
            .chars()
            .any(|c| (c.is_control() && c != '\n') || credbroker_providers::is_bidi_control(c))
    };
    let (c, out, err) = run_cli(&[
        "audit",
        "verify",
        "--data-dir",
        tmp.path().join("handed").to_str().unwrap(),
        "--public-key",
        public_key.to_str().unwrap(),
    ]);
    assert_eq!(c, 1, "{out}{err}");
    assert!(
        out.contains("audit FAILED") && out.contains("pwned"),
        "{out:?}{err:?}"
    );
    assert!(clean(&out) && clean(&err), "{out:?}{err:?}");

    let config = tmp.path().join("credbroker.toml");
    std::fs::write(
        &config,
        "data_dir = \"data\"\n\"\\u001b]0;pwned\\u0007\\u001b[2J\" = 1\n",
    )
    .unwrap();
    let (c, out, err) = run_cli(&["audit", "verify", "--config", config.to_str().unwrap()]);
    assert_eq!(c, 2, "{out}{err}");
    assert!(err.contains("error:") && err.contains("pwned"), "{err:?}");
    assert!(clean(&out) && clean(&err), "{out:?}{err:?}");
}
