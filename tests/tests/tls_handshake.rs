//! Client certificates are required and verified at the handshake: no certificate, another
//! CA, an expired certificate and a revoked one (CRL) never reach HTTP. A new CRL is picked
//! up on SIGHUP without restarting.

use std::time::Duration;

use credbroker::client::BrokerClient;
use credbroker_tests::*;
use http::Method;
use serde_json::json;

async fn refused(client: &mut BrokerClient) -> bool {
    client.request(Method::GET, "/healthz", None).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_clients_are_refused_at_the_handshake() {
    let (tmp, pki) = setup();
    pki.foreign_worker("foreign");
    pki.expired_worker("expired");
    let revoked_serial = pki.worker("revoked");
    let op2_serial = pki.operator("op2");
    let crl = pki.write_crl(&[revoked_serial]);
    let mut daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            crl: Some(crl),
            ..Default::default()
        },
    );

    assert!(
        refused(&mut public_client(&pki, &daemon.url)).await,
        "no client certificate"
    );
    assert!(
        refused(&mut pki.client_for("foreign", &daemon.url)).await,
        "certificate from another CA"
    );
    assert!(
        refused(&mut pki.client_for("expired", &daemon.url)).await,
        "expired certificate"
    );
    assert!(
        refused(&mut pki.client_for("revoked", &daemon.url)).await,
        "revoked certificate"
    );
    // None of them left an audit record: they never reached HTTP.
    assert!(daemon.audit_records().is_empty());

    // A good certificate is served.
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, _) = call(&mut w1, Method::GET, "/healthz", None).await;
    assert_eq!(s, 200);
    // Workers do not read metrics (they describe every tenant's traffic); a scraper does.
    let (s, v) = call(&mut w1, Method::GET, "/metrics", None).await;
    assert_eq!((s, code(&v)), (403, "operator_required"), "{v}");
    let mut prom = pki.client_for("prom", &daemon.url);
    let (s, v) = call(&mut prom, Method::GET, "/metrics", None).await;
    assert_eq!(s, 200);
    assert_eq!(v, serde_json::Value::Null, "metrics are text, not JSON");
    let (status, body) = scrape(&pki, &daemon.url).await;
    assert_eq!(status.as_u16(), 200);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("credbroker_tls_handshake_failures_total"),
        "{text}"
    );

    // An operator with a connection open too.
    let mut op2 = pki.client_for("op2", &daemon.url);
    let (s, _) = call(&mut op2, Method::GET, "/v1/admin/tenants", None).await;
    assert_eq!(s, 200);

    // SIGHUP with a CRL that now also revokes w1 and op2: new handshakes are refused, and
    // their connections already open are closed (issue 10, item 6): the next request on the
    // same connection is not served. The process keeps running.
    let w1_serial = 100; // first serial the PKI issued
    pki.write_crl(&[revoked_serial, w1_serial, op2_serial]);
    daemon.signal("HUP");
    let mut reloaded = false;
    for _ in 0..50 {
        if daemon
            .logs()
            .contains("SIGHUP: TLS certificates, client CA and CRL reloaded")
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "no reload log line");
    assert!(
        refused(&mut pki.client_for("w1", &daemon.url)).await,
        "w1 revoked after SIGHUP"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (who, client, path) in [
        ("worker", &mut w1, "/healthz"),
        ("operator", &mut op2, "/v1/admin/tenants"),
    ] {
        let served = client
            .request_with_headers(Method::GET, path, &[], None)
            .await
            .map(|(s, _)| s.as_u16());
        // The client reconnects on a closed connection, and that handshake is refused.
        assert!(
            served.is_err(),
            "revoked {who} served on its open connection: {served:?}"
        );
    }
    let mut op = pki.client_for("op", &daemon.url);
    let (s, _) = call(&mut op, Method::GET, "/v1/admin/tenants", None).await;
    assert_eq!(s, 200, "operator still served after reload");

    // A broken CRL on reload keeps the previous config.
    std::fs::write(pki.dir.join("crl.pem"), "garbage").unwrap();
    daemon.signal("HUP");
    for _ in 0..50 {
        if daemon.logs().contains("reload failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(daemon
        .logs()
        .contains("reload failed; keeping the previous TLS config"));
    let mut op = pki.client_for("op", &daemon.url);
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/tenants",
        Some(json!({"id": "after-reload"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    // …including the revocations: the revoked certificates stay refused.
    for who in ["revoked", "w1", "op2"] {
        assert!(
            refused(&mut pki.client_for(who, &daemon.url)).await,
            "{who} served after a failed reload"
        );
    }
    daemon.stop();
}

fn reload_cli(daemon: &Daemon) {
    let (c, out, err) = daemon.cli(&["reload", "--config", daemon.config.to_str().unwrap()]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("sent SIGHUP"), "{out}");
}

/// Every reload takes effect or is refused loudly (issue 18, item 4): a CRL added to the
/// config after start-up, the server certificate, the client CA bundle and the public
/// listener's certificate, through `credbroker reload` (the pid file, not `pidof`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_apply_the_config_files_or_refuse_loudly() {
    let (tmp, pki) = setup();
    let revoked = pki.worker("rv");
    let client_ca = pki.dir.join("client-ca.crt");
    std::fs::copy(pki.dir.join("ca.crt"), &client_ca).unwrap();
    let (public, _) = public_section(&pki);
    let public_cert = pki.dir.join("public.crt");
    let public_key = pki.dir.join("public.key");
    std::fs::copy(pki.dir.join("server.crt"), &public_cert).unwrap();
    std::fs::copy(pki.dir.join("server.key"), &public_key).unwrap();
    let public = public
        .replace(
            &format!("{:?}", pki.dir.join("server.crt").display().to_string()),
            &format!("{:?}", public_cert.display().to_string()),
        )
        .replace(
            &format!("{:?}", pki.dir.join("server.key").display().to_string()),
            &format!("{:?}", public_key.display().to_string()),
        );
    let extra = format!(
        "{public}[tls]\nclient_ca = {:?}\n",
        client_ca.display().to_string()
    );
    let mut daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            extra_toml: extra.clone(),
            ..Default::default()
        },
    );
    assert!(daemon.data_dir.join("credbroker.pid").exists());
    let healthy = |name: &'static str| {
        let (pki, url) = (pki.clone(), daemon.url.clone());
        async move { !refused(&mut pki.client_for(name, &url)).await }
    };
    assert!(healthy("rv").await, "no CRL configured yet");

    // A CRL added to the config after start-up: the reload reads the config file again.
    let crl = pki.write_crl(&[revoked]);
    write_config(&daemon.config, &daemon.data_dir, &pki, Some(crl), &extra);
    reload_cli(&daemon);
    daemon
        .wait_log("SIGHUP: TLS certificates, client CA and CRL reloaded", 1)
        .await;
    assert!(
        !healthy("rv").await,
        "the revoked certificate still works after its CRL was added"
    );
    assert!(healthy("w1").await);

    // A config that no longer loads changes nothing, loudly; the CRL stays in force.
    let good = std::fs::read_to_string(&daemon.config).unwrap();
    std::fs::write(&daemon.config, format!("{good}\nnot toml [")).unwrap();
    daemon.signal("HUP");
    daemon.wait_log("the config file does not load", 1).await;
    // …the files at the paths in force are still re-read.
    daemon
        .wait_log("SIGHUP: TLS certificates, client CA and CRL reloaded", 2)
        .await;
    assert!(!healthy("rv").await);
    assert!(healthy("w1").await);
    // A config that no longer names the CRL in force: refused, loudly; the CRL stays (a
    // reload must not serve every certificate it revokes again, open connections too).
    write_config(&daemon.config, &daemon.data_dir, &pki, None, &extra);
    reload_cli(&daemon);
    daemon.wait_log("no longer names [tls] crl", 1).await;
    assert!(!healthy("rv").await, "a reload dropped the CRL in force");
    assert!(healthy("w1").await);
    std::fs::write(&daemon.config, &good).unwrap();

    // A change outside the TLS files is named as needing a restart; so is a change in [tls]
    // that is not one of its files (the CRL check interval, read at start only).
    for (n, (added, section)) in [
        ("[limits]\nmax_connections = 77\n", "[limits]"),
        ("crl_check_interval_s = 5\n", "[tls]"),
    ]
    .into_iter()
    .enumerate()
    {
        write_config(
            &daemon.config,
            &daemon.data_dir,
            &pki,
            Some(pki.dir.join("crl.pem")),
            &format!("{extra}{added}"),
        );
        reload_cli(&daemon);
        daemon
            .wait_log("take effect only after a restart", n + 1)
            .await;
        assert!(daemon.logs().contains(section), "{}", daemon.logs());
        std::fs::write(&daemon.config, &good).unwrap();
    }

    // The server certificate: one from a CA the clients do not trust makes new handshakes
    // fail; putting the real one back and reloading serves them again.
    let original_crt = std::fs::read(pki.dir.join("server.crt")).unwrap();
    let original_key = std::fs::read(pki.dir.join("server.key")).unwrap();
    let other = credbroker::pki::CertAuthority::generate("other CA").unwrap();
    let impostor = other.issue_server(&[], 9).unwrap();
    std::fs::write(pki.dir.join("server.crt"), &impostor.cert_pem).unwrap();
    std::fs::write(pki.dir.join("server.key"), &impostor.key_pem).unwrap();
    reload_cli(&daemon);
    daemon
        .wait_log("SIGHUP: TLS certificates, client CA and CRL reloaded", 5)
        .await;
    assert!(
        !healthy("w1").await,
        "the server certificate was not reloaded"
    );
    std::fs::write(pki.dir.join("server.crt"), &original_crt).unwrap();
    std::fs::write(pki.dir.join("server.key"), &original_key).unwrap();
    reload_cli(&daemon);
    daemon
        .wait_log("SIGHUP: TLS certificates, client CA and CRL reloaded", 6)
        .await;
    assert!(healthy("w1").await);

    // The client CA bundle: replaced by another CA, this PKI's clients are refused and the
    // other CA's are admitted to the handshake.
    let outsider = other
        .issue_client_now(&format!("spiffe://{TD}/worker/outsider"), 11)
        .unwrap();
    std::fs::write(pki.dir.join("outsider.crt"), &outsider.cert_pem).unwrap();
    std::fs::write(pki.dir.join("outsider.key"), &outsider.key_pem).unwrap();
    assert!(!healthy("outsider").await);
    std::fs::write(&client_ca, &other.cert_pem).unwrap();
    // The CRL is this PKI's; with another CA, that CA's CRL goes with it.
    let crl_file = pki.dir.join("crl.pem");
    let this_crl = std::fs::read(&crl_file).unwrap();
    std::fs::write(&crl_file, other.crl(&[]).unwrap()).unwrap();
    reload_cli(&daemon);
    daemon
        .wait_log("SIGHUP: TLS certificates, client CA and CRL reloaded", 7)
        .await;
    assert!(
        !healthy("w1").await,
        "the client CA bundle was not reloaded"
    );
    assert!(healthy("outsider").await);
    std::fs::copy(pki.dir.join("ca.crt"), &client_ca).unwrap();
    std::fs::write(&crl_file, this_crl).unwrap();
    reload_cli(&daemon);
    daemon
        .wait_log("SIGHUP: TLS certificates, client CA and CRL reloaded", 8)
        .await;
    assert!(healthy("w1").await);

    // The public listener's certificate.
    let public_url = daemon.public_url.clone().unwrap();
    let public_ok = || async {
        public_client(&pki, &public_url)
            .request(Method::GET, "/healthz", None)
            .await
            .is_ok()
    };
    assert!(public_ok().await);
    std::fs::write(&public_cert, &impostor.cert_pem).unwrap();
    std::fs::write(&public_key, &impostor.key_pem).unwrap();
    // Counted from here: every SIGHUP above reloaded the public listener too, the one whose
    // mTLS reload was refused (the config without its CRL) included.
    let reloaded = "SIGHUP: public listener certificate reloaded";
    let before = daemon.logs().matches(reloaded).count();
    reload_cli(&daemon);
    daemon.wait_log(reloaded, before + 1).await;
    assert!(
        !public_ok().await,
        "the public certificate was not reloaded"
    );
    // A broken public certificate keeps the previous one.
    std::fs::write(&public_cert, "garbage").unwrap();
    daemon.signal("HUP");
    daemon.wait_log("public listener reload failed", 1).await;
    assert!(!public_ok().await);

    // The server key made readable by others: the reload refuses it, naming the mode, and
    // the config in force stays (as for any file that does not load).
    let key_file = pki.dir.join("server.key");
    let mode = |m| {
        std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(m))
            .unwrap()
    };
    mode(0o644);
    reload_cli(&daemon);
    // (The first failed reload was the config without its CRL, above.)
    daemon
        .wait_log("SIGHUP: reload failed; keeping the previous TLS config", 2)
        .await;
    assert!(
        daemon.logs().contains("has mode 0644: open to others"),
        "{}",
        daemon.logs()
    );
    assert!(healthy("w1").await);
    mode(0o600);

    daemon.stop();
    assert!(
        !daemon.data_dir.join("credbroker.pid").exists(),
        "the pid file outlived the daemon"
    );
    let (c, _, err) = daemon.cli(&["reload", "--config", daemon.config.to_str().unwrap()]);
    assert_ne!(c, 0);
    assert!(err.contains("is the daemon"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_without_a_usable_identity_get_no_access() {
    let (tmp, pki) = setup();
    pki.client("other-domain", "spiffe://evil.example/worker/w1");
    pki.client("bad-role", &format!("spiffe://{TD}/admin/w1"));
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let records = daemon.audit_records().len();
    for name in ["other-domain", "bad-role"] {
        let mut c = pki.client_for(name, &daemon.url);
        let (s, v) = resolve(&mut c, json!({"instance_id": "i1"})).await;
        assert_eq!((s, code(&v)), (403, "worker_not_authorized"), "{name}");
        let (s, v) = call(&mut c, Method::GET, "/v1/admin/tenants", None).await;
        assert_eq!((s, code(&v)), (403, "operator_required"), "{name}");
        let (s, v) = call(
            &mut c,
            Method::POST,
            "/v1/webhooks/verify",
            Some(json!({"source": "github"})),
        )
        .await;
        assert_eq!((s, code(&v)), (403, "worker_not_authorized"), "{name}");
    }
    // Nobody is authenticated: the refusals are counted, not audited, so such certificates
    // cannot grow the log. (An operator's refused resolve still is audited.)
    let (s, v) = resolve(&mut op, json!({"instance_id": "i1"})).await;
    assert_eq!((s, code(&v)), (403, "worker_not_authorized"), "{v}");
    let after = daemon.audit_records();
    assert_eq!(after.len(), records + 1, "{:?}", &after[records..]);
    assert_eq!(after[records]["actor"], "operator:op", "{}", after[records]);
    let (status, body) = op.request(Method::GET, "/metrics", None).await.unwrap();
    assert_eq!(status.as_u16(), 200);
    let text = String::from_utf8_lossy(&body);
    assert_eq!(
        metric_value(&text, "credbroker_mtls_unidentified_refused_total"),
        Some(6.0),
        "{text}"
    );
}

/// A handshake that spans a CRL reload was verified by the old CRL: the connection is
/// re-checked at once and the revoked certificate is not served (review of issue 18).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_in_progress_during_a_revocation_is_rechecked() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tmp, pki) = setup();
    let late = pki.worker("late");
    let crl = pki.write_crl(&[]);
    let daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            crl: Some(crl),
            ..Default::default()
        },
    );
    // The connection is accepted (the server takes its TLS config) before the revocation…
    let tcp = tokio::net::TcpStream::connect(daemon.url.trim_start_matches("https://"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    pki.write_crl(&[late]);
    daemon.signal("HUP");
    daemon
        .wait_log("SIGHUP: TLS certificates, client CA and CRL reloaded", 1)
        .await;
    // …and its handshake completes after it, verified by the old CRL.
    let stream = client_tls(&pki, "late", b"http/1.1")
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await;
    // (TLS 1.3: the client's side completes before the server has checked its certificate.)
    let mut stream = stream.expect("the client's side of the handshake completes");
    let _ = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "a certificate revoked during its handshake was served: {answer}"
    );
    // Refused by the re-check itself, not by a handshake that happened to take the new CRL
    // (then this test would prove nothing about the re-check).
    daemon
        .wait_log(
            "client certificate revoked during its handshake; connection closed",
            1,
        )
        .await;
    assert!(!refused(&mut pki.client_for("w1", &daemon.url)).await);
}

