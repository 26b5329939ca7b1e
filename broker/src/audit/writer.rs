//! The group-committing audit writer.
//!
//! One OS thread owns the live segment. Request handlers send an [`AuditEvent`] and wait for
//! a receipt. The thread takes everything queued (up to `max_batch`), assigns sequence
//! numbers and hashes, seals the segment and starts the next when the batch would not fit,
//! writes the batch with one `pwrite` into space zero-filled ahead, calls `fdatasync` once,
//! and only then answers every waiter. On a failed write or sync it zeroes what the batch
//! may have left after the last durable byte, answers every waiter of the batch with an
//! error (the caller fails closed), and keeps the chain state of the last durable record.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::checkpoints_path;
use super::record::{AuditEvent, AuditRecord, Checkpoint};
use super::tail::{open_checkpoints, Tail};
use crate::keys::AuditSigner;
use crate::model::now_rfc3339;

mod recovery;
mod segment;
mod thread;
use segment::{open_live, Live};
pub(super) use thread::Sink;

/// Audit writer settings.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Directory holding the segments and `checkpoints.log`.
    pub dir: PathBuf,
    /// Seal a segment and start the next before it would grow past this many bytes…
    pub segment_bytes: u64,
    /// …or hold more than this many records (0: no limit).
    pub segment_records: u64,
    /// Sealed segments kept beside the live one; older ones move to `archive/`.
    pub live_segments: usize,
    /// Most records per group commit.
    pub max_batch: usize,
    /// Sign a checkpoint after this many records…
    pub checkpoint_every_records: u64,
    /// …or after this long with unanchored records.
    pub checkpoint_interval: Duration,
    /// Start even when the log does not verify from its last signed checkpoint (forensic
    /// starts only: `serve --forensic-start`).
    pub forensic_start: bool,
}

impl AuditConfig {
    /// The longest tail the writer leaves without a signed checkpoint: it signs after every
    /// batch that brings the unsigned records to `checkpoint_every_records`.
    pub fn max_unanchored(&self) -> u64 {
        max_unanchored(self.checkpoint_every_records, self.max_batch)
    }
}

/// See [`AuditConfig::max_unanchored`].
pub fn max_unanchored(checkpoint_every_records: u64, max_batch: usize) -> u64 {
    checkpoint_every_records.saturating_add(max_batch as u64)
}

