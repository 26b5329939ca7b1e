//! The activation probe of a `github_app` binding: the installation's account checked
//! against the binding's pin with the App JWT, then one token minted within the ceiling and
//! revoked again before the probe answers.

use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::Value;

use super::answer::{self, error_for};
use super::client::revoke_installation_token;
use super::{GithubApp, GithubBinding, TokenRequest};
use crate::{MintRequest, Probe, ProbeReport, ProviderError};

#[async_trait]
impl Probe for GithubApp {
    fn gates_activation(&self) -> bool {
        true
    }

    async fn probe(&self, request: &MintRequest<'_>) -> Result<ProbeReport, ProviderError> {
        let bound = request.binding.bound.get::<GithubBinding>()?;
        let installation = bound.installation;
        // The installation's account first (with the App JWT): an installation of another
        // account is refused before any token for it exists.
        let info = self
            .read_installation(installation, request.timeout)
            .await?;
        if info.status != 200 {
            return Err(error_for(info, installation));
        }
        // The answer is about the installation asked for, or it proves nothing of it.
        if info.body.get("id").and_then(Value::as_u64) != Some(installation) {
            return Err(ProviderError::Unavailable {
                message: format!("GitHub answered for another installation than {installation}"),
                upstream_request_id: crate::request_id_of(info.request_id.as_deref()),
            });
        }
        let text = |pointer: &str| {
            crate::quoted(
                info.body
                    .pointer(pointer)
                    .and_then(Value::as_str)
                    .unwrap_or("?"),
                100,
            )
        };
        let (login, kind) = (text("/account/login"), text("/account/type"));
        let id = info.body.pointer("/account/id").and_then(Value::as_u64);
        let mut renamed = String::new();
        if let Some(pin) = &bound.account {
            // The numeric id decides: it stays when an organisation is renamed, and a login
            // is only a name.
            if id != Some(pin.id) {
                return Err(ProviderError::ActivationRefused {
                    reason: crate::RefusalReason::AccountMismatch,
                    message: format!(
                        "installation {installation} belongs to {login} ({}), not to the account this binding names: {} ({})",
                        id.map_or("?".to_owned(), |i| i.to_string()),
                        crate::quoted(&pin.login, 100),
                        pin.id
                    ),
                    upstream_request_id: info.request_id.clone(),
                });
            }
            if !login.eq_ignore_ascii_case(&pin.login) {
                renamed = format!(" (named {} when bound)", crate::quoted(&pin.login, 100));
            }
        }
        // Both calls' ids: the token the probe mints is in the organisation's audit log.
        let calls: Vec<String> = info.request_id.iter().cloned().collect();
        let wanted = TokenRequest::from_ceiling(&bound.ceiling);
        let (answer, _) = self
            .mint_token(installation, &wanted, request.timeout)
            .await
            .map_err(|e| e.after_calls(&calls))?;
        if answer.status != 201 {
            return Err(error_for(answer, installation).after_calls(&calls));
        }
        let calls: Vec<String> = calls
            .into_iter()
            .chain(answer.request_id.iter().cloned())
            .collect();
        // The probe's token is not needed any more: revoked before the probe answers. What
        // the answer says it carries is checked as a mint checks it: a binding whose every
        // mint would be refused (beyond the ceiling, another account's repositories) is not
        // activated as "minted within the ceiling".
        let issued = answer::issued_token(&answer.body).map(|t| SecretString::from(t.to_owned()));
        // The repositories are the installation's account's: the pinned one, or (a binding
        // pinning none) the one the installation answer just named.
        let checked = answer::to_credential(
            answer,
            installation,
            bound.account.as_ref().map(|a| a.id).or(id),
            &wanted,
        );
        if let Some(token) = issued {
            revoke_installation_token(
                self.settings.timeout_ms,
                &self.settings.api_base_url,
                token,
                installation,
                request.timeout,
            )
            .await;
        }
        checked.map_err(|e| e.after_calls(&calls))?;
        Ok(ProbeReport {
            summary: format!(
                "installation {installation} on {kind} {login}{renamed}; token minted within the ceiling"
            ),
            facts: Value::Null,
            upstream_request_ids: calls,
        })
    }
}
