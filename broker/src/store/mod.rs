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

pub mod record_cache;
pub mod records;
mod sled_store;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use sled_store::SledStore;

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
}

impl Table {
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
    ];

    /// Whether the table's records hold material sealed under the KEK. Exhaustive on
    /// purpose: a new table must say, and KEK rotation re-wraps every table that does (or
    /// refuses to rotate at all).
    pub fn holds_sealed_material(self) -> bool {
        match self {
            Table::Secrets | Table::PlatformKeys => true,
            Table::Meta
            | Table::Tenants
            | Table::Workers
            | Table::Instances
            | Table::Bindings
            | Table::KeyMeta
            | Table::Identifiers
            | Table::Operators => false,
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
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition of the batch failed; nothing was written.
    #[error("precondition failed on {table}/{key}: expected it to be {expected}")]
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
    #[error("corrupt record {table}/{key}")]
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

/// Called after every change a backend knows of.
pub type ChangeHook = Arc<dyn Fn() + Send + Sync>;

/// The persistence seam. Implementations keep blocking work off the async workers.
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

    /// Applies `batch` atomically and durably: every precondition is checked inside the same
    /// transaction as the writes. Once started, a commit runs to its end even if the caller's
    /// future is dropped.
    ///
    /// # Errors
    /// [`StoreError::Precondition`] when a precondition fails (nothing written), or on backend
    /// failure (nothing written or, if the durability flush failed, the caller must treat the
    /// outcome as unknown).
    async fn commit(&self, batch: Batch) -> Result<(), StoreError>;

    /// Registers `hook`, called after every change this backend knows of: its own commits
    /// (also failed ones, whose outcome may be unknown) and, for a backend shared by several
    /// brokers, the others' commits. Caches of decoded records rely on it.
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
}

/// `[store]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// The backend.
    pub backend: Backend,
    /// sled: the store directory (default `<data_dir>/store`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

/// Opens the store `settings` select; `data_dir` gives the default locations.
///
/// # Errors
/// When the backend cannot be opened (locked, unreadable, wrong schema version).
pub fn open(
    settings: &StoreSettings,
    data_dir: &std::path::Path,
) -> Result<Arc<dyn Store>, StoreError> {
    match settings.backend {
        Backend::Sled => {
            let dir = settings
                .path
                .clone()
                .unwrap_or_else(|| data_dir.join("store"));
            Ok(Arc::new(SledStore::open(&dir)?))
        }
    }
}

/// The schema version this build reads and writes.
///
/// 2: tenants and bindings carry `revision`, bindings `generation` (version 1 stores are
/// upgraded in place on open).
pub const SCHEMA_VERSION: u32 = 3;
