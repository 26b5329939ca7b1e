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

use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use credbroker_providers::{BindingContext, SecretRequirement};

use super::intake_form::parse_intake_form;
use super::{random_alphanumeric, store_err, AdminService, Plan};
use crate::api_error::{ApiError, ErrorCode};
use crate::audit::AuditEvent;
use crate::callbacks::sha256_hex;
use crate::intake_page::{self as pages, IntakeAnswer, INTAKE_COOKIE};
use crate::model::now_rfc3339;
use crate::store::records::IntakeLink;

mod link;
mod submit;

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
        let provider = self.provider_of(&b)?;
        if provider.secret_requirement() != SecretRequirement::Required {
            return Err(ApiError::bad_request(format!(
                "provider {} is federated and takes no secret",
                b.provider
            )));
        }
        // Nor one whose secret is captured from signed invocations (Forge): the write it
        // would end in is refused, after the customer pasted something and spent an attempt.
        if provider.invocations().is_some() {
            return Err(ApiError::bad_request(format!(
                "provider {} captures its tokens from signed invocations; none is pasted",
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
        for (i, f) in fields.iter().enumerate() {
            credbroker_providers::validate_field_name(f).map_err(ApiError::bad_request)?;
            // The page would show two inputs of one name, and a form carrying both is refused.
            if fields[..i].contains(f) {
                return Err(ApiError::bad_request(format!("field {f} is named twice")));
            }
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
        let id = format!(
            "ik_{}",
            random_alphanumeric(INTAKE_ID_LEN)?.to_ascii_lowercase()
        );
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
            .filter(|(_, l)| !l.value.expired(now))
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

/// Random characters in an intake link's id (`ik_` and as many lower-case letters or
/// digits).
const INTAKE_ID_LEN: usize = 12;

/// Whether `id` has an intake link id's shape (`ik_` and [`INTAKE_ID_LEN`] lower-case
/// letters or digits).
pub(super) fn is_intake_link_id(id: &str) -> bool {
    id.len() == 3 + INTAKE_ID_LEN
        && id.starts_with("ik_")
        && id[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}
