//! The file log as a series of segment files.
//!
//! `<audit>/segment-NNNNNNNNNN.log`, numbered from 1, hold the records. Each starts with a
//! header line `{"segment":{"n","first_seq","prev_hash","created"}}` that chains it to the
//! record before it, and, once sealed, ends with `{"seal":{checkpoint}}`: a signed checkpoint
//! over its last record (also in `checkpoints.log`), so a sealed segment verifies on its own
//! with the public key. The writer zero-fills space ahead of itself, so a group commit's
//! `fdatasync` writes data only (the file size does not change); the written part ends at
//! the first NUL byte. `audit.log`, the single-file log of earlier releases, is segment 0:
//! no header, no seal, never written again. Sealed segments move to `<audit>/archive/`
//! (`[audit] live_segments`); readers look in both, listing the live directory first so a
//! segment moved while they list is not missed.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::lines::LogLines;
use super::record::Checkpoint;

/// The log of earlier releases, read as segment 0.
pub const LEGACY_NAME: &str = "audit.log";
/// Sealed segments moved out of the live directory.
pub const ARCHIVE_DIR: &str = "archive";

/// File name of segment `n` (≥ 1).
pub fn segment_name(n: u64) -> String {
    format!("segment-{n:010}.log")
}

/// The segment number a file name stands for.
pub(crate) fn parse_name(name: &str) -> Option<u64> {
    if name == LEGACY_NAME {
        return Some(0);
    }
    let digits = name.strip_prefix("segment-")?.strip_suffix(".log")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n > 0)
}

/// `<audit>/archive`.
pub fn archive_dir(audit_dir: &Path) -> PathBuf {
    audit_dir.join(ARCHIVE_DIR)
}

/// One segment file found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    /// Its number (0: the log of earlier releases).
    pub n: u64,
    /// Where it was found.
    pub path: PathBuf,
    /// Whether it was found in the archive directory.
    pub archived: bool,
    /// A second copy in the archive (a move interrupted before the original was removed):
    /// readers take the live one, and verification requires the two to be identical.
    pub also: Option<PathBuf>,
}

impl SegmentFile {
    /// Opens it; one moved to the archive since it was listed is opened there.
    ///
    /// # Errors
    /// When it is in neither place, or is not a regular file.
    pub fn open(&self) -> std::io::Result<File> {
        match open_regular(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.archived => {
                let moved = self
                    .path
                    .parent()
                    .map(archive_dir)
                    .zip(self.path.file_name())
                    .map(|(dir, name)| dir.join(name));
                moved.map_or(Err(e), |p| open_regular(&p))
            }
            other => other,
        }
    }

    /// The name of the file.
    pub fn name(&self) -> String {
        if self.n == 0 {
            LEGACY_NAME.to_owned()
        } else {
            segment_name(self.n)
        }
    }
}

/// Opens `path` for reading without waiting: whoever can write the audit directory could
/// put a FIFO under a segment's name, and opened as a file it would block `audit verify`
/// (and the daemon's start) for good. A FIFO or socket is refused; the open itself does not
/// wait (`O_NONBLOCK`, which changes nothing for a file). A device reads as empty where its
/// length is what bounds the read, as everywhere here (a test's `/dev/full` stands in for a
/// full disk).
///
/// # Errors
/// When it cannot be opened, or is a FIFO or a socket.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::FileTypeExt as _;
    let file = open_nonblocking(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_fifo() || kind.is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is a FIFO or a socket, not a file", path.display()),
        ));
    }
    Ok(file)
}

/// Opens `path` for reading without waiting (`O_NONBLOCK`: a FIFO opened to read blocks
/// until a writer comes; a file is read as usual). Every reader of the audit directory opens
/// through this.
///
/// # Errors
/// When it cannot be opened.
pub fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// Lists the segments of `dir` into `out`; `at` maps a number to its place in `out` (a
/// segment in both directories is looked up, not searched for: an archive holds one file per
/// segment ever sealed).
fn list_dir(
    dir: &Path,
    archived: bool,
    out: &mut Vec<SegmentFile>,
    at: &mut std::collections::HashMap<u64, usize>,
) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(n) = entry.file_name().to_str().and_then(parse_name) else {
            continue;
        };
        if let Some(live) = at.get(&n).and_then(|&i| out.get_mut(i)) {
            // Moved while listing, or copied and not yet removed: the live copy is read.
            live.also = Some(entry.path());
            continue;
        }
        at.insert(n, out.len());
        out.push(SegmentFile {
            n,
            path: entry.path(),
            archived,
            also: None,
        });
    }
    Ok(())
}

