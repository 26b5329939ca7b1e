//! Installations proven but not bound, kept for an operator: listing them and binding one
//! explicitly to a tenant.

use serde_json::{json, Value};

use super::{store_err, AdminService, NewBinding, Plan};
use crate::api_error::{ApiError, ErrorCode};
use crate::ids::TenantId;

impl AdminService {
    pub(super) async fn plan_unclaimed_list(&self) -> Result<Plan, ApiError> {
        let list: Vec<Value> = self
            .core
            .records
            .unclaimed()
            .await
            .map_err(store_err)?
            .into_iter()
            .map(|(_, u)| {
                json!({
                    "provider": u.value.provider, "identifier": u.value.identifier,
                    "config": u.value.config, "account": u.value.account,
                    "reason": u.value.reason, "seen_at": u.value.seen_at,
                })
            })
            .collect();
        Ok(Plan::new(
            format!("unclaimed={}", list.len()),
            json!({ "unclaimed": list }),
        ))
    }

    /// Binds an unclaimed installation to `tenant`, explicitly (audited): the binding is
    /// created as a binding added by hand would be, and the unclaimed record goes in the same
    /// batch. Its probe runs next (`binding probe`).
    pub(super) async fn plan_claim_unclaimed(
        &self,
        identifier: &str,
        tenant: TenantId,
        governance: crate::model::Governance,
    ) -> Result<Plan, ApiError> {
        let (key, read) = self
            .core
            .records
            .unclaimed()
            .await
            .map_err(store_err)?
            .into_iter()
            .find(|(_, u)| u.value.identifier == identifier)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownRecord,
                    "no such unclaimed installation (GET /v1/admin/unclaimed)",
                )
            })?;
        let u = read.value.clone();
        let id = super::forge::site_binding_id(&u.provider, &u.identifier)?;
        let mut plan = self
            .plan_add_binding(NewBinding {
                id,
                tenant,
                provider: u.provider.clone(),
                config: u.config.clone(),
                ceiling: Value::Null,
                owner: governance.owner,
                purpose: governance.purpose,
                max_secret_age_days: None,
            })
            .await?;
        plan.batch.remove_unclaimed(&key, &read);
        plan.detail = format!(
            "{}; claimed {} of account {} ({}) explicitly",
            plan.detail, u.identifier, u.account.login, u.account.id
        );
        Ok(plan)
    }
}
