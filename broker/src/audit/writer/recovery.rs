//! Recovery after a failed write: the failed batch is cut off, the files are re-opened
//! before the next batch (the disk may have been repaired or the file replaced), and while
//! the log is unhealthy and idle a probe tries whether it takes a durable write again.

use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use super::super::checkpoints_path;
use super::super::lines::LogLines;
use super::super::record::AuditRecord;
use super::super::segments::{self, Line};
use super::super::tail::open_checkpoints;
use super::segment::{open_live, Live};
use super::{AuditError, Writer};

impl Writer {
    /// Zeroes what the failed batch may have left after the last durable byte, so a later
    /// batch never chains onto records nobody was told about, and marks the files for
    /// re-opening before the next batch (the disk may have been repaired or the file
    /// replaced meanwhile).
    pub(super) fn roll_back(&mut self) {
        let file = &self.live.file;
        let cut = segments::dirty_after(file, self.tail.len).and_then(|dirty| match dirty {
            Some(end) => segments::zero(file, self.tail.len, end).and_then(|()| file.sync_data()),
            None => Ok(()),
        });
        if let Err(e) = cut {
            tracing::error!(error = %e, "could not clear the failed audit batch; will re-read the tail");
        }
        self.needs_reopen = true;
    }

    /// Whether the record that starts at the last durable byte of `live` (after the
    /// segment's header, if the failed batch began one) is the first one of the batch that
    /// failed (its hash, which covers its time and request id, and its place in this
    /// writer's chain): a log replaced meanwhile, even one that starts from the same
    /// genesis, is not mistaken for it.
    fn failed_batch_follows(&self, live: &Live) -> bool {
        let at = if live.n == self.live.n {
            self.tail.len
        } else {
            0
        };
        let Ok(mut file) = live.file.try_clone() else {
            return false;
        };
        if file.seek(SeekFrom::Start(at)).is_err() {
            return false;
        }
        let mut lines = LogLines::of(file, 2 * LINE_WINDOW);
        let mut first = None;
        for _ in 0..2 {
            match lines.next_line() {
                Ok(Some(line)) => match segments::classify(line) {
                    Ok(Line::Header(_)) => continue,
                    Ok(Line::Record(r)) => {
                        first = serde_json::from_slice::<AuditRecord>(r).ok();
                        break;
                    }
                    _ => break,
                },
                _ => break,
            }
        }
        first.is_some_and(|r| {
            r.seq == self.tail.seq + 1
                && r.prev_hash == self.tail.hash
                && self.failed_first.as_deref() == Some(r.hash.as_str())
        })
    }

    /// While unhealthy and idle: tries whether the log takes a durable write again, so
    /// `/readyz` recovers without waiting for a request a load balancer would never send.
    /// The probe writes bytes without a newline, syncs, and zeroes them again; if the process
    /// dies in between, start-up clears them as a torn tail (never a record).
    pub(super) fn probe(&mut self) {
        if self.needs_reopen {
            if let Err(e) = self.reopen() {
                tracing::debug!(error = %e, "audit log still unavailable");
                return;
            }
        }
        let at = self.tail.len;
        let wrote = self
            .fill_to(at + 512)
            .and_then(|()| self.live.file.write_all_at(&[b' '; 512], at))
            .and_then(|()| self.live.file.sync_data());
        let cut =
            segments::zero(&self.live.file, at, at + 512).and_then(|()| self.live.file.sync_data());
        match (wrote, cut) {
            (Ok(()), Ok(())) => {
                // Checkpoints too: a log whose due checkpoint cannot be signed stays unhealthy.
                let unsigned = self.tail.seq.saturating_sub(self.last_checkpoint_seq);
                if unsigned >= self.config.checkpoint_every_records {
                    self.maybe_checkpoint(true);
                    if self.tail.seq > self.last_checkpoint_seq || self.needs_reopen {
                        tracing::debug!("audit checkpoints still not writable");
                        return;
                    }
                }
                self.healthy.store(true, Ordering::Relaxed);
                tracing::info!(seq = self.tail.seq, "audit log writable again");
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "audit log still not writable");
                self.needs_reopen = true;
            }
        }
    }

    /// Re-opens the live segment and the checkpoint file and re-reads their tails (after a
    /// failed batch).
    pub(super) fn reopen(&mut self) -> Result<(), AuditError> {
        let (mut live, mut tail, torn) = open_live(&self.config)?;
        if let Some(torn) = torn {
            if let Some(planted) = torn.after_seal() {
                return Err(planted);
            }
            torn.clear()?;
        }
        if tail.seq > self.tail.seq && self.failed_batch_follows(&live) {
            // The failed batch's records survived its rollback: the record right after the
            // last durable one chains onto it. Nobody was told they are durable (their
            // requests failed closed): they must not become part of the chain. (A log that
            // was replaced meanwhile, e.g. restored from elsewhere, is read as it is.)
            let path = live.path.display().to_string();
            let inconsistent = |reason: String| AuditError::Inconsistent {
                path: path.clone(),
                reason,
            };
            let from = if live.n == self.live.n {
                self.tail.len
            } else {
                0
            };
            segments::dirty_after(&live.file, from)
                .and_then(|dirty| match dirty {
                    Some(end) => segments::zero(&live.file, from, end),
                    None => Ok(()),
                })
                .and_then(|()| live.file.sync_data())
                .map_err(|e| {
                    inconsistent(format!(
                        "records after {} belong to a failed batch and cannot be removed: {e}",
                        self.tail.seq
                    ))
                })?;
            let torn;
            (live, tail, torn) = open_live(&self.config)?;
            if let Some(torn) = torn {
                torn.clear()?;
            }
            if tail.seq != self.tail.seq || tail.hash != self.tail.hash {
                return Err(inconsistent(format!(
                    "after removing a failed batch the log ends at {}, not at the last durable record {}",
                    tail.seq, self.tail.seq
                )));
            }
        }
        let cp_path = checkpoints_path(&self.config.dir);
        let (checkpoints, last_checkpoint) = open_checkpoints(&cp_path)?;
        let last_checkpoint_seq = last_checkpoint.as_ref().map_or(0, |c| c.seq);
        if last_checkpoint_seq > tail.seq {
            return Err(AuditError::Inconsistent {
                path: live.path.display().to_string(),
                reason: format!(
                    "a checkpoint covers record {last_checkpoint_seq} but the log ends at {}",
                    tail.seq
                ),
            });
        }
        self.live = live;
        self.tail = tail;
        self.checkpoints = checkpoints;
        self.last_checkpoint_seq = last_checkpoint_seq;
        self.last_checkpoint = last_checkpoint;
        self.needs_reopen = false;
        self.failed_first = None;
        tracing::info!(
            seq = self.tail.seq,
            "audit log re-opened after a failed write"
        );
        Ok(())
    }
}

/// How much of a line is read when looking for the failed batch (records are far shorter).
const LINE_WINDOW: u64 = 64 * 1024;
