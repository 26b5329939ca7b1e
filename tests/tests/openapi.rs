//! The OpenAPI document: the checked-in copy is what the code generates, and the running
//! daemon keeps to it under schemathesis (PyPI, installed by tests/run into the test venv;
//! found through CREDBROKER_TEST_SCHEMATHESIS): no 5xx, no response outside the documented
//! schema, status codes and content types as documented, no crash.

use std::process::Command;

use credbroker_tests::*;

#[test]
fn the_checked_in_document_is_the_generated_one() {
    let path = repo_root().join("broker/openapi.json");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == credbroker::openapi::document_text(),
        "{} is stale: regenerate it with `cargo run -p credbroker -- openapi > broker/openapi.json`",
        path.display()
    );
}

fn schemathesis() -> String {
    std::env::var("CREDBROKER_TEST_SCHEMATHESIS").unwrap_or_else(|_| {
        panic!("CREDBROKER_TEST_SCHEMATHESIS is not set: run the suite with `bash tests/run`, which installs schemathesis in a venv")
    })
}

/// Runs schemathesis against `url` with the client certificate `name`; returns its output.
fn run(pki: &TestPki, url: &str, name: &str, seed: u32, extra: &[&str]) -> String {
    let dir = pki.dir.display().to_string();
    let spec = repo_root().join("broker/openapi.json");
    let report = pki.dir.join(format!("schemathesis-{name}"));
    let out = Command::new("timeout")
        // schemathesis keeps a cache in its working directory: keep it out of the tree.
        .current_dir(&pki.dir)
        .arg("240")
        .arg(schemathesis())
        .arg("run")
        .arg(&spec)
        .args(["--url", url])
        .args(["--tls-verify", &format!("{dir}/ca.crt")])
        .args(["--request-cert", &format!("{dir}/{name}.crt")])
        .args(["--request-cert-key", &format!("{dir}/{name}.key")])
        .args(["--max-examples", "40", "--seed", &seed.to_string(), "--no-shrink"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance",
        ])
        .arg("--report-dir")
        .arg(&report)
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis ({name}) found problems:\n{text}"
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_keeps_to_its_openapi_document() {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    // The operator reaches every route; the worker resolves.
    let text = run(&pki, &daemon.url, "op", 7, &[]);
    assert!(text.contains("passed"), "{text}");
    run(
        &pki,
        &daemon.url,
        "w1",
        8,
        &["--include-path", "/v1/resolve"],
    );
    run(
        &pki,
        &daemon.url,
        "w1",
        9,
        &["--include-path", "/v1/webhooks/verify"],
    );
    // Whatever was thrown at it, the daemon is still up and its audit log intact.
    let (c, out, err) = daemon.cli(&[
        "audit",
        "verify",
        "--config",
        daemon.config.to_str().unwrap(),
    ]);
    assert_eq!(c, 0, "{out}{err}");
}
