//! Upstream mint limits per worker, per binding and per tenant of a provider.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Bucket;

/// Upstream mints per worker, per binding and per tenant of each provider: token buckets of
/// `per_minute` tokens refilled over a minute. A worker (or a binding's many workers, or a
/// tenant's many bindings) asking for fresh credentials in a loop — a `narrow` that changes
/// every call, a cache-defeating `min_ttl_s` — cannot drive the upstream (the customer's
/// quota, or a quota the provider keeps for the whole platform, such as a GitHub App's)
/// beyond them; cached credentials are unaffected.
pub struct MintLimiter {
    limits: MintLimits,
    buckets: Mutex<Buckets>,
}

/// The buckets, and the count at which those that have refilled are next forgotten.
struct Buckets {
    map: HashMap<(MintScope, String), Bucket>,
    prune_at: usize,
}

/// Buckets kept before those that have refilled (and so are no different from new ones) are
/// first forgotten: workers and bindings removed from the store leave theirs behind.
const PRUNE_AT: usize = 65_536;

/// Mints a minute per worker, per binding, and per tenant and provider (0 disables one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MintLimits {
    /// Mints one worker may cause, all its bindings together.
    pub per_worker: u32,
    /// Mints of one binding, all its workers together.
    pub per_binding: u32,
    /// Mints of one provider for one tenant, all its bindings and workers together: the
    /// tenant's share of what the provider allows the platform.
    pub per_tenant: u32,
}

/// What a mint bucket counts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum MintScope {
    Worker,
    Binding,
    /// A tenant's mints of one provider (key: provider, NUL, tenant).
    Tenant,
}

/// Who a mint is for, as the limits count it.
#[derive(Debug, Clone, Copy)]
pub struct MintFor<'a> {
    /// The worker asking.
    pub worker: &'a str,
    /// The binding minted through.
    pub binding: &'a str,
    /// Its tenant (from the store chain).
    pub tenant: &'a str,
    /// The provider minting.
    pub provider: &'a str,
}

impl MintLimiter {
    /// The given limits a minute (0 disables one).
    pub fn new(limits: MintLimits) -> MintLimiter {
        MintLimiter {
            limits,
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                prune_at: PRUNE_AT,
            }),
        }
    }

    /// The buckets a mint takes from: scope, key, tokens a minute, and the scope's name.
    fn scopes(&self, mint: MintFor<'_>) -> [(MintScope, String, u32, &'static str); 3] {
        [
            (
                MintScope::Worker,
                mint.worker.to_owned(),
                self.limits.per_worker,
                "worker",
            ),
            (
                MintScope::Binding,
                mint.binding.to_owned(),
                self.limits.per_binding,
                "binding",
            ),
            (
                MintScope::Tenant,
                format!("{}\0{}", mint.provider, mint.tenant),
                self.limits.per_tenant,
                "tenant",
            ),
        ]
    }

    /// Takes a mint token for the worker, the binding and the tenant's share of the provider.
    ///
    /// # Errors
    /// `"worker"`, `"binding"` or `"tenant"`: which limit was reached.
    pub fn check(&self, mint: MintFor<'_>, now: Instant) -> Result<(), &'static str> {
        let scopes = self.scopes(mint);
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.map.len() >= buckets.prune_at {
            // Every bucket refills within a minute. When most are in use the next look is
            // put off until the map has doubled, so a busy limiter does not scan it at
            // every mint.
            buckets
                .map
                .retain(|_, b| now.saturating_duration_since(b.last) < Duration::from_secs(60));
            buckets.prune_at = PRUNE_AT.max(buckets.map.len().saturating_mul(2));
        }
        // All must have a token before any is spent: a refusal costs nothing.
        for (scope, key, per_minute, what) in &scopes {
            if *per_minute == 0 {
                continue;
            }
            let per_minute = f64::from(*per_minute);
            let bucket = buckets
                .map
                .entry((*scope, key.clone()))
                .or_insert_with(|| Bucket::full(per_minute, now));
            bucket.refill(per_minute / 60.0, per_minute, now);
            if bucket.tokens < 1.0 {
                return Err(what);
            }
        }
        for (scope, key, per_minute, _) in scopes {
            if per_minute > 0 {
                if let Some(bucket) = buckets.map.get_mut(&(scope, key)) {
                    bucket.tokens -= 1.0;
                }
            }
        }
        Ok(())
    }

    /// Gives back the tokens [`MintLimiter::check`] took for a mint that did not call the
    /// upstream after all (its circuit was open).
    pub fn refund(&self, mint: MintFor<'_>) {
        let scopes = self.scopes(mint);
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (scope, key, per_minute, _) in scopes {
            if per_minute > 0 {
                if let Some(bucket) = buckets.map.get_mut(&(scope, key)) {
                    bucket.tokens = (bucket.tokens + 1.0).min(f64::from(per_minute));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mint<'a>(worker: &'a str) -> MintFor<'a> {
        MintFor {
            worker,
            binding: "b1",
            tenant: "t1",
            provider: "github_app",
        }
    }

    #[test]
    fn buckets_of_the_gone_are_forgotten_and_the_spent_ones_kept() {
        let l = MintLimiter::new(MintLimits {
            per_worker: 1,
            ..MintLimits::default()
        });
        let t0 = Instant::now();
        for i in 0..PRUNE_AT - 1 {
            assert_eq!(l.check(mint(&format!("w{i}")), t0), Ok(()));
        }
        // One worker spends its token 30 s later: not yet refilled a minute on.
        let t30 = t0 + Duration::from_secs(30);
        assert_eq!(l.check(mint("late"), t30), Ok(()));
        let t61 = t0 + Duration::from_secs(61);
        assert_eq!(l.check(mint("new"), t61), Ok(()));
        let kept = l.buckets.lock().unwrap().map.len();
        assert_eq!(kept, 2, "only the late and the new worker's buckets remain");
        assert_eq!(l.check(mint("late"), t61), Err("worker"));

        // A look that forgets nothing (every bucket in use) puts the next one off until the
        // map has doubled: a busy limiter does not scan at every mint.
        let t70 = t0 + Duration::from_secs(70);
        for i in 0..PRUNE_AT {
            assert_eq!(l.check(mint(&format!("x{i}")), t70), Ok(()));
        }
        assert_eq!(l.buckets.lock().unwrap().prune_at, 2 * PRUNE_AT);
    }
}
