//! `credbroker dev`: a complete broker on one machine, no cloud account needed.
//!
//! Creates (or reuses) a data directory holding a dev CA, a server certificate for localhost,
//! a worker and an operator client certificate, the KEK, audit and fingerprint keys, and a
//! config file; seeds a demo tenant, a worker allowed for it and a demo instance bound to a
//! pasted secret — through the same audited admin operations operators use. Everything it
//! generates is for development only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use secrecy::SecretString;
use serde_json::json;

use credbroker_providers::SecretFields;

use crate::admin::{AdminOp, NewBinding, NewInstance, NewTenant, NewWorker};
use crate::broker::{Broker, BrokerKeys};
use crate::config::{Config, TlsSettings};
use crate::ids::{BindingId, InstanceId, TenantId, WorkerId};
use crate::keys::write_private_file;
use crate::pki::CertAuthority;
use crate::server::new_request_id;

/// Trust domain of dev certificates.
pub const DEV_TRUST_DOMAIN: &str = "credbroker.dev";
/// Demo tenant id.
pub const DEMO_TENANT: &str = "demo";
/// Demo instance id.
pub const DEMO_INSTANCE: &str = "demo-instance";
/// Demo binding id.
pub const DEMO_BINDING: &str = "demo-binding";
/// Dev worker name.
pub const DEV_WORKER: &str = "dev-worker";
/// Dev operator name.
pub const DEV_OPERATOR: &str = "dev-operator";

/// A dev-mode set-up failure.
#[derive(Debug, thiserror::Error)]
#[error("dev mode: {0}")]
pub struct DevError(pub String);

fn dev_err(e: impl std::fmt::Display) -> DevError {
    DevError(e.to_string())
}

/// `<data-dir>/server-url`: the URL the running dev broker answers on, written once it
/// listens (the port is known only then when `--listen` asks for port 0); what `--dev-dir`
/// dials.
pub fn server_url_file(data_dir: &Path) -> PathBuf {
    data_dir.join("server-url")
}

