//! What the daemon does at its edges (issue 18, item 7): it refuses to start on each kind of
//! bad config with a message naming it, takes its KEK from an environment variable, drains
//! in-flight requests on SIGTERM, and exports exactly the records of a time window.

use std::time::Duration;

use credbroker_tests::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A config file's TOML, changed by `edit`, written to `path`.
fn edited(valid: &toml::Table, path: &std::path::Path, edit: impl FnOnce(&mut toml::Table)) {
    let mut t = valid.clone();
    edit(&mut t);
    std::fs::write(path, toml::to_string(&t).unwrap()).unwrap();
}

fn table<'a>(t: &'a mut toml::Table, name: &str) -> &'a mut toml::Table {
    t.entry(name)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .unwrap()
}

#[test]
fn serve_refuses_each_kind_of_bad_config_naming_it() {
    let (tmp, pki) = setup();
    let config = tmp.path().join("credbroker.toml");
    write_config(&config, &tmp.path().join("data"), &pki, None, "");
    let status = std::process::Command::new(daemon_bin())
        .args(["init", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let valid: toml::Table = toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let broken = tmp.path().join("broken.toml");
    let missing = tmp.path().join("nope.pem").display().to_string();
    type Edit = Box<dyn FnOnce(&mut toml::Table)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "unknown key",
            Box::new(|t| {
                table(t, "limits").insert("max_conections".into(), 10.into());
            }),
            "unknown field `max_conections`",
        ),
        (
            "mint deadline of nothing",
            Box::new(|t| {
                table(t, "cache").insert("mint_timeout_ms".into(), 0.into());
            }),
            "mint_timeout_ms must be 100..=600000",
        ),
        (
            "listen address",
            Box::new(|t| {
                t.insert("listen".into(), "localhost".into());
            }),
            "listen",
        ),
        (
            "server certificate missing",
            Box::new({
                let m = missing.clone();
                move |t| {
                    table(t, "tls").insert("cert".into(), m.into());
                }
            }),
            "nope.pem",
        ),
        (
            "client CA missing",
            Box::new({
                let m = missing.clone();
                move |t| {
                    table(t, "tls").insert("client_ca".into(), m.into());
                }
            }),
            "nope.pem",
        ),
        (
            "CRL missing",
            Box::new({
                let m = missing.clone();
                move |t| {
                    table(t, "tls").insert("crl".into(), m.into());
                }
            }),
            "nope.pem",
        ),
        (
            "server key is not a key",
            Box::new({
                let not_a_key = tmp.path().join("not-a-key.pem");
                write_private(&not_a_key, &std::fs::read(pki.dir.join("ca.crt")).unwrap());
                move |t| {
                    table(t, "tls").insert("key".into(), not_a_key.display().to_string().into());
                }
            }),
            "no usable private key",
        ),
        (
            // Whoever can read the key can pose as the broker to its workers and operators.
            "server key readable by others",
            Box::new({
                let open_key = tmp.path().join("open.key");
                std::fs::copy(pki.dir.join("server.key"), &open_key).unwrap();
                std::fs::set_permissions(
                    &open_key,
                    std::os::unix::fs::PermissionsExt::from_mode(0o644),
                )
                .unwrap();
                move |t| {
                    table(t, "tls").insert("key".into(), open_key.display().to_string().into());
                }
            }),
            "has mode 0644: open to others",
        ),
        (
            // Group read is the systemd layout's, for a root-owned key only; group write never.
            "server key writable by its group",
            Box::new({
                let open_key = tmp.path().join("group-writable.key");
                std::fs::copy(pki.dir.join("server.key"), &open_key).unwrap();
                std::fs::set_permissions(
                    &open_key,
                    std::os::unix::fs::PermissionsExt::from_mode(0o660),
                )
                .unwrap();
                move |t| {
                    table(t, "tls").insert("key".into(), open_key.display().to_string().into());
                }
            }),
            "has mode 0660: open to others",
        ),
        (
            "zero audit batch",
            Box::new(|t| {
                table(t, "audit").insert("max_batch".into(), 0.into());
            }),
            "audit.max_batch must be between 1 and 4096",
        ),
        (
            "unknown provider",
            Box::new(|t| {
                table(t, "providers")
                    .insert("github_ap".into(), toml::Value::Table(toml::Table::new()));
            }),
            "[providers.github_ap]: no such provider",
        ),
        (
            "both KEK sources",
            Box::new(|t| {
                table(t, "keys").insert("kek_env".into(), "CREDBROKER_KEK".into());
            }),
            "set keys.kek_file or keys.kek_env, not both",
        ),
        (
            "KEK file missing",
            Box::new({
                let m = missing.clone();
                move |t| {
                    table(t, "keys").insert("kek_file".into(), m.into());
                }
            }),
            "nope.pem",
        ),
        (
            "public base URL over http",
            Box::new({
                // Under the test's own directory: a PKI (with its private key) left in the
                // machine's /tmp after every run was litter.
                let pki_dir = tmp.path().join("public-pki");
                move |t| {
                    let (section, _) = public_section(&TestPki::new(&pki_dir));
                    let parsed: toml::Table = toml::from_str(&section).unwrap();
                    t.insert("public".into(), parsed["public"].clone());
                    table(t, "public").insert("base_url".into(), "http://127.0.0.1:1".into());
                }
            }),
            "must be an https URL",
        ),
    ];
    for (label, edit, expected) in cases {
        edited(&valid, &broken, edit);
        let (code, err) = serve_refused(&broken, &[], &[]);
        assert_ne!(code, 0, "{label}: serve started");
        assert!(
            err.contains(expected),
            "{label}: the refusal does not say {expected:?}:\n{err}"
        );
        assert!(!err.contains("panicked"), "{label}: {err}");
    }
}

