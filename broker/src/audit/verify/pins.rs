//! The records a copy kept off the host vouches for ([`Pins`]): a copy of the checkpoints,
//! an earlier export, or an earlier run's JSON.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::{complete_lines, verify_exports, VerifyFailure, VerifySummary};
use crate::audit::record::Checkpoint;
use crate::keys::AuditVerifier;

/// The longest line a pinned copy may hold, its newline included: the audit readers' bound.
const MAX_PIN_LINE: u64 = crate::audit::lines::MAX_LINE + 1;

/// The most a pinned copy read from a pipe (held whole) may hold.
const MAX_PIPED: u64 = 256 << 20;

/// How an export document's header line begins.
const EXPORT_LINE: &[u8] = b"{\"export\":";

/// Records a copy of the log's checkpoints (or an export) kept off the host vouches for, by
/// chain (`None`: the file log; `Some(r)`: replica `r`'s chain of a shared store): each
/// must still be in the log, unchanged. A checkpoint alone proves a record only while the
/// checkpoint is there; whoever can write the host can remove the latest checkpoints, rewrite
/// what they covered and have the broker sign over it. A pin held elsewhere is not theirs to
/// remove.
#[derive(Debug, Default, Clone)]
pub struct Pins {
    chains: BTreeMap<Option<u32>, BTreeMap<u64, String>>,
}

impl Pins {
    /// Reads a pinned copy from `path`: either lines of `checkpoints.log` (the file log's
    /// checkpoints, each signature checked with `verifier`), or an export file (`audit
    /// export`, verified whole with `verifier` first: its signed heads and checkpoints, by
    /// chain). A file is read a line at a time (an export of any size); a pipe is read whole.
    ///
    /// # Errors
    /// A copy that cannot be read, is neither, or does not verify with `verifier`.
    pub fn from_path(path: &std::path::Path, verifier: &AuditVerifier) -> Result<Pins, String> {
        use std::io::BufRead as _;
        use std::io::Read as _;
        let shown = |e: std::io::Error| e.to_string();
        let file = std::fs::File::open(path).map_err(shown)?;
        if !file.metadata().map_err(shown)?.is_file() {
            let mut bytes = Vec::new();
            (&file)
                .take(MAX_PIPED + 1)
                .read_to_end(&mut bytes)
                .map_err(shown)?;
            if bytes.len() as u64 > MAX_PIPED {
                return Err(format!(
                    "a pinned copy read from a pipe holds more than {MAX_PIPED} bytes: copy it to a file"
                ));
            }
            return Pins::read(&bytes, verifier);
        }
        // One handle for both passes (the export's verification reads by position): the
        // bytes pinned are the bytes verified, whatever happens to the path meanwhile. Each
        // pin is also checked on its own (a signed checkpoint, or a signed header's head).
        let mut reader = std::io::BufReader::new(&file);
        let mut pins = Pins::default();
        let mut chain = None;
        let mut export = None;
        loop {
            let mut line = Vec::new();
            (&mut reader)
                .take(MAX_PIN_LINE + 1)
                .read_until(b'\n', &mut line)
                .map_err(shown)?;
            if line.len() as u64 > MAX_PIN_LINE {
                return Err(format!(
                    "a line of the pinned copy is longer than {MAX_PIN_LINE} bytes"
                ));
            }
            // The end; an incomplete last line (a copy taken while the writer appended), or
            // the zeros it fills ahead, end the copy too.
            if line.pop() != Some(b'\n') || line.first() == Some(&0) {
                break;
            }
            if line.is_empty() {
                continue;
            }
            let is_export = *export.get_or_insert_with(|| line.starts_with(EXPORT_LINE));
            if is_export && chain.is_none() {
                Pins::export_verifies(verify_exports(&file, verifier))?;
            }
            pins.take(&line, is_export, &mut chain, verifier)?;
        }
        pins.non_empty()
    }

    /// [`Pins::from_path`] of a copy held in memory.
    ///
    /// # Errors
    /// As [`Pins::from_path`].
    pub fn read(bytes: &[u8], verifier: &AuditVerifier) -> Result<Pins, String> {
        let export = complete_lines(bytes)
            .next()
            .is_some_and(|l| l.starts_with(EXPORT_LINE));
        if export {
            Pins::export_verifies(verify_exports(&bytes, verifier))?;
        }
        let mut pins = Pins::default();
        let mut chain = None;
        for line in complete_lines(bytes) {
            if line.first() == Some(&0) {
                break;
            }
            pins.take(line, export, &mut chain, verifier)?;
        }
        pins.non_empty()
    }

    fn export_verifies(
        results: Vec<(Option<u32>, Result<VerifySummary, VerifyFailure>)>,
    ) -> Result<(), String> {
        match results.into_iter().find_map(|(_, r)| r.err()) {
            Some(f) => Err(format!(
                "the pinned export does not verify with this public key: {f}"
            )),
            None => Ok(()),
        }
    }

    fn non_empty(self) -> Result<Pins, String> {
        if self.is_empty() {
            return Err("the pinned copy holds no checkpoint".into());
        }
        Ok(self)
    }

