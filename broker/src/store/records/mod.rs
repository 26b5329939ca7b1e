//! Typed access to the store's records. Everything above this module speaks in model types;
//! everything below it in tables, keys and bytes.
//!
//! Writes are planned from reads: a record read for a change comes back as [`Stored`] (the
//! value and the exact bytes read), and the batch that changes or removes it carries those
//! bytes as its precondition. Adding or removing a child (an instance, binding or worker)
//! bumps its parents' `revision`, so a plan that looked for children ("a tenant can be removed
//! only with no instances, bindings or workers") fails if one appeared meanwhile.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

mod governance;
mod identifiers;
mod intake;
mod onboarding;
mod sealed;
mod writes;

pub use governance::{LastUseKind, SecretMeta, WebhookScheme, WebhookSecret, WebhookVersion};
pub use identifiers::{
    binding_parameter_claim, outlives_binding, AccountPin, Delivery, IdentifierOwner, Unclaimed,
    MAX_IGNORED_UNCLAIMED, MAX_UNCLAIMED, UNCLAIMED_TTL_S,
};
pub use intake::IntakeLink;
pub use onboarding::{outstanding_id, CallbackState, ExpectedSite, LinkPin, Outstanding};
pub use sealed::SealedTable;
pub use writes::Record;

use super::record_cache::RecordCache;
use super::{Batch, Op, Store, StoreError, Table};
use crate::ids::{BindingId, InstanceId, TenantId, WorkerId};
use crate::model::{Binding, Instance, SecretVersion, ServingWorker, Tenant, Worker};

/// A record as read, with the exact bytes it was read from: changing or removing it through
/// a [`Batch`] fails if anyone changed it since.
#[derive(Debug, Clone)]
pub struct Stored<T> {
    /// The decoded record.
    pub value: T,
    raw: Vec<u8>,
}

impl<T> std::ops::Deref for Stored<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// Typed reads and batch builders over a [`Store`].
#[derive(Clone)]
pub struct Records {
    store: Arc<dyn Store>,
    cache: Arc<RecordCache>,
    /// Batches this process committed (`credbroker_store_commits`).
    commits: Arc<std::sync::atomic::AtomicU64>,
}

/// A record type the admin API lists page by page, and the table it is kept in.
pub trait Listed: DeserializeOwned {
    /// Its table.
    const TABLE: Table;
}

impl Listed for Tenant {
    const TABLE: Table = Table::Tenants;
}
impl Listed for Worker {
    const TABLE: Table = Table::Workers;
}
impl Listed for Instance {
    const TABLE: Table = Table::Instances;
}
impl Listed for Binding {
    const TABLE: Table = Table::Bindings;
}
impl Listed for crate::model::Operator {
    const TABLE: Table = Table::Operators;
}

/// The stored bytes a page of a listing ends after (its last record may pass it).
pub const PAGE_BYTES: usize = 8 << 20;

/// Records cached per table by [`Records::new`].
pub const DEFAULT_RECORD_CACHE: usize = 10_000;

fn decode<T: DeserializeOwned>(table: Table, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt {
        table: table.name(),
        key: key.to_owned(),
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own model types cannot fail (no maps with non-string keys).
    serde_json::to_vec(value).unwrap_or_default()
}

impl Batch {
    /// Removes the re-seal mark, which must still be pending when the batch commits.
    pub fn finish_reseal(&mut self) -> &mut Self {
        self.push(super::Op::ExpectValue(
            Table::Meta,
            super::RESEAL_PLATFORM_KEYS_KEY.into(),
            super::RESEAL_PENDING.to_vec(),
        ))
        .push(super::Op::Delete(
            Table::Meta,
            super::RESEAL_PLATFORM_KEYS_KEY.into(),
        ))
    }
}

/// Refuses a secret version stored under another version's key, or another binding's: its
/// ciphertext opens under the binding and version it names (they are in its AAD), so a
/// whole record copied over another (a superseded version over the active one) would open.
fn is_at(
    v: &SecretVersion,
    binding: &BindingId,
    version: u32,
    key: &str,
) -> Result<(), StoreError> {
    if v.binding == *binding && v.version == version {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            table: Table::Secrets.name(),
            key: key.to_owned(),
        })
    }
}

/// The key of one secret version: versions sort numerically under their binding.
pub fn secret_key(binding: &BindingId, version: u32) -> String {
    format!("{binding}/{version:010}")
}

fn platform_key_key(kind: &str, version: u32) -> String {
    format!("{kind}/{version:010}")
}

