//! The cached tokens themselves: a map, the same tokens ordered by expiry (eviction takes
//! the first in O(log n)), each tenant's share of them, and the invalidation epoch, all under
//! the cache's one lock.

use std::collections::HashMap;
use std::sync::Arc;

use time::OffsetDateTime;

use credbroker_providers::IssuedCredential;

use super::CacheKey;

/// Cached tokens and the invalidation epoch, under one lock: a mint caches its result only if
/// no invalidation happened since it started.
#[derive(Default)]
pub(super) struct Entries {
    pub(super) tokens: HashMap<CacheKey, Slot>,
    /// The same tokens ordered by expiry (ties by insertion): eviction takes the first, in
    /// O(log n), instead of scanning every token under the lock.
    pub(super) by_expiry: std::collections::BTreeMap<(OffsetDateTime, u64), CacheKey>,
    /// Each tenant's tokens' places in `by_expiry`, in the same order.
    pub(super) by_tenant: HashMap<String, std::collections::BTreeSet<(OffsetDateTime, u64)>>,
    /// Insertion counter for `by_expiry`.
    pub(super) next_order: u64,
    /// Bumped by every invalidation.
    pub(super) epoch: u64,
    /// Identifies in-flight mints, so a finished mint removes only its own entry.
    pub(super) next_flight: u64,
}

/// A cached token and its place in [`Entries::by_expiry`].
pub(super) struct Slot {
    pub(super) cred: Arc<IssuedCredential>,
    pub(super) order: (OffsetDateTime, u64),
    /// The least remaining lifetime this credential is served with, seconds (see
    /// [`LEAST_REMAINING_S`]).
    pub(super) floor_s: u64,
}

/// The least remaining lifetime, seconds, of a cached credential served whatever `min_ttl_s`
/// the caller gave (none, usually): one expiring within the worker's first call upstream is
/// of no use to it. Half the credential's own lifetime when that is shorter, so an upstream
/// that issues short-lived credentials is still served from the cache.
pub const LEAST_REMAINING_S: u64 = 60;

/// [`LEAST_REMAINING_S`], or half the lifetime a credential had when it was cached.
pub(super) fn floor_for(expires_at: OffsetDateTime, now: OffsetDateTime) -> u64 {
    let lifetime = u64::try_from((expires_at - now).whole_seconds()).unwrap_or(0);
    LEAST_REMAINING_S.min(lifetime / 2)
}

impl Entries {
    pub(super) fn remove(&mut self, key: &CacheKey) -> Option<Arc<IssuedCredential>> {
        let slot = self.tokens.remove(key)?;
        self.by_expiry.remove(&slot.order);
        self.forget_order(&key.tenant, slot.order);
        Some(slot.cred)
    }

    fn forget_order(&mut self, tenant: &str, order: (OffsetDateTime, u64)) {
        if let Some(orders) = self.by_tenant.get_mut(tenant) {
            orders.remove(&order);
            if orders.is_empty() {
                self.by_tenant.remove(tenant);
            }
        }
    }

    /// Removes the token closest to expiry.
    fn evict_first(&mut self) -> bool {
        let Some((order, key)) = self.by_expiry.pop_first() else {
            return false;
        };
        self.forget_order(&key.tenant, order);
        self.tokens.remove(&key);
        true
    }

    /// How many tokens `tenant` holds.
    pub(super) fn held_by(&self, tenant: &str) -> usize {
        self.by_tenant
            .get(tenant)
            .map_or(0, std::collections::BTreeSet::len)
    }

    /// Removes `tenant`'s token closest to expiry.
    fn evict_first_of(&mut self, tenant: &str) -> bool {
        let Some(order) = self.by_tenant.get(tenant).and_then(|o| o.first().copied()) else {
            return false;
        };
        self.forget_order(tenant, order);
        if let Some(key) = self.by_expiry.remove(&order) {
            self.tokens.remove(&key);
        }
        true
    }

    /// Caches `cred` (expiring at `expires_at`) under `key`, replacing what `key` held: the
    /// tenant's own share first (past `max_per_tenant`, its own token closest to expiry
    /// goes, never another tenant's), then the whole (`max_entries`: expired tokens first,
    /// then the token closest to expiry of the tenant holding the most). The shares may add
    /// up to more than the whole: a full cache is made room in by its largest holder, so a
    /// tenant filling its share (a worker varying its narrowing) cannot push a quieter
    /// tenant's few tokens out.
    pub(super) fn store(
        &mut self,
        key: CacheKey,
        cred: Arc<IssuedCredential>,
        expires_at: OffsetDateTime,
        max_entries: usize,
        max_per_tenant: usize,
    ) {
        self.remove(&key);
        while self.held_by(&key.tenant) >= max_per_tenant && self.evict_first_of(&key.tenant) {}
        let now = OffsetDateTime::now_utc();
        if self.tokens.len() >= max_entries {
            while self
                .by_expiry
                .first_key_value()
                .is_some_and(|((exp, _), _)| *exp <= now)
            {
                self.evict_first();
            }
            while self.tokens.len() >= max_entries {
                let heaviest = self
                    .by_tenant
                    .iter()
                    .max_by_key(|(_, orders)| orders.len())
                    .map(|(tenant, _)| tenant.clone());
                let evicted = match heaviest {
                    Some(tenant) => self.evict_first_of(&tenant),
                    None => self.evict_first(),
                };
                if !evicted {
                    break;
                }
            }
        }
        self.next_order = self.next_order.wrapping_add(1);
        let order = (expires_at, self.next_order);
        self.by_expiry.insert(order, key.clone());
        self.by_tenant
            .entry(key.tenant.clone())
            .or_default()
            .insert(order);
        let floor_s = floor_for(expires_at, now);
        self.tokens.insert(
            key,
            Slot {
                cred,
                order,
                floor_s,
            },
        );
    }
}

pub(super) fn fresh(cred: &IssuedCredential, now: OffsetDateTime, min_ttl_s: u64) -> bool {
    match cred.expires_at {
        Some(exp) => (exp - now).whole_seconds() > i64::try_from(min_ttl_s).unwrap_or(i64::MAX),
        None => false,
    }
}
