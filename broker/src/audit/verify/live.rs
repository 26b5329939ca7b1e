//! Verification of the live file log: every segment, live and archived, in order.
//!
//! Besides each record's checks ([`Chain`]), the segments themselves: numbered without a
//! gap from 1 (after `audit.log`, an earlier release's log, when there is one); each starts
//! with a header that continues the chain (its number, the next sequence, the previous
//! record's hash); every one but the last is sealed, and its seal — a checkpoint signed over
//! its last record — verifies; nothing follows a seal.

use std::path::Path;

use super::{fail, Chain, VerifyFailure, VerifySummary};
use crate::audit::checkpoints_path;
use crate::audit::lines::LogLines;
use crate::audit::record::{AuditRecord, Checkpoint, GENESIS_HASH};
use crate::audit::segments::{self, Line, SegmentFile};
use crate::keys::AuditVerifier;
use crate::progress::{Progress, Silent, Unit};

fn read_checkpoints(audit_dir: &Path) -> Result<Vec<Checkpoint>, VerifyFailure> {
    let mut out = Vec::new();
    each_checkpoint(audit_dir, &mut |cp| out.push(cp))?;
    Ok(out)
}

/// The last checkpoint of the file, every line of it parsed but none held: the start-up
/// check needs only the last, and a file of years of checkpoints is not held in memory.
fn read_last_checkpoint(audit_dir: &Path) -> Result<Option<Checkpoint>, VerifyFailure> {
    let mut last = None;
    each_checkpoint(audit_dir, &mut |cp| last = Some(cp))?;
    Ok(last)
}

/// Hands every checkpoint of the file to `each`, in order ([`checkpoint_lines`]).
fn each_checkpoint(
    audit_dir: &Path,
    each: &mut dyn FnMut(Checkpoint),
) -> Result<(), VerifyFailure> {
    let unreadable = |e: std::io::Error| fail(0, format!("cannot read checkpoints: {e}"));
    let mut lines = match checkpoint_lines(&checkpoints_path(audit_dir)) {
        Ok(lines) => lines,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(unreadable(e)),
    };
    while let Some(line) = lines.next_line().map_err(unreadable)? {
        each(
            serde_json::from_slice::<Checkpoint>(line)
                .map_err(|_| fail(0, "a checkpoint line does not parse"))?,
        );
    }
    Ok(())
}

/// The checkpoint file's complete lines, read one at a time up to the length it has now:
/// appends made while it is read are left for the next verification. Opened without
/// waiting, and a device or FIFO standing in for it (a test's `/dev/full`) reads as empty,
/// rather than without end or blocking for good. Like a segment's, its written part ends at
/// a NUL byte: a file made a sparse terabyte reads as the lines before the zeros, at once.
///
/// # Errors
/// When it cannot be opened, or a line is longer than any checkpoint.
pub(crate) fn checkpoint_lines(path: &Path) -> std::io::Result<LogLines> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    let len = if meta.is_file() { meta.len() } else { 0 };
    Ok(LogLines::of(file, len))
}

