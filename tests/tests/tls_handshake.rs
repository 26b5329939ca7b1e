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
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_without_a_usable_identity_get_no_access() {
    let (tmp, pki) = setup();
    pki.client("other-domain", "spiffe://evil.example/worker/w1");
    pki.client("bad-role", &format!("spiffe://{TD}/admin/w1"));
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    for name in ["other-domain", "bad-role"] {
        let mut c = pki.client_for(name, &daemon.url);
        let (s, v) = resolve(&mut c, json!({"instance_id": "i1"})).await;
        assert_eq!((s, code(&v)), (403, "worker_not_authorized"), "{name}");
        let (s, v) = call(&mut c, Method::GET, "/v1/admin/tenants", None).await;
        assert_eq!((s, code(&v)), (403, "operator_required"), "{name}");
    }
}
