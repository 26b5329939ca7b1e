//! The production configuration file (`credbroker serve --config FILE`), TOML.
//!
//! Unknown keys are errors, so a misspelt limit never silently falls back to a default.
//! Relative paths are resolved against the directory of the config file. Every key is
//! documented in README.md ("Configuration").

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod audit;
mod cache;
mod governance;
mod health;
mod keys;
mod limits;
mod public;
mod tls;
pub use audit::AuditSettings;
pub use cache::CacheSettings;
pub use governance::{InventorySettings, WebhookSettings};
pub use health::HealthSettings;
pub use keys::KeySettings;
pub use limits::Limits;
pub use public::PublicSettings;
pub use tls::{StaleCrl, TlsSettings, DEFAULT_CRL_CHECK_S};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory holding `store/`, `audit/` and (by default) `keys/`.
    pub data_dir: PathBuf,
    /// mTLS listener address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// SPIFFE trust domain of worker and operator certificates.
    pub trust_domain: String,
    /// Listener certificates and client trust.
    pub tls: TlsSettings,
    /// Key material locations.
    #[serde(default)]
    pub keys: KeySettings,
    /// Connection and request limits.
    #[serde(default)]
    pub limits: Limits,
    /// Audit log settings.
    #[serde(default)]
    pub audit: AuditSettings,
    /// Token cache and minting.
    #[serde(default)]
    pub cache: CacheSettings,
    /// Pasted secret versions: staged rotation.
    #[serde(default)]
    pub secrets: SecretSettings,
    /// Logging.
    #[serde(default)]
    pub log: LogSettings,
    /// The credential inventory.
    #[serde(default)]
    pub inventory: InventorySettings,
    /// Webhook secrets of connector instances.
    #[serde(default)]
    pub webhooks: WebhookSettings,
    /// The store backend.
    #[serde(default)]
    pub store: crate::store::StoreSettings,
    /// Federated providers: `[providers.<id>]` enables provider `<id>` with the settings
    /// its module documents (the providers crate parses them; unknown ids are errors).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub providers: BTreeMap<String, toml::Value>,
    /// The public callback listener (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<PublicSettings>,
    /// The loopback health listener (optional): plain HTTP `/healthz` and `/readyz` for
    /// `credbroker health` and container health checks, no certificate needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSettings>,
    /// The broker's own OIDC issuer (optional): discovery and JWKS on the public listener,
    /// assertions for GCP WIF, AWS web identity and an Entra federated credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<crate::issuer::IssuerSettings>,
    /// The directory of the config file: relative paths, including those in provider
    /// sections, are resolved against it.
    #[serde(skip)]
    pub config_dir: PathBuf,
    /// The file this config was loaded from (`None` for dev mode's generated config):
    /// SIGHUP re-reads it.
    #[serde(skip)]
    pub source_file: Option<PathBuf>,
}

/// `[secrets]`: staged rotation of pasted secrets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretSettings {
    /// How long a superseded version is kept (for rollback; never served) before the
    /// broker destroys it, seconds.
    pub superseded_overlap_s: u64,
    /// How often the broker forgets what has expired (install states, webhook delivery ids,
    /// superseded secret versions past the overlap), seconds.
    pub gc_interval_s: u64,
}

