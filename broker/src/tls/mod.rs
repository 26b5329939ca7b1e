//! Listener TLS: server certificate, required client certificates verified against the
//! client CA bundle and (when configured) a CRL, and the same for the CLI's client side.
//!
//! Configs are built with the explicit aws-lc-rs provider (`builder_with_provider`), never
//! the process default, so no code path depends on which provider happens to be installed.
//! [`ReloadableTls`] swaps in a freshly loaded config on SIGHUP; connections already
//! established keep the config they started with.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::TlsSettings;

mod reload;

pub use reload::{CrlFile, Deadline, ReloadableTls};

/// A TLS set-up problem, naming the file concerned.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The crypto provider every config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("{}: {e}", path.display())))
}

/// Loads every certificate in a PEM file.
///
/// # Errors
/// When unreadable or holding no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{}: no certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

/// Loads a private key from a PEM file.
///
/// # Errors
/// When unreadable or holding no key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The PEM text is wiped when dropped (at every start and SIGHUP reload); the decoded
    // key then lives in rustls's config.
    let pem = zeroize::Zeroizing::new(read(path)?);
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| TlsError(format!("{}: no usable private key ({e})", path.display())))
}

/// What a served TLS key's mode opens it to beyond what a deployment may allow, if anything.
/// A key owned by root may be read by the daemon's group (`root:credbroker 0640`, the
/// systemd layout) but not written by it, and never be read by others; any other key by its
/// owner only (`0600`, owned by the daemon's user). `serve` and the doctor judge by this one
/// rule.
#[must_use]
pub fn key_mode_too_open(mode: u32, root_owned: bool) -> Option<&'static str> {
    let (open_to, who) = if root_owned {
        (
            0o137,
            "others than its owner and group, or writable by its group",
        )
    } else {
        (
            0o077,
            "others than its owner (group read is for a root-owned key)",
        )
    };
    (mode & open_to != 0).then_some(who)
}

/// Loads the private key a listener serves with, refusing a file that
/// [`key_mode_too_open`] judges open: whoever can read it can impersonate the broker to its
/// workers and operators. The key may be a symbolic link (a secret mount's files are); the
/// mode judged is that of the file read.
///
/// # Errors
/// When unreadable, too open, or holding no key.
pub fn load_server_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let io = |e: std::io::Error| TlsError(format!("{}: {e}", path.display()));
    let mut f = std::fs::File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if let Some(who) = key_mode_too_open(mode, meta.uid() == 0) {
        return Err(TlsError(format!(
            "{} has mode {mode:04o}: open to {who}; chmod 600 it (owned by the daemon's user) or chown root and chmod 640 it (the daemon's group)",
            path.display()
        )));
    }
    let mut pem = zeroize::Zeroizing::new(Vec::new());
    f.read_to_end(&mut pem).map_err(io)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| TlsError(format!("{}: no usable private key ({e})", path.display())))
}

/// Loads the CRLs of a PEM file the verifier is to use, newest first: of several CRLs of one
/// CA and one partition (issuing distribution point), only the newest. (rustls's verifier consults
/// the first CRL of an issuer it finds, so a newer one appended after an older one would
/// otherwise go unseen, its revocations with it.) Each CRL left out is logged.
///
/// # Errors
/// When unreadable, holding no CRL, or holding one that does not parse.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let ders = read_crls(path)?;
    let facts = crate::certs::crl_facts(path, &ders).map_err(TlsError)?;
    let mut used = Vec::with_capacity(ders.len());
    for (der, fact) in ders.into_iter().zip(&facts) {
        if fact.superseded {
            tracing::warn!(
                file = %path.display(),
                issuer = %fact.issuer,
                "the CRL file holds more than one CRL of this CA: the older one is ignored; replace the file with the CA's current CRL rather than append to it"
            );
        } else {
            used.push((fact.newness(), der));
        }
    }
    // Newest first: a full CRL and a partitioned one of the same CA are both kept, and
    // either can be the one rustls finds authoritative for a certificate; of those, the
    // first in order is used.
    used.sort_by(|a, b| b.0.cmp(&a.0));
    Ok(used.into_iter().map(|(_, der)| der).collect())
}

