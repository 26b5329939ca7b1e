//! The provider-specific commands, built from the providers' catalog: `binding add <name>`,
//! `onboard <name>` and `keys <name> …`. Each provider declares its flags in its own module
//! (`credbroker_providers::CliSpec`); nothing here names a provider.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches, Subcommand};
use http::Method;
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

use credbroker_providers::{
    FlagTarget, FlagValue, KeysCli, OnboardPin, ProviderDescriptor, SecretFields, CATALOG,
};

use super::admin::{call, Conn};

fn by_cli_name(name: &str) -> Option<&'static ProviderDescriptor> {
    CATALOG.iter().copied().find(|d| d.cli.name == name)
}

fn invalid(message: impl std::fmt::Display) -> clap::Error {
    clap::Error::raw(ErrorKind::ValueValidation, format!("{message}\n"))
}

fn json_object(flag: &str, text: &str) -> Result<Value, clap::Error> {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(invalid(format!("--{flag} must be a JSON object"))),
        Err(e) => Err(invalid(format!("--{flag} is not JSON: {e}"))),
    }
}

/// `credbroker binding add <provider> ID --tenant T [--ceiling JSON] [the provider's flags]`:
/// the admin API body it makes.
#[derive(Debug, Clone)]
pub struct BindingAdd {
    /// `POST /v1/admin/bindings` body.
    pub body: Value,
}

fn binding_add_command(d: &ProviderDescriptor) -> Command {
    let mut cmd = Command::new(d.cli.name)
        .about(d.cli.about)
        .arg(Arg::new("id").required(true).help("Binding id."))
        .arg(
            Arg::new("tenant")
                .long("tenant")
                .required(true)
                .help("Owning tenant."),
        )
        .arg(
            Arg::new("ceiling")
                .long("ceiling")
                .help("Ceiling within the platform's policies/ for this provider, JSON."),
        )
        .arg(
            Arg::new("owner")
                .long("owner")
                .required(true)
                .help("The team or contact that answers for the binding (inventory)."),
        )
        .arg(
            Arg::new("purpose")
                .long("purpose")
                .required(true)
                .help("What the binding is for (inventory)."),
        )
        .arg(
            Arg::new("max-secret-age-days")
                .long("max-secret-age-days")
                .value_parser(clap::value_parser!(u32).range(1..=i64::from(crate::admin::MAX_SECRET_AGE_DAYS)))
                .help("Rotation policy: the most days its secret may age (default: [inventory] max_secret_age_days for the provider)."),
        );
    for f in d.cli.binding_flags {
        let arg = Arg::new(f.long).long(f.long).help(f.help);
        let arg = match f.value {
            FlagValue::Text | FlagValue::JsonObject => arg.required(f.required),
            FlagValue::Integer => arg
                .required(f.required)
                .value_parser(clap::value_parser!(u64)),
            FlagValue::Switch => arg.action(ArgAction::SetTrue),
        };
        cmd = cmd.arg(arg);
    }
    cmd
}

