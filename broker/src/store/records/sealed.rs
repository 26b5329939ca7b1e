//! The records that hold material sealed under the KEK (tenants' secret versions and the
//! platform keys, read for a change), the store's record of its KEK version, and the sealed
//! tables as KEK rotation re-wraps them.

use serde::Deserialize;

use super::{decode, is_at, platform_key_key, secret_key, Records, Stored};
use crate::ids::BindingId;
use crate::model::{PlatformKeyRecord, SecretVersion};
use crate::store::{StoreError, Table};

impl Records {
    /// One secret version, as read for a change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn secret_version(
        &self,
        binding: &BindingId,
        version: u32,
    ) -> Result<Option<Stored<SecretVersion>>, StoreError> {
        let key = secret_key(binding, version);
        let found: Option<Stored<SecretVersion>> = self.get_stored(Table::Secrets, &key).await?;
        match found {
            Some(v) => is_at(&v.value, binding, version, &key).map(|()| Some(v)),
            None => Ok(None),
        }
    }

    /// The secret version stored at `key` (a key a pass over the table returned), as read
    /// for a change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn secret_version_at(
        &self,
        key: &str,
    ) -> Result<Option<Stored<SecretVersion>>, StoreError> {
        self.get_stored(Table::Secrets, key).await
    }

    /// Every stored secret version of a binding, oldest first, as read for a change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn secret_versions(
        &self,
        binding: &BindingId,
    ) -> Result<Vec<Stored<SecretVersion>>, StoreError> {
        self.all_stored(Table::Secrets, &format!("{binding}/"))
            .await
    }

    /// Every stored secret version, as read for a change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn all_secret_versions(&self) -> Result<Vec<Stored<SecretVersion>>, StoreError> {
        self.all_stored(Table::Secrets, "").await
    }

    /// Calls `each` with every stored secret version, one at a time (a start-up pass over a
    /// table too large to hold).
    ///
    /// # Errors
    /// On store failure or corruption, or the first error of `each`.
    pub async fn each_secret_version(
        &self,
        each: impl FnMut(SecretVersion) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        self.each(Table::Secrets, each).await
    }

    /// Every platform key of every kind, as read for a change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn all_platform_keys(&self) -> Result<Vec<Stored<PlatformKeyRecord>>, StoreError> {
        self.platform_keys_under("").await
    }

    /// Every platform key of `kind`, oldest first, as read for a change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn platform_keys(
        &self,
        kind: &str,
    ) -> Result<Vec<Stored<PlatformKeyRecord>>, StoreError> {
        self.platform_keys_under(&format!("{kind}/")).await
    }

    /// The platform keys stored under `prefix`, each read only at its own key (its kind and
    /// version): one copied under another key by whoever can write the store would be
    /// handed to the wrong provider, or published twice, and is refused as corrupt.
    async fn platform_keys_under(
        &self,
        prefix: &str,
    ) -> Result<Vec<Stored<PlatformKeyRecord>>, StoreError> {
        self.all_stored_at(Table::PlatformKeys, prefix, |k, v: &PlatformKeyRecord| {
            k == platform_key_key(&v.kind, v.version)
        })
        .await
    }

    /// The store's record of its KEK version exactly as stored (none before the first
    /// rotation): what [`Batch::record_kek_version`] is to find unchanged.
    ///
    /// # Errors
    /// The store's.
    pub async fn kek_version_as_read(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(Table::KeyMeta, "kek").await
    }

    /// The KEK version the store was last rotated to, if recorded.
    ///
    /// # Errors
    /// On store failure, or when the record is unreadable (the stale-keyring check must not
    /// be skipped silently).
    pub async fn kek_active_version(&self) -> Result<Option<u64>, StoreError> {
        #[derive(Deserialize)]
        struct KekMeta {
            active_version: u64,
        }
        match self.store.get(Table::KeyMeta, "kek").await? {
            None => Ok(None),
            Some(raw) => {
                decode::<KekMeta>(Table::KeyMeta, "kek", &raw).map(|m| Some(m.active_version))
            }
        }
    }
}

/// A table holding material sealed under the KEK, typed for KEK rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedTable {
    /// Tenant secret versions.
    Secrets,
    /// Platform keys.
    PlatformKeys,
    /// Webhook secrets of connector instances.
    WebhookSecrets,
}

impl SealedTable {
    /// Every table that holds sealed material ([`Table::holds_sealed_material`]).
    ///
    /// # Errors
    /// When a table declares sealed material but has no typed counterpart here (a rotation
    /// must then refuse rather than leave it wrapped by a KEK version about to be removed).
    pub fn all() -> Result<Vec<SealedTable>, String> {
        Table::ALL
            .iter()
            .copied()
            .filter(|t| t.holds_sealed_material())
            .map(|t| match t {
                Table::Secrets => Ok(SealedTable::Secrets),
                Table::PlatformKeys => Ok(SealedTable::PlatformKeys),
                Table::WebhookSecrets => Ok(SealedTable::WebhookSecrets),
                other => Err(format!(
                    "table {} holds sealed material this build cannot re-wrap",
                    other.name()
                )),
            })
            .collect()
    }

    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            SealedTable::Secrets => Table::Secrets.name(),
            SealedTable::PlatformKeys => Table::PlatformKeys.name(),
            SealedTable::WebhookSecrets => Table::WebhookSecrets.name(),
        }
    }
}
