//! The log read a line at a time, in constant memory, up to the length the file had when
//! reading began (appends made meanwhile are left for the next reader).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Take};
use std::path::Path;

/// The longest record line accepted (records are far shorter; a longer "line" is damage or
/// an attack, and is not buffered whole).
pub const MAX_LINE: u64 = 1 << 20;

/// Complete lines of a file, one buffer reused for each.
pub struct LogLines {
    reader: BufReader<Take<File>>,
    buf: Vec<u8>,
    len: u64,
}

impl LogLines {
    /// The file at `path` as it is now: at most its current length is read.
    ///
    /// # Errors
    /// When it cannot be opened.
    pub fn open(path: &Path) -> std::io::Result<LogLines> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(LogLines::of(file, len))
    }

    /// The first `len` bytes of the file at `path` (a length an earlier pass read).
    ///
    /// # Errors
    /// When it cannot be opened.
    pub fn open_to(path: &Path, len: u64) -> std::io::Result<LogLines> {
        Ok(LogLines::of(File::open(path)?, len))
    }

    fn of(file: File, len: u64) -> LogLines {
        LogLines {
            reader: BufReader::with_capacity(256 * 1024, file.take(len)),
            buf: Vec::with_capacity(4096),
            len,
        }
    }

    /// The bytes this reader covers.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it covers no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next complete, non-empty line without its newline; `None` at the end (bytes
    /// after the last newline are an append in progress).
    ///
    /// # Errors
    /// On a read error, or a line longer than [`MAX_LINE`].
    pub fn next_line(&mut self) -> std::io::Result<Option<&[u8]>> {
        loop {
            self.buf.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE + 1)
                .read_until(b'\n', &mut self.buf)?;
            if n == 0 {
                return Ok(None);
            }
            if self.buf.last() != Some(&b'\n') {
                if n as u64 > MAX_LINE {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("a line longer than {MAX_LINE} bytes"),
                    ));
                }
                return Ok(None);
            }
            self.buf.pop();
            if !self.buf.is_empty() {
                return Ok(Some(&self.buf));
            }
        }
    }

    /// Calls `each` with every complete line, in order.
    ///
    /// # Errors
    /// As [`LogLines::next_line`], or the first error of `each`.
    pub fn for_each(
        mut self,
        mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        while let Some(line) = self.next_line()? {
            each(line)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_lines_only_up_to_the_length_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, b"one\n\ntwo\nthree-in-prog").unwrap();
        let mut lines = LogLines::open(&path).unwrap();
        assert_eq!(lines.next_line().unwrap(), Some(&b"one"[..]));
        assert_eq!(lines.next_line().unwrap(), Some(&b"two"[..]));
        assert_eq!(lines.next_line().unwrap(), None);
        let mut short = LogLines::open_to(&path, 5).unwrap();
        assert_eq!(short.next_line().unwrap(), Some(&b"one"[..]));
        assert_eq!(short.next_line().unwrap(), None);
        let long = vec![b'x'; (MAX_LINE + 10) as usize];
        std::fs::write(&path, &long).unwrap();
        assert!(LogLines::open(&path).unwrap().next_line().is_err());
    }
}
