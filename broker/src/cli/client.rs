//! Worker-side helpers that resolve through the broker with a worker certificate.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use http::Method;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::client::BrokerClient;

use super::runtime;

#[derive(Subcommand, Debug)]
pub enum ClientCmd {
    /// Print AWS `credential_process` JSON (Version 1) for an instance, minted by the broker.
    AwsCredentialProcess(ClientArgs),
    /// Print a bearer token for an instance (Entra, GCP or ServiceNow access token, GitHub
    /// installation token), for scripts and SDK token providers; `--json` prints it with its
    /// expiry.
    Token(TokenArgs),
    /// Serve the GCE metadata server's token endpoint on loopback for a `gcp_wif` instance:
    /// stock Google client libraries (GCE_METADATA_HOST=the printed address) get access tokens
    /// resolved through the broker — never the broker's own assertion.
    GcpMetadata(super::gcp_metadata::GcpMetadataArgs),
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Narrow the request, as JSON (Entra: `{"resource": "arm"}` for Azure Resource Manager
    /// instead of Microsoft Graph).
    #[arg(long)]
    narrow: Option<String>,
    /// Print `{"access_token", "token_type", "expires_at", "expires_on"}` instead of the
    /// bare token.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Connector instance id.
    #[arg(long)]
    pub(super) instance: String,
    /// Broker URL.
    #[arg(long, env = "CREDBROKER_SERVER", default_value = super::admin::DEFAULT_SERVER)]
    server: String,
    /// CA bundle of the broker's server certificate.
    #[arg(long, env = "CREDBROKER_CA")]
    ca: PathBuf,
    /// Worker certificate.
    #[arg(long, env = "CREDBROKER_WORKER_CERT")]
    cert: PathBuf,
    /// Worker private key.
    #[arg(long, env = "CREDBROKER_WORKER_KEY")]
    key: PathBuf,
    /// Job id recorded in the audit log.
    #[arg(long)]
    job_id: Option<String>,
}

/// Why a resolve gave no credential, each with its exit status (README "Exit status").
#[derive(Debug)]
pub(super) enum ResolveFailure {
    /// The broker answered with a refusal: exit 1.
    Refused(String),
    /// The broker could not be reached, nothing was sent: exit 3.
    Unreachable(String),
    /// Sent, and no answer came: exit 4.
    NoAnswer(String),
    /// The command could not run (a file, TLS, a malformed answer): exit 2.
    Failed(String),
}

impl std::fmt::Display for ResolveFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveFailure::Refused(m)
            | ResolveFailure::Unreachable(m)
            | ResolveFailure::NoAnswer(m)
            | ResolveFailure::Failed(m) => f.write_str(m),
        }
    }
}

impl From<String> for ResolveFailure {
    fn from(m: String) -> Self {
        ResolveFailure::Failed(m)
    }
}

/// Resolves `a.instance` (with `narrow`); the answer's JSON, or how it failed: a failure
/// that has an exit status of its own is said on standard error and returned as it.
fn resolve(a: &ClientArgs, narrow: Option<Value>) -> Result<Value, Result<ExitCode, String>> {
    let said = |code: u8, m: String| {
        eprintln!("error: {}", super::output::sanitize_lines(&m));
        Ok(ExitCode::from(code))
    };
    runtime()
        .map_err(Err)?
        .block_on(resolve_async(a, narrow))
        .map_err(|f| match f {
            ResolveFailure::Refused(m) => said(1, m),
            ResolveFailure::Unreachable(m) => said(super::conn::EXIT_UNREACHABLE, m),
            ResolveFailure::NoAnswer(m) => said(super::conn::EXIT_OUTCOME_UNKNOWN, m),
            ResolveFailure::Failed(m) => Err(m),
        })
}

/// Says once, on standard error, when the worker's key file is open to others than its
/// owner: whoever can read it acts as this worker, for every tenant the worker serves.
fn warn_if_key_open(key: &std::path::Path) {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        if let Some(warning) =
            super::conn::key_open_warning(key, "this worker, for every tenant it serves")
        {
            eprintln!("{warning}");
        }
    });
}

