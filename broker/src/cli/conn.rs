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

use super::output::{self, Output};
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
    /// The broker URL: `--server` (or `CREDBROKER_SERVER`); else, with `--dev-dir`, the URL
    /// the running dev broker recorded in `<DIR>/server-url`, or the `listen` of its
    /// `credbroker.toml` (see [`dev_server`]); else [`DEFAULT_SERVER`].
    ///
    /// # Errors
    /// When the dev directory names no usable address.
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
/// (`server-url`, removed when it stops), else the `listen` of its `credbroker.toml`.
///
/// # Errors
/// When `server-url` holds no https URL, or there is none and the config cannot be read or
/// asks for a port chosen at start (port 0).
pub fn dev_server(dir: &std::path::Path) -> Result<String, String> {
    let dir = &own_dev_dir(dir)?;
    let recorded = dev::server_url_file(dir);
    if let Ok(text) = std::fs::read_to_string(&recorded) {
        let url = output::sanitize(text.trim());
        return if url.starts_with("https://") {
            Ok(url)
        } else {
            Err(format!(
                "{} does not hold an https:// URL ({url:?}); give the broker's address with --server",
                recorded.display()
            ))
        };
    }
    let path = dir.join("credbroker.toml");
    let config = crate::config::Config::load(&path).map_err(|e| {
        format!(
            "--dev-dir {}: cannot read {} ({e}); is it a directory `credbroker dev` made? Give the broker's address with --server",
            dir.display(),
            path.display()
        )
    })?;
    if config.listen.port() == 0 {
        return Err(format!(
            "--dev-dir {}: the dev broker listens on a port chosen at start and none is running (no {}); start it, or give --server",
            dir.display(),
            recorded.display()
        ));
    }
    Ok(dev::server_url(config.listen))
}

/// Exit code of a command that could not reach the broker: nothing was sent.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Exit code of a request sent without an answer: it may have been applied.
pub const EXIT_OUTCOME_UNKNOWN: u8 = 4;

/// Says what went wrong between the command and the broker at `server`, naming the address,
/// and returns the exit code: [`EXIT_UNREACHABLE`] when nothing was sent (connection
/// refused or timed out), [`EXIT_OUTCOME_UNKNOWN`] when the request went out and no answer
/// came. A TLS handshake that fails (the server is not the broker the CA vouches for, or our
/// certificate is refused), and an answer too large to read, are errors of the command
/// (exit 2).
///
/// # Errors
/// The handshake failure or the oversized answer, as the command's error.
pub fn transport_failure(server: &str, e: &crate::client::ClientError) -> Result<ExitCode, String> {
    use crate::client::ClientError;
    match e {
        ClientError::Connect(_) => {
            eprintln!(
                "error: cannot reach the broker at {server}: {e}\nhint: is it running there? Give its address with --server URL (or CREDBROKER_SERVER){}",
                if server == DEFAULT_SERVER {
                    "; with a dev directory, --dev-dir DIR uses the address the dev broker listens on"
                } else {
                    ""
                }
            );
            Ok(ExitCode::from(EXIT_UNREACHABLE))
        }
        ClientError::AnswerTooLarge(..) => Err(format!("{e} (broker at {server})")),
        ClientError::Transport(_) => {
            eprintln!(
                "error: no answer from the broker at {server}: {e}\nThe request was sent and may have been applied: look for it in the audit log (`credbroker audit export`) before you retry."
            );
            Ok(ExitCode::from(EXIT_OUTCOME_UNKNOWN))
        }
        other => Err(format!(
            "{other} (broker at {server}; is --ca the CA that signed its certificate, and --cert/--key a registered operator's?)"
        )),
    }
}

