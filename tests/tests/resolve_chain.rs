//! The verified tenant chain, seen from outside: a real daemon, real mTLS, the admin API.

use credbroker_tests::*;
use http::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_chain_is_enforced_and_every_request_is_audited() {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    let mut w1 = pki.client_for("w1", &daemon.url);
    seed_two_tenants(&mut op).await;
    let seeded = daemon.audit_records().len();
    let mut requests = 0;

    // A worker resolves its own tenant's instance and gets the secret fields.
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1", "job_id": "job-1"})).await;
    requests += 1;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["credentials"]["token"], "t1-token");
    assert_eq!(v["provider"], "pasted_secret");
    assert_eq!(v["kind"], "secret_fields");
    assert!(v["audit_id"].as_str().unwrap().starts_with("aud_"));
    assert!(v["request_id"].as_str().unwrap().starts_with("req_"));

    // The same worker asking for another tenant's instance gets exactly the answer for an
    // instance that does not exist: it cannot learn which ids other tenants use.
    let (s, other) = resolve(&mut w1, json!({"instance_id": "i2"})).await;
    requests += 1;
    assert_eq!((s, code(&other)), (404, "unknown_instance"));
    assert!(other["error"]["audit_id"].as_str().is_some());
    let (s2, none) = resolve(&mut w1, json!({"instance_id": "no-such-instance"})).await;
    requests += 1;
    assert_eq!(
        (s2, &none["error"]["code"], &none["error"]["message"]),
        (s, &other["error"]["code"], &other["error"]["message"])
    );
    // The audit record keeps the truth.
    let records = daemon.audit_records();
    let hidden = records
        .iter()
        .find(|r| r["request_id"] == other["error"]["request_id"])
        .unwrap();
    assert_eq!(hidden["tenant"], "t2");
    assert!(hidden["detail"].as_str().unwrap().contains("may not serve"));

    // A payload tenant_id that disagrees with the store.
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1", "tenant_id": "t2"})).await;
    requests += 1;
    assert_eq!((s, code(&v)), (403, "tenant_mismatch"));
    // …and one that agrees is fine.
    let (s, _) = resolve(&mut w1, json!({"instance_id": "i1", "tenant_id": "t1"})).await;
    requests += 1;
    assert_eq!(s, 200);

    // Unknown instance.
    let (s, v) = resolve(&mut w1, json!({"instance_id": "nope"})).await;
    requests += 1;
    assert_eq!((s, code(&v)), (404, "unknown_instance"));

    // Disabled tenant / instance / binding are refused; enabling restores service with the
    // configuration intact.
    for (path, expected) in [
        ("tenants/t1", "tenant_inactive"),
        ("instances/i1", "instance_inactive"),
        ("bindings/b1", "binding_inactive"),
    ] {
        let (s, v) = call(
            &mut op,
            Method::POST,
            &format!("/v1/admin/{path}/disable"),
            Some(json!({})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
        requests += 1;
        assert_eq!((s, code(&v)), (403, expected), "{path}");
        let (s, _) = call(
            &mut op,
            Method::POST,
            &format!("/v1/admin/{path}/enable"),
            Some(json!({})),
        )
        .await;
        assert_eq!(s, 200);
        let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
        requests += 1;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["credentials"]["token"], "t1-token");
    }
    // A disabled worker is refused too.
    call(
        &mut op,
        Method::POST,
        "/v1/admin/workers/w1/disable",
        Some(json!({})),
    )
    .await;
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    requests += 1;
    assert_eq!((s, code(&v)), (403, "worker_not_authorized"));
    call(
        &mut op,
        Method::POST,
        "/v1/admin/workers/w1/enable",
        Some(json!({})),
    )
    .await;
    let admin_changes = 8;

    // Identities are separate: operators cannot resolve, workers cannot administer.
    let (s, v) = resolve(&mut op, json!({"instance_id": "i1"})).await;
    requests += 1;
    assert_eq!((s, code(&v)), (403, "worker_not_authorized"));
    let (s, v) = call(&mut w1, Method::GET, "/v1/admin/tenants", None).await;
    requests += 1;
    assert_eq!((s, code(&v)), (403, "operator_required"));
    let (s, v) = call(
        &mut w1,
        Method::POST,
        "/v1/admin/tenants",
        Some(json!({"id": "evil"})),
    )
    .await;
    requests += 1;
    assert_eq!((s, code(&v)), (403, "operator_required"));

    // Oversized, malformed and unknown-field bodies; the daemon keeps serving.
    // Refused on its declared length, before a byte of it is read. Only the head is sent: a
    // client still writing a body the broker refused may see the connection reset before
    // the answer (it did once, in CI).
    {
        use tokio::io::AsyncWriteExt;
        let mut stream = raw_http1(&pki, "w1", &daemon.url).await;
        let head = format!(
            "POST /v1/resolve HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            70 * 1024
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        assert_payload_too_large(&mut stream).await;
    }
    requests += 1;
    // The same body with no length declared (chunked): cut as it grows past the limit,
    // not read whole (the declared-length check above never sees it).
    {
        use tokio::io::AsyncWriteExt;
        let mut stream = raw_http1(&pki, "w1", &daemon.url).await;
        let head = "POST /v1/resolve HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        // Writes may fail once the broker has answered and closed: the answer is what counts.
        let chunk = format!("4000\r\n{}\r\n", " ".repeat(0x4000));
        for _ in 0..5 {
            if stream.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n").await;
        assert_payload_too_large(&mut stream).await;
    }
    requests += 1;
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, v) = resolve_raw(&mut w1, b"{not json".to_vec()).await;
    requests += 1;
    assert_eq!((s, code(&v)), (400, "bad_request"));
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1", "tenant": "t1"})).await;
    requests += 1;
    assert_eq!((s, code(&v)), (400, "bad_request"));
    let (s, v) = resolve(&mut w1, json!({"instance_id": "../i1"})).await;
    requests += 1;
    assert_eq!((s, code(&v)), (400, "bad_request"));
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1", "min_ttl_s": 999999})).await;
    requests += 1;
    assert_eq!((s, code(&v)), (400, "bad_request"));
    let (s, _) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    requests += 1;
    assert_eq!(s, 200);

    // Exactly one audit record per request.
    let records = daemon.audit_records();
    assert_eq!(
        records.len(),
        seeded + requests + admin_changes,
        "audit record count"
    );
    let resolves: Vec<_> = records[seeded..]
        .iter()
        .filter(|r| r["kind"] == "resolve")
        .collect();
    assert!(resolves
        .iter()
        .any(|r| r["error_code"] == "tenant_mismatch" && r["tenant"] == "t1"));
    assert!(resolves.iter().any(|r| r["outcome"] == "allowed"
        && r["job_id"] == "job-1"
        && r["token_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:")));
    // The token itself is never in the audit log.
    assert!(!audit_log_text(&daemon.data_dir).contains("t1-token"));

    // `audit verify` passes on the live log while the daemon runs.
    let (code_, out, err) = daemon.cli(&[
        "audit",
        "verify",
        "--config",
        daemon.config.to_str().unwrap(),
    ]);
    assert_eq!(code_, 0, "{out}{err}");
    assert!(out.contains("audit OK"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_kind_policy_and_admin_integrity_rules() {
    let (tmp, pki) = setup();
    pki.worker("w2");
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    // w2 may serve t1 but only `aws` connectors; i1 is a `jira` instance.
    let (s, _) = call(
        &mut op,
        Method::POST,
        "/v1/admin/workers",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "w2", "tenants": ["t1"], "connector_kinds": ["aws"]})),
    )
    .await;
    assert_eq!(s, 201);
    let mut w2 = pki.client_for("w2", &daemon.url);
    let (s, v) = resolve(&mut w2, json!({"instance_id": "i1"})).await;
    assert_eq!((s, code(&v)), (403, "worker_not_authorized"));

    // An instance cannot point at another tenant's binding.
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/instances",
        Some(json!({"id": "x", "tenant": "t1", "binding": "b2", "connector_kind": "jira"})),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"));
    // Duplicates, dangling references and in-use removals are refused.
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/tenants",
        Some(json!({"id": "t1"})),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"));
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/workers",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "w3", "tenants": ["ghost"]})),
    )
    .await;
    assert_eq!((s, code(&v)), (404, "unknown_record"));
    let (s, v) = call(&mut op, Method::DELETE, "/v1/admin/tenants/t1", None).await;
    assert_eq!((s, code(&v)), (409, "conflict"));
    let (s, v) = call(&mut op, Method::DELETE, "/v1/admin/bindings/b1", None).await;
    assert_eq!((s, code(&v)), (409, "conflict"));
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "b9", "tenant": "t1", "provider": "aws_assume_role"})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");
    // Secrets are write-only: set twice is a conflict, rotate keeps the old version superseded.
    let (s, v) = call(
        &mut op,
        Method::PUT,
        "/v1/admin/bindings/b1/secret",
        Some(json!({"fields": {"token": "x"}})),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"));
    let (s, v) = rotate_and_promote(&mut op, "b1", json!({"token": "t1-rotated"})).await;
    assert_eq!(s, 200, "{v}");
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (_, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(v["credentials"]["token"], "t1-rotated");
    let (_, v) = call(&mut op, Method::GET, "/v1/admin/bindings/b1", None).await;
    let versions = v["binding"]["secret_versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["state"], "superseded");
    assert_eq!(versions[1]["state"], "active");
    // Destroying the active secret leaves the binding without one.
    let (s, _) = call(
        &mut op,
        Method::DELETE,
        "/v1/admin/bindings/b1/secret",
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!((s, code(&v)), (409, "secret_missing"));
    // Removal in dependency order works.
    for path in ["instances/i1", "bindings/b1"] {
        let (s, v) = call(&mut op, Method::DELETE, &format!("/v1/admin/{path}"), None).await;
        assert_eq!(s, 200, "{path}: {v}");
    }
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!((s, code(&v)), (404, "unknown_instance"));
}

async fn warm(w: &mut credbroker::client::BrokerClient) {
    for _ in 0..5 {
        let (s, v) = resolve(w, json!({"instance_id": "i1"})).await;
        assert_eq!(s, 200, "{v}");
    }
}

/// Resolve serves the chain's records from an in-memory cache; every admin change must be
/// visible to the very next resolve, for every link, however warm the cache is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_chain_records_never_outlive_a_committed_change() {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    let mut w1 = pki.client_for("w1", &daemon.url);
    seed_two_tenants(&mut op).await;
    warm(&mut w1).await;

    // A rotated secret is served at once.
    let (s, v) = rotate_and_promote(&mut op, "b1", json!({"token": "t1-v2"})).await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(v["credentials"]["token"], "t1-v2");
    warm(&mut w1).await;

    // The worker moved to another tenant only (worker update): refused at once.
    let (s, v) = call(
        &mut op,
        Method::PUT,
        "/v1/admin/workers/w1/tenants",
        Some(json!({"tenants": ["t2"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // Another tenant's instance now: answered like an instance that does not exist.
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!((s, code(&v)), (404, "unknown_instance"));
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i2"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["credentials"]["token"], "t2-token");

    // An instance removed while cached is unknown at once.
    let (s, v) = call(&mut op, Method::DELETE, "/v1/admin/instances/i2", None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i2"})).await;
    assert_eq!((s, code(&v)), (404, "unknown_instance"));
}

/// Reads what the broker answers on `stream` (for at most 5 s, until it closes) and checks it
/// refused the body as too large.
async fn assert_payload_too_large(stream: &mut (impl tokio::io::AsyncRead + Unpin)) {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}
