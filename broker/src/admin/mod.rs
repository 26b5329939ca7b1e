//! The operator admin API: tenants, workers, instances, bindings and write-only secrets.
//!
//! Every admin request (reads included, refusals included) leaves one audit record. A change
//! is planned from the current store (validated, sealed if it carries a secret), its audit
//! record is made durable, and only then is it committed as one atomic store batch — so there
//! is never an unaudited change. If the commit itself fails after the record was written, a
//! second record says so. Every read a plan depends on is a precondition of its batch
//! (`store::records`), so concurrent changes — here or on another replica — cannot both win;
//! the local admin lock only keeps this process's own changes from tripping over each other.
//!
//! Secrets are write-only: nothing here returns a secret value; list and detail responses
//! show secret field names and version metadata only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use credbroker_providers::SecretFields;

use crate::api_error::json_error;
use crate::api_error::{ApiError, ErrorCode};
use crate::audit::{AuditEvent, AuditReceipt};
use crate::broker::{error_answer, Answer, Broker};
use crate::identity::PeerIdentity;
use crate::ids::{BindingId, InstanceId, TenantId, WorkerId};
use crate::model::Status;
use crate::store::{Batch, StoreError};

mod federation;
mod platform_keys;
mod records;
mod secrets;

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
}

impl Collection {
    fn parse(s: &str) -> Option<Collection> {
        match s {
            "tenants" => Some(Collection::Tenants),
            "workers" => Some(Collection::Workers),
            "instances" => Some(Collection::Instances),
            "bindings" => Some(Collection::Bindings),
            _ => None,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Collection::Tenants => "tenant",
            Collection::Workers => "worker",
            Collection::Instances => "instance",
            Collection::Bindings => "binding",
        }
    }
}

/// `POST /v1/admin/tenants`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// Id.
    pub id: TenantId,
    /// Display name.
    #[serde(default)]
    pub name: String,
}

/// `POST /v1/admin/workers`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWorker {
    /// Worker name from its certificate.
    pub id: WorkerId,
    /// Tenants it may serve.
    pub tenants: Vec<TenantId>,
    /// Connector kinds it may serve (empty: any).
    #[serde(default)]
    pub connector_kinds: Vec<String>,
}

/// `POST /v1/admin/instances`
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretBody {
    fields: BTreeMap<String, Zeroizing<String>>,
}

/// One admin operation.
pub enum AdminOp {
    /// List a collection.
    List(Collection),
    /// Show one record.
    Show(Collection, String),
    /// Add a tenant.
    AddTenant(NewTenant),
    /// Add a worker.
    AddWorker(NewWorker),
    /// Add an instance.
    AddInstance(NewInstance),
    /// Add a binding.
    AddBinding(NewBinding),
    /// Enable or disable a record.
    SetStatus(Collection, String, Status),
    /// Remove a record.
    Remove(Collection, String),
    /// Set the first secret version of a binding.
    SecretSet(String, SecretFields),
    /// Write a new secret version; the previous one is kept as superseded.
    SecretRotate(String, SecretFields),
    /// Destroy every version (None) or one version of a binding's secret.
    SecretDestroy(String, Option<u32>),
    /// Run a binding's probe; a binding pending activation becomes active when it passes.
    Probe(String),
    /// Onboarding facts for a tenant with a federated provider (generates tenant parameters).
    Onboard(String, TenantId),
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
    /// Mark a binding `trust_broken` after its upstream said the customer withdrew the trust
    /// (raised by the broker itself from a resolve, never parsed from a request). Applies only
    /// to the binding generation the resolve used.
    FlagTrustBroken {
        /// Binding id.
        binding: String,
        /// The generation the denied resolve minted for.
        generation: String,
    },
}

