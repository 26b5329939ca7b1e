//! A writer whose batch failed: what it chains onto next, and what it adopts when it
//! re-opens a log changed while it was failed.

use super::*;

#[test]
fn a_failed_batch_whose_rollback_did_not_happen_is_never_chained_onto() {
    let (_tmp, keys, dir) = dirs();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let log = AuditLog::open(config(&dir), signer(&keys)).unwrap();
    for i in 0..3 {
        rt.block_on(log.append(ev(i))).unwrap();
    }
    log.close();
    // The writer's view: three durable records; then a batch fails and its truncation
    // does not happen, leaving a record nobody was told about.
    let mut writer = failed_writer(&dir, &keys);
    let durable = (writer.tail.seq, writer.tail.hash.clone());
    let at = writer.tail.len;
    let seg = writer.live.path.clone();
    let mut rec = AuditRecord {
        replica: None,
        seq: durable.0 + 1,
        time: now_rfc3339(),
        event: ev(99),
        prev_hash: durable.1.clone(),
        hash: String::new(),
    };
    rec.hash = rec.compute_hash();
    writer.failed_first = Some(rec.hash.clone());
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    let mut line = serde_json::to_vec(&rec).unwrap();
    line.push(b'\n');
    f.write_all_at(&line, at).unwrap();
    drop(f);
    writer.reopen().unwrap();
    assert_eq!((writer.tail.seq, writer.tail.hash.clone()), durable);
    let text = std::fs::read_to_string(&seg).unwrap();
    assert!(
        !text.contains("\"r99\""),
        "the failed batch's record is gone"
    );
}

/// A writer over the log in `dir` as it is on disk, whose last batch failed: it re-opens the
/// files before its next write.
fn failed_writer(dir: &Path, keys: &Path) -> Writer {
    let (live, tail, _) = open_live(&config(dir)).unwrap();
    let (checkpoints, last_checkpoint) = open_checkpoints(&checkpoints_path(dir)).unwrap();
    Writer {
        _lock: lock_dir(dir).unwrap(),
        config: config(dir),
        live,
        tail,
        checkpoints,
        signer: signer(keys),
        last_checkpoint_seq: last_checkpoint.as_ref().map_or(0, |c| c.seq),
        last_checkpoint,
        last_checkpoint_at: Instant::now(),
        needs_reopen: true,
        failed_first: None,
        changed_underneath: None,
        healthy: Arc::new(AtomicBool::new(false)),
        stats: Arc::new(AuditStats::default()),
        batch_sizes: None,
    }
}

/// Someone who can fill the disk makes a batch fail, then edits the log before space comes
/// back: the re-open finds a log cut back, one rewritten with recomputed hashes, a record
/// hidden behind a zero byte, or a checkpoint file cut back. None of them is adopted and
/// chained onto (the writer stays failed closed, without trying again), nothing found is
/// cleared, and a checkpoint over the writer's own last record is appended: the changed log
/// then fails verification (a start would refuse it) where it would have passed.
#[test]
fn a_log_changed_while_its_writer_was_failed_is_not_adopted() {
    let (_tmp, keys, dir) = dirs();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let log = AuditLog::open(config(&dir), signer(&keys)).unwrap();
    for i in 0..14 {
        rt.block_on(log.append(ev(i))).unwrap();
    }
    log.close();
    let writer = failed_writer(&dir, &keys);
    let seg = writer.live.path.clone();
    let cps = checkpoints_path(&dir);
    assert!(writer.last_checkpoint_seq >= 10, "a checkpoint was signed");
    drop(writer);
    let (seg_bytes, cp_bytes) = (std::fs::read(&seg).unwrap(), std::fs::read(&cps).unwrap());
    // Where the last complete line starts (files may be zero-filled past their content).
    let last_line_start = |b: &[u8]| {
        let end = b.iter().rposition(|&c| c == b'\n').unwrap();
        b[..end]
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |i| i + 1)
    };
    let start = last_line_start(&seg_bytes);
    let end = start + seg_bytes[start..].iter().position(|&c| c == b'\n').unwrap() + 1;
    // The log cut back by its last record.
    let cut = seg_bytes[..start].to_vec();
    // The last record rewritten (another request id), its hash recomputed.
    let rewritten = {
        let mut rec: AuditRecord = serde_json::from_slice(&seg_bytes[start..end - 1]).unwrap();
        rec.event.request_id = "forged".into();
        rec.hash = rec.compute_hash();
        let mut b = seg_bytes[..start].to_vec();
        b.extend(serde_json::to_vec(&rec).unwrap());
        b.push(b'\n');
        b.extend(&seg_bytes[end..]);
        b
    };
    // The last record hidden behind a zero byte (read as a torn tail).
    let hidden = {
        let mut b = seg_bytes.clone();
        b[start] = 0;
        b
    };
    for (what, segment, checkpoints) in [
        ("cut back", cut, cp_bytes.clone()),
        ("rewritten", rewritten, cp_bytes.clone()),
        ("hidden", hidden, cp_bytes.clone()),
        (
            "checkpoints cut back",
            seg_bytes.clone(),
            cp_bytes[..last_line_start(&cp_bytes)].to_vec(),
        ),
    ] {
        std::fs::write(&seg, &seg_bytes).unwrap();
        std::fs::write(&cps, &cp_bytes).unwrap();
        let mut writer = failed_writer(&dir, &keys);
        let own = (writer.tail.seq, writer.tail.hash.clone());
        // A writer whose checkpoint write failed is still healthy until it re-opens.
        writer.healthy.store(true, Ordering::Relaxed);
        std::fs::write(&seg, &segment).unwrap();
        std::fs::write(&cps, &checkpoints).unwrap();
        let err = writer.reopen().unwrap_err().to_string();
        assert!(err.contains("changed while"), "{what}: {err}");
        assert!(writer.needs_reopen, "{what}: still failed closed");
        assert!(
            !writer.healthy.load(Ordering::Relaxed),
            "{what}: resolves would mint on a log that takes no records"
        );
        assert_eq!(
            std::fs::read(&seg).unwrap(),
            segment,
            "{what}: nothing cleared"
        );
        // Stays so: the next re-open does not look again.
        let again = writer.reopen().unwrap_err().to_string();
        assert!(again.contains("changed while"), "{what}: {again}");
        let now = std::fs::read(&cps).unwrap();
        assert!(now.starts_with(&checkpoints), "{what}");
        let added: Checkpoint = serde_json::from_slice(&now[checkpoints.len()..]).unwrap();
        assert_eq!((added.seq, added.hash.clone()), own, "{what}");
        let verified = verify_log(&dir, &signer(&keys).verifier(), 74);
        if what == "checkpoints cut back" {
            // The log is the writer's: its own checkpoint anchors it again.
            assert!(verified.is_ok(), "{what}: {verified:?}");
        } else {
            assert!(verified.is_err(), "{what}: the changed log verifies");
        }
    }
    // The log as the writer left it re-opens, and the chain goes on.
    std::fs::write(&seg, &seg_bytes).unwrap();
    std::fs::write(&cps, &cp_bytes).unwrap();
    let mut writer = failed_writer(&dir, &keys);
    writer.reopen().unwrap();
    assert!(!writer.needs_reopen);
}
