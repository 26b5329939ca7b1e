//! Runbooks run as written (issue 18, item 8): the KEK rotation ends with a daemon that
//! starts and a check that can tell what still needs the old KEK; a pasted-secret rotation is
//! checked with `binding probe`, never loses its active version by accident, and a broken
//! secret file is reported as the JSON error it is; the AWS runbooks point at the right step
//! and name every probe outcome; the last active GitHub App key is not retired.
//!
//! Each test runs the commands the runbook shows (the CLI, with an operator certificate) or
//! checks the runbook's text against what the daemon really does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use credbroker_tests::fake_github::{AppKey, FakeGithub};
use credbroker_tests::*;
use http::Method;
use serde_json::{json, Value};

const APP_ID: u64 = 515151;

/// `credbroker ARGS` as an operator runs it against `daemon`.
fn admin_cli(daemon: &Daemon, pki: &TestPki, args: &[&str]) -> (i32, String, String) {
    operator_cli(pki, &daemon.url, args)
}

/// The JSON an admin command printed.
fn printed(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn runbook(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("runbooks").join(name)).unwrap()
}

/// The fenced code blocks of a markdown text.
fn fenced_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None => current = Some(String::new()),
            }
            continue;
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line.trim());
            block.push('\n');
        }
    }
    blocks
}

/// The numbered steps (`1. …` at the start of a line, with their continuation lines) of the
/// section of `text` under the heading `heading`.
fn numbered_steps(text: &str, heading: &str) -> Vec<String> {
    let mut steps: Vec<String> = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("## ") {
            inside = line.trim_start_matches('#').trim() == heading;
            continue;
        }
        if !inside {
            continue;
        }
        let numbered = line
            .split_once(". ")
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if numbered {
            steps.push(line.to_owned());
        } else if let Some(last) = steps.last_mut() {
            last.push('\n');
            last.push_str(line);
        }
    }
    steps
}

/// GitHub's anchor for a heading: lower case, spaces to hyphens, other punctuation dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// The target of every `[text](target)` link of a markdown text.
fn link_targets(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target.to_owned()))
        .collect()
}

