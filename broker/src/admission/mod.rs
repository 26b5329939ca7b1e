//! Admission before any work is done for a client: a TLS handshake budget (global and per
//! source address) on both listeners, request rate limits (per source and global) on the
//! public listener, and a throttle for log lines about anonymous rejections.
//!
//! A source is an IPv4 address or an IPv6 /64 (one host usually holds a whole /64).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

mod bodies;
mod gate;
mod mint;
pub use bodies::{BodyBudget, BodyPermit, BodyRefusal};
pub use gate::{HandshakeGate, HandshakePermit, HandshakeRefusal};
pub use mint::{MintFor, MintLimiter, MintLimits};

/// Most sources the rate limiter remembers at once; beyond it, idle sources are forgotten
/// and, if none is idle, new sources are refused until some are.
const MAX_TRACKED_SOURCES: usize = 65_536;

/// The admission key of a peer address.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Gives one back of what `key` holds in `counts`, forgetting a key that holds nothing (the
/// per-source, per-identity and reserve counts alike).
fn give_back<K: Eq + std::hash::Hash>(counts: &Mutex<HashMap<K, usize>>, key: &K) {
    let mut counts = counts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// Open connections per client identity on the mTLS listener (the certificate's identity,
/// `worker:<name>`, …, whatever address it comes from): once half of the connection budget
/// is in use, an identity that already holds `per_identity` connections gets no more. One
/// certificate used from many addresses (a compromised worker's, each address under the
/// per-source share) so holds at most half of the budget, or `per_identity` if larger, and
/// every other identity keeps the rest.
pub struct IdentityShare {
    budget: Arc<Semaphore>,
    reserve: usize,
    counts: Mutex<HashMap<Arc<str>, usize>>,
    per_identity: usize,
}

/// An identity's connection; released when dropped.
pub struct IdentitySlot {
    share: Arc<IdentityShare>,
    identity: Arc<str>,
}

impl IdentityShare {
    /// A share of the `total` connection slots of `budget` (the connection gate's
    /// semaphore), `per_identity` of them for any one identity once half are in use.
    pub fn new(budget: Arc<Semaphore>, total: usize, per_identity: usize) -> Arc<IdentityShare> {
        Arc::new(IdentityShare {
            budget,
            reserve: total.max(1) / 2,
            counts: Mutex::new(HashMap::new()),
            per_identity: per_identity.max(1),
        })
    }

    /// A slot for one more connection of `identity` (which already holds its connection
    /// slot), or `None` when the identity has its share and the budget is under pressure.
    /// The identity is shared, not copied: this runs for every resolve (see [`InFlight`]).
    pub fn try_enter(self: &Arc<Self>, identity: &Arc<str>) -> Option<IdentitySlot> {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let held = counts.entry(Arc::clone(identity)).or_insert(0);
        if *held >= self.per_identity && self.budget.available_permits() < self.reserve {
            return None;
        }
        *held += 1;
        Some(IdentitySlot {
            share: self.clone(),
            identity: Arc::clone(identity),
        })
    }
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        give_back(&self.share.counts, &self.identity);
    }
}

/// Requests in progress on the mTLS listener that cost shared work (resolves and webhook
/// verifications: a store read, a durable audit record, maybe a mint): `total` at once, and
/// once half are taken an identity that already holds `per_identity` gets no more. One
/// worker certificate's flood (64 connections of 64 streams each) so holds at most half of
/// them, and the audit queue and the store's connections stay open to every other identity.
pub struct InFlight {
    budget: Arc<Semaphore>,
    share: Arc<IdentityShare>,
}

/// A request's [`InFlight`] slot; given back when dropped.
pub struct InFlightSlot {
    _permit: OwnedSemaphorePermit,
    _share: IdentitySlot,
}

impl InFlight {
    /// `total` requests at once, `per_identity` for one identity once half are taken.
    pub fn new(total: usize, per_identity: usize) -> Arc<InFlight> {
        let budget = Arc::new(Semaphore::new(total.max(1)));
        Arc::new(InFlight {
            share: IdentityShare::new(budget.clone(), total.max(1), per_identity),
            budget,
        })
    }

    /// A slot for one more request of `identity`, or the limit that refused it: `global`
    /// (every slot taken) or `identity` (its share, with half the slots taken).
    ///
    /// # Errors
    /// The scope of the limit that refused.
    pub fn try_take(&self, identity: &Arc<str>) -> Result<InFlightSlot, &'static str> {
        let permit = self
            .budget
            .clone()
            .try_acquire_owned()
            .map_err(|_| "global")?;
        let share = self.share.try_enter(identity).ok_or("identity")?;
        Ok(InFlightSlot {
            _permit: permit,
            _share: share,
        })
    }
}

/// Connections kept for one kind of client (operators, on the mTLS listener): `total` in
/// all, at most `per_holder` for one (an operator's script leaking connections, or a
/// disabled operator not yet on the CRL, cannot take the others').
pub struct Reserve {
    slots: Arc<Semaphore>,
    total: usize,
    held: Mutex<HashMap<String, usize>>,
    per_holder: usize,
}

