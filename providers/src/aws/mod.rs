//! `aws_assume_role`: short-lived AWS credentials from `sts:AssumeRole` into the customer's
//! role, with the tenant's broker-generated ExternalId.
//!
//! The platform's own caller identity comes from the standard AWS credential chain; the
//! customer's role trusts only the vendor account and only with the tenant's ExternalId
//! (confused-deputy defence). Before a binding is activated, [`Provider::probe`] proves the
//! trust is what we expect: AssumeRole with the ExternalId — and with everything else an
//! unnarrowed mint sends: the SourceIdentity when the binding enables it, the binding's ceiling
//! as session policies — succeeds, the assumed role's account is the bound account, and
//! AssumeRole *without* the ExternalId is denied — AWS accepts any ExternalId when a role does
//! not require one.

mod answer;
mod bounded;
mod ceiling;
mod errors;
pub mod lint;
mod params;
mod probe;
mod settings;
mod web_identity;

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sts::config::retry::RetryConfig;
use aws_sdk_sts::config::timeout::TimeoutConfig;
use aws_sdk_sts::config::{BehaviorVersion, Region};
use aws_sdk_sts::operation::assume_role::AssumeRoleOutput;
use aws_sdk_sts::operation::RequestId;
use aws_sdk_sts::types::PolicyDescriptorType;
use serde::Deserialize;
use serde_json::{json, Value};

pub use answer::credential_of;
use answer::minted;
use bounded::{BoundedAnswers, NoRetryPastTheBound};
pub use ceiling::{action_within, narrow, AwsCeiling, AwsNarrowing};
use errors::{assume_error, is_trust_refusal, sdk_error};
pub use params::{assumed_role_account, session_name, ExternalId, RoleArn};
pub(crate) use settings::DESCRIPTOR;
pub use settings::{AwsSettings, ID};

use crate::{
    BindingContext, Bound, CachePolicy, CeilingEnforcement, CredentialScope, IssuedCredential,
    MintRequest, Narrowing, Probe, ProbeReport, Provider, ProviderError, RefusalReason,
    SecretRequirement, TenantParameter,
};

/// The provider.
pub struct AwsAssumeRole {
    client: aws_sdk_sts::Client,
    /// The same endpoint without credentials: `AssumeRoleWithWebIdentity` is unsigned.
    web_client: aws_sdk_sts::Client,
    settings: AwsSettings,
    ceiling: AwsCeiling,
}

/// Binding configuration: `{"role_arn", "duration_s"?, "source_identity"?, "broker": {"external_id"}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingConfig {
    role_arn: String,
    #[serde(default)]
    duration_s: Option<u32>,
    #[serde(default)]
    source_identity: bool,
    #[serde(default)]
    model: Model,
    #[serde(default)]
    broker: Option<BrokerParams>,
}

/// How a binding reaches the customer's role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Model {
    /// `AssumeRole` from the vendor account with the tenant's ExternalId.
    #[default]
    AssumeRole,
    /// `AssumeRoleWithWebIdentity` with the broker's own OIDC assertion (unsigned: no AWS
    /// credential on the platform); the role's trust pins the binding's subject.
    WebIdentity,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BrokerParams {
    external_id: String,
    #[serde(default)]
    subject: Option<String>,
}

/// Which ExternalId an AssumeRole carries.
#[derive(Clone, Copy)]
enum ExternalIdUse<'a> {
    /// The tenant's (every mint, and the probe's first call).
    Tenant,
    /// None (probe: a role that does not require one must be refused).
    Omitted,
    /// Another, random value (probe: a role that requires one but accepts any must be
    /// refused).
    Other(&'a str),
}

/// Whose session policies an AssumeRole carries: decides how STS's `PackedPolicyTooLarge`
/// (policies and tags that do not pack into one session, though each is within its own
/// limit) is reported.
#[derive(Clone, Copy)]
enum PolicySource {
    /// The binding's ceiling, on an unnarrowed mint.
    Ceiling,
    /// A worker's narrowing.
    Narrowing,
    /// The binding's ceiling, on the activation probe.
    Probe,
}

/// The per-call parameters of one AssumeRole.
struct AssumeCall<'a> {
    session: &'a str,
    duration_s: u32,
    external_id: ExternalIdUse<'a>,
    source_identity: Option<String>,
    narrowing: Option<&'a AwsNarrowing>,
    policies_from: PolicySource,
}

