//! The writer's live segment: finding it and its tail at start-up (cutting what a crash left
//! half-written), zero-filling ahead of the writes, sealing and rotating, and moving sealed
//! segments to the archive.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::super::record::{AuditRecord, GENESIS_HASH};
use super::super::segments::{self, SegmentFile, SegmentHeader};
use super::super::tail::{open_tail, Tail};
use super::{AuditConfig, AuditError, Writer};
use crate::model::now_rfc3339;

/// How far ahead of the writer a segment is zero-filled at a time: one metadata sync per
/// step, data-only syncs for every group commit in between.
pub(super) const FILL_STEP: u64 = 1 << 20;
/// Room kept at a segment's end for its seal line.
const SEAL_ROOM: u64 = 1024;

/// The segment being written.
pub(super) struct Live {
    pub(super) n: u64,
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Whether its header is on disk (it is written with the segment's first batch).
    pub(super) started: bool,
    /// Records in it.
    pub(super) records: u64,
    /// Its length: written and zero-filled bytes.
    pub(super) filled: u64,
}

/// The most one batch writes: every record line of it (at most `max_batch`), and a segment
/// header.
pub(super) fn one_batch_bytes(config: &AuditConfig) -> u64 {
    (config.max_batch as u64 + 1) * super::super::lines::MAX_LINE.min(64 << 10)
}

impl Live {
    /// Writes back in place what the page cache shows of the live segment within one batch
    /// either side of its durable end `end`, then syncs it; fails if the disk does not take
    /// it.
    ///
    /// What the writer finds at open (or at a re-open after a failed write) is what the page
    /// cache holds, not what the disk does. A batch written by a process killed before its
    /// sync returned (never acknowledged), whose write-back then failed, stays in the cache
    /// marked clean: the error is reported once, to whichever sync comes first, and the
    /// pages are never written again. Read as the tail and chained onto, it would be lost
    /// at a power cut together with every record acknowledged after it (the scan stops at
    /// the zeros where it should be). Likewise zeros a failed rollback left only in the
    /// cache. Written again, those pages are dirty, and this sync either puts them on disk
    /// or reports the error.
    pub(super) fn write_back(&self, end: u64, most: u64) -> std::io::Result<()> {
        write_back_around(&self.file, end, most, self.filled)
    }
}

/// [`Live::write_back`] of `file`, `len` bytes long.
fn write_back_around(file: &File, end: u64, most: u64, len: u64) -> std::io::Result<()> {
    let from = end.saturating_sub(most) & !4095;
    let to = end.saturating_add(most).min(len);
    if segments::write_back(file, from, to)? {
        file.sync_data()?;
    }
    Ok(())
}

fn open_err(path: &Path, e: impl std::fmt::Display) -> AuditError {
    AuditError::Open {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn inconsistent(path: &Path, reason: String) -> AuditError {
    AuditError::Inconsistent {
        path: path.display().to_string(),
        reason,
    }
}

/// The tail a segment's scan shows: its last record, else its header's starting point.
fn tail_of(scan: &segments::Scan, path: &Path) -> Result<Option<Tail>, AuditError> {
    if let Some(line) = &scan.last_record {
        let rec: AuditRecord = serde_json::from_str(line)
            .map_err(|_| inconsistent(path, "last record does not parse".into()))?;
        if rec.compute_hash() != rec.hash {
            return Err(inconsistent(
                path,
                format!("record {} fails its hash", rec.seq),
            ));
        }
        return Ok(Some(Tail {
            seq: rec.seq,
            hash: rec.hash,
            len: scan.end,
        }));
    }
    Ok(scan.header.as_ref().map(|h| Tail {
        seq: h.first_seq.saturating_sub(1),
        hash: h.prev_hash.clone(),
        len: scan.end,
    }))
}

/// Reads a segment that is no longer written (the one before the live one).
fn finished_tail(seg: &SegmentFile) -> Result<(Tail, bool), AuditError> {
    let file = seg.open().map_err(|e| open_err(&seg.path, e))?;
    let scan = segments::scan(&file).map_err(|e| inconsistent(&seg.path, e.to_string()))?;
    let tail = tail_of(&scan, &seg.path)?.unwrap_or(Tail {
        seq: 0,
        hash: GENESIS_HASH.to_owned(),
        len: scan.end,
    });
    Ok((tail, scan.seal.is_some()))
}

/// Creates (or takes over an empty) segment file `n`.
fn create(dir: &Path, n: u64) -> Result<Live, AuditError> {
    let path = dir.join(segments::segment_name(n));
    let (file, _) = segments::open_or_create(&path, false).map_err(|e| open_err(&path, e))?;
    segments::own_file(&file, &path).map_err(|e| open_err(&path, e))?;
    segments::sync_dir(dir).map_err(|e| open_err(dir, e))?;
    let filled = file.metadata().map_err(|e| open_err(&path, e))?.len();
    Ok(Live {
        n,
        path,
        file,
        started: false,
        records: 0,
        filled,
    })
}

/// Bytes past the last complete line of the live segment that an interrupted write left
/// (never acknowledged): cleared by [`Torn::clear`] before anything is written, and — at
/// start-up — only once the log verified, so evidence is never erased before it is read.
/// Bytes after a complete seal are no interrupted write's (nothing is written to a sealed
/// segment): [`Torn::after_seal`] says so, and they are never cleared.
pub(super) struct Torn {
    file: File,
    path: PathBuf,
    from: u64,
    to: u64,
    after_seal: bool,
}

impl Torn {
    /// When these bytes follow a complete seal: why that is no crash's doing. They are kept
    /// as found: the start-up verification refuses them, and a re-open at run time fails.
    pub(super) fn after_seal(&self) -> Option<AuditError> {
        self.after_seal.then(|| {
            inconsistent(
                &self.path,
                format!(
                    "{} byte(s) after its seal at offset {}: no interrupted write leaves any; nothing was cleared (`credbroker audit verify` reports them)",
                    self.to - self.from,
                    self.from
                ),
            )
        })
    }

    /// Writes zeros over the torn bytes and syncs.
    pub(super) fn clear(self) -> Result<(), AuditError> {
        tracing::warn!(
            path = %self.path.display(),
            torn_bytes = self.to - self.from,
            "clearing a torn audit tail left by an interrupted write (never acknowledged)"
        );
        segments::zero(&self.file, self.from, self.to)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| open_err(&self.path, e))
    }
}

/// Finds the live segment and the log's durable tail, and the bytes a crash left after the
/// last complete line. An earlier release's `audit.log` is read as segment 0 and the log
/// continues in segment 1.
///
/// Torn bytes span at most one batch; more than that after the first NUL byte is not a
/// crash but damage or tampering (a NUL written into the log hides every record after it),
/// and the log is refused rather than cut.
pub(super) fn open_live(config: &AuditConfig) -> Result<(Live, Tail, Option<Torn>), AuditError> {
    let dir = &config.dir;
    let segs = segments::list(dir).map_err(|e| open_err(dir, e))?;
    let last = segs.iter().rev().find(|s| s.n > 0);
    let Some(last) = last else {
        let legacy = super::super::legacy_log_path(dir);
        let tail = if legacy.exists() {
            open_tail(&legacy)?.1
        } else {
            Tail {
                seq: 0,
                hash: GENESIS_HASH.to_owned(),
                len: 0,
            }
        };
        return Ok((create(dir, 1)?, Tail { len: 0, ..tail }, None));
    };
    if last.archived {
        // The writer never archives the segment it writes, nor its successor's absence.
        return Err(inconsistent(
            &last.path,
            "the newest segment is in the archive: the live one is missing".into(),
        ));
    }
    let file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        // Never made this process's controlling terminal (a terminal planted there is
        // refused by `own_file` before anything is written).
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&last.path)
            .map_err(|e| open_err(&last.path, e))?
    };
    let scan = segments::scan(&file).map_err(|e| inconsistent(&last.path, e.to_string()))?;
    let torn = match segments::dirty_after(&file, scan.end).map_err(|e| open_err(&last.path, e))? {
        None => None,
        Some(to) => {
            // One batch at most.
            let most = one_batch_bytes(config);
            if to - scan.end > most {
                return Err(inconsistent(
                    &last.path,
                    format!(
                        "{} bytes follow the first NUL byte at offset {}: more than one interrupted batch writes, so records may be hidden behind it (damage or tampering); nothing was changed",
                        to - scan.end,
                        scan.end
                    ),
                ));
            }
            let file = file.try_clone().map_err(|e| open_err(&last.path, e))?;
            Some(Torn {
                file,
                path: last.path.clone(),
                from: scan.end,
                to,
                after_seal: false,
            })
        }
    };
    if scan.header.is_none() && scan.records > 0 {
        return Err(inconsistent(
            &last.path,
            "records without the segment's header before them (it was removed)".into(),
        ));
    }
    if scan.header.is_none() || scan.seal.is_none() {
        // The live segment is written from here on (a sealed one is only read).
        segments::own_file(&file, &last.path).map_err(|e| open_err(&last.path, e))?;
    }
    if scan.header.is_none() {
        // Created, nothing written yet: the chain stands where the segment before it ends.
        // Its creator may have died (or failed) before syncing the directory that names it:
        // synced now, before any record written in it is acknowledged.
        segments::sync_dir(dir).map_err(|e| open_err(dir, e))?;
        let tail = match segs.iter().rev().find(|s| s.n + 1 == last.n) {
            None if last.n == 1 => Tail {
                seq: 0,
                hash: GENESIS_HASH.to_owned(),
                len: 0,
            },
            None => {
                return Err(inconsistent(
                    &last.path,
                    format!("segment {} before it is missing", last.n - 1),
                ))
            }
            Some(prev) => {
                let (tail, sealed) = finished_tail(prev)?;
                if !sealed && prev.n > 0 {
                    return Err(inconsistent(
                        &prev.path,
                        "a later segment exists but this one is not sealed".into(),
                    ));
                }
                tail
            }
        };
        let live = Live {
            n: last.n,
            path: last.path.clone(),
            file,
            started: false,
            records: 0,
            filled: scan.file_len,
        };
        return Ok((live, Tail { len: 0, ..tail }, torn));
    }
    let tail = tail_of(&scan, &last.path)?
        .ok_or_else(|| inconsistent(&last.path, "segment header without a tail".into()))?;
    if scan.seal.is_some() {
        // The seal found is the page cache's: a writer killed between writing it and its
        // sync, whose write-back then failed, left it there only (see `Live::write_back`).
        // Made the disk's before the next segment is created after it, or a power cut would
        // leave the next segment following an unsealed one (the log refused).
        segments::own_file(&file, &last.path).map_err(|e| open_err(&last.path, e))?;
        write_back_around(&file, scan.end, one_batch_bytes(config), scan.file_len)
            .map_err(|e| open_err(&last.path, e))?;
        // Bytes after a complete seal were put there: never cleared; the verification that
        // comes before any clearing refuses them.
        let torn = torn.map(|t| Torn {
            after_seal: true,
            ..t
        });
        let next = create(dir, last.n + 1)?;
        return Ok((next, Tail { len: 0, ..tail }, torn));
    }
    let live = Live {
        n: last.n,
        path: last.path.clone(),
        file,
        started: true,
        records: scan.records,
        filled: scan.file_len,
    };
    Ok((live, tail, torn))
}

