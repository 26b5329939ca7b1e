//! The public listener's requests: callbacks and health, nothing else, behind the request
//! rate limits and a memory budget for bodies.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use super::bodies::{
    bodies_refused, read_body_max, read_body_reserving, PUBLIC_RESERVING, RESERVE_STEP_KIB,
};
use super::{acknowledge_first, new_request_id, plain_json, respond, to_completion};
use crate::admission::{BodyBudget, RateLimiter};
use crate::api_error::{ApiError, ErrorCode};
use crate::body::ZeroizingBody;
use crate::broker::{error_answer, Broker};
use crate::callbacks::CallbackAnswer;
use crate::config::Limits;
use crate::routes::{route_request, Endpoint, Listener};

/// Memory for request bodies in flight on the public listener, KiB (32 MiB).
pub(super) const PUBLIC_BODY_BUDGET_KIB: u32 = 32 * 1024;

/// Largest body of a public request without a webhook signature header, bytes.
const UNSIGNED_BODY_MAX: usize = 64 * 1024;

/// An intake page as a response, with its security headers.
fn intake_response(
    page: crate::intake_page::IntakeAnswer,
    request_id: &str,
) -> Response<ZeroizingBody> {
    let answer = crate::broker::Answer {
        status: page.status,
        body: Zeroizing::new(page.html.into_bytes()),
    };
    let mut response = respond(answer, "text/html; charset=utf-8", request_id);
    let h = response.headers_mut();
    for (k, v) in crate::intake_page::SECURITY_HEADERS {
        if let (Ok(k), Ok(v)) = (
            header::HeaderName::from_bytes(k.as_bytes()),
            header::HeaderValue::from_str(v),
        ) {
            h.insert(k, v);
        }
    }
    if let Some(v) = page
        .set_cookie
        .and_then(|c| header::HeaderValue::from_str(&c).ok())
    {
        h.insert(header::SET_COOKIE, v);
    }
    response
}

/// The connection a public request came on.
pub(super) struct PublicConnection<'a> {
    /// The client's address.
    pub(super) remote: SocketAddr,
    /// Its activity, which the request marks busy (see [`handle_public`]).
    pub(super) activity: &'a Arc<super::activity::Activity>,
}

