//! `[providers.github_app]`: the platform's settings for the App, how the daemon builds the
//! provider from them, and its catalog entry.

use std::sync::Arc;

use serde::Deserialize;

use super::{lint, GithubApp};
use crate::registry::{
    resolve_path, Availability, BuildFuture, CatalogEntry, CeilingMode, CliSpec, ConfigFlag,
    CredentialSource, FlagTarget, FlagValue, KeysCli, ProviderDescriptor, TemplateLint,
};
use crate::Provider;

/// Platform-side settings (`[providers.github_app]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubSettings {
    /// The App's numeric id.
    pub app_id: u64,
    /// The App's client id; the JWT `iss` (GitHub accepts it or the app id) and the OAuth
    /// client that proves who installed. Required for the install flow.
    #[serde(default)]
    pub client_id: Option<String>,
    /// REST API base (`https://api.github.com`, or `https://HOST/api/v3` for GHES).
    #[serde(default = "default_api")]
    pub api_base_url: String,
    /// Web host for the OAuth code exchange (`https://github.com`, or `https://HOST` for
    /// GHES): `POST {web_base_url}/login/oauth/access_token`.
    #[serde(default = "default_web")]
    pub web_base_url: String,
    /// The App's install page, e.g. `https://github.com/apps/<slug>/installations/new`.
    pub install_url: String,
    /// File holding the webhook secret (mode 0600).
    pub webhook_secret_file: std::path::PathBuf,
    /// Optional App private key file (PEM) used when the store holds no active key.
    #[serde(default)]
    pub private_key_file: Option<std::path::PathBuf>,
    /// The platform ceiling file (policies/github.json).
    pub ceiling_file: std::path::PathBuf,
    /// Per-request deadline, milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Mints per installation per minute above which a warning is logged.
    #[serde(default = "default_rate")]
    pub mint_rate_warning_per_minute: u32,
}

impl GithubSettings {
    /// Every file path in the settings, for the config loader to resolve relative paths
    /// against the config file.
    pub fn paths_mut(&mut self) -> Vec<&mut std::path::PathBuf> {
        let mut paths = vec![&mut self.webhook_secret_file, &mut self.ceiling_file];
        paths.extend(self.private_key_file.as_mut());
        paths
    }
}

/// The registry id.
pub const ID: &str = "github_app";

fn build(section: toml::Value, base: &std::path::Path) -> BuildFuture {
    let built = section
        .try_into::<GithubSettings>()
        .map_err(|e| format!("{e}"))
        .and_then(|mut settings| {
            for p in settings.paths_mut() {
                resolve_path(base, p);
            }
            GithubApp::new(settings)
        })
        .map(|p| Arc::new(p) as Arc<dyn Provider>);
    Box::pin(async move { built })
}

/// The catalog entry.
pub(crate) const DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    id: ID,
    availability: Availability::Configured(build),
    cli: CliSpec {
        name: "github",
        about: "A GitHub App installation (normally bound by the install redirect; this binds by hand).",
        binding_flags: &[
            ConfigFlag {
                long: "installation-id",
                help: "The installation id.",
                value: FlagValue::Integer,
                target: FlagTarget::Key("installation_id"),
                required: true,
            },
            ConfigFlag {
                long: "account-login",
                help: "The GitHub account (organisation or user) the installation must belong to: its probe refuses an installation of any other account.",
                value: FlagValue::Text,
                target: FlagTarget::Nested("account", "login"),
                required: true,
            },
            ConfigFlag {
                long: "account-id",
                help: "That account's numeric id (GET /users/LOGIN → id): stable across renames.",
                value: FlagValue::Integer,
                target: FlagTarget::Nested("account", "id"),
                required: true,
            },
        ],
        by_hand: true,
        onboard: Some("Print the install link (the broker's public start URL with a single-use state bound to the tenant and to the expected GitHub account)."),
        onboard_pin: crate::registry::OnboardPin::Account,
        keys: Some(KeysCli {
            materials: &[
                ("private-key", "private_key_pem"),
                ("oauth-client-secret", "oauth_client_secret"),
            ],
            file_help: "File holding the material: the App private key PEM downloaded from the App settings, or (--as oauth-client-secret) one of the App's client secrets.",
        }),
        revoke_tokens: true,
    },
    template_lint: Some(TemplateLint {
        dir: "github",
        run: lint::lint,
    }),
    catalog: CatalogEntry {
        max_secret_age_days: None,
        description: "GitHub App installation tokens for a customer's organization: the customer installs our App and the broker mints one-hour installation tokens with the App's private key, narrowed to the binding's ceiling.",
        returns: "kind `github_installation`: token",
        source: CredentialSource::Federation,
        ceiling_mode: CeilingMode::Upstream,
        policy_file: Some("policies/github.json"),
        artifacts: &["onboarding-templates/github/app-manifest.json"],
        runbooks: &[
            "runbooks/github-onboarding.md",
            "runbooks/github-app-key-compromise.md",
        ],
        clients: &["credbroker client token", "POST /v1/resolve (mTLS)"],
    },
};

fn default_api() -> String {
    "https://api.github.com".into()
}

fn default_web() -> String {
    "https://github.com".into()
}
fn default_timeout() -> u64 {
    5000
}
fn default_rate() -> u32 {
    30
}

/// The API base must be https; plain http only to a loopback address (tests, a local fake),
/// decided on the parsed host, not a string prefix (`http://127.0.0.1.evil.example` is not
/// loopback).
pub(super) fn check_api_base(url: &str) -> Result<(), String> {
    check_base("api_base_url", url)
}

/// As [`check_api_base`] for any base URL setting `name`.
pub(crate) fn check_base(name: &str, url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{name} {url:?} is not a URL"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("{name} {url:?} has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http")
            if host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{name} must be https (plain http only to a loopback address)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_a_loopback_host() {
        for ok in [
            "https://api.github.com",
            "https://ghe.example/api/v3",
            "http://127.0.0.1:8080",
            "http://127.9.9.9",
            "http://[::1]:9000",
        ] {
            assert!(check_api_base(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://127.0.0.1.evil.example",
            "http://127.0.0.1@evil.example",
            "http://localhost.evil.example",
            "http://10.0.0.1",
            "ftp://127.0.0.1",
            "127.0.0.1:80",
            "not a url",
        ] {
            assert!(check_api_base(bad).is_err(), "{bad}");
        }
    }
}
