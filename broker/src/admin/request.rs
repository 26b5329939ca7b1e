//! The admin API's requests: routes, queries and bodies parsed into an [`AdminOp`] at the
//! edge. Strict: unknown fields and query parameters are refused, identifiers are parsed by
//! their grammar, secret values are never echoed. Fuzzed (`tests/fuzz`, target
//! `admin_request`).

use serde::Deserialize;
use serde_json::Value;

use credbroker_providers::SecretFields;

use super::query::{destroy_force, page_query, Page};
use super::secret_body::{parse_expiring_secret, parse_secret};
use crate::api_error::{json_error, ApiError, ErrorCode};
use crate::ids::{BindingId, InstanceId, TenantId, WorkerId};
use crate::model::Status;
use crate::routes::{route_request, AdminEndpoint, Endpoint, Listener};

/// A record collection of the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    /// `/v1/admin/tenants`
    Tenants,
    /// `/v1/admin/workers`
    Workers,
    /// `/v1/admin/instances`
    Instances,
    /// `/v1/admin/bindings`
    Bindings,
    /// `/v1/admin/operators`
    Operators,
}

impl Collection {
    fn parse(s: &str) -> Option<Collection> {
        match s {
            "tenants" => Some(Collection::Tenants),
            "workers" => Some(Collection::Workers),
            "instances" => Some(Collection::Instances),
            "bindings" => Some(Collection::Bindings),
            "operators" => Some(Collection::Operators),
            _ => None,
        }
    }

    pub(super) fn noun(self) -> &'static str {
        match self {
            Collection::Tenants => "tenant",
            Collection::Workers => "worker",
            Collection::Operators => "operator",
            Collection::Instances => "instance",
            Collection::Bindings => "binding",
        }
    }
}

/// `POST /v1/admin/tenants`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// Id.
    pub id: TenantId,
    /// Display name.
    #[serde(default)]
    pub name: String,
}

/// `POST /v1/admin/workers`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorker {
    /// Worker name from its certificate.
    pub id: WorkerId,
    /// Tenants it may serve.
    pub tenants: Vec<TenantId>,
    /// Connector kinds it may serve (empty: any).
    #[serde(default)]
    pub connector_kinds: Vec<String>,
    /// The team or contact that answers for it.
    pub owner: String,
    /// What it is for.
    pub purpose: String,
}

/// `PUT /v1/admin/workers/{id}/tenants`: what a worker may serve from now on.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerTenants {
    /// Tenants it may serve (replaces the list).
    pub tenants: Vec<TenantId>,
    /// Connector kinds it may serve (replaces the list; empty: any). Absent: unchanged.
    #[serde(default)]
    pub connector_kinds: Option<Vec<String>>,
}

/// `POST /v1/admin/operators`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOperator {
    /// Operator name from its certificate.
    pub id: crate::ids::OperatorId,
    /// The operator asking (set by the broker, never read from the request): the first
    /// registration also registers the caller, so nobody locks themselves out.
    #[serde(skip)]
    #[schemars(skip)]
    pub by: Option<crate::ids::OperatorId>,
}

/// `POST /v1/admin/instances`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInstance {
    /// Id.
    pub id: InstanceId,
    /// Owning tenant.
    pub tenant: TenantId,
    /// Connector kind.
    pub connector_kind: String,
    /// Binding of the same tenant.
    pub binding: BindingId,
}

/// `POST /v1/admin/bindings`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBinding {
    /// Id.
    pub id: BindingId,
    /// Owning tenant.
    pub tenant: TenantId,
    /// Provider name.
    pub provider: String,
    /// Non-secret configuration.
    #[serde(default)]
    pub config: Value,
    /// Ceiling.
    #[serde(default)]
    pub ceiling: Value,
    /// The team or contact that answers for it.
    pub owner: String,
    /// What it is for.
    pub purpose: String,
    /// Rotation policy override: the most days its secret may age, 1-3650.
    #[serde(default)]
    #[schemars(range(min = 1, max = 3650))]
    pub max_secret_age_days: Option<u32>,
    /// Set by a flow acting for an install link (never by a request body): the tenant must
    /// have been created no later than this, Unix seconds (when the link was issued), or it
    /// is not the tenant the link was issued for but one created again under its id. Checked
    /// on the tenant record the binding's batch is preconditioned on.
    #[serde(skip)]
    #[schemars(skip)]
    pub tenant_created_by: Option<i64>,
}

