//! Opening an earlier release's single-file log and the checkpoint file for append and finding their durable tail: a torn
//! (newline-less) last line left by a crash mid-write was never acknowledged and is cut; the
//! last complete record must parse and match its hash.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::record::{AuditRecord, Checkpoint, GENESIS_HASH};
use super::AuditError;

/// The last durable record of the log: its sequence number and hash, and the file length
/// up to the end of its line.
pub(super) struct Tail {
    pub(super) seq: u64,
    pub(super) hash: String,
    pub(super) len: u64,
}

/// Reads the last complete line of `file`, truncating a torn (newline-less) tail left by a
/// crash mid-write: such bytes were never acknowledged.
pub(super) fn recover_tail(
    file: &mut File,
    path: &Path,
) -> Result<(u64, Option<String>), AuditError> {
    let inconsistent = |reason: String| AuditError::Inconsistent {
        path: path.display().to_string(),
        reason,
    };
    let len = file
        .metadata()
        .map_err(|e| inconsistent(e.to_string()))?
        .len();
    if len == 0 {
        return Ok((0, None));
    }
    // Records are far below 64 KiB; read a window large enough to hold the last full line.
    // A line is at most MAX_LINE bytes and a torn write a part of one: a window of four holds
    // a torn write and the line before it. Past that the file is not a log cut by a crash,
    // and a larger read (a sparse file of any size) would only exhaust memory.
    let mut window = 64 * 1024u64;
    let limit = 4 * super::lines::MAX_LINE;
    // What no crash leaves: more bytes without a line than a line can hold.
    let altered = |what: String| {
        inconsistent(format!(
            "{what}, though a line is at most {} bytes: not a write cut short by a crash (the file was altered)",
            super::lines::MAX_LINE
        ))
    };
    let grown = |window: u64| {
        if window >= limit {
            Err(altered(format!(
                "its last {window} bytes hold no complete line"
            )))
        } else {
            Ok(window * 4)
        }
    };
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))
            .map_err(|e| inconsistent(e.to_string()))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        file.read_to_end(&mut buf)
            .map_err(|e| inconsistent(e.to_string()))?;
        let Some(last_nl) = buf.iter().rposition(|b| *b == b'\n') else {
            if start == 0 {
                // Not one complete line: the whole file is a torn first write, if it is no
                // longer than a line can be.
                if len > super::lines::MAX_LINE {
                    return Err(altered(format!("its {len} bytes hold no complete line")));
                }
                file.set_len(0).map_err(|e| inconsistent(e.to_string()))?;
                file.sync_all().map_err(|e| inconsistent(e.to_string()))?;
                return Ok((0, None));
            }
            window = grown(window)?;
            continue;
        };
        let good_len = start + last_nl as u64 + 1;
        let body = &buf[..last_nl];
        let line_start = body.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        if line_start == 0 && start > 0 {
            window = grown(window)?;
            continue;
        }
        let line = String::from_utf8(body[line_start..].to_vec())
            .map_err(|_| inconsistent("last line is not UTF-8".into()))?;
        // Cut only once the last complete line is found, and only what a torn write can
        // leave (part of one line): a file refused (altered) is left whole, as evidence.
        if len - good_len > super::lines::MAX_LINE {
            return Err(altered(format!(
                "{} bytes follow its last complete line",
                len - good_len
            )));
        }
        if good_len < len {
            tracing::warn!(
                path = %path.display(),
                torn_bytes = len - good_len,
                "truncating torn audit tail left by an interrupted write (never acknowledged)"
            );
            file.set_len(good_len)
                .map_err(|e| inconsistent(e.to_string()))?;
            file.sync_all().map_err(|e| inconsistent(e.to_string()))?;
        }
        return Ok((good_len, Some(line)));
    }
}

pub(super) fn open_append(path: &Path) -> Result<File, AuditError> {
    let open_err = |e: std::io::Error| AuditError::Open {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let (file, created) = super::segments::open_or_create(path, true).map_err(open_err)?;
    let existed = !created;
    // Checked before anything is cut back or appended.
    super::segments::own_file(&file, path).map_err(open_err)?;
    // A file created here (checkpoints.log on a new log) has its directory entry made durable
    // before anything is written to it: syncing the file alone does not promise the entry
    // survives a crash, and a checkpoint file lost with it leaves the start nothing to
    // verify from.
    if !existed {
        if let Some(dir) = path.parent() {
            super::segments::sync_dir(dir).map_err(open_err)?;
        }
    }
    Ok(file)
}

pub(super) fn open_tail(path: &Path) -> Result<(File, Tail), AuditError> {
    let mut file = open_append(path)?;
    let (len, last) = recover_tail(&mut file, path)?;
    let tail = match last {
        None => Tail {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
            len,
        },
        Some(line) => {
            let rec: AuditRecord =
                serde_json::from_str(&line).map_err(|_| AuditError::Inconsistent {
                    path: path.display().to_string(),
                    reason: "last record does not parse".into(),
                })?;
            if rec.compute_hash() != rec.hash {
                return Err(AuditError::Inconsistent {
                    path: path.display().to_string(),
                    reason: format!("record {} fails its hash", rec.seq),
                });
            }
            Tail {
                seq: rec.seq,
                hash: rec.hash,
                len,
            }
        }
    };
    Ok((file, tail))
}

/// Opens the checkpoint file (repairing a torn tail) and reads the last checkpoint.
pub(super) fn open_checkpoints(path: &Path) -> Result<(File, Option<Checkpoint>), AuditError> {
    let mut file = open_append(path)?;
    let (_, last) = recover_tail(&mut file, path)?;
    let last = last.and_then(|l| serde_json::from_str::<Checkpoint>(&l).ok());
    Ok((file, last))
}
