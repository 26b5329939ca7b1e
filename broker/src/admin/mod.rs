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

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::api_error::{ApiError, ErrorCode};
use crate::audit::{AuditEvent, AuditReceipt};
use crate::broker::{error_answer, Answer, Core};
use crate::identity::PeerIdentity;
use crate::model::Status;
use crate::store::{Batch, StoreError};

mod commit;
mod endpoint;
mod federation;
mod forge;
mod governance;
mod webhook_secrets;
pub(crate) use federation::random_alphanumeric;
pub use forge::InvocationOutcome;
pub use governance::{
    GovernanceOp, GovernanceUpdate, RevealBody, MAX_SECRET_AGE_DAYS, MAX_WINDOW_S,
};
pub use intake::{NewIntake, MAX_INTAKE_FAILURES};
pub use intake_form::parse_intake_form;
pub(crate) use workers::retired_operator_name;
mod platform_keys;
mod probe;
mod query;
mod reclaim;
mod records;
pub(crate) use records::bumped as bumped_tenant;
mod request;
mod secret_body;

pub use records::BindingDetail;
mod intake;
mod intake_form;
mod issuer_keys;
mod op_record;
mod outstanding;
mod secrets;
mod self_rotation;
mod status;
mod unclaimed;
mod workers;

pub use query::{Page, PAGE_MAX};
pub use request::{
    parse_admin_request, AdminOp, ClaimBody, Collection, IgnoreBody, IssuerRetireBody,
    IssuerRotateBody, NewBinding, NewInstance, NewOperator, NewTenant, NewWorker, OnboardBody,
    WorkerTenants,
};
pub use secret_body::SecretBody;

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

/// The refusal of an exclusive `identifier` that `owner`'s binding holds: one tenant's only,
/// taken by the first binding that claims it (`by_probe`: claimed by the probe that proves
/// it, as a role ARN or a service account is).
pub(super) fn identifier_taken(
    identifier: &str,
    owner: &crate::store::records::IdentifierOwner,
    by_probe: bool,
) -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!(
            "{identifier} is already bound (binding {}); an identifier can belong to one tenant only{}",
            owner.binding.as_deref().unwrap_or("?"),
            if by_probe {
                ", and is taken by the first binding whose probe proves it"
            } else {
                ""
            }
        ),
    )
}

pub(super) fn store_err(e: StoreError) -> ApiError {
    match e {
        StoreError::Precondition {
            table,
            key,
            expected,
        } => ApiError::new(
            ErrorCode::Conflict,
            format!(
                "{table}/{} must be {expected} (changed concurrently)",
                crate::store::key_in_message(table, &key)
            ),
        ),
        other => {
            tracing::error!(error = %other, "store failure in admin request");
            ApiError::new(ErrorCode::Internal, "store failure")
        }
    }
}

impl AdminService {
    /// Refuses work that would call an upstream once the broker is stopping: the record of
    /// what it did could not be written after the audit log closes. `then` says when it can
    /// be done instead.
    pub(super) fn refuse_when_stopping(&self, then: &str) -> Result<(), ApiError> {
        if self.core.is_stopping() {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("the broker is stopping; {then}"),
            ));
        }
        Ok(())
    }

    /// Refuses a probe while the broker stops, or while its audit log is known to be
    /// failing: a probe calls the customer's system (an AssumeRole, a token exchange) that
    /// their own logs record, and the broker's must too, as for a resolve.
    pub(super) async fn refuse_probe(&self) -> Result<(), ApiError> {
        self.refuse_when_stopping("probe again once it has started")?;
        if !self.core.audit_log().writable().await {
            return Err(ApiError::new(
                ErrorCode::AuditUnavailable,
                "the audit log is unavailable; no probe was made",
            ));
        }
        Ok(())
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
    /// Bindings whose cached tokens the change makes stale (their generations are new in
    /// `batch`).
    invalidate_bindings: Vec<String>,
    /// The answer already serialized (a JSON object), when building `response` as a value
    /// would cost too much memory (the inventory); `response` is then unused.
    raw: Option<Zeroizing<Vec<u8>>>,
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
            invalidate_bindings: Vec::new(),
            raw: None,
        }
    }
}

