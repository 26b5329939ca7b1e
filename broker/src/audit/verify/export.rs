//! Verification of an export file in constant memory: the file is read by position, a line
//! at a time, by two cursors that walk the records and their attestations side by side (the
//! export writes both in the same order). Only the checkpoints are held, as the live log's
//! verification holds them.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;

use super::super::export::{attest_message, Attestation, ExportHeader, ExportSet};
use super::{fail, Chain, Pins, VerifyFailure, VerifySummary, WRONG_KEY};
use crate::audit::record::Checkpoint;
use crate::keys::AuditVerifier;

mod reader;

pub use reader::ReadAt;
use reader::{read_failed, Lines};

/// The most export documents one file may hold (an export has one per chain: one per
/// replica, and the file log a shared store started from).
const MAX_DOCUMENTS: usize = 4096;

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

fn is_checkpoint(line: &[u8]) -> bool {
    line.starts_with(b"{\"checkpoint\":")
}

fn is_attestation(line: &[u8]) -> bool {
    line.starts_with(b"{\"attest\":")
}

/// The attestation lines of a document's closing section, in file order (checkpoint lines
/// skipped).
struct Attestations<'a>(Lines<'a>);

impl Attestations<'_> {
    fn next(&mut self) -> Result<Option<Attestation>, VerifyFailure> {
        while let Some((_, line)) = self.0.next_line()? {
            if is_attestation(line) {
                let a: AttestLine = serde_json::from_slice(line)
                    .map_err(|_| fail(0, "an attestation line does not parse"))?;
                return Ok(Some(a.attest));
            }
        }
        Ok(None)
    }
}

/// Whether an attestation verifies with `verifier`, taking each record's hash as its line
/// states it: this only tells a wrong key from a forged header. Records and attestations
/// are walked side by side, as the export wrote them.
fn any_attestation_verifies(
    src: &dyn ReadAt,
    (records, section, end): (u64, u64, u64),
    export_id: &str,
    verifier: &AuditVerifier,
) -> bool {
    #[derive(Deserialize)]
    struct SeqHash {
        seq: u64,
        hash: String,
    }
    let mut lines = Lines::new(src, records, section);
    let mut attestations = Attestations(Lines::new(src, section, end));
    let mut pending: Option<Attestation> = None;
    while let Ok(Some((_, line))) = lines.next_line() {
        let Ok(r) = serde_json::from_slice::<SeqHash>(line) else {
            continue;
        };
        loop {
            let a = match pending.take() {
                Some(a) => a,
                None => match attestations.next() {
                    Ok(Some(a)) => a,
                    _ => return false,
                },
            };
            if a.seq > r.seq {
                pending = Some(a);
                break;
            }
            if a.seq == r.seq {
                if B64.decode(&a.signature).is_ok_and(|sig| {
                    verifier.verify(&attest_message(export_id, a.prev, a.seq, &r.hash), &sig)
                }) {
                    return true;
                }
                break;
            }
        }
    }
    false
}

/// Verifies an export produced by `credbroker audit export`, held in memory: the signed
/// header (filter, range, count, head), every record against its own hash, the chain (whole
/// for an unfiltered export) and its attestation, the checkpoints.
///
/// # Errors
/// The first [`VerifyFailure`], naming the sequence.
pub fn verify_export(
    bytes: &[u8],
    verifier: &AuditVerifier,
) -> Result<VerifySummary, VerifyFailure> {
    verify_document(&bytes, 0, bytes.len() as u64, verifier, &Pins::default())
        .map(|(summary, _, _)| summary)
}

/// Pass 1 over a document's lines after its header: where the records end (the offset of
/// the first attestation or checkpoint line), the checkpoints (kept: one per thousand
/// records or so), and that no record follows them.
fn scan(mut lines: Lines<'_>) -> Result<(Option<u64>, Vec<Checkpoint>), VerifyFailure> {
    let mut section = None;
    let mut cps = Vec::new();
    while let Some((at, line)) = lines.next_line()? {
        if is_checkpoint(line) {
            let cp: CheckpointLine = serde_json::from_slice(line)
                .map_err(|_| fail(0, "a checkpoint line does not parse"))?;
            cps.push(cp.checkpoint);
        } else if is_attestation(line) {
            // Parsed once, by pass 2: every attestation line is read there (one per record,
            // then the first one too many), so a broken one fails the export all the same.
        } else if section.is_some() {
            return Err(fail(
                0,
                "record found after the attestation or checkpoint section",
            ));
        } else {
            continue;
        }
        section.get_or_insert(at);
    }
    Ok((section, cps))
}

