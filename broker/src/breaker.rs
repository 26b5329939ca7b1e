//! Circuit breaking: stop hammering an upstream that is down, without letting one tenant's
//! failing binding stop everyone.
//!
//! Two levels. Each binding has a circuit: after `threshold` consecutive mints of it fail as
//! *unavailable* (timeouts, 5xx, throttling after retries, unreachable) it opens, and further
//! cold mints of that binding fail at once with `provider_unavailable` and no upstream call,
//! for `open_for`. Each provider has a circuit too, which opens only when `threshold`
//! consecutive failures of the provider came from at least two tenants, no tenant counting
//! for more than half of them (rounded up) — a real outage, not one customer's broken
//! endpoint or throttled account topped up by a single failure elsewhere. Then one trial mint
//! is let through (half-open): success closes the circuit, failure opens it again. Denials do
//! not count — the upstream answered. Mints admitted before a circuit opened and finishing
//! while it is open change nothing (their failures are what opened it; a late answer must not
//! close it before its trial). Cached tokens never reach the breaker, so a still-valid cached
//! token is served throughout an outage.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::admission::{MintFor, MintLimits};

#[derive(Default)]
struct Circuit {
    failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
    /// Tenants among the current streak of failures and how many each counts for (provider
    /// circuits only; at most `threshold` tenants, each counting at least once).
    tenants: Vec<(String, u32)>,
}

fn binding_key(provider: &str, binding: &str) -> String {
    format!("binding:{provider}/{binding}")
}

fn provider_key(provider: &str) -> String {
    format!("provider:{provider}")
}

/// What the breaker allows for one mint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Call the upstream.
    Allowed,
    /// Fail fast; the circuit re-tries after this long.
    Open(Duration),
}

/// An admitted mint's hold on its circuits until [`Breakers::record`] takes its outcome
/// ([`Breakers::admit_held`]): dropped before that (a panic, a cancelled request), it gives
/// up the trials it claimed, and only those.
pub struct Admitted<'a> {
    breakers: &'a Breakers,
    provider: &'a str,
    binding: &'a str,
    /// The circuits whose half-open trial this mint is (emptied once recorded).
    trials: Vec<String>,
}

impl Admitted<'_> {
    /// Records the mint's outcome ([`Breakers::record`]), ending the hold.
    pub fn record(mut self, tenant: &str, upstream_unavailable: bool) -> (bool, bool) {
        self.trials.clear();
        self.breakers
            .record(self.provider, self.binding, tenant, upstream_unavailable)
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.trials.is_empty() {
            self.breakers.abandon(&self.trials);
        }
    }
}

/// Circuits by provider and by binding, and the mint rate limits: what stands between a
/// cold resolve and the upstream.
pub struct Breakers {
    threshold: u32,
    open_for: Duration,
    circuits: Mutex<HashMap<String, Circuit>>,
    limits: crate::admission::MintLimiter,
    /// Providers without a provider-wide circuit: each customer is an upstream of its own
    /// ([`credbroker_providers::Provider::shares_upstream`]).
    own_upstreams: std::collections::HashSet<String>,
}

impl Breakers {
    /// Breakers opening after `threshold` consecutive failures for `open_for`.
    pub fn new(threshold: u32, open_for: Duration) -> Breakers {
        Breakers::with_mint_limits(threshold, open_for, MintLimits::default())
    }

    /// Breakers, and the mint rate limits (0 in a field: no such limit).
    pub fn with_mint_limits(threshold: u32, open_for: Duration, limits: MintLimits) -> Breakers {
        Breakers {
            threshold: threshold.max(1),
            open_for,
            circuits: Mutex::new(HashMap::new()),
            limits: crate::admission::MintLimiter::new(limits),
            own_upstreams: std::collections::HashSet::new(),
        }
    }

    /// The same, with no provider-wide circuit for `providers`: each of their customers is
    /// an upstream of its own, so failures spread over tenants prove no shared outage.
    #[must_use]
    pub fn with_own_upstreams(mut self, providers: impl IntoIterator<Item = String>) -> Breakers {
        self.own_upstreams.extend(providers);
        self
    }