/// A file readable by its owner only (as the daemon's secret files are kept).
fn write_private(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A daemon with the GitHub App provider on the fake GitHub API and the usual records
/// (`seed_two_tenants`).
async fn github_daemon(root: &Path, pki: &TestPki) -> (Daemon, FakeGithub) {
    let gh = FakeGithub::start(APP_ID).await;
    let secret_file = root.join("webhook.secret");
    write_private(&secret_file, b"runbook-webhook-secret-0123456789abcdef");
    let (public, _) = public_section(pki);
    let extra = format!(
        "{public}[providers.github_app]\napp_id = {APP_ID}\nclient_id = \"Iv1.runbooktest00001\"\napi_base_url = \"{}\"\nweb_base_url = \"{}\"\ninstall_url = \"https://github.com/apps/credbroker-test/installations/new\"\nwebhook_secret_file = {:?}\nceiling_file = {:?}\ntimeout_ms = 3000\n",
        gh.url,
        gh.url,
        secret_file.display().to_string(),
        repo_root().join("policies/github.json").display().to_string(),
    );
    let daemon = Daemon::start(
        root,
        pki,
        &DaemonOptions {
            extra_toml: extra,
            ..Default::default()
        },
    );
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    (daemon, gh)
}

/// Stores a platform key of `github_app` and, when `activate`, activates it; its version.
async fn add_github_key(
    op: &mut credbroker::client::BrokerClient,
    fields: Value,
    activate: bool,
) -> u64 {
    let (s, v) = call(
        op,
        Method::POST,
        "/v1/admin/keys/github_app",
        Some(json!({ "fields": fields })),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let version = v["key"]["version"].as_u64().unwrap();
    if activate {
        let (s, v) = call(
            op,
            Method::POST,
            &format!("/v1/admin/keys/github_app/{version}/activate"),
            Some(json!({})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    version
}

async fn retire_github_key(
    op: &mut credbroker::client::BrokerClient,
    version: u64,
) -> (u16, Value) {
    call(
        op,
        Method::POST,
        &format!("/v1/admin/keys/github_app/{version}/retire"),
        Some(json!({})),
    )
    .await
}

fn key_states(list: &Value) -> Vec<(u64, String)> {
    list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["version"].as_u64().unwrap(),
                k["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// kek-rotation.md, Scheduled rotation, step by step with a GitHub App key stored (one
/// retired, one active): stop, back up, rotate, start, check with the runbook's commands
/// which KEK version wraps every secret version and platform key, remove the old version,
/// and the daemon starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kek_rotation_runbook_as_written_ends_with_a_daemon_that_starts() {
    let (tmp, pki) = setup();
    let (mut daemon, _gh) = github_daemon(tmp.path(), &pki).await;
    let mut op = pki.client_for("op", &daemon.url);
    // A superseded secret version, an active App key and a retired one.
    let (s, v) = rotate_and_promote(&mut op, "b2", json!({"token": "t2-token-v2"})).await;
    assert_eq!(s, 200, "{v}");
    let old_key = add_github_key(
        &mut op,
        json!({"private_key_pem": AppKey::generate().private_pem}),
        true,
    )
    .await;
    let new_key = add_github_key(
        &mut op,
        json!({"private_key_pem": AppKey::generate().private_pem}),
        true,
    )
    .await;
    let (s, v) = retire_github_key(&mut op, old_key).await;
    assert_eq!(s, 200, "{v}");
    // A webhook secret, rotated once: two versions, both sealed.
    for args in [
        &["webhook-secret", "generate", "i1", "--scheme", "github"][..],
        &["webhook-secret", "rotate", "i1"][..],
    ] {
        let (c, out, err) = admin_cli(&daemon, &pki, args);
        assert_eq!(c, 0, "{args:?}: {out}{err}");
    }

    // 1. Stop the daemon. 2. Back up the data directory and the keyring separately: a copy
    // of a stopped daemon's data directory verifies on its own.
    daemon.stop();
    let kek = kek_file_for(&daemon.data_dir);
    let backup = tmp.path().join("backup");
    copy_dir(&daemon.data_dir, &backup.join("data"));
    std::fs::copy(&kek, backup.join("kek.json")).unwrap();
    let backup_data = backup.join("data").display().to_string();
    let (c, out, err) = run_cli(&["audit", "verify", "--data-dir", &backup_data]);
    assert_eq!(c, 0, "the backup taken after stopping verifies: {out}{err}");

    // 3. Rotate.
    let config = daemon.config.display().to_string();
    let (c, out, err) = run_cli(&["keys", "rotate-kek", "--config", &config]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("version 1 -> 2"), "{out}");

    // 4. Start. 5. A resolve works and the chain verifies.
    daemon.restart();
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(
        (s, v["credentials"]["token"].as_str()),
        (200, Some("t1-token"))
    );
    let (c, out, err) = run_cli(&["audit", "verify", "--config", &config]);
    assert_eq!(c, 0, "{out}{err}");

    // 6. The check, with the runbook's commands: every secret version of every binding and
    // every platform key that still holds material names KEK version 2; a retired key names
    // none (its material is destroyed).
    let (c, out, err) = admin_cli(&daemon, &pki, &["binding", "list"]);
    assert_eq!(c, 0, "{out}{err}");
    let mut versions = 0;
    for b in printed(&out)["bindings"].as_array().unwrap() {
        let id = b["id"].as_str().unwrap();
        let (c, out, err) = admin_cli(&daemon, &pki, &["binding", "show", id]);
        assert_eq!(c, 0, "{out}{err}");
        for v in printed(&out)["binding"]["secret_versions"]
            .as_array()
            .unwrap()
        {
            assert_eq!(v["kek_version"], 2, "{id}: {v}");
            versions += 1;
        }
    }
    assert_eq!(versions, 3, "b1 v1, b2 v1 (superseded) and v2");
    let (c, out, err) = admin_cli(&daemon, &pki, &["instance", "list"]);
    assert_eq!(c, 0, "{out}{err}");
    let mut webhook_versions = 0;
    for i in printed(&out)["instances"].as_array().unwrap() {
        let id = i["id"].as_str().unwrap();
        let (c, out, err) = admin_cli(&daemon, &pki, &["webhook-secret", "show", id]);
        if c != 0 {
            assert!(err.contains("unknown_record"), "{id}: {out}{err}");
            continue;
        }
        for v in printed(&out)["webhook_secret"]["versions"]
            .as_array()
            .unwrap()
        {
            assert_eq!(v["kek_version"], 2, "{id}: {v}");
            webhook_versions += 1;
        }
    }
    assert_eq!(
        webhook_versions, 2,
        "i1's current and previous webhook secret"
    );
    let (c, out, err) = admin_cli(&daemon, &pki, &["keys", "github", "list"]);
    assert_eq!(c, 0, "{out}{err}");
    let keys = printed(&out);
    for k in keys["keys"].as_array().unwrap() {
        if k["state"] == "retired" {
            assert!(
                k["kek_version"].is_null(),
                "a retired key holds no material and needs no KEK version: {k}"
            );
        } else {
            assert_eq!(k["kek_version"], 2, "{k}");
        }
    }
    assert_eq!(
        key_states(&keys),
        vec![
            (old_key, "retired".to_owned()),
            (new_key, "active".to_owned())
        ]
    );

    // Nothing names version 1 any more: remove it from the keyring with the runbook's own
    // lines (the copy taken after step 3, then the one-line replacement), the paths made
    // this test's.
    let text = runbook("kek-rotation.md");
    let line = |start: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?}"))
            .replace("/etc/credbroker/kek.json", kek.to_str().unwrap())
    };
    let sh = |script: &str, path: Option<&Path>| {
        let bash = ["/usr/bin/bash", "/bin/bash"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap();
        let mut c = std::process::Command::new(bash);
        c.args(["-c", script]);
        if let Some(p) = path {
            c.env("PATH", p);
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = sh(&line("cp -p "), None);
    assert!(ok, "{err}");
    let rotated = PathBuf::from(format!("{}.rotated", kek.display()));
    assert_eq!(
        std::fs::read(&rotated).unwrap(),
        std::fs::read(&kek).unwrap()
    );
    let replace = line("(umask 077 && jq -e");
    // Without jq (or with a mistyped filter) the empty file it leaves is never moved over
    // the keyring, the only copy of version 2 but the one just taken.
    let no_jq = tmp.path().join("no-jq");
    std::fs::create_dir_all(&no_jq).unwrap();
    for tool in ["mv", "sync"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap();
        std::os::unix::fs::symlink(found, no_jq.join(tool)).unwrap();
    }
    let before = std::fs::read(&kek).unwrap();
    let (ok, _) = sh(&replace, Some(&no_jq));
    assert!(!ok, "the replacement went on without jq");
    assert_eq!(
        std::fs::read(&kek).unwrap(),
        before,
        "the keyring was replaced"
    );
    let (ok, err) = sh(&replace, None);
    assert!(
        ok,
        "the runbook's replacement failed (is jq installed?): {err}"
    );
    let ring: Value = serde_json::from_slice(&std::fs::read(&kek).unwrap()).unwrap();
    assert_eq!(ring["active"], 2, "{ring}");
    assert!(ring["keys"].get("1").is_none() && ring["keys"].get("2").is_some());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kek).unwrap().permissions().mode() & 0o777,
        0o600
    );
    daemon.restart();
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(
        (s, v["credentials"]["token"].as_str()),
        (200, Some("t1-token"))
    );
    let (c, out, err) = admin_cli(&daemon, &pki, &["keys", "github", "list"]);
    assert_eq!(c, 0, "{out}{err}");
    assert_eq!(
        key_states(&printed(&out)),
        vec![
            (old_key, "retired".to_owned()),
            (new_key, "active".to_owned())
        ]
    );
}

/// kek-rotation.md: the backup is taken after the daemon stopped (a running daemon's store
/// and audit log are still being written), and step 6 names the commands that show the KEK
/// version of secrets and platform keys.
#[test]
fn kek_rotation_runbook_backs_up_after_stopping() {
    let text = runbook("kek-rotation.md");
    let steps = numbered_steps(&text, "Scheduled rotation");
    let stop = steps
        .iter()
        .position(|s| s.contains("Stop the daemon"))
        .expect("a step stops the daemon");
    let backup = steps
        .iter()
        .position(|s| s.contains("Back up"))
        .expect("a step backs up");
    assert!(
        stop < backup,
        "the backup must come after stopping the daemon: {steps:#?}"
    );
    let check = steps
        .iter()
        .find(|s| s.contains("kek_version"))
        .expect("a step checks kek_version");
    for command in [
        "credbroker binding list",
        "credbroker binding show",
        "credbroker keys github list",
        "credbroker keys issuer list",
        "credbroker instance list",
        "credbroker webhook-secret show",
    ] {
        assert!(check.contains(command), "step 6 lacks `{command}`: {check}");
    }
}

/// pasted-secret-rotation.md, step 5: destroying the active version is refused
/// (`secret_version_active`) unless forced, over the API and with the CLI; the superseded
/// version goes without `--force`; a forced destroy is audited as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroying_the_active_secret_version_needs_force() {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, v) = rotate_and_promote(&mut op, "b1", json!({"token": "t1-token-v2"})).await;
    assert_eq!(s, 200, "{v}");

    // The API refuses the active version without force, and keeps serving it.
    let (s, v) = call(
        &mut op,
        Method::DELETE,
        "/v1/admin/bindings/b1/secret/2",
        None,
    )
    .await;
    assert_eq!((s, code(&v)), (409, "secret_version_active"), "{v}");
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(
        (s, v["credentials"]["token"].as_str()),
        (200, Some("t1-token-v2"))
    );
    // `force` is true or false, and only where a route declares it.
    for path in [
        "/v1/admin/bindings/b1/secret/2?force=perhaps",
        "/v1/admin/bindings/b1/secret/2?force=true&force=true",
        "/v1/admin/bindings/b1/secret/2?purge=true",
        "/v1/admin/bindings/b1/secret?force=true",
    ] {
        let (s, v) = call(&mut op, Method::DELETE, path, None).await;
        assert_eq!((s, code(&v)), (400, "bad_request"), "{path}: {v}");
    }

    // The CLI as the runbook shows it: refused with the code…
    let (c, out, err) = admin_cli(
        &daemon,
        &pki,
        &["secret", "destroy", "b1", "--version", "2"],
    );
    assert_eq!(c, 1, "{out}{err}");
    assert!(err.contains("secret_version_active (409)"), "{err}");
    // …`--force` only with `--version`…
    let (c, _, err) = admin_cli(&daemon, &pki, &["secret", "destroy", "b1", "--force"]);
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("--version"), "{err}");
    // …the superseded version goes without it…
    let (c, out, err) = admin_cli(
        &daemon,
        &pki,
        &["secret", "destroy", "b1", "--version", "1"],
    );
    assert_eq!(c, 0, "{out}{err}");
    assert_eq!(printed(&out)["destroyed_versions"], json!([1]));
    // …and the active one with it: resolves then have no secret.
    let (c, out, err) = admin_cli(
        &daemon,
        &pki,
        &["secret", "destroy", "b1", "--version", "2", "--force"],
    );
    assert_eq!(c, 0, "{out}{err}");
    assert_eq!(printed(&out)["active_secret_version"], Value::Null);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!((s, code(&v)), (409, "secret_missing"), "{v}");

    let destroys: Vec<Value> = daemon
        .audit_records()
        .into_iter()
        .filter(|r| r["action"] == "secret.destroy")
        .collect();
    assert_eq!(
        destroys
            .iter()
            .filter(|r| r["outcome"] == "denied" && r["error_code"] == "secret_version_active")
            .count(),
        2,
        "the API's and the CLI's refusals: {destroys:#?}"
    );
    assert!(
        destroys.iter().any(|r| r["outcome"] == "allowed"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("destroyed_versions=[2]") && d.contains("forced"))),
        "{destroys:#?}"
    );
    // The runbook says so.
    let text = runbook("pasted-secret-rotation.md");
    assert!(text.contains("secret_version_active") && text.contains("--force"));
}

/// pasted-secret-rotation.md, steps 2-4 with the CLI: a secret file with a JSON syntax error
/// is refused with the JSON error and its position in the file (not advice to wrap it in
/// `{"fields": …}`, which the command does itself), never echoing a value; a good file is
/// rotated, checked with `binding probe`, promoted and probed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_secret_file_gets_a_json_error_and_binding_probe_checks_the_rotation() {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let file = |name: &str, text: &str| -> PathBuf {
        let p = tmp.path().join(name);
        write_private(&p, text.as_bytes());
        p
    };

    // A trailing comma: the JSON error, at line 3 of the file.
    let bad = file("bad-fields.json", "{\n  \"token\": \"s3cret-value\",\n}\n");
    let bad = bad.display().to_string();
    let (c, out, err) = admin_cli(
        &daemon,
        &pki,
        &["secret", "rotate", "b1", "--from-file", &bad],
    );
    assert_ne!(c, 0, "{out}{err}");
    assert!(err.contains("is not valid JSON"), "{err}");
    assert!(err.contains("line 3 column 1"), "{err}");
    assert!(!err.contains("\"fields\""), "no advice to wrap it: {err}");
    assert!(!err.contains("s3cret-value"), "{err}");
    // JSON of the wrong shape says what shape, without the value.
    let shape = file("shape.json", "{\"token\": 12345}\n");
    let shape = shape.display().to_string();
    let (c, _, err) = admin_cli(
        &daemon,
        &pki,
        &["secret", "rotate", "b1", "--from-file", &shape],
    );
    assert_ne!(c, 0, "{err}");
    assert!(err.contains("JSON object of string fields"), "{err}");
    assert!(!err.contains("12345"), "{err}");
    // The API itself answers a syntax error as one.
    let (status, body) = op
        .request(
            Method::POST,
            "/v1/admin/bindings/b1/secret/rotate",
            Some(b"{\"fields\":{\"token\":\"s3cret-value\",}}".to_vec()),
        )
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status.as_u16(), code(&v)), (400, "bad_request"), "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("not valid JSON"), "{message}");
    assert!(!message.contains("s3cret-value"), "{message}");
    // Nothing was written by any of them.
    let (_, v) = call(&mut op, Method::GET, "/v1/admin/bindings/b1", None).await;
    assert_eq!(v["binding"]["secret_versions"].as_array().unwrap().len(), 1);

    // Step 2: rotate from a good file (pending, probed at once).
    let good = file("new-fields.json", "{\n  \"token\": \"t1-token-v2\"\n}\n");
    let good = good.display().to_string();
    let (c, out, err) = admin_cli(
        &daemon,
        &pki,
        &["secret", "rotate", "b1", "--from-file", &good],
    );
    assert_eq!(c, 0, "{out}{err}");
    let rotated = printed(&out);
    assert_eq!(rotated["state"], "pending", "{rotated}");
    assert_eq!(rotated["version"], 2, "{rotated}");
    // Step 3: `binding probe` tests the pending version.
    let (c, out, err) = admin_cli(&daemon, &pki, &["binding", "probe", "b1"]);
    assert_eq!(c, 0, "{out}{err}");
    let probed = printed(&out);
    assert_eq!(probed["pending_version"], 2, "{probed}");
    assert_eq!(probed["probe"]["result"], "passed", "{probed}");
    assert_eq!(probed["then"], "credbroker secret promote b1 2", "{probed}");
    // Step 4: promote, then `binding probe` tests the active version.
    let (c, out, err) = admin_cli(&daemon, &pki, &["secret", "promote", "b1", "2"]);
    assert_eq!(c, 0, "{out}{err}");
    let (c, out, err) = admin_cli(&daemon, &pki, &["binding", "probe", "b1"]);
    assert_eq!(c, 0, "{out}{err}");
    let probed = printed(&out);
    assert_eq!(probed["probe"]["result"], "passed", "{probed}");
    assert_eq!(probed["binding"]["active_secret_version"], 2, "{probed}");
    assert!(probed["binding"]["last_tested_at"].is_string(), "{probed}");
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(
        (s, v["credentials"]["token"].as_str()),
        (200, Some("t1-token-v2"))
    );

    // The runbook checks the promotion with `binding probe`, in the same block.
    let text = runbook("pasted-secret-rotation.md");
    assert!(
        fenced_blocks(&text).iter().any(|b| {
            b.contains("credbroker secret promote BINDING_ID")
                && b.contains("credbroker binding probe BINDING_ID")
        }),
        "pasted-secret-rotation.md: promote is not followed by `binding probe`"
    );
}

