//! The `credbroker` command line. `main.rs` only calls [`main`].
//!
//! - `offline`: the daemon (`dev`, `serve`), key set-up and rotation, audit tools;
//! - `admin`: records, bindings and secrets through the admin API;
//! - `providers`: `binding add`, `onboard` and `keys` for each provider, from its catalog entry;
//! - `client`: worker-side helpers;
//! - `health`: the daemon's readiness through its loopback health listener, no certificate.

mod admin;
mod audit;
mod audit_report;
mod client;
mod conn;
mod doctor;
pub mod gcp_metadata;
mod governance;
mod health;
mod offline;
pub(crate) mod output;
mod progress;
mod providers;
mod store_cmd;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;
use tracing_subscriber::filter::LevelFilter;

use crate::config::LogFormat;

use admin::{
    run_binding, run_record, run_secret, run_worker, BindingCmd, InstanceAdd, RecordCmd, SecretCmd,
    TenantAdd, WorkerCmd,
};
use admin::{OperatorAdd, UnclaimedCmd};
use audit::AuditCmd;
use client::{aws_credential_process, token, ClientCmd};
use offline::{DevArgs, LintArgs, LocalArgs, ServeArgs};

use providers::{run_onboard, run_provider_keys, Onboard, ProviderKeys};

/// What every command's exit status means (also in README, "Command line").
const EXIT_CODES: &str = "Exit status:
  0  success
  1  the broker refused the request (the error code, audit id and request id are printed;
     rate_limited, unavailable, audit_unavailable and provider_unavailable are worth retrying), or a check failed (audit verify,
     audit report, doctor, health; health exits 1 for every failure, bad arguments too)
  2  the command could not run: bad arguments, a file that cannot be read, a TLS handshake
     that failed (the CA does not vouch for the server, or the certificate was refused)
  3  the broker could not be reached: nothing was sent (the address tried is printed)
  4  the request was sent and no answer came: it may have been applied (look for it in the
     audit log before retrying)

Output: admin commands print tables on a terminal and JSON otherwise; --output json|table
chooses (audit verify prints its lines unless --output json).";

/// credbroker: a federation-first credential broker.
///
/// Workers call POST /v1/resolve over mutual TLS and get a short-lived credential for a
/// connector instance; the broker derives the tenant from its own store, never from the
/// request, and audits every resolve in a tamper-evident log.
#[derive(Parser, Debug)]
#[command(name = "credbroker", version, after_long_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a complete dev broker: dev CA and certificates, keys, demo tenant/worker/instance.
    Dev(DevArgs),
    /// Run the daemon from a TOML config file (production entry point).
    Serve(ServeArgs),
    /// Create the KEK keyring, audit signing key and fingerprint key if they do not exist.
    /// With --config, a KEK keyring file inside the data or store directory is refused.
    Init(LocalArgs),
    /// Make the running daemon re-read its config's TLS files (certificate, key, client CA,
    /// CRL) — SIGHUP to the daemon of this data directory, found by its pid file.
    Reload(LocalArgs),
    /// Check that the running daemon is ready, through its loopback health listener
    /// (`[health] listen`; no certificate): GET /readyz within 3 s, exit 0 when it answers
    /// 200, 1 otherwise (the container HEALTHCHECK).
    Health(health::HealthArgs),
    /// Verify or export the audit log (on a shared store: every replica's chain).
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Move the store between backends (offline: the daemon stopped).
    #[command(subcommand)]
    Store(store_cmd::StoreCmd),
    /// Key management.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Manage tenants (admin API, operator certificate).
    Tenant(RecordCmd<TenantAdd>),
    /// Manage workers (admin API, operator certificate).
    Worker(WorkerCmd),
    /// Manage connector instances (admin API, operator certificate).
    Instance(RecordCmd<InstanceAdd>),
    /// Manage bindings (admin API, operator certificate).
    Binding(BindingCmd),
    /// Manage operators (admin API): only an operator certificate with an active record
    /// administers.
    Operator(RecordCmd<OperatorAdd>),
    /// Register an operator offline, audited (the daemon stopped): the first operator.
    BootstrapOperator(offline::BootstrapOperatorArgs),
    /// Start onboarding a tenant with a federated provider: prints what the customer runs;
    /// list (`links`) or revoke the install links and site expectations still out.
    #[command(subcommand)]
    Onboard(Onboard),
    /// Worker-side helpers that resolve through the broker with a worker certificate.
    #[command(subcommand)]
    Client(ClientCmd),
    /// Check shipped onboarding templates against the policies/ ceilings.
    LintTemplates(LintArgs),
    /// Set, rotate or destroy a binding's secret fields (write-only; admin API).
    #[command(subcommand)]
    Secret(SecretCmd),
    /// Installations proven but not bound, kept for an operator (admin API).
    #[command(subcommand)]
    Unclaimed(UnclaimedCmd),
    /// One-time intake links: the customer's admin pastes a secret into a masked form on the
    /// public listener, straight into sealed storage (admin API).
    #[command(subcommand)]
    Intake(admin::IntakeCmd),
    /// Every binding and worker as a non-human identity: owner, purpose, last use, secret
    /// age, known expiry, rotation policy, revocation path, and flags (unowned, dormant,
    /// rotation_overdue, expiring_soon, last_probe_failed, revocation_owed) (admin API).
    Inventory(governance::InventoryArgs),
    /// Webhook secrets of connector instances: generate, show, reveal (audited, with a
    /// reason), rotate (with an overlap window), retire (admin API).
    #[command(subcommand)]
    WebhookSecret(governance::WebhookSecretCmd),
    /// The provider catalog of this build, from each provider's own declarations.
    #[command(subcommand)]
    Provider(governance::ProviderCmd),
    /// Print the OpenAPI 3.1 document of the HTTP API (also served at GET /v1/openapi.json).
    Openapi,
    /// The broker's own OIDC issuer (admin API); its keys are under `keys issuer`.
    #[command(subcommand)]
    Issuer(IssuerCmd),
    /// Check a deployment before (or while) it runs: config, key files and permissions,
    /// certificates and CRL, store schema, audit directory, last checkpoint, providers.
    /// Each check prints ok, warn or fail with the fix; exits 1 on any fail.
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script: source it, or install it where your shell looks.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the credbroker(1) man page (roff); with --dir, write one page per command
    /// (credbroker-tenant.1, …) into that directory.
    Man {
        /// Write every page into this directory instead.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum IssuerCmd {
    /// Print the published JWKS (next, current and previous keys) — what customers who pin
    /// it inline (GCP `jwksJson`) install, again after every `keys issuer rotate`.
    Jwks(admin::Conn),
}

