//! `credbroker audit export`: JSON lines an auditor can verify with the public key alone.
//!
//! Layout (version 2): one header line `{"export":{…},"signature":"…"}` — the filter, the
//! first and last exported sequence, the record count, the log's head at export time
//! (sequence and hash) and a random export id, signed with the audit key; the selected record
//! lines byte-for-byte as stored; one `{"attest":{"seq","prev","signature"}}` line per
//! exported record, signing (export id, previous exported sequence, sequence, hash); then
//! every checkpoint as `{"checkpoint":{…}}`. So in a filtered export too every record is
//! bound to a signature: altering one (even with its hash recomputed), inserting one,
//! deleting one or relabelling the export (filtered ↔ full, another tenant) is caught, naming
//! the sequence. The signed head closes the window after the last checkpoint: records up to
//! the export cannot be rewritten in it.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::lines::LogLines;
use super::record::{AuditRecord, Checkpoint, GENESIS_HASH};
use super::segments::{self, Line};
use crate::keys::AuditSigner;
use crate::model::now_rfc3339;
use crate::progress::{Progress, Unit};

/// Which records to export.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    /// Only records at or after this instant.
    pub since: Option<OffsetDateTime>,
    /// Only records before this instant.
    pub until: Option<OffsetDateTime>,
    /// Only records of this tenant.
    pub tenant: Option<String>,
}

impl ExportFilter {
    fn is_empty(&self) -> bool {
        self.since.is_none() && self.until.is_none() && self.tenant.is_none()
    }
}

/// The first line of an export (signed).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportHeader {
    /// Format version (2).
    pub version: u32,
    /// The replica whose chain this is, on a store several brokers share (absent for a
    /// single broker's file log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<u32>,
    /// For an export of several chains (a shared store): which file this document belongs
    /// to and where. Signed, so a document removed from the file, or taken from another
    /// export, is found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<ExportSet>,
    /// Random id binding the record attestations to this export.
    pub export_id: String,
    /// Whether records were filtered out.
    pub filtered: bool,
    /// Filter: since.
    pub since: Option<String>,
    /// Filter: until.
    pub until: Option<String>,
    /// Filter: tenant.
    pub tenant: Option<String>,
    /// When the export was made.
    pub exported_at: String,
    /// Records exported.
    pub records: u64,
    /// First exported sequence (0: none).
    pub first_seq: u64,
    /// Last exported sequence (0: none).
    pub last_seq: u64,
    /// The log's last sequence when it was exported.
    pub head_seq: u64,
    /// That record's hash.
    pub head_hash: String,
}

impl ExportHeader {
    /// The exact bytes the header signature covers.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut m = b"credbroker-audit-export/v2\n".to_vec();
        m.extend(serde_json::to_vec(self).unwrap_or_default());
        m
    }
}

/// The documents of one export file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSet {
    /// Random id shared by every document of the file.
    pub id: String,
    /// How many documents the file holds.
    pub documents: u32,
    /// This document's position, from 0.
    pub index: u32,
}

impl ExportSet {
    /// The sets of a file of `documents` documents, with a fresh random id.
    ///
    /// # Errors
    /// When the system CSPRNG fails.
    pub fn for_file(documents: u32) -> std::io::Result<Vec<ExportSet>> {
        let mut id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut id)
            .map_err(|_| std::io::Error::other("system CSPRNG failed"))?;
        let id = hex::encode(id);
        Ok((0..documents)
            .map(|index| ExportSet {
                id: id.clone(),
                documents,
                index,
            })
            .collect())
    }
}

/// The exact bytes a record attestation covers.
pub fn attest_message(export_id: &str, prev: u64, seq: u64, hash: &str) -> Vec<u8> {
    format!("credbroker-audit-export-record/v2\n{export_id}\n{prev}\n{seq}\n{hash}\n").into_bytes()
}

/// One record's attestation in an export.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// The record's sequence.
    pub seq: u64,
    /// The previous exported record's sequence (0 for the first).
    pub prev: u64,
    /// Ed25519 over [`attest_message`], base64.
    pub signature: String,
}

#[derive(Serialize)]
struct CheckpointLine<'a> {
    checkpoint: &'a Checkpoint,
}

#[derive(Serialize)]
struct HeaderLine<'a> {
    export: &'a ExportHeader,
    signature: String,
}

#[derive(Serialize)]
struct AttestLine<'a> {
    attest: &'a Attestation,
}

