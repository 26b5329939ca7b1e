//! The broker's shared state: store, keys, audit log, caches, providers and metrics, and how
//! it starts. The resolve path lives in `resolve`, administration in `admin`, provider
//! callbacks in `callbacks`.

use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use credbroker_providers::{Bound, ProviderRegistry};

use crate::admin::{AdminOp, AdminOutcome, AdminService};
use crate::api_error::ApiError;
use crate::audit::AuditReceipt;
use crate::audit::{AuditConfig, AuditLog};
use crate::callbacks::CallbackService;
use crate::config::Config;
use crate::identity::PeerIdentity;
use crate::ids::BindingId;
pub use crate::keys::loaded::{take_kek_from_env, BrokerKeys};

mod core;
pub(crate) use self::core::secret_read_failed;
pub(crate) mod keyring_check;
use crate::keys::{FingerprintKey, KeyError, Keyring};
use crate::metrics::Metrics;
use crate::resolve::ResolveService;
use crate::store::records::Records;
use crate::store::{Store, StoreError};
use crate::token_cache::TokenCache;

/// Settings the broker core needs (a subset of [`Config`]).
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Upstream mint deadline.
    pub mint_timeout: Duration,
    /// Token cache bound.
    pub cache_max_entries: usize,
    /// Token cache bound per tenant.
    pub cache_max_entries_per_tenant: usize,
    /// Decoded records cached per store table (`[cache] record_entries`).
    pub record_cache_entries: usize,
    /// Audit writer settings.
    pub audit: AuditConfig,
    /// Lifetime of install `state`s, seconds.
    pub callback_state_ttl_s: u64,
    /// `[public] base_url`: where install links point.
    pub public_base_url: Option<String>,
    /// Circuit breaker: consecutive failures, open duration.
    pub breaker: (u32, Duration),
    /// Mints a minute per worker, per binding and per tenant of a provider (0: unlimited).
    pub mint_limits: crate::admission::MintLimits,
    /// `[secrets] superseded_overlap_s`.
    pub superseded_overlap_s: u64,
    /// `[issuer]`, when the broker's own OIDC issuer is on.
    pub issuer: Option<crate::issuer::IssuerSettings>,
    /// `[store]`: on a store several replicas share, the audit chains' database.
    pub store: crate::store::StoreSettings,
    /// `[inventory]`.
    pub inventory: crate::config::InventorySettings,
    /// `[webhooks]`.
    pub webhooks: crate::config::WebhookSettings,
}

