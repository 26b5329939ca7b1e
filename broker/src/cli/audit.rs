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
use crate::audit::{self, chains, ExportFilter, VerifyFailure, VerifySummary};
use crate::config::Config;
use crate::keys::{AuditSigner, AuditVerifier};
use crate::progress::Progress;
use crate::store::Backend;

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

/// One chain's verification: which chain (`None`: a single broker's file log), its result.
type ChainResult = (Option<u32>, Result<VerifySummary, VerifyFailure>);

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

/// What a pinned copy could not vouch for in an export, one note a line: a chain of the copy
/// the export does not hold (made before that chain began, or left out), and a chain of the
/// export none of whose records the copy pins (a filtered export, or one older than the copy's
/// first checkpoint). Neither was compared, and the OK lines alone would not say so.
fn export_pin_notes(pins: &audit::Pins, results: &[ChainResult]) -> String {
    let name = |chain: Option<u32>| {
        chain.map_or_else(
            || "the file log".to_owned(),
            |r| format!("replica {r}'s chain"),
        )
    };
    let present: Vec<Option<u32>> = results.iter().map(|(r, _)| *r).collect();
    let mut notes = String::new();
    for chain in pins.chains().filter(|c| !present.contains(c)) {
        notes.push_str(&format!(
            "\nnote: the pinned copy holds {}, which this export does not: not compared",
            name(chain)
        ));
    }
    for (chain, result) in results {
        if matches!(result, Ok(s) if s.pinned == 0) {
            notes.push_str(&format!(
                "\nnote: the pinned copy vouches for no record this export holds of {}: not compared",
                name(*chain)
            ));
        }
    }
    notes
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

fn verify(args: &VerifyArgs) -> Result<ExitCode, String> {
    let mut trust_note = String::new();
    let is_export = args.export.is_some();
    // A segment or an export is checked with the key the operator pins (clap requires it).
    let pinned = || -> Result<AuditVerifier, String> {
        let key = args
            .public_key
            .as_ref()
            .ok_or("--export and --segment need --public-key")?;
        AuditVerifier::load(key).map_err(|e| e.to_string())
    };
    // What the chains were held to (--pinned, --previous): a failed chain's JSON carries it.
    let mut carried = audit::Pins::default();
    let results: Vec<ChainResult> = if let Some(segment) = &args.segment {
        let verifier = pinned()?;
        let result = audit::verify_segment(segment, &verifier);
        if let Ok(s) = &result {
            let first = s.first_seq.unwrap_or(1);
            let start = if first == 1 {
                "it starts the log".to_owned()
            } else {
                format!("that it follows the segment before is proven with that segment (its seal, or an earlier release's audit.log, must end at record {} with the hash in this segment's header)", first - 1)
            };
            trust_note = format!(
                "\nnote: one file proves records {first}..{} genuine and in order, ending at a signed checkpoint; {start}. It does not prove it is the whole segment (a seal is a checkpoint like any other: a segment cut at one passes): the next segment's header must start at record {} with this last record's hash. Verifying the whole audit directory proves both.",
                s.last_seq.unwrap_or(0),
                s.last_seq.unwrap_or(0).saturating_add(1)
            );
        }
        vec![(None, result)]
    } else if let Some(export) = &args.export {
        let verifier = pinned()?;
        let pins = pins_of(args.pinned.as_deref(), args.previous.as_deref(), &verifier)?;
        carried = pins.clone();
        // A file is read by position, a line at a time: an export of any size verifies in
        // constant memory. A pipe (`--export /dev/stdin`) cannot be read twice: it is copied
        // first to a file in the temporary directory (gone when it is closed), not into
        // memory, which an export of millions of records would exhaust.
        let shown = |e: std::io::Error| format!("{}: {e}", export.display());
        // A device is no export: one put in its place (`/dev/zero`) would be copied until
        // the temporary directory (a tmpfs: memory) is full, and opening some (a watchdog, a
        // tape) acts. Refused before it is opened, and again as opened (a swap between the
        // two), never made the controlling terminal.
        let not_an_export = |kind: std::fs::FileType| {
            use std::os::unix::fs::FileTypeExt;
            (kind.is_char_device() || kind.is_block_device() || kind.is_dir()).then(|| {
                format!(
                    "{}: not an export (a device or a directory): give the export's file, or a pipe",
                    export.display()
                )
            })
        };
        if let Some(refused) = not_an_export(std::fs::metadata(export).map_err(shown)?.file_type())
        {
            return Err(refused);
        }
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOCTTY)
                .open(export)
                .map_err(shown)?
        };
        let kind = file.metadata().map_err(shown)?.file_type();
        if let Some(refused) = not_an_export(kind) {
            return Err(refused);
        }
        let results = if kind.is_file() {
            audit::verify_exports_pinned(&file, &verifier, &pins)
        } else {
            // tempfile: O_TMPFILE where the file system has it, else a random name (0600,
            // never following a link) unlinked at once.
            let dir = std::env::temp_dir();
            let spooled = |e: std::io::Error| {
                format!(
                    "{}: no temporary file to hold the piped export ({e}); point TMPDIR at a directory with room for it, or give the export as a file",
                    dir.display()
                )
            };
            let mut spool = tempfile::tempfile_in(&dir).map_err(spooled)?;
            let mut from = &file;
            loop {
                let mut buf = [0u8; 64 * 1024];
                let n = match std::io::Read::read(&mut from, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(shown(e)),
                };
                std::io::Write::write_all(&mut spool, &buf[..n]).map_err(spooled)?;
            }
            audit::verify_exports_pinned(&spool, &verifier, &pins)
        };
        if args.pinned.is_some() {
            trust_note.push_str(&export_pin_notes(&pins, &results));
        }
        results
    } else {
        let config = local_config(&args.local)?;
        let key = match &args.public_key {
            Some(k) => k.clone(),
            None => {
                check_host_public_key(&config, args.local.names_config())?;
                let k = config.audit_public_key_file();
                // Whoever can rewrite the log on this host can replace this key too.
                trust_note = format!(
                    "\nnote: verified with the public key found on this host ({}); anyone able to rewrite the log here could have replaced it. Pin a copy kept elsewhere with --public-key.",
                    k.display()
                );
                k
            }
        };
        let verifier = AuditVerifier::load(&key).map_err(|e| e.to_string())?;
        let pins = pins_of(args.pinned.as_deref(), args.previous.as_deref(), &verifier)?;
        carried = pins.clone();
        let mut results = Vec::new();
        if !shared(&config) || audit::segments::has_file_log(&config.audit_dir()) {
            let bar = Bar::new(Output::shows_progress(args.output));
            let result = audit::verify_log_pinned(
                &config.audit_dir(),
                &verifier,
                config.audit.max_unanchored(),
                pins.of(None),
                &bar,
            );
            results.push((None, audit::judged(result)));
        }
        if shared(&config) {
            let (chains, store_rows) =
                runtime()?.block_on(verify_chains(&config, &verifier, &pins))?;
            if chains.is_empty() && store_rows > 0 {
                // Every change of the store is audited, so a store in use has chains: none at
                // all is expected only of a store migrated here and not yet served.
                trust_note.push_str(&format!(
                    "\nnote: the database holds {store_rows} store record(s) but no audit chain. That is expected only before the first broker started on it (a store just migrated: its history is in the migrating host's file log); after, every chain was removed. Verify with --pinned and a copy kept off the host"
                ));
            }
            results.extend(chains);
        }
        // A chain the copy pins that is not there at all (its records deleted, every row).
        let present: Vec<Option<u32>> = results.iter().map(|(r, _)| *r).collect();
        results.extend(
            pins.missing_chains(&present)
                .into_iter()
                .map(|(chain, f)| (chain, Err(f))),
        );
        results
    };
    if args.output == Some(Output::Json) {
        let chains: Vec<serde_json::Value> =
            results.iter().map(|r| chain_json(r, &carried)).collect();
        let verified = results.iter().all(|r| r.1.is_ok());
        // What the text form notes after its verdict (a key taken from this host, a pinned
        // copy's findings): a monitor reading the JSON is told as much.
        let notes: Vec<&str> = trust_note
            .lines()
            .map(|l| l.trim_start_matches("note: "))
            .filter(|l| !l.is_empty())
            .collect();
        output::print(
            &serde_json::json!({
                "verified": verified,
                "public_key_pinned": args.public_key.is_some(),
                "notes": notes,
                "chains": chains,
            }),
            Output::Json,
        );
        return Ok(if verified {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let several = results.len() > 1 || results.iter().any(|r| r.0.is_some());
    if results.is_empty() {
        println!("audit OK: the database holds no audit chain yet{trust_note}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = false;
    for (replica, result) in &results {
        let label = match (several, replica) {
            (false, _) => String::new(),
            (true, Some(r)) => format!("replica {r}: "),
            (true, None) => "file log: ".to_owned(),
        };
        match result {
            Ok(s) => println!("{label}{}", ok_line(s, is_export)),
            Err(f) => {
                failed = true;
                // The reason can quote what the log holds, which whoever wrote the log chose.
                println!(
                    "{label}audit FAILED at sequence {}: {}",
                    f.seq,
                    super::output::sanitize(&f.reason)
                );
            }
        }
    }
    if !failed && !trust_note.is_empty() {
        println!("{}", trust_note.trim_start_matches('\n'));
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The records `--pinned` and `--previous` vouch for.
///
/// # Errors
/// A copy or a run that cannot be read, or is refused (see [`audit::Pins`]).
pub(super) fn pins_of(
    pinned: Option<&std::path::Path>,
    previous: Option<&std::path::Path>,
    verifier: &AuditVerifier,
) -> Result<audit::Pins, String> {
    let mut pins = match pinned {
        Some(path) => audit::Pins::from_path(path, verifier)
            .map_err(|e| format!("{}: {e}", path.display()))?,
        None => audit::Pins::default(),
    };
    if let Some(path) = previous {
        /// A run's JSON names each chain in a few hundred bytes.
        const MAX_RUN: u64 = 16 << 20;
        let shown = |e: String| format!("{}: {e}", path.display());
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(
                std::fs::File::open(path).map_err(|e| shown(e.to_string()))?,
                MAX_RUN + 1,
            ),
            &mut bytes,
        )
        .map_err(|e| shown(e.to_string()))?;
        if bytes.len() as u64 > MAX_RUN {
            return Err(shown(format!(
                "more than {MAX_RUN} bytes: not the JSON of one `audit verify --output json` run"
            )));
        }
        pins.add_previous(&bytes).map_err(shown)?;
    }
    Ok(pins)
}

/// One chain's verification as JSON (the `--output json` of `audit verify`). A chain that
/// failed carries the last record `carried` held it to (from --pinned or --previous), so a
/// run given this JSON as --previous still holds it to that record.
fn chain_json((replica, result): &ChainResult, carried: &audit::Pins) -> serde_json::Value {
    let chain = replica.map_or_else(|| "file log".to_owned(), |r| format!("replica {r}"));
    let last_pin = carried
        .of(*replica)
        .and_then(|p| p.last_key_value())
        .map(|(seq, hash)| (*seq, hash.clone()));
    match result {
        Ok(s) => serde_json::json!({
            "chain": chain,
            "replica": replica,
            "verified": true,
            "records": s.records,
            "first_seq": s.first_seq,
            "last_seq": s.last_seq,
            "last_hash": s.last_hash,
            "checkpoints": s.checkpoints,
            "last_checkpoint": s.last_checkpoint,
            "pinned": s.pinned,
            "exported_at": s.exported.as_ref().map(|e| &e.0),
            "export_id": s.exported.as_ref().map(|e| &e.1),
            "filtered": s.filtered,
            "signed_filter": s.signed_filter,
            "signed_head": s.signed_head,
            "failure": null,
        }),
        Err(f) => serde_json::json!({
            "chain": chain,
            "replica": replica,
            "verified": false,
            "failure": { "seq": f.seq, "reason": f.reason },
            "carried_seq": last_pin.as_ref().map(|p| p.0),
            "carried_hash": last_pin.map(|p| p.1),
        }),
    }
}

/// Every replica chain's verification, and how many store records the database holds (read
/// in the same snapshot).
async fn verify_chains(
    config: &Config,
    verifier: &AuditVerifier,
    pins: &audit::Pins,
) -> Result<(Vec<ChainResult>, i64), String> {
    let mut client = chains::connect(&config.store).await?;
    let snapshot = chains::snapshot(&mut client).await?;
    let store_rows: i64 = snapshot
        .query_one("SELECT count(*) FROM credbroker_records", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| format!("database: {e}"))?;
    let mut results = Vec::new();
    for replica in chains::replicas(&snapshot).await? {
        let result = chains::verify_chain_pinned(
            &snapshot,
            replica,
            verifier,
            config.audit.max_unanchored(),
            pins.of(Some(replica)),
        )
        .await?;
        results.push((Some(replica), audit::judged(result)));
    }
    Ok((results, store_rows))
}

fn ok_line(s: &VerifySummary, is_export: bool) -> String {
    use super::output::sanitize;
    if s.records == 0 {
        return format!(
            "audit OK: {} holds no records{}{}",
            if is_export {
                "the export (signature valid)"
            } else {
                "the log"
            },
            s.signed_head.map_or(String::new(), |h| format!(
                "; the log head was {h} when it was exported"
            )) + &s.signed_filter.as_ref().map_or(String::new(), |f| format!(
                "; signed filter: {}",
                sanitize(f)
            )),
            if is_export {
                ""
            } else {
                " (a log never written to, or one emptied: nothing on this host tells which; --previous or --pinned with a copy kept off the host does)"
            },
        );
    }
    // Records past the last checkpoint are chained, not signed: whoever can write the log
    // could have written them (up to `max_unanchored`), so the line says how many.
    let unsigned = match (s.last_seq, s.last_checkpoint, s.signed_head) {
        (Some(last), Some(cp), None) if last > cp => format!(
            "; records {}..{last} follow the last checkpoint and are not yet covered by a signature",
            cp.saturating_add(1)
        ),
        (Some(last), None, None) => format!(
            "; records {}..{last} are not yet covered by a signature",
            s.first_seq.unwrap_or(1)
        ),
        _ => String::new(),
    };
    format!(
        "audit OK: {} records (sequence {}..{}), {} checkpoint(s) matched, last signed checkpoint at {}{}{}",
        s.records,
        s.first_seq.map_or("-".into(), |v| v.to_string()),
        s.last_seq.map_or("-".into(), |v| v.to_string()),
        s.checkpoints,
        s.last_checkpoint.map_or("none".into(), |v| v.to_string()),
        match (&s.signed_filter, s.filtered) {
            (Some(f), _) => format!(" (filtered export, signed filter: {}; it proves what it holds, not what the filter left out)", sanitize(f)),
            (None, true) => " (filtered: every record is bound to the signature)".to_owned(),
            (None, false) => String::new(),
        },
        s.signed_head
            .map_or(String::new(), |h| format!(", export signed at log head {h}")),
    ) + &s.exported.as_ref().map_or(String::new(), |(at, id)| {
        format!(" (exported {}, export id {})", sanitize(at), sanitize(id))
    }) + &if s.pinned > 0 {
        format!(", {} pinned record(s) found unchanged", s.pinned)
    } else {
        String::new()
    } + &unsigned
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