/// How many times the daemon logged a changed CRL that does not load.
fn crl_failures_logged(daemon: &Daemon) -> usize {
    daemon
        .logs()
        .matches("the CRL file changed but does not load")
        .count()
}

/// A daemon whose CRL (revoking a worker "revoked") is looked at every second, and w1
/// served by it: the daemon, the revoked serial and w1's open connection.
async fn watching_crl(dir: &std::path::Path, pki: &TestPki) -> (Daemon, u64, BrokerClient) {
    let revoked_serial = pki.worker("revoked");
    let crl = pki.write_crl(&[revoked_serial]);
    let daemon = Daemon::start(
        dir,
        pki,
        &DaemonOptions {
            crl: Some(crl),
            extra_toml: "[tls]\ncrl_check_interval_s = 1\n".into(),
            ..Default::default()
        },
    );
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, _) = call(&mut w1, Method::GET, "/healthz", None).await;
    assert_eq!(s, 200);
    (daemon, revoked_serial, w1)
}

/// A revocation takes effect within a stated bound without anyone signalling the daemon
/// (THREATS.md: a holder of a revoked certificate keeps an open connection): the CRL file is
/// looked at every `[tls] crl_check_interval_s`, and a changed one is loaded as a reload
/// would — new handshakes refused, open connections closed. A changed CRL that does not load
/// keeps the previous one (revocations included) and is reported once, not at every check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_crl_is_loaded_without_a_signal() {
    let (tmp, pki) = setup();
    let (mut daemon, revoked_serial, mut w1) = watching_crl(tmp.path(), &pki).await;

    let w1_serial = 100; // first serial the PKI issued
    pki.write_crl(&[revoked_serial, w1_serial]);
    daemon
        .wait_log(
            "the CRL file changed: TLS certificates, client CA and CRL reloaded",
            1,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let served = w1
        .request_with_headers(Method::GET, "/healthz", &[], None)
        .await
        .map(|(s, _)| s.as_u16());
    assert!(served.is_err(), "revoked w1 served: {served:?}");
    assert!(refused(&mut pki.client_for("w1", &daemon.url)).await);

    std::fs::write(pki.dir.join("crl.pem"), "garbage").unwrap();
    daemon
        .wait_log("the CRL file changed but does not load", 1)
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(crl_failures_logged(&daemon), 1, "reported once");
    for who in ["revoked", "w1"] {
        assert!(
            refused(&mut pki.client_for(who, &daemon.url)).await,
            "{who} served after a CRL that does not load"
        );
    }
    let mut op = pki.client_for("op", &daemon.url);
    let (s, _) = call(&mut op, Method::GET, "/v1/admin/tenants", None).await;
    assert_eq!(s, 200);
    daemon.stop();
}

