//! Per-provider circuit breaking: stop hammering an upstream that is down.
//!
//! After `threshold` consecutive mints of one provider fail as *unavailable* (timeouts, 5xx,
//! throttling after retries, unreachable), the circuit opens: further cold mints of that
//! provider fail at once with `provider_unavailable` and no upstream call, for `open_for`. Then
//! one trial mint is let through (half-open): success closes the circuit, failure opens it
//! again. Denials do not count — the upstream answered. Cached tokens never reach the breaker,
//! so a still-valid cached token is served throughout an outage.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Circuit {
    failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

/// What the breaker allows for one mint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Call the upstream.
    Allowed,
    /// Fail fast; the circuit re-tries after this long.
    Open(Duration),
}

/// Circuits by provider.
pub struct Breakers {
    threshold: u32,
    open_for: Duration,
    circuits: Mutex<HashMap<String, Circuit>>,
}

impl Breakers {
    /// Breakers opening after `threshold` consecutive failures for `open_for`.
    pub fn new(threshold: u32, open_for: Duration) -> Breakers {
        Breakers {
            threshold: threshold.max(1),
            open_for,
            circuits: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a mint of `provider` may call its upstream now.
    pub fn admit(&self, provider: &str) -> Admission {
        let Ok(mut all) = self.circuits.lock() else {
            return Admission::Allowed;
        };
        let c = all.entry(provider.to_owned()).or_default();
        match c.open_until {
            Some(until) if Instant::now() < until => Admission::Open(until - Instant::now()),
            Some(_) if c.trial_in_flight => Admission::Open(Duration::from_millis(100)),
            Some(_) => {
                c.trial_in_flight = true;
                Admission::Allowed
            }
            None => Admission::Allowed,
        }
    }

    /// Records the outcome of an admitted mint; returns true when this opened the circuit.
    pub fn record(&self, provider: &str, upstream_unavailable: bool) -> bool {
        let Ok(mut all) = self.circuits.lock() else {
            return false;
        };
        let c = all.entry(provider.to_owned()).or_default();
        let was_half_open = c.open_until.is_some();
        c.trial_in_flight = false;
        if !upstream_unavailable {
            *c = Circuit::default();
            return false;
        }
        c.failures += 1;
        if was_half_open || c.failures >= self.threshold {
            c.open_until = Some(Instant::now() + self.open_for);
            return true;
        }
        false
    }

    /// Providers whose circuit is open now.
    pub fn open_providers(&self) -> Vec<String> {
        let now = Instant::now();
        self.circuits
            .lock()
            .map(|all| {
                all.iter()
                    .filter(|(_, c)| c.open_until.is_some_and(|u| now < u))
                    .map(|(p, _)| p.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_half_opens() {
        let b = Breakers::new(3, Duration::from_millis(50));
        for _ in 0..2 {
            assert_eq!(b.admit("p"), Admission::Allowed);
            assert!(!b.record("p", true));
        }
        assert_eq!(b.admit("p"), Admission::Allowed);
        assert!(b.record("p", true), "third failure opens");
        assert!(matches!(b.admit("p"), Admission::Open(_)));
        assert_eq!(b.admit("other"), Admission::Allowed, "per provider");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit("p"), Admission::Allowed, "half-open trial");
        assert!(
            matches!(b.admit("p"), Admission::Open(_)),
            "one trial at a time"
        );
        assert!(b.record("p", true), "failed trial re-opens at once");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit("p"), Admission::Allowed);
        assert!(!b.record("p", false), "successful trial closes");
        assert_eq!(b.admit("p"), Admission::Allowed);
        assert!(b.open_providers().is_empty());
    }

    #[test]
    fn denials_reset_the_count() {
        let b = Breakers::new(2, Duration::from_secs(60));
        b.admit("p");
        b.record("p", true);
        b.admit("p");
        b.record("p", false);
        b.admit("p");
        assert!(!b.record("p", true));
    }
}
