//! Holes an attacker would use (issue 10), each attempted against the real daemon.

use credbroker_tests::*;
use http::Method;
use serde_json::{json, Value};
use std::path::Path;

/// An operator (or a script) writing an "empty" ceiling must not get the widest one: before,
/// `{"fields": []}` meant every field of the pasted secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_ceiling_is_refused_not_read_as_every_field() {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    for ceiling in [json!({"fields": []}), json!({})] {
        let (s, v) = call(
            &mut op,
            Method::POST,
            "/v1/admin/bindings",
            Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "b-empty", "tenant": "t1", "provider": "pasted_secret", "ceiling": ceiling})),
        )
        .await;
        assert_eq!((s, code(&v)), (400, "bad_request"), "{ceiling}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("at least one field"),
            "{v}"
        );
    }
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "b-one", "tenant": "t1", "provider": "pasted_secret", "ceiling": {"fields": ["token"]}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

/// Someone who can read the data directory's files but not the broker's account must not
/// find a usable key there: a key file readable by group or others is refused, at start
/// and by offline commands (issue 10, item 11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (tmp, pki) = setup();
    let mut daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    daemon.stop();
    let kek = kek_file_for(&daemon.data_dir);
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(daemon_bin())
        .args(["serve", "--config"])
        .arg(&daemon.config)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the daemon started with a world-readable KEK"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    let (c, _, err) = daemon.cli(&[
        "keys",
        "rotate-kek",
        "--config",
        daemon.config.to_str().unwrap(),
    ]);
    assert_ne!(c, 0);
    assert!(err.contains("chmod 600"), "{err}");
    // Fixed permissions: it starts again.
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    daemon.restart();
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, _) = call(&mut w1, Method::GET, "/healthz", None).await;
    assert_eq!(s, 200);
}

/// The data directory the broker creates, and the store, audit log and key directories in
/// it, are the daemon's user's alone (0700) whatever the umask, and so is every file in
/// them (the store's own included): other users of the host must not read tenants,
/// bindings or who resolved what. One made wider by hand is named by the doctor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_the_daemons_alone() {
    use std::os::unix::fs::PermissionsExt;
    let old = unsafe { libc::umask(0o022) };
    let (_tmp, _pki, mut daemon, _op) = start_seeded(&DaemonOptions::default()).await;
    unsafe { libc::umask(old) };
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for dir in ["", "store", "audit", "keys"] {
        let path = daemon.data_dir.join(dir);
        assert_eq!(mode(&path), 0o700, "{}", path.display());
    }
    daemon.stop();
    // Every file in it too, whoever made it (sled makes its own with the process umask),
    // were the directories opened up.
    let mut pending = vec![daemon.data_dir.clone()];
    let mut files = 0;
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!(
                meta.permissions().mode() & 0o077,
                0,
                "{} is open to others",
                path.display()
            );
            if meta.is_dir() {
                pending.push(path);
            } else {
                files += 1;
            }
        }
    }
    assert!(files > 5, "{files}");
    std::fs::set_permissions(&daemon.data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_, out, _) = daemon.cli(&[
        "doctor",
        "--output",
        "json",
        "--config",
        daemon.config.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let finding = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "permissions.data_dir")
        .unwrap_or_else(|| panic!("{v:#}"))
        .clone();
    assert_eq!(finding["status"], "warn", "{finding}");
    assert!(
        finding["detail"].as_str().unwrap().contains("0755"),
        "{finding}"
    );
}

