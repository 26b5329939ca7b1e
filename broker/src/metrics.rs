//! Prometheus metrics (text exposition format via `prometheus-client`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a resolve outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResolveLabels {
    /// `allowed`, `denied` or `failed`.
    pub outcome: String,
    /// Provider name or `none`.
    pub provider: String,
    /// Error code or `none`.
    pub code: String,
}

/// Labels carrying a provider name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    /// Provider name.
    pub provider: String,
}

/// Labels naming which limit acted: `source` or `global`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabel {
    /// `source` (one IPv4 address or IPv6 /64) or `global`.
    pub scope: String,
}

/// Labels naming whose admin request was refused: `operator` (an active operator's) or
/// `other` (any other certificate's, refused by the admin API in any case).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallerLabel {
    /// `operator` or `other`.
    pub caller: String,
}

/// Labels of a webhook verification: the scheme and `valid` or `invalid`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `github`, `gitlab`, `hmac_sha256`, `token`, `unsigned`.
    pub scheme: String,
    /// `valid` or `invalid`.
    pub result: String,
}

/// Labels of an inventory flag count: the flag and `binding` or `worker` (no record named).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlagLabels {
    /// `unowned`, `dormant`, `rotation_overdue`, `expiring_soon`, `last_probe_failed`,
    /// `revocation_owed`.
    pub flag: String,
    /// `binding` or `worker`.
    pub kind: String,
}

