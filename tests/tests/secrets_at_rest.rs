//! Envelope encryption seen from outside: ciphertext bound to its record, KEK rotation that
//! keeps every secret resolvable, and a canary value that never leaks.

use std::sync::Arc;

use credbroker::model::SecretVersion;
use credbroker::store::records::Records;
use credbroker::store::{Batch, SledStore, Store};
use credbroker_tests::*;
use http::Method;
use serde_json::json;

fn open_records(daemon: &Daemon) -> Records {
    Records::new(
        Arc::new(SledStore::open(&daemon.data_dir.join("store")).unwrap()) as Arc<dyn Store>,
    )
}

async fn worker_for_both(op: &mut credbroker::client::BrokerClient, pki: &TestPki) {
    pki.worker("both");
    let (s, v) = call(
        op,
        Method::POST,
        "/v1/admin/workers",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "both", "tenants": ["t1", "t2"]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

/// Two tenants, worker `both` allowed for them, and b2's secret rotated to version 2 (its
/// version 1 superseded).
async fn with_b2_at_version_2() -> (tempfile::TempDir, Arc<TestPki>, Daemon) {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    worker_for_both(&mut op, &pki).await;
    let (s, _) = rotate_and_promote(&mut op, "b2", json!({"token": "t2-token-v2"})).await;
    assert_eq!(s, 200);
    (tmp, pki, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ciphertext_copied_onto_another_binding_fails_to_open() {
    let (tmp, pki) = setup();
    let mut daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    worker_for_both(&mut op, &pki).await;
    daemon.stop();

    {
        let records = open_records(&daemon);
        let b1 = credbroker::ids::BindingId::parse("b1").unwrap();
        let b2 = credbroker::ids::BindingId::parse("b2").unwrap();
        let from = records.secret_version(&b1, 1).await.unwrap().unwrap();
        let read = records.secret_version(&b2, 1).await.unwrap().unwrap();
        let mut onto: SecretVersion = read.value.clone();
        onto.wrapped_dek = from.wrapped_dek.clone();
        onto.sealed_payload = from.sealed_payload.clone();
        let mut batch = Batch::new();
        batch.replace(&read, &onto);
        records.commit(batch).await.unwrap();
    }

    daemon.restart();
    let mut both = pki.client_for("both", &daemon.url);
    let (s, v) = resolve(&mut both, json!({"instance_id": "i2"})).await;
    assert_eq!((s, code(&v)), (500, "internal"), "{v}");
    assert!(!v.to_string().contains("t1-token"));
    let (s, v) = resolve(&mut both, json!({"instance_id": "i1"})).await;
    assert_eq!(s, 200);
    assert_eq!(v["credentials"]["token"], "t1-token");
    assert!(daemon.logs().contains("stored secret failed to open"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kek_rotation_rewraps_and_keeps_every_secret_resolvable() {
    // A superseded version must survive rotation too.
    let (_tmp, pki, mut daemon) = with_b2_at_version_2().await;
    let before: Vec<SecretVersion> = {
        daemon.stop();
        open_records(&daemon)
            .all_secret_versions()
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.value)
            .collect()
    };
    assert_eq!(before.len(), 3);
    assert!(before.iter().all(|v| v.kek_version == 1));

    // While the daemon runs the store is locked: rotation refuses clearly.
    daemon.restart();
    let (c, _, err) = daemon.cli(&[
        "keys",
        "rotate-kek",
        "--config",
        daemon.config.to_str().unwrap(),
    ]);
    assert_ne!(c, 0);
    assert!(err.contains("locked"), "{err}");
    daemon.stop();

    // Another rotation of the same keyring file (another data directory, or another host
    // sharing its mount) holds the keyring's directory: this one changes nothing. (Both
    // would save their own new version over the other's.)
    let kek = kek_file_for(&daemon.data_dir);
    let rotate = || {
        daemon.cli(&[
            "keys",
            "rotate-kek",
            "--config",
            daemon.config.to_str().unwrap(),
        ])
    };
    {
        let name = kek.file_name().unwrap().to_str().unwrap();
        let lock = std::fs::File::create(kek.with_file_name(format!(".{name}.lock"))).unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(
            unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        let (c, out, err) = rotate();
        assert_ne!(c, 0, "{out}");
        assert!(
            err.contains("another KEK rotation holds the keyring's lock"),
            "{err}"
        );
    }
    let keyring: serde_json::Value = serde_json::from_slice(&std::fs::read(&kek).unwrap()).unwrap();
    assert_eq!(keyring["active"], 1, "the refused rotation saved nothing");
    // The audit log cannot be opened (another offline command holds it): the keyring is
    // not changed either. A new KEK version is never active without its record.
    {
        let lock = std::fs::File::create(daemon.data_dir.join("audit/.lock")).unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(
            unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        let (c, out, err) = rotate();
        assert_ne!(c, 0, "{out}");
        assert!(
            err.contains("another credbroker process is writing this audit log")
                && err.contains("nothing was changed"),
            "{err}"
        );
    }
    let keyring: serde_json::Value = serde_json::from_slice(&std::fs::read(&kek).unwrap()).unwrap();
    assert_eq!(
        keyring["active"], 1,
        "a rotation that could not be audited saved nothing"
    );
    assert!(keyring["keys"].get("2").is_none(), "{}", keyring["keys"]);
    // The keyring cannot be saved (its name is so long that no temporary beside it can be
    // named: ENAMETOOLONG): recorded as failed after its "allowed" record, and the keyring
    // is said to be as it was.
    {
        let config = std::fs::read_to_string(&daemon.config).unwrap();
        let long = kek.with_file_name(format!("{}.json", "k".repeat(235)));
        std::fs::rename(&kek, &long).unwrap();
        let at = |p: &std::path::Path| format!("{:?}", p.display().to_string());
        assert!(config.contains(&at(&kek)), "{config}");
        std::fs::write(&daemon.config, config.replace(&at(&kek), &at(&long))).unwrap();
        let (c, out, err) = rotate();
        assert_ne!(c, 0, "{out}");
        assert!(err.contains("could not be saved and is as it was"), "{err}");
        std::fs::rename(&long, &kek).unwrap();
        std::fs::write(&daemon.config, config).unwrap();
    }
    let keyring: serde_json::Value = serde_json::from_slice(&std::fs::read(&kek).unwrap()).unwrap();
    assert_eq!(keyring["active"], 1, "{keyring}");
    let rotations: Vec<(String, String)> = daemon
        .audit_records()
        .iter()
        .filter(|r| r["action"] == "keys.rotate_kek")
        .map(|r| {
            (
                r["outcome"].as_str().unwrap().to_owned(),
                r["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(rotations.len(), 2, "{rotations:?}");
    assert_eq!(rotations[0].0, "allowed");
    assert_eq!(rotations[1].0, "failed");
    assert!(
        rotations[1].1.contains("the keyring could not be saved"),
        "{rotations:?}"
    );

    let (c, out, err) = rotate();
    assert_eq!(c, 0, "{out}{err}");
    assert!(
        out.contains("version 1 -> 2; 3 data key(s) re-wrapped"),
        "{out}"
    );
    // Allowed before anything changed, then committed: a rotation's last record says it
    // landed.
    let last = daemon
        .audit_records()
        .into_iter()
        .rev()
        .find(|r| r["action"] == "keys.rotate_kek")
        .unwrap();
    assert_eq!(last["outcome"], "allowed", "{last}");
    assert!(
        last["detail"]
            .as_str()
            .unwrap()
            .contains("kek 1 -> 2: committed, 3 data keys re-wrapped"),
        "{last}"
    );
    let after = open_records(&daemon).all_secret_versions().await.unwrap();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.kek_version, 2);
        assert_ne!(a.wrapped_dek, b.wrapped_dek, "data key re-wrapped");
        assert_eq!(a.sealed_payload, b.sealed_payload, "payload untouched");
    }
    let keyring: serde_json::Value =
        serde_json::from_slice(&std::fs::read(kek_file_for(&daemon.data_dir)).unwrap()).unwrap();
    assert_eq!(keyring["active"], 2);

    daemon.restart();
    let mut both = pki.client_for("both", &daemon.url);
    let (s, v) = resolve(&mut both, json!({"instance_id": "i1"})).await;
    assert_eq!(
        (s, v["credentials"]["token"].as_str()),
        (200, Some("t1-token"))
    );
    let (s, v) = resolve(&mut both, json!({"instance_id": "i2"})).await;
    assert_eq!(
        (s, v["credentials"]["token"].as_str()),
        (200, Some("t2-token-v2"))
    );
    // New secrets are sealed under the new KEK.
    let mut op = pki.client_for("op", &daemon.url);
    rotate_and_promote(&mut op, "b1", json!({"token": "t1-v2"})).await;
    let (_, v) = call(&mut op, Method::GET, "/v1/admin/bindings/b1", None).await;
    assert_eq!(v["binding"]["secret_versions"][1]["kek_version"], 2);
    // The rotation itself is in the audit log, and the chain still verifies.
    assert!(daemon
        .audit_records()
        .iter()
        .any(|r| r["action"] == "keys.rotate_kek"));
    let (c, out, _) = daemon.cli(&[
        "audit",
        "verify",
        "--config",
        daemon.config.to_str().unwrap(),
    ]);
    assert_eq!(c, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_secret_never_leaks() {
    const CANARY: &str = "CANARY-q7Zx9v2Lk4Pw";
    const CANARY2: &str = "CANARY-rotated-m3Nb8";
    let (tmp, pki) = setup();
    let mut daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let mut responses = String::new();
    let (s, v) = rotate_and_promote(&mut op, "b1", json!({"token": CANARY, "user": "svc"})).await;
    assert_eq!(s, 200);
    responses.push_str(&v.to_string());
    for path in [
        "/v1/admin/bindings",
        "/v1/admin/bindings/b1",
        "/v1/admin/tenants",
        "/v1/admin/instances",
    ] {
        let (s, v) = call(&mut op, Method::GET, path, None).await;
        // An answer that failed or was not JSON would read as `null` and hide what it said.
        assert_eq!(s, 200, "{path}: {v}");
        responses.push_str(&v.to_string());
    }
    // The second canary is stored too (a pending version, sealed like the active one), so
    // the at-rest check below has something to find if sealing were skipped.
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/b1/secret/rotate",
        Some(json!({"fields": {"token": CANARY2}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    responses.push_str(&v.to_string());
    let (s, shown) = call(&mut op, Method::GET, "/v1/admin/bindings/b1", None).await;
    assert_eq!(s, 200, "{shown}");
    assert!(
        shown.to_string().contains("\"pending\""),
        "CANARY2 was not stored as a pending version: {shown}"
    );
    responses.push_str(&shown.to_string());
    // A malformed secret body must not echo the value either.
    let (s, v) = call(
        &mut op,
        Method::PUT,
        "/v1/admin/bindings/b2/secret",
        Some(json!({"fields": {"token": [CANARY]}})),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["code"].is_string(),
        "the refusal is not JSON: {v}"
    );
    responses.push_str(&v.to_string());

    // Its own resolve is the one place the value appears.
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(s, 200);
    assert_eq!(v["credentials"]["token"], CANARY);
    // Narrowed to another field, the token is not handed out.
    let (s, v) = resolve(
        &mut w1,
        json!({"instance_id": "i1", "narrow": {"fields": ["user"]}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["credentials"], json!({"user": "svc"}));
    responses.push_str(&v.to_string());
    let (s, v) = resolve(
        &mut w1,
        json!({"instance_id": "i1", "narrow": {"fields": ["nope"]}}),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "narrowing_exceeds_ceiling"));
    responses.push_str(&v.to_string());
    let (_, metrics) = scrape(&pki, &daemon.url).await;
    responses.push_str(&String::from_utf8_lossy(&metrics));

    let (c, export, _) = daemon.cli(&[
        "audit",
        "export",
        "--config",
        daemon.config.to_str().unwrap(),
    ]);
    assert_eq!(c, 0);
    daemon.stop();

    for canary in [CANARY, CANARY2] {
        assert!(
            !responses.contains(canary),
            "admin/other responses leak {canary}"
        );
        assert!(!export.contains(canary), "audit export leaks {canary}");
        assert!(!daemon.logs().contains(canary), "logs leak {canary}");
        let mut hits = Vec::new();
        grep_tree(&daemon.data_dir, canary.as_bytes(), &mut hits);
        // The stores keep sealed payloads in base64: a seal that only encoded would show here.
        for needle in base64_needles(canary.as_bytes()) {
            grep_tree(&daemon.data_dir, needle.as_bytes(), &mut hits);
        }
        assert!(hits.is_empty(), "{canary} in raw data files: {hits:?}");
    }
    assert!(
        daemon.logs().contains("resolve allowed"),
        "logs were captured"
    );
}

/// A secret whose values need JSON escapes (a PEM key's newlines, quotes, backslashes,
/// characters outside the BMP) is parsed by the broker's own zeroizing parser on the way in
/// (admin body) and on every resolve (opened payload): it comes back byte for byte, and the
/// shapes the admin API refuses are still refused with their reasons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_that_needs_escapes_round_trips_and_bad_shapes_are_refused() {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let pem =
        "-----BEGIN KEY-----\nMII\"q\\uoted\"\\\r\n\t\u{1}\u{1f600}\u{e9}/\n-----END KEY-----\n";
    let (s, v) = rotate_and_promote(&mut op, "b1", json!({"token": pem, "user": "s\"vc"})).await;
    assert_eq!(s, 200, "{v}");
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["credentials"]["token"], pem);
    assert_eq!(v["credentials"]["user"], "s\"vc");

    let (_, b2) = call(&mut op, Method::GET, "/v1/admin/bindings/b2", None).await;
    let versions_before = b2["binding"]["last_secret_version"].clone();
    let long = "x".repeat(16 * 1024 + 1);
    for (body, why) in [
        (json!({"fields": {"bad name": "x"}}), "1-64 characters"),
        (json!({"fields": {"token": long}}), "longer than 16 KiB"),
        (json!({"fields": {}}), "at least one field"),
        (json!({"fields": {"token": 1}}), "secret body must be"),
        (json!({"fields": ["token"]}), "secret body must be"),
        (
            json!({"fields": {"token": "x"}, "extra": 1}),
            "secret body must be",
        ),
    ] {
        let (s, v) = call(
            &mut op,
            Method::PUT,
            "/v1/admin/bindings/b2/secret",
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, 400, "{body}: {v}");
        assert!(v.to_string().contains(why), "{body}: {v}");
    }
    // Bodies no serde_json::Value can hold, sent raw: escapes the parser must refuse,
    // whatever serde_json's scan of the raw fields let through, and a value's own quote
    // escaped so that the body ends inside a string. None is stored or echoed.
    for (raw, why) in [
        (r#"{"fields":{"token":"\ud800"}}"#, "secret body must be"),
        (r#"{"fields":{"token":"\udc00x"}}"#, "secret body must be"),
        (
            r#"{"fields":{"token":"\ud83d\u0041"}}"#,
            "secret body must be",
        ),
        (
            r#"{"fields":{"token":{"nested":"x"}}}"#,
            "secret body must be",
        ),
        (r#"{"fields":{"token":"x\"}}"#, "not valid JSON"),
        ("{\"fields\":{\"token\":\"tab\there\"}}", "not valid JSON"),
    ] {
        let (s, body) = op
            .request(
                Method::PUT,
                "/v1/admin/bindings/b2/secret",
                Some(raw.as_bytes().to_vec()),
            )
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert_eq!(s.as_u16(), 400, "{raw}: {text}");
        assert!(text.contains(why), "{raw}: {text}");
        assert!(!text.contains("here") && !text.contains("nested"), "{text}");
    }
    let (_, b2) = call(&mut op, Method::GET, "/v1/admin/bindings/b2", None).await;
    assert_eq!(
        b2["binding"]["last_secret_version"], versions_before,
        "a refused body stored a version: {b2}"
    );
}

/// A whole superseded version copied over the active one (its ciphertext opens under the
/// binding and version it names, both in its AAD): a resolve is refused, not served the
/// old secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_version_copied_over_the_active_one_is_refused() {
    use credbroker::store::{Op, Table};
    let (_tmp, pki, mut daemon) = with_b2_at_version_2().await;
    daemon.stop();
    {
        let store = SledStore::open(&daemon.data_dir.join("store")).unwrap();
        let old = store
            .get(Table::Secrets, "b2/0000000001")
            .await
            .unwrap()
            .unwrap();
        let mut old: serde_json::Value = serde_json::from_slice(&old).unwrap();
        old["state"] = json!("active");
        let mut batch = Batch::new();
        batch.push(Op::Put(
            Table::Secrets,
            "b2/0000000002".into(),
            serde_json::to_vec(&old).unwrap(),
        ));
        store.commit(batch).await.unwrap();
    }
    daemon.restart();
    let mut both = pki.client_for("both", &daemon.url);
    let (s, v) = resolve(&mut both, json!({"instance_id": "i2"})).await;
    assert_eq!((s, code(&v)), (500, "internal"), "{v}");
    assert!(!v.to_string().contains("t2-token"), "{v}");
    // The store's own words (the record's key, what is wrong with it) are for the
    // operator's log, not for the worker.
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.ends_with("store read failed") && !message.contains("b2/"),
        "{v}"
    );
    let logs = daemon.logs();
    assert!(
        logs.contains("store read of a sealed secret failed") && logs.contains("b2/0000000002"),
        "{logs}"
    );
}

/// A tenant `platform` planted in the store (the id is reserved: `tenant add` refuses it)
/// with a pasted-secret binding: no secret is sealed for it, so nothing the broker seals can
/// pass for a platform key of the releases that sealed them as that tenant's secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_sealed_for_a_planted_tenant_platform() {
    use credbroker::store::{Op, Table};
    let (_tmp, pki, mut daemon) = with_b2_at_version_2().await;
    daemon.stop();
    {
        let store = SledStore::open(&daemon.data_dir.join("store")).unwrap();
        let get = |table, key: &'static str| {
            let store = &store;
            async move {
                let raw = store.get(table, key).await.unwrap().unwrap();
                serde_json::from_slice::<serde_json::Value>(&raw).unwrap()
            }
        };
        let mut tenant = get(Table::Tenants, "t1").await;
        tenant["id"] = json!("platform");
        let mut binding = get(Table::Bindings, "b1").await;
        binding["id"] = json!("issuer");
        binding["tenant"] = json!("platform");
        let mut batch = Batch::new();
        batch.push(Op::Put(
            Table::Tenants,
            "platform".into(),
            serde_json::to_vec(&tenant).unwrap(),
        ));
        batch.push(Op::Put(
            Table::Bindings,
            "issuer".into(),
            serde_json::to_vec(&binding).unwrap(),
        ));
        store.commit(batch).await.unwrap();
    }
    daemon.restart();
    let mut op = pki.client_for("op", &daemon.url);
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/issuer/secret/rotate",
        Some(json!({"fields": {"private_key_pem": "-----BEGIN PRIVATE KEY-----"}})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");
    assert!(v.to_string().contains("reserved"), "{v}");
    daemon.stop();
    let versions = open_records(&daemon).all_secret_versions().await.unwrap();
    assert!(
        versions
            .iter()
            .all(|v| v.value.binding.as_str() != "issuer"),
        "a version was sealed for the planted binding"
    );
}

/// sled logs every value it writes at trace (sealed secrets among them, and whole leaves of
/// other records): the daemon lets it log at most at debug, even when `RUST_LOG` names it at
/// trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_log_holds_no_stored_values() {
    let (tmp, pki) = setup();
    let options = DaemonOptions {
        env: vec![("RUST_LOG".into(), "debug,sled=trace".into())],
        ..Default::default()
    };
    let mut daemon = Daemon::start(tmp.path(), &pki, &options);
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let (s, v) = rotate_and_promote(&mut op, "b1", json!({"token": "not logged"})).await;
    assert_eq!(s, 200, "{v}");
    daemon.stop();
    let logs = daemon.logs();
    assert!(logs.contains(" DEBUG "), "debug lines were captured");
    let leaked: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("TRACE sled"))
        .take(3)
        .collect();
    assert!(leaked.is_empty(), "{leaked:#?}");
}

/// A pasted token that is not one line of printable ASCII (a customer's intake submission
/// can hold anything) is not printed bare by `client token`: a script writing it into an
/// environment file would get the lines it carries. `--json` prints it escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_lines_of_its_own_is_not_printed_bare() {
    // ESC and a line break (serde_json escapes those), DEL, the C1 CSI (an escape sequence
    // on some terminals) and a right-to-left override (serde_json writes those raw).
    const INJECTED: &str = "x\nNODE_OPTIONS=--require=/tmp/p\u{1b}[2J\u{7f}\u{9b}2J\u{202e}";
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let client_token = |extra: &[&str]| {
        let file = |name: &str| pki.dir.join(name).display().to_string();
        let mut args = vec!["client", "token", "--instance", "i1"];
        args.extend_from_slice(extra);
        std::process::Command::new(daemon_bin())
            .args(&args)
            .env("CREDBROKER_SERVER", &daemon.url)
            .env("CREDBROKER_CA", file("ca.crt"))
            .env("CREDBROKER_WORKER_CERT", file("w1.crt"))
            .env("CREDBROKER_WORKER_KEY", file("w1.key"))
            .output()
            .unwrap()
    };
    let (s, v) = rotate_and_promote(&mut op, "b1", json!({"token": "one-line-token"})).await;
    assert_eq!(s, 200, "{v}");
    let out = client_token(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"one-line-token\n");

    let (s, v) = rotate_and_promote(&mut op, "b1", json!({"token": INJECTED})).await;
    assert_eq!(s, 200, "{v}");
    let out = client_token(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
    assert!(err.contains("not one word of printable ASCII"), "{err}");
    assert!(!err.contains("NODE_OPTIONS"), "{err}");
    let out = client_token(&["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["access_token"], INJECTED);
    assert_eq!(out.stdout.iter().filter(|b| **b == b'\n').count(), 1);
    // Escaped, every one: the output is printable ASCII.
    assert!(
        out.stdout
            .iter()
            .all(|b| (0x20..0x7f).contains(b) || *b == b'\n'),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A webhook secret version past its overlap is still in the store while the daemon (and so
/// its collector) is stopped for a KEK rotation: the rotation destroys it, and says so,
/// rather than carrying it under the new KEK, where a store copy would keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kek_rotation_destroys_webhook_secret_versions_past_their_overlap() {
    let (tmp, pki) = setup();
    let mut daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    for (path, body) in [
        (
            "/v1/admin/instances/i1/webhook-secret",
            json!({"scheme": "github"}),
        ),
        ("/v1/admin/instances/i1/webhook-secret/rotate", json!({})),
    ] {
        let (s, v) = call(&mut op, Method::POST, path, Some(body)).await;
        assert!(s == 200 || s == 201, "{path}: {v}");
    }
    daemon.stop();
    {
        let records = open_records(&daemon);
        let read = records.all_webhook_secrets().await.unwrap().pop().unwrap();
        assert_eq!(read.value.versions.len(), 2);
        let mut ended = read.value.clone();
        ended.versions[1].valid_until = Some("2026-01-01T00:00:00Z".into());
        let mut batch = Batch::new();
        batch.replace(&read, &ended);
        records.commit(batch).await.unwrap();
    }
    let (c, out, err) = daemon.cli(&[
        "keys",
        "rotate-kek",
        "--config",
        daemon.config.to_str().unwrap(),
    ]);
    assert_eq!(c, 0, "{out}{err}");
    let w = open_records(&daemon)
        .all_webhook_secrets()
        .await
        .unwrap()
        .pop()
        .unwrap()
        .value;
    assert_eq!(w.versions.len(), 1, "{w:?}");
    assert_eq!((w.versions[0].version, w.versions[0].kek_version), (2, 2));
    let records = daemon.audit_records();
    let rotation = records
        .iter()
        .find(|r| r["action"] == "keys.rotate_kek")
        .unwrap();
    assert!(
        rotation["detail"]
            .as_str()
            .unwrap()
            .contains("destroying 1 webhook secret version(s) past their overlap"),
        "{rotation}"
    );
}

/// A KEK rotation saves the keyring (the new version active) before its re-wrap batch
/// lands. Killed in between, or with the batch failing, it left a keyring a broker started
/// with, sealing under a version no other replica holds, while every replica with the old
/// keyring also started (the store never recorded the new version). Here the store of
/// before the second rotation is put back under its keyring: that broker refuses to start,
/// and a further rotation puts the two in step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyring_ahead_of_the_store_is_refused_at_start() {
    let (tmp, pki, mut daemon) = with_b2_at_version_2().await;
    daemon.stop();
    let config = daemon.config.to_str().unwrap().to_owned();
    let rotate = |daemon: &Daemon| daemon.cli(&["keys", "rotate-kek", "--config", &config]);
    let (c, out, err) = rotate(&daemon);
    assert_eq!(c, 0, "{out}{err}");
    let store = daemon.data_dir.join("store");
    let at_2 = tmp.path().join("store-at-2");
    copy_dir(&store, &at_2);
    let (c, out, err) = rotate(&daemon);
    assert_eq!(c, 0, "{out}{err}");
    std::fs::remove_dir_all(&store).unwrap();
    copy_dir(&at_2, &store);
    let (c, err) = daemon.serve_refused(&[]);
    assert_ne!(c, 0);
    assert!(
        err.contains(
            "active KEK version 3 is newer than the version the store was last rotated to (2)"
        ),
        "{err}"
    );
    let (c, out, err) = rotate(&daemon);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("version 3 -> 4"), "{out}");
    daemon.restart();
    let mut both = pki.client_for("both", &daemon.url);
    let (s, v) = resolve(&mut both, json!({"instance_id": "i2"})).await;
    assert_eq!(
        (s, v["credentials"]["token"].as_str()),
        (200, Some("t2-token-v2"))
    );
}
