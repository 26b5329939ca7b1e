//! `POST /v1/resolve`: parse → [`verify_chain`] → narrow → mint through the token cache →
//! one audit record → answer.
//!
//! State flows forward: each step returns a typed value, and the audit record is built once,
//! from the [`Decision`], after the fact. Whatever the outcome, exactly one audit record is
//! made durable before the response is written; if that fails, the resolve fails closed with
//! `audit_unavailable` and the credential is dropped (zeroized) unsent. The resolve path makes
//! no store writes: a binding the upstream says the customer withdrew is flagged afterwards,
//! through the audited admin pipeline, in its own task.

pub mod chain;
mod mint;
mod record;
pub mod request;

use std::sync::Arc;
use std::time::Instant;

use zeroize::Zeroizing;

use credbroker_providers::{
    BindingContext, CachePolicy, IssuedCredential, ProviderError, SecretFields, SecretRequirement,
};

use crate::admin::AdminOp;
use crate::admin::AdminService;
use crate::api_error::{ApiError, ErrorCode};
use crate::broker::{error_answer, Answer, Core};
use crate::identity::PeerIdentity;
use crate::ids::BindingId;
use crate::metrics::ResolveLabels;
use crate::token_cache::{CacheKey, Source};

pub use chain::{verify_chain, worker_of, ChainFacts, ChainView, Denial, VerifiedChain};
pub use mint::MintMetrics;
pub use request::{parse_resolve_request, ParsedResolve, MAX_MIN_TTL_S};

use mint::MintJob;
pub use record::ResolveHead;
use record::{abandoned_event, audit_event, outcome_of, success_answer};

/// Audit detail of a resolve whose upstream said the customer withdrew the trust.
const TRUST_BROKEN_DETAIL: &str = "upstream denied: binding flagged trust_broken";

/// A granted resolve.
struct Granted {
    facts: ChainFacts,
    /// What the broker's issuer signed for this resolve's mint (audit detail).
    assertion: Option<String>,
    credential: Arc<IssuedCredential>,
    source: Source,
}

/// A refused resolve.
struct Refused {
    error: ApiError,
    facts: ChainFacts,
    /// What the broker's issuer signed for this resolve's mint (audit detail).
    assertion: Option<String>,
    /// The upstream's request id, when the upstream was asked.
    upstream_request_id: Option<String>,
    /// Whether the upstream said the customer withdrew the trust.
    trust_broken: bool,
    /// The binding generation to flag `trust_broken` (or with `drift`), when it is not
    /// flagged yet.
    flag: Option<String>,
    /// The consent drift the upstream showed.
    drift: Option<crate::model::Drift>,
    /// The binding's `last_tested_at` when the resolve read it.
    observed_probe: Option<String>,
}

impl From<Denial> for Refused {
    fn from(d: Denial) -> Self {
        Refused {
            error: d.error,
            facts: *d.facts,
            assertion: None,
            upstream_request_id: None,
            trust_broken: false,
            flag: None,
            drift: None,
            observed_probe: None,
        }
    }
}

/// What a resolve decided, before it is audited.
struct Decision {
    job_id: Option<String>,
    result: Result<Granted, Refused>,
    /// The signer of the mint this resolve started, if it started one: told once the
    /// resolve's own record is written, or else it writes one when dropped (the client
    /// went away and the resolve with it).
    witness: Option<Arc<crate::issuer::RecordingSigner>>,
}

/// The resolve service: verifies the chain, mints through the token cache, audits the
/// outcome. The only change it causes (a trust-broken flag) goes through the admin service.
pub struct ResolveService {
    core: Arc<Core>,
    admin: Arc<AdminService>,
    /// Flags being raised, by (binding, generation): one flag per binding generation at a
    /// time, however many denials arrive, so a worker hammering a broken binding cannot
    /// queue work on the admin path.
    flagging: Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
}

impl ResolveService {
    /// The service over `core`, raising changes through `admin`.
    pub fn new(core: Arc<Core>, admin: Arc<AdminService>) -> ResolveService {
        ResolveService {
            core,
            admin,
            flagging: Arc::default(),
        }
    }

