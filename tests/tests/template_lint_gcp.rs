//! The GCP onboarding artifacts (onboarding-templates/gcp: the gcloud script and the Terraform
//! module) pass `credbroker lint-templates`; the script passes shellcheck and, run against a
//! recording fake `gcloud`, issues exactly the federation the lint checks; the module parses
//! with python-hcl2 (tests/gcp_tf_parse.py) into the same facts and passes checkov. The bad
//! fixtures (a script without the attribute condition, a module granting roles/owner) fail
//! the lint, python-hcl2's check and checkov, each naming what is wrong; a missing
//! policies/gcp.json fails closed.
//!
//! Tools come from tests/run: CREDBROKER_TEST_PYTHON (the test venv, with python-hcl2),
//! CREDBROKER_TEST_CHECKOV and CREDBROKER_TEST_SHELLCHECK (the template venv); a missing tool
//! fails the test, never skips it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use credbroker_tests::*;

const SCRIPT: &str = "onboarding-templates/gcp/credbroker-wif.sh";
const MODULE: &str = "onboarding-templates/gcp/terraform";
const SUBJECT: &str = "cb-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789ABCD";

/// A tool named by `var`, else the template venv's copy, else a failure saying how to get it.
fn tool(var: &str, venv_bin: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let p = repo_root().join("target/template-venv/bin").join(venv_bin);
    assert!(
        p.is_file(),
        "{var} is not set and {} is missing: run the suite with `bash tests/run`, which installs it",
        p.display()
    );
    p
}

fn python() -> PathBuf {
    PathBuf::from(std::env::var_os("CREDBROKER_TEST_PYTHON").unwrap_or_else(|| {
        panic!("CREDBROKER_TEST_PYTHON is not set: run the suite with `bash tests/run`, which installs python-hcl2 in a venv")
    }))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `credbroker lint-templates` on `templates` with the repository's policies.
fn lint(templates: &Path, policies: &Path) -> (i32, String, String) {
    let out = Command::new(daemon_bin())
        .args(["lint-templates", "--templates"])
        .arg(templates)
        .arg("--policies")
        .arg(policies)
        .output()
        .unwrap();
    let (o, e) = text(&out);
    (out.status.code().unwrap_or(-1), o, e)
}

/// A templates directory holding only `gcp/`: `script` as its gcloud script and the `.tf`
/// files of `module`.
fn only_gcp(script: &Path, module: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let tf = tmp.path().join("gcp/terraform");
    std::fs::create_dir_all(&tf).unwrap();
    std::fs::copy(script, tmp.path().join("gcp/credbroker-wif.sh")).unwrap();
    for entry in std::fs::read_dir(module).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|x| x == "tf") {
            std::fs::copy(&p, tf.join(p.file_name().unwrap())).unwrap();
        }
    }
    tmp
}

#[test]
fn the_shipped_gcp_artifacts_pass_the_lint() {
    let root = repo_root();
    let tmp = only_gcp(&root.join(SCRIPT), &root.join(MODULE));
    let (c, out, err) = lint(tmp.path(), &root.join("policies"));
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("templates OK"), "{out}");
}

#[test]
fn the_script_without_a_condition_fails() {
    let root = repo_root();
    let tmp = only_gcp(
        &root.join("tests/fixtures/gcp/no-condition.sh"),
        &root.join(MODULE),
    );
    let (c, out, err) = lint(tmp.path(), &root.join("policies"));
    assert_eq!(c, 1, "{out}{err}");
    assert!(
        out.contains(
            "credbroker-wif.sh: no --attribute-condition pinning assertion.sub to $SUBJECT"
        ),
        "{out}"
    );
    // Nothing else is wrong with it: the finding names the one fault.
    assert!(out.contains("1 problem(s)"), "{out}");
}

