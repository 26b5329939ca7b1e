//! The App's inbound callbacks: the setup redirect after an install (its state checked by
//! the core, the installer proven here) and the `installation` webhook; what they carry is
//! parsed in `inbound.rs`.

use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::inbound::{parse_installation_event, parse_setup_query, verify_signature};
use super::{Auth, GithubApp};
use crate::{CallbackEvent, Callbacks, InstalledAccount, ProviderError, SetupRedirect};

/// Most pages of `GET /user/installations` read (100 each): a user administering more than
/// 2,000 installations of our App is refused rather than paged forever.
const MAX_INSTALLATION_PAGES: u32 = 20;

#[async_trait]
impl Callbacks for GithubApp {
    fn install_url(&self, state: &str, _pin: Option<&InstalledAccount>) -> String {
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
        if self.delivery_id(headers).is_none() {
            return Err("X-GitHub-Delivery is missing or malformed".into());
        }
        let event = headers
            .get("x-github-event")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        parse_installation_event(event, body)
    }

    fn ready_to_install(&self) -> Result<(), String> {
        if self.settings.client_id.is_none() {
            return Err("[providers.github_app] client_id is not set: the broker cannot prove who installed".into());
        }
        if self.oauth_secrets.read().map_or(true, |s| s.is_empty()) {
            return Err("no OAuth client secret is active (credbroker keys github add --from-file F --as oauth-client-secret, then activate)".into());
        }
        Ok(())
    }

