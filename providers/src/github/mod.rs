//! `github_app`: GitHub App installation tokens, narrowed to the binding's ceiling.
//!
//! Deliberately different in shape from AWS: there is no per-tenant trust document, but one
//! global App private key (a platform secret) that can mint for every installation. Each
//! tenant's binding names one installation id, bound to that tenant only; a resolve gets a
//! one-hour installation token limited to the ceiling's (or a narrower) permissions and
//! repositories. Installs are bound to a tenant through a single-use `state` on the setup
//! redirect, and the `installation` webhook is verified (X-Hub-Signature-256, constant time)
//! before its body is parsed.

pub mod lint;
mod permissions;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

pub use permissions::{
    narrow, parse_permissions, GithubCeiling, Level, Permissions, TokenRequest, KNOWN_PERMISSIONS,
};

use crate::registry::{
    resolve_path, Availability, BuildFuture, CliSpec, ConfigFlag, FlagTarget, FlagValue, KeysCli,
    ProviderDescriptor, TemplateLint,
};
use crate::{
    BindingContext, Bound, CachePolicy, CallbackEvent, Callbacks, CeilingEnforcement,
    IssuedCredential, MintRequest, Narrowing, PlatformKey, PlatformKeys, Probe, ProbeReport,
    Provider, ProviderError, Revocation, SecretFields, SecretRequirement, SetupRedirect,
};

/// Platform-side settings (`[providers.github_app]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubSettings {
    /// The App's numeric id.
    pub app_id: u64,
    /// The App's client id; when set it is the JWT `iss` (GitHub accepts either).
    #[serde(default)]
    pub client_id: Option<String>,
    /// REST API base (`https://api.github.com`, or `https://HOST/api/v3` for GHES).
    #[serde(default = "default_api")]
    pub api_base_url: String,
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
        binding_flags: &[ConfigFlag {
            long: "installation-id",
            help: "The installation id.",
            value: FlagValue::Integer,
            target: FlagTarget::Key("installation_id"),
            required: true,
        }],
        onboard: Some("Print the App's install URL carrying a single-use state bound to the tenant (1 h)."),
        keys: Some(KeysCli {
            material_field: "private_key_pem",
            file_help: "PEM file downloaded from the GitHub App settings.",
        }),
        revoke_tokens: true,
    },
    template_lint: Some(TemplateLint {
        dir: "github",
        run: lint::lint,
    }),
};

fn default_api() -> String {
    "https://api.github.com".into()
}
fn default_timeout() -> u64 {
    5000
}
fn default_rate() -> u32 {
    30
}

/// The provider.
pub struct GithubApp {
    settings: GithubSettings,
    ceiling: GithubCeiling,
    webhook_secret: SecretString,
    /// Signing keys, preferred first.
    keys: RwLock<Vec<(u32, EncodingKey)>>,
    file_key: Option<EncodingKey>,
    mint_windows: Mutex<HashMap<u64, (Instant, u32)>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingConfig {
    installation_id: u64,
}

/// The API base must be https; plain http only to a loopback address (tests, a local fake),
/// decided on the parsed host, not a string prefix (`http://127.0.0.1.evil.example` is not
/// loopback).
fn check_api_base(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("api_base_url {url:?} is not a URL"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("api_base_url {url:?} has no host"))?;
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
        _ => Err("api_base_url must be https (plain http only to a loopback address)".into()),
    }
}

/// A binding as [`Provider::bind`] parsed it.
struct GithubBinding {
    installation: u64,
    ceiling: GithubCeiling,
}

fn parse_config(config: &Value) -> Result<u64, ProviderError> {
    let c: BindingConfig = serde_json::from_value(config.clone())
        .map_err(|e| ProviderError::InvalidConfig(format!("github_app config: {e}")))?;
    if c.installation_id == 0 {
        return Err(ProviderError::InvalidConfig(
            "installation_id must be positive".into(),
        ));
    }
    Ok(c.installation_id)
}

/// The exclusive identifier of an installation.
pub fn installation_identifier(id: u64) -> String {
    format!("github_installation:{id}")
}

/// Verifies `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(body)>` in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    aws_lc_rs::hmac::verify(&key, body, &sig).is_ok()
}