/// Where the log's written part ends now (see [`frontier_and_checkpoints`]): the live
/// segment's number and the offset of the first NUL byte (the space the writer filled
/// ahead) or its length. A walk reads no further: what the daemon appends while the walk
/// runs is covered by checkpoints written after they were read, and is left for the next
/// verification — read, it would look like an unsigned tail longer than the writer leaves.
/// `None` (no segment yet, or the live one unreadable): the walk reads to the end, and the
/// walk itself reports what is wrong.
///
/// The offset is found by bisection, a byte at a time: in a written segment only the space
/// filled ahead holds NUL bytes. Whatever the bytes, the offset found holds a NUL byte, so
/// it is never before the first one, where a walk stops anyway.
fn frontier(audit_dir: &Path) -> Frontier {
    use std::os::unix::fs::FileExt;
    let segs = segments::list(audit_dir).ok()?;
    let live = segs.last().filter(|s| s.n > 0 && !s.archived)?;
    let file = live.open().ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let is_nul = |at: u64| {
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, at).map(|()| b[0] == 0)
    };
    let len = meta.len();
    if len == 0 || !is_nul(len - 1).ok()? {
        return Some((live.n, len));
    }
    let (mut lo, mut hi) = (0, len - 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if is_nul(mid).ok()? {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some((live.n, hi))
}

/// The live segment's number and the length of its written part (see [`frontier`]).
type Frontier = Option<(u64, u64)>;

/// The log's [`frontier`] and the checkpoints, read so that they agree: no checkpoint covers
/// a record past the frontier, and every record before it existed when the checkpoints
/// were read. The frontier is taken before and after the checkpoints are read; when the
/// two are the same, nothing was appended in between. A log appended to every time (a busy
/// daemon) gets the frontier taken right after a last read, so at most what the writer
/// appends in that moment is past the checkpoints read.
///
/// # Errors
/// When the checkpoints cannot be read.
fn frontier_and_checkpoints<T>(
    audit_dir: &Path,
    read: fn(&Path) -> Result<T, VerifyFailure>,
) -> Result<(Frontier, T), VerifyFailure> {
    let mut before = frontier(audit_dir);
    for _ in 0..5 {
        let cps = read(audit_dir)?;
        let after = frontier(audit_dir);
        if after == before {
            return Ok((after, cps));
        }
        before = after;
    }
    let cps = read(audit_dir)?;
    Ok((frontier(audit_dir), cps))
}

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
    walk_log(audit_dir, verifier, max_unanchored, None, progress, None)
}

/// [`verify_log_with`] handing every record to `visit` once it passed its checks — in
/// order, and never one after a record that failed. With `upto` = (bytes, last sequence) of
/// an earlier verification, only those bytes are read and only checkpoints up to that
/// sequence count (the daemon may have signed later ones meanwhile): the same log is
/// verified again.
///
/// # Errors
/// As [`verify_log`].
pub fn verify_log_visit(
    audit_dir: &Path,
    verifier: &AuditVerifier,
    max_unanchored: u64,
    upto: Option<(u64, u64)>,
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
    let file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(unreadable)?
    };
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
                    cp.seq + 1 == h.first_seq && cp.hash == h.prev_hash && cp.verifies(verifier)
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

/// Reads segments in order, checking their structure and handing record lines to the chain.
struct Walk<'a, 'p> {
    chain: Chain<'a>,
    /// Bytes to read at most (a second pass over what a first one read).
    budget: Option<u64>,
    /// The live segment and its written length when the walk began ([`frontier`]): no
    /// later segment is read, nor that one past there.
    frontier: Option<(u64, u64)>,
    /// Records before this sequence are passed over (the start-up check).
    skip_before: Option<u64>,
    /// Bytes of complete lines read.
    bytes: u64,
    progress: &'p dyn Progress,
}

/// What the walk knows of the segment before the current one.
struct Previous {
    n: u64,
    sealed: bool,
    lines: u64,
}

