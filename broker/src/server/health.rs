//! The loopback health listener (`[health]`): plain HTTP/1.1 serving `GET /healthz` and
//! `GET /readyz` and nothing else, for a supervisor on the broker's host that holds no
//! certificate — `credbroker health`, a container `HEALTHCHECK`, a Kubernetes exec probe.
//!
//! Why a plaintext listener is acceptable here: config validation accepts only a loopback
//! address (`config::HealthSettings::validate`); its two answers are exactly those the mTLS
//! listener gives any certificate (the same functions below build both); it reads a
//! request's method and path and nothing else — no body, no store, no audit, no provider.
//! Its budgets are its own and tiny (a few connections, an 8 KiB head, a 2 s head deadline,
//! one request per connection), so a local process flooding it cannot take the workers'
//! connection or handshake slots.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::api_error::{ApiError, ErrorCode};
use crate::body::ZeroizingBody;
use crate::broker::{error_answer, Answer, Broker};
use crate::routes::{route_request, Endpoint, Listener};

use super::{new_request_id, plain_json, respond, RunningServer};

/// Connections served at once; a further one is closed at accept.
const MAX_CONNECTIONS: usize = 8;
/// Largest request head: hyper's minimum HTTP/1 buffer.
const MAX_HEAD_BYTES: usize = 8192;
/// Most request header fields.
const MAX_HEADERS: usize = 32;
/// Deadline for the request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest life of one connection, request and answer included.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);

/// `GET /healthz`: the process is up and serving. The same answer on every listener.
pub(super) fn liveness() -> Answer {
    plain_json(StatusCode::OK, json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 while the audit log is writable, 503 `audit_unavailable` otherwise
/// ([`Broker::ready`]). The same answer on every listener.
pub(super) fn readiness(broker: &Broker) -> Answer {
    if broker.ready() {
        plain_json(StatusCode::OK, json!({ "status": "ready" }))
    } else {
        plain_json(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "audit_unavailable" }),
        )
    }
}

/// Starts the health listener on `listener` (bound by the daemon to a loopback address that
/// config validation accepted).
///
/// # Errors
/// When the listener's local address cannot be read.
pub fn spawn_health(listener: TcpListener, broker: Arc<Broker>) -> std::io::Result<RunningServer> {
    let local_addr = listener.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let slots = connections.clone();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        // One request per connection: nothing is kept open between probes.
        .keep_alive(false);
    let builder = Arc::new(builder);
    let accept_task = tokio::spawn(async move {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "health listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(tcp);
                continue;
            };
            let broker = broker.clone();
            let builder = builder.clone();
            let mut shutdown_rx = shutdown_rx.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = service_fn(move |req: Request<Incoming>| {
                    let response = handle_health(&broker, &req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let conn = builder.serve_connection(TokioIo::new(tcp), service);
                tokio::pin!(conn);
                let stopping = tokio::select! {
                    _ = tokio::time::timeout(CONNECTION_DEADLINE, conn.as_mut()) => false,
                    _ = shutdown_rx.changed() => true,
                };
                if stopping {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            });
        }
    });
    Ok(RunningServer {
        local_addr,
        shutdown,
        accept_task,
        connections,
        max_connections: MAX_CONNECTIONS,
        // Nothing is kept for operators on the health listener.
        operator_reserve: crate::admission::Reserve::new(0, 1),
    })
}

/// One request: its method and path are matched against the health table; a body is
/// refused unread.
fn handle_health(broker: &Broker, req: &Request<Incoming>) -> Response<ZeroizingBody> {
    let request_id = new_request_id();
    let answer = if carries_body(req) {
        error_answer(
            &ApiError::bad_request("the health listener accepts no request body"),
            None,
            &request_id,
        )
    } else {
        match route_request(Listener::Health, req.method(), req.uri().path()) {
            Ok(m) => match m.endpoint {
                Endpoint::Healthz => liveness(),
                Endpoint::Readyz => readiness(broker),
                // The health table holds nothing else; this arm only keeps the match total.
                _ => error_answer(
                    &ApiError::new(ErrorCode::NotFound, "no such route"),
                    None,
                    &request_id,
                ),
            },
            Err(err) => error_answer(&err, None, &request_id),
        }
    };
    respond(answer, "application/json", &request_id)
}

/// Whether the request announces a body (a non-zero length, or any transfer coding).
fn carries_body(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| !v.to_str().is_ok_and(|s| s.trim() == "0"))
}
