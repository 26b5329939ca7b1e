//! `servicenow_oauth`: an OAuth bearer for a customer's ServiceNow instance, minted with the
//! client-credentials grant from a pasted OAuth client (sealed fields `client_id`,
//! `client_secret`). The client secret never leaves the broker: a resolve gets the bearer.
//!
//! ServiceNow has no federation. What the bearer may do is its OAuth Application User's
//! roles, which no token request can narrow: the scope is fixed (any `narrow` is refused)
//! and verified by the probe, which reads the application user's roles (`sys_user_has_role`)
//! and refuses roles beyond policies/servicenow.json, then reads one record of an allowed
//! table.

pub mod answer;
mod settings;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

pub use answer::{application_roles, parse_token_answer, token_or_error, TokenAnswer};
pub use settings::parse_config as settings_parse_config;
pub(crate) use settings::DESCRIPTOR;
pub use settings::{ServiceNowCeiling, ServiceNowSettings, ID};

use crate::http::Http;
use crate::{
    BindingContext, Bound, CachePolicy, CeilingEnforcement, IssuedCredential, MintRequest,
    Narrowing, Probe, ProbeReport, Provider, ProviderError, RefusalReason, SecretFields,
    SecretRequirement,
};

/// The provider.
pub struct ServiceNow {
    settings: ServiceNowSettings,
    ceiling: ServiceNowCeiling,
    http: Http,
}

/// A binding as [`Provider::bind`] parsed it.
struct SnBinding {
    /// `https://acme.service-now.com` (no trailing slash).
    instance: String,
    scope: Option<String>,
    ceiling: ServiceNowCeiling,
}

fn denied(message: String, request_id: Option<String>) -> ProviderError {
    ProviderError::Denied {
        message,
        upstream_request_id: request_id,
        trust_broken: false,
    }
}

impl ServiceNow {
    /// Builds the provider.
    ///
    /// # Errors
    /// When the ceiling file is missing or malformed (a missing policy denies).
    pub fn new(settings: ServiceNowSettings) -> Result<ServiceNow, String> {
        let path = &settings.ceiling_file;
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: Value =
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let ceiling = ServiceNowCeiling::from_value(&v)?;
        // Every instance name is resolved to public addresses only, on every connection (a
        // name answering a private one later is refused too), whatever `allowed_hosts` says:
        // ServiceNow is a cloud service, and a customer's custom domain points at it. A
        // local test double is named by its address literal, which the URL rules judge and
        // nothing resolves.
        let http = Http::public_only(&[], None)?;
        Ok(ServiceNow {
            settings,
            ceiling,
            http,
        })
    }

    fn per_request(&self, budget: Duration) -> Duration {
        Duration::from_millis(self.settings.timeout_ms).min(budget)
    }

    /// The client-credentials grant at `{instance}/oauth_token.do` (form-encoded; the secret
    /// only in the body).
    async fn mint_token(
        &self,
        b: &SnBinding,
        secret: &SecretFields,
        budget: Duration,
    ) -> Result<TokenAnswer, ProviderError> {
        let (Some(client_id), Some(client_secret)) =
            (secret.expose("client_id"), secret.expose("client_secret"))
        else {
            return Err(ProviderError::InvalidConfig(
                "the secret must have the fields client_id and client_secret".into(),
            ));
        };
        let mut pairs = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", client_secret),
        ];
        if let Some(scope) = &b.scope {
            pairs.push(("scope", scope));
        }
        let body = crate::http::secret_form(&pairs);
        let request = http::Request::post(format!("{}/oauth_token.do", b.instance))
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(body))
            .map_err(|_| ProviderError::InvalidConfig("instance URL is not a valid URI".into()))?;
        let answer = self
            .http
            .exchange(
                request,
                self.per_request(budget),
                "the ServiceNow instance",
                &[client_secret],
            )
            .await?;
        token_or_error(&answer, &b.instance, &[client_secret])
    }

    /// `GET {instance}{path}` with `token`; the JSON `result`.
    async fn table(
        &self,
        b: &SnBinding,
        token: &SecretString,
        path: &str,
        budget: Duration,
    ) -> Result<Value, ProviderError> {
        let auth = crate::http::bearer(token.expose_secret())
            .ok_or_else(|| ProviderError::Internal("token is not a header value".into()))?;
        let request = http::Request::get(format!("{}{path}", b.instance))
            .header(http::header::AUTHORIZATION, auth)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|_| ProviderError::InvalidConfig("table URL is not a valid URI".into()))?;
        let a = self
            .http
            .exchange(
                request,
                self.per_request(budget),
                "the ServiceNow table API",
                &[token.expose_secret()],
            )
            .await?;
        if a.status == 429 || a.status >= 500 {
            return Err(ProviderError::Unavailable {
                message: format!("ServiceNow table API HTTP {}", a.status),
                upstream_request_id: a.request_id,
            });
        }
        if a.status != 200 || a.content_type != "application/json" {
            // Status and content type only: an instance's error text is not echoed into
            // audit records, probes or the intake page.
            return Err(denied(
                format!(
                    "ServiceNow table API HTTP {} ({}) reading {}",
                    a.status,
                    a.content_type,
                    path.split('?').next().unwrap_or("")
                ),
                a.request_id,
            ));
        }
        let v: Value = serde_json::from_slice(&a.body).map_err(|_| ProviderError::Unavailable {
            message: "ServiceNow table answer is not JSON".into(),
            upstream_request_id: a.request_id.clone(),
        })?;
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    }
}

