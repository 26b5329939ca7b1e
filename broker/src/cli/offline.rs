//! Commands that run on the broker's own machine without the admin API: the daemon itself
//! (`dev`, `serve`), key initialisation and rotation, and the audit log tools.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use credbroker_providers::ProviderRegistry;

use crate::broker::{Broker, BrokerKeys};
use crate::config::{Config, LogFormat, TlsSettings};
use crate::dev;

use super::{announce_ready, init_logging, runtime};

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Data directory (created if missing, reused if present).
    #[arg(long, default_value = "./credbroker-dev")]
    data_dir: PathBuf,
    /// Listener address.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML config file (keys documented in README, "Configuration").
    #[arg(long, env = "CREDBROKER_CONFIG")]
    config: PathBuf,
    /// Start even though the audit log does not verify from its last signed checkpoint to
    /// its end, or is missing beside a store that holds operators or tenants (forensic starts
    /// only; new records are chained onto the unverified log, or begin a new chain whose
    /// first record says the log was missing).
    #[arg(long)]
    forensic_start: bool,
}

/// Where a local (offline) command finds the broker's files.
#[derive(Args, Debug, Clone)]
pub struct LocalArgs {
    /// TOML config file.
    #[arg(long, conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// Data directory (uses <DIR>/credbroker.toml when present, as written by `dev`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct LintArgs {
    /// Onboarding templates directory.
    #[arg(long, default_value = "onboarding-templates")]
    templates: PathBuf,
    /// Policies directory.
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
}

