//! What a revocation takes out of the token cache ([`super::TokenCache::drain_bindings`]):
//! the cached tokens, and the mints in flight, whose tokens it waits for.

use std::sync::Arc;

use credbroker_providers::IssuedCredential;

use super::InFlight;

/// What [`TokenCache::drain_bindings`] took out of the cache.
pub struct Drained {
    /// The tokens that were cached.
    pub cached: Vec<Arc<IssuedCredential>>,
    /// The mints that were in flight.
    pub(super) in_flight: Vec<InFlight>,
}

/// A drained credential, and how it was found.
pub struct DrainedCredential {
    /// The credential.
    pub credential: Arc<IssuedCredential>,
    /// Whether it was minted while (or after) it was drained, rather than cached.
    pub was_in_flight: bool,
}

impl Drained {
    /// Mints that were in flight when drained.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The cached tokens, then each in-flight mint's token once it lands (waiting at most
    /// `wait` in all; a mint bounded by the mint deadline lands well within it). A mint
    /// that fails issued nothing. Returns the tokens and how many mints had not landed by
    /// then (their tokens, if any, are beyond reach).
    pub async fn landed(self, wait: std::time::Duration) -> (Vec<DrainedCredential>, usize) {
        let mut out: Vec<DrainedCredential> = self
            .cached
            .into_iter()
            .map(|credential| DrainedCredential {
                credential,
                was_in_flight: false,
            })
            .collect();
        let deadline = tokio::time::Instant::now() + wait;
        let mut unlanded = 0;
        for mint in self.in_flight {
            match tokio::time::timeout_at(deadline, mint).await {
                // A mint that landed in the cache as it was drained is among the cached
                // ones already: one token, revoked once.
                Ok(Ok(credential))
                    if out.iter().any(|d| Arc::ptr_eq(&d.credential, &credential)) => {}
                Ok(Ok(credential)) => out.push(DrainedCredential {
                    credential,
                    was_in_flight: true,
                }),
                Ok(Err(_)) => {}
                Err(_) => unlanded += 1,
            }
        }
        (out, unlanded)
    }
}
