//! The tamper-evident audit log.
//!
//! Records live in append-only segment files beside the store (`<data>/audit/`, see
//! [`segments`]), one canonical JSON object per line, each carrying the hash of its
//! predecessor and its own SHA-256 hash. A separate file (`checkpoints.log`) holds
//! Ed25519-signed (sequence, hash) checkpoints, and each sealed segment ends with one, so an
//! auditor holding only the public key can verify an export, and a log rewritten from some
//! point on is caught at the first checkpoint after it.
//!
//! Why files and not a sled tree: they are readable by `credbroker audit verify|export`
//! while the daemon holds sled's exclusive lock, and writing into space zero-filled ahead
//! with one `fdatasync` per batch is the cheapest durable write there is (BENCHMARKING.md). Appends from concurrent
//! requests are group-committed by one writer thread: nothing is acknowledged before the
//! batch holding it is on disk, and if the write fails every request in the batch fails
//! closed with `audit_unavailable`.

pub mod chains;
mod export;
pub mod lines;
mod record;
pub mod report;
pub mod segments;
mod tail;
mod verify;
mod writer;

pub use export::{export, write_document, ExportFilter, ExportSet, FileLines, LineSource};
pub use record::{AuditEvent, AuditRecord, Checkpoint, GENESIS_HASH};
pub use verify::{
    complete_lines, judged, never_signed, verify_export, verify_exports, verify_exports_pinned,
    verify_log, verify_log_pinned, verify_log_visit, verify_log_with, verify_segment,
    verify_since_last_checkpoint, ChainCheck, Pins, ReadAt, VerifyFailure, VerifySummary,
};
pub use writer::{max_unanchored, AuditConfig, AuditError, AuditLog, AuditReceipt};

use std::path::{Path, PathBuf};

/// The single-file log of earlier releases (segment 0 of the file log).
pub fn legacy_log_path(audit_dir: &Path) -> PathBuf {
    audit_dir.join(segments::LEGACY_NAME)
}

/// File holding the signed checkpoints.
pub fn checkpoints_path(audit_dir: &Path) -> PathBuf {
    audit_dir.join("checkpoints.log")
}
