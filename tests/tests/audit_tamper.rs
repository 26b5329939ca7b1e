//! Tamper evidence: any edit, deletion or reordering of a stored or exported record makes
//! `audit verify` fail and name the first bad sequence number.

use std::path::Path;

use credbroker::audit::segments::segment_name;
use credbroker::audit::{verify_export, verify_log};
use credbroker::keys::AuditVerifier;
use credbroker_tests::*;
use serde_json::json;

/// Record lines (and export or checkpoint lines): a segment's header and the space zero-filled
/// after its written part are left out.
fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    bytes[..end]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty() && !l.starts_with(b"{\"segment\":"))
        .map(<[u8]>::to_vec)
        .collect()
}

/// Writes `records` to the segment at `path` under the header `original` starts with.
fn put(path: &Path, original: &[u8], records: &[Vec<u8>]) {
    let header_end = original.iter().position(|b| *b == b'\n').unwrap() + 1;
    assert!(original.starts_with(b"{\"segment\":"));
    let mut bytes = original[..header_end].to_vec();
    bytes.extend(join(records));
    std::fs::write(path, bytes).unwrap();
}

fn join(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

fn verify_cli(daemon: &Daemon) -> (i32, String) {
    let (c, out, err) = daemon.cli(&[
        "audit",
        "verify",
        "--config",
        daemon.config.to_str().unwrap(),
    ]);
    (c, format!("{out}{err}"))
}

fn verify_export_cli(export: &Path, public_key: &Path) -> (i32, String) {
    verify_export_with(export, public_key, &[])
}

/// `audit verify --export EXPORT --public-key KEY` and `extra`: exit code and output.
fn verify_export_with(export: &Path, public_key: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "audit",
        "verify",
        "--export",
        export.to_str().unwrap(),
        "--public-key",
        public_key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (c, out, err) = run_cli(&args);
    (c, format!("{out}{err}"))
}

/// `audit verify --config CONFIG --public-key KEY` and `extra`: exit code and output.
fn verify_with_key(config: &str, key: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "audit",
        "verify",
        "--config",
        config,
        "--public-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (c, out, err) = run_cli(&args);
    (c, format!("{out}{err}"))
}

/// `audit report --config CONFIG --public-key KEY FLAG FILE` (`--pinned` or `--previous`),
/// its JSON and HTML written into `dir`: exit code, the JSON summary, the page.
fn report_with(
    dir: &Path,
    config: &str,
    key: &Path,
    flag: &str,
    file: &Path,
) -> (i32, serde_json::Value, String) {
    let (json_out, html_out) = (dir.join("r.json"), dir.join("r.html"));
    let _ = std::fs::remove_file(&json_out);
    let (c, out, err) = run_cli(&[
        "audit",
        "report",
        "--config",
        config,
        "--public-key",
        key.to_str().unwrap(),
        flag,
        file.to_str().unwrap(),
        "--json",
        json_out.to_str().unwrap(),
        "--html",
        html_out.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&json_out).unwrap_or_else(|e| panic!("{e}: {out}{err}")),
    )
    .unwrap();
    let html = std::fs::read_to_string(&html_out).unwrap();
    (c, v, html)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_and_exported_logs_reveal_edits_deletions_and_swaps() {
    let (tmp, pki) = setup();
    let mut daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let mut w1 = pki.client_for("w1", &daemon.url);
    for i in 0..10 {
        let (s, _) = resolve(
            &mut w1,
            json!({"instance_id": if i % 3 == 0 { "i2" } else { "i1" }}),
        )
        .await;
        // Another tenant's instance is answered like one that does not exist.
        assert_eq!(s, if i % 3 == 0 { 404 } else { 200 }, "resolve {i}");
    }
    daemon.stop(); // writes a final signed checkpoint
    let log_path = audit_segments(&daemon.data_dir).pop().unwrap();
    let public_key = daemon.data_dir.join("keys/audit-signing.pub");
    let verifier = AuditVerifier::load(&public_key).unwrap();
    let original = std::fs::read(&log_path).unwrap();
    let recs = lines(&original);
    assert!(recs.len() >= 19, "{} records", recs.len());
    let (c, out) = verify_cli(&daemon);
    assert_eq!(c, 0, "{out}");

    // Every single-byte change anywhere in record 5 is detected and names sequence 5.
    let k = 5;
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::copy(
        daemon.data_dir.join("audit/checkpoints.log"),
        scratch.join("checkpoints.log"),
    )
    .unwrap();
    for pos in 0..recs[k - 1].len() {
        let mut tampered = recs.clone();
        tampered[k - 1][pos] ^= 0x01;
        put(&scratch.join(segment_name(1)), &original, &tampered);
        let err = verify_log(&scratch, &verifier, 1128).expect_err("tampering must be detected");
        assert_eq!(err.seq, k as u64, "byte {pos}: {err}");
    }

    // Through the CLI on the stored log: edit, delete, swap, cut the tail.
    let cases: Vec<(&str, Vec<Vec<u8>>, u64)> = vec![
        (
            "edit",
            {
                let mut t = recs.clone();
                let s = String::from_utf8(t[k - 1].clone())
                    .unwrap()
                    .replace("\"allowed\"", "\"denied\"")
                    .replace("\"admin\"", "\"resolve\"");
                t[k - 1] = s.into_bytes();
                t
            },
            k as u64,
        ),
        (
            "delete",
            {
                let mut t = recs.clone();
                t.remove(k - 1);
                t
            },
            k as u64,
        ),
        (
            "swap",
            {
                let mut t = recs.clone();
                t.swap(k - 1, k);
                t
            },
            k as u64,
        ),
        (
            "truncate",
            recs[..recs.len() - 1].to_vec(),
            recs.len() as u64,
        ),
    ];
    for (name, tampered, seq) in &cases {
        put(&log_path, &original, tampered);
        let (c, out) = verify_cli(&daemon);
        assert_eq!(c, 1, "{name}: {out}");
        assert!(out.contains(&format!("at sequence {seq}")), "{name}: {out}");
    }
    std::fs::write(&log_path, &original).unwrap();

    // Exports verify with the public key alone, and reveal the same tampering.
    let export = tmp.path().join("export.jsonl");
    let (c, _, err) = daemon.cli(&[
        "audit",
        "export",
        "--config",
        daemon.config.to_str().unwrap(),
        "--output",
        export.to_str().unwrap(),
    ]);
    assert_eq!(c, 0, "{err}");
    // It names tenants, actors and token fingerprints: its owner's only, whatever the umask.
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&export).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "export mode {mode:o}");
    let (c, out) = verify_export_cli(&export, &public_key);
    assert_eq!(c, 0, "{out}");
    // A pipe cannot be read by position: it is copied to a temporary file first (not into
    // memory), and verifies the same.
    let mut child = std::process::Command::new(daemon_bin())
        .args(["audit", "verify", "--export", "/dev/stdin", "--public-key"])
        .arg(&public_key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let bytes = std::fs::read(&export).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &bytes).unwrap());
    let piped = child.wait_with_output().unwrap();
    assert!(piped.status.success(), "{piped:?}");
    assert!(
        String::from_utf8_lossy(&piped.stdout).contains("audit OK"),
        "{piped:?}"
    );
    // With nowhere to copy it, said so (never read into memory instead).
    let refused = std::process::Command::new(daemon_bin())
        .args(["audit", "verify", "--export", "/dev/stdin", "--public-key"])
        .arg(&public_key)
        .env("TMPDIR", tmp.path().join("no-such-dir"))
        .stdin(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("no temporary file to hold the piped export"),
        "{refused:?}"
    );
    // A device put in the export's place (someone with write access to where it is kept)
    // is no export: refused, never copied (`/dev/zero` would fill the temporary directory).
    let planted = tmp.path().join("planted-export.jsonl");
    std::os::unix::fs::symlink("/dev/zero", &planted).unwrap();
    let refused = std::process::Command::new(daemon_bin())
        .args(["audit", "verify", "--export"])
        .arg(&planted)
        .arg("--public-key")
        .arg(&public_key)
        .env("TMPDIR", tmp.path().join("no-such-dir"))
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("not an export (a device or a directory)"),
        "{refused:?}"
    );
    let exported = lines(&std::fs::read(&export).unwrap());
    // Line 0 is the header; record k is line k.
    let export_cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("flip", {
            let mut t = exported.clone();
            let mid = t[k].len() / 2;
            t[k][mid] ^= 0x01;
            t
        }),
        ("delete", {
            let mut t = exported.clone();
            t.remove(k);
            t
        }),
        ("swap", {
            let mut t = exported.clone();
            t.swap(k, k + 1);
            t
        }),
    ];
    for (name, tampered) in &export_cases {
        let path = tmp.path().join(format!("export-{name}.jsonl"));
        std::fs::write(&path, join(tampered)).unwrap();
        let (c, out) = verify_export_cli(&path, &public_key);
        assert_eq!(c, 1, "{name}: {out}");
        assert!(out.contains(&format!("at sequence {k}")), "{name}: {out}");
        assert_eq!(
            verify_export(&join(tampered), &verifier).unwrap_err().seq,
            k as u64
        );
    }
    // A forged checkpoint signature is rejected.
    let mut forged = exported.clone();
    let last = forged.len() - 1;
    let text = String::from_utf8(forged[last].clone()).unwrap();
    let sig_at = text.find("\"signature\":\"").unwrap() + 13;
    let mut bytes = text.into_bytes();
    bytes[sig_at] = if bytes[sig_at] == b'A' { b'B' } else { b'A' };
    forged[last] = bytes;
    assert!(verify_export(&join(&forged), &verifier).is_err());

    // A filtered export verifies and says what it cannot prove.
    let (c, out, _) = daemon.cli(&[
        "audit",
        "export",
        "--config",
        daemon.config.to_str().unwrap(),
        "--tenant",
        "t2",
    ]);
    assert_eq!(c, 0);
    let t2 = tmp.path().join("t2.jsonl");
    std::fs::write(&t2, &out).unwrap();
    for line in out
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("{\"checkpoint\"") && !l.starts_with("{\"attest\""))
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["tenant"], "t2");
    }
    let (c, out) = verify_export_cli(&t2, &public_key);
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("filtered export"), "{out}");
    // ... and names the filter its signature covers.
    assert!(out.contains("signed filter: tenant=t2"), "{out}");
}

