//! `credbroker audit report`: the auditor's page. Every chain is verified first (the whole
//! log, whatever the window), then the records of the window are summed up into one
//! self-contained HTML page and/or a JSON summary of the same figures.

use std::path::PathBuf;
use std::process::ExitCode;

use aws_lc_rs::digest::{digest, SHA256};
use clap::Args;

use super::offline::{local_config, LocalArgs};
use super::output::Output;
use super::progress::Bar;
use super::runtime;
use crate::audit::report::{html, ReportBuilder, ReportSummary};
use crate::audit::{self, chains};
use crate::keys::AuditVerifier;
use crate::store::Backend;

/// `credbroker audit report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    local: LocalArgs,
    #[command(flatten)]
    window: super::audit::WindowArgs,
    /// Write the HTML page here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Write the JSON summary here (with neither --html nor --json, it goes to standard
    /// output).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Audit public key to verify with (default: the data directory's; pin a copy kept
    /// elsewhere).
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// A copy of the log's signed checkpoints kept off the host (a copy of
    /// audit/checkpoints.log, or an earlier `audit export` file), as `audit verify --pinned`
    /// takes it: every record it vouches for must still be in the log, unchanged, or the
    /// chain is reported as failed.
    #[arg(long, value_name = "FILE")]
    pinned: Option<PathBuf>,
    /// The JSON of an earlier `audit verify --output json` run kept off the host, as `audit
    /// verify --previous` takes it: each chain's last record it names must still be in the
    /// log, unchanged, or the chain is reported as failed.
    #[arg(long, value_name = "FILE")]
    previous: Option<PathBuf>,
}

/// Runs `audit report`: exit 0 when every chain verified, 1 when one did not (the report is
/// written either way and says so first).
///
/// # Errors
/// When the config, key or log cannot be read, or a file cannot be written.
pub fn run(args: &ReportArgs) -> Result<ExitCode, String> {
    let config = local_config(&args.local)?;
    let window = args.window.filter()?;
    if args.public_key.is_none() {
        super::audit::check_host_public_key(&config, args.local.names_config())?;
    }
    let key = args
        .public_key
        .clone()
        .unwrap_or_else(|| config.audit_public_key_file());
    // Read once: the fingerprint shown is of the key verified with.
    let key_text =
        crate::keys::read_public_key_file(&key).map_err(|e| format!("{}: {e}", key.display()))?;
    let verifier =
        AuditVerifier::parse(&key_text).map_err(|e| format!("{}: {e}", key.display()))?;
    let pins = super::audit::pins_of(args.pinned.as_deref(), args.previous.as_deref(), &verifier)?;
    let mut present = Vec::new();
    let fingerprint = hex::encode(digest(&SHA256, key_text.trim_ascii()).as_ref());
    let mut builder = ReportBuilder::new(window);
    let max = config.audit.max_unanchored();
    let shared = config.store.backend == Backend::Postgres;
    if !shared || audit::segments::has_file_log(&config.audit_dir()) {
        // Two passes over the same bytes, each a line at a time (memory stays flat): the
        // first verifies; the second verifies again as it hands each record to the report,
        // so nothing is summed up that did not pass — and if the file changed between the
        // passes, the two results differ and the chain is reported as failed.
        let bar = Bar::new(Output::shows_progress(None));
        let dir = config.audit_dir();
        let first = audit::judged(audit::verify_log_pinned(
            &dir,
            &verifier,
            max,
            pins.of(None),
            &bar,
        ));
        present.push(None);
        let upto = first
            .as_ref()
            .ok()
            .map(|s| (s.bytes, s.last_seq.unwrap_or(0)));
        let mut second = None;
        builder.chain("file log", &first, |each| {
            second = Some(audit::judged(audit::verify_log_visit(
                &dir,
                &verifier,
                max,
                upto,
                pins.of(None),
                &bar,
                each,
            )));
        });
        // The same records, ending in the same hash (checkpoints signed meanwhile may
        // differ in number, not in what they prove).
        let same = match (&first, &second) {
            (Ok(a), Some(Ok(b))) => {
                (a.records, a.last_seq, &a.last_hash) == (b.records, b.last_seq, &b.last_hash)
            }
            (Err(a), Some(Err(b))) => a.seq == b.seq,
            _ => false,
        };
        if !same {
            builder.fail_last_chain(
                first.as_ref().map_or_else(|f| f.seq, |s| s.last_seq.unwrap_or(0)),
                "the log changed between the verification and the summary: make the report again, and verify the log".into(),
            );
        }
    }
    if shared {
        runtime()?.block_on(async {
            let mut client = chains::connect(&config.store).await?;
            // One repeatable-read snapshot: the chain verified is the chain summed up.
            let snapshot = chains::snapshot(&mut client).await?;
            for replica in chains::replicas(&snapshot).await? {
                present.push(Some(replica));
                let verified = audit::judged(
                    chains::verify_chain_pinned(
                        &snapshot,
                        replica,
                        &verifier,
                        max,
                        pins.of(Some(replica)),
                    )
                    .await?,
                );
                let lines = chains::ChainLines {
                    client: &snapshot,
                    replica,
                };
                let mut read = Ok(());
                builder.chain(&format!("replica {replica}"), &verified, |each| {
                    // Nothing past a row that does not parse is summed up: the verification
                    // stopped there, and what follows was never checked.
                    let mut unreadable = false;
                    read = audit::LineSource::each(&lines, &mut |line| {
                        match serde_json::from_slice::<audit::AuditRecord>(line) {
                            Ok(rec) if !unreadable => each(&rec),
                            _ => unreadable = true,
                        }
                        Ok(())
                    });
                });
                read.map_err(|e| format!("database: {e}"))?;
            }
            Ok::<_, String>(())
        })?;
    }
    // A chain the copy pins that is not there at all (its records deleted, every row).
    for (chain, failure) in pins.missing_chains(&present) {
        let label = chain.map_or_else(|| "file log".to_owned(), |r| format!("replica {r}"));
        builder.chain(&label, &Err(failure), |_| {});
    }
    let mut summary = builder.finish(
        fingerprint,
        key.display().to_string(),
        args.public_key.is_some(),
    );
    summary.pinned_copy = args.pinned.as_ref().map(|p| p.display().to_string());
    summary.previous_run = args.previous.as_ref().map(|p| p.display().to_string());
    write(args, &summary)?;
    Ok(if summary.verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn write(args: &ReportArgs, summary: &ReportSummary) -> Result<(), String> {
    let json = super::output::json_pretty(summary)?;
    let save = |path: &PathBuf, text: &str| {
        super::output::write_private(path, |f| {
            std::io::Write::write_all(f, text.as_bytes())
                .map_err(|e| format!("{}: {e}", path.display()))
        })
    };
    if let Some(path) = &args.html {
        save(path, &html::render(summary))?;
    }
    if let Some(path) = &args.json {
        save(path, &json)?;
    }
    if args.html.is_none() && args.json.is_none() {
        println!("{json}");
        return Ok(());
    }
    eprintln!(
        "audit report: {} ({} chain(s)), {} record(s) in the window, {} resolve denial(s), {} admin change(s){}{}",
        if summary.verified { "verified" } else { "VERIFICATION FAILED" },
        summary.chains.len(),
        summary.records,
        summary.denials_total,
        summary.admin_changes_total,
        args.html.as_ref().map_or(String::new(), |p| format!("; HTML {}", p.display())),
        args.json.as_ref().map_or(String::new(), |p| format!("; JSON {}", p.display())),
    );
    Ok(())
}
