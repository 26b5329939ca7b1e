//! `credbroker store migrate --from sled --to postgres` (issue 15): a single broker's store
//! moved into the database replicas share, sealed values copied as ciphertext; the broker then
//! serves from PostgreSQL with the same secrets, and `audit verify` checks both the sled-era
//! file log (ending with the move) and the database's chain.

use credbroker_tests::postgres::{session, TestPostgres};
use credbroker_tests::replicas::{store_toml, URL_VAR};
use credbroker_tests::*;
use serde_json::json;

/// A broker on sled with the usual records, and a fresh database on `pg` whose URL is in
/// the broker's environment (`[store] url_env`) for the move.
struct SledBroker {
    tmp: tempfile::TempDir,
    pki: std::sync::Arc<TestPki>,
    url: String,
    env: Vec<(String, String)>,
    daemon: Daemon,
}

impl SledBroker {
    async fn start(pg: &TestPostgres) -> SledBroker {
        let url = pg.database().await;
        let env = vec![(URL_VAR.to_owned(), url.clone())];
        let options = DaemonOptions {
            env: env.clone(),
            ..Default::default()
        };
        let (tmp, pki, daemon, _op) = start_seeded(&options).await;
        SledBroker {
            tmp,
            pki,
            url,
            env,
            daemon,
        }
    }

    /// Points the config at the database (`url_env`) while it stays on sled, or (`backend`)
    /// switches it to PostgreSQL.
    fn configure(&self, backend: bool) {
        let store = if backend {
            store_toml()
        } else {
            format!("[store]\nurl_env = \"{URL_VAR}\"\n")
        };
        credbroker_tests::write_config(
            &self.daemon.config,
            &self.daemon.data_dir,
            &self.pki,
            None,
            &store,
        );
    }

