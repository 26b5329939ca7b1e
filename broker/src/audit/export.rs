//! `credbroker audit export`: JSON lines an auditor can verify with the public key alone.
//!
//! Layout: one header line `{"export":{…}}`, the selected record lines byte-for-byte as
//! stored, then every checkpoint as `{"checkpoint":{…}}`. An unfiltered export is the whole
//! chain and detects deletions anywhere; a filtered one (time range, tenant) still proves each
//! record unaltered and in order, but cannot prove that nothing between them was removed —
//! the header says which it is.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::record::{AuditRecord, Checkpoint};
use super::verify::complete_lines;
use super::{checkpoints_path, log_path};
use crate::model::now_rfc3339;

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

/// The first line of an export.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportHeader {
    /// Format version.
    pub version: u32,
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
}

#[derive(Serialize)]
struct CheckpointLine<'a> {
    checkpoint: &'a Checkpoint,
}

/// Writes an export of the log in `audit_dir` to `out`; returns the number of records.
///
/// # Errors
/// On I/O failure, or a record that does not parse (run `audit verify` to locate it).
pub fn export(
    audit_dir: &Path,
    filter: &ExportFilter,
    out: &mut dyn Write,
) -> std::io::Result<u64> {
    let cps = std::fs::read(checkpoints_path(audit_dir)).or_else(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Ok(Vec::new())
        } else {
            Err(e)
        }
    })?;
    let log = std::fs::read(log_path(audit_dir))?;
    let fmt = |t: &Option<OffsetDateTime>| t.and_then(|t| t.format(&Rfc3339).ok());
    let header = ExportHeader {
        version: 1,
        filtered: !filter.is_empty(),
        since: fmt(&filter.since),
        until: fmt(&filter.until),
        tenant: filter.tenant.clone(),
        exported_at: now_rfc3339(),
    };
    serde_json::to_writer(&mut *out, &serde_json::json!({ "export": header }))?;
    out.write_all(b"\n")?;
    let mut last_seq = 0;
    let mut count = 0;
    for line in complete_lines(&log) {
        let rec: AuditRecord = serde_json::from_slice(line).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("record after sequence {last_seq} does not parse; run `credbroker audit verify`"),
            )
        })?;
        last_seq = rec.seq;
        if let Some(t) = &filter.tenant {
            if rec.event.tenant.as_deref() != Some(t.as_str()) {
                continue;
            }
        }
        if filter.since.is_some() || filter.until.is_some() {
            let at = OffsetDateTime::parse(&rec.time, &Rfc3339).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "record time does not parse",
                )
            })?;
            if filter.since.is_some_and(|s| at < s) || filter.until.is_some_and(|u| at >= u) {
                continue;
            }
        }
        out.write_all(line)?;
        out.write_all(b"\n")?;
        count += 1;
    }
    // Only checkpoints the exported log reaches; later ones were written after we read it.
    for line in complete_lines(&cps) {
        if let Ok(cp) = serde_json::from_slice::<Checkpoint>(line) {
            if cp.seq <= last_seq {
                serde_json::to_writer(&mut *out, &CheckpointLine { checkpoint: &cp })?;
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(count)
}
