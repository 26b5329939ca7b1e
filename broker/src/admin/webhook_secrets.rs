//! Webhook secrets of connector instances: generated here (256 bits), sealed like every
//! secret, revealed only on an operator's audited, reasoned and rate-limited request, rotated
//! with an overlap window, and checked for workers by `POST /v1/webhooks/verify`.

use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::governance::RevealBody;
use super::{store_err, AdminService, Plan};
use crate::api_error::{ApiError, ErrorCode};
use crate::audit::AuditEvent;
use crate::broker::{error_answer, Answer};
use crate::identity::PeerIdentity;
use crate::model::{now_rfc3339, rfc3339, Status};
use crate::seal::SealContext;
use crate::store::records::{WebhookScheme, WebhookSecret, WebhookVersion};

/// What list and detail responses show of a webhook secret: never the secret.
pub(super) fn describe(w: &WebhookSecret) -> Value {
    let now = time::OffsetDateTime::now_utc();
    json!({
        "scheme": w.scheme,
        "created_at": w.created_at,
        "versions": w.versions.iter().map(|v| json!({
            "version": v.version,
            // Not secret: which KEK version wraps it (kek-rotation.md, step 6).
            "kek_version": v.kek_version,
            "created_at": v.created_at,
            "valid_until": v.valid_until,
            "valid": v.verifies_at(now),
        })).collect::<Vec<_>>(),
    })
}

fn check_header(name: &str) -> Result<(), ApiError> {
    if crate::webhooks::is_header_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request("header must be an HTTP header name"))
    }
}

impl AdminService {
    fn seal_webhook(
        &self,
        tenant: &str,
        instance: &str,
        version: u32,
        secret: &str,
    ) -> Result<WebhookVersion, ApiError> {
        let mut fields = credbroker_providers::SecretFields::new();
        fields.insert("secret", secrecy::SecretString::from(secret));
        let sealed = crate::seal::seal(
            &self.core.keyring,
            SealContext::WebhookSecret {
                tenant,
                instance,
                version,
            },
            &fields,
        )
        .map_err(|_| ApiError::new(ErrorCode::Internal, "sealing failed"))?;
        Ok(WebhookVersion {
            version,
            kek_version: sealed.kek_version,
            wrapped_dek: sealed.wrapped_dek,
            sealed_payload: sealed.sealed_payload,
            created_at: now_rfc3339(),
            valid_until: None,
        })
    }

