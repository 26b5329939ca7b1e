//! The template lint of `gcp_wif` (run by `credbroker lint-templates`): the gcloud script and
//! the Terraform module we ship in onboarding-templates/gcp/ must set up Workload Identity
//! Federation so that only the one binding's tokens reach one read-only service account.
//!
//! Both artifacts must map `google.subject=assertion.sub` and carry an attribute condition
//! pinning `assertion.sub` to the subject input: without it the provider accepts every token
//! the broker mints, for every customer (the subject is the ExternalId analogue, PROTOCOLS.md
//! "Own OIDC issuer"). They grant the service account only roles of policies/gcp.json
//! (`roles`; owner, editor and any admin role are findings even if the policy listed them),
//! never authoritatively, and bind `roles/iam.workloadIdentityUser` on the service account
//! alone to exactly `principal://…/subject/<subject>`, never to a `principalSet://`; the
//! module names the principal's project by the number Google reports for `var.project_id`.
//!
//! The script is read as shell words of logical lines (continuations joined, comment lines
//! dropped, in `script`); the module with a small HCL reader (`hcl`), which refuses what it cannot
//! read. policies/gcp.json missing or unreadable fails the lint: no ceiling, no pass.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

mod hcl;
mod script;

pub(crate) use script::lint_script;

/// The module's folder under onboarding-templates/gcp.
const TERRAFORM_DIR: &str = "terraform";
/// The role that lets a federated principal act as the service account.
const WIF_USER: &str = "roles/iam.workloadIdentityUser";
/// How every member naming one federated identity starts.
const PRINCIPAL_PREFIX: &str = "principal://iam.googleapis.com/projects/";
/// The broker's per-binding subject (`cb-` + 40 alphanumerics).
const SUBJECT_PATTERN: &str = "^cb-[A-Za-z0-9]{40}$";
/// The only mapping allowed: the principal:// member names `google.subject`.
const SUBJECT_MAPPING: &str = "google.subject=assertion.sub";

/// Loads the `roles` of policies/gcp.json: the only roles the artifacts may grant.
///
/// # Errors
/// When the file is missing or malformed, has no roles, or lists an owner, editor or admin
/// role (the lint then fails: no ceiling, no pass).
pub(crate) fn load_role_ceiling(policies: &Path) -> Result<BTreeSet<String>, String> {
    let path = policies.join("gcp.json");
    let fail = |e: String| format!("{}: {e}", path.display());
    let text = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
    let doc: Value = serde_json::from_slice(&text).map_err(|e| fail(e.to_string()))?;
    let list = doc
        .get("roles")
        .and_then(Value::as_array)
        .ok_or_else(|| fail("no \"roles\" array".into()))?;
    let mut roles = BTreeSet::new();
    for r in list {
        let r = r
            .as_str()
            .ok_or_else(|| fail(format!("role {r} is not a string")))?;
        if let Some(kind) = forbidden(r) {
            return Err(fail(format!("role {r} is an {kind} role: never allowed")));
        }
        roles.insert(r.to_owned());
    }
    if roles.is_empty() {
        return Err(fail("\"roles\" is empty".into()));
    }
    Ok(roles)
}

/// Why `role` may never be granted, whatever the policy says: it administers the project,
/// or lets its holder act as (other) service accounts.
pub(crate) fn forbidden(role: &str) -> Option<&'static str> {
    match role {
        "roles/owner" => Some("owner"),
        "roles/editor" => Some("editor"),
        r if r.to_ascii_lowercase().contains("admin") => Some("admin"),
        r if r.contains("serviceAccountTokenCreator")
            || r.contains("serviceAccountUser")
            || r.contains("workloadIdentityUser") =>
        {
            Some("impersonation")
        }
        _ => None,
    }
}

/// Every `roles/…` name in `text` (custom `projects/…/roles/…` included).
fn role_tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("roles/") {
        let tail = rest.get(at..).unwrap_or("");
        let len = tail
            .char_indices()
            .skip(6)
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_')))
            .map_or(tail.len(), |(i, _)| i);
        let role = tail.get(..len).unwrap_or("").trim_end_matches('.');
        if role.len() > 6 {
            out.push(role.to_owned());
        }
        rest = tail.get(len.max(6)..).unwrap_or("");
    }
    out
}

