//! Provider callbacks on the public listener: install redirects and webhooks.
//!
//! `GET /callbacks/{provider}/setup?…` — the customer comes back from installing our app. The
//! redirect's `state` must be one the broker issued (`credbroker onboard …`), unexpired and
//! unused; it names the tenant. It is consumed on first use. The installation is then bound
//! to that tenant (an installation already bound to another tenant is refused) and activated
//! by the provider's probe.
//!
//! `POST /callbacks/{provider}/webhook` — verified by the provider (signature, constant time)
//! before the body is parsed; a removal or suspension deactivates the binding, a permission
//! change is recorded as drift.
//!
//! Every authenticated callback (a setup redirect carrying a state the broker issued, a
//! webhook whose signature verified) leaves an audit record (actor `callback:<provider>`),
//! rejected ones too, and the record is durable before anything it describes is committed —
//! except a verified webhook that concerns no tenant (an event not handled, an installation
//! no tenant holds): anyone can install a public App and make its provider sign those, so
//! they are counted (`outcome="ignored"`) like anonymous ones.
//! Callbacks refused before they authenticate (no or unknown state, bad signature, malformed
//! query or body) change nothing and are only counted (`credbroker_callbacks_total` by code)
//! with throttled log lines: anyone on the internet can send them, and one audit record (one
//! fsync) each would let them fill the disk and, since audit fails closed, stop resolves.

use std::sync::Arc;

use http::HeaderMap;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use credbroker_providers::Provider;

use crate::admin::AdminService;
use crate::api_error::{ApiError, ErrorCode};
use crate::audit::AuditEvent;
use crate::broker::{error_answer, Answer, Core};
use crate::routes::Endpoint;
use crate::store::Batch;

fn rejected(m: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::CallbackRejected, m)
}

/// A callback failure; `audit_id` is set when its audit record is already written.
/// `anonymous` failures happened before the callback authenticated: counted, not audited.
/// `unproven` ones before anything proved who sent it (no valid signature): what a source is
/// charged for when its route was let through uncharged.
struct Failure {
    err: ApiError,
    audit_id: Option<String>,
    anonymous: bool,
    unproven: bool,
}

impl From<ApiError> for Failure {
    /// A failure after authentication (audited): the safe default.
    fn from(err: ApiError) -> Self {
        Failure {
            err,
            audit_id: None,
            anonymous: false,
            unproven: false,
        }
    }
}

impl Failure {
    /// A change that could not be committed (its audit record, when written, is named).
    fn committing((err, second): (ApiError, Option<crate::audit::AuditReceipt>)) -> Failure {
        Failure {
            err,
            audit_id: second.map(|r| r.audit_id),
            anonymous: false,
            unproven: false,
        }
    }
}

/// A failure before the callback authenticated.
/// The query of the page a refused, code-bearing setup return is sent on to.
const CLEARED: &str = "refused";

/// Whether `query` is that of the page refused setup returns are sent on to.
pub(crate) fn is_cleared_page(query: &str) -> bool {
    cleared_refusal(query).is_some()
}

/// The refusal the cleared page shows: fixed, but for the refused request's id (validated:
/// `req_` and hex digits), by which an operator finds its reason in the audit log or the
/// broker's log.
fn cleared_refusal(query: &str) -> Option<ApiError> {
    let rest = query.strip_prefix(CLEARED)?;
    let id = match rest.strip_prefix('=') {
        None if rest.is_empty() => None,
        Some(id)
            if id.len() <= 64
                && id
                    .strip_prefix("req_")
                    .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit())) =>
        {
            Some(id)
        }
        _ => return None,
    };
    let named = id.map_or(String::new(), |id| {
        format!(" (request {id}: give this to whoever sent you the link)")
    });
    Some(rejected(format!(
        "the sign-in or install was refused{named}, and the one-time code it came back with was removed from the address bar: never send that address to anyone. Ask for a new link"
    )))
}

fn anonymous(err: ApiError) -> Failure {
    Failure {
        err,
        audit_id: None,
        anonymous: true,
        unproven: false,
    }
}

/// A failure before anything proved who sent the callback: a missing or wrong signature, a
/// body that could not be read.
fn unproven(err: ApiError) -> Failure {
    Failure {
        unproven: true,
        ..anonymous(err)
    }
}