/// Why a record could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// Write or sync failed; the record was not acknowledged.
    #[error("audit log write failed: {0}")]
    Write(String),
    /// The writer has stopped (shutdown or a failure it cannot recover from).
    #[error("audit writer is not running")]
    Stopped,
    /// The log does not verify from its last signed checkpoint to its end.
    #[error("audit log {path} does not verify: {reason}. Refusing to start on a log that may have been rewritten; investigate with `credbroker audit verify` (runbooks/audit-verification.md), or start with `serve --forensic-start` to override")]
    Unverified {
        /// File.
        path: String,
        /// The verification failure.
        reason: String,
    },
    /// The log on disk is inconsistent at start-up.
    #[error("audit log {path} is inconsistent: {reason} (run `credbroker audit verify`)")]
    Inconsistent {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
    /// The log could not be opened.
    #[error("cannot open audit log {path}: {reason}")]
    Open {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Most appends queued or in the batch being written at once. Enough for many group commits
/// of the largest batch; a burst beyond it waits for records to become durable instead of
/// growing the queue without bound.
pub const QUEUE_BOUND: usize = 4096;

/// Proof that a record is durable.
#[derive(Debug, Clone)]
pub struct AuditReceipt {
    /// Sequence number.
    pub seq: u64,
    /// Audit id (`aud_` and 20 hex digits of the record's hash), returned to the caller.
    pub audit_id: String,
}

/// Who waits for a record, with the queue slot its record holds until the writer answers:
/// a caller that goes away (a worker resetting its stream while the disk is slow) frees no
/// slot while its record is still queued, so the queue stays within [`QUEUE_BOUND`].
pub(super) struct Waiter {
    tx: oneshot::Sender<Result<AuditReceipt, AuditError>>,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Waiter {
    /// Answers the caller (gone or not) and frees the slot.
    pub(super) fn send(self, answer: Result<AuditReceipt, AuditError>) {
        let _ = self.tx.send(answer);
    }
}

pub(super) enum Msg {
    Append(Box<AuditEvent>, Waiter),
    /// Whether the log takes records now (probed first when it failed), holding a queue
    /// slot as an append does.
    Probe(oneshot::Sender<bool>, tokio::sync::OwnedSemaphorePermit),
    Close(std::sync::mpsc::SyncSender<()>),
}

/// Counters the metrics endpoint reads.
#[derive(Default)]
pub struct AuditStats {
    /// Number of group commits.
    pub batches: AtomicU64,
    /// Records committed.
    pub records: AtomicU64,
    /// Failed batches.
    pub failures: AtomicU64,
    /// Size of the last batch.
    pub last_batch: AtomicU64,
}

/// Where the writer reports each group commit's size (the metrics histogram).
pub type BatchObserver = prometheus_client::metrics::histogram::Histogram;

/// Handle to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    queue: Arc<tokio::sync::Semaphore>,
    healthy: Arc<AtomicBool>,
    /// Set by [`AuditLog::close`]: healthy no more, whatever the writer's last batch did.
    closed: Arc<AtomicBool>,
    stats: Arc<AuditStats>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    forensic: Option<String>,
}

/// The record a writer makes first when the log it opens ends in records no signed
/// checkpoint covers (first, last): the writer before it stopped without signing its final
/// checkpoint (a crash, a kill), or checkpoints were removed. Its own checkpoints sign over
/// them from then on; the record says so, in the chain, whoever opened the log (the daemon or
/// an offline command).
fn unsigned_tail_event((first, last): (u64, u64)) -> AuditEvent {
    AuditEvent {
        kind: "admin".into(),
        action: "audit.unsigned_tail".into(),
        request_id: crate::server::new_request_id(),
        actor: "credbroker:audit".into(),
        outcome: "allowed".into(),
        detail: Some(format!(
            "records {first}..{last} had no signed checkpoint when the log was opened: the writer before stopped without signing its final one (a crash, a kill, a power loss), or checkpoints were removed; checkpoints signed from here on cover them, and only a copy of the checkpoints kept off the host (audit verify --pinned) proves them"
        )),
        ..Default::default()
    }
}

struct Writer {
    /// The audit directory's lock, held while this writer lives: one writer per log.
    _lock: File,
    config: AuditConfig,
    live: Live,
    tail: Tail,
    checkpoints: File,
    signer: AuditSigner,
    last_checkpoint_seq: u64,
    /// The last checkpoint written (a segment's seal repeats it).
    last_checkpoint: Option<Checkpoint>,
    last_checkpoint_at: Instant,
    needs_reopen: bool,
    /// Hash of the first record of the last failed batch, until the log is re-opened: if it
    /// is found right after the durable length, the batch's rollback did not happen.
    failed_first: Option<String>,
    /// Set when a re-open found the log or its checkpoints changed underneath the writer:
    /// it stays failed (no more I/O, no re-open) until a restart verifies the log.
    changed_underneath: Option<String>,
    healthy: Arc<AtomicBool>,
    stats: Arc<AuditStats>,
    batch_sizes: Option<BatchObserver>,
}

impl Writer {
    fn commit(&mut self, events: Vec<(Box<AuditEvent>, Waiter)>) {
        if self.needs_reopen {
            if let Err(e) = self.reopen() {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                // Unhealthy: no resolve mints before the log takes records again (the idle
                // probe, or a probe a resolve asks for, finds out).
                self.healthy.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, records = events.len(), "audit log still unavailable; failing requests closed");
                let err = AuditError::Write(e.to_string());
                for (_, done) in events {
                    done.send(Err(err.clone()));
                }
                return;
            }
        }
        // Never more unsigned records than verification accepts: if the checkpoint that
        // should have bounded them could not be written, sign now or refuse the batch (a
        // log whose tail cannot be proven would be refused at the next start).
        let unsigned = |w: &Writer| w.tail.seq.saturating_sub(w.last_checkpoint_seq);
        if unsigned(self) + events.len() as u64 > self.config.max_unanchored() {
            self.maybe_checkpoint(true);
            if unsigned(self) + events.len() as u64 > self.config.max_unanchored() {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                self.healthy.store(false, Ordering::Relaxed);
                tracing::error!(unsigned = unsigned(self), records = events.len(), "no audit checkpoint could be signed; failing requests closed rather than write records no checkpoint covers");
                let err = AuditError::Write(
                    "audit checkpoints cannot be written: records would go unsigned".into(),
                );
                for (_, done) in events {
                    done.send(Err(err.clone()));
                }
                return;
            }
        }
        let mut buf = Vec::with_capacity(events.len() * 640);
        let mut receipts = Vec::with_capacity(events.len());
        let mut waiters = Vec::with_capacity(events.len());
        let mut seq = self.tail.seq;
        let mut prev = self.tail.hash.clone();
        let mut first_hash = None;
        let time = now_rfc3339();
        for (event, done) in events {
            seq += 1;
            let mut rec = AuditRecord {
                replica: None,
                seq,
                time: time.clone(),
                event: *event,
                prev_hash: prev,
                hash: String::new(),
            };
            buf.extend_from_slice(&rec.seal());
            buf.push(b'\n');
            receipts.push(AuditReceipt {
                seq,
                audit_id: rec.audit_id(),
            });
            waiters.push(done);
            first_hash.get_or_insert_with(|| rec.hash.clone());
            prev = rec.hash;
        }
        let count = waiters.len() as u64;
        let result = self.write_batch(buf, count);
        match result {
            Ok(written) => {
                self.tail = Tail {
                    seq,
                    hash: prev,
                    len: self.tail.len + written,
                };
                self.live.started = true;
                self.live.records += count;
                self.healthy.store(true, Ordering::Relaxed);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.records.fetch_add(count, Ordering::Relaxed);
                self.stats.last_batch.store(count, Ordering::Relaxed);
                if let Some(h) = &self.batch_sizes {
                    h.observe(count as f64);
                }
                for (done, receipt) in waiters.into_iter().zip(receipts) {
                    done.send(Ok(receipt));
                }
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                self.healthy.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, records = waiters.len(), "audit batch failed; failing its requests closed");
                self.roll_back();
                self.failed_first = first_hash;
                let err = AuditError::Write(e.to_string());
                for done in waiters {
                    done.send(Err(err.clone()));
                }
            }
        }
    }

    /// Writes one batch of record lines at the live segment's tail — after sealing it and
    /// starting the next when they would not fit, and after the new segment's header — and
    /// syncs its data once. Returns the bytes written.
    fn write_batch(&mut self, records: Vec<u8>, count: u64) -> std::io::Result<u64> {
        if self.must_rotate(records.len() as u64, count) {
            self.rotate()?;
        }
        let buf = if self.live.started {
            records
        } else {
            let mut with_header = self.header();
            with_header.extend_from_slice(&records);
            with_header
        };
        let end = self.tail.len + buf.len() as u64;
        self.fill_to(end)?;
        self.live.file.write_all_at(&buf, self.tail.len)?;
        self.live.file.sync_data()?;
        Ok(buf.len() as u64)
    }

    fn maybe_checkpoint(&mut self, force: bool) {
        let unanchored = self.tail.seq.saturating_sub(self.last_checkpoint_seq);
        if unanchored == 0 {
            return;
        }
        // A log's first records are signed at once (after their batch): a log without any
        // checkpoint is, to `audit verify`, records nobody with the key wrote, and a broker
        // killed within its first interval left one.
        let due = force
            || self.last_checkpoint_seq == 0
            || unanchored >= self.config.checkpoint_every_records
            || self.last_checkpoint_at.elapsed() >= self.config.checkpoint_interval;
        if !due {
            return;
        }
        // Not onto a file the last failed write may have left half a line in, nor one that
        // was replaced: re-opened (and checked) first. While the writer is unhealthy its
        // probe does that (once a tick, not twice; a forced checkpoint, the last one at a
        // close, tries itself); a failed re-open here makes it unhealthy.
        if self.needs_reopen {
            if !force && !self.healthy.load(Ordering::Relaxed) {
                return;
            }
            if let Err(e) = self.reopen() {
                self.healthy.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, "audit log still unavailable: a due checkpoint cannot be written; failing requests closed");
                return;
            }
        }
        let cp = Checkpoint::signed(self.tail.seq, &self.tail.hash, &self.signer);
        let mut line = serde_json::to_vec(&cp).unwrap_or_default();
        line.push(b'\n');
        let before = self.checkpoints.metadata().map(|m| m.len());
        match self
            .checkpoints
            .write_all(&line)
            .and_then(|()| self.checkpoints.sync_data())
        {
            Ok(()) => {
                self.last_checkpoint_seq = cp.seq;
                self.last_checkpoint_at = Instant::now();
                self.last_checkpoint = Some(cp);
            }
            Err(e) => {
                // Re-open both files before the next write: the checkpoint file may have been
                // replaced or its disk repaired meanwhile.
                self.needs_reopen = true;
                // A partly written line would be glued to the next checkpoint and make every
                // later verification fail: cut the file back to where it was.
                let cut = before.and_then(|len| {
                    self.checkpoints
                        .set_len(len)
                        .and_then(|()| self.checkpoints.sync_data())
                });
                match cut {
                    Ok(()) => {
                        tracing::error!(error = %e, "could not write audit checkpoint; the partial line was removed, will retry")
                    }
                    Err(cut_err) => {
                        tracing::error!(error = %e, cut_error = %cut_err, "could not write audit checkpoint nor remove its partial line; it is cut at the next start")
                    }
                }
            }
        }
    }
}

