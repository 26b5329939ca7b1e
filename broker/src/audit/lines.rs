//! The log read a line at a time, in constant memory, up to the length the file had when
//! reading began (appends made meanwhile are left for the next reader).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Take};
use std::path::Path;

/// The longest record line accepted (records are far shorter; a longer "line" is damage or
/// an attack, and is not buffered whole).
pub const MAX_LINE: u64 = 1 << 20;

/// Complete lines of a file, one buffer reused for each. A NUL byte ends the written part:
/// segment files are zero-filled ahead of the writer, and a record never holds one.
pub struct LogLines {
    reader: BufReader<Take<File>>,
    buf: Vec<u8>,
    len: u64,
    consumed: u64,
    done: bool,
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

    /// The first `len` bytes of an open file, from its start.
    pub fn of(file: File, len: u64) -> LogLines {
        LogLines {
            reader: BufReader::with_capacity(256 * 1024, file.take(len)),
            buf: Vec::with_capacity(4096),
            len,
            consumed: 0,
            done: false,
        }
    }

    /// The bytes this reader covers at most.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it covers no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the complete lines returned so far (with their newlines): where the written
    /// part ends once [`LogLines::next_line`] returned `None`.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The next complete, non-empty line without its newline; `None` at the end (bytes
    /// after the last newline, or from a NUL byte on, are an append in progress or space
    /// not yet written).
    ///
    /// # Errors
    /// On a read error, or a line longer than [`MAX_LINE`].
    pub fn next_line(&mut self) -> std::io::Result<Option<&[u8]>> {
        loop {
            if self.done {
                return Ok(None);
            }
            self.buf.clear();
            loop {
                let avail = self.reader.fill_buf()?;
                if avail.is_empty() {
                    self.done = true;
                    return Ok(None);
                }
                match memchr::memchr2(b'\n', 0, avail) {
                    Some(i) if avail[i] == b'\n' => {
                        self.buf.extend_from_slice(&avail[..i]);
                        self.reader.consume(i + 1);
                        self.consumed += self.buf.len() as u64 + 1;
                        break;
                    }
                    Some(_) => {
                        self.done = true;
                        return Ok(None);
                    }
                    None => {
                        let n = avail.len();
                        self.buf.extend_from_slice(avail);
                        self.reader.consume(n);
                        if self.buf.len() as u64 > MAX_LINE {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                format!("a line longer than {MAX_LINE} bytes"),
                            ));
                        }
                    }
                }
            }
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
        std::fs::write(&path, b"one\ntwo\nthr\0\0\0\nfour\n\0\0").unwrap();
        let mut padded = LogLines::open(&path).unwrap();
        assert_eq!(padded.next_line().unwrap(), Some(&b"one"[..]));
        assert_eq!(padded.next_line().unwrap(), Some(&b"two"[..]));
        assert_eq!(padded.next_line().unwrap(), None);
        assert_eq!(padded.consumed(), 8);
    }
}
