//! Verification of the live log or of an export, with only the audit public key.
//!
//! Checks, in order, for every record line: it parses; it is byte-identical to its canonical
//! serialization; its sequence number follows the previous one; its `prev_hash` is the
//! previous record's hash; its own hash is right. Then every checkpoint: its Ed25519
//! signature is valid, it matches the record it covers, and the log reaches it (a log cut
//! short after a checkpoint fails). The first failure names the sequence number where the
//! chain breaks — for an edited, deleted or swapped record, that record's own number.

use std::collections::BTreeMap;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;

use super::export::{attest_message, Attestation, ExportHeader};
use super::lines::LogLines;
use super::record::{AuditRecord, Checkpoint, GENESIS_HASH};
use super::{checkpoints_path, log_path};
use crate::keys::AuditVerifier;
use crate::progress::{Progress, Silent, Unit};

mod shared;
pub use shared::{verify_exports, ChainCheck};

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    /// Records checked.
    pub records: u64,
    /// First sequence number seen.
    pub first_seq: Option<u64>,
    /// Last sequence number seen.
    pub last_seq: Option<u64>,
    /// Checkpoints whose signature and record matched.
    pub checkpoints: u64,
    /// Highest sequence number anchored by a signed checkpoint.
    pub last_checkpoint: Option<u64>,
    /// Whether the input was a filtered export (gaps allowed; every record still bound to
    /// the export's signature).
    pub filtered: bool,
    /// For an export: the log's head sequence its signature covers.
    pub signed_head: Option<u64>,
    /// Hash of the last record checked.
    pub last_hash: Option<String>,
    /// Bytes of the log read (a live log: its length when the verification began).
    pub bytes: u64,
}

/// The first place the log fails verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit verification failed at sequence {seq}: {reason}")]
pub struct VerifyFailure {
    /// The first bad sequence number.
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

/// Said when no signature verifies with the public key given.
const WRONG_KEY: &str = "no signature verifies with this public key: it is not the key that signed this log (compare it with the copy you pinned, and with `credbroker audit public-key`), or every signature was forged";

fn fail(seq: u64, reason: impl Into<String>) -> VerifyFailure {
    VerifyFailure {
        seq,
        reason: reason.into(),
    }
}

struct Chain<'a> {
    verifier: &'a AuditVerifier,
    /// The replica whose chain this is (a shared store's); every record must name it.
    replica: Option<u32>,
    contiguous: bool,
    /// For the live log: how many records at its end, or between two checkpoints, may lack
    /// a signed checkpoint.
    max_unanchored: Option<u64>,
    /// The last checkpointed sequence met so far (0 at genesis; `None` when the chain is
    /// read from a checkpoint on, as at start-up).
    last_anchor: Option<u64>,
    expected: Option<u64>,
    prev_seq: Option<u64>,
    prev_hash: String,
    anchors: BTreeMap<u64, String>,
    summary: VerifySummary,
}

impl<'a> Chain<'a> {
    fn new(verifier: &'a AuditVerifier, contiguous: bool) -> Self {
        Chain {
            verifier,
            replica: None,
            contiguous,
            max_unanchored: None,
            last_anchor: Some(0),
            expected: if contiguous { Some(1) } else { None },
            prev_seq: None,
            prev_hash: GENESIS_HASH.to_owned(),
            anchors: BTreeMap::new(),
            summary: VerifySummary {
                records: 0,
                first_seq: None,
                last_seq: None,
                checkpoints: 0,
                last_checkpoint: None,
                filtered: !contiguous,
                signed_head: None,
                last_hash: None,
                bytes: 0,
            },
        }
    }

    fn next_seq(&self) -> u64 {
        self.prev_seq.map_or(self.expected.unwrap_or(1), |s| s + 1)
    }

    fn record(&mut self, line: &[u8]) -> Result<(), VerifyFailure> {
        self.record_parsed(line).map(|_| ())
    }

