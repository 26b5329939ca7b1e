//! The template lint of `atlassian_forge` (run by `credbroker lint-templates`): the Forge
//! manifest we ship in onboarding-templates/atlassian/ must be a manifest Forge accepts and
//! must ask for exactly the read-only scopes of policies/atlassian.json.
//!
//! Two layers. The shape is checked against the JSON schema Atlassian publishes in the npm
//! package `@forge/manifest` (tests/forge pins its version; `npm ci --prefix tests/forge`
//! installs it): a manifest `forge deploy` would refuse is a finding here, before anyone
//! deploys. The schema cannot say what is least privilege, so the policy is checked on its
//! own: the scopes equal the ceiling (nothing outside it, no `write:`/`manage:`/`delete:`
//! scope, `read:app-system-token` present), every remote URL is https and ends at the
//! broker's Forge routes (a region map needs its `default`), the hourly trigger and the
//! lifecycle events reach endpoints that carry the system token, the admin page where a site
//! administrator types the connect code calls the broker through an endpoint of its own, no
//! user token is ever asked for, and the backend egress names the broker and nothing else.
//!
//! The lint fails closed: a schema that cannot be found or read is a finding, not a skip.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::ForgeCeiling;

/// The environment variable that names the `@forge/manifest` JSON schema.
pub(crate) const SCHEMA_ENV: &str = "CREDBROKER_FORGE_MANIFEST_SCHEMA";

/// Where `npm ci --prefix tests/forge` puts the schema, relative to the repository root
/// (the directory `credbroker lint-templates` is run from when the variable is unset).
pub(crate) const SCHEMA_DEFAULT: &str =
    "tests/forge/node_modules/@forge/manifest/out/schema/manifest-schema.json";

/// The scope that makes Forge send the app's system token to the remote.
const SYSTEM_TOKEN_SCOPE: &str = "read:app-system-token";

/// Scope prefixes that change, remove or administer customer data: never in a manifest
/// (the ceiling parser refuses the same).
const FORBIDDEN_PREFIXES: &[&str] = &["write:", "manage:", "delete:", "admin:"];

/// The broker's Forge routes, relative to a remote's `baseUrl` (`https://HOST/forge`).
const ROUTE_TRIGGER: &str = "/trigger";
const ROUTE_LIFECYCLE: &str = "/lifecycle";
const ROUTE_INVOKE: &str = "/invoke";
const ROUTE_CONNECT: &str = "/connect";
const BASE_PATH: &str = "/forge";

/// Lifecycle events the broker binds and re-binds sites on.
const LIFECYCLE_EVENTS: &[&str] = &["avi:forge:installed:app", "avi:forge:upgraded:app"];

/// Loads policies/atlassian.json (the same parser the provider uses: read-only scopes,
/// `read:app-system-token` among them).
///
/// # Errors
/// When missing or malformed (the lint then fails: no ceiling, no pass).
pub(crate) fn load_forge_ceiling(policies: &Path) -> Result<ForgeCeiling, String> {
    let path = policies.join("atlassian.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    ForgeCeiling::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn forbidden_prefix(scope: &str) -> Option<&'static str> {
    FORBIDDEN_PREFIXES
        .iter()
        .copied()
        .find(|p| scope.starts_with(p))
}

/// Where the schema is read from: `$CREDBROKER_FORGE_MANIFEST_SCHEMA`, else the npm install
/// under tests/forge relative to the current directory.
pub(crate) fn schema_path() -> PathBuf {
    match std::env::var_os(SCHEMA_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(SCHEMA_DEFAULT),
    }
}

/// The compiled `@forge/manifest` schema.
pub(crate) struct ManifestSchema(jsonschema::Validator);

impl ManifestSchema {
    /// Reads and compiles the schema at `path`. Remote `$ref`s are never fetched (the crate
    /// is built without its HTTP resolver): the schema is self-contained.
    ///
    /// # Errors
    /// When the file is missing, unreadable, not JSON or not a valid draft-07 schema; the
    /// message says how to install it.
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        let hint = "run `npm ci --prefix tests/forge` (tests/run does)";
        let text = std::fs::read(path)
            .map_err(|e| format!("schema not found at {} ({e}): {hint}", path.display()))?;
        let doc: Value = serde_json::from_slice(&text)
            .map_err(|e| format!("schema at {} is not JSON ({e}): {hint}", path.display()))?;
        let validator = jsonschema::draft7::new(&doc).map_err(|e| {
            format!(
                "schema at {} does not compile ({e}): {hint}",
                path.display()
            )
        })?;
        Ok(Self(validator))
    }

    /// Every place `manifest` breaks the schema, as `schema: /pointer: message`.
    pub(crate) fn violations(&self, manifest: &Value) -> Vec<String> {
        self.0
            .iter_errors(manifest)
            .map(|e| {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() { "/".to_owned() } else { at };
                format!("schema: {at}: {e}")
            })
            .collect()
    }
}

