//! The group-commit thread every audit writer runs on (the file log's, and each replica's
//! chain in the database): batches what is queued, checkpoints on time, probes a failed log
//! between batches, and refuses what is still queued when it closes.

use std::sync::mpsc;

use std::time::{Duration, Instant};
use tokio::sync::oneshot;

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
///
/// `marker` (`audit.unsigned_tail`, when the log was opened with records no checkpoint
/// signs) is written first, in a batch of its own; while it is not written (a full disk)
/// every batch is refused and no checkpoint is signed (not on time, not by a probe, not at
/// the close): a checkpoint would sign over the records it speaks of and the chain would
/// keep no trace of them having been unsigned. A start after a close finds the tail
/// unsigned again.
pub(super) fn run(
    mut sink: impl Sink,
    rx: mpsc::Receiver<Msg>,
    mut marker: Option<Box<AuditEvent>>,
) {
    let tick = sink
        .config()
        .checkpoint_interval
        .min(Duration::from_secs(1));
    let max_batch = sink.config().max_batch;
    // When the last probe a caller asked for ran: within PROBE_REUSE its answer stands, so
    // callers asking one after another (a worker's flood during an outage) cost a few probes
    // a second, not one each.
    let mut last_asked: Option<Instant> = None;
    write_marker(&mut sink, &mut marker);
    loop {
        let first = match rx.recv_timeout(tick) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if marker.is_some() {
                    // Writing it is the probe.
                    write_marker(&mut sink, &mut marker);
                    continue;
                }
                if !sink.healthy() {
                    sink.probe();
                }
                sink.maybe_checkpoint(false);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                write_marker(&mut sink, &mut marker);
                if marker.is_none() {
                    sink.maybe_checkpoint(true);
                }
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
                Msg::Probe(reply, slot) => probes.push((reply, slot)),
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
            // The marker first, in a batch of its own: no batch is written (nor any checkpoint
            // a batch may sign, at the unsigned-record limit or sealing a full segment) before
            // it is durable. While it is not, the batch is refused.
            write_marker(&mut sink, &mut marker);
            if marker.is_some() {
                let err = AuditError::Write(
                    "the audit log does not take records yet (its unsigned-tail record is not written)"
                        .into(),
                );
                for (_, done) in batch {
                    done.send(Err(err.clone()));
                }
            } else {
                sink.commit(batch);
                sink.maybe_checkpoint(false);
            }
        }
        if !probes.is_empty() {
            // One probe answers every caller that asked meanwhile.
            if !sink.healthy() && last_asked.is_none_or(|at| at.elapsed() >= PROBE_REUSE) {
                if marker.is_some() {
                    write_marker(&mut sink, &mut marker);
                } else {
                    sink.probe();
                }
                last_asked = Some(Instant::now());
            }
            let healthy = sink.healthy();
            for (reply, _slot) in probes {
                let _ = reply.send(healthy);
            }
        }
        if let Some(ack) = close {
            // Refuse anything still queued rather than leave it waiting forever.
            while let Ok(msg) = rx.try_recv() {
                if let Msg::Append(_, done) = msg {
                    done.send(Err(AuditError::Stopped));
                }
            }
            write_marker(&mut sink, &mut marker);
            if marker.is_none() {
                sink.maybe_checkpoint(true);
            }
            let _ = ack.send(());
            return;
        }
    }
}

/// Writes `marker` as a batch of its own, if it is still to be written; kept when the batch
/// fails.
fn write_marker(sink: &mut impl Sink, marker: &mut Option<Box<AuditEvent>>) {
    let Some(m) = marker.take() else {
        return;
    };
    let (done, mut heard) = oneshot::channel();
    sink.commit(vec![(
        m.clone(),
        Waiter {
            tx: done,
            _slot: None,
        },
    )]);
    if !matches!(heard.try_recv(), Ok(Ok(_))) {
        tracing::warn!(
            "audit.unsigned_tail could not be written yet; no checkpoint is signed before it is"
        );
        *marker = Some(m);
    }
}