impl Default for SecretSettings {
    fn default() -> Self {
        SecretSettings {
            superseded_overlap_s: 7 * 86_400,
            gc_interval_s: 600,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// Format.
    pub format: LogFormat,
    /// `tracing` filter directive (overridden by `RUST_LOG`).
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}

/// A configuration problem, with the file it came from.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// A config with every default for `data_dir`: what dev mode writes, and what offline
    /// commands use for a data directory without a config file. Paths are taken as given.
    pub fn with_defaults(
        data_dir: PathBuf,
        listen: SocketAddr,
        trust_domain: &str,
        tls: TlsSettings,
    ) -> Config {
        Config {
            data_dir,
            listen,
            trust_domain: trust_domain.to_owned(),
            tls,
            keys: KeySettings::default(),
            limits: Limits::default(),
            audit: AuditSettings::default(),
            cache: CacheSettings::default(),
            secrets: SecretSettings::default(),
            log: LogSettings::default(),
            inventory: InventorySettings::default(),
            webhooks: WebhookSettings::default(),
            store: crate::store::StoreSettings::default(),
            providers: BTreeMap::new(),
            public: None,
            health: None,
            issuer: None,
            config_dir: PathBuf::new(),
            source_file: None,
        }
    }

    /// Reads and validates a config file.
    ///
    /// # Errors
    /// When the file is unreadable, not valid TOML, has unknown keys or invalid values.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        let mut config: Config = toml::from_str(&text).map_err(|e| {
            // The parser's own text quotes the offending line, which may hold a secret (a
            // database URL with its password): only its position and message are kept.
            let line = e
                .span()
                .and_then(|span| text.get(..span.start))
                .map(|before| {
                    let number = before.matches('\n').count() + 1;
                    // The key (left of `=`) is named, never the value; a line that is
                    // not `key = …` (inside a multi-line string, a URL's `sslmode=`) names
                    // nothing.
                    let key = text
                        .lines()
                        .nth(number - 1)
                        .and_then(|l| l.split_once('='))
                        .map(|(k, _)| k.trim())
                        .filter(|k| {
                            !k.is_empty()
                                && k.bytes().all(|b| {
                                    b.is_ascii_alphanumeric()
                                        || matches!(b, b'_' | b'-' | b'.' | b' ')
                                })
                        })
                        .map(|k| format!(" ({k} = …)"))
                        .unwrap_or_default();
                    format!(", line {number}{key}")
                })
                .unwrap_or_default();
            ConfigError(format!(
                "{}{line}: {}",
                path.display(),
                without_values(e.message())
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.validate()?;
        config.source_file = Some(path.to_owned());
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| credbroker_providers::resolve_path(base, p);
        self.config_dir = base.to_owned();
        fix(&mut self.data_dir);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        fix(&mut self.tls.client_ca);
        for p in [
            self.store.path.as_mut(),
            self.store.ca_file.as_mut(),
            self.tls.crl.as_mut(),
            self.keys.kek_file.as_mut(),
            self.keys.audit_key_file.as_mut(),
            self.keys.audit_public_key_file.as_mut(),
            self.keys.fingerprint_key_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        if let Some(public) = self.public.as_mut() {
            fix(&mut public.cert);
            fix(&mut public.key);
        }
    }

    /// Checks values that TOML types alone do not constrain.
    ///
    /// # Errors
    /// On an invalid trust domain, a zero limit or a `[health]` listener off loopback.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let td = &self.trust_domain;
        let td_ok = !td.is_empty()
            && td.len() <= 255
            && td.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            });
        if !td_ok {
            return Err(ConfigError(format!(
                "trust_domain {td:?} must be lower-case letters, digits, '.', '-', '_'"
            )));
        }
        if let Some(issuer) = &self.issuer {
            issuer.validate().map_err(ConfigError)?;
        }
        self.limits.validate()?;
        self.cache.validate()?;
        self.tls.validate()?;
        if let Some(p) = &self.public {
            p.validate()?;
        }
        if let Some(h) = &self.health {
            h.validate()?;
        }
        if !(1..=1_048_576).contains(&self.store.cache_mib) {
            return Err(ConfigError(
                "store.cache_mib must be between 1 and 1048576 (MiB)".into(),
            ));
        }
        if !(1..=4096).contains(&self.audit.segment_mib) {
            return Err(ConfigError(
                "audit.segment_mib must be between 1 and 4096 (MiB)".into(),
            ));
        }
        // Bounded: together they are the unsigned tail `audit verify` accepts (its
        // `max_unanchored`), so a config could otherwise let a whole segment go unsigned.
        if !(1..=4096).contains(&self.audit.max_batch)
            || !(1..=100_000).contains(&self.audit.checkpoint_every_records)
        {
            return Err(ConfigError(
                "audit.max_batch must be between 1 and 4096 and audit.checkpoint_every_records between 1 and 100000".into(),
            ));
        }
        if let Some(id) = self
            .providers
            .keys()
            .find(|id| credbroker_providers::descriptor(id).is_none())
        {
            return Err(ConfigError(format!(
                "[providers.{id}]: no such provider in this build (known: {})",
                credbroker_providers::CATALOG
                    .iter()
                    .map(|d| d.id)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        // A typo must not keep a rotated-out webhook secret verifying for years, nor take
        // every body or none.
        let w = &self.webhooks;
        if !(1..=30 * 86_400).contains(&w.overlap_s)
            || !(1..=1_000).contains(&w.reveals_per_hour)
            || !(1..=16 * 1024 * 1024).contains(&w.max_body_bytes)
            || w.failure_logs_per_minute > 10_000
        {
            return Err(ConfigError(
                "[webhooks]: overlap_s must be between 1 and 2592000 (30 days), reveals_per_hour between 1 and 1000, max_body_bytes between 1 and 16777216, failure_logs_per_minute at most 10000".into(),
            ));
        }
        if self.keys.kek_file.is_some() && self.keys.kek_env.is_some() {
            return Err(ConfigError(
                "set keys.kek_file or keys.kek_env, not both".into(),
            ));
        }
        // Each names a variable, and errors quote that name: a value put there by mistake
        // (the database URL with its password, the keyring JSON) must be refused unquoted.
        for (setting, name) in [
            ("[store] url_env", &self.store.url_env),
            ("[keys] kek_env", &self.keys.kek_env),
        ] {
            if name.as_deref().is_some_and(|n| !env_var_name(n)) {
                return Err(ConfigError(format!(
                    "{setting} must be the name of an environment variable (a letter or '_', then letters, digits, '_', '.' and '-'; at most 128), not its value; the value was not printed"
                )));
            }
        }
        Ok(())
    }

    /// The sled store directory (`[store] path`, default `<data_dir>/store`).
    pub fn store_dir(&self) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("store"))
    }

    /// `<data_dir>/credbroker.pid`: the running daemon's process id (`credbroker reload`).
    pub fn pid_file(&self) -> PathBuf {
        self.data_dir.join("credbroker.pid")
    }

    /// `<data_dir>/audit`
    pub fn audit_dir(&self) -> PathBuf {
        self.data_dir.join("audit")
    }

    /// Timeouts as durations.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.handshake_timeout_ms)
    }
}

/// Whether `name` can be an environment variable's name as a config names one: a letter
/// or `_`, then letters, digits, `_`, `.` and `-` (which systemd and Kubernetes allow), at
/// most 128 bytes. A URL (`:`, `/`) or a keyring's JSON (`{`, `"`) is none.
fn env_var_name(name: &str) -> bool {
    name.len() <= 128
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A TOML or serde error message with the values it quotes left out: `unknown variant
/// `…``, `string "…"` (a URL with its password put where another value belongs). The
/// expected values and the key names stay. A quoted string ends at its first unescaped
/// `"` (serde escapes the value's own); a variant's name, printed as it is, where serde's
/// "`, expected" (or "`, there are no variants") follows it (it may hold backticks itself).
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    loop {
        let variant = rest.find("unknown variant `").map(|i| (i, true));
        let string = rest.find("string \"").map(|i| (i, false));
        let next = match (variant, string) {
            (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        let Some((i, is_variant)) = next else {
            out.push_str(rest);
            return out;
        };
        let open = if is_variant {
            "unknown variant `"
        } else {
            "string \""
        };
        let after = i + open.len();
        out.push_str(&rest[..after]);
        out.push('…');
        let value = &rest[after..];
        let end = if is_variant {
            value
                .rfind("`, expected")
                .or_else(|| value.rfind("`, there are no variants"))
                .map(|e| (e, 1))
        } else {
            let mut escaped = false;
            value
                .char_indices()
                .find(|&(_, c)| {
                    let closes = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                })
                .map(|(e, _)| (e, 1))
        };
        match end {
            Some((e, close)) => {
                out.push_str(&value[e..e + close]);
                rest = &value[e + close..];
            }
            None => return out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("c.toml");
        std::fs::write(&p, body).unwrap();
        p
    }

    const MIN: &str = r#"
data_dir = "data"
trust_domain = "example.org"
[tls]
cert = "s.crt"
key = "s.key"
client_ca = "ca.crt"
"#;

    #[test]
    fn minimal_config_gets_defaults_and_absolute_paths() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&write(dir.path(), MIN)).unwrap();
        assert_eq!(c.limits.max_body_bytes, 65536);
        assert!(c.data_dir.is_absolute());
        assert_eq!(c.kek_file(), dir.path().join("data/keys/kek.json"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bad = format!("{MIN}\n[limits]\nmax_conections = 5\n");
        assert!(Config::load(&write(dir.path(), &bad)).is_err());
        let bad = MIN.replace("example.org", "Example.org");
        assert!(Config::load(&write(dir.path(), &bad)).is_err());
        let bad = format!("{MIN}\n[limits]\nmax_body_bytes = 0\n");
        assert!(Config::load(&write(dir.path(), &bad)).is_err());
        // Far beyond a day it would also overflow the watcher's first deadline.
        let bad = MIN.replace(
            "ca.crt\"",
            "ca.crt\"\ncrl_check_interval_s = 18446744073709551615",
        );
        let err = Config::load(&write(dir.path(), &bad)).unwrap_err().0;
        assert!(err.contains("tls.crl_check_interval_s"), "{err}");
        let ok = MIN.replace("ca.crt\"", "ca.crt\"\ncrl_check_interval_s = 86400");
        assert!(Config::load(&write(dir.path(), &ok)).is_ok());
        let public = "\n[public]\nlisten = \"127.0.0.1:0\"\ncert = \"p.crt\"\nkey = \"p.key\"\n";
        for (ttl, good) in [(0, false), (1, true), (86_400, true), (86_401, false)] {
            let c = format!("{MIN}{public}state_ttl_s = {ttl}\n");
            let got = Config::load(&write(dir.path(), &c));
            assert_eq!(got.is_ok(), good, "state_ttl_s = {ttl}: {:?}", got.err());
        }
    }

    /// A misspelt key is an error in every section, never a setting silently left at its
    /// default (`[tls] crls = …` would turn revocation off): each section loads as given,
    /// and fails with one unknown key added.
    #[test]
    fn every_section_refuses_a_key_it_does_not_know() {
        let dir = tempfile::tempdir().unwrap();
        let public = "listen = \"127.0.0.1:0\"\ncert = \"p.crt\"\nkey = \"p.key\"\n";
        let sections: &[(&str, &str)] = &[
            ("keys", ""),
            ("limits", ""),
            ("audit", ""),
            ("cache", ""),
            ("secrets", ""),
            ("log", ""),
            ("inventory", ""),
            ("webhooks", ""),
            ("store", ""),
            ("public", public),
            ("health", "listen = \"127.0.0.1:9090\"\n"),
        ];
        let load = |text: &str| Config::load(&write(dir.path(), text));
        for (section, body) in sections {
            let good = format!("{MIN}\n[{section}]\n{body}");
            assert!(load(&good).is_ok(), "[{section}]: {:?}", load(&good).err());
            let bad = format!("{good}no_such_key = 1\n");
            let err = load(&bad).expect_err(section).0;
            assert!(err.contains("no_such_key"), "[{section}]: {err}");
        }
        // [tls] is in MIN; [issuer] needs the public listener.
        let bad = MIN.replace("[tls]\n", "[tls]\ncrls = \"crl.pem\"\n");
        assert!(load(&bad).expect_err("tls").0.contains("crls"));
        let issuer =
            format!("{MIN}\n[public]\n{public}\n[issuer]\nurl = \"https://issuer.example.org\"\n");
        assert!(load(&issuer).is_ok(), "{:?}", load(&issuer).err());
        let bad = format!("{issuer}no_such_key = 1\n");
        assert!(load(&bad).expect_err("issuer").0.contains("no_such_key"));
    }

    #[test]
    fn a_config_error_never_quotes_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let bad = format!(
            "{MIN}\n[store]\nbackend = \"postgres\"\nurl = \"postgresql://u:secret-pw@db/x\" trailing\n"
        );
        let err = Config::load(&write(dir.path(), &bad)).unwrap_err().0;
        assert!(!err.contains("secret-pw"), "{err}");
        assert!(err.contains("line"), "{err}");
        // An error inside a multi-line string points at a line of the value itself: a URL
        // holds `=` (`sslmode=`), and what is left of it is not a key to name.
        let bad = format!(
            "{MIN}\n[store]\nbackend = \"postgres\"\nurl = \"\"\"\npostgresql://u:secret\\spw@db/x?sslmode=require\n\"\"\"\n"
        );
        let err = Config::load(&write(dir.path(), &bad)).unwrap_err().0;
        assert!(!err.contains("secret"), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }

    /// `url_env` and `kek_env` name a variable; a value put there (the URL itself, the
    /// keyring JSON) is refused without being quoted.
    #[test]
    fn a_value_in_place_of_a_variable_name_is_refused_unquoted() {
        let dir = tempfile::tempdir().unwrap();
        for (section, value) in [
            (
                "[store]\nbackend = \"postgres\"\nurl_env",
                "postgresql://u:secret-pw@db/x?sslmode=require",
            ),
            (
                "[keys]\nkek_env",
                "{\\\"active\\\": 1, \\\"keys\\\": {\\\"1\\\": \\\"secret-kek\\\"}}",
            ),
        ] {
            let bad = format!("{MIN}\n{section} = \"{value}\"\n");
            let err = Config::load(&write(dir.path(), &bad)).unwrap_err().0;
            assert!(!err.contains("secret"), "{err}");
            assert!(
                err.contains("must be the name of an environment variable"),
                "{err}"
            );
        }
        let good = format!("{MIN}\n[keys]\nkek_env = \"CREDBROKER_KEK_2\"\n");
        assert!(Config::load(&write(dir.path(), &good)).is_ok());
        let good = format!("{MIN}\n[keys]\nkek_env = \"credbroker.kek-2\"\n");
        assert!(Config::load(&write(dir.path(), &good)).is_ok());
    }

    /// A value put where another kind belongs is not quoted by the parser's message either
    /// (an enum's unknown variant, a string where a number goes); what was expected is.
    #[test]
    fn a_misplaced_value_is_not_quoted() {
        let dir = tempfile::tempdir().unwrap();
        for (section, expected) in [
            ("[store]\nbackend", "expected `sled` or `postgres`"),
            ("[store]\npool_size", "expected"),
            ("[log]\nlevel = \"info\"\nformat", "expected"),
        ] {
            let bad =
                format!("{MIN}\n{section} = \"postgresql://u:secret-pw@db/x?sslmode=require\"\n");
            let err = Config::load(&write(dir.path(), &bad)).unwrap_err().0;
            assert!(!err.contains("secret-pw"), "{err}");
            assert!(err.contains(expected), "{err}");
        }
        assert_eq!(
            without_values("unknown variant `a:b`, expected `x`"),
            "unknown variant `…`, expected `x`"
        );
        assert_eq!(
            without_values("invalid type: string \"p\", expected u32"),
            "invalid type: string \"…\", expected u32"
        );
        assert_eq!(without_values("string \"unterminated"), "string \"…");
        // The value's own quotes and backticks end nothing.
        assert_eq!(
            without_values(r#"invalid type: string "pa\"ss:w`d@db", expected u32"#),
            r#"invalid type: string "…", expected u32"#
        );
        assert_eq!(
            without_values("unknown variant `a`, b`, expected `sled` or `postgres`"),
            "unknown variant `…`, expected `sled` or `postgres`"
        );
        assert_eq!(
            without_values("unknown variant `x`, expected one of `a`, `b`, `c`"),
            "unknown variant `…`, expected one of `a`, `b`, `c`"
        );
    }

    #[test]
    fn the_health_listener_must_be_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let ok = format!("{MIN}\n[health]\nlisten = \"127.0.0.1:9090\"\n");
        let c = Config::load(&write(dir.path(), &ok)).unwrap();
        assert_eq!(
            c.health.map(|h| h.listen),
            Some(SocketAddr::from(([127, 0, 0, 1], 9090)))
        );
        let bad = format!("{MIN}\n[health]\nlisten = \"0.0.0.0:9090\"\n");
        let err = Config::load(&write(dir.path(), &bad)).unwrap_err().0;
        assert!(
            err.contains("[health] listen 0.0.0.0:9090 must be a loopback address"),
            "{err}"
        );
        let unknown = format!("{MIN}\n[health]\nlisten = \"127.0.0.1:9090\"\npath = \"/x\"\n");
        assert!(Config::load(&write(dir.path(), &unknown)).is_err());
    }

    #[test]
    fn every_relative_path_is_resolved_against_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let body = format!(
            r#"{MIN}
[public]
listen = "127.0.0.1:0"
cert = "pub.crt"
key = "./pub.key"
[providers.aws_assume_role]
region = "us-east-1"
vendor_account_id = "111111111111"
ceiling_file = "policies/aws.json"
[providers.github_app]
app_id = 1
install_url = "https://github.com/apps/x/installations/new"
webhook_secret_file = "gh/webhook.secret"
private_key_file = "gh/app.pem"
ceiling_file = "policies/github.json"
"#
        );
        let c = Config::load(&write(dir.path(), &body)).unwrap();
        let public = c.public.as_ref().unwrap();
        assert_eq!(public.cert, dir.path().join("pub.crt"));
        assert_eq!(public.key, dir.path().join("pub.key"));
        // Provider sections are resolved by the providers themselves, against config_dir.
        assert_eq!(c.config_dir, dir.path());
        let aws = c.providers.get("aws_assume_role").unwrap();
        let mut ceiling = PathBuf::from(aws["ceiling_file"].as_str().unwrap());
        credbroker_providers::resolve_path(&c.config_dir, &mut ceiling);
        assert_eq!(ceiling, dir.path().join("policies/aws.json"));
        assert_eq!(c.tls.client_ca, dir.path().join("ca.crt"));
    }
}