/// The client an admin command connects with: the operator certificate, key and CA given
/// (or those of the dev directory's `pki/`), to [`Conn::server`].
///
/// # Errors
/// When a file is missing or unreadable, or the URL is malformed.
pub fn admin_client(conn: &Conn) -> Result<BrokerClient, String> {
    let (ca, cert, key) = match &conn.dev_dir {
        Some(dir) => {
            let dir = &own_dev_dir(dir)?;
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
    if let Some(warning) = key_open_warning(&key, "this operator") {
        eprintln!("{warning}");
    }
    BrokerClient::new(&conn.server()?, &ca, &cert, &key).map_err(|e| e.to_string())
}

/// Refuses a dev directory another user owns or can write, as `dev` does: the server URL,
/// the CA and the operator key an admin command takes from it would be theirs (a secret
/// sent to their broker, checked against their CA). The directory is resolved once (a link
/// followed now, and not again) and every directory above it must be this user's or root's,
/// and not open to others without the sticky bit: someone able to rename entries there could
/// swap the directory for theirs after the check. Returns the resolved path, the one used.
fn own_dev_dir(dir: &std::path::Path) -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let real = std::fs::canonicalize(dir).map_err(|e| {
        format!(
            "--dev-dir {}: {e}",
            output::sanitize(&dir.display().to_string())
        )
    })?;
    dev::check_own_dir(&real).map_err(|e| format!("--dev-dir: {e}"))?;
    let me = rustix::process::getuid().as_raw();
    for above in real.ancestors().skip(1) {
        let meta = std::fs::metadata(above).map_err(|e| format!("{}: {e}", above.display()))?;
        let mode = meta.permissions().mode();
        let owner_ok = meta.uid() == me || meta.uid() == 0;
        let others_rename = mode & 0o022 != 0 && mode & 0o1000 == 0;
        if !owner_ok || others_rename {
            return Err(format!(
                "--dev-dir: {} is above {} and belongs to another user, or others may rename its entries: the dev directory could be swapped for theirs. Use a directory under your home",
                above.display(),
                real.display()
            ));
        }
    }
    Ok(real)
}

/// The warning for a client key file open to others than its owner (whoever can read it
/// acts as `acts_as`), if it is. Said, not refused: a secret mounted with a platform's
/// default mode would stop working.
pub(super) fn key_open_warning(key: &std::path::Path, acts_as: &str) -> Option<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(key).ok()?;
    let mode = meta.permissions().mode() & 0o777;
    let who = crate::tls::key_mode_too_open(mode, meta.uid() == 0)?;
    Some(format!(
        "warning: {} has mode {mode:04o}: open to {who}; whoever can read it acts as {acts_as} (chmod 600, or 640 for a root-owned key read through a group; a Kubernetes secret volume: defaultMode 0400)",
        output::sanitize(&key.display().to_string())
    ))
}

/// Sends one admin request and prints the answer (see [`request`]).
///
/// # Errors
/// As [`request`].
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

/// Lists a whole collection (`key` in the answers of `path`) page by page, each page after
/// the last id of the one before (`?after=`), and prints it as one answer: every record,
/// with the first page's receipt. Not a snapshot: a record added meanwhile behind the page
/// being read is not listed.
///
/// # Errors
/// As [`request`].
pub fn list_all(conn: &Conn, path: &str, key: &str) -> Result<ExitCode, String> {
    /// The most pages read (a page holds up to 1,000 records: ten million at most), so a
    /// broker that hands out `next` for ever cannot keep the command reading, and holding,
    /// without end.
    const MAX_PAGES: usize = 10_000;
    let mut shown: Option<Value> = None;
    let mut records = Vec::new();
    let mut after: Option<String> = None;
    for pages in 1.. {
        if pages > MAX_PAGES {
            return Err(format!(
                "the broker's listing of {path} goes on past {MAX_PAGES} pages: not printed (read it with the API's ?after= pages)"
            ));
        }
        let page = match &after {
            Some(a) => format!(
                "{path}?{}",
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("after", a)
                    .finish()
            ),
            None => path.to_owned(),
        };
        let mut answer = match request(conn, Method::GET, &page, None)? {
            Ok(v) => v,
            Err(code) => return Ok(code),
        };
        if let Some(items) = answer.get_mut(key).and_then(Value::as_array_mut) {
            records.append(items);
        }
        // Ids come in order: a next that does not move forward would read the same pages
        // again (or end the listing short without saying so).
        let next = match &answer["next"] {
            Value::Null => None,
            Value::String(n) if after.as_deref().is_none_or(|a| n.as_str() > a) => Some(n.clone()),
            other => {
                return Err(format!(
                    "the broker's listing of {path} does not move forward (next {}): not printed",
                    output::sanitize(&other.to_string())
                ))
            }
        };
        if shown.is_none() {
            shown = Some(answer);
        }
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut shown = shown.unwrap_or_else(|| json!({}));
    if let Some(map) = shown.as_object_mut() {
        map.remove("next");
        map.insert(key.to_owned(), Value::Array(records));
    }
    output::print(&shown, conn.output());
    Ok(ExitCode::SUCCESS)
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
    // A body may carry a secret: wiped if the client or runtime cannot be made (the client
    // holds it wiped from there on).
    let mut body = body.map(zeroize::Zeroizing::new);
    let mut client = admin_client(conn)?;
    let rt = runtime()?;
    let body = body.as_mut().map(|b| std::mem::take(&mut **b));
    let (status, bytes) = match rt.block_on(client.request(method, path, body)) {
        Ok(answer) => answer,
        Err(e) => return transport_failure(&conn.server()?, &e).map(Err),
    };
    let value: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&bytes) }));
    if status.is_success() {
        return Ok(Ok(value));
    }
    let err = &value["error"];
    let text = |k: &str| output::sanitize(err[k].as_str().unwrap_or("-"));
    eprintln!(
        "error: {} ({}): {} [audit_id {}, request_id {}]",
        text("code"),
        status.as_u16(),
        text("message"),
        text("audit_id"),
        text("request_id"),
    );
    Ok(Err(ExitCode::from(1)))
}
