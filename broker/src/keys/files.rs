//! Key files on disk: read only when private (mode 0600, no link), written atomically
//! through a temporary of the writer's own (synced, renamed, the directory synced), created
//! without replacing one another's, and the lock that keeps two rotations of one keyring
//! apart.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{io_err, random_bytes, KeyError};

/// Reads a private key file: not through a symlink, and only when neither group nor others
/// may read or write it (mode 0600 or stricter), so a key left readable is refused rather
/// than used.
///
/// # Errors
/// When the file is missing, a symlink, or accessible to group or others.
pub fn read_private_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    use std::io::Read;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                KeyError::Invalid(format!(
                    "{} is a symbolic link; key files are read only directly",
                    path.display()
                ))
            } else {
                io_err(path)(e)
            }
        })?;
    let mode = f.metadata().map_err(io_err(path))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(KeyError::Invalid(format!(
            "{} is accessible to group or others (mode {:o}); make it readable by its owner only: chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        )));
    }
    let mut bytes = Zeroizing::new(Vec::new());
    f.read_to_end(&mut bytes).map_err(io_err(path))?;
    Ok(bytes)
}

/// Everything `reader` holds, read into buffers wiped when dropped, up to `limit` bytes: a
/// buffer that grows is copied into a larger one and the smaller wiped ([`append_zeroizing`];
/// `read_to_end` would leave each outgrown buffer to the allocator as it was). For a secret
/// of unknown length (standard input).
///
/// # Errors
/// On an I/O failure, or past `limit` bytes.
pub fn read_wiped(
    mut reader: impl std::io::Read,
    limit: usize,
) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut all = Zeroizing::new(Vec::with_capacity(8192));
    let mut chunk = Zeroizing::new([0u8; 8192]);
    loop {
        let n = match reader.read(&mut chunk[..]) {
            Ok(0) => return Ok(all),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if all.len() + n > limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("more than {limit} bytes"),
            ));
        }
        append_zeroizing(&mut all, &chunk[..n], limit);
    }
}

/// The most a CLI reads of a secret it uploads (a file or standard input), bytes: far more
/// than any secret, far less than the broker's request limit.
pub const MAX_SECRET_INPUT: usize = 1024 * 1024;

/// Appends `data` to `out` without leaving a copy behind: when `out` must grow, its bytes move
/// to a larger buffer of its own and the old one is wiped as it is dropped (a growing `Vec`
/// frees its old buffer unwiped). Request bodies and secrets read by the CLI carry secrets:
/// pasted ones, GitHub App keys, Forge system tokens. Capacity never passes `max` (or what
/// the bytes need).
pub(crate) fn append_zeroizing(out: &mut Zeroizing<Vec<u8>>, data: &[u8], max: usize) {
    let need = out.len().saturating_add(data.len());
    if need > out.capacity() {
        let capacity = out.capacity().saturating_mul(2).min(max).max(need);
        let mut grown = Zeroizing::new(Vec::with_capacity(capacity));
        grown.extend_from_slice(out);
        *out = grown;
    }
    out.extend_from_slice(data);
}

/// The temporary file `path` is written through: `.<name>.tmp` beside it, never the file
/// itself (`with_extension("tmp")` returns a path ending in `.tmp` unchanged, whose
/// removal deleted the live key before its replacement was written) and not shared by two
/// files of one stem (the audit key pair's `.key` and `.pub`).
pub(super) fn temporary_of(path: &Path) -> Result<PathBuf, KeyError> {
    let name = path
        .file_name()
        .ok_or_else(|| KeyError::Invalid(format!("{}: not a file name", path.display())))?;
    // Random per writer: two commands writing one key at once (two `init`s) never remove or
    // rename each other's half-written file.
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", hex::encode(random_bytes(8)?.as_slice())));
    Ok(path.with_file_name(tmp_name))
}

/// Creates `dir` and any missing parents with mode 0700 (before the umask): the data
/// directory, the store, the audit log and key directories hold tenants' bindings, who
/// resolved what and wrapped keys, for the daemon's user alone. A directory that exists is
/// left as it is (the doctor warns when the data directory is open to others).
///
/// # Errors
/// On an I/O failure.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Why [`lock_file`] did not take its lock.
#[derive(Debug)]
pub enum LockFailure {
    /// Another process holds it.
    Held,
    /// The file could not be opened or locked (the message names it).
    Io(String),
}

