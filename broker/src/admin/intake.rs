//! One-time intake links (`credbroker intake create|list|revoke`) and the page behind them on
//! the public listener (`GET|POST /intake/{token}`).
//!
//! The link's token (32 random bytes) is shown once; the store keeps its SHA-256. Opening the
//! link (GET) changes nothing — mail scanners prefetch links — and sets a CSRF nonce cookie;
//! the form carries an HMAC of that nonce and the link (the broker's fingerprint key), so a
//! form posted from anywhere else is refused. A submission is sealed as a `pending` version
//! and probed through the audited pipeline (actor `intake:<link id>`, the record naming the
//! link's creator); one that passes is promoted and uses the link up; a failing one may be
//! retried a few times. A used, expired, revoked or never-issued link gets the same plain
//! answer. Requests that do not present a live link are counted, not audited.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use credbroker_providers::{BindingContext, SecretFields, SecretRequirement};

use super::intake_form::parse_intake_form;
use super::{random_alphanumeric, store_err, AdminService, Plan};
use crate::api_error::{ApiError, ErrorCode};
use crate::audit::{AuditEvent, AuditReceipt};
use crate::callbacks::sha256_hex;
use crate::intake_page::{self as pages, IntakeAnswer, INTAKE_COOKIE};
use crate::model::now_rfc3339;
use crate::store::records::IntakeLink;
use crate::store::Batch;

mod link;

/// Failed submissions a link allows before it is used up.
pub const MAX_INTAKE_FAILURES: u32 = 3;

/// `POST /v1/admin/intake`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewIntake {
    /// The binding whose secret the customer provides.
    pub binding: String,
    /// How long the link works, seconds (default 86400, at most 7 days).
    #[serde(default)]
    pub ttl_s: Option<u64>,
    /// The fields to ask for (default: what the binding's provider declares).
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// The operator creating it (from the certificate, never from the body).
    #[serde(skip)]
    #[schemars(skip)]
    pub creator: String,
}

/// Whether `token` looks like a link token (43 base64url characters).
fn token_ok(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    crate::callbacks::cookie(headers, INTAKE_COOKIE)
}

impl AdminService {
    fn csrf_for(&self, token_hash: &str, nonce: &str) -> String {
        self.core
            .fingerprint
            .fingerprint(format!("intake-csrf\0{token_hash}\0{nonce}").as_bytes())
    }

