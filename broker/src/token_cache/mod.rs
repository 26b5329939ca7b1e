//! The in-memory token cache with single flight.
//!
//! Keyed by everything a credential is scoped to: tenant, binding, the binding's generation
//! (new on every re-creation and secret change), active secret version, normalized narrowing,
//! and — when the provider says its credentials name them — the instance and the worker. So a
//! token minted for one subset is never handed to a request for another, a removed and
//! re-added binding id never receives its predecessor's tokens, and an AWS session whose
//! RoleSessionName names one instance is never handed to another. A token is served while its
//! remaining lifetime exceeds the caller's `min_ttl_s`, and never with a minute or less left
//! ([`LEAST_REMAINING_S`]). Concurrent misses for one key share
//! one upstream mint: the first caller spawns it (so it completes even if that caller goes
//! away), everyone awaits the same shared result. A mint that finishes after an invalidation
//! it started before is returned to its waiters but never cached. Memory only: nothing here
//! is ever written to disk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use prometheus_client::metrics::counter::Counter;
use time::OffsetDateTime;

use credbroker_providers::{IssuedCredential, ProviderError};

mod drained;
mod entries;
mod issued;
pub use drained::{Drained, DrainedCredential};
#[cfg(test)]
use entries::floor_for;
pub use entries::LEAST_REMAINING_S;
use entries::{fresh, Entries};

/// Identifies one cacheable credential: everything the credential is scoped to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Owning tenant.
    pub tenant: String,
    /// Binding id.
    pub binding: String,
    /// The binding's generation (changes on re-creation and credential-source changes).
    pub generation: String,
    /// Active secret version the credential was minted from (0 for pure federation).
    pub secret_version: u32,
    /// Canonical narrowing.
    pub narrowing: String,
    /// The instance, when the provider's credentials name it.
    pub instance: Option<String>,
    /// The worker, when the provider's credentials name it.
    pub worker: Option<String>,
}

type MintResult = Result<Arc<IssuedCredential>, ProviderError>;
type InFlight = Shared<BoxFuture<'static, MintResult>>;

/// How a credential was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Served from the cache.
    Cached,
    /// Minted for this request.
    Minted,
    /// Minted once for several concurrent requests; this one waited on another's mint.
    Shared,
}

/// The cache.
pub struct TokenCache {
    max_entries: usize,
    /// Most tokens one tenant holds: past it a tenant's new token replaces its own closest
    /// to expiry, never another tenant's (a worker varying its narrowing on every call would
    /// otherwise push every other tenant's tokens out, and make them mint again).
    max_per_tenant: usize,
    entries: Mutex<Entries>,
    in_flight: Mutex<HashMap<CacheKey, (u64, InFlight)>>,
    /// Mints a refused joiner makes on its own beside another flight of their key, by flight
    /// id: joined by nobody, but drained by a revocation as the others are. Locked after
    /// `in_flight`, never before it.
    solo: Mutex<HashMap<u64, (CacheKey, InFlight)>>,
    joins: Counter,
    /// What a revocation must still reach (see `issued.rs`), at most `max_entries`, at most
    /// `max_per_tenant` of one tenant.
    issued: Mutex<issued::Issued>,
    /// When a bound last pushed kept credentials out, Unix seconds: warned of once a minute.
    issued_warned: std::sync::atomic::AtomicI64,
    /// Held by a revocation while it runs: two at once would revoke one token twice.
    revoking: tokio::sync::Mutex<()>,
}

/// A mint task's flight, removed from the in-flight map when the task ends (returns or
/// panics). An invalidation may have dropped the flight and a newer one may hold the key:
/// only this flight's own entry goes.
struct FlightEnd {
    cache: Arc<TokenCache>,
    key: CacheKey,
    flight: u64,
}

impl Drop for FlightEnd {
    fn drop(&mut self) {
        if let Ok(mut in_flight) = self.cache.in_flight.lock() {
            if in_flight
                .get(&self.key)
                .is_some_and(|(id, _)| *id == self.flight)
            {
                in_flight.remove(&self.key);
            } else if let Ok(mut solo) = self.cache.solo.lock() {
                // (Under the in-flight lock: a solo flight is entered under it too, so one
                // that ends at once is entered before it is removed.)
                solo.remove(&self.flight);
            }
        }
    }
}

impl TokenCache {
    /// An empty cache holding at most `max_entries` tokens, of one tenant or many.
    pub fn new(max_entries: usize) -> Arc<TokenCache> {
        Self::with_join_counter(max_entries, max_entries, Counter::default())
    }