    fn migrate(&self) -> (i32, String, String) {
        let config = self.daemon.config.to_str().unwrap();
        run_cli_env(
            &[
                "store", "migrate", "--from", "sled", "--to", "postgres", "--config", config,
            ],
            &self.env,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_store_moves_into_postgres_and_keeps_serving() {
    let pg = TestPostgres::start();
    let mut b = SledBroker::start(&pg).await;
    let mut w1 = b.pki.client_for("w1", &b.daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(s, 200, "{v}");

    // The running daemon holds the sled store: the move is refused.
    b.configure(false);
    let (c, out, err) = b.migrate();
    assert_ne!(c, 0, "{out}{err}");
    assert!(err.contains("locked"), "{err}");

    b.daemon.stop();
    // Nothing is merged: a database holding a record is refused, before anything is copied.
    let sql = session(&b.url).await;
    let settings = credbroker::store::StoreSettings {
        backend: credbroker::store::Backend::Postgres,
        url: Some(b.url.clone().into()),
        ..Default::default()
    };
    drop(credbroker::store::PgStore::open(&settings).await.unwrap());
    let planted =
        "INSERT INTO credbroker_records (tbl, key, value) VALUES ('tenants', 'planted', '{}')";
    sql.batch_execute(planted).await.unwrap();
    let (c, out, err) = b.migrate();
    assert_ne!(c, 0, "{out}{err}");
    assert!(
        err.contains("already holds 1 record(s) in tenants"),
        "{err}"
    );
    // Nor a database that lost its records but kept a broker's audit chain.
    sql.batch_execute(
        "DELETE FROM credbroker_records WHERE key = 'planted';
         INSERT INTO credbroker_audit (replica, seq, line) VALUES (1, 1, '{}')",
    )
    .await
    .unwrap();
    let (c, out, err) = b.migrate();
    assert_ne!(c, 0, "{out}{err}");
    assert!(err.contains("audit chain(s) of replica(s) [1]"), "{err}");
    sql.batch_execute("DELETE FROM credbroker_audit")
        .await
        .unwrap();

    // The moved mark beside the store is written through no link planted under its name
    // (the move may run as root): the file it points to is left as it was.
    let victim = b.daemon.data_dir.parent().unwrap().join("victim");
    std::fs::write(&victim, "untouched\n").unwrap();
    let mark = b
        .daemon
        .data_dir
        .join("store")
        .join(credbroker::store::SLED_MOVED_FILE);
    std::os::unix::fs::symlink(&victim, &mark).unwrap();
    let (c, out, err) = b.migrate();
    assert_eq!(c, 0, "{out}{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
    assert!(std::fs::symlink_metadata(&mark).unwrap().is_file());
    assert!(out.contains("verified"), "{out}");
    assert!(out.contains("copied         2 tenants"), "{out}");
    assert!(!out.contains("t1-token") && !err.contains("t1-token"));
    eprintln!("{out}");
    // The sled store is marked moved: a second move from it is refused, and so is a broker
    // started on it, which would take changes the replicas never see.
    let (c, out, err) = b.migrate();
    assert_ne!(c, 0, "{out}{err}");
    assert!(err.contains("was moved into PostgreSQL"), "{err}");
    assert!(err.contains("nothing was copied"), "{err}");
    let (c, err) = serve_refused(&b.daemon.config, &[], &b.env);
    assert_ne!(c, 0);
    assert!(err.contains("was moved into PostgreSQL"), "{err}");
    // The doctor, which never opens sled, says so too.
    let config = b.daemon.config.to_str().unwrap().to_owned();
    let (c, out, err) = run_cli_env(&["doctor", "--config", &config, "--output", "json"], &b.env);
    assert_ne!(c, 0, "{out}{err}");
    assert!(out.contains("was moved into PostgreSQL"), "{out}");
    // A move that stopped before marking the sled store (the mark taken away here): moving
    // again only marks it, the database holding exactly its records.
    {
        use credbroker::store::{Batch, Op, SledStore, Store, Table};
        let store = SledStore::open(&b.daemon.data_dir.join("store")).unwrap();
        let mut batch = Batch::new();
        batch.push(Op::Delete(Table::Meta, "moved_to_postgres".into()));
        store.commit(batch).await.unwrap();
    }
    let (c, out, err) = b.migrate();
    assert_eq!(c, 0, "{out}{err}");
    assert!(
        out.contains("is now marked moved; nothing was copied"),
        "{out}"
    );
    let (c, err) = serve_refused(&b.daemon.config, &[], &b.env);
    assert_ne!(c, 0);
    assert!(err.contains("was moved into PostgreSQL"), "{err}");
    // The secrets were copied sealed: the database holds no plaintext.
    let plaintext: i64 = sql
        .query_one(
            "SELECT count(*) FROM credbroker_records WHERE position('t1-token'::bytea in value) > 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plaintext, 0);

    // The broker now runs on PostgreSQL with the same keys and serves the same secrets.
    b.configure(true);
    b.daemon.restart();
    let mut w1 = b.pki.client_for("w1", &b.daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(
        (s, v["credentials"]["token"].as_str()),
        (200, Some("t1-token")),
        "{v}"
    );
    let config = b.daemon.config.to_str().unwrap().to_owned();
    let (c, out, err) = run_cli_env(&["audit", "verify", "--config", &config], &b.env);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("file log: audit OK"), "{out}");
    assert!(out.contains("replica 1: audit OK"), "{out}");
    let last = b.daemon.audit_records().pop().unwrap();
    assert_eq!(
        last["action"], "store.migrate",
        "the file log ends with the move"
    );
    b.daemon.stop();
    drop(b.tmp);
}

/// A move that fails half-way leaves a database no broker opens: it could lack operators or
/// exclusive identifiers (an empty operators table lets any operator certificate in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_that_fails_half_way_leaves_a_database_no_broker_opens() {
    let pg = TestPostgres::start();
    let mut b = SledBroker::start(&pg).await;
    b.daemon.stop();
    // The schema exists (as after any broker's start); a trigger fails the copy of the
    // exclusive identifiers, after tenants and bindings went in.
    let settings = credbroker::store::StoreSettings {
        backend: credbroker::store::Backend::Postgres,
        url: Some(b.url.clone().into()),
        ..Default::default()
    };
    drop(credbroker::store::PgStore::open(&settings).await.unwrap());
    let sql = session(&b.url).await;
    sql.batch_execute(
        "CREATE FUNCTION injected_failure() RETURNS trigger AS $$ BEGIN IF NEW.tbl = 'identifiers' THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql;
         CREATE TRIGGER injected BEFORE INSERT ON credbroker_records FOR EACH ROW EXECUTE FUNCTION injected_failure();",
    )
    .await
    .unwrap();
    b.configure(false);
    let (c, out, err) = b.migrate();
    assert_ne!(c, 0, "{out}{err}");
    assert!(err.contains("marked incomplete"), "{err}");
    sql.batch_execute("DROP TRIGGER injected ON credbroker_records")
        .await
        .unwrap();
    // Neither a second move nor a broker opens it.
    let (c, _, err) = b.migrate();
    assert_ne!(c, 0);
    assert!(err.contains("did not finish"), "{err}");
    b.configure(true);
    let (c, err) = serve_refused(&b.daemon.config, &[], &b.env);
    assert_ne!(c, 0);
    assert!(err.contains("did not finish"), "{err}");
}

/// A config naming another store path than the daemon's: no store there is refused (opening
/// one would create it), and so is an empty one, before anything is written to the database;
/// the real store then moves as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_from_no_store_or_an_empty_one_is_refused() {
    let pg = TestPostgres::start();
    let mut b = SledBroker::start(&pg).await;
    b.daemon.stop();
    let elsewhere = b.tmp.path().join("not-the-store");
    let point_at = |path: &std::path::Path| {
        credbroker_tests::write_config(
            &b.daemon.config,
            &b.daemon.data_dir,
            &b.pki,
            None,
            &format!(
                "[store]\nurl_env = \"{URL_VAR}\"\npath = {:?}\n",
                path.display().to_string()
            ),
        );
    };
    point_at(&elsewhere);
    let (c, out, err) = b.migrate();
    assert_ne!(c, 0, "{out}{err}");
    assert!(err.contains("no sled store at"), "{err}");
    assert!(!elsewhere.exists(), "the refusal created a store");
    std::fs::create_dir(&elsewhere).unwrap();
    let (c, out, err) = b.migrate();
    assert_ne!(c, 0, "{out}{err}");
    assert!(err.contains("holds no records"), "{err}");
    // Nothing was written to the database: the real store moves into it.
    b.configure(false);
    let (c, out, err) = b.migrate();
    assert_eq!(c, 0, "{out}{err}");
}
