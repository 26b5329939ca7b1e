//! `atlassian_forge`: Jira and Confluence Cloud through our Forge app's Forge Remote.
//!
//! No per-install secret and no global private key exist. Atlassian signs every call Forge
//! makes to the broker (the Forge Invocation Token, [`fit`]) and, because the manifest enables
//! `auth.appSystemToken`, attaches a short-lived app system token (`x-forge-oauth-system`).
//! The broker verifies the FIT before anything else, binds the installation to the tenant that
//! expects the site (the cloudId read from the signed `app.apiBaseUrl`) once an administrator
//! of the site types that onboarding's connect code on the app's admin page, seals each fresher
//! token in the store with its `exp`, and hands the freshest one out on resolve. The hourly
//! scheduled trigger keeps a token of at least 2 h available; tokens live at most 4 h.
//!
//! The token carries the manifest's scopes: the ceiling is fixed (policies/atlassian.json,
//! which the shipped manifest must equal) and `narrow` is refused.

pub mod fit;
pub(crate) mod lint;
pub mod settings;

use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::http::Http;
use crate::{
    BindingContext, Bound, CachePolicy, CapturedToken, CeilingEnforcement, Invocation, Invocations,
    IssuedCredential, MintRequest, Narrowing, Provider, ProviderError, SecretFields,
    SecretRequirement,
};
pub(crate) use settings::DESCRIPTOR;
pub use settings::{ForgeCeiling, ForgeConfig, ForgeSettings, ID};

/// The longest lifetime of an app system token, seconds (Atlassian: 4 h).
pub const SYSTEM_TOKEN_LIFETIME_S: u64 = 4 * 3600;
/// The least lifetime a handed-out token keeps, seconds, whatever `min_ttl_s` says.
pub const MIN_REMAINING_S: u64 = 60;
/// How often Forge's scheduled trigger runs, seconds.
pub const TRIGGER_INTERVAL_S: i64 = 3600;
/// Largest invocation body read, bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The key of the app's admin page (manifest `jira:adminPage`), where a site administrator
/// types the connect code.
pub const CONNECT_MODULE_KEY: &str = "credbroker-connect";
/// Connect codes are this many characters or more (the broker makes 24), at most 64.
pub const MIN_CONNECT_CODE: usize = 16;

/// The exclusive identifier of a site.
pub fn site_identifier(cloud_id: &str) -> String {
    format!("atlassian_site:{cloud_id}")
}

/// The exclusive identifier of an installation.
pub fn installation_identifier(installation: &str) -> String {
    format!("forge_installation:{installation}")
}

/// The credentials a resolve hands out for `token`.
fn handed_out(token: &str) -> SecretFields {
    let mut credentials = SecretFields::new();
    credentials.insert("access_token", SecretString::from(token.to_owned()));
    credentials
}

/// The provider.
pub struct AtlassianForge {
    settings: ForgeSettings,
    ceiling: ForgeCeiling,
    expect: fit::Expect,
    jwks: fit::Jwks,
}

/// A binding as [`Provider::bind`] parsed it.
struct ForgeBinding {
    config: ForgeConfig,
}

impl AtlassianForge {
    /// The provider for `settings`.
    ///
    /// # Errors
    /// Bad settings, or a ceiling file that is missing or wrong (no ceiling, no provider).
    pub fn new(settings: ForgeSettings) -> Result<AtlassianForge, String> {
        settings.check()?;
        let text = std::fs::read_to_string(&settings.ceiling_file).map_err(|e| {
            format!(
                "ceiling file {}: {e}",
                settings.ceiling_file.to_string_lossy()
            )
        })?;
        let ceiling = ForgeCeiling::parse(&text).map_err(|e| {
            format!(
                "ceiling file {}: {e}",
                settings.ceiling_file.to_string_lossy()
            )
        })?;
        let expect = fit::Expect {
            app_id: settings.app_id.clone(),
            environment: settings.environment.clone(),
            api_base_hosts: settings.api_base_hosts.clone(),
        };
        let jwks = fit::Jwks::new(
            settings.jwks_url.clone(),
            Http::new(),
            Duration::from_millis(settings.timeout_ms),
        );
        Ok(AtlassianForge {
            settings,
            ceiling,
            expect,
            jwks,
        })
    }

    /// How many times the Forge key set was fetched.
    pub fn jwks_fetches(&self) -> u64 {
        self.jwks.fetches()
    }

