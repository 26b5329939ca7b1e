//! `atlassian_dc_pat`: a Jira or Confluence Data Center personal access token, pasted (sealed
//! fields `token` and, when known, `token_id`) and handed to workers as-is — a PAT carries all
//! of its user's permissions and cannot be narrowed. What the broker adds: a real probe
//! (`GET /rest/api/2/myself` or `/rest/api/user/current`), the PAT's `expiringAt` tracked
//! from the PAT API, and self-rotation: the current PAT creates its successor
//! (`POST /rest/pat/latest/tokens`), which is stored pending, probed, promoted, and then the
//! old one is revoked (`DELETE /rest/pat/latest/tokens/{id}`). Instances without the PAT API
//! (older Server versions) are detected by the probe and reported, never assumed.

mod answer;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use secrecy::SecretString;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::http::{Answer, Http};
use crate::registry::{
    resolve_path, Availability, BuildFuture, CatalogEntry, CeilingMode, CliSpec, ConfigFlag,
    CredentialSource, FlagTarget, FlagValue, OnboardPin, ProviderDescriptor,
};
use crate::{
    BindingContext, Bound, CachePolicy, CeilingEnforcement, IssuedCredential, MintRequest,
    Narrowing, Probe, ProbeReport, Provider, ProviderError, SecretFields, SecretRequirement,
    SelfRotation,
};

/// The registry id.
pub const ID: &str = "atlassian_dc_pat";

pub use answer::{created_pat, pat_expiry, pat_ids_named, pat_user};
pub use settings::{parse_config, DcSettings, Product};

struct DcBinding {
    base: String,
    product: Product,
    /// A client that also trusts the binding's private CA, when it has one.
    http: Option<Http>,
}

/// The provider.
pub struct AtlassianDc {
    settings: DcSettings,
    http: Http,
}

impl AtlassianDc {
    fn per_request(&self, budget: Duration) -> Duration {
        Duration::from_millis(self.settings.timeout_ms).min(budget)
    }

    async fn call(
        &self,
        b: &DcBinding,
        method: http::Method,
        url: &str,
        token: &str,
        body: Option<Value>,
        budget: Duration,
    ) -> Result<Answer, ProviderError> {
        let auth = crate::http::bearer(token)
            .ok_or_else(|| ProviderError::InvalidConfig("the PAT is not a header value".into()))?;
        let mut request = http::Request::builder()
            .method(method)
            .uri(url)
            .header(http::header::AUTHORIZATION, auth)
            .header(http::header::ACCEPT, "application/json")
            // Data Center's XSRF check for REST writes.
            .header("x-atlassian-token", "no-check");
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .map_err(|_| ProviderError::InvalidConfig("base_url is not a valid URI".into()))?;
        let a = b
            .http
            .as_ref()
            .unwrap_or(&self.http)
            .exchange(
                request,
                self.per_request(budget),
                "the Data Center instance",
                &[token],
            )
            .await?;
        if a.status == 429 || a.status >= 500 {
            return Err(ProviderError::Unavailable {
                message: format!("Data Center HTTP {}", a.status),
                upstream_request_id: a.request_id,
            });
        }
        Ok(a)
    }

    fn token_of(secret: Option<&SecretFields>) -> Result<&str, ProviderError> {
        secret
            .ok_or(ProviderError::SecretMissing)?
            .expose("token")
            .ok_or_else(|| ProviderError::InvalidConfig("the secret has no field token".into()))
    }

    /// `GET /rest/pat/latest/tokens`: the PATs of the token's user.
    async fn list_pats(
        &self,
        b: &DcBinding,
        token: &str,
        budget: Duration,
    ) -> Result<Answer, ProviderError> {
        let url = format!("{}/rest/pat/latest/tokens", b.base);
        self.call(b, http::Method::GET, &url, token, None, budget)
            .await
    }

