//! Plans for a binding's sealed secret: set, rotate (staged: the new version is `pending`
//! until it passes a probe and an operator promotes it; the previous one is then kept as
//! `superseded`, never served, for the overlap window), promote, destroy. Values are sealed
//! here and never returned.

use serde_json::{json, Value};

use credbroker_providers::{SecretFields, SecretRequirement};

use super::AdminService;
use crate::api_error::{ApiError, ErrorCode};
use crate::model::{now_rfc3339, SecretState, SecretVersion};
use crate::store::records::Stored;

use super::{fresh_generation, store_err, AdminOutcome, Plan};
use crate::audit::{AuditEvent, AuditReceipt};
use crate::model::{Binding, VersionProbe};
use std::time::Instant;

/// How a secret write treats the binding's versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SecretWrite {
    /// The first version, active at once.
    Set,
    /// A pending version; one pending version never promoted is replaced (destroyed).
    Rotate,
    /// A pending version, refused while another one waits that passed its probe or was not
    /// probed yet (an intake link must not destroy what an operator staged); one that failed
    /// its probe is replaced.
    StageBeside,
}

impl AdminService {
    /// Marks version `old` of `binding` superseded in `batch` (kept, never served, destroyed
    /// after the overlap), as read: promotion, token capture and a reinstall's retirement.
    /// `served_facts`: what the binding's probes established of it while it served (its
    /// `trust_facts`), kept on a version whose revocation is owed and that holds none of its
    /// own (one activated before its probes stamped it), so that an owed revocation of a PAT
    /// expired meanwhile is settled without a call.
    pub(super) async fn plan_supersede(
        &self,
        binding: &crate::ids::BindingId,
        old: u32,
        owe_revocation: bool,
        served_facts: Option<&serde_json::Value>,
        batch: &mut crate::store::Batch,
    ) -> Result<(), ApiError> {
        if let Some(read_old) = self
            .core
            .records
            .secret_version(binding, old)
            .await
            .map_err(store_err)?
        {
            let mut superseded = read_old.value.clone();
            superseded.state = SecretState::Superseded;
            superseded.superseded_at = Some(now_rfc3339());
            superseded.upstream_revocation_owed = owe_revocation;
            let has_facts = superseded.probe.as_ref().is_some_and(|p| p.facts.is_some());
            if let (true, false, Some(facts)) = (owe_revocation, has_facts, served_facts) {
                match superseded.probe.as_mut() {
                    // Its own probe record stays as it was; only the facts are added.
                    Some(p) => p.facts = Some(facts.clone()),
                    None => {
                        superseded.probe = Some(VersionProbe {
                            passed: true,
                            at: now_rfc3339(),
                            summary: "what the binding's probes established while it served (kept when superseded)".into(),
                            facts: Some(facts.clone()),
                        });
                    }
                }
            }
            batch.replace(&read_old, &superseded);
        }
        Ok(())
    }

    /// Seals `fields` as `binding`'s next secret version (not yet in any batch); the binding's
    /// version counter moves on.
    pub(super) fn sealed_version(
        &self,
        binding: &mut Binding,
        fields: &SecretFields,
        state: SecretState,
    ) -> Result<crate::model::SecretVersion, ApiError> {
        let version = binding
            .last_secret_version
            .checked_add(1)
            .ok_or_else(|| ApiError::new(ErrorCode::Conflict, "secret version space exhausted"))?;
        let sealed = crate::seal::seal_secret(
            &self.core.keyring,
            &binding.tenant,
            &binding.id,
            version,
            fields,
        )
        .map_err(|e| match e {
            crate::seal::SealError::ReservedTenant => ApiError::bad_request(
                "the tenant id `platform` is reserved: no secret is sealed for it (remove the tenant)",
            ),
            e => {
                tracing::error!(error = %e, "sealing failed");
                ApiError::new(ErrorCode::Internal, "sealing failed")
            }
        })?;
        binding.last_secret_version = version;
        Ok(crate::model::SecretVersion {
            binding: binding.id.clone(),
            version,
            state,
            field_names: fields.names().map(str::to_owned).collect(),
            kek_version: sealed.kek_version,
            wrapped_dek: sealed.wrapped_dek,
            sealed_payload: sealed.sealed_payload,
            created_at: now_rfc3339(),
            probe: None,
            superseded_at: None,
            expires_at: None,
            upstream_revocation_owed: false,
        })
    }

