//! One request on the mTLS listener: routed to resolve (a worker's), the admin API (an
//! operator's, run to completion; any other certificate refused on slots of its own),
//! health and metrics, each body read within its identity's budget.

use std::sync::{Arc, LazyLock};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::admission::LogThrottle;
use crate::api_error::{ApiError, ErrorCode};
use crate::body::ZeroizingBody;
use crate::broker::{error_answer, Answer, Broker};
use crate::config::Limits;
use crate::identity::PeerIdentity;
use crate::routes::{route_request, Endpoint, Listener};

use super::bodies::{read_mtls_body, MtlsBodies};
use super::detached::to_completion;
use super::{health, new_request_id, respond};

/// Lines a second about requests of certificates that name no identity.
static UNIDENTIFIED_LOG: LazyLock<LogThrottle> = LazyLock::new(|| LogThrottle::new(5));

/// The refusal of a request whose certificate the client CA accepts but that names no
/// identity of this deployment (another trust domain, a role no identity has), on a route
/// whose refusals are otherwise audited (resolve, webhook verification, the admin API).
/// Nobody is authenticated: it is counted and logged throttled, its body is never read,
/// and it is not audited, so such certificates cannot grow the audit log (THREATS.md).
fn unidentified(broker: &Broker, method: &Method, path: &str, request_id: &str) -> Option<Answer> {
    let err = if path.starts_with("/v1/admin/") {
        ApiError::new(
            ErrorCode::OperatorRequired,
            "the admin API requires an operator certificate",
        )
    } else {
        match route_request(Listener::Mtls, method, path).map(|m| m.endpoint) {
            Ok(Endpoint::Resolve | Endpoint::WebhookVerify) => ApiError::new(
                ErrorCode::WorkerNotAuthorized,
                "client certificate names no worker identity in this trust domain",
            ),
            _ => return None,
        }
    };
    broker.metrics().unidentified_refused.inc();
    if let Some(suppressed) = UNIDENTIFIED_LOG.admit() {
        tracing::warn!(
            request_id,
            suppressed,
            "request refused: the client certificate names no identity of this trust domain (counted, not audited)"
        );
    }
    Some(error_answer(&err, None, request_id))
}

/// What the requests of the mTLS listener share.
pub(super) struct Pools<'a> {
    /// Slots for admin operations run to completion (operators').
    pub(super) detached: &'a Arc<Semaphore>,
    /// Slots for the admin API's refusals of other certificates.
    pub(super) detached_refusals: &'a Arc<Semaphore>,
    /// Memory for bodies in flight, per client identity.
    pub(super) bodies: &'a MtlsBodies,
    /// This connection's identity in `bodies`.
    pub(super) holder: &'a Arc<str>,
    /// Slots of the requests that cost shared work, per client identity.
    pub(super) in_flight: &'a crate::admission::InFlight,
}

/// Lines a second about requests refused for want of an in-flight slot.
static SHED_LOG: LazyLock<LogThrottle> = LazyLock::new(|| LogThrottle::new(5));

/// A slot for a request that costs shared work, or its refusal: 429 `rate_limited`, before
/// its body is read or anything is done. Counted and logged (throttled), not audited: a
/// flood of them must not take the audit queue it is refused to protect.
fn in_flight_slot(
    broker: &Broker,
    pools: &Pools<'_>,
    request_id: &str,
) -> Result<crate::admission::InFlightSlot, Answer> {
    pools.in_flight.try_take(pools.holder).map_err(|scope| {
        broker
            .metrics()
            .requests_shed
            .get_or_create(&crate::metrics::ScopeLabel {
                scope: scope.into(),
            })
            .inc();
        if let Some(suppressed) = SHED_LOG.admit() {
            tracing::warn!(
                request_id,
                identity = %pools.holder,
                limit = scope,
                suppressed,
                "request refused: too many requests in progress (counted, not audited)"
            );
        }
        let why = if scope == "identity" {
            "too many requests of this client identity are in progress; retry shortly"
        } else {
            "too many requests are in progress; retry shortly"
        };
        error_answer(
            &ApiError::new(ErrorCode::RateLimited, why),
            None,
            request_id,
        )
    })
}

