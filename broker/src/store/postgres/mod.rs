//! [`Store`] on PostgreSQL, shared by every replica of a deployment.
//!
//! One table holds every record (`credbroker_records`: table name, key, value), its primary
//! key the uniqueness of each (table, key): an exclusive identifier, a callback state or an
//! intake link exists once, whichever replica writes it. A commit is one transaction:
//! - it takes a transaction-scoped advisory lock, so commits apply one at a time across
//!   replicas and a precondition on an absent record cannot be raced;
//! - a record that must be absent and is then written is `INSERT`ed without a conflict
//!   clause, so the primary key refuses a second claim even without that lock;
//! - a record that must be present or unchanged is read `FOR UPDATE`, so no other
//!   transaction changes it before this one ends;
//! - it replaces the change generation (`credbroker_state`, a random value: see
//!   [`new_generation`]) and notifies `credbroker_changes` with it, both visible exactly
//!   when the records are — unless it wrote replica-private rows only
//!   ([`Table::replica_private`]: last-use times), which no other replica caches.
//!
//! Every replica reports a change to its caches ([`Store::on_change`]) for its own commits,
//! for every notification (a dedicated listening connection, re-established when lost) and
//! whenever [`Store::sync`] finds the generation changed: a resolve reads the generation first,
//! so it is judged against every change acknowledged anywhere before it started, whether or
//! not the notification has arrived.
//!
//! Connections come from a bounded pool; each operation has a deadline (`[store]
//! timeout_ms`), past which it fails rather than hold a request. The URL is never logged.

mod connect;
mod listen;
mod schema;

pub(crate) use connect::{connection, writable_connection};

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use super::{
    schema_upgrade, Batch, ChangeHook, Changed, Hooks, Op, Store, StoreError, StoreSettings, Table,
};

/// The notification channel of committed changes (payload: the new generation).
const CHANNEL: &str = "credbroker_changes";

/// The PostgreSQL-backed store.
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    timeout: Duration,
    hooks: Hooks,
    /// The change generation whose state this process's caches reflect at least.
    seen: AtomicI64,
    /// Generations judged by [`Inner::saw`] or set by a commit so far (a count): the
    /// listener reads again when another was judged while it read (which may have been
    /// newer, or older).
    saws: std::sync::atomic::AtomicU64,
    /// Dropped with the store: stops the listening connection.
    _stop: tokio::sync::watch::Sender<()>,
}

/// What a commit did to the change generation.
struct Replaced {
    /// The generation the commit replaced.
    replaced: i64,
    /// The generation it wrote.
    generation: i64,
}

/// A fresh change generation: random, not a counter, so that a database failed over to a
/// standby that lost the last commits can never show a replica a value it already saw for
/// another state (a counter would count up to it again).
fn new_generation() -> Result<i64, StoreError> {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| StoreError::Backend("system CSPRNG failed".into()))?;
    Ok(i64::from_le_bytes(bytes) & i64::MAX)
}

/// A backend error, without anything the URL could have put into it.
pub(super) fn db_error(e: &tokio_postgres::Error) -> StoreError {
    StoreError::Backend(format!("database: {e}"))
}

/// A connection that could not be made, with its cause ("database does not allow writes",
/// "Connection refused"): the client's own errors, never a server's message about a row.
fn connect_error(e: &tokio_postgres::Error) -> StoreError {
    let cause = if e.as_db_error().is_none() {
        std::error::Error::source(e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default()
    } else {
        String::new()
    };
    StoreError::Backend(format!("database: {e}{cause}"))
}

fn pool_error(e: &deadpool_postgres::PoolError) -> StoreError {
    // A connection the pool could not make says why ("database does not allow writes");
    // a server's own message about a row is never quoted.
    let cause = match e {
        deadpool_postgres::PoolError::Backend(pg) if pg.as_db_error().is_none() => {
            std::error::Error::source(pg)
                .map(|s| format!(": {s}"))
                .unwrap_or_default()
        }
        _ => String::new(),
    };
    StoreError::Backend(format!("database connection: {e}{cause}"))
}

/// Runs `work` within `limit`.
pub(crate) async fn deadline<T>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(StoreError::Backend(format!(
            "database operation timed out after {} ms",
            limit.as_millis()
        )))
    })
}

