//! Commands that go through the admin API with an operator certificate: records, bindings,
//! secrets. Responses are printed as a table on a terminal, as JSON otherwise or with
//! `--output json`; refusals name the error code, audit id and request
//! id.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use http::Method;
use serde_json::{json, Value};
use zeroize::Zeroizing;

pub use super::conn::{call, call_showing, list_all, request, Conn, DEFAULT_SERVER};
use super::providers::BindingAdd;

#[derive(Args, Debug)]
pub struct RecordCmd<A: Args> {
    #[command(subcommand)]
    action: RecordAction<A>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand, Debug)]
pub enum RecordAction<A: Args> {
    /// Create a record.
    Add(A),
    /// List records.
    List,
    /// Show one record (bindings: secret version metadata, never values).
    Show(IdArg),
    /// Stop resolves through the record; configuration is kept.
    Disable(IdArg),
    /// Re-enable a disabled record.
    Enable(IdArg),
    /// Delete a record (refused while other records reference it).
    Remove(IdArg),
}

/// `credbroker worker …`: the record commands plus `update`.
#[derive(Args, Debug)]
pub struct WorkerCmd {
    #[command(subcommand)]
    action: WorkerAction,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand, Debug)]
pub enum WorkerAction {
    #[command(flatten)]
    Record(RecordAction<WorkerAdd>),
    /// Replace the tenants (and, with --connector-kind, the kinds) a worker may serve,
    /// without removing it.
    Update(WorkerAdd),
    /// Set who answers for the worker and what it is for (shown by `inventory`).
    SetOwner(super::governance::SetOwner),
}

#[derive(Args, Debug)]
pub struct IdArg {
    /// Record id.
    id: String,
}

#[derive(Args, Debug)]
pub struct TenantAdd {
    /// Tenant id.
    pub(super) id: String,
    /// Display name.
    #[arg(long, default_value = "")]
    pub(super) name: String,
}

#[derive(Args, Debug)]
pub struct OperatorAdd {
    /// Operator name (last segment of its SPIFFE id).
    pub(super) id: String,
}

#[derive(Args, Debug)]
pub struct WorkerAdd {
    /// Worker name (last segment of its SPIFFE id).
    pub(super) id: String,
    /// Tenant the worker may serve (repeat for several).
    #[arg(long = "tenant", required = true)]
    pub(super) tenants: Vec<String>,
    /// Connector kind the worker may serve (repeat; none = any).
    #[arg(long = "connector-kind")]
    pub(super) connector_kinds: Vec<String>,
    /// (add, required) The team or contact that answers for the worker (inventory).
    #[arg(long)]
    pub(super) owner: Option<String>,
    /// (add, required) What the worker is for (inventory).
    #[arg(long)]
    pub(super) purpose: Option<String>,
}

#[derive(Args, Debug)]
pub struct InstanceAdd {
    /// Instance id.
    pub(super) id: String,
    /// Owning tenant.
    #[arg(long)]
    pub(super) tenant: String,
    /// Binding of the same tenant.
    #[arg(long)]
    pub(super) binding: String,
    /// Connector kind (e.g. aws, servicenow, jira).
    #[arg(long)]
    pub(super) connector_kind: String,
}

#[derive(Args, Debug)]
pub struct BindingCmd {
    #[command(subcommand)]
    action: BindingAction,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand, Debug)]
pub enum BindingAction {
    /// Create a binding.
    #[command(subcommand)]
    Add(BindingAdd),
    /// List bindings.
    List,
    /// Show one binding: status, last probe, ceiling, secret version metadata (never values).
    Show(IdArg),
    /// Stop resolves through the binding; configuration is kept.
    Disable(IdArg),
    /// Re-enable; a binding whose provider needs activation is probed first.
    Enable(IdArg),
    /// Delete (refused while instances use it); frees its exclusive identifiers.
    Remove(IdArg),
    /// Re-run the provider's probe and stamp last_tested_at; activates a pending binding.
    Probe(IdArg),
    /// Set who answers for the binding, what it is for, and its rotation policy.
    SetOwner(super::governance::SetOwner),
}