/// Every segment in the live directory and the archive, by number.
///
/// # Errors
/// When a directory cannot be read.
pub fn list(audit_dir: &Path) -> std::io::Result<Vec<SegmentFile>> {
    let (mut out, mut at) = (Vec::new(), std::collections::HashMap::new());
    list_dir(audit_dir, false, &mut out, &mut at)?;
    list_dir(&archive_dir(audit_dir), true, &mut out, &mut at)?;
    out.sort_by_key(|s| s.n);
    Ok(out)
}

/// The most bytes a sealed segment holds after its seal: the space the writer filled ahead,
/// left when a crash came between the seal and the cut (at most a fill step or two; see the
/// writer). More is no crash's doing, and a reader does not walk through it (a segment made
/// a sparse terabyte would take hours).
pub const MAX_AFTER_SEAL: u64 = 8 << 20;

/// Whether `audit_dir` holds a file log (of this release or an earlier one), or what is left
/// of one: a checkpoint file without segments is a log whose segments were removed, and is
/// verified (and fails) as such.
pub fn has_file_log(audit_dir: &Path) -> bool {
    list(audit_dir).is_ok_and(|l| !l.is_empty())
        || std::fs::symlink_metadata(super::checkpoints_path(audit_dir)).is_ok()
}

/// What starts a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentHeader {
    /// The segment's number.
    pub n: u64,
    /// Sequence number of its first record.
    pub first_seq: u64,
    /// Hash of the record before it (the previous segment's last).
    pub prev_hash: String,
    /// When it was started.
    pub created: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderLine {
    segment: SegmentHeader,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealLine {
    seal: Checkpoint,
}

/// A line of a segment.
pub enum Line<'a> {
    /// Its header.
    Header(SegmentHeader),
    /// A record, as stored.
    Record(&'a [u8]),
    /// Its seal.
    Seal(Checkpoint),
}

/// Why a line that looks like a header or seal is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine(pub &'static str);

/// Tells the three kinds of line apart (records start with `{"seq":` or `{"replica":`).
///
/// # Errors
/// A header or seal line that does not parse.
pub fn classify(line: &[u8]) -> Result<Line<'_>, BadLine> {
    if line.starts_with(b"{\"segment\":") {
        serde_json::from_slice::<HeaderLine>(line)
            .map(|h| Line::Header(h.segment))
            .map_err(|_| BadLine("a segment header does not parse"))
    } else if line.starts_with(b"{\"seal\":") {
        serde_json::from_slice::<SealLine>(line)
            .map(|s| Line::Seal(s.seal))
            .map_err(|_| BadLine("a segment seal does not parse"))
    } else {
        Ok(Line::Record(line))
    }
}

/// The header line (with its newline).
pub fn header_line(header: &SegmentHeader) -> Vec<u8> {
    let mut line = serde_json::to_vec(&HeaderLine {
        segment: header.clone(),
    })
    .unwrap_or_default();
    line.push(b'\n');
    line
}

/// The seal line (with its newline).
pub fn seal_line(cp: &Checkpoint) -> Vec<u8> {
    let mut line = serde_json::to_vec(&SealLine { seal: cp.clone() }).unwrap_or_default();
    line.push(b'\n');
    line
}