pub(super) async fn handle(
    broker: Arc<Broker>,
    peer: Option<PeerIdentity>,
    limits: &Limits,
    pools: Pools<'_>,
    req: Request<Incoming>,
) -> Response<ZeroizingBody> {
    let mut permit = None;
    let request_id = new_request_id();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut content_type = "application/json";
    if peer.is_none() {
        if let Some(refusal) = unidentified(&broker, &method, &path, &request_id) {
            return respond(refusal, content_type, &request_id);
        }
    }
    // Every request below /v1/admin/ goes to the admin service, matched or not: its
    // refusals are audited (the caller holds a certificate the client CA accepts).
    let answer = if path.starts_with("/v1/admin/") {
        // The admin API parses the query too (`DELETE …/secret/{version}?force=true`) and
        // refuses one where a route declares none.
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| path.clone(), |pq| pq.as_str().to_owned());
        // Only an active operator's body is read, within the operators' budget: any other
        // certificate (a worker's, a disabled operator's not yet on the CRL) is refused
        // whatever it sent, on slots of its own. The admin service checks the operator's
        // standing again, as the precondition of whatever it changes.
        let operator = match &peer {
            Some(PeerIdentity::Operator(name)) => broker.operator_is_active(name).await.is_ok(),
            _ => false,
        };
        let body = if method == Method::GET || method == Method::DELETE || !operator {
            Ok(Zeroizing::new(Vec::new()))
        } else {
            read_mtls_body(
                req,
                limits,
                limits.max_body_bytes,
                &broker,
                (&pools.bodies.operators, pools.holder),
                &mut permit,
            )
            .await
        };
        // Changes run in their own task: a client that disconnects cannot cancel an
        // operation between its audit record and its commit.
        let (m, p, rid) = (method.clone(), target, request_id.clone());
        let slots = if operator {
            pools.detached
        } else {
            pools.detached_refusals
        };
        // A refusal for want of a slot is counted (and logged, throttled): it ran nothing.
        let shed = broker.metrics().admin_requests_shed.clone();
        let on_full = move || {
            shed.get_or_create(&crate::metrics::CallerLabel {
                caller: if operator { "operator" } else { "other" }.into(),
            })
            .inc();
        };
        to_completion(&request_id, (slots, on_full), async move {
            broker.admin_http(peer.as_ref(), &m, &p, body, &rid).await
        })
        .await
    } else {
        match route_request(Listener::Mtls, &method, &path).map(|m| m.endpoint) {
            Ok(Endpoint::Healthz) => health::liveness(),
            Ok(Endpoint::Readyz) => health::readiness(&broker),
            // Metrics are for a scraper's (or an operator's) certificate, not for workers: they
            // describe every tenant's traffic.
            // An operator's certificate only while its record is active, as on the admin API
            // (a disabled or removed operator whose certificate is not revoked yet).
            Ok(Endpoint::Metrics)
                if matches!(
                    peer,
                    Some(PeerIdentity::Metrics(_) | PeerIdentity::Operator(_))
                ) =>
            {
                let refused = match &peer {
                    Some(PeerIdentity::Operator(name)) => {
                        broker.operator_is_active(name).await.err()
                    }
                    _ => None,
                };
                match refused {
                    Some(err) => error_answer(&err, None, &request_id),
                    None => {
                        content_type = "text/plain; version=0.0.4; charset=utf-8";
                        Answer {
                            status: StatusCode::OK,
                            body: Zeroizing::new(broker.metrics_text().into_bytes()),
                        }
                    }
                }
            }
            Ok(Endpoint::Metrics) => error_answer(
                &ApiError::new(
                    ErrorCode::OperatorRequired,
                    "metrics need a metrics (spiffe://<trust-domain>/metrics/<name>) or operator certificate",
                ),
                None,
                &request_id,
            ),
            Ok(Endpoint::OpenApi) => Answer {
                status: StatusCode::OK,
                body: Zeroizing::new(crate::openapi::document_text().into_bytes()),
            },
            Ok(Endpoint::Resolve) => match in_flight_slot(&broker, &pools, &request_id) {
                Err(refused) => refused,
                Ok(_slot) => {
                    let budget = (&pools.bodies.requests, pools.holder);
                    let max = limits.max_body_bytes;
                    let body =
                        read_mtls_body(req, limits, max, &broker, budget, &mut permit).await;
                    broker.resolve(peer.as_ref(), body, &request_id).await
                }
            },
            Ok(Endpoint::WebhookVerify) => {
                let _slot = match in_flight_slot(&broker, &pools, &request_id) {
                    Err(refused) => return respond(refused, content_type, &request_id),
                    Ok(slot) => slot,
                };
                // Only a worker may send an event-sized body; anyone else is refused after
                // the usual limit.
                // Its envelopes come from a pool of their own.
                let (max, budget) = if matches!(peer, Some(PeerIdentity::Worker(_))) {
                    let max = crate::webhooks::envelope_limit(broker.webhook_body_limit());
                    (max, (&pools.bodies.envelopes, pools.holder))
                } else {
                    (limits.max_body_bytes, (&pools.bodies.requests, pools.holder))
                };
                let body = read_mtls_body(req, limits, max, &broker, budget, &mut permit).await;
                broker.verify_webhook(peer.as_ref(), body, &request_id).await
            }
            // Admin routes live below /v1/admin/ (handled above); callbacks on the public listener.
            Ok(
                Endpoint::Admin(_)
                | Endpoint::CallbackStart
                | Endpoint::CallbackSetup
                | Endpoint::CallbackWebhook
                | Endpoint::ForgeRemote
                | Endpoint::OidcDiscovery
                | Endpoint::OidcJwks
                | Endpoint::Intake,
            ) => error_answer(
                &ApiError::new(ErrorCode::NotFound, "no such route"),
                None,
                &request_id,
            ),
            Err(err) => error_answer(&err, None, &request_id),
        }
    };
    // The body's memory is counted until the answer is made.
    drop(permit);
    respond(answer, content_type, &request_id)
}
