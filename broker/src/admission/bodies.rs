//! Memory for request bodies in flight, shared fairly between their holders.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Memory for request bodies in flight (KiB): a global budget, of which no one holder (a
/// source address on the public listener, a client identity on the mTLS listener) holds more
/// than its share. A listener reserves a body's size here as its bytes arrive, so senders of
/// large (or never finished) bodies are bounded together and no single one can take the
/// budget from everyone else.
pub struct BodyBudget<K = IpAddr> {
    global: Arc<Semaphore>,
    held: Mutex<HashMap<K, u32>>,
    per_source: u32,
    /// Left free for bodies' first reservations: a body grows past its first one only
    /// while this much of the budget stays free.
    kept_for_first: u32,
}

/// A reservation in a [`BodyBudget`], returned when dropped.
pub struct BodyPermit<K: Eq + std::hash::Hash + Clone = IpAddr> {
    global: OwnedSemaphorePermit,
    budget: Arc<BodyBudget<K>>,
    source: K,
    kib: u32,
}

/// Why a body could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRefusal {
    /// This holder already holds its share.
    Source,
    /// All holders together hold the whole budget.
    Global,
}

impl<K: Eq + std::hash::Hash + Clone> BodyBudget<K> {
    /// A budget of `global_kib`, at most `per_source_kib` of it held by one holder.
    pub fn new(global_kib: u32, per_source_kib: u32) -> Arc<BodyBudget<K>> {
        Self::keeping(global_kib, per_source_kib, 0)
    }

    /// As [`BodyBudget::new`], with `kept_kib` of it left to bodies' first reservations: a
    /// body grows past its first reservation only while that much stays free. On the public
    /// listener only a body claiming a webhook signature grows (its first step is at most
    /// 64 KiB), and the claim is checked only once the body is in: a few sources making
    /// that claim cannot take the memory every other request starts in.
    pub fn keeping(global_kib: u32, per_source_kib: u32, kept_kib: u32) -> Arc<BodyBudget<K>> {
        Arc::new(BodyBudget {
            global: Arc::new(Semaphore::new(global_kib as usize)),
            held: Mutex::new(HashMap::new()),
            per_source: per_source_kib.max(1),
            kept_for_first: kept_kib.min(global_kib),
        })
    }

    /// Reserves `kib` for a body of `holder` (on the public listener, [`source_of`] the
    /// peer's address).
    ///
    /// # Errors
    /// [`BodyRefusal`] when the holder's share or the whole budget is held.
    pub fn try_reserve(
        self: &Arc<Self>,
        holder: K,
        kib: u32,
    ) -> Result<BodyPermit<K>, BodyRefusal> {
        // Nothing to hold (the mTLS listener starts every body so): no share to check, no
        // entry to write, nothing to give back (a later `grow` writes the entry).
        if kib == 0 {
            return Ok(BodyPermit {
                global: Arc::clone(&self.global)
                    .try_acquire_many_owned(0)
                    .map_err(|_| BodyRefusal::Global)?,
                budget: Arc::clone(self),
                source: holder,
                kib,
            });
        }
        let mut held = self.held.lock().map_err(|_| BodyRefusal::Global)?;
        let now = held.get(&holder).copied().unwrap_or(0);
        if now.saturating_add(kib) > self.per_source {
            return Err(BodyRefusal::Source);
        }
        let permit = Arc::clone(&self.global)
            .try_acquire_many_owned(kib)
            .map_err(|_| BodyRefusal::Global)?;
        held.insert(holder.clone(), now.saturating_add(kib));
        Ok(BodyPermit {
            global: permit,
            budget: Arc::clone(self),
            source: holder,
            kib,
        })
    }
}

impl<K: Eq + std::hash::Hash + Clone> BodyPermit<K> {
    /// KiB reserved.
    pub fn kib(&self) -> u32 {
        self.kib
    }

    /// Grows this reservation by `kib` (more of the body arrived than was reserved).
    ///
    /// # Errors
    /// [`BodyRefusal`] when the holder's share or the whole budget is held, or when growing
    /// would leave less free than the budget keeps for first reservations; the reservation
    /// is then unchanged.
    pub fn grow(&mut self, kib: u32) -> Result<(), BodyRefusal> {
        let mut held = self.budget.held.lock().map_err(|_| BodyRefusal::Global)?;
        let now = held.get(&self.source).copied().unwrap_or(0);
        if now.saturating_add(kib) > self.budget.per_source {
            return Err(BodyRefusal::Source);
        }
        // Exact: every reservation and growth is made under `held` (drops only free more).
        if self.budget.global.available_permits()
            < (kib as usize).saturating_add(self.budget.kept_for_first as usize)
        {
            return Err(BodyRefusal::Global);
        }
        let more = Arc::clone(&self.budget.global)
            .try_acquire_many_owned(kib)
            .map_err(|_| BodyRefusal::Global)?;
        self.global.merge(more);
        held.insert(self.source.clone(), now.saturating_add(kib));
        self.kib = self.kib.saturating_add(kib);
        Ok(())
    }
}

