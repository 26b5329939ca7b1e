//! The TLS checks: the listeners' setup as `serve` loads it, the server and CA certificates'
//! validity, and the CRL's.

use std::path::Path;

use super::super::{Finding, Thresholds};
use crate::config::Config;

/// The TLS setup as `serve` loads it, then the validity of each certificate and of the CRL.
pub(super) fn tls(config: &Config, t: Thresholds, out: &mut Vec<Finding>) {
    let now = super::now();
    match crate::tls::server_config(&config.tls) {
        Ok(_) => out.push(Finding::ok(
            "tls.setup",
            "certificate, key, client CA and CRL load together",
        )),
        Err(e) => out.push(Finding::fail(
            "tls.setup",
            e.to_string(),
            "the daemon cannot start its listener: fix the file named (a key that does not match the certificate, a PEM that does not parse)",
        )),
    }
    server_certificate(config, t, now, out);
    match crate::certs::certificates(&config.tls.client_ca) {
        Ok(cas) => out.push(validity(
            "tls.client_ca",
            &config.tls.client_ca,
            cas.iter()
                .map(|c| (c.subject.as_str(), c.not_before, c.not_after)),
            t,
            now,
        )),
        Err(e) => out.push(Finding::fail(
            "tls.client_ca",
            e,
            "give a PEM bundle of the CA(s) that issue worker and operator certificates",
        )),
    }
    if let Some(p) = &config.public {
        if let Err(e) = crate::tls::public_server_config(&p.cert, &p.key) {
            out.push(Finding::fail(
                "public.setup",
                e.to_string(),
                "the daemon cannot start its public listener: give the public certificate chain and the key that matches it (PEM)",
            ));
        }
        match crate::certs::certificates(&p.cert) {
            Ok(certs) => out.push(validity(
                "public.cert",
                &p.cert,
                certs
                    .iter()
                    .take(1)
                    .map(|c| (c.subject.as_str(), c.not_before, c.not_after)),
                t,
                now,
            )),
            Err(e) => out.push(Finding::fail(
                "public.cert",
                e,
                "give the public listener's certificate chain (PEM)",
            )),
        }
    }
    let none = "none configured (a revoked client certificate is refused only once its operator or worker record is disabled; a metrics certificate, which has no record, is served until it expires)";
    match &config.tls.crl {
        None if t.dev => out.push(Finding::ok("tls.crl", none)),
        None => out.push(Finding::warn(
            "tls.crl",
            none,
            "set [tls] crl to the client CA's CRL, so that revoking a certificate at the CA takes effect at the next request",
        )),
        Some(path) => {
            out.push(crl(path, config.tls.stale_crl, t, now));
            out.push(crl_issuers(&config.tls.client_ca, path));
        }
    }
}