    /// An empty cache holding at most `max_entries` tokens, at most `max_per_tenant` of one
    /// tenant, counting in `joins` every caller that waits on another caller's in-flight
    /// mint (when it joins, not when the mint ends).
    pub fn with_join_counter(
        max_entries: usize,
        max_per_tenant: usize,
        joins: Counter,
    ) -> Arc<TokenCache> {
        Arc::new(TokenCache {
            max_entries: max_entries.max(1),
            max_per_tenant: max_per_tenant.clamp(1, max_entries.max(1)),
            entries: Mutex::new(Entries::default()),
            in_flight: Mutex::new(HashMap::new()),
            solo: Mutex::new(HashMap::new()),
            joins,
            issued: Mutex::new(issued::Issued::default()),
            issued_warned: std::sync::atomic::AtomicI64::new(0),
            revoking: tokio::sync::Mutex::new(()),
        })
    }

    fn lookup(&self, key: &CacheKey, min_ttl_s: u64) -> Option<Arc<IssuedCredential>> {
        let entries = self.entries.lock().ok()?;
        let slot = entries.tokens.get(key)?;
        fresh(
            &slot.cred,
            OffsetDateTime::now_utc(),
            min_ttl_s.max(slot.floor_s),
        )
        .then(|| slot.cred.clone())
    }

    /// The current invalidation epoch. A caller reads it before it reads the records it
    /// mints from, and hands it to [`TokenCache::get_or_mint`]: a credential minted from
    /// records that an invalidation made stale is never cached.
    pub fn epoch(&self) -> u64 {
        self.entries.lock().map(|e| e.epoch).unwrap_or(u64::MAX)
    }

    /// A new flight id.
    fn start_flight(&self) -> Option<u64> {
        let mut entries = self.entries.lock().ok()?;
        entries.next_flight = entries.next_flight.wrapping_add(1);
        Some(entries.next_flight)
    }

    /// Caches `cred` unless an invalidation happened since epoch `started`.
    fn insert(&self, key: CacheKey, cred: Arc<IssuedCredential>, started: u64) {
        let Some(expires_at) = cred.expires_at else {
            return;
        };
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.epoch != started {
            return;
        }
        entries.store(key, cred, expires_at, self.max_entries, self.max_per_tenant);
    }

    /// Returns a credential for `key` with more than `min_ttl_s` seconds left, minting with
    /// the future `mint` makes (cached only if no invalidation happened since
    /// `observed_epoch`, see [`TokenCache::epoch`]) — called only by the one request that leads a miss, so a hit
    /// builds nothing. A freshly minted credential is returned even if it is shorter-lived
    /// than `min_ttl_s`: it is the best the upstream gives.
    ///
    /// # Errors
    /// The mint's [`ProviderError`] (shared by every waiter of that mint).
    pub async fn get_or_mint<M, F>(
        self: &Arc<Self>,
        key: CacheKey,
        min_ttl_s: u64,
        observed_epoch: u64,
        mint: M,
    ) -> Result<(Arc<IssuedCredential>, Source), ProviderError>
    where
        M: FnOnce() -> F,
        F: std::future::Future<Output = Result<IssuedCredential, ProviderError>> + Send + 'static,
    {
        self.get_or_mint_kept(key, min_ttl_s, observed_epoch, None, mint)
            .await
    }

