//! The OpenAPI 3.1 document of the HTTP API, generated from the route tables
//! ([`crate::routes`]) and the request and answer types the handlers parse and write
//! (JSON Schema 2020-12 by `schemars`, which is what OpenAPI 3.1 uses).
//!
//! `broker/openapi.json` is the checked-in copy (a test fails when it differs from what this
//! module generates: regenerate it with `credbroker openapi > broker/openapi.json`); the
//! daemon serves it at `GET /v1/openapi.json` on the mTLS listener.

use http::Method;
use schemars::generate::SchemaSettings;
use schemars::SchemaGenerator;
use serde_json::{json, Map, Value};

use crate::admin::{
    BindingDetail, NewBinding, NewInstance, NewTenant, NewWorker, OnboardBody, SecretBody,
};
use crate::api_error::ErrorBody;
use crate::model::{Binding, Instance, Operator, SecretVersionView, Tenant, Worker};
use crate::resolve::request::ResolveRequest;
use crate::resolve::ResolveHead;
use crate::routes::{AdminEndpoint, Endpoint, Route, MTLS, PUBLIC};

/// What one operation takes and answers.
struct Operation {
    summary: &'static str,
    request: Option<Value>,
    ok_status: &'static str,
    ok: Value,
}

fn admin_answer(gen: &mut SchemaGenerator) -> Value {
    // Every admin answer carries its audit id and request id beside what it returns.
    let records = json!({
        "tenant": gen.subschema_for::<Tenant>(),
        "worker": gen.subschema_for::<Worker>(),
        "instance": gen.subschema_for::<Instance>(),
        "binding": {"anyOf": [
            gen.subschema_for::<Binding>(),
            gen.subschema_for::<BindingDetail>(),
            {"type": "string", "description": "The binding id (secret operations)."}
        ]},
        "tenants": {"type": "array", "items": gen.subschema_for::<Tenant>()},
        "workers": {"type": "array", "items": gen.subschema_for::<Worker>()},
        "instances": {"type": "array", "items": gen.subschema_for::<Instance>()},
        "bindings": {"type": "array", "items": gen.subschema_for::<Binding>()},
        "operators": {"type": "array", "items": gen.subschema_for::<Operator>()},
        "next": {
            "type": ["string", "null"],
            "description": "A listing's page: the id the next page starts after (`?after=`), null on the last page."
        },
        "secret_versions": {"type": "array", "items": gen.subschema_for::<SecretVersionView>()},
        "audit_id": {"type": "string"},
        "request_id": {"type": "string"},
    });
    let answer = json!({
        "type": "object",
        "description": "What an admin operation returns, with its audit id and request id.",
        "properties": records,
        "required": ["audit_id", "request_id"],
    });
    gen.definitions_mut().insert("AdminAnswer".into(), answer);
    json!({"$ref": "#/components/schemas/AdminAnswer"})
}