/// Record lines of one chain, in order, that can be read more than once: an export reads
/// them in three passes (what the header says, the records, their attestations) rather than
/// hold them, so its memory does not grow with the log.
pub trait LineSource {
    /// Calls `each` with every record line, in order.
    ///
    /// # Errors
    /// A read error, or the first error of `each`.
    fn each(&self, each: &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()>;
}

/// The record lines of the file log's segments, up to the bytes a verification read. Every
/// pass checks the chain again — each record's own hash, its link to the one before, and an
/// end at the head the verification reached — so a segment replaced between the verification
/// and a pass (or between two passes) fails the export instead of being signed.
pub struct FileLines {
    /// The audit directory.
    pub dir: std::path::PathBuf,
    /// How many bytes of its segments (what a verification read).
    pub bytes: u64,
    /// The sequence and hash the verification ended at (`None`: an empty log).
    pub head: Option<(u64, String)>,
}

/// What a pass needs of a record to check its link.
#[derive(Deserialize)]
struct Link {
    seq: u64,
    prev_hash: String,
    hash: String,
}

impl LineSource for FileLines {
    fn each(&self, each: &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
        let changed = |what: String| {
            invalid(format!(
                "the audit log changed while it was exported ({what}); export refused — run `credbroker audit verify`"
            ))
        };
        let mut left = self.bytes;
        let mut at: Option<(u64, String)> = None;
        for seg in segments::list(&self.dir)? {
            if left == 0 {
                break;
            }
            let file = seg.open()?;
            let len = file.metadata()?.len().min(left);
            let mut lines = LogLines::of(file, len);
            while let Some(line) = lines.next_line()? {
                let Ok(Line::Record(r)) = segments::classify(line) else {
                    continue;
                };
                let link: Link = serde_json::from_slice(r)
                    .map_err(|_| changed("a record does not parse".into()))?;
                let text = std::str::from_utf8(r).map_err(|_| changed("not UTF-8".into()))?;
                if !AuditRecord::line_hash_matches(text, &link.hash) {
                    return Err(changed(format!("record {} fails its hash", link.seq)));
                }
                // The verification read the log from record 1: so must every pass, or
                // segments removed from its start since would leave records out unseen.
                let (after, prev) = at.as_ref().map_or((0, GENESIS_HASH), |(s, h)| (*s, h));
                if link.seq != after.saturating_add(1) || link.prev_hash != prev {
                    return Err(changed(format!(
                        "record {} does not follow {after}",
                        link.seq
                    )));
                }
                each(r)?;
                at = Some((link.seq, link.hash));
            }
            left -= lines.consumed();
        }
        if at != self.head {
            return Err(changed(format!(
                "it ends at {} where the verification ended at {}",
                at.map_or(0, |a| a.0),
                self.head.as_ref().map_or(0, |h| h.0)
            )));
        }
        Ok(())
    }
}

impl LineSource for Vec<String> {
    fn each(&self, each: &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
        self.iter().try_for_each(|l| each(l.as_bytes()))
    }
}

/// Writes an export of the log in `audit_dir` to `out`, signed with `signer`; returns the
/// number of records. The log is verified first, and exactly the bytes verified are
/// exported (a record appended meanwhile waits for the next export).
///
/// A log no checkpoint signs is refused too ([`super::never_signed`]): the export's signature
/// would vouch for records the key never signed.
///
/// # Errors
/// On I/O failure, or a record that does not parse (run `audit verify` to locate it).
pub fn export(
    audit_dir: &Path,
    filter: &ExportFilter,
    signer: &AuditSigner,
    max_unanchored: u64,
    set: Option<ExportSet>,
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> std::io::Result<u64> {
    // Never attest a log that does not verify: a record altered or removed in the live log
    // (by someone who can write the data directory but has no key) would otherwise come out
    // of a filtered export looking signed.
    let verified = super::verify::judged(super::verify::verify_log_with(
        audit_dir,
        &signer.verifier(),
        max_unanchored,
        progress,
    ))
    .map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the live audit log does not verify ({e}); export refused — see runbooks/audit-verification.md"),
                )
            })?;
    // (Read as the verification read them: it just passed on them.)
    let cps = super::verify::read_checkpoints(audit_dir)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    let lines = FileLines {
        dir: audit_dir.to_owned(),
        bytes: verified.bytes,
        head: verified.last_seq.zip(verified.last_hash.clone()),
    };
    write_document((None, set), &lines, &cps, filter, signer, out, progress)
}

/// What an export needs of a record to select and attest it.
#[derive(Deserialize)]
struct Key {
    seq: u64,
    time: String,
    #[serde(default)]
    tenant: Option<String>,
    hash: String,
}

fn invalid(text: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, text)
}

