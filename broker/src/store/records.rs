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
use serde::{Deserialize, Serialize};

use super::record_cache::RecordCache;
use super::{Batch, Op, Store, StoreError, Table};
use crate::ids::{BindingId, InstanceId, TenantId, WorkerId};
use crate::model::{Binding, Instance, PlatformKeyRecord, SecretVersion, Tenant, Worker};

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

/// Who holds an exclusive identifier (role ARN, installation…).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentifierOwner {
    /// Owning tenant.
    pub tenant: String,
    /// Owning binding (absent for broker-generated tenant parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
}

/// A single-use install `state` issued by onboarding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackState {
    /// The provider it was issued for.
    pub provider: String,
    /// The tenant it binds the install to.
    pub tenant: String,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// The account the operator expects the installation to belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<AccountPin>,
    /// SHA-256 (hex) of the browser nonce set as a cookie when the install link was last
    /// opened; the callback must carry that cookie. Absent until the link is opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<String>,
    /// How many times the link was opened (link scanners open links before people do; the
    /// last opener's browser is the one that counts, up to a few opens).
    #[serde(default)]
    pub opens: u32,
}

/// An account an installation must belong to (GitHub: organisation or user login and id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountPin {
    /// Account login (compared case-insensitively).
    pub login: String,
    /// Numeric account id (compared exactly; survives renames).
    pub id: u64,
}

/// An installation that arrived proven but not claimable (its account differs from the pin,
/// or no state named it): kept for an operator to bind explicitly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unclaimed {
    /// Provider id.
    pub provider: String,
    /// Its exclusive identifier (e.g. `github_installation:42`).
    pub identifier: String,
    /// The binding configuration it would establish.
    pub config: serde_json::Value,
    /// The account the provider proved it belongs to.
    pub account: AccountPin,
    /// Why it was not bound.
    pub reason: String,
    /// When it was seen, RFC 3339.
    pub seen_at: String,
}

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

fn platform_key_key(kind: &str, version: u32) -> String {
    format!("{kind}/{version:010}")
}

fn exclusive_key(identifier: &str) -> String {
    format!("exclusive:{identifier}")
}

fn tenant_param_key(provider: &str, name: &str, tenant: &TenantId) -> String {
    format!("tenant-param:{provider}:{name}:{tenant}")
}

fn callback_state_key(state: &str) -> String {
    format!("callback-state:{state}")
}

fn unclaimed_key(identifier: &str) -> String {
    format!("unclaimed:{identifier}")
}

fn delivery_key(provider: &str, id: &str) -> String {
    format!("webhook-delivery:{provider}:{id}")
}

