//! Where each record lives and how a change writes it: the [`Record`] trait (table and key)
//! and the [`Batch`] builders, each adding the preconditions that keep the change honest —
//! a record replaced or removed only as it was read, a new one only where none is.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{encode, platform_key_key, secret_key, Stored};
use crate::model::{Binding, Instance, PlatformKeyRecord, SecretVersion, Tenant, Worker};
use crate::store::{Batch, Op, Table};

/// A record type and where it lives.
pub trait Record: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Its table.
    const TABLE: Table;
    /// Its key.
    fn key(&self) -> String;
}

impl Record for Tenant {
    const TABLE: Table = Table::Tenants;
    fn key(&self) -> String {
        self.id.to_string()
    }
}

impl Record for Worker {
    const TABLE: Table = Table::Workers;
    fn key(&self) -> String {
        self.id.to_string()
    }
}

impl Record for crate::model::Operator {
    const TABLE: Table = Table::Operators;
    fn key(&self) -> String {
        self.id.to_string()
    }
}

impl Record for Instance {
    const TABLE: Table = Table::Instances;
    fn key(&self) -> String {
        self.id.to_string()
    }
}

impl Record for Binding {
    const TABLE: Table = Table::Bindings;
    fn key(&self) -> String {
        self.id.to_string()
    }
}

impl Record for SecretVersion {
    const TABLE: Table = Table::Secrets;
    fn key(&self) -> String {
        secret_key(&self.binding, self.version)
    }
}

impl Record for PlatformKeyRecord {
    const TABLE: Table = Table::PlatformKeys;
    fn key(&self) -> String {
        platform_key_key(&self.kind, self.version)
    }
}

/// The write side: each builder adds the preconditions that keep the change honest.
impl Batch {
    /// Records the KEK version the store's sealed material was last rotated to (read back by
    /// [`Records::kek_active_version`]: a daemon with a keyring lacking it refuses to start).
    /// It must still be as the rotation read it (`as_read`, or absent): two rotations of
    /// one store, whatever else keeps them apart, cannot both land.
    pub fn record_kek_version(&mut self, version: u32, as_read: Option<&[u8]>) -> &mut Self {
        match as_read {
            Some(raw) => self.push(Op::ExpectValue(Table::KeyMeta, "kek".into(), raw.to_vec())),
            None => self.push(Op::ExpectAbsent(Table::KeyMeta, "kek".into())),
        };
        let value = format!("{{\"active_version\":{version}}}").into_bytes();
        self.push(Op::Put(Table::KeyMeta, "kek".into(), value))
    }

    /// Creates a record that must not exist yet.
    pub fn create<T: Record>(&mut self, value: &T) -> &mut Self {
        let key = value.key();
        self.push(Op::ExpectAbsent(T::TABLE, key.clone()))
            .push(Op::Put(T::TABLE, key, encode(value)))
    }

    /// Replaces a record that must still be exactly as it was read.
    pub fn replace<T: Record>(&mut self, read: &Stored<T>, value: &T) -> &mut Self {
        let key = read.value.key();
        self.push(Op::ExpectValue(T::TABLE, key.clone(), read.raw.clone()))
            .push(Op::Put(T::TABLE, key, encode(value)))
    }

    /// Removes a record that must still be exactly as it was read.
    pub fn remove<T: Record>(&mut self, read: &Stored<T>) -> &mut Self {
        let key = read.value.key();
        self.push(Op::ExpectValue(T::TABLE, key.clone(), read.raw.clone()))
            .push(Op::Delete(T::TABLE, key))
    }

    /// Requires a record to be still exactly as it was read, without changing it.
    pub fn expect_unchanged<T: Record>(&mut self, read: &Stored<T>) -> &mut Self {
        self.push(Op::ExpectValue(
            T::TABLE,
            read.value.key(),
            read.raw.clone(),
        ))
    }

    // The same for the identifiers table's records, whose keys are derived from what they
    // are for (a state's hash, a site) rather than held in the value.

    /// Requires `key` to hold still exactly `read` (its bytes as read).
    pub(super) fn expect_identifier_record<T>(&mut self, key: &str, read: &Stored<T>) -> &mut Self {
        self.push(Op::ExpectValue(
            Table::Identifiers,
            key.to_owned(),
            read.raw.clone(),
        ))
    }

    /// Replaces the record at `key`, which must still be as read, with `value`.
    pub(super) fn replace_identifier_record<T, V: Serialize>(
        &mut self,
        key: &str,
        read: &Stored<T>,
        value: &V,
    ) -> &mut Self {
        self.expect_identifier_record(key, read).push(Op::Put(
            Table::Identifiers,
            key.to_owned(),
            encode(value),
        ))
    }

    /// Removes the record at `key`, which must still be as read.
    pub(super) fn remove_identifier_record<T>(&mut self, key: &str, read: &Stored<T>) -> &mut Self {
        self.expect_identifier_record(key, read)
            .push(Op::Delete(Table::Identifiers, key.to_owned()))
    }

    /// Writes `value` at `key` over the record as `read` (none: there must be none), so that
    /// of two writers planned from the same read one fails.
    pub(super) fn put_identifier_record<T, V: Serialize>(
        &mut self,
        key: &str,
        read: Option<&Stored<T>>,
        value: &V,
    ) -> &mut Self {
        match read {
            Some(read) => self.replace_identifier_record(key, read, value),
            None => self
                .push(Op::ExpectAbsent(Table::Identifiers, key.to_owned()))
                .push(Op::Put(Table::Identifiers, key.to_owned(), encode(value))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::store::records::Records;
    use crate::store::sled_store::SledStore;
    use crate::store::{Batch, StoreError};

    /// Two rotations of one store cannot both land: each records the new KEK version only
    /// over the record it read (none, or the version before).
    #[tokio::test]
    async fn a_kek_version_lands_only_over_the_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(Arc::new(SledStore::open(dir.path()).unwrap()));
        let raw = || async { records.kek_version_as_read().await.unwrap() };
        let none = raw().await;
        let mut first = Batch::new();
        first.record_kek_version(2, none.as_deref());
        let mut second = Batch::new();
        second.record_kek_version(2, none.as_deref());
        records.commit(first).await.unwrap();
        assert!(matches!(
            records.commit(second).await,
            Err(StoreError::Precondition { .. })
        ));
        assert_eq!(records.kek_active_version().await.unwrap(), Some(2));
        let read = raw().await;
        let mut next = Batch::new();
        next.record_kek_version(3, read.as_deref());
        records.commit(next).await.unwrap();
        let mut stale = Batch::new();
        stale.record_kek_version(4, read.as_deref());
        assert!(matches!(
            records.commit(stale).await,
            Err(StoreError::Precondition { .. })
        ));
        assert_eq!(records.kek_active_version().await.unwrap(), Some(3));
    }
}