/// The KEK keyring from an environment variable: the daemon starts, seals and opens
/// secrets with it across a restart, and without the variable refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kek_from_an_environment_variable_serves_across_restarts() {
    let (tmp, pki) = setup();
    let var = "CREDBROKER_TEST_KEK_DAEMON";
    let keyring = r#"{"active": 1, "keys": {"1": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}}"#;
    let options = DaemonOptions {
        extra_toml: format!("[keys]\nkek_env = {var:?}\n"),
        env: vec![(var.to_owned(), keyring.to_owned())],
        ..DaemonOptions::default()
    };
    let mut daemon = Daemon::start(tmp.path(), &pki, &options);
    // Neither the harness's keyring path nor the daemon's default one (with `kek_env` set,
    // the config names no file), and the key itself nowhere under the test's directory.
    for path in [
        kek_file_for(&daemon.data_dir),
        daemon.data_dir.join("keys/kek.json"),
    ] {
        assert!(
            !path.exists(),
            "{} was written although the KEK comes from the environment",
            path.display()
        );
    }
    let mut hits = Vec::new();
    grep_tree(
        tmp.path(),
        b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        &mut hits,
    );
    grep_tree(tmp.path(), &(0u8..32).collect::<Vec<u8>>(), &mut hits);
    assert!(
        hits.is_empty(),
        "the environment's KEK is on disk: {hits:?}"
    );
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(
        (s, v["credentials"]["token"].as_str()),
        (200, Some("t1-token"))
    );
    daemon.restart();
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(
        (s, v["credentials"]["token"].as_str()),
        (200, Some("t1-token")),
        "{v}"
    );
    daemon.stop();

    let (code, err) = serve_refused(&daemon.config, &[], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains(var),
        "the refusal does not name the variable:\n{err}"
    );
    // Another keyring in the variable cannot open the sealed secrets: refused at start.
    let other = r#"{"active": 1, "keys": {"1": "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="}}"#;
    let (code, err) = serve_refused(&daemon.config, &[], &[(var.to_owned(), other.to_owned())]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("does not open with KEK version 1"), "{err}");
}

/// SIGTERM stops accepting at once but lets a request already in flight finish (its body
/// arrives after the signal) before the daemon exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_request_in_flight() {
    let (tmp, pki) = setup();
    let (public, _) = public_section(&pki);
    let mut daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            extra_toml: public,
            ..Default::default()
        },
    );
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    // A callback whose body is still arriving holds the public listener's drain (up to 5 s):
    // the mTLS listener must stop accepting at once all the same, not after it.
    let mut public_stream = raw_http1(&pki, "w1", daemon.public_url.as_ref().unwrap()).await;
    public_stream
        .write_all(b"POST /callbacks/github_app/webhook HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{\"zen\":")
        .await
        .unwrap();
    public_stream.flush().await.unwrap();
    let mut stream = raw_http1(&pki, "w1", &daemon.url).await;
    let body = br#"{"instance_id": "i1"}"#;
    let head = format!(
        "POST /v1/resolve HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..8]).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    daemon.signal("TERM");
    // The listener is closed: a new connection gets no service.
    let mut refused = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if pki
            .client_for("w1", &daemon.url)
            .request(http::Method::GET, "/healthz", None)
            .await
            .is_err()
        {
            refused = true;
            break;
        }
    }
    assert!(refused, "new connections still served after SIGTERM");

    // The request in flight completes.
    stream.write_all(&body[8..]).await.unwrap();
    stream.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("t1-token"), "{answer}");
    drop(public_stream);
    daemon.stop(); // waits for the exit and requires success
    let last = daemon.audit_records().last().cloned().unwrap();
    assert_eq!(
        (last["action"].as_str(), last["outcome"].as_str()),
        (Some("resolve"), Some("allowed"))
    );
}

