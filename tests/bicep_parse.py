"""Parses each Bicep template given with pycep-parser (a real Bicep grammar; no Bicep compiler
is obtainable here) and checks, independently of `credbroker lint-templates`, that every role
assignment gives our service principal (`principalId` parameter, principalType
ServicePrincipal) a built-in role listed in policies/azure.json, and that no template defines a
role. Exit 1 with one line per finding.

Usage: python tests/bicep_parse.py FILE.bicep...
"""

import json
import pathlib
import sys

from pycep import BicepParser

ROOT = pathlib.Path(__file__).resolve().parent.parent
ALLOWED = {
    k.lower()
    for k in json.loads((ROOT / "policies/azure.json").read_text())["arm_role_definitions"]
}


def role_id(expr, variables):
    """The role definition GUID a roleDefinitionId expression names, or None."""
    fn = expr.get("function", {}) if isinstance(expr, dict) else {}
    if fn.get("type") not in ("subscription_resource_id", "tenant_resource_id", "management_group_resource_id", "extension_resource_id"):
        return None
    params = fn.get("parameters", {})
    if params.get("resource_type") != "Microsoft.Authorization/roleDefinitions":
        return None
    name = params.get("resource_name_1") or params.get("resource_name")
    if isinstance(name, str) and name in variables:
        name = variables[name]["value"]
    return name.lower() if isinstance(name, str) else None


def check(path):
    findings = []
    tree = BicepParser().parse(text=path.read_text())
    params = tree.get("parameters", {})
    if params.get("principalId", {}).get("type") != "string":
        findings.append("no string parameter principalId")
    variables = tree.get("variables", {})
    assignments = 0
    for name, res in tree.get("resources", {}).items():
        rtype = res.get("type", "")
        config = res.get("config", {})
        if "condition" in config:
            config = config.get("config", {})
        if rtype == "Microsoft.Authorization/roleDefinitions":
            findings.append(f"resource {name}: defines a role")
        if rtype != "Microsoft.Authorization/roleAssignments":
            continue
        assignments += 1
        props = config.get("properties", {})
        if props.get("principalType") != "ServicePrincipal":
            findings.append(f"resource {name}: principalType is not ServicePrincipal")
        if props.get("principalId") != "principalId":
            findings.append(f"resource {name}: principalId is not the principalId parameter")
        role = role_id(props.get("roleDefinitionId"), variables)
        if role not in ALLOWED:
            findings.append(f"resource {name}: role {role} is not in policies/azure.json")
    if assignments == 0:
        findings.append("no role assignment")
    return [f"{path}: {f}" for f in findings]


def main(paths):
    findings = []
    for p in paths:
        findings += check(pathlib.Path(p))
    for f in findings:
        print(f)
    if not paths:
        print("no template given")
        return 1
    print(f"{len(paths)} Bicep template(s) parsed" + ("" if findings else ", OK"))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