#[test]
fn the_module_granting_owner_fails() {
    let root = repo_root();
    let tmp = only_gcp(
        &root.join(SCRIPT),
        &root.join("tests/fixtures/gcp/owner-role"),
    );
    let (c, out, err) = lint(tmp.path(), &root.join("policies"));
    assert_eq!(c, 1, "{out}{err}");
    for expected in [
        "main.tf: role roles/owner is an owner role: never granted",
        "main.tf: role roles/owner is outside policies/gcp.json",
        "variables.tf: role roles/editor is an editor role: never granted",
        "variables.tf: role roles/editor is outside policies/gcp.json",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(!out.contains("credbroker-wif.sh"), "{out}");
}

#[test]
fn a_missing_gcp_policy_fails_closed() {
    let root = repo_root();
    let policies = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(root.join("policies")).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().is_some_and(|n| n != "gcp.json") {
            std::fs::copy(&p, policies.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let tmp = only_gcp(&root.join(SCRIPT), &root.join(MODULE));
    let (c, out, err) = lint(tmp.path(), policies.path());
    assert_ne!(c, 0, "{out}");
    assert!(err.contains("gcp.json"), "{err}");
}

#[test]
fn the_script_passes_shellcheck() {
    let root = repo_root();
    let out = Command::new(tool("CREDBROKER_TEST_SHELLCHECK", "shellcheck"))
        .arg("--shell=bash")
        .arg(root.join(SCRIPT))
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert!(out.status.success(), "shellcheck:\n{o}{e}");
}

/// Runs the script with `args` and a fake `gcloud` first on PATH that records each call (one
/// line of arguments) and knows project acme-prod as number 123456789012 and no resource
/// yet. Returns (success, output, recorded calls).
fn run_script(args: &[&str]) -> (bool, String, Vec<String>) {
    run_script_with(args, "")
}

/// [`run_script`] with `existing` first in the fake's `case`: the answers of resources that
/// exist already.
fn run_script_with(args: &[&str], existing: &str) -> (bool, String, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = tmp.path().join("calls");
    // Made empty first and read strictly: "gcloud was never called" is an empty file, not
    // a missing one.
    std::fs::write(&log, "").unwrap();
    let fake = bin.join("gcloud");
    std::fs::write(
        &fake,
        format!("#!/usr/bin/env bash\nprintf '%s\\n' \"$*\" >>\"$GCLOUD_LOG\"\ncase \"$*\" in\n{existing}  \"projects describe acme-prod \"*) echo 123456789012 ;;\n  *\" describe \"*) exit 1 ;;\nesac\n"),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(repo_root().join(SCRIPT))
        .args(args)
        .env_clear()
        .env("PATH", path)
        .env("GCLOUD_LOG", &log)
        .output()
        .unwrap();
    let (o, e) = text(&out);
    let calls = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    (out.status.success(), format!("{o}{e}"), calls)
}

#[test]
fn the_script_federates_one_subject_to_one_read_only_account() {
    let base = [
        "--project-id",
        "acme-prod",
        "--project-number",
        "123456789012",
        "--issuer-url",
        "https://broker.example.com",
        "--subject",
        SUBJECT,
    ];
    let (ok, out, calls) = run_script(&base);
    assert!(ok, "{out}");
    let principal = format!(
        "principal://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/credbroker/subject/{SUBJECT}"
    );
    let sa = "credbroker-reader@acme-prod.iam.gserviceaccount.com";
    for expected in [
        "iam workload-identity-pools create credbroker --project=acme-prod --location=global".to_owned(),
        format!(
            "iam workload-identity-pools providers create-oidc credbroker --project=acme-prod --location=global --workload-identity-pool=credbroker --issuer-uri=https://broker.example.com --attribute-mapping=google.subject=assertion.sub --attribute-condition=assertion.sub == '{SUBJECT}'"
        ),
        "iam service-accounts create credbroker-reader --project=acme-prod".to_owned(),
        format!("projects add-iam-policy-binding acme-prod --member=serviceAccount:{sa} --role=roles/iam.securityReviewer --condition=None"),
        format!("projects add-iam-policy-binding acme-prod --member=serviceAccount:{sa} --role=roles/cloudasset.viewer --condition=None"),
        format!("projects add-iam-policy-binding acme-prod --member=serviceAccount:{sa} --role=roles/browser --condition=None"),
        format!("iam service-accounts add-iam-policy-binding {sa} --project=acme-prod --role=roles/iam.workloadIdentityUser --member={principal}"),
    ] {
        assert!(
            calls.iter().any(|c| c.starts_with(&expected)),
            "no call {expected:?} in {calls:#?}"
        );
    }
    let bindings: Vec<&String> = calls
        .iter()
        .filter(|c| c.contains("add-iam-policy-binding"))
        .collect();
    assert_eq!(bindings.len(), 4, "{calls:#?}");
    // Not roles/viewer by default: Viewers read data too (BigQuery datasets' rows).
    assert!(
        !bindings.iter().any(|c| c.contains("--role=roles/viewer ")),
        "{calls:#?}"
    );
    for line in [
        "project number:   123456789012",
        "pool id:          credbroker",
        "provider id:      credbroker",
        "service account:  credbroker-reader@acme-prod.iam.gserviceaccount.com",
    ] {
        assert!(out.contains(line), "{out}");
    }

    // A provider that pins the keys inline is not updated without them: the old keys (a
    // retired one among them) would stay trusted.
    let pinned = "  *\"providers describe credbroker \"*--format=*) echo '{\"keys\":[{\"kid\":\"old\"}]}' ;;\n  *\"providers describe credbroker \"*) exit 0 ;;\n";
    let (ok, out, calls) = run_script_with(&base, pinned);
    assert!(!ok, "{out}");
    assert!(out.contains("pins the broker's keys inline"), "{out}");
    assert!(
        !calls.iter().any(|c| c.contains("update-oidc")),
        "{calls:#?}"
    );
    // One that fetches them from the issuer is updated in place.
    let (ok, out, calls) = run_script_with(
        &base,
        "  *\"providers describe credbroker \"*--format=*) ;;\n  *\"providers describe credbroker \"*) exit 0 ;;\n",
    );
    assert!(ok, "{out}");
    assert!(
        calls.iter().any(|c| c.contains("update-oidc")),
        "{calls:#?}"
    );

    // An existing pool holding another provider is refused before anything is granted: the
    // grant names a subject of the pool, which that provider could vouch for.
    let shared = "  *\"workload-identity-pools describe credbroker \"*) exit 0 ;;\n  *\"providers list \"*) printf 'credbroker\\nsso-idp\\n' ;;\n";
    let (ok, out, calls) = run_script_with(&base, shared);
    assert!(!ok, "{out}");
    assert!(out.contains("also holds provider sso-idp"), "{out}");
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("add-iam-policy-binding") || c.contains("-oidc")),
        "{calls:#?}"
    );
    // One holding ours alone is used.
    let (ok, out, calls) = run_script_with(
        &base,
        "  *\"workload-identity-pools describe credbroker \"*) exit 0 ;;\n  *\"providers list \"*) echo credbroker ;;\n",
    );
    assert!(ok, "{out}");
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("workload-identity-pools create")),
        "{calls:#?}"
    );

    // An existing service account holding more than asked for (an earlier run's roles/viewer)
    // is refused before anything changes: a run adds grants, it never removes them.
    let wider = "  *\"service-accounts describe \"*) exit 0 ;;\n  \"projects get-iam-policy acme-prod \"*) printf 'roles/iam.securityReviewer,serviceAccount:credbroker-reader@acme-prod.iam.gserviceaccount.com\\nroles/viewer,serviceAccount:credbroker-reader@acme-prod.iam.gserviceaccount.com\\nroles/owner,user:admin@acme.example\\n' ;;\n";
    let (ok, out, calls) = run_script_with(&base, wider);
    assert!(!ok, "{out}");
    assert!(
        out.contains("also holds roles/viewer, which --roles does not ask for"),
        "{out}"
    );
    let changed = |calls: &[String]| {
        calls.iter().any(|c| {
            c.contains("add-iam-policy-binding") || c.contains("-oidc") || c.contains(" create ")
        })
    };
    assert!(!changed(&calls), "{calls:#?}");
    // Nor one another principal may act as (an earlier run's subject).
    let stale = "  *\"service-accounts describe \"*) exit 0 ;;\n  *\"service-accounts get-iam-policy \"*) echo roles/iam.workloadIdentityUser,principal://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/credbroker/subject/cb-old ;;\n";
    let (ok, out, calls) = run_script_with(&base, stale);
    assert!(!ok, "{out}");
    assert!(
        out.contains("subject/cb-old holds roles/iam.workloadIdentityUser on"),
        "{out}"
    );
    assert!(!changed(&calls), "{calls:#?}");
    // Nor one someone else may mint tokens of, by any role on it.
    let creator = "  *\"service-accounts describe \"*) exit 0 ;;\n  *\"service-accounts get-iam-policy \"*) echo roles/iam.serviceAccountTokenCreator,user:mallory@example.com ;;\n";
    let (ok, out, calls) = run_script_with(&base, creator);
    assert!(!ok, "{out}");
    assert!(
        out.contains("user:mallory@example.com holds roles/iam.serviceAccountTokenCreator"),
        "{out}"
    );
    assert!(!changed(&calls), "{calls:#?}");
    // One holding what is asked for, used by our subject alone, is used as it is.
    let ours = format!(
        "  *\"service-accounts describe \"*) exit 0 ;;\n  \"projects get-iam-policy acme-prod \"*) printf 'roles/browser,serviceAccount:credbroker-reader@acme-prod.iam.gserviceaccount.com\\nroles/owner,user:admin@acme.example\\n' ;;\n  *\"service-accounts get-iam-policy \"*) echo roles/iam.workloadIdentityUser,principal://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/credbroker/subject/{SUBJECT} ;;\n"
    );
    let (ok, out, calls) = run_script_with(&base, &ours);
    assert!(ok, "{out}");
    assert!(
        !calls.iter().any(|c| c.contains("service-accounts create")),
        "{calls:#?}"
    );

    // Inline JWKS: the provider gets --jwk-json-path.
    let tmp = tempfile::tempdir().unwrap();
    let jwks = tmp.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
    let mut args = base.to_vec();
    let jwks_arg = jwks.display().to_string();
    args.extend(["--jwks-file", &jwks_arg]);
    let (ok, out, calls) = run_script(&args);
    assert!(ok, "{out}");
    assert!(
        calls
            .iter()
            .any(|c| c.contains("create-oidc")
                && c.ends_with(&format!("--jwk-json-path={jwks_arg}"))),
        "{calls:#?}"
    );
}

