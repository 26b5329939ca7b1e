//! The one trait every credential source implements.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use time::OffsetDateTime;

use crate::federation::{AssertionSigner, BindingParameter};
use crate::inbound::{Callbacks, InstalledAccount, Invocations};
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

/// What a minted credential names beyond its binding. The core keys its token cache on
/// these, so a credential that names one caller (AWS puts the instance in RoleSessionName
/// and the worker in SourceIdentity, both visible in the customer's CloudTrail) is never
/// handed to another.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CredentialScope {
    /// The credential names the connector instance it was minted for.
    pub instance: bool,
    /// The credential names the worker it was minted for.
    pub worker: bool,
}

/// A binding's configuration and ceiling as its provider parsed them, once
/// ([`Provider::bind`]). The core keeps it beside the binding and hands it back in every
/// [`BindingContext`]; its content is a type private to the provider that made it.
#[derive(Clone)]
pub struct Bound(Arc<dyn Any + Send + Sync>);

impl Bound {
    /// Wraps a provider's parsed binding.
    pub fn new<T: Any + Send + Sync>(value: T) -> Bound {
        Bound(Arc::new(value))
    }

    /// The parsed binding, as the type the provider stored.
    ///
    /// # Errors
    /// [`ProviderError::Internal`] when it was made by another provider.
    pub fn get<T: Any>(&self) -> Result<&T, ProviderError> {
        self.0
            .downcast_ref::<T>()
            .ok_or_else(|| ProviderError::Internal("binding was bound by another provider".into()))
    }
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bound(..)")
    }
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
    /// `config` and `ceiling` as the provider parsed them ([`Provider::bind`]).
    pub bound: &'a Bound,
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
    /// The least remaining lifetime, seconds, the worker asked for (`min_ttl_s`): a provider
    /// that hands out a credential it holds (a captured Forge system token) refuses one with
    /// less left; minting providers issue fresh credentials and may ignore it.
    pub min_ttl_s: u64,
    /// The broker's own OIDC issuer, for providers that federate with an assertion it signs
    /// (GCP WIF, AWS web identity, an Entra federated credential).
    pub assertions: &'a dyn AssertionSigner,
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
    /// Non-secret facts returned beside the credentials (granted permissions, repository
    /// selection…), `null` when there are none.
    pub details: Value,
    /// What the credential was minted for (e.g. a GitHub installation id), for the
    /// broker's debug log (never a metric label).
    pub subject: Option<String>,
}

/// One platform key (the broker's own secret for a provider, e.g. the GitHub App private key),
/// opened from the store for the provider to use.
pub struct PlatformKey {
    /// Version.
    pub version: u32,
    /// The key material (field names are provider-specific).
    pub material: SecretFields,
}

/// Result of an activation or on-demand probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// Human-readable facts established by the probe (no secrets).
    pub summary: String,
    /// The same facts for machines (Entra: tenant, service principal object id, granted
    /// permissions, confirmation time), kept on the binding; `null` when there are none.
    pub facts: serde_json::Value,
    /// The request ids of the upstream calls the probe made, in order, where the upstream
    /// gave one ([`crate::is_request_id`]); the probe's audit record names them all (a
    /// customer's CloudTrail lists each call, refused ones too).
    pub upstream_request_ids: Vec<String>,
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

/// How a provider keeps what it issues within the binding's ceiling. The provider
/// conformance suite checks each provider against the mode it declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeilingEnforcement {
    /// The ceiling (or the narrowing within it) is sent upstream with every mint, so the
    /// upstream issues nothing beyond it (AWS session policies, GitHub token permissions).
    Upstream,
    /// The upstream decides the scope; the provider checks the issued credential and refuses
    /// one beyond the ceiling.
    Verified,
    /// The credential's scope is fixed outside the request: any `narrow` is refused.
    Fixed,
    /// The broker itself cuts the credential down to the ceiling (pasted secret fields).
    Local,
}

