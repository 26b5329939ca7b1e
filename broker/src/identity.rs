//! Who is calling: the SPIFFE id in the verified client certificate's URI SAN.
//!
//! rustls has already verified the chain to the client CA (and the CRL) before this runs; this
//! module only decides which identity the certificate names. A certificate must carry exactly
//! one `spiffe://` URI SAN, in our trust domain, of the form `/worker/<name>`,
//! `/operator/<name>` or `/metrics/<name>` (a scraper: `/metrics` only). Anything else — no SAN, several SPIFFE ids, another trust domain, extra
//! path segments — is no identity at all, so it can neither resolve nor administer.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ids::{MetricsId, OperatorId, WorkerId};

/// The verified identity of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// A connector worker: may call `/v1/resolve`.
    Worker(WorkerId),
    /// An operator: may call `/v1/admin/*`.
    Operator(OperatorId),
    /// A metrics scraper: may read `/metrics`, nothing else.
    Metrics(MetricsId),
}

impl PeerIdentity {
    /// `worker:<name>` or `operator:<name>`, for logs and audit records.
    pub fn audit_name(&self) -> String {
        match self {
            PeerIdentity::Worker(w) => format!("worker:{w}"),
            PeerIdentity::Operator(o) => format!("operator:{o}"),
            PeerIdentity::Metrics(m) => format!("metrics:{m}"),
        }
    }
}

/// Why a certificate names no usable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The DER could not be parsed.
    #[error("client certificate could not be parsed")]
    Unparseable,
    /// No `spiffe://` URI SAN.
    #[error("client certificate has no spiffe:// URI SAN")]
    NoSpiffeId,
    /// More than one `spiffe://` URI SAN.
    #[error("client certificate has more than one spiffe:// URI SAN")]
    SeveralSpiffeIds,
    /// The SPIFFE id is in another trust domain.
    #[error("SPIFFE id is not in trust domain {expected}")]
    WrongTrustDomain {
        /// The configured trust domain.
        expected: String,
    },
    /// The SPIFFE path is not `/worker/<name>`, `/operator/<name>` or `/metrics/<name>`.
    #[error("SPIFFE id path must be /worker/<name>, /operator/<name> or /metrics/<name>")]
    UnknownRole,
}

/// Extracts the peer identity from the DER of a chain-verified end-entity certificate.
///
/// # Errors
/// See [`IdentityError`].
pub fn peer_identity(cert_der: &[u8], trust_domain: &str) -> Result<PeerIdentity, IdentityError> {
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|_| IdentityError::Unparseable)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::Unparseable)?;
    let mut spiffe = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri)
                if uri
                    .get(..9)
                    .is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe://")) =>
            {
                Some(*uri)
            }
            _ => None,
        });
    let uri = spiffe.next().ok_or(IdentityError::NoSpiffeId)?;
    if spiffe.next().is_some() {
        return Err(IdentityError::SeveralSpiffeIds);
    }
    parse_spiffe_id(uri, trust_domain)
}

/// Parses `spiffe://<trust-domain>/<role>/<name>`.
///
/// # Errors
/// See [`IdentityError`].
pub fn parse_spiffe_id(uri: &str, trust_domain: &str) -> Result<PeerIdentity, IdentityError> {
    // The scheme is checked here too, not only by the caller that picked the SAN.
    let rest = uri
        .get(..9)
        .filter(|scheme| scheme.eq_ignore_ascii_case("spiffe://"))
        .and_then(|_| uri.get(9..))
        .ok_or(IdentityError::NoSpiffeId)?;
    let (domain, path) = rest.split_once('/').ok_or(IdentityError::UnknownRole)?;
    // SPIFFE trust domains are lower-case by spec; compare exactly.
    if domain != trust_domain {
        return Err(IdentityError::WrongTrustDomain {
            expected: trust_domain.to_owned(),
        });
    }
    let (role, name) = path.split_once('/').ok_or(IdentityError::UnknownRole)?;
    match role {
        "worker" => WorkerId::parse(name)
            .map(PeerIdentity::Worker)
            .map_err(|_| IdentityError::UnknownRole),
        "operator" => OperatorId::parse(name)
            .map(PeerIdentity::Operator)
            .map_err(|_| IdentityError::UnknownRole),
        "metrics" => MetricsId::parse(name)
            .map(PeerIdentity::Metrics)
            .map_err(|_| IdentityError::UnknownRole),
        _ => Err(IdentityError::UnknownRole),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    const TD: &str = "example.org";

    fn cert_with(sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn worker_and_operator() {
        let w = cert_with(vec![uri("spiffe://example.org/worker/scanner-1")]);
        assert_eq!(
            peer_identity(&w, TD).unwrap(),
            PeerIdentity::Worker(WorkerId::parse("scanner-1").unwrap())
        );
        let o = cert_with(vec![uri("spiffe://example.org/operator/alice")]);
        assert_eq!(
            peer_identity(&o, TD).unwrap(),
            PeerIdentity::Operator(OperatorId::parse("alice").unwrap())
        );
    }

    #[test]
    fn dns_sans_are_ignored() {
        let w = cert_with(vec![
            SanType::DnsName("worker.example.org".try_into().unwrap()),
            uri("spiffe://example.org/worker/w1"),
        ]);
        assert!(matches!(peer_identity(&w, TD), Ok(PeerIdentity::Worker(_))));
    }

    #[test]
    fn no_san() {
        let c = cert_with(vec![]);
        assert_eq!(peer_identity(&c, TD), Err(IdentityError::NoSpiffeId));
        let c = cert_with(vec![SanType::DnsName("x.example.org".try_into().unwrap())]);
        assert_eq!(peer_identity(&c, TD), Err(IdentityError::NoSpiffeId));
    }

    #[test]
    fn several_spiffe_ids() {
        let c = cert_with(vec![
            uri("spiffe://example.org/worker/a"),
            uri("spiffe://example.org/operator/a"),
        ]);
        assert_eq!(peer_identity(&c, TD), Err(IdentityError::SeveralSpiffeIds));
    }

    #[test]
    fn other_trust_domain() {
        let c = cert_with(vec![uri("spiffe://evil.org/worker/a")]);
        assert!(matches!(
            peer_identity(&c, TD),
            Err(IdentityError::WrongTrustDomain { .. })
        ));
        // A suffix or prefix of the domain is another domain.
        let c = cert_with(vec![uri("spiffe://example.org.evil/worker/a")]);
        assert!(peer_identity(&c, TD).is_err());
    }

    #[test]
    fn malformed_paths() {
        for bad in [
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://example.org/worker",
            "spiffe://example.org/worker/",
            "spiffe://example.org/worker/a/b",
            "spiffe://example.org/admin/a",
            "spiffe://example.org/Worker/a",
            "spiffe://example.org/worker/../a",
            "https://example.org/worker/a",
            "spiffy://example.org/worker/a",
            "https:///example.org/worker/a",
        ] {
            assert!(parse_spiffe_id(bad, TD).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn multibyte_uri_does_not_panic() {
        assert!(parse_spiffe_id("spiffe:/\u{e9}x", TD).is_err());
        assert!(parse_spiffe_id("\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}", TD).is_err());
    }

    #[test]
    fn garbage_der() {
        assert_eq!(
            peer_identity(b"\x30\x03abc", TD),
            Err(IdentityError::Unparseable)
        );
        assert_eq!(peer_identity(b"", TD), Err(IdentityError::Unparseable));
    }
}
