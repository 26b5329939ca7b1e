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
mod client;
mod errors;
pub mod lint;
mod params;
mod probe;
mod settings;
mod web_identity;

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sts::operation::assume_role::AssumeRoleOutput;
use aws_sdk_sts::operation::RequestId;
use aws_sdk_sts::types::PolicyDescriptorType;
use serde::Deserialize;
use serde_json::{json, Value};

pub use answer::credential_of;
use answer::minted;
pub use ceiling::{action_within, narrow, AwsCeiling, AwsNarrowing};
use errors::{assume_error, is_trust_refusal, sdk_error};
pub use params::{assumed_role_account, probe_session_name, session_name, ExternalId, RoleArn};
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

impl AwsAssumeRole {
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

    fn probe_proves_identifiers(&self) -> bool {
        // The probe shows the trust names this tenant's value (see Provider's doc).
        true
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