/// The summary, with the export set and the replica its verified header names.
type Verified = (VerifySummary, Option<ExportSet>, Option<u32>);

/// Verifies the export document in `start..end` of `src`, reading it twice, never whole.
fn verify_document(
    src: &dyn ReadAt,
    start: u64,
    end: u64,
    verifier: &AuditVerifier,
    pins: &Pins,
) -> Result<Verified, VerifyFailure> {
    let mut lines = Lines::new(src, start, end);
    let first = lines
        .next_line()?
        .ok_or_else(|| fail(0, "export does not start with an export header line"))?
        .1;
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
    let records_at = lines.next;
    let h = &header.export;
    let sig = B64
        .decode(&header.signature)
        .map_err(|_| fail(0, "export header signature is not base64"))?;
    if h.version != 2 || !verifier.verify(&h.signed_message(), &sig) {
        if h.version == 2 {
            if let Ok((section, _)) = scan(lines) {
                let span = (records_at, section.unwrap_or(end), end);
                if !any_attestation_verifies(src, span, &h.export_id, verifier) {
                    return Err(fail(0, WRONG_KEY));
                }
            }
        }
        return Err(fail(
            0,
            "export header signature is invalid (the header — filter, range, count — was altered, or another key signed it)",
        ));
    }
    let (section, cps) = scan(lines)?;
    let section = section.unwrap_or(end);
    let mut chain = Chain::new(verifier, !h.filtered);
    chain.replica = h.replica;
    // What a copy kept off the host pins of this chain up to the head the export signed
    // (a copy taken later pins records the export never held): each exported one must be
    // as pinned, and an unfiltered export, the whole log up to its head, must hold them all.
    if let Some(pinned) = pins.of(h.replica) {
        let upto: std::collections::BTreeMap<u64, String> = pinned
            .range(..=h.head_seq)
            .map(|(s, hash)| (*s, hash.clone()))
            .collect();
        chain.pin(&upto);
    }
    chain.checkpoints(&cps)?;
    drop(cps);
    // Pass 2: each record, then the attestation the export wrote for it.
    let mut records = Lines::new(src, records_at, section);
    let mut attestations = Attestations(Lines::new(src, section, end));
    let mut prev_exported = 0u64;
    while let Some((_, line)) = records.next_line()? {
        chain.record(line)?;
        let (seq, hash) = (chain.prev_seq.unwrap_or(0), &chain.prev_hash);
        let a = attestations
            .next()?
            .ok_or_else(|| fail(seq, "record is not attested by the export (inserted)"))?;
        if a.seq > seq {
            return Err(fail(
                seq,
                "record is not attested by the export in its place (inserted, or the attestations reordered)",
            ));
        }
        if a.seq < seq {
            return Err(if a.seq > prev_exported {
                fail(
                    a.seq,
                    format!(
                        "exported record {} is missing (deleted from the export)",
                        a.seq
                    ),
                )
            } else {
                fail(
                    a.seq,
                    format!(
                        "the attestation of record {} is repeated or out of order",
                        a.seq
                    ),
                )
            });
        }
        let sig = B64
            .decode(&a.signature)
            .map_err(|_| fail(seq, "attestation is not base64"))?;
        if !verifier.verify(&attest_message(&h.export_id, a.prev, seq, hash), &sig) {
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
    if !h.filtered
        && h.records > 0
        && (prev_exported != h.head_seq || chain.prev_hash != h.head_hash)
    {
        return Err(fail(
            h.head_seq,
            "the last record is not the log head the export signed (records rewritten after the last checkpoint)",
        ));
    }
    // The export signs exactly one attestation per record: one more is not its own.
    if let Some(a) = attestations.next()? {
        return Err(fail(
            a.seq,
            format!(
                "an attestation of record {} follows the last record's (appended)",
                a.seq
            ),
        ));
    }
    let mut summary = chain.finish()?;
    summary.signed_head = Some(h.head_seq);
    summary.exported = Some((h.exported_at.clone(), h.export_id.clone()));
    if h.filtered {
        let parts: Vec<String> = [
            ("tenant", &h.tenant),
            ("since", &h.since),
            ("until", &h.until),
        ]
        .iter()
        .filter_map(|(name, v)| v.as_ref().map(|v| format!("{name}={v}")))
        .collect();
        summary.signed_filter = Some(parts.join(" "));
    }
    Ok((summary, h.set.clone(), h.replica))
}

/// Verifies every document of an export — one per chain: a single broker's log, or each
/// replica's chain of a shared store (and the file log written before the store moved
/// there) — read from `src` by position, never whole; returns each one's replica and
/// result, in file order.
pub fn verify_exports(
    src: &dyn ReadAt,
    verifier: &AuditVerifier,
) -> Vec<(Option<u32>, Result<VerifySummary, VerifyFailure>)> {
    verify_exports_pinned(src, verifier, &Pins::default())
}

/// [`verify_exports`], each document also checked against what `pins` (a copy kept off the
/// host, see [`Pins`]) holds of its chain up to the head it signed.
pub fn verify_exports_pinned(
    src: &dyn ReadAt,
    verifier: &AuditVerifier,
    pins: &Pins,
) -> Vec<(Option<u32>, Result<VerifySummary, VerifyFailure>)> {
    #[derive(Deserialize)]
    struct ReplicaOnly {
        export: ReplicaField,
    }
    #[derive(Deserialize)]
    struct ReplicaField {
        replica: Option<u32>,
        set: Option<ExportSet>,
    }
    let stamp = match src.stamp() {
        Ok(stamp) => stamp,
        Err(e) => return vec![(None, Err(read_failed(e)))],
    };
    let end = stamp.0;
    // Where each document starts, and what its header says (unverified: read again and
    // verified by `verify_document`, whose word then counts).
    let mut documents: Vec<(u64, Option<ReplicaOnly>)> = Vec::new();
    let mut lines = Lines::new(src, 0, end);
    loop {
        match lines.next_line() {
            Ok(Some((at, line))) => {
                if line.starts_with(b"{\"export\":") || documents.is_empty() {
                    if documents.len() == MAX_DOCUMENTS {
                        let why = format!(
                            "the file holds more than {MAX_DOCUMENTS} export documents (an export has one per chain)"
                        );
                        return vec![(None, Err(fail(0, why)))];
                    }
                    documents.push((at, serde_json::from_slice::<ReplicaOnly>(line).ok()));
                }
            }
            Ok(None) => break,
            Err(e) => return vec![(None, Err(e))],
        }
    }
    if documents.is_empty() {
        documents.push((0, None));
    }
    let mut results = Vec::new();
    let mut sets = Vec::new();
    for (i, (at, header)) in documents.iter().enumerate() {
        let until = documents.get(i + 1).map_or(end, |d| d.0);
        let claimed = header
            .as_ref()
            .map(|h| (h.export.set.clone(), h.export.replica));
        match verify_document(src, *at, until, verifier, pins) {
            Ok((summary, set, replica)) => {
                sets.push(set);
                results.push((replica, Ok(summary)));
            }
            Err(e) => {
                let (set, replica) = claimed.unwrap_or((None, None));
                sets.push(set);
                results.push((replica, Err(e)));
            }
        }
    }
    // A file of several documents is whole only if every document belongs to one export and
    // each of its positions is there once: the signed headers say how many there were.
    let mut problem = set_problem(&sets);
    // What was verified must be what the file still holds: the documents were found in one
    // pass and verified in others.
    if src.stamp().ok() != Some(stamp) {
        problem = Some("the export changed while it was verified: verify it again".into());
    }
    if let Some(problem) = problem {
        for (_, result) in &mut results {
            if result.is_ok() {
                *result = Err(fail(0, problem.clone()));
            }
        }
    }
    results
}

/// Why the documents' signed sets do not make one whole export, if they do not.
fn set_problem(sets: &[Option<ExportSet>]) -> Option<String> {
    if sets.len() == 1 && sets[0].is_none() {
        return None;
    }
    let Some(Some(first)) = sets.first() else {
        return Some("a document of this multi-document export names no export set".into());
    };
    // The positions seen, not one flag per position the header claims: an unverified
    // header may claim four billion.
    let mut seen = std::collections::BTreeSet::new();
    for set in sets {
        let Some(set) = set else {
            return Some("a document of this multi-document export names no export set".into());
        };
        if set.id != first.id || set.documents != first.documents {
            return Some("documents of different exports were put together in one file".into());
        }
        if set.index >= first.documents {
            return Some(format!(
                "document {} is past the {} the export held",
                set.index, first.documents
            ));
        }
        if !seen.insert(set.index) {
            return Some(format!("document {} appears twice", set.index));
        }
    }
    let missing: Vec<String> = (0..first.documents)
        .filter(|i| !seen.contains(i))
        .take(10)
        .map(|i| i.to_string())
        .collect();
    let more = first.documents as usize - seen.len() - missing.len();
    (!missing.is_empty()).then(|| {
        format!(
            "the export held {} documents; document(s) {}{} were removed",
            first.documents,
            missing.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::lines::MAX_LINE;

    fn all(src: &dyn ReadAt, start: u64, end: u64) -> Vec<(u64, Vec<u8>)> {
        let mut lines = Lines::new(src, start, end);
        let mut out = Vec::new();
        while let Some((at, line)) = lines.next_line().unwrap() {
            out.push((at, line.to_vec()));
        }
        out
    }

    #[test]
    fn lines_carry_their_offsets_and_stop_at_the_span_and_the_last_newline() {
        let text: &[u8] = b"one\n\ntwo\nthree-in-progress";
        let lines = all(&text, 0, text.len() as u64);
        assert_eq!(lines, vec![(0, b"one".to_vec()), (5, b"two".to_vec())]);
        assert_eq!(all(&text, 5, 9), vec![(5, b"two".to_vec())]);
        assert_eq!(all(&text, 5, 8), vec![]);
        // Lines longer than the read buffer, and a file read by position.
        let long: Vec<u8> = [
            vec![b'a'; 200_000],
            b"\n".to_vec(),
            vec![b'b'; 3],
            b"\n".to_vec(),
        ]
        .concat();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export");
        std::fs::write(&path, &long).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let lines = all(&file, 0, file.size().unwrap());
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].1.len(), 200_000);
        assert_eq!(lines[1], (200_001, b"bbb".to_vec()));
        let huge = vec![b'x'; (MAX_LINE + 10) as usize];
        let huge: &[u8] = &huge;
        assert!(Lines::new(&huge, 0, huge.len() as u64).next_line().is_err());
    }

    /// An export whose stamp moves after the first reading: a file written to while it
    /// was verified.
    struct Changing(Vec<u8>, std::cell::Cell<i64>);

    impl ReadAt for Changing {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
            self.0.as_slice().read_at(buf, offset)
        }
        fn size(&self) -> std::io::Result<u64> {
            Ok(self.0.len() as u64)
        }
        fn stamp(&self) -> std::io::Result<(u64, i64, i64)> {
            self.1.set(self.1.get() + 1);
            Ok((self.0.len() as u64, self.1.get(), 0))
        }
    }

    #[test]
    fn an_export_that_changes_while_it_is_verified_is_refused() {
        use crate::audit::{write_document, AuditEvent, AuditRecord, ExportFilter, GENESIS_HASH};
        let dir = tempfile::tempdir().unwrap();
        let signer = crate::keys::AuditSigner::generate(
            &dir.path().join("audit.key"),
            &dir.path().join("audit.pub"),
        )
        .unwrap();
        let mut prev = GENESIS_HASH.to_owned();
        let mut lines = Vec::new();
        for seq in 1..=3 {
            let mut rec = AuditRecord {
                replica: None,
                seq,
                time: "2026-01-01T00:00:00Z".into(),
                event: AuditEvent {
                    kind: "resolve".into(),
                    ..Default::default()
                },
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            lines.push(String::from_utf8(rec.seal()).unwrap());
            prev = rec.hash.clone();
        }
        let mut out = Vec::new();
        write_document(
            (None, None),
            &lines,
            &[],
            &ExportFilter::default(),
            &signer,
            &mut out,
            &crate::progress::Silent,
        )
        .unwrap();
        let verifier = signer.verifier();
        let steady = verify_exports(&out.as_slice(), &verifier);
        assert_eq!(steady[0].1.as_ref().unwrap().records, 3, "{steady:?}");
        let moving = verify_exports(&Changing(out, 0.into()), &verifier);
        let e = moving[0].1.as_ref().unwrap_err();
        assert!(e.reason.contains("changed while it was verified"), "{e}");
    }

    #[test]
    fn a_claimed_document_count_is_not_allocated() {
        let set = |documents, index| {
            Some(ExportSet {
                id: "x".into(),
                documents,
                index,
            })
        };
        let problem = set_problem(&[set(u32::MAX, 0), set(u32::MAX, 2)]).unwrap();
        assert!(
            problem.contains("document(s) 1, 3, 4, 5, 6, 7, 8, 9, 10, 11 and 4294967283 more"),
            "{problem}"
        );
        let problem = set_problem(&[set(2, 0), set(2, 2)]).unwrap();
        assert!(problem.contains("past the 2"), "{problem}");
        assert_eq!(set_problem(&[set(2, 1), set(2, 0)]), None);
    }
}
