"""Parses a Terraform module with python-hcl2 (a real HCL2 grammar; terraform itself cannot
fetch the google provider here) and checks, independently of `credbroker lint-templates`,
that it federates exactly one subject to one read-only service account: the OIDC provider
maps google.subject=assertion.sub and its attribute condition pins assertion.sub to
var.subject; every role it names is in policies/gcp.json (never owner, editor or admin);
project roles go to the service account only and never authoritatively; and
roles/iam.workloadIdentityUser is bound on the service account to principal://…/subject/
${var.subject} alone, never a principalSet, naming the project by the number a google_project
data source of var.project_id reads and the pool the module creates.

Prints one JSON document of what it read (tests/tests/template_lint_gcp.rs compares it) and,
on stderr, one line per finding; exits 1 when there is a finding.

Works with python-hcl2 8.x (quoted strings keep their quotes) and with checkov's
bc-python-hcl2 0.4 (every value wrapped in a list).

Usage: python tests/gcp_tf_parse.py MODULE_DIR
"""

import json
import pathlib
import re
import sys

import hcl2

ROOT = pathlib.Path(__file__).resolve().parent.parent
CEILING = set(json.loads((ROOT / "policies/gcp.json").read_text())["roles"])
WIF_USER = "roles/iam.workloadIdentityUser"
SUBJECT_PATTERN = "^cb-[A-Za-z0-9]{40}$"
ROLE = re.compile(r"roles/[A-Za-z0-9_.]+")
REFUSED = {
    "google_project_iam_binding",
    "google_project_iam_policy",
    "google_service_account_iam_binding",
    "google_service_account_iam_policy",
    "google_service_account_key",
    "google_organization_iam_member",
    "google_organization_iam_binding",
    "google_organization_iam_policy",
    "google_folder_iam_member",
    "google_folder_iam_binding",
    "google_folder_iam_policy",
}


def unquote(s):
    """A string value without the quotes python-hcl2 8 keeps, escapes resolved."""
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        s = s[1:-1]
    return re.sub(r"\\(.)", r"\1", s)


def norm(v):
    """The parse tree in one shape: metadata (__comments__, __start_line__, …) dropped,
    single-value lists of attributes unwrapped (bc-python-hcl2), strings unquoted."""
    if isinstance(v, dict):
        return {unquote(k): norm(x) for k, x in v.items() if not (k.startswith("__") and k.endswith("__"))}
    if isinstance(v, list):
        return [norm(x) for x in v]
    if isinstance(v, str):
        return unquote(v)
    return v


def attr(body, name):
    """An attribute's value (bc-python-hcl2 wraps it in a one-element list)."""
    v = body.get(name)
    if isinstance(v, list) and len(v) == 1 and not isinstance(v[0], dict):
        return v[0]
    return v


def blocks(body, name):
    """The nested blocks `name` of a body, as a list of dicts."""
    v = body.get(name, [])
    return v if isinstance(v, list) else [v]


def strings(v):
    """Every string in a value (comments were dropped by the parser)."""
    if isinstance(v, dict):
        return [s for x in v.values() for s in strings(x)]
    if isinstance(v, list):
        return [s for x in v for s in strings(x)]
    return [v] if isinstance(v, str) else []


def pins_subject(cond):
    c = re.sub(r"\s", "", cond or "")
    return c in ('assertion.sub=="${var.subject}"', "assertion.sub=='${var.subject}'")


def load(module):
    resources, variables, data = [], {}, []
    files = sorted(pathlib.Path(module).glob("*.tf"))
    for f in files:
        with f.open() as fh:
            tree = norm(hcl2.load(fh))
        for group in tree.get("resource", []):
            for rtype, named in group.items():
                for name, body in named.items():
                    resources.append((f.name, rtype, name, body))
        for group in tree.get("variable", []):
            variables.update(group)
        for group in tree.get("data", []):
            for dtype, named in group.items():
                for name, body in named.items():
                    data.append((dtype, name, body))
    return files, resources, variables, data