/// Rewrites record line `line` of an export with `edit` applied and its own hash recomputed,
/// as a forger who knows the format would.
fn forge(line: &[u8], edit: impl FnOnce(&mut credbroker::audit::AuditRecord)) -> Vec<u8> {
    let mut rec: credbroker::audit::AuditRecord = serde_json::from_slice(line).unwrap();
    edit(&mut rec);
    rec.seal()
}

/// Export forgery (issue 10, item 5): in filtered and in full exports, a record altered with
/// its hash recomputed, a record inserted, a record deleted and a relabelled header are all
/// caught, naming the sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_exports_are_caught_naming_the_sequence() {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    pki.worker("w2");
    let (s, v) = call(
        &mut op,
        http::Method::POST,
        "/v1/admin/workers",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "w2", "tenants": ["t2"]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    for (worker, instance) in [
        ("w1", "i1"),
        ("w2", "i2"),
        ("w1", "i1"),
        ("w2", "i2"),
        ("w1", "i1"),
        ("w2", "i2"),
    ] {
        let mut w = pki.client_for(worker, &daemon.url);
        let (s, v) = resolve(&mut w, json!({"instance_id": instance})).await;
        assert_eq!(s, 200, "{v}");
    }
    let verifier =
        credbroker::keys::AuditVerifier::load(&daemon.data_dir.join("keys/audit-signing.pub"))
            .unwrap();
    let export_of = |extra: &[&str]| -> Vec<Vec<u8>> {
        let mut args = vec![
            "audit",
            "export",
            "--config",
            daemon.config.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (c, out, err) = daemon.cli(&args);
        assert_eq!(c, 0, "{err}");
        lines(out.as_bytes())
    };
    for (label, extra) in [("full", vec![]), ("filtered", vec!["--tenant", "t2"])] {
        let exported = export_of(&extra);
        assert!(
            verify_export(&join(&exported), &verifier).is_ok(),
            "{label}"
        );
        let records: Vec<usize> = (1..exported.len())
            .filter(|i| {
                !exported[*i].starts_with(b"{\"attest\"")
                    && !exported[*i].starts_with(b"{\"checkpoint\"")
            })
            .collect();
        assert!(records.len() >= 3, "{label}");
        let at = records[1];
        let seq_of = |l: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        };
        let seq = seq_of(&exported[at]);

        // Altered, hash recomputed: the record's own hash checks out, its attestation does not.
        let mut t = exported.clone();
        t[at] = forge(&exported[at], |r| r.event.outcome = "denied".into());
        let e = verify_export(&join(&t), &verifier).unwrap_err();
        assert_eq!(e.seq, seq, "{label} alter: {e}");

        // Inserted: a made-up record (copied, renumbered into a gap or past the end).
        let mut t = exported.clone();
        let last_seq = seq_of(&exported[*records.last().unwrap()]);
        let fake = forge(&exported[at], |r| {
            r.seq = last_seq + 1;
            r.event.detail = Some("invented".into());
        });
        t.insert(*records.last().unwrap() + 1, fake);
        let e = verify_export(&join(&t), &verifier).unwrap_err();
        assert_eq!(e.seq, last_seq + 1, "{label} insert: {e}");

        // Deleted: the record and its attestation removed.
        let mut t = exported.clone();
        let attest_at = (1..t.len())
            .find(|i| {
                t[*i].starts_with(b"{\"attest\"")
                    && serde_json::from_slice::<serde_json::Value>(&t[*i]).unwrap()["attest"]["seq"]
                        == seq
            })
            .unwrap();
        t.remove(attest_at);
        t.remove(at);
        let e = verify_export(&join(&t), &verifier).unwrap_err();
        assert_eq!(e.seq, seq, "{label} delete: {e}");

        // Relabelled: filtered ↔ full, or another tenant, in the header.
        let mut t = exported.clone();
        let mut header: serde_json::Value = serde_json::from_slice(&t[0]).unwrap();
        let flipped = !header["export"]["filtered"].as_bool().unwrap();
        header["export"]["filtered"] = json!(flipped);
        header["export"]["tenant"] = json!("t1");
        t[0] = serde_json::to_vec(&header).unwrap();
        let e = verify_export(&join(&t), &verifier).unwrap_err();
        assert_eq!(e.seq, 0, "{label} relabel: {e}");
        assert!(e.reason.contains("header signature"), "{e}");

        // Attestations are read beside the records, in the order the export wrote them:
        // two swapped, or one repeated, is named rather than skipped over.
        let attests: Vec<usize> = (1..exported.len())
            .filter(|i| exported[*i].starts_with(b"{\"attest\""))
            .collect();
        let mut t = exported.clone();
        t.swap(attests[1], attests[2]);
        let e = verify_export(&join(&t), &verifier).unwrap_err();
        assert_eq!(e.seq, seq, "{label} swapped attestations: {e}");
        let mut t = exported.clone();
        t.insert(attests[1], exported[attests[0]].clone());
        let e = verify_export(&join(&t), &verifier).unwrap_err();
        assert!(
            e.reason.contains("repeated or out of order"),
            "{label}: {e}"
        );
        // One attestation too many, appended at the end (after the checkpoints).
        let mut t = exported.clone();
        t.push(exported[attests[0]].clone());
        let e = verify_export(&join(&t), &verifier).unwrap_err();
        assert!(e.reason.contains("(appended)"), "{label}: {e}");
    }
}

