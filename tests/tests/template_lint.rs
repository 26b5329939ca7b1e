//! The shipped onboarding templates pass `credbroker lint-templates`; a deliberately bad
//! template (wildcard principal, no ExternalId condition, AdministratorAccess, 12 h sessions)
//! fails it on every count (and so do a GitHub manifest and a Bicep template beyond their
//! ceilings); a missing policy file fails closed. The web identity variant passes the lint and
//! cfn-lint; without its sub condition (or with a wildcard one) it fails.

use std::path::Path;
use std::process::Command;

use credbroker_tests::*;

/// Runs `credbroker lint-templates` on `templates` with the repository's policies and the
/// Forge manifest schema tests/run installs (`npm ci --prefix tests/forge`; without it the
/// Forge lint fails closed, and so does any test that lints onboarding-templates/atlassian).
fn lint(templates: &Path) -> (i32, String, String) {
    let root = repo_root();
    let out = Command::new(daemon_bin())
        .args(["lint-templates", "--templates"])
        .arg(templates)
        .arg("--policies")
        .arg(root.join("policies"))
        .env(
            "CREDBROKER_FORGE_MANIFEST_SCHEMA",
            root.join("tests/forge/node_modules/@forge/manifest/out/schema/manifest-schema.json"),
        )
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn shipped_templates_pass_the_lint() {
    let root = repo_root();
    let (c, out, err) = lint(&root.join("onboarding-templates"));
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("templates OK"));
}

#[test]
fn the_bad_fixture_fails_on_every_count() {
    let root = repo_root();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("aws")).unwrap();
    std::fs::copy(
        root.join("tests/fixtures/aws/bad-role.json"),
        tmp.path().join("aws/bad-role.json"),
    )
    .unwrap();
    let (c, out, _) = lint(tmp.path());
    assert_eq!(c, 1, "{out}");
    for expected in [
        "is not exactly the VendorAccountId parameter",
        "lacks Condition StringEquals sts:ExternalId",
        "AdministratorAccess is outside policies/aws.json",
        "MaxSessionDuration 43200 exceeds 3600",
        "ExternalId parameter must have no Default",
    ] {
        assert!(
            out.contains(expected),
            "missing finding {expected:?} in:\n{out}"
        );
    }
}

/// One AWS template alone in a templates directory.
fn aws_template_dir(name: &str, text: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("aws")).unwrap();
    std::fs::write(tmp.path().join("aws").join(name), text).unwrap();
    tmp
}

#[test]
fn the_web_identity_template_passes_the_lint_and_cfn_lint() {
    let root = repo_root();
    let template = root.join("onboarding-templates/aws/credbroker-role-web-identity.json");
    let text = std::fs::read_to_string(&template).unwrap();
    let tmp = aws_template_dir("credbroker-role-web-identity.json", &text);
    let (c, out, err) = lint(tmp.path());
    assert_eq!(c, 0, "{out}{err}");
    // cfn-lint from the venv tests/run installs (next to CREDBROKER_TEST_PYTHON).
    let python = std::env::var("CREDBROKER_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("CREDBROKER_TEST_PYTHON is not set: run the suite with `bash tests/run`, which installs cfn-lint in a venv")
    });
    let cfn_lint = Path::new(&python).with_file_name("cfn-lint");
    let out = Command::new(&cfn_lint).arg(&template).output().unwrap();
    assert!(
        out.status.success(),
        "{} {}: {}{}",
        cfn_lint.display(),
        template.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_web_identity_trust_without_a_pinned_sub_fails() {
    let root = repo_root();
    let fixture =
        std::fs::read_to_string(root.join("tests/fixtures/aws/web-identity-no-sub.json")).unwrap();
    let tmp = aws_template_dir("web-identity-no-sub.json", &fixture);
    let (c, out, _) = lint(tmp.path());
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("web-identity-no-sub.json")
            && out.contains("lacks the sub condition (StringEquals ${IssuerHost}:sub"),
        "{out}"
    );
    // A sub matched with StringLike (any subject of the issuer) fails the same way.
    let shipped = std::fs::read_to_string(
        root.join("onboarding-templates/aws/credbroker-role-web-identity.json"),
    )
    .unwrap();
    let pinned = r#",\"${IssuerHost}:sub\":\"${Subject}\"}"#;
    assert!(shipped.contains(pinned), "the shipped trust changed shape");
    let like = shipped.replace(
        pinned,
        r#"},\"StringLike\":{\"${IssuerHost}:sub\":\"cb-*\"}"#,
    );
    let tmp = aws_template_dir("web-identity-like.json", &like);
    let (c, out, _) = lint(tmp.path());
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("condition operator StringLike"), "{out}");
    assert!(out.contains("lacks the sub condition"), "{out}");
    // A Subject with a default: one subject every stack made without it shares.
    let mut doc: serde_json::Value = serde_json::from_str(&shipped).unwrap();
    doc["Parameters"]["Subject"]["Default"] =
        serde_json::json!("cb-0123456789abcdefghijABCDEFGHIJ0123456789");
    let tmp = aws_template_dir("web-identity-default.json", &doc.to_string());
    let (c, out, _) = lint(tmp.path());
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("Subject parameter must have no Default"),
        "{out}"
    );
}

