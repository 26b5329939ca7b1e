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
                    "ignored": u.value.ignored,
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
        // With the account the broker proved the installation belongs to: every probe
        // checks it again.
        let config = match self.core.registry.get(&u.provider) {
            Some(p) => p.with_account(
                &u.config,
                &credbroker_providers::InstalledAccount {
                    login: u.account.login.clone(),
                    id: u.account.id,
                },
            ),
            None => u.config.clone(),
        };
        let mut plan = self
            .plan_add_binding(NewBinding {
                id,
                tenant,
                provider: u.provider.clone(),
                config,
                ceiling: Value::Null,
                owner: governance.owner,
                purpose: governance.purpose,
                max_secret_age_days: None,
                tenant_created_by: None,
            })
            .await?;
        plan.batch.remove_unclaimed(&key, &read);
        plan.detail = format!(
            "{}; claimed {} of account {} ({}) explicitly",
            plan.detail, u.identifier, u.account.login, u.account.id
        );
        Ok(plan)
    }

    /// Ignores unclaimed installations (an operator who judged them none of ours, or a
    /// flood of sites filling the list): each is kept until claimed, no longer counts
    /// against [`MAX_UNCLAIMED`](crate::store::records::MAX_UNCLAIMED), and its further
    /// invocations are counted, not recorded. One batch, each record as read.
    pub(super) async fn plan_ignore_unclaimed(
        &self,
        identifiers: &[String],
    ) -> Result<Plan, ApiError> {
        let held = self.core.records.unclaimed().await.map_err(store_err)?;
        let mut plan = Plan::new(String::new(), Value::Null);
        let (mut ignored, mut already) = (Vec::new(), Vec::new());
        for identifier in identifiers {
            let (key, read) = held
                .iter()
                .find(|(_, u)| &u.value.identifier == identifier)
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::UnknownRecord,
                        format!("no unclaimed installation {identifier} (GET /v1/admin/unclaimed)"),
                    )
                })?;
            if read.value.ignored || ignored.contains(identifier) {
                already.push(identifier.clone());
                continue;
            }
            let mut u = read.value.clone();
            u.ignored = true;
            u.expires_at = None;
            plan.batch.put_unclaimed(Some((key, read)), &u);
            ignored.push(identifier.clone());
        }
        let kept = held.iter().filter(|(_, u)| u.value.ignored).count();
        let max = crate::store::records::MAX_IGNORED_UNCLAIMED;
        if kept + ignored.len() > max {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("{kept} unclaimed installations are ignored already, and at most {max} are kept: nothing was ignored. Further sites stay listed, and past the list's cap new ones are refused (counted); see runbooks/atlassian-unclaimed.md"),
            ));
        }
        // Every identifier, however many (at most a request's worth): one left out would be
        // a site whose invocations are only counted from now on, with no record of who said
        // so.
        plan.detail = format!(
            "ignored {} unclaimed installation(s){}",
            ignored.len(),
            if ignored.is_empty() {
                String::new()
            } else {
                format!(": {}", ignored.join(", "))
            },
        );
        plan.response = json!({ "ignored": ignored, "already_ignored": already });
        Ok(plan)
    }
}
