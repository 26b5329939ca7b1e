//! `gcp_wif`: OAuth2 access tokens for a customer's GCP service account through Workload
//! Identity Federation trusting the broker's own OIDC issuer — no secret anywhere.
//!
//! Mint: an assertion from our issuer (`sub` = the binding's broker-made subject, `aud` = the
//! pool provider's resource name) → STS token exchange → `generateAccessToken` for the
//! service account, scoped to the ceiling (or the narrowing within it). The customer's
//! provider pins our subject in its attribute condition (and the service account's
//! `workloadIdentityUser` grant names exactly that principal), so one tenant's assertion can
//! never satisfy another tenant's trust; the activation probe shows it by trying a foreign
//! subject, which must be refused.

pub mod answer;
pub mod lint;
mod settings;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

pub use answer::{iam_answer, sts_answer, AccessToken, StsToken};
pub(crate) use settings::DESCRIPTOR;
pub use settings::{GcpCeiling, GcpConfig, GcpSettings, ID};

use crate::http::Http;
use crate::{
    BindingContext, BindingParameter, Bound, CachePolicy, CeilingEnforcement, IssuedCredential,
    MintRequest, Narrowing, Probe, ProbeReport, Provider, ProviderError, RefusalReason,
    SecretFields, SecretRequirement, OIDC_SUBJECT,
};

/// The provider.
pub struct GcpWif {
    settings: GcpSettings,
    ceiling: GcpCeiling,
    http: Http,
}

/// A binding as [`Provider::bind`] parsed it.
struct GcpBinding {
    config: GcpConfig,
    subject: String,
    ceiling: GcpCeiling,
}

/// Where a foreign subject was refused (the probe's proof of isolation).
enum Refusal {
    /// STS refused the exchange (the attribute condition).
    Sts,
    /// IAM Credentials refused the impersonation (the principal grant).
    Iam,
}

impl GcpWif {
    /// Builds the provider.
    ///
    /// # Errors
    /// When the ceiling file is missing or malformed (a missing policy denies), or the CA
    /// file does not hold certificates.
    pub fn new(settings: GcpSettings) -> Result<GcpWif, String> {
        let path = &settings.ceiling_file;
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: Value =
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let ceiling = GcpCeiling::from_value(&v)?;
        let http = match &settings.ca_file {
            Some(ca) => {
                let pem =
                    std::fs::read_to_string(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
                Http::with_extra_roots(&pem)?
            }
            None => Http::new(),
        };
        Ok(GcpWif {
            settings,
            ceiling,
            http,
        })
    }

    fn per_request(&self, budget: Duration) -> Duration {
        Duration::from_millis(self.settings.timeout_ms).min(budget)
    }

    /// The token exchange for `subject`: a federated token, or STS's refusal.
    async fn exchange(
        &self,
        b: &GcpBinding,
        subject: &str,
        request: &MintRequest<'_>,
    ) -> Result<StsToken, ProviderError> {
        let (status, body, assertion) = self.exchange_raw(b, subject, request).await?;
        sts_answer(status, &body, &[assertion.expose_secret()])
    }

    /// The token exchange for `subject`: STS's status and body, unparsed, and the assertion
    /// sent (an echo of it in the answer is never quoted).
    async fn exchange_raw(
        &self,
        b: &GcpBinding,
        subject: &str,
        request: &MintRequest<'_>,
    ) -> Result<(u16, Bytes, SecretString), ProviderError> {
        let assertion = request
            .assertions
            .sign(subject, &b.config.assertion_audience())?;
        let audience = b.config.provider_resource();
        let body = crate::http::secret_form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("audience", &audience),
            ("scope", "https://www.googleapis.com/auth/cloud-platform"),
            (
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("subject_token", assertion.expose_secret()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ]);
        let req = http::Request::post(&self.settings.sts_url)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(body))
            .map_err(|_| ProviderError::InvalidConfig("sts_url is not a valid URI".into()))?;
        let a = self
            .http
            .exchange(
                req,
                self.per_request(request.timeout),
                "GCP STS",
                &[assertion.expose_secret()],
            )
            .await?;
        Ok((a.status, a.body, assertion))
    }

    /// `generateAccessToken` for the binding's service account with the federated token.
    async fn impersonate(
        &self,
        b: &GcpBinding,
        federated: &SecretString,
        scopes: &[String],
        budget: Duration,
    ) -> Result<AccessToken, ProviderError> {
        let (status, body) = self.impersonate_raw(b, federated, scopes, budget).await?;
        iam_answer(
            status,
            &body,
            self.settings.lifetime_s,
            &[federated.expose_secret()],
        )
    }

