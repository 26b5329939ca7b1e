//! Typed access to the store's records. Everything above this module speaks in model types;
//! everything below it in tables, keys and bytes.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::record_cache::{Invalidating, RecordCache};
use super::{Batch, Op, Store, StoreError, Table};
use crate::ids::{BindingId, InstanceId, TenantId, WorkerId};
use crate::model::{Binding, Instance, SecretVersion, Tenant, Worker};

/// Typed reads and batch builders over a [`Store`].
#[derive(Clone)]
pub struct Records {
    store: Arc<dyn Store>,
    cache: Arc<RecordCache>,
}

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

/// The key of one secret version: versions sort numerically under their binding.
pub fn secret_key(binding: &BindingId, version: u32) -> String {
    format!("{binding}/{version:010}")
}

impl Records {
    /// Typed access over `store`, with a decoded-record cache of the default size.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_cache(store, DEFAULT_RECORD_CACHE)
    }

    /// Typed access over `store`, caching up to `per_table` decoded records per table for the
    /// `shared_*` reads (0 disables the cache). See [`super::cache`].
    pub fn with_cache(store: Arc<dyn Store>, per_table: usize) -> Self {
        let cache = Arc::new(RecordCache::new(per_table));
        Records {
            store: Arc::new(Invalidating::new(store, cache.clone())),
            cache,
        }
    }

    /// The underlying store. Its commits empty the record cache.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Records currently held by the decoded-record cache.
    pub fn cached_records(&self) -> usize {
        self.cache.len()
    }

    /// A record as of the last commit, from the cache or decoded from the store (and cached).
    fn shared<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<Arc<T>>, StoreError> {
        if let Some(hit) = self.cache.get::<T>(table, key) {
            return Ok(Some(hit));
        }
        let generation = self.cache.generation();
        match self.store.get(table, key)? {
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
    pub fn shared_worker(&self, id: &WorkerId) -> Result<Option<Arc<Worker>>, StoreError> {
        self.shared(Table::Workers, id.as_str())
    }

    /// One instance, shared.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub fn shared_instance(&self, id: &InstanceId) -> Result<Option<Arc<Instance>>, StoreError> {
        self.shared(Table::Instances, id.as_str())
    }

    /// One tenant, shared.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub fn shared_tenant(&self, id: &TenantId) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.shared(Table::Tenants, id.as_str())
    }

    /// One binding, shared.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub fn shared_binding(&self, id: &BindingId) -> Result<Option<Arc<Binding>>, StoreError> {
        self.shared(Table::Bindings, id.as_str())
    }

    /// One sealed secret version, shared (still encrypted).
    ///
    /// # Errors
    /// On store failure or corruption.
    pub fn shared_secret_version(
        &self,
        binding: &BindingId,
        version: u32,
    ) -> Result<Option<Arc<SecretVersion>>, StoreError> {
        self.shared(Table::Secrets, &secret_key(binding, version))
    }

    fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>, StoreError> {
        match self.store.get(table, key)? {
            Some(bytes) => Ok(Some(decode(table, key, &bytes)?)),
            None => Ok(None),
        }
    }

    fn all<T: DeserializeOwned>(&self, table: Table, prefix: &str) -> Result<Vec<T>, StoreError> {
        self.store
            .scan(table, prefix)?
            .iter()
            .map(|(k, v)| decode(table, k, v))
            .collect()
    }

    /// One tenant.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        self.get(Table::Tenants, id.as_str())
    }

    /// All tenants.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        self.all(Table::Tenants, "")
    }

    /// One worker.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub fn worker(&self, id: &WorkerId) -> Result<Option<Worker>, StoreError> {
        self.get(Table::Workers, id.as_str())
    }

    /// All workers.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub fn workers(&self) -> Result<Vec<Worker>, StoreError> {
        self.all(Table::Workers, "")
    }

    /// One instance.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub fn instance(&self, id: &InstanceId) -> Result<Option<Instance>, StoreError> {
        self.get(Table::Instances, id.as_str())
    }

    /// All instances.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub fn instances(&self) -> Result<Vec<Instance>, StoreError> {
        self.all(Table::Instances, "")
    }

    /// One binding.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub fn binding(&self, id: &BindingId) -> Result<Option<Binding>, StoreError> {
        self.get(Table::Bindings, id.as_str())
    }

    /// All bindings.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub fn bindings(&self) -> Result<Vec<Binding>, StoreError> {
        self.all(Table::Bindings, "")
    }

    /// One secret version.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub fn secret_version(
        &self,
        binding: &BindingId,
        version: u32,
    ) -> Result<Option<SecretVersion>, StoreError> {
        self.get(Table::Secrets, &secret_key(binding, version))
    }

    /// Every stored secret version of a binding, oldest first.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub fn secret_versions(&self, binding: &BindingId) -> Result<Vec<SecretVersion>, StoreError> {
        self.all(Table::Secrets, &format!("{binding}/"))
    }

    /// Every stored secret version.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub fn all_secret_versions(&self) -> Result<Vec<SecretVersion>, StoreError> {
        self.all(Table::Secrets, "")
    }
}

/// Builders for the write side: each adds the preconditions that keep the change honest.
pub trait BatchExt {
    /// Creates a record that must not exist yet.
    fn create<T: Serialize>(&mut self, table: Table, key: &str, value: &T) -> &mut Self;
    /// Replaces a record that must exist.
    fn replace<T: Serialize>(&mut self, table: Table, key: &str, value: &T) -> &mut Self;
    /// Removes a record that must exist.
    fn remove(&mut self, table: Table, key: &str) -> &mut Self;
}

impl BatchExt for Batch {
    fn create<T: Serialize>(&mut self, table: Table, key: &str, value: &T) -> &mut Self {
        self.push(Op::ExpectAbsent(table, key.to_owned()))
            .push(Op::Put(table, key.to_owned(), encode(value)))
    }

    fn replace<T: Serialize>(&mut self, table: Table, key: &str, value: &T) -> &mut Self {
        self.push(Op::ExpectPresent(table, key.to_owned()))
            .push(Op::Put(table, key.to_owned(), encode(value)))
    }

    fn remove(&mut self, table: Table, key: &str) -> &mut Self {
        self.push(Op::ExpectPresent(table, key.to_owned()))
            .push(Op::Delete(table, key.to_owned()))
    }
}