#[derive(Subcommand, Debug)]
pub enum UnclaimedCmd {
    /// List installations that were proven but not bound (their account differed from the
    /// one pinned at onboarding).
    List(Conn),
    /// Bind one explicitly to a tenant (pending activation; run `binding probe` next).
    Claim(UnclaimedClaim),
    /// Ignore some (sites running the app that no tenant of ours expects, a flood of them
    /// filling the list): each is kept until bound, no longer counts against the list's cap
    /// of 256 (beyond which new sites go unrecorded), and its further invocations are
    /// counted, not recorded. An onboarding naming one binds it on its administrator's code.
    Ignore(UnclaimedIgnore),
}

#[derive(Args, Debug)]
pub struct UnclaimedIgnore {
    /// An identifier, as listed (e.g. atlassian_site:…); repeat for several (at most 256).
    #[arg(long = "identifier", required = true)]
    identifiers: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct UnclaimedClaim {
    /// Its identifier, as listed (e.g. github_installation:12345678).
    #[arg(long)]
    identifier: String,
    /// The tenant to bind it to.
    #[arg(long)]
    tenant: String,
    /// The team or contact that answers for the binding (inventory).
    #[arg(long)]
    owner: String,
    /// What the binding is for (inventory).
    #[arg(long)]
    purpose: String,
    #[command(flatten)]
    conn: Conn,
}

pub fn run_unclaimed(cmd: UnclaimedCmd) -> Result<ExitCode, String> {
    match cmd {
        UnclaimedCmd::List(conn) => call(&conn, Method::GET, "/v1/admin/unclaimed", None),
        UnclaimedCmd::Ignore(c) => call(
            &c.conn,
            Method::POST,
            "/v1/admin/unclaimed/ignore",
            Some(
                serde_json::to_vec(&serde_json::json!({ "identifiers": c.identifiers }))
                    .map_err(|e| e.to_string())?,
            ),
        ),
        UnclaimedCmd::Claim(c) => call(
            &c.conn,
            Method::POST,
            "/v1/admin/unclaimed/claim",
            Some(
                serde_json::to_vec(&serde_json::json!({
                    "identifier": c.identifier,
                    "tenant": c.tenant,
                    "owner": c.owner,
                    "purpose": c.purpose,
                }))
                .map_err(|e| e.to_string())?,
            ),
        ),
    }
}

#[derive(Subcommand, Debug)]
pub enum IntakeCmd {
    /// Create a one-time link where the customer's admin pastes a binding's secret; the URL is
    /// printed once (only its hash is stored).
    Create(IntakeCreate),
    /// List open intake links (never their URLs).
    List(Conn),
    /// Revoke an open intake link.
    Revoke(IntakeRevoke),
}

#[derive(Args, Debug)]
pub struct IntakeCreate {
    /// The binding whose secret the customer provides.
    #[arg(long)]
    binding: String,
    /// How long the link works: seconds, or with a unit (30m, 24h, 7d; at most 7d).
    #[arg(long, default_value = "24h")]
    ttl: String,
    /// A field to ask for (repeatable; default: what the binding's provider declares).
    #[arg(long = "field")]
    fields: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct IntakeRevoke {
    /// The link's id (`ik_…`, from `intake list`).
    id: String,
    #[command(flatten)]
    conn: Conn,
}

pub(super) fn duration_s(text: &str) -> Result<u64, String> {
    let (n, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?} is not a duration"))?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: use s, m, h or d")),
    };
    n.checked_mul(mul)
        .ok_or_else(|| "duration too long".to_owned())
}

