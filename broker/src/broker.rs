//! The broker's state and the resolve path.
//!
//! Resolve walks the verified tenant chain on every call, reading each link from the store:
//! client certificate → worker record (active, allowed for the tenant and connector kind) →
//! instance (active) → tenant (active) → the instance's binding (same tenant, active) →
//! provider. The request never selects a tenant or binding; its `tenant_id` is only
//! cross-checked. Whatever the outcome, exactly one audit record is made durable before the
//! response is written; if that fails, the resolve fails closed with `audit_unavailable` and
//! the credential is dropped (zeroized) unsent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use credbroker_providers::{
    BindingContext, CachePolicy, IssuedCredential, MintRequest, Narrowing, Provider, ProviderError,
    ProviderRegistry, SecretFields, SecretRequirement,
};

use crate::api_error::{ApiError, ErrorCode};
use crate::audit::{AuditConfig, AuditEvent, AuditLog};
use crate::cache::{CacheKey, Source, TokenCache};
use crate::config::Config;
use crate::identity::PeerIdentity;
use crate::ids::{InstanceId, TenantId};
use crate::keys::{AuditSigner, FingerprintKey, KeyError, Keyring};
use crate::metrics::{Metrics, ProviderLabel, ResolveLabels};
use crate::model::{rfc3339, Binding, Status};
use crate::seal::open_secret;
use crate::store::records::Records;
use crate::store::{SledStore, Store, StoreError};

/// Settings the broker core needs (a subset of [`Config`]).
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Upstream mint deadline.
    pub mint_timeout: Duration,
    /// Token cache bound.
    pub cache_max_entries: usize,
    /// Decoded records cached per store table (`[cache] record_entries`).
    pub record_cache_entries: usize,
    /// Audit writer settings.
    pub audit: AuditConfig,
    /// Lifetime of install `state`s, seconds.
    pub callback_state_ttl_s: u64,
    /// Circuit breaker: consecutive failures, open duration.
    pub breaker: (u32, Duration),
}

impl BrokerSettings {
    /// Settings from a config file.
    pub fn from_config(config: &Config) -> Self {
        BrokerSettings {
            trust_domain: config.trust_domain.clone(),
            mint_timeout: Duration::from_millis(config.cache.mint_timeout_ms),
            cache_max_entries: config.cache.max_entries,
            record_cache_entries: config.cache.record_entries,
            audit: AuditConfig {
                dir: config.audit_dir(),
                max_batch: config.audit.max_batch,
                checkpoint_every_records: config.audit.checkpoint_every_records,
                checkpoint_interval: Duration::from_secs(config.audit.checkpoint_interval_s.max(1)),
            },
            callback_state_ttl_s: config
                .public
                .as_ref()
                .map_or(3600, |p| p.state_ttl_s.max(1)),
            breaker: (
                config.cache.breaker_failures,
                Duration::from_millis(config.cache.breaker_open_ms),
            ),
        }
    }
}

/// Key material the broker runs with.
pub struct BrokerKeys {
    /// KEK keyring.
    pub keyring: Keyring,
    /// Audit checkpoint signer.
    pub audit_signer: AuditSigner,
    /// Token fingerprint key.
    pub fingerprint: FingerprintKey,
}

impl BrokerKeys {
    /// Loads the keys named by `config`.
    ///
    /// # Errors
    /// When a key is missing (run `credbroker init`) or malformed.
    pub fn load(config: &Config) -> Result<BrokerKeys, KeyError> {
        let keyring = match &config.keys.kek_env {
            Some(var) => {
                let value = Zeroizing::new(std::env::var(var).map_err(|_| {
                    KeyError::Invalid(format!(
                        "environment variable {var} (keys.kek_env) is not set"
                    ))
                })?);
                Keyring::parse(value.as_bytes())?
            }
            None => Keyring::load(&config.kek_file())?,
        };
        Ok(BrokerKeys {
            keyring,
            audit_signer: AuditSigner::load(&config.audit_key_file())?,
            fingerprint: FingerprintKey::load(&config.fingerprint_key_file())?,
        })
    }

