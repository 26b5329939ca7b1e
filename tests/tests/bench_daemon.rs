//! The bench (tests/src/bin/credbroker-bench.rs) measures the daemon it starts through a link
//! named `credbroker` to its own executable. That daemon must be the `credbroker` daemon with
//! every check in place: a figure taken from one that skipped the tenant chain, the client
//! certificate or the audit record would measure something else. These are the attacks of
//! ../shared/THREATS.md that reach a resolve, made against the daemon the bench starts.
//!
//! `use_daemon_bin` changes what this test process starts; nextest runs every test in a process
//! of its own (tests/run never uses `cargo test`), so no other test sees it.

use std::process::Command;

use credbroker_tests::*;
use http::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_the_bench_measures_refuses_what_credbroker_refuses() {
    let bench = env!("CARGO_BIN_EXE_credbroker-bench");
    let (tmp, pki) = setup();
    let link = tmp.path().join("credbroker");
    std::os::unix::fs::symlink(bench, &link).unwrap();

    // Through the link the executable is the `credbroker` command line, not the bench's.
    let help = |program: &std::path::Path| {
        let out = Command::new(program).arg("--help").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let linked = help(&link);
    assert!(linked.contains("serve"), "{linked}");
    assert_eq!(
        linked,
        help(&daemon_bin()).replace("credbroker-it", "credbroker"),
        "the bench's daemon link and the daemon under test print different --help"
    );

    use_daemon_bin(link.clone());
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let pid = daemon.pid().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        cmdline.starts_with(link.as_os_str().as_encoded_bytes()),
        "the daemon was not started through the bench's link: {}",
        String::from_utf8_lossy(&cmdline)
    );
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let mut w1 = pki.client_for("w1", &daemon.url);

    // Worker of tenant A: its own instance is served…
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["credentials"]["token"], "t1-token");
    // …tenant B's is not, and looks like an instance that does not exist.
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i2"})).await;
    assert_eq!((s, code(&v)), (404, "unknown_instance"), "{v}");
    // A tenant named in the request is a claim the store must confirm.
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1", "tenant_id": "t2"})).await;
    assert_eq!((s, code(&v)), (403, "tenant_mismatch"), "{v}");
    // A worker certificate on the admin API.
    let (s, v) = call(&mut w1, Method::GET, "/v1/admin/tenants", None).await;
    assert_eq!((s, code(&v)), (403, "operator_required"), "{v}");

    // Anonymous client: no client certificate, no handshake.
    let anonymous = public_client(&pki, &daemon.url)
        .request(Method::GET, "/healthz", None)
        .await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate was served"
    );

    // Every resolve above, allowed or refused, has its durable audit record.
    let records = daemon.audit_records();
    let resolves: Vec<_> = records
        .iter()
        .filter(|r| r["action"] == "resolve")
        .collect();
    assert_eq!(resolves.len(), 3, "{records:#?}");
    assert!(resolves.iter().any(|r| r["tenant"] == "t2"));
}