impl PgStore {
    /// Connects, applies the missing migrations (one broker at a time) and checks the schema
    /// version of the records.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the URL is missing or refused, or the database is
    /// unreachable; [`StoreError::Schema`] on a version this build does not read.
    pub async fn open(settings: &StoreSettings) -> Result<PgStore, StoreError> {
        let (config, tls) = writable_connection(settings)?;
        let timeout = Duration::from_millis(settings.timeout_ms.max(1));
        deadline(timeout * 4, async {
            let (client, conn) = config
                .connect(tls.clone())
                .await
                .map_err(|e| connect_error(&e))?;
            let driver = tokio::spawn(conn);
            let migrated = schema::migrate(&client).await;
            drop(client);
            let _ = driver.await;
            migrated
        })
        .await?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| StoreError::Backend(format!("database pool: {e}")))?;
        let (stop, stopped) = tokio::sync::watch::channel(());
        let inner = Arc::new(Inner {
            pool,
            timeout,
            hooks: Hooks::default(),
            seen: AtomicI64::new(0),
            saws: std::sync::atomic::AtomicU64::new(0),
            _stop: stop,
        });
        let store = PgStore { inner };
        store.check_schema().await?;
        if store
            .get(Table::Meta, super::MIGRATING_KEY)
            .await?
            .is_some()
        {
            return Err(StoreError::Backend(
                "a `credbroker store migrate` into this database did not finish: it may lack records (operators, exclusive identifiers); drop and recreate the database and migrate again".into(),
            ));
        }
        store.sync().await?;
        listen::spawn(Arc::downgrade(&store.inner), config, tls, stopped);
        Ok(store)
    }

    async fn check_schema(&self) -> Result<(), StoreError> {
        // Two brokers opening a new database at once: the loser's precondition fails and it
        // reads the winner's version.
        for _ in 0..2 {
            let found = self.get(Table::Meta, super::SCHEMA_KEY).await?;
            match schema_upgrade(found.as_deref())? {
                None => return Ok(()),
                Some(batch) => {
                    // Not under brokers that read the old version at their start, and under
                    // the offline hold (as a migration: one that claims its replica id after
                    // the count finds the hold when it joins).
                    // Unique to this attempt: a holder's name is its claim (two brokers in
                    // containers, both pid 1, would otherwise both hold it, and the first to
                    // finish release it under the second).
                    let holder = format!(
                        "schema-upgrade:{}:{}",
                        std::process::id(),
                        credbroker_providers::random_alphanumeric(12).map_err(|e| {
                            StoreError::Backend(format!("schema upgrade claim token: {e}"))
                        })?
                    );
                    let held = found.is_some();
                    if held {
                        let ttl = std::time::Duration::from_secs(600);
                        if !self
                            .claim_lease(crate::replica::OFFLINE, &holder, ttl)
                            .await?
                        {
                            return Err(StoreError::Backend(
                                "cannot upgrade the records' schema: an offline change (a KEK rotation, an operator registered offline, a store move, or another broker's schema upgrade — one interrupted holds it for up to 10 minutes) holds this store; start the broker when it has ended".into(),
                            ));
                        }
                    }
                    let upgraded = async {
                        if held {
                            let running = self.live_leases("replica/").await?;
                            if running > 0 {
                                return Err(schema::replicas_run(
                                    "upgrade the records' schema",
                                    i64::try_from(running).unwrap_or(i64::MAX),
                                ));
                            }
                        }
                        self.commit(batch).await
                    }
                    .await;
                    if held {
                        let _ = self.release_lease(crate::replica::OFFLINE, &holder).await;
                    }
                    match upgraded {
                        Err(StoreError::Precondition { .. }) => continue,
                        other => return other,
                    }
                }
            }
        }
        Err(StoreError::Backend(
            "the store's schema version kept changing while it was opened".into(),
        ))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.inner.pool.get().await.map_err(|e| pool_error(&e))
    }
}

impl Inner {
    fn notify(&self, changed: Changed) {
        self.hooks.run(changed);
    }

    /// Reports a change when `generation` is not the last one recorded. The hooks run before
    /// the generation is recorded: a concurrent caller that reads the same generation either
    /// runs them too or finds them already run. (Out-of-order callers only cause one more
    /// report, never a missed one.)
    fn saw(&self, generation: i64) {
        self.saws.fetch_add(1, Ordering::AcqRel);
        if self.seen.load(Ordering::Acquire) != generation {
            // Another replica's change: which tables it touched is not known here.
            self.notify(Changed::ALL);
            self.seen.store(generation, Ordering::Release);
        }
    }