    /// One line of the copy: an export's header or checkpoint (its records are passed
    /// over: the signed head and checkpoints pin them), or a line of `checkpoints.log`.
    fn take(
        &mut self,
        line: &[u8],
        export: bool,
        chain: &mut Option<Option<u32>>,
        verifier: &AuditVerifier,
    ) -> Result<(), String> {
        #[derive(serde::Deserialize)]
        struct HeaderLine {
            export: crate::audit::export::ExportHeader,
            signature: String,
        }
        #[derive(serde::Deserialize)]
        struct CheckpointLine {
            checkpoint: Checkpoint,
        }
        if !export {
            let cp: Checkpoint = serde_json::from_slice(line)
                .map_err(|_| "the pinned copy is neither an export nor lines of checkpoints.log")?;
            if !cp.verifies(verifier) {
                return Err(format!(
                    "the pinned checkpoint at {} does not verify with this public key",
                    cp.seq
                ));
            }
            return self.add(None, cp.seq, cp.hash);
        }
        if line.starts_with(EXPORT_LINE) {
            let h: HeaderLine = serde_json::from_slice(line)
                .map_err(|_| "the pinned export's header does not parse")?;
            let signed = B64
                .decode(&h.signature)
                .is_ok_and(|sig| verifier.verify(&h.export.signed_message(), &sig));
            if !signed {
                return Err(
                    "the pinned export's header does not verify with this public key".into(),
                );
            }
            *chain = Some(h.export.replica);
            if h.export.head_seq > 0 {
                self.add(h.export.replica, h.export.head_seq, h.export.head_hash)?;
            }
        } else if line.starts_with(b"{\"checkpoint\":") {
            let c: CheckpointLine = serde_json::from_slice(line)
                .map_err(|_| "a checkpoint of the pinned export does not parse")?;
            if !c.checkpoint.verifies(verifier) {
                return Err(format!(
                    "the pinned export's checkpoint at {} does not verify with this public key",
                    c.checkpoint.seq
                ));
            }
            let replica = chain.ok_or("the pinned export has a checkpoint before its header")?;
            self.add(replica, c.checkpoint.seq, c.checkpoint.hash)?;
        }
        Ok(())
    }

    fn add(&mut self, chain: Option<u32>, seq: u64, hash: String) -> Result<(), String> {
        let pinned = self.chains.entry(chain).or_default();
        match pinned.get(&seq) {
            Some(h) if *h != hash => {
                Err(format!("the pinned copy names two hashes for record {seq}"))
            }
            _ => {
                pinned.insert(seq, hash);
                Ok(())
            }
        }
    }

    /// Adds, from the JSON of an earlier `audit verify --output json` run kept off the host,
    /// each verified chain's last record (`last_seq`, `last_hash`; a failed chain's: the
    /// record that run held it to, `carried_seq`, `carried_hash`): records signed later
    /// than a copy of the checkpoints and the unsigned tail since the last checkpoint are
    /// pinned too, so a tail cut after that run, even inside the unsigned limit, or a log
    /// emptied, fails. That run's JSON is not signed: it is worth where it was kept.
    /// Returns how many chains it pinned.
    ///
    /// # Errors
    /// Bytes that are not such a run's JSON, a run naming no verified chain's last record,
    /// or a record given two hashes (by the run, or by it and a pinned copy).
    pub fn add_previous(&mut self, bytes: &[u8]) -> Result<usize, String> {
        #[derive(serde::Deserialize)]
        struct Run {
            chains: Vec<RunChain>,
        }
        #[derive(serde::Deserialize)]
        struct RunChain {
            replica: Option<u32>,
            verified: bool,
            last_seq: Option<u64>,
            last_hash: Option<String>,
            /// A failed chain's: the record that run held it to.
            #[serde(default)]
            carried_seq: Option<u64>,
            #[serde(default)]
            carried_hash: Option<String>,
        }
        let run: Run = serde_json::from_slice(bytes).map_err(|_| {
            "the previous run is not the JSON of `audit verify --output json`".to_owned()
        })?;
        let mut pinned = 0;
        for chain in run.chains {
            // A chain that failed in that run is held to what that run held it to: a cut
            // that failed once is not forgiven by the next run.
            let last = if chain.verified {
                (chain.last_seq, chain.last_hash)
            } else {
                (chain.carried_seq, chain.carried_hash)
            };
            let (Some(seq), Some(hash)) = last else {
                continue;
            };
            if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(format!(
                    "the previous run names record {seq} with a hash that is not 64 lowercase hex digits"
                ));
            }
            self.add(chain.replica, seq, hash)?;
            pinned += 1;
        }
        if pinned == 0 {
            return Err("the previous run names no verified chain's last record (a run of a release before `last_hash` was printed names none: keep this run's JSON for the next)".into());
        }
        Ok(pinned)
    }

    /// The chains the copy pins (`None`: the file log).
    pub fn chains(&self) -> impl Iterator<Item = Option<u32>> + '_ {
        self.chains.keys().copied()
    }

    /// The records pinned in `chain`.
    pub(crate) fn of(&self, chain: Option<u32>) -> Option<&BTreeMap<u64, String>> {
        self.chains.get(&chain)
    }

    /// The chains the copy pins that are not among `present` (every record of theirs
    /// deleted), each failed at its first record.
    pub fn missing_chains(&self, present: &[Option<u32>]) -> Vec<(Option<u32>, VerifyFailure)> {
        self.chains
            .iter()
            .filter(|(chain, _)| !present.contains(chain))
            .map(|(chain, pinned)| {
                let last = pinned.keys().next_back().copied().unwrap_or(0);
                (
                    *chain,
                    VerifyFailure {
                        seq: 1,
                        reason: format!("the pinned copy holds this chain's records up to {last}, but the log has no such chain (removed)"),
                    },
                )
            })
            .collect()
    }

    /// Whether the copy pins nothing.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }
}