impl BrokerSettings {
    /// Settings from a config file.
    pub fn from_config(config: &Config) -> Self {
        BrokerSettings {
            trust_domain: config.trust_domain.clone(),
            mint_timeout: Duration::from_millis(config.cache.mint_timeout_ms),
            cache_max_entries: config.cache.max_entries,
            cache_max_entries_per_tenant: config.cache.max_entries_per_tenant,
            record_cache_entries: config.cache.record_entries,
            audit: AuditConfig {
                dir: config.audit_dir(),
                max_batch: config.audit.max_batch,
                checkpoint_every_records: config.audit.checkpoint_every_records,
                checkpoint_interval: Duration::from_secs(config.audit.checkpoint_interval_s.max(1)),
                segment_bytes: config.audit.segment_mib << 20,
                segment_records: config.audit.segment_records,
                live_segments: config.audit.live_segments,
                forensic_start: config.audit.forensic_start,
            },
            callback_state_ttl_s: config
                .public
                .as_ref()
                .map_or(3600, |p| p.state_ttl_s.max(1)),
            public_base_url: config.public.as_ref().and_then(|p| p.base_url.clone()),
            breaker: (
                config.cache.breaker_failures,
                Duration::from_millis(config.cache.breaker_open_ms),
            ),
            mint_limits: crate::admission::MintLimits {
                per_worker: config.cache.mints_per_minute_per_worker,
                per_binding: config.cache.mints_per_minute_per_binding,
                per_tenant: config.cache.mints_per_minute_per_tenant,
            },
            superseded_overlap_s: config.secrets.superseded_overlap_s,
            issuer: config.issuer.clone(),
            store: config.store.clone(),
            inventory: config.inventory.clone(),
            webhooks: config.webhooks.clone(),
        }
    }
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Key material.
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
    /// Store.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Audit log.
    #[error("audit: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Refuses to open a file log over a store that holds changes but has no audit log at
/// all: every change is audited before it commits, so that is a log removed (or a data
/// directory put together from two deployments), and opening would begin a new chain at
/// sequence 1 over the loss, which verifies with the key. Every opener of a sled store's log
/// checks it (serve, and the offline commands that append). With `forensic_start` it goes
/// on: the returned reason is recorded as the new chain's first record.
///
/// # Errors
/// The refusal, or a store failure.
pub async fn refuse_a_lost_log(
    store: &dyn crate::store::Store,
    audit: &crate::audit::AuditConfig,
) -> Result<Option<String>, StartError> {
    if crate::audit::segments::has_file_log(&audit.dir)
        || !crate::store::records::holds_changes(store).await?
    {
        return Ok(None);
    }
    let what = format!(
        "the store holds operators or tenants but {} holds no audit log",
        audit.dir.display()
    );
    if audit.forensic_start {
        tracing::error!("FORENSIC START: {what}; a new chain starts at sequence 1");
        return Ok(Some(format!(
            "{what}: a new chain starts at sequence 1 (what came before is not in it)"
        )));
    }
    Err(StartError::Other(format!(
        "{what}: it was removed, or data_dir and [store] path name different deployments. Every change is audited, so opening it would begin a new chain over the loss: restore the log (runbooks/audit-verification.md), or start the daemon with `serve --forensic-start` to override"
    )))
}

/// [`refuse_a_lost_log`] for an offline command about to append to the file log
/// (`bootstrap-operator`, `keys rotate-kek`, `store migrate`), on a sled store: a shared
/// store's history is in its chains, and a host's file log holds only its offline commands.
///
/// # Errors
/// The refusal, said for an offline command.
pub async fn refuse_a_lost_log_offline(
    config: &crate::config::Config,
    store: &dyn crate::store::Store,
) -> Result<(), String> {
    if config.store.backend != crate::store::Backend::Sled {
        return Ok(());
    }
    let mut audit = BrokerSettings::from_config(config).audit;
    audit.forensic_start = false;
    refuse_a_lost_log(store, &audit)
        .await
        .map(|_| ())
        .map_err(|e| format!("{e}; nothing was changed"))
}

/// Parsed bindings by binding id: (the generation parsed, what the provider bound).
type BoundMap = std::sync::Mutex<std::collections::HashMap<BindingId, (String, Bound)>>;

/// What the services share: store, keys, audit log, caches, providers, metrics, settings.
pub struct Core {
    pub(crate) records: Records,
    pub(crate) keyring: Keyring,
    pub(crate) audit: AuditLog,
    /// Records not settled yet — resolves' stand-in records (a mint still running for a
    /// resolve whose client went away) and admin operations still running: shutdown waits
    /// for them before closing the audit log.
    pub(crate) pending_reports: Arc<std::sync::atomic::AtomicUsize>,
    /// Set when the daemon stops: no new mint starts (see [`Broker::settle_reports`]).
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    pub(crate) fingerprint: FingerprintKey,
    pub(crate) cache: Arc<TokenCache>,
    pub(crate) breakers: Arc<crate::breaker::Breakers>,
    pub(crate) registry: ProviderRegistry,
    /// The broker's own OIDC issuer, when configured.
    pub(crate) issuer: Option<Arc<crate::issuer::Issuer>>,
    /// Metrics.
    pub metrics: Metrics,
    /// Bindings as their providers parsed them, by binding id with the generation parsed;
    /// emptied on every change the store reports to bindings, so nothing is parsed per
    /// resolve and nothing outlives a change.
    bound: Arc<BoundMap>,
    /// This broker's replica id and leadership.
    pub(crate) replica: Arc<crate::replica::Replica>,
    /// Last uses, reveal budgets, verification log budget.
    pub(crate) governance: crate::governance::Governance,
    settings: BrokerSettings,
}

/// The daemon's services over one shared [`Core`]: resolve, admin, callbacks.
pub struct Broker {
    core: Arc<Core>,
    admin: Arc<AdminService>,
    resolver: ResolveService,
    callbacks: CallbackService,
}

/// An HTTP answer with a body that is zeroized when dropped.
pub struct Answer {
    /// Status.
    pub status: http::StatusCode,
    /// JSON body.
    pub body: Zeroizing<Vec<u8>>,
}

/// An error answer: `{"error":{"code","message","audit_id","request_id"}}`.
pub fn error_answer(err: &ApiError, audit_id: Option<&str>, request_id: &str) -> Answer {
    let body = crate::api_error::ErrorBody {
        error: crate::api_error::ErrorDetail {
            code: err.code,
            message: &err.message,
            audit_id,
            request_id,
        },
    };
    Answer {
        status: err.code.status(),
        body: Zeroizing::new(serde_json::to_vec(&body).unwrap_or_default()),
    }
}

impl Broker {
    /// Opens the store and the audit log described by `config` and starts the broker.
    ///
    /// # Errors
    /// See [`StartError`].
    pub async fn open_with_config(
        config: &Config,
        registry: ProviderRegistry,
    ) -> Result<Arc<Broker>, StartError> {
        let keys = BrokerKeys::load(config)?;
        let store = crate::store::open(&config.store, &config.data_dir).await?;
        Broker::open(store, keys, registry, BrokerSettings::from_config(config)).await
    }

