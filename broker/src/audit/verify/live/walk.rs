//! The walk over the log's segments in order: each one's structure (numbering, header,
//! seal, nothing after a seal) checked, its record lines handed to the chain.

use super::super::{fail, Chain, VerifyFailure};
use crate::audit::lines::LogLines;
use crate::audit::record::{AuditRecord, Checkpoint};
use crate::audit::segments::{self, Line, SegmentFile};
use crate::progress::Progress;

/// Reads segments in order, checking their structure and handing record lines to the chain.
pub(super) struct Walk<'a, 'p> {
    pub(super) chain: Chain<'a>,
    /// Bytes to read at most (a second pass over what a first one read).
    pub(super) budget: Option<u64>,
    /// The live segment and its written length when the walk began (`snapshot::frontier`): no
    /// later segment is read, nor that one past there.
    pub(super) frontier: Option<(u64, u64)>,
    /// Records before this sequence are passed over (the start-up check).
    pub(super) skip_before: Option<u64>,
    /// Bytes of complete lines read.
    pub(super) bytes: u64,
    pub(super) progress: &'p dyn Progress,
}

/// What the walk knows of the segment before the current one.
pub(super) struct Previous {
    pub(super) n: u64,
    pub(super) sealed: bool,
    pub(super) lines: u64,
}

