//! Certificates and CRLs as the doctor and the daemon's expiry metrics need them: validity,
//! names, next update. Parsed with x509-parser from the same PEM files the TLS
//! setup loads.

use std::net::IpAddr;
use std::path::Path;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

/// One certificate of a PEM file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Subject, as text.
    pub subject: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// DNS names of its subjectAltName.
    pub dns_names: Vec<String>,
    /// IP addresses of its subjectAltName.
    pub ips: Vec<IpAddr>,
}

/// One CRL of a PEM file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlFacts {
    /// Issuer, as text.
    pub issuer: String,
    /// When it was issued, Unix seconds.
    pub this_update: i64,
    /// When the next one is due, Unix seconds (absent: the CRL does not say).
    pub next_update: Option<i64>,
    /// Its issuing distribution point extension, as encoded (absent: a full CRL of its
    /// issuer). Two CRLs of one issuer with different ones are partitions, not duplicates.
    pub partition: Option<Vec<u8>>,
    /// Its CRL number (absent: the CRL carries none), as big-endian bytes without leading
    /// zeros.
    pub number: Option<Vec<u8>>,
    /// Another CRL of the same issuer and partition in the file is newer (a later
    /// `thisUpdate`, or the same one and a higher CRL number): the daemon leaves this one out.
    pub superseded: bool,
}

impl CrlFacts {
    /// What orders CRLs from oldest to newest: `thisUpdate`, then the CRL number (compared as
    /// an unsigned big-endian integer: the longer is larger, then byte by byte).
    pub fn newness(&self) -> (i64, usize, Vec<u8>) {
        let n = self.number.clone().unwrap_or_default();
        (self.this_update, n.len(), n)
    }
}

/// Every certificate in the PEM file at `path`, in order.
///
/// # Errors
/// When the file cannot be read, holds no certificate, or one does not parse.
pub fn certificates(path: &Path) -> Result<Vec<CertFacts>, String> {
    let ders = crate::tls::load_certs(path).map_err(|e| e.to_string())?;
    ders.iter()
        .map(|der| {
            let (_, cert) = X509Certificate::from_der(der.as_ref())
                .map_err(|e| format!("{}: a certificate does not parse ({e})", path.display()))?;
            let mut facts = CertFacts {
                subject: cert.subject().to_string(),
                not_before: cert.validity().not_before.timestamp(),
                not_after: cert.validity().not_after.timestamp(),
                dns_names: Vec::new(),
                ips: Vec::new(),
            };
            if let Ok(Some(san)) = cert.subject_alternative_name() {
                for name in &san.value.general_names {
                    match name {
                        GeneralName::DNSName(d) => facts.dns_names.push((*d).to_owned()),
                        GeneralName::IPAddress(b) => {
                            if let Ok(a) = <[u8; 4]>::try_from(*b) {
                                facts.ips.push(IpAddr::from(a));
                            } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                                facts.ips.push(IpAddr::from(a));
                            }
                        }
                        _ => {}
                    }
                }
            }
            Ok(facts)
        })
        .collect()
}