/// Findings for roles granted (or listed as grantable) outside the ceiling; each role once.
/// `roles/iam.workloadIdentityUser` is judged where it is bound, not here.
fn check_roles<'a>(
    roles: impl IntoIterator<Item = &'a String>,
    ceiling: &BTreeSet<String>,
    say: &mut dyn FnMut(String),
) {
    let distinct: BTreeSet<&String> = roles.into_iter().collect();
    for role in distinct {
        if role == WIF_USER {
            continue;
        }
        if let Some(kind) = forbidden(role) {
            say(format!("role {role} is an {kind} role: never granted"));
        }
        if !ceiling.contains(role) {
            say(format!("role {role} is outside policies/gcp.json"));
        }
    }
}

/// The condition pins `assertion.sub` to the subject input (`subject_ref`, e.g.
/// `${SUBJECT}` or `${var.subject}`), with either quote, whitespace ignored.
fn pins_subject(condition: &str, subject_refs: &[&str]) -> bool {
    let c: String = condition.chars().filter(|c| !c.is_whitespace()).collect();
    subject_refs
        .iter()
        .any(|s| c == format!("assertion.sub=='{s}'") || c == format!("assertion.sub==\"{s}\""))
}

/// A member naming exactly one federated identity of the module's own pool: the project by
/// the number Google reports for `var.project_id` (a `google_project` data source in
/// `projects`; never a number typed in, which could name a same-named pool in somebody
/// else's project), a pool resource of the module in `pools`, the subject input.
fn is_one_principal(
    member: &str,
    projects: &BTreeSet<String>,
    pools: &BTreeSet<String>,
    subject_refs: &[&str],
) -> bool {
    projects.iter().any(|project| {
        pools.iter().any(|pool| {
            subject_refs.iter().any(|s| {
                member
                    == format!(
                        "{PRINCIPAL_PREFIX}${{data.google_project.{project}.number}}/locations/global/workloadIdentityPools/${{google_iam_workload_identity_pool.{pool}.workload_identity_pool_id}}/subject/{s}"
                    )
            })
        })
    })
}

// ---- the Terraform module ---------------------------------------------------------------

/// Resource types that replace a whole policy or grant beyond the project.
const REFUSED_RESOURCES: &[(&str, &str)] = &[
    (
        "google_project_iam_binding",
        "is authoritative for its role (removes other members); use google_project_iam_member",
    ),
    (
        "google_project_iam_policy",
        "replaces the project's whole IAM policy; use google_project_iam_member",
    ),
    (
        "google_service_account_iam_binding",
        "is authoritative for its role; use google_service_account_iam_member",
    ),
    (
        "google_service_account_iam_policy",
        "replaces the service account's IAM policy; use google_service_account_iam_member",
    ),
    (
        "google_service_account_key",
        "creates a key: federation needs none",
    ),
    (
        "google_organization_iam_member",
        "grants beyond the project",
    ),
    (
        "google_organization_iam_binding",
        "grants beyond the project",
    ),
    (
        "google_organization_iam_policy",
        "grants beyond the project",
    ),
    ("google_folder_iam_member", "grants beyond the project"),
    ("google_folder_iam_binding", "grants beyond the project"),
    ("google_folder_iam_policy", "grants beyond the project"),
];