/// `sha256:<first 16 bytes hex>` of a key's PEM text: identifies it, reveals nothing.
fn fingerprint(pem: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pem.trim().as_bytes());
    format!("sha256:{}", hex::encode(&d.as_ref()[..16]))
}

struct Answer {
    status: u16,
    body: Value,
    request_id: Option<String>,
}

impl GithubApp {
    /// Builds the provider.
    ///
    /// # Errors
    /// When the ceiling, webhook secret or key file cannot be read (missing policy denies).
    pub fn new(settings: GithubSettings) -> Result<GithubApp, String> {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let ceiling_value: Value = serde_json::from_slice(&read(&settings.ceiling_file)?)
            .map_err(|e| format!("{}: {e}", settings.ceiling_file.display()))?;
        let ceiling = GithubCeiling::from_value(&ceiling_value)?;
        let secret = String::from_utf8(read(&settings.webhook_secret_file)?)
            .map_err(|_| "webhook secret must be text".to_owned())?;
        let secret = secret.trim().to_owned();
        if secret.len() < 20 {
            return Err("the webhook secret must be at least 20 characters".into());
        }
        let file_key = match &settings.private_key_file {
            Some(p) => Some(
                EncodingKey::from_rsa_pem(&read(p)?)
                    .map_err(|_| format!("{}: not an RSA private key", p.display()))?,
            ),
            None => None,
        };
        check_api_base(&settings.api_base_url)?;
        Ok(GithubApp {
            settings,
            ceiling,
            webhook_secret: SecretString::from(secret),
            keys: RwLock::new(Vec::new()),
            file_key,
            mint_windows: Mutex::new(HashMap::new()),
        })
    }

    fn binding_ceiling(&self, ceiling: &Value) -> Result<GithubCeiling, ProviderError> {
        if ceiling.is_null() {
            return Ok(self.ceiling.clone());
        }
        let c = GithubCeiling::from_value(ceiling).map_err(ProviderError::InvalidConfig)?;
        c.within(&self.ceiling)
            .map_err(ProviderError::InvalidConfig)?;
        Ok(c)
    }