/// Someone with a copy (a backup) of the data directory must not find the key that opens
/// its ciphertext in it: `serve`, `init --config` and `keys rotate-kek --config` refuse a KEK
/// keyring inside the data or store directory, also when reached through a symbolic link
/// (issue 10, item 11). `init` used to create one there, for `serve` to refuse only later:
/// a backup taken in between held the key with the data.
#[test]
fn no_command_makes_or_uses_a_kek_inside_the_data_directory() {
    let (tmp, pki) = setup();
    let data = tmp.path().join("data");
    let link = tmp.path().join("data-link");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::symlink(&data, &link).unwrap();
    let store = tmp.path().join("elsewhere/store");
    let outside = tmp.path().join("etc/kek.json");
    let refused = |what: &str, code: i32, out: &str, err: &str, kek: &Path| {
        assert_ne!(
            code,
            0,
            "{what} accepted its KEK at {}: {out}",
            kek.display()
        );
        assert!(
            err.contains("is inside the") && err.contains("keys.kek_file"),
            "{what}: {err}"
        );
    };
    for (kek, extra) in [
        (data.join("keys/kek.json"), String::new()),
        (link.join("kek.json"), String::new()),
        (
            store.join("kek.json"),
            format!("[store]\npath = {:?}\n", store.display().to_string()),
        ),
    ] {
        let config_with = |kek: &Path, name: &str| {
            let config = tmp.path().join(name);
            write_config(
                &config,
                &data,
                &pki,
                None,
                &format!(
                    "{extra}[keys]\nkek_file = {:?}\n",
                    kek.display().to_string()
                ),
            );
            config
        };
        let config = config_with(&kek, "credbroker.toml");
        let (c, out, err) = run_cli(&["init", "--config", config.to_str().unwrap()]);
        refused("init", c, &out, &err, &kek);
        assert!(!kek.exists(), "init wrote {}", kek.display());
        // The keyring made outside and moved in by hand: serve and rotate-kek refuse it, and
        // the rotation leaves it as it was.
        let (c, out, err) = run_cli(&[
            "init",
            "--config",
            config_with(&outside, "outside.toml").to_str().unwrap(),
        ]);
        assert_eq!(c, 0, "{out}{err}");
        std::fs::create_dir_all(kek.parent().unwrap()).unwrap();
        std::fs::copy(&outside, &kek).unwrap();
        let (code, err) = serve_refused(&config, &[], &[]);
        refused("serve", code, "", &err, &kek);
        let before = std::fs::read(&kek).unwrap();
        let (c, out, err) = run_cli(&["keys", "rotate-kek", "--config", config.to_str().unwrap()]);
        refused("rotate-kek", c, &out, &err, &kek);
        assert_eq!(
            std::fs::read(&kek).unwrap(),
            before,
            "rotate-kek changed the keyring"
        );
        std::fs::remove_file(&kek).unwrap();
    }
}

/// A process the daemon starts (or any later reader of its environment) must not find the
/// KEK keyring in it: taken from `keys.kek_env`, the variable is removed before any thread
/// starts, and the keys still load (issue 10, item 11).
#[test]
fn the_kek_variable_leaves_the_environment_once_taken() {
    let (tmp, pki) = setup();
    let keyring = r#"{"active": 1, "keys": {"1": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}}"#;
    let var = "CREDBROKER_TEST_KEK_TAKEN";
    std::env::set_var(var, keyring);
    let config_path = tmp.path().join("credbroker.toml");
    let config = write_config(
        &config_path,
        &tmp.path().join("data"),
        &pki,
        None,
        &format!("[keys]\nkek_env = {var:?}\n"),
    );
    credbroker::broker::BrokerKeys::init(&config).unwrap();
    credbroker::broker::take_kek_from_env(var).unwrap();
    assert!(std::env::var(var).is_err(), "the variable is still set");
    let child = std::process::Command::new("env").output().unwrap();
    assert!(
        child.status.success() && String::from_utf8_lossy(&child.stdout).contains("PATH="),
        "env listed no environment to search"
    );
    assert!(
        !String::from_utf8_lossy(&child.stdout).contains(var),
        "a child process inherited the KEK variable"
    );
    config.check_kek_outside_data().unwrap();
    assert!(credbroker::broker::BrokerKeys::load(&config).is_ok());
}