/// A CRL file with the CA's new CRL appended after its old one (`cat old new > crl.pem`,
/// against the README's advice): rustls's verifier consults the first CRL of an issuer, so
/// the daemon gives it only the newest of each CA's, and what the new one revokes is
/// revoked — on the open connection and at the next handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_crl_appended_to_the_file_is_the_one_used() {
    let (tmp, pki) = setup();
    let (mut daemon, revoked_serial, mut w1) = watching_crl(tmp.path(), &pki).await;
    let w1_serial = 100; // first serial the PKI issued
    let now = time::OffsetDateTime::now_utc();
    // Issued an hour ago (due in 23 h), then five minutes ago (due in 7 days).
    let old = pki
        .ca
        .crl_until(&[revoked_serial], now + time::Duration::hours(23))
        .unwrap();
    let new = pki
        .ca
        .crl_until(&[revoked_serial, w1_serial], now + time::Duration::days(7))
        .unwrap();
    std::fs::write(pki.dir.join("crl.pem"), format!("{old}{new}")).unwrap();
    daemon
        .wait_log(
            "the CRL file changed: TLS certificates, client CA and CRL reloaded",
            1,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let served = w1
        .request_with_headers(Method::GET, "/healthz", &[], None)
        .await
        .map(|(s, _)| s.as_u16());
    assert!(
        served.is_err(),
        "w1 served after its revocation: {served:?}"
    );
    assert!(refused(&mut pki.client_for("w1", &daemon.url)).await);
    assert!(refused(&mut pki.client_for("revoked", &daemon.url)).await);
    assert!(daemon
        .logs()
        .contains("the CRL file holds more than one CRL of this CA"));
    let mut op = pki.client_for("op", &daemon.url);
    let (s, _) = call(&mut op, Method::GET, "/v1/admin/tenants", None).await;
    assert_eq!(s, 200);
    daemon.stop();
}

