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
use super::record::{AuditRecord, Checkpoint, GENESIS_HASH};
use super::{checkpoints_path, log_path};
use crate::keys::AuditVerifier;

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

fn fail(seq: u64, reason: impl Into<String>) -> VerifyFailure {
    VerifyFailure {
        seq,
        reason: reason.into(),
    }
}

struct Chain<'a> {
    verifier: &'a AuditVerifier,
    contiguous: bool,
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
            contiguous,
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
            },
        }
    }

    fn next_seq(&self) -> u64 {
        self.prev_seq.map_or(self.expected.unwrap_or(1), |s| s + 1)
    }

    fn record(&mut self, line: &[u8]) -> Result<(), VerifyFailure> {
        let here = self.next_seq();
        let text = std::str::from_utf8(line).map_err(|_| fail(here, "record is not UTF-8"))?;
        let rec: AuditRecord =
            serde_json::from_str(text).map_err(|_| fail(here, "record does not parse"))?;
        if rec.to_line() != text {
            return Err(fail(here, "record is not in canonical form (altered)"));
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
        if rec.compute_hash() != rec.hash {
            return Err(fail(
                rec.seq,
                "record hash does not match its content (altered)",
            ));
        }
        if let Some(anchor) = self.anchors.get(&rec.seq) {
            if *anchor != rec.hash {
                return Err(fail(rec.seq, "record differs from the signed checkpoint"));
            }
            self.summary.checkpoints += 1;
        }
        self.summary.records += 1;
        self.summary.first_seq.get_or_insert(rec.seq);
        self.summary.last_seq = Some(rec.seq);
        self.prev_seq = Some(rec.seq);
        self.prev_hash = rec.hash;
        Ok(())
    }

    fn checkpoints(&mut self, cps: &[Checkpoint]) -> Result<(), VerifyFailure> {
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
        }
        Ok(self.summary)
    }
}

/// Splits complete lines; bytes after the last newline (an append in progress) are ignored.
pub(super) fn complete_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
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

/// Verifies the live log in `audit_dir` (safe while the daemon appends to it).
///
/// # Errors
/// The first [`VerifyFailure`]; unreadable files fail at sequence 0.
pub fn verify_log(
    audit_dir: &Path,
    verifier: &AuditVerifier,
) -> Result<VerifySummary, VerifyFailure> {
    // Checkpoints first: a checkpoint written after we read the log would otherwise look
    // like a truncated log.
    let cps = match std::fs::read(checkpoints_path(audit_dir)) {
        Ok(b) => parse_checkpoints(&b)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(fail(0, format!("cannot read checkpoints: {e}"))),
    };
    let log = std::fs::read(log_path(audit_dir))
        .map_err(|e| fail(0, format!("cannot read audit log: {e}")))?;
    let mut chain = Chain::new(verifier, true);
    chain.checkpoints(&cps)?;
    for line in complete_lines(&log) {
        chain.record(line)?;
    }
    chain.finish()
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
        return Err(fail(
            0,
            "export header signature is invalid (the header — filter, range, count — was altered, or another key signed it)",
        ));
    }
    let contiguous = !h.filtered;
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
