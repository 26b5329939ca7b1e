//! A worker's life as the worker-compromise runbook walks it (issue 18, item 8): it gains and
//! loses tenants without being removed (`worker update`), and a removed worker's name is
//! retired, so re-adding it cannot bring a stolen certificate of the old worker back.

use credbroker_tests::*;
use http::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_change_tenants_in_place_and_removed_names_stay_retired() {
    let (tmp, pki) = setup();
    let mut daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, _) = resolve(&mut w1, json!({"instance_id": "i2"})).await;
    assert_eq!(s, 404, "t2 is not w1's yet");

    // Gains t2 through the CLI, keeps t1.
    let (c, out, err) = operator_cli(
        &pki,
        &daemon.url,
        &["worker", "update", "w1", "--tenant", "t1", "--tenant", "t2"],
    );
    assert_eq!(c, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["worker"]["tenants"], json!(["t1", "t2"]), "{v}");
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i2"})).await;
    assert_eq!(s, 200, "{v}");

    // Loses t1: the very next resolve of t1's instance is refused.
    let (s, v) = call(
        &mut op,
        Method::PUT,
        "/v1/admin/workers/w1/tenants",
        Some(json!({"tenants": ["t2"], "connector_kinds": ["jira"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!((s, code(&v)), (404, "unknown_instance"), "{v}");
    let (s, _) = resolve(&mut w1, json!({"instance_id": "i2"})).await;
    assert_eq!(s, 200);

    // Refusals: an unknown tenant, no tenant at all, an unknown worker, another field.
    for (path, body, want) in [
        (
            "/v1/admin/workers/w1/tenants",
            json!({"tenants": ["t9"]}),
            (404, "unknown_record"),
        ),
        (
            "/v1/admin/workers/w1/tenants",
            json!({"tenants": []}),
            (400, "bad_request"),
        ),
        (
            "/v1/admin/workers/nobody/tenants",
            json!({"tenants": ["t1"]}),
            (404, "unknown_record"),
        ),
        (
            "/v1/admin/workers/w1/tenants",
            json!({"tenants": ["t1"], "status": "active"}),
            (400, "bad_request"),
        ),
    ] {
        let (s, v) = call(&mut op, Method::PUT, path, Some(body.clone())).await;
        assert_eq!((s, code(&v)), want, "{body}: {v}");
    }
    // A worker cannot change its own tenants.
    let (s, v) = call(
        &mut w1,
        Method::PUT,
        "/v1/admin/workers/w1/tenants",
        Some(json!({"tenants": ["t1", "t2"]})),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "operator_required"), "{v}");

    // Removed, w1's certificate (stolen, say, and not yet on a CRL) resolves nothing, and
    // re-adding the name is refused: it would make that certificate valid again.
    let (s, v) = call(&mut op, Method::DELETE, "/v1/admin/workers/w1", None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i2"})).await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/workers",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "w1", "tenants": ["t2"]})),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    assert!(v.to_string().contains("retired"), "{v}");
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i2"})).await;
    assert_eq!(s, 403, "the old certificate came back: {v}");
    // A new name is the way.
    pki.worker("w1b");
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/workers",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "w1b", "tenants": ["t2"]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let mut w1b = pki.client_for("w1b", &daemon.url);
    let (s, _) = resolve(&mut w1b, json!({"instance_id": "i2"})).await;
    assert_eq!(s, 200);
    // Reading a tenant's binding or instance is a read of that tenant's.
    for path in ["/v1/admin/bindings/b2", "/v1/admin/instances/i2"] {
        let (s, v) = call(&mut op, Method::GET, path, None).await;
        assert_eq!(s, 200, "{v}");
    }

    daemon.stop();
    // A change of a worker touching one tenant (gaining t2; w1b made for t2 only), and a
    // read of a tenant's record, are in that tenant's export: their records name it. One
    // touching two (w1 losing t1 and changing what it may serve in t2) names both in its
    // detail and no tenant.
    let tenant_of = |action: &str| -> Vec<serde_json::Value> {
        daemon
            .audit_records()
            .iter()
            .filter(|r| r["outcome"] == "allowed" && r["action"] == action)
            .map(|r| r["tenant"].clone())
            .collect()
    };
    assert_eq!(tenant_of("worker.update"), [json!("t2"), json!(null)]);
    // The record in t2's export names no other tenant: t2's customer does not learn that w1
    // serves t1 too.
    let gained = daemon
        .audit_records()
        .into_iter()
        .find(|r| r["action"] == "worker.update" && r["tenant"] == "t2")
        .unwrap();
    let detail = gained["detail"].as_str().unwrap();
    assert!(
        detail.contains("gains tenant t2") && !detail.contains("t1"),
        "{detail}"
    );
    assert_eq!(tenant_of("worker.add").last(), Some(&json!("t2")));
    assert_eq!(tenant_of("binding.show"), [json!("t2")]);
    assert_eq!(tenant_of("instance.show"), [json!("t2")]);
    let config = daemon.config.to_str().unwrap().to_owned();
    let (c, out, err) = daemon.cli(&["audit", "export", "--config", &config, "--tenant", "t2"]);
    assert_eq!(c, 0, "{err}");
    assert!(
        out.contains("\"action\":\"worker.update\"") && out.contains("\"action\":\"binding.show\""),
        "{out}"
    );
    let actions: Vec<String> = daemon
        .audit_records()
        .iter()
        .filter(|r| r["outcome"] == "allowed")
        .map(|r| r["action"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| *a == "worker.update").count(),
        2,
        "{actions:?}"
    );
}
