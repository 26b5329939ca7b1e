//! Client certificate DER to SPIFFE identity (x509-parser plus our SAN rules), and the
//! expiry times the connection watch reads from the chain a client presented.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = credbroker::identity::peer_identity(data, "example.org");
    let _ = credbroker::identity::parse_spiffe_id(&String::from_utf8_lossy(data), "example.org");
    // The whole input as one certificate, and cut in two as a chain of two.
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (a, b) = data.split_at(cut);
    for chain in [vec![data.to_vec()], vec![a.to_vec(), b.to_vec()]] {
        let ders: Vec<_> = chain
            .into_iter()
            .map(rustls_pki_types::CertificateDer::from)
            .collect();
        let times = credbroker::certs::chain_not_afters(&ders);
        assert!(times.len() <= ders.len());
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "not earliest first");
    }
});