    /// App JWT: RS256, iat backdated 60 s for clock skew, exp 9 minutes ahead (GitHub rejects
    /// more than 10 by its own clock), iss = client id or app id.
    fn app_jwt(&self, key: &EncodingKey) -> Result<String, ProviderError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let iss = match &self.settings.client_id {
            Some(c) => json!(c),
            None => json!(self.settings.app_id),
        };
        let claims = json!({ "iat": now - 60, "exp": now + 540, "iss": iss });
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key)
            .map_err(|_| ProviderError::Internal("could not sign the GitHub App JWT".into()))
    }

    fn signing_keys(&self) -> Vec<EncodingKey> {
        let mut keys: Vec<EncodingKey> = self
            .keys
            .read()
            .map(|k| k.iter().map(|(_, key)| key.clone()).collect())
            .unwrap_or_default();
        if keys.is_empty() {
            keys.extend(self.file_key.clone());
        }
        keys
    }

    async fn call(
        &self,
        token: String,
        method: http::Method,
        route: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Answer, ProviderError> {
        let unavailable = |m: String| ProviderError::Unavailable {
            message: m,
            upstream_request_id: None,
        };
        let per_request = Duration::from_millis(self.settings.timeout_ms).min(timeout);
        let crab = octocrab::Octocrab::builder()
            .base_uri(self.settings.api_base_url.as_str())
            .map_err(|_| ProviderError::InvalidConfig("api_base_url is not a URI".into()))?
            .personal_token(token)
            .add_header(http::header::ACCEPT, "application/vnd.github+json".into())
            .add_header(
                http::HeaderName::from_static("x-github-api-version"),
                "2022-11-28".into(),
            )
            .set_connect_timeout(Some(per_request))
            .set_read_timeout(Some(per_request))
            .build()
            .map_err(|_| ProviderError::Internal("could not build the GitHub client".into()))?;
        let exchange = async {
            let resp = match method {
                http::Method::POST => crab._post(route, body).await,
                http::Method::DELETE => crab._delete(route, None::<&()>).await,
                _ => crab._get(route).await,
            }
            .map_err(|e| {
                unavailable(format!(
                    "GitHub request failed: {}",
                    e.to_string().chars().take(200).collect::<String>()
                ))
            })?;
            let status = resp.status().as_u16();
            let request_id = resp
                .headers()
                .get("x-github-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let text = crab
                .body_to_string(resp)
                .await
                .map_err(|_| unavailable("GitHub answer could not be read".into()))?;
            let body = if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::Null)
            };
            Ok(Answer {
                status,
                body,
                request_id,
            })
        };
        tokio::time::timeout(per_request + Duration::from_millis(500), exchange)
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(format!(
                    "GitHub did not answer within {} ms",
                    per_request.as_millis()
                )))
            })
    }

    /// POST /app/installations/{id}/access_tokens with each active key in turn (a 401 from
    /// one key falls through to the next: zero-downtime key rotation).
    async fn mint_token(
        &self,
        installation: u64,
        request: &TokenRequest,
        timeout: Duration,
    ) -> Result<(Answer, Value), ProviderError> {
        let keys = self.signing_keys();
        if keys.is_empty() {
            return Err(ProviderError::Internal(
                "no GitHub App private key is active (credbroker keys github add/activate)".into(),
            ));
        }
        let body = request.to_value();
        let route = format!("/app/installations/{installation}/access_tokens");
        let mut last = None;
        for key in &keys {
            let jwt = self.app_jwt(key)?;
            let answer = self
                .call(jwt, http::Method::POST, &route, Some(&body), timeout)
                .await?;
            if answer.status == 401 {
                last = Some(answer);
                continue;
            }
            return Ok((answer, body));
        }
        let answer = last.unwrap_or(Answer {
            status: 401,
            body: Value::Null,
            request_id: None,
        });
        Err(ProviderError::Denied {
            message: format!(
                "GitHub rejected the App JWT from every active key: {}",
                message_of(&answer.body)
            ),
            upstream_request_id: answer.request_id,
            trust_broken: false,
        })
    }

    fn note_mint(&self, installation: u64) {
        let Ok(mut windows) = self.mint_windows.lock() else {
            return;
        };
        let entry = windows.entry(installation).or_insert((Instant::now(), 0));
        if entry.0.elapsed() > Duration::from_secs(60) {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        if entry.1 == self.settings.mint_rate_warning_per_minute.max(1) + 1 {
            tracing::warn!(
                installation,
                mints_last_minute = entry.1,
                "anomalous GitHub token mint rate for one installation"
            );
        }
    }
}