    /// `DELETE /rest/pat/latest/tokens/{id}` (`id` already restricted to `[A-Za-z0-9-]`):
    /// `true` revoked, `false` not found (already gone, or not this user's).
    ///
    /// # Errors
    /// `Denied` for another status; as [`Self::call`].
    async fn delete_pat(
        &self,
        b: &DcBinding,
        token: &str,
        id: &str,
        budget: Duration,
    ) -> Result<bool, ProviderError> {
        let url = format!("{}/rest/pat/latest/tokens/{id}", b.base);
        let a = self
            .call(b, http::Method::DELETE, &url, token, None, budget)
            .await?;
        match a.status {
            204 | 200 => Ok(true),
            404 => Ok(false),
            s => Err(denied(format!(
                "Data Center refused to revoke a PAT (HTTP {s})"
            ))),
        }
    }

    /// `expiringAt` of PAT `id`, from the PAT API; `Err(None)` when the instance has no PAT
    /// API.
    async fn expiry(
        &self,
        b: &DcBinding,
        token: &str,
        id: Option<&str>,
        budget: Duration,
    ) -> Result<Option<String>, Option<ProviderError>> {
        let a = self.list_pats(b, token, budget).await.map_err(Some)?;
        if a.status == 404 {
            return Err(None);
        }
        if a.status != 200 {
            return Ok(None);
        }
        Ok(pat_expiry(&a.body, id, &[token]))
    }

    /// After a create whose outcome is unknown (`failed`): looks for PATs named `name` (the
    /// unique name the create sent) and revokes them. The error returned says which it was
    /// — none created, found and revoked, or not known — so the audit record of the failed
    /// rotation does not claim nothing exists when something may.
    async fn settle_create(
        &self,
        b: &DcBinding,
        token: &str,
        name: &str,
        budget: Duration,
        failed: ProviderError,
    ) -> ProviderError {
        let (message, upstream_request_id) = match failed {
            ProviderError::Unavailable {
                message,
                upstream_request_id,
            } => (message, upstream_request_id),
            other => return other,
        };
        // One budget for the whole settling (the list and every revocation), half the
        // create's: with the create's own, a rotation at a stop ends within the bound the
        // stop waits for while a rotation runs (twice the mint timeout, at most 20 s).
        let budget = (budget / 2).max(Duration::from_secs(1));
        let outcome = tokio::time::timeout(budget, self.find_and_revoke(b, token, name, budget))
            .await
            .unwrap_or_else(|_| format!(
                "whether a PAT named '{name}' was created could not be checked in time: look for it at the source and revoke it"
            ));
        ProviderError::Unavailable {
            message: format!("{message}; {outcome}"),
            upstream_request_id,
        }
    }

    /// Lists the PATs named `name` and revokes them: what was found, as text.
    async fn find_and_revoke(
        &self,
        b: &DcBinding,
        token: &str,
        name: &str,
        budget: Duration,
    ) -> String {
        let listed = self.list_pats(b, token, budget).await;
        let found = match listed {
            Ok(a) if a.status == 200 => Some(pat_ids_named(&a.body, name)),
            _ => None,
        };
        match found {
            Some(ids) if ids.is_empty() => format!(
                "no PAT named '{name}' was listed afterwards (one the instance was still creating would appear later: look for it at the source)"
            ),
            Some(ids) => {
                let mut revoked = 0;
                for id in &ids {
                    if matches!(self.delete_pat(b, token, id, budget).await, Ok(true)) {
                        revoked += 1;
                    }
                }
                if revoked == ids.len() {
                    format!("the PAT it created ('{name}') was found and revoked")
                } else {
                    format!("a PAT named '{name}' was created and could not be revoked: revoke it at the source")
                }
            }
            None => format!(
                "whether a PAT named '{name}' was created could not be checked: look for it at the source and revoke it"
            ),
        }
    }
}

fn denied(message: String) -> ProviderError {
    ProviderError::Denied {
        message,
        upstream_request_id: None,
        trust_broken: false,
    }
}

