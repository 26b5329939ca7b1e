//! Verification of the live file log: every segment, live and archived, in order.
//!
//! Besides each record's checks ([`Chain`]), the segments themselves: numbered without a
//! gap from 1 (after `audit.log`, an earlier release's log, when there is one); each starts
//! with a header that continues the chain (its number, the next sequence, the previous
//! record's hash); every one but the last is sealed, and its seal — a checkpoint signed over
//! its last record — verifies; nothing follows a seal.

use std::path::Path;

mod snapshot;
mod walk;

pub(crate) use snapshot::read_checkpoints;
use snapshot::{frontier_and_checkpoints, read_last_checkpoint};
use walk::Walk;

use super::{fail, Chain, VerifyFailure, VerifySummary};
use crate::audit::lines::LogLines;
use crate::audit::record::{AuditRecord, GENESIS_HASH};
use crate::audit::segments::{self, Line, SegmentFile};
use crate::keys::AuditVerifier;
use crate::progress::{Progress, Silent, Unit};

fn segments_of(audit_dir: &Path) -> Result<Vec<SegmentFile>, VerifyFailure> {
    segments::list(audit_dir).map_err(|e| fail(0, format!("cannot list audit segments: {e}")))
}

/// Verifies the live log in `audit_dir` (safe while the daemon appends to it).
///
/// `max_unanchored` is the longest tail the writer leaves without a signed checkpoint
/// ([`crate::audit::AuditConfig::max_unanchored`]); a longer one fails, since without a
/// checkpoint anyone able to write the file can recompute every hash.
///
/// # Errors
/// The first [`VerifyFailure`]; unreadable files fail at sequence 0.
pub fn verify_log(
    audit_dir: &Path,
    verifier: &AuditVerifier,
    max_unanchored: u64,
) -> Result<VerifySummary, VerifyFailure> {
    verify_log_with(audit_dir, verifier, max_unanchored, &Silent)
}

/// [`verify_log`], reporting the bytes of the log checked to `progress`. Reads the log a
/// line at a time: memory stays the same whatever its size.
///
/// # Errors
/// As [`verify_log`].
pub fn verify_log_with(
    audit_dir: &Path,
    verifier: &AuditVerifier,
    max_unanchored: u64,
    progress: &dyn Progress,
) -> Result<VerifySummary, VerifyFailure> {
    verify_log_pinned(audit_dir, verifier, max_unanchored, None, progress)
}

/// [`verify_log_with`], and every record `pins` vouches for (a copy kept off the host, see
/// [`super::Pins`]) must still be in the log, unchanged.
///
/// # Errors
/// As [`verify_log`]; a pinned record changed or gone fails at its sequence.
pub fn verify_log_pinned(
    audit_dir: &Path,
    verifier: &AuditVerifier,
    max_unanchored: u64,
    pins: Option<&std::collections::BTreeMap<u64, String>>,
    progress: &dyn Progress,
) -> Result<VerifySummary, VerifyFailure> {
    walk_log(
        audit_dir,
        verifier,
        max_unanchored,
        None,
        progress,
        None,
        pins,
    )
}

/// [`verify_log_with`] handing every record to `visit` once it passed its checks — in
/// order, and never one after a record that failed. With `upto` = (bytes, last sequence) of
/// an earlier verification, only those bytes are read and only checkpoints up to that
/// sequence count (the daemon may have signed later ones meanwhile): the same log is
/// verified again. With `pins`, as [`verify_log_pinned`].
///
/// # Errors
/// As [`verify_log`].
pub fn verify_log_visit(
    audit_dir: &Path,
    verifier: &AuditVerifier,
    max_unanchored: u64,
    upto: Option<(u64, u64)>,
    pins: Option<&std::collections::BTreeMap<u64, String>>,
    progress: &dyn Progress,
    visit: &mut dyn FnMut(&AuditRecord),
) -> Result<VerifySummary, VerifyFailure> {
    walk_log(
        audit_dir,
        verifier,
        max_unanchored,
        upto,
        progress,
        Some(visit),
        pins,
    )
}