/// The SourceIdentity a mint for `worker` sends: the worker's name when the binding enables
/// it (the role's trust policy must then allow `sts:SetSourceIdentity`).
fn mint_source_identity(parsed: &Parsed, worker: &str) -> Result<Option<String>, ProviderError> {
    if parsed.source_identity {
        params::source_identity(worker)
            .map(Some)
            .map_err(ProviderError::InvalidConfig)
    } else {
        Ok(None)
    }
}

/// A binding as [`Provider::bind`] parsed it: the role, the ExternalId, the ceiling, and the
/// session policies that carry exactly that ceiling.
struct AwsBinding {
    parsed: Parsed,
    ceiling: AwsCeiling,
    session: AwsNarrowing,
}

struct Parsed {
    role: RoleArn,
    external_id: ExternalId,
    duration_s: Option<u32>,
    source_identity: bool,
    /// The binding's OIDC subject, for a web-identity binding.
    web_subject: Option<String>,
}

fn parse_config(config: &Value) -> Result<Parsed, ProviderError> {
    let c: BindingConfig = serde_json::from_value(config.clone())
        .map_err(|e| ProviderError::InvalidConfig(format!("aws_assume_role config: {e}")))?;
    let role = RoleArn::parse(&c.role_arn).map_err(ProviderError::InvalidConfig)?;
    let broker = c.broker.ok_or_else(|| {
        ProviderError::InvalidConfig("the broker-generated external id is missing".into())
    })?;
    let external_id =
        ExternalId::parse(&broker.external_id).map_err(ProviderError::InvalidConfig)?;
    let web_subject = match c.model {
        Model::AssumeRole => None,
        Model::WebIdentity => Some(
            broker
                .subject
                .filter(|s| !s.is_empty() && s.len() <= 127)
                .ok_or_else(|| {
                    ProviderError::InvalidConfig(
                        "a web_identity binding needs config.broker.subject (generated at binding add)".into(),
                    )
                })?,
        ),
    };
    Ok(Parsed {
        role,
        external_id,
        duration_s: c.duration_s,
        source_identity: c.source_identity,
        web_subject,
    })
    .and_then(|p| {
        if p.web_subject.is_some() && p.source_identity {
            // AssumeRoleWithWebIdentity takes no SourceIdentity parameter.
            Err(ProviderError::InvalidConfig(
                "source_identity is not available with model web_identity".into(),
            ))
        } else {
            Ok(p)
        }
    })
}

/// The managed policies a `PolicyArns` entry needs.
fn descriptors(arns: &[String]) -> Vec<PolicyDescriptorType> {
    arns.iter()
        .map(|a| PolicyDescriptorType::builder().arn(a).build())
        .collect()
}

/// The STS endpoint the SDK takes when the settings name none, read as aws-sdk-sts's config
/// reads it (the environment's `AWS_ENDPOINT_URL_STS` and `AWS_ENDPOINT_URL`, then the
/// profile's `services` section and `endpoint_url`); `None` for the SDK's own regional one,
/// or when `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` is set (the variables are checked on their
/// own, see the caller).
fn configured_endpoint(shared: &aws_config::SdkConfig) -> Result<Option<String>, String> {
    let key = aws_types::service_config::ServiceConfigKey::builder()
        .service_id("STS")
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .map_err(|e| format!("providers.aws_assume_role: {e}"))?;
    Ok(shared
        .service_config()
        .and_then(|c| c.load_config(key))
        .or_else(|| shared.endpoint_url().map(str::to_owned)))
}

