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
    futures_util::FutureExt::now_or_never(verify_chain(view, &ProviderRegistry::builtin(), peer, r))
        .expect("an in-memory view never waits")
}

fn denied(view: &View, peer: Option<&PeerIdentity>, r: &ParsedResolve) -> (ErrorCode, ChainFacts) {
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
