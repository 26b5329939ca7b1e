//! Persistence behind a deliberately small async trait.
//!
//! The core speaks to [`Store`]: named tables of string keys and opaque values, read one key
//! or one prefix at a time, and written only in atomic [`Batch`]es whose preconditions are
//! checked inside the same transaction. That is all a replicated backend has to offer; a
//! backend is one module here behind the trait, selected by `[store] backend`. Typed access
//! lives above the trait in [`records`]: nothing outside this module names a table or a key.
//!
//! Concurrency is optimistic: a change is planned from reads, and every read the plan
//! depends on is a precondition of its batch (a record must be absent, present, or exactly
//! the bytes that were read), so two writers — two admin requests, or two broker replicas
//! sharing one database — can never both win on the same fact. No process-wide lock is
//! needed for correctness.

pub mod migrate;
pub(crate) mod postgres;
pub mod record_cache;
pub mod records;
mod schema;
mod sled_store;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub use postgres::PgStore;
pub(crate) use schema::{
    schema_upgrade, MIGRATING_KEY, MOVED_KEY, RESEAL_PENDING, RESEAL_PLATFORM_KEYS_KEY, SCHEMA_KEY,
};
pub use schema::{upgraded_in_place, SCHEMA_VERSION};
pub use sled_store::{SledStore, MOVED_FILE as SLED_MOVED_FILE, SCHEMA_FILE as SLED_SCHEMA_FILE};

/// The tables of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Store metadata (schema version).
    Meta,
    /// Tenants by id.
    Tenants,
    /// Workers by id.
    Workers,
    /// Connector instances by id.
    Instances,
    /// Bindings by id.
    Bindings,
    /// Sealed secret versions by `<binding>/<version, 10 digits>`.
    Secrets,
    /// Key metadata (KEK versions in use, audit key id).
    KeyMeta,
    /// Exclusive identifiers (`exclusive:<identifier>` → owning tenant and binding) and
    /// broker-generated tenant parameters (`tenant-param:<provider>:<name>:<tenant>`).
    Identifiers,
    /// Sealed platform keys (`<kind>/<version, 10 digits>`), e.g. the GitHub App key.
    PlatformKeys,
    /// Operators by name: only an operator certificate with an active record administers.
    Operators,
    /// When each binding and worker last resolved, by `<replica>/<b|w>/<id>`: written in
    /// periodic batches (never per resolve), one row per replica so replicas never contend.
    LastUse,
    /// Sealed webhook secrets of connector instances, by instance id.
    WebhookSecrets,
}

impl Table {
    /// Whether the table's rows are each written by one replica only and read straight from
    /// the store, never through a cache (last-use times): another replica's caches need not
    /// hear of their changes.
    pub fn replica_private(self) -> bool {
        matches!(self, Table::LastUse)
    }

    /// Every table.
    pub const ALL: &'static [Table] = &[
        Table::Meta,
        Table::Tenants,
        Table::Workers,
        Table::Instances,
        Table::Bindings,
        Table::Secrets,
        Table::KeyMeta,
        Table::Identifiers,
        Table::PlatformKeys,
        Table::Operators,
        Table::LastUse,
        Table::WebhookSecrets,
    ];

    /// Whether the table's records hold material sealed under the KEK. Exhaustive on
    /// purpose: a new table must say, and KEK rotation re-wraps every table that does (or
    /// refuses to rotate at all).
    pub fn holds_sealed_material(self) -> bool {
        match self {
            Table::Secrets | Table::PlatformKeys | Table::WebhookSecrets => true,
            Table::Meta
            | Table::Tenants
            | Table::Workers
            | Table::Instances
            | Table::Bindings
            | Table::KeyMeta
            | Table::Identifiers
            | Table::Operators
            | Table::LastUse => false,
        }
    }

    /// The table's name in the backend.
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Tenants => "tenants",
            Table::Workers => "workers",
            Table::Instances => "instances",
            Table::Bindings => "bindings",
            Table::Secrets => "secrets",
            Table::KeyMeta => "key_meta",
            Table::Identifiers => "identifiers",
            Table::PlatformKeys => "platform_keys",
            Table::Operators => "operators",
            Table::LastUse => "last_use",
            Table::WebhookSecrets => "webhook_secrets",
        }
    }
}

/// One step of an atomic batch.
#[derive(Debug, Clone)]
pub enum Op {
    /// Fail the whole batch unless `key` is absent.
    ExpectAbsent(Table, String),
    /// Fail the whole batch unless `key` is present.
    ExpectPresent(Table, String),
    /// Fail the whole batch unless `key` holds exactly these bytes (it was not changed since
    /// it was read).
    ExpectValue(Table, String, Vec<u8>),
    /// Write `value` at `key`.
    Put(Table, String, Vec<u8>),
    /// Remove `key` (absent is fine).
    Delete(Table, String),
}