    /// Asks GitHub, with the App JWT, about the installation a `deleted` or `suspend` event
    /// names: `GET /app/installations/{id}` answers 404 once it is gone and carries
    /// `suspended_at` while it is suspended. A replayed `deleted` for an installation that
    /// is still there, or a `suspend` since undone, is not confirmed.
    async fn confirm_event(
        &self,
        event: &CallbackEvent,
        timeout: Duration,
    ) -> Result<bool, ProviderError> {
        let (identifier, removed) = match event {
            CallbackEvent::Removed { identifier } => (identifier, true),
            CallbackEvent::Suspended { identifier } => (identifier, false),
            _ => return Ok(true),
        };
        let Some(installation) = identifier
            .strip_prefix("github_installation:")
            .and_then(|id| id.parse::<u64>().ok())
        else {
            return Ok(true);
        };
        let info = self.read_installation(installation, timeout).await?;
        match info.status {
            // Gone: removed, and no longer usable whatever a suspension said.
            404 => Ok(true),
            200 if info.body.get("id").and_then(Value::as_u64) != Some(installation) => {
                Err(ProviderError::Unavailable {
                    message: format!(
                        "GitHub answered for another installation than {installation}"
                    ),
                    upstream_request_id: info.request_id,
                })
            }
            200 if removed => Ok(false),
            // `suspended_at` is a time while suspended and null otherwise; an answer without
            // it, or with anything else there, says nothing.
            200 => match info.body.get("suspended_at") {
                Some(Value::Null) => Ok(false),
                Some(Value::String(at))
                    if time::OffsetDateTime::parse(
                        at,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .is_ok() =>
                {
                    Ok(true)
                }
                _ => Err(ProviderError::Unavailable {
                    message: "GitHub's installation answer has no suspended_at time or null".into(),
                    upstream_request_id: info.request_id,
                }),
            },
            _ => Err(super::answer::error_for(info, installation)),
        }
    }

    fn delivery_id(&self, headers: &http::HeaderMap) -> Option<String> {
        headers
            .get("x-github-delivery")
            .and_then(|v| v.to_str().ok())
            .filter(|d| {
                !d.is_empty()
                    && d.len() <= 64
                    && d.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
            })
            .map(str::to_ascii_lowercase)
    }

    async fn prove_installer(
        &self,
        redirect: &SetupRedirect,
        context: &crate::InstallContext<'_>,
        timeout: Duration,
    ) -> Result<InstalledAccount, ProviderError> {
        let installation = redirect
            .config
            .get("installation_id")
            .and_then(Value::as_u64)
            .ok_or_else(|| ProviderError::InvalidConfig("no installation_id".into()))?;
        let code = redirect.code.as_ref().ok_or_else(|| denied(
            "the redirect carries no user authorization code: the App must request user authorization (OAuth) during installation",
        ))?;
        let client_id = self.settings.client_id.clone().ok_or_else(|| {
            ProviderError::InvalidConfig(
                "[providers.github_app] client_id is required to prove who installed".into(),
            )
        })?;
        let secrets: Vec<SecretString> = self
            .oauth_secrets
            .read()
            .map(|s| s.clone())
            .unwrap_or_default();
        if secrets.is_empty() {
            return Err(ProviderError::InvalidConfig(
                "no OAuth client secret is active (credbroker keys github add --as oauth-client-secret …, then activate)".into(),
            ));
        }
        // The pages of installations end within the proof's time (THREATS.md: a slow
        // upstream); the exchange before them is not cut short, since a token GitHub issued
        // to an exchange abandoned midway could not be revoked: each of its calls (one per
        // active client secret) has its own deadline.
        let started = std::time::Instant::now();
        let over = || ProviderError::Unavailable {
            message: format!(
                "the proof did not finish within {} ms",
                context.proof_time.as_millis()
            ),
            upstream_request_id: None,
        };
        // 1. The code → a user token.
        let (user_token, secret) = self
            .exchange_code(&client_id, code, &secrets, timeout)
            .await?;
        // 2. Is the installation among the user's? Then whose is it, and does the person
        //    administer that account? GET /user/installations also lists installations the
        //    user can merely read (an organization member with read access to one
        //    repository): only an owner of the organization (or the user account itself)
        //    proves the install is theirs to bind.
        let found = tokio::time::timeout(
            context.proof_time.saturating_sub(started.elapsed()),
            async {
                let Some(listed) = self
                    .find_user_installation(&user_token, installation, timeout)
                    .await?
                else {
                    return Ok(None);
                };
                self.check_administers(&user_token, &listed, timeout)
                    .await?;
                Ok(Some(listed.account))
            },
        )
        .await
        .unwrap_or_else(|_| Err(over()));
        // 3. The user token is used once, never stored, and revoked whatever happened (in a
        //    task of its own: nothing that cuts this short can skip it).
        self.revoke_user_token(client_id, secret, user_token, timeout);
        found?.ok_or_else(|| {
            denied(&format!(
                "installation {installation} is not among the installations the person who came back can administer"
            ))
        })
    }
}

/// An installation as `GET /user/installations` lists it: its account and what kind of
/// account that is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedInstallation {
    /// The account the App is installed on.
    pub account: InstalledAccount,
    /// An organization (`target_type` `Organization`), or else a user account (`User`).
    pub organization: bool,
}

/// `installation` in one page of `GET /user/installations`, if listed there. Never panics
/// on any input (fuzzed).
///
/// # Errors
/// When the page is not GitHub's shape, or the listed installation has no usable account
/// (or one of another kind than an organization or a user: an enterprise's).
pub fn installation_in_page(
    page: &Value,
    installation: u64,
) -> Result<Option<ListedInstallation>, String> {
    let list = page
        .get("installations")
        .and_then(Value::as_array)
        .ok_or("GitHub's installation list is malformed")?;
    for i in list {
        if i.get("id").and_then(Value::as_u64) == Some(installation) {
            let login = i.pointer("/account/login").and_then(Value::as_str);
            let id = i.pointer("/account/id").and_then(Value::as_u64);
            let organization = match i.get("target_type").and_then(Value::as_str) {
                Some("Organization") => true,
                Some("User") => false,
                _ => {
                    return Err(
                        "the installation is on neither an organization nor a user account".into(),
                    )
                }
            };
            return match (login, id) {
                (Some(login), Some(id)) if is_login(login) && id > 0 => {
                    Ok(Some(ListedInstallation {
                        account: InstalledAccount {
                            login: login.to_owned(),
                            id,
                        },
                        organization,
                    }))
                }
                _ => Err("the installation's account is missing from GitHub's answer".into()),
            };
        }
    }
    Ok(None)
}

