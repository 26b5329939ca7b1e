//! The store conformance suite: what every backend behind `credbroker::store::Store` must do.
//! Run against each backend this build has (sled now); a new backend adds one line to
//! `backends()` and must pass unchanged.
//!
//! - Every record type round-trips through the typed layer (`Records` and `Batch`).
//! - A batch is all or nothing: a failed precondition (absent, present, unchanged) writes
//!   nothing.
//! - Concurrent conflicting commits: of many writers claiming one identifier, consuming one
//!   callback state or replacing one record as read, exactly one wins; a tenant removal and
//!   an instance add planned from the same state never both land.
//! - Changes are reported (`on_change`), and the decoded-record cache never serves a record
//!   older than the last commit.
//! - The schema version is checked on open.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use credbroker::ids::{BindingId, InstanceId, TenantId, WorkerId};
use credbroker::model::{
    Binding, Instance, KeyState, PlatformKeyRecord, SecretState, SecretVersion, Status, Tenant,
    Worker,
};
use credbroker::store::records::{CallbackState, IdentifierOwner, Records};
use credbroker::store::{Batch, Op, PgStore, SledStore, Store, StoreError, StoreSettings, Table};
use credbroker_tests::postgres::TestPostgres;
use serde_json::json;

/// A backend under test: how to open it fresh, and how to reopen the same data.
enum Backend {
    Sled(tempfile::TempDir),
    /// The server (kept running while the backend is tested) and the database URL.
    Postgres(#[allow(dead_code)] TestPostgres, String),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Sled(_) => "sled",
            Backend::Postgres(..) => "postgres",
        }
    }

    async fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        match self {
            Backend::Sled(dir) => Ok(Arc::new(SledStore::open(dir.path())?)),
            Backend::Postgres(_, url) => {
                let settings = StoreSettings {
                    backend: credbroker::store::Backend::Postgres,
                    url: Some(url.clone().into()),
                    ..StoreSettings::default()
                };
                Ok(Arc::new(PgStore::open(&settings).await?))
            }
        }
    }
}

async fn backends() -> Vec<Backend> {
    let pg = TestPostgres::start();
    let url = pg.database().await;
    vec![
        Backend::Sled(tempfile::tempdir().unwrap()),
        Backend::Postgres(pg, url),
    ]
}

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