/// A changed CRL whose reload fails for a reason outside the CRL — the server key caught
/// half-replaced — is applied alone, with the files in force: the revocation never waits for
/// the other file. A CRL that itself does not load keeps the one in force, is tried again at
/// every check and takes effect once it loads, without a signal. It is reported once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_whose_reload_failed_is_tried_again() {
    let (tmp, pki) = setup();
    let (mut daemon, revoked_serial, _) = watching_crl(tmp.path(), &pki).await;

    // The server key caught half-renewed when a revocation is published: the CRL is applied
    // alone, with the certificate, key and client CA in force. The revocation does not wait
    // for the key to be fixed, and the listener keeps serving.
    let key_file = pki.dir.join("server.key");
    let key = std::fs::read(&key_file).unwrap();
    std::fs::write(&key_file, "-----BEGIN PRIVATE KEY-----\nhalf\n").unwrap();
    let w1_serial = 100; // first serial the PKI issued
    pki.write_crl(&[revoked_serial, w1_serial]);
    daemon.wait_log("the CRL alone was loaded", 1).await;
    assert!(
        refused(&mut pki.client_for("w1", &daemon.url)).await,
        "the revocation waited for an unrelated file"
    );
    assert!(!refused(&mut pki.client_for("op", &daemon.url)).await);
    // A CRL of another CA (a CA changed with a bundle that fails to load): applied alone with
    // the bundle in force it would refuse every client. It is not; the CRL in force stays.
    let crl_file = pki.dir.join("crl.pem");
    let in_force = std::fs::read(&crl_file).unwrap();
    let other = credbroker::pki::CertAuthority::generate("other CA").unwrap();
    std::fs::write(&crl_file, other.crl(&[]).unwrap()).unwrap();
    daemon.wait_log("no longer holds a CRL of", 1).await;
    assert!(refused(&mut pki.client_for("w1", &daemon.url)).await);
    assert!(
        !refused(&mut pki.client_for("op", &daemon.url)).await,
        "a CRL of another CA was applied alone"
    );
    assert_eq!(crl_failures_logged(&daemon), 1);
    std::fs::write(&crl_file, in_force).unwrap();
    std::fs::write(&key_file, key).unwrap();

    // A CRL caught half-written: the previous one stays in force (w1 still refused), it is
    // reported once, and tried again at every check until it loads.
    std::fs::write(&crl_file, "-----BEGIN X509 CRL-----\nhalf\n").unwrap();
    daemon
        .wait_log("the CRL file changed but does not load", 2)
        .await;
    assert!(
        refused(&mut pki.client_for("w1", &daemon.url)).await,
        "a CRL that failed to load dropped the one in force"
    );
    pki.write_crl(&[revoked_serial, w1_serial]);
    daemon
        .wait_log(
            "the CRL file changed: TLS certificates, client CA and CRL reloaded",
            1,
        )
        .await;
    assert!(refused(&mut pki.client_for("w1", &daemon.url)).await);
    assert_eq!(crl_failures_logged(&daemon), 2, "each file reported once");
    daemon.stop();
}

