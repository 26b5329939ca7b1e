//! `inventory`, `webhook-secret`, `provider`, and `set-owner` of workers and bindings.

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use http::Method;
use serde_json::{json, Value};

use super::admin::{call, call_showing, duration_s, path_segment, Conn};
use super::output::{self, Output};

/// `worker set-owner` / `binding set-owner`.
#[derive(Args, Debug)]
pub struct SetOwner {
    /// Record id.
    id: String,
    /// The team or contact that answers for it.
    #[arg(long)]
    owner: String,
    /// What it is for.
    #[arg(long)]
    purpose: String,
    /// (bindings) Rotation policy: the most days its secret may age, 1-3650 (absent: the
    /// binding's current policy is kept).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::admin::MAX_SECRET_AGE_DAYS)))]
    max_secret_age_days: Option<u32>,
    /// (bindings) Clear the binding's rotation policy: the provider's default from
    /// `[inventory] max_secret_age_days` applies again.
    #[arg(long, conflicts_with = "max_secret_age_days")]
    clear_max_secret_age: bool,
}

impl SetOwner {
    pub(super) fn run(self, conn: &Conn, collection: &str) -> Result<ExitCode, String> {
        let mut body = json!({ "owner": self.owner, "purpose": self.purpose });
        if let Some(d) = self.max_secret_age_days {
            body["max_secret_age_days"] = json!(d);
        }
        if self.clear_max_secret_age {
            body["max_secret_age_days"] = Value::Null;
        }
        call(
            conn,
            Method::PUT,
            &format!(
                "/v1/admin/{collection}/{}/governance",
                path_segment(&self.id)?
            ),
            Some(serde_json::to_vec(&body).map_err(|e| e.to_string())?),
        )
    }
}

/// Output format of `inventory`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// The admin API's JSON.
    Json,
    /// RFC 4180 CSV with a header row (flags joined by `;`).
    Csv,
}

/// `credbroker inventory`.
#[derive(Args, Debug)]
pub struct InventoryArgs {
    /// Output format: table, json or csv [default: --output, else table on a terminal and
    /// json otherwise].
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Flag as dormant what has not resolved for this long (e.g. 30d, 12h; default
    /// `[inventory] dormant_after_s`).
    #[arg(long)]
    dormant: Option<String>,
    /// Flag as expiring soon what expires within this long (default
    /// `[inventory] expiring_within_s`).
    #[arg(long)]
    expiring: Option<String>,
    /// Only rows carrying at least one flag.
    #[arg(long)]
    flagged: bool,
    #[command(flatten)]
    conn: Conn,
}

const COLUMNS: &[&str] = &[
    "kind",
    "id",
    "tenant",
    "provider",
    "status",
    "owner",
    "purpose",
    "last_resolve_at",
    "last_probe_at",
    "secret_age_days",
    "max_secret_age_days",
    "expires_at",
    "flags",
];

fn cell(item: &Value, column: &str) -> String {
    match &item[column] {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(";"),
        other => other.to_string(),
    }
}

fn csv_field(s: &str) -> String {
    // What a broker stored before it refused them (control characters, bidirectional
    // overrides) reaches no terminal or spreadsheet as it is.
    let s = super::output::sanitize(s);
    // A leading =, +, - or @ would be a formula in a spreadsheet: quote it with a '.
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Renders inventory rows as `format`.
pub fn render(items: &[Value], format: Format) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| COLUMNS.iter().map(|c| cell(i, c)).collect())
        .collect();
    let mut out = String::new();
    match format {
        Format::Json => {}
        Format::Csv => {
            out.push_str(&COLUMNS.join(","));
            out.push_str("\r\n");
            for r in &rows {
                out.push_str(&r.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
                out.push_str("\r\n");
            }
        }
        Format::Table => {
            // The table leaves purpose out (see json or csv); every cell is cut at 40.
            let shown: Vec<usize> = (0..COLUMNS.len())
                .filter(|i| COLUMNS[*i] != "purpose")
                .collect();
            // What the broker sends is shown, never obeyed: no control characters and no
            // bidirectional overrides reach the terminal (an owner set before the broker
            // refused them, or by a broker that did not).
            let clip = |s: &str| {
                s.chars()
                    .filter(|&c| !c.is_control() && !super::output::is_bidi_control(c))
                    .take(40)
                    .collect::<String>()
            };
            let mut widths: Vec<usize> = shown.iter().map(|i| COLUMNS[*i].len()).collect();
            for r in &rows {
                for (w, i) in widths.iter_mut().zip(&shown) {
                    *w = (*w).max(clip(&r[*i]).chars().count());
                }
            }
            let line = |cells: Vec<String>| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_owned()
            };
            out.push_str(&line(
                shown.iter().map(|i| COLUMNS[*i].to_uppercase()).collect(),
            ));
            out.push('\n');
            for r in &rows {
                out.push_str(&line(shown.iter().map(|i| clip(&r[*i])).collect()));
                out.push('\n');
            }
        }
    }
    out
}