/// The sequence number of a record line, from its first bytes (`{"seq":N,`), without
/// parsing the rest; `None` for any other line.
pub fn seq_prefix(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// What a segment's written part holds, as the writer needs it at start-up.
#[derive(Debug, Default)]
pub struct Scan {
    /// Bytes of complete lines: where the next write goes.
    pub end: u64,
    /// Its header.
    pub header: Option<SegmentHeader>,
    /// Its records.
    pub records: u64,
    /// Its last record line.
    pub last_record: Option<String>,
    /// Its seal.
    pub seal: Option<Checkpoint>,
    /// The file's length (space zero-filled ahead included).
    pub file_len: u64,
}

/// Reads a segment's written part.
///
/// # Errors
/// A read error, or a header or seal that does not parse.
pub fn scan(file: &File) -> std::io::Result<Scan> {
    let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let file_len = file.metadata()?.len();
    let mut lines = LogLines::of(file.try_clone()?, file_len);
    let mut out = Scan {
        file_len,
        ..Scan::default()
    };
    while let Some(line) = lines.next_line()? {
        match classify(line).map_err(|b| invalid(b.0))? {
            Line::Header(h) => out.header = Some(h),
            Line::Record(r) => {
                out.records += 1;
                out.last_record = Some(String::from_utf8_lossy(r).into_owned());
            }
            Line::Seal(cp) => out.seal = Some(cp),
        }
    }
    out.end = lines.consumed();
    Ok(out)
}

/// Whether any byte of `file` from `from` on is not zero (a write that was cut short).
///
/// # Errors
/// A read error.
pub fn dirty_after(file: &File, from: u64) -> std::io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from;
    let mut last = None;
    while at < len {
        let want = usize::try_from((len - at).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = file.read_at(&mut buf[..want], at)?;
        if n == 0 {
            break;
        }
        if let Some(i) = buf[..n].iter().rposition(|b| *b != 0) {
            last = Some(at + i as u64 + 1);
        }
        at += n as u64;
    }
    Ok(last)
}

/// Writes zeros over `from..to` of `file`.
///
/// # Errors
/// A write error.
pub fn zero(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let chunk = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = usize::try_from((to - at).min(chunk.len() as u64)).unwrap_or(chunk.len());
        file.write_all_at(&chunk[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Writes the bytes of `file` in `from..to` back where they are, as read (through the page
/// cache), a MiB at a time; bytes past the file's end are left alone. Whether it wrote any.
pub fn write_back(file: &File, from: u64, to: u64) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let to = to.min(file.metadata()?.len());
    let mut chunk = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = usize::try_from((to - at).min(chunk.len() as u64)).unwrap_or(chunk.len());
        file.read_exact_at(&mut chunk[..n], at)?;
        file.write_all_at(&chunk[..n], at)?;
        at += n as u64;
    }
    Ok(from < to)
}

/// Checks that `file`, opened at `path` to be written, is the log's own: a regular file of
/// this process's user, not writable by other users (its group may: a volume's fsGroup),
/// reached without a symbolic link and with no
/// other name (a hard link); or /dev/full, where every write fails (the fail-closed tests
/// point the log at it). Whoever can create entries in the audit directory could otherwise
/// have the writer append to, or cut back, a file elsewhere through a planted link — the KEK
/// keyring, a key, a config — or write live records into a file of their own, to read and
/// rewrite.
///
/// # Errors
/// When `file` is anything else, or cannot be examined.
pub fn own_file(file: &File, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let refused = |why: &str| {
        Err(std::io::Error::other(format!(
            "{} {why}: the audit log writes only files of its own (nothing was written)",
            path.display()
        )))
    };
    let opened = file.metadata()?;
    if opened.file_type().is_char_device() {
        // Linux's memory devices are major 1; /dev/full is minor 7.
        let rdev = opened.rdev();
        return if (rustix::fs::major(rdev), rustix::fs::minor(rdev)) == (1, 7) {
            Ok(())
        } else {
            refused("is a device other than /dev/full")
        };
    }
    if !opened.file_type().is_file() {
        return refused("is not a regular file");
    }
    let named = std::fs::symlink_metadata(path)?;
    if named.file_type().is_symlink() || (named.dev(), named.ino()) != (opened.dev(), opened.ino())
    {
        return refused("is a symbolic link");
    }
    if opened.nlink() != 1 {
        return refused("has another name (a hard link)");
    }
    // The log's owner is this process's user or the audit directory's (an offline command
    // run as root on the daemon's log; a volume restored with its files' owner; whoever owns
    // the directory can replace any file in it anyway): a file of any other user was
    // planted. Group write stays allowed: a Kubernetes volume's fsGroup
    // adds it at every mount, to files the daemon made.
    let me = rustix::process::geteuid().as_raw();
    let dir_owner = path
        .parent()
        .and_then(|d| std::fs::metadata(d).ok())
        .map(|m| m.uid());
    if opened.uid() != me && Some(opened.uid()) != dir_owner {
        return refused(&format!(
            "belongs to user {}, neither this process's ({me}) nor the audit directory's owner",
            opened.uid()
        ));
    }
    if opened.mode() & 0o002 != 0 {
        return refused("is writable by others than its owner and group");
    }
    Ok(())
}

/// Opens the audit file `path` (read, and `options`' write mode) as it is, or creates it
/// afresh (mode 0600, never through a symbolic link: a dangling one planted there makes
/// the creation fail rather than create its target): the file and whether it was created.
///
/// # Errors
/// When it can be neither opened nor created.
pub fn open_or_create(path: &Path, append: bool) -> std::io::Result<(File, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut existing = std::fs::OpenOptions::new();
    // Never made this process's controlling terminal (a link to a terminal is refused by
    // `own_file` right after).
    existing.read(true).custom_flags(libc::O_NOCTTY);
    if append {
        existing.append(true);
    } else {
        existing.write(true);
    }
    match existing.open(path) {
        Ok(f) => return Ok((f, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut fresh = std::fs::OpenOptions::new();
    fresh
        .read(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW);
    if append {
        fresh.append(true);
    } else {
        fresh.write(true);
    }
    Ok((fresh.open(path)?, true))
}

/// Syncs a directory, so a file created, renamed or removed in it stays so after a crash.
///
/// # Errors
/// When it cannot be opened or synced.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether two files hold the same bytes.
///
/// # Errors
/// A read error.
pub fn same_bytes(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (fa, fb) = (open_regular(a)?, open_regular(b)?);
    let len = fa.metadata()?.len();
    if len != fb.metadata()?.len() {
        return Ok(false);
    }
    // (Bounded by the length, as every read here: a device reads without end.)
    let (mut fa, mut fb) = (fa.take(len), fb.take(len));
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Moves a sealed segment into the archive directory without ever replacing a file there:
/// a hard link then the original removed, or where that is not possible (the archive on
/// another file system) a copy synced under a temporary name, linked into place, then the
/// original removed. Interrupted at any point, the segment is in one place or in both
/// (readers take the live copy and verification requires the two to match); the next move
/// finishes the job — and refuses, leaving both, when the two differ.
///
/// # Errors
/// When it cannot be moved, or a different file of that name is already archived.
pub fn archive(audit_dir: &Path, seg: &SegmentFile) -> std::io::Result<()> {
    let dir = archive_dir(audit_dir);
    crate::keys::create_private_dir(&dir)?;
    // The archive's own entry is durable before a segment moved into it leaves the live
    // directory.
    sync_dir(audit_dir)?;
    let target = dir.join(seg.name());
    if target.exists() {
        if !same_bytes(&seg.path, &target)? {
            return Err(std::io::Error::other(format!(
                "{} differs from its copy in {}: both left in place (run `credbroker audit verify`)",
                seg.name(),
                dir.display()
            )));
        }
    } else if std::fs::hard_link(&seg.path, &target).is_err() {
        let partial = dir.join(format!(".{}.partial", seg.name()));
        let mut from = File::open(&seg.path)?;
        // A leftover (a crash, or a link planted to redirect the copy) is removed, never
        // followed: the copy is created fresh.
        match std::fs::remove_file(&partial) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut to = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&partial)?
        };
        std::io::copy(&mut from, &mut to)?;
        to.sync_all()?;
        std::fs::hard_link(&partial, &target)?;
        std::fs::remove_file(&partial)?;
    }
    sync_dir(&dir)?;
    std::fs::remove_file(&seg.path)?;
    sync_dir(audit_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_prefixes() {
        assert_eq!(segment_name(7), "segment-0000000007.log");
        assert_eq!(parse_name("segment-0000000007.log"), Some(7));
        assert_eq!(parse_name("audit.log"), Some(0));
        assert_eq!(parse_name("segment-0000000000.log"), None);
        assert_eq!(parse_name("segment-7.log"), None);
        assert_eq!(parse_name(".segment-0000000007.log.partial"), None);
        assert_eq!(seq_prefix(b"{\"seq\":42,\"time\":\"x\"}"), Some(42));
        assert_eq!(seq_prefix(b"{\"segment\":{}}"), None);
    }

    #[test]
    fn listing_prefers_the_live_copy_and_finds_moved_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(archive_dir(dir)).unwrap();
        std::fs::write(dir.join(segment_name(2)), b"live").unwrap();
        std::fs::write(archive_dir(dir).join(segment_name(2)), b"copy").unwrap();
        std::fs::write(archive_dir(dir).join(segment_name(1)), b"old").unwrap();
        std::fs::write(dir.join("checkpoints.log"), b"").unwrap();
        let l = list(dir).unwrap();
        assert_eq!(
            l.iter().map(|s| (s.n, s.archived)).collect::<Vec<_>>(),
            [(1, true), (2, false)]
        );
        assert_eq!(
            l[1].also.as_deref(),
            Some(&*archive_dir(dir).join(segment_name(2)))
        );
        // A different archived copy is never replaced: the move refuses, both stay.
        let refused = archive(dir, &l[1]).unwrap_err().to_string();
        assert!(refused.contains("differs"), "{refused}");
        let copy = archive_dir(dir).join(segment_name(2));
        assert_eq!(std::fs::read(&copy).unwrap(), b"copy");
        std::fs::write(&copy, b"live").unwrap();
        archive(dir, &l[1]).unwrap();
        assert!(!dir.join(segment_name(2)).exists());
        // Listed as live, moved since: opened in the archive.
        let mut text = String::new();
        l[1].open().unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "live");
    }
}