/// A CRL past its nextUpdate (RFC 5280: revocations made since may be missing from it): with
/// `[tls] stale_crl` at its default, every client it checks is refused at the handshake —
/// operators too — until a current CRL is in place, which the watcher loads without a
/// signal; the daemon says why at start. With `stale_crl = "accept"` (applied by a reload, as
/// the CRL itself) it is still used, its revocations still hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_past_its_next_update_refuses_clients_unless_accepted() {
    let (tmp, pki) = setup();
    let revoked = pki.worker("revoked");
    let due = time::OffsetDateTime::now_utc() - time::Duration::minutes(10);
    let crl = pki.write_crl_until(&[revoked], due);
    let mut daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            crl: Some(crl.clone()),
            extra_toml: "[tls]\ncrl_check_interval_s = 1\n".into(),
            ..Default::default()
        },
    );
    for who in ["w1", "op", "revoked"] {
        assert!(
            refused(&mut pki.client_for(who, &daemon.url)).await,
            "{who} served under a stale CRL"
        );
    }
    assert!(
        daemon
            .logs()
            .contains("every client certificate it checks is refused"),
        "{}",
        daemon.logs()
    );
    // A current CRL, published in place: loaded by the watcher, clients back, the revoked
    // one still out.
    pki.write_crl(&[revoked]);
    daemon
        .wait_log(
            "the CRL file changed: TLS certificates, client CA and CRL reloaded",
            1,
        )
        .await;
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, _) = call(&mut w1, Method::GET, "/healthz", None).await;
    assert_eq!(s, 200);
    assert!(refused(&mut pki.client_for("revoked", &daemon.url)).await);

    // Stale again; the operator switches to accepting it and reloads (no restart): served,
    // the revoked one still refused, and no restart asked for.
    pki.write_crl_until(&[revoked], due);
    daemon
        .wait_log(
            "the CRL file changed: TLS certificates, client CA and CRL reloaded",
            2,
        )
        .await;
    assert!(refused(&mut pki.client_for("w1", &daemon.url)).await);
    write_config(
        &daemon.config,
        &daemon.data_dir,
        &pki,
        Some(crl),
        "[tls]\ncrl_check_interval_s = 1\nstale_crl = \"accept\"\n",
    );
    let (c, out, err) = daemon.cli(&["reload", "--config", daemon.config.to_str().unwrap()]);
    assert_eq!(c, 0, "{out}{err}");
    daemon
        .wait_log("SIGHUP: TLS certificates, client CA and CRL reloaded", 1)
        .await;
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, _) = call(&mut w1, Method::GET, "/healthz", None).await;
    assert_eq!(s, 200, "stale_crl = accept, reloaded");
    assert!(refused(&mut pki.client_for("revoked", &daemon.url)).await);
    assert!(
        !daemon.logs().contains("take effect only after a restart"),
        "{}",
        daemon.logs()
    );
    daemon.stop();
}

