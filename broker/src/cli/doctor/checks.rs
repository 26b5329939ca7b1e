//! The doctor's checks, in the order a start needs them: config, files, keys, TLS, store,
//! audit directory, audit log, providers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;

use super::{Finding, Thresholds};
use crate::config::Config;
use crate::store::{Backend, SCHEMA_VERSION};

mod tls;
use tls::tls;

/// Every check against the config file at `path`.
pub async fn all(path: &Path, t: Thresholds) -> Vec<Finding> {
    let mut out = Vec::new();
    let config = match Config::load(path) {
        Ok(c) => {
            out.push(Finding::ok(
                "config",
                format!("parses; data directory {}", c.data_dir.display()),
            ));
            c
        }
        Err(e) => {
            out.push(Finding::fail(
                "config",
                e.to_string(),
                "correct the file (every key is documented in README, \"Configuration\")",
            ));
            return out;
        }
    };
    files(&config, &mut out);
    keys(&config, t, &mut out);
    key_contents(&config, &mut out);
    tls(&config, t, &mut out);
    store_url(path, &config, &mut out);
    store(&config, &mut out).await;
    audit_directory(&config, t, &mut out);
    audit_log(&config, &mut out).await;
    providers(&config, &mut out).await;
    issuer(&config, &mut out);
    out
}

/// `[issuer] url` with a port: valid for the broker and for GCP's workload identity pools,
/// but AWS IAM refuses an OIDC provider URL with a port (PROTOCOLS.md), so no AWS
/// web-identity trust can be made for it. A warning: the URL cannot change later without
/// every relying party's registration changing with it.
fn issuer(config: &Config, out: &mut Vec<Finding>) {
    if let Some(issuer) = &config.issuer {
        out.push(issuer_url(&issuer.url));
        if issuer.publish_lead_s < ISSUER_LEAD_FLOOR_S {
            out.push(Finding::warn(
                "issuer.publish_lead",
                format!(
                    "[issuer] publish_lead_s is {} s: a rotated key signs before relying parties that cache the JWKS (up to 300 s) have fetched it, and before customers who pin it inline can re-pin; their mints (GCP, AWS web identity, Entra federated credentials) fail until they do",
                    issuer.publish_lead_s
                ),
                format!("set [issuer] publish_lead_s to at least {ISSUER_LEAD_FLOOR_S} (the default, 86400, gives inline-JWKS customers a day); `keys issuer rotate --now` stays the way to sign at once"),
            ));
        }
    }
}

/// The shortest lead that lets a relying party holding a JWKS fetched just before a
/// rotation (cached up to 300 s) fetch it again before the new key signs, twice over, with
/// a minute of clock skew.
const ISSUER_LEAD_FLOOR_S: u64 = 2 * 300 + 60;

