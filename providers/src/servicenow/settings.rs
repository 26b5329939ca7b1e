//! `[providers.servicenow_oauth]`, the ceiling (policies/servicenow.json), a binding's
//! configuration and the catalog entry.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::ServiceNow;
use crate::registry::{
    resolve_path, Availability, BuildFuture, CatalogEntry, CeilingMode, CliSpec, ConfigFlag,
    CredentialSource, FlagTarget, FlagValue, OnboardPin, ProviderDescriptor,
};
use crate::Provider;

/// The registry id.
pub const ID: &str = "servicenow_oauth";

/// Platform-side settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNowSettings {
    /// The ceiling file (policies/servicenow.json).
    pub ceiling_file: std::path::PathBuf,
    /// Instance hosts allowed besides `*.service-now.com` (`host` or `host:port`): a
    /// customer's custom domain, or a local test double. Only these may be IP literals,
    /// loopback or link-local, and only loopback ones may be plain http. A name (a custom
    /// domain, `localhost` too) must still resolve to public addresses, checked on every
    /// connection: a local test double is named by its address literal.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Per-request deadline, milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_timeout() -> u64 {
    5000
}

/// What a ServiceNow bearer may do: its application user's roles and the tables the probe
/// may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceNowCeiling {
    /// Roles the OAuth Application User may hold.
    pub roles: BTreeSet<String>,
    /// Tables workers may read (the probe reads the first).
    pub tables: BTreeSet<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CeilingFile {
    #[serde(default)]
    description: Option<String>,
    roles: Vec<String>,
    tables: Vec<String>,
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 80
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

impl ServiceNowCeiling {
    /// Parses the policy file's shape.
    ///
    /// # Errors
    /// When malformed, empty, or a name is not a ServiceNow role/table name; `admin` and
    /// `security_admin` are never allowed.
    pub fn from_value(v: &Value) -> Result<ServiceNowCeiling, String> {
        let f: CeilingFile =
            serde_json::from_value(v.clone()).map_err(|e| format!("servicenow ceiling: {e}"))?;
        let _ = f.description;
        for n in f.roles.iter().chain(f.tables.iter()) {
            if !name_ok(n) {
                return Err(format!(
                    "{:?} is not a ServiceNow role or table name",
                    n.chars().take(80).collect::<String>()
                ));
            }
        }
        if let Some(r) = f.roles.iter().find(|r| {
            matches!(
                r.as_str(),
                "admin" | "security_admin" | "maint" | "oauth_admin"
            )
        }) {
            return Err(format!("role {r} administers the instance"));
        }
        if f.tables.is_empty() {
            return Err("the ceiling must allow at least one table".into());
        }
        Ok(ServiceNowCeiling {
            roles: f.roles.into_iter().collect(),
            tables: f.tables.into_iter().collect(),
        })
    }

    /// Checks `self` lies within `outer`.
    ///
    /// # Errors
    /// Naming what exceeds it.
    pub fn within(&self, outer: &ServiceNowCeiling) -> Result<(), String> {
        if let Some(r) = self.roles.difference(&outer.roles).next() {
            return Err(format!("role {r} is outside policies/servicenow.json"));
        }
        if let Some(t) = self.tables.difference(&outer.tables).next() {
            return Err(format!("table {t} is outside policies/servicenow.json"));
        }
        Ok(())
    }

    /// As JSON.
    pub fn to_value(&self) -> Value {
        json!({ "roles": self.roles, "tables": self.tables })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    instance_url: String,
    #[serde(default)]
    scope: Option<String>,
}

/// Whether `host` is an IP literal that is loopback, link-local, private or unspecified.
fn special_ip(host: &str) -> Option<bool> {
    let ip: std::net::IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    // Every IP literal needs the allow-list; only a loopback one may be plain http.
    Some(ip.is_loopback())
}

/// Parses a binding's configuration: the instance URL (https; host `*.service-now.com` or
/// allow-listed; IP literals, loopback and link-local only when allow-listed; plain http
/// only to an allow-listed loopback host) and the optional scope. Returns the URL without a
/// trailing slash.
///
/// # Errors
/// Naming what is wrong.
pub fn parse_config(
    config: &Value,
    allowed: &[String],
) -> Result<(String, Option<String>), String> {
    let c: ConfigFile = serde_json::from_value(config.clone())
        .map_err(|e| format!("servicenow_oauth config: {e}"))?;
    let url = c.instance_url.trim_end_matches('/');
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "instance_url is not a URL".to_owned())?;
    let host = uri
        .host()
        .ok_or("instance_url has no host")?
        .to_ascii_lowercase();
    if !uri.path().trim_end_matches('/').is_empty() || uri.query().is_some() {
        return Err(
            "instance_url must be the instance's origin (https://NAME.service-now.com)".into(),
        );
    }
    if url.contains('@') {
        return Err("instance_url must not carry credentials".into());
    }
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
        .unwrap_or_default();
    let listed = allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&authority) || a.eq_ignore_ascii_case(&host));
    let servicenow = host.strip_suffix(".service-now.com").is_some_and(|name| {
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    let ip = special_ip(&host);
    if !listed && (!servicenow || ip.is_some() || host == "localhost") {
        return Err(format!(
            "instance host {host} is not *.service-now.com nor on [providers.{ID}] allowed_hosts"
        ));
    }
    let scheme = match uri.scheme_str() {
        Some("https") => "https",
        Some("http") if listed && (ip == Some(true) || host == "localhost") => "http",
        _ => return Err("instance_url must be https".into()),
    };
    if let Some(s) = &c.scope {
        if s.len() > 200 || !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err("scope must be printable, at most 200 characters".into());
        }
    }
    // The origin as the broker writes it (`HTTPS://ACME.service-now.com` is the same
    // instance): lower-case scheme and authority.
    Ok((format!("{scheme}://{authority}"), c.scope))
}

