//! Self-rotation of a pasted secret (Atlassian Data Center PATs): the current secret creates
//! its successor upstream; the successor goes through the same staged steps as an operator's
//! rotation — written pending, probed, promoted — each its own audited record; then the old
//! one is revoked upstream (audited too). A successor that fails its probe is never promoted
//! and is revoked again, best effort; the current secret keeps serving.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use credbroker_providers::{BindingContext, MintRequest, Narrowing, ProviderError, SecretFields};

use super::{as_strs, AdminOutcome, AdminService, Plan};
use crate::api_error::{ApiError, ErrorCode};
use crate::audit::{AuditEvent, AuditReceipt};

/// How many upstream revocations a binding may owe before its self-rotation creates nothing
/// more: an instance that fails every revocation (or hands out PATs close to expiry, so a
/// rotation is due every hour) must not pile up live PATs, each retried at the ticks; one
/// failing for a while (an outage) must not stop a PAT close to expiry from being rotated.
const MAX_OWED_REVOCATIONS: usize = 3;

/// How long a self-rotation's claim on its binding lasts among the replicas: past any run
/// (each upstream step and the probe are bounded by the mint timeout), and what a broker
/// killed mid-rotation holds the binding's rotations off for.
const ROTATION_LEASE: std::time::Duration = std::time::Duration::from_secs(600);

mod owed;
mod timer;

type OpResult = Result<AdminOutcome, (ApiError, Option<AuditReceipt>)>;

fn mint_request<'a>(
    binding: &'a crate::model::Binding,
    bound: &'a credbroker_providers::Bound,
    narrowing: &'a Narrowing,
    secret: &'a SecretFields,
    timeout: std::time::Duration,
) -> MintRequest<'a> {
    MintRequest {
        binding: BindingContext {
            tenant_id: binding.tenant.as_str(),
            binding_id: binding.id.as_str(),
            config: &binding.config,
            ceiling: &binding.ceiling,
            bound,
        },
        instance_id: "self-rotation",
        worker: "credbroker",
        narrowing,
        secret: Some(secret),
        timeout,
        min_ttl_s: 0,
        assertions: &credbroker_providers::NoIssuer,
    }
}

impl AdminService {
    /// An admin audit record of `actor`'s request for `action`, its outcome still to say.
    pub(super) fn event(actor: &str, request_id: &str, action: &str) -> AuditEvent {
        AuditEvent {
            kind: "admin".into(),
            action: action.into(),
            request_id: request_id.to_owned(),
            actor: actor.to_owned(),
            ..Default::default()
        }
    }

    /// Commits a plan made under the admin lock, audited as `event` with `note` appended to
    /// its detail; a refused plan is audited as denied.
    pub(super) async fn commit_plan(
        &self,
        mut event: AuditEvent,
        plan: Result<Plan, ApiError>,
        note: &str,
    ) -> Result<(Value, AuditReceipt), (ApiError, Option<AuditReceipt>)> {
        let plan = match plan {
            Ok(p) => p,
            Err(e) => {
                event.outcome = "denied".into();
                event.error_code = Some(e.code.as_str().to_owned());
                event.detail = Some(format!("{note}: {}", e.message));
                let r = self.core.audit.append(event).await.ok();
                return Err((e, r));
            }
        };
        event.outcome = "allowed".into();
        event.detail = Some(format!("{} ({note})", plan.detail));
        event.tenant = plan.tenant.clone();
        event.binding = plan.binding.clone();
        let stale = plan.invalidate_bindings.clone();
        let receipt = self
            .commit_audited(event, plan.batch, &as_strs(&stale))
            .await?;
        Ok((plan.response, receipt))
    }

    /// `credbroker secret rotate BINDING --self`, and the automatic rotation of a PAT close
    /// to its expiry.
    pub(super) async fn self_rotate(
        self: &Arc<Self>,
        id: &str,
        actor: &str,
        request_id: &str,
    ) -> OpResult {
        // A stopping broker starts none: the new credential would exist upstream with no
        // record once the audit log closes.
        self.refuse_when_stopping("the rotation runs on the next start")
            .map_err(|e| (e, None))?;
        self.claimed(id, self.self_rotate_inner(id, actor, request_id))
            .await
    }