/// Operations applied all-or-nothing, durable when [`Store::commit`] returns `Ok`.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The operations, checked and applied in order.
    pub ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Adds an operation.
    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    /// This batch's operations (preconditions, usually), then `rest`'s: checked first.
    pub fn then(mut self, rest: Batch) -> Batch {
        self.ops.extend(rest.ops);
        self
    }
}

/// How a message (an error, a log line) names the key `key` of `table`: in the identifiers
/// table only by its kind (`callback-state`, `tenant-param`…), since the rest may be a value
/// handed to a customer or an upstream's id.
pub fn key_in_message(table: &str, key: &str) -> String {
    if table == Table::Identifiers.name() {
        key.split(':').next().unwrap_or_default().to_owned()
    } else {
        key.to_owned()
    }
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition of the batch failed; nothing was written.
    #[error(
        "precondition failed on {table}/{}: expected it to be {expected}",
        key_in_message(table, key)
    )]
    Precondition {
        /// Table name.
        table: &'static str,
        /// Key.
        key: String,
        /// "absent", "present" or "unchanged".
        expected: &'static str,
    },
    /// The schema version on disk is not the one this build understands.
    #[error("store schema version {found} is not supported (this build reads {supported})")]
    Schema {
        /// Version found.
        found: String,
        /// Version supported.
        supported: u32,
    },
    /// A stored value could not be decoded.
    #[error("corrupt record {table}/{}", key_in_message(table, key))]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// Key.
        key: String,
    },
    /// The backend failed.
    #[error("store backend error: {0}")]
    Backend(String),
}

impl StoreError {
    /// The operator whose record a failed precondition required unchanged, if that is what
    /// failed (a disable on another replica between the read and the commit).
    pub fn changed_operator(&self) -> Option<&str> {
        match self {
            StoreError::Precondition { table, key, .. } if *table == Table::Operators.name() => {
                Some(key)
            }
            _ => None,
        }
    }
}

/// The tables a change touched, as reported to [`ChangeHook`]s: exact for this process's own
/// commits, every table for a change another process made (a backend shared by several
/// brokers learns that something changed, not what).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed(u32);

impl Changed {
    /// Every table.
    pub const ALL: Changed = Changed(u32::MAX);

    /// The tables `batch` writes or removes from (its checks change nothing).
    pub fn of(batch: &Batch) -> Changed {
        let mut bits = 0u32;
        for op in &batch.ops {
            if let Op::Put(t, ..) | Op::Delete(t, ..) = op {
                bits |= Self::bit(*t);
            }
        }
        Changed(bits)
    }

    /// Whether `table` may have changed.
    pub fn touches(self, table: Table) -> bool {
        self.0 & Self::bit(table) != 0
    }

    /// Whether any of `tables` may have changed.
    pub fn touches_any(self, tables: &[Table]) -> bool {
        tables.iter().any(|t| self.touches(*t))
    }

    /// Whether a binding record may have changed.
    pub fn bindings(self) -> bool {
        self.touches(Table::Bindings)
    }

    /// Whether a platform or issuer key, or the key metadata naming the KEKs they are sealed
    /// under, may have changed.
    pub fn keys(self) -> bool {
        self.touches_any(&[Table::PlatformKeys, Table::KeyMeta])
    }

    /// Whether nothing changed.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether other brokers sharing the store must hear of this change: it touched a table
    /// that is not [`Table::replica_private`].
    pub fn concerns_other_replicas(self) -> bool {
        Table::ALL
            .iter()
            .any(|t| self.touches(*t) && !t.replica_private())
    }

    fn bit(table: Table) -> u32 {
        // One bit per variant: fewer than 32 tables (checked by a test).
        1u32 << (table as u32)
    }
}

/// Called after every change a backend knows of, with the tables it touched.
pub type ChangeHook = Arc<dyn Fn(Changed) + Send + Sync>;

/// A backend's registered [`ChangeHook`]s.
#[derive(Default)]
pub(crate) struct Hooks(std::sync::Mutex<Vec<ChangeHook>>);

impl Hooks {
    /// Registers `hook`.
    pub(crate) fn add(&self, hook: ChangeHook) {
        match self.0.lock() {
            Ok(mut h) => h.push(hook),
            Err(poisoned) => poisoned.into_inner().push(hook),
        }
    }