pub fn run_intake(cmd: IntakeCmd) -> Result<ExitCode, String> {
    match cmd {
        IntakeCmd::Create(c) => {
            let mut body =
                serde_json::json!({ "binding": c.binding, "ttl_s": duration_s(&c.ttl)? });
            if !c.fields.is_empty() {
                body["fields"] = serde_json::json!(c.fields);
            }
            call(
                &c.conn,
                Method::POST,
                "/v1/admin/intake",
                Some(serde_json::to_vec(&body).map_err(|e| e.to_string())?),
            )
        }
        IntakeCmd::List(conn) => call(&conn, Method::GET, "/v1/admin/intake", None),
        IntakeCmd::Revoke(r) => call(
            &r.conn,
            Method::DELETE,
            &format!("/v1/admin/intake/{}", path_segment(&r.id)?),
            None,
        ),
    }
}

#[derive(Subcommand, Debug)]
pub enum SecretCmd {
    /// Set the first secret version of a binding.
    Set(SecretWrite),
    /// Write a new version as `pending` and probe it; nothing served changes until `promote`.
    Rotate(SecretWrite),
    /// Make the pending version active (refused unless it passed its last probe); the
    /// previous version is kept, never served, for `[secrets] superseded_overlap_s`.
    Promote(SecretPromote),
    /// Destroy every version, or one with --version (the active one only with --force).
    Destroy(SecretDestroy),
}

#[derive(Args, Debug)]
pub struct SecretWrite {
    /// Binding id.
    binding: String,
    /// Read the fields as a JSON object of strings from this file…
    #[arg(
        long,
        conflicts_with_all = ["from_stdin", "self_rotate"],
        required_unless_present_any = ["from_stdin", "self_rotate"]
    )]
    from_file: Option<PathBuf>,
    /// …or from standard input, piped (a terminal is refused: what is typed there is
    /// echoed). Values are never taken from the command line.
    #[arg(long, conflicts_with = "self_rotate")]
    from_stdin: bool,
    /// (rotate) Let the current secret create its successor upstream (Data Center PAT):
    /// stored pending, probed, promoted, the old one revoked (owed until the instance
    /// answers: retried by the leader; `revocation_owed` in the answer says so).
    #[arg(long = "self")]
    self_rotate: bool,
    /// When the secret itself expires (RFC 3339, e.g. a PAT's expiry date): the inventory
    /// flags it expiring_soon ahead of it.
    #[arg(long, conflicts_with = "self_rotate")]
    expires_at: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct SecretPromote {
    /// Binding id.
    binding: String,
    /// The pending version.
    version: u32,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct SecretDestroy {
    /// Binding id.
    binding: String,
    /// Only this version.
    #[arg(long)]
    version: Option<u32>,
    /// With --version: destroy it even if it is the active version (every resolve then fails
    /// with secret_missing until another version is promoted).
    #[arg(long, requires = "version")]
    force: bool,
    #[command(flatten)]
    conn: Conn,
}

pub fn path_segment(id: &str) -> Result<&str, String> {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        Ok(id)
    } else {
        Err(format!("invalid id {id:?}"))
    }
}

pub fn run_record<A: Args>(
    cmd: RecordCmd<A>,
    collection: &str,
    body: impl FnOnce(A) -> Result<Value, String>,
) -> Result<ExitCode, String> {
    let base = format!("/v1/admin/{collection}");
    match cmd.action {
        RecordAction::Add(a) => {
            let v = body(a)?;
            call(
                &cmd.conn,
                Method::POST,
                &base,
                Some(serde_json::to_vec(&v).map_err(|e| e.to_string())?),
            )
        }
        RecordAction::List => list_all(&cmd.conn, &base, collection),
        RecordAction::Show(i) => call(
            &cmd.conn,
            Method::GET,
            &format!("{base}/{}", path_segment(&i.id)?),
            None,
        ),
        RecordAction::Disable(i) => call(
            &cmd.conn,
            Method::POST,
            &format!("{base}/{}/disable", path_segment(&i.id)?),
            Some(b"{}".to_vec()),
        ),
        RecordAction::Enable(i) => call(
            &cmd.conn,
            Method::POST,
            &format!("{base}/{}/enable", path_segment(&i.id)?),
            Some(b"{}".to_vec()),
        ),
        RecordAction::Remove(i) => call(
            &cmd.conn,
            Method::DELETE,
            &format!("{base}/{}", path_segment(&i.id)?),
            None,
        ),
    }
}

