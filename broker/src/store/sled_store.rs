//! [`Store`] on sled 0.34.
//!
//! sled writes are durable only after `flush`, so every commit flushes before returning.
//! sled holds an exclusive lock on its directory: a second process opening the same store
//! gets a clear "locked" error instead of corrupting it — so this process is the only
//! writer, and its own commits are every change there is to notify. Commits (the flush is
//! an fsync) and scans run on tokio's blocking pool; a point read runs on the calling
//! worker (a lookup in sled's resident tree, or one page read from the file on a miss):
//! handing it to the pool and back cost more than the read (see `get`).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

#[cfg(test)]
use super::SCHEMA_VERSION;
use super::{
    schema_upgrade, Batch, ChangeHook, Changed, Hooks, Op, Store, StoreError, Table, SCHEMA_KEY,
};

/// The sled-backed store.
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    trees: Vec<(Table, sled::Tree)>,
    hooks: Hooks,
}

/// The file beside the sled database that says which schema version it holds (written at
/// every open, after the schema check), for tools that must not open the database.
pub const SCHEMA_FILE: &str = "credbroker-schema-version";

/// The file beside a sled store `store migrate` moved into PostgreSQL, saying when and by
/// whom, for `doctor` (which never opens sled): the store's own mark is what refuses it.
pub const MOVED_FILE: &str = "credbroker-moved-to-postgres";

/// Writes [`SCHEMA_FILE`] (a new file renamed over the old one). A failure is logged, not
/// fatal: the database itself is the authority.
fn record_schema_version(dir: &Path) {
    if let Err(e) = write_beside(dir, SCHEMA_FILE, &format!("{}\n", super::SCHEMA_VERSION)) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot record the store's schema version beside it (`credbroker doctor` will not see it)");
    }
}

/// Writes `text` as file `name` in `dir`, replacing what was there: through a temporary
/// created afresh (never through a link planted under either name: a rename replaces the
/// link itself), synced before the rename, the directory after it, so that after a crash
/// the file is the old one or the new one, never empty.
///
/// # Errors
/// When the file cannot be written; the temporary is removed.
pub(super) fn write_beside(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, dir.join(name)))
        .and_then(|()| std::fs::File::open(dir)?.sync_all());
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SledStore {
    /// The schema version the store in `dir` held when a broker last opened it, from the
    /// file [`SCHEMA_FILE`] beside its database (`None`: no broker of this release opened
    /// it yet). Reads no sled file: opening sled writes to it and takes its lock, which a
    /// check such as the doctor must not.
    ///
    /// # Errors
    /// When the file exists but cannot be read.
    pub fn recorded_schema_version(dir: &Path) -> std::io::Result<Option<String>> {
        match std::fs::read_to_string(dir.join(SCHEMA_FILE)) {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens (creating if needed) the store in `dir` and checks the schema version.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the directory cannot be opened or is locked by another
    /// process; [`StoreError::Schema`] on a version mismatch.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        Self::open_with_cache(dir, super::DEFAULT_SLED_CACHE_MIB * 1024 * 1024)
    }

    /// [`SledStore::open`] with a page cache of `cache_bytes`.
    ///
    /// # Errors
    /// As [`SledStore::open`].
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        // sled would create it readable by all (and the data directory above it).
        crate::keys::create_private_dir(dir)
            .map_err(|e| StoreError::Backend(format!("store {}: {e}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| {
                // sled reports a held directory lock as an I/O error ("could not acquire
                // lock", EWOULDBLOCK underneath).
                let text = e.to_string();
                let locked = matches!(&e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock)
                    || text.contains("could not acquire lock");
                if locked {
                    StoreError::Backend(format!(
                        "store {} is locked by another process (is the daemon running? stop it first)",
                        dir.display()
                    ))
                } else {
                    backend(format!("cannot open store {}: {text}", dir.display()))
                }
            })?;
        let mut trees = Vec::with_capacity(Table::ALL.len());
        for t in Table::ALL {
            trees.push((*t, db.open_tree(t.name()).map_err(backend)?));
        }
        let inner = Inner {
            db,
            trees,
            hooks: Hooks::default(),
        };
        inner.check_schema()?;
        record_schema_version(dir);
        Ok(SledStore {
            inner: Arc::new(inner),
        })
    }

    /// Runs blocking sled work on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|e| backend(format!("store task failed: {e}")))?
    }
}

