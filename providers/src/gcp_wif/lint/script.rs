//! The gcloud script's half of the GCP lint: the script is read as shell words of its
//! logical lines (comment lines dropped, `\` continuations joined), which is enough for the
//! flags and assignments a reviewer would look at; it is never executed.

use std::collections::{BTreeMap, BTreeSet};

use super::{check_roles, pins_subject, role_tokens, SUBJECT_MAPPING, SUBJECT_PATTERN, WIF_USER};

/// The script's logical lines: comment lines dropped, `\` continuations joined.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(line);
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Shell words of one line, quotes removed (expansions such as `${X}` kept as text).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    cur.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                cur.push(n);
                            }
                        }
                        _ => cur.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// The values of `--flag=V` and `--flag V` among `words`.
fn flag_values(words: &[String], flag: &str) -> Vec<String> {
    let eq = format!("{flag}=");
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if let Some(v) = w.strip_prefix(&eq) {
            out.push(v.trim_end_matches(')').to_owned());
        } else if w == flag {
            if let Some(v) = words.get(i + 1) {
                out.push(v.clone());
            }
        }
    }
    out
}

/// `$name` / `${name}` resolved through the script's plain assignments; anything else as is.
fn resolve(value: &str, assigned: &BTreeMap<String, String>) -> String {
    let name = value
        .strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .or_else(|| value.strip_prefix('$'));
    match name.and_then(|n| assigned.get(n)) {
        Some(v) => v.clone(),
        None => value.to_owned(),
    }
}