/// A [`Reserve`] slot; given back when dropped.
pub struct ReserveSlot {
    reserve: Arc<Reserve>,
    holder: String,
    _permit: OwnedSemaphorePermit,
}

impl Reserve {
    /// `total` slots, `per_holder` of them for one holder.
    pub fn new(total: usize, per_holder: usize) -> Arc<Reserve> {
        Arc::new(Reserve {
            slots: Arc::new(Semaphore::new(total)),
            total,
            held: Mutex::new(HashMap::new()),
            per_holder: per_holder.max(1),
        })
    }

    /// Whether [`Reserve::try_take`] could give `holder` a slot now (checked before any
    /// costlier check of the holder's standing).
    pub fn could_take(&self, holder: &str) -> bool {
        let held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.slots.available_permits() > 0
            && held.get(holder).copied().unwrap_or(0) < self.per_holder
    }

    /// A slot for `holder`, when one is free and it holds fewer than its share.
    pub fn try_take(self: &Arc<Self>, holder: &str) -> Option<ReserveSlot> {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = held.get(holder).copied().unwrap_or(0);
        if n >= self.per_holder {
            return None;
        }
        let permit = Arc::clone(&self.slots).try_acquire_owned().ok()?;
        held.insert(holder.to_owned(), n + 1);
        Some(ReserveSlot {
            reserve: Arc::clone(self),
            holder: holder.to_owned(),
            _permit: permit,
        })
    }

    /// Waits until every slot is back (at shutdown).
    pub async fn all_back(&self) {
        let all = u32::try_from(self.total).unwrap_or(u32::MAX);
        let _ = self.slots.acquire_many(all).await;
    }
}

impl Drop for ReserveSlot {
    fn drop(&mut self) {
        give_back(&self.reserve.held, &self.holder);
    }
}

/// A token bucket: `rate` tokens a second up to `burst`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
    }

    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Rates for [`RateLimiter`].
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    /// Requests a second from one source, sustained.
    pub per_source: f64,
    /// Requests from one source at once after a quiet period.
    pub per_source_burst: f64,
    /// Requests a second from everyone together, sustained.
    pub global: f64,
    /// Requests from everyone at once after a quiet period.
    pub global_burst: f64,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateRefusal {
    /// The source's own limit.
    Source,
    /// The listener's limit over all sources.
    Global,
}

impl RateRefusal {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            RateRefusal::Source => "source",
            RateRefusal::Global => "global",
        }
    }
}

/// Per-source and global token buckets.
pub struct RateLimiter {
    rates: Rates,
    inner: Mutex<Limiter>,
}

struct Limiter {
    global: Bucket,
    sources: HashMap<IpAddr, Bucket>,
}

impl RateLimiter {
    /// A limiter with `rates`, every bucket full.
    pub fn new(rates: Rates) -> RateLimiter {
        let now = Instant::now();
        RateLimiter {
            rates,
            inner: Mutex::new(Limiter {
                global: Bucket::full(rates.global_burst, now),
                sources: HashMap::new(),
            }),
        }
    }

    /// Takes one request's token for `peer` at `now`: the source's bucket first (a source
    /// over its own limit does not drain the global one), then the global bucket.
    ///
    /// # Errors
    /// [`RateRefusal`] naming the limit that was reached.
    pub fn check(&self, peer: IpAddr, now: Instant) -> Result<(), RateRefusal> {
        let r = self.rates;
        let source = source_of(peer);
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !inner.sources.contains_key(&source) && inner.sources.len() >= MAX_TRACKED_SOURCES {
            // Forget sources whose bucket has refilled: they are indistinguishable from new.
            let idle = Duration::from_secs_f64(r.per_source_burst / r.per_source.max(0.001));
            inner
                .sources
                .retain(|_, b| now.saturating_duration_since(b.last) < idle);
            if inner.sources.len() >= MAX_TRACKED_SOURCES {
                return Err(RateRefusal::Global);
            }
        }
        let bucket = inner
            .sources
            .entry(source)
            .or_insert_with(|| Bucket::full(r.per_source_burst, now));
        if !bucket.take(r.per_source, r.per_source_burst, now) {
            return Err(RateRefusal::Source);
        }
        if !inner.global.take(r.global, r.global_burst, now) {
            return Err(RateRefusal::Global);
        }
        Ok(())
    }
}

/// Lets through at most `per_second` log lines a second and counts the rest, so a flood of
/// anonymous rejections cannot flood the log either.
pub struct LogThrottle {
    per_second: u64,
    /// Second (since `start`) of the current window, and lines in it, packed: high 32 bits
    /// the second, low 32 the count.
    window: AtomicU64,
    suppressed: AtomicU64,
    start: Instant,
}

