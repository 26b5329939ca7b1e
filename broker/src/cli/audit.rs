//! `credbroker audit verify | export | public-key`.
//!
//! On a store several replicas share, the audit is one chain per replica in the database:
//! `verify` checks every chain (and the file log of the time before the store moved there,
//! when the data directory still holds one) and reports each; `export` writes one signed
//! document per chain into one file, which `verify --export` checks document by document.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::offline::{local_config, LocalArgs};
use super::output::{self, Output};
use super::progress::Bar;
use super::runtime;
use crate::audit::{self, chains, ExportFilter};
use crate::config::Config;
use crate::keys::AuditSigner;
use crate::progress::Progress;
use crate::store::Backend;

mod verify;
pub(super) use verify::pins_of;
use verify::verify;

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Verify the hash chain and signed checkpoints (each replica's chain, and the file log,
    /// on a shared store); exits 1 naming the first bad sequence.
    Verify(VerifyArgs),
    /// Export records as JSON lines (header, records, checkpoints) for auditors; on a shared
    /// store one signed document per chain in one file.
    Export(ExportArgs),
    /// Print the audit public key auditors verify exports with (on the broker's host: it
    /// refuses unless the signing key beside it is there and matches).
    PublicKey(LocalArgs),
    /// Verify every chain, then write one self-contained HTML page (--html) and/or a JSON
    /// summary (--json): resolves over time by outcome, counts by provider, tenant and
    /// error code, denials, admin changes, checkpoint coverage. Exits 1 when a chain does
    /// not verify (the report says so first).
    Report(super::audit_report::ReportArgs),
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    local: LocalArgs,
    /// Verify an export file instead of the live log (requires --public-key).
    #[arg(long, requires = "public_key")]
    export: Option<PathBuf>,
    /// Verify one sealed segment file on its own, e.g. one taken from audit/archive/
    /// (requires --public-key): its records chain from its header, its seal verifies, only
    /// zeros follow it. Where it sits in the log (after which segment, and cut short or not)
    /// is proven only with its neighbours or the whole directory.
    #[arg(long, requires = "public_key", conflicts_with = "export")]
    segment: Option<PathBuf>,
    /// Audit public key file (default: the data directory's).
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// A copy of the log's signed checkpoints kept off the host: a copy of
    /// audit/checkpoints.log, or an earlier `audit export` file (every chain it holds).
    /// Every record it vouches for must still be in the log, unchanged: a log rolled back,
    /// emptied, or rewritten after its latest checkpoints were removed fails. Verified with
    /// the same public key. With --export: every pinned record up to the head the export
    /// signed must be in it as pinned (an unfiltered export holds them all; a filtered one
    /// is checked on the records it holds).
    #[arg(long, value_name = "FILE", conflicts_with = "segment")]
    pinned: Option<PathBuf>,
    /// The JSON of an earlier `audit verify --output json` run, kept off the host: each
    /// chain's last record it names (`last_seq`, `last_hash`) must still be in the log,
    /// unchanged. Catches what signed checkpoints cannot: a tail cut since that run inside
    /// the unsigned limit, or a log emptied. Combines with --pinned. Not with --export (an
    /// export proves the log up to the head it signed, which may precede the run's last
    /// record: give the auditor's --pinned copy instead). A chain that fails carries the
    /// record it was held to (`carried_seq`, `carried_hash`), so the next run given this
    /// run's JSON still holds it to it.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["segment", "export"])]
    previous: Option<PathBuf>,
    /// `table`: one line per chain (the default); `json`: {"verified", "chains": [{"chain",
    /// "replica", "verified", "records", "first_seq", "last_seq", "last_hash",
    /// "checkpoints", "last_checkpoint", "pinned", "failure"}]}: keep it off the host for the
    /// next run's --previous.
    #[arg(long, value_enum)]
    output: Option<Output>,
}

/// Which records an export or a report covers.
#[derive(Args, Debug)]
pub struct WindowArgs {
    /// Only records at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Only records before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// Only records of this tenant.
    #[arg(long)]
    tenant: Option<String>,
}