    fn open_webhook(
        &self,
        w: &WebhookSecret,
        v: &WebhookVersion,
    ) -> Result<Zeroizing<String>, ApiError> {
        let fields = crate::seal::open(
            &self.core.keyring,
            SealContext::WebhookSecret {
                tenant: &w.tenant,
                instance: &w.instance,
                version: v.version,
            },
            v.kek_version,
            &v.wrapped_dek,
            &v.sealed_payload,
        )
        .map_err(|e| {
            tracing::error!(instance = %w.instance, version = v.version, error = %e, "webhook secret does not open");
            ApiError::new(ErrorCode::Internal, "the webhook secret does not open")
        })?;
        fields
            .expose("secret")
            .map(|s| Zeroizing::new(s.to_owned()))
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "the webhook secret is malformed"))
    }

    async fn webhook_or_404(
        &self,
        id: &str,
    ) -> Result<crate::store::records::Stored<WebhookSecret>, ApiError> {
        let w = self
            .core
            .records
            .webhook_secret(id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownRecord,
                    format!("instance {id:?} has no webhook secret (credbroker webhook-secret generate)"),
                )
            })?;
        // Its sealed value opens under the instance and tenant it names: a record copied
        // under another instance's key would reveal (or rotate) that other instance's.
        if w.value.instance != id {
            tracing::error!(
                instance = id,
                "webhook secret record names another instance"
            );
            return Err(ApiError::new(
                ErrorCode::Internal,
                "the stored webhook secret does not belong to this instance",
            ));
        }
        Ok(w)
    }

    pub(super) async fn plan_webhook_generate(
        &self,
        id: &str,
        scheme: WebhookScheme,
    ) -> Result<Plan, ApiError> {
        match &scheme {
            WebhookScheme::HmacSha256 { header, prefix } => {
                check_header(header)?;
                if prefix.len() > 64 || prefix.chars().any(|c| c.is_control()) {
                    return Err(ApiError::bad_request(
                        "prefix must be at most 64 printable characters",
                    ));
                }
            }
            WebhookScheme::Token { header } => check_header(header)?,
            WebhookScheme::Github | WebhookScheme::Gitlab | WebhookScheme::Unsigned => {}
        }
        let instance = self.instance_or_404(id).await?;
        if self
            .core
            .records
            .webhook_secret(id)
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("instance {id} already has a webhook secret: rotate or retire it"),
            ));
        }
        let tenant = instance.tenant.to_string();
        let versions = if scheme == WebhookScheme::Unsigned {
            Vec::new()
        } else {
            let secret = crate::webhooks::generate_secret()?;
            vec![self.seal_webhook(&tenant, id, 1, &secret)?]
        };
        let record = WebhookSecret {
            instance: id.to_owned(),
            tenant: tenant.clone(),
            scheme,
            last_version: u32::from(!versions.is_empty()),
            versions,
            reveals: Vec::new(),
            created_at: now_rfc3339(),
        };
        let mut plan = Plan::new(
            format!("instance={id} scheme={}", record.scheme.name()),
            json!({
                "webhook_secret": describe(&record),
                "next": if record.scheme == WebhookScheme::Unsigned {
                    "events of this instance are accepted unsigned"
                } else {
                    "reveal it once to paste into the vendor: credbroker webhook-secret reveal INSTANCE --reason '…'"
                },
            }),
        );
        plan.batch.create(&record);
        // The instance must still be the one read (not removed and re-created meanwhile).
        plan.batch.expect_unchanged(&instance);
        plan.tenant = Some(tenant);
        plan.created = true;
        Ok(plan)
    }

    pub(super) async fn plan_webhook_show(&self, id: &str) -> Result<Plan, ApiError> {
        let w = self.webhook_or_404(id).await?;
        let mut plan = Plan::new(
            format!("instance={id}"),
            json!({ "webhook_secret": describe(&w.value) }),
        );
        plan.tenant = Some(w.value.tenant.clone());
        Ok(plan)
    }

    pub(super) async fn plan_webhook_reveal(
        &self,
        id: &str,
        body: RevealBody,
    ) -> Result<Plan, ApiError> {
        let reason = body.reason.trim();
        let n = reason.chars().count();
        if !(8..=200).contains(&n) || reason.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "a reveal needs a reason of 8-200 printable characters (it is audited)",
            ));
        }
        let w = self.webhook_or_404(id).await?;
        let current = w.value.versions.first().ok_or_else(|| {
            ApiError::bad_request("this instance accepts unsigned events: there is no secret")
        })?;
        // The instance's own budget, kept in the store: it holds across replicas and restarts.
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut updated = w.value.clone();
        updated.reveals.retain(|t| now - t < 3600);
        let limit =
            usize::try_from(self.core.governance.webhooks().reveals_per_hour).unwrap_or(usize::MAX);
        if updated.reveals.len() >= limit {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!("this instance's secret was revealed {limit} times in the last hour"),
            ));
        }
        updated.reveals.push(now);
        let secret = self.open_webhook(&w.value, current)?;
        // The operator's budget last: a reveal refused for the instance's budget, or one
        // whose secret does not open, spends none of it.
        if !self.core.governance.take_reveal(&body.by) {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "reveal budget spent: at most {} reveals an hour per operator",
                    self.core.governance.webhooks().reveals_per_hour
                ),
            ));
        }
        let mut plan = Plan::new(
            format!(
                "instance={id} version={} reason={reason:?}",
                current.version
            ),
            Value::Null,
        );
        // The answer is written straight into a wiped buffer, sized so it never moves: the
        // plaintext is in no JSON value tree or reallocated copy left unwiped.
        let described = serde_json::to_vec(&json!({
            "instance": id,
            "version": current.version,
            "scheme": w.value.scheme,
        }))
        .map_err(|_| ApiError::new(ErrorCode::Internal, "serialization failed"))?;
        let mut raw = Zeroizing::new(Vec::with_capacity(described.len() + secret.len() * 6 + 16));
        raw.extend_from_slice(described.strip_suffix(b"}").unwrap_or(&described));
        raw.extend_from_slice(b",\"secret\":");
        serde_json::to_writer(&mut *raw, secret.as_str())
            .map_err(|_| ApiError::new(ErrorCode::Internal, "serialization failed"))?;
        raw.push(b'}');
        plan.raw = Some(raw);
        // The reveal is counted in the record, preconditioned on it: a rotation committed
        // meanwhile (on any replica) makes this reveal fail rather than show a stale secret.
        plan.batch.replace(&w, &updated);
        plan.tenant = Some(w.value.tenant.clone());
        Ok(plan)
    }

    pub(super) async fn plan_webhook_rotate(&self, id: &str) -> Result<Plan, ApiError> {
        let stored = self.webhook_or_404(id).await?;
        let mut w = stored.value.clone();
        if w.scheme == WebhookScheme::Unsigned {
            return Err(ApiError::bad_request(
                "this instance accepts unsigned events: retire and generate with a scheme instead",
            ));
        }
        let now = time::OffsetDateTime::now_utc();
        let overlap = self.core.governance.webhooks().overlap_s;
        let until = now
            .checked_add(time::Duration::seconds(
                i64::try_from(overlap).unwrap_or(i64::MAX / 2),
            ))
            .ok_or_else(|| {
                ApiError::new(ErrorCode::Internal, "[webhooks] overlap_s is out of range")
            })?;
        let until = rfc3339(until);
        let version = w.last_version.saturating_add(1);
        let secret = crate::webhooks::generate_secret()?;
        let fresh = self.seal_webhook(&w.tenant, id, version, &secret)?;
        // The current secret stays valid for the overlap; earlier ones keep their own window
        // (a second rotation before the vendor was updated must not drop the secret it still
        // signs with). At most three versions verify at once.
        let mut versions = vec![fresh];
        for (i, mut v) in w.versions.into_iter().enumerate() {
            if i == 0 {
                v.valid_until = Some(until.clone());
            }
            if v.verifies_at(now) && versions.len() < 3 {
                versions.push(v);
            }
        }
        w.versions = versions;
        w.last_version = version;
        let mut plan = Plan::new(
            format!("instance={id} version={version}; previous valid until {until}"),
            json!({ "webhook_secret": describe(&w) }),
        );
        plan.batch.replace(&stored, &w);
        plan.tenant = Some(w.tenant.clone());
        Ok(plan)
    }

    pub(super) async fn plan_webhook_retire(&self, id: &str) -> Result<Plan, ApiError> {
        let stored = self.webhook_or_404(id).await?;
        let mut plan = Plan::new(
            format!("instance={id} webhook secret destroyed"),
            json!({ "retired": id }),
        );
        plan.batch.remove(&stored);
        plan.tenant = Some(stored.value.tenant.clone());
        Ok(plan)
    }

    /// `POST /v1/webhooks/verify`: counted, failures logged within a budget, not audited
    /// one by one (nothing is issued or changed).
    pub async fn verify_webhook_http(
        &self,
        peer: Option<&PeerIdentity>,
        body: Result<Zeroizing<Vec<u8>>, ApiError>,
        request_id: &str,
    ) -> Answer {
        let mut facts = crate::resolve::chain::ChainFacts::default();
        let caller = peer.map_or_else(|| "none".to_owned(), PeerIdentity::audit_name);
        match self.verify_webhook(peer, body, &mut facts).await {
            Ok((scheme, valid, version)) => {
                let result = if valid { "valid" } else { "invalid" };
                self.core
                    .metrics
                    .webhook_verifications
                    .get_or_create(&crate::metrics::WebhookLabels {
                        scheme: scheme.to_owned(),
                        result: result.to_owned(),
                    })
                    .inc();
                if !valid {
                    let (log, suppressed) = self.core.governance.may_log_failure(&caller);
                    if log {
                        tracing::warn!(
                            request_id,
                            scheme,
                            caller,
                            tenant = ?facts.tenant.as_ref().map(|t| t.as_str()),
                            instance = ?facts.instance.as_ref().map(|i| i.as_str()),
                            suppressed_before = suppressed,
                            "webhook event failed verification"
                        );
                    }
                }
                Answer {
                    status: http::StatusCode::OK,
                    body: Zeroizing::new(
                        serde_json::to_vec(&json!({
                            "valid": valid,
                            "scheme": scheme,
                            "version": version,
                            "request_id": request_id,
                        }))
                        .unwrap_or_default(),
                    ),
                }
            }
            Err(e) => {
                // Refusals are counted too (a worker probing other tenants' instances shows).
                self.core
                    .metrics
                    .webhook_verifications
                    .get_or_create(&crate::metrics::WebhookLabels {
                        scheme: "none".to_owned(),
                        result: e.code.as_str().to_owned(),
                    })
                    .inc();
                if self.core.governance.may_log_failure(&caller).0 {
                    tracing::warn!(request_id, code = %e.code, caller, "webhook verification refused");
                }
                // A refusal of the worker's chain (an instance it may not serve, or none, a
                // disabled link) is audited like a resolve's: a worker probing other tenants'
                // instance ids through this endpoint shows in the log, the real tenant named.
                let audit_id = if facts.instance.is_some()
                    && matches!(
                        e.code,
                        ErrorCode::UnknownInstance
                            | ErrorCode::WorkerNotAuthorized
                            | ErrorCode::InstanceInactive
                            | ErrorCode::TenantInactive
                    ) {
                    let event = AuditEvent {
                        kind: "webhook".into(),
                        action: "webhook.verify".into(),
                        request_id: request_id.to_owned(),
                        actor: peer
                            .map_or_else(|| "unidentified".to_owned(), PeerIdentity::audit_name),
                        tenant: facts.tenant.as_ref().map(ToString::to_string),
                        instance: facts.instance.as_ref().map(ToString::to_string),
                        outcome: "denied".into(),
                        error_code: Some(e.code.as_str().to_owned()),
                        detail: facts.detail.map(str::to_owned),
                        ..Default::default()
                    };
                    match self.core.audit.append(event).await {
                        Ok(r) => Some(r.audit_id),
                        Err(_) => {
                            return error_answer(
                                &ApiError::new(
                                    ErrorCode::AuditUnavailable,
                                    "audit log unavailable; nothing was checked",
                                ),
                                None,
                                request_id,
                            )
                        }
                    }
                } else {
                    None
                };
                error_answer(&e, audit_id.as_deref(), request_id)
            }
        }
    }

    async fn verify_webhook(
        &self,
        peer: Option<&PeerIdentity>,
        body: Result<Zeroizing<Vec<u8>>, ApiError>,
        facts: &mut crate::resolve::chain::ChainFacts,
    ) -> Result<(&'static str, bool, Option<u32>), ApiError> {
        // A body over the caller's limit (the usual one for anyone but a worker) is refused
        // as such first: it was never read past that limit.
        let raw = body?;
        let worker_id = crate::resolve::worker_of(peer)?;
        let req = crate::webhooks::parse_verify_request(
            &raw,
            self.core.governance.webhooks().max_body_bytes,
        )?;
        self.catch_up().await?;
        let r = &self.core.records;
        let internal = |e| store_err(e);
        facts.instance = Some(req.instance.clone());
        let instance =
            crate::resolve::chain::worker_and_instance(r, worker_id, &req.instance, facts).await?;
        if instance.status != Status::Active {
            return Err(ApiError::new(
                ErrorCode::InstanceInactive,
                "connector instance is disabled",
            ));
        }
        r.shared_tenant(&instance.tenant)
            .await
            .map_err(internal)?
            .filter(|t| t.status == Status::Active)
            .ok_or_else(|| ApiError::new(ErrorCode::TenantInactive, "tenant is disabled"))?;
        let w = r
            .webhook_secret(req.instance.as_str())
            .await
            .map_err(internal)?
            .filter(|w| {
                w.value.tenant == instance.tenant.as_str()
                    && w.value.instance == req.instance.as_str()
            })
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::SecretMissing,
                    "this instance has no webhook secret",
                )
            })?;
        let now = time::OffsetDateTime::now_utc();
        let live: Vec<&WebhookVersion> = w
            .value
            .versions
            .iter()
            .filter(|v| v.verifies_at(now))
            .collect();
        let mut opened = Vec::with_capacity(live.len());
        for v in &live {
            opened.push(self.open_webhook(&w.value, v)?);
        }
        let keys: Vec<&[u8]> = opened.iter().map(|s| s.as_bytes()).collect();
        let matched = crate::webhooks::verify(&w.value.scheme, &keys, &req.headers, &req.body);
        Ok((
            w.value.scheme.name(),
            matched.is_some(),
            matched.and_then(|i| live.get(i)).map(|v| v.version),
        ))
    }
}