    /// Creates every key file that does not exist yet; never overwrites one. Returns the
    /// files created.
    ///
    /// # Errors
    /// On I/O or CSPRNG failure.
    pub fn init(config: &Config) -> Result<Vec<std::path::PathBuf>, KeyError> {
        let mut created = Vec::new();
        if config.keys.kek_env.is_none() && !config.kek_file().exists() {
            Keyring::generate()?.save(&config.kek_file())?;
            created.push(config.kek_file());
        }
        if !config.audit_key_file().exists() {
            AuditSigner::generate(&config.audit_key_file(), &config.audit_public_key_file())?;
            created.push(config.audit_key_file());
            created.push(config.audit_public_key_file());
        }
        if !config.fingerprint_key_file().exists() {
            FingerprintKey::generate(&config.fingerprint_key_file())?;
            created.push(config.fingerprint_key_file());
        }
        Ok(created)
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

/// The broker: store, keys, audit log, cache, providers and metrics.
pub struct Broker {
    pub(crate) records: Records,
    pub(crate) keyring: Keyring,
    pub(crate) audit: AuditLog,
    fingerprint: FingerprintKey,
    pub(crate) cache: Arc<TokenCache>,
    breakers: crate::breaker::Breakers,
    pub(crate) registry: ProviderRegistry,
    /// Metrics.
    pub metrics: Metrics,
    pub(crate) admin_lock: tokio::sync::Mutex<()>,
    settings: BrokerSettings,
}

/// An HTTP answer with a body that is zeroized when dropped.
pub struct Answer {
    /// Status.
    pub status: http::StatusCode,
    /// JSON body.
    pub body: Zeroizing<Vec<u8>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveRequest {
    instance_id: String,
    #[serde(default)]
    job_id: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    min_ttl_s: Option<u64>,
    #[serde(default)]
    narrow: Option<Value>,
}

/// A validated resolve request.
#[derive(Debug, Clone)]
pub struct ParsedResolve {
    /// The instance asked for.
    pub instance: InstanceId,
    /// Caller's job id (audit only).
    pub job_id: Option<String>,
    /// Tenant the caller believes it is (cross-checked only).
    pub tenant: Option<TenantId>,
    /// Minimum remaining lifetime of a cached credential.
    pub min_ttl_s: u64,
    /// Provider-specific narrowing, validated later by the provider.
    pub narrow: Option<Value>,
}

/// Parses and validates a resolve body: strict JSON (unknown fields rejected), identifiers
/// by their grammar, `job_id` 1–128 printable ASCII, `min_ttl_s` ≤ 43200. Never panics on
/// any input (fuzzed).
///
/// # Errors
/// `bad_request` naming what is wrong, without echoing values.
pub fn parse_resolve_request(body: &[u8]) -> Result<ParsedResolve, ApiError> {
    let request: ResolveRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("invalid resolve request: {}", json_error(&e)))
    })?;
    let instance = InstanceId::parse(&request.instance_id).map_err(ApiError::bad_request)?;
    if let Some(job) = &request.job_id {
        if job.is_empty() || job.len() > 128 || !job.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(ApiError::bad_request(
                "job_id must be 1-128 printable ASCII characters without spaces",
            ));
        }
    }
    let tenant = match &request.tenant_id {
        Some(t) => Some(TenantId::parse(t).map_err(ApiError::bad_request)?),
        None => None,
    };
    let min_ttl_s = request.min_ttl_s.unwrap_or(0);
    if min_ttl_s > MAX_MIN_TTL_S {
        return Err(ApiError::bad_request(format!(
            "min_ttl_s must be at most {MAX_MIN_TTL_S}"
        )));
    }
    Ok(ParsedResolve {
        instance,
        job_id: request.job_id,
        tenant,
        min_ttl_s,
        narrow: request.narrow,
    })
}

/// Audit detail of a resolve whose upstream said the customer withdrew the trust.
const TRUST_BROKEN_DETAIL: &str = "upstream denied: binding flagged trust_broken";

