//! Slot gates of a listener (handshakes in progress, or open connections), shared between
//! sources; a handshake gate gives a newcomer the oldest slot of the source holding most.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::source_of;

/// Slots (handshakes in progress, or open connections): at most `global` at once. While more
/// than half of them are free a source may take any; past that, only a source with fewer than
/// `per_source` gets one. So one source (a flood, or a fleet of workers behind one NAT
/// starting together) can hold at most half the budget (or `per_source`, if larger).
/// [`HandshakeGate::strict`] enforces `per_source` always. A connection waits for no slot:
/// without one it is closed.
///
/// A handshake gate ([`HandshakeGate::handshakes`]) does not refuse a newcomer while some
/// source holds at least two slots more than the newcomer's and has held slots without a
/// break for longer than a handshake takes: it takes that source's oldest handshake from it
/// (which is then dropped, see [`HandshakePermit::evicted`]). A few sources holding every
/// slot with connections that never finish a handshake so no longer shut the others out: to
/// hold them all, a flood needs one source per slot. The time counted is the source's, not
/// the slot's, and a break shorter than the floor does not end it: a source renewing its
/// connections, one at a time or all at once, is taken from all the same. An honest client's
/// short burst is over before the floor; a source busy for longer (a NAT'd fleet) may lose
/// its oldest handshake in progress to a newcomer while the budget is full, as fairness
/// between sources asks.
pub struct HandshakeGate {
    global: Arc<Semaphore>,
    /// How many slots there are in all.
    slots_total: usize,
    /// The size of the sources' map past which the next pass forgets idle ones (see
    /// [`HandshakeGate::forget_idle`]); read and written under the map's lock.
    prune_at: AtomicUsize,
    reserve: usize,
    /// Slots held, per source.
    held: Mutex<HashMap<IpAddr, Source>>,
    per_source_max: usize,
    /// How long a source holds slots without a break before a newcomer may take its oldest
    /// (`None`: never).
    evictable_after: Option<Duration>,
}

/// What one source holds: its slots, oldest first; since when it has held any without a
/// break; and, once it holds none, since when (remembered for the floor on an evicting gate,
/// so a break shorter than the floor does not restart its time).
struct Source {
    slots: VecDeque<Arc<Held>>,
    busy_since: Instant,
    idle_since: Option<Instant>,
}

impl Source {
    fn new() -> Source {
        Source {
            slots: VecDeque::new(),
            busy_since: Instant::now(),
            idle_since: None,
        }
    }
}

/// One slot held: its global permit (taken away when the slot is given to a newcomer), and
/// how its holder hears of that.
struct Held {
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    evicted: Notify,
}

/// A slot; released when dropped.
pub struct HandshakePermit {
    gate: Arc<HandshakeGate>,
    source: IpAddr,
    held: Arc<Held>,
}

/// Why a handshake was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeRefusal {
    /// This source already has its share of handshakes in progress.
    Source,
    /// The listener's handshake budget is used up.
    Global,
}