def check(module):
    files, resources, variables, data = load(module)
    findings = []
    # The principal names the project by the number Google reports for var.project_id (a
    # google_project data source), and a pool the module creates.
    projects = [n for t, n, b in data if t == "google_project" and attr(b, "project_id") == "${var.project_id}"]
    for t, n, b in data:
        if t == "google_project" and attr(b, "project_id") != "${var.project_id}":
            findings.append(f"{module}: data google_project.{n} does not read var.project_id")
    for f in files:
        if f.name == "override.tf" or f.name.endswith("_override.tf"):
            findings.append(f"{module}: {f.name} overrides the module's blocks")
    pools = [n for _, t, n, _ in resources if t == "google_iam_workload_identity_pool"]
    members = {
        "principal://iam.googleapis.com/projects/${data.google_project.%s.number}/locations/global/workloadIdentityPools/${google_iam_workload_identity_pool.%s.workload_identity_pool_id}/subject/${var.subject}"
        % (d, p)
        for d in projects
        for p in pools
    }
    facts = {
        "files": [f.name for f in files],
        "providers": [],
        "project_roles": [],
        "workload_identity_user_members": [],
        "roles_default": None,
        "roles_allowed": [],
        "subject_validation": "",
        "project_number_validation": "",
    }
    if not files:
        findings.append(f"{module}: no .tf file")
    for fname, rtype, name, body in resources:
        where = f"{fname}: resource {rtype}.{name}"
        for role in sorted({r.rstrip(".") for s in strings(body) for r in ROLE.findall(s)}):
            if role == WIF_USER:
                continue
            if role in ("roles/owner", "roles/editor") or "admin" in role.lower():
                findings.append(f"{where}: role {role} is an owner/editor/admin role")
            if role not in CEILING:
                findings.append(f"{where}: role {role} is outside policies/gcp.json")
        if any("principalSet://" in s for s in strings(body)):
            findings.append(f"{where}: principalSet://")
        if rtype in REFUSED:
            findings.append(f"{where}: {rtype} is not allowed")
        if rtype == "google_iam_workload_identity_pool_provider":
            mapping = attr(body, "attribute_mapping")
            mapping = mapping[0] if isinstance(mapping, list) and mapping else mapping
            cond = attr(body, "attribute_condition")
            oidc = blocks(body, "oidc")
            facts["providers"].append(
                {
                    "name": name,
                    "attribute_mapping": mapping,
                    "attribute_condition": cond,
                    "issuer_uri": attr(oidc[0], "issuer_uri") if oidc else None,
                }
            )
            if not isinstance(mapping, dict) or mapping.get("google.subject") != "assertion.sub":
                findings.append(f"{where}: attribute_mapping lacks google.subject = assertion.sub")
            if not pins_subject(cond if isinstance(cond, str) else None):
                findings.append(f"{where}: attribute_condition does not pin assertion.sub to var.subject")
            if not oidc:
                findings.append(f"{where}: no oidc block")
        if rtype == "google_project_iam_member":
            role, member = attr(body, "role"), attr(body, "member")
            facts["project_roles"].append({"role": role, "for_each": attr(body, "for_each"), "member": member})
            if role == WIF_USER:
                findings.append(f"{where}: {WIF_USER} on the whole project")
            if role in ("${each.value}", "${each.key}") and "var.roles" not in str(attr(body, "for_each")):
                findings.append(f"{where}: for_each is not over var.roles")
            if not str(member).startswith("serviceAccount:"):
                findings.append(f"{where}: member {member} is not the service account")
        if rtype == "google_service_account_iam_member":
            role, member = attr(body, "role"), attr(body, "member")
            if role != WIF_USER:
                findings.append(f"{where}: grants {role} on the service account")
                continue
            facts["workload_identity_user_members"].append(member)
            if member not in members:
                findings.append(f"{where}: {WIF_USER} bound to {member}")
    if not facts["providers"]:
        findings.append(f"{module}: no google_iam_workload_identity_pool_provider")
    if not facts["workload_identity_user_members"]:
        findings.append(f"{module}: no {WIF_USER} binding")

    def validation(var):
        conds = [attr(v, "condition") for v in blocks(variables.get(var, {}), "validation")]
        return " ".join(str(c) for c in conds)

    facts["subject_validation"] = validation("subject")
    facts["project_number_validation"] = validation("project_number")
    if SUBJECT_PATTERN not in facts["subject_validation"]:
        findings.append(f"{module}: variable subject lacks the validation {SUBJECT_PATTERN}")
    if "^[0-9]" not in facts["project_number_validation"]:
        findings.append(f"{module}: variable project_number lacks a digits validation")
    roles_var = variables.get("roles", {})
    default = attr(roles_var, "default")
    facts["roles_default"] = default
    facts["roles_allowed"] = sorted({r.rstrip(".") for r in ROLE.findall(validation("roles"))})
    if not facts["roles_allowed"]:
        findings.append(f"{module}: variable roles has no validation against the allowed roles")
    for role in sorted(set(facts["roles_allowed"]) | set(default or [])):
        if role not in CEILING:
            findings.append(f"{module}: variable roles allows {role}, outside policies/gcp.json")
    return facts, findings


def main(argv):
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    facts, findings = check(argv[0])
    facts["findings"] = findings
    print(json.dumps(facts, indent=2, sort_keys=True))
    for f in findings:
        print(f, file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