/// [`resolve`] on the caller's runtime.
pub(super) async fn resolve_async(
    a: &ClientArgs,
    narrow: Option<Value>,
) -> Result<Value, ResolveFailure> {
    warn_if_key_open(&a.key);
    let mut client = BrokerClient::new(&a.server, &a.ca, &a.cert, &a.key)
        .map_err(|e| e.to_string())?
        .with_max_answer(MAX_RESOLVE_ANSWER);
    let mut body = json!({ "instance_id": a.instance, "min_ttl_s": 300 });
    if let Some(job) = &a.job_id {
        body["job_id"] = json!(job);
    }
    if let Some(n) = narrow {
        body["narrow"] = n;
    }
    let (status, bytes) = client
        .request(
            Method::POST,
            "/v1/resolve",
            Some(serde_json::to_vec(&body).map_err(|e| e.to_string())?),
        )
        .await
        .map_err(|e| match e {
            crate::client::ClientError::Connect(_) => ResolveFailure::Unreachable(format!(
                "cannot reach the broker at {}: {e}; is it running there? Give its address with --server URL (or CREDBROKER_SERVER)",
                a.server
            )),
            crate::client::ClientError::Transport(_) => ResolveFailure::NoAnswer(format!(
                "no answer from the broker at {}: {e} (the resolve was sent; it is in the audit log if the broker made it)",
                a.server
            )),
            other => ResolveFailure::Failed(format!("broker at {}: {other}", a.server)),
        })?;
    let bytes = Zeroizing::new(bytes);
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|_| "broker answered with non-JSON".to_owned())?;
    if !status.is_success() {
        // The broker's words, made safe for a terminal or a log (as the admin commands do).
        let text =
            |k: &str, or: &str| super::output::sanitize(v["error"][k].as_str().unwrap_or(or));
        return Err(ResolveFailure::Refused(format!(
            "resolve refused: {} ({}): {} [audit_id {}]",
            text("code", "unknown"),
            status.as_u16(),
            text("message", ""),
            text("audit_id", "-")
        )));
    }
    Ok(v)
}

fn print_secret(text: &Zeroizing<String>) -> Result<(), String> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    stdout.write_all(b"\n").map_err(|e| e.to_string())
}

/// The largest resolve answer read (a few KiB in practice; a pasted secret's fields are at
/// most the broker's body limit).
const MAX_RESOLVE_ANSWER: usize = 4 << 20;

/// The longest token `client token` prints bare.
const MAX_BARE_TOKEN: usize = 65_536;

/// `credbroker client token`: the bearer token of an instance's credential.
pub fn token(a: &TokenArgs) -> Result<ExitCode, String> {
    let narrow = match &a.narrow {
        Some(t) => Some(
            serde_json::from_str::<Value>(t)
                .ok()
                .filter(Value::is_object)
                .ok_or("--narrow must be a JSON object")?,
        ),
        None => None,
    };
    let v = match resolve(&a.client, narrow) {
        Ok(v) => v,
        Err(stop) => return stop,
    };
    let c = &v["credentials"];
    let token = ["access_token", "token"]
        .iter()
        .find_map(|k| c.get(*k).and_then(Value::as_str))
        .ok_or_else(|| {
            format!(
                "instance {} does not resolve to a bearer token (kind {})",
                a.client.instance,
                super::output::sanitize(&v["kind"].to_string())
            )
        })?;
    let text = if a.json {
        let expires_on = v["expires_at"]
            .as_str()
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(time::OffsetDateTime::unix_timestamp);
        let out = json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_at": v["expires_at"],
            "expires_on": expires_on,
            "kind": v["kind"],
        });
        super::output::json_line(&out)?
    } else {
        // Bare, the token is a line a script puts into an environment file or an `export`:
        // a pasted value with a newline or an escape would add lines of its own there.
        if !credbroker_providers::is_printable(token, MAX_BARE_TOKEN) {
            return Err(format!(
                "instance {}'s token is not one word of printable ASCII (letters, digits and punctuation, no space, up to {MAX_BARE_TOKEN} bytes): not printed bare; --json prints it escaped",
                a.client.instance
            ));
        }
        Zeroizing::new(token.to_owned())
    };
    print_secret(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// `credential_process` output: the AWS CLI and every AWS SDK run this command and read
/// `{"Version": 1, "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}`.
pub fn aws_credential_process(a: &ClientArgs) -> Result<ExitCode, String> {
    let v = match resolve(a, None) {
        Ok(v) => v,
        Err(stop) => return stop,
    };
    if v["kind"] != "aws_sts" {
        return Err(format!(
            "instance {} does not resolve to AWS credentials (kind {})",
            a.instance,
            super::output::sanitize(&v["kind"].to_string())
        ));
    }
    let c = &v["credentials"];
    // Each field a string, the expiry a time: an SDK given no Expiration takes the keys for
    // ones that never expire and never asks again.
    let field = |k: &str| {
        c[k].as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("the broker's AWS credentials lack {k}: not printed"))
    };
    let expiration = field("Expiration")?;
    if time::OffsetDateTime::parse(expiration, &time::format_description::well_known::Rfc3339)
        .is_err()
    {
        return Err(
            "the broker's AWS credentials' Expiration is not an RFC 3339 time: not printed".into(),
        );
    }
    let out = json!({
        "Version": 1,
        "AccessKeyId": field("AccessKeyId")?,
        "SecretAccessKey": field("SecretAccessKey")?,
        "SessionToken": field("SessionToken")?,
        "Expiration": expiration,
    });
    let text = super::output::json_line(&out)?;
    print_secret(&text)?;
    Ok(ExitCode::SUCCESS)
}