impl HandshakeRefusal {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeRefusal::Source => "source",
            HandshakeRefusal::Global => "global",
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HandshakeGate {
    fn build(
        global: usize,
        per_source: usize,
        strict: bool,
        evictable_after: Option<Duration>,
    ) -> Arc<HandshakeGate> {
        Arc::new(HandshakeGate {
            global: Arc::new(Semaphore::new(global.max(1))),
            slots_total: global.max(1),
            prune_at: AtomicUsize::new(0),
            reserve: if strict {
                usize::MAX
            } else {
                global.max(1) / 2
            },
            held: Mutex::new(HashMap::new()),
            per_source_max: per_source.max(1),
            evictable_after,
        })
    }

    /// A gate of `global` slots, `per_source` of them for any one source once half are in
    /// use.
    pub fn new(global: usize, per_source: usize) -> Arc<HandshakeGate> {
        Self::build(global, per_source, false, None)
    }

    /// A gate of `global` slots where no source ever holds more than `per_source` (for
    /// anonymous listeners: nothing unauthenticated takes more than a small share).
    pub fn strict(global: usize, per_source: usize) -> Arc<HandshakeGate> {
        Self::build(global, per_source, true, None)
    }

    /// A gate of handshakes in progress (as [`HandshakeGate::new`], or
    /// [`HandshakeGate::strict`] when `strict`), where a full budget gives a newcomer the
    /// oldest slot of the source holding most, when that source holds at least two more than
    /// the newcomer and has held slots without a break for `evictable_after` or longer.
    /// Holders must watch
    /// [`HandshakePermit::evicted`].
    pub fn handshakes(
        global: usize,
        per_source: usize,
        strict: bool,
        evictable_after: Duration,
    ) -> Arc<HandshakeGate> {
        Self::build(global, per_source, strict, Some(evictable_after))
    }

    /// The semaphore of the global budget (to wait for every slot to come back).
    pub fn slots(&self) -> Arc<Semaphore> {
        self.global.clone()
    }

    /// A slot for a handshake from `peer`, or why there is none.
    ///
    /// # Errors
    /// [`HandshakeRefusal`] when the source's share or the listener's budget is used up.
    pub fn try_enter(self: &Arc<Self>, peer: IpAddr) -> Result<HandshakePermit, HandshakeRefusal> {
        let source = source_of(peer);
        let mut held = lock(&self.held);
        self.forget_idle(&mut held);
        let holds = held.get(&source).map_or(0, |s| s.slots.len());
        if holds >= self.per_source_max && self.global.available_permits() <= self.reserve {
            return Err(HandshakeRefusal::Source);
        }
        let permit = match self.global.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => self
                .take_from_largest(&mut held, source, holds)
                .ok_or(HandshakeRefusal::Global)?,
        };
        let slot = Arc::new(Held {
            permit: Mutex::new(Some(permit)),
            evicted: Notify::new(),
        });
        let entry = held.entry(source).or_insert_with(Source::new);
        // Back after a break as long as the floor: its time starts again.
        if let Some(idle) = entry.idle_since.take() {
            if self
                .evictable_after
                .is_none_or(|after| idle.elapsed() >= after)
            {
                entry.busy_since = Instant::now();
            }
        }
        entry.slots.push_back(slot.clone());
        Ok(HandshakePermit {
            gate: self.clone(),
            source,
            held: slot,
        })
    }

    /// Forgets the sources that hold nothing and have not for the floor's length, once the
    /// map has grown to twice its size at the last pass (at least twice the slots: each
    /// accept's share of the work stays constant); past four times the slots, the ones idle
    /// longest too, down to twice the slots (a flood of addresses: memory stays bounded, and
    /// the sources idle most recently, those the floor is about, are kept).
    fn forget_idle(&self, held: &mut HashMap<IpAddr, Source>) {
        let slots = self.slots_total;
        if held.len() <= self.prune_at.load(Ordering::Relaxed).max(2 * slots) {
            return;
        }
        let after = self.evictable_after.unwrap_or_default();
        held.retain(|_, s| {
            !s.slots.is_empty() || s.idle_since.is_some_and(|t| t.elapsed() < after)
        });
        if held.len() > 4 * slots {
            let mut idle: Vec<(Instant, IpAddr)> = held
                .iter()
                .filter_map(|(ip, s)| s.idle_since.map(|t| (t, *ip)))
                .collect();
            let excess = held.len().saturating_sub(2 * slots).min(idle.len());
            if excess > 0 {
                idle.select_nth_unstable_by_key(excess - 1, |(t, _)| *t);
                for (_, ip) in &idle[..excess] {
                    held.remove(ip);
                }
            }
        }
        self.prune_at.store(2 * held.len(), Ordering::Relaxed);
    }

    /// The global permit of the oldest slot of the source holding most, when this gate
    /// evicts, that source holds at least two more than `newcomer` (`holds`: after it, it
    /// still holds at least as many as the newcomer) and has held slots long enough.
    fn take_from_largest(
        &self,
        held: &mut HashMap<IpAddr, Source>,
        newcomer: IpAddr,
        holds: usize,
    ) -> Option<OwnedSemaphorePermit> {
        let after = self.evictable_after?;
        let largest = held
            .iter()
            .filter(|(source, held)| {
                **source != newcomer
                    && held.slots.len() > holds + 1
                    && held.busy_since.elapsed() >= after
            })
            .max_by_key(|(_, held)| held.slots.len())
            .map(|(source, _)| *source)?;
        let slots = &mut held.get_mut(&largest)?.slots;
        let victim = slots.pop_front()?;
        if slots.is_empty() {
            held.remove(&largest);
        }
        let permit = lock(&victim.permit).take()?;
        victim.evicted.notify_one();
        Some(permit)
    }
}