/// A worker must not learn how many requests the broker serves from the audit ids it gets
/// (issue 10, item 10): the id is a prefix of the record's hash, which covers the whole chain
/// before it, and still finds the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_ids_do_not_count_requests() {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let mut w1 = pki.client_for("w1", &daemon.url);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
        assert_eq!(s, 200, "{v}");
        ids.push(v["audit_id"].as_str().unwrap().to_owned());
    }
    let records = daemon.audit_records();
    for id in &ids {
        let digits = id.strip_prefix("aud_").unwrap();
        assert_eq!(digits.len(), 20, "{id}");
        assert!(digits.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        let rec = records
            .iter()
            .find(|r| r["hash"].as_str().unwrap().starts_with(digits))
            .unwrap_or_else(|| panic!("{id} finds no record"));
        let seq = rec["seq"].as_u64().unwrap();
        assert!(
            !digits.trim_start_matches('0').starts_with(&seq.to_string())
                || !digits.starts_with("00000"),
            "{id} reveals sequence {seq}"
        );
    }
    // Consecutive ids are not consecutive numbers.
    let as_num = |id: &str| u128::from_str_radix(id.strip_prefix("aud_").unwrap(), 16).unwrap();
    assert!(as_num(&ids[1]).abs_diff(as_num(&ids[0])) > 1_000_000);
}

