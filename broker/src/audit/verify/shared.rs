//! Verification for a store several replicas share: one replica's chain read from the
//! database a page at a time, and an export file holding one document per chain.

use serde::Deserialize;

use super::super::export::ExportSet;
use super::{complete_lines, fail, verify_export, Chain, VerifyFailure, VerifySummary};
use crate::audit::record::Checkpoint;
use crate::keys::AuditVerifier;

/// Verification of one replica's chain of a shared store, fed its record lines in sequence
/// order (read a page at a time): the whole chain, or (`from`, the start-up check) from that
/// checkpoint on, whose record must be the first line fed.
pub struct ChainCheck<'a> {
    chain: Chain<'a>,
    from: Option<u64>,
}

impl<'a> ChainCheck<'a> {
    /// A check of replica `replica`'s chain against its checkpoints `cps` (or only `from`).
    ///
    /// # Errors
    /// When a checkpoint's signature does not verify.
    pub fn new(
        replica: u32,
        cps: &[Checkpoint],
        from: Option<&Checkpoint>,
        verifier: &'a AuditVerifier,
        max_unanchored: u64,
    ) -> Result<ChainCheck<'a>, VerifyFailure> {
        let mut chain = Chain::new(verifier, true);
        chain.replica = Some(replica);
        chain.max_unanchored = Some(max_unanchored);
        if let Some(last) = from {
            chain.expected = Some(last.seq);
            chain.last_anchor = None;
            chain.checkpoints(std::slice::from_ref(last))?;
        } else {
            chain.checkpoints(cps)?;
        }
        Ok(ChainCheck {
            chain,
            from: from.map(|c| c.seq),
        })
    }

    /// Checks the next record line.
    ///
    /// # Errors
    /// The first [`VerifyFailure`].
    pub fn record(&mut self, line: &[u8]) -> Result<(), VerifyFailure> {
        self.chain.record(line)
    }

    /// Ends the check.
    ///
    /// # Errors
    /// When the chain stops short of a checkpoint, its unsigned tail is too long, or the
    /// record `from` covers was not the first fed.
    pub fn finish(self) -> Result<VerifySummary, VerifyFailure> {
        if let Some(seq) = self.from {
            if self.chain.summary.first_seq != Some(seq) {
                return Err(fail(
                    seq,
                    "the record the last signed checkpoint covers is not in the chain (records removed)",
                ));
            }
        }
        self.chain.finish()
    }
}

/// Verifies every document of an export file — one per chain: a single broker's log, or
/// each replica's chain of a shared store (and the file log written before the store moved
/// there) — and returns each one's replica and result, in file order.
pub fn verify_exports(
    bytes: &[u8],
    verifier: &AuditVerifier,
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
    let mut documents: Vec<Vec<u8>> = Vec::new();
    for line in complete_lines(bytes) {
        if line.starts_with(b"{\"export\":") || documents.is_empty() {
            documents.push(Vec::new());
        }
        if let Some(doc) = documents.last_mut() {
            doc.extend_from_slice(line);
            doc.push(b'\n');
        }
    }
    if documents.is_empty() {
        documents.push(Vec::new());
    }
    let mut results: Vec<(Option<u32>, Result<VerifySummary, VerifyFailure>)> = Vec::new();
    let mut sets = Vec::new();
    for doc in &documents {
        let header = complete_lines(doc)
            .next()
            .and_then(|l| serde_json::from_slice::<ReplicaOnly>(l).ok());
        sets.push(header.as_ref().and_then(|h| h.export.set.clone()));
        results.push((
            header.and_then(|h| h.export.replica),
            verify_export(doc, verifier),
        ));
    }
    // A file of several documents is whole only if every document belongs to one export and
    // each of its positions is there once: the signed headers say how many there were.
    if let Some(problem) = set_problem(&sets) {
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
    let mut seen = vec![false; first.documents as usize];
    for set in sets {
        let Some(set) = set else {
            return Some("a document of this multi-document export names no export set".into());
        };
        if set.id != first.id || set.documents != first.documents {
            return Some("documents of different exports were put together in one file".into());
        }
        match seen.get_mut(set.index as usize) {
            Some(slot) if !*slot => *slot = true,
            _ => return Some(format!("document {} appears twice", set.index)),
        }
    }
    let missing: Vec<String> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| !**s)
        .map(|(i, _)| i.to_string())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "the export held {} documents; document(s) {} were removed",
            first.documents,
            missing.join(", ")
        )
    })
}