/// An export never attests a live log that does not verify: a record removed from the live
/// log by someone without the key cannot come out of a filtered export looking signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_of_a_tampered_log_is_refused() {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let mut w1 = pki.client_for("w1", &daemon.url);
    for _ in 0..4 {
        let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
        assert_eq!(s, 200, "{v}");
    }
    let log = audit_segments(&daemon.data_dir).pop().unwrap();
    let original = std::fs::read(&log).unwrap();
    let mut records = lines(&original);
    let victim = records
        .iter()
        .rposition(|l| {
            let v: serde_json::Value = serde_json::from_slice(l).unwrap();
            v["tenant"] == "t1" && v["action"] == "resolve"
        })
        .unwrap();
    records.remove(victim - 1);
    put(&log, &original, &records);
    let (c, _, err) = daemon.cli(&[
        "audit",
        "export",
        "--config",
        daemon.config.to_str().unwrap(),
        "--tenant",
        "t1",
    ]);
    assert_ne!(c, 0, "a tampered log was exported");
    assert!(err.contains("does not verify"), "{err}");
}

/// A daemon with `audit_toml` (an `[audit]` section) and two tenants seeded by an operator.
async fn seeded_with(root: &Path, pki: &TestPki, audit_toml: &str) -> Daemon {
    let options = DaemonOptions {
        extra_toml: audit_toml.into(),
        ..DaemonOptions::default()
    };
    let daemon = Daemon::start(root, pki, &options);
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    daemon
}

/// Re-chains `records` from index `from` on: every later `prev_hash` and `hash` recomputed,
/// as a forger who can write the file (but has no key) would.
/// A daemon signing a checkpoint every 5 records in batches of at most 4 (at most 9 unsigned
/// records), seeded (tenants t1, t2, worker w1), after `n` resolves of i1 by w1.
async fn seeded_with_resolves(n: usize) -> (tempfile::TempDir, std::sync::Arc<TestPki>, Daemon) {
    let (tmp, pki) = setup();
    let daemon = seeded_with(
        tmp.path(),
        &pki,
        "[audit]\ncheckpoint_every_records = 5\nmax_batch = 4\n",
    )
    .await;
    let mut w1 = pki.client_for("w1", &daemon.url);
    for _ in 0..n {
        let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
        assert_eq!(s, 200, "{v}");
    }
    (tmp, pki, daemon)
}

fn rechain(records: &mut [Vec<u8>], from: usize) {
    for i in from..records.len() {
        let prev_hash = if i == 0 {
            credbroker::audit::GENESIS_HASH.to_owned()
        } else {
            serde_json::from_slice::<credbroker::audit::AuditRecord>(&records[i - 1])
                .unwrap()
                .hash
        };
        records[i] = forge(&records[i], |r| r.prev_hash = prev_hash);
    }
}