/// An answer and its audit record's id; none for a verified callback that concerns no
/// tenant (counted, not audited: anyone can make a provider send those).
type CallbackResult = Result<(Value, Option<String>), Failure>;

/// What the public listener sends back for a callback: an answer, and for the install link
/// a redirect with the browser cookie.
pub struct CallbackAnswer {
    /// Status and JSON body.
    pub answer: Answer,
    /// `Location` of a 302 (the provider's install page).
    pub location: Option<String>,
    /// `Set-Cookie` binding the state to this browser.
    pub set_cookie: Option<String>,
    /// Refused before anything proved who sent it (a missing or wrong signature or token, an
    /// unreadable body, an unknown provider): what the public listener charges to its
    /// source's rate budget when the route was let through uncharged (a signed delivery).
    pub unauthenticated_refusal: bool,
}

impl CallbackAnswer {
    /// `answer`, refused unauthenticated.
    fn unauthenticated(answer: Answer) -> Self {
        CallbackAnswer {
            unauthenticated_refusal: true,
            ..answer.into()
        }
    }
}

impl From<Answer> for CallbackAnswer {
    fn from(answer: Answer) -> Self {
        CallbackAnswer {
            answer,
            location: None,
            set_cookie: None,
            unauthenticated_refusal: false,
        }
    }
}

mod forge;
mod install;
mod webhook;

pub use forge::{VerifiedInvocation, INVOCATION_KINDS};
pub(crate) use install::cookie;
pub use install::{
    install_cookie, install_cookie_name, link_state, INSTALL_COOKIE, MAX_LINK_OPENS,
};
pub use webhook::DELIVERY_WINDOW_S;

/// Whether `provider`'s unclaimed installation `identifier` may be kept besides `held`: it
/// already is, or that provider's unexpired ones are fewer than
/// [`MAX_UNCLAIMED`](crate::store::records::MAX_UNCLAIMED) (each provider has its own room:
/// installations of one cannot crowd out another's).
pub(crate) fn unclaimed_room(
    held: &[(
        String,
        crate::store::records::Stored<crate::store::records::Unclaimed>,
    )],
    provider: &str,
    identifier: &str,
) -> bool {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let live = held
        .iter()
        .filter(|(_, u)| u.value.provider == provider && !u.value.ignored)
        .filter(|(_, u)| u.value.expires_at.is_none_or(|e| e >= now));
    held.iter().any(|(_, u)| u.value.identifier == identifier)
        || live.count() < crate::store::records::MAX_UNCLAIMED
}

/// When an unclaimed installation seen now is forgotten, Unix seconds.
pub(crate) fn unclaimed_expiry() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp() + crate::store::records::UNCLAIMED_TTL_S
}

pub(crate) use crate::hex_text::sha256_hex;

/// The callback service: verifies inbound provider callbacks on the public listener and
/// turns them into audited changes.
pub struct CallbackService {
    core: Arc<Core>,
    admin: Arc<AdminService>,
    anonymous_log: crate::admission::LogThrottle,
    connects: forge::ConnectLimit,
}

impl CallbackService {
    /// The service over `core`, making changes through `admin`.
    pub fn new(core: Arc<Core>, admin: Arc<AdminService>) -> CallbackService {
        CallbackService {
            core,
            admin,
            anonymous_log: crate::admission::LogThrottle::new(5),
            connects: forge::ConnectLimit::default(),
        }
    }

    /// Commits `batch` audited by `event` under the admin lock. A callback that lost a
    /// race under that lock (the same state or link used by concurrent requests: only one
    /// can pass its preconditions) is refused as what it now is, a used state, before any
    /// record: anyone holding the state could send a hundred at once, each of which wrote an
    /// "allowed" record and then a "failed" one. A change that records a refusal
    /// (`refusal`: a denied install kept for an operator) is audited whatever happened
    /// meanwhile.
    async fn commit_locked(
        &self,
        event: AuditEvent,
        batch: Batch,
        refusal: bool,
    ) -> Result<crate::audit::AuditReceipt, Failure> {
        let _guard = self.admin.lock.lock().await;
        let lost = if refusal {
            Ok(false)
        } else {
            self.core
                .records
                .preconditions_hold(&batch)
                .await
                .map(|holds| !holds)
        };
        match lost {
            Ok(false) => {}
            Ok(true) => {
                return Err(anonymous(rejected(
                    "this link or state was used or changed by another request meanwhile; ask for a new one if it was not yours",
                )))
            }
            Err(_) => {
                return Err(anonymous(ApiError::new(
                    ErrorCode::Internal,
                    "store read failed",
                )))
            }
        }
        self.admin
            .commit_audited(event, batch, &[])
            .await
            .map_err(Failure::committing)
    }

