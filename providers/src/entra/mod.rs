//! `entra_multi_tenant`: app-only tokens for a customer's Entra tenant from the platform's
//! one multi-tenant app, after that tenant's admin consented.
//!
//! No per-customer secret exists. The platform holds the app's credential (client secrets or
//! certificates, sealed in the store as platform keys, two active during a rotation); a
//! binding names the customer's tenant GUID, and a mint is the client-credentials grant at
//! `{authority}/{GUID}/oauth2/v2.0/token` for one resource (Graph or ARM). Every issued token
//! is decoded and checked before it is handed out: `tid` and `iss` name the bound tenant,
//! `appid`/`azp` is our app, `idtyp` is `app`, and a Graph token's `roles` hold every
//! permission the binding expects (else `consent_stale`) and none beyond its ceiling (else
//! `provider_denied`). A withdrawn consent (AADSTS700016/7000229/65001) is `consent_missing`.
//!
//! The token request is a form POST written here rather than through `azure_identity`:
//! that crate's credentials fix one tenant per object and cache tokens inside it (a second
//! cache that would hide drift and withdrawn consent from the next mint), require an https
//! authority and a reqwest 0.13 transport (a second HTTP stack beside hyper), and surface
//! Entra's answer as an error message rather than the `error_codes` and token the broker
//! must inspect. The client authentication is the [`token::ClientAuth`] seam its
//! `ClientAssertion` trait would have been: a federated assertion from the broker's own
//! issuer is one more implementation of it.

mod callbacks;
pub mod ceiling;
pub mod claims;
pub mod lint;
mod probe;
mod reads;
mod settings;
mod sign_in;
pub mod sign_in_claims;
pub mod token;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::{json, Value};

pub use ceiling::{parse_config, parse_narrowing, AzureCeiling, EntraConfig, Resource};
pub use claims::{check_claims, decode_claims, parse_error, TokenClaims};
pub use reads::{newest_grant, page_of, roles_held, undeclared_subscription};
pub(crate) use settings::DESCRIPTOR;
pub use settings::{EntraSettings, ID};
pub use sign_in_claims::{check_sign_in, parse_consent_query, read_sign_in_answer, IdTokenClaims};
use token::{request_token, ClientAuth, ClientSecret, Http, TokenAnswer, TokenFailure};

use crate::{
    BindingContext, Bound, CachePolicy, Callbacks, CeilingEnforcement, IssuedCredential,
    MintRequest, Narrowing, PlatformKey, PlatformKeys, Probe, Provider, ProviderError,
    SecretFields, SecretRequirement,
};

/// AADSTS codes meaning our app has no service principal in the tenant, or lacks consent.
const NO_CONSENT: &[u32] = &[700016, 7000229, 65001, 90094];
/// AADSTS codes meaning one of our app credentials was refused (the next one is tried):
/// a bad or expired secret or certificate, and a federated assertion no federated identity
/// credential matches (70021 none, also for minutes after one is created; 700211 issuer,
/// 700212 audience, 700213 subject; 700222 an Entra-issued token). A platform moving from a
/// secret to the federated credential keeps working on the secret until the FIC matches.
const BAD_CREDENTIAL: &[u32] = &[
    7000215, 7000222, 700027, 7000218, 700024, 70021, 700211, 700212, 700213, 700222,
];

/// The provider.
pub struct EntraApp {
    settings: EntraSettings,
    ceiling: AzureCeiling,
    http: Http,
    /// Active app credentials, preferred first.
    credentials: RwLock<Vec<Arc<dyn ClientAuth>>>,
    /// Tenants whose consent callback came back recently (Entra may still be propagating).
    consents: Mutex<HashMap<String, Instant>>,
}

/// A binding as [`Provider::bind`] parsed it.
struct EntraBinding {
    config: EntraConfig,
    ceiling: AzureCeiling,
}

/// The exclusive identifier of a customer tenant.
pub fn tenant_identifier(guid: &str) -> String {
    format!("{TENANT_IDENTIFIER_PREFIX}{guid}")
}

/// What [`tenant_identifier`] puts before the GUID.
const TENANT_IDENTIFIER_PREFIX: &str = "entra_tenant:";