    /// Handles one `POST /v1/resolve`. `body` is the request body, or the error reading it
    /// produced (too large, timed out) so that the attempt is still audited.
    pub async fn resolve(
        &self,
        peer: Option<&PeerIdentity>,
        body: Result<Zeroizing<Vec<u8>>, ApiError>,
        request_id: &str,
    ) -> Answer {
        // While the audit log is known to be failing, nothing is minted: an exchange the
        // customer's cloud logs must be in the audit log, and no record of it could be made.
        // (After a failure the writer probes the log first: one that recovered serves at once.)
        // Asked for workers only: nothing is minted for any other peer, whose refusal (or
        // lack of identity) is decided as before.
        if matches!(peer, Some(PeerIdentity::Worker(_))) && !self.core.audit_log().writable().await
        {
            // Counted; the writer logs why the log is failing (once, not per request refused).
            tracing::debug!(
                request_id,
                "resolve refused before any upstream call: the audit log is unavailable"
            );
            let err = ApiError::new(
                ErrorCode::AuditUnavailable,
                "the audit log is unavailable; nothing was issued",
            );
            self.count(err.code.as_str(), "failed", "none");
            return error_answer(&err, None, request_id);
        }
        let started = Instant::now();
        let actor = peer.map_or_else(|| "unidentified".to_owned(), PeerIdentity::audit_name);
        let decision = self.decide(peer, body, (request_id, &actor)).await;
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let credentials_json = match &decision.result {
            Ok(granted) => Some(granted.credential.credentials.to_json_zeroizing()),
            Err(_) => None,
        };
        let fingerprint = credentials_json
            .as_ref()
            .map(|json| self.core.fingerprint.fingerprint(json));
        let event = audit_event(
            &decision,
            request_id,
            actor.clone(),
            fingerprint,
            latency_us,
        );
        let outcome = outcome_of(&decision);
        let facts = match &decision.result {
            Ok(g) => &g.facts,
            Err(r) => &r.facts,
        };
        let provider_label = facts.provider.as_deref().unwrap_or("none");
        // The stand-in is dropped as soon as this record is queued: from then on the writer
        // has it, whether or not this resolve lives to hear that it is durable.
        let receipt = self
            .core
            .audit
            .append_then(event, || {
                if let Some(witness) = &decision.witness {
                    witness.reported();
                }
            })
            .await;
        let tenant = facts.tenant.as_ref().map_or("", |t| t.as_str());
        let instance = facts.instance.as_ref().map_or("", |i| i.as_str());
        let worker = actor;
        let answer = match (receipt, &decision.result, credentials_json) {
            (Err(audit_err), _, _) => {
                tracing::error!(request_id, error = %audit_err, "resolve failed closed: audit unavailable");
                let err = ApiError::new(
                    ErrorCode::AuditUnavailable,
                    "the audit record could not be made durable; nothing was issued",
                );
                self.count(err.code.as_str(), "failed", provider_label);
                error_answer(&err, None, request_id)
            }
            (Ok(receipt), Ok(granted), Some(json)) => {
                // Info, though the audit record carries the same ids: after a database
                // failover with asynchronous replication the chain may have lost records the
                // broker answered for, and this line is how runbooks/database-failover.md
                // finds them. It costs the worker about 3 µs a grant (README, "Performance").
                tracing::info!(
                    request_id,
                    worker = %worker,
                    tenant = %tenant,
                    instance = %instance,
                    provider = %provider_label,
                    cached = granted.source != Source::Minted,
                    audit_id = %receipt.audit_id,
                    "resolve allowed"
                );
                self.count("none", "allowed", provider_label);
                if let (Some(binding), Some(PeerIdentity::Worker(w))) = (&facts.binding, peer) {
                    self.core
                        .governance
                        .record_use(binding.as_str(), w.as_str());
                }
                success_answer(granted, &json, &receipt.audit_id, request_id)
            }
            (Ok(receipt), Err(refused), _) => {
                tracing::info!(
                    request_id,
                    worker = %worker,
                    tenant = %tenant,
                    instance = %instance,
                    code = %refused.error.code,
                    audit_id = %receipt.audit_id,
                    "resolve refused"
                );
                self.count(refused.error.code.as_str(), outcome, provider_label);
                if let (Some(generation), Some(binding)) = (&refused.flag, &refused.facts.binding) {
                    self.flag_trust_broken(
                        binding.clone(),
                        generation.clone(),
                        refused.drift.clone(),
                        refused.observed_probe.clone(),
                        request_id,
                    );
                }
                error_answer(&refused.error, Some(&receipt.audit_id), request_id)
            }
            (Ok(receipt), Ok(_), None) => {
                let err = ApiError::new(ErrorCode::Internal, "credential serialization failed");
                error_answer(&err, Some(&receipt.audit_id), request_id)
            }
        };
        self.core
            .metrics
            .resolve_latency
            .observe(started.elapsed().as_secs_f64());
        answer
    }