fn message_of(body: &Value) -> String {
    body.get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

fn error_for(answer: Answer, installation: u64) -> ProviderError {
    let m = message_of(&answer.body);
    let id = answer.request_id;
    match answer.status {
        404 => ProviderError::Denied {
            message: format!("installation {installation} not found (uninstalled?): {m}"),
            upstream_request_id: id,
            trust_broken: true,
        },
        403 if m.to_ascii_lowercase().contains("suspend") => ProviderError::Denied {
            message: format!("installation {installation} is suspended: {m}"),
            upstream_request_id: id,
            trust_broken: true,
        },
        422 => ProviderError::Denied {
            message: format!("GitHub refused the requested permissions or repositories for installation {installation}: {m}"),
            upstream_request_id: id,
            trust_broken: false,
        },
        429 | 500..=599 => ProviderError::Unavailable { message: format!("GitHub HTTP {}: {m}", answer.status), upstream_request_id: id },
        403 if m.to_ascii_lowercase().contains("rate limit") => {
            ProviderError::Unavailable { message: format!("GitHub rate limit: {m}"), upstream_request_id: id }
        }
        s => ProviderError::Denied { message: format!("GitHub HTTP {s}: {m}"), upstream_request_id: id, trust_broken: false },
    }
}

fn to_credential(answer: Answer, installation: u64) -> Result<IssuedCredential, ProviderError> {
    let malformed = |id: Option<String>| ProviderError::Unavailable {
        message: "GitHub token answer is malformed".into(),
        upstream_request_id: id,
    };
    let b = &answer.body;
    let token = b
        .get("token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| malformed(answer.request_id.clone()))?;
    let expires_text = b
        .get("expires_at")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(answer.request_id.clone()))?;
    let expires_at =
        OffsetDateTime::parse(expires_text, &time::format_description::well_known::Rfc3339)
            .map_err(|_| malformed(answer.request_id.clone()))?;
    if expires_at <= OffsetDateTime::now_utc() {
        return Err(ProviderError::Unavailable {
            message: "GitHub returned a token that is already expired".into(),
            upstream_request_id: answer.request_id,
        });
    }
    let repositories: Option<Vec<Value>> =
        b.get("repositories").and_then(Value::as_array).map(|r| {
            r.iter()
                .filter_map(|x| x.get("full_name").or_else(|| x.get("name")).cloned())
                .collect()
        });
    let mut credentials = SecretFields::new();
    credentials.insert("token", SecretString::from(token));
    Ok(IssuedCredential {
        kind: "github_installation",
        credentials,
        expires_at: Some(expires_at),
        upstream_request_id: answer.request_id,
        details: json!({
            "installation_id": installation,
            "expires_at": expires_text,
            "permissions": b.get("permissions").cloned().unwrap_or(Value::Null),
            "repository_selection": b.get("repository_selection").cloned().unwrap_or(Value::Null),
            "repositories": repositories,
        }),
        subject: Some(installation.to_string()),
    })
}

#[async_trait]
impl Provider for GithubApp {
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
        Ok(Bound::new(GithubBinding {
            installation: parse_config(config)?,
            ceiling: self.binding_ceiling(ceiling)?,
        }))
    }

    fn credential_lifetime_s(&self, _binding: &BindingContext<'_>) -> Option<u64> {
        // Installation access tokens expire after one hour.
        Some(3600)
    }

    fn describe_ceiling(&self, binding: &BindingContext<'_>) -> Value {
        match binding.bound.get::<GithubBinding>() {
            Ok(b) => TokenRequest::from_ceiling(&b.ceiling).to_value(),
            Err(e) => json!({ "error": e.to_string() }),
        }
    }

    fn exclusive_identifiers(&self, config: &Value) -> Vec<String> {
        parse_config(config)
            .map(|id| vec![installation_identifier(id)])
            .unwrap_or_default()
    }

    fn probe(&self) -> Option<&dyn Probe> {
        Some(self)
    }

    fn platform_keys(&self) -> Option<&dyn PlatformKeys> {
        Some(self)
    }

    fn revocation(&self) -> Option<&dyn Revocation> {
        Some(self)
    }

    fn onboarding(
        &self,
        tenant_id: &str,
        _parameters: &serde_json::Map<String, Value>,
    ) -> Option<Value> {
        Some(json!({
            "provider": ID,
            "tenant": tenant_id,
            "app_id": self.settings.app_id,
            "then": "send the install_url to the customer; the installation is bound to this tenant when GitHub redirects back (single use, expires in one hour)"
        }))
    }

    fn normalize_narrowing(
        &self,
        binding: &BindingContext<'_>,
        narrow: Option<&Value>,
    ) -> Result<Narrowing, ProviderError> {
        let ceiling = &binding.bound.get::<GithubBinding>()?.ceiling;
        let request = match narrow {
            None => TokenRequest::from_ceiling(ceiling),
            Some(n) => permissions::narrow(n, ceiling).map_err(|(exceeds, m)| {
                if exceeds {
                    ProviderError::NarrowingExceedsCeiling(m)
                } else {
                    ProviderError::InvalidNarrowing(m)
                }
            })?,
        };
        let value = request.to_value();
        Ok(Narrowing {
            canonical: value.to_string(),
            value: Some(value),
        })
    }

    async fn mint(&self, request: &MintRequest<'_>) -> Result<IssuedCredential, ProviderError> {
        let bound = request.binding.bound.get::<GithubBinding>()?;
        let installation = bound.installation;
        let wanted = match &request.narrowing.value {
            Some(v) => TokenRequest::from_value(v).ok_or_else(|| {
                ProviderError::InvalidNarrowing("narrowing could not be read back".into())
            })?,
            None => TokenRequest::from_ceiling(&bound.ceiling),
        };
        let (answer, _) = self
            .mint_token(installation, &wanted, request.timeout)
            .await?;
        if answer.status != 201 {
            return Err(error_for(answer, installation));
        }
        self.note_mint(installation);
        to_credential(answer, installation)
    }

    fn callbacks(&self) -> Option<&dyn Callbacks> {
        Some(self)
    }
}

