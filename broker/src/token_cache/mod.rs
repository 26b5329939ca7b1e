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
        revocable: Option<String>,
        mint: M,
    ) -> Result<(Arc<IssuedCredential>, Source), ProviderError>
    where
        M: FnOnce() -> F,
        F: std::future::Future<Output = Result<IssuedCredential, ProviderError>> + Send + 'static,
    {
        if let Some(cred) = self.lookup(&key, min_ttl_s) {
            return Ok((cred, Source::Cached));
        }
        let (shared, leader) = {
            let mut in_flight = self
                .in_flight
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
                Some((_, existing)) => {
                    self.joins.inc();
                    (existing.clone(), false)
                }
                None => {
                    let epoch = observed_epoch;
                    let flight = self
                        .start_flight()
                        .ok_or_else(|| ProviderError::Unavailable {
                            message: "token cache lock poisoned".into(),
                            upstream_request_id: None,
                        })?;
                    let cache = Arc::clone(self);
                    let task_key = key.clone();
                    let mint = mint();
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
                    in_flight.insert(key, (flight, shared.clone()));
                    (shared, true)
                }
            }
        };
        let cred = shared.await?;
        Ok((
            cred,
            if leader {
                Source::Minted
            } else {
                Source::Shared
            },
        ))
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
        // Lock order: in_flight, then entries (as in `get_or_mint`).
        let mut in_flight = Vec::new();
        if let Ok(mut flights) = self.in_flight.lock() {
            flights.retain(|k, (_, mint)| {
                let drop_it = bindings.contains(&k.binding);
                if drop_it {
                    in_flight.push(mint.clone());
                }
                !drop_it
            });
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
mod tests {
    use super::*;
    use credbroker_providers::SecretFields;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn key(n: &str) -> CacheKey {
        CacheKey {
            tenant: "t".into(),
            binding: "b".into(),
            generation: "g1".into(),
            secret_version: 0,
            narrowing: n.into(),
            instance: None,
            worker: None,
        }
    }

    pub(super) fn cred(ttl_s: i64) -> IssuedCredential {
        IssuedCredential {
            kind: "test",
            credentials: SecretFields::new(),
            expires_at: Some(OffsetDateTime::now_utc() + time::Duration::seconds(ttl_s)),
            upstream_request_id: None,
            details: serde_json::Value::Null,
            subject: None,
        }
    }

    /// A credential cached with an hour to live is not served once a minute or less is left,
    /// whatever the caller asked; one the upstream issued for 40 s is served until 20 s are
    /// left (an upstream of short-lived credentials does not mint on every call).
    #[test]
    fn a_credential_about_to_expire_is_not_served() {
        let cache = TokenCache::new(10);
        cache.insert(key("long"), Arc::new(cred(3600)), cache.epoch());
        assert!(cache.lookup(&key("long"), 0).is_some());
        {
            // An hour later: 45 s left, its floor still that of an hour-long credential.
            let mut entries = cache.entries.lock().unwrap();
            let slot = entries.tokens.get_mut(&key("long")).unwrap();
            assert_eq!(slot.floor_s, LEAST_REMAINING_S);
            slot.cred = Arc::new(cred(45));
        }
        assert!(cache.lookup(&key("long"), 0).is_none(), "45 s left: served");
        assert!(cache.lookup(&key("long"), 30).is_none());
        cache.insert(key("short"), Arc::new(cred(40)), cache.epoch());
        assert!(
            cache.lookup(&key("short"), 0).is_some(),
            "a 40 s credential"
        );
        assert!(cache.lookup(&key("short"), 25).is_some());
        assert!(cache.lookup(&key("short"), 39).is_none());
        let now = OffsetDateTime::now_utc();
        assert_eq!(floor_for(now + time::Duration::seconds(40), now), 20);
        assert_eq!(
            floor_for(now + time::Duration::hours(1), now),
            LEAST_REMAINING_S
        );
        assert_eq!(floor_for(now - time::Duration::seconds(5), now), 0);
    }

    fn key_of(tenant: &str, n: usize) -> CacheKey {
        CacheKey {
            tenant: tenant.into(),
            ..key(&n.to_string())
        }
    }

    /// A tenant whose worker varies its narrowing on every call fills its own share and then
    /// replaces its own tokens: the other tenants' tokens stay cached, and a full cache
    /// evicts across tenants as before.
    #[test]
    fn one_tenant_never_pushes_out_the_others_tokens() {
        let cache = TokenCache::with_join_counter(10, 4, Counter::default());
        for n in 0..3 {
            cache.insert(key_of("quiet", n), Arc::new(cred(600)), cache.epoch());
        }
        // The noisy tenant's tokens live longer than the quiet one's: expiry alone would
        // evict the quiet tenant's first.
        for n in 0..50 {
            cache.insert(key_of("noisy", n), Arc::new(cred(3600)), cache.epoch());
        }
        for n in 0..3 {
            assert!(
                cache.lookup(&key_of("quiet", n), 0).is_some(),
                "quiet {n} evicted"
            );
        }
        let entries = cache.entries.lock().unwrap();
        assert_eq!(entries.held_by("noisy"), 4);
        assert_eq!(entries.tokens.len(), 7);
        assert_eq!(entries.by_expiry.len(), 7);
        assert!(entries.tokens.contains_key(&key_of("noisy", 49)));
        drop(entries);
        // Invalidation and a full cache keep the books straight.
        cache.invalidate_binding("b");
        let entries = cache.entries.lock().unwrap();
        assert!(entries.tokens.is_empty() && entries.by_expiry.is_empty());
        assert!(entries.by_tenant.is_empty());
        drop(entries);
        for t in 0..5 {
            for n in 0..3 {
                cache.insert(
                    key_of(&format!("t{t}"), n),
                    Arc::new(cred(600)),
                    cache.epoch(),
                );
            }
        }
        let entries = cache.entries.lock().unwrap();
        assert_eq!(entries.tokens.len(), 10);
        let held: usize = entries
            .by_tenant
            .values()
            .map(std::collections::BTreeSet::len)
            .sum();
        assert_eq!(held, 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_mint() {
        let cache = TokenCache::new(10);
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let cache = cache.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_mint(key(""), 60, cache.epoch(), || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(cred(3600))
                    })
                    .await
                    .map(|(_, s)| s)
            }));
        }
        let mut minted = 0;
        for t in tasks {
            if t.await.unwrap().unwrap() == Source::Minted {
                minted += 1;
            }
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(minted, 1);
        // A later call is a cache hit; a different narrowing is a different key.
        let (_, s) = cache
            .get_or_mint(key(""), 60, cache.epoch(), || async { Ok(cred(3600)) })
            .await
            .unwrap();
        assert_eq!(s, Source::Cached);
        let (_, s) = cache
            .get_or_mint(key("x"), 60, cache.epoch(), || async { Ok(cred(3600)) })
            .await
            .unwrap();
        assert_eq!(s, Source::Minted);
    }

    #[tokio::test]
    async fn min_ttl_forces_a_new_mint_and_errors_are_not_cached() {
        let cache = TokenCache::new(10);
        cache
            .get_or_mint(key(""), 0, cache.epoch(), || async { Ok(cred(100)) })
            .await
            .unwrap();
        let (_, s) = cache
            .get_or_mint(key(""), 50, cache.epoch(), || async { Ok(cred(100)) })
            .await
            .unwrap();
        assert_eq!(s, Source::Cached);
        let (_, s) = cache
            .get_or_mint(key(""), 200, cache.epoch(), || async { Ok(cred(3600)) })
            .await
            .unwrap();
        assert_eq!(s, Source::Minted);
        let err = cache
            .get_or_mint(key("e"), 0, cache.epoch(), || async {
                Err(ProviderError::Unavailable {
                    message: "down".into(),
                    upstream_request_id: None,
                })
            })
            .await;
        assert!(err.is_err());
        let (_, s) = cache
            .get_or_mint(key("e"), 0, cache.epoch(), || async { Ok(cred(100)) })
            .await
            .unwrap();
        assert_eq!(s, Source::Minted);
        cache.invalidate_binding("b");
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn bounded_size() {
        let cache = TokenCache::new(2);
        for i in 0..5 {
            cache
                .get_or_mint(key(&i.to_string()), 0, cache.epoch(), || async move {
                    Ok(cred(100 + i))
                })
                .await
                .unwrap();
        }
        assert_eq!(cache.len(), 2);
    }

    /// A full cache evicts the token closest to expiry (expired ones first) and keeps its
    /// expiry index in step with the map, through replacements and invalidations.
    #[tokio::test]
    async fn eviction_takes_the_token_closest_to_expiry() {
        let cache = TokenCache::new(3);
        for (name, ttl) in [("long", 3000), ("short", 100), ("mid", 1000)] {
            cache
                .get_or_mint(key(name), 0, cache.epoch(), || async move { Ok(cred(ttl)) })
                .await
                .unwrap();
        }
        // Replacing a key does not leave its old expiry behind.
        cache.insert(key("mid"), Arc::new(cred(2000)), cache.epoch());
        cache.insert(key("new"), Arc::new(cred(500)), cache.epoch());
        assert_eq!(cache.len(), 3);
        assert!(
            cache.lookup(&key("short"), 0).is_none(),
            "closest to expiry evicted"
        );
        for k in ["long", "mid", "new"] {
            assert!(cache.lookup(&key(k), 0).is_some(), "{k}");
        }
        {
            let e = cache.entries.lock().unwrap();
            assert_eq!(e.by_expiry.len(), e.tokens.len());
        }
        cache.invalidate_binding("b");
        let e = cache.entries.lock().unwrap();
        assert!(e.tokens.is_empty() && e.by_expiry.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_mint_finishing_after_invalidation_is_not_cached_or_joined() {
        let cache = TokenCache::new(10);
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let slow = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_mint(key(""), 0, cache.epoch(), || async move {
                        let _ = wait.await;
                        Ok(cred(3600))
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        cache.invalidate_binding("b");
        // A request after the invalidation does not join the old flight: it mints anew.
        let (_, s) = cache
            .get_or_mint(key(""), 0, cache.epoch(), || async { Ok(cred(60)) })
            .await
            .unwrap();
        assert_eq!(s, Source::Minted);
        cache.invalidate_binding("b");
        release.send(()).unwrap();
        // The old flight still answers its own waiter…
        assert_eq!(slow.await.unwrap().unwrap().1, Source::Minted);
        // …but its credential was not cached.
        assert!(cache.is_empty());
    }

    /// A revocation takes what was kept before its mark, whatever still caches it, and the
    /// cache no longer serves what it took; what was kept after is left, still cached.
    #[tokio::test]
    async fn what_a_revocation_takes_is_no_longer_served() {
        let cache = TokenCache::new(10);
        let mint = |ttl| move || async move { Ok(cred(ttl)) };
        let (old, _) = cache
            .get_or_mint_kept(key("a"), 0, cache.epoch(), Some("gh".into()), mint(3600))
            .await
            .unwrap();
        let mark = cache.issued_mark();
        let (new, _) = cache
            .get_or_mint_kept(key("b"), 0, cache.epoch(), Some("gh".into()), mint(3600))
            .await
            .unwrap();
        let taken = cache.take_issued("gh", mark, &[]);
        assert_eq!(taken.len(), 1);
        assert!(Arc::ptr_eq(&taken[0], &old));
        cache.forget_revoked(&taken);
        let (again, s) = cache
            .get_or_mint(key("a"), 0, cache.epoch(), mint(3600))
            .await
            .unwrap();
        assert_eq!(s, Source::Minted, "the revoked token is not served");
        assert!(!Arc::ptr_eq(&again, &old));
        let (kept, s) = cache
            .get_or_mint(key("b"), 0, cache.epoch(), mint(3600))
            .await
            .unwrap();
        assert_eq!(s, Source::Cached);
        assert!(Arc::ptr_eq(&kept, &new));
        // One revocation at a time.
        let first = cache.revoking();
        assert!(first.is_some() && cache.revoking().is_none());
        drop(first);
        assert!(cache.revoking().is_some());
    }

    #[tokio::test]
    async fn every_scope_field_separates_entries() {
        let cache = TokenCache::new(100);
        let base = key("");
        let mut variants = vec![base.clone()];
        let mut k = base.clone();
        k.tenant = "t2".into();
        variants.push(k);
        let mut k = base.clone();
        k.generation = "g2".into();
        variants.push(k);
        let mut k = base.clone();
        k.secret_version = 2;
        variants.push(k);
        let mut k = base.clone();
        k.instance = Some("i1".into());
        variants.push(k);
        let mut k = base.clone();
        k.worker = Some("w1".into());
        variants.push(k);
        for k in &variants {
            let (_, s) = cache
                .get_or_mint(k.clone(), 0, cache.epoch(), || async { Ok(cred(3600)) })
                .await
                .unwrap();
            assert_eq!(s, Source::Minted, "{k:?} shared an entry");
        }
        assert_eq!(cache.len(), variants.len());
    }

    #[tokio::test]
    async fn a_mint_from_records_read_before_an_invalidation_is_not_cached() {
        let cache = TokenCache::new(10);
        let observed = cache.epoch();
        // An operator disables the binding between the chain read and the mint.
        cache.invalidate_binding("b");
        let (_, s) = cache
            .get_or_mint(key(""), 0, observed, || async { Ok(cred(3600)) })
            .await
            .unwrap();
        assert_eq!(s, Source::Minted);
        assert!(
            cache.is_empty(),
            "minted from a stale chain: answered, never cached"
        );
        let (_, s) = cache
            .get_or_mint(key(""), 0, cache.epoch(), || async { Ok(cred(3600)) })
            .await
            .unwrap();
        assert_eq!(s, Source::Minted);
        assert_eq!(cache.len(), 1);
    }

    /// A mint that panics ends its flight: the next miss of the key mints again instead of
    /// joining the failed one (a panicking provider would otherwise make the key answer
    /// `provider_unavailable` without minting until the binding changed).
    #[tokio::test]
    async fn a_panicking_mint_does_not_hold_its_key() {
        let cache = TokenCache::new(10);
        let failed = cache
            .get_or_mint(key("p"), 60, cache.epoch(), || async {
                if provider_bug() {
                    panic!("a provider bug");
                }
                Ok(cred(3600))
            })
            .await;
        assert!(failed.is_err());
        let minted = AtomicUsize::new(0);
        let (_, s) = cache
            .get_or_mint(key("p"), 60, cache.epoch(), || {
                minted.fetch_add(1, Ordering::SeqCst);
                async { Ok(cred(3600)) }
            })
            .await
            .unwrap();
        assert_eq!((s, minted.load(Ordering::SeqCst)), (Source::Minted, 1));
    }

    /// Whether the provider under test has its bug (a panic in its mint).
    fn provider_bug() -> bool {
        true
    }
}
