//! Credentials a revocation must still reach: every credential minted for a provider that
//! can revoke upstream (GitHub installation tokens), kept until it expires whether or not
//! the cache still holds it. A token the cache let go (a newer one for its key, a worker's
//! `min_ttl_s` forcing a fresh mint, the tenant's share full) is still valid upstream for
//! the rest of its lifetime; `revoke-cached` revokes these too.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use time::OffsetDateTime;

use credbroker_providers::IssuedCredential;

/// A kept credential: who minted it, for which tenant, and when it was kept (a sequence
/// number, so a revocation takes only what was kept before it began).
struct Kept {
    provider: String,
    tenant: String,
    seq: u64,
    cred: Arc<IssuedCredential>,
}

/// The kept credentials, ordered by expiry (ties by insertion): expired ones go first;
/// past a tenant's share, that tenant's own closest to expiry; past the bound, the largest
/// holder's — so one tenant's minting never pushes another's tokens beyond a revocation's
/// reach.
#[derive(Default)]
pub(super) struct Issued {
    by_expiry: BTreeMap<(OffsetDateTime, u64), Kept>,
    /// Each tenant's entries' places in `by_expiry`, in the same order: its own closest to
    /// expiry is found in O(log n).
    per_tenant: HashMap<String, BTreeSet<(OffsetDateTime, u64)>>,
    next: u64,
}

impl Issued {
    /// The sequence number the next kept credential gets: a revocation takes only what was
    /// kept before the mark it read when it drained the cache.
    pub(super) fn mark(&self) -> u64 {
        self.next.wrapping_add(1)
    }

    /// Keeps `cred`, minted by `provider` for `tenant`: at most `bound` credentials in all
    /// and `per_tenant` of one tenant (`None`: no share of its own, as for a credential a
    /// revocation could not revoke and keeps for the next). Returns how many still-valid
    /// credentials a bound pushed out (beyond a revocation's reach now).
    pub(super) fn keep(
        &mut self,
        (provider, tenant): (&str, &str),
        cred: &Arc<IssuedCredential>,
        (bound, per_tenant): (usize, Option<usize>),
    ) -> usize {
        let Some(expires_at) = cred.expires_at else {
            return 0;
        };
        self.forget_expired();
        let mut pushed = 0;
        if let Some(share) = per_tenant {
            let own = self.per_tenant.get(tenant);
            if own.map_or(0, BTreeSet::len) >= share.max(1) {
                if let Some(key) = own.and_then(|o| o.first().copied()) {
                    self.remove(&key);
                    pushed += 1;
                }
            }
        }
        // Past the bound, the largest holder's closest to expiry: a tenant filling its share
        // pushes no quieter tenant's tokens beyond a revocation's reach.
        while self.by_expiry.len() >= bound.max(1) {
            let key = self
                .per_tenant
                .values()
                .max_by_key(|own| own.len())
                .and_then(|own| own.first().copied())
                .or_else(|| self.by_expiry.keys().next().copied());
            let Some(key) = key else {
                break;
            };
            self.remove(&key);
            pushed += 1;
        }
        self.next = self.next.wrapping_add(1);
        self.per_tenant
            .entry(tenant.to_owned())
            .or_default()
            .insert((expires_at, self.next));
        self.by_expiry.insert(
            (expires_at, self.next),
            Kept {
                provider: provider.to_owned(),
                tenant: tenant.to_owned(),
                seq: self.next,
                cred: Arc::clone(cred),
            },
        );
        pushed
    }