/// The public listener: callbacks and health, nothing else.
pub(super) async fn handle_public(
    broker: Arc<Broker>,
    limits: &Limits,
    detached: &Arc<Semaphore>,
    body_budget: &Arc<BodyBudget>,
    rate_limiter: Option<&RateLimiter>,
    connection: PublicConnection<'_>,
    req: Request<Incoming>,
) -> Response<ZeroizingBody> {
    let PublicConnection { remote, activity } = connection;
    let request_id = new_request_id();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers = req.headers().clone();
    let route = route_request(Listener::Public, &method, &path);
    // A signed webhook delivery is verified before it is charged, as a Forge invocation
    // is: GitHub sends every App's deliveries from its own shared addresses, and our App is
    // public, so anyone can have GitHub send signed events (which the broker ignores) at
    // will. Charged up front, they left a tenant's next suspend or unsuspend answered 429,
    // and GitHub does not deliver it again. Only a delivery refused unauthenticated (no
    // valid signature) is charged to its source, after the fact; an unsigned request is
    // charged first, as on every other route, and may send only a small body.
    let signed_delivery = matches!(&route, Ok(m) if m.endpoint == Endpoint::CallbackWebhook)
        && req.headers().contains_key("x-hub-signature-256");
    // Health checks are free; everything else takes a token first, before any body is read
    // or any store is touched. Refusals are counted, never audited.
    // Forge calls come from Atlassian's shared egress addresses, and anyone can point a Forge
    // app's remote at us from there: a signed invocation is never refused for the unsigned
    // ones sharing its address. It is verified first; only a refused one is charged.
    let limited = match (&route, rate_limiter) {
        // Discovery and JWKS are read from memory by clouds' shared fetchers: as free as health.
        (Ok(m), _)
            if signed_delivery
                || matches!(
                    m.endpoint,
                    Endpoint::Healthz
                        | Endpoint::ForgeRemote
                        | Endpoint::OidcDiscovery
                        | Endpoint::OidcJwks
                )
                // The page a refused setup return is sent on to: a fixed answer from
                // memory, which a rate-limited return must still reach.
                || (m.endpoint == Endpoint::CallbackSetup
                    && crate::callbacks::is_cleared_page(&query)) =>
        {
            None
        }
        (_, Some(rl)) => rl.check(remote.ip(), std::time::Instant::now()).err(),
        (_, None) => None,
    };
    // The connection is busy (never closed to make room for a newcomer) once its request is
    // read, and at once for a request without a body nobody verified: a body still arriving
    // unverified (a form or a delivery fed a byte at a time) leaves it idle, so sources that
    // keep every slot reading bodies cannot hold the listener. A Forge invocation is verified
    // from its headers before its body is read.
    let unverified_body =
        method == Method::POST && matches!(&route, Ok(m) if m.endpoint != Endpoint::ForgeRemote);
    // Idle from now, not from the connection's last request: a form posted on the
    // keep-alive connection its page came on is not the one closed first. Not for a free
    // request (health, discovery, JWKS: answered from memory, not rate-limited; or one refused
    // by the rate limit): a
    // connection kept open with those alone stays idle since its last real use.
    let free = limited.is_some()
        || matches!(
            &route,
            Ok(m) if matches!(
                m.endpoint,
                Endpoint::Healthz | Endpoint::OidcDiscovery | Endpoint::OidcJwks
            )
        );
    if !free {
        activity.touch();
    }
    let mut busy = (!unverified_body).then(|| {
        if free {
            activity.begin_free()
        } else {
            activity.begin()
        }
    });
    // A setup return not answered with success is sent on to a page without its one-time
    // code, whatever answered it (CallbackService::clear_refused_return).
    let setup_return = match &route {
        Ok(m) if m.endpoint == Endpoint::CallbackSetup => Some((
            m.param("provider").to_owned(),
            query.clone(),
            broker.clone(),
        )),
        _ => None,
    };
    let mut answer: CallbackAnswer = match route {
        _ if limited.is_some() => {
            let scope = limited.map_or("global", |l| l.as_str());
            broker
                .metrics()
                .rate_limited
                .get_or_create(&crate::metrics::ScopeLabel {
                    scope: scope.into(),
                })
                .inc();
            error_answer(
                &ApiError::new(
                    ErrorCode::RateLimited,
                    "too many requests; slow down and retry later",
                ),
                None,
                &request_id,
            )
            .into()
        }
        Ok(m) if m.endpoint == Endpoint::Healthz => super::health::liveness().into(),
        Ok(m) if matches!(m.endpoint, Endpoint::OidcDiscovery | Endpoint::OidcJwks) => {
            // A key retired on another replica is not published here either. These
            // endpoints are not rate-limited: their catch-ups are shared, one at a time.
            // Discovery names no key: it is served from the settings alone, the store
            // reachable or not.
            let caught_up = match broker.core().issuer() {
                Some(_) if m.endpoint == Endpoint::OidcJwks => broker.catch_up_shared().await,
                _ => Ok(()),
            };
            let document = broker.core().issuer().map(|issuer| {
                let doc = if m.endpoint == Endpoint::OidcDiscovery {
                    issuer.discovery()
                } else {
                    issuer.jwks(time::OffsetDateTime::now_utc())
                };
                (doc, (issuer.settings().publish_lead_s / 2).min(300))
            });
            match caught_up.map(|()| document) {
                // Relying parties may cache both for half the time a rotated key is
                // published before it signs (at most 5 minutes): one that fetched just
                // before a rotation still sees the new key well before any token needs it,
                // whatever the replicas' clocks or a shared cache's age add.
                Ok(Some((document, max_age))) => {
                    let mut response = respond(
                        plain_json(StatusCode::OK, document),
                        "application/json",
                        &request_id,
                    );
                    if let Ok(v) =
                        header::HeaderValue::from_str(&format!("public, max-age={max_age}"))
                    {
                        response.headers_mut().insert(header::CACHE_CONTROL, v);
                    }
                    return response;
                }
                Ok(None) => {
                    broker.metrics().count_public_refusal("none", "not_found");
                    error_answer(
                        &ApiError::new(ErrorCode::NotFound, "no OIDC issuer is configured"),
                        None,
                        &request_id,
                    )
                    .into()
                }
                Err(e) => {
                    broker
                        .metrics()
                        .count_public_refusal("issuer", e.code.as_str());
                    error_answer(&e, None, &request_id).into()
                }
            }
        }
        Ok(m) if m.endpoint == Endpoint::Intake => {
            let post = method == Method::POST;
            let body = if post {
                let form = req
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
                let max = limits.max_body_bytes.min(UNSIGNED_BODY_MAX);
                match body_budget.try_reserve(crate::admission::source_of(remote.ip()), 64) {
                    Ok(_permit) if form => read_body_max(req, limits, max).await,
                    Ok(_) => Err(ApiError::bad_request("a form is expected")),
                    Err(why) => Err(bodies_refused(&broker.metrics().bodies_refused, why)),
                }
            } else {
                Ok(Zeroizing::new(Vec::new()))
            };
            busy.get_or_insert_with(|| activity.begin());
            let (token, rid) = (m.param("token").to_owned(), request_id.clone());
            // Run to completion even if the client goes away (its audited steps must not be
            // cut in two), within the listener's cap on detached work.
            let counted = broker.clone();
            let on_full = move || {
                counted
                    .metrics()
                    .count_public_refusal("intake", ErrorCode::Unavailable.as_str())
            };
            let page: crate::intake_page::IntakeAnswer =
                to_completion(&request_id, (detached, on_full), async move {
                    broker.intake_http(post, &token, &headers, body, &rid).await
                })
                .await;
            return intake_response(page, &request_id);
        }
        Ok(m) if m.endpoint == Endpoint::ForgeRemote => {
            // The invocation token is verified from the headers before the body is read.
            match broker
                .callbacks()
                .verify_invocation(m.param("kind"), &headers, &request_id)
                .await
            {
                Err(answer) => {
                    // A refused invocation spends its source's budget for the other public
                    // routes; it is answered 401 whatever is left, so it is no rate
                    // limiting and is not counted as such (verify_invocation counted it).
                    if let Some(rl) = rate_limiter {
                        let _ = rl.check(remote.ip(), std::time::Instant::now());
                    }
                    answer
                }
                Ok(verified) => {
                    let max = limits.max_body_bytes.min(UNSIGNED_BODY_MAX);
                    let body = match body_budget
                        .try_reserve(crate::admission::source_of(remote.ip()), 64)
                    {
                        Ok(_permit) => read_body_max(req, limits, max).await,
                        Err(why) => Err(bodies_refused(&broker.metrics().bodies_refused, why)),
                    };
                    let rid = request_id.clone();
                    let counted = broker.clone();
                    let on_full = move || {
                        counted
                            .metrics()
                            .count_public_refusal("none", ErrorCode::Unavailable.as_str())
                    };
                    acknowledge_first(&request_id, (detached, on_full), move |ack| async move {
                        broker
                            .callbacks()
                            .apply_invocation(verified, body, ack, &rid)
                            .await;
                    })
                    .await
                }
            }
        }
        Ok(m) => {
            // Only a request that carries a webhook signature may send a large body; all
            // bodies together hold at most PUBLIC_BODY_BUDGET_KIB of memory, one source at
            // most its share of it.
            let signed = req.headers().contains_key("x-hub-signature-256");
            let max = if signed {
                limits.max_body_bytes
            } else {
                limits.max_body_bytes.min(UNSIGNED_BODY_MAX)
            };
            let mut _budget = None;
            let body = if method == Method::POST {
                // Memory is reserved for what arrives, not for what the body declares: a
                // first step (the declared length when smaller), then step by step.
                let declared = req
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<usize>().ok())
                    .map_or(max, |n| n.min(max));
                let kib = u32::try_from(declared.div_ceil(1024))
                    .unwrap_or(u32::MAX)
                    .clamp(1, RESERVE_STEP_KIB);
                match body_budget.try_reserve(crate::admission::source_of(remote.ip()), kib) {
                    Ok(permit) => {
                        let permit = _budget.insert(permit);
                        read_body_reserving(
                            req,
                            limits,
                            max,
                            permit,
                            &broker.metrics().bodies_refused,
                            PUBLIC_RESERVING,
                        )
                        .await
                    }
                    Err(why) => Err(bodies_refused(&broker.metrics().bodies_refused, why)),
                }
            } else {
                Ok(Zeroizing::new(Vec::new()))
            };
            busy.get_or_insert_with(|| activity.begin());
            let (provider, rid) = (m.param("provider").to_owned(), request_id.clone());
            let counted = broker.clone();
            let on_full = move || {
                counted
                    .metrics()
                    .count_public_refusal("none", ErrorCode::Unavailable.as_str())
            };
            to_completion(&request_id, (detached, on_full), async move {
                broker
                    .callback_http(m.endpoint, &provider, &query, &headers, body, &rid)
                    .await
            })
            .await
        }
        Err(err) => {
            broker
                .metrics()
                .count_public_refusal("none", err.code.as_str());
            error_answer(&err, None, &request_id).into()
        }
    };
    if let Some((provider, query, broker)) = setup_return {
        broker
            .callbacks()
            .clear_refused_return(&provider, &query, &mut answer, &request_id);
    }
    if signed_delivery && answer.unauthenticated_refusal {
        // Spends its source's budget for the other public routes; it was answered already,
        // so it is no rate limiting and is not counted as such.
        if let Some(rl) = rate_limiter {
            let _ = rl.check(remote.ip(), std::time::Instant::now());
        }
    }
    let mut response = respond(answer.answer, "application/json", &request_id);
    let h = response.headers_mut();
    if let Some(v) = answer
        .location
        .and_then(|l| header::HeaderValue::from_str(&l).ok())
    {
        h.insert(header::LOCATION, v);
    }
    if let Some(v) = answer
        .set_cookie
        .and_then(|c| header::HeaderValue::from_str(&c).ok())
    {
        h.insert(header::SET_COOKIE, v);
    }
    response
}
