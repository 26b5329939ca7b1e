//! The store conformance suite: what every backend behind `credbroker::store::Store` must do.
//! Run against each backend this build has (sled and PostgreSQL); a new backend adds one line
//! to `backends()` and must pass unchanged. What only a shared backend must do is in
//! `store_postgres.rs`.
//!
//! - Every record type round-trips through the typed layer (`Records` and `Batch`).
//! - A batch is all or nothing: a failed precondition (absent, present, unchanged) writes
//!   nothing.
//! - The pre-check of a batch's preconditions agrees with its commit.
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
    Binding, Instance, KeyState, PlatformKeyRecord, SecretState, SecretVersion, Status, Worker,
};
use credbroker::store::records::{CallbackState, IdentifierOwner, LastUseKind, Records};
use credbroker::store::{Batch, Op, PgStore, SledStore, Store, StoreError, StoreSettings, Table};
use credbroker_tests::postgres::TestPostgres;
use credbroker_tests::tenant_record as tenant;
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
        governance: None,
        max_secret_age_days: None,
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
            governance: None,
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
            expires_at: None,
            upstream_revocation_owed: false,
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
                governance: None,
                creator: None,
                creator_revision: None,
                revoked: false,
                used: false,
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

/// The pre-check (`Records::preconditions_hold`, which lets a change that lost a race be
/// refused before its audit record is written) says what the commit would: each kind of
/// precondition, judged on the store as it is now, and one on a key an earlier operation of
/// the batch writes left to the commit.
async fn the_pre_check_judges_as_the_commit_does(records: &Records) {
    let t = Table::Identifiers;
    let mut put = Batch::new();
    put.push(Op::Put(t, "pre/a".into(), b"one".to_vec()));
    records.commit(put).await.unwrap();
    let judged = |ops: Vec<Op>| async move {
        let mut batch = Batch::new();
        for op in ops {
            batch.push(op);
        }
        let pre = records.preconditions_hold(&batch).await.unwrap();
        let committed = records.commit(batch).await.is_ok();
        assert_eq!(pre, committed, "the pre-check and the commit disagree");
        pre
    };
    let a = || "pre/a".to_owned();
    let b = || "pre/b".to_owned();
    assert!(judged(vec![Op::ExpectValue(t, a(), b"one".to_vec())]).await);
    assert!(!judged(vec![Op::ExpectValue(t, a(), b"two".to_vec())]).await);
    assert!(!judged(vec![Op::ExpectValue(t, b(), b"one".to_vec())]).await);
    assert!(judged(vec![Op::ExpectPresent(t, a())]).await);
    assert!(!judged(vec![Op::ExpectPresent(t, b())]).await);
    assert!(judged(vec![Op::ExpectAbsent(t, b())]).await);
    assert!(!judged(vec![Op::ExpectAbsent(t, a())]).await);
    // Written first by the batch itself: the commit judges it, after the write.
    assert!(
        judged(vec![
            Op::Put(t, "pre/c".into(), b"new".to_vec()),
            Op::ExpectValue(t, "pre/c".into(), b"new".to_vec()),
        ])
        .await
    );
}