impl AwsAssumeRole {
    /// Builds the STS client from the standard AWS credential chain and `settings`.
    ///
    /// # Errors
    /// When the ceiling file is unreadable or invalid (a missing policy denies: the provider
    /// is not started), or the settings are out of range.
    pub async fn new(settings: AwsSettings) -> Result<AwsAssumeRole, String> {
        let text = std::fs::read(&settings.ceiling_file)
            .map_err(|e| format!("{}: {e}", settings.ceiling_file.display()))?;
        let value: Value = serde_json::from_slice(&text)
            .map_err(|e| format!("{}: {e}", settings.ceiling_file.display()))?;
        let ceiling = AwsCeiling::from_value(&value)?;
        // Every unnarrowed session carries the ceiling: one STS cannot carry fails start-up.
        ceiling
            .session("aws")
            .map_err(|e| format!("{}: {e}", settings.ceiling_file.display()))?;
        let account_ok = settings.vendor_account_id.len() == 12
            && settings
                .vendor_account_id
                .bytes()
                .all(|b| b.is_ascii_digit());
        if !account_ok {
            return Err(
                "providers.aws_assume_role.vendor_account_id must be a 12-digit account id".into(),
            );
        }
        if let Some(arn) = &settings.broker_principal_arn {
            if !broker_principal_ok(arn, &settings.vendor_account_id) {
                return Err(format!(
                    "providers.aws_assume_role.broker_principal_arn must be an IAM role ARN in account {} (arn:aws:iam::{}:role/NAME)",
                    settings.vendor_account_id, settings.vendor_account_id
                ));
            }
        }
        if !(params::MIN_DURATION_S..=43_200).contains(&settings.max_duration_s)
            || settings.max_attempts == 0
        {
            return Err("providers.aws_assume_role: max_duration_s must be 900..=43200 and max_attempts at least 1".into());
        }
        let audience = &settings.web_identity_audience;
        if audience.is_empty()
            || audience.len() > 255
            || !audience.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err("providers.aws_assume_role: web_identity_audience must be 1-255 printable characters (the client id of the customer's IAM OIDC provider)".into());
        }
        let attempt = Duration::from_millis(settings.attempt_timeout_ms.max(100));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(settings.max_attempts)
                    .with_initial_backoff(Duration::from_millis(100))
                    .with_max_backoff(Duration::from_secs(2)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(attempt)
                    .operation_attempt_timeout(attempt)
                    .operation_timeout(attempt * settings.max_attempts + Duration::from_secs(5))
                    .build(),
            );
        if let Some(url) = &settings.endpoint_url {
            // Customers' session credentials and the broker's assertions cross it: never in
            // clear text past this machine.
            crate::github::settings::check_base("providers.aws_assume_role.endpoint_url", url)?;
            loader = loader.endpoint_url(url);
        }
        let shared = loader.load().await;
        // An endpoint the environment or the AWS profile names is held to the same rule,
        // whatever the settings say: the SDK's own credential chain (web identity, a
        // profile's role, SSO) makes its STS calls there even when the settings name ours,
        // and even when AWS_IGNORE_CONFIGURED_ENDPOINT_URLS is set.
        for var in ["AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL"] {
            if let Some(url) = std::env::var(var).ok().filter(|u| !u.is_empty()) {
                crate::github::settings::check_base(
                    &format!("providers.aws_assume_role: {var}"),
                    &url,
                )?;
            }
        }
        if let Some(url) = configured_endpoint(&shared)? {
            crate::github::settings::check_base(
                "providers.aws_assume_role: the STS endpoint the AWS profile (or the environment) names",
                &url,
            )?;
        }
        let bounded = || {
            aws_sdk_sts::config::Builder::from(&shared)
                .interceptor(BoundedAnswers)
                .retry_classifier(NoRetryPastTheBound)
        };
        let mut unsigned = bounded();
        unsigned.set_credentials_provider(None);
        Ok(AwsAssumeRole {
            client: aws_sdk_sts::Client::from_conf(bounded().build()),
            web_client: aws_sdk_sts::Client::from_conf(unsigned.build()),
            settings,
            ceiling,
        })
    }

    fn binding_ceiling(&self, ceiling: &Value) -> Result<AwsCeiling, ProviderError> {
        if ceiling.is_null() {
            return Ok(self.ceiling.clone());
        }
        let c = AwsCeiling::from_value(ceiling).map_err(ProviderError::InvalidConfig)?;
        c.within(&self.ceiling)
            .map_err(ProviderError::InvalidConfig)?;
        Ok(c)
    }

    async fn assume(
        &self,
        parsed: &Parsed,
        call: AssumeCall<'_>,
        timeout: Duration,
    ) -> Result<AssumeRoleOutput, ProviderError> {
        let AssumeCall {
            session,
            duration_s,
            external_id,
            source_identity,
            narrowing,
            policies_from,
        } = call;
        let source_identity_sent = source_identity.is_some();
        let mut call = self
            .client
            .assume_role()
            .role_arn(parsed.role.as_str())
            .role_session_name(session)
            .duration_seconds(i32::try_from(duration_s).unwrap_or(3600));
        match external_id {
            ExternalIdUse::Tenant => call = call.external_id(parsed.external_id.as_str()),
            ExternalIdUse::Other(other) => call = call.external_id(other),
            ExternalIdUse::Omitted => {}
        }
        if let Some(si) = source_identity {
            call = call.source_identity(si);
        }
        if let Some(n) = narrowing {
            if let Some(p) = &n.policy {
                call = call.policy(p);
            }
            if !n.policy_arns.is_empty() {
                call = call.set_policy_arns(Some(descriptors(&n.policy_arns)));
            }
        }
        match tokio::time::timeout(timeout, call.send()).await {
            Ok(result) => result.map_err(|e| assume_error(e, policies_from, source_identity_sent)),
            Err(_) => Err(ProviderError::Unavailable {
                message: format!("STS did not answer within {} ms", timeout.as_millis()),
                upstream_request_id: None,
            }),
        }
    }
}

