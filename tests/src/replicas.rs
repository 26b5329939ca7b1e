//! Several broker replicas on loopback sharing one PostgreSQL store (tests and the bench).

use std::path::Path;
use std::sync::Arc;

use crate::postgres::TestPostgres;
use crate::{Daemon, DaemonOptions, TestPki};

/// The variable the replicas read their database URL from (`[store] url_env`), as an
/// operator keeps a password out of the config file.
pub const URL_VAR: &str = "CREDBROKER_TEST_REPLICAS_DATABASE_URL";

/// `[store]` for a PostgreSQL database whose URL is in [`URL_VAR`].
pub fn store_toml() -> String {
    format!("[store]\nbackend = \"postgres\"\nurl_env = \"{URL_VAR}\"\n")
}

/// Replicas sharing one database.
pub struct ReplicaSet {
    /// The server (kept running while the replicas are).
    pub pg: TestPostgres,
    /// The database's URL.
    pub url: String,
    /// The replicas' environment.
    pub env: Vec<(String, String)>,
    /// The replicas, the first initialised with `init`, the others with its keys.
    pub daemons: Vec<Daemon>,
}

impl ReplicaSet {
    /// Starts `n` replicas under `root` on a fresh database of `pg`; `extra_toml` is added
    /// to every replica's config after the `[store]` section.
    pub async fn start(
        pg: TestPostgres,
        root: &Path,
        pki: &Arc<TestPki>,
        n: usize,
        extra_toml: &str,
        env: Vec<(String, String)>,
    ) -> ReplicaSet {
        Self::start_each(pg, root, pki, n, &|_| extra_toml.to_owned(), env).await
    }

    /// As [`ReplicaSet::start`], replica `i` (from 1) with `extra_toml(i)` (its own public
    /// listener, say).
    pub async fn start_each(
        pg: TestPostgres,
        root: &Path,
        pki: &Arc<TestPki>,
        n: usize,
        extra_toml: &dyn Fn(usize) -> String,
        env: Vec<(String, String)>,
    ) -> ReplicaSet {
        let url = pg.database().await;
        let mut env = env;
        env.push((URL_VAR.to_owned(), url.clone()));
        let mut daemons = Vec::new();
        for i in 1..=n {
            let options = DaemonOptions {
                extra_toml: format!("{}{}", store_toml(), extra_toml(i)),
                env: env.clone(),
                ..Default::default()
            };
            let dir = root.join(format!("r{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let replica = match daemons.first() {
                None => Daemon::start(&dir, pki, &options),
                Some(first) => Daemon::start_sharing(&dir, pki, &options, first),
            };
            daemons.push(replica);
        }
        ReplicaSet {
            pg,
            url,
            env,
            daemons,
        }
    }

    /// Runs `credbroker-it <args>` with the replicas' environment (the database URL).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        crate::run_cli_env(args, &self.env)
    }

    /// A direct connection to the database (the tests' view of what the replicas wrote).
    pub async fn sql(&self) -> tokio_postgres::Client {
        crate::postgres::session(&self.url).await
    }

    /// The single number `query` answers (a count, a maximum).
    pub async fn scalar(&self, query: &str) -> i64 {
        self.sql().await.query_one(query, &[]).await.unwrap().get(0)
    }

    /// Every audit id in the database's chains (`aud_` and 20 hex digits of each hash).
    pub async fn audit_ids(&self) -> std::collections::HashSet<String> {
        let client = self.sql().await;
        let rows = client
            .query("SELECT line FROM credbroker_audit", &[])
            .await
            .unwrap();
        rows.iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_str(r.get::<_, &str>(0)).unwrap();
                format!("aud_{}", &v["hash"].as_str().unwrap()[..20])
            })
            .collect()
    }

    /// The holder of the leader lease, if a live one.
    pub async fn leader(&self) -> Option<String> {
        self.sql()
            .await
            .query_opt(
                "SELECT holder FROM credbroker_leases WHERE name = 'leader' AND expires_at > now()",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get(0))
    }
}
