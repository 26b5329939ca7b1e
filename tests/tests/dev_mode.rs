//! The README's run command: `credbroker dev` and its documented contract.

use std::process::Command;

use credbroker::client::BrokerClient;
use credbroker_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_contract() {
    init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let dev = start_dev(&dir);
    assert!(dev.banner.contains("Seeded"), "{}", dev.banner);
    assert!(dev.banner.contains("curl --cacert"), "{}", dev.banner);
    for f in [
        "ca.crt",
        "server.crt",
        "server.key",
        "worker.crt",
        "worker.key",
        "operator.crt",
        "operator.key",
    ] {
        assert!(dir.join("pki").join(f).exists(), "pki/{f}");
    }
    let pki = dir.join("pki");
    let mut worker = dev.worker_client(&dir);
    let (s, v) = resolve(&mut worker, json!({"instance_id": "demo-instance"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["credentials"]["username"], "demo-user");
    let password = v["credentials"]["password"].as_str().unwrap().to_owned();

    // The curl command printed is the one a newcomer pastes (run it when curl exists).
    if Command::new("curl").arg("--version").output().is_ok() {
        let line = dev
            .banner
            .lines()
            .find(|l| l.trim_start().starts_with("curl "))
            .unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{} -sS", line.trim()))
            .output()
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(body["credentials"]["username"], "demo-user");
    }

    // Audit verify and export work against the dev data directory while it runs; admin
    // commands work with the dev operator certificate.
    let d = dir.to_str().unwrap();
    let (c, out, err) = run_cli(&["audit", "verify", "--data-dir", d]);
    assert_eq!(c, 0, "{out}{err}");
    let (c, out, _) = run_cli(&["audit", "export", "--data-dir", d]);
    assert_eq!(c, 0);
    assert!(out.contains("\"action\":\"resolve\""));
    let (c, out, err) = run_cli(&["tenant", "list", "--dev-dir", d, "--server", &dev.url]);
    assert_eq!(c, 0, "{err}");
    assert!(out.contains("\"demo\""), "{out}");
    drop(dev);

    // Reusing the directory keeps the PKI, keys and demo secret.
    let dev = start_dev(&dir);
    assert!(dev.banner.contains("Reusing"), "{}", dev.banner);
    let mut worker = BrokerClient::new(
        &dev.url,
        &pki.join("ca.crt"),
        &pki.join("worker.crt"),
        &pki.join("worker.key"),
    )
    .unwrap();
    let (s, v) = resolve(&mut worker, json!({"instance_id": "demo-instance"})).await;
    assert_eq!(s, 200);
    assert_eq!(v["credentials"]["password"], password.as_str());
    // Killed (well within its checkpoint interval), the log verifies: its first batch was
    // signed at once. Ctrl-C stops it cleanly, and the log verifies too.
    drop(dev);
    let (c, out, err) = run_cli(&["audit", "verify", "--data-dir", d]);
    assert_eq!(c, 0, "{out}{err}");
    let mut dev = start_dev(&dir);
    dev.interrupt();
    let (c, out, err) = run_cli(&["audit", "verify", "--data-dir", d]);
    assert_eq!(c, 0, "{out}{err}");
}

/// `dev` trusts the CA and keys it finds in its directory: one another user could have
/// prepared (group- or world-writable, as a shared `/tmp/credbroker-dev` would be) is
/// refused before anything in it is read or written.
#[test]
fn a_dev_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shared");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = dev_refused(&dir, "dev started in a directory others can write");
    assert!(err.contains("writable by group or others"), "{err}");
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "nothing was written into it"
    );
    // Admin commands given it (`--dev-dir`, or CREDBROKER_DEV_DIR) refuse it too: another
    // user who prepared it would get the secret `secret set` sends, at the address it names.
    let theirs = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    theirs.set_nonblocking(true).unwrap();
    std::fs::write(
        dir.join("server-url"),
        format!("https://{}\n", theirs.local_addr().unwrap()),
    )
    .unwrap();
    let secret = tmp.path().join("secret.json");
    std::fs::write(&secret, r#"{"token": "for the broker only"}"#).unwrap();
    let out = std::process::Command::new(daemon_bin())
        .args(["secret", "set", "b1", "--from-file"])
        .arg(&secret)
        .arg("--dev-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("writable by group or others"), "{err}");
    assert!(
        theirs.accept().is_err(),
        "the command connected to the address the directory names"
    );
    // A directory of one's own, in a directory others may rename entries of (no sticky
    // bit): it could be swapped for theirs between the check and the reads.
    let mine = dir.join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = std::process::Command::new(daemon_bin())
        .args(["tenant", "list", "--dev-dir"])
        .arg(&mine)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("others may rename its entries"), "{err}");
}

/// `dev` given a production data directory by mistake (as the daemon's user, so it owns it)
/// is refused before it writes anything: it would have written its CA, keys and a config
/// there, and seeded a dev operator, worker and tenant into the store it found.
#[test]
fn a_directory_holding_anything_but_a_dev_broker_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("production");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = "data_dir = \"/var/lib/credbroker\"\n";
    std::fs::write(dir.join("credbroker.toml"), config).unwrap();
    std::fs::create_dir(dir.join("store")).unwrap();
    let err = dev_refused(&dir, "dev started in a production data directory");
    assert!(err.contains("holds no dev broker"), "{err}");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["credbroker.toml", "store"], "dev wrote into it");
    assert_eq!(
        std::fs::read_to_string(dir.join("credbroker.toml")).unwrap(),
        config
    );
    assert!(std::fs::read_dir(dir.join("store"))
        .unwrap()
        .next()
        .is_none());
}

/// Runs `credbroker dev` on `dir`, which it must refuse (`what` says what a start would
/// mean); its standard error.
fn dev_refused(dir: &std::path::Path, what: &str) -> String {
    let mut child = std::process::Command::new(daemon_bin())
        .args([
            "dev",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = exit_within(&mut child, std::time::Duration::from_secs(20), what);
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    err
}
