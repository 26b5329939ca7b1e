//! The README's run command: `credbroker dev` and its documented contract.

use std::process::Command;

use credbroker::client::BrokerClient;
use credbroker_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_contract() {
    init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let dev = start_dev(&dir);
    assert!(dev.banner.contains("Seeded"), "{}", dev.banner);
    assert!(dev.banner.contains("curl --cacert"), "{}", dev.banner);
    for f in [
        "ca.crt",
        "server.crt",
        "server.key",
        "worker.crt",
        "worker.key",
        "operator.crt",
        "operator.key",
    ] {
        assert!(dir.join("pki").join(f).exists(), "pki/{f}");
    }
    let pki = dir.join("pki");
    let mut worker = dev.worker_client(&dir);
    let (s, v) = resolve(&mut worker, json!({"instance_id": "demo-instance"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["credentials"]["username"], "demo-user");
    let password = v["credentials"]["password"].as_str().unwrap().to_owned();

    // The curl command printed is the one a newcomer pastes (run it when curl exists).
    if Command::new("curl").arg("--version").output().is_ok() {
        let line = dev
            .banner
            .lines()
            .find(|l| l.trim_start().starts_with("curl "))
            .unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{} -sS", line.trim()))
            .output()
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(body["credentials"]["username"], "demo-user");
    }

    // Audit verify and export work against the dev data directory while it runs; admin
    // commands work with the dev operator certificate.
    let d = dir.to_str().unwrap();
    let (c, out, err) = run_cli(&["audit", "verify", "--data-dir", d]);
    assert_eq!(c, 0, "{out}{err}");
    let (c, out, _) = run_cli(&["audit", "export", "--data-dir", d]);
    assert_eq!(c, 0);
    assert!(out.contains("\"action\":\"resolve\""));
    let (c, out, err) = run_cli(&["tenant", "list", "--dev-dir", d, "--server", &dev.url]);
    assert_eq!(c, 0, "{err}");
    assert!(out.contains("\"demo\""), "{out}");
    drop(dev);

    // Reusing the directory keeps the PKI, keys and demo secret.
    let dev = start_dev(&dir);
    assert!(dev.banner.contains("Reusing"), "{}", dev.banner);
    let mut worker = BrokerClient::new(
        &dev.url,
        &pki.join("ca.crt"),
        &pki.join("worker.crt"),
        &pki.join("worker.key"),
    )
    .unwrap();
    let (s, v) = resolve(&mut worker, json!({"instance_id": "demo-instance"})).await;
    assert_eq!(s, 200);
    assert_eq!(v["credentials"]["password"], password.as_str());
    drop(dev);
    let (c, out, err) = run_cli(&["audit", "verify", "--data-dir", d]);
    assert_eq!(c, 0, "{out}{err}");
}