/// A GitHub login as it may stand in a URL path: 1–100 of `[A-Za-z0-9-_.]` (GitHub's logins
/// are alphanumerics and hyphens; enterprise-managed ones add `_`).
fn is_login(login: &str) -> bool {
    !login.is_empty()
        && login.len() <= 100
        && login
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !login.starts_with('.')
}

/// Whether GitHub's `GET /user/memberships/orgs/{org}` answer shows an active owner
/// (`role` `admin`) of `account`. Never panics on any input (fuzzed).
///
/// # Errors
/// Saying what the answer shows instead.
pub fn owner_in_membership(answer: &Value, account: &InstalledAccount) -> Result<(), String> {
    let org_id = answer.pointer("/organization/id").and_then(Value::as_u64);
    if org_id != Some(account.id) {
        return Err(format!(
            "GitHub's membership answer is for another organization than {}",
            account.login
        ));
    }
    let state = answer.get("state").and_then(Value::as_str);
    let role = answer.get("role").and_then(Value::as_str);
    match (state, role) {
        (Some("active"), Some("admin")) => Ok(()),
        (Some("active"), Some(role)) if is_login(role) => Err(format!(
            "the person who came back is a member of {} with role {role}, not an owner",
            account.login
        )),
        (Some(state), _) if state != "active" && is_login(state) => Err(format!(
            "the person who came back has a {state} membership of {}, not an active owner's",
            account.login
        )),
        _ => Err("GitHub's membership answer is malformed".into()),
    }
}

/// Whether GitHub's `GET /user` answer is `account` itself. Never panics on any input
/// (fuzzed).
///
/// # Errors
/// Saying whose it is instead.
pub fn same_user(answer: &Value, account: &InstalledAccount) -> Result<(), String> {
    match answer.get("id").and_then(Value::as_u64) {
        Some(id) if id == account.id => Ok(()),
        Some(_) => Err(format!(
            "the person who came back is not the user account {} the App is installed on",
            account.login
        )),
        None => Err("GitHub's user answer is malformed".into()),
    }
}

/// A user-token call's answer other than 200: GitHub's own trouble (5xx, 429) is
/// `Unavailable`, anything else a refusal, saying what the call was `doing`.
fn status_error(status: u16, upstream_request_id: Option<String>, doing: &str) -> ProviderError {
    let message = format!("GitHub HTTP {status} {doing}");
    if status >= 500 || status == 429 {
        ProviderError::Unavailable {
            message,
            upstream_request_id,
        }
    } else {
        ProviderError::Denied {
            message,
            upstream_request_id,
            trust_broken: false,
        }
    }
}

fn denied(message: &str) -> ProviderError {
    ProviderError::Denied {
        message: message.to_owned(),
        upstream_request_id: None,
        trust_broken: false,
    }
}

