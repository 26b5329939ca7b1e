//! Recovery after a failed write: the failed batch is cut off, the files are re-opened
//! before the next batch (the disk may have been repaired or the file replaced), and while
//! the log is unhealthy and idle a probe tries whether it takes a durable write again.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::Ordering;

use super::super::checkpoints_path;
use super::super::record::AuditRecord;
use super::super::tail::{open_checkpoints, open_tail};
use super::{AuditError, Writer};

impl Writer {
    /// Restores the file to the last durable length so a later batch never chains onto
    /// records nobody was told about, and marks the files for re-opening before the next
    /// batch (the disk may have been repaired or the file replaced meanwhile).
    pub(super) fn roll_back(&mut self) {
        let truncated = self
            .file
            .set_len(self.tail.len)
            .and_then(|()| self.file.sync_all());
        if let Err(e) = truncated {
            tracing::error!(error = %e, "could not truncate the failed audit batch; will re-read the tail");
        }
        self.needs_reopen = true;
    }

    /// Whether the record that starts at the last durable length of `file` is the first one
    /// of the batch that failed (its hash, which covers its time and request id, and its
    /// place in this writer's chain): a log replaced meanwhile, even one that starts from
    /// the same genesis, is not mistaken for it.
    fn failed_batch_follows(&self, file: &mut File) -> bool {
        let mut line = Vec::new();
        let read = file.seek(SeekFrom::Start(self.tail.len)).and_then(|_| {
            let mut byte = [0u8; 1];
            while line.len() < 64 * 1024 {
                match file.read(&mut byte)? {
                    0 => break,
                    _ if byte[0] == b'\n' => break,
                    _ => line.push(byte[0]),
                }
            }
            Ok(())
        });
        if read.is_err() {
            return false;
        }
        serde_json::from_slice::<AuditRecord>(&line).is_ok_and(|r| {
            r.seq == self.tail.seq + 1
                && r.prev_hash == self.tail.hash
                && self.failed_first.as_deref() == Some(r.hash.as_str())
        })
    }

    /// While unhealthy and idle: tries whether the log takes a durable write again, so
    /// `/readyz` recovers without waiting for a request a load balancer would never send.
    /// The probe appends bytes without a newline, syncs, and cuts them off again; if the
    /// process dies in between, start-up cuts them as a torn tail (never a record).
    pub(super) fn probe(&mut self) {
        if self.needs_reopen {
            if let Err(e) = self.reopen() {
                tracing::debug!(error = %e, "audit log still unavailable");
                return;
            }
        }
        let wrote = self
            .file
            .write_all(&[b' '; 512])
            .and_then(|()| self.file.sync_data());
        let cut = self
            .file
            .set_len(self.tail.len)
            .and_then(|()| self.file.sync_data());
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

    /// Re-opens both files and re-reads their tails (after a failed batch).
    pub(super) fn reopen(&mut self) -> Result<(), AuditError> {
        let (mut file, mut tail) = open_tail(&self.log_path)?;
        if tail.seq > self.tail.seq && self.failed_batch_follows(&mut file) {
            // The failed batch's records survived its rollback: the record right after the
            // last durable one chains onto it. Nobody was told they are durable (their
            // requests failed closed): they must not become part of the chain. (A log that
            // was replaced meanwhile, e.g. restored from elsewhere, is read as it is.)
            let inconsistent = |reason: String| AuditError::Inconsistent {
                path: self.log_path.display().to_string(),
                reason,
            };
            file.set_len(self.tail.len)
                .and_then(|()| file.sync_all())
                .map_err(|e| {
                    inconsistent(format!(
                        "records after {} belong to a failed batch and cannot be removed: {e}",
                        self.tail.seq
                    ))
                })?;
            (file, tail) = open_tail(&self.log_path)?;
            if tail.seq != self.tail.seq || tail.hash != self.tail.hash {
                return Err(inconsistent(format!(
                    "after removing a failed batch the log ends at {}, not at the last durable record {}",
                    tail.seq, self.tail.seq
                )));
            }
        }
        let cp_path = checkpoints_path(&self.config.dir);
        let (checkpoints, last_checkpoint_seq) = open_checkpoints(&cp_path)?;
        if last_checkpoint_seq > tail.seq {
            return Err(AuditError::Inconsistent {
                path: self.log_path.display().to_string(),
                reason: format!(
                    "a checkpoint covers record {last_checkpoint_seq} but the log ends at {}",
                    tail.seq
                ),
            });
        }
        self.file = file;
        self.tail = tail;
        self.checkpoints = checkpoints;
        self.last_checkpoint_seq = last_checkpoint_seq;
        self.needs_reopen = false;
        self.failed_first = None;
        tracing::info!(
            seq = self.tail.seq,
            "audit log re-opened after a failed write"
        );
        Ok(())
    }
}
