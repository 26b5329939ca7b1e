//! Plans for the record collections: list, show, add and remove (enable/disable and the
//! broker's trust-broken flag are in `status.rs`). Every plan carries the reads it depends on as
//! preconditions of its batch (see `store::records`): adding or removing a child bumps its
//! parents' revision, so "remove a tenant with no children" cannot race an instance add.

use serde_json::{json, Value};

use credbroker_providers::BindingContext;

use super::AdminService;
use crate::api_error::{ApiError, ErrorCode};
use crate::ids::{BindingId, InstanceId, TenantId, WorkerId};
use crate::model::{
    now_rfc3339, Binding, Instance, Operator, SecretVersionView, Status, Tenant, Worker,
};
use crate::store::records::Stored;
use crate::store::{Batch, StoreError};

use super::query::Page;
use super::{
    store_err, to_value, unknown, validate_kind, Collection, NewInstance, NewTenant, Plan,
};

/// A page of records as shown, and the id the next page starts after.
type Shown = (Vec<Value>, Option<String>);

fn values<T: serde::Serialize>(
    page: Result<(Vec<T>, Option<String>), StoreError>,
) -> Result<Shown, ApiError> {
    let (items, next) = page.map_err(store_err)?;
    Ok((items.iter().map(to_value).collect(), next))
}

/// What `GET /v1/admin/bindings/{id}` shows: the binding, its secret versions (metadata,
/// never values) and the ceiling in force.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct BindingDetail {
    /// The binding.
    #[serde(flatten)]
    pub binding: Binding,
    /// Its sealed versions: metadata only.
    pub secret_versions: Vec<SecretVersionView>,
    /// The ceiling resolves are held to, as the provider reads it.
    pub effective_ceiling: Value,
}

/// `tenant` with its revision bumped: a child was added or removed.
pub(crate) fn bumped(tenant: &Tenant) -> Tenant {
    let mut t = tenant.clone();
    t.revision = t.revision.wrapping_add(1);
    t
}

impl AdminService {
    pub(super) async fn tenant_or_404(&self, id: &str) -> Result<Stored<Tenant>, ApiError> {
        let tid = TenantId::parse(id).map_err(ApiError::bad_request)?;
        self.core
            .records
            .tenant(&tid)
            .await
            .map_err(store_err)?
            .ok_or_else(|| unknown(Collection::Tenants, id))
    }

    /// The tenant of `binding` while both are served: what a change made on their behalf
    /// (a self-rotation, an intake link's submission) acts for. A disabled binding or tenant
    /// gets nothing created or promoted for it (an operator who disabled it expects its
    /// secret to run out, not to be renewed).
    ///
    /// # Errors
    /// `binding_inactive` or `tenant_inactive`, or the tenant's read (`unknown_record`, the
    /// store's failure).
    pub(super) async fn serving_tenant(
        &self,
        binding: &Binding,
    ) -> Result<Stored<Tenant>, ApiError> {
        if binding.status == Status::Disabled {
            return Err(ApiError::new(
                ErrorCode::BindingInactive,
                "the binding is disabled: nothing is created or promoted for it",
            ));
        }
        let tenant = self.tenant_or_404(binding.tenant.as_str()).await?;
        if tenant.value.status != Status::Active {
            return Err(ApiError::new(
                ErrorCode::TenantInactive,
                "the binding's tenant is disabled: nothing is created or promoted for it",
            ));
        }
        Ok(tenant)
    }