/// Records the URL of the dev broker listening on `addr` in [`server_url_file`]: written to
/// a new file (never through a link planted at a temporary name) and renamed over it.
///
/// # Errors
/// When the file cannot be written.
pub fn record_server_url(data_dir: &Path, addr: std::net::SocketAddr) -> std::io::Result<()> {
    use std::io::Write;
    let path = server_url_file(data_dir);
    let tmp = data_dir.join(format!(".server-url.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    f.write_all(format!("{}\n", server_url(addr)).as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, &path)
}

/// The URL of a broker listening on `addr`: a wildcard address is dialled on loopback.
pub fn server_url(mut addr: std::net::SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("https://{addr}")
}

/// `<data-dir>/pki`
pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// Writes a file that is not secret (a certificate, the config) as the keys are written:
/// through a fresh temporary renamed over it, never following a link planted in its place.
/// (Mode 0600: the directory is the user's alone anyway.)
fn write_public(path: &Path, text: &str) -> Result<(), DevError> {
    write_private_file(path, text.as_bytes()).map_err(dev_err)
}

/// Refuses a dev directory another user could have prepared: one not owned by this user, or
/// writable by group or others. `dev` trusts what it finds there (a CA, keys, a config), so
/// a directory someone else made (`/tmp/credbroker-dev`) could hand them its operator.
pub(crate) fn check_own_dir(dir: &Path) -> Result<(), DevError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(dir).map_err(|e| DevError(format!("{}: {e}", dir.display())))?;
    let me = rustix::process::getuid().as_raw();
    if meta.uid() != me || meta.permissions().mode() & 0o022 != 0 {
        return Err(DevError(format!(
            "{} belongs to another user or is writable by group or others: `dev` trusts the CA and keys it finds there. Use a directory of your own (mode 0700)",
            dir.display()
        )));
    }
    Ok(())
}

/// The first line of the config `dev` writes: how a directory is known to be a dev broker's.
const DEV_CONFIG_MARK: &str = "# Written by `credbroker dev`: development only.";

/// Refuses a directory that holds anything but a dev broker (a production data directory
/// given by mistake): `dev` writes its CA, keys and config there and seeds demo records into
/// whatever store it finds, so a production store would get a dev operator, worker and
/// tenant, and a config in the directory the dev CA as its client CA. A new or empty
/// directory, or one whose `credbroker.toml` `dev` wrote, is a dev broker's.
fn check_dev_dir(dir: &Path) -> Result<(), DevError> {
    let mut entries =
        std::fs::read_dir(dir).map_err(|e| DevError(format!("{}: {e}", dir.display())))?;
    if entries.next().is_none() {
        return Ok(());
    }
    let config = dir.join("credbroker.toml");
    let written_by_dev = std::fs::read_to_string(&config)
        .is_ok_and(|text| text.lines().next() == Some(DEV_CONFIG_MARK));
    if written_by_dev {
        return Ok(());
    }
    Err(DevError(format!(
        "{} is not empty and holds no dev broker (its credbroker.toml was not written by `credbroker dev`): dev writes its own CA, keys and config there and seeds demo records into any store it finds. Give it a directory of its own (new or empty); a production data directory is served with `credbroker serve --config FILE`",
        dir.display()
    )))
}

fn ensure_pki(data_dir: &Path) -> Result<(), DevError> {
    let pki = pki_dir(data_dir);
    let names = [
        "ca.crt",
        "server.crt",
        "server.key",
        "worker.crt",
        "worker.key",
        "operator.crt",
        "operator.key",
    ];
    if names.iter().all(|n| pki.join(n).exists()) {
        return Ok(());
    }
    crate::keys::create_private_dir(&pki).map_err(dev_err)?;
    let ca = CertAuthority::generate("credbroker dev CA").map_err(dev_err)?;
    let server = ca.issue_server(&[], 2).map_err(dev_err)?;
    let worker = ca
        .issue_client_now(
            &format!("spiffe://{DEV_TRUST_DOMAIN}/worker/{DEV_WORKER}"),
            3,
        )
        .map_err(dev_err)?;
    let operator = ca
        .issue_client_now(
            &format!("spiffe://{DEV_TRUST_DOMAIN}/operator/{DEV_OPERATOR}"),
            4,
        )
        .map_err(dev_err)?;
    write_public(&pki.join("ca.crt"), &ca.cert_pem)?;
    write_private_file(&pki.join("ca.key"), ca.key_pem.as_bytes()).map_err(dev_err)?;
    write_public(&pki.join("server.crt"), &server.cert_pem)?;
    write_private_file(&pki.join("server.key"), server.key_pem.as_bytes()).map_err(dev_err)?;
    write_public(&pki.join("worker.crt"), &worker.cert_pem)?;
    write_private_file(&pki.join("worker.key"), worker.key_pem.as_bytes()).map_err(dev_err)?;
    write_public(&pki.join("operator.crt"), &operator.cert_pem)?;
    write_private_file(&pki.join("operator.key"), operator.key_pem.as_bytes()).map_err(dev_err)?;
    Ok(())
}

/// Creates the data directory, PKI, keys and `credbroker.toml`; returns the loaded config.
///
/// # Errors
/// On I/O or key generation failure.
pub fn prepare(data_dir: &Path, listen: SocketAddr) -> Result<Config, DevError> {
    crate::keys::create_private_dir(data_dir)
        .map_err(|e| DevError(format!("{}: {e}", data_dir.display())))?;
    let data_dir = data_dir.canonicalize().map_err(dev_err)?;
    check_own_dir(&data_dir)?;
    check_dev_dir(&data_dir)?;
    ensure_pki(&data_dir)?;
    // Written from the config type itself, so the file always parses as the daemon reads it.
    let written = Config::with_defaults(
        PathBuf::from("."),
        listen,
        DEV_TRUST_DOMAIN,
        TlsSettings {
            cert: PathBuf::from("pki/server.crt"),
            key: PathBuf::from("pki/server.key"),
            client_ca: PathBuf::from("pki/ca.crt"),
            crl: None,
            crl_check_interval_s: crate::config::DEFAULT_CRL_CHECK_S,
            stale_crl: crate::config::StaleCrl::Refuse,
        },
    );
    let config_text = format!(
        "{DEV_CONFIG_MARK}\n{}",
        toml::to_string(&written).map_err(dev_err)?
    );
    let config_path = data_dir.join("credbroker.toml");
    write_public(&config_path, &config_text)?;
    let config = Config::load(&config_path).map_err(dev_err)?;
    BrokerKeys::init(&config).map_err(dev_err)?;
    Ok(config)
}

async fn apply(broker: &Arc<Broker>, op: AdminOp) -> Result<(), DevError> {
    broker
        .admin("cli:dev-bootstrap", op, &new_request_id())
        .await
        .map(|_| ())
        .map_err(|(e, _)| DevError(format!("seeding failed: {e}")))
}

/// Seeds the demo records that are missing (each step is skipped when already present, so
/// an interrupted seed completes on the next start). Returns whether anything was added.
///
/// # Errors
/// When an admin operation fails.
pub async fn seed(broker: &Arc<Broker>) -> Result<bool, DevError> {
    let r = broker.records();
    let tenant = TenantId::parse(DEMO_TENANT).map_err(DevError)?;
    let binding = BindingId::parse(DEMO_BINDING).map_err(DevError)?;
    let worker = WorkerId::parse(DEV_WORKER).map_err(DevError)?;
    let instance = InstanceId::parse(DEMO_INSTANCE).map_err(DevError)?;
    let mut added = false;
    // The dev operator is registered like any operator: only registered operators administer.
    let operator = crate::ids::OperatorId::parse(DEV_OPERATOR).map_err(DevError)?;
    if r.operator(&operator).await.map_err(dev_err)?.is_none() {
        apply(
            broker,
            AdminOp::AddOperator(crate::admin::NewOperator {
                id: operator,
                by: None,
            }),
        )
        .await?;
    }
    if r.tenant(&tenant).await.map_err(dev_err)?.is_none() {
        apply(
            broker,
            AdminOp::AddTenant(NewTenant {
                id: tenant.clone(),
                name: "Demo tenant".into(),
            }),
        )
        .await?;
        added = true;
    }
    let existing = r.binding(&binding).await.map_err(dev_err)?;
    if existing.is_none() {
        apply(
            broker,
            AdminOp::AddBinding(NewBinding {
                id: binding.clone(),
                tenant: tenant.clone(),
                provider: credbroker_providers::DEMO_PROVIDER.into(),
                config: json!({ "note": "demo pasted secret created by credbroker dev" }),
                ceiling: serde_json::Value::Null,
                owner: "credbroker dev".into(),
                purpose: "demo binding of dev mode".into(),
                max_secret_age_days: None,
                tenant_created_by: None,
            }),
        )
        .await?;
        added = true;
    }
    if r.binding(&binding)
        .await
        .map_err(dev_err)?
        .and_then(|b| b.active_secret_version)
        .is_none()
    {
        let password = crate::keys::random_bytes(18).map_err(dev_err)?;
        let mut fields = SecretFields::new();
        fields.insert("username", SecretString::from("demo-user"));
        fields.insert(
            "password",
            SecretString::from(hex::encode(password.as_slice())),
        );
        apply(
            broker,
            AdminOp::SecretSet(DEMO_BINDING.into(), fields, None),
        )
        .await?;
        added = true;
    }
    if r.worker(&worker).await.map_err(dev_err)?.is_none() {
        apply(
            broker,
            AdminOp::AddWorker(NewWorker {
                id: worker,
                tenants: vec![tenant.clone()],
                connector_kinds: vec![],
                owner: "credbroker dev".into(),
                purpose: "demo worker of dev mode".into(),
            }),
        )
        .await?;
        added = true;
    }
    if r.instance(&instance).await.map_err(dev_err)?.is_none() {
        apply(
            broker,
            AdminOp::AddInstance(NewInstance {
                id: instance,
                tenant,
                connector_kind: "demo".into(),
                binding,
            }),
        )
        .await?;
        added = true;
    }
    Ok(added)
}

fn shell_quote(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-:".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The `curl` command that resolves the demo instance with the dev worker certificate.
pub fn demo_curl(data_dir: &Path, addr: SocketAddr) -> String {
    let pki = pki_dir(data_dir);
    let p = |n: &str| shell_quote(&pki.join(n).display().to_string());
    let host = if addr.ip().is_unspecified() {
        "localhost".to_owned()
    } else {
        addr.to_string()
    };
    let host = if addr.ip().is_unspecified() {
        format!("{host}:{}", addr.port())
    } else {
        host
    };
    format!(
        "curl --cacert {} --cert {} --key {} -H 'content-type: application/json' -d '{{\"instance_id\":\"{DEMO_INSTANCE}\"}}' https://{host}/v1/resolve",
        p("ca.crt"),
        p("worker.crt"),
        p("worker.key"),
    )
}
