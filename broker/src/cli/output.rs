//! How commands print: a table for people (the default on a terminal), JSON for programs
//! (the default when standard output is not a terminal, and with `--output json`).
//!
//! The JSON is the daemon's answer as it is — its field names are the API's, documented in
//! `GET /v1/openapi.json` — so scripts written against the API and against the CLI read the
//! same thing. Tables show what fits on a line: the scalar fields of each record (lists of
//! scalars joined with commas); nested objects are left to `--output json`.

/// Shared with the providers' quoting of upstream text.
pub use credbroker_providers::is_bidi_control;
use std::fmt::Write as _;
use std::io::IsTerminal;

use clap::ValueEnum;
use serde_json::Value;

/// The output format of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// The answer as JSON, field names as in the API (stable).
    Json,
}

impl Output {
    /// `chosen`, or the default: a table on a terminal, JSON otherwise.
    pub fn or_default(chosen: Option<Output>) -> Output {
        chosen.unwrap_or_else(|| {
            if std::io::stdout().is_terminal() {
                Output::Table
            } else {
                Output::Json
            }
        })
    }

    /// Whether progress bars may be drawn: on a terminal (standard error), for people.
    pub fn shows_progress(chosen: Option<Output>) -> bool {
        chosen != Some(Output::Json) && std::io::stderr().is_terminal()
    }
}

/// Writes a file an operator asked for (an audit export, a report) as only its owner may
/// read it (0600; it names tenants, actors and token fingerprints) and whole or not at all:
/// `write` fills a new temporary file beside `path` (never following a link), which is
/// synced and renamed over `path` only when it succeeded. A failed run leaves any earlier
/// file at `path` as it was. A link at `path` is replaced, never written through.
///
/// Written as it is, with no file to replace: one of this process's own descriptors as a
/// shell names them (`/dev/stdout`, `/dev/stderr`, `/dev/fd/N` from `>(…)`,
/// `/proc/self/fd/N`; appended to, so `>> FILE` keeps what FILE held), or a pipe or
/// character device that is not a link. A pipe must belong to the caller: one another local
/// user planted where the file goes (a FIFO in `/tmp`) would hand them the output, or hold
/// the command (a pipe is opened only once a reader is there). A block device is never
/// written.
///
/// # Errors
/// On I/O failure, a refused pipe, socket or device, or the first error of `write` (the
/// temporary file is then removed).
pub fn write_private<T>(
    path: &std::path::Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<T, String>,
) -> Result<T, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = |e: std::io::Error| format!("{}: {e}", path.display());
    let own = is_own_descriptor(path);
    let euid = rustix::process::geteuid().as_raw();
    let refused = |why| format!("{}: {why}", path.display());
    let special = match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() && !m.is_dir() && !m.is_symlink() => Some(m),
        _ => None,
    };
    if own || special.is_some() {
        // Judged before it is opened (opening another user's pipe would wait for its
        // reader), and again on what was opened: the name may have been swapped meanwhile.
        if let Some(m) = &special {
            written_as_is(m, own, euid).map_err(refused)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .append(own)
            .custom_flags(if own { 0 } else { libc::O_NOFOLLOW })
            .open(path)
            .map_err(shown)?;
        let m = f.metadata().map_err(shown)?;
        written_as_is(&m, own, euid).map_err(refused)?;
        return write(&mut f);
    }
    let name = path
        .file_name()
        .ok_or_else(|| format!("{}: not a file name", path.display()))?;
    // Not guessable: another local user cannot plant the name first (in /tmp, say).
    let suffix = crate::admin::random_alphanumeric(12).map_err(|e| e.message)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{suffix}.partial"));
    let tmp = path.with_file_name(tmp_name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    let written = write(&mut f).and_then(|t| f.sync_all().map(|()| t).map_err(shown));
    drop(f);
    let done = written.and_then(|t| std::fs::rename(&tmp, path).map(|()| t).map_err(shown));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if done.is_ok() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    done
}

/// Whether `path` names one of this process's own descriptors, as a shell passes them.
fn is_own_descriptor(path: &std::path::Path) -> bool {
    let p = std::path::Path::new;
    let numbered = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    path == p("/dev/stdout")
        || path == p("/dev/stderr")
        || (numbered
            && [p("/dev/fd"), p("/proc/self/fd")].contains(&path.parent().unwrap_or(p(""))))
}

/// Whether an opened output (`m`) may be written as it is: not a block device, and a pipe
/// or socket only when it is one of the process's `own` descriptors or belongs to `euid`.
fn written_as_is(m: &std::fs::Metadata, own: bool, euid: u32) -> Result<(), &'static str> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let t = m.file_type();
    if t.is_block_device() {
        return Err("a block device is never written: give a file name, a pipe or /dev/stdout");
    }
    if !own && (t.is_file() || t.is_dir()) {
        return Err("it was replaced while it was opened: run the command again");
    }
    if !own && (t.is_fifo() || t.is_socket()) && m.uid() != euid {
        return Err("a pipe or socket that belongs to another user: it would hand them the output. Give a file name, or a pipe of your own");
    }
    Ok(())
}