/// Reads every CRL of a PEM file, in order.
///
/// # Errors
/// When unreadable or holding no CRL.
pub fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let pem = read(path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    if crls.is_empty() {
        return Err(TlsError(format!("{}: no CRL found", path.display())));
    }
    Ok(crls)
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// Builds the listener config: client certificates required, CRL honoured, ALPN h2 +
/// http/1.1.
///
/// # Errors
/// When a file is missing or invalid, or the key does not match the certificate.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_and_verifier(settings).map(|(c, _)| c)
}

/// The verifier of client certificates and the config using it.
type Built = (Arc<ServerConfig>, Option<Arc<dyn ClientCertVerifier>>);

fn server_config_and_verifier(settings: &TlsSettings) -> Result<Built, TlsError> {
    let material = reload::Material::load(settings)?;
    let crls = settings.crl.as_deref().map(load_crls).transpose()?;
    assemble(&material, crls, settings)
}

/// The listener config of `material` and `crls` (`settings`: the CRL policy, and the
/// certificate's path for errors).
fn assemble(
    material: &reload::Material,
    crls: Option<Vec<CertificateRevocationListDer<'static>>>,
    settings: &TlsSettings,
) -> Result<Built, TlsError> {
    let provider = provider();
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&material.roots), provider.clone());
    if let Some(crls) = crls {
        verifier = verifier.with_crls(crls);
        if settings.stale_crl == crate::config::StaleCrl::Refuse {
            verifier = verifier.enforce_revocation_expiration();
        }
    }
    let verifier = verifier
        .build()
        .map_err(|e| TlsError(format!("client verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(material.certs.clone(), material.key.clone_key())
        .map_err(|e| TlsError(format!("{}: {e}", settings.cert.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // No session resumption: rustls takes a resumed session's client chain from the session
    // and does not run the verifier again, so a client holding a ticket (or a TLS 1.2
    // session id) would pass a CRL that has gone stale under `stale_crl = "refuse"`, or a
    // certificate that has expired since, until the connection's next re-check. Every
    // connection is a full handshake, verified against the CRL in force.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok((Arc::new(config), Some(verifier)))
}

/// Builds a client config presenting `cert`/`key` and trusting only `ca`.
///
/// # Errors
/// When a file is missing or invalid.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError(format!("{}: {e}", cert.display())))?;
    Ok(Arc::new(config))
}

/// Builds a client config without a client certificate that trusts only the certificates in
/// `ca` (no file: trusts nothing, so a TLS connection cannot be made).
///
/// # Errors
/// When the file is missing or invalid.
pub fn server_auth_client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca {
        Some(ca) => roots(ca)?,
        None => RootCertStore::empty(),
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Builds the public listener config: server certificate only, no client authentication
/// (callbacks are verified by state, signature or token instead), ALPN http/1.1.
///
/// # Errors
/// When a file is missing or invalid.
pub fn public_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_server_key(key)?)
        .map_err(|e| TlsError(format!("{}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    /// The served key's mode rule: owner only, or group read for a root-owned key; never
    /// others, never group write or execute.
    #[test]
    fn served_key_modes() {
        for (mode, root_owned, open) in [
            (0o600, false, false),
            (0o400, false, false),
            (0o640, false, true),
            (0o644, false, true),
            (0o600, true, false),
            (0o640, true, false),
            (0o440, true, false),
            (0o660, true, true),
            (0o650, true, true),
            (0o644, true, true),
            (0o604, true, true),
            (0o641, true, true),
        ] {
            assert_eq!(
                super::key_mode_too_open(mode, root_owned).is_some(),
                open,
                "{mode:o} root-owned {root_owned}"
            );
        }
    }
}