/// Runs `inventory`.
///
/// # Errors
/// A malformed window, or the broker cannot be reached.
pub fn run_inventory(a: &InventoryArgs) -> Result<ExitCode, String> {
    let mut query = Vec::new();
    if let Some(d) = &a.dormant {
        query.push(format!("dormant_s={}", duration_s(d)?));
    }
    if let Some(e) = &a.expiring {
        query.push(format!("expiring_s={}", duration_s(e)?));
    }
    let path = if query.is_empty() {
        "/v1/admin/inventory".to_owned()
    } else {
        format!("/v1/admin/inventory?{}", query.join("&"))
    };
    let flagged = a.flagged;
    let keep = move |v: &Value| -> Vec<Value> {
        v["inventory"]["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|i| !flagged || i["flags"].as_array().is_some_and(|f| !f.is_empty()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let format = a.format.unwrap_or(match a.conn.output() {
        super::output::Output::Table => Format::Table,
        super::output::Output::Json => Format::Json,
    });
    if format == Format::Json {
        return call_showing(&a.conn, Method::GET, &path, None, |v| {
            let mut inv = v["inventory"].clone();
            inv["items"] = Value::Array(keep(v));
            inv
        });
    }
    let value = match super::admin::request(&a.conn, Method::GET, &path, None)? {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    print!("{}", render(&keep(&value), format));
    Ok(ExitCode::SUCCESS)
}

/// `credbroker webhook-secret …`.
#[derive(Subcommand, Debug)]
pub enum WebhookSecretCmd {
    /// Generate an instance's webhook secret (256 bits, sealed; not printed: `reveal` it).
    Generate(WebhookGenerate),
    /// Show the scheme and versions (never the secret).
    Show(WebhookInstance),
    /// Print the current secret, to paste into the vendor: audited with --reason,
    /// rate-limited (`[webhooks] reveals_per_hour`).
    Reveal(WebhookReveal),
    /// A new secret; the previous one keeps verifying for `[webhooks] overlap_s` while the
    /// vendor side is updated.
    Rotate(WebhookInstance),
    /// Destroy it: nothing verifies for the instance until a new one is generated.
    Retire(WebhookInstance),
}

/// The scheme of a generated secret.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// GitHub `X-Hub-Signature-256: sha256=<HMAC-SHA256>`.
    Github,
    /// GitLab `X-Gitlab-Token`.
    Gitlab,
    /// HMAC-SHA256 hex in --header after --prefix.
    HmacSha256,
    /// The secret itself in --header.
    Token,
    /// Events accepted unsigned (an explicit choice; no secret is generated).
    Unsigned,
}