impl GithubApp {
    /// Exchanges the installer's one-time `code` for a user token on the web host, trying
    /// each active OAuth client secret in turn (two are active while one is rotated; GitHub
    /// says which it does not accept). The token, and the secret that took it (to revoke it).
    async fn exchange_code(
        &self,
        client_id: &str,
        code: &SecretString,
        secrets: &[SecretString],
        timeout: Duration,
    ) -> Result<(SecretString, SecretString), ProviderError> {
        let mut taken = None;
        for candidate in secrets {
            let exchange = json!({
                "client_id": client_id,
                "client_secret": candidate.expose_secret(),
                "code": code.expose_secret(),
            });
            let a = self
                .call_as(
                    &self.settings.web_base_url,
                    Auth::OAuthExchange,
                    http::Method::POST,
                    "/login/oauth/access_token",
                    Some(&exchange),
                    timeout,
                )
                .await?;
            drop(exchange);
            let wrong_client =
                a.body.get("error").and_then(Value::as_str) == Some("incorrect_client_credentials");
            taken = Some((a, candidate.clone()));
            if !wrong_client {
                break;
            }
        }
        let Some((answer, secret)) = taken else {
            return Err(ProviderError::InvalidConfig(
                "no OAuth client secret".into(),
            ));
        };
        if answer.status >= 500 || answer.status == 429 {
            return Err(ProviderError::Unavailable {
                message: format!("GitHub OAuth HTTP {}", answer.status),
                upstream_request_id: answer.request_id,
            });
        }
        // GitHub answers a bad or expired code with 200 and an `error` field.
        match answer.body.get("access_token").and_then(Value::as_str) {
            Some(t) if answer.status == 200 && !t.is_empty() => {
                Ok((SecretString::from(t.to_owned()), secret))
            }
            _ => {
                // An OAuth error code only: an answer (or a proxy) echoing the form must not
                // put the App's client secret or the code into the browser's page or the log.
                let why = answer
                    .body
                    .get("error")
                    .and_then(Value::as_str)
                    .map_or_else(
                        || "no access_token".to_owned(),
                        |e| {
                            crate::oauth_error_code(
                                e,
                                &[secret.expose_secret(), code.expose_secret()],
                            )
                        },
                    );
                Err(denied(&format!(
                    "GitHub refused the user authorization code ({why}): start onboarding again"
                )))
            }
        }
    }

    /// Pages through `GET /user/installations` with the user's token; the account of
    /// `installation` if it is there.
    async fn find_user_installation(
        &self,
        user_token: &SecretString,
        installation: u64,
        timeout: Duration,
    ) -> Result<Option<ListedInstallation>, ProviderError> {
        for page in 1..=MAX_INSTALLATION_PAGES {
            let answer = self
                .call_as(
                    &self.settings.api_base_url,
                    Auth::Bearer(user_token.expose_secret().to_owned()),
                    http::Method::GET,
                    &format!("/user/installations?per_page=100&page={page}"),
                    None,
                    timeout,
                )
                .await?;
            if answer.status != 200 {
                return Err(status_error(
                    answer.status,
                    answer.request_id,
                    "listing the user's installations",
                ));
            }
            match installation_in_page(&answer.body, installation) {
                Ok(Some(account)) => return Ok(Some(account)),
                Ok(None) => {}
                Err(m) => {
                    return Err(ProviderError::Unavailable {
                        message: m,
                        upstream_request_id: answer.request_id,
                    })
                }
            }
            let list_len = answer
                .body
                .get("installations")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let total = answer
                .body
                .get("total_count")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if list_len < 100 || u64::from(page) * 100 >= total {
                return Ok(None);
            }
        }
        Err(denied(
            "the person who installed administers more installations of this App than the broker pages through",
        ))
    }

    /// Whether the person behind `user_token` administers `listed`'s account: an active
    /// owner of the organization (`GET /user/memberships/orgs/{org}`, which the App's
    /// `members: read` permission opens to its user tokens), or the user account itself
    /// (`GET /user`).
    async fn check_administers(
        &self,
        user_token: &SecretString,
        listed: &ListedInstallation,
        timeout: Duration,
    ) -> Result<(), ProviderError> {
        let account = &listed.account;
        let (path, what) = if listed.organization {
            (
                format!("/user/memberships/orgs/{}", account.login),
                "reading the installer's organization membership",
            )
        } else {
            ("/user".to_owned(), "reading the installer's user account")
        };
        let answer = self
            .call_as(
                &self.settings.api_base_url,
                Auth::Bearer(user_token.expose_secret().to_owned()),
                http::Method::GET,
                &path,
                None,
                timeout,
            )
            .await?;
        match answer.status {
            200 => {}
            404 if listed.organization => {
                return Err(ProviderError::Denied {
                    message: format!(
                        "the person who came back is not a member of {}, only a reader of some of its repositories: only an owner's install binds it",
                        account.login
                    ),
                    upstream_request_id: answer.request_id,
                    trust_broken: false,
                })
            }
            s => return Err(status_error(s, answer.request_id, what)),
        }
        let checked = if listed.organization {
            owner_in_membership(&answer.body, account)
        } else {
            same_user(&answer.body, account)
        };
        checked.map_err(|m| ProviderError::Denied {
            message: format!("{m}: only an owner's install binds it"),
            upstream_request_id: answer.request_id,
            trust_broken: false,
        })
    }

