//! The credential inventory (issue 16): owners and purposes, last use kept without a store
//! write per resolve, the flags, the CLI and the metrics; and the provider catalog.

use credbroker::client::BrokerClient;
use credbroker::store::{Batch, Op, Table};
use credbroker_tests::*;
use http::Method;
use serde_json::{json, Value};

const NO_FLUSH: &str = "[inventory]\nflush_interval_s = 3600\nmetrics_interval_s = 3600\n";

fn row<'a>(inv: &'a Value, kind: &str, id: &str) -> &'a Value {
    inv["inventory"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == kind && i["id"] == id)
        .unwrap_or_else(|| panic!("no {kind} {id} in {inv}"))
}

fn flags(inv: &Value, kind: &str, id: &str) -> Vec<String> {
    row(inv, kind, id)["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}

async fn inventory(op: &mut BrokerClient, query: &str) -> Value {
    let (s, v) = call(
        op,
        Method::GET,
        &format!("/v1/admin/inventory{query}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v
}

/// A seeded daemon whose periodic inventory passes wait an hour (the tests decide when they
/// run), and the operator's client.
async fn start_seeded_no_flush() -> (
    tempfile::TempDir,
    std::sync::Arc<TestPki>,
    Daemon,
    BrokerClient,
) {
    start_seeded(&DaemonOptions {
        extra_toml: NO_FLUSH.into(),
        ..Default::default()
    })
    .await
}

/// Rewrites records of a stopped daemon's store as an older release left them.
async fn edit_store(daemon: &Daemon, edit: impl FnOnce(&mut Value, &mut Value)) {
    let config = credbroker::config::Config::load(&daemon.config).unwrap();
    let store = credbroker::store::open(&config.store, &config.data_dir)
        .await
        .unwrap();
    let get = |t, k: &'static str| {
        let store = store.clone();
        async move { serde_json::from_slice::<Value>(&store.get(t, k).await.unwrap().unwrap()).unwrap() }
    };
    let mut binding = get(Table::Bindings, "b2").await;
    let mut version = get(Table::Secrets, "b1/0000000001").await;
    edit(&mut binding, &mut version);
    let mut b = Batch::new();
    b.push(Op::Put(
        Table::Bindings,
        "b2".into(),
        serde_json::to_vec(&binding).unwrap(),
    ));
    b.push(Op::Put(
        Table::Secrets,
        "b1/0000000001".into(),
        serde_json::to_vec(&version).unwrap(),
    ));
    store.commit(b).await.unwrap();
}

/// An unowned, an overdue, an expiring and a dormant binding are each flagged; the flags
/// are counted in metrics without naming anyone; the CLI prints the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_flags_unowned_overdue_expiring_and_dormant() {
    let (_tmp, pki, mut daemon, mut op) = start_seeded_no_flush().await;
    // A pasted secret whose issuer says it expires in two days.
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings",
        Some(json!({"id": "b3", "tenant": "t1", "provider": "pasted_secret", "owner": "team-a", "purpose": "jira scan"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let soon =
        credbroker::model::rfc3339(time::OffsetDateTime::now_utc() + time::Duration::days(2));
    let (s, v) = call(
        &mut op,
        Method::PUT,
        "/v1/admin/bindings/b3/secret",
        Some(json!({"fields": {"token": "x"}, "expires_at": soon})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    // Before the inventory existed: b2 has no owner, b1's secret is 200 days old.
    daemon.stop();
    edit_store(&daemon, |binding, version| {
        binding.as_object_mut().unwrap().remove("governance");
        version["created_at"] = json!(credbroker::model::rfc3339(
            time::OffsetDateTime::now_utc() - time::Duration::days(200)
        ));
    })
    .await;
    daemon.restart();
    let mut op = pki.client_for("op", &daemon.url);
    let mut w1 = pki.client_for("w1", &daemon.url);
    // b2 and b3, never resolved, grow older than the 5 s dormancy window asked for below;
    // b1 and w1, resolved just before it is asked, keep seconds of margin inside it.
    std::thread::sleep(std::time::Duration::from_secs(7));
    // The gauges of the start's pass (a binding at a time, no inventory asked for yet) count
    // what the inventory below flags under the configured windows. The pass runs at the
    // first tick after start: wait for its series.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let metrics = loop {
        let (_, metrics) = scrape(&pki, &daemon.url).await;
        let metrics = String::from_utf8_lossy(&metrics).to_string();
        if metrics.contains("credbroker_inventory_flagged{") || std::time::Instant::now() > deadline
        {
            break metrics;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    for (flag, n) in [
        ("unowned", 1.0),
        ("rotation_overdue", 1.0),
        ("expiring_soon", 1.0),
        ("dormant", 0.0),
        ("last_probe_failed", 0.0),
    ] {
        let name = format!("credbroker_inventory_flagged{{flag=\"{flag}\",kind=\"binding\"}}");
        assert_eq!(metric_value(&metrics, &name), Some(n), "{name}\n{metrics}");
    }
    assert!(!metrics.contains("b2") && !metrics.contains("team-a"));
    // When the gauges were last computed, for an alert on their going stale.
    let computed = metric_value(&metrics, "credbroker_inventory_computed_timestamp_seconds")
        .unwrap_or_else(|| panic!("{metrics}"));
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    assert!(computed > now - 60.0 && computed <= now + 1.0, "{computed}");
    assert_eq!(
        metric_value(&metrics, "credbroker_inventory_computation_failures_total"),
        Some(0.0),
        "{metrics}"
    );
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(s, 200, "{v}");

    let inv = inventory(&mut op, "?dormant_s=5").await;
    assert_eq!(flags(&inv, "binding", "b1"), ["rotation_overdue"], "{inv}");
    assert_eq!(row(&inv, "binding", "b1")["secret_age_days"], 200);
    assert_eq!(row(&inv, "binding", "b1")["max_secret_age_days"], 90);
    assert!(row(&inv, "binding", "b1")["last_resolve_at"].is_string());
    assert_eq!(
        flags(&inv, "binding", "b2"),
        ["unowned", "dormant"],
        "{inv}"
    );
    assert_eq!(
        flags(&inv, "binding", "b3"),
        ["dormant", "expiring_soon"],
        "{inv}"
    );
    assert_eq!(row(&inv, "binding", "b3")["expires_at"], json!(soon));
    assert_eq!(row(&inv, "binding", "b3")["owner"], "team-a");
    assert!(flags(&inv, "worker", "w1").is_empty(), "{inv}");
    assert!(row(&inv, "worker", "w1")["revocation"]
        .as_str()
        .unwrap()
        .contains("worker disable w1"));
    // The configured windows (30 days dormant) flag nothing dormant, and feed the gauges.
    let inv = inventory(&mut op, "").await;
    assert_eq!(flags(&inv, "binding", "b2"), ["unowned"]);
    let (_, metrics) = scrape(&pki, &daemon.url).await;
    let metrics = String::from_utf8_lossy(&metrics).to_string();
    let gauge = |flag: &str| {
        metric_value(
            &metrics,
            &format!("credbroker_inventory_flagged{{flag=\"{flag}\",kind=\"binding\"}}"),
        )
    };
    assert_eq!(gauge("unowned"), Some(1.0), "{metrics}");
    assert_eq!(gauge("rotation_overdue"), Some(1.0));
    assert_eq!(gauge("expiring_soon"), Some(1.0));
    assert_eq!(gauge("dormant"), Some(0.0));
    assert!(!metrics.contains("b2") && !metrics.contains("team-a"));

    // Owning it clears the flag, audited.
    let (c, out, err) = operator_cli(
        &pki,
        &daemon.url,
        &[
            "binding",
            "set-owner",
            "b2",
            "--owner",
            "team-b",
            "--purpose",
            "servicenow sync",
            "--max-secret-age-days",
            "30",
        ],
    );
    assert_eq!(c, 0, "{out}{err}");
    let (c, csv, err) = operator_cli(
        &pki,
        &daemon.url,
        &["inventory", "--format", "csv", "--dormant", "2s"],
    );
    assert_eq!(c, 0, "{err}");
    let line = csv.lines().find(|l| l.starts_with("binding,b2,")).unwrap();
    assert!(
        line.contains("team-b") && line.ends_with(",dormant"),
        "{csv}"
    );
    assert!(
        csv.starts_with("kind,id,tenant,provider,status,owner,purpose,"),
        "{csv}"
    );
    let (c, table, _) = operator_cli(&pki, &daemon.url, &["inventory", "--flagged"]);
    assert_eq!(c, 0);
    assert!(
        table.contains("rotation_overdue") && !table.contains(" b2 "),
        "{table}"
    );
    let (c, json_out, _) = operator_cli(&pki, &daemon.url, &["inventory", "--format", "json"]);
    assert_eq!(c, 0);
    let parsed: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(parsed["items"].as_array().unwrap().len(), 4);
    assert!(daemon
        .audit_records()
        .iter()
        .any(|r| r["action"] == "binding.set_owner" && r["actor"] == "operator:op"));

    // Restating who owns it keeps the rotation policy someone set; clearing it is explicit;
    // a policy out of range is refused.
    let set_owner = |extra: &[&str]| {
        let mut args = vec![
            "binding",
            "set-owner",
            "b2",
            "--owner",
            "team-b",
            "--purpose",
            "servicenow sync",
        ];
        args.extend_from_slice(extra);
        operator_cli(&pki, &daemon.url, &args)
    };
    let policy = |out: &str| {
        serde_json::from_str::<Value>(out).unwrap()["binding"]["max_secret_age_days"].clone()
    };
    let (c, out, err) = set_owner(&[]);
    assert_eq!(c, 0, "{out}{err}");
    assert_eq!(policy(&out), 30, "{out}");
    let (c, out, err) = set_owner(&["--clear-max-secret-age"]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(policy(&out).is_null(), "{out}");
    let mut op = pki.client_for("op", &daemon.url);
    for days in [0, 3651, u32::MAX] {
        let (s, v) = call(
            &mut op,
            Method::PUT,
            "/v1/admin/bindings/b2/governance",
            Some(json!({"owner": "team-b", "purpose": "servicenow sync", "max_secret_age_days": days})),
        )
        .await;
        assert_eq!((s, code(&v)), (400, "bad_request"), "{days}: {v}");
    }
}

/// Adding a worker or binding without an owner and purpose is refused, and so are owners,
/// purposes and tenant names holding what reorders or hides text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_and_purpose_are_required() {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    for (path, body) in [
        ("/v1/admin/workers", json!({"id": "w9", "tenants": ["t1"]})),
        (
            "/v1/admin/workers",
            json!({"id": "w9", "tenants": ["t1"], "owner": " ", "purpose": "x"}),
        ),
        (
            "/v1/admin/bindings",
            json!({"id": "b9", "tenant": "t1", "provider": "pasted_secret", "owner": "a"}),
        ),
        (
            "/v1/admin/bindings",
            json!({"id": "b9", "tenant": "t1", "provider": "pasted_secret", "owner": "a\u{7}", "purpose": "x"}),
        ),
        // A right-to-left override would reorder the inventory row on a reviewer's terminal.
        (
            "/v1/admin/bindings",
            json!({"id": "b9", "tenant": "t1", "provider": "pasted_secret", "owner": "team\u{202e}live", "purpose": "x"}),
        ),
        (
            "/v1/admin/workers",
            json!({"id": "w9", "tenants": ["t1"], "owner": "a", "purpose": "scan\u{2066}x"}),
        ),
        // Invisible characters make two owners look alike in the inventory.
        (
            "/v1/admin/workers",
            json!({"id": "w9", "tenants": ["t1"], "owner": "team\u{200b}pay", "purpose": "x"}),
        ),
        (
            "/v1/admin/workers",
            json!({"id": "w9", "tenants": ["t1"], "owner": "a", "purpose": "line\u{2028}break"}),
        ),
        // A tenant's name is shown to the customer on the intake page: the same rules.
        (
            "/v1/admin/tenants",
            json!({"id": "t9", "name": "Acme \u{202e}moc.evil"}),
        ),
        (
            "/v1/admin/tenants",
            json!({"id": "t9", "name": "x".repeat(201)}),
        ),
    ] {
        let (s, v) = call(&mut op, Method::POST, path, Some(body.clone())).await;
        assert_eq!((s, code(&v)), (400, "bad_request"), "{body}: {v}");
    }
    let (c, _, err) = operator_cli(
        &pki,
        &daemon.url,
        &["worker", "add", "w9", "--tenant", "t1"],
    );
    assert_ne!(c, 0);
    assert!(err.contains("--owner"), "{err}");
    // A tenant's name is on its record.
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/tenants",
        Some(json!({"id": "t9", "name": " Acme Corp "})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["tenant"]["name"], "Acme Corp");
    let added = daemon
        .audit_records()
        .into_iter()
        .find(|r| r["action"] == "tenant.add" && r["tenant"] == "t9")
        .unwrap();
    assert_eq!(added["detail"], "tenant=t9 name=\"Acme Corp\"", "{added}");
}

fn commits(metrics: &[u8]) -> f64 {
    metric_value(
        &String::from_utf8_lossy(metrics),
        "credbroker_store_commits",
    )
    .unwrap()
}

/// Last use is kept in memory: hundreds of resolves write nothing to the store; it is made
/// durable at shutdown and by the periodic flush, and survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_use_survives_restart_without_a_store_write_per_resolve() {
    let (tmp, pki, mut daemon, mut op) = start_seeded_no_flush().await;
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (_, m) = scrape(&pki, &daemon.url).await;
    let before = commits(&m);
    for _ in 0..300 {
        let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
        assert_eq!(s, 200, "{v}");
    }
    let (_, m) = scrape(&pki, &daemon.url).await;
    assert_eq!(commits(&m), before, "a resolve wrote to the store");
    let used = inventory(&mut op, "").await;
    let at = row(&used, "binding", "b1")["last_resolve_at"].clone();
    assert!(at.is_string(), "{used}");
    assert!(row(&used, "binding", "b2")["last_resolve_at"].is_null());

    // Shutdown writes it (one batch); the next daemon reads it back.
    daemon.restart();
    let mut op = pki.client_for("op", &daemon.url);
    let after = inventory(&mut op, "").await;
    assert_eq!(
        row(&after, "binding", "b1")["last_resolve_at"],
        at,
        "{after}"
    );
    assert_eq!(row(&after, "worker", "w1")["last_resolve_at"], at);

    // The periodic flush makes it durable without a clean shutdown.
    daemon.stop();
    std::fs::create_dir_all(tmp.path().join("periodic")).unwrap();
    let mut daemon = Daemon::start(
        &tmp.path().join("periodic"),
        &pki,
        &DaemonOptions {
            extra_toml: "[inventory]\nflush_interval_s = 1\n".into(),
            ..Default::default()
        },
    );
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, _) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(s, 200);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    daemon.kill_hard();
    daemon.restart();
    let mut op = pki.client_for("op", &daemon.url);
    let inv = inventory(&mut op, "").await;
    assert!(
        row(&inv, "binding", "b1")["last_resolve_at"].is_string(),
        "{inv}"
    );
}

/// The catalog lists every provider of this build from its own declarations, offline and
/// through the admin API (which also says which are configured here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_catalog_lists_every_provider() {
    let (c, out, err) = run_cli(&["provider", "list", "--json"]);
    assert_eq!(c, 0, "{err}");
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = listed.iter().map(|p| p["id"].as_str().unwrap()).collect();
    let expected: Vec<&str> = credbroker_providers::CATALOG.iter().map(|d| d.id).collect();
    assert_eq!(ids, expected);
    for p in &listed {
        assert!(!p["description"].as_str().unwrap().is_empty(), "{p}");
        assert!(["federation", "pasted_secret"].contains(&p["source"].as_str().unwrap()));
    }
    let (c, out, _) = run_cli(&["provider", "show", "aws"]);
    assert_eq!(c, 0);
    let aws: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(aws["id"], "aws_assume_role");
    assert!(aws["binding_config"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["flag"] == "--role-arn" && f["required"] == true));
    let (c, _, err) = run_cli(&["provider", "show", "nope"]);
    assert_ne!(c, 0);
    assert!(err.contains("no provider"), "{err}");

    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    let (s, v) = call(&mut op, Method::GET, "/v1/admin/providers", None).await;
    assert_eq!(s, 200, "{v}");
    let all = v["providers"].as_array().unwrap();
    assert_eq!(all.len(), expected.len());
    let pasted = all.iter().find(|p| p["id"] == "pasted_secret").unwrap();
    assert_eq!(pasted["configured"], true);
    let aws = all.iter().find(|p| p["id"] == "aws_assume_role").unwrap();
    assert_eq!(aws["configured"], false);
    let (s, v) = call(&mut op, Method::GET, "/v1/admin/providers/github_app", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["provider"]["source"], "federation");
    let (s, v) = call(&mut op, Method::GET, "/v1/admin/providers/nope", None).await;
    assert_eq!((s, code(&v)), (404, "unknown_record"), "{v}");
}

/// On a shared PostgreSQL store each replica keeps and flushes its own last uses: a resolve
/// served by replica 2 shows in replica 1's inventory after replica 2's flush (shutdown
/// here), and neither replica wrote a row per resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_use_is_flushed_per_replica_on_a_shared_store() {
    use credbroker_tests::postgres::TestPostgres;
    use credbroker_tests::replicas::ReplicaSet;
    let (tmp, pki) = setup();
    let mut set =
        ReplicaSet::start(TestPostgres::start(), tmp.path(), &pki, 2, NO_FLUSH, vec![]).await;
    let mut op1 = pki.client_for("op", &set.daemons[0].url);
    seed_two_tenants(&mut op1).await;
    let mut w2 = pki.client_for("w1", &set.daemons[1].url);
    for _ in 0..50 {
        let (s, v) = resolve(&mut w2, json!({"instance_id": "i1"})).await;
        assert_eq!(s, 200, "{v}");
    }
    assert_eq!(
        set.scalar("SELECT count(*) FROM credbroker_records WHERE tbl = 'last_use'")
            .await,
        0
    );
    // Not flushed yet: replica 1 does not know.
    let inv = inventory(&mut op1, "").await;
    assert!(
        row(&inv, "binding", "b1")["last_resolve_at"].is_null(),
        "{inv}"
    );
    set.daemons[1].stop();
    // One row each for the binding and the worker, under replica 2's id.
    assert_eq!(
        set.scalar("SELECT count(*) FROM credbroker_records WHERE tbl = 'last_use'")
            .await,
        2
    );
    let inv = inventory(&mut op1, "").await;
    assert!(
        row(&inv, "binding", "b1")["last_resolve_at"].is_string(),
        "{inv}"
    );
    assert!(
        row(&inv, "worker", "w1")["last_resolve_at"].is_string(),
        "{inv}"
    );
}

/// Someone with write access to the data directory plants an undecodable binding row. The
/// start's passes over the bindings (the identifier migration and the inventory gauges read
/// them a row at a time) refuse it: the daemon does not start, and says which record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_binding_row_stops_the_start_naming_it() {
    let (_tmp, _pki, mut daemon, _op) = start_seeded_no_flush().await;
    daemon.stop();
    {
        let config = credbroker::config::Config::load(&daemon.config).unwrap();
        let store = credbroker::store::open(&config.store, &config.data_dir)
            .await
            .unwrap();
        let mut b = Batch::new();
        b.push(Op::Put(
            Table::Bindings,
            "b2".into(),
            br#"{"id":"b2","tenant":"#.to_vec(),
        ));
        store.commit(b).await.unwrap();
    }
    let mut child = std::process::Command::new(daemon_bin())
        .args(["serve", "--config"])
        .arg(&daemon.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon started on a corrupt binding row");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains("ready"), "{stdout}");
    assert!(
        stderr.contains("corrupt record bindings/b2"),
        "the error names the record: {stderr}"
    );
}