/// Whether every CA of the client CA bundle has a CRL in `crl`, signed by its own key. The
/// daemon checks each certificate of a client's chain against its issuer's CRL and refuses
/// one no CRL speaks for: a CRL of another CA (or one signed by another key) would lock out
/// every worker and operator that CA issued.
fn crl_issuers(client_ca: &Path, crl: &Path) -> Finding {
    use x509_parser::prelude::{CertificateRevocationList, FromDer, X509Certificate};
    const CHECK: &str = "tls.crl_issuers";
    let fix = format!(
        "put the current CRL of every CA in {} (and of each intermediate CA that issues client certificates) in {}, then `credbroker reload --config FILE`",
        client_ca.display(),
        crl.display()
    );
    let (cas, ders) = match (
        crate::tls::load_certs(client_ca),
        crate::tls::read_crls(crl),
    ) {
        (Ok(cas), Ok(ders)) => (cas, ders),
        (Err(e), _) | (_, Err(e)) => return Finding::fail(CHECK, e.to_string(), fix),
    };
    let facts = match crate::certs::crl_facts(crl, &ders) {
        Ok(f) => f,
        Err(e) => return Finding::fail(CHECK, e, fix),
    };
    let mut crls = Vec::new();
    for (der, f) in ders.iter().zip(&facts) {
        match CertificateRevocationList::from_der(der.as_ref()) {
            Ok((_, c)) if !f.superseded => crls.push(c),
            Ok(_) => {}
            Err(e) => {
                return Finding::fail(
                    CHECK,
                    format!("{}: a CRL does not parse ({e})", crl.display()),
                    fix,
                )
            }
        }
    }
    let parsed = match cas
        .iter()
        .map(|der| X509Certificate::from_der(der.as_ref()).map(|(_, c)| c))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(p) => p,
        Err(e) => {
            return Finding::fail(
                CHECK,
                format!(
                    "{}: a certificate does not parse ({e})",
                    client_ca.display()
                ),
                fix,
            )
        }
    };
    let (mut covered, mut unchecked) = (0usize, Vec::new());
    for (i, ca) in parsed.iter().enumerate() {
        let subject = crate::cli::output::sanitize(&ca.subject().to_string());
        // A CA of the bundle that issued another CA of it: the daemon never checks an anchor
        // of the bundle itself, so a chain ending at the one it issued needs only that one's
        // CRL. Its own missing CRL refuses only clients that present the issued CA as an
        // intermediate.
        let issued_another = parsed.iter().enumerate().any(|(j, other)| {
            j != i
                && other.issuer().as_raw() == ca.subject().as_raw()
                && other.subject().as_raw() != ca.subject().as_raw()
        });
        if ca
            .key_usage()
            .ok()
            .flatten()
            .is_some_and(|ku| !ku.value.crl_sign())
        {
            // The daemon's verifier does not check a trust anchor's key usage, so its CRLs
            // are taken today; OpenSSL and other verifiers refuse them.
            unchecked.push(format!("{subject} may not sign CRLs (its key usage has no cRLSign): the broker takes its CRLs, other verifiers do not"));
        }
        let own: Vec<_> = crls
            .iter()
            .filter(|c| c.issuer().as_raw() == ca.subject().as_raw())
            .collect();
        if own.is_empty() {
            if issued_another {
                unchecked.push(format!("{subject} has no CRL: a client certificate it issued directly, or a chain through a CA it issued that is not itself in the bundle, is refused; chains ending at the CA of the bundle it issued are not"));
                continue;
            }
            return Finding::fail(
                CHECK,
                format!(
                    "{} holds no CRL of {subject} (a CA of {}): the daemon refuses every client certificate it issued, since no CRL says whether it is revoked",
                    crl.display(),
                    client_ca.display()
                ),
                fix,
            );
        }
        for c in &own {
            match crate::certs::crl_signer(c, &parsed) {
                crate::certs::CrlSigner::Signed | crate::certs::CrlSigner::NoCa => {}
                // An algorithm this check cannot verify that the daemon's TLS may well
                // accept: said, not failed.
                crate::certs::CrlSigner::Unchecked => {
                    unchecked.push(format!("the CRL of {subject}: its signature algorithm is not one this check verifies"));
                }
                crate::certs::CrlSigner::NotSigned => {
                    return Finding::fail(
                        CHECK,
                        format!(
                            "{}: the CRL naming {subject} as its issuer (issued {}) is not signed by that CA's key: the daemon refuses every client certificate the CA issued",
                            crl.display(),
                            super::date(c.last_update().timestamp())
                        ),
                        fix,
                    );
                }
            }
        }
        covered += 1;
    }
    if !unchecked.is_empty() {
        return Finding::warn(CHECK, unchecked.join("; "), fix);
    }
    let others = crls
        .iter()
        .filter(|c| {
            !parsed
                .iter()
                .any(|ca| ca.subject().as_raw() == c.issuer().as_raw())
        })
        .count();
    Finding::ok(
        CHECK,
        format!(
            "each of the {covered} CA(s) of {} has its CRL, signed by its key{}",
            client_ca.display(),
            if others == 0 {
                String::new()
            } else {
                format!("; {others} CRL(s) of other issuers (intermediate CAs: not checked here)")
            }
        ),
    )
}

/// Validity of a set of certificates: fail when one is expired or not yet valid, warn when
/// one expires within the window.
fn validity<'a>(
    check: &str,
    path: &Path,
    certs: impl Iterator<Item = (&'a str, i64, i64)>,
    t: Thresholds,
    now: i64,
) -> Finding {
    let mut earliest: Option<(&str, i64)> = None;
    for (subject, not_before, not_after) in certs {
        if not_after < now {
            return Finding::fail(
                check,
                format!(
                    "{} ({subject}) expired on {}",
                    path.display(),
                    super::date(not_after)
                ),
                format!(
                    "issue a new certificate, replace {}, then `credbroker reload --config FILE`",
                    path.display()
                ),
            );
        }
        if not_before > now {
            return Finding::fail(
                check,
                format!(
                    "{} ({subject}) is not valid before {}",
                    path.display(),
                    super::date(not_before)
                ),
                "check this host's clock, or the certificate's validity",
            );
        }
        if earliest.is_none_or(|(_, e)| not_after < e) {
            earliest = Some((subject, not_after));
        }
    }
    match earliest {
        Some((subject, at)) if at - now < t.expiry_warn_s => Finding::warn(
            check,
            format!(
                "{} ({subject}) expires on {} (in {} days)",
                path.display(),
                super::date(at),
                (at - now) / 86_400
            ),
            format!(
                "renew it before then, replace {}, then `credbroker reload --config FILE`",
                path.display()
            ),
        ),
        Some((_, at)) => Finding::ok(check, format!("valid until {}", super::date(at))),
        None => Finding::fail(
            check,
            format!("{}: no certificate", path.display()),
            "give a PEM file",
        ),
    }
}

