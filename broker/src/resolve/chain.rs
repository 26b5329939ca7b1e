//! The verified tenant chain: the core invariant, as one pure function.
//!
//! ```text
//! client cert (worker identity) → worker record (active, allowed tenant and connector kind)
//!   → instance (active) → tenant (active) → binding of that tenant (active) → provider
//! ```
//!
//! Every link is read from the store view on every call; the request never selects a tenant
//! or binding, its `tenant_id` is only cross-checked. [`verify_chain`] is the only code that
//! can build a [`VerifiedChain`] (its fields are private and it has a private proof field, the
//! way rustls' `ServerCertVerified` works), and minting takes a `VerifiedChain`, so no path
//! that skips a link compiles.

use std::sync::Arc;

use credbroker_providers::{Provider, ProviderRegistry};

use crate::api_error::{ApiError, ErrorCode};
use crate::identity::PeerIdentity;
use crate::ids::{BindingId, InstanceId, TenantId, WorkerId};
use crate::model::{Binding, Instance, ServingWorker, Status, Tenant};
use crate::store::records::Records;
use crate::store::StoreError;

use super::request::ParsedResolve;

/// The read view of the store the chain is checked against.
// Used with concrete views only (no `dyn`), so the futures' Send-ness is known where they
// are awaited.
#[allow(async_fn_in_trait)]
pub trait ChainView {
    /// The worker record.
    ///
    /// # Errors
    /// On a store read failure.
    async fn worker(&self, id: &WorkerId) -> Result<Option<Arc<ServingWorker>>, StoreError>;
    /// The instance record.
    ///
    /// # Errors
    /// On a store read failure.
    async fn instance(&self, id: &InstanceId) -> Result<Option<Arc<Instance>>, StoreError>;
    /// The tenant record.
    ///
    /// # Errors
    /// On a store read failure.
    async fn tenant(&self, id: &TenantId) -> Result<Option<Arc<Tenant>>, StoreError>;
    /// The binding record.
    ///
    /// # Errors
    /// On a store read failure.
    async fn binding(&self, id: &BindingId) -> Result<Option<Arc<Binding>>, StoreError>;
    /// Whether the instance record is held in memory (a lookup would not read the store).
    fn instance_in_memory(&self, _id: &InstanceId) -> bool {
        false
    }
    /// Reads the instance record from the store, past any record held in memory, and drops
    /// it: what a lookup of an id the store does not hold costs.
    ///
    /// # Errors
    /// On a store read failure.
    async fn instance_from_store(&self, _id: &InstanceId) -> Result<(), StoreError> {
        Ok(())
    }
}

impl ChainView for Records {
    async fn worker(&self, id: &WorkerId) -> Result<Option<Arc<ServingWorker>>, StoreError> {
        self.shared_worker(id).await
    }
    async fn instance(&self, id: &InstanceId) -> Result<Option<Arc<Instance>>, StoreError> {
        self.shared_instance(id).await
    }
    async fn tenant(&self, id: &TenantId) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.shared_tenant(id).await
    }
    async fn binding(&self, id: &BindingId) -> Result<Option<Arc<Binding>>, StoreError> {
        self.shared_binding(id).await
    }
    fn instance_in_memory(&self, id: &InstanceId) -> bool {
        self.instance_is_cached(id)
    }
    async fn instance_from_store(&self, id: &InstanceId) -> Result<(), StoreError> {
        self.read_instance_past_cache(id).await
    }
}

/// What was established about a resolve before it was granted or refused: the audit record
/// names these (a refusal names as much of the chain as had been read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainFacts {
    /// The instance the request named (once the body parsed).
    pub instance: Option<InstanceId>,
    /// The instance's tenant according to the store.
    pub tenant: Option<TenantId>,
    /// The instance's binding.
    pub binding: Option<BindingId>,
    /// The binding's provider name.
    pub provider: Option<String>,
    /// What the audit record says beyond the answer, when the answer hides it.
    pub detail: Option<&'static str>,
}

/// A refused chain: the error answered and the facts established before the refusal.
#[derive(Debug)]
pub struct Denial {
    /// The error (its code is one of the closed resolve set).
    pub error: ApiError,
    /// What the audit record names (boxed: refusals stay small on the happy path).
    pub facts: Box<ChainFacts>,
}

/// Proof that every link of the tenant chain was checked. Only [`verify_chain`] makes one.
pub struct VerifiedChain {
    worker: WorkerId,
    instance: Arc<Instance>,
    tenant: Arc<Tenant>,
    binding: Arc<Binding>,
    provider: Arc<dyn Provider>,
    _proof: ChainProof,
}

/// Private marker: a `VerifiedChain` cannot be built outside this module.
struct ChainProof;

impl VerifiedChain {
    /// The verified worker.
    pub fn worker(&self) -> &WorkerId {
        &self.worker
    }
    /// The active instance.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }
    /// The active tenant the store derives (never the request's).
    pub fn tenant(&self) -> &Arc<Tenant> {
        &self.tenant
    }
    /// The tenant's active binding.
    pub fn binding(&self) -> &Arc<Binding> {
        &self.binding
    }
    /// The binding's provider.
    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.provider
    }
    /// The facts an audit record names.
    pub fn facts(&self) -> ChainFacts {
        ChainFacts {
            instance: Some(self.instance.id.clone()),
            tenant: Some(self.tenant.id.clone()),
            binding: Some(self.binding.id.clone()),
            provider: Some(self.binding.provider.clone()),
            detail: None,
        }
    }
}