#[async_trait]
impl Probe for GithubApp {
    fn gates_activation(&self) -> bool {
        true
    }

    async fn probe(&self, request: &MintRequest<'_>) -> Result<ProbeReport, ProviderError> {
        let bound = request.binding.bound.get::<GithubBinding>()?;
        let installation = bound.installation;
        let (answer, _) = self
            .mint_token(
                installation,
                &TokenRequest::from_ceiling(&bound.ceiling),
                request.timeout,
            )
            .await?;
        if answer.status != 201 {
            return Err(error_for(answer, installation));
        }
        let token = answer
            .body
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        // Read the installation's account with the App JWT.
        let key = self
            .signing_keys()
            .into_iter()
            .next()
            .ok_or_else(|| ProviderError::Internal("no App key".into()))?;
        let info = self
            .call(
                self.app_jwt(&key)?,
                http::Method::GET,
                &format!("/app/installations/{installation}"),
                None,
                request.timeout,
            )
            .await?;
        // The probe's token is not needed any more: revoke it (best effort).
        if !token.is_empty() {
            let _ = self
                .call(
                    token,
                    http::Method::DELETE,
                    "/installation/token",
                    None,
                    request.timeout,
                )
                .await;
        }
        if info.status != 200 {
            return Err(error_for(info, installation));
        }
        let login = info
            .body
            .pointer("/account/login")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let kind = info
            .body
            .pointer("/account/type")
            .and_then(Value::as_str)
            .unwrap_or("?");
        Ok(ProbeReport {
            summary: format!(
                "installation {installation} on {kind} {login}; token minted within the ceiling"
            ),
        })
    }
}

#[async_trait]
impl Revocation for GithubApp {
    async fn revoke(
        &self,
        credential: &IssuedCredential,
        timeout: Duration,
    ) -> Result<(), ProviderError> {
        let token = credential
            .credentials
            .expose("token")
            .unwrap_or("")
            .to_owned();
        if token.is_empty() {
            return Ok(());
        }
        let answer = self
            .call(
                token,
                http::Method::DELETE,
                "/installation/token",
                None,
                timeout,
            )
            .await?;
        match answer.status {
            204 | 401 => Ok(()), // 401: already revoked or expired
            _ => Err(ProviderError::Unavailable {
                message: format!("GitHub HTTP {} revoking a token", answer.status),
                upstream_request_id: answer.request_id,
            }),
        }
    }
}

impl PlatformKeys for GithubApp {
    fn check(&self, material: &SecretFields) -> Result<String, ProviderError> {
        let pem = material.expose("private_key_pem").ok_or_else(|| {
            ProviderError::InvalidConfig("the key needs a private_key_pem field".into())
        })?;
        EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| {
            ProviderError::InvalidConfig("private_key_pem is not an RSA private key in PEM".into())
        })?;
        Ok(fingerprint(pem))
    }

    fn install(&self, keys: Vec<PlatformKey>) -> Result<(), ProviderError> {
        let mut parsed = Vec::with_capacity(keys.len());
        for k in keys {
            let pem = k.material.expose("private_key_pem").unwrap_or("");
            let key = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| {
                ProviderError::InvalidConfig(format!(
                    "platform key {} is not an RSA key",
                    k.version
                ))
            })?;
            parsed.push((k.version, key));
        }
        if let Ok(mut slot) = self.keys.write() {
            *slot = parsed;
        }
        Ok(())
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

impl Callbacks for GithubApp {
    fn install_url(&self, state: &str) -> String {
        format!("{}?state={state}", self.settings.install_url)
    }

    fn parse_setup(&self, query: &str) -> Result<SetupRedirect, String> {
        parse_setup_query(query)
    }