/// One credential source. Implementations must be cheap to share (`Arc<dyn Provider>`).
///
/// Optional capabilities are separate small traits a provider hands out when it has them
/// ([`Provider::probe`], [`Provider::callbacks`], [`Provider::platform_keys`],
/// [`Provider::revocation`]); the core never calls a method that fails for lack of support.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The provider's registry name (e.g. `pasted_secret`).
    fn id(&self) -> &'static str;

    /// Whether bindings of this provider carry sealed secret fields.
    fn secret_requirement(&self) -> SecretRequirement;

    /// Whether minted credentials may be cached.
    fn cache_policy(&self) -> CachePolicy;

    /// Whether a mint calls an upstream (and so is subject to the broker's mint rate limits
    /// and circuit breakers). A provider that only opens what the broker holds (a pasted
    /// secret) says no.
    fn mints_upstream(&self) -> bool {
        true
    }

    /// The error a mint fails fast with while the upstream's last answer asked the broker
    /// to make no call for a while (a rate limit whose time has not passed), if it does.
    /// Checked before the circuit breakers: such a fast failure calls nobody, says nothing
    /// new about the upstream, and must not open a circuit that outlasts the wait.
    fn paused(&self) -> Option<ProviderError> {
        None
    }

    /// Whether every binding's mints reach one upstream shared by all tenants (AWS STS,
    /// Entra, GitHub): the provider-wide circuit breaker then guards it. A provider whose
    /// every customer is an upstream of its own (a ServiceNow instance) says no: two
    /// customers' hibernating instances say nothing about a third's, and must not stop its
    /// mints (each binding keeps its own circuit).
    fn shares_upstream(&self) -> bool {
        true
    }

    /// How issued credentials are kept within the binding's ceiling.
    fn ceiling_enforcement(&self) -> CeilingEnforcement;

    /// Parses and checks a binding's configuration and ceiling, once: when the binding is
    /// added (a refusal refuses the binding) and when the core first uses it; every later
    /// call gets the result back in [`BindingContext::bound`], so nothing is re-parsed per
    /// resolve.
    ///
    /// # Errors
    /// [`ProviderError::InvalidConfig`] when either is malformed for this provider, or the
    /// ceiling cannot be enforced the way [`Provider::ceiling_enforcement`] says.
    fn bind(&self, config: &Value, ceiling: &Value) -> Result<Bound, ProviderError>;

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

    /// Produces one credential: with no narrowing, at exactly the binding's ceiling.
    ///
    /// # Errors
    /// Any [`ProviderError`]; upstream failures are `Denied` or `Unavailable`.
    async fn mint(&self, request: &MintRequest<'_>) -> Result<IssuedCredential, ProviderError>;

    /// The longest lifetime, in seconds, of a credential minted for `binding`; `None` for
    /// credentials that do not expire (pasted secrets). The core refuses a `min_ttl_s` no
    /// fresh credential could satisfy, instead of minting upstream on every call.
    fn credential_lifetime_s(&self, _binding: &BindingContext<'_>) -> Option<u64> {
        None
    }

    /// What credentials minted for `binding` name beyond the binding (see
    /// [`CredentialScope`]); the default names nothing, so one cached credential serves every
    /// instance and worker of the binding.
    fn credential_scope(&self, _binding: &BindingContext<'_>) -> CredentialScope {
        CredentialScope::default()
    }

    /// Identifiers in `config` that may be bound to one tenant only (role ARN, installation
    /// id…). The core refuses a binding whose identifier another tenant already holds.
    fn exclusive_identifiers(&self, _config: &Value) -> Vec<String> {
        Vec::new()
    }

    /// Whether a passed activation probe is what proves a binding's exclusive identifiers
    /// belong to its tenant (AWS: the role requires this tenant's ExternalId, or admits only
    /// this binding's subject; GCP: the service account admits only this binding's subject).
    /// The core then claims them when the probe activates the binding, not when it is added:
    /// naming another company's identifier, before any proof, blocks nobody. Providers whose
    /// identifiers are proved some other way (an install callback, an administrator's
    /// sign-in or connect code) claim them when the binding is made, as by default.
    fn probe_proves_identifiers(&self) -> bool {
        false
    }

    /// Checks a configuration for a binding being added (not one already stored, which
    /// [`Provider::bind`] reads): what a new binding must say that an older one may lack.
    ///
    /// # Errors
    /// `InvalidConfig`, saying what is missing.
    fn check_new_binding(&self, _config: &Value) -> Result<(), ProviderError> {
        Ok(())
    }

    /// `config` with the customer account the broker proved the identifier belongs to (an
    /// install's or an unclaimed installation's), where the provider's probe checks it
    /// again. The default leaves `config` as it is.
    fn with_account(&self, config: &Value, _account: &InstalledAccount) -> Value {
        config.clone()
    }

    /// Values the broker generates per tenant and injects under `config.broker`.
    fn tenant_parameters(&self) -> &'static [TenantParameter] {
        &[]
    }

    /// Values the broker generates per binding (given its configuration) and injects under
    /// `config.broker`.
    fn binding_parameters(&self, _config: &Value) -> &'static [BindingParameter] {
        &[]
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

    /// The secret fields a binding of this provider takes, for the intake form (which asks
    /// for exactly these); empty when the provider cannot say (the operator names them).
    fn secret_fields(&self, _binding: &BindingContext<'_>) -> Vec<String> {
        Vec::new()
    }

    /// Where a pasted secret of a binding with `config` is sent (the origin of the
    /// customer's instance), shown on the intake form so the customer sees where their
    /// credential goes before they paste it; `None` when the provider sends it nowhere the
    /// binding names.
    fn secret_destination(&self, _config: &Value) -> Option<String> {
        None
    }

    /// The end-to-end check of a binding, when the provider has one.
    fn probe(&self) -> Option<&dyn Probe> {
        None
    }

    /// Inbound callbacks, when the provider has any.
    fn callbacks(&self) -> Option<&dyn Callbacks> {
        None
    }

    /// The broker's own keys for this provider (e.g. the GitHub App private key), when it
    /// signs with any.
    fn platform_keys(&self) -> Option<&dyn PlatformKeys> {
        None
    }

    /// Upstream revocation of issued credentials, when the upstream offers it.
    fn revocation(&self) -> Option<&dyn Revocation> {
        None
    }

    /// Rotation of the binding's pasted secret by the broker itself, when the upstream lets
    /// the current secret create its successor (Atlassian Data Center PATs).
    fn self_rotation(&self) -> Option<&dyn SelfRotation> {
        None
    }

    /// Signed invocations the upstream sends the broker (Atlassian Forge Remote), when it
    /// sends any.
    fn invocations(&self) -> Option<&dyn Invocations> {
        None
    }
}

