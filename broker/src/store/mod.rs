//! Persistence behind a deliberately small trait.
//!
//! The core speaks to [`Store`]: named tables of string keys and opaque values, read one key
//! or one prefix at a time, and written only in atomic [`Batch`]es whose preconditions are
//! checked inside the same transaction. That is all a replicated backend has to offer to
//! replace sled later; typed access lives above the trait in [`records`].

pub mod record_cache;
pub mod records;
mod sled_store;

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
    ];

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
        /// "absent" or "present".
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

/// The persistence seam.
pub trait Store: Send + Sync + 'static {
    /// Reads one value.
    ///
    /// # Errors
    /// On backend failure.
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Reads every key starting with `prefix`, in key order.
    ///
    /// # Errors
    /// On backend failure.
    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Applies `batch` atomically and durably.
    ///
    /// # Errors
    /// [`StoreError::Precondition`] when a precondition fails (nothing written), or on backend
    /// failure (nothing written or, if the durability flush failed, the caller must treat the
    /// outcome as unknown).
    fn commit(&self, batch: Batch) -> Result<(), StoreError>;
}

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
