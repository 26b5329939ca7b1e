//! Status changes of the record collections: enable and disable (a tenant's or an instance's
//! renews its bindings' generations, a binding's its own), and the broker's own
//! trust-broken flag. Like every plan, each carries the reads it depends on as
//! preconditions of its batch.

use serde_json::{json, Value};

use super::AdminService;
use crate::api_error::{ApiError, ErrorCode};
use crate::ids::BindingId;
use crate::model::Status;

use super::{store_err, to_value, Collection, Plan};

impl AdminService {
    pub(super) async fn plan_status(
        &self,
        c: Collection,
        id: &str,
        status: Status,
    ) -> Result<Plan, ApiError> {
        let word = if status == Status::Active {
            "enabled"
        } else {
            "disabled"
        };
        let mut plan = Plan::new(format!("{}={id} status={word}", c.noun()), Value::Null);
        match c {
            Collection::Tenants => {
                let stored = self.tenant_or_404(id).await?;
                let mut t = stored.value.clone();
                if t.status != status {
                    // Nothing minted for the tenant before the change is served after it,
                    // by any replica (a binding added meanwhile bumps the tenant's
                    // revision, so the commit fails rather than miss it).
                    let tenant = t.id.clone();
                    let ids: Vec<BindingId> = self
                        .core
                        .records
                        .bindings_where(move |b| b.tenant == tenant)
                        .await
                        .map_err(store_err)?
                        .into_iter()
                        .map(|b| b.id)
                        .collect();
                    for b in ids {
                        self.renew_generation(&mut plan, b.as_str()).await?;
                    }
                }
                t.status = status;
                plan.batch.replace(&stored, &t);
                plan.tenant = Some(id.to_owned());
                plan.response = json!({ "tenant": to_value(&t) });
            }
            Collection::Workers => {
                let stored = self.worker_or_404(id).await?;
                let mut w = stored.value.clone();
                w.status = status;
                plan.batch.replace(&stored, &w);
                plan.response = json!({ "worker": to_value(&w) });
            }
            Collection::Operators => {
                let stored = self.operator_or_404(id).await?;
                if status != Status::Active {
                    self.keep_an_operator(id, &mut plan.batch).await?;
                }
                let mut o = stored.value.clone();
                if o.status != status {
                    // A status that does not change cancels nothing under way.
                    o.revision = o.revision.wrapping_add(1);
                }
                o.status = status;
                plan.batch.replace(&stored, &o);
                plan.response = json!({ "operator": to_value(&o) });
            }
            Collection::Instances => {
                let stored = self.instance_or_404(id).await?;
                let mut i = stored.value.clone();
                if i.status != status {
                    // What was minted for the instance is not served after the change; a
                    // binding's tokens may be shared by its instances, so all of them go.
                    self.renew_generation(&mut plan, i.binding.as_str()).await?;
                }
                i.status = status;
                plan.batch.replace(&stored, &i);
                plan.tenant = Some(i.tenant.to_string());
                plan.response = json!({ "instance": to_value(&i) });
            }
            Collection::Bindings => {
                let stored = self.binding_or_404(id).await?;
                // Decided again on the record this change is preconditioned on: an enable
                // that was not routed to the activation probe (the binding added, or its
                // read failing, only after the routing looked) never activates a binding
                // whose provider gates activation.
                if status == Status::Active && self.gates_activation(&stored.value) {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!("binding {id} appeared or changed while this enable was under way, and its provider activates it only by a probe: enable it again to run the probe (credbroker binding enable {id})"),
                    ));
                }
                // An activation needs the binding's exclusive identifiers held by it, by
                // nobody else (one tenant each).
                if status == Status::Active && stored.value.status != Status::Active {
                    for identifier in self.claims_to_hold(&stored.value, true).await? {
                        plan.batch.claim_identifier(
                            &identifier,
                            &crate::store::records::IdentifierOwner {
                                tenant: stored.value.tenant.to_string(),
                                binding: Some(id.to_owned()),
                            },
                        );
                    }
                }
                let mut b = stored.value.clone();
                b.status = status;
                // Nothing minted before this change is served again, by any replica: the
                // token cache keys on the generation (the local cache is also emptied).
                b.generation = super::fresh_generation()?;
                b.status_change = crate::model::StatusChange::now(
                    crate::model::StatusSource::Operator,
                    format!("{word} by an operator"),
                );
                plan.batch.replace(&stored, &b);
                plan.tenant = Some(b.tenant.to_string());
                plan.binding = Some(id.to_owned());
                plan.invalidate_bindings.push(id.to_owned());
                plan.response = json!({ "binding": to_value(&b) });
            }
        }
        Ok(plan)
    }

    /// Gives binding `id` a new generation in `plan` (preconditioned on the record read
    /// here): nothing minted from it before the change is served again, by any replica, and
    /// this replica's cache forgets it once the change is committed.
    async fn renew_generation(&self, plan: &mut Plan, id: &str) -> Result<(), ApiError> {
        // Listed a moment ago: gone now means removed meanwhile (the change that removed it
        // bumped the tenant's revision too), a conflict to retry, not a missing binding.
        let stored = self.binding_or_404(id).await.map_err(|e| {
            if e.code == ErrorCode::UnknownRecord {
                ApiError::new(
                    ErrorCode::Conflict,
                    format!("binding {id} was removed while this change was under way: try again"),
                )
            } else {
                e
            }
        })?;
        let mut b = stored.value.clone();
        b.generation = super::fresh_generation()?;
        plan.batch.replace(&stored, &b);
        plan.invalidate_bindings.push(id.to_owned());
        Ok(())
    }

    pub(super) async fn plan_flag_trust_broken(
        &self,
        id: &str,
        generation: &str,
        drift: Option<crate::model::Drift>,
        observed_probe: Option<String>,
    ) -> Result<Plan, ApiError> {
        let stored = self.binding_or_404(id).await?;
        if stored.generation != generation {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the binding was re-created or its credential changed since the denied resolve",
            ));
        }
        if stored.last_tested_at != observed_probe {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the binding was probed since the denied resolve read it; the probe's result stands",
            ));
        }
        let detail = match &drift {
            Some(d) => format!(
                "binding={id} {} (resolves refused until a probe passes): {}",
                d.error_code(),
                d.detail
            ),
            None => format!("binding={id} trust_broken=true (upstream denied: the customer may have removed or changed the trust)"),
        };
        let mut plan = Plan::new(detail, Value::Null);
        plan.tenant = Some(stored.tenant.to_string());
        plan.binding = Some(id.to_owned());
        let mut b = stored.value.clone();
        let mut changed = false;
        if !b.trust_broken
            && drift
                .as_ref()
                .is_none_or(|d| d.code == crate::model::DriftCode::ConsentMissing)
        {
            b.trust_broken = true;
            changed = true;
        }
        if let Some(d) = drift {
            if b.drift.as_ref().map(|x| x.code) != Some(d.code) {
                b.drift = Some(d);
                changed = true;
                // What was minted under the consent as it was is served by no replica.
                b.generation = super::fresh_generation()?;
                plan.invalidate_bindings.push(id.to_owned());
            }
        }
        if changed {
            plan.batch.replace(&stored, &b);
        }
        plan.response = json!({ "binding": to_value(&b) });
        Ok(plan)
    }
}