impl Walk<'_, '_> {
    fn total(&self, segs: &[SegmentFile]) -> u64 {
        let on_disk: u64 = segs
            .iter()
            .filter_map(|s| s.open().ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        self.budget.map_or(on_disk, |b| b.min(on_disk))
    }

    fn segments(
        &mut self,
        segs: &[SegmentFile],
        mut visit: Option<&mut dyn FnMut(&AuditRecord)>,
    ) -> Result<(), VerifyFailure> {
        let mut prev: Option<Previous> = None;
        for seg in segs {
            if self.budget.is_some_and(|b| self.bytes >= b)
                || self.frontier.is_some_and(|(n, _)| seg.n > n)
            {
                break;
            }
            let here = self.chain.next_seq();
            match &prev {
                Some(p) if seg.n != p.n + 1 => {
                    return Err(fail(
                        here,
                        format!(
                            "{} is missing: segments {} and {} are on disk, nothing between (deleted, or archived somewhere else)",
                            segments::segment_name(p.n + 1),
                            p.n,
                            seg.n
                        ),
                    ))
                }
                None if self.skip_before.is_none() && seg.n > 1 => {
                    return Err(fail(
                        here,
                        format!(
                            "{} is missing: the log starts at segment {} (earlier segments deleted, or archived somewhere else)",
                            segments::segment_name(1),
                            seg.n
                        ),
                    ))
                }
                _ => {}
            }
            let this = self.segment(seg, prev.as_ref(), visit.as_deref_mut())?;
            if let Some(p) = prev.as_ref().filter(|p| this.lines == 0 && p.n > 0) {
                if p.lines > 0 && !p.sealed {
                    // The writer starts a segment only once the one before is sealed.
                    return Err(fail(
                        self.chain.next_seq(),
                        format!(
                            "{} is not sealed but {} follows it (records removed from its end, or its seal)",
                            segments::segment_name(p.n),
                            seg.name()
                        ),
                    ));
                }
            }
            prev = Some(this);
        }
        Ok(())
    }

    fn segment(
        &mut self,
        seg: &SegmentFile,
        prev: Option<&Previous>,
        mut visit: Option<&mut (dyn FnMut(&AuditRecord) + '_)>,
    ) -> Result<Previous, VerifyFailure> {
        let name = seg.name();
        let unreadable =
            |seq: u64, e: std::io::Error| fail(seq, format!("cannot read {name}: {e}"));
        if let Some(copy) = &seg.also {
            // A move to the archive was interrupted: the copy must be the segment itself.
            let same = match segments::same_bytes(&seg.path, copy) {
                // The move finished since the listing: one copy is left, and is read below.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                other => other.map_err(|e| unreadable(self.chain.next_seq(), e))?,
            };
            if !same {
                return Err(fail(
                    self.chain.next_seq(),
                    format!("{name} is both in audit/ and in audit/archive/, with different contents (one of them was altered)"),
                ));
            }
        }
        let file = seg
            .open()
            .map_err(|e| unreadable(self.chain.next_seq(), e))?;
        let len = file.metadata().map_or(0, |m| m.len());
        let len = self.budget.map_or(len, |b| len.min(b - self.bytes));
        let len = match self.frontier {
            Some((n, at)) if n == seg.n => len.min(at),
            _ => len,
        };
        let after_seal = file
            .try_clone()
            .map_err(|e| unreadable(self.chain.next_seq(), e))?;
        let mut lines = LogLines::of(file, len);
        let mut this = Previous {
            n: seg.n,
            sealed: false,
            lines: 0,
        };
        let mut pending = 0u64;
        let result = (|| {
            while let Some(line) = lines
                .next_line()
                .map_err(|e| unreadable(self.chain.next_seq(), e))?
            {
                pending += line.len() as u64 + 1;
                if pending >= 1 << 20 {
                    self.progress.advance(std::mem::take(&mut pending));
                }
                let here = self.chain.next_seq();
                if this.sealed {
                    return Err(fail(here, format!("{name} has a line after its seal")));
                }
                let kind = segments::classify(line).map_err(|b| fail(here, b.0))?;
                let first = this.lines == 0;
                this.lines += 1;
                match kind {
                    Line::Header(h) => {
                        if !first || seg.n == 0 {
                            return Err(fail(here, format!("{name} has a header line inside it")));
                        }
                        self.header(&h, seg, prev)?;
                    }
                    Line::Record(_) if first && seg.n > 0 => {
                        return Err(fail(here, format!("{name} does not start with its header")));
                    }
                    Line::Record(r) => {
                        if self.skip_before.is_some_and(|s| {
                            self.chain.prev_seq.is_none()
                                && segments::seq_prefix(r).is_some_and(|q| q < s)
                        }) {
                            continue;
                        }
                        match visit.as_deref_mut() {
                            Some(visit) => visit(&self.chain.record_parsed(r)?),
                            None => self.chain.record(r)?,
                        }
                    }
                    Line::Seal(cp) => {
                        if seg.n == 0 {
                            return Err(fail(
                                here,
                                format!("{name} (an earlier release's log) has a seal line"),
                            ));
                        }
                        self.seal(&cp, &name)?;
                        this.sealed = true;
                    }
                }
            }
            Ok(())
        })();
        self.progress.advance(pending);
        self.bytes += lines.consumed();
        result?;
        // The writer cuts a segment at its seal; only zeros (space it had filled ahead) may
        // follow, never a line hidden behind a NUL byte or left without its newline.
        if this.sealed {
            let at = lines.consumed();
            let len = after_seal
                .metadata()
                .map_err(|e| unreadable(self.chain.next_seq(), e))?
                .len();
            if len.saturating_sub(at) > segments::MAX_AFTER_SEAL {
                return Err(fail(
                    self.chain.next_seq(),
                    format!(
                        "{name} holds {} byte(s) after its seal, more than the writer ever leaves there (written after it was sealed, or extended)",
                        len - at
                    ),
                ));
            }
            if let Some(end) = segments::dirty_after(&after_seal, at)
                .map_err(|e| unreadable(self.chain.next_seq(), e))?
            {
                return Err(fail(
                    self.chain.next_seq(),
                    format!(
                        "{name} holds {} byte(s) after its seal (written after it was sealed)",
                        end - at
                    ),
                ));
            }
        }
        Ok(this)
    }

    fn header(
        &mut self,
        h: &segments::SegmentHeader,
        seg: &SegmentFile,
        prev: Option<&Previous>,
    ) -> Result<(), VerifyFailure> {
        let here = self.chain.next_seq();
        let name = seg.name();
        if let Some(p) = prev {
            // An earlier release's audit.log may be empty (created when it opened, or cut
            // to nothing by its torn-tail repair): the header below must then start the
            // chain at record 1, which it proves.
            if p.lines == 0 && p.n > 0 {
                return Err(fail(
                    here,
                    format!(
                        "{} is empty but {name} follows it",
                        segments::segment_name(p.n)
                    ),
                ));
            }
            if p.n > 0 && !p.sealed {
                return Err(fail(here, format!("{} is not sealed but {name} follows it (records removed from its end, or its seal)", segments::segment_name(p.n))));
            }
        }
        if h.n != seg.n {
            return Err(fail(
                here,
                format!(
                    "{name} has the header of segment {} (renamed or swapped)",
                    h.n
                ),
            ));
        }
        // Read from a checkpoint on (start-up), the first header is taken as it is: the
        // record the checkpoint covers, found after it, proves where the chain stands.
        let mid_chain = self.chain.prev_seq.is_none() && self.skip_before.is_some();
        if !mid_chain && (h.first_seq != here || h.prev_hash != self.chain.prev_hash) {
            return Err(fail(here, format!("{name}'s header does not continue the chain (it starts at {} after hash {}…; the log is at {here})", h.first_seq, h.prev_hash.get(..12).unwrap_or(&h.prev_hash))));
        }
        Ok(())
    }

    fn seal(&mut self, cp: &Checkpoint, name: &str) -> Result<(), VerifyFailure> {
        let signed = cp.verifies(self.chain.verifier);
        if !signed {
            return Err(fail(
                cp.seq,
                format!("{name}'s seal signature is invalid (forged, or the public key given is not the one that signed this log)"),
            ));
        }
        if self.chain.prev_seq != Some(cp.seq) || self.chain.prev_hash != cp.hash {
            return Err(fail(
                cp.seq,
                format!("{name}'s seal does not cover its last record (records removed or added)"),
            ));
        }
        Ok(())
    }
}