impl<K: Eq + std::hash::Hash + Clone> Drop for BodyPermit<K> {
    fn drop(&mut self) {
        if self.kib == 0 {
            return;
        }
        if let Ok(mut held) = self.budget.held.lock() {
            let left = held
                .get(&self.source)
                .copied()
                .unwrap_or(0)
                .saturating_sub(self.kib);
            if left == 0 {
                held.remove(&self.source);
            } else {
                held.insert(self.source.clone(), left);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reservation may start at nothing (the mTLS listener reserves a body's bytes only as
    /// they arrive) and grow a byte at a time up to the holder's share; whatever it held is
    /// given back when it is dropped, and an empty holder leaves no entry behind.
    #[test]
    fn a_reservation_starts_at_nothing_and_grows_by_the_byte() {
        let budget: Arc<BodyBudget<Arc<str>>> = BodyBudget::new(10, 5);
        let w1: Arc<str> = Arc::from("worker:w1");
        let mut idle: Vec<_> = (0..1000)
            .map(|_| budget.try_reserve(w1.clone(), 0).unwrap())
            .collect();
        let mut growing = budget.try_reserve(w1.clone(), 0).unwrap();
        for _ in 0..5 {
            growing.grow(1).unwrap();
        }
        assert_eq!(growing.grow(1), Err(BodyRefusal::Source));
        let w2: Arc<str> = Arc::from("worker:w2");
        let other = budget.try_reserve(w2.clone(), 5).unwrap();
        assert_eq!(
            budget.try_reserve(w2.clone(), 1).err(),
            Some(BodyRefusal::Source)
        );
        drop(growing);
        idle.clear();
        drop(other);
        assert!(budget.held.lock().unwrap().is_empty());
        assert_eq!(budget.global.available_permits(), 10);
    }

    #[test]
    fn one_source_holds_at_most_its_share_of_body_memory() {
        let budget = BodyBudget::new(32, 8);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = budget.try_reserve(a, 4).unwrap();
        let second = budget.try_reserve(a, 4).unwrap();
        assert_eq!(budget.try_reserve(a, 1).err(), Some(BodyRefusal::Source));
        // Others still get theirs, until the whole budget is held.
        let held: Vec<_> = (0..3).map(|_| budget.try_reserve(b, 8)).collect();
        assert!(held[0].is_ok());
        assert_eq!(held[1].as_ref().err(), Some(&BodyRefusal::Source));
        drop(held);
        let c: Vec<_> = (3..6u8)
            .map(|i| budget.try_reserve(IpAddr::from([192, 0, 2, i]), 8).unwrap())
            .collect();
        assert_eq!(
            budget.try_reserve("192.0.2.9".parse().unwrap(), 1).err(),
            Some(BodyRefusal::Global)
        );
        // Returned on drop, and a source holding nothing is forgotten.
        drop((first, second, c));
        assert!(budget.held.lock().unwrap().is_empty());
        // A reservation grows as a body arrives, within the same limits, and returns all of
        // it when dropped.
        let mut growing = budget.try_reserve(a, 2).unwrap();
        growing.grow(6).unwrap();
        assert_eq!(growing.grow(1).err(), Some(BodyRefusal::Source));
        assert_eq!(budget.held.lock().unwrap()[&a], 8);
        drop(growing);
        assert!(budget.held.lock().unwrap().is_empty());
        assert!(budget.try_reserve(a, 8).is_ok());
    }

    /// What a budget keeps for first reservations is not grown into: sources growing their
    /// bodies stop short of it, whatever their shares allow, while first reservations still
    /// take it (and the whole budget); a growth refused so leaves the reservation as it was.
    #[test]
    fn growing_bodies_leave_what_is_kept_for_first_reservations() {
        let budget = BodyBudget::keeping(32, 8, 8);
        let growing: Vec<_> = (1..=4u8)
            .map(|i| {
                let mut p = budget.try_reserve(IpAddr::from([192, 0, 2, i]), 1).unwrap();
                let grown = p.grow(7);
                (p, grown)
            })
            .collect();
        let refused: Vec<_> = growing.iter().map(|(_, g)| g.err()).collect();
        assert_eq!(refused, [None, None, None, Some(BodyRefusal::Global)]);
        assert_eq!(growing[3].0.kib(), 1);
        // 24 + 1 held: seven first reservations fit (the last one past what is kept).
        let firsts: Vec<_> = (10..17u8)
            .map(|i| budget.try_reserve(IpAddr::from([192, 0, 2, i]), 1).unwrap())
            .collect();
        assert_eq!(
            budget.try_reserve("192.0.2.99".parse().unwrap(), 1).err(),
            Some(BodyRefusal::Global)
        );
        drop((growing, firsts));
        assert!(budget.held.lock().unwrap().is_empty());
        assert_eq!(budget.global.available_permits(), 32);
    }
}
