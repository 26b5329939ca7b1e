//! Governance through the admin API: owners and purposes, the credential inventory, the
//! provider catalog, and the operations on webhook secrets (`webhook_secrets`).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{store_err, to_value, AdminService, Plan};
use crate::api_error::{ApiError, ErrorCode};
use crate::governance::inventory::{self, Windows};
use crate::model::{Governance, SecretState};
use crate::routes::{AdminEndpoint, Matched};
use crate::store::records::WebhookScheme;

/// `PUT /v1/admin/{bindings|workers}/{id}/governance`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GovernanceUpdate {
    /// The team or contact that answers for it.
    pub owner: String,
    /// What it is for.
    pub purpose: String,
    /// Bindings only: the most days its secret may age, 1-3650. Absent: the binding's
    /// current policy is kept; `null`: cleared (the provider's policy applies).
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<u32>", range(min = 1, max = 3650))]
    pub max_secret_age_days: Option<Option<u32>>,
}

/// A field that is present (`null` included) as `Some`: absent stays `None` by
/// `#[serde(default)]`, so "keep" and "clear" are told apart.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

/// The most days a binding's secret may be set to age: ten years.
pub const MAX_SECRET_AGE_DAYS: u32 = 3650;

/// `days` as a rotation policy: 1 to [`MAX_SECRET_AGE_DAYS`].
pub(crate) fn secret_age_days(days: u32) -> Result<u32, ApiError> {
    if (1..=MAX_SECRET_AGE_DAYS).contains(&days) {
        Ok(days)
    } else {
        Err(ApiError::bad_request(format!(
            "max_secret_age_days must be between 1 and {MAX_SECRET_AGE_DAYS}"
        )))
    }
}

/// `POST /v1/admin/instances/{id}/webhook-secret/reveal`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevealBody {
    /// Why the secret is revealed (recorded in the audit log), 8-200 characters.
    pub reason: String,
    /// The operator asking (set by the broker, never read from the request).
    #[serde(skip)]
    #[schemars(skip)]
    pub by: String,
}

/// One governance operation.
#[derive(Debug)]
pub enum GovernanceOp {
    /// The inventory, with optional windows (seconds).
    Inventory {
        /// Dormant after.
        dormant_s: Option<u64>,
        /// Expiring within.
        expiring_s: Option<u64>,
    },
    /// Set a binding's owner, purpose and rotation override.
    SetBinding(String, GovernanceUpdate),
    /// Set a worker's owner and purpose.
    SetWorker(String, GovernanceUpdate),
    /// The provider catalog.
    Providers,
    /// One provider's entry.
    Provider(String),
    /// Generate an instance's webhook secret.
    WebhookGenerate(String, WebhookScheme),
    /// Describe it (never the secret).
    WebhookShow(String),
    /// Reveal the current secret (audited with the reason, rate-limited).
    WebhookReveal(String, RevealBody),
    /// Rotate: a new current secret, the previous valid for the overlap window.
    WebhookRotate(String),
    /// Retire: destroyed; the instance verifies nothing until a new one is generated.
    WebhookRetire(String),
}

impl GovernanceOp {
    pub(super) fn action(&self) -> String {
        match self {
            GovernanceOp::Inventory { .. } => "inventory.list",
            GovernanceOp::SetBinding(..) => "binding.set_owner",
            GovernanceOp::SetWorker(..) => "worker.set_owner",
            GovernanceOp::Providers => "provider.list",
            GovernanceOp::Provider(_) => "provider.show",
            GovernanceOp::WebhookGenerate(..) => "webhook_secret.generate",
            GovernanceOp::WebhookShow(_) => "webhook_secret.show",
            GovernanceOp::WebhookReveal(..) => "webhook_secret.reveal",
            GovernanceOp::WebhookRotate(_) => "webhook_secret.rotate",
            GovernanceOp::WebhookRetire(_) => "webhook_secret.retire",
        }
        .into()
    }

