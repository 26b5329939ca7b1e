//! Unit tests of the Forge manifest lint (policy checks on inline manifests; the schema check
//! runs in tests/tests/template_lint_atlassian.rs with the npm package's schema).

use super::*;

const SHIPPED: &str = include_str!("../../../../onboarding-templates/atlassian/manifest.yml");
const BAD: &str = include_str!("../../../../tests/fixtures/atlassian/bad-manifest.yml");

fn ceiling() -> ForgeCeiling {
    ForgeCeiling::parse(include_str!("../../../../policies/atlassian.json")).unwrap()
}

fn findings(yaml: &str) -> Vec<String> {
    let mut out = Vec::new();
    lint_forge_manifest(
        "manifest.yml",
        &parse_manifest(yaml).unwrap(),
        &ceiling(),
        None,
        &mut out,
    );
    out
}

fn has(out: &[String], needle: &str) -> bool {
    out.iter().any(|f| f.contains(needle))
}

#[test]
fn the_shipped_manifest_meets_the_policy() {
    let out = findings(SHIPPED);
    assert!(out.is_empty(), "{out:#?}");
}

#[test]
fn the_shipped_ceiling_is_read_only_and_carries_the_system_token() {
    let c = ceiling();
    assert!(c.scopes.contains(SYSTEM_TOKEN_SCOPE));
    assert!(
        c.scopes.iter().all(|s| forbidden_prefix(s).is_none()),
        "{c:?}"
    );
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"));
    assert_eq!(load_forge_ceiling(dir).unwrap(), c);
    assert!(load_forge_ceiling(Path::new("/nonexistent")).is_err());
}

#[test]
fn the_bad_fixture_fails_on_every_count() {
    let out = findings(BAD);
    for expected in [
        "scope write:jira-work is a write: scope",
        "scope write:jira-work is outside policies/atlassian.json",
        "scope read:app-system-token is missing",
        "scope read:audit-log:jira of policies/atlassian.json is not declared",
        "remote broker: baseUrl.EU \"http://eu.broker.example.com/forge\" must be https",
        "no endpoint has auth.appSystemToken.enabled: true",
        "scheduledTrigger broker-token-refresh: endpoint broker-trigger lacks auth.appSystemToken",
        "no scheduledTrigger with interval: hour",
        "no trigger sends avi:forge:installed:app",
        "permissions.external.fetch.backend is missing",
    ] {
        assert!(has(&out, expected), "missing {expected:?} in {out:#?}");
    }
}

#[test]
fn a_scope_beyond_the_ceiling_fails_even_when_read_only() {
    let yaml = SHIPPED.replace(
        "- read:jira-user",
        "- read:jira-user\n    - read:confluence-content.all",
    );
    let out = findings(&yaml);
    assert!(
        has(&out, "scope read:confluence-content.all is outside"),
        "{out:#?}"
    );
    assert_eq!(out.len(), 1, "{out:#?}");
}

#[test]
fn scopes_in_object_form_are_checked_too() {
    let mut doc = parse_manifest(SHIPPED).unwrap();
    let mut scopes = serde_json::Map::new();
    for s in ceiling()
        .scopes
        .iter()
        .map(String::as_str)
        .chain(["manage:jira-webhook"])
    {
        scopes.insert(s.to_owned(), serde_json::json!({}));
    }
    doc["permissions"]["scopes"] = Value::Object(scopes);
    let mut out = Vec::new();
    lint_forge_manifest("manifest.yml", &doc, &ceiling(), None, &mut out);
    assert!(
        has(&out, "scope manage:jira-webhook is a manage: scope"),
        "{out:#?}"
    );
    assert!(
        has(&out, "scope manage:jira-webhook is outside"),
        "{out:#?}"
    );
    assert_eq!(out.len(), 2, "{out:#?}");
}

