//! `[providers.entra_multi_tenant]`: the platform's settings for its multi-tenant Entra app,
//! how the daemon builds the provider from them, and its catalog entry.

use std::sync::Arc;

use serde::Deserialize;

use super::{lint, EntraApp};
use crate::github::settings::check_base;
use crate::registry::{
    resolve_path, Availability, BuildFuture, CatalogEntry, CeilingMode, CliSpec, ConfigFlag,
    CredentialSource, FlagTarget, FlagValue, KeysCli, OnboardPin, ProviderDescriptor, TemplateLint,
};
use crate::Provider;

/// Platform-side settings (`[providers.entra_multi_tenant]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraSettings {
    /// The multi-tenant app's client (application) id, a GUID.
    pub client_id: String,
    /// The authority host: `https://login.microsoftonline.com` (public cloud),
    /// `https://login.microsoftonline.us`, `https://login.chinacloudapi.cn`… Tokens are
    /// requested at `{authority_host}/{tenant GUID}/oauth2/v2.0/token`.
    #[serde(default = "default_authority")]
    pub authority_host: String,
    /// Microsoft Graph's resource id (`https://graph.microsoft.com`).
    #[serde(default = "default_graph")]
    pub graph_resource: String,
    /// Azure Resource Manager's resource id (`https://management.azure.com`).
    #[serde(default = "default_arm")]
    pub arm_resource: String,
    /// Where role assignments and subscriptions are read (`https://management.azure.com`).
    #[serde(default = "default_arm")]
    pub arm_base_url: String,
    /// Where the consent's app role assignments are read (`https://graph.microsoft.com`).
    #[serde(default = "default_graph")]
    pub graph_base_url: String,
    /// Hosts an issued token's `iss` may name (v1 `https://sts.windows.net/{tid}/`, v2
    /// `https://login.microsoftonline.com/{tid}/v2.0`); sovereign clouds list theirs.
    #[serde(default = "default_issuer_hosts")]
    pub issuer_hosts: Vec<String>,
    /// The app's registered redirect URI for admin consent: the broker's public
    /// `{base_url}/callbacks/entra_multi_tenant/setup`. Required to onboard.
    #[serde(default)]
    pub redirect_uri: Option<String>,
    /// The platform ceiling file (policies/azure.json).
    pub ceiling_file: std::path::PathBuf,
    /// Per-request deadline, milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// For how long after a consent callback "no service principal" answers (AADSTS700016,
    /// 7000229, 65001) are taken as Entra still propagating the consent and retried.
    #[serde(default = "default_propagation")]
    pub consent_propagation_s: u64,
    /// The subject of the federated identity credential (FIC) on the app that trusts the
    /// broker's own issuer; set, the app authenticates with the issuer's assertion (no
    /// secret) before any stored credential.
    #[serde(default)]
    pub federated_subject: Option<String>,
    /// The FIC's audience (`api://AzureADTokenExchange`; sovereign clouds have their own).
    #[serde(default = "default_federated_audience")]
    pub federated_audience: String,
}

fn default_federated_audience() -> String {
    "api://AzureADTokenExchange".into()
}

/// The registry id.
pub const ID: &str = "entra_multi_tenant";

impl EntraSettings {
    /// Checks the settings.
    ///
    /// # Errors
    /// Naming the setting that is wrong.
    pub fn check(&self) -> Result<(), String> {
        if super::claims::guid(&self.client_id).is_none() {
            return Err("client_id must be the app's client id (a GUID)".into());
        }
        check_base("authority_host", &self.authority_host)?;
        check_base("arm_base_url", &self.arm_base_url)?;
        check_base("graph_base_url", &self.graph_base_url)?;
        let host_ok = |h: &String| {
            !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        };
        if self.issuer_hosts.is_empty() || !self.issuer_hosts.iter().all(host_ok) {
            return Err("issuer_hosts must list host names (e.g. sts.windows.net)".into());
        }
        for (name, v) in [
            ("graph_resource", &self.graph_resource),
            ("arm_resource", &self.arm_resource),
        ] {
            if !v.starts_with("https://") || v.ends_with('/') || v.contains(['?', '#', ' ']) {
                return Err(format!(
                    "{name} must be an https resource id without a trailing slash"
                ));
            }
        }
        if let Some(r) = &self.redirect_uri {
            check_base("redirect_uri", r)?;
            if !r.ends_with(&format!("/callbacks/{ID}/setup")) {
                return Err(format!(
                    "redirect_uri must be the broker's public {{base_url}}/callbacks/{ID}/setup"
                ));
            }
        }
        if !(100..=60_000).contains(&self.timeout_ms) {
            return Err("timeout_ms must be 100-60000".into());
        }
        if self.consent_propagation_s > 3600 {
            return Err("consent_propagation_s must be at most 3600".into());
        }
        if let Some(s) = &self.federated_subject {
            // Entra matches issuer and subject exactly, at most 600 characters.
            if s.is_empty() || s.len() > 127 || !s.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("federated_subject must be 1-127 printable characters".into());
            }
            // `cb-…` is the shape of the subjects the broker generates for bindings.
            if s.starts_with(crate::OIDC_SUBJECT.prefix) {
                return Err(format!(
                    "federated_subject must not start with {:?} (the broker's binding subjects do)",
                    crate::OIDC_SUBJECT.prefix
                ));
            }
        }
        if self.federated_audience.is_empty() || self.federated_audience.len() > 600 {
            return Err("federated_audience must be 1-600 characters".into());
        }
        Ok(())
    }
}