/// pasted-secret-leak.md, steps 1-2 run as written: once the binding is disabled no resolve
/// gets the leaked value again (enabling before the promotion would serve it), and after the
/// last command of step 2 workers get the replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leak_runbook_as_written_never_serves_the_leaked_value_again() {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let mut w1 = pki.client_for("w1", &daemon.url);
    let leaked = "t1-token";
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!((s, v["credentials"]["token"].as_str()), (200, Some(leaked)));
    let fields = tmp.path().join("new-fields.json");
    write_private(&fields, b"{\"token\": \"t1-token-v2\"}\n");
    let fields = fields.display().to_string();

    let text = runbook("pasted-secret-leak.md");
    let blocks = fenced_blocks(&text);
    let block = |needle: &str| {
        blocks
            .iter()
            .find(|b| b.contains(needle))
            .unwrap_or_else(|| panic!("pasted-secret-leak.md has no block with {needle:?}"))
            .clone()
    };
    let script = format!(
        "{}\n{}",
        block("credbroker binding disable"),
        block("credbroker secret rotate")
    );
    let commands: Vec<Vec<String>> = script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("credbroker "))
        .map(|l| {
            l.split_whitespace()
                .map(|w| match w {
                    "BINDING_ID" => "b1".to_owned(),
                    "new-fields.json" => fields.clone(),
                    other => other.to_owned(),
                })
                .collect()
        })
        .collect();
    let names: Vec<String> = commands.iter().map(|c| c[..2].join(" ")).collect();
    for needed in [
        "binding disable",
        "secret rotate",
        "secret promote",
        "binding enable",
    ] {
        assert!(
            names.iter().any(|n| n == needed),
            "{needed} missing: {names:?}"
        );
    }
    for (i, command) in commands.iter().enumerate() {
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        let (c, out, err) = admin_cli(&daemon, &pki, &args);
        assert_eq!(c, 0, "credbroker {}: {out}{err}", args.join(" "));
        let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
        assert_ne!(
            v["credentials"]["token"].as_str(),
            Some(leaked),
            "after `credbroker {}` the leaked value is served again",
            args.join(" ")
        );
        if i == 0 {
            assert_eq!((s, code(&v)), (403, "binding_inactive"), "{v}");
        }
    }
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(
        (s, v["credentials"]["token"].as_str()),
        (200, Some("t1-token-v2")),
        "{v}"
    );
}

