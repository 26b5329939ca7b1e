//! The `credbroker` command line. `main.rs` only calls [`main`].

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use http::Method;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::audit::{self, AuditEvent, AuditLog, ExportFilter};
use crate::broker::{Broker, BrokerKeys, BrokerSettings};
use crate::client::BrokerClient;
use crate::config::{Config, LogFormat};
use crate::dev;
use crate::keys::{AuditSigner, AuditVerifier, Keyring};
use crate::seal::rewrap_data_key;
use crate::store::records::{secret_key, BatchExt, Records};
use crate::store::{Batch, SledStore, Store, Table};

/// credbroker: a federation-first credential broker.
///
/// Workers call POST /v1/resolve over mutual TLS and get a short-lived credential for a
/// connector instance; the broker derives the tenant from its own store, never from the
/// request, and audits every resolve in a tamper-evident log.
#[derive(Parser, Debug)]
#[command(name = "credbroker", version)]
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
    Init(LocalArgs),
    /// Verify or export the audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Key management.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Manage tenants (admin API, operator certificate).
    Tenant(RecordCmd<TenantAdd>),
    /// Manage workers (admin API, operator certificate).
    Worker(RecordCmd<WorkerAdd>),
    /// Manage connector instances (admin API, operator certificate).
    Instance(RecordCmd<InstanceAdd>),
    /// Manage bindings (admin API, operator certificate).
    Binding(BindingCmd),
    /// Start onboarding a tenant with a federated provider: prints what the customer runs.
    #[command(subcommand)]
    Onboard(OnboardCmd),
    /// Worker-side helpers that resolve through the broker with a worker certificate.
    #[command(subcommand)]
    Client(ClientCmd),
    /// Check shipped onboarding templates against the policies/ ceilings.
    LintTemplates(LintArgs),
    /// Set, rotate or destroy a binding's secret fields (write-only; admin API).
    #[command(subcommand)]
    Secret(SecretCmd),
}

#[derive(Args, Debug)]
struct DevArgs {
    /// Data directory (created if missing, reused if present).
    #[arg(long, default_value = "./credbroker-dev")]
    data_dir: PathBuf,
    /// Listener address.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML config file (keys documented in README, "Configuration").
    #[arg(long, env = "CREDBROKER_CONFIG")]
    config: PathBuf,
}

/// Where a local (offline) command finds the broker's files.
#[derive(Args, Debug, Clone)]
struct LocalArgs {
    /// TOML config file.
    #[arg(long, conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// Data directory (uses <DIR>/credbroker.toml when present, as written by `dev`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Verify the hash chain and signed checkpoints; exits 1 naming the first bad sequence.
    Verify(VerifyArgs),
    /// Export records as JSON lines (header, records, checkpoints) for auditors.
    Export(ExportArgs),
    /// Print the audit public key auditors verify exports with.
    PublicKey(LocalArgs),
}

#[derive(Args, Debug)]
struct VerifyArgs {
    #[command(flatten)]
    local: LocalArgs,
    /// Verify an export file instead of the live log (requires --public-key).
    #[arg(long, requires = "public_key")]
    export: Option<PathBuf>,
    /// Audit public key file (default: the data directory's).
    #[arg(long)]
    public_key: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ExportArgs {
    #[command(flatten)]
    local: LocalArgs,
    /// Only records at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Only records before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// Only records of this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Write to this file instead of standard output.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum KeysCmd {
    /// Add a new KEK version and re-wrap every data key with it (payloads untouched).
    /// Offline: stop the daemon first (the store is locked while it runs).
    RotateKek(LocalArgs),
    /// GitHub App private keys (platform secret, sealed in the store; admin API).
    Github(GithubKeysArgs),
}

#[derive(Args, Debug)]
struct GithubKeysArgs {
    #[command(subcommand)]
    action: GithubKeysAction,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand, Debug)]
enum GithubKeysAction {
    /// Store a new App private key (PEM) as staged; read from a file, never the command line.
    Add(KeyFile),
    /// List keys: version, state, fingerprint (never the key).
    List,
    /// Make a staged key active: it becomes the preferred signing key; other active keys stay
    /// as fallbacks until retired.
    Activate(KeyVersion),
    /// Stop using a key and destroy its sealed material.
    Retire(KeyVersion),
    /// Revoke every installation token the broker still caches (DELETE /installation/token)
    /// and drop them, so the next resolves mint fresh ones.
    RevokeTokens,
}