/// The record's key, and whether `filter` selects it.
fn select(line: &[u8], after: u64, filter: &ExportFilter) -> std::io::Result<(Key, bool)> {
    let key: Key = serde_json::from_slice(line).map_err(|_| {
        invalid(format!(
            "record after sequence {after} does not parse; run `credbroker audit verify`"
        ))
    })?;
    if let Some(t) = &filter.tenant {
        if key.tenant.as_deref() != Some(t.as_str()) {
            return Ok((key, false));
        }
    }
    if filter.since.is_some() || filter.until.is_some() {
        let at = OffsetDateTime::parse(&key.time, &Rfc3339)
            .map_err(|_| invalid("record time does not parse".into()))?;
        if filter.since.is_some_and(|s| at < s) || filter.until.is_some_and(|u| at >= u) {
            return Ok((key, false));
        }
    }
    Ok((key, true))
}

/// Writes one export document — a header, the selected records, their attestations, the
/// checkpoints the exported log reaches — of the chain whose record lines are `lines` (the
/// file log, or `replica`'s chain of a shared store; `set`: its place in a file of several
/// documents); returns the number of records, telling `progress` as it signs them. The
/// lines are read three times (see [`LineSource`]), never held.
///
/// # Errors
/// On I/O failure, or a record that does not parse.
pub fn write_document(
    (replica, set): (Option<u32>, Option<ExportSet>),
    lines: &dyn LineSource,
    cps: &[Checkpoint],
    filter: &ExportFilter,
    signer: &AuditSigner,
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> std::io::Result<u64> {
    // Pass 1: the head, and what is selected.
    let mut head = (0, String::new());
    let (mut records, mut first_seq, mut last_seq) = (0u64, 0u64, 0u64);
    lines.each(&mut |line| {
        let (key, selected) = select(line, head.0, filter)?;
        if selected {
            records += 1;
            if first_seq == 0 {
                first_seq = key.seq;
            }
            last_seq = key.seq;
        }
        head = (key.seq, key.hash);
        Ok(())
    })?;
    let fmt = |t: &Option<OffsetDateTime>| t.and_then(|t| t.format(&Rfc3339).ok());
    let mut id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| std::io::Error::other("system CSPRNG failed"))?;
    let header = ExportHeader {
        version: 2,
        replica,
        set,
        export_id: hex::encode(id),
        filtered: !filter.is_empty(),
        since: fmt(&filter.since),
        until: fmt(&filter.until),
        tenant: filter.tenant.clone(),
        exported_at: now_rfc3339(),
        records,
        first_seq,
        last_seq,
        head_seq: head.0,
        head_hash: head.1,
    };
    serde_json::to_writer(
        &mut *out,
        &HeaderLine {
            export: &header,
            signature: B64.encode(signer.sign(&header.signed_message())),
        },
    )?;
    out.write_all(b"\n")?;
    // Pass 2: the selected record lines, byte for byte, up to the head the header names.
    let mut at = 0;
    lines.each(&mut |line| {
        let (key, selected) = select(line, at, filter)?;
        if key.seq > header.head_seq {
            return Ok(());
        }
        at = key.seq;
        if selected {
            out.write_all(line)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    })?;
    // Pass 3: one attestation per exported record, chained by the previous one's sequence.
    progress.begin("signing exported records", records, Unit::Items);
    let (mut prev, mut signed) = (0u64, 0u64);
    lines.each(&mut |line| {
        let (key, selected) = select(line, prev, filter)?;
        if !selected || key.seq > header.head_seq {
            return Ok(());
        }
        let attestation = Attestation {
            seq: key.seq,
            prev,
            signature: B64.encode(signer.sign(&attest_message(
                &header.export_id,
                prev,
                key.seq,
                &key.hash,
            ))),
        };
        serde_json::to_writer(
            &mut *out,
            &AttestLine {
                attest: &attestation,
            },
        )?;
        out.write_all(b"\n")?;
        prev = key.seq;
        signed += 1;
        if signed % 1024 == 0 {
            progress.advance(1024);
        }
        Ok(())
    })?;
    progress.advance(signed % 1024);
    progress.end();
    if signed != records {
        return Err(invalid(format!(
            "the log changed while it was exported ({records} records selected, {signed} signed); export again"
        )));
    }
    // Only checkpoints the exported log reaches; later ones were written after we read it.
    for cp in cps.iter().filter(|cp| cp.seq <= header.head_seq) {
        serde_json::to_writer(&mut *out, &CheckpointLine { checkpoint: cp })?;
        out.write_all(b"\n")?;
    }
    Ok(header.records)
}