    /// Applies `batch`, which changes the tables `own`. Returns the generation it replaced and
    /// wrote, or `None` when it wrote replica-private rows only and left the generation.
    async fn commit(&self, batch: &Batch, own: Changed) -> Result<Option<Replaced>, StoreError> {
        let mut client = self.pool.get().await.map_err(|e| pool_error(&e))?;
        let tx = client.transaction().await.map_err(|e| db_error(&e))?;
        // Commits that change what other replicas read take the cluster-wide lock. A batch of
        // this replica's private rows (the last-use flush: up to a thousand rows a chunk) does
        // not: no other replica writes those rows, and their row locks are all it needs, so a
        // long flush never holds up other replicas' admin, callback or intake commits.
        if own.concerns_other_replicas() {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::COMMIT_LOCK])
                .await
                .map_err(|e| db_error(&e))?;
        }
        let prepare = |sql: &'static str| {
            let tx = &tx;
            async move { tx.prepare_cached(sql).await.map_err(|e| db_error(&e)) }
        };
        let lock_row =
            prepare("SELECT value FROM credbroker_records WHERE tbl = $1 AND key = $2 FOR UPDATE")
                .await?;
        let insert =
            prepare("INSERT INTO credbroker_records (tbl, key, value) VALUES ($1, $2, $3)").await?;
        let upsert = prepare(
            "INSERT INTO credbroker_records (tbl, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value",
        )
        .await?;
        let delete = prepare("DELETE FROM credbroker_records WHERE tbl = $1 AND key = $2").await?;
        // A precondition's record, read and locked until the transaction ends.
        let locked = |t: Table, k: &String| {
            let (tx, lock_row) = (&tx, &lock_row);
            let k = k.clone();
            async move {
                let row = tx
                    .query_opt(lock_row, &[&t.name(), &k])
                    .await
                    .map_err(|e| db_error(&e))?;
                row.map(|r| r.try_get::<_, Vec<u8>>(0))
                    .transpose()
                    .map_err(|e| db_error(&e))
            }
        };
        let failed = |t: &Table, k: &str, expected: &'static str| StoreError::Precondition {
            table: t.name(),
            key: k.to_owned(),
            expected,
        };
        // Records this batch found absent and has not written since: written with a plain
        // INSERT, so the primary key itself refuses a concurrent claim.
        let mut absent: HashSet<(Table, &str)> = HashSet::new();
        for op in &batch.ops {
            match op {
                Op::ExpectAbsent(t, k) => {
                    if locked(*t, k).await?.is_some() {
                        return Err(failed(t, k, "absent"));
                    }
                    absent.insert((*t, k.as_str()));
                }
                Op::ExpectPresent(t, k) => {
                    if locked(*t, k).await?.is_none() {
                        return Err(failed(t, k, "present"));
                    }
                }
                Op::ExpectValue(t, k, expected) => {
                    if locked(*t, k).await?.as_deref() != Some(expected.as_slice()) {
                        return Err(failed(t, k, "unchanged"));
                    }
                }
                Op::Put(t, k, v) => {
                    if absent.remove(&(*t, k.as_str())) {
                        if let Err(e) = tx.execute(&insert, &[&t.name(), k, v]).await {
                            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
                            {
                                return Err(failed(t, k, "absent"));
                            }
                            return Err(db_error(&e));
                        }
                    } else {
                        tx.execute(&upsert, &[&t.name(), k, v])
                            .await
                            .map_err(|e| db_error(&e))?;
                    }
                }
                Op::Delete(t, k) => {
                    absent.remove(&(*t, k.as_str()));
                    tx.execute(&delete, &[&t.name(), k])
                        .await
                        .map_err(|e| db_error(&e))?;
                }
            }
        }
        // A batch of replica-private rows only (last-use times) changes nothing another
        // replica caches: the generation stays, so their caches stay warm.
        if !own.concerns_other_replicas() {
            tx.commit().await.map_err(|e| db_error(&e))?;
            return Ok(None);
        }
        // The generation this commit replaces: if it is not the one this replica has seen,
        // another replica's change came in between and is reported with this one.
        let replaced: i64 = tx
            .query_one(
                "SELECT generation FROM credbroker_state WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await
            .map_err(|e| db_error(&e))?
            .try_get(0)
            .map_err(|e| db_error(&e))?;
        let generation = new_generation()?;
        tx.execute(
            "UPDATE credbroker_state SET generation = $1 WHERE id = 1",
            &[&generation],
        )
        .await
        .map_err(|e| db_error(&e))?;
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &generation.to_string()],
        )
        .await
        .map_err(|e| db_error(&e))?;
        tx.commit().await.map_err(|e| db_error(&e))?;
        Ok(Some(Replaced {
            replaced,
            generation,
        }))
    }
}

