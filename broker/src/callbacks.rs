//! Provider callbacks on the public listener: install redirects and webhooks.
//!
//! `GET /callbacks/{provider}/setup?…` — the customer comes back from installing our app. The
//! redirect's `state` must be one the broker issued (`credbroker onboard …`), unexpired and
//! unused; it names the tenant. It is consumed on first use. The installation is then bound
//! to that tenant (an installation already bound to another tenant is refused) and activated
//! by the provider's probe.
//!
//! `POST /callbacks/{provider}/webhook` — verified by the provider (signature, constant time)
//! before the body is parsed; a removal or suspension deactivates the binding, a permission
//! change is recorded as drift.
//!
//! Every authenticated callback (a setup redirect carrying a state the broker issued, a
//! webhook whose signature verified) leaves an audit record (actor `callback:<provider>`),
//! rejected ones too, and the record is durable before anything it describes is committed.
//! Callbacks refused before they authenticate (no or unknown state, bad signature, malformed
//! query or body) change nothing and are only counted (`credbroker_callbacks_total` by code)
//! with throttled log lines: anyone on the internet can send them, and one audit record (one
//! fsync) each would let them fill the disk and, since audit fails closed, stop resolves.

use std::sync::Arc;

use http::HeaderMap;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use credbroker_providers::{CallbackEvent, Callbacks, Provider};

use crate::admin::{AdminOp, AdminService, NewBinding};
use crate::api_error::{ApiError, ErrorCode};
use crate::audit::AuditEvent;
use crate::broker::{error_answer, Answer, Core};
use crate::ids::{BindingId, TenantId};
use crate::model::{now_rfc3339, Binding, Status, StatusChange, StatusSource};
use crate::routes::Endpoint;
use crate::store::records::{AccountPin, Delivery, Unclaimed};
use crate::store::Batch;

fn rejected(m: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::CallbackRejected, m)
}

/// A callback failure; `audit_id` is set when its audit record is already written.
/// `anonymous` failures happened before the callback authenticated: counted, not audited.
struct Failure {
    err: ApiError,
    audit_id: Option<String>,
    anonymous: bool,
}

impl From<ApiError> for Failure {
    /// A failure after authentication (audited): the safe default.
    fn from(err: ApiError) -> Self {
        Failure {
            err,
            audit_id: None,
            anonymous: false,
        }
    }
}

/// A failure before the callback authenticated.
fn anonymous(err: ApiError) -> Failure {
    Failure {
        err,
        audit_id: None,
        anonymous: true,
    }
}

type CallbackResult = Result<(Value, String), Failure>;

/// What the public listener sends back for a callback: an answer, and for the install link
/// a redirect with the browser cookie.
pub struct CallbackAnswer {
    /// Status and JSON body.
    pub answer: Answer,
    /// `Location` of a 302 (the provider's install page).
    pub location: Option<String>,
    /// `Set-Cookie` binding the state to this browser.
    pub set_cookie: Option<String>,
}

impl From<Answer> for CallbackAnswer {
    fn from(answer: Answer) -> Self {
        CallbackAnswer {
            answer,
            location: None,
            set_cookie: None,
        }
    }
}

/// How many times an install link may be opened before it must be re-issued.
pub const MAX_LINK_OPENS: u32 = 5;

/// How long a processed webhook delivery id is remembered (replays within it are refused).
pub const DELIVERY_WINDOW_S: i64 = 7 * 24 * 3600;

/// The cookie that binds an opened install link to the browser that opened it. `__Host-`:
/// Secure, no Domain, Path=/ — no other host can set or read it.
pub const INSTALL_COOKIE: &str = "__Host-credbroker-install";

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// The install cookie's value in a request's `Cookie` headers, if any. Never panics on any
/// input (fuzzed).
pub fn install_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == INSTALL_COOKIE).then(|| v.to_owned())
        })
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// What a webhook changes, committed only after its audit record is durable.
struct Change {
    response: Value,
    detail: String,
    tenant: Option<String>,
    binding: Option<String>,
    batch: Batch,
    reprobe: Option<String>,
}

/// The callback service: verifies inbound provider callbacks on the public listener and
/// turns them into audited changes.
pub struct CallbackService {
    core: Arc<Core>,
    admin: Arc<AdminService>,
    anonymous_log: crate::admission::LogThrottle,
}

