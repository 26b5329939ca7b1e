//! Reloadable listener TLS: what a listener's config is built from as last loaded, reloads
//! of every file (SIGHUP, the CRL watcher), and a changed CRL applied alone with the rest
//! in force when another file fails to load.

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::{
    assemble, load_certs, load_crls, load_server_key, public_server_config, roots, Built, TlsError,
};
use crate::config::TlsSettings;

/// A config as loaded, with (mTLS) the material it was built from and the issuers (raw
/// names) of its CRLs.
type Loaded = (Built, Option<Material>, Vec<Vec<u8>>);

/// What an mTLS listener's config is built from besides its CRL, as last loaded: a change of
/// the CRL alone is applied with these ([`ReloadableTls::reload_crl`]), whatever the other
/// files hold meanwhile (a key being renewed must not hold back a revocation).
pub(super) struct Material {
    pub(super) roots: Arc<RootCertStore>,
    /// The CA bundle's certificates, for [`Material::check_crls`].
    pub(super) cas: Vec<CertificateDer<'static>>,
    pub(super) certs: Vec<CertificateDer<'static>>,
    pub(super) key: PrivateKeyDer<'static>,
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
    pub(super) fn load(settings: &TlsSettings) -> Result<Material, TlsError> {
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
            if crate::certs::crl_signer(crl, &cas) == crate::certs::CrlSigner::NotSigned {
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
pub(super) fn crl_issuers(crls: &[CertificateRevocationListDer<'static>]) -> Vec<Vec<u8>> {
    use x509_parser::prelude::{CertificateRevocationList, FromDer};
    crls.iter()
        .filter_map(|der| CertificateRevocationList::from_der(der.as_ref()).ok())
        .map(|(_, c)| c.issuer().as_raw().to_vec())
        .collect()
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