/// `audit export --since/--until` keeps exactly the records of the window (since inclusive,
/// until exclusive), and the export verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_keeps_exactly_the_records_of_its_window() {
    let (tmp, pki) = setup();
    let mut daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let mut w1 = pki.client_for("w1", &daemon.url);
    for _ in 0..2 {
        resolve(&mut w1, json!({"instance_id": "i1"})).await;
    }
    daemon.stop();
    let records = daemon.audit_records();
    // Pick the window from the records' own times: from the 4th record's time to the last
    // record's time (exclusive), so records sharing a batch time fall on one side.
    let times: Vec<String> = records
        .iter()
        .map(|r| r["time"].as_str().unwrap().to_owned())
        .collect();
    let since = times[3].clone();
    let until = times.last().unwrap().clone();
    let expected: Vec<u64> = records
        .iter()
        .filter(|r| {
            let t = r["time"].as_str().unwrap();
            t >= since.as_str() && t < until.as_str()
        })
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert!(
        !expected.is_empty() && expected.len() < records.len(),
        "{expected:?}"
    );
    let out = tmp.path().join("window.jsonl");
    let (c, _, err) = daemon.cli(&[
        "audit",
        "export",
        "--config",
        daemon.config.to_str().unwrap(),
        "--since",
        &since,
        "--until",
        &until,
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(c, 0, "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    let exported: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("{\"seq\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(exported, expected);
    let (c, out, _) = daemon.cli(&[
        "audit",
        "verify",
        "--export",
        out.to_str().unwrap(),
        "--public-key",
        daemon
            .data_dir
            .join("keys/audit-signing.pub")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(c, 0, "{out}");
}

/// The pid file is never written through a symbolic link planted in the data directory
/// (it could point at a key file), and `credbroker reload` signals only a credbroker daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pid_file_is_not_written_through_a_link_and_reload_signals_only_a_daemon() {
    let (tmp, pki) = setup();
    let mut daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    daemon.stop();
    let victim = tmp.path().join("victim.key");
    std::fs::write(&victim, "precious key material").unwrap();
    let pid_file = daemon.data_dir.join("credbroker.pid");
    std::os::unix::fs::symlink(&victim, &pid_file).unwrap();
    daemon.restart_with(&[]);
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious key material",
        "the pid file was written through the link"
    );
    assert!(daemon.logs().contains("cannot write the pid file"));
    daemon.stop();

    // A pid file naming a process that is not a credbroker daemon: refused, nothing sent.
    std::fs::remove_file(&pid_file).unwrap();
    std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
    let (c, _, err) = daemon.cli(&["reload", "--config", daemon.config.to_str().unwrap()]);
    assert_ne!(c, 0);
    assert!(
        err.contains("not credbroker") || err.contains("not a credbroker daemon"),
        "{err}"
    );
}

/// SIGHUP ends a process that does not handle it: one sent while the broker opened (a
/// certificate renewal hook's `systemctl reload` during a restart) ended the daemon, cleanly
/// in systemd's eyes, so it was not restarted. From its first log line on the daemon takes
/// SIGHUP: signalled every few milliseconds while it starts, it starts, and the reload asked
/// for is applied once it has.
#[test]
fn sighup_while_starting_does_not_end_the_daemon() {
    use std::io::BufRead;
    let (tmp, pki) = setup();
    let mut daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    daemon.stop();
    let err_path = tmp.path().join("starting.stderr");
    let mut child = std::process::Command::new(daemon_bin())
        .args(["serve", "--config"])
        .arg(&daemon.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let listening = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stdout = child.stdout.take().unwrap();
    let seen = listening.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if line.is_ok_and(|l| l.starts_with("listening ")) {
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let logs = || std::fs::read_to_string(&err_path).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !logs().contains("starting: a SIGHUP") {
        assert!(child.try_wait().unwrap().is_none(), "{}", logs());
        assert!(std::time::Instant::now() < deadline, "{}", logs());
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = i32::try_from(child.id()).unwrap();
    let mut sent = 0;
    while !listening.load(std::sync::atomic::Ordering::SeqCst) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the daemon ended ({status}) after {sent} SIGHUP(s) while starting: {}",
                logs()
            );
        }
        assert!(std::time::Instant::now() < deadline, "{}", logs());
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        sent += 1;
        std::thread::sleep(Duration::from_millis(3));
    }
    assert!(sent > 0);
    while !logs().contains("SIGHUP: TLS certificates, client CA and CRL reloaded") {
        assert!(child.try_wait().unwrap().is_none(), "{}", logs());
        assert!(std::time::Instant::now() < deadline, "{}", logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    // What the doctor warns of is said at start too: this test daemon keeps its audit
    // signing key in its data directory.
    assert!(
        logs().contains("the audit signing key is inside the data directory"),
        "{}",
        logs()
    );
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(child.wait().unwrap().success());
}