/// Prints `value` in `format` on standard output.
pub fn print(value: &Value, format: Output) {
    match format {
        Output::Json => println!("{}", json_pretty(value).unwrap_or_default()),
        Output::Table => print!("{}", render(value)),
    }
}

/// `value` as pretty JSON that is safe on a terminal: serde_json escapes only U+0000–U+001F,
/// so DEL, the C1 controls (U+009B opens an escape sequence on some terminals) and the
/// bidirectional overrides and isolates are written `\uXXXX` too. The same JSON, read back.
///
/// # Errors
/// When `value` cannot be serialized.
pub fn json_pretty<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, String> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut out,
        TerminalSafe(serde_json::ser::PrettyFormatter::new()),
    );
    value.serialize(&mut ser).map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// `value` as one line of JSON, escaped as [`json_pretty`] says, in a buffer wiped when
/// dropped (a credential a helper prints for a script: `client token --json`,
/// `aws-credential-process`).
///
/// # Errors
/// When `value` cannot be serialized.
pub fn json_line<T: serde::Serialize + ?Sized>(
    value: &T,
) -> Result<zeroize::Zeroizing<String>, String> {
    // Room for any credential up front: a buffer that grows leaves unwiped copies behind.
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(64 * 1024));
    let mut ser = serde_json::Serializer::with_formatter(
        &mut *out,
        TerminalSafe(serde_json::ser::CompactFormatter),
    );
    value.serialize(&mut ser).map_err(|e| e.to_string())?;
    let text = std::str::from_utf8(&out).map_err(|e| e.to_string())?;
    Ok(zeroize::Zeroizing::new(text.to_owned()))
}

/// A serde_json formatter (pretty or compact), escaping what [`json_pretty`] says.
struct TerminalSafe<F>(F);

impl<F: serde_json::ser::Formatter> serde_json::ser::Formatter for TerminalSafe<F> {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if c.is_control() || is_bidi_control(c) {
                writer.write_all(&fragment.as_bytes()[start..i])?;
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
                start = i + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object_value(w)
    }
}

/// The widest a table cell gets before it is clipped.
const MAX_CELL: usize = 48;

/// Fields an answer carries about the request, printed under the table, not as data.
const RECEIPT: [&str; 2] = ["audit_id", "request_id"];

