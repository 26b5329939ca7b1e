//! `github_app`: GitHub App installation tokens, narrowed to the binding's ceiling.
//!
//! Deliberately different in shape from AWS: there is no per-tenant trust document, but one
//! global App private key (a platform secret) that can mint for every installation. Each
//! tenant's binding names one installation id, bound to that tenant only; a resolve gets a
//! one-hour installation token limited to the ceiling's (or a narrower) permissions and
//! repositories. Installs are bound to a tenant through a single-use `state` on the setup
//! redirect, and the `installation` webhook is verified (X-Hub-Signature-256, constant time)
//! before its body is parsed.
//!
//! GitHub's limits are GitHub's to set: every request is bounded by `timeout_ms` and the
//! mint's deadline, a 5xx is retried once after a short jittered pause when the deadline
//! allows, and a rate-limit answer (429, or 403 with `retry-after`, `x-ratelimit-remaining: 0`
//! or a rate-limit message) is never retried: the App makes no App-authenticated call until
//! the time GitHub named has passed, and such mints fail fast as unavailable.

mod answer;
mod callbacks;
mod client;
mod inbound;
mod keys;
pub mod lint;
mod permissions;
mod probe;

use answer::{error_for, message_of, to_credential, Answer};
use client::{call_github, revoke_installation_token, Auth};
pub(crate) mod settings;

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

pub use answer::rate_limit_of;
pub use callbacks::{installation_in_page, owner_in_membership, same_user, ListedInstallation};
pub use inbound::{parse_installation_event, parse_setup_query, verify_signature};
pub use permissions::{
    narrow, parse_permissions, GithubCeiling, Level, Permissions, TokenRequest, KNOWN_PERMISSIONS,
};
use settings::check_api_base;
pub(crate) use settings::DESCRIPTOR;
pub use settings::{GithubSettings, ID};

use crate::{
    BindingContext, Bound, CachePolicy, Callbacks, CeilingEnforcement, InstalledAccount,
    IssuedCredential, MintRequest, Narrowing, PlatformKeys, Probe, Provider, ProviderError,
    Revocation, SecretRequirement,
};

/// The media type every REST API request accepts (`Accept`).
pub const REST_MEDIA_TYPE: &str = "application/vnd.github+json";