/// Forgeries with every hash recomputed (issue 18, items 1 and 9): a chain alone proves
/// nothing to someone who can rewrite the file, so verification and start-up demand signed
/// checkpoint coverage of all but the writer's bounded unsigned tail, and exports carry a
/// signed header and signed attestations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgeries_with_recomputed_hashes_fail_verification_and_start_up() {
    let (tmp, pki, mut daemon) = seeded_with_resolves(25).await;
    let public_key = daemon.data_dir.join("keys/audit-signing.pub");
    let (c, out, err) = daemon.cli(&[
        "audit",
        "export",
        "--config",
        daemon.config.to_str().unwrap(),
    ]);
    assert_eq!(c, 0, "{err}");
    let exported = lines(out.as_bytes());
    let is_record = |l: &[u8]| {
        l.starts_with(b"{\"seq\"")
            || (!l.starts_with(b"{\"attest\"")
                && !l.starts_with(b"{\"checkpoint\"")
                && !l.starts_with(b"{\"export\""))
    };
    let export_path = tmp.path().join("forged.jsonl");

    // (a) A full export with one record deleted and the header flipped to "filtered".
    let mut t = exported.clone();
    let victim = (1..t.len()).filter(|i| is_record(&t[*i])).nth(7).unwrap();
    let seq = serde_json::from_slice::<serde_json::Value>(&t[victim]).unwrap()["seq"]
        .as_u64()
        .unwrap();
    t.remove(victim);
    t.retain(|l| {
        !(l.starts_with(b"{\"attest\"")
            && serde_json::from_slice::<serde_json::Value>(l).unwrap()["attest"]["seq"] == seq)
    });
    let mut header: serde_json::Value = serde_json::from_slice(&t[0]).unwrap();
    header["export"]["filtered"] = json!(true);
    t[0] = serde_json::to_vec(&header).unwrap();
    std::fs::write(&export_path, join(&t)).unwrap();
    let (c, out) = verify_export_cli(&export_path, &public_key);
    assert_eq!(c, 1, "(a) deleted + relabelled export: {out}");
    assert!(out.contains("header signature is invalid"), "{out}");

    // (b) A full export with a record edited, every later hash recomputed, and the
    // checkpoint lines dropped.
    let mut records: Vec<Vec<u8>> = exported.iter().filter(|l| is_record(l)).cloned().collect();
    records[7] = forge(&records[7], |r| r.event.outcome = "denied".into());
    rechain(&mut records, 8);
    let mut t = vec![exported[0].clone()];
    t.extend(records);
    t.extend(
        exported
            .iter()
            .filter(|l| l.starts_with(b"{\"attest\""))
            .cloned(),
    );
    std::fs::write(&export_path, join(&t)).unwrap();
    let (c, out) = verify_export_cli(&export_path, &public_key);
    assert_eq!(c, 1, "(b) re-chained export without checkpoints: {out}");
    assert!(out.contains("FAILED at sequence 8"), "{out}");

    // (c) The live log edited the same way with checkpoints.log deleted.
    daemon.stop();
    let log = audit_segments(&daemon.data_dir).pop().unwrap();
    let checkpoints = daemon.data_dir.join("audit/checkpoints.log");
    let original_log = std::fs::read(&log).unwrap();
    let original_cps = std::fs::read(&checkpoints).unwrap();
    let mut records = lines(&original_log);
    assert!(records.len() > 20, "{}", records.len());
    records[2] = forge(&records[2], |r| r.event.outcome = "denied".into());
    rechain(&mut records, 3);
    put(&log, &original_log, &records);
    std::fs::remove_file(&checkpoints).unwrap();
    let (c, out) = verify_cli(&daemon);
    assert_eq!(c, 1, "(c) re-chained live log without checkpoints: {out}");
    assert!(out.contains("not covered by a signed checkpoint"), "{out}");
    // …and the daemon refuses to start on it (item 9).
    let (c, err) = daemon.serve_refused(&[]);
    assert_ne!(c, 0);
    assert!(
        err.contains("does not verify") && err.contains("--forensic-start"),
        "{err}"
    );

    // (c') The same forgery with the checkpoints kept: the last one no longer matches.
    std::fs::write(&checkpoints, &original_cps).unwrap();
    let (c, out) = verify_cli(&daemon);
    assert_eq!(c, 1, "{out}");
    let (c, err) = daemon.serve_refused(&[]);
    assert_ne!(c, 0);
    assert!(err.contains("differs from the signed checkpoint"), "{err}");

    // (c'') Checkpoints cut back to the first one: the unsigned tail is too long.
    let first_cp = lines(&original_cps)[0].clone();
    std::fs::write(&checkpoints, join(&[first_cp])).unwrap();
    std::fs::write(&log, &original_log).unwrap();
    let (c, out) = verify_cli(&daemon);
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("not covered by a signed checkpoint"), "{out}");
    let (c, err) = daemon.serve_refused(&[]);
    assert_ne!(c, 0, "{err}");

    // A record after the last checkpoint altered without re-chaining (a torn or edited
    // unsigned tail): start-up walks the chain from the last checkpoint and refuses.
    std::fs::write(&checkpoints, &original_cps).unwrap();
    let mut records = lines(&original_log);
    let n = records.len();
    let cp_seq = serde_json::from_slice::<serde_json::Value>(lines(&original_cps).last().unwrap())
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(cp_seq as usize, n, "stop signs a final checkpoint");
    records.push(forge(&records[n - 1], |r| {
        r.seq += 1;
        r.prev_hash = "0".repeat(64);
    }));
    put(&log, &original_log, &records);
    let (c, err) = daemon.serve_refused(&[]);
    assert_ne!(c, 0);
    assert!(err.contains("prev_hash does not match"), "{err}");

    // The explicit forensic override starts, says so, and chains onto the log as it is.
    daemon.restart_with(&["--forensic-start"]);
    assert!(
        daemon.logs().contains("FORENSIC START"),
        "{}",
        daemon.logs()
    );
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(s, 200, "{v}");
    daemon.stop();
    // The forensic start is on the record, in the chain it continues.
    assert!(
        daemon
            .audit_records()
            .iter()
            .any(|r| r["action"] == "audit.forensic_start"
                && r["detail"].as_str().unwrap_or("").contains("prev_hash")),
        "no audit.forensic_start record"
    );

    // Laundering: a stretch re-chained after the first checkpoint, the later checkpoints
    // deleted, then a forensic start whose new checkpoints sign the forged stretch. The
    // full verification still fails: no writer leaves that many records unsigned between
    // two checkpoints.
    let first_cp = lines(&original_cps)[0].clone();
    let first_seq = serde_json::from_slice::<serde_json::Value>(&first_cp).unwrap()["seq"]
        .as_u64()
        .unwrap() as usize;
    let mut records = lines(&original_log);
    records[first_seq + 1] = forge(&records[first_seq + 1], |r| {
        r.event.outcome = "denied".into()
    });
    rechain(&mut records, first_seq + 2);
    put(&log, &original_log, &records);
    std::fs::write(&checkpoints, join(&[first_cp])).unwrap();
    let (c, _) = daemon.serve_refused(&[]);
    assert_ne!(c, 0);
    daemon.restart_with(&["--forensic-start"]);
    daemon.stop(); // signs a checkpoint over the forged stretch
    let (c, out) = verify_cli(&daemon);
    assert_eq!(c, 1, "a forensic start laundered a forged stretch: {out}");
    assert!(out.contains("signed only after the fact"), "{out}");

    // The untouched log verifies and starts.
    std::fs::write(&log, &original_log).unwrap();
    std::fs::write(&checkpoints, &original_cps).unwrap();
    let (c, out) = verify_cli(&daemon);
    assert_eq!(c, 0, "{out}");
    daemon.restart_with(&[]);
    daemon.stop();
}

/// The audit-verification runbook's checks (issue 18, item 8): a wrong public key is told
/// apart from a forged checkpoint, and an empty export says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_and_an_empty_export_are_named_as_such() {
    let (tmp, pki) = setup();
    let mut daemon = seeded_with(
        tmp.path(),
        &pki,
        "[audit]\ncheckpoint_every_records = 3\nmax_batch = 2\n",
    )
    .await;
    daemon.stop(); // a final signed checkpoint
    let config = daemon.config.to_str().unwrap().to_owned();
    let public_key = daemon.data_dir.join("keys/audit-signing.pub");
    let other_key = another_audit_key(tmp.path());

    let (c, out) = verify_with_key(&config, &other_key, &[]);
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("not the key that signed this log"), "{out}");

    let export = tmp.path().join("all.jsonl");
    let (c, _, err) = run_cli(&audit_to_file("export", &config, "--output", &export));
    assert_eq!(c, 0, "{err}");
    let (c, out) = verify_export_cli(&export, &other_key);
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("not the key that signed this log"), "{out}");

    // One forged checkpoint among genuine ones is a forgery, not a wrong key.
    let cps_path = daemon.data_dir.join("audit/checkpoints.log");
    let mut cps = lines(&std::fs::read(&cps_path).unwrap());
    let mut cp: serde_json::Value = serde_json::from_slice(cps.last().unwrap()).unwrap();
    cp["time"] = json!("2030-01-01T00:00:00Z");
    *cps.last_mut().unwrap() = serde_json::to_vec(&cp).unwrap();
    std::fs::write(&cps_path, join(&cps)).unwrap();
    let (c, out) = verify_with_key(&config, &public_key, &[]);
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("checkpoint signature is invalid"), "{out}");

    // An export whose filter matched nothing says so.
    let (c, out, err) = run_cli(&[
        "audit",
        "export",
        "--config",
        &config,
        "--since",
        "2099-01-01T00:00:00Z",
        "--output",
        export.to_str().unwrap(),
    ]);
    assert_ne!(
        c, 0,
        "the tampered checkpoint must block the export: {out}{err}"
    );
    let mut cps = lines(&std::fs::read(&cps_path).unwrap());
    cps.pop();
    std::fs::write(&cps_path, join(&cps)).unwrap();
    let (c, out, err) = run_cli(&[
        "audit",
        "export",
        "--config",
        &config,
        "--since",
        "2099-01-01T00:00:00Z",
        "--output",
        export.to_str().unwrap(),
    ]);
    assert_eq!(c, 0, "{out}{err}");
    let (c, out) = verify_export_cli(&export, &public_key);
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("holds no records"), "{out}");
    assert!(!out.contains("-..-"), "{out}");
}

