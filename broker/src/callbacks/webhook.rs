//! Provider webhooks (`POST /callbacks/{provider}/webhook`): verified before they are
//! parsed, replays refused by the signed body's hash, and a webhook only undoes what a webhook
//! did.

use http::HeaderMap;
use serde_json::{json, Value};

use super::{anonymous, rejected, sha256_hex, unproven, CallbackResult, CallbackService, Failure};
use credbroker_providers::{CallbackEvent, Callbacks, Provider};

use crate::admin::AdminOp;
use crate::api_error::{ApiError, ErrorCode};
use crate::audit::AuditEvent;
use crate::ids::BindingId;
use crate::model::{now_rfc3339, Binding, Status, StatusChange, StatusSource};
use crate::store::records::Delivery;
use crate::store::Batch;

/// How long a processed webhook delivery id is remembered (replays within it are refused).
pub const DELIVERY_WINDOW_S: i64 = 7 * 24 * 3600;

/// What a webhook changes, committed only after its audit record is durable.
struct Change {
    response: Value,
    detail: String,
    tenant: Option<String>,
    binding: Option<String>,
    batch: Batch,
    reprobe: Option<String>,
}

impl CallbackService {
    pub(super) async fn handle_webhook(
        &self,
        provider: &dyn Provider,
        headers: &HeaderMap,
        body: &[u8],
        event: &mut AuditEvent,
    ) -> CallbackResult {
        let cb: &dyn Callbacks = provider
            .callbacks()
            .ok_or_else(|| unproven(ApiError::new(ErrorCode::NotFound, "no such callback")))?;
        // Verified (constant-time signature) before the body is parsed. Until it verifies,
        // nothing is known about the sender: a refusal is counted, not audited.
        let verified = cb
            .verify_webhook(headers, body)
            .map_err(|m| unproven(rejected(m)))?;
        // A signed delivery replayed (by anyone who saw it) is refused; like an unsigned one it
        // is counted, not audited: a replayer could otherwise write one record per replay.
        // The delivery id header is not signed: a replay is recognized by the signed body
        // itself (its SHA-256), whatever delivery id it comes with.
        let delivery = cb
            .delivery_id(headers)
            .map(|_| format!("body-{}", sha256_hex(body)));
        // A signed event that changes nothing (an event we do not handle, a repository of any
        // account that installed our public App) is counted, not audited nor remembered: its
        // signature proves only that the provider sent it, and anyone can make the provider
        // send as many as they like.
        if let CallbackEvent::Ignored { reason } = &verified {
            return Ok((json!({ "result": "ignored", "reason": reason }), None));
        }
        // A removal or suspension of an installation a tenant holds is confirmed with the
        // provider first, outside the lock: its body stays signed for ever, and once its
        // delivery is forgotten (or when it was overtaken by a later change) only the
        // provider knows whether it still holds. When the provider cannot be asked, the
        // event is not acted on (503).
        let mut refuted = false;
        // An installation no tenant holds changes nothing, whatever the event: answered
        // before the replay check and the admin lock. Anyone can install the public App on an
        // account of their own and toggle it, and GitHub signs each such event: none may
        // queue behind operators' changes (the same answer as under the lock, below).
        let identifier = match &verified {
            CallbackEvent::Removed { identifier }
            | CallbackEvent::Suspended { identifier }
            | CallbackEvent::Unsuspended { identifier }
            | CallbackEvent::Changed { identifier, .. } => Some(identifier),
            CallbackEvent::Ignored { .. } => None,
        };
        if let Some(identifier) = identifier {
            let owned = self
                .core
                .records
                .identifier_owner(identifier)
                .await
                .map_err(|_| anonymous(ApiError::new(ErrorCode::Internal, "store read failed")))?;
            if owned.is_none() {
                return Ok((
                    json!({ "result": "ignored", "reason": "not bound here" }),
                    None,
                ));
            }
        }
        if !matches!(
            verified,
            CallbackEvent::Removed { .. } | CallbackEvent::Suspended { .. }
        ) {
            // A replay is refused before the admin lock (and checked again under it): one
            // captured body sent in a loop, never rate-limited once its signature verified,
            // must not hold every change behind it.
            self.refuse_replay(provider.id(), delivery.as_deref())
                .await?;
        }
        if matches!(
            verified,
            CallbackEvent::Removed { .. } | CallbackEvent::Suspended { .. }
        ) {
            // A replay is refused before the provider is asked (every event is checked again
            // under the lock below).
            self.refuse_replay(provider.id(), delivery.as_deref())
                .await?;
            // Nor while the audit log is known to be failing: the delivery could not be
            // remembered, so one captured body could be replayed for a GitHub call each time.
            if !self.core.audit_log().writable().await {
                return Err(anonymous(ApiError::new(
                    ErrorCode::AuditUnavailable,
                    "the audit log is unavailable; redeliver the event later",
                )));
            }
            match cb.confirm_event(&verified, self.core.mint_timeout()).await {
                Ok(true) => {}
                Ok(false) => refuted = true,
                // Not confirmed either way (GitHub unreachable, rate-limited, no key it
                // accepts): nothing changes and nothing is remembered, so a redelivery is
                // judged afresh. Deactivating here is no security boundary (GitHub refuses
                // tokens for a removed or suspended installation); acting on an unconfirmed
                // body would let a replay do it whenever GitHub cannot answer.
                Err(e) => {
                    tracing::warn!(provider = provider.id(), error = %e, "a webhook's removal or suspension could not be confirmed with the provider; nothing changed");
                    return Err(anonymous(ApiError::new(
                        ErrorCode::Unavailable,
                        "the event could not be confirmed with the provider; redeliver it later",
                    )));
                }
            }
        }
        let guard = self.admin.lock.lock().await;
        self.refuse_replay(provider.id(), delivery.as_deref())
            .await?;
        let mut change = self.plan_webhook(verified, refuted).await?;
        // An installation no tenant holds: the same (no link is needed to install the App).
        if change.tenant.is_none() {
            return Ok((change.response, None));
        }
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
            .commit_audited(
                event.clone(),
                change.batch,
                change.binding.as_deref().as_slice(),
            )
            .await
            .map_err(Failure::committing)?;
        drop(guard);
        if let Some(b) = change.reprobe {
            let _ = self
                .admin
                .execute(&event.actor, AdminOp::Probe(b), &event.request_id)
                .await;
        }
        Ok((change.response, Some(receipt.audit_id)))
    }