    /// The system token of `headers`, checked: a compact JWT whose `exp` is in the future and
    /// within 4 h.
    fn captured(value: &http::HeaderValue) -> Result<CapturedToken, String> {
        let token = value
            .to_str()
            .map_err(|_| "the system token is not ASCII")?;
        let exp = fit::system_token_exp(token)?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if exp <= now {
            return Err("the system token has expired".into());
        }
        if exp - now > fit::MAX_SYSTEM_TOKEN_LIFETIME_S {
            return Err("the system token claims to live longer than 4 h".into());
        }
        let mut fields = SecretFields::new();
        fields.insert("system_token", SecretString::from(token.to_owned()));
        fields.insert("expires_at", SecretString::from(exp.to_string()));
        fields.insert("captured_at", SecretString::from(now.to_string()));
        Ok(CapturedToken {
            fields,
            expires_at: exp,
            credentials: handed_out(token),
        })
    }
}

#[async_trait]
impl Provider for AtlassianForge {
    fn id(&self) -> &'static str {
        ID
    }

    fn secret_requirement(&self) -> SecretRequirement {
        SecretRequirement::Required
    }

    fn cache_policy(&self) -> CachePolicy {
        // The token is opened from the store on each resolve: a fresher one captured by
        // another replica is served at once, and plaintext lives for one response.
        CachePolicy::Never
    }

    fn mints_upstream(&self) -> bool {
        false
    }

    fn ceiling_enforcement(&self) -> CeilingEnforcement {
        CeilingEnforcement::Fixed
    }

    fn bind(&self, config: &Value, ceiling: &Value) -> Result<Bound, ProviderError> {
        let config =
            ForgeConfig::parse(config, &self.settings).map_err(ProviderError::InvalidConfig)?;
        if !ceiling.is_null() && *ceiling != self.ceiling.to_value() {
            return Err(ProviderError::InvalidConfig(
                "the ceiling of a Forge binding is fixed: the system token carries the manifest's scopes (policies/atlassian.json); give no ceiling".into(),
            ));
        }
        Ok(Bound::new(ForgeBinding { config }))
    }

    fn describe_ceiling(&self, binding: &BindingContext<'_>) -> Value {
        match binding.bound.get::<ForgeBinding>() {
            Ok(_) => {
                let mut v = self.ceiling.to_value();
                v["fixed"] = json!(true);
                v
            }
            Err(e) => json!({ "error": e.to_string() }),
        }
    }

    fn normalize_narrowing(
        &self,
        binding: &BindingContext<'_>,
        narrow: Option<&Value>,
    ) -> Result<Narrowing, ProviderError> {
        binding.bound.get::<ForgeBinding>()?;
        match narrow {
            None => Ok(Narrowing::none()),
            Some(_) => Err(ProviderError::NarrowingExceedsCeiling(
                "a Forge app system token carries the manifest's scopes; it cannot be narrowed"
                    .into(),
            )),
        }
    }

    async fn mint(&self, request: &MintRequest<'_>) -> Result<IssuedCredential, ProviderError> {
        let b = request.binding.bound.get::<ForgeBinding>()?;
        let secret = request.secret.ok_or(ProviderError::SecretMissing)?;
        let number = |name: &str| {
            secret
                .expose(name)
                .and_then(|v| v.parse::<i64>().ok())
                .ok_or_else(|| ProviderError::Internal(format!("the captured token has no {name}")))
        };
        let (Some(token), expires_at, captured_at) = (
            secret.expose("system_token"),
            number("expires_at")?,
            number("captured_at")?,
        ) else {
            return Err(ProviderError::Internal(
                "the captured token has no system_token".into(),
            ));
        };
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let need = i64::try_from(request.min_ttl_s.max(MIN_REMAINING_S)).unwrap_or(i64::MAX);
        let left = expires_at.saturating_sub(now);
        if left < need {
            // The next trigger normally comes an hour after the one that delivered this
            // token; when that moment has passed, it is overdue.
            let due = captured_at.saturating_add(TRIGGER_INTERVAL_S);
            let due_text = OffsetDateTime::from_unix_timestamp(due)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
            let when = if due > now {
                format!("Forge's next hourly trigger is due by {due_text}")
            } else {
                format!(
                    "Forge's hourly trigger was due by {due_text} and has not delivered a fresher token: check the installation (runbooks/atlassian-onboarding.md)"
                )
            };
            return Err(ProviderError::Unavailable {
                message: format!(
                    "the system token held for this site has {}s left, less than the {need}s asked for; {when}",
                    left.max(0)
                ),
                upstream_request_id: None,
            });
        }
        let credentials = handed_out(token);
        Ok(IssuedCredential {
            kind: "atlassian_system_token",
            credentials,
            expires_at: OffsetDateTime::from_unix_timestamp(expires_at).ok(),
            upstream_request_id: None,
            details: json!({
                "api_base_url": b.config.api_base_url,
                "cloud_id": b.config.cloud_id,
                "token_type": "Bearer",
                "scopes": self.ceiling.scopes,
            }),
            subject: Some(b.config.cloud_id.clone()),
        })
    }

    fn credential_lifetime_s(&self, _binding: &BindingContext<'_>) -> Option<u64> {
        Some(SYSTEM_TOKEN_LIFETIME_S)
    }

    fn exclusive_identifiers(&self, config: &Value) -> Vec<String> {
        let (current, previous) = self.installations(config);
        let mut out: Vec<String> = config
            .get("cloud_id")
            .and_then(Value::as_str)
            .map(site_identifier)
            .into_iter()
            .collect();
        out.extend(current);
        out.extend(previous);
        out
    }

    fn onboarding(
        &self,
        _tenant_id: &str,
        _parameters: &serde_json::Map<String, Value>,
    ) -> Option<Value> {
        Some(json!({
            "provider": ID,
            "app_id": self.settings.app_id,
            "manifest": "onboarding-templates/atlassian/manifest.yml",
            "scopes": self.ceiling.scopes,
            "customer_steps": "The site admin installs our Forge app, opens its admin page (Jira settings, Apps, Connect to credbroker) and types the connect code this onboarding answers with: that call, signed by Forge for the site, binds it to this tenant.",
        }))
    }

    fn invocations(&self) -> Option<&dyn Invocations> {
        Some(self)
    }
}