    pub(super) async fn plan_secret_write(
        &self,
        id: &str,
        fields: SecretFields,
        expires_at: Option<String>,
        mode: SecretWrite,
    ) -> Result<Plan, ApiError> {
        let rotate = mode != SecretWrite::Set;
        let stored = self.binding_or_404(id).await?;
        let mut binding = stored.value.clone();
        let provider = self.core.registry.get(&binding.provider).ok_or_else(|| {
            ApiError::new(
                ErrorCode::BindingInactive,
                "binding's provider is not available in this build",
            )
        })?;
        if provider.secret_requirement() != SecretRequirement::Required {
            return Err(ApiError::bad_request(format!(
                "provider {} is federated and takes no secret",
                binding.provider
            )));
        }
        if provider.invocations().is_some() {
            return Err(ApiError::bad_request(format!(
                "provider {} captures its tokens from signed invocations; none is set by hand",
                binding.provider
            )));
        }
        let mut plan = Plan::new(String::new(), Value::Null);
        if let (false, Some(v)) = (rotate, binding.active_secret_version) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("binding {id} already has active secret version {v}; use rotate"),
            ));
        }
        // A rotation replaces a pending version that was never promoted (it is destroyed).
        let mut replaced = None;
        if rotate {
            if let Some(p) = binding.pending_secret_version {
                if let Some(read) = self
                    .core
                    .records
                    .secret_version(&binding.id, p)
                    .await
                    .map_err(store_err)?
                {
                    if mode == SecretWrite::StageBeside && read.value.worth_keeping() {
                        return Err(ApiError::new(
                            ErrorCode::Conflict,
                            format!("binding {id} has pending version {p} waiting to be promoted or destroyed; it is not replaced"),
                        ));
                    }
                    plan.batch.remove(&read);
                }
                replaced = Some(p);
            }
        }
        let mut record = self.sealed_version(
            &mut binding,
            &fields,
            if rotate {
                SecretState::Pending
            } else {
                SecretState::Active
            },
        )?;
        record.expires_at = expires_at;
        let (version, names) = (record.version, record.field_names.clone());
        plan.batch.create(&record);
        if rotate {
            // Staged: nothing served changes until the version is probed and promoted.
            binding.pending_secret_version = Some(version);
        } else {
            binding.active_secret_version = Some(version);
            binding.generation = fresh_generation()?;
            plan.invalidate_bindings.push(binding.id.to_string());
            // An active binding whose versions were all destroyed: a secret set on it is as
            // unproved as a first one (a client whose user now holds admin, a PAT of another
            // user). Where the probe is what holds the ceiling, it goes back to pending
            // activation, and only a probe that passes serves the secret.
            if binding.status == crate::model::Status::Active
                && provider.probe().is_some_and(|p| p.gates_activation())
            {
                binding.status = crate::model::Status::PendingActivation;
                binding.status_change = crate::model::StatusChange::now(
                    crate::model::StatusSource::Broker,
                    "deactivated: a secret was set with none active; its probe activates it",
                );
            }
        }
        plan.batch.replace(&stored, &binding);
        plan.detail = format!(
            "binding={} version={version} state={} fields=[{}] binding_status={:?}{}",
            binding.id,
            if rotate { "pending" } else { "active" },
            names.join(","),
            binding.status,
            replaced.map_or(String::new(), |p| format!(
                "; replaced pending version {p} (destroyed)"
            ))
        );
        plan.response = json!({
            "binding": binding.id.as_str(),
            "version": version,
            "state": if rotate { "pending" } else { "active" },
            "field_names": names,
            "active_secret_version": binding.active_secret_version,
            "binding_status": binding.status,
            "replaced_pending_version": replaced,
        });
        plan.tenant = Some(binding.tenant.to_string());
        plan.binding = Some(binding.id.to_string());
        plan.created = !rotate;
        Ok(plan)
    }

    /// Promotes pending version `version` of binding `id`: refused unless it passed its last
    /// probe. One batch: it becomes active, the previous active version superseded (kept,
    /// never served, destroyed after the overlap), the binding's generation renewed and its
    /// cached credentials dropped.
    pub(super) async fn plan_secret_promote(
        &self,
        id: &str,
        version: u32,
        owe_revocation: bool,
    ) -> Result<Plan, ApiError> {
        let stored = self.binding_or_404(id).await?;
        let mut binding = stored.value.clone();
        if binding.pending_secret_version != Some(version) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "version {version} is not binding {id}'s pending version (pending: {})",
                    binding
                        .pending_secret_version
                        .map_or("none".to_owned(), |p| p.to_string())
                ),
            ));
        }
        let read = self
            .core
            .records
            .secret_version(&binding.id, version)
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                ApiError::new(ErrorCode::Internal, "pending secret version is missing")
            })?;
        match &read.value.probe {
            Some(p) if p.passed => {}
            Some(p) => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "version {version} failed its last probe ({}); rotate again or fix the source system and probe",
                        p.summary
                    ),
                ))
            }
            None => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("version {version} has not been probed (credbroker binding probe {id})"),
                ))
            }
        }
        let mut plan = Plan::new(String::new(), Value::Null);
        let mut promoted = read.value.clone();
        promoted.state = SecretState::Active;
        plan.batch.replace(&read, &promoted);
        let previous = binding.active_secret_version;
        if let Some(old) = previous {
            let served = binding.trust_facts.as_ref();
            self.plan_supersede(&binding.id, old, owe_revocation, served, &mut plan.batch)
                .await?;
        }
        binding.active_secret_version = Some(version);
        binding.pending_secret_version = None;
        binding.generation = fresh_generation()?;
        // What the binding's last probe found was of the secret now superseded (a PAT's
        // expiry, which decides when it is rotated): the promoted one's probe is what holds.
        binding.trust_facts = read.value.probe.as_ref().and_then(|p| p.facts.clone());
        plan.batch.replace(&stored, &binding);
        plan.detail = format!(
            "binding={} promoted version {version}{}",
            binding.id,
            previous.map_or(String::new(), |p| format!(
                "; version {p} superseded (kept {} s, never served)",
                self.core.superseded_overlap_s()
            ))
        );
        plan.response = json!({
            "binding": binding.id.as_str(),
            "active_secret_version": version,
            "superseded": previous,
        });
        plan.tenant = Some(binding.tenant.to_string());
        plan.binding = Some(binding.id.to_string());
        plan.invalidate_bindings.push(binding.id.to_string());
        Ok(plan)
    }

    /// Destroys every version of binding `id`'s secret (`version` None), or one version. The
    /// active version is destroyed on its own only when `force`d: without it resolves fail
    /// with `secret_missing` until another version is promoted, so the operator must say so.
    /// `made`: the binding's tenant and creation time as the caller knew them, for a caller
    /// that wrote the version itself (an intake submission, a self-rotation): a binding
    /// removed and re-created under the same id meanwhile is another binding, and none of its
    /// versions is destroyed (the binding as read is the batch's precondition, so this holds
    /// on any replica).
    pub(super) async fn plan_secret_destroy(
        &self,
        id: &str,
        version: Option<u32>,
        force: bool,
        made: Option<(&str, &str)>,
    ) -> Result<Plan, ApiError> {
        let stored = self.binding_or_404(id).await?;
        let mut binding = stored.value.clone();
        if made.is_some_and(|m| binding.made() != m) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("binding {id} was removed and made again meanwhile: its versions are not this writer's"),
            ));
        }
        let forced_active = match version {
            Some(v) if binding.active_secret_version == Some(v) => {
                if !force {
                    return Err(ApiError::new(
                        ErrorCode::SecretVersionActive,
                        format!(
                            "version {v} is binding {id}'s active version: destroying it leaves every resolve failing with secret_missing until another version is promoted; rotate and promote a new version first, or destroy it anyway with --force (?force=true)"
                        ),
                    ));
                }
                true
            }
            _ => false,
        };
        let versions = self
            .core
            .records
            .secret_versions(&binding.id)
            .await
            .map_err(store_err)?;
        let doomed: Vec<&Stored<SecretVersion>> = match version {
            None => versions.iter().collect(),
            Some(v) => {
                let found: Vec<&Stored<SecretVersion>> =
                    versions.iter().filter(|s| s.version == v).collect();
                if found.is_empty() {
                    return Err(ApiError::new(
                        ErrorCode::UnknownRecord,
                        format!("binding {id} has no secret version {v}"),
                    ));
                }
                found
            }
        };
        if doomed.is_empty() {
            return Err(ApiError::new(
                ErrorCode::UnknownRecord,
                format!("binding {id} has no secret"),
            ));
        }
        let mut plan = Plan::new(String::new(), Value::Null);
        let mut destroyed = Vec::new();
        for v in &doomed {
            plan.batch.remove(v);
            destroyed.push(v.version);
            if binding.active_secret_version == Some(v.version) {
                binding.active_secret_version = None;
            }
            if binding.pending_secret_version == Some(v.version) {
                binding.pending_secret_version = None;
            }
        }
        plan.batch.replace(&stored, &binding);
        plan.detail = format!(
            "binding={} destroyed_versions=[{}]{}",
            binding.id,
            destroyed
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            if forced_active {
                "; forced: it was the active version"
            } else {
                ""
            }
        );
        note_revocations_lost(&mut plan.detail, doomed.iter().map(|v| &v.value));
        plan.response = json!({
            "binding": binding.id.as_str(),
            "destroyed_versions": destroyed,
            "active_secret_version": binding.active_secret_version,
        });
        plan.tenant = Some(binding.tenant.to_string());
        plan.binding = Some(binding.id.to_string());
        plan.invalidate_bindings.push(binding.id.to_string());
        Ok(plan)
    }

    /// Probes pending version `version` of `binding` against its source system and stamps the
    /// result on the version (audited). The active version keeps serving either way; only a
    /// version whose last probe passed can be promoted.
    pub(super) async fn probe_pending(
        &self,
        binding: &Binding,
        version: u32,
        mut event: AuditEvent,
        started: Instant,
    ) -> Result<AdminOutcome, (ApiError, Option<AuditReceipt>)> {
        let refuse = |e: ApiError| (e, None);
        self.refuse_probe().await.map_err(refuse)?;
        let read = self
            .core
            .records
            .secret_version(&binding.id, version)
            .await
            .map_err(|e| refuse(store_err(e)))?
            // Destroyed since it was staged (an operator's rotation or discard): no verdict
            // on its value, and no internal fault (an intake submission's page and record
            // would say its value failed).
            .ok_or_else(|| {
                refuse(ApiError::new(
                    ErrorCode::Conflict,
                    format!("pending secret version {version} was destroyed before its probe ran"),
                ))
            })?;
        let signer = self.core.assertion_signer();
        let result = self.run_probe(binding, Some(version), &signer).await;
        event.latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut stamped = read.value.clone();
        let mut calls = String::new();
        let (summary, facts, error) = match result {
            Ok(report) => {
                calls = super::probe::upstream_calls(&mut event, &report.upstream_request_ids);
                (
                    report.summary,
                    Some(report.facts).filter(|f| !f.is_null()),
                    None,
                )
            }
            Err(e) => {
                event.upstream_request_id = e.upstream_request_id().map(str::to_owned);
                let err = ApiError::from(e);
                (format!("{}: {}", err.code, err.message), None, Some(err))
            }
        };
        stamped.probe = Some(VersionProbe {
            passed: error.is_none(),
            at: now_rfc3339(),
            summary: summary.chars().take(500).collect(),
            facts,
        });
        event.outcome = if error.is_none() { "allowed" } else { "denied" }.into();
        event.error_code = error.as_ref().map(|e| e.code.as_str().to_owned());
        event.detail = Some(format!(
            "binding={} pending version {version} probe {}: {}{calls}{}",
            binding.id,
            if error.is_none() { "passed" } else { "failed" },
            summary.chars().take(300).collect::<String>(),
            signer
                .detail()
                .map(|a| format!("; {a}"))
                .unwrap_or_default()
        ));
        let mut batch = crate::store::Batch::new();
        batch.replace(&read, &stamped);
        let receipt = self.commit_audited(event, batch, &[]).await?;
        match error {
            None => Ok(AdminOutcome {
                raw: None,
                response: json!({
                    "binding": binding.id.as_str(),
                    "pending_version": version,
                    "probe": { "result": "passed", "summary": summary },
                    "then": format!("credbroker secret promote {} {version}", binding.id),
                }),
                created: false,
                receipt,
            }),
            Some(err) => Err((err, Some(receipt))),
        }
    }

    /// At most `limit` superseded secret versions whose overlap (`[secrets]
    /// superseded_overlap_s`) ended before `now` (Unix seconds). Versions superseded before
    /// the time was recorded are kept until destroyed by hand, and so is one whose upstream
    /// revocation is still owed (destroyed, it could never be revoked by the broker).
    pub(super) async fn superseded_past_overlap(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<Stored<SecretVersion>>, ApiError> {
        let overlap = i64::try_from(self.core.superseded_overlap_s()).unwrap_or(i64::MAX);
        // One pass over the table's metadata (sealed material is skipped, rows are read one
        // at a time): only the versions due are held, then each is read whole again at the
        // key the pass found it under (the removal is conditioned on those exact bytes) and
        // judged again, so what is removed is what was judged.
        let due = self
            .core
            .records
            .keyed_secret_metas_where(move |v| {
                past_overlap(
                    v.owes_revocation(),
                    v.state,
                    v.superseded_at.as_deref(),
                    overlap,
                    now,
                )
            })
            .await
            .map_err(store_err)?;
        let mut out = Vec::new();
        for (key, _) in due {
            if out.len() >= limit {
                break;
            }
            match self.core.records.secret_version_at(&key).await {
                Ok(Some(v))
                    if past_overlap(
                        v.value.owes_revocation(),
                        v.value.state,
                        v.value.superseded_at.as_deref(),
                        overlap,
                        now,
                    ) =>
                {
                    out.push(v);
                }
                // Changed or removed since the pass: judged again at the next one.
                Ok(_) => {}
                // A row the metadata pass read but that is not a valid secret version is
                // named and left (the collector goes on with the others).
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "a superseded secret version could not be read whole; left in place");
                }
            }
        }
        Ok(out)
    }
}