pub fn run_worker(cmd: WorkerCmd) -> Result<ExitCode, String> {
    match cmd.action {
        WorkerAction::Record(action) => run_record(
            RecordCmd {
                action,
                conn: cmd.conn,
            },
            "workers",
            |a: WorkerAdd| {
                let (Some(owner), Some(purpose)) = (a.owner, a.purpose) else {
                    return Err("worker add needs --owner and --purpose (inventory)".to_owned());
                };
                Ok(json!({
                    "id": a.id,
                    "tenants": a.tenants,
                    "connector_kinds": a.connector_kinds,
                    "owner": owner,
                    "purpose": purpose,
                }))
            },
        ),
        WorkerAction::SetOwner(a) => a.run(&cmd.conn, "workers"),
        WorkerAction::Update(a) => {
            if a.owner.is_some() || a.purpose.is_some() {
                return Err("worker update changes tenants; use worker set-owner".to_owned());
            }
            let mut body = json!({ "tenants": a.tenants });
            if !a.connector_kinds.is_empty() {
                body["connector_kinds"] = json!(a.connector_kinds);
            }
            call(
                &cmd.conn,
                Method::PUT,
                &format!("/v1/admin/workers/{}/tenants", path_segment(&a.id)?),
                Some(serde_json::to_vec(&body).map_err(|e| e.to_string())?),
            )
        }
    }
}

pub fn run_binding(cmd: BindingCmd) -> Result<ExitCode, String> {
    let base = "/v1/admin/bindings";
    let conn = &cmd.conn;
    match cmd.action {
        BindingAction::Add(add) => call(
            conn,
            Method::POST,
            base,
            Some(serde_json::to_vec(&add.body).map_err(|e| e.to_string())?),
        ),
        BindingAction::List => list_all(conn, base, "bindings"),
        BindingAction::Show(i) => call(
            conn,
            Method::GET,
            &format!("{base}/{}", path_segment(&i.id)?),
            None,
        ),
        BindingAction::Disable(i) => call(
            conn,
            Method::POST,
            &format!("{base}/{}/disable", path_segment(&i.id)?),
            Some(b"{}".to_vec()),
        ),
        BindingAction::Enable(i) => call(
            conn,
            Method::POST,
            &format!("{base}/{}/enable", path_segment(&i.id)?),
            Some(b"{}".to_vec()),
        ),
        BindingAction::Remove(i) => call(
            conn,
            Method::DELETE,
            &format!("{base}/{}", path_segment(&i.id)?),
            None,
        ),
        BindingAction::Probe(i) => call(
            conn,
            Method::POST,
            &format!("{base}/{}/probe", path_segment(&i.id)?),
            Some(b"{}".to_vec()),
        ),
        BindingAction::SetOwner(a) => a.run(conn, "bindings"),
    }
}