/// `ids` as the string slices [`AdminService::commit_audited`] takes.
fn as_strs(ids: &[String]) -> Vec<&str> {
    ids.iter().map(String::as_str).collect()
}

/// The result of an admin operation as the caller sees it.
pub struct AdminOutcome {
    /// Response body.
    pub response: Value,
    /// Whether a record was created (201).
    pub created: bool,
    /// Audit receipt.
    pub receipt: AuditReceipt,
    /// The answer as a serialized JSON object instead of `response` (see [`Plan`]).
    pub raw: Option<Zeroizing<Vec<u8>>>,
}

/// The admin service: plans, audits and commits every change (operator requests, the
/// broker's own flags, the changes callbacks make).
pub struct AdminService {
    core: Arc<Core>,
    /// Orders this process's own changes (fewer retries); correctness does not depend on it:
    /// every plan's reads are preconditions of its batch.
    pub(crate) lock: tokio::sync::Mutex<()>,
    /// Bindings whose secret this process is self-rotating now, and when each binding's last
    /// automatic rotation was tried (one at a time per binding; a failing one waits an hour).
    rotations: std::sync::Mutex<RotationState>,
    /// Bindings with an intake submission of this process between its attempt and its
    /// answer, and how many: another submission that finds the version it staged is told
    /// so, not sent to an operator for it.
    intake_checking: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Counts every key change the store reports (this broker's or, on a shared store,
    /// another replica's): the platform and issuer keys in memory are stale while it is
    /// ahead of `keys_loaded`.
    keys_changed: Arc<std::sync::atomic::AtomicU64>,
    /// The count of `keys_changed` the keys in memory were last loaded at (read before the
    /// load began, so a change during a load leaves them stale).
    keys_loaded: std::sync::atomic::AtomicU64,
    /// One reload at a time.
    keys_reload: tokio::sync::Mutex<()>,
    /// Catch-ups started for anonymous callers ([`AdminService::catch_up_shared`]).
    shared_started: std::sync::atomic::AtomicU64,
    /// The number and result of the last of them to finish; held while one runs.
    shared_done: tokio::sync::Mutex<(u64, Result<(), ApiError>)>,
}

/// See [`AdminService::rotations`].
#[derive(Default)]
struct RotationState {
    running: std::collections::HashSet<String>,
    last_tried: std::collections::HashMap<String, Instant>,
    /// When each binding's waiting pending version was last said (apart from `last_tried`:
    /// once the operator promotes or destroys it, the rotation is not held back an hour).
    last_warned: std::collections::HashMap<String, Instant>,
    /// Owed upstream revocations (`binding/version`) that failed: when last tried, and how
    /// many times in a row.
    revoke_failures: std::collections::HashMap<String, (Instant, u32)>,
}

impl RotationState {
    /// Whether `binding`'s entry of `times` is under an hour old; if not, it is set to now.
    fn within_the_hour(
        times: &mut std::collections::HashMap<String, Instant>,
        binding: &str,
    ) -> bool {
        let recent = times
            .get(binding)
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(3600));
        if !recent {
            times.insert(binding.to_owned(), Instant::now());
        }
        recent
    }
}