/// A processed webhook delivery, remembered until `expires_at` (Unix seconds) so a replay is
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Expiry, Unix seconds.
    pub expires_at: i64,
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
        store.on_change(Arc::new(move || hook_cache.invalidate()));
        Records { store, cache }
    }

    /// Registers `hook`, called after every change the store reports ([`Store::on_change`]).
    pub fn on_change(&self, hook: super::ChangeHook) {
        self.store.on_change(hook);
    }

    /// Applies `batch` atomically and durably.
    ///
    /// # Errors
    /// See [`Store::commit`].
    pub async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        self.store.commit(batch).await
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
    pub async fn shared_worker(&self, id: &WorkerId) -> Result<Option<Arc<Worker>>, StoreError> {
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
        self.shared(Table::Secrets, &secret_key(binding, version))
            .await
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
        self.store
            .scan(table, prefix)
            .await?
            .into_iter()
            .map(|(k, raw)| {
                Ok(Stored {
                    value: decode(table, &k, &raw)?,
                    raw,
                })
            })
            .collect()
    }

    async fn all<T: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<T>, StoreError> {
        Ok(self
            .all_stored(table, prefix)
            .await?
            .into_iter()
            .map(|s| s.value)
            .collect())
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

    /// One secret version, as read for a change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn secret_version(
        &self,
        binding: &BindingId,
        version: u32,
    ) -> Result<Option<Stored<SecretVersion>>, StoreError> {
        self.get_stored(Table::Secrets, &secret_key(binding, version))
            .await
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

    /// Every platform key of every kind, as read for a change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn all_platform_keys(&self) -> Result<Vec<Stored<PlatformKeyRecord>>, StoreError> {
        self.all_stored(Table::PlatformKeys, "").await
    }

    /// Every platform key of `kind`, oldest first, as read for a change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn platform_keys(
        &self,
        kind: &str,
    ) -> Result<Vec<Stored<PlatformKeyRecord>>, StoreError> {
        self.all_stored(Table::PlatformKeys, &format!("{kind}/"))
            .await
    }

    /// Who holds `identifier`, if anyone.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn identifier_owner(
        &self,
        identifier: &str,
    ) -> Result<Option<IdentifierOwner>, StoreError> {
        Ok(self
            .get_stored(Table::Identifiers, &exclusive_key(identifier))
            .await?
            .map(|s| s.value))
    }

    /// The exclusive identifiers `binding` holds.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn identifiers_of(&self, binding: &BindingId) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for (key, raw) in self.store.scan(Table::Identifiers, "exclusive:").await? {
            let owner: IdentifierOwner = decode(Table::Identifiers, &key, &raw)?;
            if owner.binding.as_deref() == Some(binding.as_str()) {
                if let Some(identifier) = key.strip_prefix("exclusive:") {
                    out.push(identifier.to_owned());
                }
            }
        }
        Ok(out)
    }

    /// The broker-generated parameter `name` of `provider` for `tenant`, if generated.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn tenant_parameter(
        &self,
        provider: &str,
        name: &str,
        tenant: &TenantId,
    ) -> Result<Option<String>, StoreError> {
        let key = tenant_param_key(provider, name, tenant);
        match self.store.get(Table::Identifiers, &key).await? {
            Some(raw) => String::from_utf8(raw)
                .map(Some)
                .map_err(|_| StoreError::Corrupt {
                    table: Table::Identifiers.name(),
                    key,
                }),
            None => Ok(None),
        }
    }

    /// An install `state`, as read for its consumption.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn callback_state(
        &self,
        state: &str,
    ) -> Result<Option<(String, Stored<CallbackState>)>, StoreError> {
        let key = callback_state_key(state);
        Ok(self
            .get_stored(Table::Identifiers, &key)
            .await?
            .map(|s| (key, s)))
    }

    /// The broker-generated parameters of `tenant` (every provider): `(key, value)`.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn tenant_parameters_of(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let suffix = format!(":{tenant}");
        let mut out = Vec::new();
        for (key, raw) in self.store.scan(Table::Identifiers, "tenant-param:").await? {
            // tenant-param:<provider>:<name>:<tenant>
            if key.ends_with(&suffix) && key.split(':').count() == 4 {
                let value = String::from_utf8(raw).map_err(|_| StoreError::Corrupt {
                    table: Table::Identifiers.name(),
                    key: key.clone(),
                })?;
                out.push((key, value));
            }
        }
        Ok(out)
    }

    /// Whether `provider`'s webhook delivery `id` was already processed (and not yet
    /// forgotten).
    ///
    /// # Errors
    /// On store failure.
    pub async fn delivery_seen(&self, provider: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .get(Table::Identifiers, &delivery_key(provider, id))
            .await?
            .is_some())
    }

    /// Expired ephemeral records (install states, webhook deliveries) at `now` (Unix
    /// seconds), as read for their removal: `(key, raw)`.
    ///
    /// # Errors
    /// On store failure.
    pub async fn expired_ephemera(&self, now: i64) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        #[derive(Deserialize)]
        struct Expiring {
            expires_at: i64,
        }
        let mut out = Vec::new();
        for prefix in ["callback-state:", "webhook-delivery:"] {
            for (key, raw) in self.store.scan(Table::Identifiers, prefix).await? {
                // An unreadable record is kept (and reported by whoever reads it).
                if serde_json::from_slice::<Expiring>(&raw).is_ok_and(|e| e.expires_at < now) {
                    out.push((key, raw));
                }
            }
        }
        Ok(out)
    }

    /// Installations kept for an operator to claim, as read for a change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn unclaimed(&self) -> Result<Vec<(String, Stored<Unclaimed>)>, StoreError> {
        let mut out = Vec::new();
        for (key, raw) in self.store.scan(Table::Identifiers, "unclaimed:").await? {
            let value: Unclaimed = decode(Table::Identifiers, &key, &raw)?;
            out.push((key, Stored { value, raw }));
        }
        Ok(out)
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
        }
    }
}

