//! `[audit]`: the audit writer's batches, checkpoints and file-log segments.

use serde::{Deserialize, Serialize};

/// `[audit]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Most records per group commit (one fdatasync).
    pub max_batch: usize,
    /// Sign a checkpoint after this many records.
    pub checkpoint_every_records: u64,
    /// …or after this many seconds with unanchored records.
    pub checkpoint_interval_s: u64,
    /// Seal a segment of the file log and start the next one at this size (MiB, 1-4096).
    pub segment_mib: u64,
    /// …or at this many records (0: size only).
    pub segment_records: u64,
    /// Sealed segments kept in `audit/` beside the live one; older ones are moved to
    /// `audit/archive/` (never deleted).
    pub live_segments: usize,
    /// Set by `serve --forensic-start`, never by the file.
    #[serde(skip)]
    pub forensic_start: bool,
}

impl AuditSettings {
    /// The longest tail the writer leaves without a signed checkpoint.
    pub fn max_unanchored(&self) -> u64 {
        crate::audit::max_unanchored(self.checkpoint_every_records, self.max_batch)
    }
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            max_batch: 128,
            checkpoint_every_records: 1000,
            checkpoint_interval_s: 60,
            segment_mib: 64,
            segment_records: 0,
            live_segments: 8,
            forensic_start: false,
        }
    }
}