impl FromArgMatches for BindingAdd {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let (name, m) = matches
            .subcommand()
            .ok_or_else(|| clap::Error::new(ErrorKind::MissingSubcommand))?;
        let d = by_cli_name(name)
            .filter(|d| d.cli.by_hand)
            .ok_or_else(|| clap::Error::new(ErrorKind::InvalidSubcommand))?;
        let text = |id: &str| m.get_one::<String>(id).cloned();
        let mut config = Value::Object(Map::new());
        for f in d.cli.binding_flags {
            let value = match f.value {
                FlagValue::Text => text(f.long).map(Value::String),
                FlagValue::Integer => m.get_one::<u64>(f.long).map(|n| json!(n)),
                FlagValue::Switch => m.get_flag(f.long).then_some(Value::Bool(true)),
                FlagValue::JsonObject => {
                    text(f.long).map(|t| json_object(f.long, &t)).transpose()?
                }
            };
            let Some(value) = value else { continue };
            match f.target {
                FlagTarget::Key(key) => {
                    config[key] = value;
                }
                FlagTarget::WholeConfig => config = value,
                FlagTarget::Nested(outer, inner) => {
                    if !config[outer].is_object() {
                        config[outer] = Value::Object(Map::new());
                    }
                    config[outer][inner] = value;
                }
            }
        }
        let ceiling = match text("ceiling") {
            Some(t) => json_object("ceiling", &t)?,
            None => Value::Null,
        };
        Ok(BindingAdd {
            body: json!({
                "id": text("id"),
                "tenant": text("tenant"),
                "provider": d.id,
                "config": config,
                "ceiling": ceiling,
                "owner": text("owner"),
                "purpose": text("purpose"),
                "max_secret_age_days": m.get_one::<u32>("max-secret-age-days"),
            }),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Subcommand for BindingAdd {
    fn augment_subcommands(cmd: Command) -> Command {
        cmd.subcommands(
            CATALOG
                .iter()
                .filter(|d| d.cli.by_hand)
                .map(|d| binding_add_command(d)),
        )
        .subcommand_required(true)
    }

    fn augment_subcommands_for_update(cmd: Command) -> Command {
        Self::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        by_cli_name(name).is_some_and(|d| d.cli.by_hand)
    }
}

/// `credbroker onboard <provider> --tenant T`, `onboard links`, `onboard revoke ID`.
#[derive(Debug, Clone)]
pub enum Onboard {
    /// Start onboarding a tenant with a provider.
    Provider(OnboardProvider),
    /// List the install links and site expectations still out.
    Links(Conn),
    /// Revoke one (`il_…`, `es_…`).
    Revoke(String, Conn),
}

/// `credbroker onboard <provider> --tenant T`.
#[derive(Debug, Clone)]
pub struct OnboardProvider {
    provider: &'static str,
    tenant: String,
    account: Option<(String, u64)>,
    owner: Option<String>,
    purpose: Option<String>,
    conn: Conn,
}

impl FromArgMatches for Onboard {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let (name, m) = matches
            .subcommand()
            .ok_or_else(|| clap::Error::new(ErrorKind::MissingSubcommand))?;
        match name {
            "links" => return Ok(Onboard::Links(Conn::from_arg_matches(m)?)),
            "revoke" => {
                let id = m.get_one::<String>("id").cloned().unwrap_or_default();
                return Ok(Onboard::Revoke(id, Conn::from_arg_matches(m)?));
            }
            _ => {}
        }
        let d = by_cli_name(name)
            .filter(|d| d.cli.onboard.is_some())
            .ok_or_else(|| clap::Error::new(ErrorKind::InvalidSubcommand))?;
        let account = match d.cli.onboard_pin {
            OnboardPin::Account => match (
                m.get_one::<String>("account-login"),
                m.get_one::<u64>("account-id"),
            ) {
                (Some(login), Some(id)) => Some((login.clone(), *id)),
                _ => return Err(clap::Error::new(ErrorKind::MissingRequiredArgument)),
            },
            OnboardPin::Identifier { long, .. } => match m.get_one::<String>(long) {
                Some(value) => Some((value.clone(), 0)),
                None => return Err(clap::Error::new(ErrorKind::MissingRequiredArgument)),
            },
            OnboardPin::None => None,
        };
        Ok(Onboard::Provider(OnboardProvider {
            provider: d.id,
            tenant: m.get_one::<String>("tenant").cloned().unwrap_or_default(),
            account,
            owner: m.get_one::<String>("owner").cloned(),
            purpose: m.get_one::<String>("purpose").cloned(),
            conn: Conn::from_arg_matches(m)?,
        }))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Subcommand for Onboard {
    fn augment_subcommands(cmd: Command) -> Command {
        cmd.subcommands(CATALOG.iter().filter_map(|d| {
            let about = d.cli.onboard?;
            let creates = d.cli.onboard_pin != OnboardPin::None;
            let mut cmd = Command::new(d.cli.name)
                .arg(
                    Arg::new("tenant")
                        .long("tenant")
                        .required(true)
                        .help("Tenant id."),
                )
                .arg(
                    Arg::new("owner")
                        .long("owner")
                        .required(creates)
                        .requires("purpose")
                        .help("Owner of the binding the onboarding creates (inventory)."),
                )
                .arg(
                    Arg::new("purpose")
                        .long("purpose")
                        .required(creates)
                        .requires("owner")
                        .help("Purpose of that binding (inventory)."),
                );
            if let OnboardPin::Identifier { long, help } = d.cli.onboard_pin {
                cmd = cmd.arg(Arg::new(long).long(long).required(true).help(help));
            }
            if d.cli.onboard_pin == OnboardPin::Account {
                cmd = cmd
                    .arg(
                        Arg::new("account-login")
                            .long("account-login")
                            .required(true)
                            .help("The customer's account (organisation) login the installation must belong to."),
                    )
                    .arg(
                        Arg::new("account-id")
                            .long("account-id")
                            .required(true)
                            .value_parser(clap::value_parser!(u64).range(1..))
                            .help("Its numeric id (GitHub: GET /orgs/LOGIN → id); survives renames."),
                    );
            }
            // `augment_args` sets the command's about from Conn's doc: set ours after it.
            Some(Conn::augment_args(cmd).about(about))
        }))
        .subcommand(Conn::augment_args(Command::new("links")).about(
            "List the install links and Atlassian site expectations still out: id, tenant, \
             account or site, expiry, issuer, and whether they can still complete \
             (status live; dead once their issuer may no longer act; revoked for an opened \
             link revoked, used once the customer's return came back through it: both kept \
             until they expire).",
        ))
        .subcommand(
            Conn::augment_args(
                Command::new("revoke").arg(
                    Arg::new("id")
                        .value_name("ID")
                        .required(true)
                        .help("The link's id (il_… or es_…, from `onboard links`)."),
                ),
            )
            .about(
                "Revoke an install link (il_…) or a site expectation (es_…): the link no \
                 longer opens nor completes; the site binds nothing (kept unclaimed).",
            ),
        )
        .subcommand_required(true)
    }

    fn augment_subcommands_for_update(cmd: Command) -> Command {
        Self::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        matches!(name, "links" | "revoke")
            || by_cli_name(name).is_some_and(|d| d.cli.onboard.is_some())
    }
}

/// Runs `onboard <provider>`, `onboard links` or `onboard revoke ID`.
///
/// # Errors
/// When the broker cannot be reached.
pub fn run_onboard(o: &Onboard) -> Result<ExitCode, String> {
    let o = match o {
        Onboard::Provider(o) => o,
        Onboard::Links(conn) => return call(conn, Method::GET, "/v1/admin/onboarding-links", None),
        Onboard::Revoke(id, conn) => {
            return call(
                conn,
                Method::DELETE,
                &format!(
                    "/v1/admin/onboarding-links/{}",
                    super::admin::path_segment(id)?
                ),
                None,
            )
        }
    };
    call(
        &o.conn,
        Method::POST,
        &format!("/v1/admin/onboard/{}", o.provider),
        Some(
            serde_json::to_vec(&{
                let mut body = match &o.account {
                    Some((login, id)) => {
                        json!({ "tenant": o.tenant, "account": { "login": login, "id": id } })
                    }
                    None => json!({ "tenant": o.tenant }),
                };
                if let (Some(owner), Some(purpose)) = (&o.owner, &o.purpose) {
                    body["owner"] = json!(owner);
                    body["purpose"] = json!(purpose);
                }
                body
            })
            .map_err(|e| e.to_string())?,
        ),
    )
}

/// One `keys <provider> …` action.
#[derive(Debug, Clone)]
enum KeysAction {
    /// The file and the secret field its content is stored under.
    Add(PathBuf, &'static str),
    List,
    Activate(u32),
    Retire(u32),
    RevokeTokens,
    /// Issuer keys: rotate (`--now`: sign at once).
    IssuerRotate(bool),
    /// Issuer keys: retire (`--compromised`: before its tokens expired).
    IssuerRetire(u32, bool),
}

/// The name `keys issuer …` goes by (the broker's own OIDC issuer, not a provider).
const ISSUER: &str = "issuer";

fn issuer_keys_command() -> Command {
    let cmd = Command::new(ISSUER)
        .subcommand_required(true)
        .subcommand(Command::new("list").about(
            "List the issuer's keys: version, kid, phase (next, current, previous, expired, retired), signs_from, published_until.",
        ))
        .subcommand(
            Command::new("rotate")
                .about("Make a new key: published now, signing after [issuer] publish_lead_s.")
                .arg(
                    Arg::new("now")
                        .long("now")
                        .action(ArgAction::SetTrue)
                        .help("Sign with it at once (suspected compromise; inline-JWKS customers fail until they re-pin)."),
                ),
        )
        .subcommand(
            Command::new("retire")
                .about("Destroy a key's material; refused for the current key, for a waiting key within 2 minutes of signing, and for a previous key whose tokens may still be valid unless --compromised.")
                .arg(version_arg())
                .arg(
                    Arg::new("compromised")
                        .long("compromised")
                        .action(ArgAction::SetTrue)
                        .help("Retire before its tokens expired: they stop verifying at once."),
                ),
        );
    Conn::augment_args(cmd)
        .about("The broker's own OIDC issuer keys (RS256, sealed in the store; admin API).")
}

/// `credbroker keys <provider> add|list|activate|retire|revoke-tokens`: the broker's own
/// keys for a provider that signs with them (sealed in the store).
#[derive(Debug, Clone)]
pub struct ProviderKeys {
    provider: &'static str,
    action: KeysAction,
    conn: Conn,
}

fn version_arg() -> Arg {
    Arg::new("version")
        .required(true)
        .value_parser(clap::value_parser!(u32))
        .help("Key version (from `keys <provider> list`).")
}

fn keys_command(d: &ProviderDescriptor, keys: &KeysCli) -> Command {
    let mut cmd = Command::new(d.cli.name)
        .subcommand_required(true)
        .subcommand(
            Command::new("add")
                .about("Store a new key as staged; read from a file, never the command line.")
                .arg(
                    Arg::new("from-file")
                        .long("from-file")
                        .required(true)
                        .value_parser(clap::value_parser!(PathBuf))
                        .help(keys.file_help),
                )
                .arg(
                    Arg::new("as")
                        .long("as")
                        .value_parser(
                            keys.materials
                                .iter()
                                .map(|(name, _)| *name)
                                .collect::<Vec<_>>(),
                        )
                        .default_value(keys.materials.first().map_or("", |(n, _)| *n))
                        .help("What the file holds."),
                ),
        )
        .subcommand(Command::new("list").about("List keys: version, state, fingerprint (never the key)."))
        .subcommand(
            Command::new("activate")
                .about("Make a staged key active: it becomes the preferred signing key; other active keys stay as fallbacks until retired.")
                .arg(version_arg()),
        )
        .subcommand(
            Command::new("retire")
                .about("Stop using a key and destroy its sealed material.")
                .arg(version_arg()),
        );
    if d.cli.revoke_tokens {
        cmd = cmd.subcommand(Command::new("revoke-tokens").about(
            "Revoke upstream every credential of this provider the answering replica minted that is still valid (cached, or handed out and no longer cached) and drop the cached ones, so the next resolves mint fresh ones.",
        ));
    }
    Conn::augment_args(cmd).about(format!(
        "The broker's own {} keys (platform secret, sealed in the store; admin API).",
        d.id
    ))
}

impl FromArgMatches for ProviderKeys {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let (name, m) = matches
            .subcommand()
            .ok_or_else(|| clap::Error::new(ErrorKind::MissingSubcommand))?;
        if name == ISSUER {
            let (action, a) = m
                .subcommand()
                .ok_or_else(|| clap::Error::new(ErrorKind::MissingSubcommand))?;
            let action = match action {
                "list" => KeysAction::List,
                "rotate" => KeysAction::IssuerRotate(a.get_flag("now")),
                "retire" => KeysAction::IssuerRetire(
                    a.get_one::<u32>("version")
                        .copied()
                        .ok_or_else(|| clap::Error::new(ErrorKind::MissingRequiredArgument))?,
                    a.get_flag("compromised"),
                ),
                _ => return Err(clap::Error::new(ErrorKind::InvalidSubcommand)),
            };
            return Ok(ProviderKeys {
                provider: ISSUER,
                action,
                conn: Conn::from_arg_matches(m)?,
            });
        }
        let d = by_cli_name(name).ok_or_else(|| clap::Error::new(ErrorKind::InvalidSubcommand))?;
        let keys = d
            .cli
            .keys
            .ok_or_else(|| clap::Error::new(ErrorKind::InvalidSubcommand))?;
        let (action, a) = m
            .subcommand()
            .ok_or_else(|| clap::Error::new(ErrorKind::MissingSubcommand))?;
        let version = || {
            a.get_one::<u32>("version")
                .copied()
                .ok_or_else(|| clap::Error::new(ErrorKind::MissingRequiredArgument))
        };
        let action = match action {
            "add" => {
                let chosen = a.get_one::<String>("as").cloned().unwrap_or_default();
                let field = keys
                    .materials
                    .iter()
                    .find(|(name, _)| *name == chosen)
                    .map(|(_, field)| *field)
                    .ok_or_else(|| clap::Error::new(ErrorKind::InvalidValue))?;
                KeysAction::Add(
                    a.get_one::<PathBuf>("from-file")
                        .cloned()
                        .ok_or_else(|| clap::Error::new(ErrorKind::MissingRequiredArgument))?,
                    field,
                )
            }
            "list" => KeysAction::List,
            "activate" => KeysAction::Activate(version()?),
            "retire" => KeysAction::Retire(version()?),
            "revoke-tokens" => KeysAction::RevokeTokens,
            _ => return Err(clap::Error::new(ErrorKind::InvalidSubcommand)),
        };
        Ok(ProviderKeys {
            provider: d.id,
            action,
            conn: Conn::from_arg_matches(m)?,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Subcommand for ProviderKeys {
    fn augment_subcommands(cmd: Command) -> Command {
        cmd.subcommands(
            CATALOG
                .iter()
                .filter_map(|d| d.cli.keys.as_ref().map(|k| keys_command(d, k))),
        )
        .subcommand(issuer_keys_command())
    }

    fn augment_subcommands_for_update(cmd: Command) -> Command {
        Self::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        name == ISSUER || by_cli_name(name).is_some_and(|d| d.cli.keys.is_some())
    }
}

/// Runs `keys <provider> …`.
///
/// # Errors
/// When the key file cannot be read or the broker cannot be reached.
pub fn run_provider_keys(k: &ProviderKeys) -> Result<ExitCode, String> {
    if k.provider == ISSUER {
        let base = "/v1/admin/issuer/keys";
        return match &k.action {
            KeysAction::IssuerRotate(now) => call(
                &k.conn,
                Method::POST,
                base,
                Some(serde_json::json!({ "now": now }).to_string().into_bytes()),
            ),
            KeysAction::IssuerRetire(v, compromised) => call(
                &k.conn,
                Method::POST,
                &format!("{base}/{v}/retire"),
                Some(
                    serde_json::json!({ "compromised": compromised })
                        .to_string()
                        .into_bytes(),
                ),
            ),
            _ => call(&k.conn, Method::GET, base, None),
        };
    }
    let base = format!("/v1/admin/keys/{}", k.provider);
    match &k.action {
        KeysAction::Add(file, field) => {
            // Read into buffers wiped as they grow (a pipe, `/dev/stdin`, has no size).
            let material = std::fs::File::open(file)
                .and_then(|f| crate::keys::read_wiped(f, crate::keys::MAX_SECRET_INPUT))
                .map_err(|e| format!("{}: {e}", file.display()))?;
            let text = std::str::from_utf8(&material)
                .map_err(|_| format!("{}: not UTF-8 text", file.display()))?;
            let mut fields = SecretFields::new();
            fields.insert(*field, secrecy::SecretString::from(text));
            let inner = fields.to_json_zeroizing();
            let mut body = Zeroizing::new(Vec::with_capacity(inner.len() + 12));
            body.extend_from_slice(b"{\"fields\":");
            body.extend_from_slice(&inner);
            body.push(b'}');
            call(
                &k.conn,
                Method::POST,
                &base,
                Some(std::mem::take(&mut *body)),
            )
        }
        KeysAction::List => call(&k.conn, Method::GET, &base, None),
        KeysAction::Activate(v) => call(
            &k.conn,
            Method::POST,
            &format!("{base}/{v}/activate"),
            Some(b"{}".to_vec()),
        ),
        KeysAction::Retire(v) => call(
            &k.conn,
            Method::POST,
            &format!("{base}/{v}/retire"),
            Some(b"{}".to_vec()),
        ),
        KeysAction::IssuerRotate(_) | KeysAction::IssuerRetire(..) => {
            Err("rotate and retire --compromised are issuer key actions".into())
        }
        KeysAction::RevokeTokens => call(
            &k.conn,
            Method::POST,
            &format!("/v1/admin/providers/{}/revoke-cached", k.provider),
            Some(b"{}".to_vec()),
        ),
    }
}