/// A worker whose certificate expires keeps its connection busy so it never idles out
/// (THREATS.md: short-lived certificates are how SPIFFE deployments end access): the chain is
/// checked again when its first certificate expires, and the connection is closed; a new
/// handshake is refused as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_connection_outliving_its_certificate_is_closed() {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    pki.worker_until(
        "w1",
        time::OffsetDateTime::now_utc() + time::Duration::seconds(4),
    );
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, _) = call(&mut w1, Method::GET, "/healthz", None).await;
    assert_eq!(s, 200);
    // Busy past the expiry (a request every 200 ms): the open connection is closed.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let served = w1
            .request_with_headers(Method::GET, "/healthz", &[], None)
            .await;
        if served.is_err() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "an expired certificate's connection was still served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    daemon
        .wait_log(
            "client certificate no longer valid (expired, revoked or its CRL stale); connection closed",
            1,
        )
        .await;
    assert!(refused(&mut pki.client_for("w1", &daemon.url)).await);
}

/// One request over a new connection made with `tls` (which keeps the sessions the server
/// resumes), `Connection: close`: the status line's code, or `None` when the connection was
/// refused at or right after the handshake.
async fn one_request(tls: &tokio_rustls::TlsConnector, url: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tls.connect(name, tcp).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let head = String::from_utf8_lossy(&answer);
    head.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

/// A client that resumes a TLS session is checked as a new one is: a CRL that went stale
/// (its publisher blocked, so a revocation may be unseen) refuses it, though it holds a
/// session from a connection made while the CRL was current (THREATS.md: a revoked
/// certificate is refused at the handshake; README "stale_crl").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumed_under_a_stale_crl_is_refused() {
    let (tmp, pki) = setup();
    let due = time::OffsetDateTime::now_utc() + time::Duration::seconds(6);
    let crl = pki.write_crl_until(&[], due);
    let daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            crl: Some(crl),
            extra_toml: "[tls]\ncrl_check_interval_s = 1\n".into(),
            ..Default::default()
        },
    );
    // The same connector for every connection: it offers the server's session tickets (or
    // session id) back, as a long-running client would.
    let w1 = client_tls(&pki, "w1", b"http/1.1");
    assert_eq!(one_request(&w1, &daemon.url).await, Some(200));
    assert_eq!(one_request(&w1, &daemon.url).await, Some(200));
    // Past the CRL's nextUpdate, nothing reloaded: a new client is refused…
    while time::OffsetDateTime::now_utc() < due + time::Duration::seconds(1) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(refused(&mut pki.client_for("w1", &daemon.url)).await);
    // …and so is the one that could resume.
    assert_eq!(
        one_request(&w1, &daemon.url).await,
        None,
        "a resumed session skipped the client-certificate check"
    );
}
