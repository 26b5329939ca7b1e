//! Client certificate DER to SPIFFE identity (x509-parser plus our SAN rules), and the
//! expiry times the connection watch reads from the chain a client presented.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

/// Two genuine client certificates, the first expiring a year after the second.
fn genuine() -> &'static [CertificateDer<'static>; 2] {
    static CERTS: std::sync::OnceLock<[CertificateDer<'static>; 2]> = std::sync::OnceLock::new();
    CERTS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fuzz-peer-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz directory");
        let ca = credbroker::pki::CertAuthority::generate("fuzz CA").expect("CA");
        let now = time::OffsetDateTime::now_utc();
        let der = |days: i64, serial: u64| {
            let cert = ca
                .issue_client(
                    "spiffe://example.org/worker/fuzz",
                    now - time::Duration::hours(1),
                    now + time::Duration::days(days),
                    serial,
                )
                .expect("client certificate");
            let path = dir.join(format!("{serial}.crt"));
            std::fs::write(&path, cert.cert_pem).expect("write certificate");
            credbroker::tls::load_certs(&path)
                .expect("certificate loads")
                .remove(0)
                .into_owned()
        };
        [der(730, 2), der(365, 3)]
    })
}

/// The chain's expiry times: at most one per certificate, earliest first.
fn check(chain: &[CertificateDer<'_>]) {
    let times = credbroker::certs::chain_not_afters(chain);
    assert!(times.len() <= chain.len());
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "not earliest first");
}

fuzz_target!(|data: &[u8]| {
    let _ = credbroker::identity::peer_identity(data, "example.org");
    let _ = credbroker::identity::parse_spiffe_id(&String::from_utf8_lossy(data), "example.org");
    let [late, early] = genuine();
    // The later-expiring certificate first: the earliest must still come first.
    check(&[late.clone(), early.clone()]);
    let input = CertificateDer::from(data.to_vec());
    check(&[input.clone(), early.clone()]);
    check(&[late.clone(), input]);
});