    /// Checks the next record line; the record, once it passed.
    fn record_parsed(&mut self, line: &[u8]) -> Result<AuditRecord, VerifyFailure> {
        let here = self.next_seq();
        let text = std::str::from_utf8(line).map_err(|_| fail(here, "record is not UTF-8"))?;
        let rec: AuditRecord =
            serde_json::from_str(text).map_err(|_| fail(here, "record does not parse"))?;
        if rec.to_line() != text {
            return Err(fail(here, "record is not in canonical form (altered)"));
        }
        if rec.replica != self.replica {
            return Err(fail(
                here,
                format!(
                    "record names replica {}, not this chain's {} (moved between chains)",
                    rec.replica.map_or("none".into(), |r| r.to_string()),
                    self.replica.map_or("none".into(), |r| r.to_string())
                ),
            ));
        }
        let must_follow = self.contiguous || self.prev_seq.is_some_and(|p| rec.seq <= p);
        if must_follow && rec.seq != here {
            return Err(fail(
                here,
                format!(
                    "expected sequence {here}, found {} (record missing or out of order)",
                    rec.seq
                ),
            ));
        }
        let consecutive = match self.prev_seq {
            Some(p) => rec.seq == p + 1,
            None => rec.seq == 1,
        };
        if consecutive && rec.prev_hash != self.prev_hash {
            return Err(fail(
                rec.seq,
                "prev_hash does not match the previous record",
            ));
        }
        // From the canonical line itself (it is the canonical form, checked above): one
        // serialization per record, not two.
        let computed =
            AuditRecord::hash_of_line(text, &rec.hash).unwrap_or_else(|| rec.compute_hash());
        if computed != rec.hash {
            return Err(fail(
                rec.seq,
                "record hash does not match its content (altered)",
            ));
        }
        if let Some(anchor) = self.anchors.get(&rec.seq) {
            if *anchor != rec.hash {
                return Err(fail(rec.seq, "record differs from the signed checkpoint"));
            }
            // The writer never leaves more than `max_unanchored` records between two
            // checkpoints either: a longer stretch was rewritten and signed over later (a
            // forensic start on a forged log), and nothing in it is proven.
            if let Some(max) = self.max_unanchored {
                if let Some(prev) = self.last_anchor.filter(|p| rec.seq - p > max) {
                    return Err(fail(
                        prev + 1,
                        format!(
                            "records {}..{} went without a signed checkpoint for longer than the writer allows ({max}): they were signed only after the fact",
                            prev + 1,
                            rec.seq
                        ),
                    ));
                }
            }
            self.last_anchor = Some(rec.seq);
            self.summary.checkpoints += 1;
        }
        self.summary.records += 1;
        self.summary.first_seq.get_or_insert(rec.seq);
        self.summary.last_seq = Some(rec.seq);
        self.prev_seq = Some(rec.seq);
        self.prev_hash.clone_from(&rec.hash);
        Ok(rec)
    }

    fn checkpoints(&mut self, cps: &[Checkpoint]) -> Result<(), VerifyFailure> {
        // A key that verifies none of them is the wrong key, not evidence of forgery:
        // tell the two apart before naming a forged checkpoint.
        if let Some(first) = cps.first() {
            let genuine = |cp: &Checkpoint| {
                B64.decode(&cp.signature).is_ok_and(|sig| {
                    self.verifier.verify(
                        &Checkpoint::signed_message(cp.seq, &cp.hash, &cp.time),
                        &sig,
                    )
                })
            };
            if !cps.iter().any(genuine) {
                return Err(fail(first.seq, WRONG_KEY));
            }
        }
        let mut last = 0;
        for cp in cps {
            let sig = B64
                .decode(&cp.signature)
                .map_err(|_| fail(cp.seq, "checkpoint signature is not base64"))?;
            let msg = Checkpoint::signed_message(cp.seq, &cp.hash, &cp.time);
            if !self.verifier.verify(&msg, &sig) {
                return Err(fail(cp.seq, "checkpoint signature is invalid"));
            }
            if cp.seq < last {
                return Err(fail(cp.seq, "checkpoints out of order"));
            }
            last = cp.seq;
            self.anchors.insert(cp.seq, cp.hash.clone());
        }
        self.summary.last_checkpoint = cps.last().map(|c| c.seq);
        Ok(())
    }