    /// Refuses a delivery already processed (its signed body's hash is remembered): like an
    /// unsigned one it is counted, not audited, since a replayer could otherwise write one
    /// record per replay.
    async fn refuse_replay(&self, provider: &str, delivery: Option<&str>) -> Result<(), Failure> {
        let Some(id) = delivery else {
            return Ok(());
        };
        let seen = self
            .core
            .records
            .delivery_seen(provider, id)
            .await
            .map_err(|_| anonymous(ApiError::new(ErrorCode::Internal, "store read failed")))?;
        if seen {
            return Err(anonymous(rejected(
                "this webhook delivery was already processed (replay)",
            )));
        }
        Ok(())
    }

    /// What `verified` changes; `refuted` when the provider answered that the removal or
    /// suspension it reports does not hold (a replay, or a later change overtook it).
    async fn plan_webhook(
        &self,
        verified: CallbackEvent,
        refuted: bool,
    ) -> Result<Change, ApiError> {
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
        if refuted {
            return Ok(Change {
                response: json!({ "result": "ignored", "reason": "the provider does not confirm it" }),
                detail: format!(
                    "binding={} {identifier} {what}: ignored, the provider says it does not hold now (a replayed delivery, or overtaken by a later change)",
                    binding.id
                ),
                tenant: Some(binding.tenant.to_string()),
                binding: Some(binding.id.to_string()),
                batch: Batch::new(),
                reprobe: None,
            });
        }
        let mut reprobe = None;
        let note = match verified {
            // A binding never activated stays pending: what a webhook disables, an unsuspend
            // re-probes and activates, and an activation is an operator's (or an issuer's)
            // to make, not the installation owner's.
            CallbackEvent::Removed { .. } | CallbackEvent::Suspended { .. }
                if binding.status == Status::PendingActivation =>
            {
                binding.trust_broken = true;
                format!(
                    "customer {what} the installation (webhook): binding stays pending_activation"
                )
            }
            CallbackEvent::Removed { .. } | CallbackEvent::Suspended { .. } => {
                let operator_disabled = binding.status == Status::Disabled
                    && binding.status_change.as_ref().map(|c| c.by) == Some(StatusSource::Operator);
                binding.status = Status::Disabled;
                binding.trust_broken = true;
                // What was minted before is served by no replica once the installation comes
                // back (the token cache keys on the generation).
                binding.generation = crate::admin::fresh_generation()?;
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
        let told = format!("{note} at {}", now_rfc3339());
        binding.last_probe = Some(
            match binding
                .last_probe
                .as_deref()
                .filter(|p| crate::model::probe_failed(p))
            {
                // A failed probe stays what the binding's last probe says (the inventory
                // flags it) until one passes: the latest event is told after it (the
                // failure bounded; an earlier event's note replaced).
                Some(failed) => {
                    let failure: String = failed
                        .split("; then ")
                        .next()
                        .unwrap_or(failed)
                        .chars()
                        .take(1536)
                        .collect();
                    format!("{failure}; then {told}")
                }
                None => told,
            },
        );
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