impl Inner {
    /// Runs every change hook.
    fn notify(&self, changed: Changed) {
        self.hooks.run(changed);
    }

    fn tree(&self, table: Table) -> &sled::Tree {
        // Every table is opened in `open`; the index is the table's position in Table::ALL.
        let idx = Table::ALL.iter().position(|t| *t == table).unwrap_or(0);
        &self.trees[idx].1
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let found = self
            .tree(Table::Meta)
            .get(SCHEMA_KEY)
            .map_err(backend)?
            .map(|v| v.to_vec());
        match schema_upgrade(found.as_deref())? {
            Some(batch) => self.commit(batch),
            None => Ok(()),
        }
    }
}

impl Inner {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(table)
            .get(key.as_bytes())
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    /// At most `limit` keys starting with `prefix`, after `after` when given, in key order,
    /// ending with the one whose value brings the values read to `max_bytes` or more.
    fn scan(
        &self,
        table: Table,
        prefix: &str,
        after: Option<&str>,
        (limit, max_bytes): (usize, usize),
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        use std::ops::Bound;
        let from = match after {
            Some(a) if a.as_bytes() >= prefix.as_bytes() => Bound::Excluded(a.as_bytes()),
            _ => Bound::Included(prefix.as_bytes()),
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in self.tree(table).range::<&[u8], _>((from, Bound::Unbounded)) {
            if out.len() == limit || bytes >= max_bytes {
                break;
            }
            let (k, v) = item.map_err(backend)?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            let key = String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt {
                table: table.name(),
                key: String::from_utf8_lossy(&k).into_owned(),
            })?;
            bytes = bytes.saturating_add(v.len());
            out.push((key, v.to_vec()));
        }
        Ok(out)
    }

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        let trees: Vec<sled::Tree> = self.trees.iter().map(|(_, t)| t.clone()).collect();
        let index = |t: Table| Table::ALL.iter().position(|x| *x == t).unwrap_or(0);
        let result = trees.as_slice().transaction(|txs| {
            for op in &batch.ops {
                match op {
                    Op::ExpectAbsent(t, k) => {
                        if txs[index(*t)].get(k.as_bytes())?.is_some() {
                            return Err(ConflictableTransactionError::Abort(
                                StoreError::Precondition {
                                    table: t.name(),
                                    key: k.clone(),
                                    expected: "absent",
                                },
                            ));
                        }
                    }
                    Op::ExpectPresent(t, k) => {
                        if txs[index(*t)].get(k.as_bytes())?.is_none() {
                            return Err(ConflictableTransactionError::Abort(
                                StoreError::Precondition {
                                    table: t.name(),
                                    key: k.clone(),
                                    expected: "present",
                                },
                            ));
                        }
                    }
                    Op::ExpectValue(t, k, expected) => {
                        let found = txs[index(*t)].get(k.as_bytes())?;
                        if found.as_deref() != Some(expected.as_slice()) {
                            return Err(ConflictableTransactionError::Abort(
                                StoreError::Precondition {
                                    table: t.name(),
                                    key: k.clone(),
                                    expected: "unchanged",
                                },
                            ));
                        }
                    }
                    Op::Put(t, k, v) => {
                        txs[index(*t)].insert(k.as_bytes(), v.as_slice())?;
                    }
                    Op::Delete(t, k) => {
                        txs[index(*t)].remove(k.as_bytes())?;
                    }
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(backend(e)),
        }
        self.db.flush().map_err(backend)?;
        Ok(())
    }
}

#[async_trait]
impl Store for SledStore {
    async fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        // A point read runs on the calling worker: a lookup in sled's resident tree (on a
        // miss, one page read from the file, normally from the OS page cache) costs less
        // than handing it to the blocking pool and back, which was two context switches
        // per record a resolve had to read. Scans and commits (which fsync) stay there.
        self.inner.get(table, key)
    }

    async fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |s| s.scan(table, &prefix, None, (usize::MAX, usize::MAX)))
            .await
    }

    async fn scan_page(
        &self,
        table: Table,
        prefix: &str,
        after: Option<&str>,
        bounds: (usize, usize),
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let (prefix, after) = (prefix.to_owned(), after.map(str::to_owned));
        self.blocking(move |s| s.scan(table, &prefix, after.as_deref(), bounds))
            .await
    }

    async fn scan_each(
        &self,
        table: Table,
        prefix: &str,
        mut each: super::ScanEach,
    ) -> Result<(), StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |s| {
            for item in s.tree(table).scan_prefix(prefix.as_bytes()) {
                let (k, v) = item.map_err(backend)?;
                let key = std::str::from_utf8(&k).map_err(|_| StoreError::Corrupt {
                    table: table.name(),
                    key: String::from_utf8_lossy(&k).into_owned(),
                })?;
                each(key, &v)?;
            }
            Ok(())
        })
        .await
    }

    async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        // The blocking task runs to its end even if this future is dropped, and it runs the
        // change hooks itself right after the commit, whatever its outcome (a failed flush
        // leaves the outcome unknown): no caches outlive a change because a caller left.
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let changed = Changed::of(&batch);
            let result = inner.commit(batch);
            inner.notify(changed);
            result
        })
        .await
        .map_err(|e| backend(format!("store task failed: {e}")))
        .and_then(|r| r)
    }

    fn on_change(&self, hook: ChangeHook) {
        self.inner.hooks.add(hook);
    }

    fn backend(&self) -> &'static str {
        "sled"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let s = &store.inner;
        let mut b = Batch::new();
        b.push(Op::Put(Table::Tenants, "a".into(), b"1".to_vec()));
        s.commit(b).unwrap();
        let mut b = Batch::new();
        b.push(Op::Put(Table::Tenants, "b".into(), b"2".to_vec()))
            .push(Op::ExpectAbsent(Table::Tenants, "a".into()));
        assert!(matches!(s.commit(b), Err(StoreError::Precondition { .. })));
        assert!(s.get(Table::Tenants, "b").unwrap().is_none());
        assert_eq!(
            s.scan(Table::Tenants, "", None, (usize::MAX, usize::MAX))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_version_1_store_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let mut b = Batch::new();
            b.push(Op::Put(Table::Meta, "schema_version".into(), b"1".to_vec()));
            store.inner.commit(b).unwrap();
        }
        // sled releases its directory lock when its background threads have stopped, which
        // may be a moment after the last handle is dropped.
        let store = (0..100)
            .find_map(|_| {
                SledStore::open(dir.path()).ok().or_else(|| {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    None
                })
            })
            .unwrap();
        assert_eq!(
            store.inner.get(Table::Meta, "schema_version").unwrap(),
            Some(SCHEMA_VERSION.to_string().into_bytes())
        );
    }

    #[test]
    fn schema_version_is_checked_and_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let s = &store.inner;
            assert!(
                SledStore::open(dir.path()).is_err(),
                "second open must fail"
            );
            let mut b = Batch::new();
            b.push(Op::Put(
                Table::Meta,
                "schema_version".into(),
                b"99".to_vec(),
            ));
            s.commit(b).unwrap();
        }
        // sled's flusher thread may hold the directory lock a moment after the drop.
        let mut reopened = SledStore::open(dir.path());
        for _ in 0..100 {
            if matches!(reopened, Err(StoreError::Schema { .. })) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            reopened = SledStore::open(dir.path());
        }
        assert!(matches!(reopened, Err(StoreError::Schema { .. })));
    }
}
