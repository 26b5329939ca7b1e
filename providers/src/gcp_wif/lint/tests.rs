//! Unit tests of the GCP onboarding lint (the shipped script and module, the bad fixtures and
//! single-fault variants; shellcheck, python-hcl2 and checkov run in
//! tests/tests/template_lint_gcp.rs).

use super::*;

const SCRIPT: &str = include_str!("../../../../onboarding-templates/gcp/credbroker-wif.sh");
const MAIN: &str = include_str!("../../../../onboarding-templates/gcp/terraform/main.tf");
const VARIABLES: &str = include_str!("../../../../onboarding-templates/gcp/terraform/variables.tf");
const OUTPUTS: &str = include_str!("../../../../onboarding-templates/gcp/terraform/outputs.tf");
const VERSIONS: &str = include_str!("../../../../onboarding-templates/gcp/terraform/versions.tf");
const NO_CONDITION: &str = include_str!("../../../../tests/fixtures/gcp/no-condition.sh");
const OWNER_MAIN: &str = include_str!("../../../../tests/fixtures/gcp/owner-role/main.tf");
const OWNER_VARIABLES: &str =
    include_str!("../../../../tests/fixtures/gcp/owner-role/variables.tf");

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn ceiling() -> BTreeSet<String> {
    load_role_ceiling(&repo().join("policies")).unwrap()
}

fn script_findings(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    lint_script("credbroker-wif.sh", text, &ceiling(), &mut out);
    out
}

fn module_findings(main: &str, variables: &str) -> Vec<String> {
    let files: Vec<(String, Vec<hcl::Block>)> = [
        ("terraform/main.tf", main),
        ("terraform/variables.tf", variables),
        ("terraform/outputs.tf", OUTPUTS),
        ("terraform/versions.tf", VERSIONS),
    ]
    .iter()
    .map(|(name, text)| ((*name).to_owned(), hcl::parse(text).unwrap()))
    .collect();
    let mut out = Vec::new();
    lint_module(&files, &ceiling(), &mut out);
    out
}

fn has(out: &[String], needle: &str) -> bool {
    out.iter().any(|f| f.contains(needle))
}

#[test]
fn the_shipped_artifacts_meet_the_policy() {
    let out = script_findings(SCRIPT);
    assert!(out.is_empty(), "{out:#?}");
    let out = module_findings(MAIN, VARIABLES);
    assert!(out.is_empty(), "{out:#?}");
    let out = lint(
        &repo().join("onboarding-templates/gcp"),
        &repo().join("policies"),
    )
    .unwrap();
    assert!(out.is_empty(), "{out:#?}");
}