impl AdminOp {
    fn action(&self) -> String {
        match self {
            AdminOp::List(c) => format!("{}.list", c.noun()),
            AdminOp::Show(c, _) => format!("{}.show", c.noun()),
            AdminOp::AddTenant(_) => "tenant.add".into(),
            AdminOp::AddWorker(_) => "worker.add".into(),
            AdminOp::AddInstance(_) => "instance.add".into(),
            AdminOp::AddBinding(_) => "binding.add".into(),
            AdminOp::SetStatus(c, _, Status::Active) => format!("{}.enable", c.noun()),
            AdminOp::SetStatus(c, _, _) => format!("{}.disable", c.noun()),
            AdminOp::Remove(c, _) => format!("{}.remove", c.noun()),
            AdminOp::SecretSet(..) => "secret.set".into(),
            AdminOp::SecretRotate(..) => "secret.rotate".into(),
            AdminOp::SecretDestroy(..) => "secret.destroy".into(),
            AdminOp::Probe(_) => "binding.probe".into(),
            AdminOp::Onboard(p, _) => format!("onboard.{p}"),
            AdminOp::KeysList(k) => format!("keys.{k}.list"),
            AdminOp::KeysAdd(k, _) => format!("keys.{k}.add"),
            AdminOp::KeysActivate(k, _) => format!("keys.{k}.activate"),
            AdminOp::KeysRetire(k, _) => format!("keys.{k}.retire"),
            AdminOp::RevokeCached(p) => format!("provider.{p}.revoke_cached"),
            AdminOp::FlagTrustBroken { .. } => "binding.flag_trust_broken".into(),
        }
    }

    fn is_read(&self) -> bool {
        matches!(
            self,
            AdminOp::List(_) | AdminOp::Show(..) | AdminOp::KeysList(_)
        )
    }
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {}", json_error(&e))))
}

fn parse_secret(body: &[u8]) -> Result<SecretFields, ApiError> {
    let parsed: SecretBody = serde_json::from_slice(body).map_err(|_| {
        ApiError::bad_request("secret body must be {\"fields\": {\"name\": \"value\", …}}")
    })?;
    if parsed.fields.is_empty() {
        return Err(ApiError::bad_request("a secret needs at least one field"));
    }
    let mut fields = SecretFields::new();
    for (name, value) in &parsed.fields {
        credbroker_providers::validate_field_name(name).map_err(ApiError::bad_request)?;
        if value.len() > 16 * 1024 {
            return Err(ApiError::bad_request(format!(
                "secret field {name:?} is longer than 16 KiB"
            )));
        }
        fields.insert(name.clone(), SecretString::from(value.as_str()));
    }
    Ok(fields)
}

