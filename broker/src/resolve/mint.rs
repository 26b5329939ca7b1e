//! One upstream mint for a verified chain.
//!
//! A [`MintJob`] owns everything the mint needs — the provider, the binding, who it is for,
//! the opened secret, the deadline, the circuit breakers and the mint metrics — and nothing
//! else: no handle back to the broker, so a mint can outlive the request that started it
//! (single flight) without reaching into shared state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use credbroker_providers::{
    BindingContext, Bound, IssuedCredential, MintRequest, Narrowing, Provider, ProviderError,
    SecretFields,
};

use crate::breaker::Breakers;
use crate::metrics::ProviderLabel;
use crate::model::Binding;

use super::chain::VerifiedChain;

/// The metrics a mint updates.
#[derive(Clone)]
pub struct MintMetrics {
    /// Upstream mints by provider.
    pub mints: Family<ProviderLabel, Counter>,
    /// Upstream mint latency by provider.
    pub mint_latency: Family<ProviderLabel, Histogram>,
}

/// One mint, owning everything it needs.
pub struct MintJob {
    provider: Arc<dyn Provider>,
    binding: Arc<Binding>,
    bound: Bound,
    instance: String,
    worker: String,
    narrowing: Narrowing,
    secret: Option<SecretFields>,
    timeout: Duration,
    min_ttl_s: u64,
    breakers: Arc<Breakers>,
    metrics: MintMetrics,
    assertions: Arc<crate::issuer::RecordingSigner>,
}

impl MintJob {
    /// A mint for `chain` with `narrowing` (already checked against the binding's ceiling) and
    /// the binding's opened secret, when its provider needs one.
    pub fn new(
        chain: &VerifiedChain,
        bound: Bound,
        narrowing: Narrowing,
        secret: Option<SecretFields>,
        timeout: Duration,
        breakers: Arc<Breakers>,
        metrics: MintMetrics,
    ) -> MintJob {
        MintJob {
            provider: Arc::clone(chain.provider()),
            binding: Arc::clone(chain.binding()),
            bound,
            instance: chain.instance().id.to_string(),
            worker: chain.worker().to_string(),
            narrowing,
            secret,
            timeout,
            min_ttl_s: 0,
            breakers,
            metrics,
            assertions: Arc::new(crate::issuer::RecordingSigner::new(None)),
        }
    }

    /// The issuer signer the provider uses (recording what it signs for the audit record).
    #[must_use]
    pub fn assertions(mut self, signer: Arc<crate::issuer::RecordingSigner>) -> MintJob {
        self.assertions = signer;
        self
    }

    /// The worker's `min_ttl_s`, for providers that hand out a credential they hold.
    #[must_use]
    pub fn min_ttl_s(mut self, min_ttl_s: u64) -> MintJob {
        self.min_ttl_s = min_ttl_s;
        self
    }

    /// Runs the mint within the deadline, through the provider's circuit breaker.
    ///
    /// # Errors
    /// The provider's error; `Unavailable` when the circuit is open or the deadline passes.
    pub async fn run(self) -> Result<IssuedCredential, ProviderError> {
        let request = MintRequest {
            binding: BindingContext {
                tenant_id: self.binding.tenant.as_str(),
                binding_id: self.binding.id.as_str(),
                config: &self.binding.config,
                ceiling: &self.binding.ceiling,
                bound: &self.bound,
            },
            instance_id: &self.instance,
            worker: &self.worker,
            narrowing: &self.narrowing,
            secret: self.secret.as_ref(),
            timeout: self.timeout,
            min_ttl_s: self.min_ttl_s,
            assertions: &*self.assertions,
        };
        let provider_id = self.provider.id();
        let (binding_id, tenant_id) = (self.binding.id.as_str(), self.binding.tenant.as_str());
        // A provider that only opens what the broker holds has no upstream to protect: no
        // rate limit, no circuit (and no cost on its hot path).
        let upstream = self.provider.mints_upstream();
        let mint_for = crate::admission::MintFor {
            worker: &self.worker,
            binding: binding_id,
            tenant: tenant_id,
            provider: provider_id,
        };
        // An upstream that asked for a pause is not called, and its fast failure spends no
        // mint token and counts against no circuit (one that opened on them would outlast
        // the pause).
        if upstream {
            if let Some(paused) = self.provider.paused() {
                return Err(paused);
            }
        }
        let limited = if upstream {
            self.breakers.admit_mint(mint_for)
        } else {
            Ok(())
        };
        if let Err(which) = limited {
            return Err(ProviderError::RateLimited(format!(
                "too many fresh credentials for this {which}; cached ones are still served, retry shortly"
            )));
        }
        // Held until the outcome is recorded: a panic in the mint, or the request dropped
        // while it runs, gives up any trial it claimed.
        let admitted = if upstream {
            match self.breakers.admit_held(provider_id, binding_id) {
                Ok(held) => Some(held),
                Err(retry) => {
                    // Failing fast calls nobody: it spends none of the mint limits.
                    self.breakers.refund_mint(mint_for);
                    return Err(ProviderError::Unavailable {
                        message: format!(
                            "{provider_id} upstream is failing for this binding or for everyone; circuit open, next attempt in {} ms",
                            retry.as_millis()
                        ),
                        upstream_request_id: None,
                    });
                }
            }
        } else {
            None
        };
        if upstream {
            self.assertions.calling_upstream();
        }
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.provider.mint(&request))
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::Unavailable {
                    message: format!("mint did not finish within {} ms", self.timeout.as_millis()),
                    upstream_request_id: None,
                })
            });
        let unavailable = matches!(result, Err(ProviderError::Unavailable { .. }));
        let (binding_opened, provider_opened) = match admitted {
            Some(admitted) => admitted.record(tenant_id, unavailable),
            None => (false, false),
        };
        if provider_opened {
            tracing::warn!(
                provider = provider_id,
                "upstream failing for several tenants: provider circuit opened, cold mints fail fast"
            );
        } else if binding_opened {
            tracing::warn!(
                provider = provider_id,
                tenant = tenant_id,
                binding = binding_id,
                "upstream failing repeatedly for one binding: its circuit opened, its cold mints fail fast"
            );
        }
        if let Ok(cred) = &result {
            self.metrics
                .mints
                .get_or_create(&ProviderLabel {
                    provider: provider_id.to_owned(),
                })
                .inc();
            // What it was minted for goes to the log, never into a metric label.
            tracing::debug!(provider = provider_id, subject = ?cred.subject, "minted");
        }
        self.metrics
            .mint_latency
            .get_or_create(&ProviderLabel {
                provider: provider_id.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
        result
    }
}