/// Someone who can write the data directory swaps the public key beside the log for their
/// own (to have auditors verify a log they re-signed): the daemon refuses to start, `audit
/// public-key` refuses to hand it out, an unpinned `audit verify` refuses to verify with it,
/// and `doctor` names it. Put back, everything works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_key_swapped_beside_the_log_is_refused() {
    let (tmp, pki) = setup();
    let mut daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    daemon.stop();
    let config = daemon.config.to_str().unwrap().to_owned();
    let public_key = daemon.data_dir.join("keys/audit-signing.pub");
    let genuine = std::fs::read(&public_key).unwrap();
    std::fs::copy(another_audit_key(tmp.path()), &public_key).unwrap();

    let (c, err) = daemon.serve_refused(&[]);
    assert_ne!(c, 0);
    assert!(
        err.contains("is not the public key of the audit signing key"),
        "{err}"
    );
    let (c, out, err) = run_cli(&["audit", "public-key", "--config", &config]);
    assert_ne!(c, 0, "{out}");
    assert!(out.is_empty(), "the swapped key was printed: {out}");
    assert!(err.contains("is not the public key"), "{err}");
    let (c, out) = verify_cli(&daemon);
    assert_ne!(c, 0, "{out}");
    assert!(out.contains("is not the public key"), "{out}");
    let report = tmp.path().join("report.json");
    let (c, out, err) = run_cli(&audit_to_file("report", &config, "--json", &report));
    assert_ne!(c, 0, "{out}");
    assert!(err.contains("is not the public key"), "{err}");
    assert!(!report.exists(), "a report verified with the swapped key");
    let (c, out, err) = run_cli(&[
        "doctor",
        "--config",
        &config,
        "--output",
        "json",
        "--min-free-mib",
        "64",
    ]);
    assert_ne!(c, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "audit.public_key")
        .unwrap_or_else(|| panic!("{report:#}"))
        .clone();
    assert_eq!(finding["status"], "fail", "{finding}");
    // The signing key spoiled as well (not removed): the swapped key is still not taken for
    // an auditor's copy.
    let signing_key = daemon.data_dir.join("keys/audit-signing.key");
    let signing = std::fs::read(&signing_key).unwrap();
    std::fs::write(&signing_key, b"{}").unwrap();
    let (c, out) = verify_cli(&daemon);
    assert_ne!(c, 0, "{out}");
    assert!(out.contains("cannot be checked against it"), "{out}");
    let (c, out, err) = run_cli(&["audit", "public-key", "--config", &config]);
    assert_ne!(c, 0, "{out}");
    assert!(out.is_empty(), "the swapped key was printed: {out}");
    assert!(err.contains("--public-key"), "{err}");
    // Removed, where the deployment's config names it: not taken for an auditor's copy
    // either. A copy of the data directory without it (`--data-dir`) is one.
    std::fs::remove_file(&signing_key).unwrap();
    let (c, out) = verify_cli(&daemon);
    assert_ne!(c, 0, "{out}");
    assert!(out.contains("named by this config is missing"), "{out}");
    std::fs::write(&public_key, &genuine).unwrap();
    let copy = tmp.path().join("auditors-copy");
    std::fs::create_dir_all(copy.join("keys")).unwrap();
    std::fs::copy(&public_key, copy.join("keys/audit-signing.pub")).unwrap();
    let status = std::process::Command::new("cp")
        .args(["-r"])
        .arg(daemon.data_dir.join("audit"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let copy_arg = copy.to_str().unwrap();
    let (c, out, err) = run_cli(&["audit", "verify", "--data-dir", copy_arg]);
    assert_eq!(c, 0, "{out}{err}");
    // What auditors pin is never printed from beside no signing key: a host's directory
    // with its key and its config deleted looks like this copy.
    let (c, out, err) = run_cli(&["audit", "public-key", "--data-dir", copy_arg]);
    assert_ne!(c, 0, "{out}");
    assert!(err.contains("is missing"), "{err}");
    std::fs::write(&signing_key, &signing).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&signing_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    std::fs::write(&public_key, &genuine).unwrap();
    let (c, out, err) = run_cli(&["audit", "public-key", "--config", &config]);
    assert_eq!(c, 0, "{err}");
    assert_eq!(
        out.trim().as_bytes(),
        String::from_utf8(genuine).unwrap().trim().as_bytes()
    );
    let (c, out) = verify_cli(&daemon);
    assert_eq!(c, 0, "{out}");
    daemon.restart();
}

/// `audit verify --config` with a deadline: exit code and output, or a panic naming what
/// hung.
fn verify_within(config: &str, seconds: u64, what: &str) -> (i32, String) {
    let out_path = std::env::temp_dir().join(format!("verify-within-{}.out", free_port()));
    let mut child = std::process::Command::new(daemon_bin())
        .args(["audit", "verify", "--config", config])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(out_path.with_extension("err")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("audit verify still running after {seconds} s with {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut out = std::fs::read_to_string(&out_path).unwrap_or_default();
    out += &std::fs::read_to_string(out_path.with_extension("err")).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(out_path.with_extension("err"));
    (code, out)
}

/// Whoever can write the data directory (THREATS.md) cannot make the auditors' tools hang or
/// abort instead of answering: a FIFO under a segment's name in the archive fails `audit
/// verify` at once, named; a sealed segment made a sparse terabyte fails at once (more after
/// its seal than the writer ever leaves), not after walking its zeros for hours; a
/// checkpoint file made a sparse terabyte is read up to its zeros, at once (they hold
/// nothing), not read or held whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_or_a_giant_sparse_file_cannot_hang_verification() {
    let (tmp, pki) = setup();
    let mut daemon = seeded_with(tmp.path(), &pki, "[audit]\nsegment_records = 3\n").await;
    daemon.stop();
    let config = daemon.config.to_str().unwrap().to_owned();
    let (c, out) = verify_within(&config, 30, "the genuine log");
    assert_eq!(c, 0, "{out}");

    // The first segment (sealed: three records each) made a sparse terabyte.
    let first = daemon.data_dir.join("audit").join(segment_name(1));
    let sealed = std::fs::read(&first).unwrap();
    assert!(String::from_utf8_lossy(&sealed).contains("{\"seal\":"));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let (c, out) = verify_within(&config, 30, "a sealed segment made a sparse 1 TiB");
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("after its seal"), "{out}");
    std::fs::write(&first, sealed).unwrap();

    let archive = daemon.data_dir.join("audit/archive");
    std::fs::create_dir_all(&archive).unwrap();
    // A segment after the live one, as if it had been archived there.
    let live = last_segment_number(&daemon.data_dir.join("audit"));
    let fifo = archive.join(segment_name(live + 1));
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (c, out) = verify_within(&config, 30, "a FIFO in the archive");
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("FIFO"), "{out}");
    std::fs::remove_file(&fifo).unwrap();

    let cps = daemon.data_dir.join("audit/checkpoints.log");
    let real = std::fs::read(&cps).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cps)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let (c, out) = verify_within(&config, 30, "a sparse 1 TiB checkpoint file");
    assert_eq!(c, 0, "{out}");
    // The daemon opening it for append reads back at most four lines' worth for its last
    // line, finds none, and refuses: neither a terabyte read into memory nor a file cut.
    let (c, err) = daemon.serve_refused(&[]);
    assert_ne!(c, 0, "{err}");
    assert!(err.contains("not a write cut short by a crash"), "{err}");
    assert_eq!(std::fs::metadata(&cps).unwrap().len(), 1 << 40);
    // A 3 MiB line and 3 MiB after it without a newline: refused as well, and nothing of
    // it cut (the bytes after the last newline are evidence, not a torn write).
    let mut altered = real.clone();
    altered.extend(std::iter::repeat_n(b'x', 3 << 20));
    altered.push(b'\n');
    altered.extend(std::iter::repeat_n(b'y', 3 << 20));
    std::fs::write(&cps, &altered).unwrap();
    let (c, err) = daemon.serve_refused(&[]);
    assert_ne!(c, 0, "{err}");
    assert!(err.contains("not a write cut short by a crash"), "{err}");
    assert_eq!(std::fs::read(&cps).unwrap(), altered);
    // More after the last line than a line can be (2 MiB), or a whole file of it: refused,
    // not cut back to the line (or to nothing).
    for altered in [
        [real.clone(), vec![b'y'; 2 << 20]].concat(),
        vec![b'z'; 2 << 20],
    ] {
        std::fs::write(&cps, &altered).unwrap();
        let (c, err) = daemon.serve_refused(&[]);
        assert_ne!(c, 0, "{err}");
        assert!(err.contains("not a write cut short by a crash"), "{err}");
        assert_eq!(std::fs::read(&cps).unwrap(), altered);
    }
    std::fs::write(&cps, real).unwrap();
    // The public key replaced by a FIFO, or by a link to an endless device: refused at
    // once, not waited on or read into memory.
    let key = daemon.data_dir.join("keys/audit-signing.pub");
    let real_key = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(&key)
        .status()
        .unwrap()
        .success());
    let (c, out) = verify_within(&config, 30, "a FIFO for the public key");
    assert_ne!(c, 0, "{out}");
    assert!(out.contains("FIFO"), "{out}");
    std::fs::remove_file(&key).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &key).unwrap();
    let (c, out) = verify_within(&config, 30, "/dev/zero for the public key");
    assert_ne!(c, 0, "{out}");
    assert!(out.contains("not a regular file"), "{out}");
    std::fs::remove_file(&key).unwrap();
    std::fs::write(&key, real_key).unwrap();
    let (c, out) = verify_within(&config, 30, "the genuine log again");
    assert_eq!(c, 0, "{out}");
}