/// A plain session on the database at `url`, as another client (or an attacker) has.
async fn sql_session(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

fn tenant(id: &str) -> Tenant {
    Tenant {
        id: TenantId::parse(id).unwrap(),
        name: String::new(),
        status: Status::Active,
        revision: 0,
        created_at: "2026-01-01T00:00:00Z".into(),
    }
}

fn binding(id: &str, t: &str) -> Binding {
    Binding {
        id: BindingId::parse(id).unwrap(),
        tenant: TenantId::parse(t).unwrap(),
        provider: credbroker_providers::DEMO_PROVIDER.into(),
        config: json!({"note": "x"}),
        ceiling: json!(null),
        status: Status::Active,
        active_secret_version: Some(1),
        last_secret_version: 1,
        last_tested_at: None,
        last_probe: None,
        trust_broken: false,
        generation: "g".into(),
        revision: 0,
        status_change: None,
        drift: None,
        trust_facts: None,
        pending_secret_version: None,
        created_at: "2026-01-01T00:00:00Z".into(),
    }
}

fn instance(id: &str, t: &str, b: &str) -> Instance {
    Instance {
        id: InstanceId::parse(id).unwrap(),
        tenant: TenantId::parse(t).unwrap(),
        connector_kind: "jira".into(),
        binding: BindingId::parse(b).unwrap(),
        status: Status::Active,
        created_at: "2026-01-01T00:00:00Z".into(),
    }
}

async fn every_record_type_round_trips(records: &Records) {
    let mut b = Batch::new();
    b.create(&tenant("t1"))
        .create(&binding("b1", "t1"))
        .create(&instance("i1", "t1", "b1"))
        .create(&Worker {
            id: WorkerId::parse("w1").unwrap(),
            tenants: vec![TenantId::parse("t1").unwrap()],
            connector_kinds: vec![],
            status: Status::Active,
            created_at: "2026-01-01T00:00:00Z".into(),
        })
        .create(&SecretVersion {
            binding: BindingId::parse("b1").unwrap(),
            version: 1,
            state: SecretState::Active,
            field_names: vec!["token".into()],
            kek_version: 1,
            wrapped_dek: "d".into(),
            sealed_payload: "p".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            probe: None,
            superseded_at: None,
        })
        .create(&PlatformKeyRecord {
            kind: "k".into(),
            version: 1,
            state: KeyState::Staged,
            fingerprint: "f".into(),
            kek_version: 1,
            wrapped_dek: "d".into(),
            sealed_payload: "p".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            activated_at: None,
            retired_at: None,
            sealed_as: credbroker::model::SealedAs::PlatformKey,
            signs_from: None,
            compromised: false,
        })
        .claim_identifier(
            "test:one",
            &IdentifierOwner {
                tenant: "t1".into(),
                binding: Some("b1".into()),
            },
        )
        .put_tenant_parameter("p", "n", &TenantId::parse("t1").unwrap(), "value-1")
        .put_callback_state(
            "state-1",
            &CallbackState {
                provider: "p".into(),
                tenant: "t1".into(),
                expires_at: 1,
                pin: None,
                browser: None,
                opens: 0,
                issued_at: None,
            },
        );
    records.commit(b).await.unwrap();

    let t1 = TenantId::parse("t1").unwrap();
    let b1 = BindingId::parse("b1").unwrap();
    assert_eq!(
        records.tenant(&t1).await.unwrap().unwrap().value,
        tenant("t1")
    );
    assert_eq!(
        records.binding(&b1).await.unwrap().unwrap().value,
        binding("b1", "t1")
    );
    assert_eq!(
        records
            .instance(&InstanceId::parse("i1").unwrap())
            .await
            .unwrap()
            .unwrap()
            .value,
        instance("i1", "t1", "b1")
    );
    assert!(records
        .worker(&WorkerId::parse("w1").unwrap())
        .await
        .unwrap()
        .is_some());
    assert_eq!(records.secret_versions(&b1).await.unwrap().len(), 1);
    assert_eq!(records.platform_keys("k").await.unwrap().len(), 1);
    assert_eq!(
        records
            .identifier_owner("test:one")
            .await
            .unwrap()
            .unwrap()
            .binding
            .as_deref(),
        Some("b1")
    );
    assert_eq!(
        records.identifiers_of(&b1).await.unwrap(),
        vec!["test:one".to_owned()]
    );
    assert_eq!(
        records
            .tenant_parameter("p", "n", &t1)
            .await
            .unwrap()
            .as_deref(),
        Some("value-1")
    );
    assert_eq!(
        records
            .identifier_owner("tenant-param:p:n:value-1")
            .await
            .unwrap()
            .unwrap()
            .tenant,
        "t1",
        "generated values are unique across tenants"
    );
    assert!(records.callback_state("state-1").await.unwrap().is_some());
    assert_eq!(records.tenants().await.unwrap().len(), 1);
    assert_eq!(records.bindings().await.unwrap().len(), 1);
    assert_eq!(records.instances().await.unwrap().len(), 1);
    assert_eq!(records.workers().await.unwrap().len(), 1);

    // Replace as read, then the stale read can no longer replace or remove.
    let read = records.binding(&b1).await.unwrap().unwrap();
    let mut changed = read.value.clone();
    changed.status = Status::Disabled;
    let mut b = Batch::new();
    b.replace(&read, &changed);
    records.commit(b).await.unwrap();
    let mut b = Batch::new();
    b.remove(&read);
    assert!(matches!(
        records.commit(b).await,
        Err(StoreError::Precondition {
            expected: "unchanged",
            ..
        })
    ));
    assert_eq!(
        records.binding(&b1).await.unwrap().unwrap().status,
        Status::Disabled
    );
}

async fn a_batch_is_all_or_nothing(store: &Arc<dyn Store>) {
    for (precondition, expected) in [
        (
            Op::ExpectAbsent(Table::Meta, "schema_version".into()),
            "absent",
        ),
        (
            Op::ExpectPresent(Table::Meta, "nothing-here".into()),
            "present",
        ),
        (
            Op::ExpectValue(Table::Meta, "schema_version".into(), b"not-it".to_vec()),
            "unchanged",
        ),
    ] {
        let mut b = Batch::new();
        b.push(Op::Put(Table::Tenants, "before".into(), b"1".to_vec()))
            .push(precondition)
            .push(Op::Put(Table::Tenants, "after".into(), b"2".to_vec()));
        match store.commit(b).await {
            Err(StoreError::Precondition { expected: e, .. }) => assert_eq!(e, expected),
            other => panic!("expected a {expected} precondition failure, got {other:?}"),
        }
        assert!(store.get(Table::Tenants, "before").await.unwrap().is_none());
        assert!(store.get(Table::Tenants, "after").await.unwrap().is_none());
    }
    // Keys scan in order, by prefix.
    let mut b = Batch::new();
    for k in ["p/2", "p/10", "p/1", "q/1"] {
        b.push(Op::Put(Table::Secrets, k.into(), k.as_bytes().to_vec()));
    }
    store.commit(b).await.unwrap();
    let keys: Vec<String> = store
        .scan(Table::Secrets, "p/")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, vec!["p/1", "p/10", "p/2"]);
}