/// Longest `min_ttl_s` accepted (AWS's 12 h maximum session).
pub const MAX_MIN_TTL_S: u64 = 43_200;

fn store_err(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store read failed during request");
    ApiError::new(ErrorCode::Internal, "store read failed")
}

/// An error answer: `{"error":{"code","message","audit_id","request_id"}}`.
pub fn error_answer(err: &ApiError, audit_id: Option<&str>, request_id: &str) -> Answer {
    let body = json!({
        "error": {
            "code": err.code.as_str(),
            "message": err.message,
            "audit_id": audit_id,
            "request_id": request_id,
        }
    });
    Answer {
        status: err.code.status(),
        body: Zeroizing::new(serde_json::to_vec(&body).unwrap_or_default()),
    }
}

struct Granted {
    provider: String,
    credential: Arc<IssuedCredential>,
    source: Source,
}

impl Broker {
    /// Opens the store and the audit log described by `config` and starts the broker.
    ///
    /// # Errors
    /// See [`StartError`].
    pub fn open_with_config(
        config: &Config,
        registry: ProviderRegistry,
    ) -> Result<Arc<Broker>, StartError> {
        let keys = BrokerKeys::load(config)?;
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&config.store_dir())?);
        Broker::open(store, keys, registry, BrokerSettings::from_config(config))
    }

    /// Starts the broker over an open store.
    ///
    /// # Errors
    /// When the audit log cannot be opened, or a stored secret names a KEK version the
    /// keyring does not hold (fail at start, not at the first resolve).
    pub fn open(
        store: Arc<dyn Store>,
        keys: BrokerKeys,
        registry: ProviderRegistry,
        settings: BrokerSettings,
    ) -> Result<Arc<Broker>, StartError> {
        if let Some(meta) = store.get(crate::store::Table::KeyMeta, "kek")? {
            let required = serde_json::from_slice::<Value>(&meta)
                .ok()
                .and_then(|m| m["active_version"].as_u64())
                .unwrap_or(0);
            if !keys.keyring.versions().any(|v| u64::from(v) == required) {
                return Err(StartError::Other(format!(
                    "the store was last rotated to KEK version {required}, which the keyring does not hold (stale keyring file?)"
                )));
            }
        }
        let records = Records::with_cache(store, settings.record_cache_entries);
        let held: Vec<u32> = keys.keyring.versions().collect();
        for v in records.all_secret_versions()? {
            if !held.contains(&v.kek_version) {
                return Err(StartError::Other(format!(
                    "secret {}/{} is wrapped by KEK version {}, which the keyring does not hold",
                    v.binding, v.version, v.kek_version
                )));
            }
        }
        let metrics = Metrics::new();
        let audit = AuditLog::open_observed(
            settings.audit.clone(),
            keys.audit_signer,
            Some(metrics.audit_batch_size.clone()),
        )?;
        let broker = Arc::new(Broker {
            records,
            keyring: keys.keyring,
            audit,
            fingerprint: keys.fingerprint,
            cache: TokenCache::new(settings.cache_max_entries),
            breakers: crate::breaker::Breakers::new(settings.breaker.0, settings.breaker.1),
            registry,
            metrics,
            admin_lock: tokio::sync::Mutex::new(()),
            settings,
        });
        broker
            .load_all_platform_keys()
            .map_err(|e| StartError::Other(format!("platform keys: {}", e.message)))?;
        Ok(broker)
    }

    /// Lifetime of install `state`s.
    pub fn callback_state_ttl_s(&self) -> u64 {
        self.settings.callback_state_ttl_s
    }

    /// Deadline for one upstream mint or probe.
    pub fn mint_timeout(&self) -> Duration {
        self.settings.mint_timeout
    }

    /// The SPIFFE trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.settings.trust_domain
    }

    /// The audit log.
    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// Typed store access.
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// Whether the broker can serve resolves (audit writable).
    pub fn ready(&self) -> bool {
        self.audit.healthy()
    }

    /// Refreshes gauges that are read rather than counted, then encodes all metrics.
    pub fn metrics_text(&self) -> String {
        self.metrics
            .audit_healthy
            .set(i64::from(self.audit.healthy()));
        let open = self.breakers.open_providers();
        for name in self.registry.names() {
            self.metrics
                .circuit_open
                .get_or_create(&crate::metrics::ProviderLabel {
                    provider: name.to_owned(),
                })
                .set(i64::from(open.iter().any(|p| p == name)));
        }
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

    /// Stops the audit writer after a final checkpoint.
    pub fn shutdown(&self) {
        self.audit.close();
    }

    /// Handles one `POST /v1/resolve`. `body` is the request body, or the error reading it
    /// produced (too large, timed out) so that the attempt is still audited.
    pub async fn resolve(
        self: &Arc<Self>,
        peer: Option<&PeerIdentity>,
        body: Result<Zeroizing<Vec<u8>>, ApiError>,
        request_id: &str,
    ) -> Answer {
        let started = Instant::now();
        let mut event = AuditEvent {
            kind: "resolve".into(),
            action: "resolve".into(),
            request_id: request_id.to_owned(),
            actor: peer.map_or_else(|| "unidentified".to_owned(), PeerIdentity::audit_name),
            ..Default::default()
        };
        let result = self.resolve_chain(peer, body, &mut event).await;
        event.latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let credentials_json = match &result {
            Ok(granted) => {
                let json = granted.credential.credentials.to_json_zeroizing();
                event.cached = Some(granted.source != Source::Minted);
                event.token_fingerprint = Some(self.fingerprint.fingerprint(&json));
                event.upstream_request_id = granted.credential.upstream_request_id.clone();
                Some(json)
            }
            Err(e) => {
                event.error_code = Some(e.code.as_str().to_owned());
                None
            }
        };
        let outcome = match &result {
            Ok(_) => "allowed",
            Err(e) if matches!(e.code, ErrorCode::ProviderUnavailable | ErrorCode::Internal) => {
                "failed"
            }
            Err(_) => "denied",
        };
        event.outcome = outcome.to_owned();
        let provider_label = event.provider.clone().unwrap_or_else(|| "none".into());
        // What is still needed once the event has moved into the audit log: the log line's
        // fields and whether the binding must be flagged — not a copy of the whole event.
        let trust_broken = event.detail.as_deref() == Some(TRUST_BROKEN_DETAIL);
        let flag_binding = if trust_broken {
            event.binding.clone()
        } else {
            None
        };
        let (worker, tenant, instance) = (
            event.actor.clone(),
            event.tenant.clone().unwrap_or_default(),
            event.instance.clone().unwrap_or_default(),
        );
        let receipt = self.audit.append(event).await;
        if receipt.is_ok() && trust_broken {
            self.flag_trust_broken(flag_binding.as_deref()).await;
        }
        let answer = match (receipt, result, credentials_json) {
            (Err(audit_err), _, _) => {
                tracing::error!(request_id, error = %audit_err, "resolve failed closed: audit unavailable");
                let err = ApiError::new(
                    ErrorCode::AuditUnavailable,
                    "the audit record could not be made durable; nothing was issued",
                );
                self.count(&err.code.to_string(), "failed", &provider_label);
                error_answer(&err, None, request_id)
            }
            (Ok(receipt), Ok(granted), Some(json)) => {
                tracing::info!(
                    request_id,
                    worker = %worker,
                    tenant = %tenant,
                    instance = %instance,
                    provider = %granted.provider,
                    cached = granted.source != Source::Minted,
                    audit_id = %receipt.audit_id,
                    "resolve allowed"
                );
                self.count("none", "allowed", &provider_label);
                success_answer(&granted, &json, &receipt.audit_id, request_id)
            }
            (Ok(receipt), Err(err), _) => {
                tracing::info!(
                    request_id,
                    worker = %worker,
                    tenant = %tenant,
                    instance = %instance,
                    code = %err.code,
                    audit_id = %receipt.audit_id,
                    "resolve refused"
                );
                self.count(err.code.as_str(), outcome, &provider_label);
                error_answer(&err, Some(&receipt.audit_id), request_id)
            }
            (Ok(receipt), Ok(_), None) => {
                let err = ApiError::new(ErrorCode::Internal, "credential serialization failed");
                error_answer(&err, Some(&receipt.audit_id), request_id)
            }
        };
        self.metrics
            .resolve_latency
            .observe(started.elapsed().as_secs_f64());
        answer
    }

    fn count(&self, code: &str, outcome: &str, provider: &str) {
        self.metrics
            .resolves
            .get_or_create(&ResolveLabels {
                outcome: outcome.to_owned(),
                provider: provider.to_owned(),
                code: code.to_owned(),
            })
            .inc();
    }

    async fn resolve_chain(
        self: &Arc<Self>,
        peer: Option<&PeerIdentity>,
        body: Result<Zeroizing<Vec<u8>>, ApiError>,
        event: &mut AuditEvent,
    ) -> Result<Granted, ApiError> {
        let worker_id = match peer {
            Some(PeerIdentity::Worker(w)) => w.clone(),
            Some(PeerIdentity::Operator(_)) => {
                return Err(ApiError::new(
                    ErrorCode::WorkerNotAuthorized,
                    "operator identities cannot resolve credentials",
                ))
            }
            None => {
                return Err(ApiError::new(
                    ErrorCode::WorkerNotAuthorized,
                    "client certificate names no worker identity in this trust domain",
                ))
            }
        };
        let body = body?;
        let request = parse_resolve_request(&body)?;
        event.instance = Some(request.instance.to_string());
        event.job_id = request.job_id.clone();
        let instance_id = request.instance.clone();
        let claimed_tenant = request.tenant.clone();
        let min_ttl_s = request.min_ttl_s;

        // Worker record: known and active.
        let worker = self
            .records
            .shared_worker(&worker_id)
            .map_err(store_err)?
            .filter(|w| w.status == Status::Active)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::WorkerNotAuthorized,
                    "worker is not registered or is disabled",
                )
            })?;

        // Instance, and the tenant the store (not the request) says it belongs to.
        let instance = self
            .records
            .shared_instance(&instance_id)
            .map_err(store_err)?
            .ok_or_else(|| {
                ApiError::new(ErrorCode::UnknownInstance, "no such connector instance")
            })?;
        event.tenant = Some(instance.tenant.to_string());
        if !worker.tenants.contains(&instance.tenant) {
            return Err(ApiError::new(
                ErrorCode::WorkerNotAuthorized,
                "worker is not authorized for this instance's tenant",
            ));
        }
        if !worker.connector_kinds.is_empty()
            && !worker.connector_kinds.contains(&instance.connector_kind)
        {
            return Err(ApiError::new(
                ErrorCode::WorkerNotAuthorized,
                "worker is not authorized for this connector kind",
            ));
        }
        if let Some(claimed) = &claimed_tenant {
            if *claimed != instance.tenant {
                return Err(ApiError::new(
                    ErrorCode::TenantMismatch,
                    "tenant_id does not match the instance's tenant",
                ));
            }
        }
        if instance.status != Status::Active {
            return Err(ApiError::new(
                ErrorCode::InstanceInactive,
                "connector instance is disabled",
            ));
        }
        let tenant = self
            .records
            .shared_tenant(&instance.tenant)
            .map_err(store_err)?
            .filter(|t| t.status == Status::Active)
            .ok_or_else(|| ApiError::new(ErrorCode::TenantInactive, "tenant is disabled"))?;
        event.binding = Some(instance.binding.to_string());
        let binding = self
            .records
            .shared_binding(&instance.binding)
            .map_err(store_err)?
            .filter(|b| b.tenant == tenant.id)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::BindingInactive,
                    "instance has no binding of its tenant",
                )
            })?;
        event.provider = Some(binding.provider.clone());
        if binding.status != Status::Active {
            return Err(ApiError::new(
                ErrorCode::BindingInactive,
                "binding is disabled",
            ));
        }
        let provider = self
            .registry
            .get(&binding.provider)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::BindingInactive,
                    "binding's provider is not available in this build",
                )
            })?;

        let ctx = BindingContext {
            tenant_id: binding.tenant.as_str(),
            binding_id: binding.id.as_str(),
            config: &binding.config,
            ceiling: &binding.ceiling,
        };
        let narrowing = provider.normalize_narrowing(&ctx, request.narrow.as_ref())?;
        if provider.secret_requirement() == SecretRequirement::Required
            && binding.active_secret_version.is_none()
        {
            return Err(ProviderError::SecretMissing.into());
        }
        // Built only when a mint actually runs (not on a cache hit).
        let job = || MintJob {
            broker: Arc::clone(self),
            provider: provider.clone(),
            binding: Arc::clone(&binding),
            instance: instance_id.to_string(),
            worker: worker_id.to_string(),
            narrowing: narrowing.clone(),
        };
        let note = |event: &mut AuditEvent, e: ProviderError| -> ApiError {
            event.upstream_request_id = e.upstream_request_id().map(str::to_owned);
            if matches!(
                e,
                ProviderError::Denied {
                    trust_broken: true,
                    ..
                }
            ) {
                event.detail = Some(TRUST_BROKEN_DETAIL.to_owned());
            }
            e.into()
        };
        let (credential, source) = match provider.cache_policy() {
            CachePolicy::Never => (
                Arc::new(job().run().await.map_err(|e| note(event, e))?),
                Source::Minted,
            ),
            CachePolicy::UntilExpiry => {
                let key = CacheKey {
                    binding: binding.id.to_string(),
                    secret_version: binding.active_secret_version.unwrap_or(0),
                    narrowing: narrowing.canonical.clone(),
                };
                let (cred, source) = self
                    .cache
                    .get_or_mint(key, min_ttl_s, || job().run())
                    .await
                    .map_err(|e| note(event, e))?;
                if source == Source::Cached {
                    self.metrics.cache_hits.inc();
                } else {
                    self.metrics.cache_misses.inc();
                }
                (cred, source)
            }
        };
        Ok(Granted {
            provider: binding.provider.clone(),
            credential,
            source,
        })
    }

    /// Marks a binding `trust_broken` for operators (its resolve record, already durable,
    /// says so). Failures are logged: the flag is advisory, the denial itself is audited.
    async fn flag_trust_broken(&self, binding: Option<&str>) {
        let Some(id) = binding.and_then(|b| crate::ids::BindingId::parse(b).ok()) else {
            return;
        };
        let _guard = self.admin_lock.lock().await;
        let Ok(Some(mut b)) = self.records.binding(&id) else {
            return;
        };
        if b.trust_broken {
            return;
        }
        b.trust_broken = true;
        let mut batch = crate::store::Batch::new();
        crate::store::records::BatchExt::replace(
            &mut batch,
            crate::store::Table::Bindings,
            id.as_str(),
            &b,
        );
        match self.records.store().commit(batch) {
            Ok(()) => {
                tracing::warn!(binding = %id, tenant = %b.tenant, "upstream denied: binding flagged trust_broken; the customer may have removed or changed the trust")
            }
            Err(e) => {
                tracing::error!(binding = %id, error = %e, "could not flag binding trust_broken")
            }
        }
    }

    /// Opens the active secret version of `binding`.
    pub(crate) fn open_active_secret(
        &self,
        binding: &Binding,
    ) -> Result<SecretFields, ProviderError> {
        let version = binding
            .active_secret_version
            .ok_or(ProviderError::SecretMissing)?;
        let stored = self
            .records
            .shared_secret_version(&binding.id, version)
            .map_err(|e| ProviderError::Internal(format!("store: {e}")))?
            .ok_or(ProviderError::SecretMissing)?;
        open_secret(
            &self.keyring,
            &binding.tenant,
            &binding.id,
            stored.version,
            stored.kek_version,
            &stored.wrapped_dek,
            &stored.sealed_payload,
        )
        .map_err(|e| {
            tracing::error!(binding = %binding.id, version, error = %e, "stored secret failed to open");
            ProviderError::Internal("stored secret could not be opened".into())
        })
    }
}