    fn count(&self, code: &str, outcome: &str, provider: &str) {
        self.core
            .metrics
            .resolves
            .get_or_create(&ResolveLabels {
                outcome: outcome.to_owned(),
                provider: provider.to_owned(),
                code: code.to_owned(),
            })
            .inc();
    }

    /// Flags a binding `trust_broken` through the audited admin pipeline, in its own task:
    /// off the response path, and not cancelled if the client goes away.
    fn flag_trust_broken(
        &self,
        binding: BindingId,
        generation: String,
        drift: Option<crate::model::Drift>,
        observed_probe: Option<String>,
        request_id: &str,
    ) {
        let code = drift.as_ref().map(|d| format!("{:?}", d.code));
        let key = (
            binding.to_string(),
            format!("{generation}/{}", code.unwrap_or_default()),
        );
        let newly = match self.flagging.lock() {
            Ok(mut set) => set.insert(key.clone()),
            Err(_) => false,
        };
        if !newly {
            return;
        }
        let flagging = Arc::clone(&self.flagging);
        let (core, admin) = (Arc::clone(&self.core), Arc::clone(&self.admin));
        let request_id = format!("{request_id}.flag");
        tokio::spawn(async move {
            // A denial that read the binding before an earlier flag landed finds it
            // flagged here: one record per flag, not one per denial in flight.
            let code = drift.as_ref().map(|d| d.code);
            // (A drift flag gives the binding a new generation: one already carrying this
            // drift is flagged whatever its generation now.)
            let flagged = matches!(core.records.binding(&binding).await,
                Ok(Some(b)) if (if code.is_some() { b.drift.as_ref().map(|d| d.code) == code } else { b.generation == generation && b.trust_broken }));
            if !flagged {
                let op = AdminOp::FlagTrustBroken {
                    binding: binding.to_string(),
                    generation,
                    drift,
                    observed_probe,
                };
                match admin.execute("broker", op, &request_id).await {
                    Ok(_) => {
                        tracing::warn!(binding = %binding, "upstream denied: binding flagged trust_broken; the customer may have removed or changed the trust")
                    }
                    Err((e, _)) => {
                        tracing::error!(binding = %binding, error = %e.message, "could not flag binding trust_broken")
                    }
                }
            }
            if let Ok(mut set) = flagging.lock() {
                set.remove(&key);
            }
        });
    }