    fn finish(self) -> Result<VerifySummary, VerifyFailure> {
        if self.contiguous {
            let last = self.prev_seq.unwrap_or(0);
            if let Some((&cp_seq, _)) = self.anchors.range(last + 1..).next() {
                return Err(fail(
                    last + 1,
                    format!("log ends at {last} but a signed checkpoint covers {cp_seq} (records removed)"),
                ));
            }
            // A chain alone proves nothing: whoever can write the file can recompute every
            // hash. Only the records up to a signed checkpoint are proven; the writer signs
            // one at least every `max_unanchored` records, so a longer unsigned tail means
            // checkpoints were removed.
            let anchored = self
                .anchors
                .range(..=last)
                .next_back()
                .map_or(0, |(s, _)| *s);
            if let Some(max) = self.max_unanchored {
                if last - anchored > max {
                    return Err(fail(
                        anchored + 1,
                        format!(
                            "records {}..{last} are not covered by a signed checkpoint; the writer signs one at least every {max} records (checkpoints removed, or the log rewritten)",
                            anchored + 1
                        ),
                    ));
                }
            }
        }
        let mut summary = self.summary;
        summary.last_hash =
            (!self.prev_hash.is_empty() && summary.records > 0).then_some(self.prev_hash);
        Ok(summary)
    }
}

/// Splits complete lines; bytes after the last newline (an append in progress) are ignored.
pub fn complete_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    bytes[..end]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
}

fn parse_checkpoints(bytes: &[u8]) -> Result<Vec<Checkpoint>, VerifyFailure> {
    complete_lines(bytes)
        .map(|l| {
            serde_json::from_slice::<Checkpoint>(l)
                .map_err(|_| fail(0, "a checkpoint line does not parse"))
        })
        .collect()
}

