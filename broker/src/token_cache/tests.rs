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

/// A full cache (the shares add up to more than the whole) makes room from the tenant
/// holding the most, not from whoever's token expires first: a tenant filling its share
/// with long-lived tokens cannot push a quieter tenant's out.
#[test]
fn a_full_cache_makes_room_from_its_largest_holder() {
    let cache = TokenCache::with_join_counter(6, 4, Counter::default());
    for n in 0..2 {
        cache.insert(key_of("quiet", n), Arc::new(cred(600)), cache.epoch());
    }
    for n in 0..4 {
        cache.insert(key_of("noisy", n), Arc::new(cred(3600)), cache.epoch());
    }
    // Full; a third tenant arrives, then the noisy one again.
    cache.insert(key_of("third", 0), Arc::new(cred(3600)), cache.epoch());
    cache.insert(key_of("noisy", 9), Arc::new(cred(3600)), cache.epoch());
    for n in 0..2 {
        assert!(
            cache.lookup(&key_of("quiet", n), 0).is_some(),
            "quiet {n} evicted"
        );
    }
    assert!(cache.lookup(&key_of("third", 0), 0).is_some());
    let entries = cache.entries.lock().unwrap();
    assert_eq!(entries.tokens.len(), 6);
    assert_eq!(entries.held_by("noisy"), 3);
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

/// A leader refused by the broker's mint limits (its worker's, perhaps) does not hand that
/// refusal to a request that joined its flight: the joiner mints under its own limits.
/// Another error of the flight is shared as before.
#[tokio::test]
async fn a_leaders_rate_limit_is_not_shared_with_joiners() {
    let cache = TokenCache::new(10);
    let (started, start) = tokio::sync::oneshot::channel::<()>();
    let refused = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_mint(key(""), 60, cache.epoch(), || async move {
                    let _ = started.send(());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(ProviderError::RateLimited(
                        "too many for this worker".into(),
                    ))
                })
                .await
        })
    };
    start.await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let (_, source) = cache
        .get_or_mint(key(""), 60, cache.epoch(), || async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(cred(3600))
        })
        .await
        .unwrap();
    assert_eq!(source, Source::Minted, "the joiner minted on its own");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(matches!(
        refused.await.unwrap(),
        Err(ProviderError::RateLimited(_))
    ));
    // Any other failure of the flight is every waiter's.
    let (started, start) = tokio::sync::oneshot::channel::<()>();
    let failing = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_mint(key("y"), 60, cache.epoch(), || async move {
                    let _ = started.send(());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(ProviderError::Unavailable {
                        message: "down".into(),
                        upstream_request_id: None,
                    })
                })
                .await
        })
    };
    start.await.unwrap();
    let joined = cache
        .get_or_mint(key("y"), 60, cache.epoch(), || async { Ok(cred(3600)) })
        .await;
    assert!(matches!(joined, Err(ProviderError::Unavailable { .. })));
    assert!(failing.await.unwrap().is_err());
}

/// A flight of `key("")` whose leader's mint waits for the sender, then is refused by the
/// leader's own mint limits; returned once the flight is in the map.
async fn refused_leader(
    cache: &Arc<TokenCache>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(Arc<IssuedCredential>, Source), ProviderError>>,
) {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_mint(key(""), 60, cache.epoch(), || async move {
                    let _ = released.await;
                    Err(ProviderError::RateLimited(
                        "too many for this worker".into(),
                    ))
                })
                .await
        })
    };
    while !cache.in_flight.lock().unwrap().contains_key(&key("")) {
        tokio::task::yield_now().await;
    }
    (release, leader)
}

/// Joiners of a flight its leader's limits refused share the next flight among themselves:
/// one mint for all of them, not one each.
#[tokio::test]
async fn refused_joiners_share_their_next_mint() {
    let cache = TokenCache::new(10);
    let (release, leader) = refused_leader(&cache).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut joiners = Vec::new();
    for _ in 0..3 {
        let (cache, calls) = (cache.clone(), calls.clone());
        joiners.push(tokio::spawn(async move {
            cache
                .get_or_mint(key(""), 60, cache.epoch(), || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(cred(3600))
                })
                .await
        }));
    }
    while cache.joins.get() < 3 {
        tokio::task::yield_now().await;
    }
    release.send(()).unwrap();
    assert!(leader.await.unwrap().is_err());
    for j in joiners {
        assert!(j.await.unwrap().is_ok());
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one mint for the refused joiners"
    );
}

/// A joiner refused by its flight's leader, then by the next flight of the key (a worker
/// past its limit keeps starting them, the moment the first ends; it stays in the map, and
/// the joiner may not join it a second time): the joiner's task, minting with `mint`, and
/// the planted flight.
async fn joiner_refused_twice<F>(
    cache: &Arc<TokenCache>,
    mint: F,
) -> (
    tokio::task::JoinHandle<Result<(Arc<IssuedCredential>, Source), ProviderError>>,
    InFlight,
)
where
    F: std::future::Future<Output = Result<IssuedCredential, ProviderError>> + Send + 'static,
{
    let (release, leader) = refused_leader(cache).await;
    let joiner = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.get_or_mint(key(""), 60, cache.epoch(), || mint).await })
    };
    while cache.joins.get() == 0 {
        tokio::task::yield_now().await;
    }
    let refused: BoxFuture<'static, MintResult> = async {
        Err(ProviderError::RateLimited(
            "too many for this worker".into(),
        ))
    }
    .boxed();
    let planted = refused.shared();
    cache
        .in_flight
        .lock()
        .unwrap()
        .insert(key(""), (u64::MAX, planted.clone()));
    release.send(()).unwrap();
    assert!(leader.await.unwrap().is_err());
    (joiner, planted)
}

/// A joiner whose flight its leader's limits refused, and the next flight it joined too,
/// mints on its own.
#[tokio::test]
async fn a_refused_joiner_mints_its_own_beside_another_flight() {
    let cache = TokenCache::new(10);
    let (joiner, _planted) = joiner_refused_twice(&cache, async { Ok(cred(3600)) }).await;
    let (_, source) = tokio::time::timeout(Duration::from_secs(5), joiner)
        .await
        .expect("the refused joiner did not mint on its own")
        .unwrap()
        .unwrap();
    assert_eq!(source, Source::Minted);
}

/// A refused joiner's own mint is reached by a revocation as any flight is: the drain
/// hands it over (to be waited for and revoked), and what it brings is not cached.
#[tokio::test]
async fn a_refused_joiners_own_mint_is_drained() {
    let cache = TokenCache::new(10);
    let (land, landing) = tokio::sync::oneshot::channel::<()>();
    let (joiner, planted) = joiner_refused_twice(&cache, async move {
        let _ = landing.await;
        Ok(cred(3600))
    })
    .await;
    while cache.solo.lock().unwrap().is_empty() {
        tokio::task::yield_now().await;
    }
    let drained = cache.drain_bindings(&["b".to_owned()]);
    assert_eq!(
        drained.in_flight(),
        2,
        "the planted flight and the solo mint"
    );
    drop(planted);
    land.send(()).unwrap();
    let (_, source) = tokio::time::timeout(Duration::from_secs(5), joiner)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(source, Source::Minted);
    assert!(cache.lookup(&key(""), 0).is_none(), "a drained mint cached");
    // Its entry goes when it ends.
    tokio::time::timeout(Duration::from_secs(5), async {
        while !cache.solo.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a solo flight left listed after it ended");
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
