//! The template lint of `github_app` (run by `credbroker lint-templates`): the App manifest
//! we ship in onboarding-templates/github/ must stay within policies/github.json.

use std::path::Path;

use serde_json::Value;

use super::{parse_permissions, GithubCeiling};

/// Loads policies/github.json.
///
/// # Errors
/// When missing or malformed (the lint then fails: no ceiling, no pass).
pub fn load_github_ceiling(policies: &Path) -> Result<GithubCeiling, String> {
    let path = policies.join("github.json");
    let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    GithubCeiling::from_value(&v).map_err(|e| format!("{}: {e}", path.display()))
}

/// Lints a GitHub App manifest: default permissions within policies/github.json (names valid,
/// levels not higher), every URL https, the webhook and setup URLs on the broker's callback
/// paths, and OAuth-on-install requested (`request_oauth_on_install: true`: the broker proves
/// who installed with the user's one-time code).
pub fn lint_github_manifest(file: &str, m: &Value, ceiling: &GithubCeiling, out: &mut Vec<String>) {
    let mut say = |msg: String| out.push(format!("{file}: {msg}"));
    match m.get("default_permissions").map(parse_permissions) {
        Some(Ok(p)) => {
            for (name, level) in &p {
                match ceiling.permissions.get(name) {
                    Some(max) if level <= max => {}
                    Some(max) => say(format!(
                        "permission {name}: {} exceeds policies/github.json ({})",
                        level.as_str(),
                        max.as_str()
                    )),
                    None => say(format!("permission {name} is outside policies/github.json")),
                }
            }
        }
        Some(Err(e)) => say(format!("default_permissions: {e}")),
        None => say("default_permissions is missing".into()),
    }
    for (ptr, suffix) in [
        ("/url", None),
        (
            "/hook_attributes/url",
            Some("/callbacks/github_app/webhook"),
        ),
        ("/setup_url", Some("/callbacks/github_app/setup")),
        ("/redirect_url", None),
    ] {
        match m.pointer(ptr).and_then(Value::as_str) {
            Some(u) if !u.starts_with("https://") => say(format!("{ptr} must be https")),
            Some(u) => {
                if let Some(sfx) = suffix {
                    if !u.ends_with(sfx) {
                        say(format!("{ptr} must end with {sfx}"));
                    }
                }
            }
            None => say(format!("{ptr} is missing")),
        }
    }
    // GitHub's guidance for setup URLs: anyone can hit them with a spoofed installation_id.
    // The App must ask the installer to authorize it, so the broker can prove who installed
    // (the code exchange and GET /user/installations).
    if m.get("request_oauth_on_install") != Some(&Value::Bool(true)) {
        say("request_oauth_on_install must be true (the broker proves who installed with the installer's authorization code)".into());
    }
    // The broker acts only on `installation` events, which GitHub sends every App without a
    // subscription: any event subscribed is a customer's activity pushed to the public
    // listener for nothing (and delivered signed at will by anyone who installs the App).
    match m.get("default_events") {
        None => {}
        Some(Value::Array(events)) if events.is_empty() => {}
        Some(Value::Array(events)) => say(format!(
            "default_events must be empty (the broker acts only on installation events, sent to every App unsubscribed): {}",
            events
                .iter()
                .map(|e| e.as_str().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Some(_) => say("default_events must be an array".into()),
    }
    let callbacks: Vec<&str> = m
        .get("callback_urls")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if callbacks.is_empty() {
        say("callback_urls is missing (GitHub sends the installer there with the code)".into());
    }
    for u in callbacks {
        if !u.starts_with("https://") || !u.ends_with("/callbacks/github_app/setup") {
            say(format!(
                "callback_urls entry {u:?} must be https and end with /callbacks/github_app/setup"
            ));
        }
    }
}

/// Lints every App manifest in `dir` (onboarding-templates/github) against
/// policies/github.json; returns the findings (empty: all good).
///
/// # Errors
/// When the policy file or a manifest cannot be read or parsed.
pub fn lint(dir: &Path, policies: &Path) -> Result<Vec<String>, String> {
    let ceiling = load_github_ceiling(policies)?;
    let mut manifests: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    manifests.sort();
    let mut out = Vec::new();
    if manifests.is_empty() {
        out.push(format!("{}: no manifest", dir.display()));
    }
    for f in manifests {
        let text = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let doc: Value =
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        lint_github_manifest(&f.display().to_string(), &doc, &ceiling, &mut out);
    }
    Ok(out)
}
