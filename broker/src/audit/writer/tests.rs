//! The writer's own tests: group commit, torn tails, failed batches, segments.

use super::*;
use crate::audit::verify_log;
use std::fs::OpenOptions;
use std::path::Path;

mod failed;
mod thread;

fn config(dir: &Path) -> AuditConfig {
    AuditConfig {
        dir: dir.to_owned(),
        max_batch: 64,
        checkpoint_every_records: 10,
        checkpoint_interval: Duration::from_secs(3600),
        segment_bytes: 64 << 20,
        segment_records: 0,
        live_segments: 8,
        forensic_start: false,
    }
}

/// A test directory with its keys directory (made) and where the audit log goes (not made).
fn dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let dir = tmp.path().join("audit");
    (tmp, keys, dir)
}

fn signer(dir: &Path) -> AuditSigner {
    let k = dir.join("k");
    if k.exists() {
        AuditSigner::load(&k).unwrap()
    } else {
        AuditSigner::generate(&k, &dir.join("k.pub")).unwrap()
    }
}

fn ev(n: usize) -> AuditEvent {
    AuditEvent {
        kind: "resolve".into(),
        action: "resolve".into(),
        request_id: format!("r{n}"),
        outcome: "allowed".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_chained_and_survive_reopen() {
    let (_tmp, keys, dir) = dirs();
    let log = AuditLog::open(config(&dir), signer(&keys)).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let log = log.clone();
        tasks.push(tokio::spawn(
            async move { log.append(ev(i)).await.unwrap().seq },
        ));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    log.close();
    let verifier = signer(&keys).verifier();
    let summary = verify_log(&dir, &verifier, 74).unwrap();
    assert_eq!(summary.records, 200);
    assert_eq!(summary.last_checkpoint, Some(200));

    // A torn tail (crash mid-write) is dropped on reopen and the chain continues.
    let seg = dir.join(crate::audit::segments::segment_name(1));
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    let end = crate::audit::segments::scan(&File::open(&seg).unwrap())
        .unwrap()
        .end;
    f.write_all_at(b"{\"seq\":201,\"ti", end).unwrap();
    f.write_all_at(b"stray", end + 4096).unwrap();
    drop(f);
    let log = AuditLog::open(config(&dir), signer(&keys)).unwrap();
    assert_eq!(log.append(ev(0)).await.unwrap().seq, 201);
    log.close();
    assert_eq!(verify_log(&dir, &verifier, 74).unwrap().records, 201);
    assert!(!std::fs::read_to_string(&seg).unwrap().contains("stray"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_rotate_seal_and_archive() {
    let (_tmp, keys, dir) = dirs();
    let mut c = config(&dir);
    c.segment_records = 25;
    c.live_segments = 1;
    let log = AuditLog::open(c.clone(), signer(&keys)).unwrap();
    for i in 0..110 {
        log.append(ev(i)).await.unwrap();
    }
    log.close();
    let segs = crate::audit::segments::list(&dir).unwrap();
    let shape: Vec<(u64, bool)> = segs.iter().map(|s| (s.n, s.archived)).collect();
    assert_eq!(
        shape,
        [(1, true), (2, true), (3, true), (4, false), (5, false)]
    );
    let verifier = signer(&keys).verifier();
    let s = verify_log(&dir, &verifier, 74).unwrap();
    assert_eq!((s.records, s.last_seq), (110, Some(110)));
    // Restarted, the writer continues in the live segment.
    let log = AuditLog::open(c, signer(&keys)).unwrap();
    assert_eq!(log.append(ev(0)).await.unwrap().seq, 111);
    log.close();
    assert_eq!(verify_log(&dir, &verifier, 74).unwrap().records, 111);
    // An archived segment with one byte changed names its record.
    let third = &segs[2].path;
    let mut bytes = std::fs::read(third).unwrap();
    let at = bytes.windows(9).position(|w| w == b"\"seq\":60,").unwrap();
    let digit = at + bytes[at..].iter().position(|b| *b == b'r').unwrap() + 1;
    let original = std::fs::read(third).unwrap();
    bytes[digit] = b'x';
    std::fs::write(third, &bytes).unwrap();
    assert_eq!(verify_log(&dir, &verifier, 74).unwrap_err().seq, 60);
    let text = String::from_utf8(original.clone()).unwrap();
    let fails_with = |text: &str, seq: u64, reason: &str| {
        std::fs::write(third, text).unwrap();
        let f = verify_log(&dir, &verifier, 74).unwrap_err();
        assert_eq!(f.seq, seq, "{f}");
        assert!(f.reason.contains(reason), "{f}");
    };
    // Its header moved onto another place in the chain.
    let header = text.lines().next().unwrap();
    let moved = header.replace("\"first_seq\":51", "\"first_seq\":52");
    fails_with(
        &text.replacen(header, &moved, 1),
        51,
        "does not continue the chain",
    );
    // A header's hash is not signed: one carrying terminal controls (to redraw "FAILED" as
    // "OK" on the auditor's screen) is named with them escaped.
    let prev = header.split("\"prev_hash\":\"").nth(1).unwrap();
    let prev = &prev[..prev.find('"').unwrap()];
    let hostile = header.replacen(prev, "\\u001b[2K\\raudit OK\u{202e}", 1);
    std::fs::write(third, text.replacen(header, &hostile, 1)).unwrap();
    let f = verify_log(&dir, &verifier, 74).unwrap_err();
    assert!(
        f.reason.contains("after hash \\u{1b}[2K\\u{d}audit O…"),
        "{f}"
    );
    assert!(
        !f.to_string()
            .chars()
            .any(|c| c.is_control() || c == '\u{202e}'),
        "{f:?}"
    );
    // Its seal cut off (with or without its last record).
    let seal_at = text.find("{\"seal\":").unwrap();
    fails_with(&text[..seal_at], 76, "segment-0000000003.log is not sealed");
    let last_at = text[..seal_at - 1].rfind('\n').unwrap() + 1;
    fails_with(&text[..last_at], 75, "not sealed");
    // A header claiming an earlier start, to make the start-up check begin past the
    // record its last checkpoint covers: the seal before it disagrees.
    std::fs::write(third, &original).unwrap();
    let fourth = &segs[3].path;
    let fourth_text = std::fs::read_to_string(fourth).unwrap();
    let header4 = fourth_text.lines().next().unwrap().to_owned();
    let forged4 = header4.replace("\"first_seq\":76", "\"first_seq\":70");
    assert_ne!(forged4, header4);
    std::fs::write(fourth, fourth_text.replacen(&header4, &forged4, 1)).unwrap();
    let cps = checkpoints_path(&dir);
    let saved_cps = std::fs::read(&cps).unwrap();
    // Only the checkpoints up to record 72 (in segment 3) are left.
    let kept: String = String::from_utf8(saved_cps.clone())
        .unwrap()
        .lines()
        .filter(|l| serde_json::from_str::<Checkpoint>(l).unwrap().seq <= 72)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&cps, kept).unwrap();
    let f = crate::audit::verify_since_last_checkpoint(&dir, &verifier, 74).unwrap_err();
    assert!(f.reason.contains("is not sealed where"), "{f}");
    std::fs::write(fourth, &fourth_text).unwrap();
    crate::audit::verify_since_last_checkpoint(&dir, &verifier, 74).unwrap();
    std::fs::write(&cps, saved_cps).unwrap();
    // A forged seal.
    let sig_at = text.find("\"signature\":\"").unwrap() + 13;
    let mut forged = text.clone().into_bytes();
    forged[sig_at] = if forged[sig_at] == b'A' { b'B' } else { b'A' };
    fails_with(
        &String::from_utf8(forged).unwrap(),
        75,
        "seal signature is invalid",
    );
    std::fs::write(third, &original).unwrap();
    assert!(verify_log(&dir, &verifier, 74).is_ok());
    // A segment missing from the archive.
    std::fs::remove_file(&segs[1].path).unwrap();
    let f = verify_log(&dir, &verifier, 74).unwrap_err();
    assert!(
        f.reason.contains("segment-0000000002.log is missing"),
        "{f}"
    );
    assert_eq!(f.seq, 26);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_is_refused_not_cut_and_an_export_never_signs_a_changed_log() {
    let (_tmp, keys, dir) = dirs();
    let log = AuditLog::open(config(&dir), signer(&keys)).unwrap();
    for i in 0..300 {
        log.append(ev(i)).await.unwrap();
    }
    log.close();
    let seg = dir.join(crate::audit::segments::segment_name(1));
    let original = std::fs::read(&seg).unwrap();

    // A NUL byte written into the signed part hides every record after it: start-up
    // refuses, and the bytes behind it are left as they are (evidence, not a torn tail).
    let mut hidden = original.clone();
    let at = hidden.windows(9).position(|w| w == b"\"seq\":40,").unwrap();
    hidden[at] = 0;
    std::fs::write(&seg, &hidden).unwrap();
    let refused = AuditLog::open(config(&dir), signer(&keys)).err().unwrap();
    assert!(
        refused
            .to_string()
            .contains("a checkpoint covers record 300"),
        "{refused}"
    );
    assert_eq!(std::fs::read(&seg).unwrap(), hidden);
    // …and where more than a batch hides behind it, even before the checkpoints are read.
    let mut small = config(&dir);
    small.max_batch = 0;
    let refused = AuditLog::open(small, signer(&keys)).err().unwrap();
    assert!(refused.to_string().contains("NUL byte"), "{refused}");
    assert_eq!(std::fs::read(&seg).unwrap(), hidden);

    // The segment's header removed: refused, never written over from offset 0.
    let header_end = original.iter().position(|b| *b == b'\n').unwrap() + 1;
    std::fs::write(&seg, &original[header_end..]).unwrap();
    let refused = AuditLog::open(config(&dir), signer(&keys)).err().unwrap();
    assert!(refused.to_string().contains("header"), "{refused}");
    std::fs::write(&seg, &original).unwrap();

    // An unsealed segment followed by an empty one: its end was cut.
    std::fs::write(dir.join(crate::audit::segments::segment_name(2)), b"").unwrap();
    let verifier = signer(&keys).verifier();
    let f = verify_log(&dir, &verifier, 74).unwrap_err();
    assert!(f.reason.contains("is not sealed"), "{f}");
    std::fs::remove_file(dir.join(crate::audit::segments::segment_name(2))).unwrap();

    // Export: a record changed (hash recomputed) after the verification is not signed.
    let verified = verify_log(&dir, &verifier, 74).unwrap();
    let lines = crate::audit::FileLines {
        dir: dir.clone(),
        bytes: verified.bytes,
        head: verified.last_seq.zip(verified.last_hash.clone()),
    };
    let text = String::from_utf8(original.clone()).unwrap();
    let line = text.lines().find(|l| l.starts_with("{\"seq\":7,")).unwrap();
    let mut rec: AuditRecord = serde_json::from_str(line).unwrap();
    rec.event.outcome = "denied".into();
    rec.hash = rec.compute_hash();
    let forged = text.replacen(line, &rec.to_line(), 1);
    std::fs::write(&seg, forged).unwrap();
    let mut out = Vec::new();
    let err = crate::audit::write_document(
        (None, None),
        &lines,
        &[],
        &crate::audit::ExportFilter {
            tenant: Some("nobody".into()),
            ..Default::default()
        },
        &signer(&keys),
        &mut out,
        &crate::progress::Silent,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("changed while it was exported"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_old_log_and_zeros_left_after_a_seal_are_not_damage() {
    let (tmp, keys, dir) = dirs();
    std::fs::create_dir_all(&dir).unwrap();
    // An earlier release created audit.log when it opened and wrote nothing to it (or its
    // torn-tail repair cut it to nothing).
    std::fs::write(crate::audit::legacy_log_path(&dir), b"").unwrap();
    let mut c = config(&dir);
    c.segment_records = 25;
    let log = AuditLog::open(c.clone(), signer(&keys)).unwrap();
    for i in 0..60 {
        log.append(ev(i)).await.unwrap();
    }
    log.close();
    let verifier = signer(&keys).verifier();
    let verified = verify_log(&dir, &verifier, 74).unwrap();
    assert_eq!(verified.records, 60);
    crate::audit::verify_since_last_checkpoint(&dir, &verifier, 74).unwrap();
    // An export whose pass finds segments gone from the start of the log since it was
    // verified refuses, rather than sign a log with records left out.
    let lines = crate::audit::FileLines {
        dir: dir.clone(),
        bytes: verified.bytes,
        head: verified.last_seq.zip(verified.last_hash.clone()),
    };
    let first = dir.join(crate::audit::segments::segment_name(1));
    let aside = tmp.path().join("aside");
    std::fs::rename(&first, &aside).unwrap();
    let err = crate::audit::write_document(
        (None, None),
        &lines,
        &[],
        &crate::audit::ExportFilter::default(),
        &signer(&keys),
        &mut Vec::new(),
        &crate::progress::Silent,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("record 26 does not follow 0"),
        "{err}"
    );
    std::fs::rename(&aside, &first).unwrap();
    // Killed after sealing segment 2 and before cutting the space it had filled ahead:
    // zeros follow its seal, and the start-up check reads that seal from the end.
    let second = dir.join(crate::audit::segments::segment_name(2));
    let f = OpenOptions::new().write(true).open(&second).unwrap();
    f.set_len(f.metadata().unwrap().len() + (1 << 20) + 5)
        .unwrap();
    drop(f);
    assert_eq!(verify_log(&dir, &verifier, 74).unwrap().records, 60);
    crate::audit::verify_since_last_checkpoint(&dir, &verifier, 74).unwrap();
    let log = AuditLog::open(c, signer(&keys)).unwrap();
    assert_eq!(log.append(ev(0)).await.unwrap().seq, 61);
    log.close();
    crate::audit::verify_since_last_checkpoint(&dir, &verifier, 74).unwrap();
    // Something other than zeros after the seal is still refused.
    f_write_at(&second, b"x");
    let f = crate::audit::verify_since_last_checkpoint(&dir, &verifier, 74).unwrap_err();
    assert!(f.reason.contains("is not sealed where"), "{f}");
    assert!(verify_log(&dir, &verifier, 74)
        .unwrap_err()
        .reason
        .contains("after its seal"));
}

fn f_write_at(path: &Path, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.write_all_at(bytes, len - 100).unwrap();
}

/// Someone with the data directory plants a copy of an archived segment in `audit/` (as an
/// interrupted move leaves one), or hides the live segment in the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doctored_second_copy_and_a_live_segment_moved_to_the_archive_are_refused() {
    let (_tmp, keys, dir) = dirs();
    let mut c = config(&dir);
    c.segment_records = 25;
    c.live_segments = 0;
    let log = AuditLog::open(c.clone(), signer(&keys)).unwrap();
    for i in 0..60 {
        log.append(ev(i)).await.unwrap();
    }
    log.close();
    let verifier = signer(&keys).verifier();
    let name = crate::audit::segments::segment_name(1);
    let archived = crate::audit::segments::archive_dir(&dir).join(&name);
    let original = std::fs::read(&archived).unwrap();
    // An identical copy is what an interrupted move leaves: harmless.
    std::fs::write(dir.join(&name), &original).unwrap();
    assert_eq!(verify_log(&dir, &verifier, 74).unwrap().records, 60);
    // A copy with one record's outcome changed is read first, so it must equal the other.
    let text = String::from_utf8(original.clone()).unwrap();
    let doctored = text.replacen("\"outcome\":\"allowed\"", "\"outcome\":\"denied\"", 1);
    assert_ne!(doctored, text);
    std::fs::write(dir.join(&name), doctored).unwrap();
    let f = verify_log(&dir, &verifier, 74).unwrap_err();
    assert!(f.reason.contains("with different contents"), "{f}");
    std::fs::remove_file(dir.join(&name)).unwrap();
    assert_eq!(verify_log(&dir, &verifier, 74).unwrap().records, 60);
    // The live segment hidden in the archive: the writer refuses to start a new one.
    let live = dir.join(crate::audit::segments::segment_name(3));
    let hidden =
        crate::audit::segments::archive_dir(&dir).join(crate::audit::segments::segment_name(3));
    std::fs::rename(&live, &hidden).unwrap();
    let e = AuditLog::open(c, signer(&keys)).err().unwrap();
    assert!(e.to_string().contains("the live one is missing"), "{e}");
}

/// A log of 51 records in segments of 25 (checkpoints only at stops), left as a writer
/// killed right after sealing segment 2 leaves it, before segment 3 held anything: record 51
/// was never acknowledged, nor checkpointed. Its config.
async fn killed_after_sealing_segment_2(dir: &Path, keys: &Path) -> AuditConfig {
    let mut c = config(dir);
    c.segment_records = 25;
    c.checkpoint_every_records = 1000;
    let log = AuditLog::open(c.clone(), signer(keys)).unwrap();
    for i in 0..51 {
        log.append(ev(i)).await.unwrap();
    }
    log.close();
    std::fs::remove_file(dir.join(crate::audit::segments::segment_name(3))).unwrap();
    let checkpoints = dir.join("checkpoints.log");
    let kept: String = std::fs::read_to_string(&checkpoints)
        .unwrap()
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["seq"].as_u64())
                .is_some_and(|s| s <= 50)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&checkpoints, kept).unwrap();
    c
}

/// A seal found as the last thing in the log (a writer killed after writing it, before it
/// made the next segment) may be in the page cache only: it is written back (its file
/// written to: its modification time moves) before the next segment is created after it.
#[tokio::test]
async fn a_seal_found_last_is_written_back_before_the_next_segment() {
    let (_tmp, keys, dir) = dirs();
    let c = killed_after_sealing_segment_2(&dir, &keys).await;
    let second = dir.join(crate::audit::segments::segment_name(2));
    let long_ago = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    std::fs::File::options()
        .write(true)
        .open(&second)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    let bytes = std::fs::read(&second).unwrap();
    let log = AuditLog::open(c, signer(&keys)).unwrap();
    log.close();
    let meta = std::fs::metadata(&second).unwrap();
    assert!(
        meta.modified().unwrap() > long_ago,
        "segment 2 was not written back"
    );
    assert_eq!(std::fs::read(&second).unwrap(), bytes, "its bytes changed");
    assert!(dir.join(crate::audit::segments::segment_name(3)).exists());
}

/// Bytes after the seal of the last segment are no interrupted write (nothing is written to a
/// sealed segment): the start refuses, naming them, and leaves them as found; a forensic start
/// goes on and leaves them too.
#[tokio::test]
async fn bytes_after_the_last_segments_seal_stop_the_start_and_are_kept() {
    let (tmp, keys, dir) = dirs();
    let mut c = killed_after_sealing_segment_2(&dir, &keys).await;
    let second = dir.join(crate::audit::segments::segment_name(2));
    let sealed = std::fs::read(&second).unwrap();
    let planted = [sealed.as_slice(), b"planted"].concat();
    std::fs::write(&second, &planted).unwrap();
    // The same log for the forensic start below, as first found (a refused start has
    // already begun segment 3, after which segment 2 is no longer the last).
    let copy = tmp.path().join("audit-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
    }

    let Err(err) = AuditLog::open(c.clone(), signer(&keys)) else {
        panic!("the log opened with bytes after a seal");
    };
    let err = err.to_string();
    assert!(err.contains("after its seal"), "{err}");
    assert_eq!(
        std::fs::read(&second).unwrap(),
        planted,
        "the bytes were cleared"
    );
    let second = copy.join(crate::audit::segments::segment_name(2));
    c.dir = copy;
    c.forensic_start = true;
    let log = AuditLog::open(c, signer(&keys)).unwrap();
    // The forensic start names them (the daemon records it as the run's first record).
    assert!(
        log.forensic_failure()
            .is_some_and(|f| f.contains("after its seal")),
        "{:?}",
        log.forensic_failure()
    );
    log.close();
    assert_eq!(
        std::fs::read(&second).unwrap(),
        planted,
        "the bytes were cleared"
    );
}

/// One writer per log: a second open of the same directory (another process, or an offline
/// command beside a daemon on a PostgreSQL store) is refused while the first lives, and
/// allowed once it closed.
#[test]
fn a_log_has_one_writer_at_a_time() {
    let (_tmp, keys, dir) = dirs();
    let first = AuditLog::open(config(&dir), signer(&keys)).unwrap();
    let Err(second) = AuditLog::open(config(&dir), signer(&keys)) else {
        panic!("a second writer opened the log");
    };
    assert!(
        second.to_string().contains("another credbroker process"),
        "{second}"
    );
    first.close();
    AuditLog::open(config(&dir), signer(&keys)).unwrap().close();
}

/// Appends `extra` records, one batch each, when a verification begins its walk: the
/// daemon writing on while `audit verify` (or an export, or the doctor) reads its log.
struct AppendsMeanwhile<'a> {
    rt: &'a tokio::runtime::Runtime,
    log: std::sync::Mutex<Option<AuditLog>>,
    extra: usize,
}

impl crate::progress::Progress for AppendsMeanwhile<'_> {
    fn begin(&self, _what: &str, _total: u64, _unit: crate::progress::Unit) {
        if let Some(log) = self.log.lock().unwrap().take() {
            for i in 0..self.extra {
                self.rt.block_on(log.append(ev(1000 + i))).unwrap();
            }
            log.close();
        }
    }
    fn advance(&self, _n: u64) {}
    fn end(&self) {}
}

/// Records the daemon appends while a verification walks its log are left for the next
/// one: their checkpoints were written after the walk read the checkpoint file, so read,
/// they would look like an unsigned tail longer than the writer ever leaves (a genuine,
/// busy log reported as rewritten, and its export refused).
#[test]
fn records_appended_during_a_verification_are_left_for_the_next() {
    let (_tmp, keys, dir) = dirs();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let log = AuditLog::open(config(&dir), signer(&keys)).unwrap();
    for i in 0..50 {
        rt.block_on(log.append(ev(i))).unwrap();
    }
    let verifier = signer(&keys).verifier();
    let meanwhile = AppendsMeanwhile {
        rt: &rt,
        log: std::sync::Mutex::new(Some(log)),
        extra: 100,
    };
    let max_unanchored = config(&dir).max_unanchored();
    let summary =
        crate::audit::verify_log_with(&dir, &verifier, max_unanchored, &meanwhile).unwrap();
    assert_eq!((summary.records, summary.last_seq), (50, Some(50)));
    // The next verification reads them, anchored.
    let summary = verify_log(&dir, &verifier, max_unanchored).unwrap();
    assert_eq!(summary.records, 150);
    assert_eq!(summary.last_checkpoint, Some(150));
}