    /// `generateAccessToken`: IAM Credentials' status and body, unparsed.
    async fn impersonate_raw(
        &self,
        b: &GcpBinding,
        federated: &SecretString,
        scopes: &[String],
        budget: Duration,
    ) -> Result<(u16, Bytes), ProviderError> {
        let auth = crate::http::bearer(federated.expose_secret())
            .ok_or_else(|| ProviderError::Internal("token is not a header value".into()))?;
        let body = json!({
            "scope": scopes,
            "lifetime": format!("{}s", self.settings.lifetime_s),
        });
        let url = format!(
            "{}/v1/projects/-/serviceAccounts/{}:generateAccessToken",
            self.settings.iam_credentials_url, b.config.service_account
        );
        let req = http::Request::post(url)
            .header(http::header::AUTHORIZATION, auth)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|_| {
                ProviderError::InvalidConfig("iam_credentials_url is not a valid URI".into())
            })?;
        let a = self
            .http
            .exchange(
                req,
                self.per_request(budget),
                "GCP IAM Credentials",
                &[federated.expose_secret()],
            )
            .await?;
        Ok((a.status, a.body))
    }

    /// Whether a random subject of the binding subjects' own shape (so a condition that
    /// only checks the `cb-` prefix is caught) is refused, and where; `Ok(None)` when it was
    /// accepted all the way (the customer's trust pins no subject). Only the refusals a
    /// subject condition produces count — STS `unauthorized_client` (or `invalid_grant`)
    /// naming the attribute condition, IAM Credentials 403 `PERMISSION_DENIED`; any other
    /// answer proves nothing and fails the probe as it is.
    async fn foreign_subject_refused(
        &self,
        b: &GcpBinding,
        request: &MintRequest<'_>,
    ) -> Result<Option<Refusal>, ProviderError> {
        let foreign = crate::random_subject()?;
        let (status, body, assertion) = self.exchange_raw(b, &foreign, request).await?;
        if answer::refused_by_condition(status, &body) {
            return Ok(Some(Refusal::Sts));
        }
        let federated = sts_answer(status, &body, &[assertion.expose_secret()])?;
        let scopes: Vec<String> = b.ceiling.scopes.iter().cloned().collect();
        let (status, body) = self
            .impersonate_raw(b, &federated.access_token, &scopes, request.timeout)
            .await?;
        if answer::refused_by_grant(status, &body) {
            return Ok(Some(Refusal::Iam));
        }
        iam_answer(
            status,
            &body,
            self.settings.lifetime_s,
            &[federated.access_token.expose_secret()],
        )
        .map(|_| None)
    }
}

fn scopes_of(b: &GcpBinding, narrowing: &Narrowing) -> Vec<String> {
    match narrowing
        .value
        .as_ref()
        .and_then(|v| v.get("scopes"))
        .and_then(Value::as_array)
    {
        Some(list) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        None => b.ceiling.scopes.iter().cloned().collect(),
    }
}

