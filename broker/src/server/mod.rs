//! The listeners: accept under a handshake budget (global and per source), TLS handshake
//! with a short deadline, a connection slot only once it completed, a required client
//! certificate on the mTLS listener, identity from the SPIFFE URI SAN, HTTP/1.1 or HTTP/2 with
//! header/body limits and read deadlines, then routing to resolve, admin, health and metrics.
//! The only plaintext listener is the optional loopback health listener (`health.rs`):
//! `/healthz` and `/readyz`, nothing else.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use crate::admission::{HandshakeGate, HandshakeRefusal, LogThrottle, RateLimiter, Rates};
use crate::body::ZeroizingBody;
use crate::broker::{Answer, Broker};
use crate::config::Limits;
use crate::identity::{peer_identity, PeerIdentity};
use crate::tls::ReloadableTls;

mod activity;
mod bodies;
mod detached;
mod health;
mod mtls;
mod public;
mod request_id;

pub use health::spawn_health;

use activity::{
    Activity, IdleConnections, EVICTABLE_AFTER, EVICTION_GRACE, EVICTION_WAIT_STEP,
    EVICTION_WAIT_STEPS,
};
use bodies::MtlsBodies;
use detached::{acknowledge_first, to_completion};
use mtls::{handle, Pools};

use public::{handle_public, PUBLIC_BODY_BUDGET_KIB};
pub use request_id::new_request_id;

/// Seconds between re-checks of an open connection's client chain (besides its expiry and
/// every reload).
const CHAIN_RECHECK_TICKS: u64 = 60;

/// Connections of the mTLS listener kept for operators beyond `[limits] max_connections`:
/// taken only when every other slot is held, so the operator who would disable the workers
/// holding them can still connect.
const OPERATOR_CONNECTIONS: usize = 16;
/// Of [`OPERATOR_CONNECTIONS`], the most one operator identity holds.
const OPERATOR_CONNECTIONS_EACH: usize = 2;

/// Which listener a server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// mTLS: resolve, admin, health, metrics.
    Mtls,
    /// Public TLS: provider callbacks and health only.
    Public,
}

/// A running listener.
pub struct RunningServer {
    /// The bound address.
    pub local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    accept_task: tokio::task::JoinHandle<()>,
    connections: Arc<Semaphore>,
    max_connections: usize,
    operator_reserve: Arc<crate::admission::Reserve>,
}

impl RunningServer {
    /// Stops accepting, asks open connections to finish their requests, and waits up to
    /// `grace` for them.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        self.accept_task.abort();
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        let every = async {
            let _ = self.connections.acquire_many(all).await;
            self.operator_reserve.all_back().await;
        };
        let _ = tokio::time::timeout(grace, every).await;
    }
}

/// Starts serving on `listener`.
pub fn spawn(
    listener: TcpListener,
    broker: Arc<Broker>,
    tls: Arc<ReloadableTls>,
    limits: Limits,
) -> std::io::Result<RunningServer> {
    spawn_role(Role::Mtls, listener, broker, tls, limits, None)
}