/// The PAT expiry a probe reported in its facts (`expiring_at`, as the instance wrote it).
pub fn reported_expiry(facts: &Value) -> Option<OffsetDateTime> {
    facts
        .get("expiring_at")
        .and_then(Value::as_str)
        .and_then(parse_time)
}

/// Parses Data Center's `expiringAt` (RFC 3339, or with a `+0000` offset).
pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    let rfc = time::format_description::well_known::Rfc3339;
    OffsetDateTime::parse(s, &rfc).ok().or_else(|| {
        // 2026-12-31T10:00:00.000+0000 → insert the colon.
        // `get`, not `split_at`: an upstream's bytes need not fall on a char boundary.
        let cut = s.len().checked_sub(2)?;
        let (head, tail) = (s.get(..cut)?, s.get(cut..)?);
        OffsetDateTime::parse(&format!("{head}:{tail}"), &rfc).ok()
    })
}

#[async_trait]
impl Provider for AtlassianDc {
    fn id(&self) -> &'static str {
        ID
    }

    fn secret_requirement(&self) -> SecretRequirement {
        SecretRequirement::Required
    }

    fn cache_policy(&self) -> CachePolicy {
        CachePolicy::Never
    }

    fn mints_upstream(&self) -> bool {
        false
    }

    fn ceiling_enforcement(&self) -> CeilingEnforcement {
        // A PAT carries all of its user's permissions; the scanner user must be read-only.
        CeilingEnforcement::Fixed
    }

    fn bind(&self, config: &Value, ceiling: &Value) -> Result<Bound, ProviderError> {
        if !ceiling.is_null() {
            return Err(ProviderError::InvalidConfig(
                "a PAT cannot be narrowed: give the PAT's user read-only permissions instead of a ceiling".into(),
            ));
        }
        let (base, product) = parse_config(config, &self.settings.allowed_hosts)
            .map_err(ProviderError::InvalidConfig)?;
        let http = match config.get("ca_pem").and_then(Value::as_str) {
            Some(pem) => Some(
                Http::public_only(&self.settings.allowed_hosts, Some(pem))
                    .map_err(ProviderError::InvalidConfig)?,
            ),
            None => None,
        };
        Ok(Bound::new(DcBinding {
            base,
            product,
            http,
        }))
    }

    fn describe_ceiling(&self, _binding: &BindingContext<'_>) -> Value {
        json!({ "fields": ["token"], "narrowing": "none: the PAT's user's permissions" })
    }

    fn normalize_narrowing(
        &self,
        binding: &BindingContext<'_>,
        narrow: Option<&Value>,
    ) -> Result<Narrowing, ProviderError> {
        binding.bound.get::<DcBinding>()?;
        match narrow {
            None => Ok(Narrowing::none()),
            Some(_) => Err(ProviderError::NarrowingExceedsCeiling(
                "a Data Center PAT carries all of its user's permissions; it cannot be narrowed"
                    .into(),
            )),
        }
    }

    async fn mint(&self, request: &MintRequest<'_>) -> Result<IssuedCredential, ProviderError> {
        let b = request.binding.bound.get::<DcBinding>()?;
        let token = Self::token_of(request.secret)?;
        let mut credentials = SecretFields::new();
        credentials.insert("token", SecretString::from(token.to_owned()));
        Ok(IssuedCredential {
            kind: "atlassian_dc_pat",
            credentials,
            expires_at: None,
            upstream_request_id: None,
            details: json!({ "base_url": b.base, "auth": "Authorization: Bearer" }),
            subject: None,
        })
    }

    fn secret_destination(&self, config: &Value) -> Option<String> {
        parse_config(config, &self.settings.allowed_hosts)
            .ok()
            .map(|(base, _)| base)
    }

    fn secret_fields(&self, _binding: &BindingContext<'_>) -> Vec<String> {
        // The id lets the broker revoke this PAT when it replaces it (optional on the form).
        vec!["token".into(), "token_id".into()]
    }

    fn probe(&self) -> Option<&dyn Probe> {
        Some(self)
    }

    fn self_rotation(&self) -> Option<&dyn SelfRotation> {
        Some(self)
    }
}