/// The worker a peer identity names, or `worker_not_authorized`.
///
/// # Errors
/// An operator identity or no identity.
pub fn worker_of(peer: Option<&PeerIdentity>) -> Result<&WorkerId, ApiError> {
    match peer {
        Some(PeerIdentity::Worker(w)) => Ok(w),
        Some(PeerIdentity::Operator(_) | PeerIdentity::Metrics(_)) => Err(ApiError::new(
            ErrorCode::WorkerNotAuthorized,
            "only worker identities resolve credentials",
        )),
        None => Err(ApiError::new(
            ErrorCode::WorkerNotAuthorized,
            "client certificate names no worker identity in this trust domain",
        )),
    }
}

fn unknown_instance() -> ApiError {
    ApiError::new(ErrorCode::UnknownInstance, "no such connector instance")
}

fn store_failure(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store read failed during resolve");
    ApiError::new(ErrorCode::Internal, "store read failed")
}

/// Checks every link of the tenant chain for `request` made by `peer`, reading each record
/// from `view` and the provider from `registry`.
///
/// # Errors
/// A [`Denial`] naming the first broken link: `worker_not_authorized` (no worker identity,
/// unknown or disabled worker, tenant or connector kind not allowed), `unknown_instance`,
/// `tenant_mismatch` (the request's `tenant_id` is not the store's), `instance_inactive`,
/// `tenant_inactive`, `binding_inactive` (missing, another tenant's, disabled, pending, or its
/// provider not in this build), `internal` on a store read failure.
pub async fn verify_chain(
    view: &impl ChainView,
    registry: &ProviderRegistry,
    peer: Option<&PeerIdentity>,
    request: &ParsedResolve,
) -> Result<VerifiedChain, Denial> {
    let mut facts = ChainFacts {
        instance: Some(request.instance.clone()),
        ..ChainFacts::default()
    };
    match check_links(view, registry, peer, request, &mut facts).await {
        Ok(chain) => Ok(chain),
        Err(error) => Err(Denial {
            error,
            facts: Box::new(facts),
        }),
    }
}

/// The links every worker request starts with (resolve, webhook verification): the worker
/// is registered and active, the instance exists and belongs to a tenant the worker serves,
/// and the worker may serve its connector kind. Returns the instance.
///
/// # Errors
/// `worker_not_authorized`, `unknown_instance` (also for another tenant's instance, so a
/// worker cannot learn which ids other tenants use; `facts` keeps the truth), `internal`.
pub async fn worker_and_instance(
    view: &impl ChainView,
    worker_id: &WorkerId,
    instance_id: &InstanceId,
    facts: &mut ChainFacts,
) -> Result<Arc<Instance>, ApiError> {
    // Worker record: known and active.
    let worker = view
        .worker(worker_id)
        .await
        .map_err(store_failure)?
        .filter(|w| w.status == Status::Active)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::WorkerNotAuthorized,
                "worker is not registered or is disabled",
            )
        })?;
    // Instance, and the tenant the store (not the request) says it belongs to.
    let in_memory = view.instance_in_memory(instance_id);
    let instance = view
        .instance(instance_id)
        .await
        .map_err(store_failure)?
        .ok_or_else(unknown_instance)?;
    facts.tenant = Some(instance.tenant.clone());
    if !worker.serves(&instance.tenant) {
        facts.detail = Some("the instance belongs to a tenant the worker may not serve");
        // An id the store does not hold costs a store read at every try; another tenant's
        // instance, once read, is held in memory and answered at once. The same refusal
        // then came back faster, and a worker timing it learned which ids other tenants use
        // (which customers exist). It costs the same store read here.
        if in_memory {
            view.instance_from_store(instance_id)
                .await
                .map_err(store_failure)?;
        }
        return Err(unknown_instance());
    }
    if !worker.connector_kinds.is_empty()
        && !worker.connector_kinds.contains(&instance.connector_kind)
    {
        return Err(ApiError::new(
            ErrorCode::WorkerNotAuthorized,
            "worker is not authorized for this connector kind",
        ));
    }
    Ok(instance)
}

async fn check_links(
    view: &impl ChainView,
    registry: &ProviderRegistry,
    peer: Option<&PeerIdentity>,
    request: &ParsedResolve,
    facts: &mut ChainFacts,
) -> Result<VerifiedChain, ApiError> {
    let worker_id = worker_of(peer)?;
    let instance = worker_and_instance(view, worker_id, &request.instance, facts).await?;
    if let Some(claimed) = &request.tenant {
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
    let tenant = view
        .tenant(&instance.tenant)
        .await
        .map_err(store_failure)?
        .filter(|t| t.status == Status::Active)
        .ok_or_else(|| ApiError::new(ErrorCode::TenantInactive, "tenant is disabled"))?;
    facts.binding = Some(instance.binding.clone());
    // The binding must belong to the tenant the store derived: an instance record pointing
    // at another tenant's binding is refused, whatever its status.
    let binding = view
        .binding(&instance.binding)
        .await
        .map_err(store_failure)?
        .filter(|b| b.tenant == tenant.id)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::BindingInactive,
                "instance has no binding of its tenant",
            )
        })?;
    facts.provider = Some(binding.provider.clone());
    if binding.status != Status::Active {
        return Err(ApiError::new(
            ErrorCode::BindingInactive,
            "binding is disabled",
        ));
    }
    // Consent drift stands until a probe passes (after the customer consents again): no
    // cached credential either.
    if let Some(d) = &binding.drift {
        return Err(ApiError::new(d.error_code(), d.detail.clone()));
    }
    let provider = registry.get(&binding.provider).cloned().ok_or_else(|| {
        ApiError::new(
            ErrorCode::BindingInactive,
            "binding's provider is not available in this build",
        )
    })?;
    Ok(VerifiedChain {
        worker: worker_id.clone(),
        instance,
        tenant,
        binding,
        provider,
        _proof: ChainProof,
    })
}

#[cfg(test)]
mod tests;