#[async_trait]
impl Provider for ServiceNow {
    fn id(&self) -> &'static str {
        ID
    }

    fn secret_requirement(&self) -> SecretRequirement {
        SecretRequirement::Required
    }

    fn cache_policy(&self) -> CachePolicy {
        CachePolicy::UntilExpiry
    }

    fn shares_upstream(&self) -> bool {
        false
    }

    fn ceiling_enforcement(&self) -> CeilingEnforcement {
        // The bearer carries its application user's roles; nothing in the request can
        // narrow it. The probe verifies those roles against the ceiling.
        CeilingEnforcement::Fixed
    }

    fn bind(&self, config: &Value, ceiling: &Value) -> Result<Bound, ProviderError> {
        let (instance, scope) = settings::parse_config(config, &self.settings.allowed_hosts)
            .map_err(ProviderError::InvalidConfig)?;
        let ceiling = if ceiling.is_null() {
            self.ceiling.clone()
        } else {
            let c = ServiceNowCeiling::from_value(ceiling).map_err(ProviderError::InvalidConfig)?;
            c.within(&self.ceiling)
                .map_err(ProviderError::InvalidConfig)?;
            c
        };
        Ok(Bound::new(SnBinding {
            instance,
            scope,
            ceiling,
        }))
    }

    fn credential_lifetime_s(&self, _binding: &BindingContext<'_>) -> Option<u64> {
        // ServiceNow's default access token lifespan: 1800 s.
        Some(1799)
    }

    fn describe_ceiling(&self, binding: &BindingContext<'_>) -> Value {
        match binding.bound.get::<SnBinding>() {
            Ok(b) => b.ceiling.to_value(),
            Err(e) => json!({ "error": e.to_string() }),
        }
    }

    fn normalize_narrowing(
        &self,
        binding: &BindingContext<'_>,
        narrow: Option<&Value>,
    ) -> Result<Narrowing, ProviderError> {
        binding.bound.get::<SnBinding>()?;
        match narrow {
            None => Ok(Narrowing::none()),
            Some(_) => Err(ProviderError::NarrowingExceedsCeiling(
                "a ServiceNow bearer carries its OAuth Application User's roles; it cannot be narrowed".into(),
            )),
        }
    }

    async fn mint(&self, request: &MintRequest<'_>) -> Result<IssuedCredential, ProviderError> {
        let b = request.binding.bound.get::<SnBinding>()?;
        let secret = request.secret.ok_or(ProviderError::SecretMissing)?;
        let t = self.mint_token(b, secret, request.timeout).await?;
        let mut credentials = SecretFields::new();
        credentials.insert("access_token", t.access_token);
        Ok(IssuedCredential {
            kind: "servicenow_oauth",
            credentials,
            expires_at: Some(t.expires_at),
            upstream_request_id: None,
            details: json!({
                "instance_url": b.instance,
                "token_type": "Bearer",
                "scope": t.scope,
            }),
            subject: Some(b.instance.clone()),
        })
    }

    fn secret_destination(&self, config: &Value) -> Option<String> {
        settings::parse_config(config, &self.settings.allowed_hosts)
            .ok()
            .map(|(instance, _)| instance)
    }

    fn secret_fields(&self, _binding: &BindingContext<'_>) -> Vec<String> {
        vec!["client_id".into(), "client_secret".into()]
    }

    fn probe(&self) -> Option<&dyn Probe> {
        Some(self)
    }
}

#[async_trait]
impl Probe for ServiceNow {
    fn gates_activation(&self) -> bool {
        true
    }

    /// Mints a token, reads the application user's active roles and refuses any beyond the
    /// ceiling, then reads one record of the first table the ceiling allows.
    async fn probe(&self, request: &MintRequest<'_>) -> Result<ProbeReport, ProviderError> {
        let b = request.binding.bound.get::<SnBinding>()?;
        let secret = request.secret.ok_or(ProviderError::SecretMissing)?;
        let t = self.mint_token(b, secret, request.timeout).await?;
        let roles_path = "/api/now/table/sys_user_has_role?sysparm_query=user%3Djavascript%3Ags.getUserID()%5Estate%3Dactive&sysparm_fields=role.name&sysparm_limit=1000";
        let result = self
            .table(b, &t.access_token, roles_path, request.timeout)
            .await?;
        let roles = answer::application_roles(&result).map_err(|message| {
            ProviderError::ActivationRefused {
                reason: RefusalReason::Other,
                message,
                upstream_request_id: None,
            }
        })?;
        let beyond: Vec<&str> = roles
            .iter()
            .filter(|r| !b.ceiling.roles.contains(*r))
            .map(String::as_str)
            .collect();
        if !beyond.is_empty() {
            // What the requests sent: the client secret and the token just minted.
            let sent = [
                secret.expose("client_secret").unwrap_or_default(),
                t.access_token.expose_secret(),
            ];
            return Err(ProviderError::ActivationRefused {
                reason: RefusalReason::Other,
                message: format!(
                    "the OAuth Application User holds role(s) beyond policies/servicenow.json: {}; give it only read roles of the ceiling",
                    // Quoted as printable text: a role name is the instance's to choose, and
                    // one that repeats what was sent is withheld (the message reaches the
                    // intake page and the audit record).
                    beyond
                        .iter()
                        .map(|r| crate::quoted_unless_echo(r, 100, &sent))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                upstream_request_id: None,
            });
        }
        let table = b.ceiling.tables.iter().next().cloned().unwrap_or_default();
        self.table(
            b,
            &t.access_token,
            &format!("/api/now/table/{table}?sysparm_limit=1"),
            request.timeout,
        )
        .await?;
        Ok(ProbeReport {
            summary: format!(
                "token minted; application user roles: {}; read {table}",
                if roles.is_empty() {
                    "(none)".to_owned()
                } else {
                    roles.join(", ")
                }
            ),
            facts: json!({ "instance_url": b.instance, "roles": roles, "table_read": table }),
            upstream_request_ids: Vec::new(),
        })
    }
}