    /// `DELETE /applications/{client_id}/token` (basic auth with the client credentials), in
    /// a task of its own within `timeout`: nothing that cuts the proof short (its deadline, the
    /// caller's) can skip it. Best effort, logged when it fails (the token also expires on
    /// its own).
    fn revoke_user_token(
        &self,
        client_id: String,
        secret: SecretString,
        user_token: SecretString,
        timeout: Duration,
    ) {
        let (timeout_ms, base) = (self.settings.timeout_ms, self.settings.api_base_url.clone());
        tokio::spawn(async move {
            let body = json!({ "access_token": user_token.expose_secret() });
            let result = super::call_github(
                timeout_ms,
                &base,
                Auth::Basic(client_id.clone(), secret),
                http::Method::DELETE,
                &format!("/applications/{client_id}/token"),
                Some(&body),
                timeout,
            )
            .await;
            log_revoke(result);
        });
    }
}

/// What became of a user token's revoke.
fn log_revoke(result: Result<super::Answer, ProviderError>) {
    match result {
        Ok(a) if a.status == 204 => {}
        Ok(a) => tracing::warn!(
            status = a.status,
            "GitHub did not revoke the installer's user token"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "GitHub did not revoke the installer's user token")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only an active owner of that very organization, or the user account itself, counts
    /// as administering an installation; an installation of another kind is refused.
    #[test]
    fn administering_an_installation_is_an_owner_s_or_the_user_s_own() {
        let acme = InstalledAccount {
            login: "acme-org".into(),
            id: 9001,
        };
        let membership = |state: &str, role: &str, org: u64| serde_json::json!({"state": state, "role": role, "organization": {"login": "acme-org", "id": org}});
        assert!(owner_in_membership(&membership("active", "admin", 9001), &acme).is_ok());
        for (answer, says) in [
            (membership("active", "member", 9001), "role member"),
            (membership("pending", "admin", 9001), "pending membership"),
            (membership("active", "admin", 9002), "another organization"),
            (
                serde_json::json!({"organization": {"id": 9001}}),
                "malformed",
            ),
            (membership("active", "<script>", 9001), "malformed"),
        ] {
            let err = owner_in_membership(&answer, &acme).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
        assert!(same_user(&serde_json::json!({"id": 9001, "login": "acme-org"}), &acme).is_ok());
        assert!(same_user(&serde_json::json!({"id": 1, "login": "acme-org"}), &acme).is_err());
        assert!(same_user(&serde_json::json!({"login": "acme-org"}), &acme).is_err());

        let page = |target: &str, login: &str| serde_json::json!({"installations": [{"id": 5, "target_type": target, "account": {"login": login, "id": 9001}}]});
        let listed = installation_in_page(&page("Organization", "acme-org"), 5)
            .unwrap()
            .unwrap();
        assert!(listed.organization);
        assert_eq!(listed.account, acme);
        assert!(
            !installation_in_page(&page("User", "acme-org"), 5)
                .unwrap()
                .unwrap()
                .organization
        );
        assert!(installation_in_page(&page("Enterprise", "acme-org"), 5).is_err());
        assert!(installation_in_page(&page("Organization", "acme/../x"), 5).is_err());
        assert_eq!(
            installation_in_page(&page("Organization", "acme-org"), 6),
            Ok(None)
        );
    }
}