    async fn decide(
        &self,
        peer: Option<&PeerIdentity>,
        body: Result<Zeroizing<Vec<u8>>, ApiError>,
        who: (&str, &str),
    ) -> Decision {
        // The caller's identity is checked before its body is looked at.
        let refuse = |error: ApiError| Decision {
            witness: None,
            job_id: None,
            result: Err(Refused::from(Denial {
                error,
                facts: Box::default(),
            })),
        };
        if let Err(e) = worker_of(peer) {
            return refuse(e);
        }
        let request = match body.and_then(|b| parse_resolve_request(&b)) {
            Ok(r) => r,
            Err(e) => return refuse(e),
        };
        // Every change acknowledged before this point, on any replica, is judged: the store
        // reports the ones it had not (emptying the record caches) and changed keys are
        // reloaded. Unreachable: fail closed.
        if let Err(error) = self.admin.catch_up().await {
            // Recorded with what the request asked for: an auditor searching an instance's
            // resolves finds the ones an outage refused too.
            return Decision {
                witness: None,
                job_id: request.job_id,
                result: Err(Refused::from(Denial {
                    error,
                    facts: Box::new(ChainFacts {
                        instance: Some(request.instance),
                        ..ChainFacts::default()
                    }),
                })),
            };
        }
        // The first judgement stands for changes acknowledged before this instant: whatever
        // waits from here on (a chain read behind a busy pool, a store read of the sealed
        // secret, a mint) is judged again (see `judge_again`).
        let caught_up = Instant::now();
        // Read before the records: a credential minted from records an invalidation made
        // stale meanwhile is not cached.
        let epoch = self.core.cache.epoch();
        let mut witness = None;
        let result =
            match verify_chain(&self.core.records, &self.core.registry, peer, &request).await {
                Ok(chain) => {
                    match self
                        .grant(&chain, &request, epoch, (who, &mut witness))
                        .await
                    {
                        Ok(granted)
                            if judge_again(
                                &granted.source,
                                chain.provider().mints_upstream(),
                                caught_up.elapsed(),
                            ) =>
                        {
                            let b = chain.binding();
                            let minted_from = (b.generation.as_str(), b.active_secret_version);
                            self.judged_again(granted, minted_from, peer, &request)
                                .await
                        }
                        other => other,
                    }
                }
                Err(denial) => Err(denial.into()),
            };
        Decision {
            job_id: request.job_id,
            result,
            witness,
        }
    }