/// `POST /v1/admin/onboard/{provider}`
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OnboardBody {
    /// The tenant to onboard.
    pub tenant: TenantId,
    /// The customer's account the installation must belong to (required for providers
    /// with an install flow, e.g. the GitHub organisation's login and numeric id).
    #[serde(default)]
    pub account: Option<crate::store::records::AccountPin>,
    /// Owner of the binding the onboarding creates (required when the broker creates it:
    /// an install or first-invocation flow).
    #[serde(default)]
    pub owner: Option<String>,
    /// Purpose of that binding.
    #[serde(default)]
    pub purpose: Option<String>,
}

/// `POST /v1/admin/unclaimed/claim`
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    /// The unclaimed installation's identifier (from `GET /v1/admin/unclaimed`).
    pub identifier: String,
    /// The tenant to bind it to.
    pub tenant: TenantId,
    /// The team or contact that answers for the binding.
    pub owner: String,
    /// What it is for.
    pub purpose: String,
}

/// `POST /v1/admin/unclaimed/ignore`
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IgnoreBody {
    /// The unclaimed installations' identifiers (from `GET /v1/admin/unclaimed`), 1–256.
    pub identifiers: Vec<String>,
}

/// `POST /v1/admin/issuer/keys` (rotate).
#[derive(Deserialize, schemars::JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct IssuerRotateBody {
    /// Sign with the new key at once instead of after `publish_lead_s` (a suspected
    /// compromise: consumers that pinned the JWKS inline fail until they re-pin).
    #[serde(default)]
    pub now: bool,
}

/// `POST /v1/admin/issuer/keys/{version}/retire`.
#[derive(Deserialize, schemars::JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct IssuerRetireBody {
    /// Retire a previous key whose tokens may still be valid: they stop verifying at once.
    #[serde(default)]
    pub compromised: bool,
}

/// One admin operation.
pub enum AdminOp {
    /// List one page of a collection.
    List(Collection, Page),
    /// Show one record.
    Show(Collection, String),
    /// Add a tenant.
    AddTenant(NewTenant),
    /// Add a worker.
    AddWorker(NewWorker),
    /// Replace a worker's tenants (and connector kinds).
    UpdateWorker(String, WorkerTenants),
    /// Register an operator.
    AddOperator(NewOperator),
    /// Add an instance.
    AddInstance(NewInstance),
    /// Add a binding.
    AddBinding(NewBinding),
    /// Enable or disable a record.
    SetStatus(Collection, String, Status),
    /// Remove a record.
    Remove(Collection, String),
    /// Set the first secret version of a binding (with its declared expiry).
    SecretSet(String, SecretFields, Option<String>),
    /// Write a new secret version; the previous one is kept as superseded.
    SecretRotate(String, SecretFields, Option<String>),
    /// Governance: inventory, owners, the provider catalog, webhook secrets.
    Governance(super::governance::GovernanceOp),
    /// Make a binding's pending secret version active (it must have passed its probe).
    SecretPromote(String, u32),
    /// Let the current secret create its successor upstream; pending, probed, promoted, the
    /// old one revoked (Atlassian Data Center PATs).
    SecretSelfRotate(String),
    /// Create a one-time intake link for a binding's secret.
    IntakeCreate(super::intake::NewIntake),
    /// List open intake links.
    IntakeList,
    /// Revoke an intake link by id.
    IntakeRevoke(String),
    /// List the install links and site expectations still out.
    OnboardingList,
    /// Revoke an install link or site expectation by id (`il_…`, `es_…`).
    OnboardingRevoke(String),
    /// Destroy every version (None) or one version of a binding's secret; the active
    /// version only when forced (`?force=true`).
    SecretDestroy(String, Option<u32>, bool),
    /// Run a binding's probe; a binding pending activation becomes active when it passes.
    Probe(String),
    /// Onboarding facts for a tenant with a federated provider (generates tenant parameters);
    /// the account an install must belong to, the owner of the binding it creates, and who
    /// asked (stamped from the request's actor: the install link or site expectation acts for
    /// them, and dies with their standing).
    Onboard(
        String,
        TenantId,
        Option<crate::store::records::AccountPin>,
        Option<crate::model::Governance>,
        String,
    ),
    /// List a provider's platform keys (metadata only).
    KeysList(String),
    /// Store a new platform key (staged).
    KeysAdd(String, SecretFields),
    /// Make a staged key active (it becomes the preferred signing key).
    KeysActivate(String, u32),
    /// Retire a key: it stops signing and its sealed material is destroyed.
    KeysRetire(String, u32),
    /// Drop every cached token of a provider and revoke it upstream.
    RevokeCached(String),
    /// List the issuer's keys with their phases.
    IssuerKeysList,
    /// The issuer's published JWKS.
    IssuerJwks,
    /// A new issuer key (signing after the publish lead, or at once).
    IssuerRotate(bool),
    /// Retire an issuer key (as compromised: before its tokens expired).
    IssuerRetire(u32, bool),
    /// List installations kept for an operator (proven, not bound).
    UnclaimedList,
    /// Bind an unclaimed installation to a tenant (pending activation; probe next), with its
    /// owner and purpose.
    ClaimUnclaimed(String, TenantId, crate::model::Governance),
    /// Ignore unclaimed installations: kept, not counted against the cap, their invocations
    /// counted, not recorded.
    IgnoreUnclaimed(Vec<String>),
    /// Mark a binding `trust_broken` after its upstream said the customer withdrew the trust
    /// (raised by the broker itself from a resolve, never parsed from a request). Applies only
    /// to the binding generation the resolve used.
    FlagTrustBroken {
        /// Binding id.
        binding: String,
        /// The generation the denied resolve minted for.
        generation: String,
        /// The consent drift the upstream showed, when that is what it was.
        drift: Option<crate::model::Drift>,
        /// The binding's `last_tested_at` the denied resolve read: a probe that ran since
        /// (e.g. after the customer consented again) has the last word.
        observed_probe: Option<String>,
    },
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {}", json_error(&e))))
}

