//! Listener TLS: server certificate, required client certificates verified against the
//! client CA bundle and (when configured) a CRL, and the same for the CLI's client side.
//!
//! Configs are built with the explicit aws-lc-rs provider (`builder_with_provider`), never
//! the process default, so no code path depends on which provider happens to be installed.
//! [`ReloadableTls`] swaps in a freshly loaded config on SIGHUP; connections already
//! established keep the config they started with.

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::TlsSettings;

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

/// A config as loaded, with (mTLS) the material it was built from and the issuers (raw
/// names) of its CRLs.
type Loaded = (Built, Option<Material>, Vec<Vec<u8>>);

/// What an mTLS listener's config is built from besides its CRL, as last loaded: a change of
/// the CRL alone is applied with these ([`ReloadableTls::reload_crl`]), whatever the other
/// files hold meanwhile (a key being renewed must not hold back a revocation).
struct Material {
    roots: Arc<RootCertStore>,
    /// The CA bundle's certificates, for [`Material::check_crls`].
    cas: Vec<CertificateDer<'static>>,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Material {
    fn clone(&self) -> Self {
        Material {
            roots: Arc::clone(&self.roots),
            cas: self.cas.clone(),
            certs: self.certs.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Material {
    fn load(settings: &TlsSettings) -> Result<Material, TlsError> {
        let roots = Arc::new(roots(&settings.client_ca)?);
        Ok(Material {
            roots,
            cas: load_certs(&settings.client_ca)?,
            certs: load_certs(&settings.cert)?,
            key: load_server_key(&settings.key)?,
        })
    }

    /// Whether `crls` (applied alone, with this bundle) still speak for what `in_force` did:
    /// every issuer the CRLs in force named is named again, and a CRL naming a CA of this
    /// bundle is signed by its key. A CRL of a CA rotated meanwhile (its new bundle failing
    /// to load), paired with the old bundle, would refuse every client: it is not applied.
    fn check_crls(
        &self,
        crls: &[CertificateRevocationListDer<'static>],
        in_force: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>, TlsError> {
        use x509_parser::prelude::{CertificateRevocationList, FromDer, X509Certificate};
        let parsed = crls
            .iter()
            .map(|der| CertificateRevocationList::from_der(der.as_ref()).map(|(_, c)| c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError(format!("a CRL does not parse ({e})")))?;
        let issuers: Vec<Vec<u8>> = parsed
            .iter()
            .map(|c| c.issuer().as_raw().to_vec())
            .collect();
        if let Some(gone) = in_force.iter().find(|i| !issuers.contains(i)) {
            let name = x509_parser::x509::X509Name::from_der(gone)
                .map_or_else(|_| "an issuer".to_owned(), |(_, n)| n.to_string());
            return Err(TlsError(format!(
                "the changed CRL file no longer holds a CRL of {name}, which the CRL in force covered: not applied alone with the CA bundle in force (a CA changed with a bundle that does not load?)"
            )));
        }
        let cas: Vec<X509Certificate<'_>> = self
            .cas
            .iter()
            .filter_map(|der| X509Certificate::from_der(der.as_ref()).ok().map(|(_, c)| c))
            .collect();
        for crl in &parsed {
            // Any CA of the bundle under that name may have signed it (the old and the new
            // certificate of a CA re-keyed under one name, side by side).
            let named: Vec<_> = cas
                .iter()
                .filter(|ca| ca.subject().as_raw() == crl.issuer().as_raw())
                .collect();
            let signed = named.iter().any(|ca| {
                matches!(
                    crl.verify_signature(ca.public_key()),
                    Ok(()) | Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm)
                )
            });
            if !named.is_empty() && !signed {
                return Err(TlsError(format!(
                    "the changed CRL of {} is not signed by the key of any CA of that name in the bundle in force: not applied alone (a CA re-keyed with a bundle that does not load?)",
                    crl.issuer()
                )));
            }
        }
        Ok(issuers)
    }
}

/// The issuers (raw names) of `crls`; none for a CRL that does not parse (the verifier
/// refuses those anyway).
fn crl_issuers(crls: &[CertificateRevocationListDer<'static>]) -> Vec<Vec<u8>> {
    use x509_parser::prelude::{CertificateRevocationList, FromDer};
    crls.iter()
        .filter_map(|der| CertificateRevocationList::from_der(der.as_ref()).ok())
        .map(|(_, c)| c.issuer().as_raw().to_vec())
        .collect()
}

fn server_config_and_verifier(settings: &TlsSettings) -> Result<Built, TlsError> {
    let material = Material::load(settings)?;
    let crls = settings.crl.as_deref().map(load_crls).transpose()?;
    assemble(&material, crls, settings)
}

/// The listener config of `material` and `crls` (`settings`: the CRL policy, and the
/// certificate's path for errors).
fn assemble(
    material: &Material,
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

/// Where a reloadable config comes from.
#[derive(Debug, Clone)]
enum Source {
    Mtls(TlsSettings),
    Public {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    },
}

impl Source {
    /// The config, and for mTLS the material it was built from.
    fn build(&self) -> Result<Loaded, TlsError> {
        match self {
            Source::Mtls(s) => {
                let material = Material::load(s)?;
                let crls = s.crl.as_deref().map(load_crls).transpose()?;
                let issuers = crls.as_deref().map(crl_issuers).unwrap_or_default();
                Ok((assemble(&material, crls, s)?, Some(material), issuers))
            }
            Source::Public { cert, key } => {
                public_server_config(cert, key).map(|c| ((c, None), None, Vec::new()))
            }
        }
    }
}

/// When one TLS file of a listener stops being good (see [`ReloadableTls::deadlines`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    /// `server`, `client_ca`, `crl` or `public`.
    pub file: &'static str,
    /// Its path.
    pub path: std::path::PathBuf,
    /// Whether it is a CRL (due for its next update) rather than certificates (expiring).
    pub crl: bool,
    /// For a CRL: whether handshakes it checks are refused once it is past due
    /// (`[tls] stale_crl = "refuse"`).
    pub refused_when_due: bool,
    /// Unix seconds of the earliest `notAfter` (certificates) or `nextUpdate` (CRL); `Err`
    /// when it could not be read, `Ok(None)` for a CRL that names no next update.
    pub at: Result<Option<i64>, String>,
}

impl Source {
    fn deadlines(&self) -> Vec<Deadline> {
        let cert = |file, path: &std::path::PathBuf| Deadline {
            file,
            path: path.clone(),
            crl: false,
            refused_when_due: false,
            at: crate::certs::certificates(path).map(|c| c.iter().map(|c| c.not_after).min()),
        };
        match self {
            Source::Mtls(s) => {
                let mut all = vec![cert("server", &s.cert), cert("client_ca", &s.client_ca)];
                if let Some(path) = &s.crl {
                    all.push(Deadline {
                        file: "crl",
                        path: path.clone(),
                        crl: true,
                        refused_when_due: s.stale_crl == crate::config::StaleCrl::Refuse,
                        at: crate::certs::crls(path).map(|c| {
                            c.iter()
                                .filter(|c| !c.superseded)
                                .filter_map(|c| c.next_update)
                                .min()
                        }),
                    });
                }
                all
            }
            Source::Public { cert: path, .. } => vec![cert("public", path)],
        }
    }
}

/// A server config that can be replaced while the daemon runs. Each reload is announced
/// (see [`ReloadableTls::reloads`]) so open connections re-check their client certificate
/// against the new CA bundle and CRL.
pub struct ReloadableTls {
    source: std::sync::Mutex<Source>,
    current: RwLock<Built>,
    /// When what was loaded expires (certificates) or is due (CRL), read at each load.
    deadlines: std::sync::Mutex<Vec<Deadline>>,
    reloads: tokio::sync::watch::Sender<u64>,
    /// The CRL file in force: as it was read by the last load that succeeded, for
    /// [`ReloadableTls::crl_changed`].
    crl_seen: std::sync::Mutex<CrlFile>,
    /// What the mTLS config in force was built from besides its CRL.
    material: std::sync::Mutex<Option<Material>>,
    /// The issuers (raw names) of the CRLs in force.
    crl_issuers: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// A CRL file as it was read: the SHA-256 of its bytes, `None` when it could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlFile(Option<Vec<u8>>);

impl CrlFile {
    /// The file at `path` as it is now (or the absence of a CRL).
    fn read(path: Option<&Path>) -> CrlFile {
        CrlFile(path.and_then(|p| std::fs::read(p).ok()).map(|bytes| {
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)
                .as_ref()
                .to_vec()
        }))
    }
}

impl Source {
    /// The CRL file an mTLS source reads, if any.
    fn crl_path(&self) -> Option<&Path> {
        match self {
            Source::Mtls(s) => s.crl.as_deref(),
            Source::Public { .. } => None,
        }
    }
}

impl ReloadableTls {
    /// Loads the initial config.
    ///
    /// # Errors
    /// As [`server_config`].
    pub fn new(settings: TlsSettings) -> Result<Self, TlsError> {
        let source = Source::Mtls(settings);
        let deadlines = std::sync::Mutex::new(source.deadlines());
        let crl_seen = std::sync::Mutex::new(CrlFile::read(source.crl_path()));
        let (built, material, issuers) = source.build()?;
        Ok(ReloadableTls {
            source: std::sync::Mutex::new(source),
            current: RwLock::new(built),
            deadlines,
            reloads: tokio::sync::watch::channel(0).0,
            crl_seen,
            material: std::sync::Mutex::new(material),
            crl_issuers: std::sync::Mutex::new(issuers),
        })
    }

    /// The public (callback) listener's config.
    ///
    /// # Errors
    /// As [`public_server_config`].
    pub fn public(cert: std::path::PathBuf, key: std::path::PathBuf) -> Result<Self, TlsError> {
        let source = Source::Public { cert, key };
        let deadlines = std::sync::Mutex::new(source.deadlines());
        let (built, _, _) = source.build()?;
        Ok(ReloadableTls {
            source: std::sync::Mutex::new(source),
            current: RwLock::new(built),
            deadlines,
            reloads: tokio::sync::watch::channel(0).0,
            crl_seen: std::sync::Mutex::new(CrlFile(None)),
            material: std::sync::Mutex::new(None),
            crl_issuers: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// When the certificates and CRL in use expire or are due: read from the files at the
    /// last successful load (a reload that fails changes nothing here either, so an alert
    /// on these keeps counting down while the old certificate is still served).
    pub fn deadlines(&self) -> Vec<Deadline> {
        self.deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The config for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// The current client certificate verifier (mTLS listener only).
    pub fn client_verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    /// Changes on every successful reload.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// Whether `chain` (end entity first) still passes the current client verifier: the CA
    /// bundle and CRL as last (re)loaded.
    pub fn client_chain_still_valid(&self, chain: &[CertificateDer<'static>]) -> bool {
        let (Some(verifier), Some((end_entity, intermediates))) =
            (self.client_verifier(), chain.split_first())
        else {
            return true;
        };
        verifier
            .verify_client_cert(
                end_entity,
                intermediates,
                rustls::pki_types::UnixTime::now(),
            )
            .is_ok()
    }

    /// The CRL file as it is now when it differs from the CRL in force (unreadable counts as
    /// a difference), `None` when it does not or when there is no CRL. Until a load of it
    /// succeeds it differs at every call: a reload that failed for any reason — the CRL
    /// itself, or a certificate and key caught half-replaced — is tried again at the next
    /// check, so a revocation is never forgotten; the caller reports each file once.
    pub fn crl_changed(&self) -> Option<CrlFile> {
        let path = self
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .crl_path()
            .map(Path::to_path_buf)?;
        let now = CrlFile::read(Some(&path));
        let seen = self.crl_seen.lock().unwrap_or_else(PoisonError::into_inner);
        (*seen != now).then_some(now)
    }

    /// Re-reads certificates, key, CA bundle and CRL. On failure the old config stays.
    ///
    /// # Errors
    /// As [`server_config`].
    pub fn reload(&self) -> Result<(), TlsError> {
        let source = self
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        self.install(source)
    }

    /// The path of the CRL in force, when there is one.
    pub fn crl_in_force(&self) -> Option<String> {
        self.source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .crl_path()
            .map(|p| p.display().to_string())
    }

    /// Loads the CRL file in force again, with the certificate, key and CA bundle as they
    /// were last loaded: what applies a revocation while another file fails to load (a key
    /// caught half-renewed, a bundle rewritten with the wrong mode), which would otherwise
    /// hold it back until that file is fixed. On failure nothing changes.
    ///
    /// # Errors
    /// When the CRL does not load, or this listener has none.
    pub fn reload_crl(&self) -> Result<(), TlsError> {
        let source = self
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Source::Mtls(settings) = &source else {
            return Err(TlsError("the public listener has no CRL".into()));
        };
        let Some(path) = settings.crl.as_deref() else {
            return Err(TlsError("no CRL is configured".into()));
        };
        let material = self
            .material
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| TlsError("no TLS config was loaded".into()))?;
        let crl = CrlFile::read(Some(path));
        let due = source.deadlines().into_iter().find(|d| d.crl);
        let crls = load_crls(path)?;
        let in_force = self
            .crl_issuers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let issuers = material.check_crls(&crls, &in_force)?;
        let fresh = assemble(&material, Some(crls), settings)?;
        *self.crl_seen.lock().unwrap_or_else(PoisonError::into_inner) = crl;
        *self
            .crl_issuers
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = issuers;
        {
            let mut deadlines = self
                .deadlines
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            deadlines.retain(|d| !d.crl);
            deadlines.extend(due);
        }
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        self.reloads.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// Replaces the mTLS settings (paths of certificate, key, CA bundle, CRL) with those of
    /// a re-read config and loads them. On failure nothing changes.
    ///
    /// # Errors
    /// As [`server_config`]; or when this is the public listener's config.
    pub fn reload_with(&self, settings: TlsSettings) -> Result<(), TlsError> {
        // A reload that drops the CRL in force would let every certificate it revokes back
        // in, at once and on open connections too: that takes a restart.
        let had_crl = self
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .crl_path()
            .is_some();
        if had_crl && settings.crl.is_none() {
            return Err(TlsError(
                "the config no longer names [tls] crl: a reload does not drop the CRL in force (every certificate it revokes would be served again); restart the daemon to run without one".into(),
            ));
        }
        self.install(Source::Mtls(settings))
    }

    /// Replaces the public listener's certificate and key paths and loads them.
    ///
    /// # Errors
    /// As [`public_server_config`].
    pub fn reload_public_with(
        &self,
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    ) -> Result<(), TlsError> {
        self.install(Source::Public { cert, key })
    }

    fn install(&self, source: Source) -> Result<(), TlsError> {
        let same_kind =
            std::mem::discriminant(&*self.source.lock().unwrap_or_else(PoisonError::into_inner))
                == std::mem::discriminant(&source);
        if !same_kind {
            return Err(TlsError(
                "a listener's TLS cannot change between mTLS and public".into(),
            ));
        }
        // Read before the build: if the files change in between, the build reads the newer
        // ones and the next reload corrects the deadlines (and the next CRL check reloads).
        let deadlines = source.deadlines();
        let crl = CrlFile::read(source.crl_path());
        let (fresh, material, issuers) = source.build()?;
        *self.material.lock().unwrap_or_else(PoisonError::into_inner) = material;
        *self
            .crl_issuers
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = issuers;
        *self.crl_seen.lock().unwrap_or_else(PoisonError::into_inner) = crl;
        *self
            .deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = deadlines;
        *self.source.lock().unwrap_or_else(PoisonError::into_inner) = source;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        self.reloads.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }
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
