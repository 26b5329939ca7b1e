//! `[providers.gcp_wif]`, the ceiling (policies/gcp.json), a binding's configuration and
//! the catalog entry.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::GcpWif;
use crate::registry::{
    resolve_path, Availability, BuildFuture, CatalogEntry, CeilingMode, CliSpec, ConfigFlag,
    CredentialSource, FlagTarget, FlagValue, OnboardPin, ProviderDescriptor, TemplateLint,
};
use crate::Provider;

/// The registry id.
pub const ID: &str = "gcp_wif";

/// Platform-side settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpSettings {
    /// The ceiling file (policies/gcp.json).
    pub ceiling_file: std::path::PathBuf,
    /// The token exchange endpoint.
    #[serde(default = "default_sts")]
    pub sts_url: String,
    /// IAM Service Account Credentials' base URL.
    #[serde(default = "default_iam")]
    pub iam_credentials_url: String,
    /// Lifetime asked of `generateAccessToken`, seconds (≤ 3600; ≤ 43200 with
    /// `extended_lifetime`, which needs the customer's org policy).
    #[serde(default = "default_lifetime")]
    pub lifetime_s: u64,
    /// The customer's org policy allows service-account tokens up to 12 h.
    #[serde(default)]
    pub extended_lifetime: bool,
    /// Extra CA certificates (PEM) to trust for the two endpoints (a proxy or a test double).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Per-request deadline, milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_sts() -> String {
    "https://sts.googleapis.com/v1/token".into()
}

fn default_iam() -> String {
    "https://iamcredentials.googleapis.com".into()
}

fn default_lifetime() -> u64 {
    3600
}

fn default_timeout() -> u64 {
    5000
}

/// An endpoint URL: https, or plain http to a loopback IP literal only (a local test
/// double). Returned without a trailing slash.
fn endpoint(name: &str, url: &str) -> Result<String, String> {
    let url = url.trim_end_matches('/');
    let uri: http::Uri = url.parse().map_err(|_| format!("{name} is not a URL"))?;
    let host = uri.host().ok_or_else(|| format!("{name} has no host"))?;
    if url.contains('@') || uri.query().is_some() {
        return Err(format!("{name} must not carry credentials or a query"));
    }
    let loopback = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") => Ok(url.to_owned()),
        Some("http") if loopback => Ok(url.to_owned()),
        _ => Err(format!("{name} must be https")),
    }
}

impl GcpSettings {
    /// Checks the settings; the endpoints without trailing slashes.
    ///
    /// # Errors
    /// Naming the offending setting.
    pub fn validate(&mut self) -> Result<(), String> {
        self.sts_url = endpoint("sts_url", &self.sts_url)?;
        self.iam_credentials_url = endpoint("iam_credentials_url", &self.iam_credentials_url)?;
        let max = if self.extended_lifetime { 43_200 } else { 3600 };
        if !(600..=max).contains(&self.lifetime_s) {
            return Err(format!("lifetime_s must be 600..={max}"));
        }
        if self.timeout_ms == 0 {
            return Err("timeout_ms must be positive".into());
        }
        Ok(())
    }
}

/// The most a binding's token may carry: OAuth scopes, and (for the shipped artifacts'
/// lint) the roles the customer's service account may be granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpCeiling {
    /// OAuth scopes a token may carry.
    pub scopes: BTreeSet<String>,
    /// What a binding without a ceiling of its own gets.
    pub default_scopes: BTreeSet<String>,
    /// Roles the shipped artifacts may grant the service account.
    pub roles: BTreeSet<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CeilingFile {
    #[serde(default)]
    description: Option<String>,
    scopes: Vec<String>,
    /// The scopes a binding without a ceiling of its own gets (a subset of `scopes`;
    /// default: all of them). Wider ones are an explicit opt-in in the binding's ceiling.
    #[serde(default)]
    default_scopes: Option<Vec<String>>,
    #[serde(default)]
    roles: Vec<String>,
}

impl GcpCeiling {
    /// Parses the policy file's (or a binding ceiling's) shape.
    ///
    /// # Errors
    /// When malformed or empty, a scope is not a Google OAuth scope URL, or a role
    /// administers the project.
    pub fn from_value(v: &Value) -> Result<GcpCeiling, String> {
        let f: CeilingFile =
            serde_json::from_value(v.clone()).map_err(|e| format!("gcp ceiling: {e}"))?;
        let _ = f.description;
        if f.scopes.is_empty() {
            return Err("the ceiling must allow at least one scope".into());
        }
        for s in &f.scopes {
            let ok = s
                .strip_prefix("https://www.googleapis.com/auth/")
                .is_some_and(|n| {
                    !n.is_empty()
                        && n.len() <= 100
                        && n.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                });
            if !ok {
                return Err(format!(
                    "{:?} is not a Google OAuth scope (https://www.googleapis.com/auth/…)",
                    s.chars().take(120).collect::<String>()
                ));
            }
        }
        for r in &f.roles {
            let ok = r.strip_prefix("roles/").is_some_and(|n| {
                !n.is_empty()
                    && n.len() <= 100
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._".contains(&b))
            });
            if !ok {
                return Err(format!("{r:?} is not a predefined role (roles/…)"));
            }
            if super::lint::forbidden(r).is_some() {
                return Err(format!("role {r} administers the project or impersonates"));
            }
        }
        let scopes: BTreeSet<String> = f.scopes.into_iter().collect();
        let default_scopes: BTreeSet<String> = match f.default_scopes {
            Some(d) => d.into_iter().collect(),
            None => scopes.clone(),
        };
        if default_scopes.is_empty() || !default_scopes.is_subset(&scopes) {
            return Err("default_scopes must be a non-empty subset of scopes".into());
        }
        Ok(GcpCeiling {
            scopes,
            default_scopes,
            roles: f.roles.into_iter().collect(),
        })
    }

