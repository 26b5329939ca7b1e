//! Three broker replicas on loopback sharing one PostgreSQL store (issue 15).
//!
//! - Resolves spread across the replicas; a worker disabled through one is refused by the
//!   others on their very next resolve (no sleep: every resolve reads the store's change
//!   generation first), and the time from the acknowledgement to that refusal is printed.
//! - A binding disabled and enabled through one replica (to drop sessions the customer
//!   revoked) is minted afresh by the others: nothing they cached before is served again.
//! - An audit batch the database commits after the broker gave up on it (its requests
//!   answered `audit_unavailable`) is found on the next connection, and each of its records
//!   is followed by one saying its request was refused: the chain never shows a change that
//!   was not made as if it had been.
//! - Replicas racing to bind one role ARN for three tenants: exactly one wins; racing to
//!   issue Entra consent links for one GUID to three tenants: exactly one link is out.
//! - One replica leads; killed, another takes the lease over.
//! - A replica SIGKILLed under load: the others keep serving, every acknowledged resolve of
//!   every replica is in the database's chains, and `audit verify` passes on each chain.
//! - PostgreSQL restarted under load: resolves fail closed (`audit_unavailable` or
//!   `unavailable`) during the outage and succeed again without restarting the brokers;
//!   nothing acknowledged is lost.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use credbroker::client::BrokerClient;
use credbroker_tests::fake_sts::{FakeRole, FakeSts, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY};
use credbroker_tests::postgres::TestPostgres;
use credbroker_tests::replicas::ReplicaSet;
use credbroker_tests::*;
use http::Method;
use serde_json::{json, Value};

const VENDOR: &str = "111111111111";
const CUSTOMER: &str = "222222222222";

/// Quick checkpoints, so chains are anchored within a short test.
const AUDIT: &str = "[audit]\ncheckpoint_every_records = 50\ncheckpoint_interval_s = 1\n";

fn clients(pki: &TestPki, set: &ReplicaSet, name: &str) -> Vec<BrokerClient> {
    set.daemons
        .iter()
        .map(|d| pki.client_for(name, &d.url))
        .collect()
}