    /// A mint takes up to the mint deadline. What an operator disabled or removed meanwhile
    /// (the worker, its instance, tenant or binding, on any replica) and was told is in force
    /// is not answered with what the mint brought: the chain is judged again, against every
    /// change acknowledged since, and the credential is withheld when the chain no longer
    /// holds or the binding changed under it (a rotated secret, a narrower ceiling). It stays
    /// cached for the callers the chain still admits; a changed binding's key is not reached
    /// again. The secret version it was minted from must still be the active one too: a
    /// version destroyed at once (a leaked secret) leaves the generation as it was. The
    /// refusal's record names the upstream call that minted it.
    async fn judged_again(
        &self,
        granted: Granted,
        (generation, secret_version): (&str, Option<u32>),
        peer: Option<&PeerIdentity>,
        request: &ParsedResolve,
    ) -> Result<Granted, Refused> {
        // The record names the chain the mint was made for (its tenant, binding and
        // provider: a real upstream call, which that tenant's report must account for),
        // whatever the second check found; its error code says which link failed. Built
        // from the grant only when it is withheld: a mint that stands copies nothing. A
        // cache hit judged again (it waited) names no mint: its upstream call was another
        // resolve's, already on the record.
        let cached = matches!(granted.source, Source::Cached);
        let withheld = |granted: &Granted, error: ApiError| Refused {
            error,
            facts: ChainFacts {
                detail: Some(if cached {
                    "served from the cache, then withheld: the chain changed while it was read"
                } else {
                    "minted, then withheld: the chain changed during the mint"
                }),
                ..granted.facts.clone()
            },
            assertion: granted.assertion.clone(),
            upstream_request_id: if cached {
                None
            } else {
                granted.credential.upstream_request_id.clone()
            },
            trust_broken: false,
            flag: None,
            drift: None,
            observed_probe: None,
        };
        // Shared: grants judged again at once (a pool that slowed many) take one catch-up
        // that started after each of them finished, not one store read each.
        if let Err(error) = self.admin.catch_up_shared().await {
            return Err(withheld(&granted, error));
        }
        match verify_chain(&self.core.records, &self.core.registry, peer, request).await {
            Ok(chain)
                if chain.binding().generation == generation
                    && chain.binding().active_secret_version == secret_version =>
            {
                Ok(granted)
            }
            Ok(_) => Err(withheld(
                &granted,
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the binding changed while its credential was minted: resolve again",
                ),
            )),
            Err(denial) => Err(withheld(&granted, denial.error)),
        }
    }

    /// Narrows and mints (or serves from the token cache) for a verified chain. `who` is the
    /// resolve's request id and actor; `witness` receives the signer of the mint, for
    /// [`Decision::witness`].
    async fn grant(
        &self,
        chain: &VerifiedChain,
        request: &ParsedResolve,
        epoch: u64,
        (who, witness): (
            (&str, &str),
            &mut Option<Arc<crate::issuer::RecordingSigner>>,
        ),
    ) -> Result<Granted, Refused> {
        let facts = chain.facts();
        let refused = |error: ApiError| Refused {
            error,
            facts: facts.clone(),
            upstream_request_id: None,
            trust_broken: false,
            flag: None,
            drift: None,
            observed_probe: None,
            assertion: None,
        };
        let binding = chain.binding();
        let provider = chain.provider();
        let bound = self
            .core
            .bound(binding, provider.as_ref())
            .map_err(|e| refused(e.into()))?;
        let ctx = BindingContext {
            tenant_id: binding.tenant.as_str(),
            binding_id: binding.id.as_str(),
            config: &binding.config,
            ceiling: &binding.ceiling,
            bound: &bound,
        };
        // A min_ttl_s no fresh credential can meet would mint upstream on every call.
        if let Some(lifetime) = provider.credential_lifetime_s(&ctx) {
            if request.min_ttl_s >= lifetime {
                return Err(refused(ApiError::bad_request(format!(
                    "min_ttl_s must be below {lifetime}, the lifetime of this binding's credentials"
                ))));
            }
        }
        let narrowing = provider
            .normalize_narrowing(&ctx, request.narrow.as_ref())
            .map_err(|e| refused(e.into()))?;
        if provider.secret_requirement() == SecretRequirement::Required
            && binding.active_secret_version.is_none()
        {
            return Err(refused(ProviderError::SecretMissing.into()));
        }
        // The sealed version is looked up now; it is opened only when a mint actually runs
        // (not on a cache hit), so plaintext lives for one mint only.
        let sealed = match provider.secret_requirement() {
            SecretRequirement::Required => Some(
                self.core
                    .sealed_active_secret(binding)
                    .await
                    .map_err(|e| refused(e.into()))?,
            ),
            SecretRequirement::None => None,
        };
        // Made when a mint starts (a cache hit needs none). Should the resolve be dropped
        // while the mint it leads runs (the client hung up), the signer writes the record
        // the resolve would have: the mint, and whatever the issuer signed for it, never go
        // unaudited.
        let slot = std::sync::OnceLock::new();
        let job = || {
            let signer = Arc::clone(slot.get_or_init(|| {
                Arc::new(self.core.assertion_signer().until_reported(
                    self.core.audit.clone(),
                    abandoned_event(&facts, request, who),
                    crate::issuer::PendingReport::new(&self.core.pending_reports),
                ))
            }));
            let secret = match &sealed {
                // A stopping broker starts no mint: its record could not be written once
                // the audit log closes.
                _ if self.core.is_stopping() => Err(ProviderError::Unavailable {
                    message: "the broker is stopping; retry on another replica".into(),
                    upstream_request_id: None,
                }),
                Some(sealed) => self.core.open_sealed(binding, sealed).map(Some),
                None => Ok(None::<SecretFields>),
            };
            let job = secret.map(|secret| {
                MintJob::new(
                    chain,
                    bound.clone(),
                    narrowing.clone(),
                    secret,
                    self.core.mint_timeout(),
                    Arc::clone(&self.core.breakers),
                    self.core.mint_metrics(),
                )
                .min_ttl_s(request.min_ttl_s)
                .assertions(signer)
            });
            async move { job?.run().await }
        };
        // A credential its provider can revoke upstream is kept until it expires, cached or
        // not, so a revocation reaches every one this replica handed out.
        let revocable = provider
            .revocation()
            .is_some()
            .then(|| binding.provider.clone());
        let minted = match provider.cache_policy() {
            // (No provider that can revoke is `Never` today; such a mint is not in flight for
            // a revocation to wait on, so one landing after a revocation's mark is kept for
            // the next.)
            CachePolicy::Never => job().await.map(|c| {
                let c = Arc::new(c);
                if let Some(p) = &revocable {
                    self.core.cache.keep_issued(p, binding.tenant.as_str(), &c);
                }
                (c, Source::Minted)
            }),
            CachePolicy::UntilExpiry => {
                let scope = provider.credential_scope(&ctx);
                let key = CacheKey {
                    tenant: binding.tenant.to_string(),
                    binding: binding.id.to_string(),
                    generation: binding.generation.clone(),
                    secret_version: binding.active_secret_version.unwrap_or(0),
                    narrowing: narrowing.canonical.clone(),
                    instance: scope.instance.then(|| chain.instance().id.to_string()),
                    worker: scope.worker.then(|| chain.worker().to_string()),
                };
                let got = self
                    .core
                    .cache
                    .get_or_mint_kept(key, request.min_ttl_s, epoch, revocable, job)
                    .await;
                match &got {
                    Ok((_, Source::Cached)) => {
                        self.core.metrics.cache_hits.inc();
                    }
                    Ok(_) => {
                        self.core.metrics.cache_misses.inc();
                    }
                    Err(_) => {}
                }
                got
            }
        };
        let signer = slot.into_inner();
        let assertion = signer.as_ref().and_then(|s| s.detail());
        *witness = signer;
        match minted {
            Ok((credential, source)) => Ok(Granted {
                facts,
                assertion,
                credential,
                source,
            }),
            Err(e) => {
                let withdrawn = matches!(
                    e,
                    ProviderError::Denied {
                        trust_broken: true,
                        ..
                    }
                );
                let drift = crate::model::Drift::of(&e);
                // An already flagged binding is not flagged again.
                let new_drift = drift
                    .as_ref()
                    .is_some_and(|d| binding.drift.as_ref().map(|x| x.code) != Some(d.code));
                let flag = (withdrawn && !binding.trust_broken) || new_drift;
                Err(Refused {
                    upstream_request_id: e.upstream_request_id().map(str::to_owned),
                    trust_broken: withdrawn,
                    flag: flag.then(|| binding.generation.clone()),
                    drift,
                    observed_probe: binding.last_tested_at.clone(),
                    error: e.into(),
                    facts,
                    assertion,
                })
            }
        }
    }
}

