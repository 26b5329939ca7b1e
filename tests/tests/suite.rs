//! The integration tests, one module per file beside this one, linked into one test binary.
//!
//! Each file used to be a test binary of its own: fifty-odd links of the whole broker, each
//! 60-80 MB, about 3 GiB of `target/debug` and minutes of linking on a 2-core CI machine
//! whose nearly full disk failed a run. nextest still runs every test in a process of its
//! own, so one test's environment or signals never reach another's; test names now start
//! with the file's name (`governance::the_inventory_flags_…`).

mod atlassian_dc;
mod atlassian_forge;
mod atlassian_forge_attacks;
mod atlassian_forge_connect;
mod audit_fail_closed;
mod audit_report;
mod audit_scale;
mod audit_segments;
mod audit_tamper;
mod audited_pipeline;
mod aws_assume_role;
mod aws_moto_interop;
mod aws_web_identity;
mod bench_daemon;
mod crash_recovery;
mod daemon_lifecycle;
mod deployment;
mod dev_mode;
mod docs_commands;
mod doctor;
mod durability_trace;
mod entra;
mod entra_fake;
mod entra_federated;
mod entra_sign_in;
mod gcp_wif;
mod github_app;
mod governance;
mod hardening;
mod hostile_clients;
mod intake;
mod intake_browser;
mod oidc_issuer;
mod openapi;
mod operator_tools;
mod provider_conformance;
mod provider_seam;
mod replicas;
mod resolve_chain;
mod runbooks_true;
mod secrets_at_rest;
mod servicenow;
mod single_flight;
mod staged_rotation;
mod store_conformance;
mod store_migrate;
mod store_postgres;
mod template_lint;
mod template_lint_atlassian;
mod template_lint_gcp;
mod tls_expiry;
mod tls_handshake;
mod webhook_secrets;
mod worker_lifecycle;

/// With `autotests = false`, a file in `tests/tests/` that is not declared above is never
/// compiled nor run, and nothing would say so: every file must be a module here.
#[test]
fn every_test_file_is_a_module_of_the_suite() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let suite = std::fs::read_to_string(dir.join("suite.rs")).unwrap();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().is_some_and(|e| e == "rs")
            && stem != "suite"
            && !suite.lines().any(|l| l == format!("mod {stem};"))
        {
            missing.push(stem.to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "declare these in tests/tests/suite.rs: {missing:?}"
    );
}