/// Parses method + path (below `/v1/admin/`) + body into an operation.
///
/// # Errors
/// `not_found`, `method_not_allowed` or `bad_request`.
pub fn parse_admin_request(
    method: &http::Method,
    path: &str,
    body: &[u8],
) -> Result<AdminOp, ApiError> {
    use http::Method;
    let rest = path.strip_prefix("/v1/admin/").unwrap_or("");
    let segs: Vec<&str> = rest.split('/').collect();
    match segs.as_slice() {
        ["keys", kind] => {
            return match *method {
                Method::GET => Ok(AdminOp::KeysList((*kind).to_owned())),
                Method::POST => Ok(AdminOp::KeysAdd((*kind).to_owned(), parse_secret(body)?)),
                _ => Err(ApiError::new(ErrorCode::MethodNotAllowed, "GET or POST")),
            };
        }
        ["providers", provider, "revoke-cached"] => {
            return if *method == Method::POST {
                Ok(AdminOp::RevokeCached((*provider).to_owned()))
            } else {
                Err(ApiError::new(ErrorCode::MethodNotAllowed, "POST"))
            };
        }
        ["keys", kind, version, action] if *method == Method::POST => {
            let v: u32 = version
                .parse()
                .map_err(|_| ApiError::bad_request("key version must be a number"))?;
            return match *action {
                "activate" => Ok(AdminOp::KeysActivate((*kind).to_owned(), v)),
                "retire" => Ok(AdminOp::KeysRetire((*kind).to_owned(), v)),
                _ => Err(ApiError::new(ErrorCode::NotFound, "no such key action")),
            };
        }
        _ => {}
    }
    if let ["onboard", provider] = segs.as_slice() {
        if *method != Method::POST {
            return Err(ApiError::new(
                ErrorCode::MethodNotAllowed,
                "use POST to onboard",
            ));
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct OnboardBody {
            tenant: TenantId,
        }
        let body: OnboardBody = parse_body(body)?;
        return Ok(AdminOp::Onboard((*provider).to_owned(), body.tenant));
    }
    let not_found = || ApiError::new(ErrorCode::NotFound, "no such admin route");
    let wrong_method = || {
        ApiError::new(
            ErrorCode::MethodNotAllowed,
            "method not allowed on this admin route",
        )
    };
    let collection = segs
        .first()
        .and_then(|s| Collection::parse(s))
        .ok_or_else(not_found)?;
    match (segs.len(), segs.as_slice()) {
        (1, _) => match *method {
            Method::GET => Ok(AdminOp::List(collection)),
            Method::POST => match collection {
                Collection::Tenants => parse_body(body).map(AdminOp::AddTenant),
                Collection::Workers => parse_body(body).map(AdminOp::AddWorker),
                Collection::Instances => parse_body(body).map(AdminOp::AddInstance),
                Collection::Bindings => parse_body(body).map(AdminOp::AddBinding),
            },
            _ => Err(wrong_method()),
        },
        (2, [_, id]) => match *method {
            Method::GET => Ok(AdminOp::Show(collection, (*id).to_owned())),
            Method::DELETE => Ok(AdminOp::Remove(collection, (*id).to_owned())),
            _ => Err(wrong_method()),
        },
        (3, [_, id, "probe"]) if collection == Collection::Bindings => {
            if *method != Method::POST {
                return Err(wrong_method());
            }
            Ok(AdminOp::Probe((*id).to_owned()))
        }
        (3, [_, id, action]) if *action == "enable" || *action == "disable" => {
            if *method != Method::POST {
                return Err(wrong_method());
            }
            let status = if *action == "enable" {
                Status::Active
            } else {
                Status::Disabled
            };
            Ok(AdminOp::SetStatus(collection, (*id).to_owned(), status))
        }
        (3, [_, id, "secret"]) if collection == Collection::Bindings => match *method {
            Method::PUT => Ok(AdminOp::SecretSet((*id).to_owned(), parse_secret(body)?)),
            Method::DELETE => Ok(AdminOp::SecretDestroy((*id).to_owned(), None)),
            _ => Err(wrong_method()),
        },
        (4, [_, id, "secret", "rotate"]) if collection == Collection::Bindings => {
            if *method != Method::POST {
                return Err(wrong_method());
            }
            Ok(AdminOp::SecretRotate((*id).to_owned(), parse_secret(body)?))
        }
        (4, [_, id, "secret", version]) if collection == Collection::Bindings => {
            if *method != Method::DELETE {
                return Err(wrong_method());
            }
            let v: u32 = version
                .parse()
                .map_err(|_| ApiError::bad_request("secret version must be a positive integer"))?;
            Ok(AdminOp::SecretDestroy((*id).to_owned(), Some(v)))
        }
        _ => Err(not_found()),
    }
}

pub(super) fn validate_kind(kind: &str) -> Result<(), ApiError> {
    let ok = !kind.is_empty()
        && kind.len() <= 32
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "connector kinds are 1-32 characters of [a-z0-9_-]",
        ))
    }
}

pub(super) fn store_err(e: StoreError) -> ApiError {
    match e {
        StoreError::Precondition {
            table,
            key,
            expected,
        } => ApiError::new(
            ErrorCode::Conflict,
            format!("{table}/{key} must be {expected} (changed concurrently)"),
        ),
        other => {
            tracing::error!(error = %other, "store failure in admin request");
            ApiError::new(ErrorCode::Internal, "store failure")
        }
    }
}

/// A new binding generation (see [`crate::model::Binding::generation`]).
pub(crate) fn fresh_generation() -> Result<String, ApiError> {
    crate::model::new_generation()
        .map_err(|_| ApiError::new(ErrorCode::Internal, "the system random generator failed"))
}

pub(super) fn unknown(c: Collection, id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::UnknownRecord,
        format!("no such {} {id:?}", c.noun()),
    )
}

pub(super) fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// What a planned change writes, and what it tells the caller and the audit log.
struct Plan {
    batch: Batch,
    response: Value,
    created: bool,
    detail: String,
    tenant: Option<String>,
    binding: Option<String>,
    invalidate_binding: Option<String>,
    reload_keys: Option<String>,
}

impl Plan {
    fn new(detail: String, response: Value) -> Plan {
        Plan {
            batch: Batch::new(),
            response,
            created: false,
            detail,
            tenant: None,
            binding: None,
            invalidate_binding: None,
            reload_keys: None,
        }
    }
}

