//! `[providers.atlassian_forge]`, the scope ceiling (policies/atlassian.json), a binding's
//! configuration and the catalog entry.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{fit, lint, AtlassianForge};
use crate::github::settings::check_base;
use crate::registry::{
    resolve_path, Availability, BuildFuture, CatalogEntry, CeilingMode, CliSpec, CredentialSource,
    OnboardPin, ProviderDescriptor, TemplateLint,
};
use crate::Provider;

/// The registry id.
pub const ID: &str = "atlassian_forge";

/// Atlassian's published Forge key set.
pub const FORGE_JWKS_URL: &str = "https://forge.cdn.prod.atlassian-dev.net/.well-known/jwks.json";

/// Platform-side settings (`[providers.atlassian_forge]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgeSettings {
    /// Our Forge app's ARI, `ari:cloud:ecosystem::app/{uuid}`: every FIT's `aud`.
    pub app_id: String,
    /// Where Forge's signing keys are published.
    #[serde(default = "default_jwks")]
    pub jwks_url: String,
    /// The Forge environment whose invocations are accepted (`PRODUCTION`).
    #[serde(default = "default_environment")]
    pub environment: String,
    /// The scope ceiling file (policies/atlassian.json).
    pub ceiling_file: std::path::PathBuf,
    /// Hosts a FIT's `app.apiBaseUrl` may name.
    #[serde(default = "default_api_hosts")]
    pub api_base_hosts: Vec<String>,
    /// Clock leeway for `exp`/`nbf`, seconds (at most 30).
    #[serde(default = "default_leeway")]
    pub leeway_s: u64,
    /// Deadline of a key-set fetch, milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// How long `credbroker onboard atlassian` expects the site, seconds: its administrator
    /// must type the onboarding's connect code on the app's admin page within it.
    #[serde(default = "default_expected_ttl")]
    pub expected_site_ttl_s: u64,
}

fn default_jwks() -> String {
    FORGE_JWKS_URL.into()
}
fn default_environment() -> String {
    "PRODUCTION".into()
}
fn default_api_hosts() -> Vec<String> {
    vec!["api.atlassian.com".into()]
}
fn default_leeway() -> u64 {
    5
}
fn default_timeout() -> u64 {
    3000
}
fn default_expected_ttl() -> u64 {
    14 * 24 * 3600
}

impl ForgeSettings {
    /// Checks the settings.
    ///
    /// # Errors
    /// Naming the setting that is wrong.
    pub fn check(&self) -> Result<(), String> {
        if fit::ari_uuid(&self.app_id, "app").is_none() {
            return Err("app_id must be the app's ARI, ari:cloud:ecosystem::app/{uuid}".into());
        }
        check_base("jwks_url", &self.jwks_url)?;
        if !matches!(
            self.environment.as_str(),
            "PRODUCTION" | "STAGING" | "DEVELOPMENT"
        ) {
            return Err("environment must be PRODUCTION, STAGING or DEVELOPMENT".into());
        }
        let host_ok = |h: &String| {
            !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        };
        if self.api_base_hosts.is_empty() || !self.api_base_hosts.iter().all(host_ok) {
            return Err("api_base_hosts must list host names (api.atlassian.com)".into());
        }
        if self.leeway_s > 30 {
            return Err("leeway_s must be at most 30".into());
        }
        if !(100..=4_000).contains(&self.timeout_ms) {
            return Err(
                "timeout_ms must be 100-4000 (Forge waits 5 s for an answer, key fetch included)"
                    .into(),
            );
        }
        if !(1..=90 * 24 * 3600).contains(&self.expected_site_ttl_s) {
            return Err("expected_site_ttl_s must be 1-7776000".into());
        }
        Ok(())
    }
}

/// The scopes a system token may carry. The token carries the manifest's scopes, which the
/// broker cannot narrow: the ceiling is fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeCeiling {
    /// Scope names.
    pub scopes: BTreeSet<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CeilingFile {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    scopes: Vec<String>,
}

impl ForgeCeiling {
    /// Reads and checks the policy file: scopes of `[a-z0-9:._-]`, read-only (no `write:`,
    /// `manage:` or `delete:`), `read:app-system-token` among them.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn parse(text: &str) -> Result<ForgeCeiling, String> {
        let file: CeilingFile =
            serde_json::from_str(text).map_err(|e| format!("not a scope policy: {e}"))?;
        let _ = file.description;
        if file.provider.as_deref().is_some_and(|p| p != ID) {
            return Err(format!("the policy is not for {ID}"));
        }
        let mut scopes = BTreeSet::new();
        for s in file.scopes {
            if s.is_empty()
                || s.len() > 100
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b":._-".contains(&b))
            {
                return Err(format!("{s:?} is not a scope name"));
            }
            if ["write:", "manage:", "delete:", "admin:"]
                .iter()
                .any(|p| s.starts_with(p))
            {
                return Err(format!("{s} is not read-only"));
            }
            scopes.insert(s);
        }
        if !scopes.contains("read:app-system-token") {
            return Err("read:app-system-token is missing (no system token without it)".into());
        }
        if scopes.len() < 2 {
            return Err(
                "at least one product scope is needed besides read:app-system-token".into(),
            );
        }
        Ok(ForgeCeiling { scopes })
    }

    /// As a binding stores it.
    pub fn to_value(&self) -> Value {
        json!({ "scopes": self.scopes })
    }
}