fn build(section: toml::Value, base: &std::path::Path) -> BuildFuture {
    let built = section
        .try_into::<EntraSettings>()
        .map_err(|e| format!("{e}"))
        .and_then(|mut settings| {
            resolve_path(base, &mut settings.ceiling_file);
            settings.authority_host = settings.authority_host.trim_end_matches('/').to_owned();
            settings.arm_base_url = settings.arm_base_url.trim_end_matches('/').to_owned();
            settings.graph_base_url = settings.graph_base_url.trim_end_matches('/').to_owned();
            EntraApp::new(settings)
        })
        .map(|p| Arc::new(p) as Arc<dyn Provider>);
    Box::pin(async move { built })
}

/// The catalog entry.
pub(crate) const DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    id: ID,
    availability: Availability::Configured(build),
    cli: CliSpec {
        name: "entra",
        about: "A customer's Entra tenant that consented to our multi-tenant app (normally bound by the consent callback; this binds by hand, pending its probe).",
        binding_flags: &[
            ConfigFlag {
                long: "config",
                help: "Options as JSON: {\"resources\": [\"graph\", \"arm\"], \"arm_scopes\": [\"/subscriptions/GUID\"]} (default: graph only).",
                value: FlagValue::JsonObject,
                target: FlagTarget::WholeConfig,
                required: false,
            },
            ConfigFlag {
                long: "entra-tenant",
                help: "The customer's tenant id (a GUID; not common, organizations or a domain name).",
                value: FlagValue::Text,
                target: FlagTarget::Key("tenant_id"),
                required: true,
            },
        ],
        by_hand: true,
        onboard: Some("Print the admin-consent link (the broker's public start URL with a single-use state bound to the tenant, to the customer's tenant GUID and, once opened, to one browser)."),
        onboard_pin: OnboardPin::Identifier {
            long: "entra-tenant",
            help: "The customer's Entra tenant id (GUID) that must grant the consent; a consent from any other tenant is refused.",
        },
        keys: Some(KeysCli {
            materials: &[
                ("client-secret", "client_secret"),
                ("certificate", "certificate_pem"),
            ],
            file_help: "File holding the material: one of the app's client secret values, or (--as certificate) a PEM with the certificate registered on the app and its RSA private key.",
        }),
        revoke_tokens: false,
    },
    template_lint: Some(TemplateLint {
        dir: "azure",
        run: lint::lint,
    }),
    catalog: CatalogEntry {
        max_secret_age_days: None,
        description: "App-only Microsoft Graph or Azure Resource Manager tokens for a customer's Entra tenant, minted with the client-credentials grant of the platform's multi-tenant app after the tenant's admin consented.",
        returns: "kind `entra_access_token`: access_token",
        source: CredentialSource::Federation,
        ceiling_mode: CeilingMode::Verified,
        policy_file: Some("policies/azure.json"),
        artifacts: &[
            "onboarding-templates/azure/subscription-reader.bicep",
            "onboarding-templates/azure/management-group-reader.bicep",
        ],
        runbooks: &[
            "runbooks/entra-onboarding.md",
            "runbooks/entra-consent-revoked.md",
            "runbooks/entra-app-credential.md",
        ],
        clients: &["credbroker client token", "POST /v1/resolve (mTLS)"],
    },
};

fn default_authority() -> String {
    "https://login.microsoftonline.com".into()
}
fn default_graph() -> String {
    "https://graph.microsoft.com".into()
}
fn default_arm() -> String {
    "https://management.azure.com".into()
}
fn default_issuer_hosts() -> Vec<String> {
    vec!["sts.windows.net".into(), "login.microsoftonline.com".into()]
}
fn default_timeout() -> u64 {
    5000
}
fn default_propagation() -> u64 {
    300
}