    /// Runs every hook with `changed` (outside the lock: a hook may register another).
    pub(crate) fn run(&self, changed: Changed) {
        let hooks = match self.0.lock() {
            Ok(h) => h.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        for hook in hooks {
            hook(changed);
        }
    }
}

/// What [`Store::scan_each`] calls with each key and value.
pub type ScanEach = Box<dyn FnMut(&str, &[u8]) -> Result<(), StoreError> + Send>;

/// The persistence seam. Implementations keep blocking work off the async workers (sled's
/// point reads, lookups in its resident tree, run on the calling worker: see
/// `SledStore::get`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one value.
    ///
    /// # Errors
    /// On backend failure.
    async fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Reads every key starting with `prefix`, in key order.
    ///
    /// # Errors
    /// On backend failure.
    async fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Reads one page of the keys starting with `prefix`, in key order, all after `after`
    /// when it is given: at most `limit` of them, and none past the one whose value brings
    /// the page's values to `max_bytes` or more (a listing that never holds a whole table,
    /// nor more than about `max_bytes` of it plus one value).
    ///
    /// # Errors
    /// On backend failure.
    async fn scan_page(
        &self,
        table: Table,
        prefix: &str,
        after: Option<&str>,
        (limit, max_bytes): (usize, usize),
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Calls `each` with every key starting with `prefix` and its value, in key order, one
    /// at a time: for a pass over a whole table (the start-up check, the periodic jobs) that
    /// must not hold it all in memory. sled iterates its tree; PostgreSQL reads pages by
    /// key. The default reads the table with [`Store::scan`].
    ///
    /// # Errors
    /// On backend failure, or the first error of `each` (which stops the pass).
    async fn scan_each(
        &self,
        table: Table,
        prefix: &str,
        mut each: ScanEach,
    ) -> Result<(), StoreError> {
        for (k, v) in self.scan(table, prefix).await? {
            each(&k, &v)?;
        }
        Ok(())
    }

    /// Applies `batch` atomically and durably: every precondition is checked inside the same
    /// transaction as the writes. Once started, a commit runs to its end even if the caller's
    /// future is dropped.
    ///
    /// # Errors
    /// [`StoreError::Precondition`] when a precondition fails (nothing written), or on backend
    /// failure (nothing written or, if the durability flush failed, the caller must treat the
    /// outcome as unknown).
    async fn commit(&self, batch: Batch) -> Result<(), StoreError>;

    /// Makes every change acknowledged before this call — by this broker or, on a backend
    /// several brokers share, by any of them — visible to the caches fed by
    /// [`Store::on_change`]: a shared backend reads its change generation and reports a change
    /// when it moved. Resolves call it first, so a change acknowledged on any replica is judged
    /// on every replica from the next resolve on. sled, whose only writer is this process and
    /// whose hooks run before a commit returns, has nothing to do.
    ///
    /// # Errors
    /// When the backend cannot be reached: the caller fails closed.
    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether several brokers may share this backend: replica ids and leases then mean
    /// something, and the audit goes to the backend too.
    fn shared(&self) -> bool {
        false
    }

    /// Claims the lease `name` for `holder` until `ttl` from now on the backend's clock, or
    /// extends it when `holder` holds it already; `Ok(false)` while another holder's claim
    /// is live. A backend only one broker opens (sled) grants every claim.
    ///
    /// # Errors
    /// When the backend cannot be reached (the lease must then be treated as lost).
    async fn claim_lease(
        &self,
        _name: &str,
        _holder: &str,
        _ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// How many live leases have a name starting with `prefix` (how many replicas run, for
    /// `replica/`). A backend one broker opens has none: its lock says it instead.
    ///
    /// # Errors
    /// When the backend cannot be reached.
    async fn live_leases(&self, _prefix: &str) -> Result<usize, StoreError> {
        Ok(0)
    }

    /// Gives the lease `name` up if `holder` holds it.
    ///
    /// # Errors
    /// When the backend cannot be reached (the lease then lapses at its expiry).
    async fn release_lease(&self, _name: &str, _holder: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Registers `hook`, called after every change this backend knows of: its own commits
    /// (also failed ones, whose outcome may be unknown), with the tables the batch wrote, and,
    /// for a backend shared by several brokers, the others' commits, with every table. Caches
    /// of decoded records rely on it.
    fn on_change(&self, hook: ChangeHook);

    /// The backend's name, for logs and `/metrics`.
    fn backend(&self) -> &'static str;
}

/// Which backend holds the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// sled, embedded in the data directory (single node).
    #[default]
    Sled,
    /// PostgreSQL, shared by every replica of a deployment.
    Postgres,
}

/// The environment variable read for the PostgreSQL URL when `[store] url` and `url_env` are
/// unset.
pub const DATABASE_URL_ENV: &str = "CREDBROKER_DATABASE_URL";

/// A database connection URL: it may hold a password, so it is never printed — not by
/// `Debug`, and serialized only as `"<redacted>"`.
#[derive(Clone)]
pub struct DatabaseUrl(SecretString);

impl DatabaseUrl {
    /// The URL, for the connection only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<String> for DatabaseUrl {
    fn from(url: String) -> Self {
        DatabaseUrl(SecretString::from(url))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(<redacted>)")
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(DatabaseUrl::from)
    }
}

/// `[store]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// The backend.
    pub backend: Backend,
    /// sled: the store directory (default `<data_dir>/store`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// postgres: the connection URL,
    /// `postgresql://user:password@host:port/database?sslmode=require`. A password is better
    /// kept out of the config file: see `url_env`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<DatabaseUrl>,
    /// postgres: the environment variable holding the URL when `url` is unset (default
    /// `CREDBROKER_DATABASE_URL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// postgres: PEM file of the CA certificates that sign the database server's certificate.
    /// Required unless the server is on loopback or a Unix socket: the connection is then
    /// TLS (rustls) with the server's certificate and host name verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// postgres: most connections in the pool (default 16); one more is held for change
    /// notifications.
    pub pool_size: usize,
    /// postgres: the longest wait for one database operation, connecting included,
    /// milliseconds (default 5000). Past it the operation fails (a resolve fails closed).
    pub timeout_ms: u64,
    /// sled: its page cache, MiB (default 1024, sled's own default). Resident memory grows
    /// with it as the store is read; the broker's decoded-record cache (`[cache]
    /// record_entries`) is what keeps resolves fast, so a large store can run with less.
    pub cache_mib: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            backend: Backend::Sled,
            path: None,
            url: None,
            url_env: None,
            ca_file: None,
            pool_size: 16,
            timeout_ms: 5000,
            cache_mib: DEFAULT_SLED_CACHE_MIB,
        }
    }
}