#[derive(Args, Debug)]
struct KeyFile {
    /// PEM file downloaded from the GitHub App settings.
    #[arg(long)]
    from_file: PathBuf,
}

#[derive(Args, Debug)]
struct KeyVersion {
    /// Key version (from `credbroker keys github list`).
    version: u32,
}

/// How admin commands reach the daemon.
#[derive(Args, Debug, Clone)]
struct Conn {
    /// Broker URL.
    #[arg(
        long,
        env = "CREDBROKER_SERVER",
        default_value = "https://127.0.0.1:8443",
        global = true
    )]
    server: String,
    /// CA bundle that signed the broker's server certificate.
    #[arg(long, env = "CREDBROKER_CA", global = true)]
    ca: Option<PathBuf>,
    /// Operator client certificate (SPIFFE id spiffe://<trust-domain>/operator/<name>).
    #[arg(long, env = "CREDBROKER_CERT", global = true)]
    cert: Option<PathBuf>,
    /// Operator private key.
    #[arg(long, env = "CREDBROKER_KEY", global = true)]
    key: Option<PathBuf>,
    /// Dev data directory: take ca/cert/key from <DIR>/pki (operator.crt, operator.key).
    #[arg(long, env = "CREDBROKER_DEV_DIR", global = true)]
    dev_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RecordCmd<A: Args> {
    #[command(subcommand)]
    action: RecordAction<A>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand, Debug)]
enum RecordAction<A: Args> {
    /// Create a record.
    Add(A),
    /// List records.
    List,
    /// Show one record (bindings: secret version metadata, never values).
    Show(IdArg),
    /// Stop resolves through the record; configuration is kept.
    Disable(IdArg),
    /// Re-enable a disabled record.
    Enable(IdArg),
    /// Delete a record (refused while other records reference it).
    Remove(IdArg),
}

#[derive(Args, Debug)]
struct IdArg {
    /// Record id.
    id: String,
}

#[derive(Args, Debug)]
struct TenantAdd {
    /// Tenant id.
    id: String,
    /// Display name.
    #[arg(long, default_value = "")]
    name: String,
}

#[derive(Args, Debug)]
struct WorkerAdd {
    /// Worker name (last segment of its SPIFFE id).
    id: String,
    /// Tenant the worker may serve (repeat for several).
    #[arg(long = "tenant", required = true)]
    tenants: Vec<String>,
    /// Connector kind the worker may serve (repeat; none = any).
    #[arg(long = "connector-kind")]
    connector_kinds: Vec<String>,
}

#[derive(Args, Debug)]
struct InstanceAdd {
    /// Instance id.
    id: String,
    /// Owning tenant.
    #[arg(long)]
    tenant: String,
    /// Binding of the same tenant.
    #[arg(long)]
    binding: String,
    /// Connector kind (e.g. aws, servicenow, jira).
    #[arg(long)]
    connector_kind: String,
}

#[derive(Args, Debug)]
struct BindingCmd {
    #[command(subcommand)]
    action: BindingAction,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand, Debug)]
enum BindingAction {
    /// Create a binding.
    #[command(subcommand)]
    Add(BindingKind),
    /// List bindings.
    List,
    /// Show one binding: status, last probe, ceiling, secret version metadata (never values).
    Show(IdArg),
    /// Stop resolves through the binding; configuration is kept.
    Disable(IdArg),
    /// Re-enable; a binding whose provider needs activation is probed first.
    Enable(IdArg),
    /// Delete (refused while instances use it); frees its exclusive identifiers.
    Remove(IdArg),
    /// Re-run the provider's probe and stamp last_tested_at; activates a pending binding.
    Probe(IdArg),
}

#[derive(Subcommand, Debug)]
enum BindingKind {
    /// AWS AssumeRole into the customer's role (the ExternalId is the broker's, per tenant).
    Aws(AwsBindingAdd),
    /// A pasted secret (set its fields with `credbroker secret set`).
    PastedSecret(PastedBindingAdd),
    /// A GitHub App installation (normally bound by the install redirect; this binds by hand).
    Github(GithubBindingAdd),
}