/// `audit verify --pinned FILE`, with a copy kept off the host (runbooks/audit-verification.md):
/// whoever can write the data directory and restart the broker can remove the latest
/// checkpoints, rewrite what they covered, and have the broker sign over it, or empty the
/// log: both verify without the copy (the host holds nothing to compare with) and fail with
/// it, naming the record. A copy that does not verify with the key is refused. Fails if a
/// pin is not compared, or a chain ending before a pin passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_copy_catches_a_rewrite_signed_over_and_an_emptied_log() {
    let (tmp, _pki, mut daemon) = seeded_with_resolves(12).await;
    daemon.stop();
    let public_key = daemon.data_dir.join("keys/audit-signing.pub");
    let config = daemon.config.to_str().unwrap().to_owned();
    let verify_pinned =
        |pin: &Path| verify_with_key(&config, &public_key, &["--pinned", pin.to_str().unwrap()]);
    // `audit report --pinned` judges each chain as `audit verify --pinned` does.
    let report_pinned = |pin: &Path| report_with(tmp.path(), &config, &public_key, "--pinned", pin);
    // The auditors' copies: checkpoints.log, and an export.
    let checkpoints = daemon.data_dir.join("audit/checkpoints.log");
    let original_cps = std::fs::read(&checkpoints).unwrap();
    let copy = tmp.path().join("pinned-checkpoints.log");
    std::fs::write(&copy, &original_cps).unwrap();
    let export = tmp.path().join("pinned-export.jsonl");
    let (c, out, err) = daemon.cli(&["audit", "export", "--config", &config]);
    assert_eq!(c, 0, "{err}");
    std::fs::write(&export, out).unwrap();
    let export_pinned = |export: &Path, pin: &Path| {
        verify_export_with(export, &public_key, &["--pinned", pin.to_str().unwrap()])
    };
    let (c, out) = export_pinned(&export, &copy);
    assert_eq!(c, 0, "{out}");
    assert!(
        out.contains("pinned record(s) found unchanged") && out.contains("export id"),
        "{out}"
    );
    // An export the copy vouches for nothing of (a window after every record): it verifies,
    // and the output says the copy was not compared, rather than keep silent.
    let empty = tmp.path().join("empty-export.jsonl");
    let (c, out, err) = daemon.cli(&[
        "audit",
        "export",
        "--config",
        &config,
        "--since",
        "2099-01-01T00:00:00Z",
    ]);
    assert_eq!(c, 0, "{err}");
    std::fs::write(&empty, out).unwrap();
    let (c, out) = export_pinned(&empty, &copy);
    assert_eq!(c, 0, "{out}");
    assert!(
        out.contains(
            "the pinned copy vouches for no record this export holds of the file log: not compared"
        ),
        "{out}"
    );
    for pin in [&copy, &export] {
        let (c, out) = verify_pinned(pin);
        assert_eq!(c, 0, "{out}");
        assert!(out.contains("pinned record(s) found unchanged"), "{out}");
        let (c, v, html) = report_pinned(pin);
        assert_eq!((c, &v["verified"]), (0, &json!(true)), "{v:#}");
        assert!(v["chains"][0]["pinned"].as_u64().unwrap() > 0, "{v:#}");
        assert_eq!(v["pinned_copy"], json!(pin.to_str().unwrap()), "{v:#}");
        assert!(html.contains("id=\"pinned\""), "{html}");
    }

    // The last record rewritten, the final checkpoint (the one over it) removed: the broker
    // starts (the unsigned tail is within the writer's bound) and signs over the forgery.
    let log = audit_segments(&daemon.data_dir).pop().unwrap();
    let original_log = std::fs::read(&log).unwrap();
    let mut records = lines(&original_log);
    let n = records.len();
    records[n - 1] = forge(&records[n - 1], |r| r.event.outcome = "denied".into());
    put(&log, &original_log, &records);
    let mut cps = lines(&original_cps);
    let last_cp = serde_json::from_slice::<serde_json::Value>(cps.last().unwrap()).unwrap();
    assert_eq!(
        last_cp["seq"].as_u64(),
        Some(n as u64),
        "stop signs a final checkpoint"
    );
    cps.pop();
    std::fs::write(&checkpoints, join(&cps)).unwrap();
    // Verified as it is, the log is chained but its last records are signed by nothing: the
    // OK line says which.
    let (c, out) = verify_cli(&daemon);
    assert_eq!(c, 0, "{out}");
    assert!(
        out.contains(&format!(
            "..{n} follow the last checkpoint and are not yet covered by a signature"
        )),
        "{out}"
    );
    // An offline command opens the log first (it signs a checkpoint when it closes), then
    // the broker starts and stops.
    let (c, out, err) = daemon.cli(&["bootstrap-operator", "--config", &config, "--id", "late"]);
    assert_eq!(c, 0, "{out}{err}");
    daemon.restart_with(&[]);
    daemon.stop();
    // Whoever opened the log first said so on the record: records it found no checkpoint
    // over.
    let said = daemon
        .audit_records()
        .into_iter()
        .filter(|r| r["action"] == "audit.unsigned_tail")
        .map(|r| r["detail"].as_str().unwrap_or_default().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains(&format!(
            "..{n} had no signed checkpoint when the log was opened"
        )),
        "{said:?}"
    );
    let (c, out) = verify_cli(&daemon);
    assert_eq!(
        c, 0,
        "without a copy the host has nothing to compare with: {out}"
    );
    // An export of the rewritten log, signed by the broker that signed over the forgery
    // and handed to an auditor: it verifies alone, and fails against either copy.
    let (c, out, err) = daemon.cli(&["audit", "export", "--config", &config]);
    assert_eq!(c, 0, "{err}");
    let forged_export = tmp.path().join("forged-export.jsonl");
    std::fs::write(&forged_export, out).unwrap();
    let (c, out) = verify_export_cli(&forged_export, &public_key);
    assert_eq!(c, 0, "{out}");
    for pin in [&copy, &export] {
        let (c, out) = export_pinned(&forged_export, pin);
        assert_eq!(c, 1, "{out}");
        assert!(
            out.contains(&format!("FAILED at sequence {n}"))
                && out.contains("differs from the pinned copy"),
            "{out}"
        );
    }
    for pin in [&copy, &export] {
        let (c, out) = verify_pinned(pin);
        assert_eq!(c, 1, "{out}");
        assert!(
            out.contains(&format!("FAILED at sequence {n}"))
                && out.contains("differs from the pinned copy"),
            "{out}"
        );
        let (c, v, _) = report_pinned(pin);
        let failure = &v["chains"][0]["failure"];
        assert_eq!(
            (c, &v["verified"], &failure["seq"]),
            (1, &json!(false), &json!(n)),
            "{v:#}"
        );
        assert!(
            failure["reason"]
                .as_str()
                .unwrap()
                .contains("differs from the pinned copy"),
            "{v:#}"
        );
    }

    // The whole log removed: "no records" on the host, a failure against the copy.
    empty_dir(&daemon.data_dir.join("audit"));
    let (c, out) = verify_cli(&daemon);
    assert_eq!(c, 0, "{out}");
    for pin in [&copy, &export] {
        let (c, out) = verify_pinned(pin);
        assert_eq!(c, 1, "{out}");
        assert!(
            out.contains("records removed, or the log rolled back"),
            "{out}"
        );
        let (c, v, _) = report_pinned(pin);
        assert_eq!((c, &v["verified"]), (1, &json!(false)), "{v:#}");
        assert!(
            v["chains"]
                .as_array()
                .unwrap()
                .iter()
                .any(|ch| ch["failure"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("records removed") || r.contains("no such chain"))),
            "{v:#}"
        );
    }

    // A copy whose checkpoint was altered does not verify with the key: refused, not used.
    let mut forged = lines(&original_cps);
    let mut cp: serde_json::Value = serde_json::from_slice(&forged[0]).unwrap();
    cp["hash"] = json!("0".repeat(64));
    forged[0] = serde_json::to_vec(&cp).unwrap();
    let bad = tmp.path().join("forged-pin.log");
    std::fs::write(&bad, join(&forged)).unwrap();
    let (c, out) = verify_pinned(&bad);
    assert_eq!(c, 2, "{out}");
    assert!(
        out.contains("does not verify with this public key"),
        "{out}"
    );
    // So is an export whose signed head was moved to vouch for another record.
    let mut forged = lines(&std::fs::read(&export).unwrap());
    let mut header: serde_json::Value = serde_json::from_slice(&forged[0]).unwrap();
    header["export"]["head_hash"] = json!("0".repeat(64));
    forged[0] = serde_json::to_vec(&header).unwrap();
    std::fs::write(&bad, join(&forged)).unwrap();
    let (c, out) = verify_pinned(&bad);
    assert_eq!(c, 2, "{out}");
    assert!(out.contains("the pinned export does not verify"), "{out}");
}

