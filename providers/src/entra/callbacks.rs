//! The admin-consent flow: the consent URL for the tenant the operator named, the
//! callback's parsing, and the proof that consent exists (a token minted for that tenant
//! whose claims say so).

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::claims::{guid, parse_consent_query};
use super::{EntraApp, Resource, ID};
use crate::{Callbacks, InstallContext, InstalledAccount, ProviderError, SetupRedirect};

impl EntraApp {
    fn pinned_tenant(pin: Option<&InstalledAccount>) -> Option<String> {
        pin.and_then(|p| guid(&p.login))
    }
}

#[async_trait]
impl Callbacks for EntraApp {
    /// `{authority}/{GUID}/v2.0/adminconsent?client_id=…&redirect_uri=…&state=…&scope=…`:
    /// the consent page of the tenant the operator named (a consent page for `organizations`
    /// would let any tenant's admin answer).
    fn install_url(&self, state: &str, pin: Option<&InstalledAccount>) -> String {
        let tenant = Self::pinned_tenant(pin).unwrap_or_else(|| "organizations".into());
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &self.client_id())
            .append_pair(
                "redirect_uri",
                self.settings.redirect_uri.as_deref().unwrap_or(""),
            )
            .append_pair("state", state)
            .append_pair(
                "scope",
                &format!("{}/.default", self.settings.graph_resource),
            )
            .finish();
        format!(
            "{}/{tenant}/v2.0/adminconsent?{query}",
            self.settings.authority_host
        )
    }

    fn parse_setup(&self, query: &str) -> Result<SetupRedirect, String> {
        let c = parse_consent_query(query)?;
        let refused = match (&c.error, c.admin_consent) {
            // `error` overrides `admin_consent=True`.
            (Some((e, d)), _) => Some(format!("Entra reported {e}: {d}")),
            (None, false) => Some("admin_consent is not True".to_owned()),
            (None, true) => None,
        };
        Ok(SetupRedirect {
            state: c.state,
            config: c
                .tenant
                .map_or_else(|| json!({}), |t| json!({ "tenant_id": t })),
            action: "admin_consent".into(),
            code: None,
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

    /// The callback's `tenant` is a claim: it must be the tenant the operator named, and a
    /// token minted for it (retried while Entra propagates the consent) must pass the claim
    /// checks. Nothing else proves an admin of that tenant consented.
    async fn prove_installer(
        &self,
        redirect: &SetupRedirect,
        context: &InstallContext<'_>,
        timeout: Duration,
    ) -> Result<InstalledAccount, ProviderError> {
        let pinned = context.pin;
        let tenant = redirect
            .config
            .get("tenant_id")
            .and_then(Value::as_str)
            .and_then(guid)
            .ok_or_else(|| ProviderError::InvalidConfig("the redirect names no tenant".into()))?;
        let expected = Self::pinned_tenant(pinned).ok_or_else(|| {
            ProviderError::InvalidConfig("the onboarding named no Entra tenant".into())
        })?;
        if tenant != expected {
            return Err(ProviderError::Denied {
                message: format!(
                    "the consent came back for tenant {tenant}, not the tenant {expected} named at onboarding; nothing was minted for it"
                ),
                upstream_request_id: None,
                trust_broken: false,
            });
        }
        let started = std::time::Instant::now();
        self.note_consent(&tenant);
        let graph = self
            .token_for(&tenant, Resource::Graph, timeout, context.assertions)
            .await?;
        // The tenant matches the pin, but anyone holding the link can claim it: only an
        // administrator of that tenant can grant our app a permission, so one granted after
        // the link was issued shows that this consent happened now.
        let left = timeout.saturating_sub(started.elapsed());
        self.check_fresh_grants(&graph, &tenant, context.issued_at, left)
            .await?;
        Ok(InstalledAccount {
            login: tenant,
            id: 0,
        })
    }
}