fn validation_text(b: &hcl::Block) -> String {
    b.blocks("validation")
        .filter_map(|v| v.attr("condition"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Lints the parsed files of the Terraform module (`(file, top-level blocks)`).
pub(crate) fn lint_module(
    files: &[(String, Vec<hcl::Block>)],
    ceiling: &BTreeSet<String>,
    out: &mut Vec<String>,
) {
    let subject_refs = ["${var.subject}"];
    let mut providers = 0;
    let mut wif_bindings = 0;
    let mut variables = BTreeMap::new();
    // The `google_project` data sources reading `var.project_id`, and the pool resources.
    let (mut projects, mut pools) = (BTreeSet::new(), BTreeSet::new());
    for (file, blocks) in files {
        for b in blocks {
            match (b.kind.as_str(), b.labels.first(), b.labels.get(1)) {
                ("variable", Some(name), _) => {
                    variables.insert(name.clone(), (file.clone(), b));
                }
                ("data", Some(t), Some(name)) if t == "google_project" => {
                    if b.attr("project_id").map(str::trim) == Some("var.project_id") {
                        projects.insert(name.clone());
                    } else {
                        // Any other reads some other project's number: named, not skipped.
                        out.push(format!("{file}: data google_project.{name} does not read var.project_id; the module reads the number of the customer's own project only"));
                    }
                }
                ("resource", Some(t), Some(name)) if t == "google_iam_workload_identity_pool" => {
                    pools.insert(name.clone());
                }
                _ => {}
            }
        }
    }
    for (file, _) in files {
        // Terraform merges `override.tf` and `*_override.tf` over the other files: what they
        // say is not what the lint read in the blocks they override.
        let name = Path::new(file)
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        if name == "override.tf" || name.ends_with("_override.tf") {
            out.push(format!("{file}: an override file changes the module's blocks behind the lint; none belongs in it"));
        }
    }
    for (file, blocks) in files {
        let mut literals = Vec::new();
        for b in blocks {
            literals.extend(b.exprs().into_iter().flat_map(hcl::string_literals));
        }
        let mut say_file = |m: String| out.push(format!("{file}: {m}"));
        check_roles(
            &literals
                .iter()
                .flat_map(|l| role_tokens(l))
                .collect::<Vec<_>>(),
            ceiling,
            &mut say_file,
        );
        if literals.iter().any(|l| l.contains("principalSet://")) {
            say_file("principalSet:// grants a whole set of identities; bind exactly principal://…/subject/${var.subject}".into());
        }
        for b in blocks.iter().filter(|b| b.kind == "resource") {
            let (Some(rtype), Some(name)) = (b.labels.first(), b.labels.get(1)) else {
                out.push(format!("{file}: resource without type and name"));
                continue;
            };
            let mut say = |m: String| out.push(format!("{file}: resource {rtype}.{name}: {m}"));
            if let Some((_, why)) = REFUSED_RESOURCES.iter().find(|(t, _)| t == rtype) {
                say(format!("{rtype} {why}"));
            }
            match rtype.as_str() {
                "google_iam_workload_identity_pool_provider" => {
                    providers += 1;
                    lint_provider(b, &subject_refs, &mut say);
                }
                "google_project_iam_member" => {
                    let role = b.attr("role").unwrap_or("");
                    match hcl::single_string(role) {
                        Some(r) if r == WIF_USER => say(format!("grants {WIF_USER} on the whole project (every service account in it); bind it on the service account only")),
                        Some(_) => {}
                        None if matches!(role, "each.value" | "each.key") => {
                            if !b.attr("for_each").is_some_and(|f| f.contains("var.roles")) {
                                say("role comes from a for_each that is not over var.roles".into());
                            }
                        }
                        None => say(format!("role {role} cannot be checked statically")),
                    }
                    let member = b
                        .attr("member")
                        .and_then(hcl::single_string)
                        .unwrap_or_default();
                    if !member.starts_with("serviceAccount:") {
                        say(format!("grants a project role to {member:?}; only to the service account (serviceAccount:…)"));
                    }
                }
                "google_service_account_iam_member" => {
                    let role = b
                        .attr("role")
                        .and_then(hcl::single_string)
                        .unwrap_or_default();
                    if role != WIF_USER {
                        say(format!(
                            "grants {role:?} on the service account; only {WIF_USER} belongs there"
                        ));
                        continue;
                    }
                    wif_bindings += 1;
                    let member = b
                        .attr("member")
                        .and_then(hcl::single_string)
                        .unwrap_or_default();
                    if !is_one_principal(&member, &projects, &pools, &subject_refs) {
                        say(format!("{WIF_USER} is bound to {member:?}; only principal://iam.googleapis.com/projects/${{data.google_project.P.number}}/locations/global/workloadIdentityPools/${{google_iam_workload_identity_pool.POOL.workload_identity_pool_id}}/subject/${{var.subject}}, with P a google_project data source of var.project_id (the number Google reports, never one typed in)"));
                    }
                }
                _ => {}
            }
        }
    }
    let module = files.first().map_or(String::new(), |(f, _)| {
        Path::new(f)
            .parent()
            .map_or(f.clone(), |p| p.display().to_string())
    });
    if providers == 0 {
        out.push(format!(
            "{module}: no google_iam_workload_identity_pool_provider"
        ));
    }
    if wif_bindings == 0 {
        out.push(format!(
            "{module}: no google_service_account_iam_member with role {WIF_USER}"
        ));
    }
    let mut need_validation = |var: &str, needle: &str, why: &str| match variables.get(var) {
        None => out.push(format!("{module}: no variable {var:?}")),
        Some((file, b)) if !validation_text(b).contains(needle) => {
            out.push(format!("{file}: variable {var:?}: {why}"));
        }
        Some(_) => {}
    };
    need_validation(
        "subject",
        SUBJECT_PATTERN,
        &format!("needs a validation with regex {SUBJECT_PATTERN}"),
    );
    need_validation(
        "project_number",
        "^[0-9]",
        "needs a validation that it is digits (the number, never the id)",
    );
    need_validation(
        "roles",
        "contains(",
        "needs a validation that every role is in the allowed list",
    );
}

fn lint_provider(b: &hcl::Block, subject_refs: &[&str], say: &mut dyn FnMut(String)) {
    match b.attr("attribute_mapping").map(hcl::map_pairs) {
        None => say(format!("no attribute_mapping ({SUBJECT_MAPPING})")),
        Some(None) => say("attribute_mapping cannot be read as a map of strings".into()),
        Some(Some(pairs)) => match pairs.iter().find(|(k, _)| k == "google.subject") {
            Some((_, v)) if v == "assertion.sub" => {}
            Some((_, v)) => say(format!(
                "attribute_mapping maps google.subject to {v:?}, not assertion.sub"
            )),
            None => say("attribute_mapping lacks \"google.subject\" = \"assertion.sub\"".into()),
        },
    }
    match b.attr("attribute_condition") {
        None => say("no attribute_condition pinning assertion.sub to var.subject: the provider would accept every token the broker mints".into()),
        Some(expr) => match hcl::single_string(expr) {
            Some(c) if pins_subject(&c, subject_refs) => {}
            _ => say(format!("attribute_condition {expr} does not pin assertion.sub to var.subject")),
        },
    }
    let mut oidc = b.blocks("oidc");
    match oidc.next() {
        Some(o) if o.attr("issuer_uri").is_some() => {}
        Some(_) => say("oidc block without issuer_uri".into()),
        None => say("no oidc block (the broker's issuer)".into()),
    }
    if b.blocks("aws").next().is_some() || b.blocks("saml").next().is_some() {
        say("trusts an aws or saml identity provider; only the broker's OIDC issuer".into());
    }
}

fn files_with(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    Ok(files)
}

/// Lints onboarding-templates/gcp (`templates_dir`): every `*.sh` gcloud script in it and
/// the Terraform module in its `terraform/` folder, against policies/gcp.json in
/// `policies_dir`; returns the findings (empty: all good). A missing script or module is a
/// finding.
///
/// # Errors
/// When policies/gcp.json is missing, malformed or lists a forbidden role, or a template
/// cannot be read or parsed.
pub fn lint(templates_dir: &Path, policies_dir: &Path) -> Result<Vec<String>, String> {
    let ceiling = load_role_ceiling(policies_dir)?;
    let mut out = Vec::new();
    let scripts = files_with(templates_dir, "sh")?;
    if scripts.is_empty() {
        out.push(format!(
            "{}: no gcloud script (*.sh)",
            templates_dir.display()
        ));
    }
    for f in scripts {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        lint_script(&f.display().to_string(), &text, &ceiling, &mut out);
    }
    let module = templates_dir.join(TERRAFORM_DIR);
    let tf = if module.is_dir() {
        files_with(&module, "tf")?
    } else {
        Vec::new()
    };
    if tf.is_empty() {
        out.push(format!(
            "{}: no Terraform module ({TERRAFORM_DIR}/*.tf)",
            templates_dir.display()
        ));
        return Ok(out);
    }
    let mut parsed = Vec::new();
    for f in tf {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let blocks = hcl::parse(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        parsed.push((f.display().to_string(), blocks));
    }
    lint_module(&parsed, &ceiling, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests;
