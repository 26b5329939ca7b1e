//! The operator's daily tools against a real dev broker: `--dev-dir` dials the address the
//! dev broker listens on, a broker that cannot be reached is named, every list command has
//! a JSON form that parses, progress appears on a terminal and nowhere else, completions
//! and the man page come from the clap definitions.

use std::path::Path;
use std::process::Command;

use credbroker_tests::*;
use serde_json::Value;

fn dev_dir_arg(dir: &Path) -> String {
    dir.display().to_string()
}

fn json_of(out: &str, what: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {out}"))
}

#[test]
fn dev_dir_dials_the_dev_broker_and_every_list_has_json() {
    init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let dev = start_dev(&dir);
    // Port 0 was asked for: only the running broker knows its port.
    assert!(!dev.url.ends_with(":8443"), "{}", dev.url);
    let d = dev_dir_arg(&dir);
    let (code, out, err) = run_cli(&["tenant", "list", "--dev-dir", &d]);
    assert_eq!(
        code, 0,
        "tenant list --dev-dir on a non-default port: {err}"
    );
    let v = json_of(&out, "tenant list");
    assert_eq!(v["tenants"][0]["id"], "demo", "{v}");

    // --server wins over the dev directory; an unreachable broker is named, exit 3.
    let (_held, port) = closed_port();
    let closed = format!("https://127.0.0.1:{port}");
    let (code, _, err) = run_cli(&["tenant", "list", "--dev-dir", &d, "--server", &closed]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&closed), "the address tried is named: {err}");
    assert!(err.contains("--server"), "how to give another: {err}");

    // A server the CA does not vouch for: a TLS failure, said as such (exit 2, not 3).
    let other = credbroker::pki::CertAuthority::generate("other CA").unwrap();
    let other_ca = tmp.path().join("other-ca.crt");
    std::fs::write(&other_ca, &other.cert_pem).unwrap();
    let (code, _, err) = run_cli(&[
        "tenant",
        "list",
        "--dev-dir",
        &d,
        "--ca",
        other_ca.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("TLS handshake failed"), "{err}");

    // Every list command, --output json: parses (the API's field names).
    let lists: &[&[&str]] = &[
        &["tenant", "list"],
        &["worker", "list"],
        &["instance", "list"],
        &["binding", "list"],
        &["operator", "list"],
        &["intake", "list"],
        &["onboard", "links"],
        &["unclaimed", "list"],
        &["inventory"],
        &["webhook-secret", "show", "demo-instance"],
    ];
    for args in lists {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&["--dev-dir", &d, "--output", "json"]);
        let (code, out, err) = run_cli(&all);
        // No webhook secret was generated for the demo instance: a refusal, said as such.
        if args[0] == "webhook-secret" {
            assert_eq!(code, 1, "{err}");
            assert!(err.contains("error: "), "{err}");
            continue;
        }
        assert_eq!(code, 0, "{args:?}: {err}");
        json_of(&out, &args.join(" "));
    }
    for args in [&["provider", "list"][..], &["provider", "show", "aws"][..]] {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&["--output", "json"]);
        let (code, out, err) = run_cli(&all);
        assert_eq!(code, 0, "{err}");
        json_of(&out, &args.join(" "));
    }
    // The table form, asked for: a header row, the id first.
    let (code, out, _) = run_cli(&["tenant", "list", "--dev-dir", &d, "--output", "table"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ID "), "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with("demo "), "{out}");

    // Progress: nothing when standard error is not a terminal, a bar when it is one.
    let (code, out, err) = run_cli(&["audit", "verify", "--data-dir", &d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("audit OK"), "{out}");
    assert_eq!(err, "", "no progress off a terminal");
    let (code, out, err) = run_cli(&["audit", "verify", "--data-dir", &d, "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_of(&out, "audit verify")["verified"], true);
    assert_eq!(err, "");
    let on_tty = |extra: &str| {
        // util-linux `script` runs the command on a pseudo-terminal.
        let cmd = format!(
            "{} audit verify --data-dir {d}{extra}",
            daemon_bin().display()
        );
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .output()
            .expect("script(1) from util-linux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tty = on_tty("");
    assert!(
        tty.contains("verifying the audit log"),
        "a bar on a terminal: {tty}"
    );
    let tty_json = on_tty(" --output json");
    assert!(!tty_json.contains("verifying the audit log"), "{tty_json}");

    // Stopped (killed: its URL file stays behind), then gone: a port chosen at start
    // cannot be guessed, and the message says so.
    let mut dev = dev;
    dev.stop();
    let (code, _, err) = run_cli(&["tenant", "list", "--dev-dir", &d]);
    assert_eq!(code, 3, "the recorded address, unreachable now: {err}");
    std::fs::remove_file(dir.join("server-url")).unwrap();
    let (code, _, err) = run_cli(&["tenant", "list", "--dev-dir", &d]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("port chosen at start"), "{err}");

    // Completions and the man page, from the same definitions.
    let (code, out, _) = run_cli(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("credbroker") && out.contains("doctor"),
        "bash completion"
    );
    let (code, out, _) = run_cli(&["man"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(".TH credbroker"),
        "{}",
        &out[..out.len().min(300)]
    );
    let man_dir = tmp.path().join("man");
    let (code, _, err) = run_cli(&["man", "--dir", man_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(man_dir.join("credbroker-doctor.1").exists());
    // Readable by everyone (the CLI's umask is 077), whoever installs them; a link planted
    // under a page's name (a directory others can write) is replaced, never written
    // through.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&man_dir), 0o755);
    assert_eq!(mode(&man_dir.join("credbroker-doctor.1")), 0o644);
    // Parents it makes are readable by everyone too (`share/man/man1` under a new prefix).
    let deep = tmp.path().join("prefix/share/man/man1");
    let (code, _, err) = run_cli(&["man", "--dir", deep.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for made in [
        "prefix",
        "prefix/share",
        "prefix/share/man",
        "prefix/share/man/man1",
    ] {
        assert_eq!(mode(&tmp.path().join(made)), 0o755, "{made}");
    }
    // A `..` would name a directory that exists as one it made (`new/..` is the parent, once
    // `new` is made): refused, nothing opened up.
    let private = tmp.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let dotted = private.join("new/../man1");
    let (code, _, err) = run_cli(&["man", "--dir", dotted.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("without '..'"), "{err}");
    assert_eq!(mode(&private), 0o700);
    let victim = tmp.path().join("authorized_keys");
    std::fs::write(&victim, "ssh-ed25519 AAAA mine\n").unwrap();
    std::fs::remove_file(man_dir.join("credbroker-tenant.1")).unwrap();
    std::os::unix::fs::symlink(&victim, man_dir.join("credbroker-tenant.1")).unwrap();
    let (code, _, err) = run_cli(&["man", "--dir", man_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "ssh-ed25519 AAAA mine\n"
    );
    assert!(
        !std::fs::symlink_metadata(man_dir.join("credbroker-tenant.1"))
            .unwrap()
            .is_symlink()
    );
}

/// Listings come in pages of at most 1,000 records in id order, each after the previous
/// page's `next`; the CLI reads every page and prints them as one answer. A query a listing
/// does not take is refused, as is any query on an addition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_come_in_pages_and_the_cli_reads_them_all() {
    use http::Method;
    use serde_json::json;
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let ids: Vec<String> = (0..1003).map(|i| format!("t{i:04}")).collect();
    // Four operators' connections adding a quarter each.
    let mut adding = tokio::task::JoinSet::new();
    for k in 0..4 {
        let mut op = pki.client_for("op", &daemon.url);
        let mine: Vec<String> = ids.iter().skip(k).step_by(4).cloned().collect();
        adding.spawn(async move {
            for id in mine {
                let (s, v) = call(
                    &mut op,
                    Method::POST,
                    "/v1/admin/tenants",
                    Some(json!({"id": id})),
                )
                .await;
                assert_eq!(s, 201, "{v}");
            }
        });
    }
    while let Some(done) = adding.join_next().await {
        done.unwrap();
    }
    let mut op = pki.client_for("op", &daemon.url);
    let listed = |v: &Value| -> Vec<String> {
        v["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };

    let (s, v) = call(&mut op, Method::GET, "/v1/admin/tenants?limit=2", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (listed(&v), v["next"].clone()),
        (ids[..2].to_vec(), json!("t0001"))
    );
    let (s, v) = call(
        &mut op,
        Method::GET,
        "/v1/admin/tenants?after=t0001&limit=2",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (listed(&v), v["next"].clone()),
        (ids[2..4].to_vec(), json!("t0003"))
    );
    // The default page is the largest.
    let (s, v) = call(&mut op, Method::GET, "/v1/admin/tenants", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        (listed(&v), v["next"].clone()),
        (ids[..1000].to_vec(), json!("t0999"))
    );
    let (s, v) = call(&mut op, Method::GET, "/v1/admin/tenants?after=t0999", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        (listed(&v), v["next"].clone()),
        (ids[1000..].to_vec(), Value::Null)
    );
    // After an id that is not there: from the next one on.
    let (s, v) = call(&mut op, Method::GET, "/v1/admin/tenants?after=t1001x", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        (listed(&v), v["next"].clone()),
        (ids[1002..].to_vec(), Value::Null)
    );

    for (query, says) in [
        ("limit=0", "limit must be"),
        ("limit=1001", "limit must be"),
        ("limit=-1", "limit must be"),
        ("limit=2&limit=3", "more than once"),
        ("after=", "after must be"),
        ("after=a&after=b", "more than once"),
        ("after=a%00b", "after must be"),
        ("after=t%E2%80%AE1", "after must be"),
        ("after=a%20b", "after must be"),
        ("page=2", "unknown query parameter"),
    ] {
        let (s, v) = call(
            &mut op,
            Method::GET,
            &format!("/v1/admin/tenants?{query}"),
            None,
        )
        .await;
        assert_eq!((s, code(&v)), (400, "bad_request"), "{query}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{query}: {v}"
        );
    }
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/tenants?limit=2",
        Some(json!({"id": "extra"})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");
    let long = "a".repeat(513);
    let (s, v) = call(
        &mut op,
        Method::GET,
        &format!("/v1/admin/tenants?after={long}"),
        None,
    )
    .await;
    assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");

    let (c, out, err) = operator_cli(&pki, &daemon.url, &["tenant", "list", "--output", "json"]);
    assert_eq!(c, 0, "{err}");
    let v = json_of(&out, "tenant list");
    assert_eq!(listed(&v), ids);
    assert!(
        v.get("next").is_none(),
        "the CLI's answer is whole: {}",
        v["next"]
    );
}

/// The operator's key file open to others is said (whoever reads it acts as this operator),
/// as the worker helper says it of a worker key; a secret typed on a terminal (`secret set
/// --from-stdin` without a pipe) is refused before anything is read: it would be echoed and
/// kept in the terminal's scrollback.
#[test]
fn an_open_operator_key_is_said_and_a_secret_is_never_typed_on_a_terminal() {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::PermissionsExt;
    init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let _dev = start_dev(&dir);
    let d = dev_dir_arg(&dir);
    let key = dir.join("pki/operator.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run_cli(&["tenant", "list", "--dev-dir", &d]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("has mode 0644") && err.contains("acts as this operator"),
        "{err}"
    );
    let (code, _, err) = run_cli(&["tenant", "list", "--dev-dir", &d]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");

    // Standard input a terminal (a pseudo-terminal's far end).
    let (mut master, mut slave) = (0, 0);
    let opened = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(opened, 0);
    let (_master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    let mut child = Command::new(daemon_bin())
        .args(["secret", "set", "anything", "--from-stdin", "--dev-dir", &d])
        .stdin(slave)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A command that reads the terminal waits for what is typed: not for ever here.
    let status = exit_within(
        &mut child,
        std::time::Duration::from_secs(20),
        "secret set read the terminal",
    );
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("standard input is a terminal"), "{err}");
}