/// Parses a manifest's YAML into JSON values (duplicate keys are an error: a second
/// `scopes:` must not hide the first).
///
/// # Errors
/// When the text is not YAML or a key is not a string.
pub(crate) fn parse_manifest(text: &str) -> Result<Value, String> {
    serde_saphyr::from_str::<Value>(text).map_err(|e| e.to_string())
}

/// The host of an `https://HOST/...` URL or of a bare `HOST`, lower-cased.
fn host_of(url: &str) -> String {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.to_ascii_lowercase()
}

/// One remote of the manifest: its key and every URL it may be invoked at (one, or one per
/// region).
struct Remote {
    key: String,
    urls: Vec<String>,
}

/// One endpoint: which remote, which route, whether the system token is sent.
struct Endpoint {
    path: Option<String>,
    system_token: bool,
}

fn token_enabled(auth: Option<&Value>, which: &str) -> bool {
    auth.and_then(|a| a.get(which))
        .and_then(|t| t.get("enabled"))
        .and_then(Value::as_bool)
        == Some(true)
}

fn items<'a>(m: &'a Value, ptr: &str) -> &'a [Value] {
    m.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The scopes of `permissions.scopes`, in either form the schema allows (a list, or an
/// object keyed by scope).
fn declared_scopes(m: &Value) -> Option<Vec<String>> {
    match m.pointer("/permissions/scopes")? {
        Value::Array(a) => Some(
            a.iter()
                .map(|s| match s {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
        ),
        Value::Object(o) => Some(o.keys().cloned().collect()),
        _ => None,
    }
}

fn lint_scopes(m: &Value, ceiling: &ForgeCeiling, say: &mut dyn FnMut(String)) {
    let Some(scopes) = declared_scopes(m) else {
        say("permissions.scopes is missing (it must list exactly the scopes of policies/atlassian.json)".into());
        return;
    };
    let mut seen = BTreeSet::new();
    for s in &scopes {
        if !seen.insert(s.as_str()) {
            say(format!("scope {s} is declared twice"));
        }
        if let Some(p) = forbidden_prefix(s) {
            say(format!(
                "scope {s} is a {p} scope: the app is read-only (no write:, manage:, delete: or admin: scope)"
            ));
        }
        if !ceiling.scopes.contains(s) {
            say(format!("scope {s} is outside policies/atlassian.json"));
        }
    }
    if !seen.contains(SYSTEM_TOKEN_SCOPE) {
        say(format!(
            "scope {SYSTEM_TOKEN_SCOPE} is missing (without it Forge sends the broker no system token)"
        ));
    }
    for s in &ceiling.scopes {
        if s != SYSTEM_TOKEN_SCOPE && !seen.contains(s.as_str()) {
            say(format!(
                "scope {s} of policies/atlassian.json is not declared (the manifest declares exactly the ceiling)"
            ));
        }
    }
}

fn lint_remotes(m: &Value, say: &mut dyn FnMut(String)) -> Vec<Remote> {
    let mut remotes = Vec::new();
    let list = items(m, "/remotes");
    if list.is_empty() {
        say("remotes is missing (the broker is the app's remote)".into());
    }
    for r in list {
        let key = r
            .get("key")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let mut urls = Vec::new();
        match r.get("baseUrl") {
            Some(Value::String(u)) => urls.push(("baseUrl".to_owned(), u.clone())),
            Some(Value::Object(regions)) => {
                if !regions.contains_key("default") {
                    say(format!(
                        "remote {key}: baseUrl has no `default` (sites in regions not listed need one)"
                    ));
                }
                for (region, u) in regions {
                    match u.as_str() {
                        Some(u) => urls.push((format!("baseUrl.{region}"), u.to_owned())),
                        None => say(format!("remote {key}: baseUrl.{region} is not a string")),
                    }
                }
            }
            Some(_) => say(format!(
                "remote {key}: baseUrl must be a URL or a map of region to URL"
            )),
            None => say(format!("remote {key}: baseUrl is missing")),
        }
        for (at, u) in &urls {
            if !u.starts_with("https://") || host_of(u).is_empty() {
                say(format!("remote {key}: {at} {u:?} must be https"));
            } else if !u.trim_end_matches('/').ends_with(BASE_PATH) {
                say(format!(
                    "remote {key}: {at} {u:?} must end with {BASE_PATH} (the broker's Forge routes)"
                ));
            }
        }
        if token_enabled(r.get("auth"), "appUserToken") {
            say(format!(
                "remote {key}: auth.appUserToken is enabled (the broker never takes user tokens)"
            ));
        }
        remotes.push(Remote {
            key,
            urls: urls.into_iter().map(|(_, u)| u).collect(),
        });
    }
    remotes
}

/// The endpoints UI modules call (`resolver.endpoint`): their paths come from the page's
/// `invokeRemote`, not from a route.
fn ui_endpoints(m: &Value) -> BTreeSet<String> {
    items(m, "/modules/jira:adminPage")
        .iter()
        .filter_map(|p| p.pointer("/resolver/endpoint").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

fn lint_endpoints(
    m: &Value,
    remotes: &[Remote],
    say: &mut dyn FnMut(String),
) -> BTreeMap<String, Endpoint> {
    let mut endpoints = BTreeMap::new();
    let ui = ui_endpoints(m);
    for e in items(m, "/modules/endpoint") {
        let key = e
            .get("key")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        match e.get("remote").and_then(Value::as_str) {
            Some(r) if remotes.iter().any(|x| x.key == r) => {}
            Some(r) => say(format!(
                "endpoint {key}: remote {r} is not declared in remotes"
            )),
            None => say(format!(
                "endpoint {key}: no remote (the broker serves every endpoint)"
            )),
        }
        let path = e.pointer("/route/path").and_then(Value::as_str);
        match path {
            _ if ui.contains(&key) => {
                if let Some(p) = path {
                    say(format!(
                        "endpoint {key}: the admin page's endpoint has route.path {p:?} (the page names {ROUTE_CONNECT} in its invokeRemote call)"
                    ));
                }
            }
            Some(ROUTE_TRIGGER | ROUTE_LIFECYCLE | ROUTE_INVOKE) => {}
            Some(p) => say(format!(
                "endpoint {key}: route.path {p:?} is not a broker route ({ROUTE_TRIGGER}, {ROUTE_LIFECYCLE}, {ROUTE_INVOKE})"
            )),
            None => say(format!("endpoint {key}: route.path is missing")),
        }
        if token_enabled(e.get("auth"), "appUserToken") {
            say(format!(
                "endpoint {key}: auth.appUserToken is enabled (the broker never takes user tokens)"
            ));
        }
        endpoints.insert(
            key,
            Endpoint {
                path: path.map(str::to_owned),
                system_token: token_enabled(e.get("auth"), "appSystemToken"),
            },
        );
    }
    if !endpoints.values().any(|e| e.system_token) {
        say("no endpoint has auth.appSystemToken.enabled: true (the broker receives tokens only that way)".into());
    }
    endpoints
}

/// Whether `key` names an endpoint on `route` that carries the system token; otherwise the
/// reason it does not.
fn check_target(
    endpoints: &BTreeMap<String, Endpoint>,
    key: &str,
    route: &str,
) -> Result<(), String> {
    let e = endpoints
        .get(key)
        .ok_or_else(|| format!("endpoint {key} is not declared"))?;
    if !e.system_token {
        return Err(format!(
            "endpoint {key} lacks auth.appSystemToken.enabled: true"
        ));
    }
    if e.path.as_deref() != Some(route) {
        return Err(format!("endpoint {key} does not route to {route}"));
    }
    Ok(())
}

fn lint_scheduled(m: &Value, endpoints: &BTreeMap<String, Endpoint>, say: &mut dyn FnMut(String)) {
    let mut hourly = false;
    for t in items(m, "/modules/scheduledTrigger") {
        let key = t.get("key").and_then(Value::as_str).unwrap_or("?");
        let Some(target) = t.get("endpoint").and_then(Value::as_str) else {
            say(format!(
                "scheduledTrigger {key}: targets no endpoint (the broker is invoked directly)"
            ));
            continue;
        };
        match check_target(endpoints, target, ROUTE_TRIGGER) {
            Ok(()) if t.get("interval").and_then(Value::as_str) == Some("hour") => hourly = true,
            Ok(()) => {}
            Err(why) => say(format!("scheduledTrigger {key}: {why}")),
        }
    }
    if !hourly {
        say(format!(
            "no scheduledTrigger with interval: hour targets an endpoint on {ROUTE_TRIGGER} with the system token (system tokens live at most 4 h: the hourly trigger keeps one fresh)"
        ));
    }
}

fn lint_lifecycle(m: &Value, endpoints: &BTreeMap<String, Endpoint>, say: &mut dyn FnMut(String)) {
    let mut covered = BTreeSet::new();
    for t in items(m, "/modules/trigger") {
        let key = t.get("key").and_then(Value::as_str).unwrap_or("?");
        let events: Vec<&str> = items(t, "/events")
            .iter()
            .filter_map(|e| e.as_str().or_else(|| e.get("eventType")?.as_str()))
            .collect();
        let lifecycle: Vec<&str> = events
            .iter()
            .copied()
            .filter(|e| LIFECYCLE_EVENTS.contains(e))
            .collect();
        if lifecycle.is_empty() {
            continue;
        }
        let Some(target) = t.get("endpoint").and_then(Value::as_str) else {
            say(format!(
                "trigger {key}: lifecycle events must target an endpoint, not a function"
            ));
            continue;
        };
        match check_target(endpoints, target, ROUTE_LIFECYCLE) {
            Ok(()) => covered.extend(lifecycle),
            Err(why) => say(format!("trigger {key}: {why}")),
        }
    }
    for ev in LIFECYCLE_EVENTS {
        if !covered.contains(ev) {
            say(format!(
                "no trigger sends {ev} to an endpoint on {ROUTE_LIFECYCLE} with the system token (the broker binds the site on it)"
            ));
        }
    }
}

/// The admin page a site administrator types the connect code on: the only proof the broker
/// takes that a site is the tenant's. It must exist, with its resource, and call the broker
/// through an endpoint that sends the system token.
fn lint_connect_page(
    m: &Value,
    endpoints: &BTreeMap<String, Endpoint>,
    say: &mut dyn FnMut(String),
) {
    use super::CONNECT_MODULE_KEY as KEY;
    let Some(page) = items(m, "/modules/jira:adminPage")
        .iter()
        .find(|p| p.get("key").and_then(Value::as_str) == Some(KEY))
    else {
        say(format!(
            "no jira:adminPage {KEY} (where a site administrator types the connect code: the broker binds a site only on it)"
        ));
        return;
    };
    match page.pointer("/resolver/endpoint").and_then(Value::as_str) {
        Some(target) => match endpoints.get(target) {
            Some(e) if e.system_token => {}
            Some(_) => say(format!(
                "jira:adminPage {KEY}: endpoint {target} lacks auth.appSystemToken.enabled: true"
            )),
            None => say(format!(
                "jira:adminPage {KEY}: endpoint {target} is not declared"
            )),
        },
        None => say(format!(
            "jira:adminPage {KEY}: no resolver.endpoint (the page calls the broker directly)"
        )),
    }
    let resource = page.get("resource").and_then(Value::as_str);
    let declared = items(m, "/resources")
        .iter()
        .any(|r| r.get("key").and_then(Value::as_str) == resource && resource.is_some());
    if !declared {
        say(format!(
            "jira:adminPage {KEY}: its resource is not declared in resources"
        ));
    }
}

fn lint_egress(m: &Value, remotes: &[Remote], say: &mut dyn FnMut(String)) {
    let Some(backend) = m
        .pointer("/permissions/external/fetch/backend")
        .and_then(Value::as_array)
    else {
        say("permissions.external.fetch.backend is missing (declare the broker as the app's only egress)".into());
        return;
    };
    let mut named_remotes = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    for entry in backend {
        let address = match entry {
            Value::String(s) => Some(s.as_str()),
            Value::Object(o) => o.get("address").and_then(Value::as_str),
            _ => None,
        };
        if let Some(r) = entry.get("remote").and_then(Value::as_str) {
            if remotes.iter().any(|x| x.key == r) {
                named_remotes.insert(r.to_owned());
            } else {
                say(format!(
                    "backend egress names remote {r}, which is not declared"
                ));
            }
        } else if let Some(a) = address {
            let h = host_of(a);
            let broker = remotes
                .iter()
                .flat_map(|r| &r.urls)
                .any(|u| host_of(u) == h);
            if broker {
                hosts.insert(h);
            } else {
                say(format!("backend egress {a:?} is not a broker remote (the app talks to the broker only)"));
            }
        } else {
            say(format!(
                "backend egress entry {entry} names no remote or address"
            ));
        }
    }
    for r in remotes {
        if named_remotes.contains(&r.key) {
            continue;
        }
        for u in &r.urls {
            if !hosts.contains(&host_of(u)) {
                say(format!(
                    "permissions.external.fetch.backend does not declare remote {} ({u})",
                    r.key
                ));
            }
        }
    }
}

/// The app id: `ari:cloud:ecosystem::app/{uuid}` (the FIT `aud`). The shipped template
/// holds the nil UUID as a placeholder the operator replaces.
fn lint_app_id(m: &Value, say: &mut dyn FnMut(String)) {
    let id = m.pointer("/app/id").and_then(Value::as_str).unwrap_or("");
    let uuid = id.strip_prefix("ari:cloud:ecosystem::app/").unwrap_or("");
    let shaped = uuid.len() == 36
        && uuid.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if !shaped {
        say(format!(
            "app.id {id:?} must be ari:cloud:ecosystem::app/{{uuid}} (the id `forge register` gives)"
        ));
    }
}

/// Lints one parsed Forge manifest against the ceiling (and the schema, when there is one).
pub(crate) fn lint_forge_manifest(
    file: &str,
    m: &Value,
    ceiling: &ForgeCeiling,
    schema: Option<&ManifestSchema>,
    out: &mut Vec<String>,
) {
    let mut say = |msg: String| out.push(format!("{file}: {msg}"));
    if let Some(schema) = schema {
        for v in schema.violations(m) {
            say(v);
        }
    }
    lint_app_id(m, &mut say);
    lint_scopes(m, ceiling, &mut say);
    let remotes = lint_remotes(m, &mut say);
    let endpoints = lint_endpoints(m, &remotes, &mut say);
    lint_scheduled(m, &endpoints, &mut say);
    lint_lifecycle(m, &endpoints, &mut say);
    lint_connect_page(m, &endpoints, &mut say);
    lint_egress(m, &remotes, &mut say);
}

/// Lints every Forge manifest (`*.yml`, `*.yaml`) in `dir` (onboarding-templates/atlassian)
/// against the `@forge/manifest` schema and policies/atlassian.json; returns the findings
/// (empty: all good). A schema that cannot be loaded is a finding: the lint fails closed.
///
/// # Errors
/// When the policy file or a manifest cannot be read or parsed.
pub(crate) fn lint(dir: &Path, policies: &Path) -> Result<Vec<String>, String> {
    let ceiling = load_forge_ceiling(policies)?;
    let mut manifests: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    manifests.sort();
    let mut out = Vec::new();
    if manifests.is_empty() {
        out.push(format!("{}: no manifest", dir.display()));
    }
    let schema = match ManifestSchema::load(&schema_path()) {
        Ok(s) => Some(s),
        Err(e) => {
            out.push(format!("{}: {e}", dir.display()));
            None
        }
    };
    for f in manifests {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let doc = parse_manifest(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        lint_forge_manifest(
            &f.display().to_string(),
            &doc,
            &ceiling,
            schema.as_ref(),
            &mut out,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
