//! What the PostgreSQL store must do beyond the conformance suite (`store_conformance.rs`),
//! because several brokers share it: races decided by the database's own constraint and row
//! locks whatever the timing, changes seen by the other replicas at their next `sync` (also
//! without a notification, after a forged one, after a generation rolled back), and a stalled
//! commit-lock holder that does not freeze the others' reads.

use std::sync::Arc;

use credbroker::ids::TenantId;
use credbroker::store::records::{LastUseKind, Records};
use credbroker::store::{Batch, Op, PgStore, Store, StoreError, StoreSettings, Table};
use credbroker_tests::postgres::{session, TestPostgres};
use credbroker_tests::tenant_record as tenant;
use serde_json::json;

/// A fresh database on `pg`: its URL and `[store]` settings (`timeout_ms` given or default).
async fn pg_database(pg: &TestPostgres, timeout_ms: Option<u64>) -> (String, StoreSettings) {
    let url = pg.database().await;
    let settings = StoreSettings {
        backend: credbroker::store::Backend::Postgres,
        url: Some(url.clone().into()),
        timeout_ms: timeout_ms.unwrap_or(StoreSettings::default().timeout_ms),
        ..StoreSettings::default()
    };
    (url, settings)
}

/// Opens a store (a replica's view) with `settings`.
async fn pg_store(settings: &StoreSettings) -> Arc<dyn Store> {
    Arc::new(PgStore::open(settings).await.unwrap())
}