/// Request ids are the broker's, never the client's: a worker that sends another request's id
/// (to make its resolve look like someone else's in the logs and the audit log), or an
/// anonymous client on the public listener sending one with a forged line, gets a fresh id —
/// `req_`, the process's 16-digit prefix, then its permuted counter, all lower-case hex — on every answer,
/// and the resolve's audit record carries that id, never the one sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_choose_or_reuse_a_request_id() {
    let (tmp, pki) = setup();
    let (public, _) = public_section(&pki);
    let daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            extra_toml: public,
            ..DaemonOptions::default()
        },
    );
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (_, first) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    let victim = first["request_id"].as_str().unwrap().to_owned();

    let well_formed = |id: &str| {
        let digits = id.strip_prefix("req_").unwrap_or_default();
        digits.len() == 32
            && digits
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    };
    let mut seen = vec![victim.clone()];
    let body = serde_json::to_vec(&json!({"instance_id": "i1"})).unwrap();
    for forged in [victim.as_str(), "req_ffffffffffffffffffffffffffffffff"] {
        let (status, headers, answer) = w1
            .exchange(
                Method::POST,
                "/v1/resolve",
                &[
                    ("content-type", "application/json"),
                    ("x-request-id", forged),
                ],
                Some(body.clone()),
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        let id = headers["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(answer["request_id"], id.as_str());
        assert!(well_formed(&id), "{id}");
        assert_eq!(id[..20], victim[..20], "the process prefix");
        assert!(!seen.contains(&id), "{id} was handed out before");
        seen.push(id);
    }
    let mut anonymous = public_client(&pki, daemon.public_url.as_ref().unwrap());
    let (_, headers, _) = anonymous
        .exchange(
            Method::GET,
            "/healthz",
            &[("x-request-id", "req_00000000000000000000000000000001")],
            None,
        )
        .await
        .unwrap();
    let id = headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(well_formed(&id) && !seen.contains(&id), "{id}");

    // The audit log holds the broker's ids for the resolves, and the victim's id only once.
    let records = daemon.audit_records();
    let ids: Vec<&str> = records
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    for id in &seen {
        assert_eq!(ids.iter().filter(|i| *i == id).count(), 1, "{id}");
    }
    assert!(!ids.contains(&"req_ffffffffffffffffffffffffffffffff"));
}

/// Operators are records (issue 10, item 6): once operators are registered, an operator
/// certificate without an active record cannot administer — a disabled operator is refused on
/// the very connection it already has — the last active operator cannot be disabled, and the
/// first operator can be registered offline, audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_registered_active_operators_administer() {
    let (tmp, pki) = setup();
    pki.operator("op2");
    pki.operator("op3");
    let mut daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    // No operator records yet (an upgraded deployment): operator certificates administer.
    let (s, v) = call(&mut op, Method::GET, "/v1/admin/operators", None).await;
    assert_eq!(s, 200, "{v}");
    // The first registration names someone else: the caller is registered with it, so
    // they do not lock themselves out.
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/operators",
        Some(json!({"id": "op3"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(&mut op, Method::GET, "/v1/admin/operators", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["operators"].as_array().unwrap().len(), 2, "{v}");
    // From now on an unregistered operator certificate is refused, audited.
    let mut op2 = pki.client_for("op2", &daemon.url);
    let (s, v) = call(&mut op2, Method::GET, "/v1/admin/tenants", None).await;
    assert_eq!((s, code(&v)), (403, "operator_required"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not registered"),
        "{v}"
    );
    assert!(daemon
        .audit_records()
        .iter()
        .any(|r| r["actor"] == "operator:op2" && r["outcome"] == "denied"));
    // Registered, it administers; disabled, its next request on the same connection is refused.
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/operators",
        Some(json!({"id": "op2"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(&mut op2, Method::GET, "/v1/admin/tenants", None).await;
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
        &mut op2,
        Method::POST,
        "/v1/admin/tenants",
        Some(json!({"id": "sneaky"})),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "operator_required"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("disabled"),
        "{v}"
    );
    // Nor does it read every tenant's metrics any more (an active operator does).
    let (status, body) = op2.request(Method::GET, "/metrics", None).await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(
        (status.as_u16(), code(&v)),
        (403, "operator_required"),
        "{v}"
    );
    let (status, body) = op.request(Method::GET, "/metrics", None).await.unwrap();
    assert_eq!(status.as_u16(), 200);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("credbroker_"), "{text}");
    // The last active operator cannot lock everyone out.
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/operators/op3/disable",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/operators/op/disable",
        Some(json!({})),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    let (s, v) = call(&mut op, Method::DELETE, "/v1/admin/operators/op", None).await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    // A removed operator's name is retired: registering it again would bring the old
    // (perhaps stolen) certificate back to life.
    let (s, v) = call(&mut op, Method::DELETE, "/v1/admin/operators/op2", None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/operators",
        Some(json!({"id": "op2"})),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("retired"),
        "{v}"
    );
    let (s, v) = call(&mut op2, Method::GET, "/v1/admin/tenants", None).await;
    assert_eq!((s, code(&v)), (403, "operator_required"), "{v}");

    // Offline registration (the daemon stopped), audited; not of a retired name.
    pki.operator("op4");
    daemon.stop();
    let (c, out, err) = run_cli(&[
        "bootstrap-operator",
        "--config",
        daemon.config.to_str().unwrap(),
        "--id",
        "op2",
    ]);
    assert_ne!(c, 0, "{out}{err}");
    assert!(err.contains("retired"), "{out}{err}");
    let (c, out, err) = run_cli(&[
        "bootstrap-operator",
        "--config",
        daemon.config.to_str().unwrap(),
        "--id",
        "op4",
    ]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(daemon
        .audit_records()
        .iter()
        .any(|r| r["action"] == "operator.bootstrap"
            && r["detail"].as_str().unwrap().contains("op4")));
    daemon.restart();
    let mut op4 = pki.client_for("op4", &daemon.url);
    let (s, v) = call(&mut op4, Method::GET, "/v1/admin/operators", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["operators"].as_array().unwrap().len(), 3, "{v}");
}

/// Key generation interrupted between the audit key's two files (or the public one deleted)
/// is completed at the next start: the public key is derived from the private one again, the
/// same key, so `audit verify` and the doctor keep working.
#[test]
fn a_missing_audit_public_key_is_derived_again_from_the_private_one() {
    let (tmp, pki) = setup();
    let config_path = tmp.path().join("credbroker.toml");
    let config = write_config(&config_path, &tmp.path().join("data"), &pki, None, "");
    credbroker::broker::BrokerKeys::init(&config).unwrap();
    let public = config.audit_public_key_file();
    let first = std::fs::read(&public).unwrap();
    std::fs::remove_file(&public).unwrap();
    let created = credbroker::broker::BrokerKeys::init(&config).unwrap();
    assert_eq!(created, vec![public.clone()]);
    assert_eq!(std::fs::read(&public).unwrap(), first, "another key");
}

/// The other way round: the private key missing where the config says (moved, or the path
/// mistyped) while its public key is there. `init` refuses instead of generating a new pair
/// over the public key auditors verify the existing log with.
#[test]
fn a_missing_audit_signing_key_is_not_replaced_over_its_public_key() {
    let (tmp, pki) = setup();
    let config_path = tmp.path().join("credbroker.toml");
    let config = write_config(&config_path, &tmp.path().join("data"), &pki, None, "");
    credbroker::broker::BrokerKeys::init(&config).unwrap();
    let public = config.audit_public_key_file();
    let first = std::fs::read(&public).unwrap();
    let moved = tmp.path().join("moved-audit-signing.key");
    std::fs::rename(config.audit_key_file(), &moved).unwrap();
    let err = credbroker::broker::BrokerKeys::init(&config)
        .expect_err("init generated a new audit key over the public one")
        .to_string();
    assert!(err.contains("audit_key_file"), "{err}");
    assert_eq!(
        std::fs::read(&public).unwrap(),
        first,
        "public key replaced"
    );
    assert!(!config.audit_key_file().exists());
}

/// An operator's refused attempt leaves a trace (THREATS.md: acting without a trace must be
/// impossible): a probe of a binding that does not exist, a revocation a provider cannot
/// make, a self-rotation a pasted secret cannot do, each refused before it wrote anything,
/// answers with the audit id of a `denied` record naming the operator and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_probes_revocations_and_self_rotations_are_audited() {
    let (tmp, pki) = setup();
    let mut daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let attempts = [
        ("/v1/admin/bindings/nope/probe", 404, "binding.probe"),
        (
            "/v1/admin/providers/pasted_secret/revoke-cached",
            400,
            "provider.pasted_secret.revoke_cached",
        ),
        (
            "/v1/admin/bindings/b1/secret/self-rotate",
            400,
            "secret.self_rotate",
        ),
    ];
    let mut ids = Vec::new();
    for (path, status, _) in attempts {
        let (s, v) = call(&mut op, Method::POST, path, Some(json!({}))).await;
        assert_eq!(s, status, "{path}: {v}");
        let id = v["error"]["audit_id"].as_str();
        assert!(id.is_some(), "{path}: refused without a record: {v}");
        ids.push(id.unwrap().to_owned());
    }
    // A planned operation refused: its record names what it was about, and why.
    let (s, v) = call(
        &mut op,
        Method::DELETE,
        "/v1/admin/bindings/b1/secret/1",
        None,
    )
    .await;
    assert_eq!((s, code(&v)), (409, "secret_version_active"), "{v}");
    let destroy = v["error"]["audit_id"].as_str().unwrap().to_owned();
    daemon.stop();
    let records = daemon.audit_records();
    let of = |id: &str| {
        let hash = id.trim_start_matches("aud_");
        records
            .iter()
            .find(|r| r["hash"].as_str().is_some_and(|h| h.starts_with(hash)))
    };
    for (id, detail) in [
        (&ids[0], "binding=nope: "),
        (&ids[2], "binding=b1: "),
        (
            &destroy,
            "binding=b1 version=1: version 1 is binding b1's active version",
        ),
    ] {
        let record = of(id).unwrap();
        assert!(
            record["detail"].as_str().unwrap().starts_with(detail),
            "{record}"
        );
    }
    for ((path, _, action), id) in attempts.iter().zip(&ids) {
        let record = of(id).unwrap_or_else(|| panic!("{path}: no record {id}"));
        assert_eq!(record["outcome"], "denied", "{record}");
        assert_eq!(record["action"], *action, "{record}");
        assert!(record["actor"].as_str().unwrap().contains("op"), "{record}");
    }
}

/// Whoever can create entries in the audit directory (a group-writable volume, a local
/// user) plants links there to have the writer append to, or cut back, a file elsewhere: the
/// KEK keyring, a key (written without a final newline, which the checkpoint file's recovery
/// cut to nothing). A rotation refuses a planted next segment (the log fails closed), and a
/// start refuses `checkpoints.log` as a symbolic link or as a second name of another file (a
/// hard link); the file elsewhere is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_writes_through_no_planted_link() {
    let (tmp, pki) = setup();
    let options = DaemonOptions {
        extra_toml: "[audit]\nsegment_records = 3\n".into(),
        ..DaemonOptions::default()
    };
    let mut daemon = Daemon::start(tmp.path(), &pki, &options);
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let victim = tmp.path().join("precious.key");
    let precious = b"{\"precious\":\"key material\"}";
    std::fs::write(&victim, precious).unwrap();
    let audit = daemon.data_dir.join("audit");
    let add_tenants = async |op: &mut credbroker::client::BrokerClient, from: usize| {
        for i in from..from + 10 {
            let (s, v) = call(
                op,
                Method::POST,
                "/v1/admin/tenants",
                Some(json!({"id": format!("planted{i}")})),
            )
            .await;
            if s != 201 {
                return Some((s, v));
            }
        }
        None
    };

    // The next segment, planted as a link while the daemon runs: the rotation that would
    // open it fails closed.
    let next = audit.join(credbroker::audit::segments::segment_name(
        last_segment_number(&audit) + 1,
    ));
    std::os::unix::fs::symlink(&victim, &next).unwrap();
    let (s, v) = add_tenants(&mut op, 0)
        .await
        .expect("ten records written, none into a new segment");
    assert_eq!((s, code(&v)), (503, "audit_unavailable"), "{v}");
    assert_eq!(std::fs::read(&victim).unwrap(), precious);
    assert!(
        daemon.logs().contains("is a symbolic link"),
        "{}",
        daemon.logs()
    );
    daemon.kill_hard();
    std::fs::remove_file(&next).unwrap();

    // checkpoints.log planted as a link, then as a hard link: the start is refused.
    let cps = audit.join("checkpoints.log");
    let real = std::fs::read(&cps).unwrap();
    std::fs::remove_file(&cps).unwrap();
    std::os::unix::fs::symlink(&victim, &cps).unwrap();
    let (exit, err) = daemon.serve_refused(&[]);
    assert_ne!(exit, 0);
    assert!(err.contains("is a symbolic link"), "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), precious);
    std::fs::remove_file(&cps).unwrap();
    std::fs::hard_link(&victim, &cps).unwrap();
    let (exit, err) = daemon.serve_refused(&[]);
    assert_ne!(exit, 0);
    assert!(err.contains("has another name (a hard link)"), "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), precious);
    // A link to nowhere: nothing is created where it points.
    std::fs::remove_file(&cps).unwrap();
    let nowhere = tmp.path().join("created-by-the-broker");
    std::os::unix::fs::symlink(&nowhere, &cps).unwrap();
    let (exit, _) = daemon.serve_refused(&[]);
    assert_ne!(exit, 0);
    assert!(!nowhere.exists(), "a file was created through the link");
    // A file of one name that others may write (planted by another user, or opened up):
    // whoever can write it can rewrite the checkpoints.
    std::fs::remove_file(&cps).unwrap();
    std::fs::write(&cps, &real).unwrap();
    std::fs::set_permissions(&cps, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let (exit, err) = daemon.serve_refused(&[]);
    assert_ne!(exit, 0);
    assert!(err.contains("writable by others"), "{err}");
    // Another user's file (neither this process's nor the directory's owner's); owners
    // can be changed only as root, as CI runs.
    std::fs::set_permissions(&cps, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&cps).unwrap()) == 0 {
        std::os::unix::fs::chown(&cps, Some(54_321), None).unwrap();
        let (exit, err) = daemon.serve_refused(&[]);
        assert_ne!(exit, 0);
        assert!(err.contains("belongs to user 54321"), "{err}");
    }
    // A device other than /dev/full (writes to /dev/null would vanish).
    std::fs::remove_file(&cps).unwrap();
    std::os::unix::fs::symlink("/dev/null", &cps).unwrap();
    let (exit, err) = daemon.serve_refused(&[]);
    assert_ne!(exit, 0);
    assert!(err.contains("a device other than /dev/full"), "{err}");

    // The links gone, the log takes records again.
    std::fs::remove_file(&cps).unwrap();
    std::fs::write(&cps, real).unwrap();
    daemon.restart();
    let mut op = pki.client_for("op", &daemon.url);
    assert!(add_tenants(&mut op, 100).await.is_none());
}
