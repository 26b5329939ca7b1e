//! The shipped Forge manifest passes `credbroker lint-templates`: it validates against the
//! JSON schema of the pinned `@forge/manifest` (tests/forge, installed by tests/run) and asks
//! for exactly the read-only scopes of policies/atlassian.json. A manifest Forge would accept
//! but that writes or sends tokens over plain http fails the policy layer; one Forge would
//! refuse fails the schema layer; a schema or policy that cannot be read fails closed.

use std::path::{Path, PathBuf};
use std::process::Command;

use credbroker_tests::*;

/// The schema `npm ci --prefix tests/forge` installs.
fn forge_schema() -> PathBuf {
    repo_root().join("tests/forge/node_modules/@forge/manifest/out/schema/manifest-schema.json")
}

/// The installed schema; fails the test (never skips it) when tests/run has not installed it.
fn required_schema() -> PathBuf {
    let p = forge_schema();
    assert!(
        p.is_file(),
        "the Forge manifest schema is missing at {}: run tests/run (it runs `npm ci --prefix tests/forge`)",
        p.display()
    );
    p
}

/// Runs `credbroker lint-templates` on `templates` with `policies`, the lint reading the
/// Forge schema from `schema`; returns (exit code, stdout, stderr).
fn lint_with(templates: &Path, policies: &Path, schema: &Path) -> (i32, String, String) {
    let out = Command::new(daemon_bin())
        .args(["lint-templates", "--templates"])
        .arg(templates)
        .arg("--policies")
        .arg(policies)
        .env("CREDBROKER_FORGE_MANIFEST_SCHEMA", schema)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A templates directory holding only `atlassian/manifest.yml` with `text`.
fn only_forge_manifest(text: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("atlassian")).unwrap();
    std::fs::write(tmp.path().join("atlassian/manifest.yml"), text).unwrap();
    tmp
}

fn shipped_manifest() -> String {
    std::fs::read_to_string(repo_root().join("onboarding-templates/atlassian/manifest.yml"))
        .unwrap()
}

#[test]
fn the_forge_manifest_passes_the_schema_and_the_ceiling() {
    let root = repo_root();
    let schema = required_schema();
    let policies = root.join("policies");
    // The Forge folder alone: no other provider's finding can hide behind it.
    let tmp = only_forge_manifest(&shipped_manifest());
    let (c, out, err) = lint_with(tmp.path(), &policies, &schema);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("templates OK"), "{out}");
    // And with every shipped template.
    let (c, out, err) = lint_with(&root.join("onboarding-templates"), &policies, &schema);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("templates OK"), "{out}");
}

#[test]
fn the_bad_forge_fixture_fails() {
    let root = repo_root();
    let fixture =
        std::fs::read_to_string(root.join("tests/fixtures/atlassian/bad-manifest.yml")).unwrap();
    let tmp = only_forge_manifest(&fixture);
    let (c, out, err) = lint_with(tmp.path(), &root.join("policies"), &required_schema());
    assert_eq!(c, 1, "{out}{err}");
    for expected in [
        "scope write:jira-work is a write: scope",
        "scope write:jira-work is outside policies/atlassian.json",
        "scope read:app-system-token is missing",
        "remote broker: baseUrl.EU \"http://eu.broker.example.com/forge\" must be https",
        "no scheduledTrigger with interval: hour",
        "no trigger sends avi:forge:installed:app",
        "permissions.external.fetch.backend is missing",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    // Forge itself would deploy this manifest: only the policy layer stands in the way.
    assert!(!out.contains("schema:"), "{out}");
}

#[test]
fn a_manifest_forge_would_refuse_fails_the_schema() {
    let root = repo_root();
    let text = shipped_manifest()
        .replace("interval: hour", "interval: hourly")
        .replace("  runtime:\n", "  colour: blue\n  runtime:\n");
    let tmp = only_forge_manifest(&text);
    let (c, out, err) = lint_with(tmp.path(), &root.join("policies"), &required_schema());
    assert_eq!(c, 1, "{out}{err}");
    assert!(out.contains("schema: /app: "), "{out}");
    assert!(out.contains("'colour' was unexpected"), "{out}");
    assert!(
        out.contains("schema: /modules/scheduledTrigger/0: "),
        "{out}"
    );
}

#[test]
fn a_missing_schema_fails_closed() {
    let root = repo_root();
    let tmp = only_forge_manifest(&shipped_manifest());
    let absent = tmp.path().join("no-such-dir/manifest-schema.json");
    let (c, out, err) = lint_with(tmp.path(), &root.join("policies"), &absent);
    assert_eq!(c, 1, "{out}{err}");
    assert!(
        out.contains(&format!("schema not found at {}", absent.display())),
        "{out}"
    );
    assert!(out.contains("npm ci --prefix tests/forge"), "{out}");
    // A file that is not a schema fails the same way.
    let junk = tmp.path().join("junk.json");
    std::fs::write(&junk, "{not json").unwrap();
    let (c, out, _) = lint_with(tmp.path(), &root.join("policies"), &junk);
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("is not JSON"), "{out}");
}

#[test]
fn a_missing_forge_policy_fails_closed() {
    let root = repo_root();
    let policies = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(root.join("policies")).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().is_some_and(|n| n != "atlassian.json") {
            std::fs::copy(&p, policies.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let tmp = only_forge_manifest(&shipped_manifest());
    let (c, _, err) = lint_with(tmp.path(), policies.path(), &forge_schema());
    assert_ne!(c, 0);
    assert!(err.contains("atlassian.json"), "{err}");
}
