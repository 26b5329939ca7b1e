//! The deployment artifacts (issue 15, item 5): the systemd unit passes `systemd-analyze
//! verify` and keeps its hardening, the Containerfile runs unprivileged with a data volume
//! and a certificate-free health check, and that health check — `credbroker health` against
//! the loopback `[health]` listener — works on a real daemon, which refuses a health
//! address off loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use credbroker_tests::*;

const UNIT: &str = "deploy/systemd/credbroker.service";
const CONTAINERFILE: &str = "deploy/container/Containerfile";
const EXEC_START: &str = "/usr/local/bin/credbroker serve --config /etc/credbroker/credbroker.toml";

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `systemd-analyze`, or a failure saying how to get it: this test never skips.
fn systemd_analyze() -> PathBuf {
    on_path("systemd-analyze", "--version").unwrap_or_else(|| {
        panic!(
            "systemd-analyze is not on PATH: install systemd (Debian: apt-get install systemd) \
             to verify {UNIT}"
        )
    })
}

/// Runs `systemd-analyze verify` on a copy of the unit in a fresh directory, with `ExecStart`'s
/// binary replaced by the daemon under test (verify refuses a command that does not exist,
/// and /usr/local/bin/credbroker is not installed on a test machine). Returns whether it
/// exited 0 and everything it printed.
fn verify(unit_text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let bin = daemon_bin();
    assert!(bin.exists(), "{} not built", bin.display());
    let text = unit_text.replace(
        "ExecStart=/usr/local/bin/credbroker ",
        &format!("ExecStart={} ", bin.display()),
    );
    let copy = dir.path().join("credbroker.service");
    std::fs::write(&copy, text).unwrap();
    let out = Command::new(systemd_analyze())
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

#[test]
fn the_unit_passes_systemd_analyze_verify_without_a_warning() {
    let unit = read(UNIT);
    assert!(
        unit.lines().any(|l| l == format!("ExecStart={EXEC_START}")),
        "ExecStart must be exactly `{EXEC_START}`"
    );
    let (ok, printed) = verify(&unit);
    // verify exits 0 on unknown keys and unparsable values (it only warns): any line about
    // the unit is a failure too.
    let about_unit: Vec<&str> = printed
        .lines()
        .filter(|l| l.contains("credbroker.service"))
        .collect();
    assert!(
        ok && about_unit.is_empty(),
        "systemd-analyze verify {UNIT}:\n{printed}"
    );
}

#[test]
fn verify_would_catch_a_misspelt_or_invalid_directive() {
    // The check above is not vacuous: a typo and a bad value are reported.
    let unit = read(UNIT)
        .replace("ProtectSystem=strict", "ProtectSytem=strict")
        .replace("TimeoutStopSec=", "TimeoutStopSec=soon");
    let (_, printed) = verify(&unit);
    assert!(printed.contains("ProtectSytem"), "{printed}");
    assert!(printed.contains("Failed to parse"), "{printed}");
}

/// `(section, key, value)` of every assignment, comments and blank lines left out.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not an assignment: {line}"));
        out.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
    }
    out
}

/// Every value `[Service]` assigns to `key`, in order (an empty one resets a list).
fn service<'a>(entries: &'a [(String, String, String)], key: &str) -> Vec<&'a str> {
    entries
        .iter()
        .filter(|(s, k, _)| s == "Service" && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

fn one<'a>(entries: &'a [(String, String, String)], key: &str) -> &'a str {
    match service(entries, key).as_slice() {
        [v] => v,
        other => panic!("[Service] {key}= must be set once, found {other:?}"),
    }
}

/// A systemd time span in seconds (`30s`, `1min`, `90`): the forms this unit may use.
fn seconds(span: &str) -> u64 {
    let (n, unit) = span.split_at(
        span.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(span.len()),
    );
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("time span {span:?}"));
    match unit.trim() {
        "" | "s" | "sec" => n,
        "min" | "m" => n * 60,
        other => panic!("time span unit {other:?} in {span:?}"),
    }
}

