//! Holes an attacker would use (issue 10), each attempted against the real daemon.

use credbroker_tests::*;
use http::Method;
use serde_json::json;

/// An operator (or a script) writing an "empty" ceiling must not get the widest one: before,
/// `{"fields": []}` meant every field of the pasted secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_ceiling_is_refused_not_read_as_every_field() {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    for ceiling in [json!({"fields": []}), json!({})] {
        let (s, v) = call(
            &mut op,
            Method::POST,
            "/v1/admin/bindings",
            Some(json!({"id": "b-empty", "tenant": "t1", "provider": "pasted_secret", "ceiling": ceiling})),
        )
        .await;
        assert_eq!((s, code(&v)), (400, "bad_request"), "{ceiling}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("at least one field"),
            "{v}"
        );
    }
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings",
        Some(json!({"id": "b-one", "tenant": "t1", "provider": "pasted_secret", "ceiling": {"fields": ["token"]}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}
