//! Credentials a revocation must still reach: every credential minted for a provider that
//! can revoke upstream (GitHub installation tokens), kept until it expires whether or not
//! the cache still holds it. A token the cache let go (a newer one for its key, a worker's
//! `min_ttl_s` forcing a fresh mint, the tenant's share full) is still valid upstream for
//! the rest of its lifetime; `revoke-cached` revokes these too.

use std::collections::BTreeMap;
use std::sync::Arc;

use time::OffsetDateTime;

use credbroker_providers::IssuedCredential;

/// The kept credentials, ordered by expiry (ties by insertion): expired ones and, past the
/// bound, those closest to expiry go first.
#[derive(Default)]
pub(super) struct Issued {
    by_expiry: BTreeMap<(OffsetDateTime, u64), (String, Arc<IssuedCredential>)>,
    next: u64,
}

impl Issued {
    /// Keeps `cred`, minted by `provider`, at most `bound` credentials in all. Returns how
    /// many still-valid credentials the bound pushed out (beyond a revocation's reach now).
    pub(super) fn keep(
        &mut self,
        provider: &str,
        cred: &Arc<IssuedCredential>,
        bound: usize,
    ) -> usize {
        let Some(expires_at) = cred.expires_at else {
            return 0;
        };
        let now = OffsetDateTime::now_utc();
        while self
            .by_expiry
            .first_key_value()
            .is_some_and(|((exp, _), _)| *exp <= now)
        {
            self.by_expiry.pop_first();
        }
        let mut pushed = 0;
        while self.by_expiry.len() >= bound.max(1) && self.by_expiry.pop_first().is_some() {
            pushed += 1;
        }
        self.next = self.next.wrapping_add(1);
        self.by_expiry.insert(
            (expires_at, self.next),
            (provider.to_owned(), Arc::clone(cred)),
        );
        pushed
    }

    /// Takes every still-valid credential `provider` minted.
    pub(super) fn take(&mut self, provider: &str) -> Vec<Arc<IssuedCredential>> {
        let now = OffsetDateTime::now_utc();
        let mut out = Vec::new();
        self.by_expiry.retain(|(exp, _), (p, cred)| {
            if p != provider {
                return true;
            }
            if *exp > now {
                out.push(Arc::clone(cred));
            }
            false
        });
        out
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
        Arc::new(IssuedCredential {
            kind: "test",
            credentials: SecretFields::new(),
            expires_at: Some(OffsetDateTime::now_utc() + time::Duration::seconds(ttl_s)),
            upstream_request_id: None,
            details: serde_json::Value::Null,
            subject: None,
        })
    }

    /// Kept per provider until taken; expired ones are not handed to a revocation; past the
    /// bound the one closest to expiry goes, and says so.
    #[test]
    fn kept_until_taken_expired_or_pushed_out() {
        let mut issued = Issued::default();
        let (a, b, c) = (cred(3600), cred(1800), cred(-1));
        assert_eq!(issued.keep("github_app", &a, 2), 0);
        assert_eq!(issued.keep("other", &b, 2), 0);
        // An expired one is kept (it costs nothing to drop later) but never taken.
        assert_eq!(issued.keep("github_app", &c, 3), 0);
        let taken = issued.take("github_app");
        assert_eq!(taken.len(), 1);
        assert!(Arc::ptr_eq(&taken[0], &a));
        assert!(issued.take("github_app").is_empty(), "taken once");
        assert_eq!(issued.len(), 1, "the other provider's is left");
        // Bound 1: b (closest to expiry) is pushed out by a new one.
        assert_eq!(issued.keep("github_app", &cred(3600), 1), 1);
        assert!(issued.take("other").is_empty());
        assert_eq!(issued.take("github_app").len(), 1);
        // No expiry: nothing to revoke before it ends, not kept.
        let forever = Arc::new(IssuedCredential {
            kind: "test",
            credentials: SecretFields::new(),
            expires_at: None,
            upstream_request_id: None,
            details: serde_json::Value::Null,
            subject: None,
        });
        assert_eq!(issued.keep("github_app", &forever, 1), 0);
        assert_eq!(issued.len(), 0);
    }
}