#[test]
fn a_region_map_needs_a_default_and_https_everywhere() {
    let yaml = SHIPPED
        .replace("      default: https://broker.example.com/forge\n", "")
        .replace("US: https://us.broker", "US: http://us.broker");
    let out = findings(&yaml);
    assert!(has(&out, "baseUrl has no `default`"), "{out:#?}");
    assert!(
        has(
            &out,
            "baseUrl.US \"http://us.broker.example.com/forge\" must be https"
        ),
        "{out:#?}"
    );
}

#[test]
fn a_single_base_url_must_be_https_and_end_at_the_forge_routes() {
    let base = "    baseUrl:\n      default: https://broker.example.com/forge\n      EU: https://eu.broker.example.com/forge\n      US: https://us.broker.example.com/forge\n";
    assert!(SHIPPED.contains(base));
    let out = findings(&SHIPPED.replace(base, "    baseUrl: https://broker.example.com/forge\n"));
    assert!(out.is_empty(), "{out:#?}");
    let out = findings(&SHIPPED.replace(base, "    baseUrl: http://broker.example.com/forge\n"));
    assert!(
        has(
            &out,
            "baseUrl \"http://broker.example.com/forge\" must be https"
        ),
        "{out:#?}"
    );
    let out = findings(&SHIPPED.replace(base, "    baseUrl: https://broker.example.com/\n"));
    assert!(has(&out, "must end with /forge"), "{out:#?}");
}

#[test]
fn the_hourly_trigger_must_carry_the_system_token() {
    let yaml = SHIPPED.replacen(
        "        path: /trigger\n      auth:\n        appSystemToken:\n          enabled: true\n",
        "        path: /trigger\n      auth:\n        appSystemToken:\n          enabled: false\n",
        1,
    );
    assert_ne!(yaml, SHIPPED);
    let out = findings(&yaml);
    assert!(
        has(&out, "endpoint broker-trigger lacks auth.appSystemToken"),
        "{out:#?}"
    );
    assert!(
        has(&out, "no scheduledTrigger with interval: hour"),
        "{out:#?}"
    );
    let out = findings(&SHIPPED.replace("interval: hour", "interval: day"));
    assert!(
        has(&out, "no scheduledTrigger with interval: hour"),
        "{out:#?}"
    );
}

#[test]
fn the_connect_page_must_be_there_and_reach_the_broker_with_the_system_token() {
    // No page: nothing could ever bind a site.
    let start = SHIPPED.find("  jira:adminPage:\n").unwrap();
    let end = SHIPPED.find("  endpoint:\n").unwrap();
    let without = format!("{}{}", &SHIPPED[..start], &SHIPPED[end..]);
    let out = findings(&without);
    assert!(
        has(&out, "no jira:adminPage credbroker-connect"),
        "{out:#?}"
    );
    // The page under another key is not the page the broker takes codes from.
    let out = findings(&SHIPPED.replace("- key: credbroker-connect", "- key: credbroker-settings"));
    assert!(
        has(&out, "no jira:adminPage credbroker-connect"),
        "{out:#?}"
    );
    // Its endpoint without the system token, or with a route of its own.
    let yaml = SHIPPED.replacen(
        "      remote: broker\n      auth:\n        appSystemToken:\n          enabled: true\n",
        "      remote: broker\n      auth:\n        appSystemToken:\n          enabled: false\n",
        1,
    );
    assert_ne!(yaml, SHIPPED);
    let out = findings(&yaml);
    assert!(
        has(
            &out,
            "jira:adminPage credbroker-connect: endpoint broker-connect lacks auth.appSystemToken"
        ),
        "{out:#?}"
    );
    let yaml = SHIPPED.replacen(
        "    - key: broker-connect\n      remote: broker\n",
        "    - key: broker-connect\n      remote: broker\n      route:\n        path: /trigger\n",
        1,
    );
    assert_ne!(yaml, SHIPPED);
    let out = findings(&yaml);
    assert!(
        has(&out, "the admin page's endpoint has route.path"),
        "{out:#?}"
    );
    // Its resource undeclared, or no resolver.
    let out = findings(&SHIPPED.replace("  - key: connect-page\n", "  - key: other-page\n"));
    assert!(has(&out, "its resource is not declared"), "{out:#?}");
    let out = findings(&SHIPPED.replace("      resolver:\n        endpoint: broker-connect\n", ""));
    assert!(has(&out, "no resolver.endpoint"), "{out:#?}");
    // The shipped manifest has none of these.
    assert!(findings(SHIPPED).is_empty());
}