/// Runs `n` concurrent commits built by `make(i)`; returns how many succeeded.
async fn race(records: &Records, n: usize, make: impl Fn(usize) -> Batch) -> usize {
    let mut tasks = Vec::new();
    for i in 0..n {
        let records = records.clone();
        let batch = make(i);
        tasks.push(tokio::spawn(async move { records.commit(batch).await }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::Precondition { .. }) => {}
            Err(e) => panic!("a racing commit failed otherwise: {e}"),
        }
    }
    won
}

async fn conflicting_commits_have_one_winner(records: &Records) {
    // One identifier, many tenants.
    let won = race(records, 16, |i| {
        let mut b = Batch::new();
        b.claim_identifier(
            "race:identifier",
            &IdentifierOwner {
                tenant: format!("t{i}"),
                binding: Some(format!("b{i}")),
            },
        );
        b
    })
    .await;
    assert_eq!(won, 1, "an identifier is bound to exactly one tenant");

    // One callback state, consumed by many.
    let mut b = Batch::new();
    b.put_callback_state(
        "race-state",
        &CallbackState {
            provider: "p".into(),
            tenant: "t1".into(),
            expires_at: i64::MAX,
            pin: None,
            browser: None,
            opens: 0,
            issued_at: None,
        },
    );
    records.commit(b).await.unwrap();
    let (key, read) = records.callback_state("race-state").await.unwrap().unwrap();
    let won = race(records, 16, |_| {
        let mut b = Batch::new();
        b.consume_callback_state(&key, &read);
        b
    })
    .await;
    assert_eq!(won, 1, "a state is single use");

    // One record as read, many writers.
    let mut b = Batch::new();
    b.create(&tenant("race"));
    records.commit(b).await.unwrap();
    let read = records
        .tenant(&TenantId::parse("race").unwrap())
        .await
        .unwrap()
        .unwrap();
    let won = race(records, 16, |i| {
        let mut t = read.value.clone();
        t.name = format!("writer {i}");
        let mut b = Batch::new();
        b.replace(&read, &t);
        b
    })
    .await;
    assert_eq!(won, 1, "no lost update");

    // "Remove the tenant, it has no children" against "add an instance to it".
    let mut b = Batch::new();
    b.create(&tenant("t9")).create(&binding("b9", "t9"));
    records.commit(b).await.unwrap();
    let t9 = TenantId::parse("t9").unwrap();
    let tenant_read = records.tenant(&t9).await.unwrap().unwrap();
    let binding_read = records
        .binding(&BindingId::parse("b9").unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut remove = Batch::new();
    remove.remove(&tenant_read);
    let mut add = Batch::new();
    let mut bumped = tenant_read.value.clone();
    bumped.revision += 1;
    add.replace(&tenant_read, &bumped)
        .expect_unchanged(&binding_read)
        .create(&instance("i9", "t9", "b9"));
    let won = race(records, 2, |i| {
        if i == 0 {
            remove.clone()
        } else {
            add.clone()
        }
    })
    .await;
    assert_eq!(
        won, 1,
        "a removal and an addition planned on the same state never both land"
    );
}

async fn changes_are_reported_and_the_cache_follows(store: Arc<dyn Store>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let hook_seen = seen.clone();
    store.on_change(Arc::new(move || {
        hook_seen.fetch_add(1, Ordering::SeqCst);
    }));
    let records = Records::with_cache(store, 100);
    let mut b = Batch::new();
    b.create(&tenant("c1"));
    records.commit(b).await.unwrap();
    assert!(seen.load(Ordering::SeqCst) >= 1, "a commit is reported");
    let c1 = TenantId::parse("c1").unwrap();
    assert_eq!(records.shared_tenant(&c1).await.unwrap().unwrap().name, "");
    let read = records.tenant(&c1).await.unwrap().unwrap();
    let mut renamed = read.value.clone();
    renamed.name = "renamed".into();
    let mut b = Batch::new();
    b.replace(&read, &renamed);
    records.commit(b).await.unwrap();
    assert_eq!(
        records.shared_tenant(&c1).await.unwrap().unwrap().name,
        "renamed",
        "the decoded-record cache never serves a record older than the last commit"
    );
    // A failed commit is reported too (its outcome may be unknown to a cache).
    let before = seen.load(Ordering::SeqCst);
    let mut b = Batch::new();
    b.create(&tenant("c1"));
    assert!(records.commit(b).await.is_err());
    assert!(seen.load(Ordering::SeqCst) > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_conforms() {
    for backend in backends().await {
        eprintln!("store backend {}", backend.name());
        {
            let store = backend.open().await.unwrap();
            assert!(!store.backend().is_empty());
            let records = Records::new(store.clone());
            every_record_type_round_trips(&records).await;
            a_batch_is_all_or_nothing(&store).await;
            conflicting_commits_have_one_winner(&records).await;
            changes_are_reported_and_the_cache_follows(store.clone()).await;
            // The schema version on disk must be one this build reads.
            let mut b = Batch::new();
            b.push(Op::Put(
                Table::Meta,
                "schema_version".into(),
                b"99".to_vec(),
            ));
            store.commit(b).await.unwrap();
        }
        // sled releases its lock when its background threads have stopped: retry a moment.
        let mut reopened = None;
        for _ in 0..100 {
            reopened = backend.open().await.err();
            if !matches!(&reopened, Some(StoreError::Backend(m)) if m.contains("locked")) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(
            matches!(reopened, Some(StoreError::Schema { .. })),
            "{}: an unknown schema version is refused on open, got {reopened:?}",
            backend.name()
        );
    }
}

/// Races decided inside PostgreSQL, whatever the timing: another session holds a conflicting
/// write open while the store commits, so only the database's own constraint and row locks
/// can refuse the store's write once that session commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_decides_races_with_its_constraints_and_row_locks() {
    let pg = TestPostgres::start();
    let (url, settings) = pg_database(&pg, None).await;
    let store: Arc<dyn Store> = pg_store(&settings).await;
    let mut other = sql_session(&url).await;
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
    let raw = a.get(Table::Tenants, "shared").await.unwrap().unwrap();
    let mut value: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    value["name"] = json!("changed without a notification");
    let mut other = sql_session(&url).await;
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
    on_b.sync().await.unwrap();
    assert_eq!(
        on_b.shared_tenant(&id).await.unwrap().unwrap().name,
        "changed without a notification"
    );

    // The notification alone empties the other's caches too.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    b.on_change(Arc::new(move || {
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
    let sql = sql_session(&url).await;
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
    sql.batch_execute("NOTIFY credbroker_changes, '9223372036854775807'")
        .await
        .unwrap();
    sql.batch_execute("NOTIFY credbroker_changes, 'not a number'")
        .await
        .unwrap();
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
    let mut stalled = sql_session(&url).await;
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