fn server_certificate(config: &Config, t: Thresholds, now: i64, out: &mut Vec<Finding>) {
    let path = &config.tls.cert;
    let leaf = match crate::certs::certificates(path) {
        Ok(certs) => certs.into_iter().next(),
        Err(e) => {
            out.push(Finding::fail(
                "tls.server_certificate",
                e,
                "give the server certificate chain (PEM, leaf first)",
            ));
            return;
        }
    };
    let Some(leaf) = leaf else { return };
    out.push(validity(
        "tls.server_certificate",
        path,
        std::iter::once((leaf.subject.as_str(), leaf.not_before, leaf.not_after)),
        t,
        now,
    ));
    let ip = config.listen.ip();
    let names = format!("DNS {:?}, IP {:?}", leaf.dns_names, leaf.ips);
    let finding = if leaf.dns_names.is_empty() && leaf.ips.is_empty() {
        Finding::fail(
            "tls.server_names",
            "the server certificate has no subjectAltName: clients refuse it",
            "issue it with the names (DNS or IP) workers dial",
        )
    } else if ip.is_unspecified() || leaf.ips.contains(&ip) {
        Finding::ok(
            "tls.server_names",
            format!("listen {} is served as {names}", config.listen),
        )
    } else if leaf.dns_names.is_empty() {
        Finding::fail(
            "tls.server_names",
            format!("listen {} is not among the certificate's names ({names}): clients dialling it refuse the certificate", config.listen),
            format!("issue the certificate with IP {ip} (or the DNS name workers use), or change listen"),
        )
    } else {
        Finding::warn(
            "tls.server_names",
            format!("listen {} is not among the certificate's IP names ({names})", config.listen),
            "workers must dial one of the certificate's DNS names; add the IP to the certificate if they dial it",
        )
    };
    out.push(finding);
}

fn crl(path: &Path, stale: crate::config::StaleCrl, t: Thresholds, now: i64) -> Finding {
    let crls = match crate::certs::crls(path) {
        Ok(c) => c,
        Err(e) => {
            return Finding::fail(
                "tls.crl",
                e,
                "give the CA's CRL in PEM (-----BEGIN X509 CRL-----)",
            )
        }
    };
    // Of several CRLs of one CA (of one partition: its issuing distribution point) the
    // daemon uses only the newest; the file should hold that one alone.
    let appended = crls.iter().find(|c| c.superseded).map(|c| {
        format!(
            "{} holds more than one CRL of {}: the broker uses the newest and ignores the others",
            path.display(),
            c.issuer
        )
    });
    let used: Vec<&crate::certs::CrlFacts> = crls.iter().filter(|c| !c.superseded).collect();
    let next = used.iter().filter_map(|c| c.next_update).min();
    let fix = format!(
        "publish a fresh CRL from the CA, replace {}, then `credbroker reload --config FILE`",
        path.display()
    );
    if let Some(text) = appended.filter(|_| next.is_none_or(|n| n >= now)) {
        return Finding::warn(
            "tls.crl",
            text,
            format!(
                "keep one CRL per CA: replace {} with the CA's current CRL (do not append), then `credbroker reload --config FILE`",
                path.display()
            ),
        );
    }
    match next {
        Some(n) if n < now => Finding::fail(
            "tls.crl",
            format!(
                "{} is past its next update ({}): {}",
                path.display(),
                super::date(n),
                match stale {
                    crate::config::StaleCrl::Refuse => {
                        "every client certificate it checks is refused ([tls] stale_crl = \"refuse\")"
                    }
                    crate::config::StaleCrl::Accept => {
                        "certificates revoked since are not known ([tls] stale_crl = \"accept\")"
                    }
                }
            ),
            fix,
        ),
        Some(n) if n - now < t.expiry_warn_s => Finding::warn(
            "tls.crl",
            format!(
                "{} is due for its next update on {}",
                path.display(),
                super::date(n)
            ),
            fix,
        ),
        Some(n) => Finding::ok(
            "tls.crl",
            format!("{} CRL(s), next update {}", crls.len(), super::date(n)),
        ),
        None => Finding::warn(
            "tls.crl",
            format!("{} names no next update", path.display()),
            "have the CA set nextUpdate so a stale CRL can be told",
        ),
    }
}
