//! What a verification of the live log reads before its walk: the checkpoints (a line at a
//! time, ending at a NUL byte) and the frontier — where the log's written part ends — taken
//! so that the two agree.

use std::path::Path;

use super::super::{fail, VerifyFailure};
use crate::audit::checkpoints_path;
use crate::audit::lines::LogLines;
use crate::audit::record::Checkpoint;
use crate::audit::segments;

pub(crate) fn read_checkpoints(audit_dir: &Path) -> Result<Vec<Checkpoint>, VerifyFailure> {
    let mut out = Vec::new();
    each_checkpoint(audit_dir, &mut |cp| out.push(cp))?;
    Ok(out)
}

/// The last checkpoint of the file, every line of it parsed but none held: the start-up
/// check needs only the last, and a file of years of checkpoints is not held in memory.
pub(super) fn read_last_checkpoint(audit_dir: &Path) -> Result<Option<Checkpoint>, VerifyFailure> {
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
fn checkpoint_lines(path: &Path) -> std::io::Result<LogLines> {
    let file = segments::open_nonblocking(path)?;
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
pub(super) type Frontier = Option<(u64, u64)>;

/// The log's [`frontier`] and the checkpoints, read so that they agree: no checkpoint covers
/// a record past the frontier, and every record before it existed when the checkpoints
/// were read. The frontier is taken before and after the checkpoints are read; when the
/// two are the same, nothing was appended in between. A log appended to every time (a busy
/// daemon) gets the frontier taken right after a last read, so at most what the writer
/// appends in that moment is past the checkpoints read.
///
/// # Errors
/// When the checkpoints cannot be read.
pub(super) fn frontier_and_checkpoints<T>(
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
