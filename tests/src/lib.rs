//! Test harness: a PKI generated at test time, the real daemon started as a process on
//! loopback with real TLS, and mTLS clients for workers and operators.
//!
//! Nothing here talks to anything but 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use credbroker::client::BrokerClient;
use credbroker::pki::CertAuthority;
use http::Method;
use serde_json::Value;

pub mod browser;
pub mod counting;
pub mod fake_atlassian_dc;
pub mod fake_entra;
pub mod fake_forge;
pub mod fake_gcp;
pub mod fake_github;
pub mod fake_servicenow;
pub mod fake_sts;
pub mod forge_env;
pub mod issuer_env;
pub mod loopback;
pub mod openbao;
pub mod postgres;
pub mod replicas;
pub mod sts_shim;
pub mod tcp_fault;

/// The trust domain of every test certificate.
pub const TD: &str = "test.credbroker";

/// Resident memory of process `pid`, KiB (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// The peak resident set of process `pid` so far (`VmHWM`), KiB (Linux).
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A loopback port nothing listens on, for as long as the returned socket lives: bound but
/// not listening, so a connection to it is refused and no other process (a parallel test's
/// server) can take it meanwhile, as it could a port [`free_port`] only found free.
pub fn closed_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

/// A loopback port that was free a moment ago (for servers that must be told their port,
/// such as a daemon's public listener, whose base URL is in its config).
///
/// It is chosen below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`): a port
/// the kernel handed out for `bind(…:0)` and took back could be handed out again before the
/// server binds it. A daemon's own mTLS listener (`127.0.0.1:0`) was given its public port
/// that way once ("cannot listen on …: Address already in use").
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 10_000;
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(FIRST);
    if span >= 1_000 {
        // Spread over processes (nextest runs each test in its own) and over calls.
        let seed = std::process::id().wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
        for _ in 0..1_000 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = FIRST + seed.wrapping_add(n.wrapping_mul(7_919)) % span;
            let Ok(port) = u16::try_from(port) else {
                continue;
            };
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// `program` when it is on PATH and `program <version_arg>` succeeds.
pub fn on_path(program: &str, version_arg: &str) -> Option<PathBuf> {
    Command::new(program)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()
        .filter(|s| s.success())
        .map(|_| PathBuf::from(program))
}

/// The daemon binary [`daemon_bin`] names instead, when set (see [`use_daemon_bin`]).
static DAEMON_BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes [`daemon_bin`] name `path` for the rest of this process: the bench runs the daemon
/// from its own executable, so it can never start a missing or stale `credbroker-it`.
pub fn use_daemon_bin(path: PathBuf) {
    let _ = DAEMON_BIN.set(path);
}

/// Path of the daemon binary under test: the one [`use_daemon_bin`] set, else
/// `target/<profile>/credbroker-it`, beside the `deps/` directory holding the running test
/// executable (Cargo builds the package's binaries before its integration tests).
pub fn daemon_bin() -> PathBuf {
    if let Some(path) = DAEMON_BIN.get() {
        return path.clone();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let here = exe.parent().expect("executable directory");
    here.parent()
        .expect("test executable lives in target/<profile>/deps")
        .join("credbroker-it")
}

/// Installs the process-wide rustls provider once (clients build explicit configs anyway).
pub fn init_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Files of a test PKI, written under one directory.
pub struct TestPki {
    /// Directory.
    pub dir: PathBuf,
    /// The trusted client/server CA.
    pub ca: CertAuthority,
    next_serial: std::sync::atomic::AtomicU64,
}

/// Writes a private key as a deployment keeps it: readable by its owner only (`serve`
/// refuses a TLS key open to others). An existing file keeps its mode.
pub fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

impl TestPki {
    /// A CA plus a localhost server certificate, written to `dir`.
    pub fn new(dir: &Path) -> TestPki {
        std::fs::create_dir_all(dir).unwrap();
        let ca = CertAuthority::generate("test CA").unwrap();
        std::fs::write(dir.join("ca.crt"), &ca.cert_pem).unwrap();
        let server = ca.issue_server(&[], 1).unwrap();
        std::fs::write(dir.join("server.crt"), &server.cert_pem).unwrap();
        write_private(&dir.join("server.key"), server.key_pem.as_bytes());
        TestPki {
            dir: dir.to_owned(),
            ca,
            next_serial: std::sync::atomic::AtomicU64::new(100),
        }
    }

    fn serial(&self) -> u64 {
        self.next_serial
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }

    /// Writes a client certificate for `spiffe_id` as `<name>.crt/.key`; returns its serial.
    pub fn client(&self, name: &str, spiffe_id: &str) -> u64 {
        let serial = self.serial();
        let c = self.ca.issue_client_now(spiffe_id, serial).unwrap();
        self.write(name, &c.cert_pem, &c.key_pem);
        serial
    }

    /// A worker certificate `spiffe://TD/worker/<name>`.
    pub fn worker(&self, name: &str) -> u64 {
        self.client(name, &format!("spiffe://{TD}/worker/{name}"))
    }

    /// An operator certificate `spiffe://TD/operator/<name>`.
    pub fn operator(&self, name: &str) -> u64 {
        self.client(name, &format!("spiffe://{TD}/operator/{name}"))
    }

    /// A metrics scraper certificate `spiffe://TD/metrics/<name>`.
    pub fn metrics(&self, name: &str) -> u64 {
        self.client(name, &format!("spiffe://{TD}/metrics/{name}"))
    }

    /// A worker certificate valid until `not_after` (from an hour ago).
    pub fn worker_until(&self, name: &str, not_after: time::OffsetDateTime) {
        let c = self
            .ca
            .issue_client(
                &format!("spiffe://{TD}/worker/{name}"),
                time::OffsetDateTime::now_utc() - time::Duration::hours(1),
                not_after,
                self.serial(),
            )
            .unwrap();
        self.write(name, &c.cert_pem, &c.key_pem);
    }

    /// A worker certificate that expired yesterday.
    pub fn expired_worker(&self, name: &str) {
        let now = time::OffsetDateTime::now_utc();
        let c = self
            .ca
            .issue_client(
                &format!("spiffe://{TD}/worker/{name}"),
                now - time::Duration::days(30),
                now - time::Duration::days(1),
                self.serial(),
            )
            .unwrap();
        self.write(name, &c.cert_pem, &c.key_pem);
    }

    /// A worker certificate from a CA the broker does not trust.
    pub fn foreign_worker(&self, name: &str) {
        let other = CertAuthority::generate("untrusted CA").unwrap();
        let c = other
            .issue_client_now(&format!("spiffe://{TD}/worker/{name}"), 7)
            .unwrap();
        self.write(name, &c.cert_pem, &c.key_pem);
    }

    /// Writes `crl.pem` revoking `serials`.
    pub fn write_crl(&self, serials: &[u64]) -> PathBuf {
        let path = self.dir.join("crl.pem");
        std::fs::write(&path, self.ca.crl(serials).unwrap()).unwrap();
        path
    }

    /// Writes `crl.pem` revoking `serials`, due for its next update at `next_update`.
    pub fn write_crl_until(&self, serials: &[u64], next_update: time::OffsetDateTime) -> PathBuf {
        let path = self.dir.join("crl.pem");
        std::fs::write(&path, self.ca.crl_until(serials, next_update).unwrap()).unwrap();
        path
    }

    fn write(&self, name: &str, cert: &str, key: &str) {
        std::fs::write(self.dir.join(format!("{name}.crt")), cert).unwrap();
        write_private(&self.dir.join(format!("{name}.key")), key.as_bytes());
    }

    /// A client presenting `<name>.crt` to `server`.
    pub fn client_for(&self, name: &str, server: &str) -> BrokerClient {
        BrokerClient::new(
            server,
            &self.dir.join("ca.crt"),
            &self.dir.join(format!("{name}.crt")),
            &self.dir.join(format!("{name}.key")),
        )
        .unwrap()
    }
}

/// The arguments of `credbroker audit <what> --config <config> <flag> <path>`: an audit
/// command (`export --output`, `report --json`) writing to a file.
pub fn audit_to_file<'a>(
    what: &'a str,
    config: &'a str,
    flag: &'a str,
    path: &'a Path,
) -> [&'a str; 6] {
    [
        "audit",
        what,
        "--config",
        config,
        flag,
        path.to_str().unwrap(),
    ]
}

/// An audit public key that signed nothing here: `<dir>/other/k.pub` (its private key beside
/// it), for a verifier given the wrong key.
pub fn another_audit_key(dir: &Path) -> PathBuf {
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    credbroker::keys::AuditSigner::generate(&other.join("k"), &other.join("k.pub")).unwrap();
    other.join("k.pub")
}

/// Where test configs keep the KEK keyring of `data_dir`: beside it, as `serve` requires.
pub fn kek_file_for(data_dir: &Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("data");
    data_dir
        .parent()
        .unwrap_or(data_dir)
        .join(format!("{name}-kek.json"))
}

/// Writes a daemon config to `path`, serialized from the broker's own `Config` type: the
/// test defaults (data directory, KEK beside it, loopback listener, the test PKI) with
/// `extra_toml` merged over them table by table. The merged document is parsed back into
/// `Config` first, so a test with a misspelt key fails here, naming it.
pub fn write_config(
    path: &Path,
    data_dir: &Path,
    pki: &TestPki,
    crl: Option<PathBuf>,
    extra_toml: &str,
) -> credbroker::config::Config {
    use credbroker::config::{Config, TlsSettings};
    let base = Config::with_defaults(
        data_dir.to_owned(),
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        TD,
        TlsSettings {
            cert: pki.dir.join("server.crt"),
            key: pki.dir.join("server.key"),
            client_ca: pki.dir.join("ca.crt"),
            crl,
            crl_check_interval_s: credbroker::config::DEFAULT_CRL_CHECK_S,
            stale_crl: credbroker::config::StaleCrl::Refuse,
        },
    );
    let mut base = base;
    // `serve` refuses a KEK keyring inside the data directory: keep it beside it.
    base.keys.kek_file = Some(kek_file_for(data_dir));
    let mut table = toml::Table::try_from(&base).unwrap();
    let extra: toml::Table = toml::from_str(extra_toml).expect("extra TOML parses");
    merge_toml(&mut table, extra);
    // A test that takes the keyring from the environment has no file.
    if let Some(toml::Value::Table(keys)) = table.get_mut("keys") {
        if keys.contains_key("kek_env") {
            keys.remove("kek_file");
        }
    }
    let config: Config = toml::Value::Table(table)
        .try_into()
        .unwrap_or_else(|e| panic!("test config is not a valid credbroker config: {e}"));
    std::fs::write(path, toml::to_string(&config).unwrap()).unwrap();
    config
}

/// An active tenant record `id` (store tests build records directly).
pub fn tenant_record(id: &str) -> credbroker::model::Tenant {
    credbroker::model::Tenant {
        id: credbroker::ids::TenantId::parse(id).unwrap(),
        name: String::new(),
        status: credbroker::model::Status::Active,
        revision: 0,
        created_at: "2026-01-01T00:00:00Z".into(),
    }
}

/// Writes into the stopped daemon's store (config `config`) a copy of binding `from` as
/// binding `to` of `tenant`, holding no identifier: what a store made before identifiers
/// were exclusive could hold.
pub async fn copy_binding(config: &Path, from: &str, to: &str, tenant: &str) {
    use credbroker::store::{Batch, Op, Table};
    let config = credbroker::config::Config::load(config).unwrap();
    let store = credbroker::store::open(&config.store, &config.data_dir)
        .await
        .unwrap();
    let mut other: serde_json::Value =
        serde_json::from_slice(&store.get(Table::Bindings, from).await.unwrap().unwrap()).unwrap();
    other["id"] = serde_json::json!(to);
    other["tenant"] = serde_json::json!(tenant);
    let mut b = Batch::new();
    b.push(Op::Put(
        Table::Bindings,
        to.into(),
        serde_json::to_vec(&other).unwrap(),
    ));
    store.commit(b).await.unwrap();
}

/// Copies the directory `from` to `to` (files and subdirectories, permissions kept).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::metadata(from).unwrap().permissions()).unwrap();
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

/// Merges `extra` into `base`: tables recursively, any other value replaced.
fn merge_toml(base: &mut toml::Table, extra: toml::Table) {
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge_toml(b, e),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Options for a daemon.
#[derive(Default, Clone)]
pub struct DaemonOptions {
    /// CRL file to configure.
    pub crl: Option<PathBuf>,
    /// Extra TOML appended to the config.
    pub extra_toml: String,
    /// Extra environment variables for the daemon process.
    pub env: Vec<(String, String)>,
}

/// A daemon process under test.
pub struct Daemon {
    /// Test root directory.
    pub root: PathBuf,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Config file.
    pub config: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// Captured stderr (logs).
    pub stderr_path: PathBuf,
    /// `https://127.0.0.1:PORT` of the public callback listener, when configured.
    pub public_url: Option<String>,
    env: Vec<(String, String)>,
    serve_args: Vec<String>,
    child: Option<Child>,
}

impl Daemon {
    /// Writes a config under `root` and starts the daemon; waits for `ready`.
    pub fn start(root: &Path, pki: &TestPki, options: &DaemonOptions) -> Daemon {
        Self::start_with_keys(root, pki, options, None)
    }

    /// Another replica of `first` (a store several brokers share, in `options`): its own
    /// root, data directory and port, `first`'s keys (KEK keyring, audit and fingerprint keys)
    /// copied rather than created, as an operator provisions replicas.
    pub fn start_sharing(
        root: &Path,
        pki: &TestPki,
        options: &DaemonOptions,
        first: &Daemon,
    ) -> Daemon {
        Self::start_with_keys(root, pki, options, Some(first))
    }

    /// Writes the config; creates the keys (`init`) or copies `keys_of`'s; starts.
    fn start_with_keys(
        root: &Path,
        pki: &TestPki,
        options: &DaemonOptions,
        keys_of: Option<&Daemon>,
    ) -> Daemon {
        let data_dir = root.join("data");
        let config = root.join("credbroker.toml");
        write_config(
            &config,
            &data_dir,
            pki,
            options.crl.clone(),
            &options.extra_toml,
        );
        match keys_of {
            Some(first) => {
                copy_dir(&first.data_dir.join("keys"), &data_dir.join("keys"));
                std::fs::copy(kek_file_for(&first.data_dir), kek_file_for(&data_dir)).unwrap();
            }
            None => {
                let status = Command::new(daemon_bin())
                    .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .args(["init", "--config"])
                    .arg(&config)
                    .stdout(Stdio::null())
                    .status()
                    .unwrap();
                assert!(status.success(), "credbroker init failed");
            }
        }
        let mut d = Daemon {
            root: root.to_owned(),
            data_dir,
            config,
            url: String::new(),
            stderr_path: root.join("daemon.stderr"),
            public_url: None,
            env: options.env.clone(),
            serve_args: Vec::new(),
            child: None,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .unwrap();
        let mut child = Command::new(daemon_bin())
            .args(["serve", "--config"])
            .arg(&self.config)
            .args(&self.serve_args)
            .env("RUST_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut addr = None;
            let mut public = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("listening ") {
                    addr = Some(a.to_owned());
                }
                if let Some(a) = line.strip_prefix("public ") {
                    public = Some(a.to_owned());
                }
                if line == "ready" {
                    let _ = tx.send(addr.clone().map(|a| (a, public.clone())));
                }
            }
        });
        let Some(addr) = rx.recv_timeout(Duration::from_secs(30)).ok().flatten() else {
            // Not left running behind the failed test (it is not `self.child` yet, so no
            // `Drop` would stop it).
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "daemon did not become ready; stderr:\n{}",
                std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
            )
        };
        self.url = format!("https://{}", addr.0);
        self.public_url = addr.1.map(|p| format!("https://{p}"));
        self.child = Some(child);
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The daemon's resident memory, KiB (Linux).
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid()?)
    }

    /// Restarts on the same data directory (new port).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Restarts with extra `serve` arguments (kept for later restarts).
    pub fn restart_with(&mut self, serve_args: &[&str]) {
        self.stop();
        self.serve_args = serve_args.iter().map(|a| (*a).to_owned()).collect();
        self.spawn();
    }

    /// Runs `serve` on this daemon's config while it is stopped, expecting a refusal:
    /// returns the exit code and stderr (panics if it is still running after 30 s).
    pub fn serve_refused(&self, serve_args: &[&str]) -> (i32, String) {
        serve_refused(&self.config, serve_args, &self.env)
    }

    /// Sends a signal by name (`HUP`, `TERM`, `KILL`).
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill -{sig} failed");
        }
    }

    /// SIGKILL, no cleanup at all.
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if self.child.is_some() {
            self.signal("TERM");
        }
        if let Some(mut c) = self.child.take() {
            let status = c.wait().unwrap();
            assert!(status.success(), "daemon exited with {status}");
        }
    }

    /// Logs written so far.
    pub fn logs(&self) -> String {
        // The file is made before the daemon starts: an error is the test's, and must not
        // read as a log that mentions nothing.
        std::fs::read_to_string(&self.stderr_path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", self.stderr_path.display()))
    }

    /// Waits (up to 5 s) until the log holds `needle` at least `count` times.
    pub async fn wait_log(&self, needle: &str, count: usize) {
        for _ in 0..100 {
            if self.logs().matches(needle).count() >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "log never said {needle:?} {count} time(s):\n{}",
            self.logs()
        );
    }

    /// Runs `credbroker-it <args>`; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        run_cli(args)
    }

    /// Audit records (complete ones), from every segment.
    pub fn audit_records(&self) -> Vec<Value> {
        audit_log_text(&self.data_dir)
            .lines()
            .filter(|l| l.starts_with("{\"seq\":"))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The segment files of a data directory's audit log, in order (live and archived). An
/// audit directory that cannot be read fails the test; one that does not exist lists none.
pub fn audit_segments(data_dir: &Path) -> Vec<PathBuf> {
    let audit_dir = data_dir.join("audit");
    credbroker::audit::segments::list(&audit_dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", audit_dir.display()))
        .into_iter()
        .map(|s| s.path)
        .collect()
}

/// The written part of a segment file: up to its first NUL byte (the rest is space the
/// writer zero-filled ahead of itself). A segment that cannot be read fails the test.
pub fn segment_bytes(path: &Path) -> Vec<u8> {
    let mut bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    if let Some(end) = bytes.iter().position(|b| *b == 0) {
        bytes.truncate(end);
    }
    bytes
}

/// Everything the file log holds, every segment's written part in order (segment headers
/// and seals included). It fails when `data_dir` holds no segment: a wrong directory, or a
/// daemon whose log is elsewhere, must not make "the log never contains X" pass with
/// nothing to search. A segment moved to the archive between listing and reading is read
/// from the archive.
pub fn audit_log_text(data_dir: &Path) -> String {
    let segments = audit_segments(data_dir);
    assert!(
        !segments.is_empty(),
        "no audit segment under {}",
        data_dir.join("audit").display()
    );
    let mut out = Vec::new();
    for seg in segments {
        let archived = seg
            .parent()
            .zip(seg.file_name())
            .map(|(audit, name)| credbroker::audit::segments::archive_dir(audit).join(name));
        match (std::fs::metadata(&seg), archived) {
            (Err(e), Some(moved)) if e.kind() == std::io::ErrorKind::NotFound => {
                out.extend(segment_bytes(&moved))
            }
            _ => out.extend(segment_bytes(&seg)),
        }
    }
    String::from_utf8(out).unwrap()
}

/// A TLS connector presenting `<name>.crt` and offering `alpn`, for tests that speak raw
/// HTTP over their own connection (and so know its port, or control every byte).
pub fn client_tls(pki: &TestPki, name: &str, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut config = (*credbroker::tls::client_config(
        &pki.dir.join("ca.crt"),
        &pki.dir.join(format!("{name}.crt")),
        &pki.dir.join(format!("{name}.key")),
    )
    .unwrap())
    .clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A raw HTTP/1.1 connection to `url` (`https://HOST:PORT`) presenting `<name>.crt`, its
/// handshake done: for tests that hold a request half-sent or send only a head.
pub async fn raw_http1(
    pki: &TestPki,
    name: &str,
    url: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(url.trim_start_matches("https://"))
        .await
        .unwrap();
    client_tls(pki, name, b"http/1.1")
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

/// Runs `credbroker ARGS` as operator `op` runs an admin command: the connection flags
/// (`--server --ca --cert --key`) appended.
pub fn operator_cli(pki: &TestPki, url: &str, args: &[&str]) -> (i32, String, String) {
    let file = |name: &str| pki.dir.join(name).display().to_string();
    let (ca, cert, key) = (file("ca.crt"), file("op.crt"), file("op.key"));
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&["--server", url, "--ca", &ca, "--cert", &cert, "--key", &key]);
    run_cli(&all)
}

/// Runs `serve --config CONFIG ARGS` expecting it to refuse to start: returns the exit code
/// and stderr; panics if it is still running after 30 s.
pub fn serve_refused(
    config: &Path,
    serve_args: &[&str],
    env: &[(String, String)],
) -> (i32, String) {
    let err_path = config.with_extension(format!("refused-{}.stderr", free_port()));
    let mut child = Command::new(daemon_bin())
        .args(["serve", "--config"])
        .arg(config)
        .args(serve_args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "serve started instead of refusing; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&err_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", err_path.display()));
    (status.code().unwrap_or(-1), err)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

/// Waits for `child` to exit, at most `limit`: killed and the test failed with `what`
/// otherwise (a command that should refuse at once must not hang the suite).
pub fn exit_within(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the CLI; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    run_cli_env(args, &[])
}

/// Runs `credbroker-it <args>` with extra environment variables.
pub fn run_cli_env(args: &[&str], env: &[(String, String)]) -> (i32, String, String) {
    let out = Command::new(daemon_bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends a JSON request; returns (status, parsed body).
pub async fn call(
    client: &mut BrokerClient,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| serde_json::to_vec(&b).unwrap());
    let (status, bytes) = client.request(method, path, body).await.unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status.as_u16(), v)
}

/// A browser coming back to `GET /callbacks/{provider}/setup?{query}` with `cookie`:
/// (status, JSON answer). A return not answered with success is sent on (`303 See Other`)
/// to `/callbacks/{provider}/setup?refused={request id}#refused` with its refusal as the
/// body (a one-time code leaves the address bar): checked here, and reported as the status
/// its refusal stands for. (entra_sign_in::a_refused_return_clears_its_code_from_the_address_bar checks the
/// 303 itself.)
pub async fn setup_return(
    public: &mut BrokerClient,
    provider: &str,
    query: &str,
    cookie: Option<&str>,
) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = cookie.map(|c| vec![("cookie", c)]).unwrap_or_default();
    let (status, answer_headers, out) = public
        .exchange(
            Method::GET,
            &format!("/callbacks/{provider}/setup?{query}"),
            &headers,
            None,
        )
        .await
        .unwrap();
    let body = serde_json::from_slice(&out).unwrap_or(Value::Null);
    let location = answer_headers
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok());
    if status.as_u16() == 303 {
        let rid = body["error"]["request_id"].as_str().unwrap_or("");
        assert_eq!(
            location,
            Some(format!("/callbacks/{provider}/setup?refused={rid}#refused").as_str())
        );
        return (refusal_status(303, &body), body);
    }
    assert!(
        status.is_success() && location.is_none(),
        "a setup return answered {status} (Location {location:?}), not 303: {body}"
    );
    (status.as_u16(), body)
}

/// The status a refused setup return's answer stands for: a `303` (sent on to the page
/// without its code) carries its refusal as the body, whose error code names the status.
pub fn refusal_status(status: u16, body: &Value) -> u16 {
    if status != 303 {
        return status;
    }
    credbroker::api_error::ErrorCode::ALL
        .iter()
        .find(|c| c.as_str() == code(body))
        .unwrap_or_else(|| panic!("a 303 without a refusal: {body}"))
        .status()
        .as_u16()
}

/// `POST /v1/resolve` with a raw body.
pub async fn resolve_raw(client: &mut BrokerClient, body: Vec<u8>) -> (u16, Value) {
    let (status, bytes) = client
        .request(Method::POST, "/v1/resolve", Some(body))
        .await
        .unwrap();
    (
        status.as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// `POST /v1/resolve`.
pub async fn resolve(client: &mut BrokerClient, body: Value) -> (u16, Value) {
    resolve_raw(client, serde_json::to_vec(&body).unwrap()).await
}

/// The error code of an error body.
pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Sets up the usual records through the admin API: tenants `t1`,`t2`; pasted-secret
/// bindings `b1`,`b2` (secrets `{"token": "<tenant>-token"}`); instances `i1`,`i2`; worker
/// `w1` allowed for `t1` only.
/// Registers operator `name` through `op` (the first registration registers `op` too) and
/// issues its certificate; a client of the daemon at `server` with it.
pub async fn register_operator(
    op: &mut BrokerClient,
    pki: &TestPki,
    server: &str,
    name: &str,
) -> BrokerClient {
    let (s, v) = call(
        op,
        Method::POST,
        "/v1/admin/operators",
        Some(serde_json::json!({ "id": name })),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    pki.operator(name);
    pki.client_for(name, server)
}

/// `op` applies `change` (`disable`, `enable`) to operator `name`.
pub async fn set_operator(op: &mut BrokerClient, name: &str, change: &str) {
    let (s, v) = call(
        op,
        Method::POST,
        &format!("/v1/admin/operators/{name}/{change}"),
        Some(serde_json::json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

/// The install links and site expectations still out (`GET /v1/admin/onboarding-links`),
/// and the whole answer.
pub async fn onboarding_links(
    op: &mut BrokerClient,
) -> (Vec<serde_json::Value>, serde_json::Value) {
    let (s, v) = call(op, Method::GET, "/v1/admin/onboarding-links", None).await;
    assert_eq!(s, 200, "{v}");
    let links = v["onboarding_links"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    (links, v)
}

/// Revokes the onboarding link `id`: the status and the answer.
pub async fn revoke_onboarding_link(op: &mut BrokerClient, id: &str) -> (u16, serde_json::Value) {
    call(
        op,
        Method::DELETE,
        &format!("/v1/admin/onboarding-links/{id}"),
        None,
    )
    .await
}

/// [`seed_two_tenants`], and a second worker `w2` (its certificate made) allowed for t2.
pub async fn seed_two_tenants_and_w2(pki: &TestPki, op: &mut BrokerClient) {
    seed_two_tenants(op).await;
    pki.worker("w2");
    let (s, v) = call(
        op,
        Method::POST,
        "/v1/admin/workers",
        Some(serde_json::json!({"owner": "team-tests", "purpose": "integration test", "id": "w2", "tenants": ["t2"]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

pub async fn seed_two_tenants(op: &mut BrokerClient) {
    use serde_json::json;
    for t in ["t1", "t2"] {
        let (s, v) = call(
            op,
            Method::POST,
            "/v1/admin/tenants",
            Some(json!({"id": t})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let b = format!("b{}", &t[1..]);
        let (s, v) = call(
            op,
            Method::POST,
            "/v1/admin/bindings",
            Some(json!({"owner": "team-tests", "purpose": "integration test", "id": b, "tenant": t, "provider": "pasted_secret"})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let (s, v) = call(
            op,
            Method::PUT,
            &format!("/v1/admin/bindings/{b}/secret"),
            Some(json!({"fields": {"token": format!("{t}-token")}})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let i = format!("i{}", &t[1..]);
        let (s, v) = call(
            op,
            Method::POST,
            "/v1/admin/instances",
            Some(json!({"id": i, "tenant": t, "binding": b, "connector_kind": "jira"})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = call(
        op,
        Method::POST,
        "/v1/admin/workers",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "w1", "tenants": ["t1"]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

/// The test venv's Python (`bash tests/run` installs it and sets CREDBROKER_TEST_PYTHON).
pub fn test_python() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CREDBROKER_TEST_PYTHON").unwrap_or_else(|| {
            panic!("CREDBROKER_TEST_PYTHON is not set: run the suite with `bash tests/run`")
        }),
    )
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Every file under `dir` whose name ends in `.{ext}`, sorted. Build output (`target`),
/// installed packages (`node_modules`) and dot directories are skipped, and symbolic links
/// are never followed: a link to a parent directory would make the walk endless.
pub fn files_with_extension(dir: &Path, ext: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            // `DirEntry::file_type` describes the entry itself, not a link's target.
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "node_modules" {
                    walk(&entry.path(), suffix, out);
                }
            } else if kind.is_file() && name.ends_with(suffix) {
                out.push(entry.path());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &format!(".{ext}"), &mut out);
    out.sort();
    out
}

/// Calls `each(path, bytes)` for every regular file under `dir`: the walk the "never on disk
/// in clear" checks search. It fails when `dir` cannot be read or holds no file at all (a
/// wrong path must not make such a check pass with nothing to search), never follows a
/// symbolic link, and skips only a file removed between listing and reading (a store
/// compacting).
pub fn for_every_file(dir: &Path, mut each: impl FnMut(&Path, &[u8])) {
    fn walk(dir: &Path, each: &mut dyn FnMut(&Path, &[u8]), files: &mut usize) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                walk(&entry.path(), each, files);
            } else if kind.is_file() {
                match std::fs::read(entry.path()) {
                    Ok(b) => {
                        each(&entry.path(), &b);
                        *files += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => panic!("cannot read {}: {e}", entry.path().display()),
                }
            }
        }
    }
    let mut files = 0;
    walk(dir, &mut each, &mut files);
    assert!(files > 0, "no file under {}", dir.display());
}

/// The bytes of every regular file under `dir`, concatenated (see [`for_every_file`]).
pub fn bytes_of_every_file(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for_every_file(dir, |_, b| out.extend_from_slice(b));
    out
}

/// What `secret` looks like inside base64 text, at each of the three alignments it can start
/// at, in the standard and the URL-safe alphabets: the characters that depend only on the
/// secret's own bytes. The stores keep sealed payloads in base64, so a "seal" that regressed
/// to encoding the plaintext would be found by these, not by the plaintext itself.
pub fn base64_needles(secret: &[u8]) -> Vec<String> {
    use base64::Engine;
    let mut out = Vec::new();
    for engine in [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for lead in 0..3usize {
            let mut bytes = vec![0u8; lead];
            bytes.extend_from_slice(secret);
            let text = engine.encode(&bytes);
            // Skip the groups holding the lead bytes; drop the last group, which depends on
            // whatever follows the secret.
            let start = if lead == 0 { 0 } else { 4 };
            let whole = (bytes.len() / 3) * 4;
            if whole > start {
                out.push(text[start..whole].to_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Environment for a daemon whose AWS caller identity is a static test key: only the
/// environment credential provider can answer, so nothing ever reaches a metadata service
/// or a real endpoint.
pub fn aws_test_env(access_key: &str, secret: &str) -> Vec<(String, String)> {
    let mut env = aws_env_without_credentials();
    env.push(("AWS_ACCESS_KEY_ID".into(), access_key.into()));
    env.push(("AWS_SECRET_ACCESS_KEY".into(), secret.into()));
    env
}

/// The environment of a daemon with no AWS credential at all: no keys, no config files, no
/// instance metadata (the AWS web-identity proof; [`aws_test_env`] adds the vendor key).
pub fn aws_env_without_credentials() -> Vec<(String, String)> {
    [
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/credbroker-test"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/credbroker-test",
        ),
        ("AWS_REGION", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A client that trusts the test CA and presents no certificate (the public listener, or a
/// refused handshake on the mTLS listener).
pub fn public_client(pki: &TestPki, url: &str) -> BrokerClient {
    let mut roots = rustls::RootCertStore::empty();
    for c in credbroker::tls::load_certs(&pki.dir.join("ca.crt")).unwrap() {
        roots.add(c).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(credbroker::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    BrokerClient::with_config(url, Arc::new(config)).unwrap()
}

/// A tempdir plus a PKI with worker `w1`, operator `op`, metrics scraper `prom`.
pub fn setup() -> (tempfile::TempDir, Arc<TestPki>) {
    init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&tmp.path().join("pki"));
    pki.worker("w1");
    pki.operator("op");
    pki.metrics("prom");
    (tmp, Arc::new(pki))
}

/// `setup()`, a daemon started with `options`, seeded with `seed_two_tenants`, and the
/// operator's client. The directory lives as long as the caller keeps it.
pub async fn start_seeded(
    options: &DaemonOptions,
) -> (tempfile::TempDir, Arc<TestPki>, Daemon, BrokerClient) {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, options);
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    (tmp, pki, daemon, op)
}

/// `GET /metrics` with the metrics scraper's certificate (`prom`); the status and body.
/// The value of one exposition series, `name` including its labels exactly as exposed
/// (`credbroker_mints_total{provider="aws_assume_role"}`), or `None` when it is absent.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

pub async fn scrape(pki: &TestPki, url: &str) -> (http::StatusCode, Vec<u8>) {
    pki.client_for("prom", url)
        .request(http::Method::GET, "/metrics", None)
        .await
        .unwrap()
}

/// Promotes secret version `version` of `binding`: the answer.
pub async fn promote(
    op: &mut BrokerClient,
    binding: &str,
    version: impl std::fmt::Display,
) -> (u16, serde_json::Value) {
    call(
        op,
        Method::POST,
        &format!("/v1/admin/bindings/{binding}/secret/{version}/promote"),
        Some(serde_json::json!({})),
    )
    .await
}

/// Rotates `binding`'s secret to `fields` the staged way an operator does: the rotation
/// writes a pending version and probes it (which must pass), then it is promoted. Returns
/// the rotation's status and answer.
pub async fn rotate_and_promote(
    op: &mut BrokerClient,
    binding: &str,
    fields: serde_json::Value,
) -> (u16, serde_json::Value) {
    use serde_json::json;
    let (s, v) = call(
        op,
        Method::POST,
        &format!("/v1/admin/bindings/{binding}/secret/rotate"),
        Some(json!({ "fields": fields })),
    )
    .await;
    if s != 200 {
        return (s, v);
    }
    assert_eq!(v["state"], "pending", "{v}");
    assert_eq!(v["probe"]["result"], "passed", "{v}");
    let version = v["version"].as_u64().unwrap();
    let (ps, pv) = promote(op, binding, version).await;
    assert_eq!(ps, 200, "{pv}");
    (s, v)
}

/// A `[public]` section on a free loopback port with the test server certificate and a rate
/// generous enough for one test's many requests from one address; returns it and its port.
pub fn public_section(pki: &TestPki) -> (String, u16) {
    let port = free_port();
    let section = format!(
        "[public]\nlisten = \"127.0.0.1:{port}\"\nbase_url = \"https://127.0.0.1:{port}\"\ncert = {:?}\nkey = {:?}\nrequests_per_second_per_source = 100.0\nburst_per_source = 100.0\n\n",
        pki.dir.join("server.crt").display().to_string(),
        pki.dir.join("server.key").display().to_string(),
    );
    (section, port)
}

/// A `[providers.servicenow_oauth]` section for a fake instance at `authority`.
pub fn servicenow_section(authority: &str) -> String {
    format!(
        "[providers.servicenow_oauth]\nceiling_file = {:?}\nallowed_hosts = [\"{authority}\"]\ntimeout_ms = 3000\n",
        repo_root().join("policies/servicenow.json").display().to_string(),
    )
}

/// The number of the newest segment in the audit directory `audit` (the live one).
pub fn last_segment_number(audit: &Path) -> u64 {
    std::fs::read_dir(audit)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().ok()?;
            name.strip_prefix("segment-")?
                .strip_suffix(".log")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap()
}

/// Points the stopped daemon's audit log at /dev/full (every write fails with ENOSPC; reads
/// find an empty log), keeping the real one aside; [`free_audit_space`] makes that empty log
/// writable again.
pub fn point_audit_at_dev_full(data_dir: &Path) {
    let audit = data_dir.join("audit");
    std::fs::rename(&audit, data_dir.join("audit.saved")).unwrap();
    std::fs::create_dir(&audit).unwrap();
    std::os::unix::fs::symlink(
        "/dev/full",
        audit.join(credbroker::audit::segments::segment_name(1)),
    )
    .unwrap();
}

/// The CSRF value an intake page's form carries.
pub fn intake_csrf(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF value in the page: {html}"))
        .to_owned()
}

/// Restarts `daemon` with its audit log on a full disk ([`point_audit_at_dev_full`]) and
/// makes the log known to be failing, as a change it cannot take is refused: an operator's
/// client of the restarted daemon.
pub async fn restart_with_a_failing_audit_log(daemon: &mut Daemon, pki: &TestPki) -> BrokerClient {
    daemon.stop();
    point_audit_at_dev_full(&daemon.data_dir);
    daemon.restart();
    let mut op = pki.client_for("op", &daemon.url);
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/tenants",
        Some(serde_json::json!({"id": "t-refused"})),
    )
    .await;
    assert_eq!((s, code(&v)), (503, "audit_unavailable"), "{v}");
    op
}

/// Space returns for the log [`point_audit_at_dev_full`] made: the empty log the daemon
/// started on takes writes again. (Putting the real one back while the daemon runs would be
/// a log changed underneath its writer, which it refuses to take up.)
pub fn free_audit_space(data_dir: &Path) {
    let segment = data_dir
        .join("audit")
        .join(credbroker::audit::segments::segment_name(1));
    std::fs::remove_file(&segment).unwrap();
    std::fs::File::create(&segment).unwrap();
}

/// Every file under `dir` whose bytes contain `needle`, into `hits` (canary tests: nothing
/// secret in the clear at rest). The walk is [`for_every_file`]'s: a wrong or empty
/// directory fails rather than finding nothing.
pub fn grep_tree(dir: &Path, needle: &[u8], hits: &mut Vec<String>) {
    for_every_file(dir, |path, bytes| {
        if bytes.windows(needle.len()).any(|w| w == needle) {
            hits.push(path.display().to_string());
        }
    });
}

/// A `credbroker dev` process (killed when dropped).
pub struct Dev {
    /// Killed when the `Dev` is dropped.
    child: KillOnDrop,
    /// Its URL.
    pub url: String,
    /// What it printed before `ready`.
    pub banner: String,
}

/// A child process killed (and reaped) when dropped: a helper a test starts is not left
/// running when the test panics before stopping it.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `credbroker dev --data-dir DIR --listen 127.0.0.1:0` and waits for `ready`.
pub fn start_dev(dir: &std::path::Path) -> Dev {
    let mut child = Command::new(daemon_bin())
        .args([
            "dev",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Guarded from here on: a dev daemon that never gets ready is killed when the panic
    // below drops it.
    let mut dev = Dev {
        child: KillOnDrop(child),
        url: String::new(),
        banner: String::new(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut banner = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line == "ready" {
                let _ = tx.send(banner.clone());
            }
            banner.push_str(&line);
            banner.push('\n');
        }
    });
    dev.banner = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("dev mode printed `ready`");
    dev.url = dev
        .banner
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .expect("curl command with URL")
        .trim_end_matches("/v1/resolve")
        .to_owned();
    dev
}

impl Dev {
    /// A client presenting the dev directory `dir`'s worker certificate.
    pub fn worker_client(&self, dir: &Path) -> BrokerClient {
        let pki = dir.join("pki");
        BrokerClient::new(
            &self.url,
            &pki.join("ca.crt"),
            &pki.join("worker.crt"),
            &pki.join("worker.key"),
        )
        .unwrap()
    }

    /// Stops it (SIGKILL) and waits.
    pub fn stop(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    /// Stops it as Ctrl-C in its terminal does (SIGINT: a clean stop, its audit log closed
    /// with a signed checkpoint) and waits; panics unless it exits 0.
    pub fn interrupt(&mut self) {
        let ok = Command::new("kill")
            .arg("-INT")
            .arg(self.child.0.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -INT failed");
        let status = self.child.0.wait().unwrap();
        assert!(status.success(), "dev mode exited with {status}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed port refuses connections and nobody else can bind it while it is held.
    #[tokio::test]
    async fn a_closed_port_refuses_connections_and_cannot_be_taken() {
        let (_held, port) = closed_port();
        let err = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
        assert!(tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .is_err());
    }

    #[test]
    fn every_file_is_read_and_no_link_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/one"), "ONE").unwrap();
        std::fs::write(root.join("a/b/two"), "TWO").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "OUTSIDE").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(root, root.join("a/loop")).unwrap();
        let bytes = String::from_utf8(bytes_of_every_file(root)).unwrap();
        assert_eq!(bytes.len(), 6, "{bytes}");
        assert!(bytes.contains("ONE") && bytes.contains("TWO"), "{bytes}");
    }

    #[test]
    fn grep_tree_names_the_file_that_holds_the_needle_and_not_a_link_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("db")).unwrap();
        std::fs::write(root.join("db/clean"), "nothing here").unwrap();
        std::fs::write(root.join("db/leak"), "xxCANARYxx").unwrap();
        std::os::unix::fs::symlink(root.join("db/leak"), root.join("link")).unwrap();
        let mut hits = Vec::new();
        grep_tree(root, b"CANARY", &mut hits);
        assert_eq!(hits, [root.join("db/leak").display().to_string()]);
    }

    #[test]
    fn the_audit_log_text_is_every_segment_written_part_live_and_archived() {
        use credbroker::audit::segments::{archive_dir, segment_name};
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit");
        std::fs::create_dir_all(archive_dir(&audit)).unwrap();
        std::fs::write(archive_dir(&audit).join(segment_name(1)), b"one\n\0\0").unwrap();
        std::fs::write(audit.join(segment_name(2)), b"two\n\0\0\0").unwrap();
        assert_eq!(audit_log_text(dir.path()), "one\ntwo\n");
    }

    #[test]
    #[should_panic(expected = "no audit segment under")]
    fn a_directory_without_an_audit_log_is_an_error_not_a_clean_log() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("audit")).unwrap();
        audit_log_text(dir.path());
    }

    #[test]
    #[should_panic(expected = "no audit segment under")]
    fn a_wrong_data_directory_is_an_error_not_a_clean_log() {
        audit_log_text(Path::new("/nonexistent/credbroker-data"));
    }

    #[test]
    fn base64_needles_find_a_secret_encoded_at_any_offset() {
        use base64::Engine;
        let secret = b"CANARY-q7Zx9v2Lk4Pw";
        let needles = base64_needles(secret);
        for lead in 0..6 {
            for engine in [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::URL_SAFE,
            ] {
                let mut bytes = b"{\"x\":1,".repeat(lead);
                bytes.extend_from_slice(secret);
                bytes.extend_from_slice(b"\"}");
                let text = engine.encode(&bytes);
                assert!(
                    needles.iter().any(|n| text.contains(n.as_str())),
                    "lead {lead}: {text} holds none of {needles:?}"
                );
            }
        }
        let other = base64::engine::general_purpose::STANDARD.encode(b"CANARY-other-value-xx");
        assert!(!needles.iter().any(|n| other.contains(n.as_str())));
    }

    #[test]
    fn free_ports_are_below_the_ephemeral_range_and_free() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ports: std::collections::HashSet<u16> = (0..50).map(|_| free_port()).collect();
        assert!(ports.len() > 40, "{ports:?}");
        for p in ports {
            assert!((10_000..low).contains(&p), "{p} (ephemeral from {low})");
            std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }

    #[test]
    #[should_panic(expected = "no file under")]
    fn an_empty_directory_is_an_error_not_a_clean_result() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        bytes_of_every_file(dir.path());
    }

    #[test]
    #[should_panic(expected = "cannot list")]
    fn a_wrong_path_is_an_error_not_a_clean_result() {
        bytes_of_every_file(Path::new("/nonexistent/credbroker-data"));
    }
}
