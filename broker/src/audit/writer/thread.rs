//! The group-commit thread every audit writer runs on (the file log's, and each replica's
//! chain in the database): batches what is queued, checkpoints on time, probes a failed log
//! between batches, and refuses what is still queued when it closes.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{AuditConfig, AuditError, AuditEvent, Msg, Waiter};

/// How long the answer of a probe a caller asked for stands for the next callers.
const PROBE_REUSE: Duration = Duration::from_millis(250);

/// Where a group-committing writer puts records: the file log, or a replica's chain in the
/// shared database. One thread owns it; [`run`] feeds it batches.
pub(in crate::audit) trait Sink: Send + 'static {
    /// Makes `events` durable as one batch and answers every waiter.
    fn commit(&mut self, events: Vec<(Box<AuditEvent>, Waiter)>);
    /// Signs a checkpoint when one is due (or at once: `force`).
    fn maybe_checkpoint(&mut self, force: bool);
    /// Between batches, while the last one failed: checks whether the log is writable again.
    fn probe(&mut self);
    /// Whether the last batch was made durable.
    fn healthy(&self) -> bool;
    /// The writer's settings.
    fn config(&self) -> &AuditConfig;
}

/// The writer thread: takes everything queued (up to `max_batch`) as one batch, checkpoints
/// on time, probes a failed log between batches; on close, refuses what is still queued and
/// signs a last checkpoint.
pub(super) fn run(mut sink: impl Sink, rx: mpsc::Receiver<Msg>) {
    let tick = sink
        .config()
        .checkpoint_interval
        .min(Duration::from_secs(1));
    let max_batch = sink.config().max_batch;
    // When the last probe a caller asked for ran: within PROBE_REUSE its answer stands, so
    // callers asking one after another (a worker's flood during an outage) cost a few probes
    // a second, not one each.
    let mut last_asked: Option<Instant> = None;
    loop {
        let first = match rx.recv_timeout(tick) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !sink.healthy() {
                    sink.probe();
                }
                sink.maybe_checkpoint(false);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                sink.maybe_checkpoint(true);
                return;
            }
        };
        let mut batch = Vec::new();
        let mut probes = Vec::new();
        let mut close = None;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Append(ev, done) => batch.push((ev, done)),
                Msg::Probe(reply) => probes.push(reply),
                Msg::Close(ack) => {
                    close = Some(ack);
                    break;
                }
            }
            if batch.len() >= max_batch {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !batch.is_empty() {
            sink.commit(batch);
            sink.maybe_checkpoint(false);
        }
        if !probes.is_empty() {
            // One probe answers every caller that asked meanwhile.
            if !sink.healthy() && last_asked.is_none_or(|at| at.elapsed() >= PROBE_REUSE) {
                sink.probe();
                last_asked = Some(Instant::now());
            }
            let healthy = sink.healthy();
            for reply in probes {
                let _ = reply.send(healthy);
            }
        }
        if let Some(ack) = close {
            // Refuse anything still queued rather than leave it waiting forever.
            while let Ok(msg) = rx.try_recv() {
                if let Msg::Append(_, done) = msg {
                    let _ = done.send(Err(AuditError::Stopped));
                }
            }
            sink.maybe_checkpoint(true);
            let _ = ack.send(());
            return;
        }
    }
}