/// github-app-key-compromise.md, step 2: the last active App private key is not retired
/// (`last_active_key`); the OAuth client secret is another kind and neither counts for nor
/// is held by the rule; staged keys never block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_active_github_app_key_is_not_retired() {
    let (tmp, pki) = setup();
    let (daemon, _gh) = github_daemon(tmp.path(), &pki).await;
    let mut op = pki.client_for("op", &daemon.url);
    let oauth = add_github_key(
        &mut op,
        json!({"oauth_client_secret": "0123456789abcdef0123456789abcdef01234567"}),
        true,
    )
    .await;
    let a = add_github_key(
        &mut op,
        json!({"private_key_pem": AppKey::generate().private_pem}),
        true,
    )
    .await;

    // The only active App key: refused over the API and with the runbook's command, even
    // though the OAuth client secret is active too.
    let (s, v) = retire_github_key(&mut op, a).await;
    assert_eq!((s, code(&v)), (409, "last_active_key"), "{v}");
    let a_text = a.to_string();
    let (c, out, err) = admin_cli(&daemon, &pki, &["keys", "github", "retire", &a_text]);
    assert_eq!(c, 1, "{out}{err}");
    assert!(err.contains("last_active_key (409)"), "{err}");
    let (c, out, err) = admin_cli(&daemon, &pki, &["keys", "github", "list"]);
    assert_eq!(c, 0, "{out}{err}");
    assert_eq!(
        key_states(&printed(&out)),
        vec![(oauth, "active".to_owned()), (a, "active".to_owned())]
    );

    // A staged successor does not count; an active one does.
    let b = add_github_key(
        &mut op,
        json!({"private_key_pem": AppKey::generate().private_pem}),
        false,
    )
    .await;
    let (s, v) = retire_github_key(&mut op, a).await;
    assert_eq!((s, code(&v)), (409, "last_active_key"), "{v}");
    let (s, v) = call(
        &mut op,
        Method::POST,
        &format!("/v1/admin/keys/github_app/{b}/activate"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = retire_github_key(&mut op, a).await;
    assert_eq!(s, 200, "{v}");
    // Now b is the last one.
    let (s, v) = retire_github_key(&mut op, b).await;
    assert_eq!((s, code(&v)), (409, "last_active_key"), "{v}");
    // A staged key and the OAuth client secret retire freely.
    let c_key = add_github_key(
        &mut op,
        json!({"private_key_pem": AppKey::generate().private_pem}),
        false,
    )
    .await;
    let (s, v) = retire_github_key(&mut op, c_key).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = retire_github_key(&mut op, oauth).await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = call(&mut op, Method::GET, "/v1/admin/keys/github_app", None).await;
    assert_eq!(
        key_states(&v),
        vec![
            (oauth, "retired".to_owned()),
            (a, "retired".to_owned()),
            (b, "active".to_owned()),
            (c_key, "retired".to_owned())
        ]
    );
    // Every refusal is audited with its code.
    let refused = daemon
        .audit_records()
        .into_iter()
        .filter(|r| r["action"] == "keys.github_app.retire" && r["error_code"] == "last_active_key")
        .count();
    assert_eq!(refused, 4);
    // The runbook says so.
    assert!(runbook("github-app-key-compromise.md").contains("last_active_key"));
}

/// The codes in the first column of the probe outcome table of aws-onboarding.md.
fn aws_probe_outcomes() -> Vec<String> {
    let text = runbook("aws-onboarding.md");
    let mut inside = false;
    let mut codes = Vec::new();
    for line in text.lines() {
        if line.starts_with("## ") {
            inside = line.contains("Activate with the probe");
            continue;
        }
        if !inside || !line.starts_with("| `") {
            continue;
        }
        if let Some(code) = line[3..].split('`').next() {
            codes.push(code.to_owned());
        }
    }
    codes
}

/// aws-onboarding.md, steps 1-3 with STS unreachable: the probe answers
/// `provider_unavailable`, the binding stays pending, and the outcome table says what that
/// means and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_probe_outcome_table_covers_provider_unavailable() {
    let (tmp, pki) = setup();
    // Nothing listens there: every STS call fails to connect.
    let (_held, dead) = closed_port();
    let extra = format!(
        "[providers.aws_assume_role]\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:{dead}\"\nvendor_account_id = \"111111111111\"\nattempt_timeout_ms = 300\nmax_attempts = 2\nceiling_file = {:?}\n",
        repo_root().join("policies/aws.json").display().to_string()
    );
    let daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            extra_toml: extra,
            env: aws_test_env("AKIAVENDORTESTKEY000", "vendor-test-secret"),
            ..Default::default()
        },
    );
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let (c, out, err) = admin_cli(&daemon, &pki, &["onboard", "aws", "--tenant", "t1"]);
    assert_eq!(c, 0, "{out}{err}");
    let arn = "arn:aws:iam::222222222222:role/CredbrokerAccess";
    let (c, out, err) = admin_cli(
        &daemon,
        &pki,
        &[
            "binding",
            "add",
            "aws",
            "aws1",
            "--tenant",
            "t1",
            "--role-arn",
            arn,
            "--owner",
            "team-tests",
            "--purpose",
            "integration test",
        ],
    );
    assert_eq!(c, 0, "{out}{err}");
    let (c, out, err) = admin_cli(&daemon, &pki, &["binding", "probe", "aws1"]);
    assert_eq!(c, 1, "{out}{err}");
    let code_seen = err
        .strip_prefix("error: ")
        .and_then(|e| e.split_whitespace().next())
        .unwrap_or("")
        .to_owned();
    assert_eq!(code_seen, "provider_unavailable", "{err}");
    assert!(err.contains("(504)"), "{err}");
    let (c, out, err) = admin_cli(&daemon, &pki, &["binding", "show", "aws1"]);
    assert_eq!(c, 0, "{out}{err}");
    assert_eq!(printed(&out)["binding"]["status"], "pending_activation");

    let outcomes = aws_probe_outcomes();
    assert!(
        outcomes.contains(&code_seen),
        "aws-onboarding.md's probe outcome table lacks `{code_seen}`: {outcomes:?}"
    );
    for expected in [
        "external_id_not_enforced",
        "account_mismatch",
        "provider_denied",
    ] {
        assert!(outcomes.iter().any(|c| c == expected), "{outcomes:?}");
    }
}