#[async_trait]
impl Provider for GcpWif {
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
        // The scopes (the ceiling's, or a narrowing within them) go to generateAccessToken.
        CeilingEnforcement::Upstream
    }

    fn bind(&self, config: &Value, ceiling: &Value) -> Result<Bound, ProviderError> {
        let config = GcpConfig::parse(config).map_err(ProviderError::InvalidConfig)?;
        let subject = config
            .broker
            .as_ref()
            .map(|b| b.subject.clone())
            .filter(|s| !s.is_empty() && s.len() <= 127)
            .ok_or_else(|| {
                ProviderError::InvalidConfig(
                    "config.broker.subject is missing: it is generated by the broker at binding add".into(),
                )
            })?;
        let ceiling = if ceiling.is_null() {
            // The platform's default scopes; wider ones only when the binding asks.
            GcpCeiling {
                scopes: self.ceiling.default_scopes.clone(),
                default_scopes: self.ceiling.default_scopes.clone(),
                roles: self.ceiling.roles.clone(),
            }
        } else {
            let c = GcpCeiling::from_value(ceiling).map_err(ProviderError::InvalidConfig)?;
            c.within(&self.ceiling)
                .map_err(ProviderError::InvalidConfig)?;
            c
        };
        Ok(Bound::new(GcpBinding {
            config,
            subject,
            ceiling,
        }))
    }

    fn describe_ceiling(&self, binding: &BindingContext<'_>) -> Value {
        match binding.bound.get::<GcpBinding>() {
            Ok(b) => b.ceiling.to_value(),
            Err(e) => json!({ "error": e.to_string() }),
        }
    }

    fn normalize_narrowing(
        &self,
        binding: &BindingContext<'_>,
        narrow: Option<&Value>,
    ) -> Result<Narrowing, ProviderError> {
        let b = binding.bound.get::<GcpBinding>()?;
        let Some(narrow) = narrow else {
            return Ok(Narrowing::none());
        };
        let obj = narrow.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
            ProviderError::InvalidNarrowing("narrow must be {\"scopes\": [...]}".into())
        })?;
        let list = obj.get("scopes").and_then(Value::as_array).ok_or_else(|| {
            ProviderError::InvalidNarrowing("narrow.scopes must be a list of scope URLs".into())
        })?;
        if list.is_empty() || list.len() > 20 {
            return Err(ProviderError::InvalidNarrowing(
                "narrow.scopes must list 1..=20 scopes".into(),
            ));
        }
        let mut scopes = std::collections::BTreeSet::new();
        for s in list {
            let s = s.as_str().ok_or_else(|| {
                ProviderError::InvalidNarrowing("narrow.scopes must be strings".into())
            })?;
            if !b.ceiling.scopes.contains(s) {
                return Err(ProviderError::NarrowingExceedsCeiling(format!(
                    "scope {} is outside the binding's ceiling",
                    s.chars().take(120).collect::<String>()
                )));
            }
            scopes.insert(s.to_owned());
        }
        // Asking for exactly the ceiling is no narrowing: one cache entry, one token (Google
        // client libraries ask for the scopes the metadata server listed).
        if scopes == b.ceiling.scopes {
            return Ok(Narrowing::none());
        }
        let canonical = scopes.iter().cloned().collect::<Vec<_>>().join(" ");
        Ok(Narrowing {
            canonical,
            value: Some(json!({ "scopes": scopes })),
        })
    }

    async fn mint(&self, request: &MintRequest<'_>) -> Result<IssuedCredential, ProviderError> {
        let b = request.binding.bound.get::<GcpBinding>()?;
        let federated = self.exchange(b, &b.subject, request).await?;
        let scopes = scopes_of(b, request.narrowing);
        let token = self
            .impersonate(b, &federated.access_token, &scopes, request.timeout)
            .await?;
        let mut credentials = SecretFields::new();
        credentials.insert("access_token", token.access_token);
        Ok(IssuedCredential {
            kind: "gcp_access_token",
            credentials,
            expires_at: Some(token.expires_at),
            upstream_request_id: None,
            details: json!({
                "token_type": "Bearer",
                "service_account": b.config.service_account,
                "project_number": b.config.project_number,
                "scopes": scopes,
            }),
            subject: Some(b.config.service_account.clone()),
        })
    }

    fn credential_lifetime_s(&self, _binding: &BindingContext<'_>) -> Option<u64> {
        Some(self.settings.lifetime_s)
    }

    fn binding_parameters(&self, _config: &Value) -> &'static [BindingParameter] {
        &[OIDC_SUBJECT]
    }

    fn exclusive_identifiers(&self, config: &Value) -> Vec<String> {
        // One service account serves one tenant: a second tenant binding it would share the
        // customer's grant.
        GcpConfig::parse(config)
            .map(|c| vec![format!("gcp_service_account:{}", c.service_account)])
            .unwrap_or_default()
    }

    fn probe_proves_identifiers(&self) -> bool {
        // The probe shows the trust names this tenant's value (see Provider's doc).
        true
    }

    fn probe(&self) -> Option<&dyn Probe> {
        Some(self)
    }
}

#[async_trait]
impl Probe for GcpWif {
    fn gates_activation(&self) -> bool {
        true
    }

    /// Mints with the binding's subject, then shows that a foreign subject is refused (by
    /// the attribute condition at STS, or by the principal grant at IAM Credentials).
    async fn probe(&self, request: &MintRequest<'_>) -> Result<ProbeReport, ProviderError> {
        let b = request.binding.bound.get::<GcpBinding>()?;
        self.mint(request).await?;
        let refused = self.foreign_subject_refused(b, request).await?;
        let at = match refused {
            Some(Refusal::Sts) => "sts",
            Some(Refusal::Iam) => "iam",
            None => {
                return Err(ProviderError::ActivationRefused {
                    reason: RefusalReason::SubjectNotEnforced,
                    message: format!(
                        "an assertion of the broker's issuer for another subject obtained a token for {}: the pool provider must set attribute condition assertion.sub == '{}' and the workloadIdentityUser grant must name principal://…/subject/{} (not principalSet)",
                        b.config.service_account, b.subject, b.subject
                    ),
                    upstream_request_id: None,
                })
            }
        };
        Ok(ProbeReport {
            summary: format!(
                "token minted for {}; a foreign subject was refused at {}",
                b.config.service_account,
                if at == "sts" {
                    "STS (attribute condition)"
                } else {
                    "IAM Credentials (principal grant; add the attribute condition too)"
                }
            ),
            facts: json!({
                "project_number": b.config.project_number,
                "pool_id": b.config.pool_id,
                "provider_id": b.config.provider_id,
                "service_account": b.config.service_account,
                "subject": b.subject,
                "foreign_subject_refused_at": at,
            }),
            upstream_request_ids: Vec::new(),
        })
    }
}