/// How long a resolve may take from its first catch-up to its grant and still be answered on
/// that judgement: the request's own work (the chain and a cache hit, or a pasted secret,
/// read from the record cache). Anything longer waited for something (a store read, a pool,
/// the core), and an operator's change may have been acknowledged meanwhile.
const FIRST_JUDGEMENT_HOLDS: std::time::Duration = std::time::Duration::from_millis(1);

/// Whether a grant is judged again before it is answered ([`ResolveService::judged_again`]):
/// a mint that called an upstream (up to the mint deadline), and any resolve that took
/// longer than [`FIRST_JUDGEMENT_HOLDS`] from its catch-up to its grant (chain records or a
/// sealed version read from a slow store). A quick one is not: a second generation read
/// would double the store round trips of every resolve on PostgreSQL for a window of
/// microseconds.
fn judge_again(source: &Source, mints_upstream: bool, took: std::time::Duration) -> bool {
    (mints_upstream && !matches!(source, Source::Cached)) || took > FIRST_JUDGEMENT_HOLDS
}

#[cfg(test)]
mod judgement_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_grant_is_judged_again_after_an_upstream_mint_or_a_wait() {
        let quick = Duration::from_micros(50);
        let slow = Duration::from_millis(5);
        // An upstream mint, led or joined, whatever it took.
        assert!(judge_again(&Source::Minted, true, quick));
        assert!(judge_again(&Source::Shared, true, quick));
        // A quick cache hit, or a quick opening of what the broker holds: not.
        assert!(!judge_again(&Source::Cached, true, quick));
        assert!(!judge_again(&Source::Minted, false, quick));
        // Either one that waited (a store read parked behind a saturated pool): judged again.
        assert!(judge_again(&Source::Cached, true, slow));
        assert!(judge_again(&Source::Minted, false, slow));
    }
}