    pub(super) fn is_read(&self) -> bool {
        matches!(
            self,
            GovernanceOp::Inventory { .. }
                | GovernanceOp::Providers
                | GovernanceOp::Provider(_)
                | GovernanceOp::WebhookShow(_)
        )
    }

    /// What it names, for the record of its refusal (see `AdminOp::target`): the binding,
    /// worker, provider or instance as the request claimed it, bounded; a reveal's reason
    /// too, quoted, so that a refused reveal says why it was asked for.
    pub(super) fn target(&self) -> String {
        let id = |s: &str| s.chars().take(128).collect::<String>();
        match self {
            GovernanceOp::Inventory { .. } | GovernanceOp::Providers => String::new(),
            GovernanceOp::SetBinding(b, _) => format!("binding={}", id(b)),
            GovernanceOp::SetWorker(w, _) => format!("worker={}", id(w)),
            GovernanceOp::Provider(p) => format!("provider={}", id(p)),
            GovernanceOp::WebhookReveal(i, body) => format!(
                "instance={} reason={:?}",
                id(i),
                body.reason.chars().take(200).collect::<String>()
            ),
            GovernanceOp::WebhookGenerate(i, _)
            | GovernanceOp::WebhookShow(i)
            | GovernanceOp::WebhookRotate(i)
            | GovernanceOp::WebhookRetire(i) => format!("instance={}", id(i)),
        }
    }

    /// Names the operator on operations that need it (reveal budgets).
    pub(super) fn by(self, actor: &str) -> GovernanceOp {
        match self {
            GovernanceOp::WebhookReveal(id, mut body) => {
                actor.clone_into(&mut body.by);
                GovernanceOp::WebhookReveal(id, body)
            }
            other => other,
        }
    }
}

/// `value` trimmed, when it is `min`-200 characters and none of them unshowable.
///
/// # Errors
/// `bad_request` naming `what`.
pub(super) fn text(what: &str, value: &str, min: usize) -> Result<String, ApiError> {
    let v = value.trim();
    let n = v.chars().count();
    // Shown to reviewers on terminals, pages and CSV: nothing that moves the text around
    // it, and nothing invisible that makes two names look alike.
    if n < min || n > 200 || v.chars().any(credbroker_providers::is_unshowable) {
        return Err(ApiError::bad_request(if min == 0 {
            format!("{what} must be at most 200 printable characters")
        } else {
            format!("{what} must be {min}-200 printable characters")
        }));
    }
    Ok(v.to_owned())
}

/// Owner and purpose, validated (1-200 printable characters each).
///
/// # Errors
/// `bad_request`.
pub fn validated(owner: String, purpose: String) -> Result<Governance, ApiError> {
    Ok(Governance {
        owner: text("owner", &owner, 1)?,
        purpose: text("purpose", &purpose, 1)?,
    })
}

/// The governance a record is created with: none when both are empty (a binding the broker
/// creates from an onboarding that named no owner: flagged `unowned`).
///
/// # Errors
/// `bad_request` when only one is given or either is malformed.
pub(super) fn optional(owner: &str, purpose: &str) -> Result<Option<Governance>, ApiError> {
    if owner.is_empty() && purpose.is_empty() {
        return Ok(None);
    }
    validated(owner.to_owned(), purpose.to_owned()).map(Some)
}

/// The longest inventory window accepted, seconds (ten years).
pub const MAX_WINDOW_S: u64 = 10 * 366 * 86_400;

fn windows_query(query: &str) -> Result<(Option<u64>, Option<u64>), ApiError> {
    let [dormant, expiring] = super::query::params(
        query,
        ["dormant_s", "expiring_s"],
        "this route takes dormant_s and expiring_s",
    )?;
    let window = |name: &str, value: Option<String>| {
        value
            .map(|v| {
                v.parse::<u64>()
                    .ok()
                    .filter(|v| *v <= MAX_WINDOW_S)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "{name} must be a number of seconds up to {MAX_WINDOW_S} (ten years)"
                        ))
                    })
            })
            .transpose()
    };
    Ok((
        window("dormant_s", dormant)?,
        window("expiring_s", expiring)?,
    ))
}

