//! The one trait every credential source implements.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use time::OffsetDateTime;

use crate::{ProviderError, SecretFields};

/// Whether a binding of this provider carries sealed secret fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretRequirement {
    /// Pure federation: the binding holds identifiers only (AWS role ARN, Entra tenant id…).
    None,
    /// The binding's active secret version is opened and handed to `mint`/`probe`
    /// (ServiceNow client secret, Data Center PAT, captured Forge system token).
    Required,
}

/// Whether the core may cache what `mint` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePolicy {
    /// Never cache: the value is re-derived on every resolve (pasted secrets are opened on
    /// demand so plaintext does not outlive one response).
    Never,
    /// Cache in memory until `expires_at`, keyed by binding and normalized narrowing.
    UntilExpiry,
}

/// The stored, non-secret view of one binding that a provider works from.
#[derive(Debug, Clone, Copy)]
pub struct BindingContext<'a> {
    /// Tenant that owns the binding (already verified by the core's tenant chain).
    pub tenant_id: &'a str,
    /// The binding's id.
    pub binding_id: &'a str,
    /// Provider-specific identifiers and settings (role ARN, installation id…).
    pub config: &'a Value,
    /// The most a resolve may obtain through this binding (from policies/ at bind time).
    pub ceiling: &'a Value,
}

/// A narrowing request after validation: `canonical` is a stable text form used in cache keys,
/// so two requests asking for the same subset share one cached token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Narrowing {
    /// Stable text form; empty when nothing was narrowed.
    pub canonical: String,
    /// The validated request, for the provider's own use in `mint`.
    pub value: Option<Value>,
}

impl Narrowing {
    /// No narrowing: the binding's full ceiling.
    pub fn none() -> Self {
        Narrowing {
            canonical: String::new(),
            value: None,
        }
    }
}

/// Everything a provider needs for one mint. The core has already verified the tenant chain.
pub struct MintRequest<'a> {
    /// The binding being minted for.
    pub binding: BindingContext<'a>,
    /// Connector instance the worker acts for (for session names, never for tenant selection).
    pub instance_id: &'a str,
    /// The verified worker name from the client certificate.
    pub worker: &'a str,
    /// The validated narrowing.
    pub narrowing: &'a Narrowing,
    /// The binding's opened secret, when the provider requires one.
    pub secret: Option<&'a SecretFields>,
    /// Total time budget for upstream calls, retries included.
    pub timeout: Duration,
}

/// What a provider hands back; the core serializes it into one resolve response.
pub struct IssuedCredential {
    /// The response's `kind` (e.g. `aws_sts`, `secret_fields`, `github_installation`).
    pub kind: &'static str,
    /// The credential fields, zeroizing.
    pub credentials: SecretFields,
    /// When the credential stops working; `None` for static secrets.
    pub expires_at: Option<OffsetDateTime>,
    /// The upstream's request id, recorded in the audit log.
    pub upstream_request_id: Option<String>,
}

/// Result of an activation or on-demand probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// Human-readable facts established by the probe (no secrets).
    pub summary: String,
}

/// A value the broker generates once per tenant for a provider and injects into every
/// binding's configuration under `config.broker.<name>` — never accepted from an operator,
/// a customer or a request (e.g. AWS's ExternalId: confused-deputy defence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantParameter {
    /// Name under `config.broker`.
    pub name: &'static str,
    /// Length of the random value (alphanumeric).
    pub length: usize,
}

/// One credential source. Implementations must be cheap to share (`Arc<dyn Provider>`).
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The provider's registry name (e.g. `pasted_secret`).
    fn id(&self) -> &'static str;

    /// Whether bindings of this provider carry sealed secret fields.
    fn secret_requirement(&self) -> SecretRequirement;

    /// Whether minted credentials may be cached.
    fn cache_policy(&self) -> CachePolicy;

    /// Checks a binding's configuration and ceiling when the binding is added.
    ///
    /// # Errors
    /// [`ProviderError::InvalidConfig`] when either is malformed for this provider.
    fn validate_binding(&self, config: &Value, ceiling: &Value) -> Result<(), ProviderError>;

    /// The binding's ceiling in a form operators can read (shown in binding details).
    fn describe_ceiling(&self, binding: &BindingContext<'_>) -> Value;

    /// Validates and normalizes a resolve's `narrow` object against the binding's ceiling.
    ///
    /// # Errors
    /// [`ProviderError::InvalidNarrowing`] for malformed input,
    /// [`ProviderError::NarrowingExceedsCeiling`] for a request beyond the ceiling.
    fn normalize_narrowing(
        &self,
        binding: &BindingContext<'_>,
        narrow: Option<&Value>,
    ) -> Result<Narrowing, ProviderError>;

    /// Produces one credential.
    ///
    /// # Errors
    /// Any [`ProviderError`]; upstream failures are `Denied` or `Unavailable`.
    async fn mint(&self, request: &MintRequest<'_>) -> Result<IssuedCredential, ProviderError>;

    /// Identifiers in `config` that may be bound to one tenant only (role ARN, installation
    /// id…). The core refuses a binding whose identifier another tenant already holds.
    fn exclusive_identifiers(&self, _config: &Value) -> Vec<String> {
        Vec::new()
    }

    /// Values the broker generates per tenant and injects under `config.broker`.
    fn tenant_parameters(&self) -> &'static [TenantParameter] {
        &[]
    }

    /// Whether a new binding stays inactive until [`Provider::probe`] passes.
    fn requires_activation(&self) -> bool {
        false
    }

    /// Non-secret facts an operator hands to the customer for onboarding (vendor account id,
    /// template parameters), given the tenant's generated parameters.
    fn onboarding(
        &self,
        _tenant_id: &str,
        _parameters: &serde_json::Map<String, Value>,
    ) -> Option<Value> {
        None
    }

    /// Checks that the binding works end to end without handing out a credential.
    ///
    /// # Errors
    /// Any [`ProviderError`] describing why the binding cannot be activated.
    async fn probe(&self, request: &MintRequest<'_>) -> Result<ProbeReport, ProviderError>;
}