    pub(super) async fn plan_intake_create(&self, n: NewIntake) -> Result<Plan, ApiError> {
        let stored = self.binding_or_404(&n.binding).await?;
        let b = stored.value;
        let provider = self
            .core
            .registry
            .get(&b.provider)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::BindingInactive,
                    "the binding's provider is not configured",
                )
            })?;
        if provider.secret_requirement() != SecretRequirement::Required {
            return Err(ApiError::bad_request(format!(
                "provider {} is federated and takes no secret",
                b.provider
            )));
        }
        let fields = match n.fields {
            Some(f) => f,
            None => {
                let bound = provider.bind(&b.config, &b.ceiling)?;
                provider.secret_fields(&BindingContext {
                    tenant_id: b.tenant.as_str(),
                    binding_id: b.id.as_str(),
                    config: &b.config,
                    ceiling: &b.ceiling,
                    bound: &bound,
                })
            }
        };
        if fields.is_empty() || fields.len() > 16 {
            return Err(ApiError::bad_request(
                "name the fields to ask for (1-16): the provider does not declare them",
            ));
        }
        for f in &fields {
            credbroker_providers::validate_field_name(f).map_err(ApiError::bad_request)?;
        }
        let ttl = n.ttl_s.unwrap_or(86_400);
        if !(1..=7 * 86_400).contains(&ttl) {
            return Err(ApiError::bad_request("ttl_s must be 1 s to 7 days"));
        }
        let base = self.core.public_base_url().ok_or_else(|| {
            ApiError::bad_request("[public] base_url is not configured: intake links point at the broker's public listener")
        })?;
        let mut raw = [0u8; 32];
        aws_lc_rs::rand::fill(&mut raw)
            .map_err(|_| ApiError::new(ErrorCode::Internal, "no randomness"))?;
        use base64::Engine;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let id = format!("ik_{}", random_alphanumeric(12)?.to_ascii_lowercase());
        let expires = time::OffsetDateTime::now_utc()
            + time::Duration::seconds(i64::try_from(ttl).unwrap_or(86_400));
        let link = IntakeLink {
            id: id.clone(),
            tenant: b.tenant.to_string(),
            binding: b.id.to_string(),
            binding_created_at: b.created_at.clone(),
            fields: fields.clone(),
            creator_revision: self.issuer_now(&n.creator).await?.1,
            creator: n.creator,
            created_at: now_rfc3339(),
            expires_at: expires.unix_timestamp(),
            failures: 0,
        };
        let mut plan = Plan::new(
            format!(
                "intake link {id} for binding {} fields [{}] expires {}",
                b.id,
                fields.join(","),
                crate::model::rfc3339(expires)
            ),
            json!({
                "id": id,
                "url": format!("{base}/intake/{token}"),
                "binding": b.id.as_str(),
                "tenant": b.tenant.as_str(),
                "fields": fields,
                "expires_at": crate::model::rfc3339(expires),
                "note": "the URL is shown once: send it to the customer's administrator only",
            }),
        );
        plan.batch
            .put_intake_link(&sha256_hex(token.as_bytes()), &link);
        plan.tenant = Some(b.tenant.to_string());
        plan.binding = Some(b.id.to_string());
        plan.created = true;
        Ok(plan)
    }

    pub(super) async fn plan_intake_list(&self) -> Result<Plan, ApiError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let links: Vec<Value> = self
            .core
            .records
            .intake_links()
            .await
            .map_err(store_err)?
            .into_iter()
            .filter(|(_, l)| l.value.expires_at >= now)
            .map(|(_, l)| {
                let l = l.value;
                json!({
                    "id": l.id, "tenant": l.tenant, "binding": l.binding, "fields": l.fields,
                    "creator": l.creator, "created_at": l.created_at,
                    "expires_at": crate::model::rfc3339_of_unix(l.expires_at).unwrap_or_default(),
                    "failed_attempts": l.failures,
                })
            })
            .collect();
        Ok(Plan::new(
            format!("intake links={}", links.len()),
            json!({ "intake_links": links }),
        ))
    }

    pub(super) async fn plan_intake_revoke(&self, id: &str) -> Result<Plan, ApiError> {
        let (key, read) = self
            .core
            .records
            .intake_links()
            .await
            .map_err(store_err)?
            .into_iter()
            .find(|(_, l)| l.value.id == id)
            .ok_or_else(|| ApiError::new(ErrorCode::UnknownRecord, "no such intake link"))?;
        let mut plan = Plan::new(
            format!(
                "intake link {id} for binding {} revoked",
                read.value.binding
            ),
            json!({ "revoked": id }),
        );
        plan.batch.remove_intake_link(&key, &read);
        plan.tenant = Some(read.value.tenant.clone());
        plan.binding = Some(read.value.binding.clone());
        Ok(plan)
    }

    fn count_intake(&self, code: &str, ok: bool) {
        self.core
            .metrics
            .count_callback(if ok { "allowed" } else { "denied" }, "intake", code);
    }

    /// `GET|POST /intake/{token}` on the public listener.
    pub async fn intake_http(
        self: &Arc<Self>,
        post: bool,
        token: &str,
        headers: &HeaderMap,
        body: Result<Zeroizing<Vec<u8>>, ApiError>,
        request_id: &str,
    ) -> IntakeAnswer {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let token_hash = sha256_hex(token.as_bytes());
        // A store that cannot be read answers "try again", never a live link dead.
        let found = if token_ok(token) {
            match self.core.records.intake_link(&token_hash).await {
                Ok(found) => found,
                Err(_) => {
                    self.count_intake("unavailable", false);
                    return pages::refused(StatusCode::SERVICE_UNAVAILABLE, "Try again.");
                }
            }
        } else {
            None
        };
        // A link whose attempts are all reserved is used up, whether or not the submission
        // that reserved the last one has removed it yet (its probe may still be running, or
        // its removal lost a race): a fourth submission must not start.
        let Some((key, read)) = found.filter(|(_, l)| l.value.admits(now)) else {
            self.count_intake("invalid_link", false);
            return pages::invalid();
        };
        let link = read.value.clone();
        match self.link_target(&link).await {
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::Conflict => {
                self.count_intake("invalid_link", false);
                return pages::invalid();
            }
            Err(_) => {
                self.count_intake("unavailable", false);
                return pages::refused(StatusCode::SERVICE_UNAVAILABLE, "Try again.");
            }
        }
        // A link acts for the operator who made it: once that operator is disabled or
        // removed, their links are dead too (an offboarded operator must not keep a way to
        // replace a secret). Links made by a local command (`cli:…`) have no such operator.
        match self
            .issuer_alive(Some(&link.creator), link.creator_revision)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                self.count_intake("invalid_link", false);
                return pages::invalid();
            }
            Err(_) => {
                self.count_intake("unavailable", false);
                return pages::refused(StatusCode::SERVICE_UNAVAILABLE, "Try again.");
            }
        }
        if !post {
            self.count_intake("none", true);
            return self.intake_form(&link, &token_hash).await;
        }
        let body = match body {
            Ok(b) => b,
            Err(_) => {
                self.count_intake("bad_form", false);
                return pages::refused(StatusCode::BAD_REQUEST, "The form could not be read.");
            }
        };
        let (sent_csrf, fields) = match parse_intake_form(&body, &link.fields) {
            Ok(parsed) => parsed,
            Err(why) => {
                self.count_intake("bad_form", false);
                return pages::refused(StatusCode::BAD_REQUEST, why);
            }
        };
        drop(body);
        // The form must come from the page this browser was given.
        let csrf_ok = cookie_value(headers).is_some_and(|nonce| {
            let expected = self.csrf_for(&token_hash, &nonce);
            aws_lc_rs::constant_time::verify_slices_are_equal(
                sent_csrf.as_bytes(),
                expected.as_bytes(),
            )
            .is_ok()
        });
        if !csrf_ok {
            self.count_intake("csrf", false);
            return pages::refused(
                StatusCode::FORBIDDEN,
                "The form was not the one this page issued (it expired, or was sent from elsewhere).",
            );
        }
        if fields.is_empty() {
            self.count_intake("bad_form", false);
            return pages::refused(StatusCode::BAD_REQUEST, "Nothing was entered.");
        }
        self.intake_submit(&key, &read, fields, request_id).await
    }

    async fn intake_form(&self, link: &IntakeLink, token_hash: &str) -> IntakeAnswer {
        let tenant = match crate::ids::TenantId::parse(&link.tenant) {
            Ok(t) => self
                .core
                .records
                .tenant(&t)
                .await
                .ok()
                .flatten()
                // A name stored before names were checked: shown without what reorders or
                // hides text.
                .map(|t| credbroker_providers::quoted(&t.name, 200))
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| link.tenant.clone()),
            Err(_) => link.tenant.clone(),
        };
        let nonce = match random_alphanumeric(32) {
            Ok(n) => n,
            Err(_) => return pages::refused(StatusCode::SERVICE_UNAVAILABLE, "Try again."),
        };
        let csrf = self.csrf_for(token_hash, &nonce);
        let max_age = (link.expires_at - time::OffsetDateTime::now_utc().unix_timestamp()).max(1);
        let cookie = format!(
            "{INTAKE_COOKIE}={nonce}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}"
        );
        let expires = crate::model::rfc3339_of_unix(link.expires_at).unwrap_or_default();
        let destination = self.secret_destination(&link.binding).await;
        pages::form(
            &tenant,
            &link.binding,
            destination.as_deref(),
            &link.fields,
            &csrf,
            &expires,
            cookie,
        )
    }

    /// Where the binding of an intake link sends the pasted secret, as its provider says.
    async fn secret_destination(&self, binding: &str) -> Option<String> {
        let id = crate::ids::BindingId::parse(binding).ok()?;
        let b = self.core.records.binding(&id).await.ok().flatten()?;
        self.core
            .registry
            .get(&b.provider)?
            .secret_destination(&b.config)
    }

    fn intake_event(link: &IntakeLink, request_id: &str, action: &str) -> AuditEvent {
        AuditEvent {
            kind: "admin".into(),
            action: action.into(),
            request_id: request_id.to_owned(),
            actor: format!("intake:{}", link.id),
            tenant: Some(link.tenant.clone()),
            binding: Some(link.binding.clone()),
            ..Default::default()
        }
    }

    async fn intake_submit(
        self: &Arc<Self>,
        key: &str,
        read: &crate::store::records::Stored<IntakeLink>,
        fields: SecretFields,
        request_id: &str,
    ) -> IntakeAnswer {
        let link = read.value.clone();
        let by = format!("set by intake link {} created by {}", link.id, link.creator);
        let fail = |e: (ApiError, Option<AuditReceipt>)| {
            tracing::warn!(link = %link.id, code = %e.0.code, "intake submission could not be stored");
            pages::refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "The credential could not be stored; open the link again and retry.",
            )
        };
        // Counted until it ends, so a stop waits for its probe's record (the submission runs
        // detached from the customer's connection).
        let _running = crate::issuer::PendingReport::new(&self.core.pending_reports);
        // An operator's staged version (passed its probe, or not probed yet) is not the
        // customer's to destroy: refused before an attempt is spent (and, should one be staged
        // meanwhile, by the write itself). One that failed its probe is replaced.
        let staged = match self.binding_or_404(&link.binding).await {
            Ok(b) => match b.value.pending_secret_version {
                Some(p) => matches!(self.core.records.secret_version(&b.value.id, p).await,
                    Ok(Some(v)) if v.value.worth_keeping()),
                None => false,
            },
            Err(_) => false,
        };
        if staged {
            self.count_intake("pending_version", false);
            return pages::refused(
                StatusCode::CONFLICT,
                "Another new credential for this connection is already waiting to be checked. Ask your contact to finish or discard it, then open the link again.",
            );
        }
        // Judged from here on (and audited): counted once, as admitted.
        self.count_intake("none", true);
        // 0. One attempt is reserved on the link as read, before anything is written: of
        //    concurrent submissions one proceeds, and a link revoked or used meanwhile
        //    stops them all.
        let mut reserved = link.clone();
        reserved.failures = reserved.failures.saturating_add(1);
        let left = MAX_INTAKE_FAILURES.saturating_sub(reserved.failures);
        let (key, read) = {
            let mut ev = Self::intake_event(&link, request_id, "intake.submit");
            ev.outcome = "allowed".into();
            ev.detail = Some(format!(
                "intake link {} submission {} of at most {MAX_INTAKE_FAILURES}",
                link.id, reserved.failures
            ));
            let mut batch = Batch::new();
            batch.update_intake_link(key, read, &reserved);
            let _guard = self.lock.lock().await;
            // A link that expired while this submission waited (for the lock, for the
            // store) is dead to it, as at its admission: nothing is recorded for it.
            if link.expires_at < time::OffsetDateTime::now_utc().unix_timestamp() {
                self.count_intake("invalid_link", false);
                return pages::invalid();
            }
            // Of concurrent submissions of one link, those that lost the race for its
            // attempt are refused here, before any record (each wrote an "allowed" record
            // and a "failed" one), as a used link is.
            let holds = match self.core.records.preconditions_hold(&batch).await {
                Ok(holds) => holds,
                Err(e) => return fail((super::store_err(e), None)),
            };
            if !holds {
                let changed = ApiError::new(ErrorCode::Conflict, "intake link changed meanwhile");
                if self.link_died(&changed, key, &link).await {
                    self.count_intake("invalid_link", false);
                    return pages::invalid();
                }
                self.count_intake("conflict", false);
                return pages::refused(
                    StatusCode::CONFLICT,
                    "Another submission of this link is being checked. Wait a moment, then open the link again.",
                );
            }
            if let Err(e) = self.commit_audited(ev, batch, &[]).await {
                // Refused on the link as read: another submission reserved its last
                // attempt meanwhile (or it was revoked), and the link is dead to this one.
                if self.link_died(&e.0, key, &link).await {
                    self.count_intake("invalid_link", false);
                    return pages::invalid();
                }
                return fail(e);
            }
            match self
                .core
                .records
                .intake_link(key.trim_start_matches("intake:"))
                .await
            {
                Ok(Some(fresh)) => fresh,
                Ok(None) => {
                    self.count_intake("invalid_link", false);
                    return pages::invalid();
                }
                Err(_) => {
                    return pages::refused(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "The credential could not be stored; open the link again and retry.",
                    )
                }
            }
        };
        let (key, read) = (key.as_str(), &read);
        // 1. Sealed as a pending version, only while the link is as reserved: a link revoked
        //    (or used up) meanwhile, on any replica, writes nothing.
        let written = {
            let _guard = self.lock.lock().await;
            let plan = async {
                // A link that expired while this submission waited for the lock writes
                // nothing (the stored bytes, the write's precondition, do not change with
                // time).
                if link.expires_at < time::OffsetDateTime::now_utc().unix_timestamp() {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        "the intake link expired meanwhile",
                    ));
                }
                // The tenant as it is now, a precondition: one disabled since the admission
                // (on any replica) gets nothing written.
                let tenant = self.link_target(&link).await?;
                let mut p = self
                    .plan_secret_write(
                        &link.binding,
                        fields,
                        None,
                        super::secrets::SecretWrite::StageBeside,
                    )
                    .await?;
                p.batch.expect_intake_link(key, read);
                p.batch.expect_unchanged(&tenant);
                Ok(p)
            }
            .await;
            self.commit_plan(
                Self::intake_event(&link, request_id, "secret.rotate"),
                plan,
                &by,
            )
            .await
        };
        let version = match written {
            Ok((v, _)) => v["version"]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0),
            // A conflict is the link revoked or used meanwhile, or the binding changed under
            // the write (a probe's stamp): only the first is a dead link.
            Err((e, _)) if self.link_died(&e, key, &link).await => {
                self.count_intake("invalid_link", false);
                return pages::invalid();
            }
            Err(e) => return fail(e),
        };
        // 2. Probed against the source system.
        let binding = match self.binding_or_404(&link.binding).await {
            Ok(b) => b.value,
            // Not probed: the version just written is not left staged for a later
            // promotion (nor in the way of the link's next submission).
            Err(e) => {
                let dropped = self
                    .drop_intake_pending(
                        &link,
                        request_id,
                        version,
                        &format!("{by}; not probed ({})", e.code),
                    )
                    .await;
                return if e.code == ErrorCode::UnknownRecord {
                    self.count_intake("invalid_link", false);
                    pages::invalid()
                } else if dropped {
                    pages::refused(StatusCode::SERVICE_UNAVAILABLE, "Try again.")
                } else {
                    // Still staged: the link's next submission would be refused for it.
                    pages::refused(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "The credential was stored but could not be checked. Ask your contact to check or discard it.",
                    )
                };
            }
        };
        let probed = self
            .probe_pending(
                &binding,
                version,
                Self::intake_event(&link, request_id, "binding.probe"),
                Instant::now(),
            )
            .await;
        match probed {
            Ok(_) => {
                // 3. Promoted; the link is used up in the same batch. The link acts for its
                //    creator: their record as it is now is a precondition, so a creator
                //    disabled while the probe ran (on any replica) does not get it landed.
                let _guard = self.lock.lock().await;
                let plan = async {
                    let mut p = self.plan_secret_promote(&link.binding, version).await?;
                    // The link as it is now, so long as it is still this link: another
                    // submission that reserved an attempt meanwhile (it cannot write: this
                    // version is staged) does not void this one, which has proved itself;
                    // a link revoked, used or expired meanwhile is gone, and stops it (an
                    // expired one may still be stored until the next sweep).
                    let now = time::OffsetDateTime::now_utc().unix_timestamp();
                    let now_read = self
                        .core
                        .records
                        .intake_link(key.trim_start_matches("intake:"))
                        .await
                        .map_err(store_err)?
                        .map(|(_, l)| l)
                        .filter(|l| l.value.id == link.id && l.value.expires_at >= now)
                        .ok_or_else(|| {
                            ApiError::new(
                                ErrorCode::Conflict,
                                "the intake link was revoked, used or expired meanwhile",
                            )
                        })?;
                    p.batch.remove_intake_link(key, &now_read);
                    // A tenant or binding disabled while the probe ran (on any replica)
                    // stops it too.
                    let tenant = self.link_target(&link).await?;
                    p.batch.expect_unchanged(&tenant);
                    p.batch = self
                        .issuer_precondition(
                            &link.creator,
                            link.creator_revision,
                            std::mem::take(&mut p.batch),
                        )
                        .await?;
                    Ok(p)
                }
                .await;
                let promoted = self
                    .commit_plan(
                        Self::intake_event(&link, request_id, "secret.promote"),
                        plan,
                        &format!("{by}; link used"),
                    )
                    .await;
                drop(_guard);
                match promoted {
                    Ok(_) => {
                        // A binding waiting for its first secret is activated by its probe.
                        // The activation, too, acts for the link's creator.
                        if binding.status == crate::model::Status::PendingActivation {
                            let issuer = Some((link.creator.clone(), link.creator_revision));
                            let probe = self.probe_binding(
                                &link.binding,
                                Self::intake_event(&link, request_id, "binding.probe"),
                                Instant::now(),
                            );
                            let _ = Self::on_behalf_of(issuer, probe).await;
                        }
                        pages::result(true, "", 0)
                    }
                    Err((e, _)) => {
                        // Nothing a link that could not be used (revoked or used meanwhile,
                        // its creator disabled, a failed commit) brought stays behind for an
                        // operator to promote later.
                        self.drop_intake_pending(
                            &link,
                            request_id,
                            version,
                            &format!("{by}; not promoted ({})", e.code),
                        )
                        .await;
                        if self.link_died(&e, key, &link).await {
                            self.count_intake("invalid_link", false);
                            pages::invalid()
                        } else {
                            fail((e, None))
                        }
                    }
                }
            }
            Err((e, _)) => {
                // The attempt was counted when reserved; the last one uses the link up.
                let mut batch = Batch::new();
                if left == 0 {
                    batch.remove_intake_link(key, read);
                }
                // A probe that outlived the link leaves the customer no attempt either (they
                // are not told to open it again); the expired link, admitting nothing, is
                // left to the sweep.
                let expired = link.expires_at < time::OffsetDateTime::now_utc().unix_timestamp();
                let left = if expired { 0 } else { left };
                let mut ev = Self::intake_event(&link, request_id, "intake.failed");
                ev.outcome = "denied".into();
                ev.error_code = Some(e.code.as_str().to_owned());
                ev.detail = Some(format!(
                    "pending version {version} {by} failed its probe; {left} attempt(s) left"
                ));
                let recorded = {
                    let _guard = self.lock.lock().await;
                    self.commit_audited(ev, batch, &[]).await
                };
                // A version that failed its probe is not kept: while it is pending,
                // `binding probe` tests it instead of the active one (the next submission
                // stages its own).
                self.drop_intake_pending(
                    &link,
                    request_id,
                    version,
                    &format!("{by}; failed its probe"),
                )
                .await;
                if let Err(e) = recorded {
                    return fail(e);
                }
                pages::result(false, &e.message, left)
            }
        }
    }

    /// Stamps who created an intake link, an install link or a site expectation (the admin
    /// request's actor).
    pub(super) fn with_creator(op: super::AdminOp, actor: &str) -> super::AdminOp {
        match op {
            super::AdminOp::IntakeCreate(mut n) => {
                n.creator = actor.to_owned();
                super::AdminOp::IntakeCreate(n)
            }
            super::AdminOp::Onboard(provider, tenant, pin, governance, _) => {
                super::AdminOp::Onboard(provider, tenant, pin, governance, actor.to_owned())
            }
            super::AdminOp::Governance(g) => super::AdminOp::Governance(g.by(actor)),
            other => other,
        }
    }
}