/// A pasted secret the broker can replace on its own: the current secret creates the next
/// one upstream; the core stores it pending, probes it, promotes it, then has the old one
/// revoked.
#[async_trait]
pub trait SelfRotation: Send + Sync {
    /// Creates the successor of `request.secret` upstream; its fields.
    ///
    /// # Errors
    /// When the upstream refuses or cannot create one (e.g. no PAT API).
    async fn create(&self, request: &MintRequest<'_>) -> Result<SecretFields, ProviderError>;

    /// Revokes `old` upstream, authenticated by `request.secret` (its successor). `Ok(false)`
    /// when `old` cannot be identified (a pasted PAT whose id was not given).
    ///
    /// # Errors
    /// When the upstream refuses or cannot be reached.
    async fn revoke(
        &self,
        request: &MintRequest<'_>,
        old: &SecretFields,
    ) -> Result<bool, ProviderError>;

    /// Whether a binding whose last probe recorded `facts` is due for rotation (e.g. its
    /// PAT expires within the configured number of days).
    fn due(&self, facts: &serde_json::Value) -> bool;
}

/// Checks that a binding works end to end without handing out a credential.
#[async_trait]
pub trait Probe: Send + Sync {
    /// Whether a new binding stays `pending_activation` until this probe passes (the
    /// customer's trust must be shown to pin the broker's isolation values first).
    fn gates_activation(&self) -> bool;

    /// Runs the probe.
    ///
    /// # Errors
    /// Any [`ProviderError`] describing why the binding cannot be activated;
    /// [`ProviderError::ActivationRefused`] when the trust is unsafe or wrong.
    async fn probe(&self, request: &MintRequest<'_>) -> Result<ProbeReport, ProviderError>;
}

/// The broker's own signing keys for a provider, sealed in the store under the provider's
/// id (`/v1/admin/keys/<provider id>`).
pub trait PlatformKeys: Send + Sync {
    /// Checks a key before it is stored; returns a non-secret fingerprint. A fingerprint of
    /// secret material (a client secret) is made with `keyed` (an HMAC under the broker's
    /// fingerprint key), never a plain hash: it is listed, audited and exported, and a plain
    /// hash would let anyone holding it confirm a guessed or leaked secret offline. Public
    /// material (a key's public half, a certificate) keeps its usual thumbprint.
    ///
    /// # Errors
    /// [`ProviderError::InvalidConfig`] when the material is not a usable key.
    fn check(
        &self,
        material: &SecretFields,
        keyed: &dyn Fn(&[u8]) -> String,
    ) -> Result<String, ProviderError>;

    /// The fingerprint an earlier release listed `material` under, when it differs from
    /// [`PlatformKeys::check`]'s (client secrets: a plain hash then): compared with stored
    /// keys so a secret stored before is still refused as already stored; never stored or
    /// shown.
    fn earlier_fingerprint(&self, _material: &SecretFields) -> Option<String> {
        None
    }

    /// Installs the active keys, preferred (most recently activated) first.
    ///
    /// # Errors
    /// When a key cannot be used.
    fn install(&self, keys: Vec<PlatformKey>) -> Result<(), ProviderError>;

    /// The kind of key `material` is, when the provider cannot work without an active key of
    /// that kind (e.g. `"GitHub App private key"`: nothing can be minted without one); `None`
    /// when it can. Keys of one kind stand in for each other. The broker refuses to retire
    /// the last active key of a required kind. Default: no kind is required.
    fn required_kind(&self, material: &SecretFields) -> Option<&'static str> {
        let _ = material;
        None
    }
}

/// Upstream revocation of issued credentials (e.g. after a platform key compromise).
#[async_trait]
pub trait Revocation: Send + Sync {
    /// Revokes one issued credential upstream.
    ///
    /// # Errors
    /// When the upstream refuses or cannot be reached.
    async fn revoke(
        &self,
        credential: &IssuedCredential,
        timeout: Duration,
    ) -> Result<(), ProviderError>;
}