fn operation(gen: &mut SchemaGenerator, route: &Route, method: &Method) -> Operation {
    let get = *method == Method::GET;
    let bindings = route.path.starts_with("/v1/admin/bindings");
    match route.endpoint {
        Endpoint::Healthz => Operation {
            summary: "The process is up.",
            request: None,
            ok_status: "200",
            ok: json!({"type": "object", "properties": {"status": {"type": "string"}}}),
        },
        Endpoint::Readyz => Operation {
            summary: "Whether resolves can be served (503 while the audit log is not writable).",
            request: None,
            ok_status: "200",
            ok: json!({"type": "object", "properties": {"status": {"type": "string"}}}),
        },
        Endpoint::Metrics => Operation {
            summary: "Prometheus text metrics.",
            request: None,
            ok_status: "200",
            ok: json!({"type": "string"}),
        },
        Endpoint::OpenApi => Operation {
            summary: "This document.",
            request: None,
            ok_status: "200",
            ok: json!({"type": "object"}),
        },
        Endpoint::WebhookVerify => Operation {
            summary: "Whether an inbound event was signed with the instance's webhook secret (worker certificate of the instance's tenant).",
            request: Some(gen.subschema_for::<crate::webhooks::VerifyRequest>().to_value()),
            ok_status: "200",
            ok: json!({"type": "object", "properties": {
                "valid": {"type": "boolean"},
                "scheme": {"type": "string"},
                "version": {"type": ["integer", "null"]},
                "request_id": {"type": "string"}
            }, "required": ["valid", "scheme"]}),
        },
        Endpoint::Resolve => {
            let head = gen.subschema_for::<ResolveHead>();
            Operation {
                summary: "A short-lived credential for a connector instance (worker certificate).",
                request: Some(gen.subschema_for::<ResolveRequest>().to_value()),
                ok_status: "200",
                ok: json!({
                    "allOf": [head, {
                        "type": "object",
                        "properties": {"credentials": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                            "description": "The credential's fields (secret)."
                        }},
                        "required": ["credentials"]
                    }]
                }),
            }
        }
        Endpoint::Admin(a) => {
            let answer = admin_answer(gen);
            let (summary, request, ok_status) = match a {
                AdminEndpoint::Collection if get => (
                    "List one page of the collection (at most `limit` records in id order, ending at about 8 MiB).",
                    None,
                    "200",
                ),
                AdminEndpoint::Collection if bindings => (
                    "Add a binding.",
                    Some(gen.subschema_for::<NewBinding>().to_value()),
                    "201",
                ),
                AdminEndpoint::Collection => (
                    "Add a record (tenant, worker, instance or operator).",
                    Some(json!({"oneOf": [
                        gen.subschema_for::<NewTenant>(),
                        gen.subschema_for::<NewWorker>(),
                        gen.subschema_for::<NewInstance>(),
                        gen.subschema_for::<crate::admin::NewOperator>(),
                    ]})),
                    "201",
                ),
                AdminEndpoint::WorkerTenants => (
                    "Replace the tenants (and connector kinds) a worker may serve, without removing it.",
                    Some(gen.subschema_for::<crate::admin::WorkerTenants>().to_value()),
                    "200",
                ),
                AdminEndpoint::Record if get => ("Show one record.", None, "200"),
                AdminEndpoint::Record => ("Remove a record.", None, "200"),
                AdminEndpoint::RecordAction => {
                    ("enable, disable, or (bindings) probe.", None, "200")
                }
                AdminEndpoint::Secret if *method == Method::PUT => (
                    "Set a binding's first secret version (write-only).",
                    Some(gen.subschema_for::<SecretBody<'static>>().to_value()),
                    "201",
                ),
                AdminEndpoint::Secret => ("Destroy every secret version.", None, "200"),
                AdminEndpoint::SecretRotate => (
                    "Write a new secret version as pending and probe it; nothing served changes until it is promoted.",
                    Some(gen.subschema_for::<SecretBody<'static>>().to_value()),
                    "200",
                ),
                AdminEndpoint::SecretVersion => (
                    "Destroy one secret version (the active one only with force=true; refused with secret_version_active otherwise).",
                    None,
                    "200",
                ),
                AdminEndpoint::IntakeLinks if get => ("List open intake links (never their tokens).", None, "200"),
                AdminEndpoint::IntakeLinks => (
                    "Create a one-time intake link for a binding's secret; its URL is shown once.",
                    Some(gen.subschema_for::<crate::admin::NewIntake>().to_value()),
                    "201",
                ),
                AdminEndpoint::IntakeLink => ("Revoke an intake link.", None, "200"),
                AdminEndpoint::OnboardingLinks => (
                    "List the install links (GitHub, Entra) and Atlassian site expectations still out, with their status (never a link's state).",
                    None,
                    "200",
                ),
                AdminEndpoint::OnboardingLink => (
                    "Revoke an install link (il_…) or a site expectation (es_…).",
                    None,
                    "200",
                ),
                AdminEndpoint::SecretSelfRotate => (
                    "Let the current secret create its successor upstream (Data Center PAT): stored pending, probed, promoted, the old one revoked upstream (owed until the instance answers, retried by the leader: revocation_owed). Refused with conflict while three revocations are owed.",
                    None,
                    "200",
                ),
                AdminEndpoint::SecretPromote => (
                    "Make the pending secret version active (refused unless it passed its last probe); the previous one is kept as superseded, never served.",
                    None,
                    "200",
                ),
                AdminEndpoint::Onboard => (
                    "Onboarding facts for a tenant with a federated provider.",
                    Some(gen.subschema_for::<OnboardBody>().to_value()),
                    "200",
                ),
                AdminEndpoint::Keys if get => {
                    ("List a provider's platform keys (metadata).", None, "200")
                }
                AdminEndpoint::Keys => (
                    "Store a new platform key, staged (write-only).",
                    Some(gen.subschema_for::<SecretBody<'static>>().to_value()),
                    "201",
                ),
                AdminEndpoint::KeyAction => ("activate or retire a platform key.", None, "200"),
                AdminEndpoint::RevokeCached => (
                    "Drop a provider's cached credentials and revoke them upstream.",
                    None,
                    "200",
                ),
                AdminEndpoint::Unclaimed => (
                    "Installations proven but not bound (account differs from the pin), kept for an operator.",
                    None,
                    "200",
                ),
                AdminEndpoint::IssuerKeys if get => (
                    "List the broker's OIDC issuer keys and their phases (next, current, previous, expired, retired).",
                    None,
                    "200",
                ),
                AdminEndpoint::IssuerKeys => (
                    "Rotate the issuer key: a new key, published now, signing after publish_lead_s (or at once with now).",
                    Some(gen.subschema_for::<crate::admin::IssuerRotateBody>().to_value()),
                    "201",
                ),
                AdminEndpoint::IssuerKeyRetire => (
                    "Retire an issuer key (never the current one; a previous one before its tokens expired only as compromised).",
                    Some(gen.subschema_for::<crate::admin::IssuerRetireBody>().to_value()),
                    "200",
                ),
                AdminEndpoint::IssuerJwks => (
                    "The issuer's published JWKS (for customers who pin it inline).",
                    None,
                    "200",
                ),
                AdminEndpoint::IgnoreUnclaimed => (
                    "Ignore unclaimed installations (sites running the app that no tenant expects): kept until bound, no longer counted against the cap of 256, their invocations counted, not recorded; an onboarding naming one binds it on its administrator's connect code.",
                    Some(gen.subschema_for::<crate::admin::IgnoreBody>().to_value()),
                    "200",
                ),
                AdminEndpoint::ClaimUnclaimed => (
                    "Bind an unclaimed installation to a tenant explicitly (pending activation).",
                    Some(gen.subschema_for::<crate::admin::ClaimBody>().to_value()),
                    "201",
                ),
                AdminEndpoint::Inventory => (
                    "Every binding and worker with owner, purpose, last use, secret age, expiry, rotation policy, revocation path and flags.",
                    None,
                    "200",
                ),
                AdminEndpoint::BindingGovernance | AdminEndpoint::WorkerGovernance => (
                    "Set the owner and purpose (and, for a binding, its rotation policy).",
                    Some(gen.subschema_for::<crate::admin::GovernanceUpdate>().to_value()),
                    "200",
                ),
                AdminEndpoint::Providers => ("The provider catalog.", None, "200"),
                AdminEndpoint::Provider => ("One provider's catalog entry.", None, "200"),
                AdminEndpoint::WebhookSecret if get => (
                    "Describe the instance's webhook secret (scheme, versions; never the secret).",
                    None,
                    "200",
                ),
                AdminEndpoint::WebhookSecret if *method == Method::DELETE => (
                    "Retire the webhook secret: destroyed, nothing verifies until a new one is generated.",
                    None,
                    "200",
                ),
                AdminEndpoint::WebhookSecret => (
                    "Generate the instance's webhook secret (256 bits, sealed; not returned).",
                    Some(gen.subschema_for::<crate::store::records::WebhookScheme>().to_value()),
                    "201",
                ),
                AdminEndpoint::WebhookSecretAction => (
                    "reveal (body: reason; audited, rate-limited; the only answer carrying the secret) or rotate (the previous secret stays valid for [webhooks] overlap_s).",
                    Some(gen.subschema_for::<crate::admin::RevealBody>().to_value()),
                    "200",
                ),
            };
            Operation {
                summary,
                request,
                ok_status,
                ok: answer,
            }
        }
        Endpoint::CallbackStart => Operation {
            summary: "The install link: binds the state to this browser (cookie) and redirects to the provider.",
            request: None,
            ok_status: "302",
            ok: json!({"type": "object"}),
        },
        Endpoint::CallbackSetup => Operation {
            summary: "A customer returns from installing the app (single-use state, browser cookie, user authorization code).",
            request: None,
            ok_status: "200",
            ok: json!({"type": "object", "required": ["audit_id", "request_id"]}),
        },
        Endpoint::CallbackWebhook => Operation {
            summary: "A provider webhook, verified before it is parsed.",
            request: Some(json!({"type": "object"})),
            ok_status: "200",
            ok: json!({"type": "object", "required": ["audit_id", "request_id"]}),
        },
        Endpoint::ForgeRemote => Operation {
            summary: "A Forge Remote call (kind invoke, trigger or lifecycle): its Forge Invocation Token is verified from the headers before the body is read (401 invocation_rejected otherwise); acknowledged at once, applied (audited) after.",
            request: Some(json!({"type": "object"})),
            ok_status: "200",
            ok: json!({"type": "object", "required": ["result", "request_id"]}),
        },
        Endpoint::OidcDiscovery => Operation {
            summary: "The broker's OIDC issuer discovery document (issuer, jwks_uri, RS256); 404 when no [issuer] is configured.",
            request: None,
            ok_status: "200",
            ok: json!({"type": "object", "required": ["issuer", "jwks_uri"]}),
        },
        Endpoint::OidcJwks => Operation {
            summary: "The broker's OIDC issuer keys: next, current and previous (RSA, use sig, alg RS256, kid).",
            request: None,
            ok_status: "200",
            ok: json!({"type": "object", "required": ["keys"]}),
        },
        Endpoint::Intake if get => Operation {
            summary: "The one-time intake page: a masked form with the binding's fields (HTML; opening it changes nothing).",
            request: None,
            ok_status: "200",
            ok: json!({"type": "string"}),
        },
        Endpoint::Intake => Operation {
            summary: "The intake form's submission (form-encoded, CSRF-checked): sealed as a pending version and probed; the page says whether it works.",
            request: None,
            ok_status: "200",
            ok: json!({"type": "string"}),
        },
    }
}

fn parameter(name: &str) -> Value {
    let schema = match name {
        "collection" => {
            json!({"type": "string", "enum": ["tenants", "workers", "instances", "operators"]})
        }
        "action" => {
            json!({"type": "string", "enum": ["enable", "disable", "probe", "activate", "retire", "reveal", "rotate"]})
        }
        "version" => json!({"type": "integer", "minimum": 1, "maximum": u32::MAX}),
        "provider" => json!({"type": "string", "pattern": "^[a-z][a-z0-9_]{1,47}$"}),
        _ => json!({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}),
    };
    json!({"name": name, "in": "path", "required": true, "schema": schema})
}

/// The query parameters a route declares for `method` (the admin API refuses any other).
fn query_parameters(endpoint: Endpoint, method: &http::Method) -> Vec<Value> {
    match endpoint {
        Endpoint::Admin(AdminEndpoint::Collection) if method == http::Method::GET => vec![
            json!({
                "name": "limit",
                "in": "query",
                "required": false,
                "schema": {"type": "integer", "minimum": 1, "maximum": crate::admin::PAGE_MAX, "default": crate::admin::PAGE_MAX},
                "description": "The most records the page holds."
            }),
            json!({
                "name": "after",
                "in": "query",
                "required": false,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
                "description": "The id the page starts after: the previous page's `next` (records come in id order; `next` is null on the last page; a full page may be followed by an empty one)."
            }),
        ],
        Endpoint::Admin(AdminEndpoint::SecretVersion) => vec![json!({
            "name": "force",
            "in": "query",
            "required": false,
            "schema": {"type": "boolean", "default": false},
            "description": "Destroy the version even if it is the binding's active version (every resolve then fails with secret_missing until another is promoted)."
        })],
        Endpoint::Admin(AdminEndpoint::Inventory) => ["dormant_s", "expiring_s"]
            .iter()
            .map(|name| json!({
                "name": name,
                "in": "query",
                "required": false,
                "schema": {"type": "integer", "minimum": 0, "maximum": crate::admin::MAX_WINDOW_S},
                "description": "Window in seconds, at most ten years (default: [inventory] dormant_after_s / expiring_within_s)."
            }))
            .collect(),
        _ => Vec::new(),
    }
}

fn path_item(gen: &mut SchemaGenerator, route: &Route, error: &Value) -> Value {
    let path_params: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(parameter)
        .collect();
    let mut item = Map::new();
    for method in route.methods {
        let mut params = path_params.clone();
        params.extend(query_parameters(route.endpoint, method));
        let op = operation(gen, route, method);
        let content_type = if route.endpoint == Endpoint::Metrics {
            "text/plain"
        } else if route.endpoint == Endpoint::Intake {
            "text/html"
        } else {
            "application/json"
        };
        let mut o = json!({
            "summary": op.summary,
            "responses": {
                op.ok_status: {
                    "description": "Done.",
                    "content": {content_type: {"schema": op.ok}}
                },
                "default": {
                    "description": "Refused or failed: one code of the closed set.",
                    "content": {"application/json": {"schema": error}}
                }
            }
        });
        if !params.is_empty() {
            o["parameters"] = Value::Array(params);
        }
        if let Some(body) = op.request {
            o["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": body}}
            });
        }
        item.insert(method.as_str().to_ascii_lowercase(), o);
    }
    Value::Object(item)
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
    });
    let mut gen = SchemaGenerator::new(settings);
    let error = gen.subschema_for::<ErrorBody>().to_value();
    let mut paths = Map::new();
    for route in MTLS {
        paths.insert(route.path.to_owned(), path_item(&mut gen, route, &error));
    }
    let mut public = Map::new();
    for route in PUBLIC {
        public.insert(route.path.to_owned(), path_item(&mut gen, route, &error));
    }
    let schemas = gen.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "credbroker",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "POST /v1/resolve (worker certificate) and the admin API (operator certificate) on the mutual-TLS listener. The public listener's callbacks are under x-public-listener."
        },
        "paths": paths,
        "x-public-listener": {"paths": public},
        "components": {"schemas": schemas}
    })
}

/// The document as the checked-in file holds it: pretty JSON and a final newline.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_and_method_is_documented() {
        let doc = document();
        for route in MTLS {
            for m in route.methods {
                let op = &doc["paths"][route.path][m.as_str().to_ascii_lowercase()];
                assert!(op["responses"]["default"].is_object(), "{} {m}", route.path);
            }
        }
        assert!(doc["components"]["schemas"]["ResolveRequest"].is_object());
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    }
}