#[test]
fn the_script_refuses_before_changing_anything() {
    let with = |extra: &[&str], subject: &str, number: &str| {
        let mut args = vec![
            "--project-id",
            "acme-prod",
            "--project-number",
            number,
            "--issuer-url",
            "https://broker.example.com",
            "--subject",
            subject,
        ];
        args.extend_from_slice(extra);
        run_script(&args)
    };
    for (extra, subject, number, why) in [
        (
            &["--roles", "roles/owner"][..],
            SUBJECT,
            "123456789012",
            "role roles/owner is not one of",
        ),
        (
            &["--roles", "roles/viewer,roles/editor"][..],
            SUBJECT,
            "123456789012",
            "role roles/editor is not one of",
        ),
        (
            &[][..],
            "cb-short",
            "123456789012",
            "SUBJECT 'cb-short' must be cb-",
        ),
        (&[][..], SUBJECT, "acme-prod", "must be the project number"),
        (
            &["--issuer-url", "http://broker.example.com"][..],
            SUBJECT,
            "123456789012",
            "must be https",
        ),
        (
            &["--pool-id", "gcp-pool"][..],
            SUBJECT,
            "123456789012",
            "not start with gcp-",
        ),
    ] {
        let (ok, out, calls) = with(extra, subject, number);
        assert!(!ok, "{why}: {out}");
        assert!(out.contains(why), "{why}: {out}");
        assert!(calls.is_empty(), "{why}: gcloud was called: {calls:#?}");
    }
    // A project number that is not this project's: refused after the one read-only lookup.
    let (ok, out, calls) = with(&[], SUBJECT, "999");
    assert!(
        !ok && out.contains("has number '123456789012', not 999"),
        "{out}"
    );
    assert_eq!(calls.len(), 1, "{calls:#?}");
}