/// Takes an exclusive `flock` on the lock file `path` (made 0600 if missing, never through
/// a symbolic link), held while the returned handle lives; refused at once, not waited
/// for, when another process holds it.
///
/// # Errors
/// [`LockFailure::Held`], or the I/O failure.
pub fn lock_file(path: &Path) -> Result<fs::File, LockFailure> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| LockFailure::Io(format!("{}: {e}", path.display())))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(LockFailure::Held),
        Err(e) => Err(LockFailure::Io(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// Writes `bytes` to `path` atomically with mode 0600.
///
/// # Errors
/// On any I/O failure; the previous file (if any) is then left untouched.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    // The file keeps its owner when root replaces it: a keyring rotated with sudo stays the
    // daemon's to read, where a new root-owned one would stop the next start.
    let owner = if rustix::process::geteuid().is_root() {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(path)
            .ok()
            .map(|old| (old.uid(), old.gid()))
    } else {
        None
    };
    let (dir, tmp) = write_temporary(path, bytes, owner)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    sync(&dir)
}

/// Writes `bytes` to `path` with mode 0600 when no file is there, atomically: of two
/// commands creating one key at once, one creates it and the other is told it exists
/// (`Ok(false)`) and reads it, rather than replacing it after the first used it.
///
/// # Errors
/// On any I/O failure.
pub fn create_private_file(path: &Path, bytes: &[u8]) -> Result<bool, KeyError> {
    let (dir, tmp) = write_temporary(path, bytes, None)?;
    // A hard link is made only where no name exists (never over one).
    match fs::hard_link(&tmp, path) {
        Ok(()) => {
            fs::remove_file(&tmp).map_err(io_err(&tmp))?;
            sync(&dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(&tmp);
            Ok(false)
        }
        // A filesystem without hard links (vfat, some network mounts): created by rename
        // when nothing is there, as before (two creators at once are then not told apart).
        Err(_) => {
            if fs::symlink_metadata(path).is_ok() {
                let _ = fs::remove_file(&tmp);
                return Ok(false);
            }
            if let Err(e) = fs::rename(&tmp, path) {
                let _ = fs::remove_file(&tmp);
                return Err(io_err(path)(e));
            }
            sync(&dir)?;
            Ok(true)
        }
    }
}

/// Removes what a writer of `path` killed midway left: temporaries of its name older than
/// `min_age` (a live writer's is seconds old; a writer holding the file's lock passes zero),
/// and the one fixed name earlier releases used. A keyring's holds every KEK version it
/// had, a rotation's old one included.
pub(super) fn remove_stale_temporaries(dir: &Path, path: &Path, min_age: std::time::Duration) {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let (prefix, fixed) = (format!(".{name}."), format!(".{name}.tmp"));
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        let random = file
            .strip_prefix(prefix.as_str())
            .and_then(|r| r.strip_suffix(".tmp"))
            .is_some_and(|r| r.len() == 16 && r.bytes().all(|b| b.is_ascii_hexdigit()));
        let stale = file == fixed
            || (random
                && entry
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    // A time ahead of this clock (a network mount's) is old enough only
                    // when any age is.
                    .map_or(min_age.is_zero(), |t| {
                        t.elapsed().map_or(min_age.is_zero(), |age| age >= min_age)
                    }));
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// `bytes` in a new temporary file beside `path`, synced: its directory and its path.
/// Writes `bytes` to a fresh temporary beside `path`; `owner`: the uid and gid it is given
/// (through its open handle: a name swapped for a link meanwhile is never followed).
fn write_temporary(
    path: &Path,
    bytes: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(PathBuf, PathBuf), KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    create_private_dir(&dir).map_err(io_err(&dir))?;
    remove_stale_temporaries(&dir, path, std::time::Duration::from_secs(600));
    let tmp = temporary_of(path)?;
    // Created fresh, without following a symbolic link (one planted to redirect the write
    // makes it fail).
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
            }
            f.write_all(bytes)?;
            f.sync_all()
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    Ok((dir, tmp))
}

fn sync(dir: &Path) -> Result<(), KeyError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key file replaced by a command run as root (`sudo credbroker keys rotate-kek`)
    /// keeps the owner it had: the daemon's user still reads it at the next start.
    #[test]
    fn a_replaced_key_file_keeps_its_owner() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("kek.json");
        write_private_file(&path, b"one").unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        write_private_file(&path, b"two").unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"two");
    }

    /// What a reader of unknown length holds is read whole through buffers that grow, in
    /// reads of any size; past the limit it is refused.
    #[test]
    fn a_secret_of_unknown_length_is_read_whole_and_bounded() {
        /// Hands out at most 1,000 bytes a read.
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(1000);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let input: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let read = read_wiped(Trickle(&input), 50_000).unwrap();
        assert_eq!(read.as_slice(), input.as_slice());
        assert!(read_wiped(Trickle(&input), 49_999).is_err());
        assert!(read_wiped(Trickle(b""), 10).unwrap().is_empty());
    }

    /// A key path that ends in `.tmp` is replaced through another file (its temporary was
    /// once the path itself, deleted first); the audit key pair's two files do not share a
    /// temporary name; and a replacement leaves nothing behind.
    #[test]
    fn a_private_file_is_replaced_through_a_temporary_of_its_own() {
        let p = |s: &str| PathBuf::from(s);
        let tmp = temporary_of(&p("/k/kek.tmp")).unwrap();
        let name = tmp.file_name().unwrap().to_str().unwrap();
        assert!(
            tmp.parent() == Some(Path::new("/k"))
                && name.starts_with(".kek.tmp.")
                && name.ends_with(".tmp")
                && name.len() == ".kek.tmp.".len() + 16 + ".tmp".len(),
            "{tmp:?}"
        );
        assert_ne!(
            tmp,
            temporary_of(&p("/k/kek.tmp")).unwrap(),
            "one per writer"
        );
        assert_ne!(
            temporary_of(&p("/k/audit-signing.key")).unwrap(),
            temporary_of(&p("/k/audit-signing.pub")).unwrap()
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.tmp");
        // What writers killed midway left: the fixed name of earlier releases and an hour-old
        // temporary go; a temporary of a writer still at work (seconds old) stays.
        let stale = dir.path().join(".kek.tmp.00112233445566aa.tmp");
        let live = dir.path().join(".kek.tmp.99887766554433bb.tmp");
        for p in [&dir.path().join(".kek.tmp.tmp"), &stale, &live] {
            std::fs::write(p, b"KEK versions").unwrap();
        }
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
            .unwrap();
        write_private_file(&path, b"one").unwrap();
        std::fs::remove_file(&live).unwrap();
        write_private_file(&path, b"two").unwrap();
        assert_eq!(&read_private_file(&path).unwrap()[..], b"two");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("kek.tmp")],
            "no temporary left"
        );
    }
}