impl CallbackService {
    /// The service over `core`, making changes through `admin`.
    pub fn new(core: Arc<Core>, admin: Arc<AdminService>) -> CallbackService {
        CallbackService {
            core,
            admin,
            anonymous_log: crate::admission::LogThrottle::new(5),
        }
    }

    /// Handles one routed callback (`GET /callbacks/{provider}/setup`,
    /// `POST /callbacks/{provider}/webhook`) on the public listener.
    pub async fn handle_http(
        &self,
        endpoint: Endpoint,
        provider_name: &str,
        query: &str,
        headers: &HeaderMap,
        body: Result<Zeroizing<Vec<u8>>, ApiError>,
        request_id: &str,
    ) -> CallbackAnswer {
        let kind = match endpoint {
            Endpoint::CallbackStart => "start",
            Endpoint::CallbackSetup => "setup",
            Endpoint::CallbackWebhook => "webhook",
            _ => "",
        };
        let provider = self
            .core
            .registry
            .get(provider_name)
            .cloned()
            .filter(|p| p.callbacks().is_some() && !kind.is_empty());
        let Some(provider) = provider else {
            return error_answer(
                &ApiError::new(ErrorCode::NotFound, "no such callback"),
                None,
                request_id,
            )
            .into();
        };
        let outcome_label = |ok: bool| if ok { "allowed" } else { "denied" };
        let mut event = AuditEvent {
            kind: "callback".into(),
            action: format!("callback.{kind}"),
            request_id: request_id.to_owned(),
            actor: format!("callback:{}", provider.id()),
            provider: Some(provider.id().to_owned()),
            ..Default::default()
        };
        let mut redirect = None;
        let result = match endpoint {
            Endpoint::CallbackStart => self
                .handle_start(provider.as_ref(), query, &mut event)
                .await
                .map(|(location, cookie, audit_id)| {
                    redirect = Some((location, cookie));
                    (
                        json!({ "result": "redirecting to the install page" }),
                        audit_id,
                    )
                }),
            Endpoint::CallbackSetup => {
                self.handle_setup(provider.clone(), query, headers, &mut event)
                    .await
            }
            _ => match body {
                Ok(b) => {
                    self.handle_webhook(provider.as_ref(), headers, &b, &mut event)
                        .await
                }
                Err(e) => Err(anonymous(e)),
            },
        };
        self.core
            .metrics
            .callbacks
            .get_or_create(&crate::metrics::ResolveLabels {
                outcome: outcome_label(result.is_ok()).into(),
                provider: provider.id().into(),
                code: result
                    .as_ref()
                    .err()
                    .map_or("none".into(), |f| f.err.code.as_str().to_owned()),
            })
            .inc();
        match result {
            Ok((response, audit_id)) => {
                let mut body = response;
                body["audit_id"] = json!(audit_id);
                body["request_id"] = json!(request_id);
                let answer = Answer {
                    status: if redirect.is_some() {
                        http::StatusCode::FOUND
                    } else {
                        http::StatusCode::OK
                    },
                    body: Zeroizing::new(serde_json::to_vec(&body).unwrap_or_default()),
                };
                let (location, set_cookie) = redirect.unzip();
                CallbackAnswer {
                    answer,
                    location,
                    set_cookie,
                }
            }
            Err(Failure {
                err,
                anonymous: true,
                ..
            }) => {
                if let Some(suppressed) = self.anonymous_log.admit() {
                    tracing::info!(request_id, provider = provider.id(), code = %err.code, reason = %err.message, suppressed, "unauthenticated callback rejected (counted, not audited)");
                }
                error_answer(&err, None, request_id).into()
            }
            Err(Failure { err, audit_id, .. }) => {
                tracing::warn!(request_id, provider = provider.id(), code = %err.code, reason = %err.message, "callback rejected");
                let audit_id = match audit_id {
                    Some(id) => Some(id),
                    None => {
                        event.outcome = "denied".into();
                        event.error_code = Some(err.code.as_str().to_owned());
                        event.detail = Some(err.message.chars().take(300).collect());
                        self.core.audit.append(event).await.ok().map(|r| r.audit_id)
                    }
                };
                error_answer(&err, audit_id.as_deref(), request_id).into()
            }
        }
    }