/// One mint, owning everything it needs so it can outlive the request that started it.
struct MintJob {
    broker: Arc<Broker>,
    provider: Arc<dyn Provider>,
    binding: Arc<Binding>,
    instance: String,
    worker: String,
    narrowing: Narrowing,
}

impl MintJob {
    async fn run(self) -> Result<IssuedCredential, ProviderError> {
        let secret = match self.provider.secret_requirement() {
            SecretRequirement::Required => Some(self.broker.open_active_secret(&self.binding)?),
            SecretRequirement::None => None,
        };
        let timeout = self.broker.settings.mint_timeout;
        let request = MintRequest {
            binding: BindingContext {
                tenant_id: self.binding.tenant.as_str(),
                binding_id: self.binding.id.as_str(),
                config: &self.binding.config,
                ceiling: &self.binding.ceiling,
            },
            instance_id: &self.instance,
            worker: &self.worker,
            narrowing: &self.narrowing,
            secret: secret.as_ref(),
            timeout,
        };
        let provider_id = self.provider.id();
        if let crate::breaker::Admission::Open(retry) = self.broker.breakers.admit(provider_id) {
            return Err(ProviderError::Unavailable {
                message: format!(
                    "{provider_id} upstream is failing; circuit open, next attempt in {} ms",
                    retry.as_millis()
                ),
                upstream_request_id: None,
            });
        }
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, self.provider.mint(&request))
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::Unavailable {
                    message: format!("mint did not finish within {} ms", timeout.as_millis()),
                    upstream_request_id: None,
                })
            });
        let unavailable = matches!(result, Err(ProviderError::Unavailable { .. }));
        if self.broker.breakers.record(provider_id, unavailable) {
            tracing::warn!(
                provider = provider_id,
                "upstream failing repeatedly: circuit opened, cold mints fail fast"
            );
        }
        if let Ok(cred) = &result {
            if let Some(subject) = &cred.subject {
                self.broker
                    .metrics
                    .mints
                    .get_or_create(&crate::metrics::SubjectLabels {
                        provider: self.provider.id().to_owned(),
                        subject: subject.clone(),
                    })
                    .inc();
            }
        }
        self.broker
            .metrics
            .mint_latency
            .get_or_create(&ProviderLabel {
                provider: self.provider.id().to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

/// Describes a serde_json error without echoing input (which could hold secrets).
pub fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    // serde_json messages name fields and types, never values, except "invalid value" /
    // "invalid type" lines which quote the value: keep only the category there.
    if text.starts_with("invalid type") || text.starts_with("invalid value") {
        format!(
            "{} at line {} column {}",
            text.split(':').next().unwrap_or("invalid"),
            e.line(),
            e.column()
        )
    } else {
        text
    }
}

fn success_answer(
    granted: &Granted,
    credentials_json: &[u8],
    audit_id: &str,
    request_id: &str,
) -> Answer {
    let cred = &granted.credential;
    let mut head = json!({
        "provider": granted.provider,
        "kind": cred.kind,
        "expires_at": cred.expires_at.map(rfc3339),
        "cached": granted.source != Source::Minted,
        "audit_id": audit_id,
        "request_id": request_id,
    });
    if !cred.details.is_null() {
        head["details"] = cred.details.clone();
    }
    let head = serde_json::to_vec(&head).unwrap_or_else(|_| b"{}".to_vec());
    // Splice `"credentials":{…}` into the object without copying the secret into a
    // non-zeroizing buffer.
    let mut body = Zeroizing::new(Vec::with_capacity(head.len() + credentials_json.len() + 20));
    body.extend_from_slice(&head[..head.len().saturating_sub(1)]);
    body.extend_from_slice(b",\"credentials\":");
    body.extend_from_slice(credentials_json);
    body.push(b'}');
    Answer {
        status: http::StatusCode::OK,
        body,
    }
}