#[test]
fn the_module_parses_with_python_hcl2_into_the_linted_facts() {
    let root = repo_root();
    let out = Command::new(python())
        .arg(root.join("tests/gcp_tf_parse.py"))
        .arg(root.join(MODULE))
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}{e}");
    let facts: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(facts["findings"], serde_json::json!([]), "{o}");
    let provider = &facts["providers"][0];
    assert_eq!(facts["providers"].as_array().map(Vec::len), Some(1), "{o}");
    assert_eq!(
        provider["attribute_mapping"],
        serde_json::json!({"google.subject": "assertion.sub"})
    );
    assert_eq!(
        provider["attribute_condition"],
        "assertion.sub == \"${var.subject}\""
    );
    assert_eq!(provider["issuer_uri"], "${var.issuer_url}");
    assert_eq!(
        facts["workload_identity_user_members"],
        serde_json::json!(["principal://iam.googleapis.com/projects/${data.google_project.credbroker.number}/locations/global/workloadIdentityPools/${google_iam_workload_identity_pool.credbroker.workload_identity_pool_id}/subject/${var.subject}"])
    );
    assert_eq!(
        facts["roles_default"],
        serde_json::json!([
            "roles/iam.securityReviewer",
            "roles/cloudasset.viewer",
            "roles/browser"
        ])
    );
    // The roles the module accepts are exactly the ceiling's.
    let ceiling: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("policies/gcp.json")).unwrap()).unwrap();
    let mut roles: Vec<String> = ceiling["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    roles.sort();
    assert_eq!(facts["roles_allowed"], serde_json::json!(roles));
    assert!(
        facts["subject_validation"]
            .as_str()
            .unwrap()
            .contains("^cb-[A-Za-z0-9]{40}$"),
        "{o}"
    );

    // The bad fixture fails there too, naming the role.
    let out = Command::new(python())
        .arg(root.join("tests/gcp_tf_parse.py"))
        .arg(root.join("tests/fixtures/gcp/owner-role"))
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{o}{e}");
    assert!(
        e.contains("role roles/owner is outside policies/gcp.json"),
        "{e}"
    );
    assert!(e.contains("variable roles allows roles/editor"), "{e}");

    // A principal naming the project by a number typed in (it could be somebody else's
    // project's) fails there too.
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(root.join(MODULE)).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    let main = tmp.path().join("main.tf");
    let written = std::fs::read_to_string(&main).unwrap();
    let typed = written.replace(
        "principal://iam.googleapis.com/projects/${data.google_project.credbroker.number}/",
        "principal://iam.googleapis.com/projects/${var.project_number}/",
    );
    assert_ne!(typed, written);
    std::fs::write(&main, typed).unwrap();
    let out = Command::new(python())
        .arg(root.join("tests/gcp_tf_parse.py"))
        .arg(tmp.path())
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{o}{e}");
    assert!(e.contains("workloadIdentityUser bound to principal://iam.googleapis.com/projects/${var.project_number}/"), "{e}");
}