impl PgStore {
    /// The schema version recorded in the database, without migrating or upgrading
    /// anything (`None`: no broker has opened it yet). For the doctor.
    ///
    /// # Errors
    /// When the database cannot be reached or read.
    pub async fn read_schema_version(settings: &StoreSettings) -> Result<Option<String>, String> {
        let mut client = crate::audit::chains::connect(settings).await?;
        let tx = client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .map_err(|e| db_error(&e).to_string())?;
        let exists: bool = tx
            .query_one("SELECT to_regclass('credbroker_records') IS NOT NULL", &[])
            .await
            .map_err(|e| db_error(&e).to_string())?
            .try_get(0)
            .map_err(|e| db_error(&e).to_string())?;
        if !exists {
            return Ok(None);
        }
        let row = tx
            .query_opt(
                "SELECT value FROM credbroker_records WHERE tbl = $1 AND key = $2",
                &[&Table::Meta.name(), &super::SCHEMA_KEY],
            )
            .await
            .map_err(|e| db_error(&e).to_string())?;
        row.map(|r| {
            r.try_get::<_, Vec<u8>>(0)
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        })
        .transpose()
        .map_err(|e| db_error(&e).to_string())
    }

    /// At most `limit` keys starting with `prefix`, after `after` when given, in key order:
    /// one query under the store's deadline.
    async fn page(
        &self,
        table: Table,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = deadline(self.inner.timeout, async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(
                    "SELECT key, value FROM credbroker_records \
                     WHERE tbl = $1 AND key >= $2 AND starts_with(key, $2) \
                     AND ($3::text IS NULL OR key > $3) ORDER BY key LIMIT $4",
                )
                .await
                .map_err(|e| db_error(&e))?;
            client
                .query(&stmt, &[&table.name(), &prefix, &after, &limit])
                .await
                .map_err(|e| db_error(&e))
        })
        .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(|e| db_error(&e))
    }
}