fn issuer_url(url: &str) -> Finding {
    let authority = url.strip_prefix("https://").unwrap_or(url);
    let host_end = if authority.starts_with('[') {
        authority.find(']').map_or(authority.len(), |i| i + 1)
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    if authority.len() > host_end {
        Finding::warn(
            "issuer.url",
            format!("{url} carries a port: AWS IAM refuses an OIDC provider URL with one, so no AWS web-identity role can trust this issuer (GCP accepts it)"),
            "serve discovery on port 443 (the public listener, or a load balancer in front of it) and drop the port from [issuer] url before any relying party registers it",
        )
    } else {
        Finding::ok(
            "issuer.url",
            format!("{url} (no port: AWS IAM and GCP accept it)"),
        )
    }
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn date(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// The files the config names, with whether each must exist.
fn referenced(config: &Config) -> Vec<(&'static str, PathBuf)> {
    let mut files = vec![
        ("tls.cert", config.tls.cert.clone()),
        ("tls.key", config.tls.key.clone()),
        ("tls.client_ca", config.tls.client_ca.clone()),
    ];
    if let Some(crl) = &config.tls.crl {
        files.push(("tls.crl", crl.clone()));
    }
    if let Some(p) = &config.public {
        files.push(("public.cert", p.cert.clone()));
        files.push(("public.key", p.key.clone()));
    }
    if config.keys.kek_env.is_none() {
        files.push(("keys.kek_file", config.kek_file()));
    }
    files.push(("keys.audit_key_file", config.audit_key_file()));
    files.push(("keys.audit_public_key_file", config.audit_public_key_file()));
    files.push(("keys.fingerprint_key_file", config.fingerprint_key_file()));
    files
}

fn files(config: &Config, out: &mut Vec<Finding>) {
    let all = referenced(config);
    let missing: Vec<String> = all
        .iter()
        .filter(|(_, p)| !p.is_file())
        .map(|(k, p)| format!("{k} = {}", p.display()))
        .collect();
    if missing.is_empty() {
        out.push(Finding::ok(
            "files",
            format!("all {} files the config names exist", all.len()),
        ));
    } else {
        out.push(Finding::fail(
            "files",
            format!("missing: {}", missing.join("; ")),
            "correct the path, or create the keys with `credbroker init --config FILE` (it creates only what is missing)",
        ));
    }
    // The data directory: tenants, bindings, the audit log (who resolved what) are not for
    // other users of the host. Created 0700 by the broker; one made by hand may be wider.
    // Group access is the deployment's choice (a Kubernetes volume's fsGroup is re-applied
    // at every mount), so only access by others is named.
    if let Ok(meta) = std::fs::metadata(&config.data_dir) {
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
        if mode & 0o007 != 0 {
            out.push(Finding::warn(
                "permissions.data_dir",
                format!(
                    "{} has mode {mode:04o}: other users can list or read the store and the audit log",
                    config.data_dir.display()
                ),
                format!("chmod 700 {} (owned by the daemon's user)", config.data_dir.display()),
            ));
        }
    }
    if let Some(var) = &config.keys.kek_env {
        if std::env::var_os(var).is_none() {
            out.push(Finding::warn(
                "keys.kek_env",
                format!("the keyring comes from ${var}, which is not set here"),
                format!("make sure the daemon's environment sets {var} (run the doctor in that environment to check it)"),
            ));
        }
    }
}

/// A database password written in the config file (`[store] url`) is only as private as
/// the file: group- or world-readable, anyone who can read it reaches the database (every
/// tenant's sealed secrets, the audit chains).
fn store_url(path: &Path, config: &Config, out: &mut Vec<Finding>) {
    use std::os::unix::fs::PermissionsExt;
    let Some(url) = &config.store.url else {
        return;
    };
    if !url_has_password(url.expose()) {
        return;
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o037 != 0 {
        out.push(Finding::warn(
            "store.url",
            format!("[store] url carries the database password, and {} has mode {mode:04o}", path.display()),
            "chmod 600 the config file (640 for a group the daemon reads it through), or move the URL out of it: [store] url_env names the environment variable holding it",
        ));
    }
}

/// Whether a PostgreSQL connection string carries a password, read as the driver reads it
/// (a URL's user info up to its first `@`, percent-encoded query keys, the key-value form).
fn url_has_password(url: &str) -> bool {
    url.parse::<tokio_postgres::Config>()
        .is_ok_and(|c| c.get_password().is_some())
}

async fn store(config: &Config, out: &mut Vec<Finding>) {
    let found = match config.store.backend {
        Backend::Sled => {
            let dir = config
                .store
                .path
                .clone()
                .unwrap_or_else(|| config.data_dir.join("store"));
            if !dir.exists() {
                out.push(Finding::warn(
                    "store.schema",
                    format!("no store at {} yet", dir.display()),
                    "none for a new deployment (the first start creates it); otherwise check [store] path and data_dir",
                ));
                return;
            }
            if dir.join(crate::store::SLED_MOVED_FILE).exists() {
                out.push(Finding::fail(
                    "store.schema",
                    format!(
                        "the sled store at {} was moved into PostgreSQL by `store migrate` ({}): a broker on it is refused",
                        dir.display(),
                        dir.join(crate::store::SLED_MOVED_FILE).display()
                    ),
                    "set [store] backend = \"postgres\" (the replicas hold every change since the move)",
                ));
                return;
            }
            // Never opened here: opening sled writes to it and takes its lock.
            match crate::store::SledStore::recorded_schema_version(&dir) {
                Ok(Some(v)) => Ok(Some(v)),
                Ok(None) => {
                    out.push(Finding::warn(
                        "store.schema",
                        format!("{} has no {} (no broker of this release opened it yet)", dir.display(), crate::store::SLED_SCHEMA_FILE),
                        "start the broker once (it refuses a schema version it does not read and records the version), or check with the release that wrote the store",
                    ));
                    return;
                }
                Err(e) => Err(format!(
                    "{}: {e}",
                    dir.join(crate::store::SLED_SCHEMA_FILE).display()
                )),
            }
        }
        Backend::Postgres => {
            match tokio::time::timeout(
                Duration::from_secs(15),
                crate::store::PgStore::read_schema_version(&config.store),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err("the database did not answer within 15 s".to_owned()),
            }
        }
    };
    let current = SCHEMA_VERSION.to_string();
    out.push(match found {
        Ok(Some(v)) if v == current => Finding::ok("store.schema", format!("schema version {v}, as this build reads")),
        Ok(Some(v)) if crate::store::upgraded_in_place(v.as_bytes()) => Finding::warn(
            "store.schema",
            format!("schema version {v}: the next start upgrades it in place to {current}"),
            "back up the data directory (or the database) before the upgrade start",
        ),
        Ok(Some(v)) => Finding::fail(
            "store.schema",
            format!("schema version {v:?} is not one this build reads ({current})"),
            "run the credbroker build that wrote this store, or restore a backup of a supported version",
        ),
        Ok(None) => Finding::warn(
            "store.schema",
            "the store records no schema version (never opened by a broker)",
            "none for a new deployment; the first start records it",
        ),
        Err(e) => Finding::fail("store.schema", e, "check [store] (path, url, url_env, TLS) and that the store is reachable"),
    });
}

fn audit_directory(config: &Config, t: Thresholds, out: &mut Vec<Finding>) {
    let dir = config.audit_dir();
    // Not created yet: what matters is that it can be, in the data directory.
    let probe_dir = if dir.is_dir() {
        dir.clone()
    } else {
        config.data_dir.clone()
    };
    // Free space first: on a nearly full file system the probe itself must not be what
    // fills it (the daemon's next append would fail).
    let free = match rustix::fs::statvfs(&probe_dir) {
        Ok(st) => Some(st.f_bavail.saturating_mul(st.f_frsize)),
        Err(e) => {
            out.push(Finding::warn(
                "audit.directory",
                format!("free space unknown ({e})"),
                "check the file system by hand (df)",
            ));
            None
        }
    };
    if let Some(free) = free.filter(|f| *f < t.min_free_bytes) {
        out.push(Finding::fail(
            "audit.directory",
            format!(
                "{} has {} MiB free, below {} MiB",
                probe_dir.display(),
                free / (1024 * 1024),
                t.min_free_bytes / (1024 * 1024)
            ),
            "free space or grow the file system: when it fills, every request fails closed (audit_unavailable)",
        ));
        return;
    }
    let probe = probe_dir.join(format!(".doctor-probe-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        use std::io::Write;
        // create_new: never through a link or a file someone placed at this name.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)?;
        let result = f.write_all(&[0u8; 65536]).and_then(|()| f.sync_all());
        drop(f);
        let _ = std::fs::remove_file(&probe);
        result
    })();
    match written {
        Err(e) => out.push(Finding::fail(
            "audit.directory",
            format!("cannot write in {}: {e}", probe_dir.display()),
            "free space or fix ownership and permissions: while the audit log cannot be appended, every request fails closed (audit_unavailable)",
        )),
        Ok(()) => out.push(Finding::ok(
            "audit.directory",
            format!(
                "{} is writable{}",
                probe_dir.display(),
                free.map_or(String::new(), |f| format!(", {} MiB free", f / (1024 * 1024)))
            ),
        )),
    }
}

async fn audit_log(config: &Config, out: &mut Vec<Finding>) {
    let key = config.audit_public_key_file();
    let verifier = match crate::keys::AuditVerifier::load(&key) {
        Ok(v) => v,
        Err(e) => {
            out.push(Finding::fail(
                "audit.checkpoint",
                e.to_string(),
                "restore the audit public key (`credbroker audit public-key` on a copy you trust)",
            ));
            return;
        }
    };
    if let Err(e) = crate::cli::audit::check_host_public_key(config, true) {
        // A key this user may not read says nothing of the public key beside it: the log
        // is still checked, with that key.
        if crate::cli::audit::signing_key_unreadable(config) {
            out.push(Finding::warn(
                "audit.public_key",
                e,
                "run the doctor as the daemon's user",
            ));
        } else {
            out.push(Finding::fail(
                "audit.public_key",
                e,
                "restore the public key from the copy auditors pinned (runbooks/audit-verification.md)",
            ));
            return;
        }
    }
    let fix =
        "see runbooks/audit-verification.md; `credbroker audit verify` names the first bad record";
    let max = config.audit.max_unanchored();
    if crate::audit::segments::has_file_log(&config.audit_dir()) {
        let checked =
            crate::audit::verify_since_last_checkpoint(&config.audit_dir(), &verifier, max);
        out.push(match crate::audit::judged(checked) {
            Ok(s) => Finding::ok(
                "audit.checkpoint",
                match s.last_checkpoint {
                    Some(cp) => format!("the last signed checkpoint (sequence {cp}) verifies with the public key, and the log chains on from it to {}", s.last_seq.unwrap_or(cp)),
                    None => "no audit record yet".to_owned(),
                },
            ),
            Err(f) => Finding::fail("audit.checkpoint", f.to_string(), fix),
        });
    } else if config.store.backend == Backend::Sled {
        // A store a broker opened (it recorded the schema version it checked) has an audit
        // log beside it: every change is audited. None at all is a removed audit directory,
        // or `[audit] dir` pointing elsewhere; a start would begin a new chain at 1.
        let dir = config.store_dir();
        out.push(
            match crate::store::SledStore::recorded_schema_version(&dir) {
                // A warning: a first start (or `bootstrap-operator`) that failed after opening
                // the store and before appending leaves the same.
                Ok(Some(_)) => Finding::warn(
                    "audit.checkpoint",
                    format!(
                        "{} holds no audit log, though a broker opened the store at {}: a first start that failed before its first record, or a log that was removed, or data_dir and [store] path naming different deployments (a start refuses a store that holds operators or tenants without its log)",
                        config.audit_dir().display(),
                        dir.display()
                    ),
                    "if the store holds changes, the log is missing: restore it into <data_dir>/audit from a backup (or correct data_dir / [store] path), and treat a lost log as an incident (runbooks/audit-verification.md) before starting the broker",
                ),
                _ => Finding::ok(
                    "audit.checkpoint",
                    "no audit log yet (the first start creates it)",
                ),
            },
        );
    }
    if config.store.backend == Backend::Postgres {
        let checked = tokio::time::timeout(Duration::from_secs(60), async {
            let mut client = crate::audit::chains::connect(&config.store).await?;
            let snapshot = crate::audit::chains::snapshot(&mut client).await?;
            let mut results = Vec::new();
            for replica in crate::audit::chains::replicas(&snapshot).await? {
                let r = crate::audit::chains::verify_tail(&snapshot, replica, &verifier, max).await;
                // Unsigned from its first record: no checkpoint at all, which a broker
                // never leaves (`audit::never_signed`).
                results.push((replica, r.and_then(|tail| match tail {
                    Some((1, last)) => Err(format!("records 1..{last} and no signed checkpoint, though a broker signs its first batch at once: the public key vouches for none of them")),
                    other => Ok(other),
                })));
            }
            Ok::<_, String>(results)
        })
        .await
        .unwrap_or_else(|_| Err("the database did not answer within 60 s".into()));
        match checked {
            Ok(results) => {
                for (replica, r) in results {
                    let check = format!("audit.checkpoint.replica_{replica}");
                    out.push(match r {
                        Ok(_) => Finding::ok(&check, "the last signed checkpoint verifies with the public key, and the chain runs on from it to its end"),
                        Err(f) => Finding::fail(&check, f, fix),
                    });
                }
            }
            Err(e) => out.push(Finding::fail(
                "audit.checkpoint",
                e,
                "check [store] and that the database is reachable",
            )),
        }
    }
}

/// Secret key files: readable by the owner only, and — outside dev — not in the data
/// directory, so a copy of it holds ciphertext only.
fn keys(config: &Config, t: Thresholds, out: &mut Vec<Finding>) {
    use std::os::unix::fs::PermissionsExt;
    let mut secret = vec![("tls.key", config.tls.key.clone())];
    if let Some(p) = &config.public {
        secret.push(("public.key", p.key.clone()));
    }
    if config.keys.kek_env.is_none() {
        secret.push(("keys.kek_file", config.kek_file()));
    }
    secret.push(("keys.audit_key_file", config.audit_key_file()));
    secret.push(("keys.fingerprint_key_file", config.fingerprint_key_file()));
    let data_dir = config
        .data_dir
        .canonicalize()
        .unwrap_or_else(|_| config.data_dir.clone());
    let mut good = 0;
    for (name, path) in secret {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue; // said by `files`
        };
        // The broker's own keys are opened without following a link (`serve` refuses one);
        // the TLS keys may be links (a secret mount's files are).
        let own = name.starts_with("keys.");
        if own && std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            out.push(Finding::fail(
                &format!("permissions.{name}"),
                format!(
                    "{} is a symbolic link: `serve` refuses to read a key through one",
                    path.display()
                ),
                format!(
                    "replace the link with the file itself ({}, mode 0600)",
                    path.display()
                ),
            ));
            continue;
        }
        let mode = meta.permissions().mode() & 0o777;
        let root_owned = std::os::unix::fs::MetadataExt::uid(&meta) == 0;
        let open = if own {
            (mode & 0o077 != 0).then_some("others than its owner")
        } else {
            crate::tls::key_mode_too_open(mode, root_owned)
        };
        if let Some(who) = open {
            let fix = if own {
                format!("chmod 600 {} (owned by the daemon's user)", path.display())
            } else if !root_owned {
                format!("chown root and chmod 640 {0} (the daemon's group), or chown the daemon's user and chmod 600 {0}", path.display())
            } else {
                format!("chmod 640 {} (root-owned, the daemon's group) or 600 (owned by the daemon's user)", path.display())
            };
            out.push(Finding::fail(
                &format!("permissions.{name}"),
                format!("{} has mode {mode:04o}: open to {who}", path.display()),
                fix,
            ));
            continue;
        }
        // The KEK: `serve` itself refuses one inside the data or store directory.
        if name == "keys.kek_file" && !t.dev {
            if let Err(e) = config.check_kek_outside_data() {
                out.push(Finding::fail(
                    "location.keys.kek_file",
                    e.to_string(),
                    "`serve` refuses to start so: move the keyring out and set [keys] kek_file (or kek_env)",
                ));
                continue;
            }
        }
        let inside = path.canonicalize().is_ok_and(|p| p.starts_with(&data_dir));
        if inside && !t.dev && name.starts_with("keys.") {
            out.push(Finding::warn(
                &format!("location.{name}"),
                format!("{} is inside the data directory", path.display()),
                format!("keep keys apart from the data directory (a secrets mount, another disk), so a copy of {} holds only ciphertext: move the file and set [keys] {} to its new path", config.data_dir.display(), name.trim_start_matches("keys.")),
            ));
            continue;
        }
        good += 1;
    }
    if good > 0 {
        out.push(Finding::ok(
            "keys",
            format!(
                "{good} key file(s) readable by their owner only{}",
                if t.dev {
                    ""
                } else {
                    ", outside the data directory"
                }
            ),
        ));
    }
}

/// The broker's own key files open as `serve` opens them: a keyring, signing key or
/// fingerprint key that is empty, cut short or garbled (a restore gone wrong, a runbook step
/// that wrote an empty file) is found before `serve` refuses it. A file this user may not
/// read is a warning: run the doctor as the daemon's user to check it.
fn key_contents(config: &Config, out: &mut Vec<Finding>) {
    use crate::keys::{AuditSigner, FingerprintKey, KeyError, Keyring};
    type Load = fn(&Path) -> Result<(), KeyError>;
    let mut checks: Vec<(&str, PathBuf, Load)> = Vec::new();
    if config.keys.kek_env.is_none() {
        checks.push(("keys.kek_file", config.kek_file(), |p| {
            Keyring::load(p).map(|_| ())
        }));
    }
    checks.push(("keys.audit_key_file", config.audit_key_file(), |p| {
        AuditSigner::load(p).map(|_| ())
    }));
    checks.push((
        "keys.fingerprint_key_file",
        config.fingerprint_key_file(),
        |p| FingerprintKey::load(p).map(|_| ()),
    ));
    let mut good = 0;
    for (name, path, load) in checks {
        if !path.is_file() {
            continue; // said by `files`
        }
        if let Err(e) = std::fs::File::open(&path) {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                out.push(Finding::warn(
                    &format!("content.{name}"),
                    format!(
                        "{} cannot be read by this user: its content was not checked",
                        path.display()
                    ),
                    "run the doctor as the daemon's user",
                ));
                continue;
            }
        }
        match load(&path) {
            Ok(()) => good += 1,
            Err(e) => out.push(Finding::fail(
                &format!("content.{name}"),
                format!("{}: {e}", path.display()),
                "`serve` refuses to start so: restore the file from its backup (a KEK keyring from after the last rotation, see runbooks/kek-rotation.md)",
            )),
        }
    }
    if good > 0 {
        out.push(Finding::ok(
            "content.keys",
            format!("{good} key file(s) open as the daemon opens them"),
        ));
    }
}

async fn providers(config: &Config, out: &mut Vec<Finding>) {
    if config.providers.is_empty() {
        out.push(Finding::ok(
            "providers",
            "no federated provider configured (pasted-secret providers are built in)",
        ));
        return;
    }
    let loaded = tokio::time::timeout(
        Duration::from_secs(30),
        credbroker_providers::ProviderRegistry::from_settings(
            &config.providers,
            &config.config_dir,
        ),
    )
    .await
    .unwrap_or_else(|_| Err("loading the providers took longer than 30 s".into()));
    out.push(match loaded {
        Ok(_) => Finding::ok(
            "providers",
            format!(
                "settings and ceiling files valid: {}",
                config.providers.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ),
        Err(e) => Finding::fail(
            "providers",
            e,
            "correct that [providers.<id>] section or the file it names (`credbroker provider show <id>` lists the runbook)",
        ),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issuer_url_with_a_port_is_warned_about() {
        for (url, warned) in [
            ("https://broker.example.com", false),
            ("https://broker.example.com:8443", true),
            ("https://broker.example.com:443", true),
            ("https://[2001:db8::1]", false),
            ("https://[2001:db8::1]:8443", true),
        ] {
            let f = issuer_url(url);
            let v = serde_json::to_value(&f).unwrap();
            assert_eq!(v["check"], "issuer.url");
            assert_eq!(v["status"] == "warn", warned, "{url}: {v}");
            assert_eq!(v["status"] == "ok", !warned, "{url}: {v}");
        }
    }
}

#[cfg(test)]
mod url_tests {
    use super::url_has_password;

    #[test]
    fn a_password_in_a_connection_string_is_found() {
        for with in [
            "postgresql://cb:pw@db.example/cb",
            "postgres://cb:p%40w@db.example:5432/cb?sslmode=require",
            "postgresql://db.example/cb?user=cb&password=pw",
            "postgresql://db.example/cb?user=cb&pass%77ord=pw",
            "postgresql://cb:ab/cd@db.example/cb",
            "host=db.example user=cb password=pw",
        ] {
            assert!(url_has_password(with), "{with}");
        }
        for without in [
            "postgresql://cb@db.example/cb",
            "postgresql://db.example:5432/cb",
            "postgresql://cb@[::1]:5432/cb",
            "host=/run/postgresql user=cb",
        ] {
            assert!(!url_has_password(without), "{without}");
        }
    }
}