#[async_trait]
impl Invocations for AtlassianForge {
    async fn verify(&self, headers: &http::HeaderMap) -> Result<Invocation, String> {
        let mut auth = headers.get_all(http::header::AUTHORIZATION).iter();
        let (Some(auth), None) = (auth.next(), auth.next()) else {
            return Err(
                "one authorization header with a Forge Invocation Token is required".into(),
            );
        };
        let token = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or("the authorization header is not a bearer token")?;
        let verified = fit::verify(token, &self.jwks, &self.expect, self.settings.leeway_s).await?;
        let mut tokens = headers.get_all("x-forge-oauth-system").iter();
        let token = match (tokens.next(), tokens.next()) {
            (None, _) => None,
            (Some(v), None) => Some(Self::captured(v)),
            (Some(_), Some(_)) => Some(Err("more than one system token".to_owned())),
        };
        Ok(Invocation {
            site: site_identifier(&verified.cloud_id),
            installation: installation_identifier(&verified.installation_id),
            config: json!({
                "cloud_id": verified.cloud_id,
                "installation_id": verified.installation_id,
                "environment": verified.environment,
                "api_base_url": verified.api_base_url,
                "previous_installations": [],
            }),
            module: verified.module,
            principal: verified.principal,
            token,
        })
    }

    fn parse_body(&self, body: &[u8]) -> Result<Option<String>, String> {
        parse_invocation_body(body)
    }

    fn connect_code(
        &self,
        invocation: &Invocation,
        body: &[u8],
    ) -> Result<zeroize::Zeroizing<String>, String> {
        // Only the admin page carries a code, and only with the person who typed it: a call
        // from a trigger, a lifecycle event or another module is not a site administrator.
        // The page is known by its key, which our manifest gives it and Forge signs (the
        // type Forge reports for a UI module's call is not documented: it is not relied on).
        if invocation.module.as_deref() != Some(CONNECT_MODULE_KEY) {
            return Err(format!(
                "a connect code is taken only from the app's admin page ({CONNECT_MODULE_KEY})"
            ));
        }
        if invocation.principal.is_none() {
            return Err("the call from the admin page names no user (principal)".into());
        }
        parse_connect_body(body)
    }

    fn site_identifier(&self, site: &str) -> Result<String, String> {
        fit::uuid(site).map(|c| site_identifier(&c)).ok_or_else(|| {
            "the cloudId must be a UUID (https://SITE.atlassian.net/_edge/tenant_info shows it)"
                .into()
        })
    }

