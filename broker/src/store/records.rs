//! Typed access to the store's records. Everything above this module speaks in model types;
//! everything below it in tables, keys and bytes.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Batch, Op, Store, StoreError, Table};
use crate::ids::{BindingId, InstanceId, TenantId, WorkerId};
use crate::model::{Binding, Instance, SecretVersion, Tenant, Worker};

/// Typed reads and batch builders over a [`Store`].
#[derive(Clone)]
pub struct Records {
    store: Arc<dyn Store>,
}

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
    /// Typed access over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Records { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
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
