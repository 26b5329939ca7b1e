//! Decoded records of the resolve chain, kept in memory between commits.
//!
//! Every resolve checks worker, instance, tenant, binding and (for pasted secrets) the sealed
//! secret version. Reading and JSON-decoding them from sled on every call was a third of the
//! resolve path's CPU. This cache holds the decoded records and forgets those of every table a
//! change touched, as the backend reports it through [`super::Store::on_change`] — for sled,
//! every commit of this process (its only writer), before the commit returns — so a resolve
//! never sees a state older than the last acknowledged write: the same answer as reading the
//! store, without the decode. A commit that touched no table the cache holds (the periodic
//! last-use batch) leaves it warm. A backend shared by several brokers must report the
//! others' commits too (as touching every table).
//!
//! Race between a reader filling the cache and a writer: the reader notes the generation
//! before reading the store and inserts only if it is unchanged, checked under the table's
//! lock; the writer bumps the generation after its commit and then clears each table under
//! the same lock. Either the reader's insert is refused, or it lands before the clear and is
//! removed by it. Absent records are never cached.
//!
//! Only non-secret records and sealed (still encrypted) secret versions are held; plaintext is
//! never cached.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::{Changed, Table};

type Entry = Arc<dyn Any + Send + Sync>;

/// The decoded-record cache: one map per table, bounded per table, first in first out.
pub struct RecordCache {
    generation: AtomicU64,
    tables: Vec<RwLock<TableCache>>,
    capacity: usize,
}

#[derive(Default)]
struct TableCache {
    map: HashMap<Arc<str>, Entry>,
    /// Insertion order, for eviction in O(1) (the keys are shared with `map`: one allocation
    /// per cached record).
    order: VecDeque<Arc<str>>,
}

fn index(table: Table) -> usize {
    Table::ALL.iter().position(|t| *t == table).unwrap_or(0)
}

impl RecordCache {
    /// A cache holding at most `capacity` records per table (0 disables it).
    pub fn new(capacity: usize) -> Self {
        RecordCache {
            generation: AtomicU64::new(0),
            tables: Table::ALL
                .iter()
                .map(|_| RwLock::new(TableCache::default()))
                .collect(),
            capacity,
        }
    }

    /// The generation to pass to [`RecordCache::insert`] for a value read after this call.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The cached record at `key`, if any and of type `T`.
    pub fn get<T: Send + Sync + 'static>(&self, table: Table, key: &str) -> Option<Arc<T>> {
        if self.capacity == 0 {
            return None;
        }
        let map = self.tables.get(index(table))?.read().ok()?;
        let entry = map.map.get(key)?.clone();
        drop(map);
        entry.downcast::<T>().ok()
    }

    /// Caches `value`, read from the store after [`RecordCache::generation`] returned
    /// `generation`, unless a commit happened since.
    pub fn insert<T: Send + Sync + 'static>(
        &self,
        table: Table,
        key: &str,
        generation: u64,
        value: Arc<T>,
    ) {
        if self.capacity == 0 {
            return;
        }
        let Some(lock) = self.tables.get(index(table)) else {
            return;
        };
        let Ok(mut t) = lock.write() else {
            return;
        };
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if let Some(held) = t.map.get_mut(key) {
            *held = value;
        } else {
            let key: Arc<str> = Arc::from(key);
            t.map.insert(Arc::clone(&key), value);
            t.order.push_back(key);
        }
        // Bounded memory: drop the oldest entries (a later miss reads them again).
        while t.map.len() > self.capacity {
            match t.order.pop_front() {
                Some(victim) => {
                    t.map.remove(&victim);
                }
                None => break,
            }
        }
    }

    /// Forgets the records of the tables a change touched (after a commit). Records of
    /// other tables stay: the change did not alter them. In-flight reads of any table are
    /// refused (one generation for all), which costs at most a later miss.
    pub fn invalidate(&self, changed: Changed) {
        if changed.is_empty() {
            return;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        for (table, lock) in Table::ALL.iter().zip(&self.tables) {
            if !changed.touches(*table) {
                continue;
            }
            let mut t = match lock.write() {
                Ok(t) => t,
                Err(poisoned) => poisoned.into_inner(),
            };
            t.map.clear();
            t.order.clear();
        }
    }

    /// Records currently cached, all tables.
    pub fn len(&self) -> usize {
        self.tables
            .iter()
            .map(|l| l.read().map_or(0, |t| t.map.len()))
            .sum()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_insert_after_commit_is_refused() {
        let cache = RecordCache::new(10);
        let g = cache.generation();
        cache.invalidate(Changed::ALL);
        cache.insert(Table::Workers, "w1", g, Arc::new(1u32));
        assert!(cache.get::<u32>(Table::Workers, "w1").is_none());
        let g = cache.generation();
        cache.insert(Table::Workers, "w1", g, Arc::new(2u32));
        assert_eq!(cache.get::<u32>(Table::Workers, "w1").as_deref(), Some(&2));
        assert!(
            cache.get::<u64>(Table::Workers, "w1").is_none(),
            "wrong type is a miss"
        );
        cache.invalidate(Changed::ALL);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_change_forgets_only_the_tables_it_touched() {
        let cache = RecordCache::new(10);
        let g = cache.generation();
        cache.insert(Table::Workers, "w1", g, Arc::new(1u32));
        cache.insert(Table::Bindings, "b1", g, Arc::new(2u32));
        let mut last_use = crate::store::Batch::new();
        last_use.push(crate::store::Op::Put(
            Table::LastUse,
            "0/b/b1".into(),
            vec![],
        ));
        cache.invalidate(Changed::of(&last_use));
        assert_eq!(
            cache.len(),
            2,
            "a last-use batch leaves the chain's records"
        );
        cache.invalidate(Changed::of(&crate::store::Batch::new()));
        assert_eq!(cache.generation(), g + 1, "an empty change is no change");
        let mut binding = crate::store::Batch::new();
        binding.push(crate::store::Op::Put(Table::Bindings, "b1".into(), vec![]));
        cache.invalidate(Changed::of(&binding));
        assert!(cache.get::<u32>(Table::Bindings, "b1").is_none());
        assert_eq!(cache.get::<u32>(Table::Workers, "w1").as_deref(), Some(&1));
    }

    #[test]
    fn bounded_per_table() {
        let cache = RecordCache::new(3);
        let g = cache.generation();
        for i in 0..10u32 {
            cache.insert(Table::Bindings, &format!("b{i}"), g, Arc::new(i));
        }
        assert_eq!(cache.len(), 3);
        for i in 7..10u32 {
            let key = format!("b{i}");
            assert_eq!(
                cache.get::<u32>(Table::Bindings, &key).as_deref(),
                Some(&i),
                "newest kept"
            );
        }
        let off = RecordCache::new(0);
        off.insert(Table::Bindings, "b", off.generation(), Arc::new(1u32));
        assert!(off.get::<u32>(Table::Bindings, "b").is_none());
    }
}