#[test]
fn a_trust_statement_with_not_action_fails() {
    // `NotAction` allows sts:AssumeRole without naming it, so no ExternalId condition is
    // looked for: the statement itself is the finding.
    let root = repo_root();
    let shipped =
        std::fs::read_to_string(root.join("onboarding-templates/aws/credbroker-role.json"))
            .unwrap();
    let named = r#""Action": "sts:AssumeRole",
              "Condition": {
                "StringEquals": { "sts:ExternalId": { "Ref": "ExternalId" } },
                "ArnEquals": { "aws:PrincipalArn": { "Ref": "BrokerPrincipalArn" } }
              }"#;
    assert!(shipped.contains(named), "the shipped trust changed shape");
    // Without the broker-role condition: every identity of the vendor account that may call
    // sts:AssumeRole could assume it with the ExternalId, which is no secret.
    let any_vendor_identity = shipped.replace(
        r#",
                "ArnEquals": { "aws:PrincipalArn": { "Ref": "BrokerPrincipalArn" } }"#,
        "",
    );
    assert_ne!(any_vendor_identity, shipped);
    let tmp = aws_template_dir("credbroker-role.json", &any_vendor_identity);
    let (c, out, _) = lint(tmp.path());
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("lacks Condition ArnEquals aws:PrincipalArn"),
        "{out}"
    );
    // Nor with a parameter pattern that lets a wildcard through (ArnEquals reads `*`: every
    // role of the vendor account).
    let mut doc: serde_json::Value = serde_json::from_str(&shipped).unwrap();
    doc["Parameters"]["BrokerPrincipalArn"]["AllowedPattern"] =
        "^arn:aws:iam::[0-9]{12}:role/.*$".into();
    let tmp = aws_template_dir(
        "credbroker-role.json",
        &serde_json::to_string_pretty(&doc).unwrap(),
    );
    let (c, out, _) = lint(tmp.path());
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("BrokerPrincipalArn parameter must have AllowedPattern"),
        "{out}"
    );
    let loose = shipped.replace(named, r#""NotAction": "sts:TagSession""#);
    let tmp = aws_template_dir("credbroker-role.json", &loose);
    let (c, out, _) = lint(tmp.path());
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("uses NotAction"), "{out}");
    assert!(out.contains("allows no named action"), "{out}");
    // An action built by an intrinsic function cannot be checked either.
    let joined = shipped.replace(
        r#""Action": "sts:AssumeRole","#,
        r#""Action": ["sts:TagSession", {"Fn::Join": ["", ["sts:", "AssumeRole"]]}],"#,
    );
    let tmp = aws_template_dir("credbroker-role.json", &joined);
    let (c, out, _) = lint(tmp.path());
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("is not a plain string"), "{out}");
    // Nor an Effect built by one.
    let effect = shipped.replace(r#""Effect": "Allow""#, r#""Effect": {"Fn::Sub": "Allow"}"#);
    assert_ne!(effect, shipped, "the shipped trust changed shape");
    let tmp = aws_template_dir("credbroker-role.json", &effect);
    let (c, out, _) = lint(tmp.path());
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("no plain Allow or Deny Effect"), "{out}");
    // An inline policy whose document is a string built by Fn::Sub, or whose statement's
    // Effect is, has nothing the lint can read.
    for (document, finding) in [
        (
            r#"{"Fn::Sub": "{\"Statement\": [{\"Effect\": \"Allow\", \"Action\": \"*\", \"Resource\": \"*\"}]}"}"#,
            "document has no Statement to read",
        ),
        (
            r#"{"Statement": [{"Effect": {"Fn::Sub": "Allow"}, "Action": "*", "Resource": "*"}]}"#,
            "inline policy statement has no plain Allow or Deny Effect",
        ),
    ] {
        let inline = shipped.replace(
            r#""ManagedPolicyArns""#,
            &format!(r#""Policies": [{{"PolicyName": "extra", "PolicyDocument": {document}}}], "ManagedPolicyArns""#),
        );
        assert_ne!(inline, shipped, "the shipped role changed shape");
        let tmp = aws_template_dir("credbroker-role.json", &inline);
        let (c, out, _) = lint(tmp.path());
        assert_eq!(c, 1, "{out}");
        assert!(out.contains(finding), "{out}");
    }
}