fn body<T: for<'de> Deserialize<'de>>(raw: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(raw).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid request body: {}",
            crate::api_error::json_error(&e)
        ))
    })
}

/// Parses a governance route.
///
/// # Errors
/// `bad_request`, `not_found`.
pub(super) fn parse(
    endpoint: AdminEndpoint,
    method: &http::Method,
    matched: &Matched,
    query: &str,
    raw: &[u8],
) -> Result<GovernanceOp, ApiError> {
    let id = || matched.param("id").to_owned();
    Ok(match endpoint {
        AdminEndpoint::Inventory => {
            let (dormant_s, expiring_s) = windows_query(query)?;
            GovernanceOp::Inventory {
                dormant_s,
                expiring_s,
            }
        }
        AdminEndpoint::BindingGovernance => GovernanceOp::SetBinding(id(), body(raw)?),
        AdminEndpoint::WorkerGovernance => GovernanceOp::SetWorker(id(), body(raw)?),
        AdminEndpoint::Providers => GovernanceOp::Providers,
        AdminEndpoint::Provider => GovernanceOp::Provider(matched.param("provider").to_owned()),
        AdminEndpoint::WebhookSecret if *method == http::Method::GET => {
            GovernanceOp::WebhookShow(id())
        }
        AdminEndpoint::WebhookSecret if *method == http::Method::DELETE => {
            GovernanceOp::WebhookRetire(id())
        }
        AdminEndpoint::WebhookSecret => GovernanceOp::WebhookGenerate(id(), body(raw)?),
        AdminEndpoint::WebhookSecretAction => match matched.param("action") {
            "reveal" => GovernanceOp::WebhookReveal(id(), body(raw)?),
            "rotate" => GovernanceOp::WebhookRotate(id()),
            _ => {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    "no such webhook-secret action",
                ))
            }
        },
        _ => return Err(ApiError::new(ErrorCode::NotFound, "no such admin route")),
    })
}