/// [`verify_log_visit`], with no record built when nothing visits them.
fn walk_log(
    audit_dir: &Path,
    verifier: &AuditVerifier,
    max_unanchored: u64,
    upto: Option<(u64, u64)>,
    progress: &dyn Progress,
    visit: Option<&mut dyn FnMut(&AuditRecord)>,
    pins: Option<&std::collections::BTreeMap<u64, String>>,
) -> Result<VerifySummary, VerifyFailure> {
    // Where the log ends and the checkpoints, agreeing, then the log up to there: a
    // checkpoint written after we read the log would otherwise look like a truncated log,
    // and records appended after the checkpoints were read like an unsigned tail (a second
    // pass over what a first one read has its own bound).
    let (frontier, mut cps) = if upto.is_none() {
        frontier_and_checkpoints(audit_dir, read_checkpoints)?
    } else {
        (None, read_checkpoints(audit_dir)?)
    };
    if let Some((_, last_seq)) = upto {
        cps.retain(|cp| cp.seq <= last_seq);
    }
    let segs = segments_of(audit_dir)?;
    let mut chain = Chain::new(verifier, true);
    chain.max_unanchored = Some(max_unanchored);
    chain.checkpoints(&cps)?;
    if let Some(pins) = pins {
        chain.pin(pins);
    }
    let mut walk = Walk {
        chain,
        budget: upto.map(|(bytes, _)| bytes),
        frontier,
        skip_before: None,
        bytes: 0,
        progress,
    };
    let total = walk.total(&segs);
    progress.begin("verifying the audit log", total, Unit::Bytes);
    let result = walk.segments(&segs, visit);
    progress.end();
    result?;
    let bytes = walk.bytes;
    let mut summary = walk.chain.finish()?;
    summary.bytes = bytes;
    Ok(summary)
}

/// Verifies one sealed segment on its own, with the public key only (a segment archived
/// and handed over without the rest of the log): its records chain from its header, its
/// seal — a checkpoint signed over its last record — verifies, and nothing but zeros
/// follows the seal (as for every segment of the directory walk). What one file cannot prove: that it continues the segment before
/// (unless it starts the log), and that it is the whole segment — a seal is a checkpoint
/// like any other, so a segment cut at a checkpointed record and given that checkpoint as
/// its seal passes. The next segment's header, or the whole directory, proves both.
///
/// # Errors
/// The first [`VerifyFailure`]; a file that is not a sealed segment fails at sequence 0.
pub fn verify_segment(
    path: &Path,
    verifier: &AuditVerifier,
) -> Result<VerifySummary, VerifyFailure> {
    let unreadable = |e: std::io::Error| fail(0, format!("cannot read {}: {e}", path.display()));
    let file = segments::open_nonblocking(path).map_err(unreadable)?;
    let len = file.metadata().map_err(unreadable)?;
    if !len.is_file() {
        return Err(fail(
            0,
            format!(
                "{} is not a regular file (a segment is read twice: copy it to a file)",
                path.display()
            ),
        ));
    }
    let first = LogLines::of(file, len.len())
        .next_line()
        .map_err(unreadable)?
        .map(<[u8]>::to_vec);
    let header = match first.as_deref().map(segments::classify) {
        Some(Ok(Line::Header(header))) => header,
        Some(Err(bad)) => return Err(fail(0, bad.0)),
        _ => {
            return Err(fail(
                0,
                "not a segment: it does not start with a segment header (an earlier release's audit.log is verified with its audit directory)",
            ))
        }
    };
    let named = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(segments::parse_name);
    if named.is_some_and(|n| n != header.n) {
        return Err(fail(
            header.first_seq,
            format!(
                "{} has the header of segment {} (renamed or swapped)",
                path.display(),
                header.n
            ),
        ));
    }
    if header.first_seq == 1 && header.prev_hash != GENESIS_HASH {
        return Err(fail(
            1,
            "the segment starts the log but its header does not start from the genesis hash",
        ));
    }
    let seg = SegmentFile {
        n: header.n,
        path: path.to_path_buf(),
        archived: false,
        also: None,
    };
    // The chain starts where the header says; the header's own check then holds trivially,
    // and every record after it is checked against it.
    let mut chain = Chain::new(verifier, true);
    chain.prev_seq = Some(header.first_seq.saturating_sub(1));
    chain.prev_hash = header.prev_hash;
    let mut walk = Walk {
        chain,
        budget: None,
        frontier: None,
        skip_before: None,
        bytes: 0,
        progress: &Silent,
    };
    let this = walk.segment(&seg, None, None)?;
    if !this.sealed {
        return Err(fail(
            walk.chain.next_seq(),
            format!(
                "{} is not sealed: a live segment is verified with its audit directory",
                seg.name()
            ),
        ));
    }
    if walk.chain.summary.records == 0 {
        return Err(fail(
            walk.chain.next_seq(),
            format!(
                "{} holds no record: the writer never seals an empty segment",
                seg.name()
            ),
        ));
    }
    let bytes = walk.bytes;
    let mut summary = walk.chain.finish()?;
    summary.bytes = bytes;
    summary.checkpoints = 1;
    summary.last_checkpoint = summary.last_seq;
    Ok(summary)
}