/// Parses method + path (with its query, if any) + body into an operation, routing by the
/// admin routes of [`crate::routes::MTLS`].
///
/// # Errors
/// `not_found`, `method_not_allowed` or `bad_request`.
pub fn parse_admin_request(
    method: &http::Method,
    path: &str,
    body: &[u8],
) -> Result<AdminOp, ApiError> {
    use http::Method;
    let not_found = || ApiError::new(ErrorCode::NotFound, "no such admin route");
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let matched = route_request(Listener::Mtls, method, path)?;
    let Endpoint::Admin(endpoint) = matched.endpoint else {
        return Err(not_found());
    };
    // A query is part of a route's contract: only the routes that declare one take one.
    let listing = endpoint == AdminEndpoint::Collection && *method == Method::GET;
    if !query.is_empty()
        && !listing
        && endpoint != AdminEndpoint::SecretVersion
        && endpoint != AdminEndpoint::Inventory
    {
        return Err(ApiError::bad_request(
            "this admin route takes no query parameters",
        ));
    }
    let param = |name: &str| matched.param(name).to_owned();
    // Routes under /v1/admin/bindings/ name no collection parameter: they are bindings.
    let collection = || match matched.param("collection") {
        "" => Some(Collection::Bindings),
        c => Collection::parse(c),
    };
    let version = |what: &str| {
        matched.param("version").parse::<u32>().map_err(|_| {
            ApiError::bad_request(format!("{what} version must be a positive integer"))
        })
    };
    match endpoint {
        AdminEndpoint::Collection => {
            let c = collection().ok_or_else(not_found)?;
            if *method == Method::GET {
                return Ok(AdminOp::List(c, page_query(query)?));
            }
            match c {
                Collection::Tenants => parse_body(body).map(AdminOp::AddTenant),
                Collection::Workers => {
                    let w: NewWorker = parse_body(body)?;
                    super::governance::validated(w.owner.clone(), w.purpose.clone())?;
                    Ok(AdminOp::AddWorker(w))
                }
                Collection::Instances => parse_body(body).map(AdminOp::AddInstance),
                Collection::Bindings => {
                    let b: NewBinding = parse_body(body)?;
                    super::governance::validated(b.owner.clone(), b.purpose.clone())?;
                    Ok(AdminOp::AddBinding(b))
                }
                Collection::Operators => parse_body(body).map(AdminOp::AddOperator),
            }
        }
        AdminEndpoint::Record => {
            let c = collection().ok_or_else(not_found)?;
            Ok(if *method == Method::GET {
                AdminOp::Show(c, param("id"))
            } else {
                AdminOp::Remove(c, param("id"))
            })
        }
        AdminEndpoint::RecordAction => {
            let c = collection().ok_or_else(not_found)?;
            match matched.param("action") {
                "probe" if c == Collection::Bindings => Ok(AdminOp::Probe(param("id"))),
                "enable" => Ok(AdminOp::SetStatus(c, param("id"), Status::Active)),
                "disable" => Ok(AdminOp::SetStatus(c, param("id"), Status::Disabled)),
                _ => Err(not_found()),
            }
        }
        AdminEndpoint::Secret => Ok(if *method == Method::PUT {
            let (fields, expires) = parse_expiring_secret(body)?;
            AdminOp::SecretSet(param("id"), fields, expires)
        } else {
            AdminOp::SecretDestroy(param("id"), None, false)
        }),
        AdminEndpoint::WorkerTenants => {
            parse_body(body).map(|u| AdminOp::UpdateWorker(param("id"), u))
        }
        AdminEndpoint::SecretRotate => {
            let (fields, expires) = parse_expiring_secret(body)?;
            Ok(AdminOp::SecretRotate(param("id"), fields, expires))
        }
        AdminEndpoint::Inventory
        | AdminEndpoint::BindingGovernance
        | AdminEndpoint::WorkerGovernance
        | AdminEndpoint::Providers
        | AdminEndpoint::Provider
        | AdminEndpoint::WebhookSecret
        | AdminEndpoint::WebhookSecretAction => {
            super::governance::parse(endpoint, method, &matched, query, body)
                .map(AdminOp::Governance)
        }
        AdminEndpoint::SecretSelfRotate => Ok(AdminOp::SecretSelfRotate(param("id"))),
        AdminEndpoint::IntakeLinks if *method == Method::GET => Ok(AdminOp::IntakeList),
        AdminEndpoint::IntakeLinks => Ok(AdminOp::IntakeCreate(parse_body(body)?)),
        AdminEndpoint::IntakeLink => Ok(AdminOp::IntakeRevoke(param("id"))),
        AdminEndpoint::OnboardingLinks => Ok(AdminOp::OnboardingList),
        AdminEndpoint::OnboardingLink => Ok(AdminOp::OnboardingRevoke(param("id"))),
        AdminEndpoint::SecretPromote => Ok(AdminOp::SecretPromote(param("id"), version("secret")?)),
        AdminEndpoint::SecretVersion => Ok(AdminOp::SecretDestroy(
            param("id"),
            Some(version("secret")?),
            destroy_force(query)?,
        )),
        AdminEndpoint::Onboard => {
            let body: OnboardBody = parse_body(body)?;
            let governance = match (body.owner, body.purpose) {
                (None, None) => None,
                (Some(owner), Some(purpose)) => Some(super::governance::validated(owner, purpose)?),
                _ => {
                    return Err(ApiError::bad_request(
                        "give both owner and purpose, or neither",
                    ))
                }
            };
            Ok(AdminOp::Onboard(
                param("provider"),
                body.tenant,
                body.account,
                governance,
                String::new(),
            ))
        }
        AdminEndpoint::Keys => Ok(if *method == Method::GET {
            AdminOp::KeysList(param("provider"))
        } else {
            AdminOp::KeysAdd(param("provider"), parse_secret(body)?)
        }),
        AdminEndpoint::KeyAction => {
            let v = version("key")?;
            match matched.param("action") {
                "activate" => Ok(AdminOp::KeysActivate(param("provider"), v)),
                "retire" => Ok(AdminOp::KeysRetire(param("provider"), v)),
                _ => Err(ApiError::new(ErrorCode::NotFound, "no such key action")),
            }
        }
        AdminEndpoint::RevokeCached => Ok(AdminOp::RevokeCached(param("provider"))),
        AdminEndpoint::IssuerKeys if *method == Method::GET => Ok(AdminOp::IssuerKeysList),
        AdminEndpoint::IssuerKeys => {
            let body: IssuerRotateBody = if body.is_empty() {
                IssuerRotateBody::default()
            } else {
                parse_body(body)?
            };
            Ok(AdminOp::IssuerRotate(body.now))
        }
        AdminEndpoint::IssuerKeyRetire => {
            let body: IssuerRetireBody = if body.is_empty() {
                IssuerRetireBody::default()
            } else {
                parse_body(body)?
            };
            Ok(AdminOp::IssuerRetire(version("key")?, body.compromised))
        }
        AdminEndpoint::IssuerJwks => Ok(AdminOp::IssuerJwks),
        AdminEndpoint::Unclaimed => Ok(AdminOp::UnclaimedList),
        AdminEndpoint::IgnoreUnclaimed => {
            let body: IgnoreBody = parse_body(body)?;
            if body.identifiers.is_empty()
                || body.identifiers.len() > crate::store::records::MAX_UNCLAIMED
            {
                return Err(ApiError::bad_request(format!(
                    "identifiers: 1 to {} of them",
                    crate::store::records::MAX_UNCLAIMED
                )));
            }
            Ok(AdminOp::IgnoreUnclaimed(body.identifiers))
        }
        AdminEndpoint::ClaimUnclaimed => {
            let body: ClaimBody = parse_body(body)?;
            let governance = super::governance::validated(body.owner, body.purpose)?;
            Ok(AdminOp::ClaimUnclaimed(
                body.identifier,
                body.tenant,
                governance,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::query::PAGE_MAX;
    use http::Method;

    #[test]
    fn routes() {
        assert!(matches!(
            parse_admin_request(&Method::GET, "/v1/admin/tenants", b""),
            Ok(AdminOp::List(
                Collection::Tenants,
                Page {
                    after: None,
                    limit: PAGE_MAX
                }
            ))
        ));
        assert!(matches!(
            parse_admin_request(&Method::POST, "/v1/admin/bindings/b1/disable", b""),
            Ok(AdminOp::SetStatus(
                Collection::Bindings,
                _,
                Status::Disabled
            ))
        ));
        assert!(matches!(
            parse_admin_request(&Method::DELETE, "/v1/admin/bindings/b1/secret/3", b""),
            Ok(AdminOp::SecretDestroy(_, Some(3), false))
        ));
        assert!(matches!(
            parse_admin_request(
                &Method::DELETE,
                "/v1/admin/bindings/b1/secret/3?force=true",
                b""
            ),
            Ok(AdminOp::SecretDestroy(_, Some(3), true))
        ));
        for refused in [
            "/v1/admin/bindings/b1/secret/3?force=yes",
            "/v1/admin/bindings/b1/secret/3?force=true&force=true",
            "/v1/admin/bindings/b1/secret/3?other=1",
            "/v1/admin/bindings/b1/secret?force=true",
        ] {
            let e = parse_admin_request(&Method::DELETE, refused, b"")
                .err()
                .unwrap();
            assert_eq!(e.code, ErrorCode::BadRequest, "{refused}");
        }
        let e = parse_admin_request(&Method::PATCH, "/v1/admin/tenants", b"")
            .err()
            .unwrap();
        assert_eq!(e.code, ErrorCode::MethodNotAllowed);
        let e = parse_admin_request(&Method::GET, "/v1/admin/nothing", b"")
            .err()
            .unwrap();
        assert_eq!(e.code, ErrorCode::NotFound);
        let e = parse_admin_request(&Method::POST, "/v1/admin/tenants", br#"{"id":"a","x":1}"#)
            .err()
            .unwrap();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn secret_bodies_are_validated_without_echoing_values() {
        let e = parse_admin_request(
            &Method::PUT,
            "/v1/admin/bindings/b/secret",
            br#"{"fields":{"a":7}}"#,
        )
        .err()
        .unwrap();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(!e.message.contains('7'));
        // A syntax error is told as one, with its position and without the value.
        let e = parse_admin_request(
            &Method::PUT,
            "/v1/admin/bindings/b/secret",
            b"{\"fields\":{\"token\":\"s3cr3t\",}}",
        )
        .err()
        .unwrap();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        assert!(e.message.contains("column"), "{}", e.message);
        assert!(!e.message.contains("s3cr3t"));
        let e = parse_admin_request(
            &Method::PUT,
            "/v1/admin/bindings/b/secret",
            br#"{"fields":{}}"#,
        )
        .err()
        .unwrap();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(parse_admin_request(
            &Method::PUT,
            "/v1/admin/bindings/b/secret",
            br#"{"fields":{"t":"v"}}"#
        )
        .is_ok());
    }
}
