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

/// Someone who can read the data directory's files but not the broker's account must not
/// find a usable key there: a key file readable by group or others is refused, at start
/// and by offline commands (issue 10, item 11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (tmp, pki) = setup();
    let mut daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    daemon.stop();
    let kek = daemon.data_dir.join("keys/kek.json");
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(daemon_bin())
        .args(["serve", "--config"])
        .arg(&daemon.config)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the daemon started with a world-readable KEK"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    let (c, _, err) = daemon.cli(&[
        "keys",
        "rotate-kek",
        "--config",
        daemon.config.to_str().unwrap(),
    ]);
    assert_ne!(c, 0);
    assert!(err.contains("chmod 600"), "{err}");
    // Fixed permissions: it starts again.
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    daemon.restart();
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, _) = call(&mut w1, Method::GET, "/healthz", None).await;
    assert_eq!(s, 200);
}