#[test]
fn the_ceiling_is_read_only_and_fails_closed() {
    let c = ceiling();
    assert!(c.contains("roles/viewer") && c.contains("roles/iam.securityReviewer"));
    assert!(c.iter().all(|r| forbidden(r).is_none()), "{c:?}");
    assert!(load_role_ceiling(Path::new("/nonexistent")).is_err());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    for (text, needle) in [
        (
            r#"{"roles": ["roles/viewer", "roles/owner"]}"#,
            "roles/owner is an owner role",
        ),
        (r#"{"roles": ["roles/compute.admin"]}"#, "is an admin role"),
        (r#"{"roles": []}"#, "is empty"),
        (r#"{"scopes": []}"#, "no \"roles\" array"),
        ("{not json", "gcp.json"),
    ] {
        std::fs::write(dir.join("gcp.json"), text).unwrap();
        let err = load_role_ceiling(&dir).unwrap_err();
        assert!(err.contains(needle), "{text}: {err}");
        // The whole lint stops with it.
        assert!(lint(&repo().join("onboarding-templates/gcp"), &dir).is_err());
    }
}

#[test]
fn the_script_without_a_condition_fails() {
    let out = script_findings(NO_CONDITION);
    assert!(
        has(
            &out,
            "no --attribute-condition pinning assertion.sub to $SUBJECT"
        ),
        "{out:#?}"
    );
    assert_eq!(out.len(), 1, "{out:#?}");
}

#[test]
fn a_script_condition_on_anything_but_the_subject_fails() {
    for cond in [
        "assertion.sub == '${OTHER}'",
        "assertion.sub != '${SUBJECT}'",
        "true",
        "assertion.aud == '${SUBJECT}'",
    ] {
        let text = SCRIPT.replace("assertion.sub == '${SUBJECT}'", cond);
        let out = script_findings(&text);
        assert!(
            has(&out, "does not pin assertion.sub to $SUBJECT"),
            "{cond}: {out:#?}"
        );
    }
    // Either quote and spacing pin it.
    let text = SCRIPT.replace(
        "--attribute-condition=\"assertion.sub == '${SUBJECT}'\"",
        "--attribute-condition=\"assertion.sub==\\\"$SUBJECT\\\"\"",
    );
    assert!(script_findings(&text).is_empty());
}

#[test]
fn a_script_with_another_mapping_fails() {
    let text = SCRIPT.replace(
        "--attribute-mapping=\"google.subject=assertion.sub\"",
        "--attribute-mapping=\"google.subject=assertion.email\"",
    );
    let out = script_findings(&text);
    assert!(
        has(&out, "must be exactly google.subject=assertion.sub"),
        "{out:#?}"
    );
}

#[test]
fn script_roles_outside_the_ceiling_fail() {
    let text = SCRIPT.replace(
        "  roles/browser\n",
        "  roles/browser\n  roles/owner\n  roles/editor\n  roles/compute.admin\n  roles/storage.objectViewer\n",
    );
    let out = script_findings(&text);
    for expected in [
        "role roles/owner is an owner role: never granted",
        "role roles/owner is outside policies/gcp.json",
        "role roles/editor is an editor role",
        "role roles/compute.admin is an admin role",
        "role roles/storage.objectViewer is outside policies/gcp.json",
    ] {
        assert!(has(&out, expected), "missing {expected:?} in {out:#?}");
    }
    // A literal role in a binding counts the same.
    let text = SCRIPT.replace("--role=\"$role\"", "--role=roles/editor");
    assert!(has(
        &script_findings(&text),
        "roles/editor is an editor role"
    ));
    // A role named only in a comment neither passes nor fails.
    let text = format!("{SCRIPT}\n# never roles/owner\n");
    assert!(script_findings(&text).is_empty());
}

#[test]
fn script_without_its_allowed_list_fails() {
    let text = SCRIPT.replace("ALLOWED_ROLES=(", "GRANTABLE=(");
    let out = script_findings(&text);
    assert!(has(&out, "no hard-coded ALLOWED_ROLES"), "{out:#?}");
    let text = SCRIPT.replace(
        "for ok in \"${ALLOWED_ROLES[@]}\"",
        "for ok in roles/viewer",
    );
    assert!(has(&script_findings(&text), "ALLOWED_ROLES is never used"));
}

#[test]
fn script_bindings_beyond_one_principal_fail() {
    let set = SCRIPT.replace(
        "principal=\"principal://iam.googleapis.com/projects/${PROJECT_NUMBER}/locations/global/workloadIdentityPools/${POOL_ID}/subject/${SUBJECT}\"",
        "principal=\"principalSet://iam.googleapis.com/projects/${PROJECT_NUMBER}/locations/global/workloadIdentityPools/${POOL_ID}/*\"",
    );
    assert_ne!(set, SCRIPT);
    let out = script_findings(&set);
    assert!(has(&out, "principalSet:// grants a whole set"), "{out:#?}");
    assert!(
        has(
            &out,
            "roles/iam.workloadIdentityUser is bound to principalSet://"
        ),
        "{out:#?}"
    );

    let project_wide = SCRIPT.replace(
        "gcloud iam service-accounts add-iam-policy-binding \"$sa_email\"",
        "gcloud projects add-iam-policy-binding \"$PROJECT_ID\"",
    );
    let out = script_findings(&project_wide);
    assert!(has(&out, "on the whole project"), "{out:#?}");
    assert!(
        has(
            &out,
            "no `gcloud iam service-accounts add-iam-policy-binding"
        ),
        "{out:#?}"
    );

    let user = SCRIPT.replace(
        "--member=\"serviceAccount:${sa_email}\"",
        "--member=\"user:${EMAIL}\"",
    );
    assert!(has(
        &script_findings(&user),
        "grants a project role to user:${EMAIL}"
    ));

    let token_creator = SCRIPT.replace(
        "--role=\"roles/iam.workloadIdentityUser\"",
        "--role=\"roles/iam.serviceAccountTokenCreator\"",
    );
    let out = script_findings(&token_creator);
    assert!(
        has(&out, "only roles/iam.workloadIdentityUser belongs there"),
        "{out:#?}"
    );
}

#[test]
fn the_owner_role_fixture_fails() {
    let out = module_findings(OWNER_MAIN, OWNER_VARIABLES);
    for expected in [
        "role roles/owner is an owner role: never granted",
        "role roles/owner is outside policies/gcp.json",
        "role roles/editor is an editor role: never granted",
        "role roles/editor is outside policies/gcp.json",
    ] {
        assert!(has(&out, expected), "missing {expected:?} in {out:#?}");
    }
    // The fixture's header comment names roles/owner too: only code counts.
    assert!(out.iter().all(|f| !f.contains("comment")), "{out:#?}");
}

#[test]
fn a_module_without_the_condition_or_mapping_fails() {
    let main = MAIN.replace(
        "  attribute_condition = \"assertion.sub == \\\"${var.subject}\\\"\"\n",
        "",
    );
    assert_ne!(main, MAIN);
    let out = module_findings(&main, VARIABLES);
    assert!(
        has(
            &out,
            "no attribute_condition pinning assertion.sub to var.subject"
        ),
        "{out:#?}"
    );

    for cond in [
        "\"assertion.sub != \\\"${var.subject}\\\"\"",
        "\"true\"",
        "\"assertion.sub == \\\"${var.other}\\\"\"",
        "var.condition",
    ] {
        let main = MAIN.replace("\"assertion.sub == \\\"${var.subject}\\\"\"", cond);
        let out = module_findings(&main, VARIABLES);
        assert!(
            has(&out, "does not pin assertion.sub to var.subject"),
            "{cond}: {out:#?}"
        );
    }

    let main = MAIN.replace(
        "\"google.subject\" = \"assertion.sub\"",
        "\"google.subject\" = \"assertion.email\"",
    );
    let out = module_findings(&main, VARIABLES);
    assert!(
        has(&out, "maps google.subject to \"assertion.email\""),
        "{out:#?}"
    );
}

const MEMBER: &str = "principal://iam.googleapis.com/projects/${data.google_project.credbroker.number}/locations/global/workloadIdentityPools/${google_iam_workload_identity_pool.credbroker.workload_identity_pool_id}/subject/${var.subject}";

#[test]
fn module_bindings_beyond_one_principal_fail() {
    let main = MAIN.replace(
        MEMBER,
        "principalSet://iam.googleapis.com/projects/${data.google_project.credbroker.number}/locations/global/workloadIdentityPools/${google_iam_workload_identity_pool.credbroker.workload_identity_pool_id}/*",
    );
    assert_ne!(main, MAIN);
    let out = module_findings(&main, VARIABLES);
    assert!(has(&out, "principalSet:// grants a whole set"), "{out:#?}");
    assert!(has(&out, "is bound to \"principalSet://"), "{out:#?}");

    let main = MAIN.replace("google_project_iam_member", "google_project_iam_binding");
    let out = module_findings(&main, VARIABLES);
    assert!(has(&out, "is authoritative for its role"), "{out:#?}");

    let main = format!(
        "{MAIN}\nresource \"google_project_iam_member\" \"wif\" {{\n  project = var.project_id\n  role    = \"roles/iam.workloadIdentityUser\"\n  member  = \"serviceAccount:x@y.iam.gserviceaccount.com\"\n}}\n"
    );
    assert!(has(
        &module_findings(&main, VARIABLES),
        "on the whole project"
    ));

    let main = MAIN.replace(
        "for_each = toset(var.roles)",
        "for_each = toset(var.extra_roles)",
    );
    assert!(has(
        &module_findings(&main, VARIABLES),
        "not over var.roles"
    ));
}

#[test]
fn module_variables_must_be_validated() {
    let vars = VARIABLES.replace("^cb-[A-Za-z0-9]{40}$", "^cb-.*$");
    assert!(has(
        &module_findings(MAIN, &vars),
        "variable \"subject\": needs a validation"
    ));
    let vars = VARIABLES.replace("^[0-9]{1,20}$", "^.+$");
    assert!(has(
        &module_findings(MAIN, &vars),
        "variable \"project_number\""
    ));
    let vars = VARIABLES.replace(
        "for r in var.roles : contains(",
        "for r in var.roles : can(",
    );
    assert!(has(
        &module_findings(MAIN, &vars),
        "variable \"roles\": needs a validation"
    ));
}

#[test]
fn a_missing_script_or_module_is_a_finding() {
    let tmp = tempfile::tempdir().unwrap();
    let out = lint(tmp.path(), &repo().join("policies")).unwrap();
    assert!(has(&out, "no gcloud script"), "{out:#?}");
    assert!(has(&out, "no Terraform module"), "{out:#?}");
}

#[test]
fn role_tokens_find_every_role_name() {
    assert_eq!(
        role_tokens(
            "a roles/viewer, \"roles/iam.securityReviewer\" and projects/p/roles/custom_1."
        ),
        [
            "roles/viewer",
            "roles/iam.securityReviewer",
            "roles/custom_1"
        ]
    );
    assert!(role_tokens("ROLES//,/ roles/").is_empty());
}

#[test]
fn the_hcl_reader_keeps_structure_and_drops_comments() {
    let text = r#"
# roles/owner in a comment
/* and roles/editor
   in a block comment */
resource "a" "b" { // trailing
  x = "s # not a comment"
  m = {
    "google.subject" = "assertion.sub"
    other            = "v" # comment
  }
  l = [
    "roles/viewer", // one
    "roles/browser",
  ]
  h = <<-EOT
    line "quoted"
  EOT
  t = "${join(",", ["a"])}"
  inner {
    y = 1
  }
}
"#;
    let blocks = hcl::parse(text).unwrap();
    let b = blocks.first().unwrap();
    assert_eq!(b.kind, "resource");
    assert_eq!(b.labels, ["a", "b"]);
    assert_eq!(
        b.attr("x").and_then(hcl::single_string).as_deref(),
        Some("s # not a comment")
    );
    assert_eq!(
        b.attr("m").and_then(hcl::map_pairs).unwrap(),
        [
            ("google.subject".to_owned(), "assertion.sub".to_owned()),
            ("other".to_owned(), "v".to_owned())
        ]
    );
    assert_eq!(
        hcl::string_literals(b.attr("l").unwrap()),
        ["roles/viewer", "roles/browser"]
    );
    assert_eq!(
        b.attr("h").and_then(hcl::single_string).as_deref(),
        Some("    line \"quoted\"")
    );
    assert_eq!(b.blocks("inner").count(), 1);
    let all: Vec<String> = b
        .exprs()
        .into_iter()
        .flat_map(hcl::string_literals)
        .collect();
    assert!(!all
        .iter()
        .any(|s| s.contains("roles/owner") || s.contains("roles/editor")));

    for broken in [
        "resource \"a\" \"b\" {\n  x = \"open\n}\n",
        "resource \"a\" \"b\" {\n  x = 1\n",
        "resource \"a\" \"b\" {\n  x = [1, 2\n}\n",
        "x = 1\n",
        "/* open",
    ] {
        assert!(hcl::parse(broken).is_err(), "{broken:?}");
    }
}

/// The principal's project is the number Google reports for `var.project_id`: a number typed
/// in (one digit wrong names a pool of the same id in somebody else's project), a data source
/// of another project, or a pool the module does not create are findings.
#[test]
fn module_principals_name_the_modules_own_project_and_pool() {
    assert!(MAIN.contains(MEMBER), "the shipped member changed");
    for (from, to) in [
        (
            "${data.google_project.credbroker.number}",
            "${var.project_number}",
        ),
        ("${data.google_project.credbroker.number}", "123456789012"),
        (
            "${google_iam_workload_identity_pool.credbroker.workload_identity_pool_id}",
            "credbroker",
        ),
        (
            "${google_iam_workload_identity_pool.credbroker.workload_identity_pool_id}",
            "${google_iam_workload_identity_pool.other.workload_identity_pool_id}",
        ),
        ("/subject/${var.subject}", "/subject/${var.subject}/x"),
    ] {
        let main = MAIN.replace(MEMBER, &MEMBER.replace(from, to));
        assert_ne!(main, MAIN);
        let out = module_findings(&main, VARIABLES);
        assert!(
            has(&out, "roles/iam.workloadIdentityUser is bound to"),
            "{to}: {out:#?}"
        );
    }
    let main = MAIN.replace(
        "data \"google_project\" \"credbroker\" {\n  project_id = var.project_id\n}",
        "data \"google_project\" \"credbroker\" {\n  project_id = \"attacker-prod\"\n}",
    );
    assert_ne!(main, MAIN);
    let out = module_findings(&main, VARIABLES);
    assert!(
        has(&out, "roles/iam.workloadIdentityUser is bound to"),
        "{out:#?}"
    );
    assert!(
        has(
            &out,
            "data google_project.credbroker does not read var.project_id"
        ),
        "{out:#?}"
    );
    // An override file re-pointing the data source behind the lint's back.
    let files: Vec<(String, Vec<hcl::Block>)> = [
        ("terraform/main.tf", MAIN),
        ("terraform/variables.tf", VARIABLES),
        ("terraform/outputs.tf", OUTPUTS),
        ("terraform/versions.tf", VERSIONS),
        (
            "terraform/main_override.tf",
            "data \"google_project\" \"credbroker\" {\n  project_id = var.project_id\n}\n",
        ),
    ]
    .iter()
    .map(|(name, text)| ((*name).to_owned(), hcl::parse(text).unwrap()))
    .collect();
    let mut out = Vec::new();
    lint_module(&files, &ceiling(), &mut out);
    assert!(has(&out, "main_override.tf: an override file"), "{out:#?}");
}

/// The script checks the project number it was given against the id's before it binds a
/// principal named by it: without that check it is a finding.
#[test]
fn a_script_that_does_not_check_the_project_number_fails() {
    let cut = SCRIPT.replace(
        "[[ \"$actual_number\" == \"$PROJECT_NUMBER\" ]] ||",
        "[[ -n \"$actual_number\" ]] ||",
    );
    assert_ne!(cut, SCRIPT);
    assert!(
        has(&script_findings(&cut), "does not check PROJECT_NUMBER"),
        "{:#?}",
        script_findings(&cut)
    );
    assert!(script_findings(SCRIPT).is_empty());
}