    /// `binding`'s provider, or `binding_inactive` when this broker does not configure it.
    pub(super) fn provider_of(
        &self,
        binding: &Binding,
    ) -> Result<std::sync::Arc<dyn credbroker_providers::Provider>, ApiError> {
        self.core
            .registry
            .get(&binding.provider)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::BindingInactive,
                    "the binding's provider is not configured",
                )
            })
    }

    pub(super) async fn binding_or_404(&self, id: &str) -> Result<Stored<Binding>, ApiError> {
        let bid = BindingId::parse(id).map_err(ApiError::bad_request)?;
        self.core
            .records
            .binding(&bid)
            .await
            .map_err(store_err)?
            .ok_or_else(|| unknown(Collection::Bindings, id))
    }

    pub(super) async fn worker_or_404(&self, id: &str) -> Result<Stored<Worker>, ApiError> {
        let wid = WorkerId::parse(id).map_err(ApiError::bad_request)?;
        self.core
            .records
            .worker(&wid)
            .await
            .map_err(store_err)?
            .ok_or_else(|| unknown(Collection::Workers, id))
    }

    pub(super) async fn operator_or_404(
        &self,
        id: &str,
    ) -> Result<Stored<crate::model::Operator>, ApiError> {
        let oid = crate::ids::OperatorId::parse(id).map_err(ApiError::bad_request)?;
        self.core
            .records
            .operator(&oid)
            .await
            .map_err(store_err)?
            .ok_or_else(|| unknown(Collection::Operators, id))
    }

    /// Refuses a change that would leave no active operator (nobody could administer). The
    /// active operator it counted on is a precondition of `batch`: two replicas each
    /// removing or disabling one of the last two operators cannot both succeed (the admin
    /// lock serializes changes on one replica only), which would leave none and let every
    /// operator certificate administer again.
    pub(super) async fn keep_an_operator(
        &self,
        leaving: &str,
        batch: &mut Batch,
    ) -> Result<(), ApiError> {
        let operators = self
            .core
            .records
            .operators_as_read()
            .await
            .map_err(store_err)?;
        let Some(other) = operators
            .iter()
            .find(|o| o.status == Status::Active && o.id.as_str() != leaving)
        else {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "this is the last active operator: register another first",
            ));
        };
        batch.expect_unchanged(other);
        Ok(())
    }

    pub(super) async fn instance_or_404(&self, id: &str) -> Result<Stored<Instance>, ApiError> {
        let iid = InstanceId::parse(id).map_err(ApiError::bad_request)?;
        self.core
            .records
            .instance(&iid)
            .await
            .map_err(store_err)?
            .ok_or_else(|| unknown(Collection::Instances, id))
    }

    pub(super) async fn plan_list(&self, c: Collection, page: &Page) -> Result<Plan, ApiError> {
        let r = &self.core.records;
        let (after, limit) = (page.after.as_deref(), page.limit);
        let (items, next) = match c {
            Collection::Tenants => values(r.page::<Tenant>(after, limit).await),
            Collection::Workers => values(r.page::<Worker>(after, limit).await),
            Collection::Instances => values(r.page::<Instance>(after, limit).await),
            Collection::Bindings => values(r.page::<Binding>(after, limit).await),
            Collection::Operators => values(r.page::<Operator>(after, limit).await),
        }?;
        let key = format!("{}s", c.noun());
        let detail = match after {
            Some(a) => format!("{} records after {a}", items.len()),
            None => format!("{} records", items.len()),
        };
        Ok(Plan::new(detail, json!({ key: items, "next": next })))
    }

    pub(super) async fn plan_show(&self, c: Collection, id: &str) -> Result<Plan, ApiError> {
        // The tenant a record read belongs to, so that the read is in that tenant's audit
        // export (`audit export --tenant`) like every change of it.
        let mut tenant = None;
        let value = match c {
            Collection::Tenants => {
                let t = self.tenant_or_404(id).await?.value;
                tenant = Some(t.id.to_string());
                to_value(&t)
            }
            Collection::Workers => to_value(&self.worker_or_404(id).await?.value),
            Collection::Operators => to_value(&self.operator_or_404(id).await?.value),
            Collection::Instances => {
                let instance = self.instance_or_404(id).await?.value;
                tenant = Some(instance.tenant.to_string());
                let mut v = to_value(&instance);
                // What its webhook secret is, never the secret.
                if let Some(w) = self
                    .core
                    .records
                    .webhook_secret(id)
                    .await
                    .map_err(store_err)?
                {
                    v["webhook_secret"] = super::webhook_secrets::describe(&w.value);
                }
                v
            }
            Collection::Bindings => {
                let b = self.binding_or_404(id).await?.value;
                tenant = Some(b.tenant.to_string());
                let versions: Vec<SecretVersionView> = self
                    .core
                    .records
                    .secret_versions(&b.id)
                    .await
                    .map_err(store_err)?
                    .iter()
                    .map(|v| SecretVersionView::from(&v.value))
                    .collect();
                let ceiling = self.core.registry.get(&b.provider).map(|p| {
                    match p.bind(&b.config, &b.ceiling) {
                        Ok(bound) => p.describe_ceiling(&BindingContext {
                            tenant_id: b.tenant.as_str(),
                            binding_id: b.id.as_str(),
                            config: &b.config,
                            ceiling: &b.ceiling,
                            bound: &bound,
                        }),
                        Err(e) => json!({ "error": e.to_string() }),
                    }
                });
                to_value(&BindingDetail {
                    binding: b,
                    secret_versions: versions,
                    effective_ceiling: ceiling.unwrap_or(Value::Null),
                })
            }
        };
        let noun = c.noun();
        let mut plan = Plan::new(format!("{noun}={id}"), json!({ noun: value }));
        plan.tenant = tenant;
        Ok(plan)
    }

    pub(super) async fn plan_add_operator(
        &self,
        o: super::request::NewOperator,
    ) -> Result<Plan, ApiError> {
        let operator = crate::model::Operator {
            id: o.id,
            status: Status::Active,
            revision: 0,
            created_at: now_rfc3339(),
        };
        if self
            .core
            .records
            .operator(&operator.id)
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("operator {} already exists", operator.id),
            ));
        }
        if self
            .core
            .records
            .identifier_owner(&super::workers::retired_operator_name(operator.id.as_str()))
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "operator name {} was removed before and is retired: a certificate issued for the old operator would come back to life. Issue the new certificate for a new name",
                    operator.id
                ),
            ));
        }
        let mut plan = Plan::new(
            format!("operator={}", operator.id),
            json!({ "operator": to_value(&operator) }),
        );
        plan.batch.create(&operator);
        // Still not retired when the batch commits (on any replica).
        plan.batch
            .expect_identifier_free(&super::workers::retired_operator_name(operator.id.as_str()));
        // The first registration switches enforcement on: the caller is registered with it,
        // or they would lock themselves out with their next request.
        let first = self
            .core
            .records
            .operators()
            .await
            .map_err(store_err)?
            .is_empty();
        if let Some(by) = o.by.filter(|by| first && *by != operator.id) {
            let caller = crate::model::Operator {
                id: by,
                status: Status::Active,
                revision: 0,
                created_at: operator.created_at.clone(),
            };
            plan.detail = format!(
                "{}; first registration, caller {} registered too",
                plan.detail, caller.id
            );
            plan.batch.create(&caller);
        }
        plan.created = true;
        Ok(plan)
    }

    pub(super) async fn plan_add_tenant(&self, t: NewTenant) -> Result<Plan, ApiError> {
        if t.id.as_str() == crate::seal::RESERVED_TENANT {
            return Err(ApiError::bad_request(format!(
                "the tenant id {:?} is reserved (releases before schema 3 kept the platform keys under it)",
                crate::seal::RESERVED_TENANT
            )));
        }
        // Shown to the customer on the intake page and to reviewers: validated as owner and
        // purpose are (empty allowed), and on the record.
        let name = super::governance::text("name", &t.name, 0)?;
        let tenant = Tenant {
            id: t.id,
            name,
            status: Status::Active,
            revision: 0,
            created_at: now_rfc3339(),
        };
        if self
            .core
            .records
            .tenant(&tenant.id)
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("tenant {} already exists", tenant.id),
            ));
        }
        let mut plan = Plan::new(
            format!("tenant={} name={:?}", tenant.id, tenant.name),
            json!({ "tenant": to_value(&tenant) }),
        );
        plan.batch.create(&tenant);
        plan.tenant = Some(tenant.id.to_string());
        plan.created = true;
        Ok(plan)
    }

    pub(super) async fn plan_add_instance(&self, i: NewInstance) -> Result<Plan, ApiError> {
        validate_kind(&i.connector_kind)?;
        if self
            .core
            .records
            .instance(&i.id)
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("instance {} already exists", i.id),
            ));
        }
        let tenant = self.tenant_or_404(i.tenant.as_str()).await?;
        let binding = self.binding_or_404(i.binding.as_str()).await?;
        if binding.tenant != i.tenant {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the binding belongs to another tenant; an instance can only use its own tenant's bindings",
            ));
        }
        let instance = Instance {
            id: i.id,
            tenant: i.tenant,
            connector_kind: i.connector_kind,
            binding: i.binding,
            status: Status::Active,
            created_at: now_rfc3339(),
        };
        let mut plan = Plan::new(
            format!(
                "instance={} binding={} kind={}",
                instance.id, instance.binding, instance.connector_kind
            ),
            json!({ "instance": to_value(&instance) }),
        );
        // The tenant and the binding gain a child: neither can be removed meanwhile.
        plan.batch.replace(&tenant, &bumped(&tenant));
        let mut b = binding.value.clone();
        b.revision = b.revision.wrapping_add(1);
        plan.batch.replace(&binding, &b);
        plan.batch.create(&instance);
        // A new instance starts without a webhook secret, whatever an earlier one of the
        // same id had.
        plan.batch.expect_no_webhook_secret(instance.id.as_str());
        plan.tenant = Some(instance.tenant.to_string());
        plan.binding = Some(instance.binding.to_string());
        plan.created = true;
        Ok(plan)
    }

    pub(super) async fn plan_remove(&self, c: Collection, id: &str) -> Result<Plan, ApiError> {
        let r = &self.core.records;
        let mut plan = Plan::new(
            format!("{}={id} removed", c.noun()),
            json!({ "removed": id }),
        );
        match c {
            Collection::Tenants => {
                let t = self.tenant_or_404(id).await?;
                let mut in_use: Vec<String> = Vec::new();
                for i in r.instances().await.map_err(store_err)? {
                    if i.tenant == t.id {
                        in_use.push(format!("instance {}", i.id));
                    }
                }
                for b in r.bindings().await.map_err(store_err)? {
                    if b.tenant == t.id {
                        in_use.push(format!("binding {}", b.id));
                    }
                }
                for w in r.workers().await.map_err(store_err)? {
                    if w.tenants.contains(&t.id) {
                        in_use.push(format!("worker {}", w.id));
                    }
                }
                if !in_use.is_empty() {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!("tenant {id} is still referenced by: {}", in_use.join(", ")),
                    ));
                }
                // Its broker-generated parameters (the AWS ExternalId) retire with it and are
                // never issued again.
                let params = r.tenant_parameters_of(&t.id).await.map_err(store_err)?;
                for (key, value) in &params {
                    plan.batch.retire_tenant_parameter(key, value);
                }
                if !params.is_empty() {
                    plan.detail = format!(
                        "{}; retired {} generated parameter(s): {}",
                        plan.detail,
                        params.len(),
                        params
                            .iter()
                            .map(|(k, _)| {
                                k.rsplit_once(':')
                                    .map_or(k.as_str(), |(head, _)| head)
                                    .trim_start_matches("tenant-param:")
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                // The consents proven for it go with it: a tenant created again under its id
                // is another customer, who may not bind those identifiers by hand.
                for (key, read) in r.consent_proofs_of(&t.id).await.map_err(store_err)? {
                    plan.batch.forget_consent_proof(&key, &read);
                }
                // Fails if a child was added since the scan (it bumps the revision).
                plan.batch.remove(&t);
                plan.tenant = Some(id.to_owned());
            }
            Collection::Workers => {
                let w = self.worker_or_404(id).await?;
                plan.batch.remove(&w);
                self.retire_worker_name(id, &mut plan.batch).await?;
            }
            Collection::Operators => {
                let o = self.operator_or_404(id).await?;
                self.keep_an_operator(id, &mut plan.batch).await?;
                plan.batch.remove(&o);
                // The name is retired for good, as a worker's is.
                let name = super::workers::retired_operator_name(id);
                if r.identifier_owner(&name)
                    .await
                    .map_err(store_err)?
                    .is_none()
                {
                    plan.batch
                        .claim_identifier(&name, &super::workers::worker_name_owner());
                }
            }
            Collection::Instances => {
                let i = self.instance_or_404(id).await?;
                // The binding loses a child.
                if let Some(b) = r.binding(&i.binding).await.map_err(store_err)? {
                    let mut changed = b.value.clone();
                    changed.revision = changed.revision.wrapping_add(1);
                    plan.batch.replace(&b, &changed);
                }
                // Its webhook secret goes with it: a re-created id is another instance.
                match r.webhook_secret(id).await.map_err(store_err)? {
                    Some(w) => {
                        plan.batch.remove(&w);
                        plan.detail.push_str("; its webhook secret destroyed");
                    }
                    None => {
                        plan.batch.expect_no_webhook_secret(id);
                    }
                }
                plan.batch.remove(&i);
                plan.tenant = Some(i.tenant.to_string());
            }
            Collection::Bindings => {
                let b = self.binding_or_404(id).await?;
                let users: Vec<String> = r
                    .instances()
                    .await
                    .map_err(store_err)?
                    .iter()
                    .filter(|i| i.binding == b.id)
                    .map(|i| i.id.to_string())
                    .collect();
                if !users.is_empty() {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!(
                            "binding {id} is still used by instances: {}",
                            users.join(", ")
                        ),
                    ));
                }
                // The binding, its exclusive identifiers and every sealed version go together.
                // Its generated parameters (an OIDC subject a customer's trust may still pin)
                // keep their claim: never issued again.
                for identifier in r.identifiers_of(&b.id).await.map_err(store_err)? {
                    if !crate::store::records::outlives_binding(&identifier) {
                        plan.batch.release_identifier(&identifier);
                    }
                }
                let versions = r.secret_versions(&b.id).await.map_err(store_err)?;
                for v in &versions {
                    plan.batch.remove(v);
                }
                // Revocations still owed upstream die with the binding: the record says so.
                super::secrets::note_revocations_lost(
                    &mut plan.detail,
                    versions.iter().map(|v| &v.value),
                );
                // Its open intake links die with it (a re-created id is another binding).
                for (key, link) in r.intake_links().await.map_err(store_err)? {
                    if link.value.binding == b.id.as_str() {
                        plan.batch.remove_intake_link(&key, &link);
                    }
                }
                plan.batch.remove(&b);
                plan.tenant = Some(b.tenant.to_string());
                plan.binding = Some(id.to_owned());
                plan.invalidate_bindings.push(id.to_owned());
            }
        }
        Ok(plan)
    }
}