/// Label of a TLS file's expiry gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsFileLabel {
    /// `server`, `client_ca`, `public` (certificates) or `crl`.
    pub file: String,
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    /// Resolves by outcome, provider and code.
    pub resolves: Family<ResolveLabels, Counter>,
    /// Resolve handling latency (seconds), audit included.
    pub resolve_latency: Histogram,
    /// Cache hits.
    pub cache_hits: Counter,
    /// Cache misses (mints started or joined).
    pub cache_misses: Counter,
    /// Misses that joined another request's in-flight mint (counted when they join).
    pub cache_shared_mints: Counter,
    /// Upstream mint latency by provider.
    pub mint_latency: Family<ProviderLabel, Histogram>,
    /// Records per audit group commit.
    pub audit_batch_size: Histogram,
    /// 1 when the last audit write succeeded.
    pub audit_healthy: Gauge,
    /// Audit write failures.
    pub audit_failures: Gauge,
    /// 1 while this broker runs the leader-only jobs (always on a store one broker opens).
    pub leader: Gauge,
    /// This broker's replica id on a shared store (0 on a store one broker opens).
    pub replica_id: Gauge,
    /// Open connections.
    pub connections: Gauge,
    /// Connections refused at the limit.
    pub connections_refused: Counter,
    /// Idle public connections closed to make room for a newcomer.
    pub public_idle_connections_closed: Counter,
    /// Failed TLS handshakes (no/invalid/revoked client certificate, timeouts).
    pub handshake_failures: Counter,
    /// Requests on the mTLS listener refused because their certificate names no identity of
    /// this deployment (counted, never audited one by one).
    pub unidentified_refused: Counter,
    /// Connections closed at accept because the handshake budget (per source or overall)
    /// was used up.
    pub handshakes_refused: Family<ScopeLabel, Counter>,
    /// Public-listener requests refused by a rate limit (per source or overall).
    pub rate_limited: Family<ScopeLabel, Counter>,
    /// Public-listener request bodies refused because their source's share, or the whole
    /// body memory budget, was held.
    pub bodies_refused: Family<ScopeLabel, Counter>,
    /// mTLS-listener request bodies refused because their identity's share, or the whole
    /// body memory budget, was held.
    pub mtls_bodies_refused: Family<ScopeLabel, Counter>,
    /// Open connections closed because their client certificate was revoked, stopped being
    /// trusted, expired, or its CRL went stale (under `stale_crl = "refuse"`).
    pub revoked_connections_closed: Counter,
    /// Admin requests.
    pub admin_requests: Counter,
    /// Admin requests refused before they ran, every slot for work run to completion
    /// being taken (by whose certificate: `operator` or `other`).
    pub admin_requests_shed: Family<CallerLabel, Counter>,
    /// Resolves and webhook verifications refused before any work for want of an in-flight
    /// slot, by scope (`identity`: the caller's share; `global`: every slot taken).
    pub requests_shed: Family<ScopeLabel, Counter>,
    /// Upstream mints by provider. (No per-customer label: metrics carry no customer
    /// identifiers.)
    pub mints: Family<ProviderLabel, Counter>,
    /// Provider callbacks by outcome.
    pub callbacks: Family<ResolveLabels, Counter>,
    /// 1 while a provider's circuit is open.
    pub circuit_open: Family<ProviderLabel, Gauge>,
    /// Bindings whose own circuit is open (a count; no binding is named).
    pub open_binding_circuits: Gauge,
    /// Webhook verifications by scheme and result.
    pub webhook_verifications: Family<WebhookLabels, Counter>,
    /// Inventory rows carrying each flag, by flag and kind (as of the last computation).
    pub inventory_flagged: Family<FlagLabels, Gauge>,
    /// Unix time of the last computation of `inventory_flagged` that succeeded (0: none yet).
    pub inventory_computed: Gauge,
    /// Periodic computations of `inventory_flagged` that failed (the gauges kept their last
    /// values).
    pub inventory_failures: Counter,
    /// Store batches this process committed since it started.
    pub store_commits: Gauge,
    /// Seconds until the earliest certificate of each TLS file expires (negative: expired),
    /// or until its CRL's next update is due (negative: overdue).
    pub tls_expiry: Family<TlsFileLabel, Gauge>,
    /// TLS reloads (SIGHUP) refused because a file did not load (the previous config stays).
    pub tls_reload_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("credbroker");
        let resolves = Family::<ResolveLabels, Counter>::default();
        registry.register("resolves", "Resolve requests by outcome", resolves.clone());
        let resolve_latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        registry.register(
            "resolve_duration_seconds",
            "Resolve handling time including the durable audit append",
            resolve_latency.clone(),
        );
        let cache_hits = Counter::default();
        registry.register("cache_hits", "Token cache hits", cache_hits.clone());
        let cache_misses = Counter::default();
        registry.register("cache_misses", "Token cache misses", cache_misses.clone());
        let cache_shared_mints = Counter::default();
        registry.register(
            "cache_shared_mints",
            "Cache misses that joined another request's in-flight mint instead of minting",
            cache_shared_mints.clone(),
        );
        let mint_latency = Family::<ProviderLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
        });
        registry.register(
            "mint_duration_seconds",
            "Upstream mint time by provider",
            mint_latency.clone(),
        );
        let audit_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 9));
        registry.register(
            "audit_batch_size",
            "Records per audit group commit",
            audit_batch_size.clone(),
        );
        let audit_healthy = Gauge::default();
        registry.register(
            "audit_healthy",
            "1 when the last audit write succeeded",
            audit_healthy.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this broker runs the leader-only jobs (always 1 on a store one broker opens)",
            leader.clone(),
        );
        let replica_id = Gauge::default();
        registry.register(
            "replica_id",
            "This broker's replica id on a shared store (0 on a store one broker opens)",
            replica_id.clone(),
        );
        let audit_failures = Gauge::default();
        registry.register(
            "audit_write_failures",
            "Failed audit batches since start",
            audit_failures.clone(),
        );
        let connections = Gauge::default();
        registry.register("connections", "Open connections", connections.clone());
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept because the limit was reached",
            connections_refused.clone(),
        );
        let public_idle_connections_closed = Counter::default();
        registry.register(
            "public_idle_connections_closed",
            "Idle public-listener connections closed to make room for a new one (every slot was taken)",
            public_idle_connections_closed.clone(),
        );
        let handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            handshake_failures.clone(),
        );
        let unidentified_refused = Counter::default();
        registry.register(
            "mtls_unidentified_refused",
            "Requests refused on the mTLS listener: the certificate names no identity of this trust domain",
            unidentified_refused.clone(),
        );
        let handshakes_refused = Family::<ScopeLabel, Counter>::default();
        registry.register(
            "tls_handshakes_refused",
            "Connections closed at accept because the handshake budget was used up (source, global), or during their handshake because a newcomer took their slot (evicted)",
            handshakes_refused.clone(),
        );
        let rate_limited = Family::<ScopeLabel, Counter>::default();
        registry.register(
            "public_rate_limited",
            "Public-listener requests refused by a rate limit",
            rate_limited.clone(),
        );
        let bodies_refused = Family::<ScopeLabel, Counter>::default();
        registry.register(
            "public_bodies_refused",
            "Public-listener request bodies refused because the body memory budget was held",
            bodies_refused.clone(),
        );
        let mtls_bodies_refused = Family::<ScopeLabel, Counter>::default();
        registry.register(
            "mtls_bodies_refused",
            "mTLS-listener request bodies refused because the body memory budget (per client identity, or in all) was held",
            mtls_bodies_refused.clone(),
        );
        let revoked_connections_closed = Counter::default();
        registry.register(
            "revoked_connections_closed",
            "Open connections closed because their client certificate was revoked, expired or is no longer trusted",
            revoked_connections_closed.clone(),
        );
        let admin_requests = Counter::default();
        registry.register(
            "admin_requests",
            "Admin API requests",
            admin_requests.clone(),
        );
        let requests_shed = Family::<ScopeLabel, Counter>::default();
        registry.register(
            "requests_shed",
            "Resolves and webhook verifications refused before any work for want of an in-flight slot, by scope (identity: the caller's share; global: every slot taken); counted, not audited",
            requests_shed.clone(),
        );
        let admin_requests_shed = Family::<CallerLabel, Counter>::default();
        registry.register(
            "admin_requests_shed",
            "Admin API requests refused before they ran because every slot for work run to completion was taken, by caller (operator or other)",
            admin_requests_shed.clone(),
        );
        let mints = Family::<ProviderLabel, Counter>::default();
        registry.register("mints", "Upstream mints by provider", mints.clone());
        let callbacks = Family::<ResolveLabels, Counter>::default();
        registry.register(
            "callbacks",
            "Provider callbacks (install redirects, webhooks) by outcome",
            callbacks.clone(),
        );
        let open_binding_circuits = Gauge::default();
        registry.register(
            "open_binding_circuits",
            "Bindings whose own circuit is open",
            open_binding_circuits.clone(),
        );
        let circuit_open = Family::<ProviderLabel, Gauge>::default();
        registry.register(
            "circuit_open",
            "1 while a provider's circuit breaker is open",
            circuit_open.clone(),
        );
        let webhook_verifications = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_verifications",
            "Webhook verifications by scheme and result",
            webhook_verifications.clone(),
        );
        let inventory_flagged = Family::<FlagLabels, Gauge>::default();
        registry.register(
            "inventory_flagged",
            "Bindings and workers carrying each inventory flag, as of the last computation",
            inventory_flagged.clone(),
        );
        let inventory_computed = Gauge::default();
        registry.register(
            "inventory_computed_timestamp_seconds",
            "Unix time of the last computation of inventory_flagged that succeeded (0: none yet); alert when it is older than a few metrics_interval_s",
            inventory_computed.clone(),
        );
        let inventory_failures = Counter::default();
        registry.register(
            "inventory_computation_failures",
            "Periodic computations of inventory_flagged that failed (the gauges keep their last values)",
            inventory_failures.clone(),
        );
        let store_commits = Gauge::default();
        registry.register(
            "store_commits",
            "Store batches this process committed since it started",
            store_commits.clone(),
        );
        let tls_expiry = Family::<TlsFileLabel, Gauge>::default();
        registry.register(
            "tls_expiry_seconds",
            "Seconds until a TLS file's earliest certificate expires, or its CRL's next update is due (negative: past)",
            tls_expiry.clone(),
        );
        let tls_reload_failures = Counter::default();
        registry.register(
            "tls_reload_failures",
            "TLS reloads refused because a file did not load (the previous config is kept)",
            tls_reload_failures.clone(),
        );
        Metrics {
            tls_reload_failures,
            tls_expiry,
            webhook_verifications,
            inventory_flagged,
            inventory_computed,
            inventory_failures,
            store_commits,
            circuit_open,
            open_binding_circuits,
            mints,
            callbacks,
            registry,
            resolves,
            resolve_latency,
            cache_hits,
            cache_misses,
            cache_shared_mints,
            mint_latency,
            audit_batch_size,
            audit_healthy,
            audit_failures,
            leader,
            replica_id,
            connections,
            connections_refused,
            public_idle_connections_closed,
            handshake_failures,
            unidentified_refused,
            handshakes_refused,
            rate_limited,
            bodies_refused,
            mtls_bodies_refused,
            revoked_connections_closed,
            admin_requests,
            admin_requests_shed,
            requests_shed,
        }
    }

    /// Counts a request on the public listener refused before any provider judged it (no
    /// such route, no such callback, a replica that could not catch up): `denied` in
    /// `credbroker_callbacks_total` under `provider` (never a name the caller chose) and the
    /// error code. Anonymous refusals are counted, not audited one by one.
    pub fn count_public_refusal(&self, provider: &str, code: &str) {
        self.count_callback("denied", provider, code);
    }

    /// Counts one request on the public listener in `credbroker_callbacks_total`: its
    /// outcome (`allowed`, `ignored`, `denied`), provider and error code (`none`).
    pub fn count_callback(&self, outcome: &str, provider: &str, code: &str) {
        self.callbacks
            .get_or_create(&ResolveLabels {
                outcome: outcome.into(),
                provider: provider.into(),
                code: code.into(),
            })
            .inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Gauges read from the broker's state rather than counted.
impl crate::broker::Core {
    /// Refreshes gauges that are read rather than counted, then encodes all metrics.
    pub fn metrics_text(&self) -> String {
        self.metrics
            .audit_healthy
            .set(i64::from(self.audit.healthy()));
        self.metrics.leader.set(i64::from(self.replica.is_leader()));
        self.metrics
            .replica_id
            .set(i64::from(self.replica.id().unwrap_or(0)));
        let open = self.breakers.open_providers();
        for name in self.registry.names() {
            self.metrics
                .circuit_open
                .get_or_create(&crate::metrics::ProviderLabel {
                    provider: name.to_owned(),
                })
                .set(i64::from(open.iter().any(|p| p == name)));
        }
        self.metrics
            .store_commits
            .set(i64::try_from(self.records.commits()).unwrap_or(i64::MAX));
        self.metrics
            .open_binding_circuits
            .set(i64::try_from(self.breakers.open_bindings()).unwrap_or(i64::MAX));
        self.metrics.audit_failures.set(
            i64::try_from(
                self.audit
                    .stats()
                    .failures
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
            .unwrap_or(i64::MAX),
        );
        self.metrics.encode()
    }
}