/// Someone who can write the data directory cuts the log's last records, and the checkpoint
/// over them, leaving fewer unsigned records than the writer's bound: the host's own
/// verification passes (nothing signed is missing), and so does one with a copy of the
/// checkpoints taken before the cut records were signed. The JSON of the previous
/// verification, kept off the host, names each chain's last record and hash: `--previous`
/// fails the cut, and an emptied log, naming the sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_run_catches_a_tail_cut_inside_the_unsigned_limit() {
    let (tmp, _pki, mut daemon) = seeded_with_resolves(12).await;
    daemon.stop();
    let public_key = daemon.data_dir.join("keys/audit-signing.pub");
    let config = daemon.config.to_str().unwrap().to_owned();
    let (c, out) = verify_with_key(&config, &public_key, &["--output", "json"]);
    assert_eq!(c, 0, "{out}");
    let run: serde_json::Value = serde_json::from_str(&out).unwrap();
    let chain = &run["chains"][0];
    let n = chain["last_seq"].as_u64().unwrap();
    let hash = chain["last_hash"].as_str().unwrap().to_owned();
    let log = audit_segments(&daemon.data_dir).pop().unwrap();
    let original_log = std::fs::read(&log).unwrap();
    let records = lines(&original_log);
    let last: serde_json::Value = serde_json::from_slice(records.last().unwrap()).unwrap();
    assert_eq!(
        (last["seq"].as_u64(), last["hash"].as_str()),
        (Some(n), Some(hash.as_str()))
    );
    let previous = tmp.path().join("previous-run.json");
    std::fs::write(&previous, &out).unwrap();
    let with_previous = |extra: &[&str]| {
        let mut args = vec!["--previous", previous.to_str().unwrap()];
        args.extend_from_slice(extra);
        verify_with_key(&config, &public_key, &args)
    };
    let (c, out) = with_previous(&[]);
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("1 pinned record(s) found unchanged"), "{out}");

    // The last two records cut, with every checkpoint over them.
    let checkpoints = daemon.data_dir.join("audit/checkpoints.log");
    let cps = lines(&std::fs::read(&checkpoints).unwrap());
    let kept: Vec<Vec<u8>> = cps
        .into_iter()
        .filter(|cp| {
            serde_json::from_slice::<serde_json::Value>(cp).unwrap()["seq"]
                .as_u64()
                .unwrap()
                <= n - 2
        })
        .collect();
    std::fs::write(&checkpoints, join(&kept)).unwrap();
    put(&log, &original_log, &records[..records.len() - 2]);
    let (c, out) = verify_with_key(&config, &public_key, &[]);
    assert_eq!(c, 0, "the host alone has nothing to compare with: {out}");
    let (c, out) = with_previous(&[]);
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains(&format!("audit FAILED at sequence {}", n - 1))
            && out.contains(&format!("pinned copy holds record {n}")),
        "{out}"
    );
    let (c, out) = with_previous(&["--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (c, &v["verified"], &v["chains"][0]["failure"]["seq"]),
        (1, &json!(false), &json!(n - 1)),
        "{v:#}"
    );
    // That failed run's JSON, handed to the next run as the runbook chains them, still
    // holds the chain to the record cut: the cut is not forgiven a run later.
    assert_eq!(
        (
            &v["chains"][0]["carried_seq"],
            &v["chains"][0]["carried_hash"]
        ),
        (&json!(n), &json!(hash)),
        "{v:#}"
    );
    let failed_run = tmp.path().join("failed-run.json");
    std::fs::write(&failed_run, &out).unwrap();
    let (c, out) = verify_with_key(
        &config,
        &public_key,
        &["--previous", failed_run.to_str().unwrap()],
    );
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains(&format!("pinned copy holds record {n}")),
        "{out}"
    );
    // An export proves the log up to the head it signed, which a run's last record may be
    // past: --previous is refused with --export (an auditor's export is checked --pinned).
    let (c, out) = verify_export_with(
        &previous,
        &public_key,
        &["--previous", previous.to_str().unwrap()],
    );
    assert_eq!(c, 2, "{out}");
    assert!(out.contains("cannot be used with"), "{out}");
    // `audit report --previous` fails the chain as well.
    let (c, report, html) = report_with(tmp.path(), &config, &public_key, "--previous", &previous);
    assert_eq!(c, 1, "{report:#}");
    assert_eq!(report["verified"], json!(false), "{report:#}");
    assert_eq!(report["previous_run"], json!(previous.to_str().unwrap()));
    assert!(html.contains("id=\"previous-run\""));

    // The whole log removed: "no records" on the host, which says it cannot tell; a failure
    // against the previous run.
    empty_dir(&daemon.data_dir.join("audit"));
    let (c, out) = verify_with_key(&config, &public_key, &[]);
    assert_eq!(c, 0, "{out}");
    assert!(
        out.contains("a log never written to, or one emptied"),
        "{out}"
    );
    let (c, out) = with_previous(&[]);
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("records removed, or the log rolled back"),
        "{out}"
    );

    // A run that is not one, or that names a record with a bad hash, is refused (exit 2)
    // rather than compared with nothing.
    for (text, said) in [
        (
            "{\"chains\": []}".to_owned(),
            "names no verified chain's last record",
        ),
        (
            "not json".to_owned(),
            "is not the JSON of `audit verify --output json`",
        ),
        (
            run.to_string().replace(&hash, &hash.to_uppercase()),
            "not 64 lowercase hex digits",
        ),
    ] {
        std::fs::write(&previous, text).unwrap();
        let (c, out) = with_previous(&[]);
        assert_eq!(c, 2, "{out}");
        assert!(out.contains(said), "{out}");
    }
}

