//! Certificate issuance for dev mode (and tests): a CA, a localhost server certificate, and
//! SPIFFE-named client certificates. Production deployments bring their own PKI.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A certificate and its private key, PEM.
pub struct IssuedCert {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM.
    pub key_pem: String,
    /// Serial number.
    pub serial: u64,
}

/// A certificate authority held in memory.
pub struct CertAuthority {
    params: CertificateParams,
    key: KeyPair,
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA private key, PEM.
    pub key_pem: String,
}

/// A PKI failure.
#[derive(Debug, thiserror::Error)]
#[error("certificate generation failed: {0}")]
pub struct PkiError(String);

fn pki(e: impl std::fmt::Display) -> PkiError {
    PkiError(e.to_string())
}

impl CertAuthority {
    /// A new self-signed CA valid for ten years.
    ///
    /// # Errors
    /// When key generation or signing fails.
    pub fn generate(common_name: &str) -> Result<CertAuthority, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let key = KeyPair::generate().map_err(pki)?;
        let cert = params.self_signed(&key).map_err(pki)?;
        Ok(CertAuthority {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            params,
            key,
        })
    }

    fn issue(
        &self,
        sans: Vec<SanType>,
        common_name: &str,
        eku: ExtendedKeyUsagePurpose,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        serial: u64,
    ) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki)?;
        params.subject_alt_names = sans;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![eku];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(pki)?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(pki)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// A server certificate for `localhost`, `127.0.0.1` and `::1` plus `extra_dns`.
    ///
    /// # Errors
    /// When generation fails.
    pub fn issue_server(&self, extra_dns: &[&str], serial: u64) -> Result<IssuedCert, PkiError> {
        let mut sans = vec![
            SanType::DnsName("localhost".try_into().map_err(pki)?),
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
        ];
        for d in extra_dns {
            sans.push(SanType::DnsName((*d).try_into().map_err(pki)?));
        }
        let now = OffsetDateTime::now_utc();
        self.issue(
            sans,
            "credbroker",
            ExtendedKeyUsagePurpose::ServerAuth,
            now - Duration::hours(1),
            now + Duration::days(825),
            serial,
        )
    }

    /// A client certificate whose only URI SAN is `spiffe_id`, valid in the given window.
    ///
    /// # Errors
    /// When generation fails.
    pub fn issue_client(
        &self,
        spiffe_id: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        serial: u64,
    ) -> Result<IssuedCert, PkiError> {
        let uri = SanType::URI(spiffe_id.try_into().map_err(pki)?);
        self.issue(
            vec![uri],
            spiffe_id,
            ExtendedKeyUsagePurpose::ClientAuth,
            not_before,
            not_after,
            serial,
        )
    }

    /// A client certificate valid from an hour ago for a year.
    ///
    /// # Errors
    /// When generation fails.
    pub fn issue_client_now(&self, spiffe_id: &str, serial: u64) -> Result<IssuedCert, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.issue_client(
            spiffe_id,
            now - Duration::hours(1),
            now + Duration::days(365),
            serial,
        )
    }

    /// A CRL revoking `serials`, valid for a week.
    ///
    /// # Errors
    /// When signing fails.
    pub fn crl(&self, serials: &[u64]) -> Result<String, PkiError> {
        self.crl_until(serials, OffsetDateTime::now_utc() + Duration::days(7))
    }

    /// A CRL revoking `serials` whose next update is `next_update` (issued a day before it,
    /// or five minutes ago if that is earlier).
    ///
    /// # Errors
    /// When signing fails.
    pub fn crl_until(
        &self,
        serials: &[u64],
        next_update: OffsetDateTime,
    ) -> Result<String, PkiError> {
        let this_update =
            (OffsetDateTime::now_utc() - Duration::minutes(5)).min(next_update - Duration::days(1));
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: this_update,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let issuer = Issuer::from_params(&self.params, &self.key);
        params.signed_by(&issuer).map_err(pki)?.pem().map_err(pki)
    }
}