/// Entra's codes as its descriptions name them: `AADSTS7000215, AADSTS700027`.
fn aadsts(codes: &[u32]) -> String {
    if codes.is_empty() {
        return "no AADSTS code".into();
    }
    codes
        .iter()
        .map(|c| format!("AADSTS{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn denied(message: String, request_id: Option<String>) -> ProviderError {
    ProviderError::Denied {
        message,
        upstream_request_id: request_id,
        trust_broken: false,
    }
}

impl EntraApp {
    /// Builds the provider.
    ///
    /// # Errors
    /// When the settings are wrong or the ceiling file cannot be read (missing policy
    /// denies).
    pub fn new(settings: EntraSettings) -> Result<EntraApp, String> {
        settings.check()?;
        let path = &settings.ceiling_file;
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: Value =
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let ceiling = AzureCeiling::from_value(&v)?;
        Ok(EntraApp {
            settings,
            ceiling,
            http: Http::new(),
            credentials: RwLock::new(Vec::new()),
            consents: Mutex::new(HashMap::new()),
        })
    }

    fn client_id(&self) -> String {
        self.settings.client_id.to_ascii_lowercase()
    }

    fn resource_url(&self, r: Resource) -> &str {
        match r {
            Resource::Graph => &self.settings.graph_resource,
            Resource::Arm => &self.settings.arm_resource,
        }
    }

    fn per_request(&self, budget: Duration) -> Duration {
        Duration::from_millis(self.settings.timeout_ms).min(budget)
    }

    /// Whether `tenant`'s consent callback came back within the propagation window.
    fn propagating(&self, tenant: &str) -> bool {
        let window = Duration::from_secs(self.settings.consent_propagation_s);
        self.consents
            .lock()
            .ok()
            .and_then(|m| m.get(tenant).copied())
            .is_some_and(|at| at.elapsed() <= window)
    }

    fn note_consent(&self, tenant: &str) {
        if let Ok(mut m) = self.consents.lock() {
            let window = Duration::from_secs(self.settings.consent_propagation_s);
            m.retain(|_, at| at.elapsed() <= window);
            m.insert(tenant.to_owned(), Instant::now());
        }
    }

    /// The app's credentials, in the order they are tried: the federated credential (no
    /// secret at all) first; stored secrets and certificates, when any are still active,
    /// after it.
    fn app_credentials(&self) -> Result<Vec<Arc<dyn ClientAuth>>, ProviderError> {
        let mut credentials: Vec<Arc<dyn ClientAuth>> = Vec::new();
        if let Some(subject) = &self.settings.federated_subject {
            credentials.push(Arc::new(token::FederatedAssertion {
                subject: subject.clone(),
                audience: self.settings.federated_audience.clone(),
            }));
        }
        credentials.extend(
            self.credentials
                .read()
                .map(|c| c.clone())
                .unwrap_or_default(),
        );
        if credentials.is_empty() {
            return Err(ProviderError::Internal(
                "no Entra app credential is active (set federated_subject, or credbroker keys entra add/activate)".into(),
            ));
        }
        Ok(credentials)
    }

    /// One token for `tenant` and `resource`, every active credential in turn (one refused
    /// falls through to the next: zero-downtime rotation); "no service principal" answers
    /// retried with backoff only while the tenant's consent is propagating. The token's
    /// claims are checked before it is returned.
    async fn token_for(
        &self,
        tenant: &str,
        resource: Resource,
        budget: Duration,
        signer: &dyn crate::AssertionSigner,
    ) -> Result<TokenAnswer, ProviderError> {
        let credentials = self.app_credentials()?;
        let deadline = Instant::now() + budget;
        let mut backoff = Duration::from_millis(250);
        let client_id = self.client_id();
        loop {
            // Every credential Entra refused, for the operator: which one and why.
            let mut refused: Vec<String> = Vec::new();
            let mut last_request = None;
            let mut retry = false;
            for auth in &credentials {
                let left = deadline.saturating_duration_since(Instant::now());
                let got = request_token(
                    &self.http,
                    &self.settings.authority_host,
                    tenant,
                    &client_id,
                    self.resource_url(resource),
                    (auth.as_ref(), signer),
                    self.per_request(left),
                )
                .await;
                match got {
                    Ok(answer) => {
                        check_claims(
                            &answer.claims,
                            tenant,
                            &client_id,
                            &self.settings.issuer_hosts,
                        )
                        .map_err(|f| {
                            denied(
                                format!(
                                    "Entra issued a token that failed the {} check ({}); it was not handed out",
                                    f.check, f.message
                                ),
                                answer.request_id.clone(),
                            )
                        })?;
                        return Ok(answer);
                    }
                    Err(TokenFailure::Refused {
                        error, request_id, ..
                    }) if error.codes.iter().any(|c| BAD_CREDENTIAL.contains(c)) => {
                        // Entra's description names the credential's own details (an
                        // assertion's subject, a key's thumbprint), and this refusal can
                        // reach a customer's browser: it carries the codes; the daemon's
                        // log the description.
                        let codes = aadsts(&error.codes);
                        tracing::warn!(credential = %auth.label(), codes = %codes, description = %error.description, request_id = ?request_id, "Entra refused an app credential");
                        refused.push(format!("{}: {codes}", auth.name()));
                        last_request = request_id;
                    }
                    Err(TokenFailure::Refused {
                        status,
                        error,
                        request_id,
                    }) => {
                        let no_consent = error.codes.iter().any(|c| NO_CONSENT.contains(c));
                        if no_consent && self.propagating(tenant) {
                            let left = deadline.saturating_duration_since(Instant::now());
                            if left > backoff {
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(Duration::from_secs(4));
                                retry = true;
                                break;
                            }
                        }
                        return Err(refusal(status, &error, request_id, tenant));
                    }
                    Err(TokenFailure::Unavailable(e)) => return Err(e),
                }
            }
            if !retry {
                return Err(denied(
                    format!(
                        "Entra refused every active app credential ({}); rotate the app credential (runbooks/entra-app-credential.md)",
                        refused.join("; ")
                    ),
                    last_request,
                ));
            }
        }
    }

    /// Compares a Graph token's `roles` with what the binding expects and allows.
    fn check_roles(
        &self,
        answer: &TokenAnswer,
        bound: &EntraBinding,
    ) -> Result<Vec<String>, ProviderError> {
        let roles: BTreeSet<String> = answer
            .claims
            .roles
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let beyond: Vec<&String> = roles.difference(&bound.ceiling.graph).collect();
        if !beyond.is_empty() {
            return Err(denied(
                format!(
                    "the Graph token carries application permissions beyond the binding's ceiling ({}); it was not handed out: remove them from the app's consent in tenant {}",
                    join(beyond.iter().map(|s| s.as_str())),
                    bound.config.tenant
                ),
                answer.request_id.clone(),
            ));
        }
        let missing: Vec<&String> = bound.ceiling.graph.difference(&roles).collect();
        if !missing.is_empty() {
            return Err(ProviderError::ConsentStale(format!(
                "tenant {} no longer grants {}: an admin of that tenant must consent again (credbroker onboard entra …)",
                bound.config.tenant,
                join(missing.iter().map(|s| s.as_str()))
            )));
        }
        Ok(roles.into_iter().collect())
    }

    fn credential(
        &self,
        answer: TokenAnswer,
        resource: Resource,
        roles: Option<Vec<String>>,
        tenant: &str,
    ) -> IssuedCredential {
        let mut credentials = SecretFields::new();
        credentials.insert("access_token", answer.token);
        IssuedCredential {
            kind: "entra_access_token",
            credentials,
            expires_at: Some(answer.expires_at),
            upstream_request_id: answer.request_id,
            details: json!({
                "tenant_id": tenant,
                "resource": self.resource_url(resource),
                "token_type": "Bearer",
                "roles": roles,
            }),
            subject: Some(tenant.to_owned()),
        }
    }
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// An Entra refusal as the error the core acts on.
fn refusal(
    status: u16,
    error: &claims::AadError,
    request_id: Option<String>,
    tenant: &str,
) -> ProviderError {
    let codes = error
        .codes
        .iter()
        .map(|c| format!("AADSTS{c}"))
        .collect::<Vec<_>>()
        .join(",");
    // Entra's description can name the request's own details (the assertion's subject, the
    // app's credential), and a refusal can reach a customer's consent browser: the message
    // carries the codes, the daemon's log the description.
    tracing::warn!(%status, codes = %codes, description = %error.description, error = %error.error, request_id = ?request_id, tenant, "Entra refused the token request");
    if error.codes.iter().any(|c| NO_CONSENT.contains(c)) {
        return ProviderError::ConsentMissing(format!(
            "tenant {tenant} has no consent for our app ({codes}: the enterprise application was deleted or consent withdrawn): an admin of that tenant must consent again (credbroker onboard entra …)"
        ));
    }
    if error.codes.contains(&90002) {
        return ProviderError::Denied {
            message: format!("tenant {tenant} does not exist ({codes})"),
            upstream_request_id: request_id,
            trust_broken: true,
        };
    }
    if error.codes.contains(&7000112) {
        return denied(format!("our Entra app is disabled ({codes})"), request_id);
    }
    if error.codes.contains(&53003) {
        return denied(
            format!("a Conditional Access policy in tenant {tenant} blocks our app ({codes})"),
            request_id,
        );
    }
    // 9001023 (/common), 1002012 (scope), 70003 (grant): the broker asked wrongly.
    if error
        .codes
        .iter()
        .any(|c| [9001023, 1002012, 70003].contains(c))
    {
        return ProviderError::Internal(format!(
            "Entra refused the broker's request shape ({codes}); Entra's description is in the broker's log"
        ));
    }
    denied(
        format!(
            "Entra HTTP {status} {}{}; Entra's description is in the broker's log",
            error.error,
            if codes.is_empty() {
                String::new()
            } else {
                format!(" ({codes})")
            },
        ),
        request_id,
    )
}

#[async_trait]
impl Provider for EntraApp {
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
        CeilingEnforcement::Verified
    }

    fn bind(&self, config: &Value, ceiling: &Value) -> Result<Bound, ProviderError> {
        let config = parse_config(config).map_err(ProviderError::InvalidConfig)?;
        let ceiling = if ceiling.is_null() {
            self.ceiling.clone()
        } else {
            let c = AzureCeiling::from_value(ceiling).map_err(ProviderError::InvalidConfig)?;
            c.within(&self.ceiling)
                .map_err(ProviderError::InvalidConfig)?;
            c
        };
        Ok(Bound::new(EntraBinding { config, ceiling }))
    }

    fn credential_lifetime_s(&self, _binding: &BindingContext<'_>) -> Option<u64> {
        // App-only tokens live 60-90 minutes; Entra says 3599 s for most.
        Some(3599)
    }

    fn describe_ceiling(&self, binding: &BindingContext<'_>) -> Value {
        match binding.bound.get::<EntraBinding>() {
            Ok(b) => {
                let mut v = b.ceiling.to_value();
                v["resources"] = json!(b
                    .config
                    .resources
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>());
                v
            }
            Err(e) => json!({ "error": e.to_string() }),
        }
    }

    fn exclusive_identifiers(&self, config: &Value) -> Vec<String> {
        parse_config(config)
            .map(|c| vec![tenant_identifier(&c.tenant)])
            .unwrap_or_default()
    }

    fn onboarding(
        &self,
        tenant_id: &str,
        _parameters: &serde_json::Map<String, Value>,
    ) -> Option<Value> {
        Some(json!({
            "provider": ID,
            "tenant": tenant_id,
            "client_id": self.client_id(),
            "then": "send the install_url to an admin of the customer's tenant (Global Administrator or Privileged Role Administrator): they sign in to that tenant through it and grant admin consent; the tenant is bound to this broker tenant when Entra sends them back with a code the broker redeems at that tenant and whose sign-in proves an administrator of it consented through this link (single use, expires in one hour; runbooks/entra-onboarding.md). Then the customer deploys onboarding-templates/azure/*.bicep with principalId = the service principal object id shown on the binding."
        }))
    }

    fn normalize_narrowing(
        &self,
        binding: &BindingContext<'_>,
        narrow: Option<&Value>,
    ) -> Result<Narrowing, ProviderError> {
        let bound = binding.bound.get::<EntraBinding>()?;
        let resource = match narrow {
            None => bound
                .config
                .resources
                .first()
                .copied()
                .unwrap_or(Resource::Graph),
            Some(n) => parse_narrowing(n, &bound.config.resources).map_err(|(exceeds, m)| {
                if exceeds {
                    ProviderError::NarrowingExceedsCeiling(m)
                } else {
                    ProviderError::InvalidNarrowing(m)
                }
            })?,
        };
        Ok(Narrowing {
            canonical: resource.as_str().to_owned(),
            value: Some(json!({ "resource": resource.as_str() })),
        })
    }

    async fn mint(&self, request: &MintRequest<'_>) -> Result<IssuedCredential, ProviderError> {
        let bound = request.binding.bound.get::<EntraBinding>()?;
        let resource = match &request.narrowing.value {
            Some(v) => parse_narrowing(v, &bound.config.resources)
                .map_err(|(_, m)| ProviderError::InvalidNarrowing(m))?,
            None => bound
                .config
                .resources
                .first()
                .copied()
                .unwrap_or(Resource::Graph),
        };
        let tenant = &bound.config.tenant;
        let answer = self
            .token_for(tenant, resource, request.timeout, request.assertions)
            .await?;
        let roles = match resource {
            Resource::Graph => Some(self.check_roles(&answer, bound)?),
            // ARM tokens carry no roles: what our principal may do is read from its role
            // assignments at the binding's scopes, on every mint.
            Resource::Arm => {
                self.check_arm(&answer, bound, request.timeout).await?;
                None
            }
        };
        Ok(self.credential(answer, resource, roles, tenant))
    }

    fn probe(&self) -> Option<&dyn Probe> {
        Some(self)
    }

    fn callbacks(&self) -> Option<&dyn Callbacks> {
        Some(self)
    }

    fn platform_keys(&self) -> Option<&dyn PlatformKeys> {
        Some(self)
    }
}

/// Platform key material of the app.
fn auth_of(k: &PlatformKey) -> Result<Arc<dyn ClientAuth>, ProviderError> {
    let m = &k.material;
    match (m.expose("client_secret"), m.expose("certificate_pem")) {
        (Some(secret), None) => {
            let secret = secret.trim();
            if !(16..=255).contains(&secret.len()) || !secret.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ProviderError::InvalidConfig(
                    "client_secret must be 16-255 printable characters".into(),
                ));
            }
            Ok(Arc::new(ClientSecret {
                version: k.version,
                secret: SecretString::from(secret.to_owned()),
            }))
        }
        (None, Some(pem)) => Ok(Arc::new(token::parse_certificate(pem, k.version)?)),
        _ => Err(ProviderError::InvalidConfig(
            "a key has exactly one field: client_secret (a client secret value of the app) or certificate_pem (its certificate and RSA private key)".into(),
        )),
    }
}

