//! `credbroker doctor`: checks a deployment the way an operator would before a start or
//! after a change, and says for each finding what to do. Nothing is changed: the doctor
//! reads files, opens the store only to read its schema version (not at all while the
//! daemon holds it), and writes nothing but one probe file it removes again in the audit
//! directory.

mod checks;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;
use serde_json::json;

use super::output::Output;
use super::runtime;

/// `credbroker doctor`.
#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// The TOML config file of the deployment.
    #[arg(long, required_unless_present = "dev_dir", conflicts_with = "dev_dir")]
    config: Option<PathBuf>,
    /// A dev data directory (its credbroker.toml); key files inside the data directory
    /// are expected there.
    #[arg(long)]
    dev_dir: Option<PathBuf>,
    /// Warn about certificates that expire, and CRLs due, within this many days.
    #[arg(long, default_value_t = 30)]
    expiry_warn_days: u32,
    /// Fail when the audit directory's file system has less free space than this (MiB).
    #[arg(long, default_value_t = 1024)]
    min_free_mib: u64,
    /// Output format [default: table on a terminal, json otherwise].
    #[arg(long, value_enum)]
    output: Option<Output>,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// Works, but needs attention soon or is not as production expects.
    Warn,
    /// Broken: the daemon would not start, or would be unsafe.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Which check (`config`, `keys.kek`, `tls.server_certificate`…).
    pub check: String,
    /// Its result.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do (absent when ok).
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &str, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.to_owned(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check: check.to_owned(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check: check.to_owned(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// What the checks are tuned by.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// A dev directory: keys inside the data directory are expected.
    pub dev: bool,
    /// Warn this many seconds ahead of an expiry.
    pub expiry_warn_s: i64,
    /// Least free space in the audit directory, bytes.
    pub min_free_bytes: u64,
}

/// Runs `doctor`: exit 0 when nothing failed (warnings allowed), 1 otherwise.
///
/// # Errors
/// Only when the runtime cannot start; every problem found is a finding.
pub fn run(args: &DoctorArgs) -> Result<ExitCode, String> {
    let (path, dev) = match (&args.config, &args.dev_dir) {
        (Some(c), _) => (c.clone(), false),
        (None, Some(d)) => (d.join("credbroker.toml"), true),
        (None, None) => return Err("give --config FILE or --dev-dir DIR".into()),
    };
    let thresholds = Thresholds {
        dev,
        expiry_warn_s: i64::from(args.expiry_warn_days) * 86_400,
        min_free_bytes: args.min_free_mib.saturating_mul(1024 * 1024),
    };
    let findings = runtime()?.block_on(checks::all(&path, thresholds));
    let failed = findings.iter().any(|f| f.status == Status::Fail);
    let warned = findings.iter().any(|f| f.status == Status::Warn);
    match Output::or_default(args.output) {
        Output::Json => super::output::print(
            &json!({
                "config": path.display().to_string(),
                "ok": !failed,
                "findings": findings,
            }),
            Output::Json,
        ),
        Output::Table => {
            // Details quote certificate subjects, paths and config errors: sanitized.
            let clean = super::output::sanitize;
            println!("credbroker doctor: {}", clean(&path.display().to_string()));
            let width = findings.iter().map(|f| f.check.len()).max().unwrap_or(0);
            for f in &findings {
                println!(
                    "{:<4}  {:<width$}  {}",
                    f.status.label(),
                    f.check,
                    clean(&f.detail)
                );
                if let Some(fix) = &f.fix {
                    println!("{:<4}  {:<width$}  fix: {}", "", "", clean(fix));
                }
            }
            let count = |s: Status| findings.iter().filter(|f| f.status == s).count();
            println!(
                "{} ok, {} warn, {} fail{}",
                count(Status::Ok),
                count(Status::Warn),
                count(Status::Fail),
                if failed {
                    ""
                } else if warned {
                    ": ready, with warnings"
                } else {
                    ": ready"
                }
            );
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