#[derive(Subcommand, Debug)]
enum KeysCmd {
    /// Add a new KEK version and re-wrap every data key with it (payloads untouched).
    /// Offline: stop the daemon first (the store is locked while it runs). With --config, a
    /// keyring file inside the data or store directory is refused.
    RotateKek(LocalArgs),
    #[command(flatten)]
    Provider(ProviderKeys),
}

/// Parses `args` (without the program name) exactly as the binary would, without running
/// anything. Used to check that documented commands exist.
///
/// # Errors
/// clap's message when the arguments do not parse.
pub fn check_args<I, S>(args: I) -> Result<(), String>
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    let argv = std::iter::once(std::ffi::OsString::from("credbroker"))
        .chain(args.into_iter().map(Into::into));
    Cli::try_parse_from(argv)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The process entry point.
pub fn main() -> ExitCode {
    // Whatever this process (or a library: sled's store files) creates is its user's alone:
    // no file under the data directory, or any directory the configuration points at, is
    // left readable by others by the umask of whoever started it.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            let code = u8::try_from(e.exit_code()).unwrap_or(2);
            // `health` never exits 2 (container engines reserve it), bad arguments included.
            let health = std::env::args_os().nth(1).is_some_and(|a| a == "health");
            return ExitCode::from(if health && code != 0 { 1 } else { code });
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            // An error can quote a file the command read (a configuration's key, a log's
            // record): nothing in it reaches the terminal as a control sequence.
            eprintln!("error: {}", output::sanitize_lines(&message));
            ExitCode::from(2)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))
}

/// Crates that would log what the broker stores or sends upstream, each with the most it may
/// log, whatever `RUST_LOG` or `[log] level` asks for, however specific the directive:
/// - at trace, the AWS SDK's request (its body holds the web-identity assertion, the
///   ExternalId and the session policy), its signer's canonical request, the environment
///   and profile values it reads, and the profile's `credential_process` command line: every
///   `aws_` crate at most debug;
/// - at trace, sled every value it writes (sealed secrets, platform keys, webhook secrets):
///   at most debug;
/// - at debug, tokio-postgres every statement's parameters (the same sealed records, token
///   hashes, audit records): at most info;
/// - at debug, octocrab a span holding each request's whole URL, printed with every line
///   logged inside it: at most info.
///
/// A target is capped when it starts with the name (`aws_` covers every crate of the SDK,
/// and `aws-lc-rs`, which logs nothing).
const LOG_CAPS: [(&str, LevelFilter); 4] = [
    ("aws_", LevelFilter::DEBUG),
    ("sled", LevelFilter::DEBUG),
    ("tokio_postgres", LevelFilter::INFO),
    ("octocrab", LevelFilter::INFO),
];

fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // A second filter over the first: an event passes only if both let it. It lets through
    // no more than the first does (the subscriber's most verbose level is the greater of
    // the two: more would only make every callsite ask).
    let most = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let caps = Targets::new()
        .with_default(most)
        .with_targets(LOG_CAPS.map(|(t, cap)| (t, most.min(cap))));
    // Colour only on a terminal: a log file or a collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().finish().with(caps).try_init(),
        LogFormat::Text => builder.finish().with(caps).try_init(),
    };
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Dev(args) => offline::run_dev(args),
        Command::Serve(args) => offline::run_serve(&args),
        Command::Init(local) => offline::run_init(&local),
        Command::Reload(local) => offline::run_reload(&local),
        Command::Health(args) => Ok(health::run_health(&args)),
        Command::Audit(cmd) => audit::run_audit(cmd),
        Command::Store(cmd) => store_cmd::run_store(cmd),
        Command::Keys(KeysCmd::RotateKek(local)) => offline::run_rotate_kek(&local),
        Command::Keys(KeysCmd::Provider(k)) => run_provider_keys(&k),
        Command::Issuer(IssuerCmd::Jwks(conn)) => admin::call_showing(
            &conn,
            http::Method::GET,
            "/v1/admin/issuer/jwks",
            None,
            |v| json!({ "keys": v["keys"] }),
        ),
        Command::Tenant(cmd) => run_record(cmd, "tenants", |a: TenantAdd| {
            Ok(json!({ "id": a.id, "name": a.name }))
        }),
        Command::Worker(cmd) => run_worker(cmd),
        Command::Instance(cmd) => run_record(cmd, "instances", |a: InstanceAdd| {
            Ok(
                json!({ "id": a.id, "tenant": a.tenant, "binding": a.binding, "connector_kind": a.connector_kind }),
            )
        }),
        Command::Binding(cmd) => run_binding(cmd),
        Command::Operator(cmd) => {
            run_record(cmd, "operators", |a: OperatorAdd| Ok(json!({ "id": a.id })))
        }
        // Its warnings (a failure it could not record) go to standard error.
        Command::BootstrapOperator(args) => {
            init_logging(LogFormat::Text, "warn");
            offline::run_bootstrap_operator(&args)
        }
        Command::Onboard(o) => run_onboard(&o),
        Command::Client(ClientCmd::AwsCredentialProcess(a)) => aws_credential_process(&a),
        Command::Client(ClientCmd::Token(a)) => token(&a),
        // A long-running endpoint: its refusals (another local user, the broker's) are logged.
        Command::Client(ClientCmd::GcpMetadata(a)) => {
            init_logging(LogFormat::Text, "info");
            gcp_metadata::serve(&a)
        }
        Command::LintTemplates(a) => offline::run_lint(&a),
        Command::Secret(cmd) => run_secret(cmd),
        Command::Unclaimed(cmd) => admin::run_unclaimed(cmd),
        Command::Intake(cmd) => admin::run_intake(cmd),
        Command::Inventory(a) => governance::run_inventory(&a),
        Command::WebhookSecret(cmd) => governance::run_webhook_secret(cmd),
        Command::Provider(cmd) => governance::run_provider(&cmd),
        Command::Doctor(args) => doctor::run(&args),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "credbroker", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => man(dir.as_deref()),
        Command::Openapi => {
            print!("{}", crate::openapi::document_text());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn man(dir: Option<&std::path::Path>) -> Result<ExitCode, String> {
    let cmd = <Cli as clap::CommandFactory>::command();
    match dir {
        Some(dir) => {
            // `..` would name a directory that exists (after its parent is made) as one to
            // open up: `/root/new/../man1` would make /root readable by all.
            if !dir.exists()
                && dir
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(format!("{}: give --dir without '..'", dir.display()));
            }
            if !dir.exists() {
                // Each directory made here is made readable by all (man pages are public),
                // the parents too: under this process's umask (077) they would be made 0700,
                // leaving `/usr/local/share/man` root's alone when root ran it.
                let missing: Vec<&std::path::Path> = dir
                    .ancestors()
                    .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
                    .collect();
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                for made in missing.iter().rev() {
                    // Set through a handle of the directory itself, never by a path a link
                    // swapped in since could send elsewhere.
                    use std::os::unix::fs::OpenOptionsExt;
                    std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                        .open(made)
                        .and_then(|d| {
                            d.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
                        })
                        .map_err(|e| format!("{}: {e}", made.display()))?;
                }
            }
            // As clap_mangen::generate_to, but each page written to a new file renamed into
            // place (a link planted under a page's name is replaced, never followed), readable
            // by everyone (the process's umask is 077: a page under /usr/local/share/man would
            // be root's alone).
            let mut cmd = cmd.disable_help_subcommand(true);
            cmd.build();
            write_man_pages(&cmd, dir)?;
            println!("man pages written to {}", dir.display());
        }
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the man page of `cmd` and of every visible subcommand into `dir`.
fn write_man_pages(cmd: &clap::Command, dir: &std::path::Path) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub, dir)?;
    }
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    man.render(&mut page).map_err(|e| e.to_string())?;
    let path = dir.join(man.get_filename());
    let shown = |e: std::io::Error| format!("{}: {e}", path.display());
    let partial = dir.join(format!(".{}.partial", man.get_filename()));
    match std::fs::remove_file(&partial) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(shown(e)),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&partial)
        .map_err(shown)?;
    // create_new's mode is cut by the umask: set it on the file itself.
    let written = f
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .and_then(|()| f.write_all(&page))
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&partial, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written.map_err(shown)
}

fn announce_ready() {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