#[async_trait]
impl Provider for AwsAssumeRole {
    fn id(&self) -> &'static str {
        ID
    }

    fn secret_requirement(&self) -> SecretRequirement {
        SecretRequirement::None
    }

    fn cache_policy(&self) -> CachePolicy {
        CachePolicy::UntilExpiry
    }

    fn ceiling_enforcement(&self) -> CeilingEnforcement {
        CeilingEnforcement::Upstream
    }

    fn bind(&self, config: &Value, ceiling: &Value) -> Result<Bound, ProviderError> {
        let parsed = parse_config(config)?;
        if let Some(d) = parsed.duration_s {
            if !(params::MIN_DURATION_S..=self.settings.max_duration_s).contains(&d) {
                return Err(ProviderError::InvalidConfig(format!(
                    "duration_s must be {}..={}",
                    params::MIN_DURATION_S,
                    self.settings.max_duration_s
                )));
            }
        }
        // Refused here, not at resolve: an unnarrowed session is sent exactly this ceiling.
        let ceiling = self.binding_ceiling(ceiling)?;
        let session = ceiling
            .session(parsed.role.partition())
            .map_err(ProviderError::InvalidConfig)?;
        Ok(Bound::new(AwsBinding {
            parsed,
            ceiling,
            session,
        }))
    }

    fn describe_ceiling(&self, binding: &BindingContext<'_>) -> Value {
        match binding.bound.get::<AwsBinding>() {
            Ok(b) => {
                json!({ "managed_policy_arns": b.ceiling.managed_policy_arns, "actions": b.ceiling.actions })
            }
            Err(e) => json!({ "error": e.to_string() }),
        }
    }

    fn credential_lifetime_s(&self, binding: &BindingContext<'_>) -> Option<u64> {
        let parsed = &binding.bound.get::<AwsBinding>().ok()?.parsed;
        Some(u64::from(params::clamp_duration(
            parsed.duration_s,
            self.settings.default_duration_s,
            self.settings.max_duration_s,
        )))
    }

    fn credential_scope(&self, binding: &BindingContext<'_>) -> CredentialScope {
        // RoleSessionName names the instance; SourceIdentity (when enabled) the worker.
        CredentialScope {
            instance: true,
            // A binding it cannot read scopes to the worker too: never share on doubt.
            worker: binding
                .bound
                .get::<AwsBinding>()
                .map_or(true, |b| b.parsed.source_identity),
        }
    }

    fn exclusive_identifiers(&self, config: &Value) -> Vec<String> {
        config
            .get("role_arn")
            .and_then(Value::as_str)
            .and_then(|arn| RoleArn::parse(arn).ok())
            // Keyed on the role, not the spelling of its ARN (case, path).
            .map(|role| vec![format!("aws_role:{}", role.canonical())])
            .unwrap_or_default()
    }

    fn tenant_parameters(&self) -> &'static [TenantParameter] {
        &[TenantParameter {
            name: "external_id",
            length: 40,
        }]
    }

    fn binding_parameters(&self, config: &Value) -> &'static [crate::BindingParameter] {
        if config.get("model").and_then(Value::as_str) == Some("web_identity") {
            &[crate::OIDC_SUBJECT]
        } else {
            &[]
        }
    }

    fn probe(&self) -> Option<&dyn Probe> {
        Some(self)
    }

    fn onboarding(
        &self,
        tenant_id: &str,
        parameters: &serde_json::Map<String, Value>,
    ) -> Option<Value> {
        let external_id = parameters.get("external_id")?.as_str()?;
        Some(json!({
            "provider": ID,
            "tenant": tenant_id,
            "vendor_account_id": self.settings.vendor_account_id,
            "external_id": external_id,
            "templates": {
                "single_account": "onboarding-templates/aws/credbroker-role.json",
                "organization_stackset": "onboarding-templates/aws/credbroker-stackset.json",
                "web_identity": "onboarding-templates/aws/credbroker-role-web-identity.json"
            },
            "web_identity": "with --model web_identity the role trusts the broker's OIDC issuer instead of the vendor account: the binding's subject (config.broker.subject, shown by binding add) is the template's Subject parameter; no ExternalId",
            "template_parameters": {
                "VendorAccountId": self.settings.vendor_account_id,
                "BrokerPrincipalArn": self.settings.broker_principal_arn,
                "ExternalId": external_id,
                "RoleName": "CredbrokerAccess"
            },
            "broker_principal_arn": self.settings.broker_principal_arn.as_ref().map_or(
                "not configured: set [providers.aws_assume_role] broker_principal_arn to the broker's IAM role ARN; the templates require it",
                |_| "the only identity of the vendor account the customer's role trusts",
            ),
            "hand_back": "the RoleArn stack output",
            "then": format!("credbroker binding add aws BINDING_ID --tenant {tenant_id} --role-arn ROLE_ARN, then credbroker binding probe BINDING_ID")
        }))
    }

    fn normalize_narrowing(
        &self,
        binding: &BindingContext<'_>,
        narrow: Option<&Value>,
    ) -> Result<Narrowing, ProviderError> {
        let Some(narrow) = narrow else {
            return Ok(Narrowing::none());
        };
        let b = binding.bound.get::<AwsBinding>()?;
        let n = ceiling::narrow(narrow, &b.ceiling, b.parsed.role.partition()).map_err(
            |(exceeds, m)| {
                if exceeds {
                    ProviderError::NarrowingExceedsCeiling(m)
                } else {
                    ProviderError::InvalidNarrowing(m)
                }
            },
        )?;
        let value = json!({ "policy": n.policy, "policy_arns": n.policy_arns });
        Ok(Narrowing {
            canonical: value.to_string(),
            value: Some(value),
        })
    }

    async fn mint(&self, request: &MintRequest<'_>) -> Result<IssuedCredential, ProviderError> {
        let bound = request.binding.bound.get::<AwsBinding>()?;
        let parsed = &bound.parsed;
        let (narrowing, policies_from) = match request.narrowing.value.as_ref() {
            // No narrowing: the session carries exactly the binding's ceiling, never the
            // whole role (THREATS.md: "with no narrowing, exactly the ceiling").
            None => (bound.session.clone(), PolicySource::Ceiling),
            Some(v) => {
                let n = AwsNarrowing {
                    policy: v.get("policy").and_then(Value::as_str).map(str::to_owned),
                    policy_arns: v
                        .get("policy_arns")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default(),
                };
                // A session without any session policy would carry the whole role.
                if n.policy.is_none() && n.policy_arns.is_empty() {
                    return Err(ProviderError::InvalidNarrowing(
                        "narrowing carries no session policy".into(),
                    ));
                }
                (n, PolicySource::Narrowing)
            }
        };
        let duration = params::clamp_duration(
            parsed.duration_s,
            self.settings.default_duration_s,
            self.settings.max_duration_s,
        );
        let session = session_name(request.binding.tenant_id, request.instance_id);
        if let Some(subject) = &parsed.web_subject {
            let call = web_identity::WebCall {
                subject,
                session: &session,
                duration_s: duration,
                narrowing: &narrowing,
            };
            let out = self.assume_web(parsed, call, request).await?;
            return minted(
                parsed,
                out.assumed_role_user().map(|u| u.arn()),
                out.credentials(),
                out.request_id(),
                duration,
            );
        }
        let source_identity = mint_source_identity(parsed, request.worker)?;
        let out = self
            .assume(
                parsed,
                AssumeCall {
                    session: &session,
                    duration_s: duration,
                    external_id: ExternalIdUse::Tenant,
                    source_identity,
                    narrowing: Some(&narrowing),
                    policies_from,
                },
                request.timeout,
            )
            .await?;
        minted(
            parsed,
            out.assumed_role_user().map(|u| u.arn()),
            out.credentials(),
            out.request_id(),
            duration,
        )
    }
}