#[async_trait]
impl Probe for AtlassianDc {
    fn gates_activation(&self) -> bool {
        true
    }

    /// Who the PAT is (`myself` / `user/current`), and whether the instance has the PAT API
    /// and when this PAT expires.
    async fn probe(&self, request: &MintRequest<'_>) -> Result<ProbeReport, ProviderError> {
        let b = request.binding.bound.get::<DcBinding>()?;
        let token = Self::token_of(request.secret)?;
        // A `token_id` is put in a DELETE path when the PAT is rotated: one that could take
        // that request elsewhere (`../`, `?`, `#`) never passes, so it is never promoted.
        // The value itself is not repeated: it is a pasted field.
        let id = request.secret.and_then(|s| s.expose("token_id"));
        if id.is_some_and(|i| !answer::path_safe_pat_id(i)) {
            return Err(denied(
                "token_id is not a PAT id (1 to 64 letters, digits or '-': the `id` that GET /rest/pat/latest/tokens lists for the PAT)"
                    .to_owned(),
            ));
        }
        let path = match b.product {
            Product::Jira => "/rest/api/2/myself",
            Product::Confluence => "/rest/api/user/current",
        };
        let a = self
            .call(
                b,
                http::Method::GET,
                &format!("{}{path}", b.base),
                token,
                None,
                request.timeout,
            )
            .await?;
        if a.status != 200 || a.content_type != "application/json" {
            return Err(denied(format!(
                "{path} answered HTTP {} ({}): the PAT is wrong, expired or revoked",
                a.status, a.content_type
            )));
        }
        // A PAT's user is what a successor is checked against: an answer that names none
        // (a proxy answering for the instance, an anonymous caller) proves nothing.
        let Some(user) = pat_user(&a.body, &[token]) else {
            return Err(denied(format!(
                "{path} answered HTTP 200 but named no user (or an anonymous one): the answer is not the instance's for this PAT"
            )));
        };
        let (pat_api, expiring_at) = match self.expiry(b, token, id, request.timeout).await {
            Ok(e) => (true, e),
            Err(None) => (false, None),
            Err(Some(e)) => return Err(e),
        };
        let due = expiring_at
            .as_deref()
            .and_then(parse_time)
            .is_some_and(|t| {
                t - OffsetDateTime::now_utc()
                    <= time::Duration::days(i64::from(self.settings.rotate_days_before_expiry))
            });
        if due {
            tracing::warn!(binding = request.binding.binding_id, expiring_at = ?expiring_at, "Data Center PAT expires soon: rotate it (credbroker secret rotate --self)");
        }
        Ok(ProbeReport {
            summary: format!(
                "PAT of user {user}; {}",
                match (pat_api, &expiring_at) {
                    (false, _) => "this instance has no PAT API (older Server version): self-rotation unavailable".to_owned(),
                    (true, Some(e)) => format!("expires {e}"),
                    (true, None) => "expiry unknown (give the PAT's id as token_id to track it and revoke it on rotation)".to_owned(),
                }
            ),
            facts: json!({
                "user": user,
                "pat_api": pat_api,
                "expiring_at": expiring_at,
                "rotation_due": due,
            }),
            upstream_request_ids: Vec::new(),
        })
    }
}