/// Starts serving `role` on `listener`; `request_rates`, when given, limits requests per
/// source and overall before any routing (the public listener).
pub fn spawn_role(
    role: Role,
    listener: TcpListener,
    broker: Arc<Broker>,
    tls: Arc<ReloadableTls>,
    limits: Limits,
    request_rates: Option<Rates>,
) -> std::io::Result<RunningServer> {
    let local_addr = listener.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    // Open connections, per source too: on the public listener no source ever holds more
    // than its small share; on the mTLS listener one source holds at most half.
    let connection_gate = match role {
        Role::Public => {
            HandshakeGate::strict(limits.max_connections, limits.max_connections_per_source)
        }
        Role::Mtls => HandshakeGate::new(limits.max_connections, limits.max_connections_per_source),
    };
    let connections = connection_gate.slots();
    // On the mTLS listener, per client identity too: one certificate used from many
    // addresses cannot take the connections every other identity needs.
    let identity_share = crate::admission::IdentityShare::new(
        connections.clone(),
        limits.max_connections,
        limits.max_connections_per_identity,
    );
    // Connections beyond `max_connections` that only operators take, when the others are
    // all held (the mTLS listener).
    let operator_reserve =
        crate::admission::Reserve::new(OPERATOR_CONNECTIONS, OPERATOR_CONNECTIONS_EACH);
    let kept_for_operators = operator_reserve.clone();
    // Requests that cost shared work (a store read, an audit record, a mint), per identity.
    let in_flight = crate::admission::InFlight::new(
        limits.max_requests_in_flight,
        limits.max_requests_in_flight_per_identity,
    );
    // Handshakes have their own small budget, shared fairly between sources: a flood of
    // connections that never finish a handshake takes neither connection slots nor every
    // handshake slot (with all taken, a newcomer gets the oldest of the largest holder's,
    // once that source has held slots without a break for longer than an honest handshake
    // takes: a quarter of the deadline, at most a second). On the public listener, as for its connections, no source ever holds
    // more than its share: anyone may open them, and a source holding half the budget with
    // connections that never send a ClientHello would leave a few more addresses the rest.
    let evictable_after =
        Duration::from_millis(limits.handshake_timeout_ms / 4).min(Duration::from_secs(1));
    let handshakes = HandshakeGate::handshakes(
        limits.max_handshakes,
        limits.max_handshakes_per_source,
        role == Role::Public,
        evictable_after,
    );
    let rate_limiter = request_rates.map(|r| Arc::new(RateLimiter::new(r)));
    // The public listener's open connections: when every slot is taken, a newcomer has the
    // one idle longest closed (see `IdleConnections`).
    let idle_connections = Arc::new(IdleConnections::default());
    // Bodies in memory at once on the public listener, KiB: anonymous senders of large
    // bodies are bounded together, before any signature is checked.
    // One source holds at most a quarter of it (the largest body allowed, 8 MiB: the
    // configuration refuses more). Bodies past their first step (only those claiming a
    // webhook signature grow) hold three quarters at most: a few sources making the claim,
    // checked only once a body is in, cannot take the memory other requests start in.
    let body_budget = crate::admission::BodyBudget::keeping(
        PUBLIC_BODY_BUDGET_KIB,
        PUBLIC_BODY_BUDGET_KIB / 4,
        PUBLIC_BODY_BUDGET_KIB / 4,
    );
    // Bodies in memory at once on the mTLS listener, per client identity (see `bodies`).
    let mtls_bodies = MtlsBodies::new(limits.max_body_bytes);
    // Failed handshakes are counted; their log lines are throttled (anyone can cause them).
    let handshake_log = Arc::new(LogThrottle::new(5));
    // Requests that must run to completion after their client left (audited changes) hold
    // one of these: no more such work can be in flight than connections are allowed.
    let detached = Arc::new(Semaphore::new(limits.max_connections));
    // The admin API's refusals of other certificates (audited, so run to completion too)
    // take slots of their own: a worker's flood of them never leaves operators without.
    let detached_refusals = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .max_buf_size(limits.max_header_bytes)
        .max_headers(100);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(64))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    // The public listener offers only HTTP/1.1 in its TLS handshake, and serves only that:
    // the auto builder would otherwise detect HTTP/2's preface and serve it anyway, with the
    // mTLS listener's stream limit per connection and no header deadline.
    let builder = match role {
        Role::Public => builder.http1_only(),
        Role::Mtls => builder,
    };
    let builder = Arc::new(builder);
    let limits = Arc::new(limits);
    let max_connections = limits.max_connections;
    let refused_log = Arc::new(LogThrottle::new(5));
    let accept_task = tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let handshake_slot = match handshakes.try_enter(remote.ip()) {
                Ok(p) => p,
                Err(why) => {
                    broker
                        .metrics()
                        .handshakes_refused
                        .get_or_create(&crate::metrics::ScopeLabel {
                            scope: why.as_str().into(),
                        })
                        .inc();
                    drop(tcp);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let broker = broker.clone();
            let tls = tls.clone();
            let builder = builder.clone();
            let limits = limits.clone();
            let detached = detached.clone();
            let detached_refusals = detached_refusals.clone();
            let mtls_bodies = mtls_bodies.clone();
            let connection_gate = connection_gate.clone();
            let idle_connections = idle_connections.clone();
            let identity_share = identity_share.clone();
            let in_flight = in_flight.clone();
            let operator_reserve = operator_reserve.clone();
            let refused_log = refused_log.clone();
            let rate_limiter = rate_limiter.clone();
            let body_budget = body_budget.clone();
            let handshake_log = handshake_log.clone();
            let mut shutdown_rx = shutdown_rx.clone();
            tokio::spawn(async move {
                // Watch for reloads from before the handshake: one that lands while it is in
                // progress (verified by the old CA bundle or CRL) re-checks the chain at once.
                let mut reloads = tls.reloads();
                let acceptor = TlsAcceptor::from(tls.current());
                let handshake = Duration::from_millis(limits.handshake_timeout_ms);
                // With every slot taken, a newcomer from a source holding fewer may take this
                // one's: the handshake is then dropped.
                let accepted = tokio::select! {
                    accepted = tokio::time::timeout(handshake, acceptor.accept(tcp)) => accepted,
                    () = handshake_slot.evicted() => {
                        broker
                            .metrics()
                            .handshakes_refused
                            .get_or_create(&crate::metrics::ScopeLabel {
                                scope: "evicted".into(),
                            })
                            .inc();
                        return;
                    }
                };
                let stream = match accepted {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        broker.metrics().handshake_failures.inc();
                        if let Some(suppressed) = handshake_log.admit() {
                            tracing::info!(%remote, error = %e, suppressed, "TLS handshake refused");
                        }
                        return;
                    }
                    Err(_) => {
                        broker.metrics().handshake_failures.inc();
                        if let Some(suppressed) = handshake_log.admit() {
                            tracing::info!(%remote, suppressed, "TLS handshake timed out");
                        }
                        return;
                    }
                };
                drop(handshake_slot);
                let peer = match stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                {
                    Some(cert) => match peer_identity(cert.as_ref(), broker.trust_domain()) {
                        Ok(p) => Some(p),
                        Err(e) => {
                            tracing::warn!(%remote, error = %e, "verified client certificate names no usable identity");
                            None
                        }
                    },
                    None => None,
                };
                // A connection slot only for a completed handshake. On the public listener,
                // with every slot taken, the connection idle longest is closed for it.
                let mut entered = connection_gate.try_enter(remote.ip());
                if role == Role::Public
                    && entered.as_ref().err() == Some(&HandshakeRefusal::Global)
                    && idle_connections.close_longest_idle(EVICTABLE_AFTER)
                {
                    broker.metrics().public_idle_connections_closed.inc();
                    for _ in 0..EVICTION_WAIT_STEPS {
                        tokio::time::sleep(EVICTION_WAIT_STEP).await;
                        entered = connection_gate.try_enter(remote.ip());
                        if entered.is_ok() {
                            break;
                        }
                    }
                }
                // On the mTLS listener an operator still gets one of the connections kept
                // for operators: workers holding every slot (one tenant's fleet of
                // certificates, or a connector leaking connections) cannot lock out the
                // operator who would disable them.
                // Only an operator whose record is active (a disabled one not yet on the CRL
                // takes none), two connections each.
                let reserved = match (&entered, &peer) {
                    (Err(HandshakeRefusal::Global), Some(PeerIdentity::Operator(name)))
                        if role == Role::Mtls && operator_reserve.could_take(name.as_str()) =>
                    {
                        match broker.operator_is_active(name).await {
                            Ok(()) => operator_reserve.try_take(name.as_str()),
                            Err(_) => None,
                        }
                    }
                    _ => None,
                };
                let _slot = match (entered, reserved) {
                    (Ok(slot), _) => (Some(slot), None),
                    (Err(_), Some(reserved)) => (None, Some(reserved)),
                    (Err(why), None) => {
                        broker.metrics().connections_refused.inc();
                        if let Some(suppressed) = refused_log.admit() {
                            tracing::warn!(%remote, limit = why.as_str(), suppressed, "connection limit reached; closing new connection");
                        }
                        return;
                    }
                };
                // The verified client chain, re-checked when the CA bundle or CRL is reloaded.
                let chain: Vec<rustls::pki_types::CertificateDer<'static>> = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
                    .unwrap_or_default();
                // A reload during the handshake: the chain was verified by the old CA bundle
                // or CRL. Re-check it before the first request is read.
                if reloads.has_changed().unwrap_or(false) {
                    reloads.borrow_and_update();
                    if !chain.is_empty() && !tls.client_chain_still_valid(&chain) {
                        broker.metrics().revoked_connections_closed.inc();
                        tracing::warn!(%remote, "client certificate revoked during its handshake; connection closed");
                        return;
                    }
                }
                broker.metrics().connections.inc();
                let _gauge = GaugeGuard(broker.clone());
                // The connection's client identity, named once: its share of the connections
                // (a verified certificate with no usable identity counts as one identity with
                // all the others) and the holder of its bodies in the listener's budget.
                let identity: Arc<str> = Arc::from(
                    peer.as_ref()
                        .map(PeerIdentity::audit_name)
                        .unwrap_or_default(),
                );
                let _identity_slot = match role {
                    Role::Public => None,
                    Role::Mtls => match identity_share.try_enter(&identity) {
                        Some(slot) => Some(slot),
                        None => {
                            broker.metrics().connections_refused.inc();
                            if let Some(suppressed) = refused_log.admit() {
                                tracing::warn!(%remote, %identity, limit = "identity", suppressed, "connection limit reached; closing new connection");
                            }
                            return;
                        }
                    },
                };
                let body_holder = identity;
                let activity = Arc::new(Activity::new());
                let service_activity = activity.clone();
                let close = Arc::new(tokio::sync::Notify::new());
                let _evictable = (role == Role::Public)
                    .then(|| idle_connections.register(activity.clone(), close.clone()));
                let conn_broker = broker.clone();
                let idle_timeout = Duration::from_millis(limits.idle_timeout_ms);
                let max_age = Duration::from_secs(limits.max_connection_age_s);
                let service = service_fn(move |req| {
                    let broker = broker.clone();
                    let peer = peer.clone();
                    let limits = limits.clone();
                    let detached = detached.clone();
                    let detached_refusals = detached_refusals.clone();
                    let mtls_bodies = mtls_bodies.clone();
                    let body_holder = body_holder.clone();
                    let in_flight = in_flight.clone();
                    let rate_limiter = rate_limiter.clone();
                    let body_budget = body_budget.clone();
                    let activity = service_activity.clone();
                    // The public listener marks its requests busy itself (handle_public):
                    // not while an unverified body is still arriving.
                    let busy = (role == Role::Mtls).then(|| service_activity.begin());
                    async move {
                        let _busy = busy;
                        Ok::<_, Infallible>(match role {
                            Role::Mtls => {
                                let pools = Pools {
                                    detached: &detached,
                                    detached_refusals: &detached_refusals,
                                    bodies: &mtls_bodies,
                                    holder: &body_holder,
                                    in_flight: &in_flight,
                                };
                                handle(broker, peer, &limits, pools, req).await
                            }
                            Role::Public => {
                                handle_public(
                                    broker,
                                    &limits,
                                    &detached,
                                    &body_budget,
                                    rate_limiter.as_deref(),
                                    public::PublicConnection {
                                        remote,
                                        activity: &activity,
                                    },
                                    req,
                                )
                                .await
                            }
                        })
                    }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let opened = std::time::Instant::now();
                // A busy connection never idles out: the chain is checked again once its
                // first certificate expires, and every minute (a CRL gone stale under
                // `stale_crl = "refuse"` refuses it too).
                let not_afters = crate::certs::chain_not_afters(&chain);
                let mut expires_at = not_afters.first().copied();
                let mut ticks: u64 = 0;
                let mut evicted = false;
                loop {
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = shutdown_rx.changed() => break,
                        // Closed for a newcomer: the request in progress, if one started
                        // since, is answered first, within a short grace.
                        () = close.notified() => {
                            evicted = true;
                            break;
                        }
                        changed = reloads.changed() => {
                            if changed.is_err() {
                                continue;
                            }
                            // A revoked (or no longer trusted) client loses its open
                            // connection at once: its next request cannot be served.
                            if !chain.is_empty() && !tls.client_chain_still_valid(&chain) {
                                conn_broker.metrics().revoked_connections_closed.inc();
                                tracing::warn!(%remote, "client certificate no longer valid after reload; connection closed");
                                return;
                            }
                        }
                        _ = tick.tick() => {
                            ticks += 1;
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                            let expired = expires_at.is_some_and(|t| now >= t);
                            if !chain.is_empty()
                                && (expired || ticks.is_multiple_of(CHAIN_RECHECK_TICKS))
                                && !tls.client_chain_still_valid(&chain)
                            {
                                conn_broker.metrics().revoked_connections_closed.inc();
                                tracing::warn!(%remote, expired, "client certificate no longer valid (expired, revoked or its CRL stale); connection closed");
                                return;
                            }
                            // Still valid well past that time (an expired extra certificate
                            // off the verified path; notAfter itself is still valid): the next
                            // certificate's end is watched instead, not every second.
                            if expires_at.is_some_and(|t| now > t.saturating_add(2)) {
                                expires_at = not_afters.iter().copied().find(|&t| t >= now);
                            }
                            let idle = activity.idle_for().is_some_and(|d| d >= idle_timeout);
                            if idle || opened.elapsed() >= max_age {
                                break;
                            }
                        }
                    }
                }
                conn.as_mut().graceful_shutdown();
                // One closed for a newcomer gets a second: its client may have left a response
                // unread (pipelined requests, nothing read), which would hold the slot the
                // newcomer waits for.
                let grace = if evicted {
                    EVICTION_GRACE
                } else {
                    Duration::from_secs(10)
                };
                let _ = tokio::time::timeout(grace, conn).await;
            });
        }
    });
    Ok(RunningServer {
        local_addr,
        shutdown,
        accept_task,
        connections,
        max_connections,
        operator_reserve: kept_for_operators,
    })
}

struct GaugeGuard(Arc<Broker>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.metrics().connections.dec();
    }
}

/// The HTTP response for an answer: its body zeroized after sending, never cached, carrying
/// the request id.
fn respond(
    answer: Answer,
    content_type: &'static str,
    request_id: &str,
) -> Response<ZeroizingBody> {
    let mut response = Response::new(ZeroizingBody::new(answer.body));
    *response.status_mut() = answer.status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    // A browser lands on some answers (a callback's JSON after an install): never sniffed
    // as HTML, never framed, nothing loaded for it. The intake pages set a policy of their
    // own over this one.
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    if let Ok(v) = header::HeaderValue::from_str(request_id) {
        h.insert("x-request-id", v);
    }
    if answer.status == StatusCode::TOO_MANY_REQUESTS {
        h.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

fn plain_json(status: StatusCode, value: serde_json::Value) -> Answer {
    Answer {
        status,
        body: Zeroizing::new(serde_json::to_vec(&value).unwrap_or_default()),
    }
}