fn read_secret_fields(w: &SecretWrite) -> Result<Zeroizing<Vec<u8>>, String> {
    // A secret is far smaller than the broker's request limit; the buffers it passes
    // through are wiped.
    let (raw, source) = match &w.from_file {
        Some(path) => {
            let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            (
                crate::keys::read_wiped(f, crate::keys::MAX_SECRET_INPUT)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
                format!("the secret file {}", path.display()),
            )
        }
        None => {
            // Typed on a terminal, the secret is echoed, kept in its scrollback and in any
            // session recording.
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                return Err("standard input is a terminal: a secret typed there is echoed and kept in its scrollback; pipe the JSON in (e.g. from a password manager's CLI) or use --from-file".into());
            }
            (
                crate::keys::read_wiped(std::io::stdin(), crate::keys::MAX_SECRET_INPUT)
                    .map_err(|e| format!("standard input: {e}"))?,
                "the secret on standard input".to_owned(),
            )
        }
    };
    // Checked here, where a position means something to the operator (line and column of
    // the file, not of the body the broker gets); values go into zeroizing strings only.
    // Values are looked at raw (borrowed from the input, never unescaped into a buffer of
    // serde_json's own that is not wiped): each must be a JSON string.
    let checked = serde_json::from_slice::<
        BTreeMap<std::borrow::Cow<'_, str>, &serde_json::value::RawValue>,
    >(&raw)
    .and_then(
        |fields| match fields.iter().find(|(_, v)| !v.get().starts_with('"')) {
            Some((name, _)) => Err(serde::de::Error::custom(format!(
                "field {:?} is not a string",
                crate::cli::output::sanitize(name)
            ))),
            None => Ok(()),
        },
    );
    if let Err(e) = checked {
        let why = crate::api_error::json_error(&e);
        return Err(if e.is_syntax() || e.is_eof() {
            format!("{source} is not valid JSON: {why}")
        } else {
            format!(
                "{source} must be a JSON object of string fields, e.g. {{\"token\":\"…\"}}: {why}"
            )
        });
    }
    // Wrap the bytes as read as {"fields": <object>}: nothing re-serialized.
    let trimmed = raw.trim_ascii();
    if !trimmed.starts_with(b"{") {
        return Err(
            "secret input must be a JSON object of string fields, e.g. {\"token\":\"…\"}".into(),
        );
    }
    let expires = match &w.expires_at {
        Some(t) => Some(serde_json::to_vec(t).map_err(|e| e.to_string())?),
        None => None,
    };
    // Sized up front: a buffer that grew would leave a copy of the secret behind.
    let mut body = Zeroizing::new(Vec::with_capacity(
        trimmed.len() + 32 + expires.as_ref().map_or(0, Vec::len),
    ));
    body.extend_from_slice(b"{\"fields\":");
    body.extend_from_slice(trimmed);
    if let Some(t) = &expires {
        body.extend_from_slice(b",\"expires_at\":");
        body.extend_from_slice(t);
    }
    body.push(b'}');
    Ok(body)
}

pub fn run_secret(cmd: SecretCmd) -> Result<ExitCode, String> {
    match cmd {
        SecretCmd::Set(w) if w.self_rotate => Err("--self is for `secret rotate`".to_owned()),
        SecretCmd::Set(w) => {
            let mut body = read_secret_fields(&w)?;
            let path = format!("/v1/admin/bindings/{}/secret", path_segment(&w.binding)?);
            // Moved, not copied: the client sends it from a buffer wiped when dropped.
            call(
                &w.conn,
                Method::PUT,
                &path,
                Some(std::mem::take(&mut *body)),
            )
        }
        SecretCmd::Rotate(w) if w.self_rotate => {
            let path = format!(
                "/v1/admin/bindings/{}/secret/self-rotate",
                path_segment(&w.binding)?
            );
            call(&w.conn, Method::POST, &path, Some(b"{}".to_vec()))
        }
        SecretCmd::Rotate(w) => {
            let mut body = read_secret_fields(&w)?;
            let path = format!(
                "/v1/admin/bindings/{}/secret/rotate",
                path_segment(&w.binding)?
            );
            call(
                &w.conn,
                Method::POST,
                &path,
                Some(std::mem::take(&mut *body)),
            )
        }
        SecretCmd::Promote(p) => {
            let path = format!(
                "/v1/admin/bindings/{}/secret/{}/promote",
                path_segment(&p.binding)?,
                p.version
            );
            call(&p.conn, Method::POST, &path, Some(b"{}".to_vec()))
        }
        SecretCmd::Destroy(d) => {
            let mut path = format!("/v1/admin/bindings/{}/secret", path_segment(&d.binding)?);
            if let Some(v) = d.version {
                path.push_str(&format!("/{v}"));
                if d.force {
                    path.push_str("?force=true");
                }
            }
            call(&d.conn, Method::DELETE, &path, None)
        }
    }
}