/// Races decided inside PostgreSQL, whatever the timing: another session holds a conflicting
/// write open while the store commits, so only the database's own constraint and row locks
/// can refuse the store's write once that session commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_decides_races_with_its_constraints_and_row_locks() {
    let pg = TestPostgres::start();
    let (url, settings) = pg_database(&pg, None).await;
    let store: Arc<dyn Store> = pg_store(&settings).await;
    let mut other = session(&url).await;
    let row_exists = "SELECT 1 FROM credbroker_records WHERE tbl = $1 AND key = $2";

    // A claim of an identifier another session is inserting: the primary key refuses it.
    let tx = other.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO credbroker_records (tbl, key, value) VALUES ('identifiers', 'exclusive:held', '{}')",
        &[],
    )
    .await
    .unwrap();
    let mut claim = Batch::new();
    claim
        .push(Op::ExpectAbsent(
            Table::Identifiers,
            "exclusive:held".into(),
        ))
        .push(Op::Put(
            Table::Identifiers,
            "exclusive:held".into(),
            b"mine".to_vec(),
        ));
    let racing = tokio::spawn({
        let store = store.clone();
        async move { store.commit(claim).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !racing.is_finished(),
        "the claim waits on the other session's key"
    );
    tx.commit().await.unwrap();
    match racing.await.unwrap() {
        Err(StoreError::Precondition { expected, .. }) => assert_eq!(expected, "absent"),
        other => panic!("the second claim must be refused, got {other:?}"),
    }
    assert!(other
        .query_opt(row_exists, &[&"identifiers", &"exclusive:held"])
        .await
        .unwrap()
        .is_some());

    // A record changed by another session while the store replaces it as read: the row lock
    // makes the store see the change, so no update is lost.
    let mut b = Batch::new();
    b.push(Op::Put(Table::Tenants, "locked".into(), b"v1".to_vec()));
    store.commit(b).await.unwrap();
    let tx = other.transaction().await.unwrap();
    tx.execute(
        "UPDATE credbroker_records SET value = 'v2' WHERE tbl = 'tenants' AND key = 'locked'",
        &[],
    )
    .await
    .unwrap();
    let mut replace = Batch::new();
    replace
        .push(Op::ExpectValue(
            Table::Tenants,
            "locked".into(),
            b"v1".to_vec(),
        ))
        .push(Op::Put(Table::Tenants, "locked".into(), b"v3".to_vec()));
    let racing = tokio::spawn({
        let store = store.clone();
        async move { store.commit(replace).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !racing.is_finished(),
        "the replacement waits on the row lock"
    );
    tx.commit().await.unwrap();
    match racing.await.unwrap() {
        Err(StoreError::Precondition { expected, .. }) => assert_eq!(expected, "unchanged"),
        other => panic!("a replacement of a changed record must be refused, got {other:?}"),
    }
    assert_eq!(
        store
            .get(Table::Tenants, "locked")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"v2"[..])
    );
}

/// Two brokers sharing one database: a change committed through one is judged by the other's
/// Renames the tenant `shared` from outside the store, as another replica would, and moves
/// the change generation without a notification (say the listening connection was down).
async fn rename_without_notice(a: &Arc<dyn Store>, other: &mut tokio_postgres::Client, name: &str) {
    let raw = a.get(Table::Tenants, "shared").await.unwrap().unwrap();
    let mut value: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    value["name"] = json!(name);
    let tx = other.transaction().await.unwrap();
    tx.execute(
        "UPDATE credbroker_records SET value = $1 WHERE tbl = 'tenants' AND key = 'shared'",
        &[&serde_json::to_vec(&value).unwrap()],
    )
    .await
    .unwrap();
    tx.execute(
        "UPDATE credbroker_state SET generation = generation + 1",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// next read after `sync` (what every resolve does first), without waiting for the
/// notification; the notification then reaches the other's hooks on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_see_each_others_changes() {
    let pg = TestPostgres::start();
    let (url, settings) = pg_database(&pg, None).await;
    let a: Arc<dyn Store> = pg_store(&settings).await;
    let b: Arc<dyn Store> = pg_store(&settings).await;
    let (on_a, on_b) = (
        Records::with_cache(a.clone(), 100),
        Records::with_cache(b.clone(), 100),
    );
    let mut batch = Batch::new();
    batch.create(&tenant("shared"));
    on_a.commit(batch).await.unwrap();
    let id = TenantId::parse("shared").unwrap();
    on_b.sync().await.unwrap();
    assert_eq!(on_b.shared_tenant(&id).await.unwrap().unwrap().name, "");

    for round in 0..20 {
        let read = on_a.tenant(&id).await.unwrap().unwrap();
        let mut renamed = read.value.clone();
        renamed.name = format!("round {round}");
        let mut batch = Batch::new();
        batch.replace(&read, &renamed);
        on_a.commit(batch).await.unwrap();
        on_b.sync().await.unwrap();
        assert_eq!(
            on_b.shared_tenant(&id).await.unwrap().unwrap().name,
            format!("round {round}"),
            "a change acknowledged on one replica is judged on the other from its next sync"
        );
    }

    // A change whose notification never came (say the listening connection was down): the
    // generation read alone makes the other replica judge it.
    let mut other = session(&url).await;
    rename_without_notice(&a, &mut other, "changed without a notification").await;
    on_b.sync().await.unwrap();
    assert_eq!(
        on_b.shared_tenant(&id).await.unwrap().unwrap().name,
        "changed without a notification"
    );

    // Another change not notified, then a commit of this replica in another table: the
    // generation that commit replaces is not the one it had seen, so the commit reports every
    // table, and the record changed behind it is not served from the cache.
    rename_without_notice(&a, &mut other, "changed before the other's commit").await;
    let mut batch = Batch::new();
    batch.push(Op::Put(
        Table::Identifiers,
        "exclusive:unrelated".into(),
        b"{}".to_vec(),
    ));
    on_b.commit(batch).await.unwrap();
    on_b.sync().await.unwrap();
    assert_eq!(
        on_b.shared_tenant(&id).await.unwrap().unwrap().name,
        "changed before the other's commit"
    );

    // The notification alone empties the other's caches too.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    b.on_change(Arc::new(move |_| {
        let _ = tx.send(());
    }));
    let read = on_a.tenant(&id).await.unwrap().unwrap();
    let mut renamed = read.value.clone();
    renamed.name = "notified".into();
    let mut batch = Batch::new();
    batch.replace(&read, &renamed);
    on_a.commit(batch).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
        .await
        .expect("the other replica is notified")
        .unwrap();
    assert_eq!(
        on_b.shared_tenant(&id).await.unwrap().unwrap().name,
        "notified"
    );
    // A notification is a wake-up to read the generation: the reads of the notifications
    // still in flight (this replica's own commit's among them) may each report the change
    // once more before they settle.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    while rx.try_recv().is_ok() {}

    // Last-use rows are each replica's own and read straight from the store: writing them
    // changes no generation, so the other replica's caches stay warm.
    let cached = on_b.cached_records();
    assert!(cached >= 1);
    let mut batch = Batch::new();
    batch.put_last_use(1, LastUseKind::Binding, "b1", 1);
    on_a.commit(batch).await.unwrap();
    on_b.sync().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        rx.try_recv().is_err(),
        "no change reported to the other replica"
    );
    assert_eq!(on_b.cached_records(), cached);
    assert_eq!(
        on_b.last_uses().await.unwrap().len(),
        1,
        "yet the row is there"
    );
}