#[derive(Args, Debug)]
pub struct WebhookInstance {
    /// Connector instance id.
    instance: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct WebhookGenerate {
    /// Connector instance id.
    instance: String,
    /// How the vendor signs its events.
    #[arg(long, value_enum)]
    scheme: Scheme,
    /// (hmac-sha256, token) The header carrying the signature or token.
    #[arg(long, required_if_eq_any = [("scheme", "hmac-sha256"), ("scheme", "token")])]
    header: Option<String>,
    /// (hmac-sha256) What precedes the hex digest in the header (e.g. `sha256=`).
    #[arg(long, default_value = "")]
    prefix: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct WebhookReveal {
    /// Connector instance id.
    instance: String,
    /// Why (recorded in the audit log with your name), 8-200 characters.
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    conn: Conn,
}

fn webhook_path(instance: &str) -> Result<String, String> {
    Ok(format!(
        "/v1/admin/instances/{}/webhook-secret",
        path_segment(instance)?
    ))
}

/// Runs `webhook-secret …`.
///
/// # Errors
/// A malformed argument, or the broker cannot be reached.
pub fn run_webhook_secret(cmd: WebhookSecretCmd) -> Result<ExitCode, String> {
    let to_vec = |v: Value| serde_json::to_vec(&v).map_err(|e| e.to_string());
    match cmd {
        WebhookSecretCmd::Generate(g) => {
            let body = match g.scheme {
                Scheme::Github => json!({ "scheme": "github" }),
                Scheme::Gitlab => json!({ "scheme": "gitlab" }),
                Scheme::HmacSha256 => {
                    json!({ "scheme": "hmac_sha256", "header": g.header, "prefix": g.prefix })
                }
                Scheme::Token => json!({ "scheme": "token", "header": g.header }),
                Scheme::Unsigned => json!({ "scheme": "unsigned" }),
            };
            call(
                &g.conn,
                Method::POST,
                &webhook_path(&g.instance)?,
                Some(to_vec(body)?),
            )
        }
        WebhookSecretCmd::Show(i) => call(&i.conn, Method::GET, &webhook_path(&i.instance)?, None),
        WebhookSecretCmd::Reveal(r) => call(
            &r.conn,
            Method::POST,
            &format!("{}/reveal", webhook_path(&r.instance)?),
            Some(to_vec(json!({ "reason": r.reason }))?),
        ),
        WebhookSecretCmd::Rotate(i) => call(
            &i.conn,
            Method::POST,
            &format!("{}/rotate", webhook_path(&i.instance)?),
            Some(b"{}".to_vec()),
        ),
        WebhookSecretCmd::Retire(i) => {
            call(&i.conn, Method::DELETE, &webhook_path(&i.instance)?, None)
        }
    }
}

/// `credbroker provider …`: the catalog of this build, from each provider's own
/// declarations (offline; `GET /v1/admin/providers` also says which are configured).
#[derive(Subcommand, Debug)]
pub enum ProviderCmd {
    /// Every provider: id, source, ceiling mode, what resolve returns.
    List {
        /// Same as --output json.
        #[arg(long, hide = true)]
        json: bool,
        /// Output format [default: table on a terminal, json otherwise].
        #[arg(long, value_enum)]
        output: Option<Output>,
    },
    /// One provider's entry, in full.
    Show {
        /// Provider id (or its CLI name).
        id: String,
        /// Output format [default: table on a terminal, json otherwise].
        #[arg(long, value_enum)]
        output: Option<Output>,
    },
}

/// Runs `provider …`.
///
/// # Errors
/// An unknown provider.
pub fn run_provider(cmd: &ProviderCmd) -> Result<ExitCode, String> {
    match cmd {
        ProviderCmd::List { json, output } => {
            let format = Output::or_default(if *json { Some(Output::Json) } else { *output });
            match format {
                Output::Json => output::print(&json!(crate::catalog::all()), Output::Json),
                Output::Table => {
                    let rows: Vec<Value> = credbroker_providers::CATALOG
                        .iter()
                        .map(|d| {
                            json!({
                                "id": d.id,
                                "source": d.catalog.source.as_str(),
                                "ceiling": d.catalog.ceiling_mode.as_str(),
                                "description": d.catalog.description,
                            })
                        })
                        .collect();
                    output::print(&Value::Array(rows), Output::Table);
                }
            }
        }
        ProviderCmd::Show { id, output } => {
            let d = credbroker_providers::CATALOG
                .iter()
                .find(|d| d.id == id || d.cli.name == id)
                .ok_or_else(|| {
                    format!("no provider {id:?} in this build (credbroker provider list)")
                })?;
            output::print(
                &json!(crate::catalog::entry(d)),
                Output::or_default(*output),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let items = vec![
            json!({"kind": "binding", "id": "b1", "owner": "=cmd|x", "purpose": "a,b", "flags": ["unowned", "dormant"]}),
        ];
        let out = render(&items, Format::Csv);
        let row = out.lines().nth(1).unwrap();
        assert!(row.contains("'=cmd|x"), "{row}");
        assert!(row.contains("\"a,b\""), "{row}");
        assert!(row.ends_with("unowned;dormant"), "{row}");
        let table = render(&items, Format::Table);
        assert!(table.starts_with("KIND"), "{table}");
    }

    /// An owner stored with bidirectional overrides (by a broker that let them in) is shown
    /// in the table without them: the row reads as it is.
    #[test]
    fn the_table_shows_no_bidirectional_overrides() {
        let items = vec![
            json!({"kind": "binding", "id": "b1", "owner": "team\u{202e}evil\u{2066}x\u{200f}\u{61c}", "flags": []}),
        ];
        let table = render(&items, Format::Table);
        assert!(table.contains("teamevilx"), "{table}");
        let csv = render(&items, Format::Csv);
        assert!(
            !csv.chars().any(crate::cli::output::is_bidi_control),
            "{csv:?}"
        );
        assert!(
            !table.chars().any(crate::cli::output::is_bidi_control),
            "{table:?}"
        );
    }
}