#[derive(Args, Debug)]
struct GithubBindingAdd {
    /// Binding id.
    id: String,
    /// Owning tenant.
    #[arg(long)]
    tenant: String,
    /// The installation id.
    #[arg(long)]
    installation_id: u64,
    /// Ceiling within policies/github.json, JSON: {"permissions": {...}, "repositories": [...]}.
    #[arg(long)]
    ceiling: Option<String>,
}

#[derive(Args, Debug)]
struct AwsBindingAdd {
    /// Binding id.
    id: String,
    /// Owning tenant.
    #[arg(long)]
    tenant: String,
    /// The RoleArn output of the customer's stack.
    #[arg(long)]
    role_arn: String,
    /// Session length in seconds (900..=the platform maximum).
    #[arg(long)]
    duration_s: Option<u32>,
    /// Pass the worker name as SourceIdentity (the role must trust sts:SetSourceIdentity).
    #[arg(long)]
    source_identity: bool,
    /// Ceiling within the platform's policies/aws.json, JSON.
    #[arg(long)]
    ceiling: Option<String>,
}

#[derive(Args, Debug)]
struct PastedBindingAdd {
    /// Binding id.
    id: String,
    /// Owning tenant.
    #[arg(long)]
    tenant: String,
    /// Non-secret notes, JSON object.
    #[arg(long, default_value = "{}")]
    config: String,
    /// Ceiling, JSON: {"fields": [...]}.
    #[arg(long)]
    ceiling: Option<String>,
}

#[derive(Subcommand, Debug)]
enum OnboardCmd {
    /// Print the tenant's ExternalId, the vendor account id and the template parameters.
    Aws(OnboardArgs),
    /// Print the App's install URL carrying a single-use state bound to the tenant (1 h).
    Github(OnboardArgs),
}

#[derive(Args, Debug)]
struct OnboardArgs {
    /// Tenant id.
    #[arg(long)]
    tenant: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand, Debug)]
enum ClientCmd {
    /// Print AWS `credential_process` JSON (Version 1) for an instance, minted by the broker.
    AwsCredentialProcess(ClientArgs),
}

#[derive(Args, Debug)]
struct ClientArgs {
    /// Connector instance id.
    #[arg(long)]
    instance: String,
    /// Broker URL.
    #[arg(
        long,
        env = "CREDBROKER_SERVER",
        default_value = "https://127.0.0.1:8443"
    )]
    server: String,
    /// CA bundle of the broker's server certificate.
    #[arg(long, env = "CREDBROKER_CA")]
    ca: PathBuf,
    /// Worker certificate.
    #[arg(long, env = "CREDBROKER_WORKER_CERT")]
    cert: PathBuf,
    /// Worker private key.
    #[arg(long, env = "CREDBROKER_WORKER_KEY")]
    key: PathBuf,
    /// Job id recorded in the audit log.
    #[arg(long)]
    job_id: Option<String>,
}

#[derive(Args, Debug)]
struct LintArgs {
    /// Onboarding templates directory.
    #[arg(long, default_value = "onboarding-templates")]
    templates: PathBuf,
    /// Policies directory.
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
}

#[derive(Subcommand, Debug)]
enum SecretCmd {
    /// Set the first secret version of a binding.
    Set(SecretWrite),
    /// Write a new version; the previous one is kept (superseded) until destroyed.
    Rotate(SecretWrite),
    /// Destroy every version, or one with --version.
    Destroy(SecretDestroy),
}

#[derive(Args, Debug)]
struct SecretWrite {
    /// Binding id.
    binding: String,
    /// Read the fields as a JSON object of strings from this file…
    #[arg(
        long,
        conflicts_with = "from_stdin",
        required_unless_present = "from_stdin"
    )]
    from_file: Option<PathBuf>,
    /// …or from standard input. Values are never taken from the command line.
    #[arg(long)]
    from_stdin: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
