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
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::ids::OperatorId;
    use crate::model::Worker;

    /// An in-memory view; `fail` makes every read fail like a broken backend.
    #[derive(Default)]
    struct View {
        workers: HashMap<WorkerId, Arc<Worker>>,
        instances: HashMap<InstanceId, Arc<Instance>>,
        tenants: HashMap<TenantId, Arc<Tenant>>,
        bindings: HashMap<BindingId, Arc<Binding>>,
        fail: bool,
        /// Whether instances are held in memory (a record cache), and the store reads of
        /// instances made.
        cached: bool,
        instance_reads: std::sync::atomic::AtomicUsize,
    }

    fn read<K: std::hash::Hash + Eq, V>(
        fail: bool,
        map: &HashMap<K, Arc<V>>,
        k: &K,
    ) -> Result<Option<Arc<V>>, StoreError> {
        if fail {
            return Err(StoreError::Backend("disk on fire".into()));
        }
        Ok(map.get(k).cloned())
    }

    impl ChainView for View {
        async fn worker(&self, id: &WorkerId) -> Result<Option<Arc<ServingWorker>>, StoreError> {
            Ok(read(self.fail, &self.workers, id)?
                .map(|w| Arc::new(ServingWorker::from(Worker::clone(&w)))))
        }
        async fn instance(&self, id: &InstanceId) -> Result<Option<Arc<Instance>>, StoreError> {
            if !self.instance_in_memory(id) {
                self.instance_reads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            read(self.fail, &self.instances, id)
        }
        fn instance_in_memory(&self, id: &InstanceId) -> bool {
            self.cached && self.instances.contains_key(id)
        }
        async fn instance_from_store(&self, _id: &InstanceId) -> Result<(), StoreError> {
            self.instance_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        async fn tenant(&self, id: &TenantId) -> Result<Option<Arc<Tenant>>, StoreError> {
            read(self.fail, &self.tenants, id)
        }
        async fn binding(&self, id: &BindingId) -> Result<Option<Arc<Binding>>, StoreError> {
            read(self.fail, &self.bindings, id)
        }
    }

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }
    fn wid(s: &str) -> WorkerId {
        WorkerId::parse(s).unwrap()
    }
    fn iid(s: &str) -> InstanceId {
        InstanceId::parse(s).unwrap()
    }
    fn bid(s: &str) -> BindingId {
        BindingId::parse(s).unwrap()
    }

    /// Tenants t1 and t2, worker w1 (t1 only), instance i1 → binding b1 of t1 (pasted_secret).
    fn world() -> View {
        let mut v = View::default();
        for t in ["t1", "t2"] {
            v.tenants.insert(
                tid(t),
                Arc::new(Tenant {
                    id: tid(t),
                    name: String::new(),
                    status: Status::Active,
                    revision: 0,
                    created_at: String::new(),
                }),
            );
        }
        v.workers.insert(
            wid("w1"),
            Arc::new(Worker {
                id: wid("w1"),
                tenants: vec![tid("t1")],
                connector_kinds: vec![],
                status: Status::Active,
                governance: None,
                created_at: String::new(),
            }),
        );
        for (b, t) in [("b1", "t1"), ("b2", "t2")] {
            v.bindings.insert(
                bid(b),
                Arc::new(Binding {
                    id: bid(b),
                    tenant: tid(t),
                    provider: "pasted_secret".into(),
                    config: json!({}),
                    ceiling: json!(null),
                    status: Status::Active,
                    active_secret_version: Some(1),
                    last_secret_version: 1,
                    last_tested_at: None,
                    last_probe: None,
                    trust_broken: false,
                    generation: String::new(),
                    revision: 0,
                    status_change: None,
                    drift: None,
                    trust_facts: None,
                    pending_secret_version: None,
                    governance: None,
                    max_secret_age_days: None,
                    created_at: String::new(),
                }),
            );
        }
        v.instances.insert(
            iid("i1"),
            Arc::new(Instance {
                id: iid("i1"),
                tenant: tid("t1"),
                connector_kind: "servicenow".into(),
                binding: bid("b1"),
                status: Status::Active,
                created_at: String::new(),
            }),
        );
        v
    }

    fn worker_peer(name: &str) -> PeerIdentity {
        PeerIdentity::Worker(wid(name))
    }

    fn req(instance: &str, tenant: Option<&str>) -> ParsedResolve {
        ParsedResolve {
            instance: iid(instance),
            job_id: None,
            tenant: tenant.map(tid),
            min_ttl_s: 0,
            narrow: None,
        }
    }

    fn check(
        view: &View,
        peer: Option<&PeerIdentity>,
        r: &ParsedResolve,
    ) -> Result<VerifiedChain, Denial> {
        // The view answers at once: the chain completes on its first poll.
        futures_util::FutureExt::now_or_never(verify_chain(
            view,
            &ProviderRegistry::builtin(),
            peer,
            r,
        ))
        .expect("an in-memory view never waits")
    }

    fn denied(
        view: &View,
        peer: Option<&PeerIdentity>,
        r: &ParsedResolve,
    ) -> (ErrorCode, ChainFacts) {
        match check(view, peer, r) {
            Ok(_) => panic!("chain verified but should have been refused"),
            Err(d) => (d.error.code, *d.facts),
        }
    }

    fn mutate<T: Clone>(slot: &mut Arc<T>, f: impl FnOnce(&mut T)) {
        let mut v = (**slot).clone();
        f(&mut v);
        *slot = Arc::new(v);
    }

    #[test]
    fn a_complete_chain_verifies_and_names_every_link() {
        let v = world();
        let chain = check(&v, Some(&worker_peer("w1")), &req("i1", Some("t1"))).unwrap();
        assert_eq!(chain.worker().as_str(), "w1");
        assert_eq!(chain.tenant().id.as_str(), "t1");
        assert_eq!(chain.binding().id.as_str(), "b1");
        assert_eq!(chain.provider().id(), "pasted_secret");
        assert_eq!(
            chain.facts(),
            ChainFacts {
                instance: Some(iid("i1")),
                tenant: Some(tid("t1")),
                binding: Some(bid("b1")),
                provider: Some("pasted_secret".into()),
                detail: None,
            }
        );
    }

    #[test]
    fn no_identity_or_an_operator_is_not_a_worker() {
        let v = world();
        let op = PeerIdentity::Operator(OperatorId::parse("alice").unwrap());
        for peer in [None, Some(&op)] {
            let (code, facts) = denied(&v, peer, &req("i1", None));
            assert_eq!(code, ErrorCode::WorkerNotAuthorized);
            assert_eq!(facts.tenant, None, "nothing read before the identity check");
        }
    }

    #[test]
    fn unknown_or_disabled_worker() {
        let mut v = world();
        let (code, _) = denied(&v, Some(&worker_peer("w9")), &req("i1", None));
        assert_eq!(code, ErrorCode::WorkerNotAuthorized);
        mutate(v.workers.get_mut(&wid("w1")).unwrap(), |w| {
            w.status = Status::Disabled
        });
        let (code, _) = denied(&v, Some(&worker_peer("w1")), &req("i1", None));
        assert_eq!(code, ErrorCode::WorkerNotAuthorized);
    }

    #[test]
    fn unknown_instance() {
        let v = world();
        let (code, facts) = denied(&v, Some(&worker_peer("w1")), &req("i9", None));
        assert_eq!(code, ErrorCode::UnknownInstance);
        assert_eq!(facts.instance, Some(iid("i9")));
        assert_eq!(facts.tenant, None);
    }

    #[test]
    fn a_worker_of_another_tenant_is_refused() {
        let mut v = world();
        mutate(v.workers.get_mut(&wid("w1")).unwrap(), |w| {
            w.tenants = vec![tid("t2")]
        });
        let (code, facts) = denied(&v, Some(&worker_peer("w1")), &req("i1", None));
        assert_eq!(
            code,
            ErrorCode::UnknownInstance,
            "the same answer as an instance that does not exist"
        );
        assert_eq!(
            facts.tenant,
            Some(tid("t1")),
            "the store's tenant is recorded"
        );
        assert!(facts.detail.is_some(), "the audit record says why");
    }

    /// Another tenant's instance held in memory is refused at the cost of an id the store
    /// does not hold (one store read), not at once: a worker timing the refusals cannot
    /// tell which ids other tenants use. A served one held in memory costs no read.
    #[test]
    fn another_tenants_instance_in_memory_costs_what_an_unknown_id_costs() {
        use std::sync::atomic::Ordering::Relaxed;
        let mut v = world();
        v.cached = true;
        mutate(v.workers.get_mut(&wid("w1")).unwrap(), |w| {
            w.tenants = vec![tid("t2")]
        });
        let reads = |v: &View, instance: &str| {
            let before = v.instance_reads.load(Relaxed);
            let (code, _) = denied(v, Some(&worker_peer("w1")), &req(instance, None));
            assert_eq!(code, ErrorCode::UnknownInstance);
            v.instance_reads.load(Relaxed) - before
        };
        assert_eq!(reads(&v, "nowhere"), 1);
        assert_eq!(reads(&v, "i1"), 1, "another tenant's, held in memory");
        mutate(v.workers.get_mut(&wid("w1")).unwrap(), |w| {
            w.tenants = vec![tid("t1")]
        });
        let before = v.instance_reads.load(Relaxed);
        assert!(check(&v, Some(&worker_peer("w1")), &req("i1", None)).is_ok());
        assert_eq!(v.instance_reads.load(Relaxed), before, "served from memory");
    }

    #[test]
    fn a_worker_of_thousands_of_tenants_serves_exactly_those() {
        let mut v = world();
        let many: Vec<TenantId> = (0..3000).map(|n| tid(&format!("t{n:05}"))).collect();
        mutate(v.workers.get_mut(&wid("w1")).unwrap(), |w| {
            w.tenants = many.clone()
        });
        let (code, _) = denied(&v, Some(&worker_peer("w1")), &req("i1", None));
        assert_eq!(code, ErrorCode::UnknownInstance, "t1 is not among them");
        mutate(v.workers.get_mut(&wid("w1")).unwrap(), |w| {
            w.tenants.push(tid("t1"))
        });
        assert!(check(&v, Some(&worker_peer("w1")), &req("i1", None)).is_ok());
        // The resolve path decodes the stored record straight into the set.
        let stored = serde_json::to_vec(&**v.workers.get(&wid("w1")).unwrap()).unwrap();
        let serving: ServingWorker = serde_json::from_slice(&stored).unwrap();
        assert!(many.iter().all(|t| serving.serves(t)) && serving.serves(&tid("t1")));
        assert!(!serving.serves(&tid("t2")) && !serving.serves(&tid("t03000")));
    }

    #[test]
    fn connector_kind_policy() {
        let mut v = world();
        mutate(v.workers.get_mut(&wid("w1")).unwrap(), |w| {
            w.connector_kinds = vec!["aws".into()]
        });
        let (code, _) = denied(&v, Some(&worker_peer("w1")), &req("i1", None));
        assert_eq!(code, ErrorCode::WorkerNotAuthorized);
        mutate(v.workers.get_mut(&wid("w1")).unwrap(), |w| {
            w.connector_kinds = vec!["aws".into(), "servicenow".into()]
        });
        assert!(check(&v, Some(&worker_peer("w1")), &req("i1", None)).is_ok());
    }

    #[test]
    fn the_request_never_selects_the_tenant() {
        let v = world();
        let (code, facts) = denied(&v, Some(&worker_peer("w1")), &req("i1", Some("t2")));
        assert_eq!(code, ErrorCode::TenantMismatch);
        assert_eq!(facts.tenant, Some(tid("t1")));
    }

    #[test]
    fn inactive_instance() {
        let mut v = world();
        mutate(v.instances.get_mut(&iid("i1")).unwrap(), |i| {
            i.status = Status::Disabled
        });
        let (code, _) = denied(&v, Some(&worker_peer("w1")), &req("i1", None));
        assert_eq!(code, ErrorCode::InstanceInactive);
    }

    #[test]
    fn inactive_or_missing_tenant() {
        let mut v = world();
        mutate(v.tenants.get_mut(&tid("t1")).unwrap(), |t| {
            t.status = Status::Disabled
        });
        let (code, _) = denied(&v, Some(&worker_peer("w1")), &req("i1", None));
        assert_eq!(code, ErrorCode::TenantInactive);
        v.tenants.remove(&tid("t1"));
        let (code, _) = denied(&v, Some(&worker_peer("w1")), &req("i1", None));
        assert_eq!(code, ErrorCode::TenantInactive);
    }

    #[test]
    fn a_binding_of_another_tenant_is_refused() {
        let mut v = world();
        mutate(v.instances.get_mut(&iid("i1")).unwrap(), |i| {
            i.binding = bid("b2")
        });
        let (code, facts) = denied(&v, Some(&worker_peer("w1")), &req("i1", None));
        assert_eq!(code, ErrorCode::BindingInactive);
        assert_eq!(facts.binding, Some(bid("b2")));
        assert_eq!(
            facts.provider, None,
            "another tenant's binding is not described"
        );
    }

    #[test]
    fn missing_disabled_or_pending_binding() {
        let mut v = world();
        for status in [Status::Disabled, Status::PendingActivation] {
            mutate(v.bindings.get_mut(&bid("b1")).unwrap(), |b| {
                b.status = status
            });
            let (code, facts) = denied(&v, Some(&worker_peer("w1")), &req("i1", None));
            assert_eq!(code, ErrorCode::BindingInactive);
            assert_eq!(facts.provider.as_deref(), Some("pasted_secret"));
        }
        v.bindings.remove(&bid("b1"));
        let (code, _) = denied(&v, Some(&worker_peer("w1")), &req("i1", None));
        assert_eq!(code, ErrorCode::BindingInactive);
    }

    #[test]
    fn a_provider_missing_from_this_build() {
        let mut v = world();
        mutate(v.bindings.get_mut(&bid("b1")).unwrap(), |b| {
            b.provider = "not_built_in".into()
        });
        let (code, _) = denied(&v, Some(&worker_peer("w1")), &req("i1", None));
        assert_eq!(code, ErrorCode::BindingInactive);
    }

    #[test]
    fn a_store_failure_is_internal_never_a_grant() {
        let mut v = world();
        v.fail = true;
        let (code, _) = denied(&v, Some(&worker_peer("w1")), &req("i1", None));
        assert_eq!(code, ErrorCode::Internal);
    }
}