impl PlatformKeys for EntraApp {
    fn check(
        &self,
        material: &SecretFields,
        keyed: &dyn Fn(&[u8]) -> String,
    ) -> Result<String, ProviderError> {
        let auth = auth_of(&PlatformKey {
            version: 0,
            material: material.clone(),
        })?;
        if let Some(secret) = material.expose("client_secret") {
            return Ok(crate::keyed_secret_fingerprint(
                "client-secret",
                "entra client secret",
                secret,
                keyed,
            ));
        }
        Ok(auth
            .label()
            .replace("certificate v0 ", "certificate:x5t#S256:")
            .replace(['(', ')'], ""))
    }

    fn earlier_fingerprint(&self, material: &SecretFields) -> Option<String> {
        material
            .expose("client_secret")
            .map(|secret| format!("client-secret:{}", crate::plain_sha256_prefix(secret)))
    }

    fn install(&self, keys: Vec<PlatformKey>) -> Result<(), ProviderError> {
        let parsed = keys.iter().map(auth_of).collect::<Result<Vec<_>, _>>()?;
        // A retired credential must stop being used even if a panic poisoned the lock.
        match self.credentials.write() {
            Ok(mut slot) => *slot = parsed,
            Err(poisoned) => *poisoned.into_inner() = parsed,
        }
        Ok(())
    }
}