/// The start-up check: the last signed checkpoint is genuine, the record it covers is in
/// the log with that hash, and the chain runs unbroken from it to the end, within the
/// unsigned tail the writer may leave. Reads only the segments from the one holding that
/// record on.
///
/// # Errors
/// The first [`VerifyFailure`].
pub fn verify_since_last_checkpoint(
    audit_dir: &Path,
    verifier: &AuditVerifier,
    max_unanchored: u64,
) -> Result<VerifySummary, VerifyFailure> {
    let (frontier, last) = frontier_and_checkpoints(audit_dir, read_last_checkpoint)?;
    let Some(last) = last.as_ref() else {
        // No checkpoint at all: only a log shorter than the unsigned tail is acceptable,
        // and it is short enough to read whole.
        return verify_log(audit_dir, verifier, max_unanchored);
    };
    let segs = segments_of(audit_dir)?;
    let from = holding(&segs, last.seq, verifier)?;
    let mut chain = Chain::new(verifier, true);
    chain.max_unanchored = Some(max_unanchored);
    chain.expected = Some(last.seq);
    chain.last_anchor = None;
    chain.checkpoints(std::slice::from_ref(last))?;
    let mut walk = Walk {
        chain,
        budget: None,
        frontier,
        skip_before: Some(last.seq),
        bytes: 0,
        progress: &Silent,
    };
    walk.segments(&segs[from..], None)?;
    if walk.chain.summary.first_seq != Some(last.seq) {
        return Err(fail(
            last.seq,
            "the record the last signed checkpoint covers is not in the log (records removed)",
        ));
    }
    walk.chain.finish()
}

/// The index of the last segment whose header says it starts at or before `seq`. A header
/// is not signed: the segment before it must be sealed exactly where it says it begins (the
/// seal is), or a forged header could make the start-up check begin past the record.
fn holding(
    segs: &[SegmentFile],
    seq: u64,
    verifier: &AuditVerifier,
) -> Result<usize, VerifyFailure> {
    let unreadable = |seg: &SegmentFile, e: std::io::Error| {
        fail(seq, format!("cannot read {}: {e}", seg.name()))
    };
    for (i, seg) in segs.iter().enumerate().rev() {
        if seg.n == 0 {
            return Ok(i);
        }
        let file = seg.open().map_err(|e| unreadable(seg, e))?;
        let len = file.metadata().map_or(0, |m| m.len());
        let mut lines = LogLines::of(file, len);
        let first = lines.next_line().map_err(|e| unreadable(seg, e))?;
        match first.map(segments::classify) {
            Some(Ok(Line::Header(h))) if h.first_seq <= seq => {
                let Some(before) = i.checked_sub(1).map(|b| &segs[b]).filter(|b| b.n > 0) else {
                    return Ok(i);
                };
                let seal = last_line(before)
                    .map_err(|e| unreadable(before, e))?
                    .and_then(|l| match segments::classify(&l) {
                        Ok(Line::Seal(cp)) => Some(cp),
                        _ => None,
                    });
                let genuine = seal.as_ref().is_some_and(|cp| {
                    cp.seq.checked_add(1) == Some(h.first_seq)
                        && cp.hash == h.prev_hash
                        && cp.verifies(verifier)
                });
                if !genuine {
                    return Err(fail(
                        seq,
                        format!(
                            "{} is not sealed where {} says it begins (header or seal altered)",
                            before.name(),
                            seg.name()
                        ),
                    ));
                }
                return Ok(i);
            }
            Some(Ok(Line::Header(_))) | None => {}
            Some(_) => {
                return Err(fail(
                    seq,
                    format!("{} does not start with its header", seg.name()),
                ))
            }
        }
    }
    Ok(0)
}

/// The last complete line of a sealed segment (its seal), read from its end. Zeros after
/// it are passed over: the writer cuts the space it filled ahead only after the seal is
/// durable, and a crash in between leaves them (the walk accepts zeros after a seal too).
/// Anything else there makes the last line something other than a seal.
fn last_line(seg: &SegmentFile) -> std::io::Result<Option<Vec<u8>>> {
    use std::os::unix::fs::FileExt;
    const WINDOW: u64 = 64 << 10;
    let file = seg.open()?;
    let mut buf = Vec::new();
    let len = file.metadata()?.len();
    let mut end = len;
    loop {
        // Not a seal with more zeros after it than the writer ever leaves there.
        if len - end > segments::MAX_AFTER_SEAL {
            return Ok(None);
        }
        let start = end.saturating_sub(WINDOW);
        buf.resize(usize::try_from(end - start).unwrap_or(0), 0);
        file.read_exact_at(&mut buf, start)?;
        if let Some(at) = buf.iter().rposition(|b| *b != 0) {
            end = start + at as u64 + 1;
            break;
        }
        if start == 0 {
            return Ok(None);
        }
        end = start;
    }
    let start = end.saturating_sub(WINDOW);
    buf.resize(usize::try_from(end - start).unwrap_or(0), 0);
    file.read_exact_at(&mut buf, start)?;
    let Some(body) = buf.strip_suffix(b"\n") else {
        return Ok(None);
    };
    let from = body.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    Ok(Some(body[from..].to_vec()))
}
