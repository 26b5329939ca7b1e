//! `[cache]`: the token and record caches, the mint deadline, the circuit breaker and the
//! mint rate limits.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[cache]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Most cached tokens.
    pub max_entries: usize,
    /// Most cached tokens of one tenant (at most `max_entries`): past it a tenant's new token
    /// replaces its own closest to expiry, never another tenant's. The shares may add up to
    /// more than `max_entries`: a full cache makes room from the tenant holding the most.
    pub max_entries_per_tenant: usize,
    /// Decoded store records (worker, instance, tenant, binding, sealed secret version) kept
    /// in memory per table for the resolve path; every store write empties them. 0 disables.
    pub record_entries: usize,
    /// Deadline for one upstream mint, retries included, milliseconds.
    pub mint_timeout_ms: u64,
    /// Consecutive unavailable mints of one provider that open its circuit.
    pub breaker_failures: u32,
    /// How long an open circuit fails mints fast before one trial, milliseconds.
    pub breaker_open_ms: u64,
    /// Upstream mints one worker may cause per minute (0: unlimited); beyond it resolves
    /// that need a fresh credential get `rate_limited`.
    pub mints_per_minute_per_worker: u32,
    /// Upstream mints per binding per minute, all workers together (0: unlimited).
    pub mints_per_minute_per_binding: u32,
    /// Upstream mints per tenant per minute of each provider, all its bindings and workers
    /// together (0: unlimited): one tenant's share of a quota the provider keeps for the
    /// whole platform (a GitHub App's), so that it cannot exhaust it for the others.
    pub mints_per_minute_per_tenant: u32,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_entries: 100_000,
            max_entries_per_tenant: 25_000,
            record_entries: crate::store::records::DEFAULT_RECORD_CACHE,
            mint_timeout_ms: 10_000,
            breaker_failures: 5,
            breaker_open_ms: 30_000,
            mints_per_minute_per_worker: 600,
            mints_per_minute_per_binding: 600,
            mints_per_minute_per_tenant: 120,
        }
    }
}

impl CacheSettings {
    /// The caches hold something, a mint has time to happen, and a circuit opens after a
    /// failure and stays open a while. (The mint rate limits take 0 for none, as
    /// documented.)
    ///
    /// # Errors
    /// Naming the rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // (A tenant's share above the whole is taken as the whole, as it always was: a
        // config lowering only max_entries keeps working.)
        if self.max_entries == 0 || self.max_entries_per_tenant == 0 {
            return Err(ConfigError(
                "[cache] max_entries and max_entries_per_tenant must be positive".into(),
            ));
        }
        if !(100..=600_000).contains(&self.mint_timeout_ms) {
            return Err(ConfigError(
                "[cache] mint_timeout_ms must be 100..=600000 (a mint needs time to happen, and a caller waits for it)".into(),
            ));
        }
        if self.breaker_failures == 0 || !(100..=3_600_000).contains(&self.breaker_open_ms) {
            return Err(ConfigError(
                "[cache] breaker_failures must be positive and breaker_open_ms 100..=3600000"
                    .into(),
            ));
        }
        Ok(())
    }
}