#[test]
fn a_stackset_that_drifts_from_the_role_template_fails() {
    let root = repo_root();
    let tmp = tempfile::tempdir().unwrap();
    let aws = tmp.path().join("aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::copy(
        root.join("onboarding-templates/aws/credbroker-role.json"),
        aws.join("credbroker-role.json"),
    )
    .unwrap();
    let mut stackset: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("onboarding-templates/aws/credbroker-stackset.json")).unwrap(),
    )
    .unwrap();
    let body = stackset["Resources"]["CredbrokerRoleStackSet"]["Properties"]["TemplateBody"]
        .as_str()
        .unwrap()
        .replace("SecurityAudit", "AdministratorAccess");
    stackset["Resources"]["CredbrokerRoleStackSet"]["Properties"]["TemplateBody"] = body.into();
    let (c, out) = lint_stackset(tmp.path(), &stackset);
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("TemplateBody differs from credbroker-role.json"),
        "{out}"
    );
    assert!(out.contains("AdministratorAccess is outside"), "{out}");
    // A StackSet that does not hand the broker's role to its instances (they could not be
    // created, or would take whatever a default said) fails too.
    let params = &mut stackset["Resources"]["CredbrokerRoleStackSet"]["Properties"]["Parameters"];
    params
        .as_array_mut()
        .unwrap()
        .retain(|p| p["ParameterKey"] != "BrokerPrincipalArn");
    let (c, out) = lint_stackset(tmp.path(), &stackset);
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("Parameters must pass BrokerPrincipalArn"),
        "{out}"
    );
}

#[test]
fn a_missing_policy_fails_closed() {
    let root = repo_root();
    // Every policy but aws.json: the AWS lint, wherever it runs in the catalog, must stop.
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(root.join("policies")).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().is_some_and(|n| n != "aws.json") {
            std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let (c, _, err) = run_cli(&[
        "lint-templates",
        "--templates",
        root.join("onboarding-templates").to_str().unwrap(),
        "--policies",
        tmp.path().to_str().unwrap(),
    ]);
    assert_ne!(c, 0);
    assert!(err.contains("aws.json"), "{err}");
    // An empty policies directory fails too.
    let empty = tempfile::tempdir().unwrap();
    let (c, _, err) = run_cli(&[
        "lint-templates",
        "--templates",
        root.join("onboarding-templates").to_str().unwrap(),
        "--policies",
        empty.path().to_str().unwrap(),
    ]);
    assert_ne!(c, 0);
    assert!(err.contains(".json"), "{err}");
}

#[test]
fn a_github_manifest_beyond_the_ceiling_fails() {
    let root = repo_root();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("github")).unwrap();
    std::fs::copy(
        root.join("tests/fixtures/github/bad-manifest.json"),
        tmp.path().join("github/app-manifest.json"),
    )
    .unwrap();
    let (c, out, _) = lint(tmp.path());
    assert_eq!(c, 1, "{out}");
    for expected in [
        "permission contents: write exceeds policies/github.json (read)",
        "permission administration: write exceeds",
        "/hook_attributes/url must be https",
        // The flipped rule: the App must ask the installer to authorize it.
        "request_oauth_on_install must be true",
        "callback_urls is missing",
        // Events the broker never acts on, pushed to the public listener.
        "default_events must be empty",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

#[test]
fn a_bicep_template_beyond_the_ceiling_fails() {
    let root = repo_root();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("azure")).unwrap();
    std::fs::copy(
        root.join("tests/fixtures/azure/bad-roles.bicep"),
        tmp.path().join("azure/bad-roles.bicep"),
    )
    .unwrap();
    let (c, out, _) = lint(tmp.path());
    assert_eq!(c, 1, "{out}");
    for expected in [
        "role 8e3af657-a8ff-443c-a75c-2fe8c4bcb635 (Owner) writes or grants access",
        "role b24988ac-6180-42a0-ab88-20f7382dd24c (Contributor) writes or grants access",
        "GUID 4633458b-17de-408a-b874-0445c86b69e6 is not a role definition in policies/azure.json",
        "defines a custom role",
        "3 role assignment(s) but 2 principalType: 'ServicePrincipal'",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    // A role id hidden in a comment neither passes nor fails a template.
    let shipped =
        std::fs::read_to_string(root.join("onboarding-templates/azure/subscription-reader.bicep"))
            .unwrap();
    std::fs::remove_file(tmp.path().join("azure/bad-roles.bicep")).unwrap();
    std::fs::write(
        tmp.path().join("azure/commented.bicep"),
        format!("{shipped}\n// Owner: 8e3af657-a8ff-443c-a75c-2fe8c4bcb635\n"),
    )
    .unwrap();
    let (c, out, _) = lint(tmp.path());
    assert_eq!(c, 0, "{out}");
    // One Contributor id in code fails it.
    std::fs::write(
        tmp.path().join("azure/commented.bicep"),
        shipped.replace(
            "acdd72a7-3385-48ef-bd42-f606fba81ae7",
            "b24988ac-6180-42a0-ab88-20f7382dd24c",
        ),
    )
    .unwrap();
    let (c, out, _) = lint(tmp.path());
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("(Contributor)"), "{out}");
}

/// Writes `stackset` as the StackSet template of the templates tree at `templates` and
/// lints the tree: the exit code and output.
fn lint_stackset(templates: &Path, stackset: &serde_json::Value) -> (i32, String) {
    std::fs::write(
        templates.join("aws/credbroker-stackset.json"),
        serde_json::to_vec_pretty(stackset).unwrap(),
    )
    .unwrap();
    let (c, out, _) = lint(templates);
    (c, out)
}
