//! `[providers.aws_assume_role]`: the platform's settings, how the daemon builds the
//! provider from them, and its catalog entry.

use std::sync::Arc;

use serde::Deserialize;

use super::{lint, AwsAssumeRole};
use crate::registry::{
    resolve_path, Availability, BuildFuture, CatalogEntry, CeilingMode, CliSpec, ConfigFlag,
    CredentialSource, FlagTarget, FlagValue, ProviderDescriptor, TemplateLint,
};
use crate::Provider;

/// Platform-side settings (`[providers.aws_assume_role]` in the broker config).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    /// STS region (regional endpoint).
    pub region: String,
    /// Custom STS endpoint (tests, GovCloud-style partitions); default: the regional one.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// The vendor (platform) AWS account customers' roles trust.
    pub vendor_account_id: String,
    /// The broker's own IAM role in that account (the identity its STS calls are made as):
    /// the shipped role template trusts only it (`aws:PrincipalArn`), and `onboard aws`
    /// hands it to the customer as the template's `BrokerPrincipalArn`.
    #[serde(default)]
    pub broker_principal_arn: Option<String>,
    /// Session length when the binding does not say (clamped to 900..=max).
    #[serde(default = "default_duration")]
    pub default_duration_s: u32,
    /// Longest session any binding may request (the shipped roles allow 3600).
    #[serde(default = "default_duration")]
    pub max_duration_s: u32,
    /// Per-attempt deadline for one STS call, milliseconds.
    #[serde(default = "default_attempt_timeout")]
    pub attempt_timeout_ms: u64,
    /// Attempts per call (1 = no retry); throttling and 5xx are retried with jittered backoff.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// The platform ceiling file (policies/aws.json).
    pub ceiling_file: std::path::PathBuf,
    /// The `aud` of the broker's assertions for web-identity bindings (the client id the
    /// customer's IAM OIDC provider lists).
    #[serde(default = "default_web_identity_audience")]
    pub web_identity_audience: String,
}

fn default_web_identity_audience() -> String {
    "sts.amazonaws.com".into()
}

impl AwsSettings {
    /// Every file path in the settings, for the config loader to resolve relative paths
    /// against the config file.
    pub fn paths_mut(&mut self) -> Vec<&mut std::path::PathBuf> {
        vec![&mut self.ceiling_file]
    }
}

fn default_duration() -> u32 {
    3600
}
fn default_attempt_timeout() -> u64 {
    3000
}
fn default_attempts() -> u32 {
    3
}

/// The registry id.
pub const ID: &str = "aws_assume_role";

fn build(section: toml::Value, base: &std::path::Path) -> BuildFuture {
    let parsed: Result<AwsSettings, String> = section.try_into().map_err(|e| format!("{e}"));
    let base = base.to_owned();
    Box::pin(async move {
        let mut settings = parsed?;
        for p in settings.paths_mut() {
            resolve_path(&base, p);
        }
        let provider: Arc<dyn Provider> = Arc::new(AwsAssumeRole::new(settings).await?);
        Ok(provider)
    })
}

/// The catalog entry.
pub(crate) const DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    id: ID,
    availability: Availability::Configured(build),
    cli: CliSpec {
        name: "aws",
        about: "AWS AssumeRole into the customer's role (the ExternalId is the broker's, per tenant).",
        binding_flags: &[
            ConfigFlag {
                long: "role-arn",
                help: "The RoleArn output of the customer's stack.",
                value: FlagValue::Text,
                target: FlagTarget::Key("role_arn"),
                required: true,
            },
            ConfigFlag {
                long: "duration-s",
                help: "Session length in seconds (900..=the platform maximum).",
                value: FlagValue::Integer,
                target: FlagTarget::Key("duration_s"),
                required: false,
            },
            ConfigFlag {
                long: "model",
                help: "assume_role (default: AssumeRole from the vendor account with the tenant's ExternalId) or web_identity (AssumeRoleWithWebIdentity with the broker's own OIDC assertion: no AWS credential on the platform).",
                value: FlagValue::Text,
                target: FlagTarget::Key("model"),
                required: false,
            },
            ConfigFlag {
                long: "source-identity",
                help: "Pass the worker name as SourceIdentity (the role must trust sts:SetSourceIdentity).",
                value: FlagValue::Switch,
                target: FlagTarget::Key("source_identity"),
                required: false,
            },
        ],
        by_hand: true,
        onboard: Some("Print the tenant's ExternalId, the vendor account id and the template parameters."),
        keys: None,
        onboard_pin: crate::registry::OnboardPin::None,
        revoke_tokens: false,
    },
    template_lint: Some(TemplateLint {
        dir: "aws",
        run: lint::lint,
    }),
    catalog: CatalogEntry {
        max_secret_age_days: None,
        description: "Short-lived AWS credentials for a customer's account: the broker assumes the customer's IAM role with `sts:AssumeRole` and the tenant's ExternalId (or `AssumeRoleWithWebIdentity` with an assertion from the broker's own OIDC issuer).",
        returns: "kind `aws_sts`: AccessKeyId, SecretAccessKey, SessionToken, Expiration",
        source: CredentialSource::Federation,
        ceiling_mode: CeilingMode::Upstream,
        policy_file: Some("policies/aws.json"),
        artifacts: &[
            "onboarding-templates/aws/credbroker-role.json",
            "onboarding-templates/aws/credbroker-stackset.json",
            "onboarding-templates/aws/credbroker-role-web-identity.json",
        ],
        runbooks: &[
            "runbooks/aws-onboarding.md",
            "runbooks/aws-customer-revoked-trust.md",
            "runbooks/aws-caller-credential-compromise.md",
            "runbooks/issuer-key-rotation.md",
            "runbooks/issuer-key-compromise.md",
        ],
        clients: &[
            "credbroker client aws-credential-process",
            "POST /v1/resolve (mTLS)",
        ],
    },
};