/// Someone who can write the data directory but holds no signing key removes every
/// checkpoint (or writes a whole log of their own): the records still link, but the public
/// key vouches for none of them. `audit verify` reported such a log "audit OK … last signed
/// checkpoint at none", with the right public key or any other. A genuine log is never
/// without a checkpoint (the writer signs its first batch at once, so one killed within its
/// first interval verifies), so such a log now fails, whichever key it is given; a broker
/// started on it signs it over (recording `audit.unsigned_tail`), after which it verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_no_checkpoint_signs_fails_verify_with_any_key() {
    let (tmp, pki) = setup();
    let mut daemon = seeded_with(tmp.path(), &pki, "[audit]\ncheckpoint_interval_s = 3600\n").await;
    let config = daemon.config.to_str().unwrap().to_owned();
    let other_key = another_audit_key(tmp.path());
    // Killed long before its interval's checkpoint: the first batch's is there.
    daemon.kill_hard();
    let (c, out) = verify_cli(&daemon);
    assert_eq!(c, 0, "killed within its first interval: {out}");
    assert!(!out.contains("last signed checkpoint at none"), "{out}");

    let checkpoints = daemon.data_dir.join("audit/checkpoints.log");
    let kept = std::fs::read(&checkpoints).unwrap();
    std::fs::remove_file(&checkpoints).unwrap();
    for (what, (c, out)) in [
        ("the host's key", verify_cli(&daemon)),
        ("another key", verify_with_key(&config, &other_key, &[])),
    ] {
        assert_eq!(c, 1, "{what}: {out}");
        assert!(
            out.contains("no signed checkpoint, though a broker signs its first batch at once")
                && out.contains("the public key vouches for none of them"),
            "{what}: {out}"
        );
    }
    let (c, out, err) = daemon.cli(&["audit", "verify", "--config", &config, "--output", "json"]);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert_eq!((c, &v["verified"]), (1, &json!(false)), "{v}");
    // The key was the host's: the JSON says so, as the text does.
    assert_eq!(v["public_key_pinned"], false, "{v}");
    assert!(
        v["notes"][0]
            .as_str()
            .unwrap()
            .contains("verified with the public key found on this host"),
        "{v}"
    );
    // The doctor fails it too.
    let (_, out, err) = daemon.cli(&["doctor", "--config", &config, "--output", "json"]);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    let finding = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "audit.checkpoint")
        .unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(finding["status"], "fail", "{finding}");
    assert!(
        finding["detail"]
            .as_str()
            .unwrap()
            .contains("no signed checkpoint"),
        "{finding}"
    );
    // Nor is it exported under the key, or summed up in a report.
    let (c, out, err) = daemon.cli(&["audit", "export", "--config", &config]);
    assert_ne!(c, 0, "an export signed records no checkpoint signs: {out}");
    assert!(err.contains("export refused"), "{err}");
    let report = tmp.path().join("report.json");
    let (c, out, err) = daemon.cli(&audit_to_file("report", &config, "--json", &report));
    assert_eq!(c, 1, "{out}{err}");
    // Started on it, the broker signs what it found, and says so in the log.
    daemon.restart();
    daemon.stop();
    let (c, out) = verify_cli(&daemon);
    assert_eq!(c, 0, "{out}");
    assert!(
        daemon
            .audit_records()
            .iter()
            .any(|r| r["action"] == "audit.unsigned_tail"),
        "no audit.unsigned_tail record"
    );
    assert!(!kept.is_empty());
}

/// The whole audit log removed beside a store that holds changes (someone who can write the
/// data directory): the broker does not start a new chain over the loss, which would verify
/// with the key on the host. A forensic start goes on, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_over_a_removed_log_is_refused() {
    let (tmp, pki) = setup();
    let mut daemon = seeded_with(tmp.path(), &pki, "").await;
    daemon.stop();
    empty_dir(&daemon.data_dir.join("audit"));
    let (c, err) = daemon.serve_refused(&[]);
    assert_ne!(c, 0, "{err}");
    assert!(
        err.contains("holds no audit log") && err.contains("--forensic-start"),
        "{err}"
    );
    // Nor does an offline command that appends begin the new chain (after which `serve`
    // would find a log and start).
    let config = daemon.config.to_str().unwrap().to_owned();
    for args in [
        vec!["bootstrap-operator", "--config", &config, "--id", "late"],
        vec!["keys", "rotate-kek", "--config", &config],
    ] {
        let (c, out, err) = daemon.cli(&args);
        assert_ne!(c, 0, "{args:?}: {out}{err}");
        assert!(err.contains("holds no audit log"), "{args:?}: {err}");
    }
    assert!(!credbroker::audit::segments::has_file_log(
        &daemon.data_dir.join("audit")
    ));
    // A forensic start goes on, and its new chain says why it begins there.
    daemon.restart_with(&["--forensic-start"]);
    assert!(
        daemon
            .logs()
            .contains("FORENSIC START: the store holds operators or tenants but"),
        "{}",
        daemon.logs()
    );
    let records = daemon.audit_records();
    assert_eq!(records[0]["action"], "audit.forensic_start", "{records:?}");
    assert!(
        records[0]["detail"]
            .as_str()
            .unwrap()
            .contains("holds no audit log: a new chain starts at sequence 1"),
        "{}",
        records[0]
    );
}

/// Removes everything in `dir` (the directory itself stays).
fn empty_dir(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
}