/// A binding's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgeConfig {
    /// The site's cloudId.
    pub cloud_id: String,
    /// The installation bound now.
    pub installation_id: String,
    /// The Forge environment.
    pub environment: String,
    /// The product API base (`https://api.atlassian.com/ex/jira/{cloudId}`).
    pub api_base_url: String,
    /// Installations this binding held before a reinstall (their invocations are ignored).
    #[serde(default)]
    pub previous_installations: Vec<String>,
}

/// Most previous installations remembered per binding.
pub const MAX_PREVIOUS: usize = 16;

impl ForgeConfig {
    /// Parses and checks a stored or operator-given configuration.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn parse(config: &Value, settings: &ForgeSettings) -> Result<ForgeConfig, String> {
        let c: ForgeConfig = serde_json::from_value(config.clone())
            .map_err(|e| format!("atlassian_forge config: {e}"))?;
        if fit::uuid(&c.cloud_id).as_deref() != Some(c.cloud_id.as_str()) {
            return Err("cloud_id must be the site's cloudId (a lower-case UUID)".into());
        }
        for i in std::iter::once(&c.installation_id).chain(&c.previous_installations) {
            if fit::ari_uuid(i, "installation").is_none() {
                return Err(
                    "installation ids must be ari:cloud:ecosystem::installation/{uuid}".into(),
                );
            }
        }
        if c.previous_installations.len() > MAX_PREVIOUS {
            return Err(format!(
                "at most {MAX_PREVIOUS} previous installations are kept"
            ));
        }
        if c.environment != settings.environment {
            return Err(format!(
                "environment {} is not the one this broker accepts ({})",
                c.environment, settings.environment
            ));
        }
        let base_ok = settings.api_base_hosts.iter().any(|h| {
            ["jira", "confluence"]
                .iter()
                .any(|p| c.api_base_url == format!("https://{h}/ex/{p}/{}", c.cloud_id))
        });
        if !base_ok {
            return Err(
                "api_base_url must be https://{api host}/ex/{jira|confluence}/{cloud_id}".into(),
            );
        }
        Ok(c)
    }
}

fn build(section: toml::Value, base: &std::path::Path) -> BuildFuture {
    let built = section
        .try_into::<ForgeSettings>()
        .map_err(|e| format!("{e}"))
        .and_then(|mut settings| {
            resolve_path(base, &mut settings.ceiling_file);
            AtlassianForge::new(settings)
        })
        .map(|p| Arc::new(p) as Arc<dyn Provider>);
    Box::pin(async move { built })
}

/// The catalog entry.
pub(crate) const DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    id: ID,
    availability: Availability::Configured(build),
    cli: CliSpec {
        name: "atlassian",
        about: "A Jira or Confluence Cloud site running our Forge app: bound when its administrator types the connect code of `onboard atlassian` on the app's admin page, or with `unclaimed claim`; never by hand.",
        binding_flags: &[],
        by_hand: false,
        onboard: Some("Record that the tenant expects the Atlassian site with this cloudId, and answer the connect code (shown once): the site is bound to the tenant when its administrator types that code on the app's admin page (Jira settings, Apps, Connect to credbroker)."),
        onboard_pin: OnboardPin::Identifier {
            long: "cloud-id",
            help: "The site's cloudId (a UUID; https://SITE.atlassian.net/_edge/tenant_info shows it). Invocations from any other site are never bound to this tenant.",
        },
        keys: None,
        revoke_tokens: false,
    },
    template_lint: Some(TemplateLint {
        dir: "atlassian",
        run: lint::lint,
    }),
    catalog: CatalogEntry {
        max_secret_age_days: None,
        description: "Jira and Confluence Cloud through our Forge app's Forge Remote: each installed site hands the broker a short-lived app system token on Forge-signed calls, and a resolve gets the freshest one.",
        returns: "kind `atlassian_system_token`: access_token",
        source: CredentialSource::Federation,
        ceiling_mode: CeilingMode::Fixed,
        policy_file: Some("policies/atlassian.json"),
        artifacts: &["onboarding-templates/atlassian/manifest.yml"],
        runbooks: &[
            "runbooks/atlassian-onboarding.md",
            "runbooks/atlassian-reinstall.md",
            "runbooks/atlassian-token-leak.md",
            "runbooks/atlassian-unclaimed.md",
        ],
        clients: &["credbroker client token", "POST /v1/resolve (mTLS)"],
    },
};
