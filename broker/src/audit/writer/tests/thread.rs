//! The writer thread's queue: slots held by records, not by callers; and the unsigned-tail
//! record, kept until it is written.

use super::*;

/// A writer held in its first batch (a disk taking seconds per fsync) until `gate` opens.
struct Held {
    gate: std::sync::mpsc::Receiver<()>,
    config: AuditConfig,
}

impl Sink for Held {
    fn commit(&mut self, events: Vec<(Box<AuditEvent>, Waiter)>) {
        let _ = self.gate.recv();
        for (n, (_, done)) in events.into_iter().enumerate() {
            done.send(Ok(AuditReceipt {
                seq: n as u64,
                audit_id: String::new(),
            }));
        }
    }
    fn maybe_checkpoint(&mut self, _force: bool) {}
    fn probe(&mut self) {}
    fn healthy(&self) -> bool {
        true
    }
    fn config(&self) -> &AuditConfig {
        &self.config
    }
}

/// Callers that queue a record and go away before it is written (a worker resetting its
/// streams while the disk is slow) leave their records queued: their slots stay taken until
/// the writer answers, so however many go away, no more than QUEUE_BOUND records are queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_go_away_keep_their_records_slots_until_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (open, gate) = std::sync::mpsc::channel();
    let log = AuditLog::spawn(
        Held {
            gate,
            config: config(tmp.path()),
        },
        Arc::new(AtomicBool::new(true)),
        Arc::default(),
        None,
        None,
    )
    .unwrap();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut queued = 0;
    for n in 0..QUEUE_BOUND + 100 {
        let sent = std::sync::atomic::AtomicBool::new(false);
        {
            // Outside tokio's cooperative budget, which would make a free slot wait after
            // 128 polls in one go.
            let append = tokio::task::unconstrained(
                log.append_then(ev(n), || sent.store(true, Ordering::Relaxed)),
            );
            let mut append = std::pin::pin!(append);
            assert!(std::future::Future::poll(append.as_mut(), &mut cx).is_pending());
            // Dropped here: the caller went away.
        }
        if sent.load(Ordering::Relaxed) {
            queued += 1;
        }
    }
    assert_eq!(queued, QUEUE_BOUND, "records queued past the bound");
    assert_eq!(log.queue.available_permits(), 0);
    // The disk answers: every queued record is written and its slot comes back.
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.queue.available_permits() < QUEUE_BOUND {
        assert!(Instant::now() < deadline, "slots never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    log.close();
}

/// What [`Flaky`] did, in order: `batch` where a batch it wrote begins, the actions of the
/// records in it, and `checkpoint` wherever it signed one.
type Done = Arc<Mutex<Vec<String>>>;

/// A writer whose first `fails` batches fail (a full disk).
struct Flaky {
    fails: usize,
    done: Done,
    healthy: Arc<AtomicBool>,
    config: AuditConfig,
}

impl Sink for Flaky {
    fn commit(&mut self, events: Vec<(Box<AuditEvent>, Waiter)>) {
        let ok = self.fails == 0;
        self.fails = self.fails.saturating_sub(1);
        self.healthy.store(ok, Ordering::Relaxed);
        if ok {
            // Where a batch begins (a checkpoint the batch signed would come here).
            self.done.lock().unwrap().push("batch".into());
        }
        for (n, (ev, done)) in events.into_iter().enumerate() {
            if ok {
                self.done.lock().unwrap().push(ev.action.clone());
                done.send(Ok(AuditReceipt {
                    seq: n as u64,
                    audit_id: String::new(),
                }));
            } else {
                done.send(Err(AuditError::Write("disk full".into())));
            }
        }
    }
    fn maybe_checkpoint(&mut self, force: bool) {
        if force {
            self.done.lock().unwrap().push("checkpoint".into());
        }
    }
    fn probe(&mut self) {
        // The file log's probe signs a checkpoint once the log takes writes again.
        self.healthy.store(true, Ordering::Relaxed);
        self.done.lock().unwrap().push("checkpoint".into());
    }
    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
    fn config(&self) -> &AuditConfig {
        &self.config
    }
}

/// A log opened with records no checkpoint signs records `audit.unsigned_tail` first, in a
/// batch of its own. When the disk that made the last writer stop unsigned is still full,
/// the record is kept (not dropped with a failed batch), the batches behind it are refused,
/// and no checkpoint signs over the tail before it is written: not at a close, not by a
/// probe, not by a batch (which may sign one at the unsigned-record limit or sealing a full
/// segment). Without it, the chain would keep no trace of the tail having been unsigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unsigned_tail_is_recorded_before_any_checkpoint_however_often_batches_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let start = |fails: usize, done: &Done| {
        let healthy = Arc::new(AtomicBool::new(true));
        AuditLog::spawn(
            Flaky {
                fails,
                done: done.clone(),
                healthy: healthy.clone(),
                config: config(tmp.path()),
            },
            healthy,
            Arc::default(),
            None,
            Some((3, 7)),
        )
        .unwrap()
    };
    // Its own batch fails, and the first batch after it: recorded with the batch after.
    let done = Done::default();
    let log = start(2, &done);
    let mut answers = Vec::new();
    for n in 0..2 {
        answers.push(log.append(ev(n)).await.is_ok());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log.close();
    let done = done.lock().unwrap().clone();
    assert_eq!(
        done.get(..3),
        Some(
            &[
                "batch".to_owned(),
                "audit.unsigned_tail".into(),
                "batch".into()
            ][..]
        ),
        "the marker alone, then the others: {done:?} ({answers:?})"
    );
    assert!(answers[1], "{answers:?}");
    // Never written: no checkpoint at all, the close's neither (the next start finds the
    // tail unsigned again and says so).
    let done = Done::default();
    let log = start(usize::MAX, &done);
    assert!(log.append(ev(0)).await.is_err());
    assert!(!log.writable().await);
    log.close();
    assert!(
        done.lock().unwrap().is_empty(),
        "{:?}",
        done.lock().unwrap()
    );
}
