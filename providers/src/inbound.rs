//! What providers receive from outside: install redirects and webhooks ([`Callbacks`]) and
//! invocations signed by the upstream ([`Invocations`]). Every method verifies or parses
//! only; the core decides what changes.

use std::time::Duration;

use crate::federation::AssertionSigner;
use crate::{ProviderError, SecretFields};
use async_trait::async_trait;
use serde_json::Value;

/// A normalized event from a verified provider callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackEvent {
    /// The customer removed the installation / trust.
    Removed {
        /// Exclusive identifier of the binding concerned.
        identifier: String,
    },
    /// The installation was suspended.
    Suspended {
        /// Exclusive identifier.
        identifier: String,
    },
    /// The installation was unsuspended.
    Unsuspended {
        /// Exclusive identifier.
        identifier: String,
    },
    /// The customer changed what the installation grants (drift).
    Changed {
        /// Exclusive identifier.
        identifier: String,
        /// What changed (no secrets).
        detail: String,
    },
    /// A verified event that changes nothing here.
    Ignored {
        /// Why.
        reason: String,
    },
}

/// A parsed setup redirect after a customer installed our app: still a claim until
/// [`Callbacks::prove_installer`] has shown who came back.
#[derive(Debug, Clone)]
pub struct SetupRedirect {
    /// The `state` the broker issued.
    pub state: String,
    /// The binding configuration the redirect claims (e.g. `{"installation_id": 42}`).
    pub config: Value,
    /// What the customer did (`install`, `update`…).
    pub action: String,
    /// The one-time authorization code of the person who installed (GitHub's user
    /// authorization during installation). Never logged.
    pub code: Option<secrecy::SecretString>,
    /// Set when the upstream says the install or consent did not happen (Entra's `error`,
    /// which overrides a `code`): the state is consumed and the refusal audited, nothing is
    /// bound.
    pub refused: Option<String>,
}

/// The account an installation belongs to, as the provider proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledAccount {
    /// Account login (e.g. the GitHub organisation).
    pub login: String,
    /// Numeric account id (stable across renames).
    pub id: u64,
}

/// What the broker knows about the install link a setup callback answers.
#[derive(Clone, Copy)]
pub struct InstallContext<'a> {
    /// The customer account the operator pinned at onboarding.
    pub pin: Option<&'a InstalledAccount>,
    /// When the link was issued: whatever the customer did in answer to it happened after.
    pub issued_at: time::OffsetDateTime,
    /// The broker's own OIDC issuer (an Entra app authenticating with a federated credential).
    pub assertions: &'a dyn AssertionSigner,
    /// How long the proof's upstream calls may take in all (each also within its own
    /// timeout): the person who came back is answered by then. A call that must not be
    /// abandoned midway (GitHub's code exchange: a token issued to it could not be revoked)
    /// may run past it; the broker cuts the whole one `timeout` later. A clean-up owed
    /// whatever the outcome (GitHub: revoking the installer's user token) runs in a task of
    /// its own, so no cut skips it.
    pub proof_time: std::time::Duration,
}

/// Inbound callbacks of a provider (install redirects, webhooks). Every method verifies or
/// parses only; the core decides what changes.
#[async_trait]
pub trait Callbacks: Send + Sync {
    /// Where to send a customer to install, carrying the broker's single-use `state`; `pin`
    /// is the customer account the operator named at onboarding (Entra: the tenant whose
    /// admin-consent page to open).
    fn install_url(&self, state: &str, pin: Option<&InstalledAccount>) -> String;

    /// Checks and normalizes the customer account an operator names at onboarding. The
    /// default: an account login of 1-100 `[A-Za-z0-9-_.]` and a positive numeric id
    /// (GitHub).
    ///
    /// # Errors
    /// What is wrong with it.
    fn check_pin(&self, pin: InstalledAccount) -> Result<InstalledAccount, String> {
        let login_ok = !pin.login.is_empty()
            && pin.login.len() <= 100
            && pin
                .login
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !login_ok || pin.id == 0 {
            return Err(
                "account.login must be 1-100 of [A-Za-z0-9-_.] and account.id positive".into(),
            );
        }
        Ok(pin)
    }

    /// Parses a setup redirect's query string.
    ///
    /// # Errors
    /// A message naming what is missing or malformed.
    fn parse_setup(&self, query: &str) -> Result<SetupRedirect, String>;