impl WindowArgs {
    /// The filter these arguments ask for.
    ///
    /// # Errors
    /// A time that is not RFC 3339.
    pub fn filter(&self) -> Result<ExportFilter, String> {
        let parse = |s: &Option<String>, flag: &str| -> Result<Option<OffsetDateTime>, String> {
            s.as_ref()
                .map(|v| {
                    OffsetDateTime::parse(v, &Rfc3339)
                        .map_err(|_| format!("{flag} must be RFC 3339, e.g. 2026-01-31T00:00:00Z"))
                })
                .transpose()
        };
        Ok(ExportFilter {
            since: parse(&self.since, "--since")?,
            until: parse(&self.until, "--until")?,
            tenant: self.tenant.clone(),
        })
    }
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    local: LocalArgs,
    #[command(flatten)]
    window: WindowArgs,
    /// Write to this file instead of standard output.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// Runs an `audit` subcommand.
///
/// # Errors
/// When the config, key or log cannot be read.
pub fn run_audit(cmd: AuditCmd) -> Result<ExitCode, String> {
    match cmd {
        AuditCmd::Verify(args) => verify(&args),
        AuditCmd::Export(args) => export(&args),
        AuditCmd::Report(args) => super::audit_report::run(&args),
        AuditCmd::PublicKey(local) => {
            let config = local_config(&local)?;
            // What this prints is what auditors pin: it comes only from beside a signing key
            // it matches, never from a directory whose signing key is gone (deleting it, and
            // the config beside it, would otherwise pass a swapped key on).
            check_host_public_key(&config, true)?;
            let text = crate::keys::read_public_key_file(&config.audit_public_key_file())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|e| format!("{}: {e}", config.audit_public_key_file().display()))?;
            // On an auditor's host the file is whatever was handed over.
            println!("{}", super::output::sanitize_lines(text.trim()));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Where the signing key is (the broker's host), the public key file beside the log must be
/// its key: one swapped in is never handed to auditors or verified with. Only a signing key
/// that is not there at all in an auditor's copy of the data directory (`--data-dir`) leaves
/// the file unchecked: one that is there but cannot be read as a key (corrupted, unreadable,
/// replaced by something else) refuses, or whoever swapped the public key would only have to
/// spoil the private one; and so does one missing where a deployment's config (`deployment`:
/// `--config`, the doctor) names it beside a public key, or they would only have to delete it.
pub(crate) fn check_host_public_key(config: &Config, deployment: bool) -> Result<(), String> {
    let key = config.audit_key_file();
    match std::fs::symlink_metadata(&key) {
        // A deployment not yet initialized has neither key: nothing to check.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && deployment
                && config.audit_public_key_file().exists() =>
        {
            return Err(format!(
                "the audit signing key {} named by this config is missing, so the public key beside the log ({}) cannot be checked against it: verify with --public-key naming the copy auditors pinned (an auditor's copy of the data directory, without credbroker.toml, is verified with --data-dir)",
                key.display(),
                config.audit_public_key_file().display()
            ));
        }
        // An auditor's copy without the signing key: the file is all there is.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        _ => {}
    }
    if signing_key_unreadable(config) {
        return Err(format!(
            "{} is not readable by this user, so the public key beside the log ({}) cannot be checked against it: run this as the daemon's user, or verify with --public-key naming the copy auditors pinned",
            key.display(),
            config.audit_public_key_file().display()
        ));
    }
    let signer = AuditSigner::load(&key).map_err(|e| {
        format!(
            "{e}: the audit signing key is here but cannot be read as one, so the public key beside the log ({}) cannot be checked against it. Verify with --public-key naming the copy auditors pinned",
            config.audit_public_key_file().display()
        )
    })?;
    crate::keys::loaded::check_audit_public_key(&signer, &config.audit_public_key_file())
        .map_err(|e| e.to_string())
}

/// Whether the signing key is the daemon's key as the daemon keeps it, which this user may
/// not read: a regular file (not a link), owned by the owner of the data directory (the
/// daemon's user), who is not this user, and readable by its owner alone (0600). That is no
/// sign of tampering; a key of this user's that refuses it (`chmod 000`), a link, a key
/// that is not 0600, or one owned by anyone but the data directory's owner is.
pub(crate) fn signing_key_unreadable(config: &Config) -> bool {
    use std::os::unix::fs::MetadataExt;
    let key = config.audit_key_file();
    let (Ok(meta), Ok(data_dir)) = (
        std::fs::symlink_metadata(&key),
        std::fs::metadata(&config.data_dir),
    ) else {
        return false;
    };
    meta.file_type().is_file()
        && meta.uid() == data_dir.uid()
        && meta.uid() != rustix::process::geteuid().as_raw()
        && meta.mode() & 0o077 == 0
        && std::fs::File::open(&key)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
}

fn shared(config: &Config) -> bool {
    config.store.backend == Backend::Postgres
}

fn export(args: &ExportArgs) -> Result<ExitCode, String> {
    let config = local_config(&args.local)?;
    let filter = args.window.filter()?;
    // The export is signed with the audit key, like the checkpoints.
    let signer = AuditSigner::load(&config.audit_key_file()).map_err(|e| e.to_string())?;
    let bar = Bar::new(Output::shows_progress(None));
    let count = match &args.output {
        Some(path) => super::output::write_private(path, |f| {
            let mut out = std::io::BufWriter::new(f);
            let n = export_all(&config, &filter, &signer, &mut out, &bar)?;
            out.flush()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(n)
        })?,
        None => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let n = export_all(&config, &filter, &signer, &mut out, &bar)?;
            out.flush().map_err(|e| e.to_string())?;
            n
        }
    };
    eprintln!("exported {count} records");
    Ok(ExitCode::SUCCESS)
}

/// Writes the file log's document (unless the store is shared and there is none), then one
/// per replica chain of a shared store.
fn export_all(
    config: &Config,
    filter: &ExportFilter,
    signer: &AuditSigner,
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> Result<u64, String> {
    let file_log = !shared(config) || audit::segments::has_file_log(&config.audit_dir());
    if !shared(config) {
        return audit::export(
            &config.audit_dir(),
            filter,
            signer,
            config.audit.max_unanchored(),
            None,
            out,
            progress,
        )
        .map_err(|e| e.to_string());
    }
    runtime()?.block_on(async {
        let mut client = chains::connect(&config.store).await?;
        let snapshot = chains::snapshot(&mut client).await?;
        let replicas = chains::replicas(&snapshot).await?;
        let documents = u32::try_from(replicas.len() + usize::from(file_log))
            .map_err(|_| "too many chains".to_owned())?;
        let mut sets = audit::ExportSet::for_file(documents)
            .map_err(|e| e.to_string())?
            .into_iter();
        let mut count = 0;
        if file_log {
            count += audit::export(
                &config.audit_dir(),
                filter,
                signer,
                config.audit.max_unanchored(),
                sets.next(),
                out,
                progress,
            )
            .map_err(|e| e.to_string())?;
        }
        for replica in replicas {
            // Never attest a chain that does not verify, nor one no checkpoint signs (as for
            // the file log).
            let verified = chains::verify_chain(
                &snapshot,
                replica,
                &signer.verifier(),
                config.audit.max_unanchored(),
            )
            .await?;
            if let Err(f) = audit::judged(verified) {
                return Err(format!("replica {replica}'s audit chain does not verify ({f}); export refused — see runbooks/audit-verification.md"));
            }
            let cps = chains::checkpoints(&snapshot, replica).await?;
            let lines = chains::ChainLines {
                client: &snapshot,
                replica,
            };
            count += audit::write_document(
                (Some(replica), sets.next()),
                &lines,
                &cps,
                filter,
                signer,
                out,
                progress,
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(count)
    })
}
