//! Workers: adding one, changing the tenants it serves in place, and retiring its name for
//! good when it is removed (workers are recognised by the name in their certificate).

use serde_json::{json, Value};

use super::records::bumped;
use super::{store_err, to_value, validate_kind, AdminService, NewWorker, Plan};
use crate::api_error::{ApiError, ErrorCode};
use crate::ids::TenantId;
use crate::model::{now_rfc3339, Status, Worker};
use crate::store::Batch;

impl AdminService {
    pub(super) async fn plan_add_worker(&self, w: NewWorker) -> Result<Plan, ApiError> {
        if w.tenants.is_empty() {
            return Err(ApiError::bad_request(
                "a worker must be allowed at least one tenant",
            ));
        }
        for k in &w.connector_kinds {
            validate_kind(k)?;
        }
        if self
            .core
            .records
            .worker(&w.id)
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("worker {} already exists", w.id),
            ));
        }
        // A worker is named by its certificate: a name that was ever removed stays retired,
        // so re-adding it cannot bring a stolen certificate of the old worker back to life.
        if self
            .core
            .records
            .identifier_owner(&retired_worker_name(w.id.as_str()))
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "worker name {} was used before and is retired: a certificate issued for the old worker would come back to life. Issue the new certificate for a new name",
                    w.id
                ),
            ));
        }
        let mut tenants = w.tenants.clone();
        tenants.sort();
        tenants.dedup();
        let mut plan = Plan::new(String::new(), Value::Null);
        for t in &tenants {
            // Each tenant the worker may serve gains a child: it cannot be removed meanwhile.
            let stored = self.tenant_or_404(t.as_str()).await?;
            plan.batch.replace(&stored, &bumped(&stored));
        }
        let worker = Worker {
            governance: Some(super::governance::validated(w.owner, w.purpose)?),
            id: w.id,
            tenants,
            connector_kinds: w.connector_kinds,
            status: Status::Active,
            created_at: now_rfc3339(),
        };
        plan.batch.create(&worker);
        plan.batch.claim_identifier(
            &retired_worker_name(worker.id.as_str()),
            &worker_name_owner(),
        );
        plan.detail = format!(
            "worker={} tenants=[{}] connector_kinds=[{}]",
            worker.id,
            worker
                .tenants
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(","),
            worker.connector_kinds.join(",")
        );
        plan.tenant = only_tenant(worker.tenants.iter());
        plan.response = json!({ "worker": to_value(&worker) });
        plan.created = true;
        Ok(plan)
    }

    /// Replaces the tenants (and, when given, the connector kinds) a worker may serve. Each
    /// tenant it gains must exist and gains a child (it cannot be removed meanwhile).
    pub(super) async fn plan_update_worker(
        &self,
        id: &str,
        u: super::request::WorkerTenants,
    ) -> Result<Plan, ApiError> {
        if u.tenants.is_empty() {
            return Err(ApiError::bad_request(
                "a worker must be allowed at least one tenant (disable or remove it instead)",
            ));
        }
        for k in u.connector_kinds.iter().flatten() {
            validate_kind(k)?;
        }
        let stored = self.worker_or_404(id).await?;
        let mut tenants = u.tenants.clone();
        tenants.sort();
        tenants.dedup();
        let mut plan = Plan::new(String::new(), Value::Null);
        for t in tenants.iter().filter(|t| !stored.value.tenants.contains(t)) {
            let tenant = self.tenant_or_404(t.as_str()).await?;
            plan.batch.replace(&tenant, &bumped(&tenant));
        }
        let mut w = stored.value.clone();
        let join = |v: &[TenantId]| v.iter().map(TenantId::as_str).collect::<Vec<_>>().join(",");
        plan.detail = format!(
            "worker={id} tenants=[{}] -> [{}]",
            join(&w.tenants),
            join(&tenants)
        );
        // The tenants the change touches: each gained or lost, and, when what the worker may
        // serve changes, every one it serves.
        let kinds_change = u
            .connector_kinds
            .as_ref()
            .is_some_and(|k| *k != w.connector_kinds);
        let touched: std::collections::BTreeSet<&TenantId> = tenants
            .iter()
            .filter(|t| kinds_change || !w.tenants.contains(t))
            .chain(w.tenants.iter().filter(|t| !tenants.contains(t)))
            .collect();
        plan.tenant = only_tenant(touched.iter().copied());
        if let Some(t) = &plan.tenant {
            // In that tenant's export: its detail names no other tenant (a customer reading
            // its own export must not learn which other customers the worker serves).
            let change = if !w.tenants.iter().any(|o| o.as_str() == t) {
                "gains"
            } else if !tenants.iter().any(|n| n.as_str() == t) {
                "loses"
            } else {
                "changes what it may serve in"
            };
            // Nor how many others it serves.
            plan.detail = format!("worker={id} {change} tenant {t}");
        }
        w.tenants = tenants;
        if let Some(kinds) = u.connector_kinds {
            plan.detail
                .push_str(&format!(" connector_kinds=[{}]", kinds.join(",")));
            w.connector_kinds = kinds;
        }
        plan.batch.replace(&stored, &w);
        plan.response = json!({ "worker": to_value(&w) });
        Ok(plan)
    }

    /// Claims a removed worker's name for good (workers added before names were retired at
    /// creation hold no claim yet).
    pub(super) async fn retire_worker_name(
        &self,
        id: &str,
        batch: &mut Batch,
    ) -> Result<(), ApiError> {
        let name = retired_worker_name(id);
        if self
            .core
            .records
            .identifier_owner(&name)
            .await
            .map_err(store_err)?
            .is_none()
        {
            batch.claim_identifier(&name, &worker_name_owner());
        }
        Ok(())
    }
}

/// The tenant of a worker change's audit record, when it touches one tenant only: the record
/// is then in that tenant's export (`audit export --tenant`). A change touching several
/// names them all in its detail and no tenant (a record has one).
fn only_tenant<'a>(mut touched: impl Iterator<Item = &'a TenantId>) -> Option<String> {
    match (touched.next(), touched.next()) {
        (Some(t), None) => Some(t.to_string()),
        _ => None,
    }
}

/// The exclusive identifier a worker name holds from its creation on, never released.
pub(super) fn retired_worker_name(id: &str) -> String {
    format!("worker-name:{id}")
}

/// The exclusive identifier a removed operator's name holds, never released: an operator is
/// named by their certificate too, so re-adding the name would bring a stolen certificate of
/// the old operator back to life (with no CRL, or with its entry lost).
pub(crate) fn retired_operator_name(id: &str) -> String {
    format!("operator-name:{id}")
}

pub(super) fn worker_name_owner() -> crate::store::records::IdentifierOwner {
    crate::store::records::IdentifierOwner {
        tenant: String::new(),
        binding: None,
    }
}