    /// Takes a mint token for the worker, the binding and the tenant's share of the provider.
    ///
    /// # Errors
    /// `"worker"`, `"binding"` or `"tenant"`: the limit reached.
    pub fn admit_mint(&self, mint: MintFor<'_>) -> Result<(), &'static str> {
        self.limits.check(mint, Instant::now())
    }

    /// Gives back the mint tokens of a mint [`Breakers::admit`] then refused.
    pub fn refund_mint(&self, mint: MintFor<'_>) {
        self.limits.refund(mint);
    }

    /// Whether a mint of `binding` (of `provider`) may call its upstream now: both the
    /// provider's and the binding's circuits must let it through.
    pub fn admit(&self, provider: &str, binding: &str) -> Admission {
        self.admit_claiming(provider, binding).0
    }

    /// [`Breakers::admit`], holding the mint's circuits until its outcome is recorded
    /// ([`Admitted`]): `Err` with how long until the next attempt when a circuit is open.
    ///
    /// # Errors
    /// The time until the circuit tries again.
    pub fn admit_held<'a>(
        &'a self,
        provider: &'a str,
        binding: &'a str,
    ) -> Result<Admitted<'a>, Duration> {
        match self.admit_claiming(provider, binding) {
            (Admission::Allowed, trials) => Ok(Admitted {
                breakers: self,
                provider,
                binding,
                trials,
            }),
            (Admission::Open(retry), _) => Err(retry),
        }
    }

    /// The admission, and the circuits whose trial it claimed.
    fn admit_claiming(&self, provider: &str, binding: &str) -> (Admission, Vec<String>) {
        let Ok(mut all) = self.circuits.lock() else {
            return (Admission::Allowed, Vec::new());
        };
        let now = Instant::now();
        let shared = !self.own_upstreams.contains(provider);
        let keys = [
            shared.then(|| provider_key(provider)),
            Some(binding_key(provider, binding)),
        ];
        // Decide on both before touching either: a trial is claimed only when the mint
        // really goes ahead.
        let mut trials = Vec::new();
        for key in keys.iter().flatten() {
            let c = all.entry(key.clone()).or_default();
            match c.open_until {
                Some(until) if now < until => return (Admission::Open(until - now), Vec::new()),
                Some(_) if c.trial_in_flight => {
                    return (Admission::Open(Duration::from_millis(100)), Vec::new())
                }
                Some(_) => trials.push(key.clone()),
                None => {}
            }
        }
        for key in &trials {
            if let Some(c) = all.get_mut(key) {
                c.trial_in_flight = true;
            }
        }
        (Admission::Allowed, trials)
    }

    /// Gives up the trials `keys` an admitted mint claimed and will record no outcome for
    /// (it panicked, or the request driving it was dropped): the circuit lets the next mint
    /// through as its trial instead of failing fast until a restart. Counts nothing.
    fn abandon(&self, keys: &[String]) {
        let Ok(mut all) = self.circuits.lock() else {
            return;
        };
        for key in keys {
            if let Some(c) = all.get_mut(key) {
                c.trial_in_flight = false;
            }
        }
    }

    /// Records the outcome of an admitted mint of `binding` (of `tenant`); returns whether
    /// this opened (the binding's circuit, the provider's circuit).
    pub fn record(
        &self,
        provider: &str,
        binding: &str,
        tenant: &str,
        upstream_unavailable: bool,
    ) -> (bool, bool) {
        let Ok(mut all) = self.circuits.lock() else {
            return (false, false);
        };
        let threshold = self.threshold;
        let open_for = self.open_for;
        let now = Instant::now();
        // The most one tenant's failures count for in the provider's streak.
        let per_tenant = threshold.div_ceil(2);
        let step = |c: &mut Circuit, spread_needed: bool| -> bool {
            // Open, and not yet trying: this mint was admitted before the circuit opened.
            if c.open_until.is_some_and(|until| now < until) {
                return false;
            }
            let was_half_open = c.open_until.is_some();
            c.trial_in_flight = false;
            if !upstream_unavailable {
                *c = Circuit::default();
                return false;
            }
            if spread_needed {
                // The provider's circuit: a failed trial does not re-open it by itself (one
                // tenant polling a broken binding would hold it open for everyone); it closes
                // and counts afresh, and opens again only on a multi-tenant streak.
                if was_half_open {
                    *c = Circuit::default();
                }
                if let Some((_, n)) = c.tenants.iter_mut().find(|(t, _)| t == tenant) {
                    if *n < per_tenant {
                        *n += 1;
                        c.failures += 1;
                    }
                } else if c.tenants.len() < threshold as usize {
                    c.tenants.push((tenant.to_owned(), 1));
                    c.failures += 1;
                }
                if c.failures >= threshold && c.tenants.len() >= 2 {
                    c.failures = 0;
                    c.tenants.clear();
                    c.open_until = Some(Instant::now() + open_for);
                    return true;
                }
                return false;
            }
            c.failures += 1;
            if was_half_open || c.failures >= threshold {
                c.open_until = Some(Instant::now() + open_for);
                return true;
            }
            false
        };
        let binding_opened = step(
            all.entry(binding_key(provider, binding)).or_default(),
            false,
        );
        let provider_opened = !self.own_upstreams.contains(provider)
            && step(all.entry(provider_key(provider)).or_default(), true);
        (binding_opened, provider_opened)
    }

    /// Providers whose (provider-wide) circuit is open now.
    pub fn open_providers(&self) -> Vec<String> {
        let now = Instant::now();
        self.circuits
            .lock()
            .map(|all| {
                all.iter()
                    .filter(|(_, c)| c.open_until.is_some_and(|u| now < u))
                    .filter_map(|(k, _)| k.strip_prefix("provider:").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many binding circuits are open now (a count: no binding is named in metrics).
    pub fn open_bindings(&self) -> usize {
        let now = Instant::now();
        self.circuits
            .lock()
            .map(|all| {
                all.iter()
                    .filter(|(k, c)| {
                        k.starts_with("binding:") && c.open_until.is_some_and(|u| now < u)
                    })
                    .count()
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_half_opens() {
        let b = Breakers::new(3, Duration::from_millis(50));
        for _ in 0..2 {
            assert_eq!(b.admit("p", "b1"), Admission::Allowed);
            b.record("p", "b1", "t1", true);
        }
        assert_eq!(b.admit("p", "b1"), Admission::Allowed);
        b.record("p", "b1", "t1", true);
        assert!(
            matches!(b.admit("p", "b1"), Admission::Open(_)),
            "third failure opens"
        );
        assert_eq!(b.admit("other", "b9"), Admission::Allowed, "per provider");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit("p", "b1"), Admission::Allowed, "half-open trial");
        assert!(
            matches!(b.admit("p", "b1"), Admission::Open(_)),
            "one trial at a time"
        );
        b.record("p", "b1", "t1", true);
        assert!(
            matches!(b.admit("p", "b1"), Admission::Open(_)),
            "failed trial re-opens"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit("p", "b1"), Admission::Allowed);
        b.record("p", "b1", "t1", false);
        assert_eq!(
            b.admit("p", "b1"),
            Admission::Allowed,
            "successful trial closes"
        );
        assert_eq!(b.open_bindings(), 0);
    }

    /// A trial whose mint never records an outcome (it panicked, or its request was
    /// dropped) is given up when its hold drops: the next mint is the trial, rather than
    /// every mint failing fast until a restart.
    #[test]
    fn a_trial_that_never_records_is_given_up() {
        let b = Breakers::new(1, Duration::from_millis(20));
        assert_eq!(b.admit("p", "b1"), Admission::Allowed);
        b.record("p", "b1", "t1", true);
        assert!(matches!(b.admit("p", "b1"), Admission::Open(_)));
        std::thread::sleep(Duration::from_millis(30));
        let trial = b.admit_held("p", "b1").expect("the trial");
        assert!(
            matches!(b.admit("p", "b1"), Admission::Open(_)),
            "one trial at a time"
        );
        drop(trial);
        let trial = b
            .admit_held("p", "b1")
            .expect("a trial whose mint ended without an outcome still holds the circuit");
        // A recorded hold does not give up what its record decided.
        trial.record("t1", true);
        assert!(matches!(b.admit("p", "b1"), Admission::Open(_)));
        // A mint admitted while the circuit was closed gives up nothing when dropped: the
        // trial another mint holds stays held.
        let b = Breakers::new(1, Duration::from_millis(20));
        let early = b.admit_held("p", "b1").unwrap();
        b.record("p", "b1", "t1", true);
        std::thread::sleep(Duration::from_millis(30));
        let trial = b.admit_held("p", "b1").expect("the trial");
        drop(early);
        assert!(matches!(b.admit("p", "b1"), Admission::Open(_)));
        drop(trial);
    }

    /// One tenant's failing binding opens its own circuit, never the provider's.
    #[test]
    fn one_tenants_failures_do_not_open_the_provider() {
        let b = Breakers::new(3, Duration::from_secs(60));
        for _ in 0..10 {
            if b.admit("p", "broken") == Admission::Allowed {
                assert!(!b.record("p", "broken", "t1", true).1);
            }
        }
        assert!(matches!(b.admit("p", "broken"), Admission::Open(_)));
        assert_eq!(b.admit("p", "healthy"), Admission::Allowed);
        assert!(b.open_providers().is_empty());
        assert_eq!(b.open_bindings(), 1);
        // Failures across two tenants are an outage: the provider opens.
        let b = Breakers::new(3, Duration::from_secs(60));
        b.admit("p", "x");
        b.record("p", "x", "t1", true);
        b.admit("p", "y");
        b.record("p", "y", "t2", true);
        b.admit("p", "x");
        assert!(b.record("p", "x", "t1", true).1);
        assert!(matches!(b.admit("p", "z"), Admission::Open(_)));
        assert_eq!(b.open_providers(), vec!["p".to_owned()]);
    }

    /// A provider whose customers are each an upstream of their own (ServiceNow) has no
    /// provider-wide circuit: two tenants' broken instances open their own bindings' circuits
    /// and leave a third tenant's mints alone.
    #[test]
    fn own_upstreams_have_no_provider_circuit() {
        let b = Breakers::new(2, Duration::from_secs(60)).with_own_upstreams(["sn".to_owned()]);
        for _ in 0..4 {
            for (binding, tenant) in [("x", "t1"), ("y", "t2")] {
                if b.admit("sn", binding) == Admission::Allowed {
                    assert!(!b.record("sn", binding, tenant, true).1);
                }
            }
        }
        assert!(matches!(b.admit("sn", "x"), Admission::Open(_)));
        assert!(matches!(b.admit("sn", "y"), Admission::Open(_)));
        assert_eq!(b.admit("sn", "z"), Admission::Allowed);
        assert!(b.open_providers().is_empty());
    }

    /// A half-open provider circuit is not held open by one tenant's failing trials.
    #[test]
    fn one_tenant_cannot_hold_the_provider_open() {
        let b = Breakers::new(2, Duration::from_millis(30));
        b.admit("p", "x");
        b.record("p", "x", "t1", true);
        b.admit("p", "y");
        assert!(b.record("p", "y", "t2", true).1, "two tenants: outage");
        std::thread::sleep(Duration::from_millis(40));
        // t1's broken binding takes the trial and fails: the provider does not re-open.
        assert_eq!(b.admit("p", "x2"), Admission::Allowed);
        assert!(!b.record("p", "x2", "t1", true).1);
        assert_eq!(b.admit("p", "healthy"), Admission::Allowed);
        assert!(b.open_providers().is_empty());
    }

    /// One tenant's streak topped up by a single failure elsewhere is not an outage: no
    /// tenant counts for more than half the threshold (rounded up).
    #[test]
    fn one_tenant_plus_one_failure_elsewhere_does_not_open_the_provider() {
        let b = Breakers::new(5, Duration::from_secs(60));
        for i in 0..20 {
            b.admit("p", &format!("broken{i}"));
            b.record("p", &format!("broken{i}"), "t1", true);
        }
        b.admit("p", "x");
        assert!(
            !b.record("p", "x", "t2", true).1,
            "3 of t1's count, 1 of t2's"
        );
        assert!(b.open_providers().is_empty());
        b.admit("p", "y");
        assert!(
            b.record("p", "y", "t3", true).1,
            "three tenants, five failures"
        );
        assert_eq!(b.open_providers(), vec!["p".to_owned()]);
    }

    /// Mints that were already in flight when the circuit opened and fail afterwards leave
    /// it open (each used to close the provider's circuit again).
    #[test]
    fn late_results_do_not_close_an_open_circuit() {
        let b = Breakers::new(2, Duration::from_secs(60));
        for binding in ["x", "y", "z", "w"] {
            assert_eq!(b.admit("p", binding), Admission::Allowed);
        }
        b.record("p", "x", "t1", true);
        assert!(b.record("p", "y", "t2", true).1, "opened");
        b.record("p", "z", "t3", true);
        b.record("p", "w", "t4", false);
        assert_eq!(b.open_providers(), vec!["p".to_owned()]);
        assert!(matches!(b.admit("p", "v"), Admission::Open(_)));
    }

    #[test]
    fn denials_reset_the_count() {
        let b = Breakers::new(2, Duration::from_secs(60));
        b.admit("p", "b");
        b.record("p", "b", "t", true);
        b.admit("p", "b");
        b.record("p", "b", "t", false);
        b.admit("p", "b");
        b.record("p", "b", "t", true);
        assert_eq!(b.admit("p", "b"), Admission::Allowed);
    }
}