#[async_trait]
impl SelfRotation for AtlassianDc {
    async fn create(&self, request: &MintRequest<'_>) -> Result<SecretFields, ProviderError> {
        let b = request.binding.bound.get::<DcBinding>()?;
        let token = Self::token_of(request.secret)?;
        // Unique to this create (a random part: two rotations of one binding in one second,
        // on two replicas, must not share it), since a lost answer is settled by this name.
        let mut nonce = [0u8; 6];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| ProviderError::Internal("no randomness for the PAT name".into()))?;
        let name = format!(
            "credbroker {} {} {}",
            request.binding.binding_id,
            OffsetDateTime::now_utc().unix_timestamp(),
            nonce.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let sent = self
            .call(
                b,
                http::Method::POST,
                &format!("{}/rest/pat/latest/tokens", b.base),
                token,
                Some(json!({"name": name, "expirationDuration": self.settings.new_token_days})),
                request.timeout,
            )
            .await;
        // A timeout, a server error (a proxy in front of the instance giving up while it
        // creates), or a success without a usable token: the PAT may exist all the same, a
        // live credential of the user's full permissions that nothing tracks. It is looked
        // for by the unique name sent, and revoked.
        let a = match sent {
            Ok(a) => a,
            Err(e @ ProviderError::Unavailable { .. }) => {
                return Err(self
                    .settle_create(b, token, &name, request.timeout, e)
                    .await)
            }
            Err(e) => return Err(e),
        };
        if a.status == 404 {
            return Err(denied(
                "this instance has no PAT API (older Server version): rotate by pasting a new PAT"
                    .into(),
            ));
        }
        if a.status != 201 && a.status != 200 {
            return Err(denied(format!(
                "Data Center refused to create a PAT (HTTP {})",
                a.status
            )));
        }
        let (raw, id) = match created_pat(&a.body) {
            Ok(created) => created,
            Err(message) => {
                let e = ProviderError::Unavailable {
                    message,
                    upstream_request_id: a.request_id,
                };
                return Err(self
                    .settle_create(b, token, &name, request.timeout, e)
                    .await);
            }
        };
        // A successor without an id the broker can revoke it by (none, or one unsafe in the
        // DELETE's path) could never be withdrawn nor, once superseded, revoked: a live PAT
        // of the user's full permissions nothing tracks. It is looked for by the unique name
        // sent, revoked, and the rotation fails.
        let Some(id) = id.filter(|i| answer::path_safe_pat_id(i)) else {
            let e = ProviderError::Unavailable {
                message: "Data Center created a PAT without an id it can be revoked by".into(),
                upstream_request_id: a.request_id,
            };
            return Err(self
                .settle_create(b, token, &name, request.timeout, e)
                .await);
        };
        let mut fields = SecretFields::new();
        fields.insert("token", raw);
        fields.insert("token_id", SecretString::from(id));
        Ok(fields)
    }

    async fn revoke(
        &self,
        request: &MintRequest<'_>,
        old: &SecretFields,
    ) -> Result<bool, ProviderError> {
        let b = request.binding.bound.get::<DcBinding>()?;
        let token = Self::token_of(request.secret)?;
        let Some(id) = old
            .expose("token_id")
            .filter(|i| answer::path_safe_pat_id(i))
        else {
            return Ok(false);
        };
        // Not found: already gone, or not this user's; either way not revoked by us.
        self.delete_pat(b, token, id, request.timeout).await
    }

    /// Due when the PAT API exists and the recorded `expiring_at` is within
    /// `rotate_days_before_expiry` of now (evaluated now, not when the probe ran).
    fn due(&self, facts: &Value) -> bool {
        let expiring = reported_expiry(facts);
        facts.get("pat_api").and_then(Value::as_bool) == Some(true)
            && expiring.is_some_and(|t| {
                t - OffsetDateTime::now_utc()
                    <= time::Duration::days(i64::from(self.settings.rotate_days_before_expiry))
            })
    }
}