fn build(section: toml::Value, base: &std::path::Path) -> BuildFuture {
    let built = section
        .try_into::<ServiceNowSettings>()
        .map_err(|e| format!("{e}"))
        .and_then(|mut settings| {
            resolve_path(base, &mut settings.ceiling_file);
            ServiceNow::new(settings)
        })
        .map(|p| Arc::new(p) as Arc<dyn Provider>);
    Box::pin(async move { built })
}

/// The catalog entry.
pub(crate) const DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    id: ID,
    availability: Availability::Configured(build),
    cli: CliSpec {
        name: "servicenow",
        about: "A customer's ServiceNow instance reached with a pasted OAuth client (set client_id and client_secret with `credbroker secret set`).",
        binding_flags: &[
            ConfigFlag {
                long: "instance-url",
                help: "The instance's origin, https://NAME.service-now.com.",
                value: FlagValue::Text,
                target: FlagTarget::Key("instance_url"),
                required: true,
            },
            ConfigFlag {
                long: "scope",
                help: "OAuth scope to request (optional).",
                value: FlagValue::Text,
                target: FlagTarget::Key("scope"),
                required: false,
            },
        ],
        by_hand: true,
        onboard: None,
        onboard_pin: OnboardPin::None,
        keys: None,
        revoke_tokens: false,
    },
    template_lint: None,
    catalog: CatalogEntry {
        max_secret_age_days: Some(90),
        description: "An OAuth bearer for a customer's ServiceNow instance, minted with the client-credentials grant from a pasted OAuth client; the client secret never leaves the broker.",
        returns: "kind `servicenow_oauth`: access_token",
        source: CredentialSource::PastedSecret,
        ceiling_mode: CeilingMode::Fixed,
        policy_file: Some("policies/servicenow.json"),
        artifacts: &["onboarding-templates/servicenow/README.md"],
        runbooks: &[
            "runbooks/intake-link.md",
            "runbooks/pasted-secret-rotation.md",
            "runbooks/pasted-secret-leak.md",
        ],
        clients: &["credbroker client token", "POST /v1/resolve (mTLS)"],
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_hosts() {
        let none: Vec<String> = Vec::new();
        assert!(parse_config(
            &json!({"instance_url": "https://acme.service-now.com/"}),
            &none
        )
        .is_ok());
        for bad in [
            "http://acme.service-now.com",
            "https://service-now.com",
            "https://acme.service-now.com.evil.example",
            "https://evil.example/acme.service-now.com",
            "https://127.0.0.1",
            "https://169.254.169.254",
            "https://[::1]",
            "https://localhost",
            "https://acme.service-now.com/api",
            "https://user@acme.service-now.com",
            "ftp://acme.service-now.com",
        ] {
            assert!(
                parse_config(&json!({"instance_url": bad}), &none).is_err(),
                "{bad}"
            );
        }
        // The origin comes back as the broker writes it.
        for same in [
            "HTTPS://Acme.Service-Now.com/",
            "httpS://acme.service-now.com",
        ] {
            let (origin, _) = parse_config(&json!({ "instance_url": same }), &none).unwrap();
            assert_eq!(origin, "https://acme.service-now.com", "{same}");
        }
        let listed = vec!["127.0.0.1:8443".to_owned(), "snow.acme.example".to_owned()];
        assert!(parse_config(&json!({"instance_url": "http://127.0.0.1:8443"}), &listed).is_ok());
        assert!(parse_config(
            &json!({"instance_url": "https://snow.acme.example"}),
            &listed
        )
        .is_ok());
        assert!(parse_config(
            &json!({"instance_url": "http://snow.acme.example"}),
            &listed
        )
        .is_err());
        assert!(parse_config(&json!({"instance_url": "http://127.0.0.1:9999"}), &listed).is_err());
    }

    #[test]
    fn the_shipped_policy_parses() {
        let v: Value =
            serde_json::from_str(include_str!("../../../policies/servicenow.json")).unwrap();
        let c = ServiceNowCeiling::from_value(&v).unwrap();
        assert!(!c.roles.contains("admin"));
        assert!(ServiceNowCeiling::from_value(
            &json!({"roles": ["admin"], "tables": ["incident"]})
        )
        .is_err());
    }
}