/// The result of an admin operation as the caller sees it.
pub struct AdminOutcome {
    /// Response body.
    pub response: Value,
    /// Whether a record was created (201).
    pub created: bool,
    /// Audit receipt.
    pub receipt: AuditReceipt,
}

impl Broker {
    /// Handles one HTTP admin request: identity check, parse, run, audit.
    pub async fn admin_http(
        self: &Arc<Self>,
        peer: Option<&PeerIdentity>,
        method: &http::Method,
        path: &str,
        body: Result<Zeroizing<Vec<u8>>, ApiError>,
        request_id: &str,
    ) -> Answer {
        self.metrics.admin_requests.inc();
        let actor = peer.map_or_else(|| "unidentified".to_owned(), PeerIdentity::audit_name);
        let parsed = match peer {
            Some(PeerIdentity::Operator(_)) => {
                body.and_then(|b| parse_admin_request(method, path, &b))
            }
            _ => Err(ApiError::new(
                ErrorCode::OperatorRequired,
                "the admin API requires an operator certificate",
            )),
        };
        let result = match parsed {
            Ok(op) => self.admin(&actor, op, request_id).await,
            Err(err) => {
                let event = AuditEvent {
                    kind: "admin".into(),
                    action: format!("admin {method} {}", sanitize_path(path)),
                    request_id: request_id.to_owned(),
                    actor: actor.clone(),
                    outcome: "denied".into(),
                    error_code: Some(err.code.as_str().to_owned()),
                    ..Default::default()
                };
                match self.audit.append(event).await {
                    Ok(r) => Err((err, Some(r))),
                    Err(_) => Err((
                        ApiError::new(ErrorCode::AuditUnavailable, "audit log unavailable"),
                        None,
                    )),
                }
            }
        };
        match result {
            Ok(outcome) => {
                let mut body = outcome.response;
                if let Value::Object(map) = &mut body {
                    map.insert("audit_id".into(), json!(outcome.receipt.audit_id));
                    map.insert("request_id".into(), json!(request_id));
                }
                Answer {
                    status: if outcome.created {
                        http::StatusCode::CREATED
                    } else {
                        http::StatusCode::OK
                    },
                    body: Zeroizing::new(serde_json::to_vec(&body).unwrap_or_default()),
                }
            }
            Err((err, receipt)) => error_answer(
                &err,
                receipt.as_ref().map(|r| r.audit_id.as_str()),
                request_id,
            ),
        }
    }