fn read_checkpoints(audit_dir: &Path) -> Result<Vec<Checkpoint>, VerifyFailure> {
    match read_to_length(&checkpoints_path(audit_dir)) {
        Ok(b) => parse_checkpoints(&b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(fail(0, format!("cannot read checkpoints: {e}"))),
    }
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
    verify_log_visit(
        audit_dir,
        verifier,
        max_unanchored,
        None,
        progress,
        &mut |_| {},
    )
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
    // Checkpoints first: a checkpoint written after we read the log would otherwise look
    // like a truncated log.
    let mut cps = read_checkpoints(audit_dir)?;
    let path = log_path(audit_dir);
    let unreadable = |e: std::io::Error| fail(0, format!("cannot read audit log: {e}"));
    let mut lines = match upto {
        Some((len, last_seq)) => {
            cps.retain(|cp| cp.seq <= last_seq);
            LogLines::open_to(&path, len)
        }
        None => LogLines::open(&path),
    }
    .map_err(unreadable)?;
    let mut chain = Chain::new(verifier, true);
    chain.max_unanchored = Some(max_unanchored);
    chain.checkpoints(&cps)?;
    progress.begin("verifying the audit log", lines.len(), Unit::Bytes);
    let (mut pending, mut count) = (0u64, 0u64);
    let result = (|| {
        while let Some(line) = lines
            .next_line()
            .map_err(|e| fail(chain.next_seq(), format!("cannot read audit log: {e}")))?
        {
            pending += line.len() as u64 + 1;
            let rec = chain.record_parsed(line)?;
            visit(&rec);
            count += 1;
            if count % 4096 == 0 {
                progress.advance(std::mem::take(&mut pending));
            }
        }
        Ok(())
    })();
    progress.advance(pending);
    progress.end();
    result?;
    let mut summary = chain.finish()?;
    summary.bytes = lines.len();
    Ok(summary)
}

/// The start-up check: the last signed checkpoint is genuine, the record it covers is in
/// the log with that hash, and the chain runs unbroken from it to the end, within the
/// unsigned tail the writer may leave. Reads only that tail, whatever the log's size.
///
/// # Errors
/// The first [`VerifyFailure`].
pub fn verify_since_last_checkpoint(
    audit_dir: &Path,
    verifier: &AuditVerifier,
    max_unanchored: u64,
) -> Result<VerifySummary, VerifyFailure> {
    let cps = read_checkpoints(audit_dir)?;
    let Some(last) = cps.last() else {
        // No checkpoint at all: only a log shorter than the unsigned tail is acceptable,
        // and it is short enough to read whole.
        return verify_log(audit_dir, verifier, max_unanchored);
    };
    let mut chain = Chain::new(verifier, true);
    chain.max_unanchored = Some(max_unanchored);
    chain.expected = Some(last.seq);
    chain.last_anchor = None;
    chain.checkpoints(std::slice::from_ref(last))?;
    let bytes = read_from_seq(&log_path(audit_dir), last.seq)?;
    for line in complete_lines(&bytes) {
        chain.record(line)?;
    }
    if chain.summary.first_seq != Some(last.seq) {
        return Err(fail(
            last.seq,
            "the record the last signed checkpoint covers is not in the log (records removed)",
        ));
    }
    chain.finish()
}

/// The file's bytes up to the length it has now: appends made while it is read are left for
/// the next verification, and a device standing in for the file (a test's `/dev/full`) reads
/// as empty rather than without end.
fn read_to_length(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The log's bytes from the line holding record `seq` to the end, found by reading
/// backwards in growing windows (records are far below 64 KiB).
fn read_from_seq(path: &Path, seq: u64) -> Result<Vec<u8>, VerifyFailure> {
    use std::io::{Read, Seek, SeekFrom};
    #[derive(Deserialize)]
    struct SeqOnly {
        seq: u64,
    }
    let unreadable = |e: std::io::Error| fail(0, format!("cannot read audit log: {e}"));
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let len = file.metadata().map_err(unreadable)?.len();
    let mut window = 256 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start)).map_err(unreadable)?;
        let mut buf = Vec::new();
        (&mut file)
            .take(len - start)
            .read_to_end(&mut buf)
            .map_err(unreadable)?;
        // The first line may be cut by the window; skip it unless the window is the file.
        let from = if start == 0 {
            0
        } else {
            buf.iter()
                .position(|b| *b == b'\n')
                .map_or(buf.len(), |p| p + 1)
        };
        let mut offset = from;
        let mut covered = start == 0;
        for line in buf[from..].split_inclusive(|b| *b == b'\n') {
            let at = serde_json::from_slice::<SeqOnly>(line.strip_suffix(b"\n").unwrap_or(line))
                .map(|r| r.seq)
                .ok();
            match at {
                Some(s) if s == seq => return Ok(buf.split_off(offset)),
                Some(s) if s < seq => covered = true,
                _ => {}
            }
            offset += line.len();
        }
        if covered {
            // The window reaches back past `seq` and the record is not there.
            return Ok(Vec::new());
        }
        window = window.saturating_mul(4);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderLine {
    export: ExportHeader,
    signature: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointLine {
    checkpoint: Checkpoint,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttestLine {
    attest: Attestation,
}

/// Whether any attestation line of an export verifies with `verifier`, taking each record's
/// hash as its line states it: this only tells a wrong key from a forged header.
fn any_attestation_verifies(bytes: &[u8], export_id: &str, verifier: &AuditVerifier) -> bool {
    #[derive(Deserialize)]
    struct SeqHash {
        seq: u64,
        hash: String,
    }
    let hashes: BTreeMap<u64, String> = complete_lines(bytes)
        .filter(|l| l.starts_with(b"{\"seq\":"))
        .filter_map(|l| serde_json::from_slice::<SeqHash>(l).ok())
        .map(|r| (r.seq, r.hash))
        .collect();
    complete_lines(bytes)
        .filter(|l| l.starts_with(b"{\"attest\":"))
        .filter_map(|l| serde_json::from_slice::<AttestLine>(l).ok())
        .any(|a| {
            let (Some(hash), Ok(sig)) =
                (hashes.get(&a.attest.seq), B64.decode(&a.attest.signature))
            else {
                return false;
            };
            verifier.verify(
                &attest_message(export_id, a.attest.prev, a.attest.seq, hash),
                &sig,
            )
        })
}

/// Verifies an export file produced by `credbroker audit export`: the signed header (filter,
/// range, count, head), every record against its own hash, the chain (whole for an unfiltered
/// export) and its attestation, the checkpoints.
///
/// # Errors
/// The first [`VerifyFailure`], naming the sequence.
pub fn verify_export(
    bytes: &[u8],
    verifier: &AuditVerifier,
) -> Result<VerifySummary, VerifyFailure> {
    let mut lines = complete_lines(bytes).peekable();
    let first = lines
        .next()
        .ok_or_else(|| fail(0, "export does not start with an export header line"))?;
    let header: HeaderLine = serde_json::from_slice(first).map_err(|_| {
        let v1 = serde_json::from_slice::<serde_json::Value>(first)
            .is_ok_and(|v| v.pointer("/export/version") == Some(&serde_json::json!(1)));
        fail(
            0,
            if v1 {
                "export format 1 cannot prove its filter or its records: export again with this release"
            } else {
                "export does not start with a signed export header line"
            },
        )
    })?;
    let h = &header.export;
    let sig = B64
        .decode(&header.signature)
        .map_err(|_| fail(0, "export header signature is not base64"))?;
    if h.version != 2 || !verifier.verify(&h.signed_message(), &sig) {
        if h.version == 2 && !any_attestation_verifies(bytes, &h.export_id, verifier) {
            return Err(fail(0, WRONG_KEY));
        }
        return Err(fail(
            0,
            "export header signature is invalid (the header — filter, range, count — was altered, or another key signed it)",
        ));
    }
    let contiguous = !h.filtered;
    let replica = h.replica;
    let mut records = Vec::new();
    let mut attestations = BTreeMap::new();
    let mut cps = Vec::new();
    for line in lines {
        if line.starts_with(b"{\"checkpoint\":") {
            let cp: CheckpointLine = serde_json::from_slice(line)
                .map_err(|_| fail(0, "a checkpoint line does not parse"))?;
            cps.push(cp.checkpoint);
        } else if line.starts_with(b"{\"attest\":") {
            let a: AttestLine = serde_json::from_slice(line)
                .map_err(|_| fail(0, "an attestation line does not parse"))?;
            attestations.insert(a.attest.seq, a.attest);
        } else {
            if !cps.is_empty() || !attestations.is_empty() {
                return Err(fail(
                    0,
                    "record found after the attestation or checkpoint section",
                ));
            }
            records.push(line);
        }
    }
    let mut chain = Chain::new(verifier, contiguous);
    chain.replica = replica;
    chain.checkpoints(&cps)?;
    let mut prev_exported = 0u64;
    for line in records {
        chain.record(line)?;
        let (seq, hash) = (chain.prev_seq.unwrap_or(0), chain.prev_hash.clone());
        let a = attestations
            .get(&seq)
            .ok_or_else(|| fail(seq, "record is not attested by the export (inserted)"))?;
        let sig = B64
            .decode(&a.signature)
            .map_err(|_| fail(seq, "attestation is not base64"))?;
        if !verifier.verify(&attest_message(&h.export_id, a.prev, seq, &hash), &sig) {
            return Err(fail(
                seq,
                "record differs from what the export signed (altered or inserted)",
            ));
        }
        if a.prev != prev_exported {
            return Err(fail(
                a.prev,
                format!(
                    "exported record {} is missing (deleted from the export)",
                    a.prev
                ),
            ));
        }
        prev_exported = seq;
    }
    if prev_exported != h.last_seq || chain.summary.records != h.records {
        return Err(fail(
            h.last_seq,
            format!(
                "the export signed {} records up to {}, found {} up to {prev_exported} (records removed from the end)",
                h.records, h.last_seq, chain.summary.records
            ),
        ));
    }
    if contiguous
        && h.records > 0
        && (prev_exported != h.head_seq || chain.prev_hash != h.head_hash)
    {
        return Err(fail(
            h.head_seq,
            "the last record is not the log head the export signed (records rewritten after the last checkpoint)",
        ));
    }
    let mut summary = chain.finish()?;
    summary.signed_head = Some(h.head_seq);
    Ok(summary)
}
