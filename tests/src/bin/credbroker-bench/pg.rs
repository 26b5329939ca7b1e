//! The bench's PostgreSQL rows: resolve of a 1 KiB pasted secret on the PostgreSQL store
//! with one replica and with three replicas behind the bench's connections, beside sled's
//! figure; and `store migrate` of the large store.
//!
//! The database is a throwaway cluster with fsync on (as durable as sled's store), pinned to
//! the server core with the brokers when taskset is present. r/CPU-s counts the brokers'
//! CPU only, not PostgreSQL's.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use credbroker_tests::postgres::TestPostgres;
use credbroker_tests::replicas::{store_toml, URL_VAR};
use credbroker_tests::*;
use serde_json::json;

use super::{
    has_taskset, init_broker, seed_pasted_1k, serve_broker, summary, table_header, Loader,
};

/// A durable throwaway cluster on the server core; its URL variable for the brokers.
async fn durable_database() -> (TestPostgres, Vec<(String, String)>) {
    let pg = TestPostgres::own_durable();
    if let (Some(pid), true) = (pg.pid(), has_taskset()) {
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", "0", &pid.to_string()])
            .output();
    }
    let url = pg.database().await;
    (pg, vec![(URL_VAR.to_owned(), url)])
}

fn replica_config(root: &Path, i: usize, pki: &TestPki) -> std::path::PathBuf {
    let dir = root.join(format!("r{i}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("credbroker.toml");
    credbroker_tests::write_config(
        &config,
        &dir.join("data"),
        pki,
        None,
        &format!(
            "{}[limits]\nmax_connections = 4096\nmax_handshakes = 4096\nmax_connections_per_source = 4096\n",
            store_toml()
        ),
    );
    config
}

/// Resolve rows on the PostgreSQL store; `sled_rps` is the sled row's median.
pub(super) async fn rows(loader: &Loader, rounds: usize, root: &Path, sled_rps: f64) {
    let (_pg, env) = durable_database().await;
    let configs: Vec<_> = (1..=3)
        .map(|i| replica_config(root, i, &loader.pki))
        .collect();
    init_broker(&configs[0]);
    for c in &configs[1..] {
        let (from, to) = (root.join("r1/data"), c.parent().unwrap().join("data"));
        copy_dir(&from.join("keys"), &to.join("keys"));
        std::fs::copy(kek_file_for(&from), kek_file_for(&to)).unwrap();
    }
    let (mut first, url) = serve_broker(&configs[0], &env);
    let mut op = loader.pki.client_for("op", &url);
    seed_pasted_1k(&mut op, &mut loader.pki.client_for("w1", &url)).await;
    let body = [json!({"instance_id": "i1"})];
    let mut one = Vec::new();
    for _ in 0..rounds {
        one.push(loader.resolve(&url, &body, first.id()).await);
    }
    let mut others: Vec<_> = configs[1..].iter().map(|c| serve_broker(c, &env)).collect();
    let urls: Vec<String> = std::iter::once(url.clone())
        .chain(others.iter().map(|o| o.1.clone()))
        .collect();
    let pids: Vec<u32> = std::iter::once(first.id())
        .chain(others.iter().map(|o| o.0.id()))
        .collect();
    let mut three = Vec::new();
    for _ in 0..rounds {
        three.push(
            loader
                .run_spread(&urls, "/v1/resolve", &body, None, &pids)
                .await,
        );
    }
    for (child, _) in &mut others {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = first.kill();
    let _ = first.wait();
    println!();
    table_header();
    let p1 = summary("resolve pasted 1 KiB, PostgreSQL, 1 replica", &mut one);
    let p3 = summary("resolve pasted 1 KiB, PostgreSQL, 3 replicas", &mut three);
    println!(
        "PostgreSQL vs sled (pasted, medians): 1 replica {:.2}, 3 replicas {:.2}; every resolve reads the change generation (one round trip) and its audit record is committed to the replica's chain (group commit, WAL fsync) before the answer; brokers and PostgreSQL share the server core, r/CPU-s counts the brokers only",
        p1 / sled_rps,
        p3 / sled_rps
    );
}

/// `store migrate --from sled --to postgres` of the large store at `config` (stopped):
/// prints the command's output and how long it took.
pub(super) async fn migrate_large(config: &Path) {
    let (_pg, env) = durable_database().await;
    let mut migrating: credbroker::config::Config =
        toml::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    migrating.store.url_env = Some(URL_VAR.to_owned());
    std::fs::write(config, toml::to_string(&migrating).unwrap()).unwrap();
    let t = Instant::now();
    let (code, out, err) = run_cli_env(
        &[
            "store",
            "migrate",
            "--from",
            "sled",
            "--to",
            "postgres",
            "--config",
            config.to_str().unwrap(),
        ],
        &env,
    );
    println!();
    println!(
        "store migrate of the large store (exit {code}, {:.1} s):",
        t.elapsed().as_secs_f64()
    );
    for line in out.lines().chain(err.lines()) {
        println!("    {line}");
    }
}