/// The write side: each builder adds the preconditions that keep the change honest.
impl Batch {
    /// Records the KEK version the store's sealed material was last rotated to (read back by
    /// [`Records::kek_active_version`]: a daemon with a keyring lacking it refuses to start).
    pub fn record_kek_version(&mut self, version: u32) -> &mut Self {
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

    /// Gives `identifier` to `owner`; fails if anyone holds it (one identifier, one tenant).
    pub fn claim_identifier(&mut self, identifier: &str, owner: &IdentifierOwner) -> &mut Self {
        let key = exclusive_key(identifier);
        self.push(Op::ExpectAbsent(Table::Identifiers, key.clone()))
            .push(Op::Put(Table::Identifiers, key, encode(owner)))
    }

    /// Frees `identifier`, which must be held.
    pub fn release_identifier(&mut self, identifier: &str) -> &mut Self {
        let key = exclusive_key(identifier);
        self.push(Op::ExpectPresent(Table::Identifiers, key.clone()))
            .push(Op::Delete(Table::Identifiers, key))
    }

    /// Records a generated tenant parameter; fails if the tenant already has one, or if
    /// another tenant has the same value (values are unique across tenants).
    pub fn put_tenant_parameter(
        &mut self,
        provider: &str,
        name: &str,
        tenant: &TenantId,
        value: &str,
    ) -> &mut Self {
        let key = tenant_param_key(provider, name, tenant);
        self.push(Op::ExpectAbsent(Table::Identifiers, key.clone()))
            .push(Op::Put(Table::Identifiers, key, value.as_bytes().to_vec()))
            .claim_identifier(
                &format!("tenant-param:{provider}:{name}:{value}"),
                &IdentifierOwner {
                    tenant: tenant.to_string(),
                    binding: None,
                },
            )
    }

    /// Retires a tenant parameter as read (`key`, `value` from
    /// [`Records::tenant_parameters_of`]): the tenant loses it, and since the value's
    /// uniqueness claim stays, it is never issued again — a tenant re-created with the same
    /// id gets a fresh one (a customer's trust policy pinned to the old ExternalId must not
    /// start trusting the new tenant).
    pub fn retire_tenant_parameter(&mut self, key: &str, value: &str) -> &mut Self {
        self.push(Op::ExpectValue(
            Table::Identifiers,
            key.to_owned(),
            value.as_bytes().to_vec(),
        ))
        .push(Op::Delete(Table::Identifiers, key.to_owned()))
    }

    /// Stores a new install `state`.
    pub fn put_callback_state(&mut self, state: &str, record: &CallbackState) -> &mut Self {
        let key = callback_state_key(state);
        self.push(Op::ExpectAbsent(Table::Identifiers, key.clone()))
            .push(Op::Put(Table::Identifiers, key, encode(record)))
    }

    /// Marks an install `state` as opened by one browser (`browser`: hash of its nonce), as
    /// read: of two concurrent openings one fails; a later one replaces the browser.
    pub fn start_callback_state(
        &mut self,
        key: &str,
        read: &Stored<CallbackState>,
        browser: &str,
    ) -> &mut Self {
        let mut started = read.value.clone();
        started.browser = Some(browser.to_owned());
        started.opens = started.opens.saturating_add(1);
        self.push(Op::ExpectValue(
            Table::Identifiers,
            key.to_owned(),
            read.raw.clone(),
        ))
        .push(Op::Put(
            Table::Identifiers,
            key.to_owned(),
            encode(&started),
        ))
    }

    /// Remembers a processed webhook delivery; fails if it was already recorded (two copies
    /// of one delivery cannot both be processed).
    pub fn record_delivery(&mut self, provider: &str, id: &str, delivery: &Delivery) -> &mut Self {
        let key = delivery_key(provider, id);
        self.push(Op::ExpectAbsent(Table::Identifiers, key.clone()))
            .push(Op::Put(Table::Identifiers, key, encode(delivery)))
    }

    /// Removes an expired ephemeral record as read ([`Records::expired_ephemera`]).
    pub fn forget_expired(&mut self, key: &str, raw: &[u8]) -> &mut Self {
        self.push(Op::ExpectValue(
            Table::Identifiers,
            key.to_owned(),
            raw.to_vec(),
        ))
        .push(Op::Delete(Table::Identifiers, key.to_owned()))
    }

    /// Keeps (or refreshes) an unclaimed installation.
    pub fn put_unclaimed(&mut self, record: &Unclaimed) -> &mut Self {
        self.push(Op::Put(
            Table::Identifiers,
            unclaimed_key(&record.identifier),
            encode(record),
        ))
    }

    /// Removes an unclaimed installation as read (it is being claimed).
    pub fn remove_unclaimed(&mut self, key: &str, read: &Stored<Unclaimed>) -> &mut Self {
        self.push(Op::ExpectValue(
            Table::Identifiers,
            key.to_owned(),
            read.raw.clone(),
        ))
        .push(Op::Delete(Table::Identifiers, key.to_owned()))
    }

    /// Consumes an install `state` as it was read: a second consumption fails.
    pub fn consume_callback_state(&mut self, key: &str, read: &Stored<CallbackState>) -> &mut Self {
        self.push(Op::ExpectValue(
            Table::Identifiers,
            key.to_owned(),
            read.raw.clone(),
        ))
        .push(Op::Delete(Table::Identifiers, key.to_owned()))
    }
}
