//! The template lint of `entra_multi_tenant` (run by `credbroker lint-templates`): the Bicep
//! we ship in onboarding-templates/azure/ may assign our service principal only roles in
//! policies/azure.json.
//!
//! No Bicep compiler is obtainable here, so the lint reads the source: every GUID literal in
//! a `.bicep` file outside comments must be a role definition id of the ceiling (the
//! templates hold no other GUIDs: the principal and scopes are parameters), every role
//! assignment must say `principalType: 'ServicePrincipal'`, and no template may define a
//! custom role. tests/run also parses the files with `pycep-parser` and scans them with
//! `checkov`.

use std::path::Path;

use super::ceiling::{AzureCeiling, FORBIDDEN_ROLES};
use super::claims::guid;

/// Loads policies/azure.json.
///
/// # Errors
/// When missing or malformed (the lint then fails: no ceiling, no pass).
pub fn load_azure_ceiling(policies: &Path) -> Result<AzureCeiling, String> {
    let path = policies.join("azure.json");
    let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    AzureCeiling::from_value(&v).map_err(|e| format!("{}: {e}", path.display()))
}

/// The source without `//` and `/* */` comments (string literals kept; Bicep strings use
/// single quotes and `\'` escapes).
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut chars = src.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else if c == '\'' {
                in_string = false;
            }
            continue;
        }
        match (c, chars.peek()) {
            ('\'', _) => {
                in_string = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut prev = ' ';
                for n in chars.by_ref() {
                    if prev == '*' && n == '/' {
                        break;
                    }
                    prev = n;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every GUID-shaped token in `text`.
fn guids(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i + 36 <= bytes.len() {
        let boundary_before = i == 0 || !bytes[i - 1].is_ascii_hexdigit();
        let boundary_after = i + 36 == bytes.len() || !bytes[i + 36].is_ascii_hexdigit();
        if boundary_before && boundary_after {
            if let Some(g) = text.get(i..i + 36).and_then(guid) {
                found.push(g);
                i += 36;
                continue;
            }
        }
        i += 1;
    }
    found
}

/// Lints one Bicep source.
pub fn lint_bicep(file: &str, src: &str, ceiling: &AzureCeiling, out: &mut Vec<String>) {
    let code = strip_comments(src);
    let mut say = |m: String| out.push(format!("{file}: {m}"));
    for g in guids(&code) {
        if let Some((_, name)) = FORBIDDEN_ROLES.iter().find(|(f, _)| *f == g) {
            say(format!("role {g} ({name}) writes or grants access"));
        } else if !ceiling.arm_roles.contains_key(&g) {
            say(format!(
                "GUID {g} is not a role definition in policies/azure.json (only the ceiling's role ids may appear)"
            ));
        }
    }
    for (n, line) in code.lines().enumerate() {
        let l = line.trim();
        if l.starts_with("resource ") && l.contains("Microsoft.Authorization/roleDefinitions@") {
            say(format!(
                "line {}: defines a custom role (only built-in read roles of the ceiling)",
                n + 1
            ));
        }
        for word in ["'Owner'", "'Contributor'", "'User Access Administrator'"] {
            if l.contains(word) {
                say(format!("line {}: names the role {word}", n + 1));
            }
        }
    }
    // Every roleDefinitionId names a literal role id or a `var` bound to one: a parameter
    // would let whoever deploys choose any role.
    let role_vars: Vec<&str> = code
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("var ")?;
            let (name, value) = rest.split_once('=')?;
            let value = value.trim().trim_matches('\'');
            guid(value).map(|_| name.trim())
        })
        .collect();
    for (n, line) in code.lines().enumerate() {
        let Some((_, expr)) = line.split_once("roleDefinitionId:") else {
            continue;
        };
        let last = expr
            .trim()
            .trim_end_matches(')')
            .rsplit([',', '('])
            .next()
            .unwrap_or("")
            .trim();
        let literal = last.starts_with('\'') && guid(last.trim_matches('\'')).is_some();
        if !literal && !role_vars.contains(&last) {
            say(format!(
                "line {}: roleDefinitionId must name a role id literal or a var bound to one, not {last:?}",
                n + 1
            ));
        }
    }
    let assignments = code
        .matches("Microsoft.Authorization/roleAssignments@")
        .count();
    let typed = code
        .lines()
        .filter(|l| {
            let l = l.trim().replace(' ', "");
            l == "principalType:'ServicePrincipal'"
        })
        .count();
    if assignments == 0 {
        say("assigns no role (expected Microsoft.Authorization/roleAssignments)".into());
    }
    if typed < assignments {
        say(format!(
            "{assignments} role assignment(s) but {typed} principalType: 'ServicePrincipal' (required: the principal is our service principal, assigned before replication)"
        ));
    }
    if !code.contains("param principalId string") {
        say("no `param principalId string` (the service principal object id the broker shows after consent)".into());
    }
}

/// Lints every `.bicep` file in `dir` (onboarding-templates/azure) against
/// policies/azure.json; returns the findings (empty: all good).
///
/// # Errors
/// When the policy file or a template cannot be read.
pub fn lint(dir: &Path, policies: &Path) -> Result<Vec<String>, String> {
    let ceiling = load_azure_ceiling(policies)?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "bicep"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    if files.is_empty() {
        out.push(format!("{}: no Bicep template", dir.display()));
    }
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        lint_bicep(&f.display().to_string(), &text, &ceiling, &mut out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_chosen_by_parameter_is_refused() {
        let ceiling = AzureCeiling::from_value(
            &serde_json::from_str(include_str!("../../../policies/azure.json")).unwrap(),
        )
        .unwrap();
        let src = "param principalId string\nparam roleId string\nresource r 'Microsoft.Authorization/roleAssignments@2022-04-01' = {\n  name: guid(principalId)\n  properties: {\n    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)\n    principalId: principalId\n    principalType: 'ServicePrincipal'\n  }\n}\n";
        let mut out = Vec::new();
        lint_bicep("t.bicep", src, &ceiling, &mut out);
        assert!(out.iter().any(|f| f.contains("not \"roleId\"")), "{out:?}");
    }

    #[test]
    fn comments_do_not_hide_or_add_roles() {
        let src = "// Owner is 8e3af657-a8ff-443c-a75c-2fe8c4bcb635\nvar x = 'a//b' /* b24988ac-6180-42a0-ab88-20f7382dd24c */\n";
        let code = strip_comments(src);
        assert!(guids(&code).is_empty(), "{code}");
        assert!(code.contains("'a//b'"));
        assert_eq!(
            guids("x'acdd72a7-3385-48ef-bd42-f606fba81ae7'y"),
            vec!["acdd72a7-3385-48ef-bd42-f606fba81ae7"]
        );
    }
}