/// The `notAfter` times of the certificates a client presented, Unix seconds, earliest
/// first (those that do not parse left out): past the earliest of the verified path's the
/// chain no longer verifies.
pub fn chain_not_afters(chain: &[rustls::pki_types::CertificateDer<'_>]) -> Vec<i64> {
    let mut times: Vec<i64> = chain
        .iter()
        .filter_map(|der| {
            X509Certificate::from_der(der.as_ref())
                .ok()
                .map(|(_, c)| c.validity().not_after.timestamp())
        })
        .collect();
    times.sort_unstable();
    times
}

/// Every CRL in the PEM file at `path`, each marked `superseded` when a newer CRL of its
/// issuer and partition is in the file too.
///
/// # Errors
/// When the file cannot be read, holds no CRL, or one does not parse.
pub fn crls(path: &Path) -> Result<Vec<CrlFacts>, String> {
    let ders = crate::tls::read_crls(path).map_err(|e| e.to_string())?;
    crl_facts(path, &ders)
}

/// The facts of `ders` (read from `path`), superseded ones marked.
///
/// # Errors
/// When one does not parse.
pub fn crl_facts(
    path: &Path,
    ders: &[rustls::pki_types::CertificateRevocationListDer<'_>],
) -> Result<Vec<CrlFacts>, String> {
    let mut facts = ders
        .iter()
        .map(|der| {
            let (_, crl) = CertificateRevocationList::from_der(der.as_ref())
                .map_err(|e| format!("{}: a CRL does not parse ({e})", path.display()))?;
            Ok(CrlFacts {
                issuer: crl.issuer().to_string(),
                this_update: crl.last_update().timestamp(),
                next_update: crl.next_update().map(|t| t.timestamp()),
                partition: crl
                    .extensions()
                    .iter()
                    .find(|e| {
                        e.oid == x509_parser::oid_registry::OID_X509_EXT_ISSUER_DISTRIBUTION_POINT
                    })
                    .map(|e| e.value.to_vec()),
                number: crl.crl_number().map(|n| n.to_bytes_be()),
                superseded: false,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let rank = CrlFacts::newness;
    for i in 0..facts.len() {
        let newer = facts.iter().enumerate().any(|(j, other)| {
            j != i
                && other.issuer == facts[i].issuer
                && other.partition == facts[i].partition
                && (rank(other) > rank(&facts[i]) || (rank(other) == rank(&facts[i]) && j < i))
        });
        facts[i].superseded = newer;
    }
    Ok(facts)
}

/// Seconds until the earliest `not_after` of the file's certificates (negative: expired).
///
/// # Errors
/// As [`certificates`].
pub fn seconds_to_expiry(path: &Path, now: i64) -> Result<i64, String> {
    certificates(path)?
        .iter()
        .map(|c| c.not_after - now)
        .min()
        .ok_or_else(|| format!("{}: no certificate found", path.display()))
}

/// Seconds until the earliest `next_update` of the file's CRLs (negative: overdue); `None`
/// when no CRL names one.
///
/// # Errors
/// As [`crls`].
pub fn seconds_to_crl_update(path: &Path, now: i64) -> Result<Option<i64>, String> {
    Ok(crls(path)?
        .iter()
        .filter(|c| !c.superseded)
        .filter_map(|c| c.next_update.map(|n| n - now))
        .min())
}

/// What the CAs of a bundle say of a CRL's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlSigner {
    /// No CA of the bundle has the CRL's issuer name.
    NoCa,
    /// A CA of that name signed it.
    Signed,
    /// Its signature algorithm is not one x509-parser verifies (P-521, ECDSA with SHA-512),
    /// which the daemon's TLS may well accept.
    Unchecked,
    /// CAs of that name are in the bundle, and none of their keys signed it.
    NotSigned,
}

/// Whether `crl` is signed by a CA of `cas` with its issuer's name: any of them, for a CA
/// re-keyed under one name has its old and new certificate side by side in a bundle.
pub fn crl_signer(crl: &CertificateRevocationList<'_>, cas: &[X509Certificate<'_>]) -> CrlSigner {
    let mut found = CrlSigner::NoCa;
    for ca in cas
        .iter()
        .filter(|ca| ca.subject().as_raw() == crl.issuer().as_raw())
    {
        match crl.verify_signature(ca.public_key()) {
            Ok(()) => return CrlSigner::Signed,
            Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm) => {
                found = CrlSigner::Unchecked;
            }
            Err(_) if found == CrlSigner::NoCa => found = CrlSigner::NotSigned,
            Err(_) => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::CertAuthority;

    #[test]
    fn certificate_and_crl_facts_come_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::generate("facts CA").unwrap();
        let server = ca.issue_server(&["broker.internal"], 7).unwrap();
        let chain = dir.path().join("server.crt");
        std::fs::write(&chain, format!("{}{}", server.cert_pem, ca.cert_pem)).unwrap();
        let certs = certificates(&chain).unwrap();
        assert_eq!(certs.len(), 2);
        assert!(certs[0].dns_names.contains(&"broker.internal".to_owned()));
        assert!(certs[0].ips.contains(&IpAddr::from([127, 0, 0, 1])));
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let left = seconds_to_expiry(&chain, now).unwrap();
        assert_eq!(left, certs.iter().map(|c| c.not_after).min().unwrap() - now);
        let crl = dir.path().join("crl.pem");
        std::fs::write(&crl, ca.crl(&[7]).unwrap()).unwrap();
        let due = seconds_to_crl_update(&crl, now).unwrap().unwrap();
        assert!((6 * 86_400..=7 * 86_400).contains(&due), "{due}");
        assert!(certificates(&crl).is_err(), "a CRL is not a certificate");
        assert!(crls(&chain).is_err(), "certificates are not a CRL");
    }
}