    /// Runs one admin operation as `actor`, auditing it.
    ///
    /// The operation runs in its own task: dropping the returned future (a client that hung
    /// up, a cancelled caller) never stops it between its audit record and its commit, so
    /// the log and the store always agree.
    ///
    /// # Errors
    /// The API error, with the audit receipt of the refusal when it could be recorded.
    pub async fn admin(
        self: &Arc<Self>,
        actor: &str,
        op: AdminOp,
        request_id: &str,
    ) -> Result<AdminOutcome, (ApiError, Option<AuditReceipt>)> {
        let this = Arc::clone(self);
        let (actor, request_id) = (actor.to_owned(), request_id.to_owned());
        tokio::spawn(async move { this.run_admin(&actor, op, &request_id).await })
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "admin operation task failed");
                Err((
                    ApiError::new(ErrorCode::Internal, "the operation could not be completed"),
                    None,
                ))
            })
    }

    async fn run_admin(
        self: &Arc<Self>,
        actor: &str,
        op: AdminOp,
        request_id: &str,
    ) -> Result<AdminOutcome, (ApiError, Option<AuditReceipt>)> {
        let started = Instant::now();
        let mut event = AuditEvent {
            kind: "admin".into(),
            action: op.action(),
            request_id: request_id.to_owned(),
            actor: actor.to_owned(),
            ..Default::default()
        };
        let _guard = if op.is_read() {
            None
        } else {
            Some(self.admin_lock.lock().await)
        };
        let op = match op {
            AdminOp::SetStatus(Collection::Bindings, id, Status::Active)
                if self.needs_activation(&id).await =>
            {
                event.action = "binding.enable".into();
                AdminOp::Probe(id)
            }
            other => other,
        };
        if let AdminOp::Probe(id) = &op {
            return self.probe_binding(id, event, started).await;
        }
        if let AdminOp::RevokeCached(provider) = &op {
            return self.revoke_cached(provider, event).await;
        }
        let planned = self.plan(op).await;
        event.latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let plan = match planned {
            Ok(plan) => plan,
            Err(err) => {
                event.outcome = "denied".into();
                event.error_code = Some(err.code.as_str().to_owned());
                return match self.audit.append(event).await {
                    Ok(r) => Err((err, Some(r))),
                    Err(_) => Err((
                        ApiError::new(ErrorCode::AuditUnavailable, "audit log unavailable"),
                        None,
                    )),
                };
            }
        };
        event.outcome = "allowed".into();
        event.detail = Some(plan.detail.clone());
        event.tenant = plan.tenant.clone();
        event.binding = plan.binding.clone();
        let receipt = self.audit.append(event.clone()).await.map_err(|e| {
            tracing::error!(error = %e, "admin change refused: audit unavailable");
            (
                ApiError::new(
                    ErrorCode::AuditUnavailable,
                    "audit log unavailable; nothing was changed",
                ),
                None,
            )
        })?;
        if let Err(e) = self.records.commit(plan.batch).await {
            let err = store_err(e);
            event.outcome = "failed".into();
            event.error_code = Some(err.code.as_str().to_owned());
            event.detail = Some(format!("commit of {} failed after audit", receipt.audit_id));
            let second = self.audit.append(event).await.ok();
            return Err((err, second));
        }
        if let Some(b) = plan.invalidate_binding {
            self.cache.invalidate_binding(&b);
        }
        if let Some(kind) = plan.reload_keys {
            if let Err(e) = self.load_platform_keys(&kind).await {
                tracing::error!(kind, error = %e, "platform keys could not be loaded after a change");
            }
        }
        tracing::info!(request_id, actor, action = %event.action, audit_id = %receipt.audit_id, "admin change committed");
        Ok(AdminOutcome {
            response: plan.response,
            created: plan.created,
            receipt,
        })
    }

    async fn plan(&self, op: AdminOp) -> Result<Plan, ApiError> {
        match op {
            AdminOp::List(c) => self.plan_list(c).await,
            AdminOp::Show(c, id) => self.plan_show(c, &id).await,
            AdminOp::AddTenant(t) => self.plan_add_tenant(t).await,
            AdminOp::AddWorker(w) => self.plan_add_worker(w).await,
            AdminOp::AddInstance(i) => self.plan_add_instance(i).await,
            AdminOp::AddBinding(b) => self.plan_add_binding(b).await,
            AdminOp::SetStatus(c, id, status) => self.plan_status(c, &id, status).await,
            AdminOp::Remove(c, id) => self.plan_remove(c, &id).await,
            AdminOp::SecretSet(id, fields) => self.plan_secret_write(&id, fields, false).await,
            AdminOp::SecretRotate(id, fields) => self.plan_secret_write(&id, fields, true).await,
            AdminOp::SecretDestroy(id, version) => self.plan_secret_destroy(&id, version).await,
            AdminOp::FlagTrustBroken {
                binding,
                generation,
            } => self.plan_flag_trust_broken(&binding, &generation).await,
            AdminOp::Onboard(provider, tenant) => self.plan_onboard(&provider, &tenant).await,
            AdminOp::KeysList(kind) => self.plan_keys_list(&kind).await,
            AdminOp::KeysAdd(kind, material) => self.plan_keys_add(&kind, material).await,
            AdminOp::KeysActivate(kind, v) => self.plan_keys_state(&kind, v, true).await,
            AdminOp::KeysRetire(kind, v) => self.plan_keys_state(&kind, v, false).await,
            AdminOp::Probe(_) | AdminOp::RevokeCached(_) => Err(ApiError::new(
                ErrorCode::Internal,
                "probes and revocations are not planned operations",
            )),
        }
    }
}

/// The path with anything that is not an id-safe character replaced, for audit records.
fn sanitize_path(path: &str) -> String {
    path.chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "/_.-".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn routes() {
        assert!(matches!(
            parse_admin_request(&Method::GET, "/v1/admin/tenants", b""),
            Ok(AdminOp::List(Collection::Tenants))
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
            Ok(AdminOp::SecretDestroy(_, Some(3)))
        ));
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
