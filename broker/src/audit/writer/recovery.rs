//! Recovery after a failed write: the failed batch is cut off, the files are re-opened
//! before the next batch (the disk may have been repaired or the file replaced), and while
//! the log is unhealthy and idle a probe tries whether it takes a durable write again.

use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use super::super::checkpoints_path;
use super::super::lines::LogLines;
use super::super::record::{AuditRecord, Checkpoint};
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
    ///
    /// The room a batch needs is made first (a step of zero-filled space past the tail, as a
    /// batch would): a probe that fitted in space already allocated would pass on a full disk
    /// where the next batch fails.
    pub(super) fn probe(&mut self) {
        if self.needs_reopen {
            if let Err(e) = self.reopen() {
                tracing::debug!(error = %e, "audit log still unavailable");
                return;
            }
        }
        let at = self.tail.len;
        let wrote = self
            .fill_to(at + super::segment::FILL_STEP)
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
    ///
    /// What is found must be what this writer left: the chain ending at its last durable
    /// record (once the failed batch's records, if its rollback did not happen, are removed)
    /// and the checkpoint file ending at its last checkpoint. A log cut back, rewritten or
    /// swapped while the writer was failed (anyone who can fill the disk can make it fail)
    /// is never adopted and chained onto: the writer stays failed closed, nothing found is
    /// cleared, and a restart runs the start-up verification over it. Bytes after the
    /// durable end (the failed batch's remains) are cleared only once that holds.
    pub(super) fn reopen(&mut self) -> Result<(), AuditError> {
        if let Some(why) = &self.changed_underneath {
            return Err(AuditError::Inconsistent {
                path: self.config.dir.display().to_string(),
                reason: why.clone(),
            });
        }
        let result = self.reopen_checked();
        if let (Err(e), Some(_)) = (&result, &self.changed_underneath) {
            self.healthy
                .store(false, std::sync::atomic::Ordering::Relaxed);
            self.anchor_own_tail();
            tracing::error!(error = %e, seq = self.tail.seq, hash = %self.tail.hash, "the audit log changed underneath its writer: it is not written again until a restart verifies it (a checkpoint over the writer's last durable record was appended)");
        }
        result
    }

    /// Appends a checkpoint over this writer's last durable record to the checkpoint file as
    /// it is now: the log found in its place (cut back, rewritten) then fails the start-up
    /// verification and `audit verify`, naming it, instead of passing as a log whose tail
    /// nobody signed. Best effort (the disk may be the reason the writer failed).
    fn anchor_own_tail(&mut self) {
        if self.tail.seq == 0 {
            return;
        }
        let cp = Checkpoint::signed(self.tail.seq, &self.tail.hash, &self.signer);
        let mut line = serde_json::to_vec(&cp).unwrap_or_default();
        line.push(b'\n');
        let wrote = {
            use std::io::{Read as _, Write as _};
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
                .open(checkpoints_path(&self.config.dir))
                .and_then(|mut f| {
                    crate::audit::segments::own_file(&f, &checkpoints_path(&self.config.dir))?;
                    // Never glued onto half a line (it would make the file unreadable).
                    let len = f.metadata()?.len();
                    if len > 0 {
                        let mut last = [0u8; 1];
                        f.seek(SeekFrom::Start(len - 1))?;
                        f.read_exact(&mut last)?;
                        if last[0] != b'\n' {
                            return Err(std::io::Error::other(
                                "the checkpoint file ends in half a line",
                            ));
                        }
                    }
                    f.write_all(&line).and_then(|()| f.sync_data())
                })
        };
        if let Err(e) = wrote {
            tracing::error!(error = %e, "could not append the writer's own checkpoint to the changed audit log");
        }
    }

    fn reopen_checked(&mut self) -> Result<(), AuditError> {
        let (mut live, mut tail, mut torn) = open_live(&self.config)?;
        if let Some(planted) = torn.as_ref().and_then(super::segment::Torn::after_seal) {
            return Err(planted);
        }
        let path = live.path.display().to_string();
        let inconsistent = |reason: String| AuditError::Inconsistent {
            path: path.clone(),
            reason,
        };
        if tail.seq > self.tail.seq && self.failed_batch_follows(&live) {
            // The failed batch's records survived its rollback: the record right after the
            // last durable one chains onto it. Nobody was told they are durable (their
            // requests failed closed): they must not become part of the chain.
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
            (live, tail, torn) = open_live(&self.config)?;
        }
        let cp_path = checkpoints_path(&self.config.dir);
        if tail.seq != self.tail.seq || tail.hash != self.tail.hash {
            let why = format!(
                "the log changed while its writer was failed: it now ends at record {}, not at the last durable record {} this writer wrote; nothing was adopted or cleared",
                tail.seq, self.tail.seq
            );
            self.changed_underneath = Some(why.clone());
            return Err(inconsistent(why));
        }
        let (checkpoints, last_checkpoint) = open_checkpoints(&cp_path)?;
        if !self.is_own_last_checkpoint(last_checkpoint.as_ref()) {
            let why = format!(
                "the checkpoint file changed while the audit writer was failed: its last checkpoint covers record {}, this writer's covers {}; nothing was adopted",
                last_checkpoint.as_ref().map_or(0, |c| c.seq),
                self.last_checkpoint_seq
            );
            self.changed_underneath = Some(why.clone());
            return Err(AuditError::Inconsistent {
                path: cp_path.display().to_string(),
                reason: why,
            });
        }
        if let Some(torn) = torn {
            torn.clear()?;
        }
        // What the failed batch or its rollback left only in the page cache (see
        // `Live::write_back`) is put on disk, or the writer stays failed.
        live.write_back(tail.len, super::segment::one_batch_bytes(&self.config))
            .map_err(|e| AuditError::Open {
                path: path.clone(),
                reason: format!("the log's last records could not be written to disk again: {e}"),
            })?;
        self.live = live;
        self.tail = tail;
        self.checkpoints = checkpoints;
        self.last_checkpoint_seq = last_checkpoint.as_ref().map_or(0, |c| c.seq);
        self.last_checkpoint = last_checkpoint;
        self.needs_reopen = false;
        self.failed_first = None;
        tracing::info!(
            seq = self.tail.seq,
            "audit log re-opened after a failed write"
        );
        Ok(())
    }

    /// Whether `found` (the checkpoint file's last, re-read) is this writer's: the last one
    /// it wrote, or one over its durable tail signed with its key (a checkpoint whose write
    /// reported a failure but reached the disk, and whose cut failed too).
    fn is_own_last_checkpoint(&self, found: Option<&Checkpoint>) -> bool {
        match (found, self.last_checkpoint.as_ref()) {
            (None, None) => true,
            (Some(f), Some(mine)) if f == mine => true,
            (Some(f), _) => {
                f.seq == self.tail.seq
                    && f.hash == self.tail.hash
                    && f.seq >= self.last_checkpoint_seq
                    && f.verifies(&self.signer.verifier())
            }
            (None, Some(_)) => false,
        }
    }
}

/// How much of a line is read when looking for the failed batch (records are far shorter).
const LINE_WINDOW: u64 = 64 * 1024;
