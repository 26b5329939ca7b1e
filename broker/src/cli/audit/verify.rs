//! `credbroker audit verify`: the live log (each replica's chain on a shared store), an
//! export, or one segment, against the public key and what copies kept off the host vouch
//! for; the verdict as lines or JSON.

use std::process::ExitCode;

use super::super::offline::local_config;
use super::super::output::{self, Output};
use super::super::progress::Bar;
use super::super::runtime;
use super::{check_host_public_key, shared, VerifyArgs};
use crate::audit::{self, chains, VerifyFailure, VerifySummary};
use crate::config::Config;
use crate::keys::AuditVerifier;

/// One chain's verification: which chain (`None`: a single broker's file log), its result.
type ChainResult = (Option<u32>, Result<VerifySummary, VerifyFailure>);

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

pub(super) fn verify(args: &VerifyArgs) -> Result<ExitCode, String> {
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
pub(in crate::cli) fn pins_of(
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