/// The human form of an answer: a list as a table, a record as `field: value` lines.
pub fn render(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Array(items) => table(&mut out, items),
        Value::Object(map) => {
            let lists: Vec<(&String, &Vec<Value>)> = map
                .iter()
                .filter_map(|(k, v)| match v {
                    Value::Array(a) if a.iter().all(Value::is_object) => Some((k, a)),
                    _ => None,
                })
                .collect();
            let only_receipt_besides = map
                .iter()
                .all(|(k, v)| RECEIPT.contains(&k.as_str()) || matches!(v, Value::Array(_)));
            if lists.len() == 1 && only_receipt_besides {
                table(&mut out, lists[0].1);
            } else {
                fields(&mut out, "", value);
            }
            let receipt: Vec<String> = RECEIPT
                .iter()
                .filter_map(|k| {
                    map.get(*k)
                        .and_then(Value::as_str)
                        .map(|v| format!("{k} {v}"))
                })
                .collect();
            if !receipt.is_empty() && lists.len() == 1 && only_receipt_besides {
                let _ = writeln!(out, "({})", sanitize(&receipt.join(", ")));
            }
        }
        other => {
            let _ = writeln!(out, "{}", sanitize(&scalar(other)));
        }
    }
    out
}

/// A scalar's text; a list of scalars joined with commas; `None` for anything nested.
fn cell(v: &Value) -> Option<String> {
    match v {
        Value::Array(a) if a.iter().all(|x| !x.is_array() && !x.is_object()) => {
            Some(a.iter().map(scalar).collect::<Vec<_>>().join(","))
        }
        Value::Array(_) | Value::Object(_) => None,
        other => Some(scalar(other)),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Clips to [`MAX_CELL`] characters and replaces control characters (a value from the
/// store cannot move the cursor or rewrite the terminal).
fn clip(s: &str) -> String {
    let clean = sanitize(s);
    if clean.chars().count() > MAX_CELL {
        let mut t: String = clean.chars().take(MAX_CELL - 1).collect();
        t.push('…');
        t
    } else {
        clean
    }
}

/// `s` safe to print on a terminal: control characters (escape sequences, carriage
/// returns) and the bidirectional overrides and isolates (which can reorder what a line
/// shows) become spaces. Everything a command prints from the broker, a file or a
/// certificate goes through it.
pub fn sanitize(s: &str) -> String {
    sanitize_keeping(s, false)
}

/// [`sanitize`] for a text of several lines (an error naming a file's problems, a key file):
/// line breaks are kept, every other control character replaced.
pub fn sanitize_lines(s: &str) -> String {
    sanitize_keeping(s, true)
}

fn sanitize_keeping(s: &str, lines: bool) -> String {
    s.chars()
        .map(|c| {
            if (c.is_control() && !(lines && c == '\n')) || is_bidi_control(c) {
                ' '
            } else {
                c
            }
        })
        .collect()
}

fn table(out: &mut String, items: &[Value]) {
    if items.is_empty() {
        out.push_str("(none)\n");
        return;
    }
    let mut columns: Vec<&str> = Vec::new();
    let mut nested = false;
    for item in items {
        if let Value::Object(map) = item {
            for (k, v) in map {
                if cell(v).is_some() {
                    if !columns.contains(&k.as_str()) {
                        columns.push(k);
                    }
                } else {
                    nested = true;
                }
            }
        }
    }
    // The record's id first, as people look rows up by it.
    if let Some(i) = columns.iter().position(|c| *c == "id") {
        let id = columns.remove(i);
        columns.insert(0, id);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            columns
                .iter()
                .map(|c| clip(&item.get(*c).and_then(cell).unwrap_or_else(|| "-".into())))
                .collect()
        })
        .collect();
    let headers: Vec<String> = columns.iter().map(|c| clip(&c.to_uppercase())).collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain(std::iter::once(headers[i].chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |out: &mut String, cells: &[String]| {
        let mut text = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                text.push_str(c);
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(out, &headers);
    for r in &rows {
        line(out, r);
    }
    if nested {
        out.push_str("(nested fields: --output json)\n");
    }
}

/// `field: value` lines, nested objects as `parent.field`, lists of records as tables.
fn fields(out: &mut String, prefix: &str, value: &Value) {
    let Value::Object(map) = value else {
        let _ = writeln!(out, "{}: {}", sanitize(prefix), clip(&scalar(value)));
        return;
    };
    for (k, v) in map {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Object(m) if m.is_empty() => {
                let _ = writeln!(out, "{}: -", sanitize(&name));
            }
            Value::Object(_) => fields(out, &name, v),
            Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_object) => {
                let _ = writeln!(out, "{}:", sanitize(&name));
                let mut sub = String::new();
                table(&mut sub, a);
                for l in sub.lines() {
                    let _ = writeln!(out, "  {l}");
                }
            }
            other => {
                let text = cell(other).unwrap_or_else(|| other.to_string());
                let _ = writeln!(out, "{}: {}", sanitize(&name), clip_line(&text));
            }
        }
    }
}

/// A field's value on one line (no clipping: a record shown alone may be long, but no
/// control character reaches the terminal).
fn clip_line(s: &str) -> String {
    sanitize(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_output_escapes_what_a_terminal_would_act_on() {
        let v = json!({
            "purpose": "a\u{1b}[2Jb\u{7f}c\u{9b}31md\u{202e}e\u{2066}f",
            "plain": "üñï ✓",
            "nested": ["\u{85}"],
        });
        let text = json_pretty(&v).unwrap();
        assert!(
            !text
                .chars()
                .any(|c| (c.is_control() && c != '\n') || is_bidi_control(c)),
            "{text:?}"
        );
        for escaped in [
            "\\u001b", "\\u007f", "\\u009b", "\\u202e", "\\u2066", "\\u0085",
        ] {
            assert!(text.contains(escaped), "{escaped} in {text}");
        }
        assert!(text.contains("üñï ✓"), "{text}");
        // The same JSON, read back; and pretty as before.
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
        let plain = json!({"a": [1, {"b": "c"}]});
        assert_eq!(
            json_pretty(&plain).unwrap(),
            serde_json::to_string_pretty(&plain).unwrap()
        );
    }

    #[test]
    fn texts_of_several_lines_keep_their_lines_only() {
        assert_eq!(
            sanitize_lines("line 1\nkey \u{1b}]0;title\u{7}\r\u{202e}x\n"),
            "line 1\nkey  ]0;title   x\n"
        );
        assert_eq!(sanitize("a\nb"), "a b");
    }

    #[test]
    fn a_list_answer_is_a_table_with_its_receipt() {
        let v = json!({
            "tenants": [
                {"id": "t1", "name": "Acme", "status": "active"},
                {"id": "t2", "name": "Globex\u{1b}[2J", "status": "disabled", "extra": {"a": 1}},
            ],
            "audit_id": "aud_1",
            "request_id": "req_1",
        });
        let text = render(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID  NAME        STATUS");
        assert_eq!(lines[1], "t1  Acme        active");
        assert!(lines[2].starts_with("t2  Globex [2J  disabled"), "{text}");
        assert!(!text.contains('\u{1b}'));
        assert_eq!(sanitize("a\u{202e}b\rc\u{2066}"), "a b c ");
        assert!(text.contains("(nested fields: --output json)"));
        assert!(text.contains("(audit_id aud_1, request_id req_1)"));
    }

    #[test]
    fn a_record_is_fields_and_an_empty_list_says_none() {
        let v =
            json!({"binding": {"id": "b1", "governance": {"owner": "team"}, "tags": ["a", "b"]}});
        let text = render(&v);
        assert!(text.contains("binding.id: b1\n"), "{text}");
        assert!(text.contains("binding.governance.owner: team\n"), "{text}");
        assert!(text.contains("binding.tags: a,b\n"), "{text}");
        assert_eq!(render(&json!({"workers": []})), "(none)\n");
    }

    #[test]
    fn private_files_are_owner_only_and_whole_or_untouched() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.jsonl");
        super::write_private(&path, |f| {
            std::io::Write::write_all(f, b"first").map_err(|e| e.to_string())
        })
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        // A failed run leaves the earlier file and no temporary one.
        let err = super::write_private(&path, |f| {
            std::io::Write::write_all(f, b"half").map_err(|e| e.to_string())?;
            Err::<(), _>("verification failed".to_owned())
        });
        assert_eq!(err, Err("verification failed".to_owned()));
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A link where the file goes is replaced, never written through.
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        super::write_private(&link, |f| {
            std::io::Write::write_all(f, b"new").map_err(|e| e.to_string())
        })
        .unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert_eq!(std::fs::read(&link).unwrap(), b"new");
        // A pipe (`/dev/stdout`, `>(…)`, a FIFO) is written, not replaced.
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        super::write_private(&fifo, |f| {
            std::io::Write::write_all(f, b"piped").map_err(|e| e.to_string())
        })
        .unwrap();
        assert_eq!(reader.join().unwrap(), b"piped");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        // The same pipe, had another user planted it (in /tmp, say), is not written: its
        // reader would get the output. A link to it is replaced, not followed.
        let euid = rustix::process::geteuid().as_raw();
        let m = std::fs::metadata(&fifo).unwrap();
        assert_eq!(super::written_as_is(&m, false, euid), Ok(()));
        assert!(super::written_as_is(&m, false, euid + 1).is_err());
        assert_eq!(super::written_as_is(&m, true, euid + 1), Ok(()));
        let link = dir.path().join("to-fifo.jsonl");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        super::write_private(&link, |f| {
            std::io::Write::write_all(f, b"not piped").map_err(|e| e.to_string())
        })
        .unwrap();
        assert_eq!(std::fs::read(&link).unwrap(), b"not piped");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        if euid == 0 {
            use std::os::unix::fs::OpenOptionsExt;
            std::os::unix::fs::chown(&fifo, Some(65534), Some(65534)).unwrap();
            // Its reader is there, as an attacker's would be (held open read-write, so
            // that no open here waits): nothing is written to it.
            let reader = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .unwrap();
            let err = super::write_private(&fifo, |f| {
                std::io::Write::write_all(f, b"leaked").map_err(|e| e.to_string())
            })
            .unwrap_err();
            assert!(err.contains("belongs to another user"), "{err}");
            let mut got = [0u8; 16];
            let read = std::io::Read::read(&mut &reader, &mut got);
            assert!(
                read.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
                "{read:?}"
            );
        }
        // One of the process's own descriptors is appended to (`>> FILE` keeps FILE's
        // start), as a shell would: through /proc/self/fd.
        {
            use std::os::fd::AsRawFd;
            let kept = dir.path().join("kept.jsonl");
            std::fs::write(&kept, b"earlier export\n").unwrap();
            let held = std::fs::OpenOptions::new()
                .append(true)
                .open(&kept)
                .unwrap();
            let own = std::path::PathBuf::from(format!("/proc/self/fd/{}", held.as_raw_fd()));
            super::write_private(&own, |f| {
                std::io::Write::write_all(f, b"new\n").map_err(|e| e.to_string())
            })
            .unwrap();
            assert_eq!(std::fs::read(&kept).unwrap(), b"earlier export\nnew\n");
        }
        // A regular file is never written in place unless it is one of the process's own
        // descriptors, and a block device never.
        let file = std::fs::metadata(&path).unwrap();
        assert!(super::written_as_is(&file, false, euid).is_err());
        assert_eq!(super::written_as_is(&file, true, euid), Ok(()));
        let block = std::fs::read_dir("/dev")
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .find(|m| m.file_type().is_block_device());
        if let Some(m) = block {
            assert!(super::written_as_is(&m, true, m.uid()).is_err());
        }
        assert!(super::is_own_descriptor(std::path::Path::new("/dev/fd/63")));
        assert!(super::is_own_descriptor(std::path::Path::new(
            "/dev/stdout"
        )));
        assert!(!super::is_own_descriptor(std::path::Path::new(
            "/dev/shm/x"
        )));
        assert!(!super::is_own_descriptor(std::path::Path::new(
            "/dev/fd/../shm/x"
        )));
        assert!(!super::is_own_descriptor(std::path::Path::new(
            "/dev/fd/.."
        )));
    }
}