    /// Starts the broker over an open store.
    ///
    /// # Errors
    /// When the audit log cannot be opened, or a stored secret names a KEK version the
    /// keyring does not hold (fail at start, not at the first resolve).
    pub async fn open(
        store: Arc<dyn Store>,
        keys: BrokerKeys,
        registry: ProviderRegistry,
        settings: BrokerSettings,
    ) -> Result<Arc<Broker>, StartError> {
        let records = Records::with_cache(store, settings.record_cache_entries);
        let bound: Arc<BoundMap> = Arc::default();
        let hook_bound = Arc::clone(&bound);
        // What a provider bound is a function of the binding record alone.
        records.on_change(Arc::new(move |changed| {
            if !changed.bindings() {
                return;
            }
            if let Ok(mut b) = hook_bound.lock() {
                b.clear();
            }
        }));
        let metrics = Metrics::new();
        // The replica id first, then the keyring checked against the store: joining refuses
        // while an offline change (a KEK rotation) holds the store, and the change refuses
        // once a replica has joined, so the check never reads a store a rotation rewrites.
        let replica = crate::replica::Replica::join(records.store()).await?;
        // Renewed from now on: the checks below read the whole store, which on a large
        // PostgreSQL store can outlast a lease nobody renews.
        replica.spawn_renewal();
        // A start that fails from here on stops the renewal and gives the leases up at once
        // (the task would otherwise keep them alive in a process that goes on).
        let held = Arc::clone(&replica);
        let opened = async move {
            keyring_check::active_not_ahead(&records, &keys.keyring).await?;
            keyring_check::check(&records, &keys.keyring).await?;
            let mut lost = None;
            let audit = match (replica.id(), replica.lease()) {
                // A shared store: this replica's chain in the database.
                (Some(id), Some(lease)) => {
                    AuditLog::open_database(
                        settings.audit.clone(),
                        keys.audit_signer,
                        Some(metrics.audit_batch_size.clone()),
                        &settings.store,
                        crate::audit::chains::ChainOwner {
                            replica: id,
                            lease,
                            holder: replica.holder().to_owned(),
                        },
                    )
                    .await?
                }
                _ => {
                    lost = refuse_a_lost_log(records.store().as_ref(), &settings.audit).await?;
                    AuditLog::open_observed(
                        settings.audit.clone(),
                        keys.audit_signer,
                        Some(metrics.audit_batch_size.clone()),
                    )?
                }
            };
            let forensic = audit
                .forensic_failure()
                .map(|f| format!("serve --forensic-start on a log that does not verify: {f}"))
                .or_else(|| lost.map(|l| format!("serve --forensic-start: {l}")));
            if let Some(detail) = forensic {
                // The forensic start is itself on the record, in the chain it continues (or,
                // over a lost log, the one it begins).
                let event = crate::audit::AuditEvent {
                    kind: "admin".into(),
                    action: "audit.forensic_start".into(),
                    request_id: crate::server::new_request_id(),
                    actor: "credbroker:start".into(),
                    outcome: "allowed".into(),
                    detail: Some(detail),
                    ..Default::default()
                };
                audit
                    .append(event)
                    .await
                    .map_err(|e| StartError::Other(format!("audit: {e}")))?;
            }
            // A replica whose audit log takes no records runs no leader-only job (each is
            // audited first): it leaves them to one whose log does.
            replica.lead_only_while(Arc::new(audit.health()));
            let core = Arc::new(Core {
                records,
                keyring: keys.keyring,
                audit,
                fingerprint: keys.fingerprint,
                cache: TokenCache::with_join_counter(
                    settings.cache_max_entries,
                    settings.cache_max_entries_per_tenant,
                    metrics.cache_shared_mints.clone(),
                ),
                breakers: Arc::new(
                    crate::breaker::Breakers::with_mint_limits(
                        settings.breaker.0,
                        settings.breaker.1,
                        settings.mint_limits,
                    )
                    .with_own_upstreams(
                        registry
                            .providers()
                            .filter(|p| !p.shares_upstream())
                            .map(|p| p.id().to_owned()),
                    ),
                ),
                registry,
                issuer: settings
                    .issuer
                    .clone()
                    .map(|s| Arc::new(crate::issuer::Issuer::new(s))),
                metrics,
                bound: bound.clone(),
                replica,
                pending_reports: Arc::default(),
                stopping: std::sync::atomic::AtomicBool::new(false),
                governance: crate::governance::Governance::new(
                    settings.inventory.clone(),
                    settings.webhooks.clone(),
                ),
                settings,
            });
            let admin = AdminService::new(Arc::clone(&core));
            let prepared: Result<(), StartError> = async {
                let migrated = admin
                    .migrate_platform_key_sealing()
                    .await
                    .map_err(|e| StartError::Other(format!("store migration: {}", e.message)))?;
                if migrated > 0 {
                    tracing::info!(
                        keys = migrated,
                        "re-sealed platform keys in their own AAD domain"
                    );
                }
                let reclaimed = admin
                    .reclaim_exclusive_identifiers()
                    .await
                    .map_err(|e| StartError::Other(format!("store migration: {}", e.message)))?;
                if reclaimed > 0 {
                    tracing::warn!(
                        changes = reclaimed,
                        "exclusive identifiers re-claimed in their current form (audited as store.migrate)"
                    );
                }
                if core
                    .records
                    .operators()
                    .await
                    .map_err(|e| StartError::Other(e.to_string()))?
                    .is_empty()
                {
                    tracing::warn!("no operator records: every operator certificate the client CA accepts may administer until the first operator is registered (credbroker operator add, or credbroker bootstrap-operator offline); register every operator then");
                }
                admin
                    .load_all_platform_keys()
                    .await
                    .map_err(|e| StartError::Other(format!("platform keys: {}", e.message)))?;
                admin
                    .ensure_issuer_key()
                    .await
                    .map_err(|e| StartError::Other(format!("issuer keys: {}", e.message)))?;
                Ok(())
            }
            .await;
            if let Err(e) = prepared {
                // The log is open: closed here, its final checkpoint is signed before the
                // process exits (dropped, the writer might not get to it, and each failed
                // start of a restart loop would leave an unsigned tail behind).
                let audit = core.audit.clone();
                let _ = tokio::task::spawn_blocking(move || audit.close()).await;
                return Err(e);
            }
            Ok(Arc::new(Broker {
                resolver: ResolveService::new(Arc::clone(&core), Arc::clone(&admin)),
                callbacks: CallbackService::new(Arc::clone(&core), Arc::clone(&admin)),
                admin,
                core,
            }))
        }
        .await;
        if opened.is_err() {
            held.leave().await;
        }
        opened
    }