/// The provider.
pub struct GithubApp {
    settings: GithubSettings,
    ceiling: GithubCeiling,
    webhook_secret: SecretString,
    /// Signing keys, preferred first.
    keys: RwLock<Vec<(u32, EncodingKey)>>,
    /// OAuth client secrets of the App (proving who installed), preferred first.
    oauth_secrets: RwLock<Vec<SecretString>>,
    file_key: Option<EncodingKey>,
    mint_windows: Mutex<HashMap<u64, (Instant, u32)>>,
    /// Until when GitHub's last rate-limit answer keeps the App away (App-wide: GitHub limits
    /// the App, not one customer).
    paused_until: Mutex<Option<Instant>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingConfig {
    installation_id: u64,
    /// The account the installation must belong to: proven by an install or named by the
    /// operator who binds by hand, and checked by every probe. Absent in bindings made
    /// before it existed (their probes check nothing of the account).
    #[serde(default)]
    account: Option<PinnedAccount>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct PinnedAccount {
    login: String,
    id: u64,
}

/// A binding as [`Provider::bind`] parsed it.
struct GithubBinding {
    installation: u64,
    account: Option<PinnedAccount>,
    ceiling: GithubCeiling,
}

fn parse_binding_config(config: &Value) -> Result<BindingConfig, ProviderError> {
    let c: BindingConfig = serde_json::from_value(config.clone())
        .map_err(|e| ProviderError::InvalidConfig(format!("github_app config: {e}")))?;
    if c.installation_id == 0 {
        return Err(ProviderError::InvalidConfig(
            "installation_id must be positive".into(),
        ));
    }
    Ok(c)
}

fn parse_config(config: &Value) -> Result<u64, ProviderError> {
    parse_binding_config(config).map(|c| c.installation_id)
}

/// The exclusive identifier of an installation.
pub fn installation_identifier(id: u64) -> String {
    format!("github_installation:{id}")
}

/// Reads a secret file (the webhook secret, an App private key file), which must be the
/// daemon user's alone (mode 0600 or stricter): whoever reads the webhook secret forges
/// GitHub's deliveries, whoever reads the App key mints for every installation. The mode is
/// that of the file opened and read (a link's target: secret mounts are links), so a file
/// swapped between the check and the read is not read unchecked.
fn read_private_file(path: &std::path::Path) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let shown = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = std::fs::File::open(path).map_err(shown)?;
    let meta = file.metadata().map_err(shown)?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: this secret file is open to group or others (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        ));
    }
    // Sized first: a buffer that grew would leave copies of the secret behind.
    let size = usize::try_from(meta.len()).unwrap_or(0).saturating_add(1);
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(size));
    file.read_to_end(&mut bytes).map_err(shown)?;
    Ok(bytes)
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
        // Read and trimmed in buffers wiped when dropped: only the SecretString keeps it.
        let raw = read_private_file(&settings.webhook_secret_file)?;
        let mut secret = zeroize::Zeroizing::new(
            std::str::from_utf8(&raw)
                .map_err(|_| "webhook secret must be text".to_owned())?
                .trim()
                .to_owned(),
        );
        if secret.len() < 20 {
            return Err("the webhook secret must be at least 20 characters".into());
        }
        let file_key = match &settings.private_key_file {
            Some(p) => Some(
                EncodingKey::from_rsa_pem(&read_private_file(p)?)
                    .map_err(|_| format!("{}: not an RSA private key", p.display()))?,
            ),
            None => None,
        };
        check_api_base(&settings.api_base_url)?;
        settings::check_base("web_base_url", &settings.web_base_url)?;
        Ok(GithubApp {
            settings,
            ceiling,
            // The allocation moves into the SecretString (wiped when it drops); an early
            // return above wipes it through the Zeroizing wrapper.
            webhook_secret: SecretString::from(std::mem::take(&mut *secret)),
            keys: RwLock::new(Vec::new()),
            oauth_secrets: RwLock::new(Vec::new()),
            file_key,
            mint_windows: Mutex::new(HashMap::new()),
            paused_until: Mutex::new(None),
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
        self.call_as(
            &self.settings.api_base_url,
            Auth::Bearer(token),
            method,
            route,
            body,
            timeout,
        )
        .await
    }

    /// One request to `base` with `auth` (see [`call_github`]).
    async fn call_as(
        &self,
        base: &str,
        auth: Auth,
        method: http::Method,
        route: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Answer, ProviderError> {
        call_github(
            self.settings.timeout_ms,
            base,
            auth,
            method,
            route,
            body,
            timeout,
        )
        .await
    }

    /// Fails fast while GitHub's last rate-limit answer still applies.
    fn check_paused(&self) -> Result<(), ProviderError> {
        let until = self.paused_until.lock().ok().and_then(|p| *p);
        match until {
            Some(until) if Instant::now() < until => Err(ProviderError::Unavailable {
                message: format!(
                    "GitHub rate limit: the App makes no call to GitHub for {} more s",
                    until
                        .saturating_duration_since(Instant::now())
                        .as_secs()
                        .max(1)
                ),
                upstream_request_id: None,
            }),
            _ => Ok(()),
        }
    }

    /// Keeps the App away from GitHub as long as a rate-limit `answer` asks.
    fn note_rate_limit(&self, answer: &Answer) {
        let Some(wait) = answer.rate_limit else {
            return;
        };
        let until = Instant::now() + wait;
        if let Ok(mut paused) = self.paused_until.lock() {
            let current: Option<Instant> = *paused;
            if current.is_none_or(|t| t < until) {
                *paused = Some(until);
            }
        }
        tracing::warn!(
            status = answer.status,
            wait_s = wait.as_secs(),
            upstream_request_id = answer.request_id.as_deref().unwrap_or(""),
            "GitHub rate limit: no App call to GitHub until it has passed"
        );
    }

    /// One call with the App JWT: nothing is sent while a rate limit GitHub answered still
    /// applies, and each active key is tried in turn on 401 (a key deleted on GitHub answers
    /// 401; the next may be the one that works: zero-downtime key rotation). The first answer
    /// that is not a 401, or the last 401.
    async fn app_call(
        &self,
        method: http::Method,
        route: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Answer, ProviderError> {
        self.check_paused()?;
        let mut last = None;
        for key in self.signing_keys() {
            let answer = self
                .call(self.app_jwt(&key)?, method.clone(), route, body, timeout)
                .await?;
            self.note_rate_limit(&answer);
            if answer.status != 401 {
                return Ok(answer);
            }
            last = Some(answer);
        }
        last.ok_or_else(|| {
            ProviderError::Internal(
                "no GitHub App private key is active (credbroker keys github add/activate)".into(),
            )
        })
    }

    /// GET /app/installations/{id} with the App JWT ([`Self::app_call`]).
    async fn read_installation(
        &self,
        installation: u64,
        timeout: Duration,
    ) -> Result<Answer, ProviderError> {
        let route = format!("/app/installations/{installation}");
        self.app_call(http::Method::GET, &route, None, timeout)
            .await
    }

    /// POST /app/installations/{id}/access_tokens with the App JWT ([`Self::app_call`]); a
    /// 401 from every active key is a denial.
    async fn mint_token(
        &self,
        installation: u64,
        request: &TokenRequest,
        timeout: Duration,
    ) -> Result<(Answer, Value), ProviderError> {
        let body = request.to_value();
        let route = format!("/app/installations/{installation}/access_tokens");
        let answer = self
            .app_call(http::Method::POST, &route, Some(&body), timeout)
            .await?;
        if answer.status != 401 {
            return Ok((answer, body));
        }
        Err(ProviderError::Denied {
            message: format!(
                "GitHub rejected the App JWT from every active key: {}",
                message_of(&answer.body)
            ),
            upstream_request_id: answer.request_id,
            trust_broken: false,
        })
    }

    /// Revokes `token`, an installation token GitHub issued that nobody was handed, in a
    /// task of its own within `timeout` ([`revoke_installation_token`]): the refusal it
    /// follows is answered at once, and no deadline of the caller's cuts it short.
    fn revoke_unused(&self, token: SecretString, installation: u64, timeout: Duration) {
        let (timeout_ms, base) = (self.settings.timeout_ms, self.settings.api_base_url.clone());
        tokio::spawn(async move {
            revoke_installation_token(timeout_ms, &base, token, installation, timeout).await;
        });
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
        let c = parse_binding_config(config)?;
        Ok(Bound::new(GithubBinding {
            installation: c.installation_id,
            account: c.account,
            ceiling: self.binding_ceiling(ceiling)?,
        }))
    }

    fn check_new_binding(&self, config: &Value) -> Result<(), ProviderError> {
        // An installation id is the customer's claim: the account it must belong to is
        // named too (by the install that proved it, or by the operator binding by hand), and
        // the probe refuses an installation of any other account.
        let account = parse_binding_config(config)?.account.ok_or_else(|| {
            ProviderError::InvalidConfig(
                "a github_app binding names the account its installation must belong to: config.account {\"login\": …, \"id\": …} (binding add github … --account-login L --account-id N); its probe refuses an installation of any other account".into(),
            )
        })?;
        // The rule of an onboarding's pin (checked when a binding is added, not on stored
        // ones).
        Callbacks::check_pin(
            self,
            InstalledAccount {
                login: account.login,
                id: account.id,
            },
        )
        .map_err(ProviderError::InvalidConfig)?;
        Ok(())
    }

    fn with_account(&self, config: &Value, account: &InstalledAccount) -> Value {
        let mut config = config.clone();
        if let Some(map) = config.as_object_mut() {
            map.insert(
                "account".into(),
                json!({ "login": account.login, "id": account.id }),
            );
        }
        config
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

    fn paused(&self) -> Option<ProviderError> {
        self.check_paused().err()
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
        let issued = answer::issued_token(&answer.body).map(|t| SecretString::from(t.to_owned()));
        match to_credential(
            answer,
            installation,
            bound.account.as_ref().map(|a| a.id),
            &wanted,
        ) {
            Ok(credential) => Ok(credential),
            Err(e) => {
                // GitHub issued a token that is not handed out (beyond the request, already
                // expired, its answer malformed around it): revoked now, not left live for
                // its hour with nobody holding it to account.
                if let Some(token) = issued {
                    self.revoke_unused(token, installation, request.timeout);
                }
                Err(e)
            }
        }
    }

    fn callbacks(&self) -> Option<&dyn Callbacks> {
        Some(self)
    }
}

#[cfg(test)]
mod tests;

/// An installation token answer's body (`201`) to the token request `wanted` (a narrowing's
/// canonical JSON, as [`Provider::normalize_narrowing`] makes it), read and checked exactly as
/// a mint reads it: for the fuzz suite, which feeds it arbitrary bytes.
///
/// # Errors
/// As a mint: `Unavailable` for a malformed answer or one beyond `wanted`,
/// `InvalidNarrowing` when `wanted` is not a token request.
pub fn read_token_answer(
    body: &[u8],
    request_id: Option<&str>,
    wanted: &Value,
) -> Result<IssuedCredential, ProviderError> {
    let wanted = TokenRequest::from_value(wanted)
        .ok_or_else(|| ProviderError::InvalidNarrowing("not a token request".into()))?;
    let body = match std::str::from_utf8(body) {
        Ok(text) => answer::answer_body(text).map_err(|message| ProviderError::Unavailable {
            message,
            upstream_request_id: None,
        })?,
        Err(_) => Value::Null,
    };
    to_credential(
        Answer {
            status: 201,
            body,
            request_id: request_id.map(str::to_owned),
            rate_limit: None,
            echoed_token: false,
        },
        0,
        None,
        &wanted,
    )
}
