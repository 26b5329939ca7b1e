//! Staged rotation of pasted secrets: a rotation writes a `pending` version and probes it;
//! nothing served changes until an operator promotes a version that passed; the previous
//! version is kept (never served) for the overlap window, then destroyed; a pending version
//! that fails its probe is never promoted and the active one keeps serving.

use std::time::Duration;

use credbroker_tests::*;
use http::Method;
use serde_json::{json, Value};

async fn versions(op: &mut credbroker::client::BrokerClient, binding: &str) -> Vec<Value> {
    let (s, v) = call(
        op,
        Method::GET,
        &format!("/v1/admin/bindings/{binding}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["binding"]["secret_versions"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_is_pending_until_promoted_and_the_old_version_outlives_it() {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            extra_toml: "[secrets]\nsuperseded_overlap_s = 2\ngc_interval_s = 1\n".into(),
            ..Default::default()
        },
    );
    let mut op = pki.client_for("op", &daemon.url);
    let mut w1 = pki.client_for("w1", &daemon.url);
    seed_two_tenants(&mut op).await;
    // A binding whose ceiling serves one field: its probe checks the secret carries it.
    for (path, body) in [
        (
            "/v1/admin/bindings",
            json!({"owner": "team-tests", "purpose": "integration test", "id": "dc-pat", "tenant": "t1", "provider": "pasted_secret", "ceiling": {"fields": ["token"]}}),
        ),
        (
            "/v1/admin/instances",
            json!({"id": "i-dc", "tenant": "t1", "binding": "dc-pat", "connector_kind": "jira"}),
        ),
    ] {
        let (s, v) = call(&mut op, Method::POST, path, Some(body)).await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = call(
        &mut op,
        Method::PUT,
        "/v1/admin/bindings/dc-pat/secret",
        Some(json!({"fields": {"token": "pat-v1"}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let served = |v: &Value| v["credentials"]["token"].as_str().unwrap_or("").to_owned();

    // A rotation whose new value lacks the served field fails its probe: pending, never
    // promoted, and v1 keeps serving.
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/dc-pat/secret/rotate",
        Some(json!({"fields": {"tokn": "pat-typo"}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["version"].as_u64(), v["state"].as_str()),
        (Some(2), Some("pending"))
    );
    assert_eq!(v["probe"]["result"], "failed", "{v}");
    assert!(
        v["probe"]["message"].as_str().unwrap().contains("token"),
        "{v}"
    );
    let (_, r) = resolve(&mut w1, json!({"instance_id": "i-dc"})).await;
    assert_eq!(served(&r), "pat-v1");
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/dc-pat/secret/2/promote",
        Some(json!({})),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("failed its last probe"));

    // The next rotation replaces the failed pending version (destroyed) and passes.
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/dc-pat/secret/rotate",
        Some(json!({"fields": {"token": "pat-v3"}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["replaced_pending_version"], 2);
    assert_eq!(v["probe"]["result"], "passed", "{v}");
    // Still v1 served until the promotion; only the active version is ever opened for a
    // resolve.
    let (_, r) = resolve(&mut w1, json!({"instance_id": "i-dc"})).await;
    assert_eq!(served(&r), "pat-v1");
    let vs = versions(&mut op, "dc-pat").await;
    assert_eq!(
        vs.iter()
            .map(|v| (
                v["version"].as_u64().unwrap(),
                v["state"].as_str().unwrap().to_owned()
            ))
            .collect::<Vec<_>>(),
        vec![(1, "active".to_owned()), (3, "pending".to_owned())]
    );
    assert_eq!(vs[1]["probe"]["passed"], true);
    // Promoting anything but the pending version is refused.
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/dc-pat/secret/1/promote",
        Some(json!({})),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    // Promote: v3 served at once (cached nothing to drop: pasted secrets are never cached),
    // v1 superseded and kept for the overlap, never served.
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/dc-pat/secret/3/promote",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["active_secret_version"].as_u64(),
            v["superseded"].as_u64()
        ),
        (Some(3), Some(1))
    );
    let (_, r) = resolve(&mut w1, json!({"instance_id": "i-dc"})).await;
    assert_eq!(served(&r), "pat-v3");
    let vs = versions(&mut op, "dc-pat").await;
    assert_eq!(vs[0]["state"], "superseded");
    assert!(vs[0]["superseded_at"].is_string());
    // After the overlap (2 s here) the broker destroys it, audited as store.gc.
    let mut gone = false;
    for _ in 0..60 {
        if versions(&mut op, "dc-pat").await.len() == 1 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gone, "the superseded version outlived its overlap");
    assert!(daemon
        .audit_records()
        .iter()
        .any(|r| r["action"] == "store.gc"
            && r["detail"].as_str().unwrap_or("").contains("dc-pat/1")));
    let (_, r) = resolve(&mut w1, json!({"instance_id": "i-dc"})).await;
    assert_eq!(served(&r), "pat-v3");
    // Every step is in the audit log, no value is.
    let audit = serde_json::to_string(&daemon.audit_records()).unwrap();
    for action in ["secret.rotate", "binding.probe", "secret.promote"] {
        assert!(audit.contains(action), "{action}");
    }
    for value in ["pat-v1", "pat-typo", "pat-v3"] {
        assert!(!audit.contains(value), "{value} in the audit log");
    }
}
