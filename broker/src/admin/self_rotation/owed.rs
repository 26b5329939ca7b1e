//! The upstream revocations self-rotations owe: the old PAT's, marked on its superseded
//! version in the promotion's commit and cleared only by the upstream's answer (or a rule
//! that makes the call needless), retried by the leader's ticks under the binding's rotation
//! claim.

use std::sync::Arc;

use serde_json::Value;

use credbroker_providers::{Narrowing, SecretFields};

use super::mint_request;
use crate::admin::AdminService;
use crate::api_error::{ApiError, ErrorCode};
use crate::audit::{AuditEvent, AuditReceipt};

impl AdminService {
    /// Records `ev`, the upstream's answer to the revocation of binding `id`'s superseded
    /// `version`, and clears that version's owed mark in the same audited commit. When there
    /// is no mark to clear (never set, or the version destroyed meanwhile) or that commit is
    /// refused, the record alone (a mark left is found settled at the next tick).
    ///
    /// # Errors
    /// When the audit log cannot record it.
    pub(super) async fn settle_revocation(
        &self,
        id: &crate::ids::BindingId,
        version: Option<u32>,
        ev: AuditEvent,
    ) -> Result<AuditReceipt, ()> {
        if let Some(version) = version {
            let _guard = self.lock.lock().await;
            if let Ok(Some(read)) = self.core.records.secret_version(id, version).await {
                if read.value.upstream_revocation_owed {
                    let mut settled = read.value.clone();
                    settled.upstream_revocation_owed = false;
                    let mut batch = crate::store::Batch::new();
                    batch.replace(&read, &settled);
                    match self.commit_audited(ev.clone(), batch, &[]).await {
                        Ok(receipt) => return Ok(receipt),
                        // A record was written (the change refused with the event's detail as
                        // planned, or the event itself before a failed commit): not twice.
                        Err((_, Some(receipt))) => return Ok(receipt),
                        Err((_, None)) => {}
                    }
                }
            }
        }
        self.core.audit.append(ev).await.map_err(|_| ())
    }