/// A pass over a table (`scan_each`) sees every row under its prefix once, in key order,
/// across more than one PostgreSQL page, as `scan` does; an error of the callback stops it
/// and is returned. Pages read by `scan_page` put together read the same rows.
async fn a_pass_reads_every_row_once(store: &Arc<dyn Store>) {
    let mut b = Batch::new();
    for i in 0..1234 {
        b.push(Op::Put(
            Table::Instances,
            format!("pass/{i:05}"),
            i.to_string().into_bytes(),
        ));
    }
    // Around the prefix: before, after, and one that only shares its first letters.
    for k in ["pas", "pass", "pass0", "passz/1", "q"] {
        b.push(Op::Put(Table::Instances, k.into(), b"x".to_vec()));
    }
    store.commit(b).await.unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    store
        .scan_each(
            Table::Instances,
            "pass/",
            Box::new(move |k, v| {
                sink.lock().unwrap().push((k.to_owned(), v.to_vec()));
                Ok(())
            }),
        )
        .await
        .unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.len(), 1234, "rows seen by the pass");
    assert!(seen == store.scan(Table::Instances, "pass/").await.unwrap());
    assert!(seen
        .iter()
        .enumerate()
        .all(|(i, (k, v))| *k == format!("pass/{i:05}") && *v == i.to_string().into_bytes()));
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&calls);
    let stopped = store
        .scan_each(
            Table::Instances,
            "pass/",
            Box::new(move |k, _| {
                if count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 700 {
                    return Err(StoreError::Corrupt {
                        table: "instances",
                        key: k.to_owned(),
                    });
                }
                Ok(())
            }),
        )
        .await;
    assert!(
        matches!(&stopped, Err(StoreError::Corrupt { key, .. }) if key == "pass/00700"),
        "{stopped:?}"
    );
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 701);
    // Pages (`scan_page`) read the same rows in the same order, each after the last key of
    // the one before; a page starts at the prefix whatever key before it is given.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .scan_page(
                Table::Instances,
                "pass/",
                after.as_deref(),
                (500, usize::MAX),
            )
            .await
            .unwrap();
        assert!(page.len() <= 500);
        let full = page.len() == 500;
        after = page.last().map(|(k, _)| k.clone());
        paged.extend(page);
        if !full {
            break;
        }
    }
    assert!(paged == seen, "the pages read {} rows", paged.len());
    for from in [None, Some("a"), Some("pas"), Some("pass")] {
        let first = store
            .scan_page(Table::Instances, "pass/", from, (2, usize::MAX))
            .await
            .unwrap();
        assert!(first == seen[..2], "after {from:?}: {first:?}");
    }
    let last = store
        .scan_page(
            Table::Instances,
            "pass/",
            Some("pass/01232"),
            (5, usize::MAX),
        )
        .await
        .unwrap();
    assert!(last == seen[1233..], "{last:?}");
    let past = store
        .scan_page(
            Table::Instances,
            "pass/",
            Some("pass/01233"),
            (5, usize::MAX),
        )
        .await
        .unwrap();
    assert!(past.is_empty(), "{past:?}");
    // A page ends with the row that brings its values to the byte bound (values "0" to
    // "1233": rows 0-9 are 1 byte, 10-99 are 2): across a PostgreSQL step of 100 rows too.
    for (max_bytes, rows) in [(1, 1), (10, 10), (11, 11), (12, 11), (190, 100), (192, 101)] {
        let page = store
            .scan_page(Table::Instances, "pass/", None, (500, max_bytes))
            .await
            .unwrap();
        assert!(
            page == seen[..rows],
            "{max_bytes} bytes: {} rows",
            page.len()
        );
    }
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
            governance: None,
            creator: None,
            creator_revision: None,
            revoked: false,
            used: false,
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
    let tenants_seen = Arc::new(AtomicUsize::new(0));
    let (hook_seen, hook_tenants) = (seen.clone(), tenants_seen.clone());
    store.on_change(Arc::new(move |changed| {
        hook_seen.fetch_add(1, Ordering::SeqCst);
        if changed.touches(Table::Tenants) {
            hook_tenants.fetch_add(1, Ordering::SeqCst);
        }
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
    assert!(
        tenants_seen.load(Ordering::SeqCst) >= 2,
        "a change names its tables"
    );
    // A batch of last-use rows touches no table the chain reads: the decoded records stay.
    // (A shared backend's late notification of an earlier commit empties the cache once:
    // let those arrive first.)
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    records.shared_tenant(&c1).await.unwrap().unwrap();
    let cached = records.cached_records();
    assert!(cached >= 1);
    let (before, before_tenants) = (
        seen.load(Ordering::SeqCst),
        tenants_seen.load(Ordering::SeqCst),
    );
    let mut b = Batch::new();
    b.put_last_use(7, LastUseKind::Binding, "b-any", 1);
    records.commit(b).await.unwrap();
    assert!(
        seen.load(Ordering::SeqCst) > before,
        "the commit is reported"
    );
    assert_eq!(tenants_seen.load(Ordering::SeqCst), before_tenants);
    assert_eq!(
        records.cached_records(),
        cached,
        "the record cache stays warm"
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
            a_pass_reads_every_row_once(&store).await;
            the_pre_check_judges_as_the_commit_does(&records).await;
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