    fn with_callbacks(&self, provider_name: &str) -> Option<&Arc<dyn Provider>> {
        self.core
            .registry
            .get(provider_name)
            .filter(|p| p.callbacks().is_some())
    }

    /// A setup return (`GET /callbacks/{provider}/setup?…`) that is not answered with
    /// success, whatever answered it (the callback, or the public listener's rate limit,
    /// work cap or a failure), is sent on (`303 See Other`, its answer still the body) to
    /// `/callbacks/{provider}/setup?refused={request id}#refused`, a page that names the
    /// request and says never to send the address on. Its one-time `code` leaves the
    /// address bar, in the query or (`response_mode=fragment`, which whoever forwarded the
    /// sign-in page may have chosen) in the fragment, which the `Location`'s own replaces.
    /// Whoever sent the person there (another customer, with a link of their own for the
    /// same account) could otherwise ask for "the address it showed" and redeem the code,
    /// not redeemed when the refusal came before the proof, under their own link's state
    /// and cookie. The page itself, and a start link's redirect, are left as they are.
    pub fn clear_refused_return(
        &self,
        provider_name: &str,
        query: &str,
        answer: &mut CallbackAnswer,
        request_id: &str,
    ) {
        let Some(provider) = self.with_callbacks(provider_name) else {
            return;
        };
        if answer.answer.status.is_success() || answer.location.is_some() || is_cleared_page(query)
        {
            return;
        }
        answer.answer.status = http::StatusCode::SEE_OTHER;
        answer.location = Some(format!(
            "/callbacks/{}/setup?{CLEARED}={request_id}#{CLEARED}",
            provider.id()
        ));
    }

