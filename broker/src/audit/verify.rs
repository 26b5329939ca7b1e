//! Verification of the live log or of an export, with only the audit public key.
//!
//! Checks, in order, for every record line: it parses; it is byte-identical to its canonical
//! serialization; its sequence number follows the previous one; its `prev_hash` is the
//! previous record's hash; its own hash is right. Then every checkpoint: its Ed25519
//! signature is valid, it matches the record it covers, and the log reaches it (a log cut
//! short after a checkpoint fails). The first failure names the sequence number where the
//! chain breaks — for an edited, deleted or swapped record, that record's own number.

use std::collections::BTreeMap;
use std::ops::Bound;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::record::{AuditRecord, Checkpoint, RecordView, GENESIS_HASH};
use crate::keys::AuditVerifier;

mod export;
mod live;
mod shared;
pub use export::{verify_export, verify_exports, verify_exports_pinned, ReadAt};
pub(crate) use live::read_checkpoints;
pub use live::{
    verify_log, verify_log_pinned, verify_log_visit, verify_log_with, verify_segment,
    verify_since_last_checkpoint,
};
pub use shared::ChainCheck;

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
    /// For a filtered export: the filter its signature covers, as `tenant=… since=…
    /// until=…` (the parts it has).
    pub signed_filter: Option<String>,
    /// Hash of the last record checked.
    pub last_hash: Option<String>,
    /// Bytes of the log read (a live log: its length when the verification began).
    pub bytes: u64,
    /// Records found as a pinned copy held them (see [`Pins`]).
    pub pinned: u64,
    /// For an export: when it was made, and its id (signed, as the header holds them).
    pub exported: Option<(String, String)>,
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
        reason: printable(reason.into()),
    }
}