struct SecretDestroy {
    /// Binding id.
    binding: String,
    /// Only this version.
    #[arg(long)]
    version: Option<u32>,
    #[command(flatten)]
    conn: Conn,
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
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
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

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Dev(args) => run_dev(args),
        Command::Serve(args) => {
            let config = Config::load(&args.config).map_err(|e| e.to_string())?;
            init_logging(config.log.format, &config.log.level);
            runtime()?.block_on(async {
                let registry = crate::registry::from_config(&config).await?;
                crate::daemon::run(config, registry, |addr| {
                    println!("listening {addr}");
                    announce_ready();
                })
                .await
                .map_err(|e| e.to_string())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Init(local) => {
            let config = local_config(&local)?;
            let created = BrokerKeys::init(&config).map_err(|e| e.to_string())?;
            if created.is_empty() {
                println!("all keys already exist; nothing created");
            }
            for p in created {
                println!("created {}", p.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(cmd) => run_audit(cmd),
        Command::Keys(KeysCmd::RotateKek(local)) => rotate_kek(&local),
        Command::Keys(KeysCmd::Github(k)) => run_github_keys(k),
        Command::Tenant(cmd) => run_record(cmd, "tenants", |a: TenantAdd| {
            Ok(json!({ "id": a.id, "name": a.name }))
        }),
        Command::Worker(cmd) => run_record(cmd, "workers", |a: WorkerAdd| {
            Ok(json!({ "id": a.id, "tenants": a.tenants, "connector_kinds": a.connector_kinds }))
        }),
        Command::Instance(cmd) => run_record(cmd, "instances", |a: InstanceAdd| {
            Ok(
                json!({ "id": a.id, "tenant": a.tenant, "binding": a.binding, "connector_kind": a.connector_kind }),
            )
        }),
        Command::Binding(cmd) => run_binding(cmd),
        Command::Onboard(OnboardCmd::Github(a)) => call(
            &a.conn,
            Method::POST,
            "/v1/admin/onboard/github_app",
            Some(serde_json::to_vec(&json!({ "tenant": a.tenant })).map_err(|e| e.to_string())?),
        ),
        Command::Onboard(OnboardCmd::Aws(a)) => call(
            &a.conn,
            Method::POST,
            "/v1/admin/onboard/aws_assume_role",
            Some(serde_json::to_vec(&json!({ "tenant": a.tenant })).map_err(|e| e.to_string())?),
        ),
        Command::Client(ClientCmd::AwsCredentialProcess(a)) => aws_credential_process(&a),
        Command::LintTemplates(a) => {
            let findings = crate::lint::lint_templates(&a.templates, &a.policies)?;
            if findings.is_empty() {
                println!("templates OK");
                Ok(ExitCode::SUCCESS)
            } else {
                for f in &findings {
                    println!("{f}");
                }
                println!("{} problem(s)", findings.len());
                Ok(ExitCode::from(1))
            }
        }
        Command::Secret(cmd) => run_secret(cmd),
    }
}

fn announce_ready() {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
}

fn run_dev(args: DevArgs) -> Result<ExitCode, String> {
    init_logging(LogFormat::Text, "info");
    let config = dev::prepare(&args.data_dir, args.listen).map_err(|e| e.to_string())?;
    let data_dir = config.data_dir.clone();
    runtime()?.block_on(async move {
        let registry = crate::registry::from_config(&config).await?;
        let broker = Broker::open_with_config(&config, registry).map_err(|e| e.to_string())?;
        let seeded = dev::seed(&broker).await.map_err(|e| e.to_string())?;
        crate::daemon::run_with_broker(config, broker, |addr| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "credbroker dev — development only. Data directory: {}\n{} demo tenant '{}', worker '{}', instance '{}' (pasted secret).\n\n\
                 Resolve the demo instance with the worker certificate:\n\n  {}\n\n\
                 Admin commands use the operator certificate, e.g.:\n\n  credbroker tenant list --dev-dir {}\n\n\
                 Verify the audit log (also while running):\n\n  credbroker audit verify --data-dir {}\n",
                data_dir.display(),
                if seeded { "Seeded" } else { "Reusing" },
                dev::DEMO_TENANT,
                dev::DEV_WORKER,
                dev::DEMO_INSTANCE,
                dev::demo_curl(&data_dir, addr),
                data_dir.display(),
                data_dir.display(),
            );
            let _ = out.flush();
            drop(out);
            announce_ready();
        })
        .await
        .map_err(|e| e.to_string())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The config for an offline command: `--config FILE`, or `--data-dir DIR` (its
/// `credbroker.toml` when present, else defaults under DIR).
fn local_config(local: &LocalArgs) -> Result<Config, String> {
    if let Some(path) = &local.config {
        return Config::load(path).map_err(|e| e.to_string());
    }
    let dir = local
        .data_dir
        .clone()
        .ok_or("give --config FILE or --data-dir DIR")?;
    let file = dir.join("credbroker.toml");
    if file.exists() {
        return Config::load(&file).map_err(|e| e.to_string());
    }
    let text = format!(
        "data_dir = {:?}\ntrust_domain = \"unused\"\n[tls]\ncert = \"unused\"\nkey = \"unused\"\nclient_ca = \"unused\"\n",
        dir.display().to_string()
    );
    let tmp = toml::from_str::<Config>(&text).map_err(|e| e.to_string())?;
    Ok(tmp)
}

fn run_audit(cmd: AuditCmd) -> Result<ExitCode, String> {
    match cmd {
        AuditCmd::Verify(args) => {
            let result = if let Some(export) = &args.export {
                let key = args
                    .public_key
                    .as_ref()
                    .ok_or("--export needs --public-key")?;
                let verifier = AuditVerifier::load(key).map_err(|e| e.to_string())?;
                let bytes =
                    std::fs::read(export).map_err(|e| format!("{}: {e}", export.display()))?;
                audit::verify_export(&bytes, &verifier)
            } else {
                let config = local_config(&args.local)?;
                let key = args
                    .public_key
                    .clone()
                    .unwrap_or_else(|| config.audit_public_key_file());
                let verifier = AuditVerifier::load(&key).map_err(|e| e.to_string())?;
                audit::verify_log(&config.audit_dir(), &verifier)
            };
            match result {
                Ok(s) => {
                    println!(
                        "audit OK: {} records (sequence {}..{}), {} checkpoint(s) matched, last signed checkpoint at {}{}",
                        s.records,
                        s.first_seq.map_or("-".into(), |v| v.to_string()),
                        s.last_seq.map_or("-".into(), |v| v.to_string()),
                        s.checkpoints,
                        s.last_checkpoint.map_or("none".into(), |v| v.to_string()),
                        if s.filtered {
                            " (filtered export: deletions between records cannot be detected)"
                        } else {
                            ""
                        }
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(f) => {
                    println!("audit FAILED at sequence {}: {}", f.seq, f.reason);
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditCmd::Export(args) => {
            let config = local_config(&args.local)?;
            let parse =
                |s: &Option<String>, flag: &str| -> Result<Option<OffsetDateTime>, String> {
                    s.as_ref()
                        .map(|v| {
                            OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
                                format!("{flag} must be RFC 3339, e.g. 2026-01-31T00:00:00Z")
                            })
                        })
                        .transpose()
                };
            let filter = ExportFilter {
                since: parse(&args.since, "--since")?,
                until: parse(&args.until, "--until")?,
                tenant: args.tenant.clone(),
            };
            let count = match &args.output {
                Some(path) => {
                    let mut f = std::fs::File::create(path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    let n = audit::export(&config.audit_dir(), &filter, &mut f)
                        .map_err(|e| e.to_string())?;
                    f.sync_all().map_err(|e| e.to_string())?;
                    n
                }
                None => {
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    let n = audit::export(&config.audit_dir(), &filter, &mut out)
                        .map_err(|e| e.to_string())?;
                    out.flush().map_err(|e| e.to_string())?;
                    n
                }
            };
            eprintln!("exported {count} records");
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::PublicKey(local) => {
            let config = local_config(&local)?;
            let text = std::fs::read_to_string(config.audit_public_key_file())
                .map_err(|e| format!("{}: {e}", config.audit_public_key_file().display()))?;
            println!("{}", text.trim());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn cli_actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let user: String = user
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .take(64)
        .collect();
    format!("cli:{user}")
}

/// Rotates the KEK offline. Order matters for crash safety: the keyring holding both the old
/// and the new version is saved first, the rotation is audited, then all data keys are
/// re-wrapped in one atomic batch. A crash at any point leaves every secret openable.
fn rotate_kek(local: &LocalArgs) -> Result<ExitCode, String> {
    let config = local_config(local)?;
    if config.keys.kek_env.is_some() {
        return Err("the keyring comes from an environment variable (keys.kek_env); rotate it where it is managed, then re-run with a file keyring".into());
    }
    let store = SledStore::open(&config.store_dir()).map_err(|e| e.to_string())?;
    let records = Records::new(Arc::new(store) as Arc<dyn Store>);
    let mut keyring = Keyring::load(&config.kek_file()).map_err(|e| e.to_string())?;
    let old = keyring.active_version();
    let new = keyring.rotate().map_err(|e| e.to_string())?;
    let versions = records.all_secret_versions().map_err(|e| e.to_string())?;
    let mut batch = Batch::new();
    for mut v in versions.clone() {
        let binding = records
            .binding(&v.binding)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("secret {}/{} has no binding record", v.binding, v.version))?;
        let (kek_version, wrapped) = rewrap_data_key(
            &keyring,
            &binding.tenant,
            &v.binding,
            v.version,
            v.kek_version,
            &v.wrapped_dek,
        )
        .map_err(|e| format!("secret {}/{}: {e}", v.binding, v.version))?;
        v.kek_version = kek_version;
        v.wrapped_dek = wrapped;
        batch.replace(Table::Secrets, &secret_key(&v.binding, v.version), &v);
    }
    keyring
        .save(&config.kek_file())
        .map_err(|e| e.to_string())?;
    let settings = BrokerSettings::from_config(&config);
    let signer = AuditSigner::load(&config.audit_key_file()).map_err(|e| e.to_string())?;
    let log = AuditLog::open(settings.audit, signer).map_err(|e| e.to_string())?;
    let event = AuditEvent {
        kind: "admin".into(),
        action: "keys.rotate_kek".into(),
        request_id: crate::server::new_request_id(),
        actor: cli_actor(),
        outcome: "allowed".into(),
        detail: Some(format!(
            "kek {old} -> {new}; rewrapping {} data keys",
            versions.len()
        )),
        ..Default::default()
    };
    let receipt = log.append_blocking(event);
    if let Err(e) = receipt {
        log.close();
        return Err(format!(
            "audit append failed; data keys not re-wrapped: {e}"
        ));
    }
    records.store().commit(batch).map_err(|e| e.to_string())?;
    log.close();
    println!(
        "KEK rotated: version {old} -> {new}; {} data key(s) re-wrapped. Older KEK versions stay in {} until you remove them.",
        versions.len(),
        config.kek_file().display()
    );
    Ok(ExitCode::SUCCESS)
}

fn admin_client(conn: &Conn) -> Result<BrokerClient, String> {
    let (ca, cert, key) = match &conn.dev_dir {
        Some(dir) => {
            let pki = dev::pki_dir(dir);
            (
                conn.ca.clone().unwrap_or_else(|| pki.join("ca.crt")),
                conn.cert
                    .clone()
                    .unwrap_or_else(|| pki.join("operator.crt")),
                conn.key.clone().unwrap_or_else(|| pki.join("operator.key")),
            )
        }
        None => (
            conn.ca.clone().ok_or("--ca is required (or --dev-dir)")?,
            conn.cert
                .clone()
                .ok_or("--cert is required (or --dev-dir)")?,
            conn.key.clone().ok_or("--key is required (or --dev-dir)")?,
        ),
    };
    BrokerClient::new(&conn.server, &ca, &cert, &key).map_err(|e| e.to_string())
}

fn call(
    conn: &Conn,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<ExitCode, String> {
    let mut client = admin_client(conn)?;
    let (status, bytes) = runtime()?
        .block_on(client.request(method, path, body))
        .map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&bytes) }));
    if status.is_success() {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        let err = &value["error"];
        eprintln!(
            "error: {} ({}): {} [audit_id {}, request_id {}]",
            err["code"].as_str().unwrap_or("unknown"),
            status.as_u16(),
            err["message"].as_str().unwrap_or(""),
            err["audit_id"].as_str().unwrap_or("-"),
            err["request_id"].as_str().unwrap_or("-"),
        );
        Ok(ExitCode::from(1))
    }
}

fn path_segment(id: &str) -> Result<&str, String> {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        Ok(id)
    } else {
        Err(format!("invalid id {id:?}"))
    }
}

fn run_record<A: Args>(
    cmd: RecordCmd<A>,
    collection: &str,
    body: impl FnOnce(A) -> Result<Value, String>,
) -> Result<ExitCode, String> {
    let base = format!("/v1/admin/{collection}");
    match cmd.action {
        RecordAction::Add(a) => {
            let v = body(a)?;
            call(
                &cmd.conn,
                Method::POST,
                &base,
                Some(serde_json::to_vec(&v).map_err(|e| e.to_string())?),
            )
        }
        RecordAction::List => call(&cmd.conn, Method::GET, &base, None),
        RecordAction::Show(i) => call(
            &cmd.conn,
            Method::GET,
            &format!("{base}/{}", path_segment(&i.id)?),
            None,
        ),
        RecordAction::Disable(i) => call(
            &cmd.conn,
            Method::POST,
            &format!("{base}/{}/disable", path_segment(&i.id)?),
            Some(b"{}".to_vec()),
        ),
        RecordAction::Enable(i) => call(
            &cmd.conn,
            Method::POST,
            &format!("{base}/{}/enable", path_segment(&i.id)?),
            Some(b"{}".to_vec()),
        ),
        RecordAction::Remove(i) => call(
            &cmd.conn,
            Method::DELETE,
            &format!("{base}/{}", path_segment(&i.id)?),
            None,
        ),
    }
}

fn run_github_keys(k: GithubKeysArgs) -> Result<ExitCode, String> {
    let base = "/v1/admin/keys/github_app";
    match k.action {
        GithubKeysAction::Add(f) => {
            let pem = Zeroizing::new(
                std::fs::read_to_string(&f.from_file)
                    .map_err(|e| format!("{}: {e}", f.from_file.display()))?,
            );
            let mut fields = credbroker_providers::SecretFields::new();
            fields.insert("private_key_pem", secrecy::SecretString::from(pem.as_str()));
            let inner = fields.to_json_zeroizing();
            let mut body = Zeroizing::new(Vec::with_capacity(inner.len() + 12));
            body.extend_from_slice(b"{\"fields\":");
            body.extend_from_slice(&inner);
            body.push(b'}');
            call(&k.conn, Method::POST, base, Some(body.to_vec()))
        }
        GithubKeysAction::List => call(&k.conn, Method::GET, base, None),
        GithubKeysAction::Activate(v) => call(
            &k.conn,
            Method::POST,
            &format!("{base}/{}/activate", v.version),
            Some(b"{}".to_vec()),
        ),
        GithubKeysAction::Retire(v) => call(
            &k.conn,
            Method::POST,
            &format!("{base}/{}/retire", v.version),
            Some(b"{}".to_vec()),
        ),
        GithubKeysAction::RevokeTokens => call(
            &k.conn,
            Method::POST,
            "/v1/admin/providers/github_app/revoke-cached",
            Some(b"{}".to_vec()),
        ),
    }
}

fn json_arg(flag: &str, value: Option<&str>) -> Result<Value, String> {
    match value {
        Some(c) => serde_json::from_str(c).map_err(|e| format!("{flag} is not JSON: {e}")),
        None => Ok(Value::Null),
    }
}

fn run_binding(cmd: BindingCmd) -> Result<ExitCode, String> {
    let base = "/v1/admin/bindings";
    let conn = &cmd.conn;
    match cmd.action {
        BindingAction::Add(kind) => {
            let body = match kind {
                BindingKind::Aws(a) => {
                    let mut config = json!({ "role_arn": a.role_arn });
                    if let Some(d) = a.duration_s {
                        config["duration_s"] = json!(d);
                    }
                    if a.source_identity {
                        config["source_identity"] = json!(true);
                    }
                    json!({ "id": a.id, "tenant": a.tenant, "provider": "aws_assume_role", "config": config,
                            "ceiling": json_arg("--ceiling", a.ceiling.as_deref())? })
                }
                BindingKind::Github(a) => json!({
                    "id": a.id, "tenant": a.tenant, "provider": "github_app",
                    "config": { "installation_id": a.installation_id },
                    "ceiling": json_arg("--ceiling", a.ceiling.as_deref())?,
                }),
                BindingKind::PastedSecret(a) => json!({
                    "id": a.id, "tenant": a.tenant, "provider": "pasted_secret",
                    "config": json_arg("--config", Some(&a.config))?,
                    "ceiling": json_arg("--ceiling", a.ceiling.as_deref())?,
                }),
            };
            call(
                conn,
                Method::POST,
                base,
                Some(serde_json::to_vec(&body).map_err(|e| e.to_string())?),
            )
        }
        BindingAction::List => call(conn, Method::GET, base, None),
        BindingAction::Show(i) => call(
            conn,
            Method::GET,
            &format!("{base}/{}", path_segment(&i.id)?),
            None,
        ),
        BindingAction::Disable(i) => call(
            conn,
            Method::POST,
            &format!("{base}/{}/disable", path_segment(&i.id)?),
            Some(b"{}".to_vec()),
        ),
        BindingAction::Enable(i) => call(
            conn,
            Method::POST,
            &format!("{base}/{}/enable", path_segment(&i.id)?),
            Some(b"{}".to_vec()),
        ),
        BindingAction::Remove(i) => call(
            conn,
            Method::DELETE,
            &format!("{base}/{}", path_segment(&i.id)?),
            None,
        ),
        BindingAction::Probe(i) => call(
            conn,
            Method::POST,
            &format!("{base}/{}/probe", path_segment(&i.id)?),
            Some(b"{}".to_vec()),
        ),
    }
}

/// `credential_process` output: the AWS CLI and every AWS SDK run this command and read
/// `{"Version": 1, "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}`.
fn aws_credential_process(a: &ClientArgs) -> Result<ExitCode, String> {
    let mut client =
        BrokerClient::new(&a.server, &a.ca, &a.cert, &a.key).map_err(|e| e.to_string())?;
    let mut body = json!({ "instance_id": a.instance, "min_ttl_s": 300 });
    if let Some(job) = &a.job_id {
        body["job_id"] = json!(job);
    }
    let (status, bytes) = runtime()?
        .block_on(client.request(
            Method::POST,
            "/v1/resolve",
            Some(serde_json::to_vec(&body).map_err(|e| e.to_string())?),
        ))
        .map_err(|e| e.to_string())?;
    let bytes = Zeroizing::new(bytes);
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|_| "broker answered with non-JSON".to_owned())?;
    if !status.is_success() {
        return Err(format!(
            "resolve refused: {} ({}): {} [audit_id {}]",
            v["error"]["code"].as_str().unwrap_or("unknown"),
            status.as_u16(),
            v["error"]["message"].as_str().unwrap_or(""),
            v["error"]["audit_id"].as_str().unwrap_or("-")
        ));
    }
    if v["kind"] != "aws_sts" {
        return Err(format!(
            "instance {} does not resolve to AWS credentials (kind {})",
            a.instance, v["kind"]
        ));
    }
    let c = &v["credentials"];
    let out = json!({
        "Version": 1,
        "AccessKeyId": c["AccessKeyId"],
        "SecretAccessKey": c["SecretAccessKey"],
        "SessionToken": c["SessionToken"],
        "Expiration": c["Expiration"],
    });
    let text = Zeroizing::new(serde_json::to_string(&out).map_err(|e| e.to_string())?);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    stdout.write_all(b"\n").map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

fn read_secret_fields(w: &SecretWrite) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut raw = Zeroizing::new(Vec::new());
    match &w.from_file {
        Some(path) => {
            let mut f =
                std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            f.read_to_end(&mut raw).map_err(|e| e.to_string())?;
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut raw)
                .map_err(|e| e.to_string())?;
        }
    }
    // Wrap as {"fields": <object>} without parsing the values into non-zeroizing strings.
    let trimmed = raw.trim_ascii();
    if !trimmed.starts_with(b"{") {
        return Err(
            "secret input must be a JSON object of string fields, e.g. {\"token\":\"…\"}".into(),
        );
    }
    let mut body = Zeroizing::new(Vec::with_capacity(trimmed.len() + 12));
    body.extend_from_slice(b"{\"fields\":");
    body.extend_from_slice(trimmed);
    body.push(b'}');
    Ok(body)
}

fn run_secret(cmd: SecretCmd) -> Result<ExitCode, String> {
    match cmd {
        SecretCmd::Set(w) => {
            let body = read_secret_fields(&w)?;
            let path = format!("/v1/admin/bindings/{}/secret", path_segment(&w.binding)?);
            call(&w.conn, Method::PUT, &path, Some(body.to_vec()))
        }
        SecretCmd::Rotate(w) => {
            let body = read_secret_fields(&w)?;
            let path = format!(
                "/v1/admin/bindings/{}/secret/rotate",
                path_segment(&w.binding)?
            );
            call(&w.conn, Method::POST, &path, Some(body.to_vec()))
        }
        SecretCmd::Destroy(d) => {
            let mut path = format!("/v1/admin/bindings/{}/secret", path_segment(&d.binding)?);
            if let Some(v) = d.version {
                path.push_str(&format!("/{v}"));
            }
            call(&d.conn, Method::DELETE, &path, None)
        }
    }
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