#[test]
fn the_unit_keeps_its_hardening() {
    let entries = unit_entries(&read(UNIT));
    let exact = [
        ("Type", "simple"), // no sd_notify in the daemon
        ("User", "credbroker"),
        ("Group", "credbroker"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectHome", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0077"),
        ("Restart", "on-failure"),
        ("ExecStart", EXEC_START),
    ];
    for (key, want) in exact {
        assert_eq!(one(&entries, key), want, "[Service] {key}=");
    }
    assert!(
        service(&entries, "DynamicUser").iter().all(|v| *v == "no"),
        "no DynamicUser: the data directory persists and keeps one owner"
    );
    // The data directory is the only writable path.
    let writable: Vec<&str> = service(&entries, "ReadWritePaths")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    assert_eq!(writable, ["/var/lib/credbroker"]);
    // No capability, unless a commented-out line is enabled for a port below 1024.
    assert_eq!(service(&entries, "CapabilityBoundingSet"), [""]);
    assert!(service(&entries, "AmbientCapabilities")
        .iter()
        .all(|v| v.is_empty()));
    let families: Vec<&str> = one(&entries, "RestrictAddressFamilies")
        .split_whitespace()
        .collect();
    assert_eq!(families, ["AF_INET", "AF_INET6", "AF_UNIX"]);
    let filters = service(&entries, "SystemCallFilter");
    assert!(filters.contains(&"@system-service"), "{filters:?}");
    let denied: Vec<&str> = filters
        .iter()
        .filter_map(|f| f.strip_prefix('~'))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(
        denied.contains(&"@privileged") && denied.contains(&"@resources"),
        "{filters:?}"
    );
    // SIGHUP reloads; `systemctl reload` must send exactly that to the main process.
    let reload = one(&entries, "ExecReload");
    assert!(
        reload.contains("kill") && reload.contains("-HUP") && reload.contains("$MAINPID"),
        "{reload}"
    );
    // Room for every connection the default limits admit, on both listeners.
    let limits = credbroker::config::Limits::default();
    let nofile: u64 = one(&entries, "LimitNOFILE").parse().unwrap();
    let needed = limits.max_connections + limits.max_handshakes + 64 + 64;
    assert!(
        nofile >= u64::try_from(needed).unwrap() + 256,
        "LimitNOFILE={nofile} leaves too little above the {needed} sockets the default limits admit"
    );
    // Longer than the drain (public 5 s, then mTLS 10 s) plus the final checkpoint.
    let stop = seconds(one(&entries, "TimeoutStopSec"));
    assert!(stop > 15, "TimeoutStopSec={stop}s");
    // The command line the unit runs is one the binary accepts.
    let argv: Vec<&str> = EXEC_START.split_whitespace().skip(1).collect();
    credbroker::cli::check_args(&argv).unwrap();
}

/// The Containerfile's instructions, continuation lines joined, comments left out.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        out.push(std::mem::take(&mut pending));
    }
    out
}

fn keyword(instruction: &str) -> String {
    instruction
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
}

#[test]
fn the_containerfile_runs_unprivileged_with_a_data_volume_and_a_health_check() {
    let all = instructions(&read(CONTAINERFILE));
    for i in &all {
        let lower = i.to_ascii_lowercase();
        assert!(
            !(keyword(i) == "ADD" && lower.contains("http")),
            "no remote ADD (unpinned download): {i}"
        );
    }
    assert!(
        all.iter()
            .any(|i| i.contains("cargo build --release -p credbroker --locked")),
        "the builder builds the locked release binary"
    );
    // The runtime stage: everything after the last FROM.
    let last_from = all
        .iter()
        .rposition(|i| keyword(i) == "FROM")
        .expect("a FROM");
    assert!(
        all[last_from].contains("debian:bookworm-slim"),
        "{}",
        all[last_from]
    );
    let runtime = &all[last_from..];
    let users: Vec<&String> = runtime.iter().filter(|i| keyword(i) == "USER").collect();
    let user = users.last().expect("the runtime stage sets USER");
    let uid = user
        .split_whitespace()
        .nth(1)
        .and_then(|u| u.split(':').next())
        .unwrap_or("");
    assert!(
        uid.parse::<u32>().is_ok_and(|n| n != 0),
        "USER must be a fixed non-root uid, found `{user}`"
    );
    assert!(
        runtime
            .iter()
            .any(|i| keyword(i) == "VOLUME" && i.contains("\"/var/lib/credbroker\"")),
        "VOLUME for the data directory"
    );
    let health = runtime
        .iter()
        .find(|i| keyword(i) == "HEALTHCHECK")
        .expect("a HEALTHCHECK");
    let cmd = health
        .split_once(" CMD ")
        .map(|(_, c)| c.trim())
        .expect("HEALTHCHECK … CMD [...]");
    let argv: Vec<String> = serde_json::from_str(cmd).expect("exec-form CMD (JSON array)");
    assert_eq!(argv[..2], ["credbroker", "health"], "{health}");
    credbroker::cli::check_args(&argv[1..]).unwrap();
    // ca-certificates only in the runtime stage.
    for i in runtime.iter().filter(|i| i.contains("apt-get install")) {
        let packages: Vec<&str> = i
            .split("apt-get install")
            .nth(1)
            .unwrap_or("")
            .split("&&")
            .next()
            .unwrap_or("")
            .split_whitespace()
            .filter(|w| !w.starts_with('-'))
            .collect();
        assert_eq!(packages, ["ca-certificates"], "{i}");
    }
}

