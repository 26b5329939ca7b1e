//! What a verified signed invocation (Atlassian Forge Remote) changes: the site's first
//! invocation after an operator's onboarding binds its installation to that tenant; a
//! reinstall (new installation, same site) re-binds within the tenant that holds the site;
//! a site nobody expects is kept unclaimed for an operator; each system token that outlives
//! the one held is sealed as the binding's new active secret version. Every change is one
//! audited batch, planned and committed under the admin lock; the invocation is already
//! verified (the FIT's signature names the site and installation). Also the operator's side:
//! `onboard` recording which tenant expects a site.

use serde_json::{json, Value};

use credbroker_providers::{Invocation, Invocations, Provider};

use super::{fresh_generation, store_err, AdminService, NewBinding, Plan};
use crate::api_error::{ApiError, ErrorCode};
use crate::audit::AuditEvent;
use crate::ids::{BindingId, TenantId};
use crate::model::{now_rfc3339, Binding};
use crate::store::records::{AccountPin, ExpectedSite, Stored, Unclaimed};
use crate::store::Batch;

mod token;

/// What one invocation did, for the caller's log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationOutcome {
    /// The site's installation was bound to the tenant that expected it.
    Bound,
    /// A reinstall: the site's binding now names the new installation.
    Rebound,
    /// A fresher token was sealed.
    Captured,
    /// Nothing changed (the token held lives as long, or none came).
    Kept,
    /// The site is expected, but none of its administrators has typed the onboarding's
    /// connect code on the app's admin page yet: nothing changed.
    AwaitingCode,
    /// The site is expected by nobody: kept for an operator.
    Unclaimed,
    /// An invocation of an installation the site no longer runs, or of an unclaimed site
    /// already kept.
    Ignored,
}

impl InvocationOutcome {
    /// As a metric label / log word.
    pub fn as_str(self) -> &'static str {
        match self {
            InvocationOutcome::Bound => "bound",
            InvocationOutcome::Rebound => "rebound",
            InvocationOutcome::Captured => "captured",
            InvocationOutcome::Kept => "kept",
            InvocationOutcome::AwaitingCode => "awaiting_code",
            InvocationOutcome::Unclaimed => "unclaimed",
            InvocationOutcome::Ignored => "ignored",
        }
    }
}

/// Length of a connect code (letters and digits: about 143 bits).
const CONNECT_CODE_LEN: usize = 24;

/// Whether `code` is the one whose hash an expectation holds (compared in constant time).
fn code_matches(code_sha256: Option<&str>, code: &str) -> bool {
    code_sha256.is_some_and(|held| crate::hex_text::sha256_matches(held, code.as_bytes()))
}

/// The binding id a site's installation is bound under.
pub(super) fn site_binding_id(provider: &str, site: &str) -> Result<BindingId, ApiError> {
    BindingId::parse(&format!(
        "{}-{}",
        provider.replace('_', "-"),
        site.rsplit(':').next().unwrap_or("x")
    ))
    .map_err(|_| ApiError::new(ErrorCode::Internal, "the site cannot form a binding id"))
}