    /// Handles one routed callback (`GET /callbacks/{provider}/setup`,
    /// `POST /callbacks/{provider}/webhook`) on the public listener. The page refused setup
    /// returns are sent on to (see [`CallbackService::clear_refused_return`]) is answered
    /// here, from memory.
    pub async fn handle_http(
        &self,
        endpoint: Endpoint,
        provider_name: &str,
        query: &str,
        headers: &HeaderMap,
        body: Result<Zeroizing<Vec<u8>>, ApiError>,
        request_id: &str,
    ) -> CallbackAnswer {
        if endpoint == Endpoint::CallbackSetup {
            if let (Some(refusal), Some(provider)) =
                (cleared_refusal(query), self.with_callbacks(provider_name))
            {
                // Nothing to read; counted as the page it is, not as a second refusal.
                self.core
                    .metrics
                    .count_callback("cleared", provider.id(), "none");
                return CallbackAnswer::unauthenticated(error_answer(&refusal, None, request_id));
            }
        }
        let kind = match endpoint {
            Endpoint::CallbackStart => "start",
            Endpoint::CallbackSetup => "setup",
            Endpoint::CallbackWebhook => "webhook",
            _ => "",
        };
        let provider = self
            .with_callbacks(provider_name)
            .filter(|_| !kind.is_empty())
            .cloned();
        let Some(provider) = provider else {
            // (Labelled `unknown`: the name is the caller's, and every name would be a series.)
            self.core
                .metrics
                .count_public_refusal("unknown", "not_found");
            return CallbackAnswer::unauthenticated(error_answer(
                &ApiError::new(ErrorCode::NotFound, "no such callback"),
                None,
                request_id,
            ));
        };
        // A platform key (a webhook secret, an App key) rotated on another replica is the one
        // this callback is judged with. Shared between concurrent callers: signed webhook
        // deliveries are verified before they are charged to any rate, so a flood of forged
        // ones must not cost a store round trip each.
        if let Err(e) = self.admin.catch_up_shared().await {
            self.core
                .metrics
                .count_public_refusal(provider.id(), e.code.as_str());
            return error_answer(&e, None, request_id).into();
        }
        let outcome_label = |result: &CallbackResult| match result {
            Ok((_, Some(_))) => "allowed",
            Ok((_, None)) => "ignored",
            Err(_) => "denied",
        };
        let mut event = AuditEvent {
            kind: "callback".into(),
            action: format!("callback.{kind}"),
            request_id: request_id.to_owned(),
            actor: format!("callback:{}", provider.id()),
            provider: Some(provider.id().to_owned()),
            ..Default::default()
        };
        let setup_state = (endpoint == Endpoint::CallbackSetup)
            .then(|| link_state(query))
            .flatten();
        let mut redirect = None;
        let result = match endpoint {
            Endpoint::CallbackStart => self
                .handle_start(provider.as_ref(), query, &mut event)
                .await
                .map(|(location, cookie, audit_id)| {
                    redirect = Some((location, cookie));
                    (
                        json!({ "result": "redirecting to the install page" }),
                        Some(audit_id),
                    )
                }),
            Endpoint::CallbackSetup => {
                self.handle_setup(provider.clone(), query, headers, &mut event)
                    .await
            }
            _ => match body {
                Ok(b) => {
                    self.handle_webhook(provider.as_ref(), headers, &b, &mut event)
                        .await
                }
                Err(e) => Err(unproven(e)),
            },
        };
        self.core.metrics.count_callback(
            outcome_label(&result),
            provider.id(),
            result
                .as_ref()
                .err()
                .map_or("none", |f| f.err.code.as_str()),
        );
        // A setup return that spent its link's state (accepted, or refused on the record)
        // leaves the link's cookie of no further use: it is cleared, so a browser that opens
        // many links does not carry each until it expires. Whether the state was spent is
        // read back from the store: a commit that failed may not have spent it, and the
        // browser may come back. (An anonymous refusal never clears: it proved nothing.)
        let spent_cookie = match (&setup_state, &result) {
            (
                Some(state),
                Ok(_)
                | Err(Failure {
                    anonymous: false, ..
                }),
            ) => match self.core.records.callback_state(state).await {
                Ok(None) => true,
                Ok(Some((_, read))) => read.spent(),
                Err(_) => false,
            }
            .then(|| {
                format!(
                    "{}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
                    install_cookie_name(state)
                )
            }),
            _ => None,
        };
        match result {
            Ok((response, audit_id)) => {
                let mut body = response;
                body["audit_id"] = json!(audit_id);
                body["request_id"] = json!(request_id);
                let answer = Answer {
                    status: if redirect.is_some() {
                        http::StatusCode::FOUND
                    } else {
                        http::StatusCode::OK
                    },
                    body: Zeroizing::new(serde_json::to_vec(&body).unwrap_or_default()),
                };
                let (location, set_cookie) = redirect.unzip();
                CallbackAnswer {
                    answer,
                    location,
                    set_cookie: set_cookie.or(spent_cookie),
                    unauthenticated_refusal: false,
                }
            }
            Err(Failure {
                err,
                anonymous: true,
                unproven,
                ..
            }) => {
                if let Some(suppressed) = self.anonymous_log.admit() {
                    tracing::info!(request_id, provider = provider.id(), code = %err.code, reason = %err.message, suppressed, "unauthenticated callback rejected (counted, not audited)");
                }
                let answer = error_answer(&err, None, request_id);
                if unproven {
                    CallbackAnswer::unauthenticated(answer)
                } else {
                    answer.into()
                }
            }
            Err(Failure { err, audit_id, .. }) => {
                tracing::warn!(request_id, provider = provider.id(), code = %err.code, reason = %err.message, "callback rejected");
                let audit_id = match audit_id {
                    Some(id) => Some(id),
                    None => {
                        event.outcome = "denied".into();
                        event.error_code = Some(err.code.as_str().to_owned());
                        event.detail = Some(err.message.chars().take(300).collect());
                        self.core.audit.append(event).await.ok().map(|r| r.audit_id)
                    }
                };
                CallbackAnswer {
                    set_cookie: spent_cookie,
                    ..error_answer(&err, audit_id.as_deref(), request_id).into()
                }
            }
        }
    }
}