    /// Takes every still-valid credential `provider` minted that was kept before `mark`,
    /// but those in `also` (a revocation has them already), and forgets those in `also`
    /// whenever kept: each token is revoked once.
    pub(super) fn take(
        &mut self,
        provider: &str,
        mark: u64,
        also: &HashSet<*const IssuedCredential>,
    ) -> Vec<Arc<IssuedCredential>> {
        self.forget_expired();
        let mut out = Vec::new();
        let keys: Vec<(OffsetDateTime, u64)> = self
            .by_expiry
            .iter()
            .filter(|(_, k)| {
                k.provider == provider && (k.seq < mark || also.contains(&Arc::as_ptr(&k.cred)))
            })
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            if let Some(k) = self.remove(&key) {
                if !also.contains(&Arc::as_ptr(&k.cred)) {
                    out.push(k.cred);
                }
            }
        }
        out
    }

    fn remove(&mut self, key: &(OffsetDateTime, u64)) -> Option<Kept> {
        let kept = self.by_expiry.remove(key)?;
        if let Some(own) = self.per_tenant.get_mut(&kept.tenant) {
            own.remove(key);
            if own.is_empty() {
                self.per_tenant.remove(&kept.tenant);
            }
        }
        Some(kept)
    }

    /// Drops the expired ones: nothing to revoke.
    fn forget_expired(&mut self) {
        let now = OffsetDateTime::now_utc();
        while let Some(key) = self
            .by_expiry
            .keys()
            .next()
            .copied()
            .filter(|(exp, _)| *exp <= now)
        {
            self.remove(&key);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.by_expiry.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use credbroker_providers::SecretFields;

    fn cred(ttl_s: i64) -> Arc<IssuedCredential> {
        Arc::new(crate::token_cache::tests::cred(ttl_s))
    }

    fn none() -> HashSet<*const IssuedCredential> {
        HashSet::new()
    }

    /// Kept per provider until taken; expired ones are not handed to a revocation; past the
    /// bound the one closest to expiry goes, and says so.
    #[test]
    fn kept_until_taken_expired_or_pushed_out() {
        let mut issued = Issued::default();
        let (a, b, c) = (cred(3600), cred(1800), cred(-1));
        assert_eq!(issued.keep(("github_app", "t1"), &a, (2, Some(2))), 0);
        assert_eq!(issued.keep(("other", "t1"), &b, (2, Some(2))), 0);
        // An expired one is kept (it costs nothing to drop later) but never taken.
        assert_eq!(issued.keep(("github_app", "t1"), &c, (3, Some(3))), 0);
        let taken = issued.take("github_app", issued.mark(), &none());
        assert_eq!(taken.len(), 1);
        assert!(Arc::ptr_eq(&taken[0], &a));
        assert!(
            issued.take("github_app", issued.mark(), &none()).is_empty(),
            "taken once"
        );
        assert_eq!(issued.len(), 1, "the other provider's is left");
        // Bound 1: b (closest to expiry) is pushed out by a new one.
        assert_eq!(
            issued.keep(("github_app", "t1"), &cred(3600), (1, Some(1))),
            1
        );
        assert!(issued.take("other", issued.mark(), &none()).is_empty());
        assert_eq!(issued.take("github_app", issued.mark(), &none()).len(), 1);
        // No expiry: nothing to revoke before it ends, not kept.
        let forever = Arc::new(IssuedCredential {
            kind: "test",
            credentials: SecretFields::new(),
            expires_at: None,
            upstream_request_id: None,
            details: serde_json::Value::Null,
            subject: None,
        });
        assert_eq!(issued.keep(("github_app", "t1"), &forever, (1, Some(1))), 0);
        assert_eq!(issued.len(), 0);
    }

    /// Past the bound (the shares add up to more than it), the largest holder's token goes,
    /// not whoever's expires first: a quiet tenant's one token stays within reach.
    #[test]
    fn past_the_bound_the_largest_holder_makes_room() {
        let mut issued = Issued::default();
        let quiet = cred(600);
        assert_eq!(
            issued.keep(("github_app", "quiet"), &quiet, (4, Some(3))),
            0
        );
        for _ in 0..3 {
            assert_eq!(
                issued.keep(("github_app", "noisy"), &cred(3600), (4, Some(3))),
                0
            );
        }
        assert_eq!(
            issued.keep(("github_app", "third"), &cred(3600), (4, Some(3))),
            1
        );
        let taken = issued.take("github_app", issued.mark(), &none());
        assert_eq!(taken.len(), 4);
        assert!(
            taken.iter().any(|c| Arc::ptr_eq(c, &quiet)),
            "the quiet tenant's was pushed out"
        );
    }

    /// A revocation takes what was kept before its mark, and forgets what it already has
    /// (the mints it waited for) whenever they were kept; a tenant's minting pushes out only
    /// its own.
    #[test]
    fn a_revocation_takes_what_was_kept_before_it_once() {
        let mut issued = Issued::default();
        let before = cred(3600);
        issued.keep(("github_app", "t1"), &before, (10, Some(10)));
        let mark = issued.mark();
        let (landed, after) = (cred(3600), cred(3600));
        issued.keep(("github_app", "t1"), &landed, (10, Some(10)));
        issued.keep(("github_app", "t1"), &after, (10, Some(10)));
        let also: HashSet<_> = [Arc::as_ptr(&landed)].into_iter().collect();
        let taken = issued.take("github_app", mark, &also);
        assert_eq!(taken.len(), 1);
        assert!(Arc::ptr_eq(&taken[0], &before));
        // The one minted after the revocation began is still kept, for the next one.
        let rest = issued.take("github_app", issued.mark(), &none());
        assert_eq!(rest.len(), 1);
        assert!(Arc::ptr_eq(&rest[0], &after));

        // Tenant shares: t2 at its share of 2 pushes out its own, never t1's.
        let t1 = cred(100);
        issued.keep(("github_app", "t1"), &t1, (10, Some(2)));
        for _ in 0..3 {
            issued.keep(("github_app", "t2"), &cred(3600), (10, Some(2)));
        }
        let all = issued.take("github_app", issued.mark(), &none());
        assert_eq!(all.len(), 3, "t1's one and t2's two");
        assert!(all.iter().any(|c| Arc::ptr_eq(c, &t1)));
    }
}