/// The change generation is a value to compare, not a counter to trust: a forged
/// notification (any database login may NOTIFY) or a failover that brings the generation
/// back to an older value never makes a replica skip a later change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_follow_a_forged_or_rolled_back_generation() {
    let pg = TestPostgres::start();
    let (url, settings) = pg_database(&pg, None).await;
    let a: Arc<dyn Store> = pg_store(&settings).await;
    let b: Arc<dyn Store> = pg_store(&settings).await;
    let (on_a, on_b) = (Records::with_cache(a, 100), Records::with_cache(b, 100));
    let id = TenantId::parse("gen").unwrap();
    let rename = |name: &'static str| {
        let on_a = on_a.clone();
        let id = id.clone();
        async move {
            let read = on_a.tenant(&id).await.unwrap().unwrap();
            let mut renamed = read.value.clone();
            renamed.name = name.into();
            let mut batch = Batch::new();
            batch.replace(&read, &renamed);
            on_a.commit(batch).await.unwrap();
        }
    };
    let mut batch = Batch::new();
    batch.create(&tenant("gen"));
    on_a.commit(batch).await.unwrap();
    let sql = session(&url).await;
    let name_on_b = || {
        let on_b = on_b.clone();
        let id = id.clone();
        async move {
            on_b.sync().await.unwrap();
            on_b.shared_tenant(&id).await.unwrap().unwrap().name.clone()
        }
    };

    // A forged notification with the highest generation there is.
    assert_eq!(name_on_b().await, "");
    // Read again once b's listening connection is up (its start forgets what is cached).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(name_on_b().await, "");
    let cached = on_b.cached_records();
    assert!(cached > 0);
    sql.batch_execute("NOTIFY credbroker_changes, '9223372036854775807'")
        .await
        .unwrap();
    sql.batch_execute("NOTIFY credbroker_changes, 'not a number'")
        .await
        .unwrap();
    // A wake-up only: the real generation has not moved, so nothing cached is dropped (a
    // forger's flood of them emptied every replica's cache).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(on_b.cached_records(), cached, "the cache was emptied");
    rename("after the forged notification").await;
    assert_eq!(name_on_b().await, "after the forged notification");

    // A failover that lost the last commit: records and generation back where they were.
    let before: (Vec<u8>, i64) = {
        let r = sql
            .query_one(
                "SELECT r.value, s.generation FROM credbroker_records r, credbroker_state s WHERE r.tbl = 'tenants' AND r.key = 'gen'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    rename("lost in the failover").await;
    assert_eq!(name_on_b().await, "lost in the failover");
    sql.execute(
        "UPDATE credbroker_records SET value = $1 WHERE tbl = 'tenants' AND key = 'gen'",
        &[&before.0],
    )
    .await
    .unwrap();
    sql.execute("UPDATE credbroker_state SET generation = $1", &[&before.1])
        .await
        .unwrap();
    assert_eq!(
        name_on_b().await,
        "after the forged notification",
        "the older state is read again, not the cached lost one"
    );
    rename("after the failover").await;
    assert_eq!(name_on_b().await, "after the failover");

    // A replica that read (and cached) a commit before hearing of it, which the failover
    // then lost: the promoted server's generation is the one the replica last saw, so no
    // generation read tells them apart. Its listening connection was cut by the failover;
    // the reconnection forgets every cached record.
    let kept: Vec<u8> = sql
        .query_one(
            "SELECT value FROM credbroker_records WHERE tbl = 'tenants' AND key = 'gen'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    rename("read, then lost in the failover").await;
    assert_eq!(name_on_b().await, "read, then lost in the failover");
    sql.execute(
        "UPDATE credbroker_records SET value = $1 WHERE tbl = 'tenants' AND key = 'gen'",
        &[&kept],
    )
    .await
    .unwrap();
    assert_eq!(
        name_on_b().await,
        "read, then lost in the failover",
        "the generation alone cannot tell (the case this guards)"
    );
    sql.batch_execute(
        // This test's database only: the cluster is shared with tests running beside it.
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'credbroker-listen' AND datname = current_database()",
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while name_on_b().await != "after the failover" {
        assert!(
            std::time::Instant::now() < deadline,
            "the record lost in the failover is still served after the reconnection"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A broker stalled while holding the commit lock (paused, or its network gone) cannot
/// freeze the others: their commits fail at the deadline, the server cancels the wait too, and
/// reads — every resolve's — go on; once the lock is free, commits succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_survives_a_stalled_commit_lock_holder() {
    let pg = TestPostgres::start();
    let (url, mut settings) = pg_database(&pg, Some(1000)).await;
    settings.pool_size = 4;
    let store: Arc<dyn Store> = pg_store(&settings).await;
    let mut stalled = session(&url).await;
    let tx = stalled.transaction().await.unwrap();
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&0x6362_636f_6d6d_6974_i64],
    )
    .await
    .unwrap();
    for i in 0..6 {
        let mut b = Batch::new();
        b.push(Op::Put(
            Table::Tenants,
            format!("stalled{i}"),
            b"x".to_vec(),
        ));
        let started = std::time::Instant::now();
        assert!(store.commit(b).await.is_err(), "the lock is held");
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
        // Reads (and the generation every resolve reads) go on, on every pooled connection.
        store.sync().await.unwrap();
        assert!(store
            .get(Table::Tenants, "stalled0")
            .await
            .unwrap()
            .is_none());
    }
    tx.rollback().await.unwrap();
    let mut b = Batch::new();
    b.push(Op::Put(Table::Tenants, "after".into(), b"x".to_vec()));
    store.commit(b).await.unwrap();
}

/// Under synchronous replication a commit is acknowledged only once its standby has it
/// (`synchronous_commit = on` on every connection, whatever the role or database says): with
/// the standby gone (a name no standby has), a commit fails at the store's deadline, never
/// succeeds. (PostgreSQL's statement timeout, `timeout_ms` here too, does not cut the wait
/// short: it is disabled before the commit runs; a cancelled wait would answer success.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_the_synchronous_standby_has_not_is_never_acknowledged() {
    let pg = TestPostgres::own();
    let (url, settings) = pg_database(&pg, Some(1000)).await;
    let store: Arc<dyn Store> = pg_store(&settings).await;
    let sql = session(&url).await;
    let standby = async |names: &str| {
        sql.batch_execute(&format!(
            "ALTER SYSTEM SET synchronous_standby_names = '{names}'"
        ))
        .await
        .unwrap();
        sql.batch_execute("SELECT pg_reload_conf()").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    let batch = |name: &str| {
        let mut b = Batch::new();
        for i in 0..50 {
            b.push(Op::Put(Table::Tenants, format!("{name}{i}"), b"x".to_vec()));
        }
        b
    };
    store.commit(batch("before")).await.unwrap();
    standby("nobody").await;
    let started = std::time::Instant::now();
    let answer = store.commit(batch("unreplicated")).await;
    assert!(answer.is_err(), "acknowledged without its standby");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    standby("").await;
    store.commit(batch("after")).await.unwrap();
}

/// tokio-postgres logs every statement's parameters at debug (sealed records, token hashes,
/// audit records): the daemon lets it log at most at info, even when `RUST_LOG` names it at
/// trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_log_holds_no_statement_parameters() {
    use credbroker_tests::replicas::ReplicaSet;
    use credbroker_tests::{resolve, seed_two_tenants, setup};
    let (tmp, pki) = setup();
    let env = vec![("RUST_LOG".into(), "debug,tokio_postgres=trace".into())];
    let mut set = ReplicaSet::start(TestPostgres::start(), tmp.path(), &pki, 1, "", env).await;
    let mut op = pki.client_for("op", &set.daemons[0].url);
    seed_two_tenants(&mut op).await;
    let mut w1 = pki.client_for("w1", &set.daemons[0].url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(s, 200, "{v}");
    set.daemons[0].stop();
    let logs = set.daemons[0].logs();
    assert!(logs.contains("resolve allowed"), "logs were captured");
    assert!(logs.contains(" DEBUG "), "debug lines were captured");
    let leaked: Vec<&str> = logs
        .lines()
        .filter(|l| {
            l.contains("DEBUG tokio_postgres")
                || l.contains("TRACE tokio_postgres")
                || l.contains("with parameters")
        })
        .take(3)
        .collect();
    assert!(leaked.is_empty(), "{leaked:#?}");
}

/// A server whose sessions are read-only (a standby, which a single host name can resolve
/// to) is never read from: the store refuses to connect to it, where it would otherwise
/// read a lagging generation and honour what other replicas already changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_take_writes_is_never_read_from() {
    let pg = TestPostgres::start();
    let (url, settings) = pg_database(&pg, None).await;
    drop(pg_store(&settings).await);
    let admin = session(&url).await;
    let database: String = admin
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{database}\" SET default_transaction_read_only = on"
        ))
        .await
        .unwrap();
    let refused = match PgStore::open(&settings).await {
        Err(e) => e.to_string(),
        Ok(store) => match store.get(Table::Meta, "schema_version").await {
            Err(e) => e.to_string(),
            Ok(v) => panic!("read {v:?} from a server that takes no writes"),
        },
    };
    assert!(refused.contains("does not allow writes"), "{refused}");
    // The offline readers (audit export, verify, report; doctor) take the URL as it is: a
    // database made read-only to keep it as evidence is what they may be run on.
    let reader = credbroker::audit::chains::connect(&settings).await.unwrap();
    let read_only: String = reader
        .query_one("SHOW transaction_read_only", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(read_only, "on");
}