impl AdminService {
    /// The service over `core`.
    pub fn new(core: Arc<Core>) -> Arc<AdminService> {
        let keys_changed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let flag = Arc::clone(&keys_changed);
        // Platform and issuer keys live in the platform-key table, sealed under the KEKs the
        // key metadata names.
        core.records.on_change(Arc::new(move |changed| {
            if changed.keys() {
                flag.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
        }));
        Arc::new(AdminService {
            core,
            lock: tokio::sync::Mutex::new(()),
            rotations: std::sync::Mutex::new(RotationState::default()),
            intake_checking: std::sync::Mutex::new(std::collections::HashMap::new()),
            keys_changed,
            keys_loaded: std::sync::atomic::AtomicU64::new(0),
            keys_reload: tokio::sync::Mutex::new(()),
            shared_started: std::sync::atomic::AtomicU64::new(0),
            shared_done: tokio::sync::Mutex::new((0, Ok(()))),
        })
    }

    /// As [`AdminService::catch_up`], for anonymous callers (the issuer's discovery document
    /// and JWKS, fetched by clouds' shared fetchers; callbacks and webhook deliveries, some
    /// verified before they are charged to any rate): one catch-up at a time, and a caller
    /// whose arrival an already finished catch-up started after takes that one's result
    /// instead of making another. Every answer still reflects every change acknowledged
    /// before its request arrived (a key rotated or retired on another replica is the one
    /// used), but a flood of them holds at most one store connection, not the pool the
    /// resolves need.
    ///
    /// # Errors
    /// `unavailable` when the catch-up it relies on failed.
    pub async fn catch_up_shared(&self) -> Result<(), ApiError> {
        use std::sync::atomic::Ordering;
        let arrived = self.shared_started.load(Ordering::Acquire);
        let mut done = self.shared_done.lock().await;
        if done.0 > arrived {
            // Started after this caller arrived, and finished: fresh enough.
            return done.1.clone();
        }
        let number = self.shared_started.fetch_add(1, Ordering::AcqRel) + 1;
        let caught_up = self.catch_up().await;
        *done = (number, caught_up.clone());
        caught_up
    }

    /// Brings this replica up to every change acknowledged anywhere before this call: the
    /// store's change generation is read (caches emptied when it moved) and changed keys
    /// reloaded. Resolves, admin operations and the issuer's public documents start with it.
    ///
    /// # Errors
    /// `unavailable` when the store cannot be reached or the keys cannot be reloaded: the
    /// caller fails closed.
    pub async fn catch_up(&self) -> Result<(), ApiError> {
        if let Err(e) = self.core.records.sync().await {
            tracing::error!(error = %e, "store unreachable; failing closed");
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "the store cannot be reached; nothing was done",
            ));
        }
        self.refresh_keys().await.map_err(|e| {
            tracing::error!(error = %e.message, "platform or issuer keys could not be reloaded; failing closed");
            ApiError::new(
                ErrorCode::Unavailable,
                "the broker's keys could not be reloaded; nothing was done",
            )
        })
    }

    /// Reloads the platform and issuer keys when the store reported a change since they were
    /// last loaded — another replica may have added, rotated or retired one. Resolves call it
    /// after [`crate::store::Store::sync`], so a key retired on any replica signs nothing on
    /// this one from the next resolve on.
    ///
    /// # Errors
    /// When the keys cannot be read or opened (they are reloaded at the next call).
    pub async fn refresh_keys(&self) -> Result<(), ApiError> {
        use std::sync::atomic::Ordering;
        // A caller that saw a change waits for a load that began after it: one already under
        // way (started before the change, or by a caller that saw it) is not enough to skip
        // on a flag another caller cleared, so the keys are judged by counts.
        let seen = self.keys_changed.load(Ordering::Acquire);
        if self.keys_loaded.load(Ordering::Acquire) >= seen {
            return Ok(());
        }
        let _one = self.keys_reload.lock().await;
        if self.keys_loaded.load(Ordering::Acquire) >= seen {
            return Ok(());
        }
        // Every change counted before the load begins is covered by it.
        let covers = self.keys_changed.load(Ordering::Acquire);
        let loaded = async {
            self.load_all_platform_keys().await?;
            self.load_issuer_keys().await.map(|_| ())
        }
        .await;
        if loaded.is_ok() {
            self.keys_loaded.fetch_max(covers, Ordering::AcqRel);
        }
        loaded
    }

    /// Runs one admin operation as `actor`, auditing it.
    ///
    /// The operation runs in its own task: dropping the returned future (a client that hung
    /// up, a cancelled caller) never stops it between its audit record and its commit, so
    /// the log and the store always agree.
    ///
    /// # Errors
    /// The API error, with the audit receipt of the refusal when it could be recorded.
    pub async fn execute(
        self: &Arc<Self>,
        actor: &str,
        op: AdminOp,
        request_id: &str,
    ) -> Result<AdminOutcome, (ApiError, Option<AuditReceipt>)> {
        self.execute_admitted(actor, op, request_id, None).await
    }

    /// [`AdminService::execute`] for a callback acting on behalf of whoever issued its link
    /// (`issuer`, as the link recorded it): each of its commits also requires that operator
    /// active and their record unchanged.
    ///
    /// # Errors
    /// As [`AdminService::execute`]; `operator_required` when the issuer was disabled or
    /// removed.
    pub async fn execute_on_behalf(
        self: &Arc<Self>,
        actor: &str,
        op: AdminOp,
        request_id: &str,
        issuer: Option<commit::Issuer>,
    ) -> Result<AdminOutcome, (ApiError, Option<AuditReceipt>)> {
        Self::on_behalf_of(issuer, self.execute_admitted(actor, op, request_id, None)).await
    }

    /// [`AdminService::execute`] for an operator admitted on `admitted` (their record as read
    /// when the request arrived; `None` while no operator is registered): each of its
    /// commits requires that record unchanged.
    ///
    /// # Errors
    /// As [`AdminService::execute`].
    async fn execute_admitted(
        self: &Arc<Self>,
        actor: &str,
        op: AdminOp,
        request_id: &str,
        admitted: Option<crate::store::records::Stored<crate::model::Operator>>,
    ) -> Result<AdminOutcome, (ApiError, Option<AuditReceipt>)> {
        // Keys a change on another replica retired are not used here either. A request this
        // replica cannot judge now is refused, and that refusal audited like any other
        // (when the audit log can take it).
        if let Err(e) = self.catch_up().await {
            let mut event = Self::event(actor, request_id, &op.action());
            event.outcome = "failed".into();
            event.error_code = Some(e.code.as_str().to_owned());
            event.detail = Some(format!(
                "refused before it was judged: this replica could not catch up ({})",
                e.message
            ));
            let receipt = self.core.audit.append(event).await.ok();
            return Err((e, receipt));
        }
        let this = Arc::clone(self);
        let (actor, request_id) = (actor.to_owned(), request_id.to_owned());
        // Counted until it ends, so a stop waits for it before the audit log closes: an
        // operation whose client went away (a probe calling the customer's cloud) still
        // writes its record.
        let running = crate::issuer::PendingReport::new(&self.core.pending_reports);
        let run = async move {
            let _running = running;
            this.run_admin(&actor, op, &request_id).await
        };
        // The task runs with the admitted record and, for a callback, the issuer it acts for.
        let issuer = commit::ON_BEHALF_OF.try_with(Clone::clone).ok().flatten();
        tokio::spawn(commit::ON_BEHALF_OF.scope(issuer, commit::ADMITTED.scope(admitted, run)))
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
        let mut event = Self::event(actor, request_id, &op.action());
        // Named in the record of a refusal (which no plan describes).
        let target = op.target();
        let op = match op {
            AdminOp::SetStatus(Collection::Bindings, id, Status::Active)
                if self.needs_activation(&id).await =>
            {
                event.action = "binding.enable".into();
                AdminOp::Probe(id)
            }
            other => other,
        };
        // Operations that call an upstream run without the local lock, so a slow upstream
        // never holds up other changes; their commits are preconditioned on what they read
        // (a binding changed meanwhile makes the probe's stamp fail, not overwrite it).
        // (A refusal before their first record is audited as a plan's is.)
        // (Self-rotation calls the upstream between its audited steps: no lock held across.)
        let unlocked = match &op {
            AdminOp::Probe(id) => Some(self.probe_binding(id, event.clone(), started).await),
            AdminOp::RevokeCached(provider) => {
                Some(self.revoke_cached(provider, event.clone()).await)
            }
            AdminOp::SecretSelfRotate(id) => Some(self.self_rotate(id, actor, request_id).await),
            _ => None,
        };
        if let Some(result) = unlocked {
            return self.refusal_recorded(result, event, &target).await;
        }
        let _guard = if op.is_read() {
            None
        } else {
            Some(self.lock.lock().await)
        };
        let op = Self::with_creator(op, actor);
        let rotated = match &op {
            AdminOp::SecretRotate(id, ..) => Some(id.clone()),
            _ => None,
        };
        let planned = self.plan(op).await;
        event.latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let plan = match planned {
            Ok(plan) => plan,
            Err(err) => {
                event.detail = Some(commit::refused_detail(&target, &err));
                return Err(self.audit_refusal(event, err).await);
            }
        };
        event.outcome = "allowed".into();
        event.detail = Some(commit::bounded_detail(&plan.detail));
        event.tenant = plan.tenant.clone();
        event.binding = plan.binding.clone();
        let stale = plan.invalidate_bindings.clone();
        let receipt = self
            .commit_audited(event.clone(), plan.batch, &as_strs(&stale))
            .await?;
        // Keys it changed are reloaded by the next request's `catch_up`, here and on every
        // other replica alike (the commit reported the change).
        tracing::info!(request_id, actor, action = %event.action, audit_id = %receipt.audit_id, "admin change committed");
        let mut response = plan.response;
        // A rotation's pending version is probed at once (its own audited record); the
        // operator promotes it when it passed.
        if let Some(id) = rotated {
            drop(_guard);
            let probe_event = AuditEvent {
                kind: "admin".into(),
                action: "binding.probe".into(),
                request_id: request_id.to_owned(),
                actor: actor.to_owned(),
                ..Default::default()
            };
            response["probe"] = match self.probe_binding(&id, probe_event, Instant::now()).await {
                Ok(o) => o.response["probe"].clone(),
                Err((e, _)) => json!({
                    "result": "failed",
                    "code": e.code.as_str(),
                    "message": e.message,
                }),
            };
        }
        Ok(AdminOutcome {
            response,
            created: plan.created,
            receipt,
            raw: plan.raw,
        })
    }

    async fn plan(&self, op: AdminOp) -> Result<Plan, ApiError> {
        match op {
            AdminOp::List(c, page) => self.plan_list(c, &page).await,
            AdminOp::Show(c, id) => self.plan_show(c, &id).await,
            AdminOp::AddTenant(t) => self.plan_add_tenant(t).await,
            AdminOp::AddWorker(w) => self.plan_add_worker(w).await,
            AdminOp::UpdateWorker(id, u) => self.plan_update_worker(&id, u).await,
            AdminOp::AddOperator(o) => self.plan_add_operator(o).await,
            AdminOp::AddInstance(i) => self.plan_add_instance(i).await,
            AdminOp::AddBinding(b) => {
                // A site of a provider invoked by its installations (Atlassian Forge) is bound
                // on proof only: its administrator's connect code, or an unclaimed
                // installation's signed invocation with the runbook's checks. A cloudId and
                // installation id named by hand are the customer's claim: bound, the next
                // signed invocation of that site would be re-pointed here and its system
                // token served to this tenant's workers.
                if self
                    .core
                    .registry
                    .get(&b.provider)
                    .is_some_and(|p| p.invocations().is_some())
                {
                    return Err(ApiError::bad_request(format!(
                        "a {} site is not bound by hand: its administrator binds it with the connect code of `credbroker onboard atlassian --tenant {}`; a site already running the app is bound with `credbroker unclaimed claim` after the checks of runbooks/atlassian-unclaimed.md",
                        b.provider, b.tenant
                    )));
                }
                self.plan_add_binding(b).await
            }
            AdminOp::SetStatus(c, id, status) => self.plan_status(c, &id, status).await,
            AdminOp::Remove(c, id) => self.plan_remove(c, &id).await,
            AdminOp::SecretSet(id, fields, expires) => {
                self.plan_secret_write(&id, fields, expires, secrets::SecretWrite::Set)
                    .await
            }
            AdminOp::SecretRotate(id, fields, expires) => {
                self.plan_secret_write(&id, fields, expires, secrets::SecretWrite::Rotate)
                    .await
            }
            AdminOp::Governance(g) => self.plan_governance(g).await,
            AdminOp::SecretDestroy(id, version, force) => {
                self.plan_secret_destroy(&id, version, force, None).await
            }
            AdminOp::SecretPromote(id, version) => {
                self.plan_secret_promote(&id, version, false).await
            }
            AdminOp::IntakeCreate(n) => self.plan_intake_create(n).await,
            AdminOp::IntakeList => self.plan_intake_list().await,
            AdminOp::IntakeRevoke(id) => self.plan_intake_revoke(&id).await,
            AdminOp::OnboardingList => self.plan_onboarding_list().await,
            AdminOp::OnboardingRevoke(id) => self.plan_onboarding_revoke(&id).await,
            AdminOp::SecretSelfRotate(_) => Err(ApiError::new(
                ErrorCode::Internal,
                "self-rotation is not a single plan",
            )),
            AdminOp::FlagTrustBroken {
                binding,
                generation,
                drift,
                observed_probe,
            } => {
                self.plan_flag_trust_broken(&binding, &generation, drift, observed_probe)
                    .await
            }
            AdminOp::Onboard(provider, tenant, pin, governance, creator) => {
                self.plan_onboard(&provider, &tenant, pin, governance, creator)
                    .await
            }
            AdminOp::UnclaimedList => self.plan_unclaimed_list().await,
            AdminOp::IgnoreUnclaimed(identifiers) => self.plan_ignore_unclaimed(&identifiers).await,
            AdminOp::ClaimUnclaimed(identifier, tenant, governance) => {
                self.plan_claim_unclaimed(&identifier, tenant, governance)
                    .await
            }
            AdminOp::KeysList(kind) => self.plan_keys_list(&kind).await,
            AdminOp::KeysAdd(kind, material) => self.plan_keys_add(&kind, material).await,
            AdminOp::KeysActivate(kind, v) => self.plan_keys_state(&kind, v, true).await,
            AdminOp::KeysRetire(kind, v) => self.plan_keys_state(&kind, v, false).await,
            AdminOp::IssuerKeysList => self.plan_issuer_list().await,
            AdminOp::IssuerJwks => self.plan_issuer_jwks(),
            AdminOp::IssuerRotate(now) => self.plan_issuer_rotate(now).await,
            AdminOp::IssuerRetire(v, compromised) => self.plan_issuer_retire(v, compromised).await,
            AdminOp::Probe(_) | AdminOp::RevokeCached(_) => Err(ApiError::new(
                ErrorCode::Internal,
                "probes and revocations are not planned operations",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Table;

    /// A conflict names the record it met; for an identifier, only the kind of it (the
    /// rest may be a value handed to a customer).
    #[test]
    fn a_conflict_on_an_identifier_names_only_its_kind() {
        let err = store_err(StoreError::Precondition {
            table: Table::Identifiers.name(),
            key: "callback-state:SecretLookingState".into(),
            expected: "unchanged",
        });
        assert_eq!(err.code, ErrorCode::Conflict);
        assert!(
            !err.message.contains("SecretLookingState"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("identifiers/callback-state"),
            "{}",
            err.message
        );
        let err = store_err(StoreError::Precondition {
            table: Table::Bindings.name(),
            key: "b-1".into(),
            expected: "absent",
        });
        assert!(
            err.message.contains("bindings/b-1 must be absent"),
            "{}",
            err.message
        );
    }
}