    fn installations(&self, config: &Value) -> (Option<String>, Vec<String>) {
        let current = config
            .get("installation_id")
            .and_then(Value::as_str)
            .map(installation_identifier);
        let previous = config
            .get("previous_installations")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(installation_identifier)
                    .collect()
            })
            .unwrap_or_default();
        (current, previous)
    }

    fn rebind(&self, config: &Value, invocation: &Invocation) -> Result<Option<Value>, String> {
        let mut c = ForgeConfig::parse(config, &self.settings)?;
        let new = ForgeConfig::parse(&invocation.config, &self.settings)?;
        if new.cloud_id != c.cloud_id {
            return Err("the installation is for another site".into());
        }
        // Jira and Confluence on one site are two installations of the app, both live: the
        // binding follows the product it was bound for, never the other one.
        if new.api_base_url != c.api_base_url {
            return Ok(None);
        }
        let old = std::mem::replace(&mut c.installation_id, new.installation_id);
        c.previous_installations.retain(|p| *p != old);
        c.previous_installations.insert(0, old);
        c.previous_installations.truncate(settings::MAX_PREVIOUS);
        Ok(Some(json!({
            "cloud_id": c.cloud_id,
            "installation_id": c.installation_id,
            "environment": c.environment,
            "api_base_url": c.api_base_url,
            "previous_installations": c.previous_installations,
        })))
    }

    fn expected_site_ttl_s(&self) -> u64 {
        self.settings.expected_site_ttl_s
    }
}

/// The lifecycle event type a Forge invocation body reports (`avi:forge:installed:app`…),
/// if any. Identity never comes from the body: only the FIT names the site.
///
/// # Errors
/// When the body is not a JSON object (or empty), or is too large.
pub fn parse_invocation_body(body: &[u8]) -> Result<Option<String>, String> {
    if body.is_empty() {
        return Ok(None);
    }
    if body.len() > MAX_BODY_BYTES {
        return Err("the invocation body is too large".into());
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        #[serde(default)]
        event_type: Option<String>,
    }
    let parsed: Body =
        serde_json::from_slice(body).map_err(|_| "the invocation body is not a JSON object")?;
    Ok(parsed.event_type.filter(|e| {
        e.len() <= 128
            && e.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.'))
    }))
}

/// The connect code of an admin page's call: `{"code": "…"}`, the code 16 to 64 ASCII
/// letters and digits once the spaces around it are trimmed.
///
/// # Errors
/// When the body is not that (never quoting the code).
pub fn parse_connect_body(body: &[u8]) -> Result<zeroize::Zeroizing<String>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        code: zeroize::Zeroizing<String>,
    }
    if body.len() > MAX_BODY_BYTES {
        return Err("the invocation body is too large".into());
    }
    let parsed: Body =
        serde_json::from_slice(body).map_err(|_| "the body is not {\"code\": \"…\"}".to_owned())?;
    let code = parsed.code.trim();
    if !(MIN_CONNECT_CODE..=64).contains(&code.len())
        || !code.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(format!(
            "the code is not a connect code ({MIN_CONNECT_CODE} to 64 letters and digits)"
        ));
    }
    Ok(zeroize::Zeroizing::new(code.to_owned()))
}

/// Fuzzing entry: parses an untrusted admin page's body (never panics).
pub fn fuzz_connect_body(bytes: &[u8]) {
    let _ = parse_connect_body(bytes);
}

/// Fuzzing entry: parses untrusted FIT claims and checks them (never panics). The bytes are
/// also read as an invocation's `x-forge-oauth-system` header: the expiry of a system token
/// the broker would keep is returned, for the caller to check.
pub fn fuzz_fit_claims(bytes: &[u8]) -> Option<i64> {
    if let Ok(claims) = serde_json::from_slice::<fit::FitClaims>(bytes) {
        let expect = fit::Expect {
            app_id: "ari:cloud:ecosystem::app/11111111-2222-3333-4444-555555555555".into(),
            environment: "PRODUCTION".into(),
            api_base_hosts: vec!["api.atlassian.com".into()],
        };
        let _ = fit::check_claims(&claims, &expect);
    }
    if let Ok(s) = std::str::from_utf8(bytes) {
        let _ = fit::system_token_exp(s);
        let _ = jsonwebtoken::decode_header(s);
    }
    let _ = fit::parse_jwks(bytes);
    let value = http::HeaderValue::from_bytes(bytes).ok()?;
    AtlassianForge::captured(&value).ok().map(|c| c.expires_at)
}

/// Fuzzing entry: parses an untrusted invocation body (never panics).
pub fn fuzz_invocation_body(bytes: &[u8]) {
    let _ = parse_invocation_body(bytes);
}