/// Appends to `detail`, when any of the `destroyed` versions still owed its upstream
/// revocation, that the broker can no longer make it (destroyed, or with its binding).
pub(super) fn note_revocations_lost<'a>(
    detail: &mut String,
    destroyed: impl IntoIterator<Item = &'a SecretVersion>,
) {
    let owed: Vec<String> = destroyed
        .into_iter()
        .filter(|v| v.owes_revocation())
        .map(|v| v.version.to_string())
        .collect();
    if !owed.is_empty() {
        detail.push_str(&format!(
            "; the upstream revocation of secret version(s) {} was still owed and will not be made: revoke them at the source",
            owed.join(",")
        ));
    }
}

/// Whether a secret version in `state`, superseded at `superseded_at` (RFC 3339), is past
/// the `overlap` (seconds) at `now` (Unix seconds) and may go: never while its upstream
/// revocation is `owed` (destroyed, the broker could no longer make it).
fn past_overlap(
    owed: bool,
    state: SecretState,
    superseded_at: Option<&str>,
    overlap: i64,
    now: i64,
) -> bool {
    if owed {
        return false;
    }
    let since = superseded_at
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(time::OffsetDateTime::unix_timestamp);
    state == SecretState::Superseded && since.is_some_and(|s| s.saturating_add(overlap) <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_superseded_version_past_its_overlap_is_due() {
        let at = "2026-12-01T00:00:00Z";
        let t = 1_796_083_200; // 2026-12-01T00:00:00Z
        assert!(past_overlap(
            false,
            SecretState::Superseded,
            Some(at),
            60,
            t + 60
        ));
        // Kept while its upstream revocation is owed, however long past.
        assert!(!past_overlap(
            true,
            SecretState::Superseded,
            Some(at),
            60,
            i64::MAX
        ));
        assert!(!past_overlap(
            false,
            SecretState::Superseded,
            Some(at),
            60,
            t + 59
        ));
        assert!(!past_overlap(
            false,
            SecretState::Active,
            Some(at),
            60,
            t + 3600
        ));
        assert!(!past_overlap(
            false,
            SecretState::Pending,
            Some(at),
            60,
            t + 3600
        ));
        // No (or no readable) time: kept until destroyed by hand.
        assert!(!past_overlap(
            false,
            SecretState::Superseded,
            None,
            0,
            i64::MAX
        ));
        assert!(!past_overlap(
            false,
            SecretState::Superseded,
            Some("yesterday"),
            0,
            i64::MAX
        ));
        // An overlap too large to add never comes due.
        assert!(!past_overlap(
            false,
            SecretState::Superseded,
            Some(at),
            i64::MAX,
            i64::MAX - 1
        ));
    }
}