fn build(section: toml::Value, _base: &std::path::Path) -> BuildFuture {
    let built = section
        .try_into::<DcSettings>()
        .map_err(|e| format!("{e}"))
        .and_then(|s| {
            if !(1..=365).contains(&s.new_token_days) {
                return Err("new_token_days must be 1-365".into());
            }
            // A new PAT must not be due the moment it exists (a rotation every tick).
            if s.rotate_days_before_expiry >= s.new_token_days {
                return Err("rotate_days_before_expiry must be below new_token_days".into());
            }
            // Customers name the hosts: names resolve only to public addresses, checked on
            // every connection (a name that rebinds to an internal address later is refused
            // then), unless allow-listed.
            let http = Http::public_only(&s.allowed_hosts, None)?;
            Ok(Arc::new(AtlassianDc { settings: s, http }) as Arc<dyn Provider>)
        });
    let _ = resolve_path;
    Box::pin(async move { built })
}

/// The catalog entry.
pub(crate) const DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    id: ID,
    availability: Availability::Configured(build),
    cli: CliSpec {
        name: "atlassian-dc",
        about: "A Jira or Confluence Data Center personal access token (set `token`, and `token_id` when known, with `credbroker secret set`).",
        binding_flags: &[
            ConfigFlag {
                long: "base-url",
                help: "The instance's base URL, https://jira.example.com (with its context path, if any).",
                value: FlagValue::Text,
                target: FlagTarget::Key("base_url"),
                required: true,
            },
            ConfigFlag {
                long: "product",
                help: "jira or confluence.",
                value: FlagValue::Text,
                target: FlagTarget::Key("product"),
                required: true,
            },
            ConfigFlag {
                long: "ca-pem",
                help: "PEM CA certificates of the instance's private PKI, trusted for this binding only (e.g. \"$(cat ca.pem)\").",
                value: FlagValue::Text,
                target: FlagTarget::Key("ca_pem"),
                required: false,
            },
        ],
        by_hand: true,
        onboard: None,
        onboard_pin: OnboardPin::None,
        keys: None,
        revoke_tokens: false,
    },
    template_lint: None,
    catalog: CatalogEntry {
        max_secret_age_days: Some(90),
        description: "A Jira or Confluence Data Center personal access token, pasted and sealed, handed to workers as-is; the broker probes it, tracks its expiry and can rotate it through the PAT API.",
        returns: "kind `atlassian_dc_pat`: token",
        source: CredentialSource::PastedSecret,
        ceiling_mode: CeilingMode::Fixed,
        policy_file: None,
        artifacts: &["onboarding-templates/atlassian-dc/README.md"],
        runbooks: &[
            "runbooks/intake-link.md",
            "runbooks/pasted-secret-rotation.md",
            "runbooks/pasted-secret-leak.md",
        ],
        clients: &["credbroker client token", "POST /v1/resolve (mTLS)"],
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_formats() {
        assert!(parse_time("2026-12-31T10:00:00.000+0000").is_some());
        assert!(parse_time("2026-12-31T10:00:00Z").is_some());
        assert!(parse_time("soon").is_none());
        // Found by the fuzz target: a multi-byte character across the cut.
        assert!(parse_time("\u{FFFD}").is_none());
    }

    #[test]
    fn only_path_safe_pat_ids_are_used() {
        for good in ["1", "42", "abc-DEF-9", &"7".repeat(64)] {
            assert!(answer::path_safe_pat_id(good), "{good}");
        }
        for bad in [
            "",
            "../../api/2/issue/X",
            "1/../x",
            "1?x=y",
            "1#x",
            "1 2",
            "1%2F2",
            &"7".repeat(65),
        ] {
            assert!(!answer::path_safe_pat_id(bad), "{bad}");
        }
        // A list naming hostile ids (a malicious or broken upstream): only the safe ones.
        let list = br#"[{"id":"1/../x","name":"n"},{"id":12,"name":"n"},{"id":"..","name":"n"},{"id":"13","name":"other"},{"id":"a-b","name":"n"}]"#;
        assert_eq!(
            pat_ids_named(list, "n"),
            vec!["12".to_owned(), "a-b".to_owned()]
        );
    }
}