impl AdminService {
    pub(super) async fn plan_governance(&self, op: GovernanceOp) -> Result<Plan, ApiError> {
        match op {
            GovernanceOp::Inventory {
                dormant_s,
                expiring_s,
            } => {
                let inv = self.inventory(dormant_s, expiring_s).await?;
                // Serialized straight from the rows: a JSON value tree of 100,000 rows
                // would hold several times their size in memory.
                #[derive(serde::Serialize)]
                struct Answer<'a> {
                    inventory: &'a inventory::Inventory,
                }
                let mut plan = Plan::new(format!("{} rows", inv.items.len()), Value::Null);
                plan.raw = Some(zeroize::Zeroizing::new(
                    serde_json::to_vec(&Answer { inventory: &inv })
                        .map_err(|_| ApiError::new(ErrorCode::Internal, "serialization failed"))?,
                ));
                Ok(plan)
            }
            GovernanceOp::SetBinding(id, u) => {
                let stored = self.binding_or_404(&id).await?;
                let mut b = stored.value.clone();
                b.governance = Some(validated(u.owner, u.purpose)?);
                // Absent keeps the policy: restating who owns it must not quietly drop a
                // stricter rotation policy someone set.
                match u.max_secret_age_days {
                    None => {}
                    Some(None) => b.max_secret_age_days = None,
                    Some(Some(d)) => b.max_secret_age_days = Some(secret_age_days(d)?),
                }
                let mut plan = Plan::new(
                    format!(
                        "binding={id} owner={:?} max_secret_age_days={:?}",
                        b.governance.as_ref().map(|g| g.owner.as_str()),
                        b.max_secret_age_days
                    ),
                    json!({ "binding": to_value(&b) }),
                );
                plan.batch.replace(&stored, &b);
                plan.tenant = Some(b.tenant.to_string());
                plan.binding = Some(id);
                Ok(plan)
            }
            GovernanceOp::SetWorker(id, u) => {
                if u.max_secret_age_days.is_some() {
                    return Err(ApiError::bad_request(
                        "workers hold no secret: max_secret_age_days is for bindings",
                    ));
                }
                let stored = self.worker_or_404(&id).await?;
                let mut w = stored.value.clone();
                w.governance = Some(validated(u.owner, u.purpose)?);
                let mut plan = Plan::new(
                    format!(
                        "worker={id} owner={:?}",
                        w.governance.as_ref().map(|g| g.owner.as_str())
                    ),
                    json!({ "worker": to_value(&w) }),
                );
                plan.batch.replace(&stored, &w);
                Ok(plan)
            }
            GovernanceOp::Providers => {
                let list: Vec<Value> = credbroker_providers::CATALOG
                    .iter()
                    .map(|d| self.catalog_entry(d))
                    .collect();
                Ok(Plan::new(
                    format!("{} providers", list.len()),
                    json!({ "providers": list }),
                ))
            }
            GovernanceOp::Provider(id) => {
                let d = credbroker_providers::descriptor(&id).ok_or_else(|| {
                    ApiError::new(ErrorCode::UnknownRecord, "no such provider in this build")
                })?;
                Ok(Plan::new(
                    format!("provider={id}"),
                    json!({ "provider": self.catalog_entry(d) }),
                ))
            }
            GovernanceOp::WebhookGenerate(id, scheme) => {
                self.plan_webhook_generate(&id, scheme).await
            }
            GovernanceOp::WebhookShow(id) => self.plan_webhook_show(&id).await,
            GovernanceOp::WebhookReveal(id, body) => self.plan_webhook_reveal(&id, body).await,
            GovernanceOp::WebhookRotate(id) => self.plan_webhook_rotate(&id).await,
            GovernanceOp::WebhookRetire(id) => self.plan_webhook_retire(&id).await,
        }
    }

    fn catalog_entry(&self, d: &credbroker_providers::ProviderDescriptor) -> Value {
        let mut v = crate::catalog::entry(d);
        v["configured"] = json!(self.core.registry.get(d.id).is_some());
        v
    }

    /// The inventory now, under the configured windows unless given. Also refreshes the
    /// flag gauges.
    ///
    /// # Errors
    /// On store failure.
    pub async fn inventory(
        &self,
        dormant_s: Option<u64>,
        expiring_s: Option<u64>,
    ) -> Result<inventory::Inventory, ApiError> {
        let r = &self.core.records;
        let bindings = r.bindings().await.map_err(store_err)?;
        let workers = r.workers().await.map_err(store_err)?;
        let facts = self.inventory_facts().await?;
        let windows = self.inventory_windows(dormant_s, expiring_s);
        let inv = facts
            .assessor(windows, time::OffsetDateTime::now_utc())
            .inventory(&bindings, &workers);
        // The gauges follow the configured windows only.
        if dormant_s.is_none() && expiring_s.is_none() {
            self.set_flag_gauges(&inv.counts);
        }
        Ok(inv)
    }

    /// Recomputes the inventory's flag gauges under the configured windows: the same flags
    /// as [`AdminService::inventory`], counted a binding at a time (no rows are built, and a
    /// large store's bindings are not held in memory at once; the facts they are judged by —
    /// every active version's metadata and every last use — still are).
    ///
    /// # Errors
    /// On store failure.
    pub async fn refresh_flag_gauges(&self) -> Result<(), ApiError> {
        let r = &self.core.records;
        let windows = self.inventory_windows(None, None);
        let workers = r.workers().await.map_err(store_err)?;
        let facts = Arc::new(self.inventory_facts().await?);
        let now = time::OffsetDateTime::now_utc();
        let counts = Arc::new(std::sync::Mutex::new(inventory::no_counts()));
        let (pass_facts, pass_counts) = (Arc::clone(&facts), Arc::clone(&counts));
        r.each_binding(move |b| {
            let mut counts = pass_counts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            pass_facts
                .assessor(windows, now)
                .count_binding(&b, &mut counts);
            Ok(())
        })
        .await
        .map_err(store_err)?;
        let mut counts = std::mem::take(
            &mut *counts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let assessor = facts.assessor(windows, now);
        for w in &workers {
            assessor.count_worker(w, &mut counts);
        }
        self.set_flag_gauges(&counts);
        Ok(())
    }

    /// What the inventory judges rows by: the active secret versions, every replica's last
    /// uses with this broker's unflushed ones, each provider's rotation policy.
    async fn inventory_facts(&self) -> Result<InventoryFacts, ApiError> {
        let r = &self.core.records;
        let settings = self.core.governance.inventory();
        let mut active = HashMap::new();
        for v in r
            .secret_metas_where(|v| v.state == SecretState::Active)
            .await
            .map_err(store_err)?
        {
            active.insert(v.binding.clone(), v);
        }
        // Each binding's oldest replaced credential whose upstream revocation is still owed
        // (since it was superseded).
        let mut owed: HashMap<String, time::OffsetDateTime> = HashMap::new();
        for v in r
            .secret_metas_where(|v| v.owes_revocation())
            .await
            .map_err(store_err)?
        {
            let since = v
                .superseded_at
                .as_deref()
                .and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let slot = owed.entry(v.binding.clone()).or_insert(since);
            *slot = (*slot).min(since);
        }
        let mut uses = r.last_uses().await.map_err(store_err)?;
        for (k, at) in self.core.governance.seen() {
            let slot = uses.entry(k).or_insert(at);
            *slot = (*slot).max(at);
        }
        // Each provider's declared policy, overridden by the config.
        let mut policy: std::collections::BTreeMap<String, u32> = credbroker_providers::CATALOG
            .iter()
            .filter_map(|d| Some((d.id.to_owned(), d.catalog.max_secret_age_days?)))
            .collect();
        policy.extend(settings.max_secret_age_days.clone());
        Ok(InventoryFacts {
            active,
            owed,
            uses,
            policy,
        })
    }

    /// The windows given, else the configured ones.
    fn inventory_windows(&self, dormant_s: Option<u64>, expiring_s: Option<u64>) -> Windows {
        let settings = self.core.governance.inventory();
        Windows {
            dormant_s: dormant_s.unwrap_or(settings.dormant_after_s),
            expiring_s: expiring_s.unwrap_or(settings.expiring_within_s),
        }
    }

    fn set_flag_gauges(&self, counts: &inventory::Counts) {
        for (flag, kinds) in counts {
            for (kind, n) in kinds {
                self.core
                    .metrics
                    .inventory_flagged
                    .get_or_create(&crate::metrics::FlagLabels {
                        flag: (*flag).to_owned(),
                        kind: (*kind).to_owned(),
                    })
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
            }
        }
        self.core
            .metrics
            .inventory_computed
            .set(time::OffsetDateTime::now_utc().unix_timestamp());
    }

    /// Writes this broker's unwritten last uses (periodically and at shutdown).
    pub async fn flush_last_use(&self) -> usize {
        let replica = self.core.replica.id().unwrap_or(0);
        match self
            .core
            .governance
            .flush(&self.core.records, replica)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "could not write last-use times; kept for the next flush");
                0
            }
        }
    }
}

/// The inputs of an inventory besides its rows (see [`AdminService::inventory`]).
struct InventoryFacts {
    active: HashMap<String, crate::store::records::SecretMeta>,
    owed: HashMap<String, time::OffsetDateTime>,
    uses: HashMap<(crate::store::records::LastUseKind, String), i64>,
    policy: std::collections::BTreeMap<String, u32>,
}

impl InventoryFacts {
    fn assessor(&self, windows: Windows, now: time::OffsetDateTime) -> inventory::Assessor<'_> {
        inventory::Assessor::new(
            &self.active,
            &self.owed,
            &self.uses,
            &self.policy,
            windows,
            now,
        )
    }
}
