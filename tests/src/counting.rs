//! A test provider that counts its mints: a minting provider with a cacheable, expiring
//! credential, used to observe caching and single flight from outside the core.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use credbroker_providers::{
    BindingContext, Bound, CachePolicy, CeilingEnforcement, IssuedCredential, MintRequest,
    Narrowing, Provider, ProviderError, SecretFields, SecretRequirement,
};
use secrecy::SecretString;
use serde_json::Value;

/// Mints `{"token": "minted-<n>"}` valid for an hour, after `delay`.
pub struct CountingProvider {
    /// Mints performed.
    pub mints: Arc<AtomicUsize>,
    /// Simulated upstream latency.
    pub delay: Duration,
    /// When set, every mint also waits for a permit here: a test holds the mint until all
    /// its callers are parked on it.
    pub gate: Option<Arc<tokio::sync::Semaphore>>,
}

#[async_trait]
impl Provider for CountingProvider {
    fn id(&self) -> &'static str {
        "test_counting"
    }
    fn secret_requirement(&self) -> SecretRequirement {
        SecretRequirement::None
    }
    fn cache_policy(&self) -> CachePolicy {
        CachePolicy::UntilExpiry
    }
    fn ceiling_enforcement(&self) -> CeilingEnforcement {
        // The narrowing goes to the (pretend) upstream as the cache-key test needs it.
        CeilingEnforcement::Upstream
    }
    fn bind(&self, _: &Value, _: &Value) -> Result<Bound, ProviderError> {
        Ok(Bound::new(()))
    }
    fn describe_ceiling(&self, _: &BindingContext<'_>) -> Value {
        Value::Null
    }
    fn normalize_narrowing(
        &self,
        _: &BindingContext<'_>,
        narrow: Option<&Value>,
    ) -> Result<Narrowing, ProviderError> {
        Ok(match narrow {
            None => Narrowing::none(),
            Some(v) => Narrowing {
                canonical: v.to_string(),
                value: Some(v.clone()),
            },
        })
    }
    async fn mint(&self, _: &MintRequest<'_>) -> Result<IssuedCredential, ProviderError> {
        let n = self.mints.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(self.delay).await;
        if let Some(gate) = &self.gate {
            gate.acquire()
                .await
                .map_err(|_| ProviderError::Unavailable {
                    message: "gate closed".into(),
                    upstream_request_id: None,
                })?
                .forget();
        }
        let mut credentials = SecretFields::new();
        credentials.insert("token", SecretString::from(format!("minted-{n}")));
        Ok(IssuedCredential {
            kind: "test_token",
            credentials,
            expires_at: Some(time::OffsetDateTime::now_utc() + time::Duration::hours(1)),
            upstream_request_id: Some(format!("upstream-{n}")),
            details: serde_json::Value::Null,
            subject: None,
        })
    }
}