    /// Verifies a webhook (signature checked in constant time before the body is parsed) and
    /// normalizes it.
    ///
    /// # Errors
    /// A message when the signature is missing or wrong, or the body malformed.
    fn verify_webhook(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<CallbackEvent, String>;

    /// Whether the provider confirms, now, the state a verified webhook reports (GitHub: the
    /// installation is gone, or suspended). A signed delivery replayed once the broker has
    /// forgotten it, or one overtaken by a later change, reports a state that no longer
    /// holds: `Ok(false)`. Only removals and suspensions are asked about (an unsuspension is
    /// confirmed by the probe it triggers); the default confirms everything.
    ///
    /// # Errors
    /// When the provider cannot be asked (unreachable, rate-limited, no key it accepts): the
    /// broker then changes nothing and answers 503, remembering nothing of the delivery.
    async fn confirm_event(
        &self,
        event: &CallbackEvent,
        timeout: Duration,
    ) -> Result<bool, ProviderError> {
        let _ = (event, timeout);
        Ok(true)
    }

    /// Whether an install started now could complete (e.g. GitHub: the OAuth client id and an
    /// active client secret to prove who installed). Onboarding refuses to issue a link
    /// otherwise.
    ///
    /// # Errors
    /// What is missing.
    fn ready_to_install(&self) -> Result<(), String> {
        Ok(())
    }

    /// Whether confirming an install can only be done with an assertion of the broker's own
    /// OIDC issuer (no other credential is active): the broker then refuses to issue a link
    /// while it has no issuer, rather than spend the customer's consent on a callback that
    /// cannot be confirmed.
    fn needs_issuer(&self) -> bool {
        false
    }

    /// The webhook delivery's unique id (GitHub: `X-GitHub-Delivery`), when the provider
    /// has one; the broker refuses a delivery id it has already processed (replay).
    fn delivery_id(&self, headers: &http::HeaderMap) -> Option<String> {
        let _ = headers;
        None
    }

    /// Proves that the person who came back with `redirect` administers the installation it
    /// names, and returns the installation's account. GitHub: exchange the user's one-time
    /// `code` for a user token, find the installation among the user's installations, revoke
    /// the token (never stored). Entra: redeem the sign-in's `code` at the pinned tenant and
    /// read its `id_token` (an administrator of that tenant, this link's nonce), then a token
    /// minted for the tenant must say so, and a permission must have been granted there after
    /// the link was issued. The installation id in the redirect is a claim until this returns.
    ///
    /// # Errors
    /// [`ProviderError::Denied`] when the code is bad or the installation is not the user's;
    /// [`ProviderError::Unavailable`] when the upstream cannot be reached;
    /// [`ProviderError::InvalidConfig`] when the provider lacks what the proof needs.
    async fn prove_installer(
        &self,
        redirect: &SetupRedirect,
        context: &InstallContext<'_>,
        timeout: Duration,
    ) -> Result<InstalledAccount, ProviderError>;

    /// The exclusive identifier a pin names, when the pin is the identifier itself (Entra:
    /// the tenant GUID): onboarding refuses a pin another tenant's binding already holds,
    /// before any link exists.
    fn pin_identifier(&self, pin: &InstalledAccount) -> Option<String> {
        let _ = pin;
        None
    }

    /// The binding configuration a pin names, for a provider whose setup redirect names
    /// nothing itself (Entra: the tenant the operator named, which the sign-in must prove).
    fn pin_config(&self, pin: &InstalledAccount) -> Option<Value> {
        let _ = pin;
        None
    }

    /// The pin an exclusive identifier is (the inverse of [`Callbacks::pin_identifier`]):
    /// a binding of that identifier added any other way is refused while another tenant's
    /// install link for that pin is out.
    fn identifier_pin(&self, identifier: &str) -> Option<InstalledAccount> {
        let _ = identifier;
        None
    }
}

/// A credential an upstream attached to a verified invocation (a Forge app system token):
/// sealed in the store as a new secret version of the binding.
pub struct CapturedToken {
    /// The secret fields to seal.
    pub fields: SecretFields,
    /// When it stops working, Unix seconds.
    pub expires_at: i64,
    /// The credentials a resolve hands out for it: the broker audits their keyed
    /// fingerprint, the same one its resolve records carry.
    pub credentials: SecretFields,
}

/// A verified invocation: who the upstream says is calling, established by its signature.
pub struct Invocation {
    /// Exclusive identifier of the customer's site (one tenant): `atlassian_site:{cloudId}`.
    pub site: String,
    /// Exclusive identifier of the installation (changes on reinstall).
    pub installation: String,
    /// The binding configuration this installation establishes.
    pub config: Value,
    /// What was invoked (module key), for the audit record.
    pub module: Option<String>,
    /// The upstream account of the person who invoked the app from its UI, if any.
    pub principal: Option<String>,
    /// The credential attached, when any (`Err`: one was attached and refused, and why).
    pub token: Option<Result<CapturedToken, String>>,
}

/// Inbound invocations signed by the upstream itself (Atlassian Forge Remote: every call
/// carries a Forge Invocation Token). No per-install secret exists; the signature names the
/// site and installation. Every method verifies or parses only; the core decides what
/// changes.
#[async_trait]
pub trait Invocations: Send + Sync {
    /// Verifies the invocation from its headers alone, before its body is read.
    ///
    /// # Errors
    /// Why it is refused (never secret material).
    async fn verify(&self, headers: &http::HeaderMap) -> Result<Invocation, String>;

    /// Reads a verified invocation's body: the lifecycle event type it reports, if any.
    ///
    /// # Errors
    /// When the body is not what the upstream sends.
    fn parse_body(&self, body: &[u8]) -> Result<Option<String>, String>;

    /// Reads a `connect` invocation: the connect code a site administrator typed on the
    /// app's own admin page, which proves the site is the tenant's that onboarding gave the
    /// code to. Refused unless the invocation came from that page, with a person invoking it.
    ///
    /// # Errors
    /// When the invocation is not from the admin page, or the body holds no code.
    fn connect_code(
        &self,
        invocation: &Invocation,
        body: &[u8],
    ) -> Result<zeroize::Zeroizing<String>, String>;

    /// The exclusive identifier of the site an operator names at onboarding.
    ///
    /// # Errors
    /// When `site` is not a site identifier of this upstream.
    fn site_identifier(&self, site: &str) -> Result<String, String>;

    /// The installation a binding's configuration holds now, and the ones it held before.
    fn installations(&self, config: &Value) -> (Option<String>, Vec<String>);

    /// The configuration of a binding re-bound to `invocation`'s installation (the one it
    /// held is kept among the previous ones, a bounded number of them); `None` when the
    /// invocation is not a reinstall of what the binding holds (another product's
    /// installation on the same site).
    ///
    /// # Errors
    /// When `config` is not this provider's.
    fn rebind(&self, config: &Value, invocation: &Invocation) -> Result<Option<Value>, String>;

    /// How long an operator's onboarding expects a site, seconds.
    fn expected_site_ttl_s(&self) -> u64;
}