impl StoreSettings {
    /// The PostgreSQL URL: `url`, or the variable `url_env` (or `CREDBROKER_DATABASE_URL`)
    /// names.
    ///
    /// # Errors
    /// When neither is set.
    pub fn database_url(&self) -> Result<DatabaseUrl, StoreError> {
        if let Some(url) = &self.url {
            return Ok(url.clone());
        }
        let var = self.url_env.as_deref().unwrap_or(DATABASE_URL_ENV);
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => Ok(DatabaseUrl::from(url)),
            _ => Err(StoreError::Backend(format!(
                "[store] backend = \"postgres\" needs the database URL: set the environment variable {var} (or [store] url_env, or [store] url)"
            ))),
        }
    }
}

/// sled's own default page cache, MiB.
pub const DEFAULT_SLED_CACHE_MIB: u64 = 1024;

/// Opens the store `settings` select; `data_dir` gives the default locations.
///
/// # Errors
/// When the backend cannot be opened (locked, unreachable, unreadable, wrong schema version).
pub async fn open(
    settings: &StoreSettings,
    data_dir: &std::path::Path,
) -> Result<Arc<dyn Store>, StoreError> {
    match settings.backend {
        Backend::Sled => {
            let dir = settings
                .path
                .clone()
                .unwrap_or_else(|| data_dir.join("store"));
            let store =
                SledStore::open_with_cache(&dir, settings.cache_mib.saturating_mul(1024 * 1024))?;
            migrate::refuse_moved(&store, &dir).await?;
            Ok(Arc::new(store))
        }
        Backend::Postgres => Ok(Arc::new(PgStore::open(settings).await?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_names_the_tables_a_batch_writes() {
        // One bit per table.
        assert!(Table::ALL.len() < 32);
        let mut b = Batch::new();
        b.push(Op::ExpectPresent(Table::Tenants, "t".into()))
            .push(Op::ExpectValue(Table::Workers, "w".into(), vec![]))
            .push(Op::Put(Table::LastUse, "1/b/x".into(), vec![]))
            .push(Op::Delete(Table::Secrets, "x/1".into()));
        let changed = Changed::of(&b);
        assert!(changed.touches(Table::LastUse) && changed.touches(Table::Secrets));
        assert!(!changed.touches_any(&[Table::Tenants, Table::Workers, Table::Bindings]));
        assert!(Changed::of(&Batch::new()).is_empty());
        assert!(Table::ALL.iter().all(|t| Changed::ALL.touches(*t)));
        assert!(changed.concerns_other_replicas(), "a secret changed");
        assert!(!changed.bindings() && !changed.keys());
        assert!(Changed::ALL.bindings() && Changed::ALL.keys());
        let mut last_use = Batch::new();
        last_use.push(Op::Put(Table::LastUse, "1/w/y".into(), vec![]));
        assert!(!Changed::of(&last_use).concerns_other_replicas());
    }
}