impl Sink for Writer {
    fn commit(&mut self, events: Vec<(Box<AuditEvent>, Waiter)>) {
        Writer::commit(self, events);
    }
    fn maybe_checkpoint(&mut self, force: bool) {
        Writer::maybe_checkpoint(self, force);
    }
    fn probe(&mut self) {
        Writer::probe(self);
    }
    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
    fn config(&self) -> &AuditConfig {
        &self.config
    }
}

/// Takes the audit directory's lock (`<dir>/.lock`, an exclusive `flock`), which the writer
/// holds while it lives: two processes appending to one log (a daemon and an offline
/// command on a PostgreSQL store, which sled's own lock does not keep apart, or two offline
/// commands) would each chain onto the same last record and fork it.
fn lock_dir(dir: &std::path::Path) -> Result<File, AuditError> {
    crate::keys::lock_file(&dir.join(".lock")).map_err(|e| AuditError::Open {
        path: dir.display().to_string(),
        reason: match e {
            crate::keys::LockFailure::Held => "another credbroker process is writing this audit log (its .lock is held): stop it first".into(),
            crate::keys::LockFailure::Io(e) => e,
        },
    })
}

impl AuditLog {
    /// Opens (creating if needed) the log, recovers its tail, and starts the writer thread.
    ///
    /// # Errors
    /// When the files cannot be opened or the last record is inconsistent.
    pub fn open(config: AuditConfig, signer: AuditSigner) -> Result<AuditLog, AuditError> {
        Self::open_observed(config, signer, None)
    }

