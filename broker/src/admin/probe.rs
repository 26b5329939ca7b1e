//! Activation and on-demand probes: which bindings a provider activates by a probe only,
//! running a provider's probe with the binding's secret, and stamping (and, for a probe that
//! refuses the trust, deactivating) the binding through the audited pipeline.

use std::time::Instant;

use serde_json::json;

use credbroker_providers::{
    BindingContext, MintRequest, Narrowing, ProviderError, SecretRequirement,
};

use super::{to_value, AdminOutcome, AdminService};
use crate::api_error::{ApiError, ErrorCode};
use crate::audit::{AuditEvent, AuditReceipt};
use crate::model::{now_rfc3339, Binding, Status, VersionProbe};
use crate::store::records::IdentifierOwner;

impl AdminService {
    /// Whether `binding` is a binding whose provider requires an activation probe. A read
    /// that fails says yes: the probe then reads it again and reports the failure, where a
    /// no would let an enable skip the probe.
    pub(super) async fn needs_activation(&self, binding: &str) -> bool {
        let Ok(id) = crate::ids::BindingId::parse(binding) else {
            return false;
        };
        match self.core.records.binding(&id).await {
            Ok(Some(b)) => self.gates_activation(&b),
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Whether `binding`'s provider activates it by a probe only.
    pub(super) fn gates_activation(&self, binding: &Binding) -> bool {
        self.core
            .registry
            .get(&binding.provider)
            .and_then(|p| p.probe().map(|probe| probe.gates_activation()))
            .unwrap_or(false)
    }

    /// Runs a binding's probe; stamps the result; activates a pending binding that passes.
    pub(super) async fn probe_binding(
        &self,
        id: &str,
        mut event: AuditEvent,
        started: Instant,
    ) -> Result<AdminOutcome, (ApiError, Option<AuditReceipt>)> {
        let refuse = |e: ApiError| (e, None);
        self.refuse_probe().await.map_err(refuse)?;
        let stored = self.binding_or_404(id).await.map_err(refuse)?;
        let mut binding = stored.value.clone();
        // The generation the binding takes should the probe retire what was minted from it.
        let renewed = super::fresh_generation().map_err(refuse)?;
        event.tenant = Some(binding.tenant.to_string());
        event.binding = Some(binding.id.to_string());
        event.provider = Some(binding.provider.clone());
        // A rotation's pending version is what needs testing: the active one keeps serving.
        if let Some(version) = binding.pending_secret_version {
            if event.action != "binding.enable" {
                return self.probe_pending(&binding, version, event, started).await;
            }
        }
        let activate =
            event.action == "binding.enable" || binding.status == Status::PendingActivation;
        let signer = self.core.assertion_signer();
        let result = self.run_probe(&binding, None, &signer).await;
        // A passed probe that leaves the binding active is the proof of its identifiers
        // where the provider's probe is (AWS, GCP): they are claimed with its stamp, unless
        // another binding proved them first. Elsewhere an activation needs them held.
        let (claims, held) = if result.is_ok() && (activate || binding.status == Status::Active) {
            match self.claims_to_hold(&binding, activate).await {
                Ok(claims) => (claims, None),
                Err(e) => (Vec::new(), Some(e)),
            }
        } else {
            (Vec::new(), None)
        };
        event.latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        binding.last_tested_at = Some(now_rfc3339());
        // The probe of the active version is that version's own too: what a passing one
        // established (a PAT's expiry, as the upstream reported it) stays with the version
        // once it is superseded, where an owed revocation of it is judged.
        // A read that fails stamps nothing: the probe (its upstream calls made) is still
        // recorded, and its commit fails on the store as it would.
        let active = match binding.active_secret_version {
            Some(v) => match self.core.records.secret_version(&binding.id, v).await {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(binding = %binding.id, error = %e, "cannot read the active secret version to stamp its probe");
                    None
                }
            },
            None => None,
        };
        let (mut upstream_passed, mut established) = (false, None);
        let mut calls = String::new();
        let (outcome, error) = match result {
            Ok(report) => {
                calls = upstream_calls(&mut event, &report.upstream_request_ids);
                let summary = report.summary;
                binding.last_probe = Some(format!("passed: {summary}"));
                binding.trust_broken = false;
                binding.drift = None;
                upstream_passed = true;
                if !report.facts.is_null() {
                    established = Some(report.facts.clone());
                    binding.trust_facts = Some(report.facts);
                }
                if let Some(err) = held {
                    // The upstream's answer is kept; the binding is not activated, nor, when
                    // another binding holds its identifier, left active (see claims_to_hold).
                    // A claim that could not be read (the store failing) changes no status.
                    if binding.status == Status::Active && err.code == ErrorCode::Conflict {
                        binding.status = Status::PendingActivation;
                        binding.generation.clone_from(&renewed);
                        binding.status_change = crate::model::StatusChange::now(
                            crate::model::StatusSource::Broker,
                            "deactivated: another binding holds its identifier",
                        );
                    }
                    binding.last_probe = Some(format!(
                        "passed upstream, but {}: {}",
                        err.code, err.message
                    ));
                    (Err(()), Some(err))
                } else if activate {
                    binding.status = Status::Active;
                    binding.status_change = if event.action == "binding.enable" {
                        crate::model::StatusChange::now(
                            crate::model::StatusSource::Operator,
                            "enabled by an operator; probe passed",
                        )
                    } else {
                        crate::model::StatusChange::now(
                            crate::model::StatusSource::Broker,
                            "activated by its probe",
                        )
                    };
                    (Ok(summary), None)
                } else {
                    (Ok(summary), None)
                }
            }
            Err(e) => {
                event.upstream_request_id = e.upstream_request_id().map(str::to_owned);
                // A probe that sees consent withdrawn or stale marks the binding as a
                // resolve would.
                if let Some(drift) = crate::model::Drift::of(&e) {
                    if binding.drift.as_ref().map(|d| d.code) != Some(drift.code) {
                        // What was minted under the consent as it was: served by no replica.
                        binding.generation.clone_from(&renewed);
                    }
                    binding.drift = Some(drift);
                }
                // A probe that refuses the trust (the ExternalId or subject no longer pinned,
                // roles beyond the ceiling, another account) refuses it for the binding that
                // is serving too: its mints would hand out what the probe just refused (a
                // ServiceNow bearer is never checked again at mint). It goes back to pending
                // activation (the commit invalidates its cached credentials), and a probe
                // that passes activates it again.
                if let ProviderError::ActivationRefused { reason, .. } = &e {
                    if binding.status == Status::Active {
                        binding.status = Status::PendingActivation;
                        // Nor does any replica serve what it cached before the refusal.
                        binding.generation.clone_from(&renewed);
                        binding.status_change = crate::model::StatusChange::now(
                            crate::model::StatusSource::Broker,
                            format!(
                                "deactivated: its probe refused the trust ({})",
                                reason.code()
                            ),
                        );
                    }
                }
                let err = ApiError::from(e);
                binding.last_probe = Some(format!("failed ({}): {}", err.code, err.message));
                (Err(()), Some(err))
            }
        };
        event.outcome = if error.is_none() { "allowed" } else { "denied" }.into();
        event.error_code = error.as_ref().map(|e| e.code.as_str().to_owned());
        event.detail = Some(format!(
            "binding={} status={:?} {}{calls}{}",
            binding.id,
            binding.status,
            binding.last_probe.clone().unwrap_or_default(),
            signer
                .detail()
                .map(|a| format!("; {a}"))
                .unwrap_or_default()
        ));
        let mut batch = crate::store::Batch::new();
        batch.replace(&stored, &binding);
        if let Some(read) = &active {
            let mut stamped = read.value.clone();
            // A failed probe keeps what an earlier passing one established of this version.
            let kept = stamped.probe.take().and_then(|p| p.facts);
            stamped.probe = Some(VersionProbe {
                passed: upstream_passed,
                at: now_rfc3339(),
                summary: binding
                    .last_probe
                    .as_deref()
                    .unwrap_or_default()
                    .chars()
                    .take(500)
                    .collect(),
                facts: established.or(kept),
            });
            batch.replace(read, &stamped);
        }
        for identifier in &claims {
            // Absent when the batch commits, or it fails: of two probes proving one role at
            // once, on any replica, one activates.
            batch.claim_identifier(
                identifier,
                &IdentifierOwner {
                    tenant: binding.tenant.to_string(),
                    binding: Some(binding.id.to_string()),
                },
            );
        }
        let receipt = self
            .commit_audited(event, batch, &[binding.id.as_str()])
            .await?;
        match (outcome, error) {
            (Ok(summary), _) => Ok(AdminOutcome {
                raw: None,
                response: json!({ "binding": to_value(&binding), "probe": { "result": "passed", "summary": summary } }),
                created: false,
                receipt,
            }),
            (Err(()), Some(err)) => Err((err, Some(receipt))),
            (Err(()), None) => Err((
                ApiError::new(ErrorCode::Internal, "probe failed"),
                Some(receipt),
            )),
        }
    }

    /// The exclusive identifiers `binding` must claim to be active (none where it holds
    /// them already): where its provider's probe proves them (AWS, GCP), those a passed
    /// probe proves; elsewhere, when it is being `activate`d, those its provider names, which
    /// it was given when it was made but may not hold (the schema-3 migration disabled,
    /// claiming nothing, a binding whose identifier another binding held).
    ///
    /// # Errors
    /// `conflict` when another binding holds one: it was proved (or, made before this
    /// release or by a provider whose identifiers are claimed at once, named) first.
    pub(super) async fn claims_to_hold(
        &self,
        binding: &Binding,
        activate: bool,
    ) -> Result<Vec<String>, ApiError> {
        let Some(provider) = self.core.registry.get(&binding.provider) else {
            return Ok(Vec::new());
        };
        let proves = provider.probe_proves_identifiers();
        if !proves && !activate {
            return Ok(Vec::new());
        }
        let mut claims = Vec::new();
        for identifier in provider.exclusive_identifiers(&binding.config) {
            match self
                .core
                .records
                .identifier_owner(&identifier)
                .await
                .map_err(super::store_err)?
            {
                None => claims.push(identifier),
                Some(owner) if owner.binding.as_deref() == Some(binding.id.as_str()) => {}
                Some(owner) => return Err(super::identifier_taken(&identifier, &owner, proves)),
            }
        }
        Ok(claims)
    }

    /// Runs `binding`'s provider probe with its active secret, or with secret version
    /// `version` when given (a pending rotation).
    pub(super) async fn run_probe(
        &self,
        binding: &Binding,
        version: Option<u32>,
        signer: &crate::issuer::RecordingSigner,
    ) -> Result<credbroker_providers::ProbeReport, ProviderError> {
        let provider = self
            .provider_of(binding)
            .map_err(|e| ProviderError::InvalidConfig(e.message))?;
        let secret = match (provider.secret_requirement(), version) {
            (SecretRequirement::Required, None) => {
                Some(self.core.open_active_secret(binding).await?)
            }
            (SecretRequirement::Required, Some(v)) => {
                let sealed = self
                    .core
                    .records
                    .secret_version(&binding.id, v)
                    .await
                    .map_err(|e| crate::broker::secret_read_failed(binding, &e))?
                    .ok_or(ProviderError::SecretMissing)?;
                Some(self.core.open_sealed(binding, &sealed.value)?)
            }
            (SecretRequirement::None, _) => None,
        };
        let narrowing = Narrowing::none();
        let timeout = self.core.mint_timeout();
        let bound = provider.bind(&binding.config, &binding.ceiling)?;
        let request = MintRequest {
            binding: BindingContext {
                tenant_id: binding.tenant.as_str(),
                binding_id: binding.id.as_str(),
                config: &binding.config,
                ceiling: &binding.ceiling,
                bound: &bound,
            },
            instance_id: "activation-probe",
            worker: "credbroker",
            narrowing: &narrowing,
            secret: secret.as_ref(),
            timeout,
            min_ttl_s: 0,
            assertions: signer,
        };
        let probe = provider.probe().ok_or_else(|| {
            ProviderError::InvalidConfig(format!("provider {} has no probe", provider.id()))
        })?;
        let report = tokio::time::timeout(timeout * 2, probe.probe(&request))
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::Unavailable {
                    message: "probe did not finish in time".into(),
                    upstream_request_id: None,
                })
            })?;
        Ok(report)
    }
}

/// Records a passed probe's upstream calls in its audit `event`: the first call's request id
/// as the record's `upstream_request_id`, and every one (a customer's CloudTrail or audit log
/// lists each, refused ones too) in the returned suffix for the record's detail. A failed
/// probe's error names its earlier calls itself ([`ProviderError::after_calls`]).
pub(super) fn upstream_calls(event: &mut AuditEvent, ids: &[String]) -> String {
    event.upstream_request_id = ids.first().cloned();
    if ids.is_empty() {
        String::new()
    } else {
        format!("; upstream requests: {}", ids.join(" "))
    }
}