    /// Runs `work` while this process and every replica sharing the store hold binding `id`'s
    /// rotation claim (`rotation/ID`): one rotation, or owed revocation, of a binding at a
    /// time. Refused with `conflict` while another holds it.
    async fn claimed<T>(
        &self,
        id: &str,
        work: impl std::future::Future<Output = Result<T, (ApiError, Option<AuditReceipt>)>>,
    ) -> Result<T, (ApiError, Option<AuditReceipt>)> {
        // One rotation per binding at a time in this process (the timer and an operator).
        let claimed = self
            .rotations
            .lock()
            .map(|mut r| r.running.insert(id.to_owned()))
            .unwrap_or(false);
        if !claimed {
            return Err((
                ApiError::new(
                    ErrorCode::Conflict,
                    "a rotation of this binding is already running",
                ),
                None,
            ));
        }
        // And one among the replicas sharing the store (the leader's timer on one, an
        // operator's request on another): a second would create a second successor from the
        // same secret, and could not withdraw it once the first had revoked that secret.
        let lease = format!("rotation/{id}");
        let result = match self.core.replica.claim_job(&lease, ROTATION_LEASE).await {
            Ok(true) => {
                // Renewed while the work runs, however long its upstream steps take (each is
                // bounded by the mint timeout, which has no upper limit): a lease that lapsed
                // mid-rotation would let a second replica start one beside it.
                // Stopped, and a claim in flight waited for, before the release: one landing
                // after it would hold the binding's rotations off for a whole lease.
                let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
                let renew = async {
                    let mut tick = tokio::time::interval(ROTATION_LEASE / 4);
                    tick.tick().await;
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {}
                            _ = &mut stopped => return,
                        }
                        match self.core.replica.claim_job(&lease, ROTATION_LEASE).await {
                            Ok(true) => {}
                            Ok(false) => tracing::error!(
                                lease,
                                "a rotation's claim was taken by another holder while it ran"
                            ),
                            Err(e) => {
                                tracing::warn!(lease, error = %e, "a rotation's claim could not be renewed; it lapses at its expiry")
                            }
                        }
                    }
                };
                let worked = async {
                    let result = work.await;
                    let _ = stop.send(());
                    result
                };
                let (result, ()) = tokio::join!(worked, renew);
                self.core.replica.release_job(&lease).await;
                result
            }
            Ok(false) => Err((
                ApiError::new(
                    ErrorCode::Conflict,
                    "a rotation of this binding is already running on another replica",
                ),
                None,
            )),
            Err(e) => Err((
                ApiError::new(
                    ErrorCode::Unavailable,
                    format!("the store could not be asked whether a rotation runs elsewhere: {e}"),
                ),
                None,
            )),
        };
        if let Ok(mut r) = self.rotations.lock() {
            r.running.remove(id);
        }
        result
    }

    /// `plan` (a rotation's write or promotion), committed only while the binding's tenant
    /// is still as [`Self::serving_tenant`] reads it now (on any replica), and the binding
    /// is still the one the rotation started on (`made`: its tenant and creation time): one
    /// removed and made again under its id meanwhile is another binding, whose secret this
    /// rotation neither writes nor promotes.
    async fn with_rotation_tenant(
        &self,
        id: &str,
        made: (&str, &str),
        plan: Result<Plan, ApiError>,
    ) -> Result<Plan, ApiError> {
        let mut plan = plan?;
        let binding = self.binding_or_404(id).await?.value;
        if binding.made() != made {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("binding {id} was removed and made again during the rotation; the successor was withdrawn"),
            ));
        }
        let tenant = self.serving_tenant(&binding).await?;
        plan.batch.expect_unchanged(&tenant);
        Ok(plan)
    }

    /// Refuses successor `version` of `binding` unless its probe found the binding's user
    /// (`user` of the facts; both known).
    async fn same_user(
        &self,
        binding: &crate::model::Binding,
        version: u32,
    ) -> Result<(), ApiError> {
        let user_of = probed_user;
        let before = user_of(binding.trust_facts.as_ref());
        let read = self
            .core
            .records
            .secret_version(&binding.id, version)
            .await
            .map_err(super::store_err)?;
        let after = user_of(
            read.as_ref()
                .and_then(|r| r.value.probe.as_ref())
                .and_then(|p| p.facts.as_ref()),
        );
        match (before, after) {
            (Some(before), Some(after)) if before != after => Err(ApiError::new(
                ErrorCode::ProviderDenied,
                format!(
                    "the upstream answered the successor's creation with a credential of user {after}, not of {before} whose secret created it: it is not promoted, and is withdrawn"
                ),
            )),
            (None, _) => Err(ApiError::new(
                ErrorCode::ProviderDenied,
                "the binding's own user is not known (its last passing probe named none), so the successor cannot be shown to be the same user's: it is not promoted, and is withdrawn; probe the binding (credbroker binding probe) and rotate again".to_owned(),
            )),
            (Some(before), None) => Err(ApiError::new(
                ErrorCode::ProviderDenied,
                format!(
                    "the successor's probe did not name its user, so it cannot be shown to be {before}'s: it is not promoted, and is withdrawn"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Whether a rotation is running in this process.
    pub(crate) fn rotations_running(&self) -> bool {
        self.rotations.lock().is_ok_and(|r| !r.running.is_empty())
    }

    async fn self_rotate_inner(
        self: &Arc<Self>,
        id: &str,
        actor: &str,
        request_id: &str,
    ) -> OpResult {
        let refuse = |e: ApiError| (e, None);
        let binding = self.binding_or_404(id).await.map_err(refuse)?.value;
        let tenant = self.serving_tenant(&binding).await.map_err(refuse)?;
        // At most MAX_OWED_REVOCATIONS owed per binding (see there).
        let versions = self
            .core
            .records
            .secret_versions(&binding.id)
            .await
            .map_err(|e| refuse(super::store_err(e)))?;
        let owed: Vec<String> = versions
            .iter()
            .filter(|v| v.value.owes_revocation())
            .map(|v| v.version.to_string())
            .collect();
        if owed.len() >= MAX_OWED_REVOCATIONS {
            return Err(refuse(ApiError::new(
                ErrorCode::Conflict,
                format!("binding {id} still owes the upstream revocation of versions {}: the rotation creates nothing until one is made (retried at the [secrets] gc_interval_s ticks), or destroyed (after revoking it at the source)", owed.join(", ")),
            )));
        }
        // A pending version that passed its probe, or is not probed yet (an operator's or an
        // intake's, or another rotation's successor), is not replaced: nothing is created.
        if let Some(p) = binding.pending_secret_version {
            let read = self
                .core
                .records
                .secret_version(&binding.id, p)
                .await
                .map_err(|e| refuse(super::store_err(e)))?;
            if read.is_some_and(|v| v.value.worth_keeping()) {
                return Err(refuse(ApiError::new(
                    ErrorCode::Conflict,
                    format!("binding {id} has pending version {p} waiting to be promoted or destroyed; the rotation creates nothing until then"),
                )));
            }
        }
        let provider = self.provider_of(&binding).map_err(refuse)?;
        let rotation = provider.self_rotation().ok_or_else(|| {
            refuse(ApiError::bad_request(format!(
                "provider {} cannot create its own successor secret: rotate with a pasted one",
                binding.provider
            )))
        })?;
        // A successor is promoted only when its probe names the binding's own user: with that
        // user unknown, it would be created upstream (a live credential) only to be withdrawn.
        if probed_user(binding.trust_facts.as_ref()).is_none() {
            return Err(refuse(ApiError::new(
                ErrorCode::Conflict,
                format!("binding {id}'s own user is not known (its last passing probe named none), so a successor could not be shown to be the same user's: nothing was created; probe the binding (credbroker binding probe {id}) and rotate again"),
            )));
        }
        let started_from = binding.active_secret_version;
        let made = binding.made();
        let current = self
            .core
            .open_active_secret(&binding)
            .await
            .map_err(|e| refuse(e.into()))?;
        let bound = provider
            .bind(&binding.config, &binding.ceiling)
            .map_err(|e| refuse(e.into()))?;
        let narrowing = Narrowing::none();
        let timeout = self.core.mint_timeout();
        // 1. The current secret creates its successor upstream. The record comes before
        //    the effect: a live credential created upstream is never without one, should the
        //    broker stop (or the audit log fail) before the records of the steps after it.
        let mut intent = Self::event(actor, request_id, "secret.self_rotate");
        intent.tenant = Some(binding.tenant.to_string());
        intent.binding = Some(binding.id.to_string());
        intent.outcome = "allowed".into();
        // Every upstream effect the rotation may have is named here, before any: the
        // successor's creation, and the revocations that follow it (the superseded secret
        // once its successor is promoted; a successor not promoted, or left by a failed
        // creation).
        intent.detail = Some(format!(
            "binding={id} the active secret (version {}) asks the upstream for its successor; once the successor is promoted, the superseded secret is revoked upstream (a successor that is not promoted is revoked again; one a failed creation may have left is looked for and revoked)",
            started_from.map_or("?".to_owned(), |v| v.to_string())
        ));
        // Through the one pipeline, so on the operator's record as admitted: an operator
        // disabled meanwhile creates nothing either.
        let mut unchanged = crate::store::Batch::new();
        unchanged.expect_unchanged(&tenant);
        let intent = self.commit_audited(intent, unchanged, &[]).await?;
        // Every failure from here on follows the intent record: an error without a record of
        // its own answers with the intent's (the operation is on record, and is not audited
        // again as a refusal).
        let on_record = intent.clone();
        let rest: OpResult = async {
            let request =
                |secret| mint_request(&binding, &bound, &narrowing, secret, timeout);
            let created: Result<SecretFields, ProviderError> =
                rotation.create(&request(&current)).await;
            let successor = match created {
                Ok(s) => s,
                Err(e) => {
                    let err = ApiError::from(e);
                    // The result of the intent above (named), as a revocation's result is.
                    let mut ev = Self::event(actor, request_id, "secret.self_rotate");
                    ev.tenant = Some(binding.tenant.to_string());
                    ev.binding = Some(binding.id.to_string());
                    ev.outcome = "failed".into();
                    ev.error_code = Some(err.code.as_str().to_owned());
                    ev.detail = Some(format!(
                        "the upstream did not create a successor (intent {}): {}",
                        intent.audit_id, err.message
                    ));
                    let Ok(r) = self.core.audit.append(ev).await else {
                        // Answered with the intent's record (below), saying the outcome is
                        // not on record.
                        return Err((
                            ApiError::new(
                                ErrorCode::AuditUnavailable,
                                format!(
                                    "the upstream did not create a successor ({}), and the audit log could not record it",
                                    err.message
                                ),
                            ),
                            None,
                        ));
                    };
                    return Err((err, Some(r)));
                }
            };
            // 2-4. Stored pending, probed, promoted; on any failure the successor is withdrawn
            //      upstream again (audited), so no PAT the broker created outlives a failure.
            let written_version = std::sync::atomic::AtomicU64::new(u64::MAX);
            // Whether the promotion's commit was sent: a store failure after it may still land
            // (a PostgreSQL COMMIT whose answer the deadline cut).
            let promotion_sent = std::sync::atomic::AtomicBool::new(false);
            // Whether the successor is another user's (refused by `same_user`): never kept
            // sealed where a promotion could hand it out.
            let foreign = std::sync::atomic::AtomicBool::new(false);
            let staged: Result<Value, (ApiError, Option<AuditReceipt>)> = async {
                let written = {
                    let _guard = self.lock.lock().await;
                    let plan = self
                        .with_rotation_tenant(
                            id,
                            made,
                            self.plan_secret_write(id, successor.clone(), None, super::secrets::SecretWrite::StageBeside)
                                .await,
                        )
                        .await;
                    self.commit_plan(
                        Self::event(actor, request_id, "secret.rotate"),
                        plan,
                        "self-rotation: created upstream by the current secret",
                    )
                    .await?
                };
                let version = written.0["version"]
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(0);
                written_version.store(u64::from(version), std::sync::atomic::Ordering::Relaxed);
                let stored = self.binding_or_404(id).await.map_err(refuse)?.value;
                if stored.made() != made {
                    return Err((
                        ApiError::new(ErrorCode::Conflict, "the binding was removed and made again during the rotation; the successor was withdrawn"),
                        None,
                    ));
                }
                self.probe_pending(
                    &stored,
                    version,
                    Self::event(actor, request_id, "binding.probe"),
                    Instant::now(),
                )
                .await?;
                // The successor was made by the current secret, so it is the same user's: an
                // upstream answering with another user's credential (an administrator's PAT)
                // would hand workers more than the user the customer chose for us.
                if let Err(e) = self.same_user(&binding, version).await {
                    foreign.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Err(refuse(e));
                }
                let _guard = self.lock.lock().await;
                // An operator (or an intake) replaced the active secret meanwhile: theirs stands.
                let now_active = self.binding_or_404(id).await.map_err(refuse)?.value.active_secret_version;
                if now_active != started_from {
                    return Err((
                        ApiError::new(ErrorCode::Conflict, "the active secret changed during the rotation; the successor was withdrawn"),
                        None,
                    ));
                }
                let plan = self
                    .with_rotation_tenant(id, made, self.plan_secret_promote(id, version, true).await)
                    .await;
                promotion_sent.store(plan.is_ok(), std::sync::atomic::Ordering::Relaxed);
                let promoted = self
                    .commit_plan(
                        Self::event(actor, request_id, "secret.promote"),
                        plan,
                        "self-rotation: the successor passed its probe",
                    )
                    .await?;
                let mut out = promoted.0;
                out["version"] = json!(version);
                Ok(out)
            }
            .await;
            let promoted = match staged {
                Ok(p) => p,
                Err((e, r)) => match self
                    .promotion_landed(
                        &binding.id,
                        made,
                        u32::try_from(written_version.load(std::sync::atomic::Ordering::Relaxed)).ok(),
                    )
                    .await
                    // Read as not promoted, but its commit was sent and the store failed (the one
                    // failure after which a commit may still land, say a PostgreSQL COMMIT whose
                    // answer the deadline cut): the successor is kept as when unreadable. Every
                    // other refusal (a precondition, the operator's standing, the audit log)
                    // wrote nothing.
                    .filter(|landed| {
                        landed.is_some()
                            || !promotion_sent.load(std::sync::atomic::Ordering::Relaxed)
                            || e.code != ErrorCode::Internal
                    }) {
                    // A commit whose outcome was unknown (the store answered with an error after
                    // applying it, or the acknowledgement was lost) promoted the successor: it is
                    // what resolves hand out now, so the rotation goes on as promoted.
                    Some(Some(version)) => json!({ "version": version, "superseded": started_from }),
                    // Not promoted: the successor is withdrawn upstream again.
                    Some(None) => {
                        let mut withdrawn = rotation.revoke(&request(&current), &successor).await;
                        // Not found with the current secret (another user's PAT, which only its
                        // own user may delete): the successor revokes itself.
                        if matches!(withdrawn, Ok(false)) {
                            withdrawn = rotation.revoke(&request(&successor), &successor).await;
                        }
                        let gone = matches!(withdrawn, Ok(true));
                        self.withdraw_successor(&binding, actor, request_id, &e, withdrawn)
                            .await;
                        // Its stored version goes too: revoked upstream, it would only stand as a
                        // pending version holding off intake links (one whose withdrawal failed
                        // is kept, for the operator to find; but never another user's, which a
                        // promotion would hand out).
                        let written =
                            u32::try_from(written_version.load(std::sync::atomic::Ordering::Relaxed))
                                .ok();
                        let destroy = gone || foreign.load(std::sync::atomic::Ordering::Relaxed);
                        if let (true, Some(version)) = (destroy, written) {
                            let _guard = self.lock.lock().await;
                            let plan = self
                                .plan_secret_destroy(
                                    id,
                                    Some(version),
                                    false,
                                    Some(binding.made()),
                                )
                                .await;
                            let _ = self
                                .commit_plan(
                                    Self::event(actor, request_id, "secret.destroy"),
                                    plan,
                                    "self-rotation: its successor was withdrawn upstream",
                                )
                                .await;
                        }
                        return Err((e, r));
                    }
                    // Unknown (the store does not answer, or the promotion's commit failed in a
                    // way that may still land): withdrawing it might revoke the credential being
                    // served, so it is kept and said.
                    None => {
                        let mut ev = Self::event(actor, request_id, "secret.revoke_upstream");
                        ev.tenant = Some(binding.tenant.to_string());
                        ev.binding = Some(binding.id.to_string());
                        ev.outcome = "failed".into();
                        ev.error_code = Some(e.code.as_str().to_owned());
                        ev.detail = Some(format!(
                            "binding={id} self-rotation failed ({}) and whether its successor was promoted is not known: the successor was kept upstream; see `credbroker binding show {id}`, then promote its pending version or revoke it at the source",
                            e.code
                        ));
                        let _ = self.core.audit.append(ev).await;
                        return Err((e, r));
                    }
                },
            };
            let version = promoted["version"]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0);
            // 5. The old secret revoked upstream, with its successor.
            let revoked = rotation.revoke(&request(&successor), &current).await;
            let mut ev = Self::event(actor, request_id, "secret.revoke_upstream");
            ev.tenant = Some(binding.tenant.to_string());
            ev.binding = Some(binding.id.to_string());
            let old_version = promoted["superseded"].clone();
            let (outcome, said) = match &revoked {
                Ok(true) => ("allowed", format!("binding={id} the superseded secret (version {old_version}) was revoked upstream")),
                Ok(false) => ("allowed", format!("binding={id} the superseded secret (version {old_version}) was NOT revoked upstream: its id is unknown (pasted without token_id), or the upstream found no PAT of this user under the id pasted as token_id (already gone, or not this PAT's id); revoke it at the source")),
                Err(e) => ("failed", format!("binding={id} revoking the superseded secret (version {old_version}) upstream failed: {e}; it stays owed, and is tried again at every [secrets] gc_interval_s tick (or revoke it at the source)")),
            };
            ev.outcome = outcome.into();
            ev.detail = Some(said.clone());
            // Answered: the owed mark the promotion set goes with the record. Failed: it
            // stays, for the leader's next tick.
            let recorded = match revoked {
                Ok(_) => self.settle_revocation(&binding.id, started_from, ev).await,
                Err(_) => self.core.audit.append(ev).await.map_err(|_| ()),
            };
            let receipt = recorded.map_err(|()| {
                (
                    ApiError::new(ErrorCode::AuditUnavailable, "audit log unavailable"),
                    None,
                )
            })?;
            // 6. The active secret probed again, so the binding's facts (the new expiry) are
            //    current and the rotation is not due any more.
            let _ = self
                .probe_binding(
                    id,
                    Self::event(actor, request_id, "binding.probe"),
                    Instant::now(),
                )
                .await;
            Ok(AdminOutcome {
                raw: None,
                response: json!({
                    "binding": id,
                    "active_secret_version": version,
                    "superseded": old_version,
                    "old_revoked_upstream": revoked.as_ref().ok().copied(),
                    "revocation_owed": revoked.is_err(),
                    "note": said,
                }),
                created: false,
                receipt,
            })
        }
        .await;
        rest.map_err(|(e, r)| (e, r.or(Some(on_record))))
    }

    /// Whether the successor written as version `written` was promoted after all, read
    /// afresh: `Some(Some(v))` promoted, `Some(None)` not (or never written, or the binding
    /// was made again under its id: `made`, its tenant and creation time as the rotation
    /// began, differ, whatever version it has reached), `None` when the store cannot say.
    async fn promotion_landed(
        &self,
        id: &crate::ids::BindingId,
        made: (&str, &str),
        written: Option<u32>,
    ) -> Option<Option<u32>> {
        let Some(version) = written else {
            return Some(None);
        };
        match self.core.records.binding(id).await {
            Ok(Some(b)) if b.made() != made => Some(None),
            Ok(Some(b)) => Some((b.active_secret_version == Some(version)).then_some(version)),
            Ok(None) => Some(None),
            Err(_) => None,
        }
    }

    /// Audits the withdrawal of a successor that failed its rotation.
    async fn withdraw_successor(
        &self,
        binding: &crate::model::Binding,
        actor: &str,
        request_id: &str,
        e: &ApiError,
        withdrawn: Result<bool, ProviderError>,
    ) {
        let mut ev = Self::event(actor, request_id, "secret.revoke_upstream");
        ev.tenant = Some(binding.tenant.to_string());
        ev.binding = Some(binding.id.to_string());
        ev.outcome = if matches!(withdrawn, Ok(true)) {
            "allowed"
        } else {
            "failed"
        }
        .into();
        ev.detail = Some(format!(
            "binding={} self-rotation failed ({}); its successor {}",
            binding.id,
            e.code,
            match withdrawn {
                Ok(true) => "was withdrawn upstream".to_owned(),
                Ok(false) => "could not be identified upstream: revoke it at the source".to_owned(),
                Err(_) => "could not be withdrawn upstream: revoke it at the source".to_owned(),
            }
        ));
        let _ = self.core.audit.append(ev).await;
    }
}

/// The user a passing probe named in `facts` (`user`), if it named one.
fn probed_user(facts: Option<&Value>) -> Option<String> {
    facts
        .and_then(|f| f.get("user"))
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty() && *u != "?")
        .map(str::to_owned)
}