    /// [`TokenCache::get_or_mint`], keeping what a mint issues for a revocation of
    /// `revocable`'s credentials (a provider that can revoke upstream) until it expires: see
    /// [`TokenCache::take_issued`]. Kept as the mint lands, before any waiter is answered,
    /// so a revocation that waited for the mint finds it.
    ///
    /// # Errors
    /// As [`TokenCache::get_or_mint`].
    pub async fn get_or_mint_kept<M, F>(
        self: &Arc<Self>,
        key: CacheKey,
        min_ttl_s: u64,
        observed_epoch: u64,
        mut revocable: Option<String>,
        mint: M,
    ) -> Result<(Arc<IssuedCredential>, Source), ProviderError>
    where
        M: FnOnce() -> F,
        F: std::future::Future<Output = Result<IssuedCredential, ProviderError>> + Send + 'static,
    {
        // Called only when this request leads a flight.
        let mut mint = Some(mint);
        let mut joined = 0;
        loop {
            if let Some(cred) = self.lookup(&key, min_ttl_s) {
                return Ok((cred, Source::Cached));
            }
            let (shared, leader) = {
                let mut in_flight =
                    self.in_flight
                        .lock()
                        .map_err(|_| ProviderError::Unavailable {
                            message: "token cache lock poisoned".into(),
                            upstream_request_id: None,
                        })?;
                // Re-check under the in-flight lock: a mint may have finished meanwhile.
                if let Some(cred) = self.lookup(&key, min_ttl_s) {
                    return Ok((cred, Source::Cached));
                }
                match in_flight.get(&key) {
                    // (A request refused twice by the leaders' mint limits of flights it
                    // joined mints on its own instead, below.)
                    Some((_, existing)) if joined < 2 => {
                        self.joins.inc();
                        (existing.clone(), false)
                    }
                    _ => {
                        // Beside another flight of the key: this request's own mint, which
                        // no other request joins (the other flight keeps the key).
                        let solo = in_flight.contains_key(&key);
                        let Some(make) = mint.take() else {
                            return Err(ProviderError::Unavailable {
                                message: "mint already started".into(),
                                upstream_request_id: None,
                            });
                        };
                        let epoch = observed_epoch;
                        let flight =
                            self.start_flight()
                                .ok_or_else(|| ProviderError::Unavailable {
                                    message: "token cache lock poisoned".into(),
                                    upstream_request_id: None,
                                })?;
                        let cache = Arc::clone(self);
                        let task_key = key.clone();
                        let revocable = revocable.take();
                        let mint = make();
                        let handle = tokio::spawn(async move {
                            // Ends the flight when the task ends, also by a panic in the mint:
                            // a flight left behind would answer every later miss of the key
                            // with its failure, minting nothing.
                            let landed = FlightEnd {
                                cache,
                                key: task_key,
                                flight,
                            };
                            let result = mint.await.map(Arc::new);
                            if let Ok(cred) = &result {
                                if let Some(provider) = &revocable {
                                    landed.cache.keep_issued(provider, &landed.key.tenant, cred);
                                }
                                landed.cache.insert(landed.key.clone(), cred.clone(), epoch);
                            }
                            result
                        });
                        let fut: BoxFuture<'static, MintResult> = async move {
                            handle.await.unwrap_or_else(|_| {
                                Err(ProviderError::Unavailable {
                                    message: "mint task failed".into(),
                                    upstream_request_id: None,
                                })
                            })
                        }
                        .boxed();
                        let shared = fut.shared();
                        if !solo {
                            in_flight.insert(key.clone(), (flight, shared.clone()));
                        } else if let Ok(mut solo) = self.solo.lock() {
                            solo.insert(flight, (key.clone(), shared.clone()));
                        }
                        (shared, true)
                    }
                }
            };
            match shared.await {
                Ok(cred) => {
                    return Ok((
                        cred,
                        if leader {
                            Source::Minted
                        } else {
                            Source::Shared
                        },
                    ))
                }
                // The broker's own mint limits refused the leader: perhaps for a limit of its
                // own (its worker's), which is not this request's to share. A joiner tries
                // again: it leads the next flight (charged to its own limits), which the
                // other refused joiners share, or joins one that started meanwhile; refused
                // a second time, it mints on its own beside any flight of the key, so a
                // worker whose refusals keep landing first cannot hold it. (Each such mint
                // is still held to the binding's and the tenant's limits.)
                Err(ProviderError::RateLimited(_)) if !leader && joined < 2 => joined += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Keeps `cred`, minted by `provider` for `tenant`, for a later
    /// [`TokenCache::take_issued`].
    pub fn keep_issued(&self, provider: &str, tenant: &str, cred: &Arc<IssuedCredential>) {
        self.keep((provider, tenant), cred, Some(self.max_per_tenant));
    }

    /// Keeps `cred`, which a revocation of `provider`'s credentials could not revoke, for
    /// the next: in no tenant's share (failures are the oldest entries, and would be the
    /// first a share pushes out).
    pub fn keep_unrevoked(&self, provider: &str, cred: &Arc<IssuedCredential>) {
        self.keep((provider, "(revocation failed)"), cred, None);
    }

    fn keep(
        &self,
        (provider, tenant): (&str, &str),
        cred: &Arc<IssuedCredential>,
        share: Option<usize>,
    ) {
        let Ok(mut issued) = self.issued.lock() else {
            return;
        };
        let pushed = issued.keep((provider, tenant), cred, (self.max_entries, share));
        let kept = issued.len();
        drop(issued);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let last = self
            .issued_warned
            .load(std::sync::atomic::Ordering::Relaxed);
        if pushed > 0
            && now - last >= 60
            && self
                .issued_warned
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::warn!(
                provider,
                kept,
                "more valid revocable credentials than [cache] max_entries (or a tenant's share): the ones closest to expiry are beyond a revocation's reach now (warned once a minute)"
            );
        }
    }

    /// The mark a revocation reads once it drained the cache: [`TokenCache::take_issued`]
    /// then takes only what was kept before it (what is minted afterwards is a new mint,
    /// which it neither waited for nor dropped from the cache).
    pub fn issued_mark(&self) -> u64 {
        self.issued.lock().map(|i| i.mark()).unwrap_or(0)
    }

    /// Takes every still-valid credential kept for `provider` ([`TokenCache::keep_issued`])
    /// before `mark`, cached or not, but those in `already` (the drained ones), which are
    /// forgotten too: what a revocation of the provider's credentials must reach besides
    /// the cached ones, each once.
    pub fn take_issued(
        &self,
        provider: &str,
        mark: u64,
        already: &[Arc<IssuedCredential>],
    ) -> Vec<Arc<IssuedCredential>> {
        let already: std::collections::HashSet<*const IssuedCredential> =
            already.iter().map(Arc::as_ptr).collect();
        self.issued
            .lock()
            .map(|mut i| i.take(provider, mark, &already))
            .unwrap_or_default()
    }

    /// Held by a revocation of credentials while it runs; `None` while another one runs.
    pub fn revoking(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        self.revoking.try_lock().ok()
    }

    /// Drops from the cache every token among `revoked` (found by pointer): a token a
    /// revocation took from the kept ones may still be cached under a key the drain did not
    /// reach (a binding made after the revocation listed the provider's bindings), and must
    /// not be served revoked.
    pub fn forget_revoked(&self, revoked: &[Arc<IssuedCredential>]) {
        if revoked.is_empty() {
            return;
        }
        let revoked: std::collections::HashSet<*const IssuedCredential> =
            revoked.iter().map(Arc::as_ptr).collect();
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let keys: Vec<CacheKey> = entries
            .tokens
            .iter()
            .filter(|(_, slot)| revoked.contains(&Arc::as_ptr(&slot.cred)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            entries.remove(&key);
        }
    }

    /// Drops every cached token of a binding (disable, remove, secret change). Mints of it
    /// already in flight still answer the requests waiting on them, but are not cached and
    /// are not joined by later requests.
    pub fn invalidate_binding(&self, binding: &str) {
        drop(self.drain_bindings(&[binding.to_owned()]));
    }

    /// Removes every cached token of the given bindings, and the mints of them in flight:
    /// those still answer the requests waiting on them, are not cached and are not joined
    /// by later requests (see [`TokenCache::invalidate_binding`]). Both are returned, so a
    /// revocation reaches a token that was being minted as well as the cached ones.
    pub fn drain_bindings(&self, bindings: &[String]) -> Drained {
        // Lock order: in_flight, solo, then entries (as in `get_or_mint`).
        let mut in_flight = Vec::new();
        if let Ok(mut flights) = self.in_flight.lock() {
            flights.retain(|k, (_, mint)| {
                let drop_it = bindings.contains(&k.binding);
                if drop_it {
                    in_flight.push(mint.clone());
                }
                !drop_it
            });
            // A solo mint is waited for too (the drain's new epoch keeps it out of the
            // cache, as any drained flight). Joined by nobody, it stays listed until it
            // ends, for a later revocation as well.
            if let Ok(solo) = self.solo.lock() {
                in_flight.extend(
                    solo.values()
                        .filter(|(k, _)| bindings.contains(&k.binding))
                        .map(|(_, mint)| mint.clone()),
                );
            }
        }
        let Ok(mut entries) = self.entries.lock() else {
            return Drained {
                cached: Vec::new(),
                in_flight,
            };
        };
        entries.epoch = entries.epoch.wrapping_add(1);
        let keys: Vec<CacheKey> = entries
            .tokens
            .keys()
            .filter(|k| bindings.contains(&k.binding))
            .cloned()
            .collect();
        Drained {
            cached: keys.iter().filter_map(|k| entries.remove(k)).collect(),
            in_flight,
        }
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.tokens.len()).unwrap_or(0)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