pub fn run_dev(args: DevArgs) -> Result<ExitCode, String> {
    init_logging(LogFormat::Text, "info");
    if !args.listen.ip().to_canonical().is_loopback() {
        // Allowed (a worker in a container may dial the host), but said: this broker keeps
        // its KEK, audit key and CA key in its data directory, and its operator and worker
        // certificates are files anyone who can read that directory can use.
        eprintln!(
            "warning: --listen {} is not a loopback address: this development broker, whose keys and certificates are plain files in {}, is reachable from other hosts",
            args.listen,
            args.data_dir.display()
        );
    }
    let config = dev::prepare(&args.data_dir, args.listen).map_err(|e| e.to_string())?;
    let data_dir = config.data_dir.clone();
    let url_dir = data_dir.clone();
    runtime()?.block_on(async move {
        let hup = crate::daemon::hangups().map_err(|e| e.to_string())?;
        let registry = credbroker_providers::ProviderRegistry::from_settings(&config.providers, &config.config_dir).await?;
        let broker = Broker::open_with_config(&config, registry)
            .await
            .map_err(|e| e.to_string())?;
        let seeded = dev::seed(&broker).await.map_err(|e| e.to_string())?;
        crate::daemon::run_with_broker(config, broker, hup, |addr| {
            if let Err(e) = dev::record_server_url(&data_dir, addr) {
                tracing::warn!(error = %e, "cannot record the dev broker's URL; give --server to admin commands");
            }
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
    // Stopped: no longer an address to dial.
    let _ = std::fs::remove_file(dev::server_url_file(&url_dir));
    Ok(ExitCode::SUCCESS)
}

impl LocalArgs {
    /// The config file used: `--config`, or the data directory's `credbroker.toml` when
    /// present (a dev directory, or a deployment's own).
    fn config_file(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| {
            self.data_dir
                .as_ref()
                .map(|d| d.join("credbroker.toml"))
                .filter(|f| f.exists())
        })
    }

    /// Whether a deployment's config is used ([`LocalArgs::config_file`]). A data directory
    /// without one is an auditor's copy.
    pub fn names_config(&self) -> bool {
        self.config_file().is_some()
    }
}

/// The config for an offline command: `--config FILE`, or `--data-dir DIR` (its
/// `credbroker.toml` when present, else defaults under DIR).
pub fn local_config(local: &LocalArgs) -> Result<Config, String> {
    if let Some(file) = local.config_file() {
        return Config::load(&file).map_err(|e| e.to_string());
    }
    let dir = local
        .data_dir
        .clone()
        .ok_or("give --config FILE or --data-dir DIR")?;
    let unused = PathBuf::from("unused");
    Ok(Config::with_defaults(
        dir,
        SocketAddr::from(([127, 0, 0, 1], 8443)),
        "unused",
        TlsSettings {
            cert: unused.clone(),
            key: unused.clone(),
            client_ca: unused,
            crl: None,
            crl_check_interval_s: crate::config::DEFAULT_CRL_CHECK_S,
            stale_crl: crate::config::StaleCrl::Refuse,
        },
    ))
}

/// With `--config FILE` (a deployment's config, the one `serve` reads), `init` and
/// `keys rotate-kek` refuse a KEK keyring inside the data or store directory, as `serve`
/// does: otherwise they would write the key beside the ciphertext it protects, and a backup
/// of the data taken before `serve` refused would hold both. `--data-dir DIR` is dev mode's
/// layout, where the keys live beside the throwaway data.
fn check_kek_placement(local: &LocalArgs, config: &Config) -> Result<(), String> {
    if local.config.is_some() {
        config.check_kek_outside_data().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `credbroker serve --config FILE`.
///
/// # Errors
/// An invalid config, a provider that cannot start, or a listener that cannot bind.
pub fn run_serve(args: &ServeArgs) -> Result<ExitCode, String> {
    let mut config = Config::load(&args.config).map_err(|e| e.to_string())?;
    config.audit.forensic_start = args.forensic_start;
    config.check_kek_outside_data().map_err(|e| e.to_string())?;
    // Before any thread exists: the variable leaves the environment for good.
    if let Some(var) = &config.keys.kek_env {
        crate::broker::take_kek_from_env(var).map_err(|e| e.to_string())?;
    }
    init_logging(config.log.format, &config.log.level);
    warn_of_weak_defaults(&config);
    runtime()?.block_on(async {
        let hup = crate::daemon::hangups().map_err(|e| e.to_string())?;
        tracing::info!("starting: a SIGHUP from now on is applied as a reload once started");
        let registry =
            ProviderRegistry::from_settings(&config.providers, &config.config_dir).await?;
        crate::daemon::run(config, registry, hup, |addr| {
            println!("listening {addr}");
            announce_ready();
        })
        .await
        .map_err(|e| e.to_string())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// What `doctor` warns of and a production broker starts with all the same, said at every
/// start: otherwise such a broker works and never says so.
fn warn_of_weak_defaults(config: &Config) {
    let data_dir = config
        .data_dir
        .canonicalize()
        .unwrap_or_else(|_| config.data_dir.clone());
    let audit_key = config.audit_key_file();
    if audit_key
        .canonicalize()
        .is_ok_and(|p| p.starts_with(&data_dir))
    {
        tracing::warn!(path = %audit_key.display(), "the audit signing key is inside the data directory: whoever has a copy of it can re-sign a rewritten log; move it out and set [keys] audit_key_file (see credbroker doctor)");
    }
    if config.tls.crl.is_none() {
        tracing::warn!("no [tls] crl: a client certificate is cut off only by disabling its worker or operator record, and one not registered (a scraper's) not at all until it expires (see credbroker doctor)");
    }
}

/// `credbroker reload`: SIGHUP to the daemon of this config's data directory, found by its
/// pid file and checked to be a credbroker process (a stale pid file may name another).
///
/// # Errors
/// When no daemon runs for this data directory or the signal cannot be sent.
pub fn run_reload(local: &LocalArgs) -> Result<ExitCode, String> {
    let config = local_config(local)?;
    let raw = running_daemon(&config)?;
    let pid = rustix::process::Pid::from_raw(raw)
        .ok_or_else(|| format!("{}: not a process id", config.pid_file().display()))?;
    rustix::process::kill_process(pid, rustix::process::Signal::HUP)
        .map_err(|e| format!("cannot signal process {raw}: {e}"))?;
    println!(
        "sent SIGHUP to credbroker (pid {raw}); its log says \"SIGHUP: TLS certificates, client CA and CRL reloaded\" or why the reload was refused"
    );
    Ok(ExitCode::SUCCESS)
}

/// `credbroker init`.
///
/// # Errors
/// When a key cannot be created.
pub fn run_init(local: &LocalArgs) -> Result<ExitCode, String> {
    let config = local_config(local)?;
    check_kek_placement(local, &config)?;
    let created = BrokerKeys::init(&config).map_err(|e| e.to_string())?;
    if created.is_empty() {
        println!("all keys already exist; nothing created");
    }
    for p in created {
        println!("created {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `credbroker lint-templates`.
///
/// # Errors
/// When a policy file or template cannot be read.
pub fn run_lint(a: &LintArgs) -> Result<ExitCode, String> {
    let findings = crate::lint::lint_templates(&a.templates, &a.policies)?;
    if findings.is_empty() {
        println!("templates OK");
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &findings {
            // A finding quotes the templates and policies it read.
            println!("{}", super::output::sanitize(&f.to_string()));
        }
        println!("{} problem(s)", findings.len());
        Ok(ExitCode::from(1))
    }
}

/// `credbroker keys rotate-kek`: the rotation itself lives with the keys
/// (`keys::rotation`).
///
/// # Errors
/// See [`crate::keys::rotation::rotate_kek`].
pub fn run_rotate_kek(local: &LocalArgs) -> Result<ExitCode, String> {
    let config = local_config(local)?;
    check_kek_placement(local, &config)?;
    let actor = cli_actor();
    let bar = super::progress::Bar::new(super::output::Output::shows_progress(None));
    let report = runtime()?.block_on(crate::keys::rotation::rotate_kek(&config, &actor, &bar))?;
    println!(
        "KEK rotated: version {} -> {}; {} data key(s) re-wrapped. Older KEK versions stay in {} until you remove them.",
        report.old_version,
        report.new_version,
        report.rewrapped,
        config.kek_file().display()
    );
    if let Some(e) = &report.committed_unrecorded {
        eprintln!(
            "warning: the rotation committed, but the audit record saying so could not be appended ({}): the log holds only the record allowing it",
            super::output::sanitize(e)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `credbroker bootstrap-operator`.
#[derive(Args, Debug)]
pub struct BootstrapOperatorArgs {
    #[command(flatten)]
    local: LocalArgs,
    /// The operator's name (last segment of `spiffe://<trust-domain>/operator/<name>`).
    #[arg(long)]
    id: String,
}

/// Registers an operator offline (the daemon stopped: the store is locked while it runs),
/// audited: the first operator of a deployment, or one more when nobody who could add it
/// over the admin API is available.
///
/// # Errors
/// When the id is invalid, the store or audit log cannot be opened, or the operator exists.
pub fn run_bootstrap_operator(args: &BootstrapOperatorArgs) -> Result<ExitCode, String> {
    let config = local_config(&args.local)?;
    let actor = cli_actor();
    let id = crate::ids::OperatorId::parse(&args.id)?;
    runtime()?.block_on(async {
        let store = crate::store::open(&config.store, &config.data_dir)
            .await
            .map_err(|e| e.to_string())?;
        let hold = crate::replica::hold_offline(std::sync::Arc::clone(&store), "operator registration").await?;
        let result = async {
        let records = crate::store::records::Records::new(std::sync::Arc::clone(&store));
        if records
            .operator(&id)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            return Err(format!("operator {id} is already registered"));
        }
        if records
            .identifier_owner(&crate::admin::retired_operator_name(id.as_str()))
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            return Err(format!(
                "operator name {id} was removed before and is retired: a certificate issued for the old operator would come back to life. Register a new name"
            ));
        }
        let operator = crate::model::Operator {
            id: id.clone(),
            status: crate::model::Status::Active,
            revision: 0,
            created_at: crate::model::now_rfc3339(),
        };
        let mut batch = crate::store::Batch::new();
        batch.create(&operator);
        // The name is still not retired when the batch commits (a removal committed since
        // the read above, by anything else writing the store, fails it).
        batch.expect_identifier_free(&crate::admin::retired_operator_name(id.as_str()));
        crate::broker::refuse_a_lost_log_offline(&config, store.as_ref()).await?;
        let settings = crate::broker::BrokerSettings::from_config(&config);
        let signer =
            crate::keys::AuditSigner::load(&config.audit_key_file()).map_err(|e| e.to_string())?;
        let log =
            crate::audit::AuditLog::open(settings.audit, signer).map_err(|e| e.to_string())?;
        let event = crate::audit::AuditEvent {
            kind: "admin".into(),
            action: "operator.bootstrap".into(),
            request_id: crate::server::new_request_id(),
            actor,
            outcome: "allowed".into(),
            detail: Some(format!("operator={id} registered offline")),
            ..Default::default()
        };
        // Still this command's store, before anything is recorded.
        if let Err(e) = hold.confirm().await {
            log.close();
            return Err(format!("{e}; nothing was registered, run it again"));
        }
        let appended = match log.append(event.clone()).await {
            Ok(receipt) => receipt,
            Err(e) => {
                log.close();
                return Err(format!("audit append failed; nothing registered: {e}"));
            }
        };
        let committed = records.commit(batch).await;
        if let Err(e) = &committed {
            // The record above says it was registered: a second one says what became of it,
            // as for every change whose commit fails after its record.
            let outcome = match e {
                crate::store::StoreError::Precondition { .. } => "nothing was written",
                _ => "its outcome is unknown until the store is checked",
            };
            let mut failed = event;
            failed.outcome = "failed".into();
            failed.detail = Some(format!(
                "commit of {} failed after audit; {outcome} (operator={id}): {e}",
                appended.audit_id
            ));
            if let Err(a) = log.append(failed).await {
                tracing::error!(error = %a, "the failure of an offline bootstrap could not be recorded");
            }
        }
        log.close();
        committed.map_err(|e| e.to_string())
        }
        .await;
        hold.release().await;
        result
    })?;
    println!("operator {id} registered; only registered, active operators administer from now on");
    Ok(ExitCode::SUCCESS)
}

/// Who runs an offline command, for its audit record: `cli:<name>`, the account of the
/// process's real uid (from `/etc/passwd`; `uid-<N>` when it has no entry there, as for
/// directory-service accounts), never `$USER`, which whoever runs the command sets as they
/// like. When the login session belongs to another account (`/proc/self/loginuid`, which
/// `sudo -u credbroker` keeps), it is added: `cli:credbroker(login:alice)`; so is what sudo
/// says of its caller, as a claim: `cli:root(login:alice,sudo:alice)`.
pub(super) fn cli_actor() -> String {
    let uid = rustix::process::getuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name_of = |id: u32| account_of(&passwd, id).map_or_else(|| format!("uid-{id}"), clean_name);
    let mut also = Vec::new();
    // 4294967295: no login session (a service, a container).
    if let Some(login) = std::fs::read_to_string("/proc/self/loginuid")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|l| *l != u32::MAX && *l != uid)
    {
        also.push(format!("login:{}", name_of(login)));
    }
    // Only where sudo could have set it: as root, or beside a known login session (with
    // neither, anyone could name anyone).
    if let Ok(by) = std::env::var("SUDO_USER") {
        if !by.is_empty() && (uid == 0 || !also.is_empty()) {
            also.push(format!("sudo:{}", clean_name(&by)));
        }
    }
    if also.is_empty() {
        format!("cli:{}", name_of(uid))
    } else {
        format!("cli:{}({})", name_of(uid), also.join(","))
    }
}

/// The account name of `uid` in the text of `/etc/passwd`.
fn account_of(passwd: &str, uid: u32) -> Option<&str> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then_some(name)
    })
}

/// `name` reduced to the characters an audit actor keeps.
fn clean_name(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .take(64)
        .collect()
}

/// The pid of the daemon (`serve` or `dev`) running for `config`'s data directory, found by
/// its pid file and checked to be a credbroker daemon (a stale pid file may name another
/// process).
///
/// # Errors
/// Saying why no daemon runs for it.
pub fn running_daemon(config: &Config) -> Result<i32, String> {
    let path = config.pid_file();
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (is the daemon for data directory {} running?)",
            path.display(),
            config.data_dir.display()
        )
    })?;
    let raw: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{}: not a process id", path.display()))?;
    let exe = std::fs::read_link(format!("/proc/{raw}/exe")).map_err(|_| {
        format!(
            "no process {raw} (stale pid file {}): the daemon is not running",
            path.display()
        )
    })?;
    // A stale or planted pid may name another credbroker process (a `client` command, which
    // SIGHUP would kill): only a daemon (`serve` or `dev`) is signalled.
    let args = std::fs::read(format!("/proc/{raw}/cmdline")).unwrap_or_default();
    let daemon = args
        .split(|b| *b == 0)
        .skip(1)
        .any(|a| a == b"serve" || a == b"dev");
    if !daemon {
        return Err(format!(
            "process {raw} is not a credbroker daemon (serve or dev): stale pid file {}",
            path.display()
        ));
    }
    let ours = std::env::current_exe().ok();
    let name_ok = exe
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("credbroker"));
    if !name_ok && ours.as_deref() != Some(exe.as_path()) {
        return Err(format!(
            "process {raw} is {}, not credbroker (stale pid file {})",
            exe.display(),
            path.display()
        ));
    }
    Ok(raw)
}

#[cfg(test)]
mod actor_tests {
    #[test]
    fn the_actor_is_the_uid_s_account_not_user() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(super::account_of(passwd, 1000), Some("alice"));
        assert_eq!(super::account_of(passwd, 0), Some("root"));
        assert_eq!(super::account_of(passwd, 4242), None);
        assert_eq!(super::clean_name("al ice;rm"), "alicerm");
        // $USER plays no part.
        std::env::set_var("USER", "somebody-else");
        assert!(!super::cli_actor().contains("somebody-else"));
    }
}