/// Resolves `instance` through `client` until `stop`, recording every acknowledged audit id
/// and every refusal code.
async fn load(
    mut client: BrokerClient,
    instance: &'static str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<String>, Vec<String>) {
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match client
            .request(
                Method::POST,
                "/v1/resolve",
                Some(serde_json::to_vec(&json!({"instance_id": instance})).unwrap()),
            )
            .await
        {
            Ok((status, body)) => {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if status.as_u16() == 200 {
                    acked.push(v["audit_id"].as_str().unwrap().to_owned());
                } else {
                    refused.push(code(&v).to_owned());
                }
            }
            // A killed replica: its connections fail; nothing was acknowledged.
            Err(_) => {
                refused.push("connection".into());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    (acked, refused)
}

/// `n` replicas with the AWS provider (on a fake STS), not seeded.
async fn aws_replicas(n: usize) -> (tempfile::TempDir, Arc<TestPki>, FakeSts, ReplicaSet) {
    let (tmp, pki) = setup();
    let sts = FakeSts::start(VENDOR).await;
    let aws = format!(
        "{AUDIT}[providers.aws_assume_role]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nvendor_account_id = \"{VENDOR}\"\nceiling_file = {:?}\n",
        sts.url,
        repo_root().join("policies/aws.json").display().to_string()
    );
    let set = ReplicaSet::start(
        TestPostgres::start(),
        tmp.path(),
        &pki,
        n,
        &aws,
        aws_test_env(TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY),
    )
    .await;
    (tmp, pki, sts, set)
}

/// `n` replicas with the usual records (tenants t1, t2; worker w1) seeded through the first.
async fn seeded(pg: TestPostgres, n: usize) -> (tempfile::TempDir, Arc<TestPki>, ReplicaSet) {
    let (tmp, pki) = setup();
    let set = ReplicaSet::start(pg, tmp.path(), &pki, n, AUDIT, vec![]).await;
    let mut op = pki.client_for("op", &set.daemons[0].url);
    seed_two_tenants(&mut op).await;
    (tmp, pki, set)
}

/// One replica seeded, its records under a checkpoint (checkpoint_interval_s = 1), stopped,
/// every chain verified; and a session on its database, for the rows a test then forges.
async fn seeded_signed_and_stopped() -> (tempfile::TempDir, ReplicaSet, tokio_postgres::Client) {
    let (tmp, _pki, mut set) = seeded(TestPostgres::start(), 1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    set.daemons[0].stop();
    verify_every_chain(&set, &set.daemons[0]);
    let db = set.sql().await;
    (tmp, set, db)
}

/// Resolves i1 through `client` until one is served (a recovery), within 30 s.
async fn until_served(client: &mut BrokerClient) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = resolve(client, json!({"instance_id": "i1"})).await;
        if s == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "no recovery: {s} {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `n` resolves of i1 through `client`, each served.
async fn served(client: &mut BrokerClient, n: usize) {
    for _ in 0..n {
        let (s, v) = resolve(client, json!({"instance_id": "i1"})).await;
        assert_eq!(s, 200, "{v}");
    }
}

/// Removes replica 1's records and checkpoints after sequence `after`, as a failover that
/// lost them would.
async fn cut_chain(sql: &tokio_postgres::Client, after: i64) {
    for table in ["credbroker_audit", "credbroker_audit_checkpoints"] {
        sql.execute(
            &format!("DELETE FROM {table} WHERE replica = 1 AND seq > $1"),
            &[&after],
        )
        .await
        .unwrap();
    }
}

fn verify_every_chain(set: &ReplicaSet, d: &Daemon) -> String {
    let (c, out, err) = set.cli(&["audit", "verify", "--config", d.config.to_str().unwrap()]);
    assert_eq!(c, 0, "audit verify: {out}{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_judge_every_change_at_once_and_race_to_one_winner() {
    let (tmp, pki, sts, mut set) = aws_replicas(3).await;
    let mut op = pki.client_for("op", &set.daemons[0].url);
    seed_two_tenants(&mut op).await;

    // Resolves spread across the replicas, each judged on records another one wrote.
    let mut w1 = clients(&pki, &set, "w1");
    let mut acked = Vec::new();
    for round in 0..9 {
        let (s, v) = resolve(&mut w1[round % 3], json!({"instance_id": "i1"})).await;
        assert_eq!(s, 200, "replica {}: {v}", round % 3 + 1);
        acked.push(v["audit_id"].as_str().unwrap().to_owned());
    }

    // A worker disabled through replica 1 is refused by replicas 2 and 3 at once — judged
    // by the generation each resolve reads, not by a notification: the listening
    // connections are cut first (they reconnect only after a pause).
    let sql = set.sql().await;
    let cut: i64 = sql
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'credbroker-listen' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cut, 3, "one listening connection per replica");
    let (s, v) = call(&mut op, Method::POST, "/v1/admin/workers/w1/disable", None).await;
    assert_eq!(s, 200, "{v}");
    let acknowledged = Instant::now();
    for (i, client) in w1.iter_mut().enumerate().skip(1) {
        let (s, v) = resolve(client, json!({"instance_id": "i1"})).await;
        assert_eq!(
            (s, code(&v)),
            (403, "worker_not_authorized"),
            "replica {}: {v}",
            i + 1
        );
    }
    eprintln!(
        "revocation: a worker disabled on replica 1 was refused on replicas 2 and 3 {} ms after the acknowledgement (the next resolve each)",
        acknowledged.elapsed().as_millis()
    );
    let (s, v) = call(&mut op, Method::POST, "/v1/admin/workers/w1/enable", None).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = resolve(&mut w1[2], json!({"instance_id": "i1"})).await;
    assert_eq!(s, 200);

    // Naming a role claims nothing: three replicas bind one role ARN at once, each for
    // another tenant, and all three are made. The role trusts t1's ExternalId; t1 binds it
    // twice more, and three replicas race to prove it: one probe activates its binding, the
    // others are refused, whichever replica asks.
    let mut ops = clients(&pki, &set, "op");
    let (s, v) = call(
        &mut ops[1],
        Method::POST,
        "/v1/admin/tenants",
        Some(json!({"id": "t3"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let mut external_ids = Vec::new();
    for t in ["t1", "t2", "t3"] {
        let (s, v) = call(
            &mut ops[0],
            Method::POST,
            "/v1/admin/onboard/aws_assume_role",
            Some(json!({"tenant": t})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        external_ids.push(v["external_id"].as_str().unwrap().to_owned());
    }
    let arn = format!("arn:aws:iam::{CUSTOMER}:role/Contested");
    sts.add_role(
        &arn,
        FakeRole {
            account: CUSTOMER.into(),
            trusted_account: VENDOR.into(),
            external_id: Some(external_ids[0].clone()),
            ..FakeRole::default()
        },
    );
    let race = |ops: Vec<BrokerClient>, request: fn(usize, &str) -> (String, Option<Value>)| {
        let arn = arn.clone();
        async move {
            let mut racers = Vec::new();
            for (i, mut client) in ops.into_iter().enumerate() {
                let (path, body) = request(i, &arn);
                racers.push(tokio::spawn(async move {
                    call(&mut client, Method::POST, &path, body).await
                }));
            }
            let mut outcomes = Vec::new();
            for r in racers {
                let (s, v) = r.await.unwrap();
                outcomes.push((s, code(&v).to_owned()));
            }
            outcomes.sort();
            outcomes
        }
    };
    let made = race(clients(&pki, &set, "op"), |i, arn| {
        (
            "/v1/admin/bindings".to_owned(),
            Some(json!({"owner": "team-tests", "purpose": "integration test", "id": format!("named{i}"), "tenant": format!("t{}", i + 1),
            "provider": "aws_assume_role", "config": {"role_arn": arn}})),
        )
    })
    .await;
    assert_eq!(
        made,
        vec![(201, String::new()); 3],
        "naming a role claims nothing"
    );
    // (One after the other: concurrent adds to one tenant conflict on the tenant's record.)
    for i in 0..3 {
        let (s, v) = call(
            &mut op,
            Method::POST,
            "/v1/admin/bindings",
            Some(json!({"owner": "team-tests", "purpose": "integration test", "id": format!("race{i}"), "tenant": "t1",
            "provider": "aws_assume_role", "config": {"role_arn": arn}})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    let proved = race(ops, |i, _| {
        (format!("/v1/admin/bindings/race{i}/probe"), Some(json!({})))
    })
    .await;
    assert_eq!(
        proved,
        vec![
            (200, String::new()),
            (409, "conflict".into()),
            (409, "conflict".into())
        ],
        "one role ARN, one binding, whichever replica proves it"
    );

    // One replica leads; each has its own id (the database's lease and each /metrics agree).
    let holders: HashSet<String> = set.leader().await.into_iter().collect();
    assert_eq!(holders.len(), 1, "exactly one live leader lease");
    let (mut leaders, mut ids) = (0.0, Vec::new());
    for d in &set.daemons {
        let (_, m) = scrape(&pki, &d.url).await;
        let m = String::from_utf8(m).unwrap();
        leaders += metric_value(&m, "credbroker_leader").unwrap();
        ids.push(metric_value(&m, "credbroker_replica_id").unwrap());
    }
    ids.sort_by(f64::total_cmp);
    assert_eq!((leaders, ids), (1.0, vec![1.0, 2.0, 3.0]));

    // Offline changes are refused while replicas run (sled's lock does it for one broker).
    let config = set.daemons[0].config.to_str().unwrap().to_owned();
    for args in [
        vec!["keys", "rotate-kek", "--config", &config],
        vec!["bootstrap-operator", "--config", &config, "--id", "late"],
        vec![
            "store", "migrate", "--from", "sled", "--to", "postgres", "--config", &config,
        ],
    ] {
        let (c, out, err) = set.cli(&args);
        assert_ne!(c, 0, "{args:?}: {out}");
        assert!(
            err.contains("replica(s) run on this store"),
            "{args:?}: {err}"
        );
    }

    // Every acknowledged resolve is in a chain; every chain verifies.
    let ids = set.audit_ids().await;
    for id in &acked {
        assert!(
            ids.contains(id),
            "acknowledged resolve {id} is in the audit"
        );
    }
    let out = verify_every_chain(&set, &set.daemons[1]);
    for r in 1..=3 {
        assert!(out.contains(&format!("replica {r}: audit OK")), "{out}");
    }

    // One export holds every chain; each document verifies, and removing one is found.
    let export = tmp.path().join("export.jsonl");
    let (c, out, err) = set.cli(&audit_to_file("export", &config, "--output", &export));
    assert_eq!(c, 0, "{out}{err}");
    let key = set.daemons[0].data_dir.join("keys/audit-signing.pub");
    let verify_export = |path: &std::path::Path| {
        set.cli(&[
            "audit",
            "verify",
            "--export",
            path.to_str().unwrap(),
            "--public-key",
            key.to_str().unwrap(),
        ])
    };
    let (c, out, err) = verify_export(&export);
    assert_eq!(c, 0, "{out}{err}");
    for r in 1..=3 {
        assert!(out.contains(&format!("replica {r}: audit OK")), "{out}");
    }
    // The audit report reads the same chains a page at a time: every acknowledged resolve
    // is counted in its replica's chain.
    let report = tmp.path().join("report.json");
    let (c, out, err) = set.cli(&audit_to_file("report", &config, "--json", &report));
    assert_eq!(c, 0, "{out}{err}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(summary["verified"], true, "{summary}");
    let chains = summary["chains"].as_array().unwrap();
    assert!(chains.len() >= 3, "{summary}");
    let in_chains: u64 = chains.iter().map(|c| c["records"].as_u64().unwrap()).sum();
    assert_eq!(summary["records"].as_u64(), Some(in_chains), "{summary}");
    assert!(
        summary["resolves_by_outcome"]["allowed"].as_u64().unwrap() >= acked.len() as u64,
        "{summary}"
    );
    let text = std::fs::read_to_string(&export).unwrap();
    let mut documents: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("{\"export\":") {
            documents.push(String::new());
        }
        let doc = documents.last_mut().unwrap();
        doc.push_str(line);
        doc.push('\n');
    }
    assert_eq!(documents.len(), 3);
    let cut = tmp.path().join("cut.jsonl");
    std::fs::write(&cut, format!("{}{}", documents[0], documents[2])).unwrap();
    let (c, out, _) = verify_export(&cut);
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("document(s) 1 were removed"), "{out}");

    // A replica that does not lead, stopped cleanly, releases its own leases only: the
    // leader's lease is still the leader's (released, another replica would take the lead
    // while the leader still counts itself leader, and leader-only jobs would run twice).
    let holder = set.leader().await.expect("a leader");
    let mut follower = None;
    for (i, d) in set.daemons.iter().enumerate() {
        let (_, m) = scrape(&pki, &d.url).await;
        if metric_value(&String::from_utf8(m).unwrap(), "credbroker_leader") == Some(0.0) {
            follower = Some(i);
        }
    }
    set.daemons[follower.expect("a replica that does not lead")].stop();
    assert_eq!(set.leader().await.as_deref(), Some(holder.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_loses_nothing_acknowledged() {
    let (_tmp, pki, mut set) = seeded(TestPostgres::start(), 3).await;
    let leader_before = set.leader().await.unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for d in &set.daemons {
        for _ in 0..2 {
            let client = pki.client_for("w1", &d.url);
            tasks.push(tokio::spawn(load(client, "i1", stop.clone())));
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The first replica (which took the leader lease first) dies without any cleanup.
    set.daemons[0].kill_hard();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut per_client = Vec::new();
    for t in tasks {
        let (a, r) = t.await.unwrap();
        per_client.push((a.len(), r.len()));
        acked.extend(a);
    }
    // Replica 1 acknowledged resolves before it was killed (or "nothing acknowledged lost"
    // would say nothing about it), and replicas 2 and 3 kept serving after the kill.
    let killed: usize = per_client[..2].iter().map(|c| c.0).sum();
    assert!(killed > 0, "{per_client:?}");
    let survivors: usize = per_client[2..].iter().map(|c| c.0).sum();
    assert!(survivors > 0, "{per_client:?}");
    let ids = set.audit_ids().await;
    let missing: Vec<&String> = acked.iter().filter(|id| !ids.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged resolves are not in the audit: {missing:?}",
        missing.len(),
        acked.len()
    );
    eprintln!(
        "killed replica 1 under load: {} resolves acknowledged across the replicas, all in the audit; per client (acknowledged, refused): {per_client:?}",
        acked.len()
    );
    let out = verify_every_chain(&set, &set.daemons[1]);
    assert!(out.contains("replica 1: audit OK"), "{out}");

    // The leader lease passes to a survivor once the dead one's lapses.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(h) = set.leader().await {
            if h != leader_before {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no replica took the lead over");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_fails_closed_and_recovers_without_restarting_brokers() {
    let (_tmp, pki, mut set) = seeded(TestPostgres::own(), 2).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in clients(&pki, &set, "w1") {
        tasks.push(tokio::spawn(load(client, "i1", stop.clone())));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    set.pg.stop();
    // During the outage nothing is acknowledged.
    let mut w1 = clients(&pki, &set, "w1");
    for client in &mut w1 {
        let (s, v) = resolve(client, json!({"instance_id": "i1"})).await;
        assert!(
            s == 503 && ["audit_unavailable", "unavailable"].contains(&code(&v)),
            "{s} {v}"
        );
    }
    set.pg.restart();
    // Recovered without restarting the brokers.
    for client in &mut w1 {
        until_served(client).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    for t in tasks {
        let (a, r) = t.await.unwrap();
        acked.extend(a);
        refused.extend(r);
    }
    let ids = set.audit_ids().await;
    assert!(
        !acked.is_empty(),
        "no resolve was acknowledged: nothing was checked"
    );
    assert!(
        acked.iter().all(|id| ids.contains(id)),
        "every acknowledged resolve survived the restart"
    );
    let codes: HashSet<&str> = refused.iter().map(String::as_str).collect();
    assert!(
        codes
            .iter()
            .all(|c| ["audit_unavailable", "unavailable"].contains(c)),
        "only fail-closed refusals: {codes:?}"
    );
    eprintln!(
        "PostgreSQL restarted under load: {} acknowledged (all in the audit), {} refused ({codes:?})",
        acked.len(),
        refused.len()
    );
    verify_every_chain(&set, &set.daemons[0]);
}

/// A replica whose lease another holder took (a paused broker whose claim lapsed and was
/// taken over) writes nothing to the chain: its resolves fail closed, the other replica
/// serves, and once the lease is free again the replica re-claims it and serves, unless an
/// offline change started meanwhile: then not before that change has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_its_lease_writes_nothing() {
    let (_tmp, pki, set) = seeded(TestPostgres::start(), 2).await;
    let mut w1 = clients(&pki, &set, "w1");
    for client in &mut w1 {
        let (s, v) = resolve(client, json!({"instance_id": "i1"})).await;
        assert_eq!(s, 200, "{v}");
    }
    let sql = set.sql().await;
    let before: i64 = set
        .scalar("SELECT count(*) FROM credbroker_audit WHERE replica = 1")
        .await;
    let leads = |id: u32| {
        format!("SELECT count(*) FROM credbroker_leases l JOIN credbroker_leases r ON r.name = 'replica/{id}' WHERE l.name = 'leader' AND l.holder = r.holder AND l.expires_at > now()")
    };
    assert_eq!(set.scalar(&leads(1)).await, 1, "replica 1 leads first");
    sql.execute(
        "UPDATE credbroker_leases SET holder = 'another-broker', expires_at = now() + interval '1 hour' WHERE name = 'replica/1'",
        &[],
    )
    .await
    .unwrap();
    let (s, v) = resolve(&mut w1[0], json!({"instance_id": "i1"})).await;
    assert_eq!((s, code(&v)), (503, "audit_unavailable"), "{v}");
    let (s, v) = resolve(&mut w1[1], json!({"instance_id": "i1"})).await;
    assert_eq!(s, 200, "the other replica serves: {v}");
    let after: i64 = set
        .scalar("SELECT count(*) FROM credbroker_audit WHERE replica = 1")
        .await;
    assert_eq!(after, before, "nothing was written to replica 1's chain");
    // The database answers, but the lease is another's: the writer's probes (idle, and the
    // one a resolve asks for) do not call the log writable, so nothing is minted that could
    // not be recorded, and /readyz says so.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (s, _) = call(&mut w1[0], Method::GET, "/readyz", None).await;
    assert_eq!(s, 503, "ready without its lease");
    let (s, v) = resolve(&mut w1[0], json!({"instance_id": "i1"})).await;
    assert_eq!((s, code(&v)), (503, "audit_unavailable"), "{v}");

    // The lease free again, but an offline change (a KEK rotation, started while no replica
    // seemed to run) holds the store: replica 1 takes its id back, so the change's
    // confirmation would find it running, but serves nothing while the hold lives. (A
    // lease only lapses in the database after its holder's own deadline has passed, so the
    // replica has seen its renewal fail first.)
    set.daemons[0]
        .wait_log("replica id could not be renewed", 1)
        .await;
    // Without its id (its log takes no records) it leads no more: it gives the lease up,
    // and the other replica runs the leader-only jobs (each audited first) at its next
    // renewal, instead of nobody for as long as replica 1 lives.
    set.daemons[0].wait_log("leadership given up", 1).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(12);
    while set.scalar(&leads(2)).await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "replica 2 never took the leadership replica 1 could not use"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    sql.execute(
        "INSERT INTO credbroker_leases (name, holder, expires_at) VALUES ('offline/change', 'elsewhere:1:x', now() + interval '1 minute')",
        &[],
    )
    .await
    .unwrap();
    sql.execute(
        "UPDATE credbroker_leases SET expires_at = now() - interval '1 second' WHERE name = 'replica/1'",
        &[],
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(6000)).await;
    assert_eq!(
        set.scalar("SELECT count(*) FROM credbroker_leases WHERE name = 'replica/1' AND holder <> 'another-broker' AND expires_at > now()")
            .await,
        1,
        "replica 1 holds its id again"
    );
    let (s, v) = resolve(&mut w1[0], json!({"instance_id": "i1"})).await;
    assert_eq!(
        (s, code(&v)),
        (503, "audit_unavailable"),
        "served beside an offline change: {v}"
    );
    assert_eq!(
        set.scalar("SELECT count(*) FROM credbroker_audit WHERE replica = 1")
            .await,
        before,
        "nothing was written to replica 1's chain"
    );

    // The change ended: replica 1 counts its id again at its next renewal and serves.
    sql.execute(
        "DELETE FROM credbroker_leases WHERE name = 'offline/change'",
        &[],
    )
    .await
    .unwrap();
    until_served(&mut w1[0]).await;
    verify_every_chain(&set, &set.daemons[0]);
}

/// A failover that lost a replica's last audit records (here: deleted underneath it): the
/// replica finds its chain's end moved before chaining anything onto a record that is not
/// there, reads it again and goes on from it, so the chain has no gap and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_cut_short_underneath_a_replica_goes_on_without_a_gap() {
    let (_tmp, pki, set) = seeded(TestPostgres::start(), 1).await;
    let mut w1 = pki.client_for("w1", &set.daemons[0].url);
    served(&mut w1, 5).await;
    let sql = set.sql().await;
    let max: i64 = set
        .scalar("SELECT max(seq) FROM credbroker_audit WHERE replica = 1")
        .await;
    cut_chain(&sql, max - 3).await;
    let (mut ok, mut refused) = (0, Vec::new());
    for _ in 0..5 {
        let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
        if s == 200 {
            ok += 1;
        } else {
            refused.push(code(&v).to_owned());
        }
    }
    assert!(ok >= 4, "the replica goes on: {refused:?}");
    assert!(
        refused.iter().all(|c| c == "audit_unavailable"),
        "{refused:?}"
    );
    let out = verify_every_chain(&set, &set.daemons[0]);
    assert!(out.contains("audit OK"), "{out}");
    let cuts = set
        .scalar("SELECT count(*) FROM credbroker_audit WHERE replica = 1 AND line LIKE '%audit.chain_cut%a record this writer knows%'")
        .await;
    assert_eq!(cuts, 1, "the cut is on the record");
}

/// A failover that lost more of a replica's chain than its writer remembers (here: 30
/// records deleted underneath it, its memory 24 records with these settings) is still taken
/// up — the chain verifies from its last signed checkpoint to its new end, as at a start —
/// and the replica goes on without a restart and without a gap (runbooks/database-failover.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_losing_more_than_the_writer_remembers_goes_on() {
    let (tmp, pki) = setup();
    let audit =
        "[audit]\nmax_batch = 1\ncheckpoint_every_records = 10\ncheckpoint_interval_s = 3600\n";
    let set = ReplicaSet::start(TestPostgres::start(), tmp.path(), &pki, 1, audit, vec![]).await;
    let mut op = pki.client_for("op", &set.daemons[0].url);
    seed_two_tenants(&mut op).await;
    let mut w1 = pki.client_for("w1", &set.daemons[0].url);
    served(&mut w1, 40).await;
    let sql = set.sql().await;
    let max: i64 = set
        .scalar("SELECT max(seq) FROM credbroker_audit WHERE replica = 1")
        .await;
    cut_chain(&sql, max - 30).await;
    let mut served = 0;
    for _ in 0..5 {
        let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
        if s == 200 {
            served += 1;
        } else {
            assert_eq!(code(&v), "audit_unavailable", "{v}");
        }
    }
    assert!(
        served >= 4,
        "the replica did not go on: {served} of 5 served"
    );
    let out = verify_every_chain(&set, &set.daemons[0]);
    assert!(out.contains("audit OK"), "{out}");
    // The cut is on the record, in the chain, saying it was past what the writer remembered.
    let cut: String = sql
        .query_one(
            "SELECT line FROM credbroker_audit WHERE replica = 1 AND line LIKE '%audit.chain_cut%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        cut.contains(&format!("it now ends at record {}", max - 30))
            && cut.contains("older than any record this writer remembers"),
        "{cut}"
    );
}

/// Someone with write access to the database but not the signing key (THREATS.md: a copy
/// of, or access to, the store) appends a forged record to a running replica's chain,
/// chained and hashed as the broker would. The replica finds its chain's end moved to a
/// record it did not write, which no signed checkpoint names: it takes nothing up, chains
/// nothing onto it and never signs a checkpoint over it — its audit fails closed — instead
/// of adopting the end and making the forgery look genuine at its next checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_forged_onto_a_running_replicas_chain_is_never_signed() {
    let (_tmp, pki, set) = seeded(TestPostgres::start(), 1).await;
    let mut w1 = pki.client_for("w1", &set.daemons[0].url);
    served(&mut w1, 3).await;
    let sql = set.sql().await;
    let last: String = sql
        .query_one(
            "SELECT line FROM credbroker_audit WHERE replica = 1 ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let last: credbroker::audit::AuditRecord = serde_json::from_str(&last).unwrap();
    let mut forged = credbroker::audit::AuditRecord {
        replica: Some(1),
        seq: last.seq + 1,
        time: last.time.clone(),
        event: credbroker::audit::AuditEvent {
            kind: "admin".into(),
            action: "webhook_secret.reveal".into(),
            request_id: "forged".into(),
            actor: "operator:mallory".into(),
            outcome: "allowed".into(),
            ..Default::default()
        },
        prev_hash: last.hash.clone(),
        hash: String::new(),
    };
    let line = String::from_utf8(forged.seal()).unwrap();
    let forged_seq = i64::try_from(forged.seq).unwrap();
    sql.execute(
        "INSERT INTO credbroker_audit (replica, seq, line) VALUES (1, $1, $2)",
        &[&forged_seq, &line],
    )
    .await
    .unwrap();
    // Several checkpoint intervals (1 s here) and resolves: the first finds the end moved,
    // every later one finds it is not the writer's.
    for _ in 0..4 {
        let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
        assert_eq!((s, code(&v)), (503, "audit_unavailable"), "{v}");
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    let signed = set
        .scalar(&format!(
            "SELECT count(*) FROM credbroker_audit_checkpoints WHERE replica = 1 AND seq >= {forged_seq}"
        ))
        .await;
    assert_eq!(signed, 0, "a checkpoint signs the forged record");
    let rows = set
        .scalar(&format!(
            "SELECT count(*) FROM credbroker_audit WHERE replica = 1 AND seq > {forged_seq}"
        ))
        .await;
    assert_eq!(rows, 0, "records were chained onto the forged one");
    set.daemons[0]
        .wait_log("which this writer did not write", 1)
        .await;
    // At error, where an operator sees it (the runbook quotes it), once per end found.
    let logs = set.daemons[0].logs();
    let errors = logs
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("which this writer did not write"))
        .count();
    assert_eq!(errors, 1, "{logs}");
}

/// Someone who can write the database plants a checkpoint row on a running replica's chain:
/// past its end, or in place of its last checkpoint (a line that does not verify). Taken as
/// the chain's last signed point when the writer next reads its tail (a reconnect), either
/// would have the writer sign nothing (more, or up to it), leaving those records open to
/// rewriting: the writer refuses it and fails closed, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_rows_planted_on_a_running_chain_fail_the_writer_closed() {
    for (plant, logged) in [
        (
            "INSERT INTO credbroker_audit_checkpoints (replica, seq, line) VALUES (1, 9000000000000000000, 'planted')",
            "which no broker wrote",
        ),
        (
            "UPDATE credbroker_audit_checkpoints SET line = 'planted' WHERE replica = 1 AND seq = (SELECT max(seq) FROM credbroker_audit_checkpoints WHERE replica = 1)",
            "does not verify over its record",
        ),
    ] {
        let (_tmp, pki, set) = seeded(TestPostgres::start(), 1).await;
        let mut w1 = pki.client_for("w1", &set.daemons[0].url);
        served(&mut w1, 3).await;
        // Signed (checkpoint_interval_s = 1).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let sql = set.sql().await;
        assert_eq!(sql.execute(plant, &[]).await.unwrap(), 1, "{plant}");
        // Every connection of the broker's cut: the writer connects again and reads its tail.
        sql.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE 'credbroker%' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap();
        for _ in 0..4 {
            let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
            assert_eq!((s, code(&v)), (503, "audit_unavailable"), "{plant}: {v}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        set.daemons[0].wait_log(logged, 1).await;
    }
}

/// On the shared store the file log still holds what offline commands record (an operator
/// bootstrapped, a migration, a KEK rotation). Its segments removed and its checkpoint file
/// left, `audit verify` still verifies the file log — and fails, naming it — rather than
/// skipping it as absent and passing on the replicas' chains alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_log_whose_segments_were_removed_still_fails_verification() {
    let (_tmp, _pki, mut set) = seeded(TestPostgres::start(), 1).await;
    set.daemons[0].stop();
    let config = set.daemons[0].config.to_str().unwrap().to_owned();
    let (c, out, err) = set.cli(&["bootstrap-operator", "--config", &config, "--id", "late"]);
    assert_eq!(c, 0, "{out}{err}");
    let out = verify_every_chain(&set, &set.daemons[0]);
    assert!(out.contains("file log: audit OK"), "{out}");
    let audit = set.daemons[0].data_dir.join("audit");
    let mut removed = 0;
    for entry in std::fs::read_dir(&audit).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("segment-")
        {
            std::fs::remove_file(path).unwrap();
            removed += 1;
        }
    }
    assert!(removed > 0);
    let (c, out, err) = set.cli(&["audit", "verify", "--config", &config]);
    assert_eq!(c, 1, "{out}{err}");
    assert!(out.contains("file log"), "{out}{err}");
}

/// An issuer key retired as compromised through one replica is no longer published by the
/// other, whose next JWKS answer reads the change (no resolve in between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_retired_on_one_replica_leaves_the_others_jwks_at_once() {
    let (tmp, pki) = setup();
    let sections: Vec<(String, u16)> = (0..2).map(|_| public_section(&pki)).collect();
    let issuer = format!("https://127.0.0.1:{}", sections[0].1);
    let set = ReplicaSet::start_each(
        TestPostgres::start(),
        tmp.path(),
        &pki,
        2,
        &|i| {
            format!(
                "{}[issuer]\nurl = \"{issuer}\"\npublish_lead_s = 60\n",
                sections[i - 1].0
            )
        },
        vec![],
    )
    .await;
    let public_urls: Vec<String> = set
        .daemons
        .iter()
        .map(|d| d.public_url.clone().unwrap())
        .collect();
    let kids = |v: &Value| -> Vec<String> {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    };
    let jwks = |i: usize| {
        let url = public_urls[i].clone();
        let pki = pki.clone();
        async move {
            let (s, v) = call(
                &mut public_client(&pki, &url),
                Method::GET,
                "/.well-known/jwks.json",
                None,
            )
            .await;
            assert_eq!(s, 200, "{v}");
            v
        }
    };
    let first = kids(&jwks(1).await);
    assert_eq!(
        first.len(),
        1,
        "the first key, created at start by one replica"
    );
    let mut op = pki.client_for("op", &set.daemons[0].url);
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/issuer/keys",
        Some(json!({"now": true})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        kids(&jwks(1).await).len(),
        2,
        "the rotation is published by the other replica"
    );
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/issuer/keys/1/retire",
        Some(json!({"compromised": true})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let after = kids(&jwks(1).await);
    assert!(
        !after.contains(&first[0]),
        "the compromised key left replica 2's JWKS: {after:?}"
    );
    assert_eq!(after.len(), 1);
}

/// While the store cannot be reached, the issuer's discovery document (which names no key)
/// is still served, from the settings alone; its JWKS, which must not publish a key
/// retired elsewhere, fails closed until the store is back. (A discovery answered 503 made
/// Google refuse every exchange as it would a withdrawn trust.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_is_served_while_the_store_is_down_and_the_jwks_is_not() {
    let (tmp, pki) = setup();
    let (section, port) = public_section(&pki);
    let issuer = format!("https://127.0.0.1:{port}");
    let mut set = ReplicaSet::start_each(
        TestPostgres::own(),
        tmp.path(),
        &pki,
        1,
        &|_| format!("{section}[issuer]\nurl = \"{issuer}\"\npublish_lead_s = 60\n"),
        vec![],
    )
    .await;
    let url = set.daemons[0].public_url.clone().unwrap();
    let get = |path: &'static str| {
        let (pki, url) = (pki.clone(), url.clone());
        async move { call(&mut public_client(&pki, &url), Method::GET, path, None).await }
    };
    let (s, discovery) = get("/.well-known/openid-configuration").await;
    assert_eq!(s, 200, "{discovery}");
    assert_eq!(get("/.well-known/jwks.json").await.0, 200);
    set.pg.stop();
    let (s, v) = get("/.well-known/openid-configuration").await;
    assert_eq!((s, &v), (200, &discovery));
    let (s, v) = get("/.well-known/jwks.json").await;
    assert_eq!(s, 503, "{v}");
    set.pg.restart();
}

/// Replicas started together on a store with no issuer key yet both come up: each finds no
/// key and makes one, one commit wins, and the other (its commit refused) takes the
/// winner's key rather than failing its start. Repeated, since who reads first is the
/// scheduler's. Fails if the loser of the race refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_share_one_first_issuer_key() {
    let (tmp, pki) = setup();
    let sections: Vec<(String, u16)> = (0..2).map(|_| public_section(&pki)).collect();
    let issuer = format!("https://127.0.0.1:{}", sections[0].1);
    let mut set = ReplicaSet::start_each(
        TestPostgres::start(),
        tmp.path(),
        &pki,
        2,
        &|i| sections[i - 1].0.clone(),
        vec![],
    )
    .await;
    for d in &mut set.daemons {
        d.stop();
        let mut config = std::fs::read_to_string(&d.config).unwrap();
        config.push_str(&format!("\n[issuer]\nurl = \"{issuer}\"\n"));
        std::fs::write(&d.config, config).unwrap();
    }
    for round in 0..3 {
        // A store with no issuer key again (as new), then both at once.
        set.sql()
            .await
            .batch_execute("DELETE FROM credbroker_records WHERE tbl = 'platform_keys' AND key LIKE 'issuer/%'")
            .await
            .unwrap();
        std::thread::scope(|s| {
            for d in set.daemons.iter_mut() {
                s.spawn(move || d.restart());
            }
        });
        let mut seen = Vec::new();
        for d in &set.daemons {
            let mut op = pki.client_for("op", &d.url);
            let (s, v) = call(&mut op, Method::GET, "/v1/admin/issuer/keys", None).await;
            assert_eq!(s, 200, "round {round}: {v}");
            let kids: Vec<String> = v["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(kids.len(), 1, "round {round}: {v}");
            seen.push(kids[0].clone());
        }
        assert_eq!(seen[0], seen[1], "round {round}: two first keys");
        for d in &mut set.daemons {
            d.stop();
        }
    }
}

/// A replica killed before its records were signed, started again once its lease has
/// lapsed, takes its chain back and first records the unsigned tail it found
/// (`audit.unsigned_tail`, as the file log does). Fails if the database writer signs over
/// such a tail silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_chain_left_unsigned_by_a_kill_says_so_when_taken_back() {
    let (tmp, pki) = setup();
    // No checkpoint for an hour or a thousand records: the seeding stays unsigned (all but
    // the first batch, signed at once).
    let quiet = "[audit]\ncheckpoint_every_records = 1000\ncheckpoint_interval_s = 3600\n";
    let mut set =
        ReplicaSet::start(TestPostgres::start(), tmp.path(), &pki, 1, quiet, vec![]).await;
    let mut op = pki.client_for("op", &set.daemons[0].url);
    seed_two_tenants(&mut op).await;
    let last: i64 = set
        .scalar("SELECT max(seq) FROM credbroker_audit WHERE replica = 1")
        .await;
    assert!(last > 3, "{last}");
    set.daemons[0].kill_hard();
    // Its lease lapses (15 s), so the restart takes replica number 1 again.
    tokio::time::sleep(Duration::from_secs(16)).await;
    set.daemons[0].restart();
    set.daemons[0].stop();
    let said: Vec<String> = set
        .sql()
        .await
        .query(
            "SELECT line FROM credbroker_audit WHERE replica = 1 AND line LIKE '%audit.unsigned_tail%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    // (The first batch was signed with it: the tail runs from the record after it.)
    assert!(
        said[0].contains(&format!("..{last} had no signed checkpoint")),
        "{said:?}"
    );
    verify_every_chain(&set, &set.daemons[0]);
}

/// An idle replica tells a dead database by itself: `/readyz` turns 503 within the idle
/// ping (no request has to fail first) and 200 again once the database answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replica_reports_a_dead_database_not_ready() {
    let (_tmp, pki, mut set) = seeded(TestPostgres::own(), 1).await;
    let mut w1 = pki.client_for("w1", &set.daemons[0].url);
    let (s, _) = call(&mut w1, Method::GET, "/readyz", None).await;
    assert_eq!(s, 200);
    set.pg.stop();
    let ready_becomes = |want: u16| {
        let pki = pki.clone();
        let url = set.daemons[0].url.clone();
        async move {
            let mut client = pki.client_for("w1", &url);
            let deadline = Instant::now() + Duration::from_secs(40);
            loop {
                let (s, _) = call(&mut client, Method::GET, "/readyz", None).await;
                if s == want {
                    return;
                }
                assert!(Instant::now() < deadline, "/readyz stayed {s}, not {want}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    ready_becomes(503).await;
    set.pg.restart();
    ready_becomes(200).await;
    until_served(&mut w1).await;
}

/// A newer build does not migrate the database, nor upgrade the records' schema, under
/// replicas that are running (they read the schema once, at their start, and would go on
/// writing what it no longer expects): it refuses to start, naming them, and starts once
/// they are stopped. The older build is stood in for by undoing, underneath, what the
/// running replica's build did: its last migration's row, then the schema version.
/// `serve` on `daemon` refuses to start, saying `says`.
fn refused_saying(daemon: &Daemon, says: &str) {
    let (code, err) = daemon.serve_refused(&[]);
    assert_ne!(code, 0);
    assert!(err.contains(says), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_build_does_not_migrate_under_running_replicas() {
    let (_tmp, _pki, mut set) = seeded(TestPostgres::start(), 2).await;
    set.daemons[1].stop();
    let db = set.sql().await;
    let last: i32 = db
        .query_one("SELECT max(version) FROM credbroker_migrations", &[])
        .await
        .unwrap()
        .get(0);
    let name: String = db
        .query_one(
            "DELETE FROM credbroker_migrations WHERE version = $1 RETURNING name",
            &[&last],
        )
        .await
        .unwrap()
        .get(0);
    refused_saying(
        &set.daemons[1],
        "cannot migrate the database: 1 broker replica(s) of an older build run on this store",
    );
    db.execute(
        "INSERT INTO credbroker_migrations (version, name) VALUES ($1, $2)",
        &[&last, &name],
    )
    .await
    .unwrap();
    let schema =
        "SELECT value FROM credbroker_records WHERE tbl = 'meta' AND key = 'schema_version'";
    let current: Vec<u8> = db.query_one(schema, &[]).await.unwrap().get(0);
    assert_ne!(current, b"3");
    db.execute(
        "UPDATE credbroker_records SET value = '3' WHERE tbl = 'meta' AND key = 'schema_version'",
        &[],
    )
    .await
    .unwrap();
    refused_saying(&set.daemons[1], "cannot upgrade the records' schema: 1 broker replica(s) of an older build run on this store");
    // Every replica stopped, but an offline change holds the store: neither the migration
    // nor the records' upgrade runs beside it (each takes that hold itself while it runs: a
    // broker of an older build that read the old schema and joins later finds it).
    set.daemons[0].stop();
    db.execute(
        "INSERT INTO credbroker_leases (name, holder, expires_at) VALUES ('offline/change', 'elsewhere:1:x', now() + interval '1 minute')",
        &[],
    )
    .await
    .unwrap();
    refused_saying(
        &set.daemons[1],
        "cannot upgrade the records' schema: an offline change",
    );
    db.execute(
        "DELETE FROM credbroker_migrations WHERE version = $1",
        &[&last],
    )
    .await
    .unwrap();
    refused_saying(
        &set.daemons[1],
        "cannot migrate the database: an offline change",
    );
    let applied: i32 = db
        .query_one("SELECT max(version) FROM credbroker_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, last - 1, "migrated beside an offline change");
    // (Its objects are all there: recorded as applied again, as above.)
    db.execute(
        "INSERT INTO credbroker_migrations (version, name) VALUES ($1, $2)",
        &[&last, &name],
    )
    .await
    .unwrap();
    db.execute(
        "DELETE FROM credbroker_leases WHERE name = 'offline/change'",
        &[],
    )
    .await
    .unwrap();
    // With every replica stopped and nothing held, the newer build upgrades and serves.
    set.daemons[1].restart();
    let upgraded: Vec<u8> = db.query_one(schema, &[]).await.unwrap().get(0);
    assert_eq!(upgraded, current);
}

/// A revoked operator: disabled through one replica, its very next request to another — on a
/// connection it had already opened there — is refused, and a new record it tries to add
/// does not land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_disabled_on_one_replica_is_refused_by_the_others() {
    let (_tmp, pki, set) = seeded(TestPostgres::start(), 2).await;
    pki.operator("op2");
    let mut op = pki.client_for("op", &set.daemons[0].url);
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/operators",
        Some(json!({"id": "op2"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let mut op2_on_b = pki.client_for("op2", &set.daemons[1].url);
    let (s, v) = call(&mut op2_on_b, Method::GET, "/v1/admin/tenants", None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/operators/op2/disable",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &mut op2_on_b,
        Method::POST,
        "/v1/admin/tenants",
        Some(json!({"id": "sneaky"})),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "operator_required"), "{v}");
    let (s, _) = call(&mut op, Method::GET, "/v1/admin/tenants/sneaky", None).await;
    assert_eq!(s, 404, "nothing was added");
}

/// Entra's one live consent link per customer tenant GUID holds across replicas: three
/// operators on three replicas issuing links for one GUID to three tenants at the same
/// moment get one link out, and the others `conflict` — the pin record every issuance passes
/// through as read, not one broker's lock, decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_entra_guid_gets_one_link_whichever_replica_issues_it() {
    use credbroker_tests::fake_entra::{add_client_secret, FakeEntra};
    const CLIENT_ID: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    let (tmp, pki) = setup();
    let entra = FakeEntra::start(CLIENT_ID, "secretA~0123456789abcdefghijklmnop").await;
    let sections: Vec<(String, u16)> = (0..3).map(|_| public_section(&pki)).collect();
    let redirect = format!(
        "https://127.0.0.1:{}/callbacks/entra_multi_tenant/setup",
        sections[0].1
    );
    let set = ReplicaSet::start_each(
        TestPostgres::start(),
        tmp.path(),
        &pki,
        3,
        &|i| {
            format!(
                "{}[providers.entra_multi_tenant]\nclient_id = \"{CLIENT_ID}\"\nauthority_host = \"{url}\"\narm_base_url = \"{url}\"\ngraph_base_url = \"{url}\"\nredirect_uri = \"{redirect}\"\nceiling_file = {ceiling:?}\ntimeout_ms = 3000\n",
                sections[i - 1].0,
                url = entra.url,
                ceiling = repo_root().join("policies/azure.json").display().to_string(),
            )
        },
        vec![],
    )
    .await;
    let mut op = pki.client_for("op", &set.daemons[0].url);
    seed_two_tenants(&mut op).await;
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/tenants",
        Some(json!({"id": "t3"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    add_client_secret(&mut op, "secretA~0123456789abcdefghijklmnop").await;

    for round in 0..6 {
        let guid = format!("4444444{round}-5555-4666-8777-888888888888");
        let mut racers = Vec::new();
        // Every connection is up before the race starts, and the three start together.
        let start = Arc::new(tokio::sync::Barrier::new(3));
        for (i, mut client) in clients(&pki, &set, "op").into_iter().enumerate() {
            let (s, v) = call(&mut client, Method::GET, "/v1/admin/tenants/t1", None).await;
            assert_eq!(s, 200, "{v}");
            let body = json!({"owner": "team-tests", "purpose": "integration test", "tenant": format!("t{}", i + 1), "account": {"login": guid, "id": 0}});
            let start = start.clone();
            racers.push(tokio::spawn(async move {
                start.wait().await;
                call(
                    &mut client,
                    Method::POST,
                    "/v1/admin/onboard/entra_multi_tenant",
                    Some(body),
                )
                .await
            }));
        }
        let mut outcomes = Vec::new();
        for r in racers {
            let (s, v) = r.await.unwrap();
            outcomes.push((s, code(&v).to_owned()));
        }
        outcomes.sort();
        assert_eq!(
            outcomes,
            vec![
                (200, String::new()),
                (409, "conflict".into()),
                (409, "conflict".into())
            ],
            "round {round}: one GUID, one link out, whichever replica issues it"
        );
        let (links, v) = onboarding_links(&mut op).await;
        let out = links
            .iter()
            .filter(|l| l["account"]["login"] == guid.as_str())
            .count();
        assert_eq!(out, 1, "round {round}: {v}");
    }
}

/// `audit verify --config` of `d` as a child process, given at most `within`: its exit code
/// and output (`None`: it was still running, and was killed).
fn verify_within(set: &ReplicaSet, d: &Daemon, within: Duration) -> Option<(i32, String)> {
    let mut child = std::process::Command::new(daemon_bin())
        .args(["audit", "verify", "--config", d.config.to_str().unwrap()])
        .envs(set.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    Some((
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// Someone who can write the database adds or removes audit rows the brokers never wrote:
/// `audit verify` ends, and fails (exit 1) naming the chain.
/// - A full page of rows at the top of the sequence space (verify and its paging once read
///   the chain again forever; the paging itself is unit-tested in `audit::chains`).
/// - A replica's records deleted, its checkpoints left (the chain once vanished from the
///   listing, and verify passed on the rest).
/// - A row of a replica numbered below zero (once skipped silently): refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_ends_and_fails_on_rows_no_broker_wrote() {
    let (_tmp, set, db) = seeded_signed_and_stopped().await;
    let d = &set.daemons[0];
    let real = set
        .scalar("SELECT min(replica)::bigint FROM credbroker_audit")
        .await;
    // An export kept off the host, pinned: the replica chain's signed head and checkpoints.
    let config = d.config.to_str().unwrap().to_owned();
    let (c, out, err) = set.cli(&["audit", "export", "--config", &config]);
    assert_eq!(c, 0, "{err}");
    let pin = d.root.join("pinned-export.jsonl");
    std::fs::write(&pin, out).unwrap();
    let pinned = |set: &ReplicaSet| {
        let (c, out, err) = set.cli(&[
            "audit",
            "verify",
            "--config",
            &config,
            "--pinned",
            pin.to_str().unwrap(),
        ]);
        (c, format!("{out}{err}"))
    };
    let (c, out) = pinned(&set);
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("pinned record(s) found unchanged"), "{out}");
    // `audit report --pinned` judges the chains as `audit verify --pinned` does.
    let report = d.root.join("pinned-report.json");
    let report_pinned = |set: &ReplicaSet| {
        let mut args = audit_to_file("report", &config, "--json", &report).to_vec();
        args.extend(["--pinned", pin.to_str().unwrap()]);
        let (c, out, err) = set.cli(&args);
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&report).unwrap_or_else(|e| panic!("{e}: {out}{err}")),
        )
        .unwrap();
        (c, v)
    };
    let (c, v) = report_pinned(&set);
    assert_eq!((c, &v["verified"]), (0, &json!(true)), "{v:#}");
    assert!(
        v["chains"][0]["pinned"].as_u64().unwrap() > 0,
        "{:#}",
        v["chains"]
    );

    db.batch_execute(
        "INSERT INTO credbroker_audit (replica, seq, line) \
         SELECT 7, g, 'x' FROM generate_series(9223372036854765808, 9223372036854775807) g",
    )
    .await
    .unwrap();
    let (c, out) = verify_within(&set, d, Duration::from_secs(60))
        .expect("audit verify ended on a chain at the largest sequence numbers");
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("replica 7"), "{out}");
    db.batch_execute("DELETE FROM credbroker_audit WHERE replica = 7")
        .await
        .unwrap();

    // A checkpoint row no broker wrote: the chain's failure (exit 1, in the JSON a
    // monitor reads), not a read error (exit 2, no verdict).
    db.batch_execute(
        "INSERT INTO credbroker_audit_checkpoints (replica, seq, line) VALUES (8, 1, 'garbage')",
    )
    .await
    .unwrap();
    let (c, out) = verify_within(&set, d, Duration::from_secs(60)).unwrap();
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("replica 8") && out.contains("does not parse"),
        "{out}"
    );
    let (c, out, err) = set.cli(&[
        "audit",
        "verify",
        "--config",
        d.config.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(c, 1, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verified"], false, "{v}");
    db.batch_execute("DELETE FROM credbroker_audit_checkpoints WHERE replica = 8")
        .await
        .unwrap();

    db.batch_execute(&format!(
        "DELETE FROM credbroker_audit WHERE replica = {real}"
    ))
    .await
    .unwrap();
    let (c, out) = verify_within(&set, d, Duration::from_secs(60)).unwrap();
    assert_eq!(c, 1, "a chain whose records were deleted passed: {out}");
    assert!(out.contains(&format!("replica {real}")), "{out}");
    // Its checkpoints deleted too, the chain is gone from the listing: the host has nothing
    // left to fail on, the pinned copy does.
    db.batch_execute(&format!(
        "DELETE FROM credbroker_audit_checkpoints WHERE replica = {real}"
    ))
    .await
    .unwrap();
    let (c, out) = pinned(&set);
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains(&format!("replica {real}")) && out.contains("no such chain (removed)"),
        "{out}"
    );
    // Without the copy, the host still says that a store in use holds no chain at all.
    let (_, out) = verify_within(&set, d, Duration::from_secs(60)).unwrap();
    assert!(out.contains("store record(s) but no audit chain"), "{out}");
    let (c, v) = report_pinned(&set);
    assert_eq!((c, &v["verified"]), (1, &json!(false)), "{v:#}");
    let gone = v["chains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ch| ch["label"] == format!("replica {real}"))
        .unwrap_or_else(|| panic!("{:#}", v["chains"]));
    assert!(
        gone["failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("no such chain (removed)"),
        "{gone}"
    );

    db.batch_execute("INSERT INTO credbroker_audit (replica, seq, line) VALUES (-2, 1, 'x')")
        .await
        .unwrap();
    let (c, out) = verify_within(&set, d, Duration::from_secs(60)).unwrap();
    assert_ne!(c, 0, "{out}");
    assert!(out.contains("replica -2"), "{out}");
}

/// Someone who can write the database breaks a chain with a row that does not parse, then
/// adds rows past it claiming small sequence numbers (an operator's changes that never
/// happened). `audit report` fails the chain and sums up only what preceded the failure: the
/// planted rows, never checked, were counted among those records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_of_a_broken_chain_sums_up_only_what_verified() {
    let (tmp, set, db) = seeded_signed_and_stopped().await;
    let config = set.daemons[0].config.to_str().unwrap().to_owned();
    let report_path = tmp.path().join("report.json");
    let report = || {
        let (c, out, err) = set.cli(&audit_to_file("report", &config, "--json", &report_path));
        let text =
            std::fs::read_to_string(&report_path).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        (c, text)
    };
    let (c, text) = report();
    assert_eq!(c, 0, "{text}");
    let before: serde_json::Value = serde_json::from_str(&text).unwrap();
    let row = db
        .query_one(
            "SELECT replica, max(seq) FROM credbroker_audit GROUP BY replica",
            &[],
        )
        .await
        .unwrap();
    let (replica, end): (i32, i64) = (row.get(0), row.get(1));
    let planted = |seq: i64, claimed: u64, action: &str| {
        let mut record = credbroker::audit::AuditRecord {
            replica: Some(u32::try_from(replica).unwrap()),
            seq: claimed,
            time: "2026-12-06T05:00:00.000000Z".into(),
            event: credbroker::audit::AuditEvent {
                kind: "admin".into(),
                action: action.into(),
                request_id: format!("req_planted{seq}"),
                actor: "operator:mallory".into(),
                outcome: "allowed".into(),
                ..Default::default()
            },
            prev_hash: credbroker::audit::GENESIS_HASH.to_owned(),
            hash: String::new(),
        };
        (seq, String::from_utf8(record.seal()).unwrap())
    };
    let mut rows = vec![(end + 1, "garbage".to_owned())];
    rows.push(planted(end + 2, 3, "operator.add"));
    rows.push(planted(end + 3, 4, "secret.set"));
    for (seq, line) in &rows {
        db.execute(
            "INSERT INTO credbroker_audit (replica, seq, line) VALUES ($1, $2, $3)",
            &[&replica, seq, line],
        )
        .await
        .unwrap();
    }
    let (c, text) = report();
    assert_eq!(c, 1, "{text}");
    let after: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(after["verified"], false, "{after:#}");
    assert!(
        !text.contains("mallory"),
        "planted rows were summed up: {text}"
    );
    for figure in ["records", "admin_changes_total", "denials_total"] {
        assert_eq!(after[figure], before[figure], "{figure}: {after:#}");
    }
    // Without the unparsable row: a planted record right after the end, claiming seq 3.
    // The failure is there; the record out of sequence order is not summed up either.
    db.execute(
        "DELETE FROM credbroker_audit WHERE replica = $1 AND seq > $2",
        &[&replica, &end],
    )
    .await
    .unwrap();
    let (seq, line) = planted(end + 1, 3, "operator.add");
    db.execute(
        "INSERT INTO credbroker_audit (replica, seq, line) VALUES ($1, $2, $3)",
        &[&replica, &seq, &line],
    )
    .await
    .unwrap();
    let (c, text) = report();
    assert_eq!(c, 1, "{text}");
    let after: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        !text.contains("mallory"),
        "a planted row was summed up: {text}"
    );
    for figure in ["records", "admin_changes_total", "denials_total"] {
        assert_eq!(after[figure], before[figure], "{figure}: {after:#}");
    }
}

/// Someone who can write the database, without the signing key, writes a whole chain for a
/// replica number no broker holds: records in canonical form, hash-chained from the genesis
/// hash, naming an operator's changes, and no checkpoint (they cannot sign one). `audit
/// verify` reported "replica 7: audit OK … last signed checkpoint at none", with the right
/// public key or any other, and `audit report` counted the records. A broker signs its
/// chain's first batch at once, so it now fails whichever key it is given, export refuses
/// it and report fails it, also with a lease row written beside it to pass for a running
/// broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_no_broker_signed_fails_verify_with_any_key() {
    let (tmp, set, db) = seeded_signed_and_stopped().await;
    let d = &set.daemons[0];
    let mut prev = credbroker::audit::GENESIS_HASH.to_owned();
    for seq in 1..=5u64 {
        let mut record = credbroker::audit::AuditRecord {
            replica: Some(7),
            seq,
            time: "2026-12-06T05:00:00.000000Z".into(),
            event: credbroker::audit::AuditEvent {
                kind: "admin".into(),
                action: "operator.add".into(),
                request_id: format!("req_forged{seq}"),
                actor: "operator:alice".into(),
                outcome: "allowed".into(),
                ..Default::default()
            },
            prev_hash: prev.clone(),
            hash: String::new(),
        };
        let line = String::from_utf8(record.seal()).unwrap();
        db.execute(
            "INSERT INTO credbroker_audit (replica, seq, line) VALUES (7, $1, $2)",
            &[&i64::try_from(seq).unwrap(), &line],
        )
        .await
        .unwrap();
        prev = record.hash.clone();
    }
    let config = d.config.to_str().unwrap().to_owned();
    let other_key = another_audit_key(tmp.path());
    for extra in [vec![], vec!["--public-key", other_key.to_str().unwrap()]] {
        let mut args = vec!["audit", "verify", "--config", &config];
        args.extend(extra);
        let (c, out, err) = set.cli(&args);
        assert_eq!(c, 1, "{args:?}: {out}{err}");
        assert!(
            out.contains("replica 7: audit FAILED at sequence 1")
                && out.contains("no signed checkpoint"),
            "{args:?}: {out}"
        );
    }
    // Nor is it exported under the key, or summed up in a report.
    let (c, out, err) = set.cli(&["audit", "export", "--config", &config]);
    assert_ne!(c, 0, "an export signed records no checkpoint signs: {out}");
    assert!(
        err.contains("replica 7") && err.contains("export refused"),
        "{err}"
    );
    let report = tmp.path().join("report.json");
    let (c, out, err) = set.cli(&audit_to_file("report", &config, "--json", &report));
    assert_eq!(c, 1, "{out}{err}");
    // The doctor fails that chain, and only that one.
    let (_, out, err) = set.cli(&["doctor", "--config", &config, "--output", "json"]);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    let finding = |check: &str| {
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == check)
            .cloned()
            .unwrap_or_else(|| panic!("no {check}: {v:#}"))
    };
    let forged = finding("audit.checkpoint.replica_7");
    assert_eq!(forged["status"], "fail", "{forged}");
    assert!(
        forged["detail"]
            .as_str()
            .unwrap()
            .contains("no signed checkpoint"),
        "{forged}"
    );
    let real = set
        .scalar("SELECT min(replica)::bigint FROM credbroker_audit WHERE replica <> 7")
        .await;
    let genuine = finding(&format!("audit.checkpoint.replica_{real}"));
    assert_eq!(genuine["status"], "ok", "{genuine}");
    // A lease row written by hand to pass for a running broker changes nothing.
    db.execute(
        "INSERT INTO credbroker_leases (name, holder, expires_at) VALUES ('replica/7', 'forged', now() + interval '10 seconds')",
        &[],
    )
    .await
    .unwrap();
    let (c, out, err) = set.cli(&["audit", "verify", "--config", &config]);
    assert_eq!(c, 1, "{out}{err}");
    assert!(
        out.contains("replica 7: audit FAILED at sequence 1"),
        "{out}"
    );
}

/// A replica killed long before its checkpoint interval: its chain's first batch was signed
/// in the batch's own transaction, so the chain verifies, and is not taken for records no
/// broker wrote (which a chain without any checkpoint is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_in_its_first_interval_leaves_a_signed_chain() {
    let (tmp, pki) = setup();
    let mut set = ReplicaSet::start(
        TestPostgres::start(),
        tmp.path(),
        &pki,
        1,
        "[audit]\ncheckpoint_interval_s = 3600\n",
        vec![],
    )
    .await;
    let mut op = pki.client_for("op", &set.daemons[0].url);
    seed_two_tenants(&mut op).await;
    set.daemons[0].kill_hard();
    set.sql()
        .await
        .execute(
            "DELETE FROM credbroker_leases WHERE name LIKE 'replica/%'",
            &[],
        )
        .await
        .unwrap();
    let out = verify_every_chain(&set, &set.daemons[0]);
    assert!(!out.contains("last signed checkpoint at none"), "{out}");
}

/// Someone who can write the database moves a whole chain, records and checkpoints, to a
/// replica number no broker uses. Every hash still links and every checkpoint's signature
/// still holds: only the replica each record names shows the move, and `audit verify` fails
/// on it (exit 1) rather than report a healthy chain 9 and a chain that was never there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_moved_to_another_replica_number_fails_verify() {
    let (_tmp, set, db) = seeded_signed_and_stopped().await;
    let d = &set.daemons[0];
    let real = set
        .scalar("SELECT min(replica)::bigint FROM credbroker_audit")
        .await;
    let signed = set
        .scalar(&format!(
            "SELECT count(*)::bigint FROM credbroker_audit_checkpoints WHERE replica = {real}"
        ))
        .await;
    assert!(signed > 0, "no checkpoint to carry over");
    db.batch_execute(&format!(
        "UPDATE credbroker_audit SET replica = 9 WHERE replica = {real}; \
         UPDATE credbroker_audit_checkpoints SET replica = 9 WHERE replica = {real}"
    ))
    .await
    .unwrap();
    let (c, out) = verify_within(&set, d, Duration::from_secs(60)).unwrap();
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains(&format!("record names replica {real}, not this chain's 9"))
            && out.contains("moved between chains"),
        "{out}"
    );
}

/// A record copied in from another replica's chain, with that chain's checkpoint, hashes and
/// is signed: a replica whose chain is made to end in it, underneath it or before it starts,
/// does not take it as its own end and chain onto it (the record names the replica that
/// wrote it), as `audit verify` does not. A start refused so exits with an error, not a
/// panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_from_another_chain_is_not_taken_as_a_chains_end() {
    let (_tmp, pki, mut set) = seeded(TestPostgres::start(), 2).await;
    let mut w1 = clients(&pki, &set, "w1");
    for client in &mut w1 {
        served(client, 3).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let db = set.sql().await;
    let signed = set
        .scalar("SELECT max(seq) FROM credbroker_audit_checkpoints WHERE replica = 2")
        .await;
    assert!(signed > 0, "replica 2's chain has a checkpoint");
    let graft = format!(
        "DELETE FROM credbroker_audit WHERE replica = 1; \
         DELETE FROM credbroker_audit_checkpoints WHERE replica = 1; \
         INSERT INTO credbroker_audit (replica, seq, line) \
           SELECT 1, seq, line FROM credbroker_audit WHERE replica = 2 AND seq = {signed}; \
         INSERT INTO credbroker_audit_checkpoints (replica, seq, line) \
           SELECT 1, seq, line FROM credbroker_audit_checkpoints WHERE replica = 2 AND seq = {signed}"
    );
    // Underneath the running replica 1: its next batch finds its chain changed, reads the
    // end again, and refuses it.
    db.batch_execute(&graft).await.unwrap();
    let (s, v) = resolve(&mut w1[0], json!({"instance_id": "i1"})).await;
    assert_eq!((s, code(&v)), (503, "audit_unavailable"), "{v}");
    let (s, v) = resolve(&mut w1[0], json!({"instance_id": "i1"})).await;
    assert_ne!(
        s, 200,
        "nothing is chained onto another chain's record: {v}"
    );
    assert!(
        set.daemons[0]
            .logs()
            .contains("names replica 2 (moved between chains)"),
        "{}",
        set.daemons[0].logs()
    );
    // Before it starts: the start is refused, with the reason, and without a panic.
    set.daemons[0].kill_hard();
    db.batch_execute(&format!(
        "{graft}; DELETE FROM credbroker_leases WHERE name = 'replica/1'"
    ))
    .await
    .unwrap();
    let (c, err) = set.daemons[0].serve_refused(&[]);
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("moved between chains"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_disabled_on_one_replica_is_minted_afresh_by_the_others() {
    let (_tmp, pki, sts, set) = aws_replicas(2).await;
    let mut op = pki.client_for("op", &set.daemons[0].url);
    seed_two_tenants(&mut op).await;
    let (s, facts) = call(
        &mut op,
        Method::POST,
        "/v1/admin/onboard/aws_assume_role",
        Some(json!({"tenant": "t1"})),
    )
    .await;
    assert_eq!(s, 200, "{facts}");
    let arn = format!("arn:aws:iam::{CUSTOMER}:role/Cached");
    sts.add_role(
        &arn,
        FakeRole {
            account: CUSTOMER.into(),
            trusted_account: VENDOR.into(),
            external_id: facts["external_id"].as_str().map(str::to_owned),
            ..FakeRole::default()
        },
    );
    for (path, body) in [
        (
            "/v1/admin/bindings",
            json!({"owner": "team-tests", "purpose": "integration test", "id": "aws1", "tenant": "t1", "provider": "aws_assume_role", "config": {"role_arn": arn}}),
        ),
        (
            "/v1/admin/instances",
            json!({"id": "i-aws", "tenant": "t1", "binding": "aws1", "connector_kind": "aws"}),
        ),
    ] {
        let (s, v) = call(&mut op, Method::POST, path, Some(body)).await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/aws1/probe",
        Some(json!({})),
    )
    .await;
    assert_eq!((s, &v["binding"]["status"]), (200, &json!("active")), "{v}");

    // Replica 2 mints, then serves from its cache.
    let mut w1 = clients(&pki, &set, "w1");
    let key = |v: &Value| v["credentials"]["AccessKeyId"].as_str().unwrap().to_owned();
    let (s, v) = resolve(&mut w1[1], json!({"instance_id": "i-aws"})).await;
    assert_eq!((s, &v["cached"]), (200, &json!(false)), "{v}");
    let before = key(&v);
    let (s, v) = resolve(&mut w1[1], json!({"instance_id": "i-aws"})).await;
    assert_eq!(
        (s, &v["cached"], key(&v)),
        (200, &json!(true), before.clone())
    );

    // The customer revoked the role's sessions; the operator drops them through replica 1
    // (runbooks/worker-compromise.md): disable, then enable (which probes again).
    for step in ["disable", "enable"] {
        let (s, v) = call(
            &mut op,
            Method::POST,
            &format!("/v1/admin/bindings/aws1/{step}"),
            None,
        )
        .await;
        assert_eq!(s, 200, "{step}: {v}");
    }
    let calls = sts.state.calls();
    let (s, v) = resolve(&mut w1[1], json!({"instance_id": "i-aws"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["cached"], false,
        "replica 2 served a credential it cached before the binding was disabled"
    );
    assert_ne!(key(&v), before);
    assert_eq!(sts.state.calls() - calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_committed_after_the_broker_gave_up_is_followed_by_its_refusal() {
    let (tmp, pki) = setup();
    // `timeout_ms` (in [store], which the extra text continues) bounds a whole audit batch
    // and, server side, each statement.
    let extra = format!("timeout_ms = 5000\n{AUDIT}");
    let set = ReplicaSet::start(TestPostgres::start(), tmp.path(), &pki, 1, &extra, vec![]).await;
    let mut op = pki.client_for("op", &set.daemons[0].url);
    seed_two_tenants(&mut op).await;
    // While `slow` holds a row, the database slows a batch's INSERT by `insert_s` and its
    // COMMIT by `commit_s`: each finishes within its statement timeout (5 s), the batch not
    // within the writer's (5 s), which it passes about a second into the COMMIT. In case 1
    // the COMMIT then ends 0.3 s later, before the writer tries again (about a second after
    // a failure); in case 2 it runs 3 s more, and the writer's next try ends it.
    let sql = set.sql().await;
    sql.batch_execute(
        "CREATE TABLE slow (insert_s float8, commit_s float8);
         CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(COALESCE((SELECT insert_s FROM slow), 0)); RETURN NULL; END $$;
         CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(COALESCE((SELECT commit_s FROM slow), 0)); RETURN NULL; END $$;
         CREATE TRIGGER slow_insert AFTER INSERT ON credbroker_audit FOR EACH STATEMENT EXECUTE FUNCTION slow_insert();
         CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON credbroker_audit DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();
         INSERT INTO slow VALUES (4.0, 1.3);",
    )
    .await
    .unwrap();
    let disables = || async {
        set.sql()
            .await
            .query("SELECT line FROM credbroker_audit ORDER BY seq", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
            .filter(|v: &Value| v["action"] == "worker.disable")
            .collect::<Vec<Value>>()
    };
    let mut w1 = pki.client_for("w1", &set.daemons[0].url);

    // 1. The server completes the COMMIT (nothing asks meanwhile): the record is in the
    //    chain, and the next batch carries the record it is owed.
    let (s, v) = call(&mut op, Method::POST, "/v1/admin/workers/w1/disable", None).await;
    assert_eq!((s, code(&v)), (503, "audit_unavailable"), "{v}");
    sql.batch_execute("DELETE FROM slow").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while disables().await.is_empty() {
        assert!(Instant::now() < deadline, "the COMMIT never completed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing was changed: the worker still resolves.
    until_served(&mut w1).await;
    let records = disables().await;
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["outcome"], "allowed");
    assert_eq!(records[1]["outcome"], "failed", "{}", records[1]);
    assert_eq!(records[1]["error_code"], "audit_unavailable");
    assert_eq!(records[1]["request_id"], records[0]["request_id"]);
    let first = format!("aud_{}", &records[0]["hash"].as_str().unwrap()[..20]);
    assert!(
        records[1]["detail"].as_str().unwrap().contains(&first),
        "{}",
        records[1]
    );

    // 2. The next request comes while the server is still in that COMMIT: the writer ends
    //    the old connection's server process before it looks, so what it finds is final
    //    (here: not committed, owed nothing), never a batch that lands behind its back.
    sql.batch_execute("INSERT INTO slow VALUES (4.0, 4.0)")
        .await
        .unwrap();
    let (s, v) = call(&mut op, Method::POST, "/v1/admin/workers/w1/disable", None).await;
    assert_eq!((s, code(&v)), (503, "audit_unavailable"), "{v}");
    sql.batch_execute("DELETE FROM slow").await.unwrap();
    until_served(&mut w1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = disables().await;
    let allowed = after.iter().filter(|r| r["outcome"] == "allowed").count();
    let failed = after.iter().filter(|r| r["outcome"] == "failed").count();
    assert_eq!(
        allowed, failed,
        "an allowed disable without its refusal: {after:?}"
    );
    until_served(&mut w1).await;
    verify_every_chain(&set, &set.daemons[0]);
}

/// An offline change holds the store while it runs: a KEK rotation from another host (its
/// hold is a live `offline/change` lease) refuses a second rotation and a replica's start;
/// once it has ended, a rotation with a keyring that does not open the store as it is now
/// (another host's copy, saved before the rotation there) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_change_holds_the_store_and_a_stale_keyring_changes_nothing() {
    let (_tmp, pki, mut set) = seeded(TestPostgres::start(), 2).await;
    for d in &mut set.daemons {
        d.stop();
    }
    let sql = set.sql().await;
    sql.execute(
        "INSERT INTO credbroker_leases (name, holder, expires_at) VALUES ('offline/change', 'elsewhere:1:x', now() + interval '1 minute')",
        &[],
    )
    .await
    .unwrap();
    let config = |i: usize| set.daemons[i].config.to_str().unwrap().to_owned();
    let (c, out, err) = set.cli(&["keys", "rotate-kek", "--config", &config(0)]);
    assert_ne!(c, 0, "{out}");
    assert!(err.contains("another offline change"), "{err}");
    let (c, err) = set.daemons[0].serve_refused(&[]);
    assert_ne!(c, 0);
    assert!(err.contains("an offline change"), "{err}");
    // The refused start gave its replica id back at once.
    assert_eq!(
        set.scalar("SELECT count(*) FROM credbroker_leases WHERE name LIKE 'replica/%' AND expires_at > now()").await,
        0
    );

    sql.execute(
        "DELETE FROM credbroker_leases WHERE name = 'offline/change'",
        &[],
    )
    .await
    .unwrap();
    let (c, out, err) = set.cli(&["keys", "rotate-kek", "--config", &config(0)]);
    assert_eq!(c, 0, "{out}{err}");
    assert_eq!(
        set.scalar("SELECT count(*) FROM credbroker_leases WHERE name = 'offline/change'")
            .await,
        0,
        "the rotation gave its hold up"
    );
    // The second replica's keyring is the copy from before that rotation.
    let (c, out, err) = set.cli(&["keys", "rotate-kek", "--config", &config(1)]);
    assert_ne!(c, 0, "{out}");
    assert!(
        err.contains("which the keyring does not hold") && err.contains("nothing was changed"),
        "{err}"
    );
    // Its broker refuses to start on it, and gives its replica id (and the lead it took
    // on joining) back at once, not when the leases lapse.
    let (c, err) = set.daemons[1].serve_refused(&[]);
    assert_ne!(c, 0);
    assert!(err.contains("which the keyring does not hold"), "{err}");
    assert_eq!(
        set.scalar("SELECT count(*) FROM credbroker_leases WHERE expires_at > now()")
            .await,
        0
    );
    // With the rotated keyring, a start that fails after its broker opened (here a TLS key
    // others may read) gives its leases back at once too.
    std::fs::copy(
        kek_file_for(&set.daemons[0].data_dir),
        kek_file_for(&set.daemons[1].data_dir),
    )
    .unwrap();
    let key = pki.dir.join("server.key");
    let mode = |m| {
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap()
    };
    mode(0o644);
    let (c, err) = set.daemons[1].serve_refused(&[]);
    mode(0o600);
    assert_ne!(c, 0);
    assert!(err.contains("has mode 0644"), "{err}");
    assert_eq!(
        set.scalar("SELECT count(*) FROM credbroker_leases WHERE expires_at > now()")
            .await,
        0
    );
    // The first replica serves every secret with the rotated keyring.
    set.daemons[0].restart();
    let mut w1 = pki.client_for("w1", &set.daemons[0].url);
    served(&mut w1, 3).await;
}

/// The first KEK rotation of a store (one with no record of its version yet) whose re-wrap
/// batch fails (here the database refuses every write of a sealed secret) has saved its
/// keyring with the new version active: a broker refuses to start with it, since the store
/// was given the version it is on before the keyring was saved. A replica with the old
/// keyring starts (nothing was re-wrapped), and a rotation run again puts the two in step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_rotation_whose_rewrap_fails_leaves_its_keyring_refused() {
    let (_tmp, pki, mut set) = seeded(TestPostgres::start(), 2).await;
    for d in &mut set.daemons {
        d.stop();
    }
    let sql = set.sql().await;
    sql.batch_execute(
        "CREATE FUNCTION cb_refuse_secrets() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no space left on device'; END $$;
         CREATE TRIGGER cb_refuse_secrets BEFORE INSERT OR UPDATE ON credbroker_records FOR EACH ROW WHEN (NEW.tbl = 'secrets') EXECUTE FUNCTION cb_refuse_secrets();",
    )
    .await
    .unwrap();
    let config0 = set.daemons[0].config.to_str().unwrap().to_owned();
    let (c, out, err) = set.cli(&["keys", "rotate-kek", "--config", &config0]);
    assert_ne!(c, 0, "{out}");
    assert!(err.contains("the re-wrap of"), "{err}");
    let (c, err) = set.daemons[0].serve_refused(&[]);
    assert_ne!(c, 0);
    assert!(
        err.contains(
            "active KEK version 2 is newer than the version the store was last rotated to (1)"
        ),
        "{err}"
    );
    // The other replica's keyring (version 1 alone) opens the store as it is.
    set.daemons[1].restart();
    let mut w1 = pki.client_for("w1", &set.daemons[1].url);
    served(&mut w1, 3).await;
    set.daemons[1].stop();
    sql.batch_execute("DROP TRIGGER cb_refuse_secrets ON credbroker_records")
        .await
        .unwrap();
    let (c, out, err) = set.cli(&["keys", "rotate-kek", "--config", &config0]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("version 2 -> 3"), "{out}");
    set.daemons[0].restart();
    let mut w1 = pki.client_for("w1", &set.daemons[0].url);
    served(&mut w1, 3).await;
}

/// A self-rotation claims its binding among the replicas for its run (`rotation/<binding>`):
/// while another broker's rotation holds it (the leader's timer there, an operator's request
/// here), none starts, and nothing is created upstream; once it is free, one runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_self_rotation_of_a_binding_runs_among_the_replicas() {
    let (tmp, pki) = setup();
    let dc = credbroker_tests::fake_atlassian_dc::FakeAtlassianDc::start().await;
    let toml = format!(
        "{AUDIT}[providers.atlassian_dc_pat]\nallowed_hosts = [\"{}\"]\nnew_token_days = 90\nrotate_days_before_expiry = 14\ntimeout_ms = 3000\n",
        dc.authority
    );
    let set = ReplicaSet::start(TestPostgres::start(), tmp.path(), &pki, 1, &toml, vec![]).await;
    let mut op = pki.client_for("op", &set.daemons[0].url);
    seed_two_tenants(&mut op).await;
    let old = dc.state.issue("scanner", 60);
    let v =
        credbroker_tests::fake_atlassian_dc::bind_jira(&mut op, &dc, &old.raw, Some(old.id)).await;
    assert_eq!(v["binding"]["status"], "active", "{v}");

    let sql = set.sql().await;
    sql.execute(
        "INSERT INTO credbroker_leases (name, holder, expires_at) VALUES ('rotation/acme-jira', 'elsewhere:1:x', now() + interval '1 minute')",
        &[],
    )
    .await
    .unwrap();
    let self_rotate = "/v1/admin/bindings/acme-jira/secret/self-rotate";
    let (s, v) = call(&mut op, Method::POST, self_rotate, Some(json!({}))).await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another replica"),
        "{v}"
    );
    assert_eq!(dc.state.pats.lock().unwrap().len(), 1, "a PAT was created");

    sql.execute(
        "DELETE FROM credbroker_leases WHERE name = 'rotation/acme-jira'",
        &[],
    )
    .await
    .unwrap();
    let (s, v) = call(&mut op, Method::POST, self_rotate, Some(json!({}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["active_secret_version"], 2, "{v}");
    // Given back when it ended.
    assert_eq!(
        set.scalar("SELECT count(*) FROM credbroker_leases WHERE name = 'rotation/acme-jira' AND expires_at > now()")
            .await,
        0
    );
}