    /// The shared core.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.core.metrics
    }

    /// Typed store access.
    pub fn records(&self) -> &Records {
        &self.core.records
    }

    /// The audit log.
    pub fn audit_log(&self) -> &AuditLog {
        &self.core.audit
    }

    /// The SPIFFE trust domain.
    pub fn trust_domain(&self) -> &str {
        self.core.trust_domain()
    }

    /// Whether the broker can serve resolves (audit writable).
    pub fn ready(&self) -> bool {
        self.core.ready()
    }

    /// Refreshes gauges that are read rather than counted, then encodes all metrics.
    pub fn metrics_text(&self) -> String {
        self.core.metrics_text()
    }

    /// Stops the audit writer after a final checkpoint.
    pub fn shutdown(&self) {
        self.core.shutdown();
    }

    /// Once the listeners have drained (requests still connected have written their own
    /// records): no mint (a resolve's, a self-rotation's) starts any more, since its record
    /// could not be written once the audit log closes; then waits until no resolve's
    /// stand-in record is pending (mints of resolves whose clients went away have ended and
    /// their records are written), no admin operation (a probe whose operator went away)
    /// is still running and no self-rotation runs — at most the mint timeout and
    /// 2 s (every mint still running started before now; twice the mint timeout while a
    /// self-rotation settles a lost create), and never past 20 s after the
    /// stop signal (`began`), so a stop ends within systemd's `TimeoutStopSec`. Called
    /// before [`Broker::shutdown`] closes the audit log.
    pub async fn settle_reports(&self, began: tokio::time::Instant) {
        self.core
            .stopping
            .store(true, std::sync::atomic::Ordering::Release);
        let now = tokio::time::Instant::now();
        let deadline = (now + self.core.mint_timeout() + Duration::from_secs(2))
            .min(began + Duration::from_secs(20));
        // A self-rotation whose create's answer was lost goes on to settle it (half a mint
        // timeout more): waited for up to twice the mint timeout, within the same 20 s.
        let rotation_deadline = (now + self.core.mint_timeout() * 2 + Duration::from_secs(2))
            .min(began + Duration::from_secs(20));
        while self
            .core
            .pending_reports
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
            || self.admin.rotations_running()
        {
            let until = if self.admin.rotations_running() {
                rotation_deadline
            } else {
                deadline
            };
            if tokio::time::Instant::now() >= until {
                tracing::error!("stopping with a record still unwritten: a mint or an operation whose client went away had not ended");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// See [`AdminService::catch_up`].
    ///
    /// # Errors
    /// `unavailable` when the store or the keys cannot be read.
    pub async fn catch_up(&self) -> Result<(), ApiError> {
        self.admin.catch_up().await
    }

    /// See [`AdminService::catch_up_shared`].
    ///
    /// # Errors
    /// `unavailable` when the catch-up it relies on failed.
    pub async fn catch_up_shared(&self) -> Result<(), ApiError> {
        self.admin.catch_up_shared().await
    }

    /// Gives up the replica's leases (see [`Core::leave`]).
    pub async fn leave(&self) {
        self.core.leave().await;
    }

    /// Whether this broker runs the jobs one broker must run alone (always, on a store one
    /// broker opens).
    pub fn is_leader(&self) -> bool {
        self.core.replica.is_leader()
    }

    /// This broker's replica id on a shared store.
    pub fn replica_id(&self) -> Option<u32> {
        self.core.replica.id()
    }

    /// Handles one `POST /v1/resolve` (see [`ResolveService::resolve`]).
    pub async fn resolve(
        &self,
        peer: Option<&PeerIdentity>,
        body: Result<Zeroizing<Vec<u8>>, ApiError>,
        request_id: &str,
    ) -> Answer {
        self.resolver.resolve(peer, body, request_id).await
    }

    /// The admin service (governance methods live next to their state).
    pub(crate) fn admin_service(&self) -> &Arc<AdminService> {
        &self.admin
    }

    /// Runs one admin operation as `actor` (see [`AdminService::execute`]).
    ///
    /// # Errors
    /// The API error, with the audit receipt of the refusal when it could be recorded.
    pub async fn admin(
        &self,
        actor: &str,
        op: AdminOp,
        request_id: &str,
    ) -> Result<AdminOutcome, (ApiError, Option<AuditReceipt>)> {
        self.admin.execute(actor, op, request_id).await
    }

    /// Handles one HTTP admin request.
    pub async fn admin_http(
        &self,
        peer: Option<&PeerIdentity>,
        method: &http::Method,
        path: &str,
        body: Result<Zeroizing<Vec<u8>>, ApiError>,
        request_id: &str,
    ) -> Answer {
        self.admin
            .handle_http(peer, method, path, body, request_id)
            .await
    }

    /// Whether operator `name` is active (or none is registered yet): what every admin route
    /// checks, for the routes outside the admin API an operator certificate may use
    /// (`/metrics`).
    ///
    /// # Errors
    /// `operator_required` naming why, or a store failure.
    pub async fn operator_is_active(&self, name: &crate::ids::OperatorId) -> Result<(), ApiError> {
        self.admin.operator_may_administer(name).await
    }

    /// Forgets expired install states and webhook deliveries (audited); how many.
    ///
    /// # Errors
    /// On store or audit failure.
    pub async fn forget_expired(&self) -> Result<usize, ApiError> {
        self.admin.forget_expired().await
    }

    /// `GET|POST /intake/{token}` on the public listener.
    pub async fn intake_http(
        &self,
        post: bool,
        token: &str,
        headers: &http::HeaderMap,
        body: Result<Zeroizing<Vec<u8>>, ApiError>,
        request_id: &str,
    ) -> crate::intake_page::IntakeAnswer {
        self.admin
            .intake_http(post, token, headers, body, request_id)
            .await
    }

    /// Self-rotates the pasted secrets whose providers say they are due (a Data Center PAT
    /// close to expiry); how many were rotated.
    pub async fn rotate_due(&self) -> usize {
        self.admin.rotate_due().await
    }

    /// Handles one routed public-listener callback.
    pub async fn callback_http(
        &self,
        endpoint: crate::routes::Endpoint,
        provider: &str,
        query: &str,
        headers: &http::HeaderMap,
        body: Result<Zeroizing<Vec<u8>>, ApiError>,
        request_id: &str,
    ) -> crate::callbacks::CallbackAnswer {
        self.callbacks
            .handle_http(endpoint, provider, query, headers, body, request_id)
            .await
    }
}

impl Broker {
    /// The callback service (signed invocations are verified and applied there).
    pub(crate) fn callbacks(&self) -> &CallbackService {
        &self.callbacks
    }
}