    fn verify_webhook(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<CallbackEvent, String> {
        let signature = headers
            .get("x-hub-signature-256")
            .and_then(|v| v.to_str().ok());
        if signature.is_none() {
            return Err("X-Hub-Signature-256 is missing".into());
        }
        // Constant-time check before the body is parsed at all.
        if !verify_signature(
            self.webhook_secret.expose_secret().as_bytes(),
            body,
            signature,
        ) {
            return Err("X-Hub-Signature-256 does not match".into());
        }
        let event = headers
            .get("x-github-event")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        parse_installation_event(event, body)
    }
}

/// Parses a setup redirect's query (`installation_id`, `setup_action`, `state`). Never panics
/// on any input (fuzzed).
///
/// # Errors
/// A message naming what is missing or malformed.
pub fn parse_setup_query(query: &str) -> Result<SetupRedirect, String> {
    let state = query_param(query, "state")
        .filter(|s| !s.is_empty())
        .ok_or("state is missing")?;
    if !state.bytes().all(|b| b.is_ascii_alphanumeric()) || state.len() > 128 {
        return Err("state is malformed".into());
    }
    let installation: u64 = query_param(query, "installation_id")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .ok_or("installation_id is missing or not a number")?;
    let action = query_param(query, "setup_action").unwrap_or_else(|| "install".into());
    if !matches!(action.as_str(), "install" | "update" | "request") {
        return Err("setup_action is not install, update or request".into());
    }
    Ok(SetupRedirect {
        state,
        config: json!({ "installation_id": installation }),
        action,
    })
}

/// Normalizes a webhook body whose signature was already verified. Never panics on any input
/// (fuzzed).
///
/// # Errors
/// A message when the body is malformed.
pub fn parse_installation_event(event: &str, body: &[u8]) -> Result<CallbackEvent, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|_| "webhook body is not JSON".to_owned())?;
    if event != "installation" {
        return Ok(CallbackEvent::Ignored {
            reason: format!(
                "event {:?} is not handled",
                event.chars().take(64).collect::<String>()
            ),
        });
    }
    let id = v
        .pointer("/installation/id")
        .and_then(Value::as_u64)
        .ok_or("installation.id is missing")?;
    let identifier = installation_identifier(id);
    let action = v.get("action").and_then(Value::as_str).unwrap_or("");
    Ok(match action {
        "deleted" => CallbackEvent::Removed { identifier },
        "suspend" => CallbackEvent::Suspended { identifier },
        "unsuspend" => CallbackEvent::Unsuspended { identifier },
        "new_permissions_accepted" => CallbackEvent::Changed {
            identifier,
            detail: format!(
                "customer accepted new permissions: {}",
                v.pointer("/installation/permissions")
                    .map(Value::to_string)
                    .unwrap_or_default()
                    .chars()
                    .take(500)
                    .collect::<String>()
            ),
        },
        "created" => CallbackEvent::Ignored {
            reason: "installation created: bound by the setup redirect".into(),
        },
        other => CallbackEvent::Ignored {
            reason: format!(
                "installation action {:?} is not handled",
                other.chars().take(64).collect::<String>()
            ),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let secret = b"a-webhook-secret-of-some-length";
        let body = br#"{"action":"deleted"}"#;
        let tag = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret),
            body,
        );
        let header = format!("sha256={}", hex::encode(tag.as_ref()));
        assert!(verify_signature(secret, body, Some(&header)));
        assert!(!verify_signature(
            secret,
            b"{\"action\":\"created\"}",
            Some(&header)
        ));
        assert!(!verify_signature(
            b"other-secret-xxxxxxxxxxxxxxxxx",
            body,
            Some(&header)
        ));
        assert!(!verify_signature(secret, body, None));
        assert!(!verify_signature(secret, body, Some("sha1=abc")));
        assert!(!verify_signature(secret, body, Some("sha256=zz")));
        assert!(!verify_signature(
            secret,
            body,
            Some(&header[..header.len() - 2])
        ));
    }

    #[test]
    fn query_parsing() {
        assert_eq!(query_param("a=1&state=xyz", "state"), Some("xyz".into()));
        assert_eq!(query_param("a=1", "state"), None);
    }

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