#[async_trait]
impl Store for PgStore {
    async fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        deadline(self.inner.timeout, async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached("SELECT value FROM credbroker_records WHERE tbl = $1 AND key = $2")
                .await
                .map_err(|e| db_error(&e))?;
            let row = client
                .query_opt(&stmt, &[&table.name(), &key])
                .await
                .map_err(|e| db_error(&e))?;
            row.map(|r| r.try_get(0))
                .transpose()
                .map_err(|e| db_error(&e))
        })
        .await
    }

    async fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        deadline(self.inner.timeout, async {
            let client = self.client().await?;
            // `key >= prefix` lets the primary key's index start at the prefix; the C
            // collation orders keys by their bytes, as sled does.
            let stmt = client
                .prepare_cached(
                    "SELECT key, value FROM credbroker_records \
                     WHERE tbl = $1 AND key >= $2 AND starts_with(key, $2) ORDER BY key",
                )
                .await
                .map_err(|e| db_error(&e))?;
            let rows = client
                .query(&stmt, &[&table.name(), &prefix])
                .await
                .map_err(|e| db_error(&e))?;
            rows.into_iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<Vec<_>, tokio_postgres::Error>>()
                .map_err(|e| db_error(&e))
        })
        .await
    }

    async fn scan_each(
        &self,
        table: Table,
        prefix: &str,
        mut each: super::ScanEach,
    ) -> Result<(), StoreError> {
        // Pages in key order, each one query under the store's deadline: a pass over a large
        // table neither holds it whole nor runs as one long statement. Not a snapshot: a row
        // committed meanwhile behind the page being read is not seen (the passes are
        // periodic, or run at start before any change of this process).
        const PAGE: usize = 500;
        let mut after: Option<String> = None;
        loop {
            let rows = self.page(table, prefix, after.as_deref(), PAGE).await?;
            let full = rows.len() == PAGE;
            for (key, value) in rows {
                each(&key, &value)?;
                after = Some(key);
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn scan_page(
        &self,
        table: Table,
        prefix: &str,
        after: Option<&str>,
        (limit, max_bytes): (usize, usize),
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        // Read in steps of at most 100 rows, so that large values end the page after about
        // max_bytes, not after `limit` of them.
        const STEP: usize = 100;
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        let mut bytes = 0usize;
        loop {
            let from = out.last().map_or(after, |(k, _)| Some(k.as_str()));
            let want = STEP.min(limit - out.len());
            let rows = self.page(table, prefix, from, want).await?;
            let full = rows.len() == want;
            for row in rows {
                if bytes >= max_bytes {
                    return Ok(out);
                }
                bytes = bytes.saturating_add(row.1.len());
                out.push(row);
            }
            if !full || out.len() == limit || bytes >= max_bytes {
                return Ok(out);
            }
        }
    }

    async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        // The task runs to its end even if this future is dropped, and reports the change
        // whatever the outcome (a commit whose answer was lost may have happened).
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let own = Changed::of(&batch);
            // One round trip per operation: a large batch (a KEK rotation re-wraps every data
            // key in one) gets time for each, beyond the usual deadline.
            let ops = u32::try_from(batch.ops.len()).unwrap_or(u32::MAX);
            let budget = inner.timeout + Duration::from_millis(2) * ops;
            let result = deadline(budget, inner.commit(&batch, own)).await;
            let changed = match &result {
                // Commits apply one at a time: a generation replaced that this replica had
                // not seen is another replica's change in between.
                Ok(Some(r)) if r.replaced != inner.seen.load(Ordering::Acquire) => Changed::ALL,
                Ok(_) => own,
                // An outcome not known: only its own tables for replica-private rows (they
                // never touch the generation), every table otherwise.
                Err(_) if own.concerns_other_replicas() => Changed::ALL,
                Err(_) => own,
            };
            inner.notify(changed);
            if let Ok(Some(r)) = &result {
                inner.saws.fetch_add(1, Ordering::AcqRel);
                inner.seen.store(r.generation, Ordering::Release);
            }
            result.map(|_| ())
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))
        .and_then(|r| r)
    }

    async fn sync(&self) -> Result<(), StoreError> {
        let generation = deadline(self.inner.timeout, async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached("SELECT generation FROM credbroker_state WHERE id = 1")
                .await
                .map_err(|e| db_error(&e))?;
            let row = client
                .query_one(&stmt, &[])
                .await
                .map_err(|e| db_error(&e))?;
            row.try_get::<_, i64>(0).map_err(|e| db_error(&e))
        })
        .await?;
        self.inner.saw(generation);
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    async fn claim_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        deadline(self.inner.timeout, async {
            let client = self.client().await?;
            // Expiry on the database's clock: replicas' clocks never decide who holds it.
            let stmt = client
                .prepare_cached(
                    "INSERT INTO credbroker_leases (name, holder, expires_at) \
                     VALUES ($1, $2, now() + make_interval(secs => $3::bigint / 1000.0)) \
                     ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
                     WHERE credbroker_leases.holder = EXCLUDED.holder OR credbroker_leases.expires_at <= now() \
                     RETURNING holder",
                )
                .await
                .map_err(|e| db_error(&e))?;
            let row = client
                .query_opt(&stmt, &[&name, &holder, &ttl_ms])
                .await
                .map_err(|e| db_error(&e))?;
            Ok(row.is_some())
        })
        .await
    }

    async fn live_leases(&self, prefix: &str) -> Result<usize, StoreError> {
        deadline(self.inner.timeout, async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT count(*) FROM credbroker_leases WHERE starts_with(name, $1) AND expires_at > now()",
                    &[&prefix],
                )
                .await
                .map_err(|e| db_error(&e))?;
            Ok(usize::try_from(row.try_get::<_, i64>(0).map_err(|e| db_error(&e))?).unwrap_or(0))
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        deadline(self.inner.timeout, async {
            let client = self.client().await?;
            client
                .execute(
                    "DELETE FROM credbroker_leases WHERE name = $1 AND holder = $2",
                    &[&name, &holder],
                )
                .await
                .map_err(|e| db_error(&e))?;
            Ok(())
        })
        .await
    }

    fn on_change(&self, hook: ChangeHook) {
        self.inner.hooks.add(hook);
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

#[cfg(test)]
mod tests;
