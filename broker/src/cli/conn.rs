//! How commands reach the daemon's admin API: the address (`--server`, the dev directory's,
//! or the default), the operator certificate, the output format, and what a refusal or an
//! unreachable broker prints and exits with.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use http::Method;
use serde_json::{json, Value};

use crate::client::BrokerClient;
use crate::dev;

use super::output::Output;
use super::runtime;

/// How admin commands reach the daemon.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Broker URL [default: with --dev-dir, the address the dev broker listens on;
    /// otherwise https://127.0.0.1:8443].
    #[arg(long, env = "CREDBROKER_SERVER", global = true)]
    server: Option<String>,
    /// CA bundle that signed the broker's server certificate.
    #[arg(long, env = "CREDBROKER_CA", global = true)]
    ca: Option<PathBuf>,
    /// Operator client certificate (SPIFFE id spiffe://<trust-domain>/operator/<name>).
    #[arg(long, env = "CREDBROKER_CERT", global = true)]
    cert: Option<PathBuf>,
    /// Operator private key.
    #[arg(long, env = "CREDBROKER_KEY", global = true)]
    key: Option<PathBuf>,
    /// Dev data directory: take ca/cert/key from <DIR>/pki (operator.crt, operator.key).
    #[arg(long, env = "CREDBROKER_DEV_DIR", global = true)]
    dev_dir: Option<PathBuf>,
    /// Output format [default: table on a terminal, json otherwise].
    #[arg(long, value_enum, global = true)]
    output: Option<Output>,
}

/// Where admin commands go without `--server` and without a dev directory.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:8443";

impl Conn {
    /// The broker URL: `--server` (or `CREDBROKER_SERVER`); else, with `--dev-dir`, the
    /// address in the dev directory's `credbroker.toml` (a wildcard address is dialled on
    /// loopback); else [`DEFAULT_SERVER`].
    ///
    /// # Errors
    /// When the dev directory's config cannot be read.
    pub fn server(&self) -> Result<String, String> {
        if let Some(s) = &self.server {
            return Ok(s.clone());
        }
        match &self.dev_dir {
            Some(dir) => dev_server(dir),
            None => Ok(DEFAULT_SERVER.to_owned()),
        }
    }

    /// The output format asked for, or the default for where standard output goes.
    pub fn output(&self) -> Output {
        Output::or_default(self.output)
    }
}

/// The URL of the dev broker of `dir`: the one it recorded when it started listening
/// (`server-url`), else the `listen` of its `credbroker.toml`.
///
/// # Errors
/// When neither can be read.
pub fn dev_server(dir: &std::path::Path) -> Result<String, String> {
    if let Ok(text) = std::fs::read_to_string(dev::server_url_file(dir)) {
        let url = text.trim();
        if url.starts_with("https://") {
            return Ok(url.to_owned());
        }
    }
    let path = dir.join("credbroker.toml");
    let config = crate::config::Config::load(&path).map_err(|e| {
        format!(
            "--dev-dir {}: cannot read {} ({e}); is it a directory `credbroker dev` made? Give the broker's address with --server",
            dir.display(),
            path.display()
        )
    })?;
    Ok(dev::server_url(config.listen))
}

/// Exit code of a command that could not reach the broker.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Prints why the broker at `server` could not be reached, naming the address and how to
/// give another; returns [`EXIT_UNREACHABLE`].
pub fn unreachable(server: &str, e: &crate::client::ClientError) -> ExitCode {
    eprintln!(
        "error: cannot reach the broker at {server}: {e}\nhint: is it running there? Give its address with --server URL (or CREDBROKER_SERVER){}",
        if server == DEFAULT_SERVER {
            "; with a dev directory, --dev-dir DIR uses the address the dev broker listens on"
        } else {
            ""
        }
    );
    ExitCode::from(EXIT_UNREACHABLE)
}

pub fn admin_client(conn: &Conn) -> Result<BrokerClient, String> {
    let (ca, cert, key) = match &conn.dev_dir {
        Some(dir) => {
            let pki = dev::pki_dir(dir);
            (
                conn.ca.clone().unwrap_or_else(|| pki.join("ca.crt")),
                conn.cert
                    .clone()
                    .unwrap_or_else(|| pki.join("operator.crt")),
                conn.key.clone().unwrap_or_else(|| pki.join("operator.key")),
            )
        }
        None => (
            conn.ca.clone().ok_or("--ca is required (or --dev-dir)")?,
            conn.cert
                .clone()
                .ok_or("--cert is required (or --dev-dir)")?,
            conn.key.clone().ok_or("--key is required (or --dev-dir)")?,
        ),
    };
    BrokerClient::new(&conn.server()?, &ca, &cert, &key).map_err(|e| e.to_string())
}

pub fn call(
    conn: &Conn,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<ExitCode, String> {
    call_showing(conn, method, path, body, |v| v.clone())
}

/// As [`call`], printing `show` of a successful answer (e.g. only the JWKS of `issuer jwks`,
/// without the receipt, so the output can be pinned as it is).
pub fn call_showing(
    conn: &Conn,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    show: impl Fn(&Value) -> Value,
) -> Result<ExitCode, String> {
    match request(conn, method, path, body)? {
        Ok(value) => {
            super::output::print(&show(&value), conn.output());
            Ok(ExitCode::SUCCESS)
        }
        Err(code) => Ok(code),
    }
}

/// Sends one admin request: the answer of a success, or — already said on standard error —
/// the exit code of a refusal (1, naming the error code, audit id and request id) or of a
/// broker that cannot be reached ([`EXIT_UNREACHABLE`], naming the address).
///
/// # Errors
/// When the request cannot be made (certificates, URL).
pub fn request(
    conn: &Conn,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Result<Value, ExitCode>, String> {
    let mut client = admin_client(conn)?;
    let (status, bytes) = match runtime()?.block_on(client.request(method, path, body)) {
        Ok(answer) => answer,
        Err(e @ crate::client::ClientError::Transport(_)) => {
            return Ok(Err(unreachable(&conn.server()?, &e)))
        }
        Err(e) => return Err(e.to_string()),
    };
    let value: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&bytes) }));
    if status.is_success() {
        return Ok(Ok(value));
    }
    let err = &value["error"];
    eprintln!(
        "error: {} ({}): {} [audit_id {}, request_id {}]",
        err["code"].as_str().unwrap_or("unknown"),
        status.as_u16(),
        err["message"].as_str().unwrap_or(""),
        err["audit_id"].as_str().unwrap_or("-"),
        err["request_id"].as_str().unwrap_or("-"),
    );
    Ok(Err(ExitCode::from(1)))
}