/// One HTTP/1.1 request on the plain-HTTP health listener (`headers` each end in CRLF);
/// the status code and the raw answer (the listener closes after one answer).
fn raw(addr: &str, request_line: &str, headers: &str, body: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        tcp,
        "{request_line} HTTP/1.1\r\nhost: {addr}\r\n{headers}\r\n{body}"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

fn health_section(addr: &str) -> String {
    format!("[health]\nlisten = \"{addr}\"\n")
}

#[test]
fn credbroker_health_checks_the_daemon_without_a_certificate() {
    let (tmp, pki) = setup();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            extra_toml: health_section(&addr),
            ..DaemonOptions::default()
        },
    );
    let (code, out, err) = run_cli(&["health", "--addr", &addr]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.starts_with("ready"), "{out}");
    assert_eq!(out.lines().count(), 1, "one line: {out}");
    // The address from the config file, as the container's HEALTHCHECK finds it.
    let config = daemon.config.display().to_string();
    let (code, out, err) = run_cli(&["health", "--config", &config]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");

    // The listener serves /healthz and /readyz and nothing else, and takes no body.
    let (s, body) = raw(&addr, "GET /healthz", "", "");
    assert_eq!(s, 200, "{body}");
    assert!(body.contains(r#"{"status":"ok"}"#), "{body}");
    let (s, body) = raw(&addr, "GET /readyz", "", "");
    assert_eq!(s, 200, "{body}");
    assert!(body.contains(r#"{"status":"ready"}"#), "{body}");
    for path in ["/metrics", "/v1/openapi.json", "/v1/admin/tenants", "/"] {
        let (s, body) = raw(&addr, &format!("GET {path}"), "", "");
        assert_eq!(s, 404, "{path}: {body}");
    }
    let (s, body) = raw(
        &addr,
        "POST /v1/resolve",
        "content-type: application/json\r\ncontent-length: 2\r\n",
        "{}",
    );
    assert!(s == 400 || s == 404, "{body}");
    let (s, body) = raw(&addr, "POST /readyz", "content-length: 0\r\n", "");
    assert_eq!(s, 405, "{body}");
    let (s, body) = raw(&addr, "GET /readyz", "content-length: 5\r\n", "hello");
    assert_eq!(s, 400, "a body is refused: {body}");
    // The mTLS listener still wants a certificate: the health listener is the only way in
    // without one.
    assert!(daemon.url.starts_with("https://"));

    // No daemon: exit 1 (never 2, which container engines reserve), one line saying why.
    daemon.stop();
    let (code, out, err) = run_cli(&["health", "--addr", &addr]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("cannot connect"), "{err}");
    // A config without [health]: exit 1, naming the fix.
    let bare = tmp.path().join("bare.toml");
    write_config(&bare, &tmp.path().join("data"), &pki, None, "");
    let (code, _, err) = run_cli(&["health", "--config", &bare.display().to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no [health] section"), "{err}");
    // Nor bad arguments: an address that is no socket address is 1 too, not clap's 2.
    let (code, _, err) = run_cli(&["health", "--addr", "localhost:9090"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--addr"), "{err}");
    // Other commands' bad arguments still exit 2; help still 0.
    assert_eq!(run_cli(&["inventory", "--no-such-flag"]).0, 2);
    assert_eq!(run_cli(&["health", "--help"]).0, 0);
}

#[test]
fn the_daemon_refuses_a_health_listener_off_loopback() {
    let (tmp, pki) = setup();
    for (addr, expected) in [
        (
            "0.0.0.0:9090",
            "[health] listen 0.0.0.0:9090 must be a loopback address",
        ),
        (
            "[::]:9090",
            "[health] listen [::]:9090 must be a loopback address",
        ),
        ("127.0.0.1:0", "must name a fixed port"),
    ] {
        let config = tmp.path().join("refused.toml");
        write_config(
            &config,
            &tmp.path().join("data"),
            &pki,
            None,
            &health_section(addr),
        );
        let (code, err) = serve_refused(&config, &[], &[]);
        assert_eq!(code, 2, "{addr}: {err}");
        assert!(err.contains(expected), "{addr}: {err}");
    }
}
