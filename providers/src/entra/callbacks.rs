//! The consent flow: the sign-in and consent URL of the tenant the operator named, the
//! callback's parsing, and the proof: an administrator of that tenant signed in through this
//! link (module `sign_in`), and the consent exists (a token minted for that tenant whose
//! claims say so, with a permission granted after the link was issued).

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::claims::guid;
use super::sign_in_claims::parse_consent_query;
use super::{EntraApp, Resource, ID};
use crate::{Callbacks, InstallContext, InstalledAccount, ProviderError, SetupRedirect};

impl EntraApp {
    fn pinned_tenant(pin: Option<&InstalledAccount>) -> Option<String> {
        pin.and_then(|p| guid(&p.login))
    }
}

#[async_trait]
impl Callbacks for EntraApp {
    /// `{authority}/{GUID}/oauth2/v2.0/authorize?…&response_type=code&scope=openid
    /// {graph}/.default&prompt=consent&nonce=…`: the sign-in and consent page of the tenant
    /// the operator named (one for `organizations` would let any tenant's admin answer).
    fn install_url(&self, state: &str, pin: Option<&InstalledAccount>) -> String {
        let tenant = Self::pinned_tenant(pin).unwrap_or_else(|| "organizations".into());
        self.sign_in_url(state, &tenant)
    }

    fn parse_setup(&self, query: &str) -> Result<SetupRedirect, String> {
        let c = parse_consent_query(query)?;
        let refused = c
            .error
            .as_ref()
            .map(|(e, d)| format!("Entra reported {e}: {d}"));
        Ok(SetupRedirect {
            state: c.state,
            // The tenant is the pinned one (Callbacks::pin_config): the redirect names none.
            config: json!({}),
            action: "sign_in".into(),
            // `error` overrides a code.
            code: if refused.is_some() { None } else { c.code },
            refused,
        })
    }

    fn verify_webhook(
        &self,
        _headers: &http::HeaderMap,
        _body: &[u8],
    ) -> Result<crate::CallbackEvent, String> {
        Err("Entra sends no webhooks to the broker".into())
    }

    fn ready_to_install(&self) -> Result<(), String> {
        if self.settings.redirect_uri.is_none() {
            return Err(format!(
                "[providers.{ID}] redirect_uri is not set (the app's registered {{base_url}}/callbacks/{ID}/setup)"
            ));
        }
        // A federated credential (the broker's own issuer) confirms a consent as well as a
        // stored secret or certificate does: token_for tries it first.
        let active = self.settings.federated_subject.is_some()
            || self
                .credentials
                .read()
                .map(|c| !c.is_empty())
                .unwrap_or(false);
        if !active {
            return Err("no Entra app credential is active (set federated_subject, or credbroker keys entra add/activate): the consent could not be confirmed".into());
        }
        Ok(())
    }

    fn needs_issuer(&self) -> bool {
        self.settings.federated_subject.is_some()
            && self
                .credentials
                .read()
                .map(|c| c.is_empty())
                .unwrap_or(true)
    }

    fn pin_identifier(&self, pin: &InstalledAccount) -> Option<String> {
        guid(&pin.login).map(|t| super::tenant_identifier(&t))
    }

    fn identifier_pin(&self, identifier: &str) -> Option<InstalledAccount> {
        let tenant = guid(identifier.strip_prefix(super::TENANT_IDENTIFIER_PREFIX)?)?;
        Some(InstalledAccount {
            login: tenant,
            id: 0,
        })
    }

    fn check_pin(&self, pin: InstalledAccount) -> Result<InstalledAccount, String> {
        let tenant = guid(&pin.login).ok_or(
            "the customer's Entra tenant must be a tenant GUID (not common, organizations or a domain name)",
        )?;
        if pin.id != 0 {
            return Err("an Entra tenant is named by its GUID only (account id 0)".into());
        }
        Ok(InstalledAccount {
            login: tenant,
            id: 0,
        })
    }

    fn pin_config(&self, pin: &InstalledAccount) -> Option<Value> {
        guid(&pin.login).map(|t| json!({ "tenant_id": t }))
    }

    /// The person who came back must have signed in to the pinned tenant as one of its
    /// administrators, in answer to this link's authorization request (their code, redeemed
    /// here: module `sign_in`); a token minted for the tenant (retried while Entra
    /// propagates the consent) must pass the claim checks; and a permission must have been
    /// granted there after the link was issued.
    async fn prove_installer(
        &self,
        redirect: &SetupRedirect,
        context: &InstallContext<'_>,
        timeout: Duration,
    ) -> Result<InstalledAccount, ProviderError> {
        let tenant = Self::pinned_tenant(context.pin).ok_or_else(|| {
            ProviderError::InvalidConfig("the onboarding named no Entra tenant".into())
        })?;
        if redirect.config.get("tenant_id").and_then(Value::as_str) != Some(tenant.as_str()) {
            return Err(ProviderError::InvalidConfig(
                "the redirect's tenant is not the pinned one".into(),
            ));
        }
        let code = redirect
            .code
            .as_ref()
            .ok_or_else(|| ProviderError::Denied {
                message: "the redirect carries no sign-in code".into(),
                upstream_request_id: None,
                trust_broken: false,
            })?;
        // Each step has its own call budget; the broker bounds the whole proof.
        self.prove_sign_in(&tenant, &redirect.state, code, timeout, context.assertions)
            .await?;
        let started = std::time::Instant::now();
        self.note_consent(&tenant);
        let graph = self
            .token_for(&tenant, Resource::Graph, timeout, context.assertions)
            .await?;
        // An administrator of the tenant signed in through this link; a permission granted
        // after the link was issued shows that the consent was given now, not earlier (for
        // another link, or a former customer).
        let left = timeout.saturating_sub(started.elapsed());
        self.check_fresh_grants(&graph, &tenant, context.issued_at, left)
            .await?;
        Ok(InstalledAccount {
            login: tenant,
            id: 0,
        })
    }
}