impl Walk<'_, '_> {
    pub(super) fn total(&self, segs: &[SegmentFile]) -> u64 {
        let on_disk: u64 = segs
            .iter()
            .filter_map(|s| s.open().ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        self.budget.map_or(on_disk, |b| b.min(on_disk))
    }

    pub(super) fn segments(
        &mut self,
        segs: &[SegmentFile],
        mut visit: Option<&mut dyn FnMut(&AuditRecord)>,
    ) -> Result<(), VerifyFailure> {
        let mut prev: Option<Previous> = None;
        for seg in segs {
            if self.budget.is_some_and(|b| self.bytes >= b)
                || self.frontier.is_some_and(|(n, _)| seg.n > n)
            {
                break;
            }
            let here = self.chain.next_seq();
            match &prev {
                Some(p) if seg.n != p.n + 1 => {
                    return Err(fail(
                        here,
                        format!(
                            "{} is missing: segments {} and {} are on disk, nothing between (deleted, or archived somewhere else)",
                            segments::segment_name(p.n + 1),
                            p.n,
                            seg.n
                        ),
                    ))
                }
                None if self.skip_before.is_none() && seg.n > 1 => {
                    return Err(fail(
                        here,
                        format!(
                            "{} is missing: the log starts at segment {} (earlier segments deleted, or archived somewhere else)",
                            segments::segment_name(1),
                            seg.n
                        ),
                    ))
                }
                _ => {}
            }
            let this = self.segment(seg, prev.as_ref(), visit.as_deref_mut())?;
            if let Some(p) = prev.as_ref().filter(|p| this.lines == 0 && p.n > 0) {
                if p.lines > 0 && !p.sealed {
                    // The writer starts a segment only once the one before is sealed.
                    return Err(fail(
                        self.chain.next_seq(),
                        format!(
                            "{} is not sealed but {} follows it (records removed from its end, or its seal)",
                            segments::segment_name(p.n),
                            seg.name()
                        ),
                    ));
                }
            }
            prev = Some(this);
        }
        Ok(())
    }

    pub(super) fn segment(
        &mut self,
        seg: &SegmentFile,
        prev: Option<&Previous>,
        mut visit: Option<&mut (dyn FnMut(&AuditRecord) + '_)>,
    ) -> Result<Previous, VerifyFailure> {
        let name = seg.name();
        let unreadable =
            |seq: u64, e: std::io::Error| fail(seq, format!("cannot read {name}: {e}"));
        if let Some(copy) = &seg.also {
            // A move to the archive was interrupted: the copy must be the segment itself.
            let same = match segments::same_bytes(&seg.path, copy) {
                // The move finished since the listing: one copy is left, and is read below.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                other => other.map_err(|e| unreadable(self.chain.next_seq(), e))?,
            };
            if !same {
                return Err(fail(
                    self.chain.next_seq(),
                    format!("{name} is both in audit/ and in audit/archive/, with different contents (one of them was altered)"),
                ));
            }
        }
        let file = seg
            .open()
            .map_err(|e| unreadable(self.chain.next_seq(), e))?;
        let len = file.metadata().map_or(0, |m| m.len());
        let len = self.budget.map_or(len, |b| len.min(b - self.bytes));
        let len = match self.frontier {
            Some((n, at)) if n == seg.n => len.min(at),
            _ => len,
        };
        let after_seal = file
            .try_clone()
            .map_err(|e| unreadable(self.chain.next_seq(), e))?;
        let mut lines = LogLines::of(file, len);
        let mut this = Previous {
            n: seg.n,
            sealed: false,
            lines: 0,
        };
        let mut pending = 0u64;
        let result = (|| {
            while let Some(line) = lines
                .next_line()
                .map_err(|e| unreadable(self.chain.next_seq(), e))?
            {
                pending += line.len() as u64 + 1;
                if pending >= 1 << 20 {
                    self.progress.advance(std::mem::take(&mut pending));
                }
                let here = self.chain.next_seq();
                if this.sealed {
                    return Err(fail(here, format!("{name} has a line after its seal")));
                }
                let kind = segments::classify(line).map_err(|b| fail(here, b.0))?;
                let first = this.lines == 0;
                this.lines += 1;
                match kind {
                    Line::Header(h) => {
                        if !first || seg.n == 0 {
                            return Err(fail(here, format!("{name} has a header line inside it")));
                        }
                        self.header(&h, seg, prev)?;
                    }
                    Line::Record(_) if first && seg.n > 0 => {
                        return Err(fail(here, format!("{name} does not start with its header")));
                    }
                    Line::Record(r) => {
                        if self.skip_before.is_some_and(|s| {
                            self.chain.prev_seq.is_none()
                                && segments::seq_prefix(r).is_some_and(|q| q < s)
                        }) {
                            continue;
                        }
                        match visit.as_deref_mut() {
                            Some(visit) => visit(&self.chain.record_parsed(r)?),
                            None => self.chain.record(r)?,
                        }
                    }
                    Line::Seal(cp) => {
                        if seg.n == 0 {
                            return Err(fail(
                                here,
                                format!("{name} (an earlier release's log) has a seal line"),
                            ));
                        }
                        self.seal(&cp, &name)?;
                        this.sealed = true;
                    }
                }
            }
            Ok(())
        })();
        self.progress.advance(pending);
        self.bytes += lines.consumed();
        result?;
        // The writer cuts a segment at its seal; only zeros (space it had filled ahead) may
        // follow, never a line hidden behind a NUL byte or left without its newline.
        if this.sealed {
            let at = lines.consumed();
            let len = after_seal
                .metadata()
                .map_err(|e| unreadable(self.chain.next_seq(), e))?
                .len();
            if len.saturating_sub(at) > segments::MAX_AFTER_SEAL {
                return Err(fail(
                    self.chain.next_seq(),
                    format!(
                        "{name} holds {} byte(s) after its seal, more than the writer ever leaves there (written after it was sealed, or extended)",
                        len - at
                    ),
                ));
            }
            if let Some(end) = segments::dirty_after(&after_seal, at)
                .map_err(|e| unreadable(self.chain.next_seq(), e))?
            {
                return Err(fail(
                    self.chain.next_seq(),
                    format!(
                        "{name} holds {} byte(s) after its seal (written after it was sealed)",
                        end - at
                    ),
                ));
            }
        }
        Ok(this)
    }

    fn header(
        &mut self,
        h: &segments::SegmentHeader,
        seg: &SegmentFile,
        prev: Option<&Previous>,
    ) -> Result<(), VerifyFailure> {
        let here = self.chain.next_seq();
        let name = seg.name();
        if let Some(p) = prev {
            // An earlier release's audit.log may be empty (created when it opened, or cut
            // to nothing by its torn-tail repair): the header below must then start the
            // chain at record 1, which it proves.
            if p.lines == 0 && p.n > 0 {
                return Err(fail(
                    here,
                    format!(
                        "{} is empty but {name} follows it",
                        segments::segment_name(p.n)
                    ),
                ));
            }
            if p.n > 0 && !p.sealed {
                return Err(fail(here, format!("{} is not sealed but {name} follows it (records removed from its end, or its seal)", segments::segment_name(p.n))));
            }
        }
        if h.n != seg.n {
            return Err(fail(
                here,
                format!(
                    "{name} has the header of segment {} (renamed or swapped)",
                    h.n
                ),
            ));
        }
        // Read from a checkpoint on (start-up), the first header is taken as it is: the
        // record the checkpoint covers, found after it, proves where the chain stands.
        let mid_chain = self.chain.prev_seq.is_none() && self.skip_before.is_some();
        if !mid_chain && (h.first_seq != here || h.prev_hash != self.chain.prev_hash) {
            return Err(fail(here, format!("{name}'s header does not continue the chain (it starts at {} after hash {}…; the log is at {here})", h.first_seq, h.prev_hash.chars().take(12).collect::<String>())));
        }
        Ok(())
    }

    fn seal(&mut self, cp: &Checkpoint, name: &str) -> Result<(), VerifyFailure> {
        let signed = cp.verifies(self.chain.verifier);
        if !signed {
            return Err(fail(
                cp.seq,
                format!("{name}'s seal signature is invalid (forged, or the public key given is not the one that signed this log)"),
            ));
        }
        if self.chain.prev_seq != Some(cp.seq) || self.chain.prev_hash != cp.hash {
            return Err(fail(
                cp.seq,
                format!("{name}'s seal does not cover its last record (records removed or added)"),
            ));
        }
        Ok(())
    }
}