impl LogThrottle {
    /// A throttle of `per_second` lines a second.
    pub fn new(per_second: u64) -> LogThrottle {
        LogThrottle {
            per_second,
            window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    /// Whether to log this line; when a new window opens, also how many lines the previous
    /// windows suppressed (to be reported on this line).
    pub fn admit(&self) -> Option<u64> {
        let second = self.start.elapsed().as_secs() & 0xffff_ffff;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (s, n) = (current >> 32, current & 0xffff_ffff);
            let next = if s == second {
                if n >= self.per_second {
                    self.suppressed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                (s << 32) | (n + 1)
            } else {
                (second << 32) | 1
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_reserve_holder_takes_only_its_share() {
        let r = Reserve::new(3, 2);
        let a1 = r.try_take("a").unwrap();
        let _a2 = r.try_take("a").unwrap();
        assert!(r.try_take("a").is_none(), "past its share");
        let b = r.try_take("b").unwrap();
        assert!(r.try_take("c").is_none(), "all taken");
        drop(a1);
        assert!(r.try_take("c").is_some());
        drop(b);
        assert!(r.held.lock().unwrap().get("b").is_none());
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source() {
        assert_eq!(
            source_of(ip("2001:db8:1:2:aaaa::1")),
            source_of(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(source_of(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn one_source_over_its_limit_leaves_others_served() {
        let rl = RateLimiter::new(Rates {
            per_source: 1.0,
            per_source_burst: 3.0,
            global: 100.0,
            global_burst: 10.0,
        });
        let t = Instant::now();
        for _ in 0..3 {
            assert!(rl.check(ip("10.0.0.1"), t).is_ok());
        }
        assert_eq!(rl.check(ip("10.0.0.1"), t), Err(RateRefusal::Source));
        assert!(rl.check(ip("10.0.0.2"), t).is_ok());
        assert!(rl
            .check(ip("10.0.0.1"), t + Duration::from_millis(1100))
            .is_ok());
    }

    #[test]
    fn many_sources_together_hit_the_global_limit() {
        let rl = RateLimiter::new(Rates {
            per_source: 10.0,
            per_source_burst: 10.0,
            global: 1.0,
            global_burst: 5.0,
        });
        let t = Instant::now();
        let ok = (0..20)
            .filter(|i| rl.check(ip(&format!("10.0.1.{i}")), t).is_ok())
            .count();
        assert_eq!(ok, 5);
    }

    #[test]
    fn mints_are_limited_per_worker_and_per_binding() {
        let l = MintLimiter::new(MintLimits {
            per_worker: 3,
            per_binding: 5,
            per_tenant: 0,
        });
        let t = Instant::now();
        let m = |worker, binding| MintFor {
            worker,
            binding,
            tenant: "t1",
            provider: "github_app",
        };
        for _ in 0..3 {
            assert!(l.check(m("w1", "b1"), t).is_ok());
        }
        assert_eq!(l.check(m("w1", "b2"), t), Err("worker"));
        assert!(l.check(m("w2", "b1"), t).is_ok());
        assert!(l.check(m("w3", "b1"), t).is_ok());
        assert_eq!(l.check(m("w4", "b1"), t), Err("binding"));
        assert!(
            l.check(m("w1", "b2"), t + Duration::from_secs(21)).is_ok(),
            "refilled"
        );
    }

    #[test]
    fn a_tenant_gets_a_share_of_each_provider_however_many_bindings_it_has() {
        let l = MintLimiter::new(MintLimits {
            per_worker: 0,
            per_binding: 2,
            per_tenant: 4,
        });
        let t = Instant::now();
        let m = |binding, tenant, provider| MintFor {
            worker: "w",
            binding,
            tenant,
            provider,
        };
        for b in ["b1", "b2"] {
            for _ in 0..2 {
                assert!(l.check(m(b, "t1", "github_app"), t).is_ok());
            }
        }
        assert_eq!(l.check(m("b3", "t1", "github_app"), t), Err("tenant"));
        // The refusal spent nothing: b3's own bucket is still full.
        assert!(l.check(m("b3", "t2", "github_app"), t).is_ok());
        assert!(l.check(m("b3", "t2", "github_app"), t).is_ok());
        // Other tenants, and the same tenant's other providers, keep theirs.
        assert!(l.check(m("b4", "t2", "github_app"), t).is_ok());
        assert!(l.check(m("b5", "t1", "aws_assume_role"), t).is_ok());
        // A mint that never reached the upstream gives its tokens back.
        l.refund(m("b1", "t1", "github_app"));
        assert!(l.check(m("b1", "t1", "github_app"), t).is_ok());
        assert_eq!(l.check(m("b1", "t1", "github_app"), t), Err("binding"));
    }

    #[test]
    fn the_log_throttle_counts_what_it_drops() {
        let th = LogThrottle::new(2);
        assert_eq!(th.admit(), Some(0));
        assert_eq!(th.admit(), Some(0));
        assert_eq!(th.admit(), None);
        assert_eq!(th.admit(), None);
        assert_eq!(th.suppressed.load(Ordering::Relaxed), 2);
    }
}