/// `reason` with every character that could redraw or hide text on an auditor's terminal
/// escaped (`\u{1b}`): control characters and everything beyond ASCII but the punctuation our
/// messages use (bidi overrides, zero-width and invisible characters, look-alikes). A failure
/// quotes what it found in the log (a forged header's hash, a row's text), and whoever forged
/// it chose those bytes.
pub(crate) fn printable(reason: String) -> String {
    // Reasons are English text quoting log bytes: beyond ASCII only the punctuation our
    // own messages use is shown as it is.
    let hostile = |c: char| c.is_control() || !(c.is_ascii() || matches!(c, '…' | '—' | '–'));
    if !reason.chars().any(hostile) {
        return reason;
    }
    reason
        .chars()
        .map(|c| {
            if hostile(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
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
    /// Records a copy kept off the host vouches for (sequence → hash): each must still be
    /// in the chain, unchanged.
    pins: BTreeMap<u64, String>,
    summary: VerifySummary,
    /// The canonical form of the record being checked (reused from record to record).
    canonical: Vec<u8>,
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
            pins: BTreeMap::new(),
            summary: VerifySummary {
                records: 0,
                first_seq: None,
                last_seq: None,
                checkpoints: 0,
                last_checkpoint: None,
                filtered: !contiguous,
                signed_head: None,
                signed_filter: None,
                last_hash: None,
                bytes: 0,
                pinned: 0,
                exported: None,
            },
            canonical: Vec::new(),
        }
    }

    fn next_seq(&self) -> u64 {
        // Saturating: a hostile file may hold a record numbered u64::MAX.
        self.prev_seq
            .map_or(self.expected.unwrap_or(1), |s| s.saturating_add(1))
    }

    fn record(&mut self, line: &[u8]) -> Result<(), VerifyFailure> {
        self.check(line).map(|_| ())
    }

    /// Checks the next record line; the record, once it passed.
    fn record_parsed(&mut self, line: &[u8]) -> Result<AuditRecord, VerifyFailure> {
        self.check(line).map(AuditRecord::from)
    }

    /// Checks the next record line, its fields read in place.
    fn check<'l>(&mut self, line: &'l [u8]) -> Result<RecordView<'l>, VerifyFailure> {
        let here = self.next_seq();
        let text = std::str::from_utf8(line).map_err(|_| fail(here, "record is not UTF-8"))?;
        let rec: RecordView<'l> =
            serde_json::from_str(text).map_err(|_| fail(here, "record does not parse"))?;
        self.canonical.clear();
        if serde_json::to_writer(&mut self.canonical, &rec).is_err() || self.canonical != line {
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
        // No log reaches this far (PostgreSQL's sequence is a bigint); past it the numbers
        // would wrap or saturate and the checks below would compare nothing.
        if rec.seq > i64::MAX as u64 {
            return Err(fail(
                here,
                "record sequence is beyond any log's range (altered)",
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
            Some(p) => p.checked_add(1) == Some(rec.seq),
            None => rec.seq == 1,
        };
        if consecutive && *rec.prev_hash != *self.prev_hash {
            return Err(fail(
                rec.seq,
                "prev_hash does not match the previous record",
            ));
        }
        // From the canonical line itself (it is the canonical form, checked above): one
        // serialization per record, not two.
        if !AuditRecord::line_hash_matches(text, &rec.hash) {
            return Err(fail(
                rec.seq,
                "record hash does not match its content (altered)",
            ));
        }
        if let Some(anchor) = self.anchors.get(&rec.seq) {
            if *anchor != *rec.hash {
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
        if let Some(pin) = self.pins.get(&rec.seq) {
            if *pin != *rec.hash {
                return Err(fail(rec.seq, PIN_DIFFERS));
            }
            self.summary.pinned += 1;
        }
        self.summary.records += 1;
        self.summary.first_seq.get_or_insert(rec.seq);
        self.summary.last_seq = Some(rec.seq);
        self.prev_seq = Some(rec.seq);
        self.prev_hash.clear();
        self.prev_hash.push_str(&rec.hash);
        Ok(rec)
    }

    fn checkpoints(&mut self, cps: &[Checkpoint]) -> Result<(), VerifyFailure> {
        // A key that verifies none of them is the wrong key, not evidence of forgery:
        // tell the two apart before naming a forged checkpoint.
        if let Some(first) = cps.first() {
            let genuine = |cp: &Checkpoint| cp.verifies(self.verifier);
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
            // Two signed heads at one sequence: the log forked (or was rewritten and signed
            // again); the later must not silently replace the earlier.
            if self.anchors.get(&cp.seq).is_some_and(|h| *h != cp.hash) {
                return Err(fail(
                    cp.seq,
                    "two signed checkpoints at this sequence name different hashes (the log was rewritten and signed again)",
                ));
            }
            last = cp.seq;
            self.anchors.insert(cp.seq, cp.hash.clone());
        }
        self.summary.last_checkpoint = cps.last().map(|c| c.seq);
        Ok(())
    }

    /// Adds the records `pins` vouches for (already authenticated: see [`Pins`]).
    pub(super) fn pin(&mut self, pins: &BTreeMap<u64, String>) {
        self.pins.extend(pins.iter().map(|(s, h)| (*s, h.clone())));
    }

    fn finish(self) -> Result<VerifySummary, VerifyFailure> {
        if self.contiguous {
            let last = self.prev_seq.unwrap_or(0);
            let after = (Bound::Excluded(last), Bound::Unbounded);
            if let Some((&pin, _)) = self.pins.range(after).next() {
                return Err(fail(
                    last.saturating_add(1),
                    format!("log ends at {last} but the pinned copy holds record {pin} (records removed, or the log rolled back)"),
                ));
            }
            if let Some((&cp_seq, _)) = self.anchors.range(after).next() {
                return Err(fail(
                    last.saturating_add(1),
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

/// A chain `s` with records and no signed checkpoint at all, as a failure (`None` when it
/// has a checkpoint, or no record). The public key vouches for none of its records, and a
/// wrong key cannot be told from the right one. Both writers sign a log's first batch at
/// once (the database writer in the batch's own transaction), so a genuine log or chain is
/// never in this state, whether or not its writer runs: only a log cut from its checkpoints,
/// or records written by someone without the key (a whole chain for a replica number no
/// broker holds, with a lease row beside it), look so. `audit verify`, `report`, `export`
/// and the doctor refuse it.
pub fn never_signed(s: &VerifySummary) -> Option<VerifyFailure> {
    (s.records > 0 && s.last_checkpoint.is_none()).then(|| {
        fail(
            s.first_seq.unwrap_or(1),
            format!(
                "{} record(s) and no signed checkpoint, though a broker signs its first batch at once: the public key vouches for none of them (records written by someone without the signing key, or a log cut from its checkpoints; a broker of an earlier release killed within its first minute could leave one: started there, it signs them over, recording audit.unsigned_tail)",
                s.records
            ),
        )
    })
}

/// `result`, failed when it is a [`never_signed`] chain.
///
/// # Errors
/// `result`'s failure, or the unsigned chain's.
pub fn judged(
    result: Result<VerifySummary, VerifyFailure>,
) -> Result<VerifySummary, VerifyFailure> {
    match result {
        Ok(s) => match never_signed(&s) {
            Some(f) => Err(f),
            None => Ok(s),
        },
        other => other,
    }
}

/// Said when a record is not what a pinned copy says it was.
const PIN_DIFFERS: &str =
    "record differs from the pinned copy (the log was rewritten after it was pinned)";

mod pins;
pub use pins::Pins;

/// Splits complete lines; bytes after the last newline (an append in progress) are ignored.
pub fn complete_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    bytes[..end]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::sample_record;
    use crate::keys::AuditSigner;

    /// A line whose hash is right for its own bytes but that is not what the writer writes
    /// (what only the first record, before any checkpoint, could be made into unseen by
    /// the hash chain): the canonical check refuses it, so a line means one record.
    #[test]
    fn a_line_not_in_canonical_form_is_refused_even_with_its_own_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let signer =
            AuditSigner::generate(&tmp.path().join("k"), &tmp.path().join("k.pub")).unwrap();
        let verifier = signer.verifier();
        let mut rec = sample_record(1);
        let canonical = String::from_utf8(rec.seal()).unwrap();
        let mut chain = Chain::new(&verifier, true);
        chain.record(canonical.as_bytes()).unwrap();
        let rehash = |text: &str| {
            let unhashed = text.replacen(&rec.hash, "", 1);
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, unhashed.as_bytes());
            unhashed.replacen(
                "\"hash\":\"\"}",
                &format!("\"hash\":\"{}\"}}", hex::encode(digest)),
                1,
            )
        };
        for edit in [
            canonical.replacen("\"seq\":1", "\"seq\": 1", 1),
            canonical.replacen("{", "{\"note\":\"added\",", 1),
            canonical.replacen("\"kind\":\"resolve\"", "\"kind\":\"\\u0072esolve\"", 1),
        ] {
            let forged = rehash(&edit);
            let text = forged.as_str();
            assert!(AuditRecord::line_hash_matches(
                text,
                &text[text.len() - 66..text.len() - 2]
            ));
            let mut chain = Chain::new(&verifier, true);
            let f = chain.record(text.as_bytes()).unwrap_err();
            assert!(f.reason.contains("canonical form"), "{text}: {f}");
        }
    }

    /// Two signed checkpoints naming different hashes at one sequence are a fork; and a
    /// record numbered past any log's range is refused before its number can wrap.
    #[test]
    fn a_forked_checkpoint_and_an_out_of_range_sequence_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let signer =
            AuditSigner::generate(&tmp.path().join("k"), &tmp.path().join("k.pub")).unwrap();
        let verifier = signer.verifier();
        let a = Checkpoint::signed(5, &"a".repeat(64), &signer);
        let b = Checkpoint::signed(5, &"b".repeat(64), &signer);
        let mut chain = Chain::new(&verifier, true);
        chain.checkpoints(&[a.clone(), a.clone()]).unwrap();
        let mut chain = Chain::new(&verifier, true);
        let f = chain.checkpoints(&[a, b]).unwrap_err();
        assert_eq!(f.seq, 5);
        assert!(f.reason.contains("different hashes"), "{f}");

        let mut rec = sample_record(u64::MAX);
        let line = rec.seal();
        let mut chain = Chain::new(&verifier, false);
        let f = chain.record(&line).unwrap_err();
        assert!(f.reason.contains("beyond any log's range"), "{f}");
    }
}