    /// Makes the upstream revocations self-rotations still owe (the broker stopped, or the
    /// upstream failed, between a promotion and its revocation), each with its binding's
    /// active secret under the binding's rotation claim, audited as `secret.revoke_upstream`
    /// by `credbroker:rotation`. Returns how many were settled.
    pub(super) async fn revoke_owed(self: &Arc<Self>) -> usize {
        let owed = match self
            .core
            .records
            .keyed_secret_metas_where(|m| m.owes_revocation())
            .await
        {
            Ok(owed) => owed,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the upstream revocations owed; will retry");
                return 0;
            }
        };
        // Failures of revocations no longer owed (made, destroyed) are forgotten.
        if let Ok(mut r) = self.rotations.lock() {
            let still: std::collections::HashSet<String> = owed
                .iter()
                .map(|(_, m)| format!("{}/{}", m.binding, m.version))
                .collect();
            r.revoke_failures.retain(|k, _| still.contains(k));
        }
        let mut settled = 0;
        for (_, meta) in owed {
            if !self.core.replica.is_leader() || self.core.is_stopping() {
                break;
            }
            let Ok(id) = crate::ids::BindingId::parse(&meta.binding) else {
                continue;
            };
            // An upstream that keeps failing is asked less and less often: after k failed
            // attempts, not before 2^k seconds (at most an hour) since the last.
            let key = format!("{id}/{}", meta.version);
            let waits = self.rotations.lock().ok().is_some_and(|r| {
                r.revoke_failures.get(&key).is_some_and(|(at, failures)| {
                    at.elapsed()
                        < std::time::Duration::from_secs(
                            1u64.checked_shl(*failures).unwrap_or(u64::MAX).min(3600),
                        )
                })
            });
            if waits {
                continue;
            }
            let made = self
                .claimed(id.as_str(), self.revoke_owed_one(&id, meta.version))
                .await;
            if let Ok(mut r) = self.rotations.lock() {
                // Settled, nothing owed any more, or waiting on the same PAT staged again (no
                // call made): forgotten. Refused or failed: counted.
                if made.is_ok() {
                    r.revoke_failures.remove(&key);
                } else {
                    let failures = r.revoke_failures.get(&key).map_or(0, |f| f.1);
                    r.revoke_failures
                        .insert(key, (std::time::Instant::now(), failures.saturating_add(1)));
                }
            }
            match made {
                Ok(true) => settled += 1,
                Ok(false) => {}
                Err((e, _)) => {
                    tracing::warn!(binding = %id, version = meta.version, code = %e.code, error = %e.message, "an owed upstream revocation could not be made; will retry");
                }
            }
        }
        settled
    }

    /// The owed revocation of binding `id`'s superseded `version`: whether it was settled
    /// (the upstream answered, and the answer is on record).
    async fn revoke_owed_one(
        &self,
        id: &crate::ids::BindingId,
        version: u32,
    ) -> Result<bool, (ApiError, Option<AuditReceipt>)> {
        let refuse = |e: ApiError| (e, None);
        let binding = self
            .binding_or_404(id.as_str())
            .await
            .map_err(refuse)?
            .value;
        // Read again under the claim: settled meanwhile (by the rotation itself), or gone.
        let read = self
            .core
            .records
            .secret_version(id, version)
            .await
            .map_err(|e| refuse(crate::admin::store_err(e)))?;
        let Some(read) = read.filter(|r| r.value.owes_revocation()) else {
            return Ok(false);
        };
        let provider = self.provider_of(&binding).map_err(refuse)?;
        let rotation = provider.self_rotation().ok_or_else(|| {
            refuse(ApiError::bad_request(format!(
                "provider {} cannot revoke its own secrets",
                binding.provider
            )))
        })?;
        // The active secret (the successor) authenticates the revocation of the one it
        // superseded, as in the rotation itself.
        let active = self
            .core
            .open_active_secret(&binding)
            .await
            .map_err(|e| refuse(e.into()))?;
        let old = self
            .core
            .open_sealed(&binding, &read.value)
            .map_err(|e| refuse(e.into()))?;
        let bound = provider
            .bind(&binding.config, &binding.ceiling)
            .map_err(|e| refuse(e.into()))?;
        let narrowing = Narrowing::none();
        let request = mint_request(
            &binding,
            &bound,
            &narrowing,
            &active,
            self.core.mint_timeout(),
        );
        let request_id = crate::server::new_request_id();
        let mut ev = Self::event("credbroker:rotation", &request_id, "secret.revoke_upstream");
        ev.tenant = Some(binding.tenant.to_string());
        ev.binding = Some(binding.id.to_string());
        // The same PAT in service again (an operator pasted the old one back and promoted
        // it, as a rollback): revoking it would cut the binding off. Not revoked, and no
        // longer owed.
        // The same PAT staged again (pending): nothing is revoked while it waits, and the
        // revocation stays owed (the pending version may be destroyed, not promoted).
        let in_service = match self.serves_same_pat(&binding, &old, &active).await {
            Some((_, false)) => return Ok(false),
            Some((serving, true)) => Some(serving),
            None => None,
        };
        // Expired already, as the instance itself said when the version was probed (its
        // PAT API's `expiringAt`; an operator's declared `expires_at` is a claim, not proof):
        // nothing left to revoke.
        let expired = read
            .value
            .probe
            .as_ref()
            .and_then(|p| p.facts.as_ref())
            .and_then(credbroker_providers::atlassian_dc::reported_expiry)
            .filter(|t| *t <= time::OffsetDateTime::now_utc());
        let settled_without = match (in_service, expired) {
            (Some(serving), _) => Some(format!(
                "the same PAT is in service again as version {serving}"
            )),
            (None, Some(t)) => Some(format!("it expired at {}", crate::model::rfc3339(t))),
            (None, None) => None,
        };
        if let Some(why) = settled_without {
            ev.outcome = "allowed".into();
            ev.detail = Some(format!("binding={id} the superseded secret (version {version}) was NOT revoked upstream: {why}"));
            return self.settled(id, version, ev).await;
        }
        let mut revoked = rotation.revoke(&request, &old).await;
        // Not found among the active PAT's user's (the active secret is another user's, an
        // operator's paste since): the old PAT revokes itself, as a withdrawn successor does.
        if matches!(revoked, Ok(false)) && Self::other_users(&binding, &read.value) {
            let own = mint_request(&binding, &bound, &narrowing, &old, self.core.mint_timeout());
            revoked = rotation.revoke(&own, &old).await;
        }
        let (outcome, said) = match &revoked {
            Ok(true) => ("allowed", format!("binding={id} the superseded secret (version {version}), whose revocation its self-rotation owed, was revoked upstream")),
            Ok(false) => ("allowed", format!("binding={id} the superseded secret (version {version}), whose revocation its self-rotation owed, was NOT revoked upstream: its id is unknown (pasted without token_id), or the upstream found no PAT of this user under it (already gone, or not this PAT's id); revoke it at the source if it is live")),
            Err(e) => ("failed", format!("binding={id} revoking the superseded secret (version {version}) upstream, owed by its self-rotation, failed again: {e}; tried again at the next tick (or revoke it at the source)")),
        };
        ev.outcome = outcome.into();
        ev.detail = Some(said);
        if let Err(e) = revoked {
            let receipt = self.core.audit.append(ev).await.ok();
            return Err((
                ApiError::new(
                    ErrorCode::ProviderUnavailable,
                    format!("the upstream did not make the revocation: {e}"),
                ),
                receipt,
            ));
        }
        self.settled(id, version, ev).await
    }

    /// Settles `id`'s owed revocation of `version` with its record `ev`: whether it was
    /// settled (on record), or the log's refusal.
    async fn settled(
        &self,
        id: &crate::ids::BindingId,
        version: u32,
        ev: AuditEvent,
    ) -> Result<bool, (ApiError, Option<AuditReceipt>)> {
        self.settle_revocation(id, Some(version), ev)
            .await
            .map(|_| true)
            .map_err(|()| {
                (
                    ApiError::new(ErrorCode::AuditUnavailable, "audit log unavailable"),
                    None,
                )
            })
    }

    /// The version of `binding` whose secret is the PAT `old` again (the same token), if
    /// any, and whether it is the active one (else the pending one).
    async fn serves_same_pat(
        &self,
        binding: &crate::model::Binding,
        old: &SecretFields,
        active: &SecretFields,
    ) -> Option<(u32, bool)> {
        // The same PAT: the same token, compared in constant time (a pasted `token_id` is a
        // claim: another token pasted with the old one's id must not spare the old one).
        let same = |s: &SecretFields| {
            matches!((s.expose("token"), old.expose("token")), (Some(a), Some(b))
                if aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok())
        };
        if same(active) {
            return binding.active_secret_version.map(|v| (v, true));
        }
        let pending = binding.pending_secret_version?;
        let read = self
            .core
            .records
            .secret_version(&binding.id, pending)
            .await
            .ok()??;
        let opened = self.core.open_sealed(binding, &read.value).ok()?;
        same(&opened).then_some((pending, false))
    }

    /// Whether the binding's active secret (its last probe) and `old` (the probe of that
    /// version) name different users: a PAT of one user is not found among another's.
    fn other_users(binding: &crate::model::Binding, old: &crate::model::SecretVersion) -> bool {
        let user = |facts: Option<&Value>| {
            facts
                .and_then(|f| f.get("user"))
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty() && *u != "?")
                .map(str::to_owned)
        };
        match (
            user(binding.trust_facts.as_ref()),
            user(old.probe.as_ref().and_then(|p| p.facts.as_ref())),
        ) {
            (Some(now), Some(then)) => now != then,
            _ => false,
        }
    }
}