    /// As [`AuditLog::open`], reporting every group commit's size to `batch_sizes`.
    ///
    /// # Errors
    /// When the files cannot be opened or the last record is inconsistent.
    pub fn open_observed(
        config: AuditConfig,
        signer: AuditSigner,
        batch_sizes: Option<BatchObserver>,
    ) -> Result<AuditLog, AuditError> {
        let open_err = |e: std::io::Error| AuditError::Open {
            path: config.dir.display().to_string(),
            reason: e.to_string(),
        };
        // The audit directory's own entry is made durable in its parent (the segments'
        // entries are synced in it): lost in a crash, the next start would begin a new chain.
        // At every open, not only when it is made here: a run killed between making it and
        // syncing its parent leaves one that exists and was never synced.
        let existed = config.dir.exists();
        crate::keys::create_private_dir(&config.dir).map_err(open_err)?;
        if let Some(parent) = config.dir.parent() {
            let parent = if parent.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                parent
            };
            match super::segments::sync_dir(parent) {
                Ok(()) => {}
                // One this user may not open (mode 0711) was never synced by earlier releases
                // either: said, not refused, when the directory was there before.
                Err(e) if existed && e.kind() == std::io::ErrorKind::PermissionDenied => {
                    tracing::warn!(parent = %parent.display(), "the audit directory's parent cannot be opened to sync its entry; a crash soon after its creation could lose it");
                }
                Err(e) => return Err(open_err(e)),
            }
        }
        let lock = lock_dir(&config.dir)?;
        let (live, tail, torn) = open_live(&config)?;
        let log = live.path.clone();
        let (checkpoints, last_checkpoint) = open_checkpoints(&checkpoints_path(&config.dir))?;
        let last_checkpoint_seq = last_checkpoint.as_ref().map_or(0, |c| c.seq);
        if last_checkpoint_seq > tail.seq {
            return Err(AuditError::Inconsistent {
                path: log.display().to_string(),
                reason: format!(
                    "a checkpoint covers record {last_checkpoint_seq} but the log ends at {}",
                    tail.seq
                ),
            });
        }
        let mut forensic = None;
        // Verified before any torn byte is cleared: bytes after a seal fail it (and are never
        // cleared, not even by a forensic start).
        if let Err(f) = super::verify::verify_since_last_checkpoint(
            &config.dir,
            &signer.verifier(),
            config.max_unanchored(),
        ) {
            if !config.forensic_start {
                return Err(AuditError::Unverified {
                    path: log.display().to_string(),
                    reason: f.to_string(),
                });
            }
            tracing::error!(
                failure = %f,
                "FORENSIC START: the audit log does not verify from its last signed checkpoint; new records are chained onto it regardless"
            );
            forensic = Some(f.to_string());
        }
        if let Some(torn) = torn.filter(|t| t.after_seal().is_none()) {
            torn.clear()?;
        }
        // The tail found is the page cache's: made the disk's before anything is chained onto
        // it (see `Live::write_back`).
        live.write_back(tail.len, segment::one_batch_bytes(&config))
            .map_err(|e| AuditError::Open {
                path: log.display().to_string(),
                reason: format!(
                    "the log's last records could not be written to disk again ({e}): the disk failed a write the log depends on; nothing was appended"
                ),
            })?;
        let unsigned_tail =
            (tail.seq > last_checkpoint_seq).then_some((last_checkpoint_seq + 1, tail.seq));
        let healthy = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(AuditStats::default());
        let writer = Writer {
            _lock: lock,
            config,
            live,
            tail,
            checkpoints,
            signer,
            last_checkpoint_seq,
            last_checkpoint,
            last_checkpoint_at: Instant::now(),
            needs_reopen: false,
            failed_first: None,
            changed_underneath: None,
            healthy: healthy.clone(),
            stats: stats.clone(),
            batch_sizes,
        };
        writer.archive_old();
        AuditLog::spawn(writer, healthy, stats, forensic, unsigned_tail)
    }

    /// Starts the writer thread over `sink`.
    pub(super) fn spawn(
        sink: impl Sink,
        healthy: Arc<AtomicBool>,
        stats: Arc<AuditStats>,
        forensic: Option<String>,
        unsigned_tail: Option<(u64, u64)>,
    ) -> Result<AuditLog, AuditError> {
        let (tx, rx) = mpsc::channel();
        // The first record the writer writes, in a batch of its own, before any checkpoint
        // signs over the tail (see thread::run).
        let marker = unsigned_tail.map(|tail| {
            tracing::warn!(
                first = tail.0,
                last = tail.1,
                "audit records found without a signed checkpoint (the writer before stopped without signing its final one, or checkpoints were removed); recorded as audit.unsigned_tail"
            );
            Box::new(unsigned_tail_event(tail))
        });
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || thread::run(sink, rx, marker))
            .map_err(|e| AuditError::Open {
                path: "audit-writer thread".into(),
                reason: e.to_string(),
            })?;
        Ok(AuditLog {
            tx,
            queue: Arc::new(tokio::sync::Semaphore::new(QUEUE_BOUND)),
            healthy,
            closed: Arc::new(AtomicBool::new(false)),
            stats,
            thread: Arc::new(Mutex::new(Some(thread))),
            forensic,
        })
    }

    /// Why the log did not verify when it was opened with `forensic_start` (`None`: it did).
    /// The caller records it as the first record of the run.
    pub fn forensic_failure(&self) -> Option<&str> {
        self.forensic.as_deref()
    }

    /// Appends one event and waits until it is durable.
    ///
    /// # Errors
    /// [`AuditError`] when it could not be made durable: the caller must fail closed.
    pub async fn append(&self, event: AuditEvent) -> Result<AuditReceipt, AuditError> {
        self.append_then(event, || {}).await
    }

    /// As [`AuditLog::append`], calling `queued` once the writer holds the event (before it
    /// is durable): from then on it is written whether or not the caller still waits.
    ///
    /// # Errors
    /// [`AuditError`] when it could not be made durable: the caller must fail closed.
    pub async fn append_then(
        &self,
        event: AuditEvent,
        queued: impl FnOnce(),
    ) -> Result<AuditReceipt, AuditError> {
        // Back-pressure: at most QUEUE_BOUND appends are queued or being written; further
        // callers wait here (holding nothing else of the writer's) until one is answered.
        // The slot goes with the record, not with this caller.
        let slot = Arc::clone(&self.queue)
            .acquire_owned()
            .await
            .map_err(|_| AuditError::Stopped)?;
        let (done, wait) = oneshot::channel();
        let done = Waiter {
            tx: done,
            _slot: Some(slot),
        };
        self.tx
            .send(Msg::Append(Box::new(event), done))
            .map_err(|_| AuditError::Stopped)?;
        queued();
        wait.await.map_err(|_| AuditError::Stopped)?
    }

    /// [`AuditLog::healthy`], as a condition that keeps no handle to the writer (which
    /// would keep it from stopping).
    pub fn health(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let (closed, healthy) = (Arc::clone(&self.closed), Arc::clone(&self.healthy));
        move || !closed.load(Ordering::Relaxed) && healthy.load(Ordering::Relaxed)
    }

    /// Whether the last batch was written successfully, and the log is not closed.
    pub fn healthy(&self) -> bool {
        !self.closed.load(Ordering::Relaxed) && self.healthy.load(Ordering::Relaxed)
    }

    /// Whether the log takes records now: at once while it is healthy; after a failure the
    /// writer probes it first (it may have recovered since its last batch), so a caller
    /// about to do something it must record (mint upstream) never does it on a log known to
    /// be failing, and a transient failure costs no more than one probe.
    pub async fn writable(&self) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        if self.healthy() {
            return true;
        }
        // A probe holds a queue slot until the writer answers it, as an append does: callers
        // giving up on a writer that does not answer leave no more queued than the bound. With
        // no slot free, the log is not writable now.
        let Ok(slot) = Arc::clone(&self.queue).try_acquire_owned() else {
            return false;
        };
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Msg::Probe(reply, slot)).is_err() {
            return false;
        }
        // A writer busy for longer than this (a database not answering) is not writable now.
        tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .is_ok_and(|a| a.unwrap_or(false))
    }

    /// Commit counters.
    pub fn stats(&self) -> &AuditStats {
        &self.stats
    }

    /// Writes a final checkpoint and stops the writer; queued appends are refused.
    pub fn close(&self) {
        // Not ready from now on: nothing more is appended (`/readyz` answers so while the
        // last connections are served). A flag of its own: a batch queued before the close
        // still sets the writer's health as it lands.
        self.closed.store(true, Ordering::Relaxed);
        let (ack, wait) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(Msg::Close(ack)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(10));
        }
        if let Ok(mut t) = self.thread.lock() {
            if let Some(handle) = t.take() {
                let _ = handle.join();
            }
        }
    }
}

#[cfg(test)]
mod tests;