/// Whether `arn` names an IAM role (any path) in account `account`, in a known partition
/// (the role ARN rules every binding's `role_arn` is held to).
fn broker_principal_ok(arn: &str, account: &str) -> bool {
    params::RoleArn::parse(arn).is_ok_and(|r| r.account() == account)
}

#[cfg(test)]
mod tests {
    use super::broker_principal_ok;

    fn settings(endpoint_url: &str) -> super::AwsSettings {
        super::AwsSettings {
            endpoint_url: Some(endpoint_url.into()),
            ..unset()
        }
    }

    fn unset() -> super::AwsSettings {
        super::AwsSettings {
            region: "us-east-1".into(),
            endpoint_url: None,
            vendor_account_id: "111111111111".into(),
            broker_principal_arn: None,
            default_duration_s: 3600,
            max_duration_s: 3600,
            attempt_timeout_ms: 3000,
            max_attempts: 1,
            ceiling_file: std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../policies/aws.json"),
            web_identity_audience: "sts.amazonaws.com".into(),
        }
    }

    /// Customers' session credentials and the broker's assertions never cross a plain-http
    /// STS endpoint past this machine.
    #[tokio::test]
    async fn the_sts_endpoint_is_https_or_loopback() {
        for ok in ["https://sts.us-east-1.amazonaws.com", "http://127.0.0.1:9"] {
            assert!(
                super::AwsAssumeRole::new(settings(ok)).await.is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "http://sts.us-east-1.amazonaws.com",
            "http://127.0.0.1.evil.example",
            "ftp://127.0.0.1",
        ] {
            let e = super::AwsAssumeRole::new(settings(bad)).await.err();
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.contains("endpoint_url must be https")),
                "{bad}: {e:?}"
            );
        }
    }

    /// The same rule for an endpoint the environment names when the settings name none
    /// (each test is a process of its own under nextest: the variable stays in this one).
    #[tokio::test]
    async fn an_sts_endpoint_from_the_environment_is_held_to_it_too() {
        std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/credbroker-test");
        std::env::set_var("AWS_ENDPOINT_URL_STS", "http://sts.example.com");
        let e = super::AwsAssumeRole::new(unset()).await.err();
        assert!(
            e.as_deref().is_some_and(|e| e.contains("must be https")),
            "{e:?}"
        );
        // Also when the settings name one (the SDK's credential chain would still call the
        // environment's), and when the SDK is told to ignore it (the chain is not).
        let e = super::AwsAssumeRole::new(settings("https://sts.us-east-1.amazonaws.com"))
            .await
            .err();
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("AWS_ENDPOINT_URL_STS must be https")),
            "{e:?}"
        );
        std::env::set_var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true");
        assert!(super::AwsAssumeRole::new(unset()).await.is_err());
        std::env::remove_var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS");
        std::env::set_var("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9");
        assert!(super::AwsAssumeRole::new(unset()).await.is_ok());
        std::env::remove_var("AWS_ENDPOINT_URL_STS");
        std::env::set_var("AWS_ENDPOINT_URL", "http://sts.example.com");
        assert!(super::AwsAssumeRole::new(unset()).await.is_err());
    }

    #[test]
    fn the_broker_principal_is_a_role_of_the_vendor_account() {
        let account = "111122223333";
        for good in [
            "arn:aws:iam::111122223333:role/credbroker",
            "arn:aws-us-gov:iam::111122223333:role/platform/credbroker-prod",
        ] {
            assert!(broker_principal_ok(good, account), "{good}");
        }
        for bad in [
            "arn:aws:iam::444455556666:role/credbroker",
            "arn:aws:iam::111122223333:user/credbroker",
            "arn:aws:iam::111122223333:root",
            "arn:aws:sts::111122223333:assumed-role/credbroker/s",
            "arn:aws:iam:us-east-1:111122223333:role/credbroker",
            "arn:aws:iam::111122223333:role/",
            "arn:aws:iam::111122223333:role/a*",
            "arn:AWS:iam::111122223333:role/credbroker",
            "role/credbroker",
        ] {
            assert!(!broker_principal_ok(bad, account), "{bad}");
        }
    }
}