    /// `GET /callbacks/{provider}/start?state=…`: the install link. The browser that opens it
    /// gets a random nonce as an `HttpOnly` cookie and the state records the nonce's hash
    /// (audited); the setup callback later requires that cookie. Each opening replaces the
    /// previous browser (mail and chat link scanners open links before people do), up to
    /// [`MAX_LINK_OPENS`]; whoever finishes the install must have opened the link last, and the
    /// installation must still belong to the pinned account. Returns the provider's install
    /// page, the `Set-Cookie` value and the audit id.
    async fn handle_start(
        &self,
        provider: &dyn Provider,
        query: &str,
        event: &mut AuditEvent,
    ) -> Result<(String, String, String), Failure> {
        let Some(cb) = provider.callbacks() else {
            return Err(anonymous(ApiError::new(
                ErrorCode::NotFound,
                "no such callback",
            )));
        };
        let state = query_value(query, "state")
            .filter(|s| {
                !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric())
            })
            .ok_or_else(|| anonymous(rejected("state is missing or malformed")))?;
        let (key, read) = self
            .core
            .records
            .callback_state(&state)
            .await
            .map_err(|_| anonymous(ApiError::new(ErrorCode::Internal, "store read failed")))?
            .ok_or_else(|| anonymous(rejected("unknown or already used state")))?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if read.provider != provider.id() || read.expires_at < now {
            return Err(anonymous(rejected(
                "this install link is expired or for another provider; ask for a new one",
            )));
        }
        if read.opens >= MAX_LINK_OPENS {
            return Err(anonymous(rejected(
                "this install link was opened too many times; ask for a new one",
            )));
        }
        let nonce = crate::admin::random_alphanumeric(43)?;
        let mut batch = Batch::new();
        batch.start_callback_state(&key, &read, &sha256_hex(nonce.as_bytes()));
        event.tenant = Some(read.tenant.clone());
        event.outcome = "allowed".into();
        event.detail = Some(format!(
            "install link opened (opening {} of at most {MAX_LINK_OPENS}); state bound to this browser",
            read.opens + 1
        ));
        let receipt = {
            let _guard = self.admin.lock.lock().await;
            self.admin
                .commit_audited(event.clone(), batch, None)
                .await
                .map_err(|(err, second)| Failure {
                    err,
                    audit_id: second.map(|r| r.audit_id),
                    anonymous: false,
                })?
        };
        let max_age = (read.expires_at - now).max(1);
        let cookie = format!(
            "{INSTALL_COOKIE}={nonce}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}"
        );
        Ok((cb.install_url(&state), cookie, receipt.audit_id))
    }

    /// Returns the response and the audit id of the callback's own record.
    async fn handle_setup(
        &self,
        provider: Arc<dyn Provider>,
        query: &str,
        headers: &HeaderMap,
        event: &mut AuditEvent,
    ) -> CallbackResult {
        let Some(cb) = provider.callbacks() else {
            return Err(anonymous(ApiError::new(
                ErrorCode::NotFound,
                "no such callback",
            )));
        };
        let redirect = cb.parse_setup(query).map_err(|m| anonymous(rejected(m)))?;
        let identifiers = provider.exclusive_identifiers(&redirect.config);
        let identifier = identifiers
            .first()
            .cloned()
            .ok_or_else(|| anonymous(rejected("redirect names no installation")))?;
        // Looked up without the admin lock: an unknown state (the common anonymous probe)
        // is refused before it can queue behind operators' changes. Consumption below is a
        // precondition of its batch, so concurrent uses cannot both win.
        let (state_key, read) = self
            .core
            .records
            .callback_state(&redirect.state)
            .await
            .map_err(|_| anonymous(ApiError::new(ErrorCode::Internal, "store read failed")))?
            .ok_or_else(|| anonymous(rejected("unknown or already used state")))?;
        let expired = read.expires_at < time::OffsetDateTime::now_utc().unix_timestamp();
        if read.provider != provider.id() {
            return Err(rejected("state was issued for another provider").into());
        }
        let tenant =
            TenantId::parse(&read.tenant).map_err(|_| rejected("state record is corrupt"))?;
        event.tenant = Some(tenant.to_string());
        // The install must finish in the browser that opened the link (its cookie), or the
        // callback URL alone — state included — is worth nothing.
        let cookie_ok = match (&read.browser, install_cookie(headers)) {
            (Some(expected), Some(nonce)) => {
                let got = sha256_hex(nonce.as_bytes());
                aws_lc_rs::constant_time::verify_slices_are_equal(
                    got.as_bytes(),
                    expected.as_bytes(),
                )
                .is_ok()
            }
            _ => false,
        };
        let refusal = if expired {
            Some("state expired; start onboarding again")
        } else if !cookie_ok {
            Some("the install did not finish in the browser that opened the install link (cookie missing or different); start onboarding again")
        } else {
            None
        };
        // The state is consumed now, whatever follows: single use. The record saying so is
        // durable first (the one audited pipeline).
        event.outcome = if refusal.is_some() {
            "denied"
        } else {
            "allowed"
        }
        .into();
        event.detail = Some(format!(
            "state for tenant {tenant} {}; {identifier} action={}",
            refusal.map_or("accepted and consumed", |r| if expired {
                "expired"
            } else {
                r
            }),
            redirect.action
        ));
        if refusal.is_some() {
            event.error_code = Some(ErrorCode::CallbackRejected.as_str().into());
        }
        let mut batch = Batch::new();
        batch.consume_callback_state(&state_key, &read);
        let receipt = {
            let _guard = self.admin.lock.lock().await;
            self.admin
                .commit_audited(event.clone(), batch, None)
                .await
                .map_err(|(err, second)| Failure {
                    err,
                    audit_id: second.map(|r| r.audit_id),
                    anonymous: false,
                })?
        };
        if let Some(why) = refusal {
            // Already audited above: no second record.
            return Err(Failure {
                err: rejected(why),
                audit_id: Some(receipt.audit_id),
                anonymous: false,
            });
        }
        // The installation id is a claim until the provider proves the person who came back
        // administers it; then its account must be the one the operator pinned.
        let account = cb
            .prove_installer(&redirect, self.core.mint_timeout())
            .await
            .map_err(|e| {
                rejected(format!(
                    "{identifier} could not be proven to belong to the person who installed: {e}"
                ))
            })?;
        let pinned = read
            .pin
            .as_ref()
            .is_some_and(|p| p.id == account.id && p.login.eq_ignore_ascii_case(&account.login));
        if !pinned {
            let expected = read
                .pin
                .as_ref()
                .map_or("(no account pinned)".to_owned(), |p| {
                    format!("{} ({})", p.login, p.id)
                });
            let reason = format!(
                "{identifier} belongs to {} ({}), not the account pinned at onboarding: {expected}",
                account.login, account.id
            );
            let mut batch = Batch::new();
            batch.put_unclaimed(&Unclaimed {
                provider: provider.id().to_owned(),
                identifier: identifier.clone(),
                config: redirect.config.clone(),
                account: AccountPin {
                    login: account.login.clone(),
                    id: account.id,
                },
                reason: reason.clone(),
                seen_at: now_rfc3339(),
            });
            let mut denied = event.clone();
            denied.outcome = "denied".into();
            denied.error_code = Some(ErrorCode::CallbackRejected.as_str().into());
            denied.detail = Some(format!("{reason}; kept as unclaimed for an operator"));
            let receipt = {
                let _guard = self.admin.lock.lock().await;
                self.admin
                    .commit_audited(denied, batch, None)
                    .await
                    .map_err(|(err, second)| Failure {
                        err,
                        audit_id: second.map(|r| r.audit_id),
                        anonymous: false,
                    })?
            };
            return Err(Failure {
                err: rejected(
                    "this installation belongs to another account than the one expected for your organisation; nothing was bound (an operator has been told)",
                ),
                audit_id: Some(receipt.audit_id),
                anonymous: false,
            });
        }
        let tenant = (tenant, receipt.audit_id);
        let (tenant, audit_id) = tenant;
        let actor = event.actor.clone();
        // Already bound? To this tenant: re-probe; to another: refuse.
        let owner = self
            .core
            .records
            .identifier_owner(&identifier)
            .await
            .map_err(|_| ApiError::new(ErrorCode::Internal, "store read failed"))?;
        let binding_id = match owner {
            Some(o) if o.tenant == tenant.as_str() => o.binding.unwrap_or_default(),
            Some(_) => {
                return Err(rejected("this installation is already bound to another tenant").into())
            }
            None => {
                let id = format!(
                    "{}-{}",
                    provider.id().replace('_', "-"),
                    identifier.rsplit(':').next().unwrap_or("x")
                );
                let id = BindingId::parse(&id)
                    .map_err(|_| rejected("installation id cannot form a binding id"))?;
                let op = AdminOp::AddBinding(NewBinding {
                    id: id.clone(),
                    tenant: tenant.clone(),
                    provider: provider.id().to_owned(),
                    config: redirect.config.clone(),
                    ceiling: Value::Null,
                });
                self.admin
                    .execute(&actor, op, &event.request_id)
                    .await
                    .map_err(|(e, _)| e)?;
                id.to_string()
            }
        };
        let probe = self
            .admin
            .execute(
                &actor,
                AdminOp::Probe(binding_id.clone()),
                &event.request_id,
            )
            .await;
        let (status, summary) = match probe {
            Ok(o) => (
                "active",
                o.response["probe"]["summary"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            ),
            Err((e, _)) => (
                "pending_activation",
                format!("probe failed ({}): {}", e.code, e.message),
            ),
        };
        Ok((
            json!({ "result": "installation linked", "tenant": tenant.as_str(), "binding": binding_id, "status": status, "probe": summary }),
            audit_id,
        ))
    }

    async fn handle_webhook(
        &self,
        provider: &dyn Provider,
        headers: &HeaderMap,
        body: &[u8],
        event: &mut AuditEvent,
    ) -> CallbackResult {
        let cb: &dyn Callbacks = provider
            .callbacks()
            .ok_or_else(|| anonymous(ApiError::new(ErrorCode::NotFound, "no such callback")))?;
        // Verified (constant-time signature) before the body is parsed. Until it verifies,
        // nothing is known about the sender: a refusal is counted, not audited.
        let verified = cb
            .verify_webhook(headers, body)
            .map_err(|m| anonymous(rejected(m)))?;
        // A signed delivery replayed (by anyone who saw it) is refused; like an unsigned one it
        // is counted, not audited: a replayer could otherwise write one record per replay.
        // The delivery id header is not signed: a replay is recognized by the signed body
        // itself (its SHA-256), whatever delivery id it comes with.
        let delivery = cb
            .delivery_id(headers)
            .map(|_| format!("body-{}", sha256_hex(body)));
        let guard = self.admin.lock.lock().await;
        if let Some(id) = &delivery {
            let seen = self
                .core
                .records
                .delivery_seen(provider.id(), id)
                .await
                .map_err(|_| anonymous(ApiError::new(ErrorCode::Internal, "store read failed")))?;
            if seen {
                return Err(anonymous(rejected(
                    "this webhook delivery was already processed (replay)",
                )));
            }
        }
        let mut change = self.plan_webhook(verified).await?;
        if let Some(id) = &delivery {
            let expires = time::OffsetDateTime::now_utc().unix_timestamp() + DELIVERY_WINDOW_S;
            change.batch.record_delivery(
                provider.id(),
                id,
                &Delivery {
                    expires_at: expires,
                },
            );
            change.detail = format!("{} (delivery {id})", change.detail);
        }
        event.outcome = "allowed".into();
        event.detail = Some(change.detail.clone());
        event.tenant = change.tenant.clone();
        event.binding = change.binding.clone();
        let receipt = self
            .admin
            .commit_audited(event.clone(), change.batch, change.binding.as_deref())
            .await
            .map_err(|(err, second)| Failure {
                err,
                audit_id: second.map(|r| r.audit_id),
                anonymous: false,
            })?;
        drop(guard);
        if let Some(b) = change.reprobe {
            let _ = self
                .admin
                .execute(&event.actor, AdminOp::Probe(b), &event.request_id)
                .await;
        }
        Ok((change.response, receipt.audit_id))
    }

    async fn plan_webhook(&self, verified: CallbackEvent) -> Result<Change, ApiError> {
        let (identifier, what) = match &verified {
            CallbackEvent::Ignored { reason } => {
                return Ok(Change {
                    response: json!({ "result": "ignored", "reason": reason }),
                    detail: format!("ignored: {reason}"),
                    tenant: None,
                    binding: None,
                    batch: Batch::new(),
                    reprobe: None,
                })
            }
            CallbackEvent::Removed { identifier } => (identifier, "removed"),
            CallbackEvent::Suspended { identifier } => (identifier, "suspended"),
            CallbackEvent::Unsuspended { identifier } => (identifier, "unsuspended"),
            CallbackEvent::Changed { identifier, .. } => (identifier, "changed"),
        };
        let owner = self
            .core
            .records
            .identifier_owner(identifier)
            .await
            .map_err(|_| ApiError::new(ErrorCode::Internal, "store read failed"))?;
        let Some(owner) = owner else {
            return Ok(Change {
                response: json!({ "result": "ignored", "reason": "not bound here" }),
                detail: format!("{identifier} {what}: not bound to any tenant"),
                tenant: None,
                binding: None,
                batch: Batch::new(),
                reprobe: None,
            });
        };
        let bid = BindingId::parse(owner.binding.as_deref().unwrap_or(""))
            .map_err(|_| ApiError::new(ErrorCode::Internal, "corrupt identifier owner"))?;
        let stored = self
            .core
            .records
            .binding(&bid)
            .await
            .map_err(|_| ApiError::new(ErrorCode::Internal, "store read failed"))?
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "identifier owner has no binding"))?;
        let mut binding: Binding = stored.value.clone();
        let mut reprobe = None;
        let note = match verified {
            CallbackEvent::Removed { .. } | CallbackEvent::Suspended { .. } => {
                let operator_disabled = binding.status == Status::Disabled
                    && binding.status_change.as_ref().map(|c| c.by) == Some(StatusSource::Operator);
                binding.status = Status::Disabled;
                binding.trust_broken = true;
                // An operator's disable stays the operator's: a later unsuspend must not undo
                // it (suspend-then-unsuspend would otherwise launder it into a webhook's).
                if !operator_disabled {
                    binding.status_change = StatusChange::now(
                        StatusSource::Webhook,
                        format!("customer {what} the installation"),
                    );
                }
                format!("customer {what} the installation (webhook): binding deactivated")
            }
            // A webhook only undoes what a webhook did: a binding an operator disabled (or
            // one never suspended) stays as it is.
            CallbackEvent::Unsuspended { .. }
                if binding.status != Status::Disabled
                    || binding.status_change.as_ref().map(|c| c.by)
                        != Some(StatusSource::Webhook) =>
            {
                return Ok(Change {
                    response: json!({ "result": "ignored", "reason": "not suspended by a webhook" }),
                    detail: format!(
                        "binding={} unsuspend ignored: its status ({:?}) was not set by a webhook ({})",
                        binding.id,
                        binding.status,
                        binding
                            .status_change
                            .as_ref()
                            .map_or("no recorded change".to_owned(), |c| format!("{:?}: {}", c.by, c.why))
                    ),
                    tenant: Some(binding.tenant.to_string()),
                    binding: Some(binding.id.to_string()),
                    batch: Batch::new(),
                    reprobe: None,
                });
            }
            CallbackEvent::Unsuspended { .. } => {
                binding.status = Status::PendingActivation;
                binding.status_change = StatusChange::now(
                    StatusSource::Webhook,
                    "customer unsuspended the installation",
                );
                reprobe = Some(binding.id.to_string());
                "customer unsuspended the installation (webhook): re-probing".to_owned()
            }
            CallbackEvent::Changed { detail, .. } => format!("drift: {detail}"),
            CallbackEvent::Ignored { .. } => String::new(),
        };
        binding.last_probe = Some(format!("{} at {}", note, now_rfc3339()));
        let mut batch = Batch::new();
        batch.replace(&stored, &binding);
        Ok(Change {
            response: json!({ "result": what, "binding": binding.id.as_str(), "status": binding.status }),
            detail: format!("binding={} {note}", binding.id),
            tenant: Some(binding.tenant.to_string()),
            binding: Some(binding.id.to_string()),
            batch,
            reprobe,
        })
    }
}