/// Cross-references between runbooks land on the step they mean: every `file.md#anchor`
/// link names a heading of that file, and aws-customer-revoked-trust.md's "our side changed"
/// case points at the step of aws-caller-credential-compromise.md that puts a new credential
/// in place, not at "Tell customers".
#[test]
fn runbook_cross_references_land_on_the_right_step() {
    let dir = repo_root().join("runbooks");
    let mut failures = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for target in link_targets(&text) {
            let Some((file, anchor)) = target.split_once('#') else {
                continue;
            };
            if file.is_empty() || file.contains('/') || !file.ends_with(".md") {
                continue;
            }
            checked += 1;
            let Ok(other) = std::fs::read_to_string(dir.join(file)) else {
                failures.push(format!("{}: {target}: no such runbook", path.display()));
                continue;
            };
            let found = other
                .lines()
                .filter(|l| l.starts_with('#'))
                .any(|l| slug(l.trim_start_matches('#')) == anchor);
            if !found {
                failures.push(format!("{}: {target}: no such heading", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // The runbooks link to one another's steps in many places: finding none means the link
    // parser broke, not that every link is right.
    assert!(
        checked >= 5,
        "only {checked} cross-references with an anchor were found"
    );

    let revoked = runbook("aws-customer-revoked-trust.md");
    let compromise = runbook("aws-caller-credential-compromise.md");
    let ours = revoked
        .split("**Our side changed**")
        .nth(1)
        .expect("the 'our side changed' case");
    let anchors: Vec<String> = link_targets(ours)
        .into_iter()
        .filter_map(|t| {
            t.strip_prefix("aws-caller-credential-compromise.md#")
                .map(str::to_owned)
        })
        .collect();
    assert!(
        !anchors.is_empty(),
        "the 'our side changed' case must link to a step of aws-caller-credential-compromise.md by its anchor"
    );
    for anchor in anchors {
        let heading = compromise
            .lines()
            .filter(|l| l.starts_with('#'))
            .map(|l| l.trim_start_matches('#').trim())
            .find(|h| slug(h) == anchor)
            .unwrap_or_else(|| panic!("no heading for #{anchor}"));
        assert!(
            !heading.contains("Tell customers") && heading.contains("credential"),
            "the reference lands on {heading:?}"
        );
    }
}