#[test]
fn lifecycle_events_must_reach_the_lifecycle_route() {
    let out = findings(&SHIPPED.replace("        - avi:forge:installed:app\n", ""));
    assert!(
        has(&out, "no trigger sends avi:forge:installed:app"),
        "{out:#?}"
    );
    assert!(!has(&out, "avi:forge:upgraded:app"), "{out:#?}");
    let out =
        findings(&SHIPPED.replace("endpoint: broker-lifecycle\n", "endpoint: broker-trigger\n"));
    assert!(
        has(&out, "endpoint broker-trigger does not route to /lifecycle"),
        "{out:#?}"
    );
}

#[test]
fn user_tokens_and_foreign_egress_are_refused() {
    let yaml = SHIPPED
        .replacen(
            "        appSystemToken:\n",
            "        appUserToken:\n          enabled: true\n        appSystemToken:\n",
            1,
        )
        .replace(
            "        - remote: broker\n",
            "        - remote: broker\n        - address: https://collector.example.net\n",
        );
    let out = findings(&yaml);
    assert!(
        has(
            &out,
            "endpoint broker-connect: auth.appUserToken is enabled"
        ),
        "{out:#?}"
    );
    assert!(
        has(
            &out,
            "backend egress \"https://collector.example.net\" is not a broker remote"
        ),
        "{out:#?}"
    );
    // Egress by address must cover every regional host.
    let out = findings(&SHIPPED.replace(
        "        - remote: broker\n",
        "        - address: https://broker.example.com\n        - address: https://eu.broker.example.com\n",
    ));
    assert!(
        has(
            &out,
            "does not declare remote broker (https://us.broker.example.com/forge)"
        ),
        "{out:#?}"
    );
    assert_eq!(out.len(), 1, "{out:#?}");
}

#[test]
fn a_duplicate_key_does_not_hide_scopes() {
    let yaml = format!("{SHIPPED}\npermissions:\n  scopes:\n    - write:jira-work\n");
    assert!(parse_manifest(&yaml).is_err());
}

#[test]
fn the_app_id_must_be_an_app_ari() {
    let out = findings(&SHIPPED.replace(
        "ari:cloud:ecosystem::app/00000000-0000-0000-0000-000000000000",
        "ari:cloud:ecosystem::app/REPLACE-ME",
    ));
    assert!(has(&out, "app.id"), "{out:#?}");
}

#[test]
fn a_missing_schema_is_reported_with_the_install_command() {
    let Err(e) = ManifestSchema::load(Path::new("/nonexistent/manifest-schema.json")) else {
        panic!("a missing schema loaded");
    };
    assert!(
        e.contains("schema not found at /nonexistent/manifest-schema.json"),
        "{e}"
    );
    assert!(e.contains("npm ci --prefix tests/forge"), "{e}");
}

#[test]
fn the_schema_layer_reports_pointers() {
    // A stand-in schema: the real one comes from npm and is exercised by the
    // integration tests (tests/tests/template_lint_atlassian.rs).
    let schema = ManifestSchema(
        jsonschema::draft7::new(&serde_json::json!({
            "type": "object",
            "properties": {"app": {"type": "object", "required": ["id", "runtime"]}},
            "required": ["app"]
        }))
        .unwrap(),
    );
    let doc = parse_manifest("app:\n  id: x\n").unwrap();
    let v = schema.violations(&doc);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].starts_with("schema: /app: "), "{v:?}");
    assert!(v[0].contains("runtime"), "{v:?}");
}