fn checkov(dir: &Path) -> (bool, String) {
    let out = Command::new(tool("CREDBROKER_TEST_CHECKOV", "checkov"))
        .args([
            "--skip-download",
            "--quiet",
            "--compact",
            "--framework",
            "terraform",
            "-d",
        ])
        .arg(dir)
        .output()
        .unwrap();
    let (o, e) = text(&out);
    (out.status.success(), format!("{o}{e}"))
}

#[test]
fn checkov_passes_the_module_and_fails_the_bad_ones() {
    let root = repo_root();
    let (ok, out) = checkov(&root.join(MODULE));
    assert!(ok, "{out}");
    // roles/owner is a basic role that can impersonate service accounts.
    let (ok, out) = checkov(&root.join("tests/fixtures/gcp/owner-role"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("CKV_GCP_117") && out.contains("credbroker_owner"),
        "{out}"
    );
    // A provider without an attribute condition is unrestricted.
    let tmp = only_gcp(&root.join(SCRIPT), &root.join(MODULE));
    let main = tmp.path().join("gcp/terraform/main.tf");
    let text = std::fs::read_to_string(&main).unwrap();
    let cut = text.replace(
        "  attribute_condition = \"assertion.sub == \\\"${var.subject}\\\"\"\n",
        "",
    );
    assert_ne!(cut, text);
    std::fs::write(&main, cut).unwrap();
    let (ok, out) = checkov(&tmp.path().join("gcp/terraform"));
    assert!(!ok, "{out}");
    assert!(out.contains("CKV_GCP_118"), "{out}");
    // And the lint says the same.
    let (c, out, _) = lint(tmp.path(), &root.join("policies"));
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("no attribute_condition pinning assertion.sub to var.subject"),
        "{out}"
    );
}