impl Records {
    /// Typed access over `store`, with a decoded-record cache of the default size.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_cache(store, DEFAULT_RECORD_CACHE)
    }

    /// Typed access over `store`, caching up to `per_table` decoded records per table for the
    /// `shared_*` reads (0 disables the cache). The cache is emptied on every change the
    /// backend reports ([`Store::on_change`]).
    pub fn with_cache(store: Arc<dyn Store>, per_table: usize) -> Self {
        let cache = Arc::new(RecordCache::new(per_table));
        let hook_cache = Arc::clone(&cache);
        store.on_change(Arc::new(move |changed| hook_cache.invalidate(changed)));
        Records {
            store,
            cache,
            commits: Arc::default(),
        }
    }

    /// Registers `hook`, called after every change the store reports ([`Store::on_change`]).
    pub fn on_change(&self, hook: super::ChangeHook) {
        self.store.on_change(hook);
    }

    /// The store underneath.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// See [`Store::sync`].
    ///
    /// # Errors
    /// When the backend cannot be reached.
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.store.sync().await
    }

    /// Applies `batch` atomically and durably.
    ///
    /// # Errors
    /// See [`Store::commit`].
    pub async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.store.commit(batch).await
    }

    /// Whether every precondition of `batch` holds now, read from the store itself (not the
    /// record cache). A precondition on a key an earlier operation of the batch writes is
    /// judged by the commit alone. Run under the lock that orders the change with the
    /// others, it lets a change that lost a race be refused before its audit record is
    /// written; the commit checks them again.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn preconditions_hold(&self, batch: &Batch) -> Result<bool, StoreError> {
        let mut written: Vec<(Table, &str)> = Vec::new();
        for op in &batch.ops {
            let (table, key, expected) = match op {
                Op::Put(t, k, _) | Op::Delete(t, k) => {
                    written.push((*t, k.as_str()));
                    continue;
                }
                Op::ExpectAbsent(t, k) => (*t, k, Expected::Absent),
                Op::ExpectPresent(t, k) => (*t, k, Expected::Present),
                Op::ExpectValue(t, k, v) => (*t, k, Expected::Bytes(v)),
            };
            if written
                .iter()
                .any(|(t, k)| *t == table && *k == key.as_str())
            {
                continue;
            }
            let now = self.store.get(table, key).await?;
            let holds = match (expected, now) {
                (Expected::Absent, now) => now.is_none(),
                (Expected::Present, now) => now.is_some(),
                (Expected::Bytes(v), Some(now)) => now == *v,
                (Expected::Bytes(_), None) => false,
            };
            if !holds {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The mark a schema upgrade leaves for the platform keys' re-seal: `None` when absent,
    /// `Some(true)` when pending, `Some(false)` for a value this build does not write.
    ///
    /// # Errors
    /// On store failure.
    pub async fn reseal_mark(&self) -> Result<Option<bool>, StoreError> {
        Ok(self
            .store
            .get(Table::Meta, super::RESEAL_PLATFORM_KEYS_KEY)
            .await?
            .map(|v| v == super::RESEAL_PENDING))
    }

    /// Removes the re-seal mark when there is nothing to re-seal (schema bookkeeping, like
    /// the version itself); one already gone (another replica) is fine.
    ///
    /// # Errors
    /// On store failure.
    pub async fn clear_reseal_mark(&self) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        batch.finish_reseal();
        match self.commit(batch).await {
            Err(StoreError::Precondition { .. }) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Batches this process has committed (or tried to) since it started.
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    /// Records currently held by the decoded-record cache.
    pub fn cached_records(&self) -> usize {
        self.cache.len()
    }

    /// A record as of the last commit, from the cache or decoded from the store (and cached).
    async fn shared<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<Arc<T>>, StoreError> {
        if let Some(hit) = self.cache.get::<T>(table, key) {
            return Ok(Some(hit));
        }
        let generation = self.cache.generation();
        match self.store.get(table, key).await? {
            Some(bytes) => {
                let value = Arc::new(decode::<T>(table, key, &bytes)?);
                self.cache.insert(table, key, generation, value.clone());
                Ok(Some(value))
            }
            None => Ok(None),
        }
    }

    /// One worker, shared (see [`Records::with_cache`]).
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn shared_worker(
        &self,
        id: &WorkerId,
    ) -> Result<Option<Arc<ServingWorker>>, StoreError> {
        self.shared(Table::Workers, id.as_str()).await
    }

    /// One instance, shared.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn shared_instance(
        &self,
        id: &InstanceId,
    ) -> Result<Option<Arc<Instance>>, StoreError> {
        self.shared(Table::Instances, id.as_str()).await
    }

    /// Whether the instance record is held by the record cache.
    pub fn instance_is_cached(&self, id: &InstanceId) -> bool {
        self.cache
            .get::<Instance>(Table::Instances, id.as_str())
            .is_some()
    }

    /// Reads the instance record from the store, past the record cache, and drops it (what
    /// a lookup of an id the store does not hold costs).
    ///
    /// # Errors
    /// On store failure.
    pub async fn read_instance_past_cache(&self, id: &InstanceId) -> Result<(), StoreError> {
        self.store
            .get(Table::Instances, id.as_str())
            .await
            .map(drop)
    }

    /// One tenant, shared.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn shared_tenant(&self, id: &TenantId) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.shared(Table::Tenants, id.as_str()).await
    }

    /// One binding, shared.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn shared_binding(&self, id: &BindingId) -> Result<Option<Arc<Binding>>, StoreError> {
        self.shared(Table::Bindings, id.as_str()).await
    }

    /// One sealed secret version, shared (still encrypted).
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn shared_secret_version(
        &self,
        binding: &BindingId,
        version: u32,
    ) -> Result<Option<Arc<SecretVersion>>, StoreError> {
        let key = secret_key(binding, version);
        let found: Option<Arc<SecretVersion>> = self.shared(Table::Secrets, &key).await?;
        match found {
            Some(v) => is_at(&v, binding, version, &key).map(|()| Some(v)),
            None => Ok(None),
        }
    }

    async fn get_stored<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<Stored<T>>, StoreError> {
        match self.store.get(table, key).await? {
            Some(raw) => Ok(Some(Stored {
                value: decode(table, key, &raw)?,
                raw,
            })),
            None => Ok(None),
        }
    }

    async fn all_stored<T: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<Stored<T>>, StoreError> {
        self.all_stored_at(table, prefix, |_, _| true).await
    }

    /// [`Records::all_stored`], each record refused as corrupt unless `at_own_key` accepts
    /// it under the key it was found at (a record copied under another key by whoever can
    /// write the store).
    async fn all_stored_at<T: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &str,
        at_own_key: impl Fn(&str, &T) -> bool,
    ) -> Result<Vec<Stored<T>>, StoreError> {
        self.store
            .scan(table, prefix)
            .await?
            .into_iter()
            .map(|(k, raw)| {
                let value = decode(table, &k, &raw)?;
                if !at_own_key(&k, &value) {
                    return Err(StoreError::Corrupt {
                        table: table.name(),
                        key: k,
                    });
                }
                Ok(Stored { value, raw })
            })
            .collect()
    }

    /// The records of `table` under `prefix` that `keep` accepts, read one at a time: only
    /// the kept ones are ever held, so a periodic pass over a large table (the collector,
    /// self-rotation, the inventory) costs the memory of what it keeps, not of the table.
    pub(crate) async fn all_where<T, F>(
        &self,
        table: Table,
        prefix: &str,
        keep: F,
    ) -> Result<Vec<T>, StoreError>
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(&T) -> bool + Send + 'static,
    {
        self.kept(table, prefix, keep, |_, v| v).await
    }

    /// As [`Records::all_where`], each kept record with the key it was read at.
    pub(crate) async fn keyed_where<T, F>(
        &self,
        table: Table,
        prefix: &str,
        keep: F,
    ) -> Result<Vec<(String, T)>, StoreError>
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(&T) -> bool + Send + 'static,
    {
        self.kept(table, prefix, keep, |k, v| (k.to_owned(), v))
            .await
    }

    /// The pass behind [`Records::all_where`] and [`Records::keyed_where`]: `make` builds
    /// what is kept of a row `keep` accepts (a key is copied only when it is wanted).
    async fn kept<T, R, F>(
        &self,
        table: Table,
        prefix: &str,
        keep: F,
        make: fn(&str, T) -> R,
    ) -> Result<Vec<R>, StoreError>
    where
        T: DeserializeOwned + Send + 'static,
        R: Send + 'static,
        F: Fn(&T) -> bool + Send + 'static,
    {
        self.picked(table, prefix, usize::MAX, move |k, raw| {
            let value: T = decode(table, k, raw)?;
            Ok(keep(&value).then(|| make(k, value)))
        })
        .await
    }

    /// One pass over the rows under `prefix`, keeping what `pick` makes of a row (`None`: not
    /// kept), at most `limit` of them: the rows are never all held at once.
    async fn picked<R, P>(
        &self,
        table: Table,
        prefix: &str,
        limit: usize,
        pick: P,
    ) -> Result<Vec<R>, StoreError>
    where
        R: Send + 'static,
        P: Fn(&str, &[u8]) -> Result<Option<R>, StoreError> + Send + 'static,
    {
        let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&kept);
        self.store
            .scan_each(
                table,
                prefix,
                Box::new(move |k, raw| {
                    let mut out = sink
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if out.len() < limit {
                        if let Some(r) = pick(k, raw)? {
                            out.push(r);
                        }
                    }
                    Ok(())
                }),
            )
            .await?;
        let out = std::mem::take(
            &mut *kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        Ok(out)
    }

    /// Every record under `prefix`, decoded as it is read (the raw rows are never all held
    /// at once).
    async fn all<T: DeserializeOwned + Send + 'static>(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<T>, StoreError> {
        self.all_where(table, prefix, |_| true).await
    }

    /// One page of a table's records, in key order, all after the key `after` when given:
    /// at most `limit`, ending once [`PAGE_BYTES`] of stored records are read; and the key
    /// the next page starts after (`None`: none follows).
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn page<T: Listed>(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<T>, Option<String>), StoreError> {
        let table = T::TABLE;
        let rows = self
            .store
            .scan_page(table, "", after, (limit, PAGE_BYTES))
            .await?;
        let bytes: usize = rows.iter().map(|(_, v)| v.len()).sum();
        let next = match rows.last() {
            Some((k, _)) if rows.len() == limit || bytes >= PAGE_BYTES => Some(k.clone()),
            _ => None,
        };
        let items = rows
            .iter()
            .map(|(k, v)| decode(table, k, v))
            .collect::<Result<Vec<T>, _>>()?;
        Ok((items, next))
    }

    /// One tenant, as read for a change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn tenant(&self, id: &TenantId) -> Result<Option<Stored<Tenant>>, StoreError> {
        self.get_stored(Table::Tenants, id.as_str()).await
    }

    /// All tenants.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        self.all(Table::Tenants, "").await
    }

    /// One worker, as read for a change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn worker(&self, id: &WorkerId) -> Result<Option<Stored<Worker>>, StoreError> {
        self.get_stored(Table::Workers, id.as_str()).await
    }

    /// One operator, as read for a change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn operator(
        &self,
        id: &crate::ids::OperatorId,
    ) -> Result<Option<Stored<crate::model::Operator>>, StoreError> {
        self.get_stored(Table::Operators, id.as_str()).await
    }

    /// All operators.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn operators(&self) -> Result<Vec<crate::model::Operator>, StoreError> {
        self.all(Table::Operators, "").await
    }

    /// All operators as read, for a change that depends on them (see [`Stored`]).
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn operators_as_read(
        &self,
    ) -> Result<Vec<Stored<crate::model::Operator>>, StoreError> {
        self.all_stored(Table::Operators, "").await
    }

    /// All workers.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn workers(&self) -> Result<Vec<Worker>, StoreError> {
        self.all(Table::Workers, "").await
    }

    /// One instance, as read for a change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn instance(&self, id: &InstanceId) -> Result<Option<Stored<Instance>>, StoreError> {
        self.get_stored(Table::Instances, id.as_str()).await
    }

    /// All instances.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn instances(&self) -> Result<Vec<Instance>, StoreError> {
        self.all(Table::Instances, "").await
    }

    /// One binding, as read for a change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn binding(&self, id: &BindingId) -> Result<Option<Stored<Binding>>, StoreError> {
        self.get_stored(Table::Bindings, id.as_str()).await
    }

    /// All bindings.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn bindings(&self) -> Result<Vec<Binding>, StoreError> {
        self.all(Table::Bindings, "").await
    }

    /// The bindings `keep` accepts, read one at a time (only the kept ones are held).
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn bindings_where(
        &self,
        keep: impl Fn(&Binding) -> bool + Send + 'static,
    ) -> Result<Vec<Binding>, StoreError> {
        self.all_where(Table::Bindings, "", keep).await
    }

    /// Calls `each` with every binding, one at a time (a pass over a table too large to
    /// hold).
    ///
    /// # Errors
    /// On store failure or corruption, or the first error of `each`.
    pub async fn each_binding(
        &self,
        each: impl FnMut(Binding) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        self.each(Table::Bindings, each).await
    }

    /// Every record of `table`, decoded one at a time.
    async fn each<T: DeserializeOwned>(
        &self,
        table: Table,
        mut each: impl FnMut(T) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        self.store
            .scan_each(
                table,
                "",
                Box::new(move |k, raw| each(decode(table, k, raw)?)),
            )
            .await
    }
}

/// What a precondition of a batch expects of its key.
enum Expected<'a> {
    Absent,
    Present,
    Bytes(&'a Vec<u8>),
}

/// Whether `store` holds any operator or tenant: changes were made (each audited), as
/// opposed to a store just created.
///
/// # Errors
/// On store failure.
pub async fn holds_changes(store: &dyn Store) -> Result<bool, StoreError> {
    for table in [Table::Operators, Table::Tenants] {
        if !store
            .scan_page(table, "", None, (1, 1 << 20))
            .await?
            .is_empty()
        {
            return Ok(true);
        }
    }
    Ok(false)
}
