//! PostgreSQL for the tests: a fresh database per test, on the server
//! `CREDBROKER_TEST_DATABASE_URL` names (tests/run provisions one and sets it), or else on a
//! throwaway cluster this process starts itself.
//!
//! A throwaway cluster is `initdb` into a temporary directory and `postgres` on a free
//! loopback port (Unix socket in the same directory), run as `nobody` when the tests run as
//! root (PostgreSQL refuses root), with `fsync=off` (a killed server loses nothing the OS
//! holds; the tests never crash the OS). It is stopped and removed when the value is dropped.
//! The binaries come from `$CREDBROKER_TEST_PG_BIN`, the newest `/usr/lib/postgresql/*/bin`
//! (Debian's `postgresql` package), or `PATH`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The variable naming an existing server to use instead of a throwaway cluster (a URL of
/// a database on it whose user may `CREATE DATABASE`).
pub const DATABASE_URL_VAR: &str = "CREDBROKER_TEST_DATABASE_URL";

/// A PostgreSQL server the tests may create databases on.
pub struct TestPostgres {
    /// URL of the server's `postgres` database (or the one the variable gave).
    admin_url: String,
    cluster: Option<Cluster>,
}

struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
    /// fsync on (the bench: a database as durable as sled's store).
    durable: bool,
}

/// The directory holding `initdb`, `postgres` and `pg_ctl`.
pub fn pg_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CREDBROKER_TEST_PG_BIN") {
        return Some(PathBuf::from(p));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    crate::on_path("initdb", "--version").map(|_| PathBuf::new())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `program` of `bin`, run as `nobody` when this process is root.
fn pg_command(bin: &Path, program: &str) -> Command {
    let exe = if bin.as_os_str().is_empty() {
        PathBuf::from(program)
    } else {
        bin.join(program)
    };
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

impl Cluster {
    fn create(durable: bool) -> Cluster {
        let bin = pg_bin().unwrap_or_else(|| {
            panic!("PostgreSQL is not installed: install Debian's postgresql package (bash tests/run does), set CREDBROKER_TEST_PG_BIN to its bin directory, or set {DATABASE_URL_VAR}")
        });
        let dir = tempfile::Builder::new()
            .prefix("credbroker-pg")
            .tempdir()
            .expect("temporary directory");
        if is_root() {
            std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534))
                .expect("hand the cluster directory to nobody");
        }
        let out = pg_command(&bin, "initdb")
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "-N",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cluster = Cluster {
            dir,
            bin,
            port: crate::free_port(),
            child: None,
            durable,
        };
        cluster.start();
        cluster
    }

    fn start(&mut self) {
        let log =
            std::fs::File::create(self.dir.path().join("server.log")).expect("server log file");
        if is_root() {
            let _ = std::os::unix::fs::chown(
                self.dir.path().join("server.log"),
                Some(65534),
                Some(65534),
            );
        }
        let child = pg_command(&self.bin, "postgres")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(if self.durable {
                ["-c", "fsync=on", "-c", "full_page_writes=on"]
            } else {
                ["-c", "fsync=off", "-c", "full_page_writes=off"]
            })
            .args(["-c", "max_connections=300"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "postgres did not listen within 60 s: {}",
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fast shutdown (SIGINT): connections are cut, the server exits cleanly.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGINT);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

impl TestPostgres {
    /// The server of `CREDBROKER_TEST_DATABASE_URL`, or a throwaway cluster.
    pub fn start() -> TestPostgres {
        match std::env::var(DATABASE_URL_VAR) {
            Ok(url) if !url.is_empty() => TestPostgres {
                admin_url: url,
                cluster: None,
            },
            _ => TestPostgres::own(),
        }
    }

    /// A throwaway cluster of this process's own, even when the variable is set (tests that
    /// stop and restart the server).
    pub fn own() -> TestPostgres {
        Self::own_with(false)
    }

    /// A throwaway cluster with fsync on, as durable as sled's store (the bench).
    pub fn own_durable() -> TestPostgres {
        Self::own_with(true)
    }

    fn own_with(durable: bool) -> TestPostgres {
        let cluster = Cluster::create(durable);
        TestPostgres {
            admin_url: format!("postgresql://postgres@127.0.0.1:{}/postgres", cluster.port),
            cluster: Some(cluster),
        }
    }

    /// Creates a new, empty database and returns its URL.
    pub async fn database(&self) -> String {
        let name = format!(
            "cb_{}",
            hex_id(std::process::id(), Instant::now().elapsed().as_nanos())
        );
        // A cluster that just started (or restarted) may still refuse with 57P03 "the
        // database system is starting up": wait for it, up to 30 s.
        let mut tries = 0;
        let (client, conn) = loop {
            match tokio_postgres::connect(&self.admin_url, tokio_postgres::NoTls).await {
                Ok(pair) => break pair,
                Err(e)
                    if tries < 300
                        && e.code()
                            == Some(&tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW) =>
                {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("connect to the test PostgreSQL: {e:?}"),
            }
        };
        let driver = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a test database");
        drop(client);
        let _ = driver.await;
        with_database(&self.admin_url, &name)
    }

    /// The server's process id (the postmaster; its backends are its children), when this
    /// process started it.
    pub fn pid(&self) -> Option<u32> {
        self.cluster
            .as_ref()
            .and_then(|c| c.child.as_ref())
            .map(Child::id)
    }

    /// Stops the throwaway cluster (fast shutdown); panics on a server this process did not
    /// start.
    pub fn stop(&mut self) {
        self.cluster
            .as_mut()
            .expect("only an own cluster can be stopped")
            .stop();
    }

    /// Starts the stopped throwaway cluster again on the same port.
    pub fn restart(&mut self) {
        self.cluster
            .as_mut()
            .expect("only an own cluster can be restarted")
            .start();
    }
}

/// A plain session on the database at `url` (the tests' view of it, or another client's).
pub async fn session(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(conn);
    client
}

/// A name no other test of this or another process picks.
fn hex_id(pid: u32, salt: u128) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{pid:x}_{n:x}_{:x}", (nanos ^ salt) & 0xffff_ffff)
}

/// `url` with its database replaced by `name` (query string kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|j| start + j))
        .unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_database_is_replaced() {
        assert_eq!(
            super::with_database("postgresql://u@h:1/postgres?sslmode=disable", "x"),
            "postgresql://u@h:1/x?sslmode=disable"
        );
        assert_eq!(
            super::with_database("postgresql://u@h:1", "x"),
            "postgresql://u@h:1/x"
        );
    }
}