impl Writer {
    /// Zero-fills the live segment up to at least `needed` bytes, a step at a time.
    pub(super) fn fill_to(&mut self, needed: u64) -> std::io::Result<()> {
        let live = &mut self.live;
        if needed <= live.filled {
            return Ok(());
        }
        let target = needed.max(live.filled + FILL_STEP);
        segments::zero(&live.file, live.filled, target)?;
        live.file.sync_all()?;
        live.filled = target;
        Ok(())
    }

    /// Whether `bytes` more (and `records` more records) go to a new segment.
    pub(super) fn must_rotate(&self, bytes: u64, records: u64) -> bool {
        let c = &self.config;
        self.live.started
            && (self.tail.len + bytes + SEAL_ROOM > c.segment_bytes
                || (c.segment_records > 0 && self.live.records + records > c.segment_records))
    }

    /// The header that starts the live segment after the current tail.
    pub(super) fn header(&self) -> Vec<u8> {
        segments::header_line(&SegmentHeader {
            n: self.live.n,
            first_seq: self.tail.seq + 1,
            prev_hash: self.tail.hash.clone(),
            created: now_rfc3339(),
        })
    }

    /// Seals the live segment — a checkpoint over its last record, in `checkpoints.log` and
    /// as its last line — cuts the space filled beyond it, and starts the next one.
    pub(super) fn rotate(&mut self) -> std::io::Result<()> {
        self.maybe_checkpoint(true);
        let cp = self
            .last_checkpoint
            .clone()
            .filter(|cp| cp.seq == self.tail.seq && cp.hash == self.tail.hash)
            .ok_or_else(|| std::io::Error::other("the seal's checkpoint could not be signed"))?;
        let line = segments::seal_line(&cp);
        let end = self.tail.len + line.len() as u64;
        self.fill_to(end)?;
        self.live.file.write_all_at(&line, self.tail.len)?;
        self.live.file.sync_data()?;
        // From here the seal is durable: a failure below must not roll it back (the next
        // start, or the re-open after the failed batch, starts the next segment).
        self.tail.len = end;
        self.live.file.set_len(end)?;
        self.live.file.sync_all()?;
        tracing::info!(
            segment = self.live.n,
            last_seq = self.tail.seq,
            "audit segment sealed"
        );
        let next = create(&self.config.dir, self.live.n + 1)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.live = next;
        self.tail.len = 0;
        self.archive_old();
        Ok(())
    }

    /// Moves sealed segments beyond the newest `live_segments` to the archive directory.
    pub(super) fn archive_old(&self) {
        let dir = &self.config.dir;
        let Ok(segs) = segments::list(dir) else {
            return;
        };
        let sealed: Vec<&SegmentFile> = segs
            .iter()
            .filter(|s| !s.archived && s.n < self.live.n)
            .collect();
        let keep = self.config.live_segments;
        for seg in sealed.iter().take(sealed.len().saturating_sub(keep)) {
            match segments::archive(dir, seg) {
                Ok(()) => {
                    tracing::info!(segment = seg.n, "sealed audit segment moved to the archive")
                }
                Err(e) => {
                    tracing::warn!(segment = seg.n, error = %e, "could not move a sealed audit segment to the archive; will retry at the next rotation");
                    return;
                }
            }
        }
    }
}