    /// Checks `self` lies within `outer`.
    ///
    /// # Errors
    /// Naming what exceeds it.
    pub fn within(&self, outer: &GcpCeiling) -> Result<(), String> {
        if let Some(s) = self.scopes.difference(&outer.scopes).next() {
            return Err(format!("scope {s} is outside policies/gcp.json"));
        }
        if let Some(r) = self.roles.difference(&outer.roles).next() {
            return Err(format!("role {r} is outside policies/gcp.json"));
        }
        Ok(())
    }

    /// As JSON.
    pub fn to_value(&self) -> Value {
        json!({ "scopes": self.scopes, "roles": self.roles })
    }
}

/// A binding's configuration, validated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpConfig {
    /// The customer project's **number** (never its id).
    pub project_number: String,
    /// Workload identity pool id.
    pub pool_id: String,
    /// The pool's OIDC provider id (trusting our issuer).
    pub provider_id: String,
    /// The service account the broker impersonates.
    pub service_account: String,
    /// Broker-generated values (`subject`).
    #[serde(default)]
    pub broker: Option<BrokerValues>,
}

/// `config.broker`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerValues {
    /// The binding's OIDC subject.
    pub subject: String,
}

/// A GCP resource id (pool, provider): 4–32 of `[a-z0-9-]`.
fn gcp_id_ok(s: &str) -> bool {
    (4..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A user-managed service account email: `name@project.iam.gserviceaccount.com`.
fn service_account_ok(s: &str) -> bool {
    let Some((name, domain)) = s.split_once('@') else {
        return false;
    };
    let Some(project) = domain.strip_suffix(".iam.gserviceaccount.com") else {
        return false;
    };
    (6..=30).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.ends_with('-')
        && (6..=30).contains(&project.len())
        && project
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl GcpConfig {
    /// Parses and validates a binding's configuration.
    ///
    /// # Errors
    /// Naming what is wrong.
    pub fn parse(config: &Value) -> Result<GcpConfig, String> {
        let c: GcpConfig =
            serde_json::from_value(config.clone()).map_err(|e| format!("gcp_wif config: {e}"))?;
        if c.project_number.is_empty()
            || c.project_number.len() > 20
            || !c.project_number.bytes().all(|b| b.is_ascii_digit())
            || c.project_number.starts_with('0')
        {
            return Err("project_number must be the project's number (digits), not its id".into());
        }
        if !gcp_id_ok(&c.pool_id) || c.pool_id.starts_with("gcp-") {
            return Err("pool_id must be 4–32 of [a-z0-9-], not starting with gcp-".into());
        }
        if !gcp_id_ok(&c.provider_id) {
            return Err("provider_id must be 4–32 of [a-z0-9-]".into());
        }
        if !service_account_ok(&c.service_account) {
            return Err(
                "service_account must be a user-managed service account email (NAME@PROJECT.iam.gserviceaccount.com)"
                    .into(),
            );
        }
        Ok(c)
    }

    /// The pool provider's resource name, `//iam.googleapis.com/projects/…/providers/…`
    /// (STS's `audience`).
    pub fn provider_resource(&self) -> String {
        format!(
            "//iam.googleapis.com/projects/{}/locations/global/workloadIdentityPools/{}/providers/{}",
            self.project_number, self.pool_id, self.provider_id
        )
    }

    /// The `aud` of our assertion: the provider's resource name with `https:` (GCP's
    /// default allowed audience).
    pub fn assertion_audience(&self) -> String {
        format!("https:{}", self.provider_resource())
    }
}

fn build(section: toml::Value, base: &std::path::Path) -> BuildFuture {
    let built = section
        .try_into::<GcpSettings>()
        .map_err(|e| format!("{e}"))
        .and_then(|mut settings| {
            resolve_path(base, &mut settings.ceiling_file);
            if let Some(ca) = settings.ca_file.as_mut() {
                resolve_path(base, ca);
            }
            settings.validate()?;
            GcpWif::new(settings)
        })
        .map(|p| Arc::new(p) as Arc<dyn Provider>);
    Box::pin(async move { built })
}

/// The catalog entry.
pub(crate) const DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    id: ID,
    availability: Availability::Configured(build),
    cli: CliSpec {
        name: "gcp",
        about: "A customer's GCP project through Workload Identity Federation trusting the broker's own OIDC issuer (no secret anywhere): the binding gets a broker-made subject the customer's attribute condition pins.",
        binding_flags: &[
            ConfigFlag {
                long: "project-number",
                help: "The customer project's number (digits; not its id).",
                value: FlagValue::Text,
                target: FlagTarget::Key("project_number"),
                required: true,
            },
            ConfigFlag {
                long: "pool-id",
                help: "The workload identity pool id the customer created.",
                value: FlagValue::Text,
                target: FlagTarget::Key("pool_id"),
                required: true,
            },
            ConfigFlag {
                long: "provider-id",
                help: "The pool's OIDC provider id (trusting the broker's issuer).",
                value: FlagValue::Text,
                target: FlagTarget::Key("provider_id"),
                required: true,
            },
            ConfigFlag {
                long: "service-account",
                help: "The service account the broker impersonates (NAME@PROJECT.iam.gserviceaccount.com).",
                value: FlagValue::Text,
                target: FlagTarget::Key("service_account"),
                required: true,
            },
        ],
        by_hand: true,
        onboard: None,
        onboard_pin: OnboardPin::None,
        keys: None,
        revoke_tokens: false,
    },
    template_lint: Some(TemplateLint {
        dir: "gcp",
        run: super::lint::lint,
    }),
    catalog: CatalogEntry {
        max_secret_age_days: None,
        description: "OAuth2 access tokens for a customer's GCP service account through Workload Identity Federation: an assertion from the broker's own OIDC issuer is exchanged at Google STS, then the service account is impersonated.",
        returns: "kind `gcp_access_token`: access_token",
        source: CredentialSource::Federation,
        ceiling_mode: CeilingMode::Upstream,
        policy_file: Some("policies/gcp.json"),
        artifacts: &[
            "onboarding-templates/gcp/credbroker-wif.sh",
            "onboarding-templates/gcp/terraform",
        ],
        runbooks: &[
            "runbooks/gcp-onboarding.md",
            "runbooks/issuer-key-rotation.md",
            "runbooks/issuer-key-compromise.md",
        ],
        clients: &[
            "credbroker client gcp-metadata",
            "credbroker client token",
            "POST /v1/resolve (mTLS)",
        ],
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Value {
        json!({
            "project_number": "123456789012",
            "pool_id": "credbroker",
            "provider_id": "credbroker",
            "service_account": "credbroker-reader@acme-prod.iam.gserviceaccount.com",
            "broker": {"subject": "cb-abc"},
        })
    }

    #[test]
    fn configs() {
        let c = GcpConfig::parse(&config()).unwrap();
        assert_eq!(
            c.assertion_audience(),
            "https://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/credbroker/providers/credbroker"
        );
        for (k, bad) in [
            ("project_number", json!("acme-prod")),
            ("project_number", json!("0123")),
            ("project_number", json!(123)),
            ("pool_id", json!("gcp-pool")),
            ("pool_id", json!("abc")),
            ("pool_id", json!("Pool-One")),
            ("provider_id", json!("a/b/c/d")),
            (
                "service_account",
                json!("x@acme-prod.iam.gserviceaccount.com"),
            ),
            (
                "service_account",
                json!("reader@acme-prod.iam.gserviceaccount.com.evil.example"),
            ),
            (
                "service_account",
                json!("123-compute@developer.gserviceaccount.com"),
            ),
        ] {
            let mut c = config();
            c[k] = bad.clone();
            assert!(GcpConfig::parse(&c).is_err(), "{k}={bad}");
        }
        let mut c = config();
        c["extra"] = json!(1);
        assert!(GcpConfig::parse(&c).is_err());
    }

    #[test]
    fn endpoints() {
        assert!(endpoint("x", "https://sts.googleapis.com/v1/token").is_ok());
        assert!(endpoint("x", "http://127.0.0.1:9000/v1/token").is_ok());
        assert!(endpoint("x", "http://sts.googleapis.com/v1/token").is_err());
        assert!(endpoint("x", "https://u:p@sts.googleapis.com").is_err());
    }

    #[test]
    fn the_shipped_policy_parses_and_refuses_owner() {
        let v: Value = serde_json::from_str(include_str!("../../../policies/gcp.json")).unwrap();
        let c = GcpCeiling::from_value(&v).unwrap();
        assert!(!c.roles.contains("roles/owner"));
        for bad in [
            "roles/owner",
            "roles/editor",
            "roles/iam.securityAdmin",
            "roles/iam.serviceAccountTokenCreator",
        ] {
            assert!(
                GcpCeiling::from_value(&json!({"scopes": ["https://www.googleapis.com/auth/cloud-platform"], "roles": [bad]})).is_err(),
                "{bad}"
            );
        }
        assert!(
            GcpCeiling::from_value(&json!({"scopes": ["https://evil.example/auth/x"]})).is_err()
        );
    }
}