impl AdminService {
    /// Records that `tenant` expects the site `pin` names (a signed-invocation provider:
    /// Atlassian Forge): its first verified invocation binds it. Refused when another
    /// tenant holds or expects the site.
    pub(super) async fn plan_expect_site(
        &self,
        inv: &dyn credbroker_providers::Invocations,
        provider: &str,
        tenant: &TenantId,
        pin: Option<AccountPin>,
        (governance, issuer): (
            Option<crate::model::Governance>,
            Option<super::commit::Issuer>,
        ),
        plan: &mut Plan,
    ) -> Result<(), ApiError> {
        let pin = pin.ok_or_else(|| {
            ApiError::bad_request(
                "onboarding a site needs its cloudId: {\"account\": {\"login\": CLOUD_ID, \"id\": 0}} (credbroker onboard atlassian --tenant T --cloud-id ID)",
            )
        })?;
        let site = inv
            .site_identifier(&pin.login)
            .map_err(ApiError::bad_request)?;
        let r = &self.core.records;
        if let Some(owner) = r.identifier_owner(&site).await.map_err(store_err)? {
            if owner.tenant != tenant.as_str() {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("{site} is already bound to another tenant"),
                ));
            }
            plan.response["binding"] = json!(owner.binding);
            plan.response["result"] = json!("the site is already bound to this tenant");
            plan.detail = format!("{}; {site} already bound here", plan.detail);
            return Ok(());
        }
        // A site already running the app unclaimed (or ignored, or uncounted beyond the
        // list's cap) is onboarded like any: naming its cloudId wins nothing, its
        // administrator's connect code binds it (and the unclaimed record goes with it).
        if let Some((_, u)) = r
            .unclaimed()
            .await
            .map_err(store_err)?
            .into_iter()
            .find(|(_, u)| u.value.identifier == site)
        {
            plan.response["unclaimed_since"] = json!(u.value.seen_at);
        }
        let now = time::OffsetDateTime::now_utc();
        let read = r.expected_site(&site).await.map_err(store_err)?;
        if let Some((_, e)) = &read {
            if e.value.tenant != tenant.as_str() && !e.value.expired(now.unix_timestamp()) {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("{site} is already expected by another tenant"),
                ));
            }
        }
        let expires = now
            + time::Duration::seconds(i64::try_from(inv.expected_site_ttl_s()).unwrap_or(86400));
        // The proof the site is this tenant's: a code only this onboarding hands out, which
        // an administrator of the site types on the app's admin page. Only its hash is kept.
        let code = zeroize::Zeroizing::new(super::random_alphanumeric(CONNECT_CODE_LEN)?);
        plan.batch.put_expected_site(
            &site,
            read.as_ref().map(|(_, s)| s),
            &crate::store::records::ExpectedSite {
                provider: provider.to_owned(),
                tenant: tenant.to_string(),
                expires_at: expires.unix_timestamp(),
                recorded_at: now_rfc3339(),
                governance,
                creator: issuer.as_ref().map(|i| i.0.clone()),
                creator_revision: issuer.and_then(|i| i.1),
                code_sha256: Some(crate::hex_text::sha256_hex(code.as_bytes())),
            },
        );
        plan.response["expected_site"] = json!(site);
        plan.response["connect_code"] = json!(code.as_str());
        plan.response["expires_at"] = json!(crate::model::rfc3339(expires));
        if let Some(base) = self.core.public_base_url() {
            plan.response["remote_base_url"] = json!(format!("{base}/forge"));
        }
        plan.detail = format!("{}; expects {site}", plan.detail);
        Ok(())
    }

    /// Applies one verified invocation of `provider` (audited as `callback:<provider>`).
    ///
    /// # Errors
    /// A refusal (the installation belongs to another site's binding), or a failure to
    /// read, audit or commit.
    pub(crate) async fn apply_invocation(
        &self,
        provider: &dyn Provider,
        invocation: Invocation,
        (event_type, code): (Option<String>, Option<zeroize::Zeroizing<String>>),
        request_id: &str,
    ) -> Result<InvocationOutcome, ApiError> {
        let inv = provider
            .invocations()
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such callback"))?;
        let _guard = self.lock.lock().await;
        let what = event_type
            .clone()
            .or_else(|| invocation.module.clone())
            .unwrap_or_else(|| "invocation".into());
        let event = AuditEvent {
            kind: "callback".into(),
            request_id: request_id.to_owned(),
            actor: format!("callback:{}", provider.id()),
            provider: Some(provider.id().to_owned()),
            outcome: "allowed".into(),
            ..Default::default()
        };
        let r = &self.core.records;
        let installation_owner = r
            .identifier_owner(&invocation.installation)
            .await
            .map_err(store_err)?;
        let site_owner = r
            .identifier_owner(&invocation.site)
            .await
            .map_err(store_err)?;
        let installation_owned = installation_owner.is_some();
        let owner = installation_owner.or(site_owner);
        if let Some(owner) = owner {
            let stored = self
                .binding_or_404(owner.binding.as_deref().unwrap_or(""))
                .await?;
            return self
                .invoke_bound(
                    inv,
                    provider,
                    stored,
                    (invocation, installation_owned),
                    &what,
                    event,
                )
                .await;
        }
        // Nobody holds the site: an onboarding that expects it binds it on its administrator's
        // connect code — unless the operator who recorded it may no longer act, or the tenant
        // it names is not the one the operator meant (removed, or removed and created again
        // since).
        let expected = r.expected_site(&invocation.site).await.map_err(store_err)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if let Some((key, read)) =
            expected.filter(|(_, e)| !e.value.expired(now) && e.value.provider == provider.id())
        {
            match self
                .expectation_holds(&read.value, &invocation.site)
                .await?
            {
                Ok(()) => {
                    // An onboarding names a site anyone can name: the site is bound only when one of
                    // its administrators types, on the app's own admin page, the code that onboarding
                    // handed out (Forge signs the page's call with the site and the person).
                    let Some(code) = code else {
                        return Ok(InvocationOutcome::AwaitingCode);
                    };
                    if !code_matches(read.value.code_sha256.as_deref(), &code) {
                        return Err(ApiError::new(
                            ErrorCode::CallbackRejected,
                            "this is not the connect code of the onboarding that expects this site (a newer onboarding replaces the code; an onboarding recorded before codes existed has none: onboard again)",
                        ));
                    }
                    // Bound on behalf of the operator who recorded the expectation: each
                    // commit requires them still active.
                    let issuer = read
                        .value
                        .creator
                        .clone()
                        .map(|c| (c, read.value.creator_revision));
                    let bind = self.bind_expected(provider, invocation, (key, read), &what, event);
                    return Self::on_behalf_of(issuer, bind).await;
                }
                Err(why) => {
                    return self
                        .keep_unclaimed(provider, invocation, &what, event, Some(why))
                        .await
                }
            }
        }
        self.keep_unclaimed(provider, invocation, &what, event, None)
            .await
    }

    /// Whether an onboarding's expectation may bind its site now: `Err(why not)`.
    pub(super) async fn expectation_holds(
        &self,
        expected: &ExpectedSite,
        site: &str,
    ) -> Result<Result<(), String>, ApiError> {
        let recorded = time::OffsetDateTime::parse(
            &expected.recorded_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|_| ApiError::new(ErrorCode::Internal, "corrupt site expectation"))?;
        let r = &self.core.records;
        // An expectation acts for the operator who recorded it: once they are disabled or
        // removed, it binds nothing.
        match self
            .issuer_may_act(expected.creator.as_deref(), expected.creator_revision)
            .await
        {
            Ok(()) => {}
            Err(e) if e.code == ErrorCode::OperatorRequired => {
                return Ok(Err(format!(
                    "tenant {} expects {site}, but the operator who recorded that onboarding may no longer act ({}): an active operator onboards it again (a new connect code), or binds it with `credbroker unclaimed claim` after checking whose it is",
                    expected.tenant, e.message
                )))
            }
            Err(e) => return Err(e),
        }
        let tenant = match crate::ids::TenantId::parse(&expected.tenant) {
            Ok(t) => r.tenant(&t).await.map_err(store_err)?,
            Err(_) => None,
        };
        let same = tenant.is_some_and(|t| {
            time::OffsetDateTime::parse(
                &t.value.created_at,
                &time::format_description::well_known::Rfc3339,
            )
            .is_ok_and(|created| created <= recorded)
        });
        if !same {
            return Ok(Err(format!(
                "the tenant {} that expected {site} was removed since the onboarding",
                expected.tenant
            )));
        }
        Ok(Ok(()))
    }

    /// An invocation of a site or installation some binding holds.
    async fn invoke_bound(
        &self,
        inv: &dyn Invocations,
        provider: &dyn Provider,
        stored: Stored<Binding>,
        (invocation, installation_owned): (Invocation, bool),
        what: &str,
        mut event: AuditEvent,
    ) -> Result<InvocationOutcome, ApiError> {
        let mut binding = stored.value.clone();
        event.tenant = Some(binding.tenant.to_string());
        event.binding = Some(binding.id.to_string());
        let holds_site = provider
            .exclusive_identifiers(&binding.config)
            .contains(&invocation.site);
        if !holds_site {
            event.action = "forge.refused".into();
            event.outcome = "denied".into();
            event.error_code = Some(ErrorCode::Conflict.as_str().into());
            let message = format!(
                "{} belongs to binding {}, which is for another site than {}",
                invocation.installation, binding.id, invocation.site
            );
            event.detail = Some(message.clone());
            let _ = self.core.audit.append(event).await;
            return Err(ApiError::new(ErrorCode::Conflict, message));
        }
        let (current, _) = inv.installations(&binding.config);
        let is_current = current.as_deref() == Some(invocation.installation.as_str());
        if installation_owned && !is_current {
            // An installation this binding held before a reinstall (a late retry): a
            // reinstall is always a new installation, so nothing changes.
            return Ok(InvocationOutcome::Ignored);
        }
        let mut batch = Batch::new();
        let mut outcome = InvocationOutcome::Kept;
        let mut details = Vec::new();
        if !is_current {
            // A reinstall: the site's binding follows the new installation, within its tenant.
            let Some(config) = inv
                .rebind(&binding.config, &invocation)
                .map_err(|m| ApiError::new(ErrorCode::Internal, m))?
            else {
                tracing::warn!(binding = %binding.id, installation = %invocation.installation, "an installation of another product on a bound site: not bound (one binding per site)");
                return Ok(InvocationOutcome::Ignored);
            };
            provider
                .bind(&config, &binding.ceiling)
                .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
            // Identifiers the binding no longer lists (the oldest previous installations)
            // are released: repeated reinstalls cannot grow the store.
            let kept = provider.exclusive_identifiers(&config);
            for dropped in provider
                .exclusive_identifiers(&binding.config)
                .into_iter()
                .filter(|i| !kept.contains(i))
            {
                batch.release_identifier(&dropped);
            }
            binding.config = config;
            binding.generation = fresh_generation()?;
            batch.claim_identifier(
                &invocation.installation,
                &crate::store::records::IdentifierOwner {
                    tenant: binding.tenant.to_string(),
                    binding: Some(binding.id.to_string()),
                },
            );
            // The old installation's token is not handed out for the new one.
            if let Some(retired) = self.plan_retire_token(&mut binding, &mut batch).await? {
                details.push(retired);
            }
            details.push(format!(
                "reinstalled: {} replaces {}",
                invocation.installation,
                current.as_deref().unwrap_or("(none)")
            ));
            outcome = InvocationOutcome::Rebound;
        }
        let captured = self
            .plan_capture(
                &mut binding,
                (invocation.token, invocation.principal.is_some()),
                &mut batch,
            )
            .await?;
        if let Some((detail, fingerprint)) = captured {
            details.push(detail);
            event.token_fingerprint = Some(fingerprint);
            if outcome == InvocationOutcome::Kept {
                outcome = InvocationOutcome::Captured;
            }
        }
        if batch.is_empty() {
            return Ok(outcome);
        }
        batch.replace(&stored, &binding);
        event.action = match outcome {
            InvocationOutcome::Rebound => "forge.rebound",
            _ => "forge.token_captured",
        }
        .into();
        event.detail = Some(format!(
            "binding={} site={} ({what}): {}",
            binding.id,
            invocation.site,
            details.join("; ")
        ));
        self.commit_audited(event, batch, &[binding.id.as_str()])
            .await
            .map_err(|(e, _)| e)?;
        Ok(outcome)
    }

    /// The first invocation of a site an onboarding expects: bound to that tenant (and its
    /// token captured in a second audited batch).
    async fn bind_expected(
        &self,
        provider: &dyn Provider,
        invocation: Invocation,
        (key, read): (String, Stored<ExpectedSite>),
        what: &str,
        mut event: AuditEvent,
    ) -> Result<InvocationOutcome, ApiError> {
        let tenant = crate::ids::TenantId::parse(&read.value.tenant)
            .map_err(|_| ApiError::new(ErrorCode::Internal, "corrupt site expectation"))?;
        let id = site_binding_id(provider.id(), &invocation.site)?;
        let mut plan: Plan = self
            .plan_add_binding(NewBinding {
                id: id.clone(),
                tenant: tenant.clone(),
                provider: provider.id().to_owned(),
                config: invocation.config.clone(),
                ceiling: Value::Null,
                owner: read
                    .value
                    .governance
                    .as_ref()
                    .map(|g| g.owner.clone())
                    .unwrap_or_default(),
                purpose: read
                    .value
                    .governance
                    .as_ref()
                    .map(|g| g.purpose.clone())
                    .unwrap_or_default(),
                max_secret_age_days: None,
                // The tenant that expected the site, not one created again since (checked
                // on the tenant record the batch is preconditioned on).
                tenant_created_by: crate::model::unix_of_rfc3339(&read.value.recorded_at),
            })
            .await?;
        // plan_add_binding consumed the expectation as it read it again; the bind is for the
        // tenant of the expectation as read here, so that one must still be in the store
        // when the batch commits (a revocation or a new onboarding on another replica in
        // between fails it). First: the batch removes it further on.
        let mut guard = Batch::new();
        guard.expect_expected_site(&key, &read);
        plan.batch = guard.then(std::mem::take(&mut plan.batch));
        // A site kept unclaimed before the operator onboarded it is now claimed.
        if let Some((ukey, uread)) = self
            .core
            .records
            .unclaimed()
            .await
            .map_err(store_err)?
            .into_iter()
            .find(|(_, u)| u.value.identifier == invocation.site)
        {
            plan.batch.remove_unclaimed(&ukey, &uread);
        }
        event.action = "forge.bound".into();
        event.tenant = Some(tenant.to_string());
        event.binding = Some(id.to_string());
        // The person who typed the code is not named: the broker keeps no Atlassian user data
        // (the manifest declares its remote storage out of end-user-data scope).
        event.detail = Some(format!(
            "{}; {} ({}) bound to the tenant that expected {} since {}, on the connect code typed on the site's admin page ({what})",
            plan.detail,
            invocation.installation,
            invocation.site,
            invocation.site,
            read.value.recorded_at,
        ));
        self.commit_audited(event.clone(), plan.batch, &[])
            .await
            .map_err(|(e, _)| e)?;
        let stored = self.binding_or_404(id.as_str()).await?;
        let mut binding = stored.value.clone();
        let mut batch = Batch::new();
        if let Some((detail, fingerprint)) = self
            .plan_capture(
                &mut binding,
                (invocation.token, invocation.principal.is_some()),
                &mut batch,
            )
            .await?
        {
            batch.replace(&stored, &binding);
            event.action = "forge.token_captured".into();
            event.token_fingerprint = Some(fingerprint);
            event.detail = Some(format!("binding={id} site={}: {detail}", invocation.site));
            self.commit_audited(event, batch, &[id.as_str()])
                .await
                .map_err(|(e, _)| e)?;
        }
        Ok(InvocationOutcome::Bound)
    }

    /// A site nobody expects: kept (once, audited) for an operator to claim; its token is
    /// not stored.
    async fn keep_unclaimed(
        &self,
        provider: &dyn Provider,
        invocation: Invocation,
        what: &str,
        mut event: AuditEvent,
        why: Option<String>,
    ) -> Result<InvocationOutcome, ApiError> {
        let held = self.core.records.unclaimed().await.map_err(store_err)?;
        if let Some((known_key, known)) = held
            .iter()
            .find(|(_, u)| u.value.identifier == invocation.site)
        {
            // Ignored by an operator: counted, never written again.
            if known.value.ignored {
                return Ok(InvocationOutcome::Ignored);
            }
            // Already kept (and audited once): nothing more is written, whichever
            // installation of the site calls — except, at most once a day, a later expiry,
            // so a site that keeps running the app stays listed for an operator.
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let fresh = known
                .value
                .expires_at
                .is_some_and(|e| e > now + crate::store::records::UNCLAIMED_TTL_S - 24 * 3600);
            if fresh {
                return Ok(InvocationOutcome::Unclaimed);
            }
            let mut renewed = known.value.clone();
            renewed.expires_at = Some(crate::callbacks::unclaimed_expiry());
            let mut batch = Batch::new();
            batch.put_unclaimed(Some((known_key, known)), &renewed);
            event.action = "forge.unclaimed".into();
            event.outcome = "denied".into();
            event.error_code = Some(ErrorCode::Conflict.as_str().into());
            event.detail = Some(format!(
                "{} still running the app unclaimed ({what}): kept until {}",
                invocation.site,
                renewed.expires_at.unwrap_or_default()
            ));
            self.commit_audited(event, batch, &[])
                .await
                .map_err(|(e, _)| e)?;
            return Ok(InvocationOutcome::Unclaimed);
        }
        if !crate::callbacks::unclaimed_room(&held, provider.id(), &invocation.site) {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "too many unclaimed installations are waiting for an operator",
            ));
        }
        let cloud = invocation.site.rsplit(':').next().unwrap_or("").to_owned();
        let reason = why.unwrap_or_else(|| {
            format!(
                "no tenant expects site {cloud} (credbroker onboard atlassian --tenant T --cloud-id {cloud})"
            )
        });
        let mut batch = Batch::new();
        batch.put_unclaimed(
            None,
            &Unclaimed {
                provider: provider.id().to_owned(),
                identifier: invocation.site.clone(),
                config: invocation.config.clone(),
                account: crate::store::records::AccountPin {
                    login: cloud,
                    id: 0,
                },
                reason: reason.clone(),
                seen_at: now_rfc3339(),
                expires_at: Some(crate::callbacks::unclaimed_expiry()),
                ignored: false,
            },
        );
        event.action = "forge.unclaimed".into();
        event.outcome = "denied".into();
        event.error_code = Some(ErrorCode::Conflict.as_str().into());
        event.detail = Some(format!(
            "{} of {} ({what}): {reason}; kept as unclaimed for an operator, nothing bound, its token not stored",
            invocation.installation, invocation.site
        ));
        self.commit_audited(event, batch, &[])
            .await
            .map_err(|(e, _)| e)?;
        Ok(InvocationOutcome::Unclaimed)
    }
}