impl HandshakePermit {
    /// Completes when this slot was given to a newcomer (a handshake gate with a full
    /// budget): the handshake it was taken for is to be dropped.
    pub async fn evicted(&self) {
        self.held.evicted.notified().await;
    }
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        let mut held = lock(&self.gate.held);
        let remember = self.gate.evictable_after.is_some();
        if let Some(source) = held.get_mut(&self.source) {
            let before = source.slots.len();
            source.slots.retain(|s| !Arc::ptr_eq(s, &self.held));
            // An evicted slot was taken out already: its drop changes nothing.
            if source.slots.is_empty() && source.slots.len() < before {
                if remember {
                    source.idle_since = Some(Instant::now());
                } else {
                    held.remove(&self.source);
                }
            }
        }
        drop(held);
        drop(lock(&self.held.permit).take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn handshake_slots_are_shared_fairly_and_returned() {
        let gate = HandshakeGate::new(8, 2);
        // One source takes half the budget, then is refused.
        let a: Vec<_> = (0..4)
            .map(|_| gate.try_enter(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(
            gate.try_enter(ip("10.0.0.1")).err(),
            Some(HandshakeRefusal::Source)
        );
        // Others still get their share of what is left, no more.
        let _b: Vec<_> = (0..2)
            .map(|_| gate.try_enter(ip("10.0.0.2")).unwrap())
            .collect();
        assert_eq!(
            gate.try_enter(ip("10.0.0.2")).err(),
            Some(HandshakeRefusal::Source)
        );
        let _c: Vec<_> = (0..2)
            .map(|_| gate.try_enter(ip("10.0.0.3")).unwrap())
            .collect();
        assert_eq!(
            gate.try_enter(ip("10.0.0.4")).err(),
            Some(HandshakeRefusal::Global)
        );
        drop(a);
        assert!(gate.try_enter(ip("10.0.0.4")).is_ok());
        assert!(gate.held.lock().unwrap().len() <= 3);
    }

    #[tokio::test]
    async fn a_full_handshake_budget_gives_a_newcomer_the_oldest_slot_of_the_largest_holder() {
        let gate = HandshakeGate::handshakes(8, 2, false, Duration::ZERO);
        let a: Vec<_> = (0..4)
            .map(|_| gate.try_enter(ip("10.0.0.1")).unwrap())
            .collect();
        let b: Vec<_> = (0..2)
            .map(|_| gate.try_enter(ip("10.0.0.2")).unwrap())
            .collect();
        let c: Vec<_> = (0..2)
            .map(|_| gate.try_enter(ip("10.0.0.3")).unwrap())
            .collect();
        // Full: a newcomer takes the oldest of 10.0.0.1's four.
        let d1 = gate.try_enter(ip("10.0.0.4")).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), a[0].evicted())
            .await
            .expect("the oldest slot of the largest holder is evicted");
        assert_eq!(gate.held.lock().unwrap()[&ip("10.0.0.1")].slots.len(), 3);
        // Again: 10.0.0.1 holds three, two more than the newcomer's one.
        let d2 = gate.try_enter(ip("10.0.0.4")).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), a[1].evicted())
            .await
            .expect("the next oldest");
        // Now every source holds two: 10.0.0.4 is at its share, and each newcomer takes a
        // slot from a source holding two until every source holds one.
        assert_eq!(
            gate.try_enter(ip("10.0.0.4")).err(),
            Some(HandshakeRefusal::Source)
        );
        let late: Vec<_> = (5..9)
            .map(|n| gate.try_enter(ip(&format!("10.0.0.{n}"))).unwrap())
            .collect();
        assert!(gate
            .held
            .lock()
            .unwrap()
            .values()
            .all(|s| s.slots.len() == 1));
        assert_eq!(
            gate.try_enter(ip("10.0.0.9")).err(),
            Some(HandshakeRefusal::Global)
        );
        assert_eq!(gate.global.available_permits(), 0);
        // Every permit comes back once, evicted or not.
        drop((a, b, c, d1, d2, late));
        assert_eq!(gate.global.available_permits(), 8);
        assert!(gate
            .held
            .lock()
            .unwrap()
            .values()
            .all(|s| s.slots.is_empty()));
    }

    #[test]
    fn a_handshake_younger_than_the_floor_is_never_taken() {
        let gate = HandshakeGate::handshakes(2, 2, false, Duration::from_secs(3600));
        let _a: Vec<_> = (0..2)
            .map(|_| gate.try_enter(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(
            gate.try_enter(ip("10.0.0.2")).err(),
            Some(HandshakeRefusal::Global)
        );
    }

    /// A source renewing its connections so that none is older than the floor, one at a time
    /// or all at once, is still taken from: the time counted is how long it has held slots
    /// without a break as long as the floor.
    #[test]
    fn a_source_renewing_its_slots_is_taken_from_all_the_same() {
        let floor = Duration::from_millis(50);
        let gate = HandshakeGate::handshakes(4, 4, false, floor);
        let mut a: VecDeque<_> = (0..4)
            .map(|_| gate.try_enter(ip("10.0.0.1")).unwrap())
            .collect();
        std::thread::sleep(floor + Duration::from_millis(20));
        for _ in 0..4 {
            drop(a.pop_front());
            a.push_back(gate.try_enter(ip("10.0.0.1")).unwrap());
        }
        let b = gate.try_enter(ip("10.0.0.2")).unwrap();
        // All at once: every slot given back, the source back within the floor.
        drop((a, b));
        let _a: Vec<_> = (0..4)
            .map(|_| gate.try_enter(ip("10.0.0.1")).unwrap())
            .collect();
        assert!(gate.try_enter(ip("10.0.0.2")).is_ok());
        // Back after a break as long as the floor, its time starts again.
        drop(_a);
        std::thread::sleep(floor + Duration::from_millis(20));
        let _a: Vec<_> = (0..4)
            .map(|_| gate.try_enter(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(
            gate.try_enter(ip("10.0.0.2")).err(),
            Some(HandshakeRefusal::Global)
        );
    }

    /// The sources remembered while they hold nothing stay bounded, however many addresses
    /// come and go.
    #[test]
    fn sources_holding_nothing_are_forgotten() {
        let gate = HandshakeGate::handshakes(4, 4, false, Duration::from_secs(3600));
        for n in 0..1000u32 {
            let addr = std::net::Ipv4Addr::from(0x0a00_0000 + n);
            drop(gate.try_enter(IpAddr::V4(addr)).unwrap());
        }
        assert!(gate.held.lock().unwrap().len() <= 4 * 4 + 1);
        // Past four times the slots, the ones idle longest go, down to twice the slots: the
        // most recently idle (those the floor is about) are kept. Twenty addresses: the
        // twentieth's entry finds nineteen, forgets the eleven idle longest.
        let gate = HandshakeGate::handshakes(4, 4, false, Duration::from_secs(3600));
        let addr = |n: u32| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        for n in 0..20u32 {
            drop(gate.try_enter(addr(n)).unwrap());
        }
        let held = gate.held.lock().unwrap();
        let kept: Vec<u32> = (0..20).filter(|n| held.contains_key(&addr(*n))).collect();
        assert_eq!(kept, (11..20).collect::<Vec<_>>());
    }

    #[test]
    fn a_connection_gate_never_takes_a_slot_away() {
        let gate = HandshakeGate::new(4, 1);
        let _a: Vec<_> = (0..2)
            .map(|_| gate.try_enter(ip("10.0.0.1")).unwrap())
            .collect();
        let _b = gate.try_enter(ip("10.0.0.2")).unwrap();
        let _c = gate.try_enter(ip("10.0.0.3")).unwrap();
        assert_eq!(
            gate.try_enter(ip("10.0.0.4")).err(),
            Some(HandshakeRefusal::Global)
        );
    }
}