/// Lints the gcloud onboarding script.
pub(crate) fn lint_script(
    file: &str,
    text: &str,
    ceiling: &BTreeSet<String>,
    out: &mut Vec<String>,
) {
    let mut say = |m: String| out.push(format!("{file}: {m}"));
    let subject_refs = ["${SUBJECT}", "$SUBJECT"];
    let lines = logical_lines(text);
    let parsed: Vec<Vec<String>> = lines.iter().map(|l| words(l)).collect();

    if !lines.iter().any(|l| l.trim() == "set -euo pipefail") {
        say("does not `set -euo pipefail`".into());
    }
    // The principal names the project by number: the number given must be checked against
    // the id's before anything changes (a wrong one names a pool in somebody else's project).
    let describes = lines
        .iter()
        .any(|l| l.contains("gcloud projects describe") && l.contains("value(projectNumber)"));
    let compares = lines
        .iter()
        .any(|l| l.contains("== \"$PROJECT_NUMBER\"") || l.contains("== \"${PROJECT_NUMBER}\""));
    if !(describes && compares) {
        say("does not check PROJECT_NUMBER against `gcloud projects describe PROJECT_ID --format='value(projectNumber)'`".into());
    }
    if !lines.iter().any(|l| l.contains(SUBJECT_PATTERN)) {
        say(format!(
            "does not validate SUBJECT against {SUBJECT_PATTERN}"
        ));
    }
    if !parsed
        .iter()
        .any(|w| w.iter().any(|x| x == "create-oidc") && w.iter().any(|x| x == "providers"))
    {
        say("never runs `gcloud iam workload-identity-pools providers create-oidc`".into());
    }

    let mut assigned = BTreeMap::new();
    for w in &parsed {
        if let Some((name, value)) = w.first().and_then(|f| f.split_once('=')) {
            if w.len() == 1
                && !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                assigned.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    let mappings: Vec<String> = parsed
        .iter()
        .flat_map(|w| flag_values(w, "--attribute-mapping"))
        .collect();
    if mappings.is_empty() {
        say(format!("no --attribute-mapping={SUBJECT_MAPPING}"));
    }
    for m in mappings.iter().filter(|m| m.as_str() != SUBJECT_MAPPING) {
        say(format!(
            "--attribute-mapping {m:?} must be exactly {SUBJECT_MAPPING}"
        ));
    }
    let conditions: Vec<String> = parsed
        .iter()
        .flat_map(|w| flag_values(w, "--attribute-condition"))
        .collect();
    if conditions.is_empty() {
        say("no --attribute-condition pinning assertion.sub to $SUBJECT: the provider would accept every token the broker mints".into());
    }
    for c in conditions
        .iter()
        .filter(|c| !pins_subject(c, &subject_refs))
    {
        say(format!(
            "--attribute-condition {c:?} does not pin assertion.sub to $SUBJECT"
        ));
    }

    // The hard-coded list the script refuses other roles with.
    let allowed_start = lines.iter().position(|l| {
        let t = l.trim_start();
        t.trim_start_matches("readonly ")
            .starts_with("ALLOWED_ROLES=(")
    });
    match allowed_start {
        None => say("no hard-coded ALLOWED_ROLES=( … ) list of grantable roles".into()),
        Some(i) => {
            let mut listed = Vec::new();
            for l in lines.iter().skip(i) {
                listed.extend(role_tokens(l));
                if l.trim_end().ends_with(')') {
                    break;
                }
            }
            if listed.is_empty() {
                say("ALLOWED_ROLES lists no role".into());
            }
            if !text.contains("\"${ALLOWED_ROLES[@]}\"") {
                say("ALLOWED_ROLES is never used to refuse other roles".into());
            }
        }
    }

    let code_roles: Vec<String> = lines.iter().flat_map(|l| role_tokens(l)).collect();
    check_roles(&code_roles, ceiling, &mut say);
    if lines.iter().any(|l| l.contains("principalSet://")) {
        say("principalSet:// grants a whole set of identities; bind exactly principal://…/subject/$SUBJECT".into());
    }

    let mut wif_bindings = 0;
    for w in &parsed {
        if !w.iter().any(|x| x == "add-iam-policy-binding") {
            continue;
        }
        let roles = flag_values(w, "--role");
        let members: Vec<String> = flag_values(w, "--member")
            .iter()
            .map(|m| resolve(m, &assigned))
            .collect();
        if w.iter().any(|x| x == "service-accounts") {
            for r in roles.iter().filter(|r| r.as_str() != WIF_USER) {
                say(format!(
                    "grants {r} on the service account; only {WIF_USER} belongs there"
                ));
            }
            if roles.iter().any(|r| r == WIF_USER) {
                wif_bindings += 1;
                for m in members
                    .iter()
                    .filter(|m| !is_one_script_principal(m, &subject_refs))
                {
                    say(format!("{WIF_USER} is bound to {m}; only principal://iam.googleapis.com/projects/${{PROJECT_NUMBER}}/locations/global/workloadIdentityPools/${{POOL_ID}}/subject/${{SUBJECT}}"));
                }
            }
        } else if w.iter().any(|x| x == "projects") {
            if roles.iter().any(|r| r == WIF_USER) {
                say(format!("grants {WIF_USER} on the whole project (every service account in it); bind it on the service account only"));
            }
            for m in members.iter().filter(|m| !m.starts_with("serviceAccount:")) {
                say(format!(
                    "grants a project role to {m}; only to the service account (serviceAccount:…)"
                ));
            }
        } else {
            say(format!("binds roles beyond the project: {}", w.join(" ")));
        }
    }
    if wif_bindings == 0 {
        say(format!("no `gcloud iam service-accounts add-iam-policy-binding --role={WIF_USER}` for principal://…/subject/$SUBJECT"));
    }
}

/// The script's one federated identity: the pool it creates (`POOL_ID`) in the project whose
/// number it checked with gcloud (`PROJECT_NUMBER`, compared to `projects describe` before
/// anything changes), the subject input.
fn is_one_script_principal(member: &str, subject_refs: &[&str]) -> bool {
    subject_refs.iter().any(|s| {
        member
            == format!(
                "principal://iam.googleapis.com/projects/${{PROJECT_NUMBER}}/locations/global/workloadIdentityPools/${{POOL_ID}}/subject/{s}"
            )
    })
}
