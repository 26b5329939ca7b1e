//! Verification for a store several replicas share: one replica's chain read from the
//! database a page at a time.

use super::{fail, Chain, VerifyFailure, VerifySummary};
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

    /// Every record `pins` vouches for (see [`super::Pins`]) must be in the chain,
    /// unchanged.
    pub fn pin(&mut self, pins: &std::collections::BTreeMap<u64, String>) {
        self.chain.pin(pins);
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
