//! Reading an export by position, a line at a time: the file is never held whole, and two
//! cursors can walk it side by side (the records and their attestations).

use std::io::{BufRead, BufReader, Read};

use super::super::super::lines::MAX_LINE;
use super::super::{fail, VerifyFailure};

/// Bytes read by position: an export file, or one already in memory.
pub trait ReadAt {
    /// Reads into `buf` from `offset`; 0 at the end.
    ///
    /// # Errors
    /// On a read error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;

    /// The length to read.
    ///
    /// # Errors
    /// When it cannot be known.
    fn size(&self) -> std::io::Result<u64>;

    /// What changes when the bytes do (a file's length and change time), compared before
    /// and after verification.
    ///
    /// # Errors
    /// When it cannot be known.
    fn stamp(&self) -> std::io::Result<(u64, i64, i64)>;
}

impl ReadAt for &[u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let from = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - from);
        buf[..n].copy_from_slice(&self[from..from + n]);
        Ok(n)
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn stamp(&self) -> std::io::Result<(u64, i64, i64)> {
        Ok((self.len() as u64, 0, 0))
    }
}

impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn stamp(&self) -> std::io::Result<(u64, i64, i64)> {
        use std::os::unix::fs::MetadataExt;
        let m = self.metadata()?;
        Ok((m.len(), m.ctime(), m.ctime_nsec()))
    }
}

/// `start..end` of a [`ReadAt`], read forward.
struct Span<'a> {
    src: &'a dyn ReadAt,
    pos: u64,
    end: u64,
}

impl Read for Span<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = usize::try_from(self.end.saturating_sub(self.pos)).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.src.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The complete, non-empty lines of a span, each with its offset; bytes after the last
/// newline are ignored, as [`crate::audit::complete_lines`] ignores them.
pub(super) struct Lines<'a> {
    reader: BufReader<Span<'a>>,
    buf: Vec<u8>,
    pub(super) next: u64,
}

impl<'a> Lines<'a> {
    pub(super) fn new(src: &'a dyn ReadAt, start: u64, end: u64) -> Lines<'a> {
        Lines {
            reader: BufReader::with_capacity(
                128 * 1024,
                Span {
                    src,
                    pos: start,
                    end,
                },
            ),
            buf: Vec::with_capacity(1024),
            next: start,
        }
    }

    /// The next line (without its newline) and its offset, `None` at the end.
    pub(super) fn next_line(&mut self) -> Result<Option<(u64, &[u8])>, VerifyFailure> {
        loop {
            self.buf.clear();
            let at = self.next;
            loop {
                let avail = self.reader.fill_buf().map_err(read_failed)?;
                if avail.is_empty() {
                    return Ok(None);
                }
                if let Some(i) = memchr::memchr(b'\n', avail) {
                    self.buf.extend_from_slice(&avail[..i]);
                    self.reader.consume(i + 1);
                    break;
                }
                let n = avail.len();
                self.buf.extend_from_slice(avail);
                self.reader.consume(n);
                if self.buf.len() as u64 > MAX_LINE {
                    return Err(fail(
                        0,
                        format!("the export holds a line longer than {MAX_LINE} bytes"),
                    ));
                }
            }
            self.next = at + self.buf.len() as u64 + 1;
            if !self.buf.is_empty() {
                return Ok(Some((at, &self.buf)));
            }
        }
    }
}

pub(super) fn read_failed(e: std::io::Error) -> VerifyFailure {
    fail(0, format!("the export cannot be read: {e}"))
}
