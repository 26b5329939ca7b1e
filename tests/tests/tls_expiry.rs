//! The daemon's certificate expiry gauge follows what it serves: a renewal that does not
//! load (a certificate that does not match the key) is refused, counted, and the gauge keeps
//! counting down the certificate still in use; a CRL added by a reload gets its series, and
//! loses it when removed again.

use std::time::Duration;

use credbroker_tests::*;

fn gauge(text: &str, file: &str) -> Option<f64> {
    metric_value(
        text,
        &format!("credbroker_tls_expiry_seconds{{file=\"{file}\"}}"),
    )
}

const RELOADED: &str = "SIGHUP: TLS certificates, client CA and CRL reloaded";

/// SIGHUP, the `count`-th log line that says `outcome`, then the metrics.
async fn reload(daemon: &Daemon, pki: &TestPki, outcome: &str, count: usize) -> String {
    daemon.signal("HUP");
    daemon.wait_log(outcome, count).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    metrics(pki, &daemon.url).await
}

async fn metrics(pki: &TestPki, url: &str) -> String {
    let (s, body) = scrape(pki, url).await;
    assert_eq!(s, 200);
    String::from_utf8(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_gauge_follows_the_certificates_in_use() {
    let (tmp, pki) = setup();
    let mut daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let text = metrics(&pki, &daemon.url).await;
    let server = gauge(&text, "server").expect("server series");
    let ca = gauge(&text, "client_ca").expect("client CA series");
    assert!(server > 86_400.0 && ca > server, "{server} {ca}");
    assert!(gauge(&text, "crl").is_none(), "no CRL configured");

    // A renewal whose key does not match: refused, counted, the gauge unchanged.
    // (It expires in 10 days, so a gauge that read the file would show it.)
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(10);
    let wrong = params
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem();
    let good = std::fs::read(pki.dir.join("server.crt")).unwrap();
    std::fs::write(pki.dir.join("server.crt"), wrong).unwrap();
    let text = reload(&daemon, &pki, "SIGHUP: reload failed", 1).await;
    assert_eq!(
        metric_value(&text, "credbroker_tls_reload_failures_total"),
        Some(1.0),
        "{text}"
    );
    let after = gauge(&text, "server").unwrap();
    assert!(
        (server - after).abs() < 120.0,
        "the gauge moved to a certificate that is not served: {server} -> {after}"
    );

    // The good file back, and a CRL added to the config: loaded, and its series appears.
    std::fs::write(pki.dir.join("server.crt"), good).unwrap();
    let crl = pki.write_crl(&[]);
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    let with_crl = config.replace(
        "[tls]\n",
        &format!("[tls]\ncrl = {:?}\n", crl.display().to_string()),
    );
    assert_ne!(with_crl, config, "the config has a [tls] section");
    std::fs::write(&daemon.config, &with_crl).unwrap();
    let text = reload(&daemon, &pki, RELOADED, 1).await;
    let due = gauge(&text, "crl").expect("crl series after the reload");
    assert!(due > 6.0 * 86_400.0 && due <= 7.0 * 86_400.0, "{due}");

    // Dropped from the config: a reload keeps the CRL in force (running without one takes a
    // restart), and its series stays; after a restart without it, the series goes.
    std::fs::write(&daemon.config, &config).unwrap();
    let text = reload(&daemon, &pki, "no longer names [tls] crl", 1).await;
    assert!(gauge(&text, "crl").is_some(), "{text}");
    daemon.restart();
    let text = metrics(&pki, &daemon.url).await;
    assert!(gauge(&text, "crl").is_none(), "{text}");
}
