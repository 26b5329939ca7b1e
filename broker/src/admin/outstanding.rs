//! Outstanding onboardings (`credbroker onboard links|revoke`): the install links (GitHub,
//! Entra) and Atlassian site expectations still out, and their revocation.
//!
//! An install link's state is a bearer secret in the customer's hands: the store keeps only
//! its digest, and a listing names a link by a prefix of that digest (`il_…`), so neither the
//! answer nor the audit record of a revocation holds anything that opens it. A revoked link
//! that was never opened is forgotten: opening it is refused as any unknown state is
//! (counted, not audited). One already opened may have a customer's admin on the upstream's
//! consent page: it is kept until it expires as a tombstone that completes nothing (no
//! browser, every opening used, `revoked`), so that Entra's one-live-link-per-GUID rule still
//! counts it and a consent given through it is not taken for another tenant's link. A link
//! the customer's return used up (accepted or refused) is kept the same way, listed `used`. A
//! revoked expectation binds nothing: the site's next invocation is kept unclaimed, as any
//! unexpected site's.

use serde_json::{json, Value};

use super::{store_err, AdminService, Plan};
use crate::api_error::{ApiError, ErrorCode};
use crate::model::rfc3339_of_unix;
use crate::store::records::{outstanding_id, Outstanding};

impl AdminService {
    /// `live` while the issuer may still act, `dead` once they may not (disabled, removed,
    /// or re-enabled since): a dead one completes nothing and waits for its expiry.
    async fn standing_of(
        &self,
        creator: Option<&str>,
        revision: Option<u64>,
    ) -> Result<&'static str, ApiError> {
        Ok(match self.issuer_alive(creator, revision).await? {
            true => "live",
            false => "dead",
        })
    }

    pub(super) async fn plan_onboarding_list(&self) -> Result<Plan, ApiError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut links: Vec<Value> = Vec::new();
        let outstanding = self
            .core
            .records
            .outstanding_onboardings()
            .await
            .map_err(store_err)?;
        for (key, found) in outstanding {
            let Some(id) = outstanding_id(&key) else {
                continue;
            };
            let entry = match found {
                Outstanding::InstallLink(s) if s.value.expires_at >= now => {
                    let s = s.value;
                    let standing = if s.revoked {
                        "revoked"
                    } else if s.used {
                        "used"
                    } else {
                        self.standing_of(s.creator.as_deref(), s.creator_revision)
                            .await?
                    };
                    json!({
                        "id": id, "kind": "install_link", "provider": s.provider,
                        "tenant": s.tenant, "account": s.pin,
                        "issued_at": s.issued_at.and_then(rfc3339_of_unix),
                        "expires_at": rfc3339_of_unix(s.expires_at),
                        // A tombstone's openings were all used up by its revocation or use.
                        "opens": (!s.spent()).then_some(s.opens),
                        "creator": s.creator, "status": standing,
                        "governance": s.governance,
                    })
                }
                Outstanding::ExpectedSite(site, e) if e.value.expires_at >= now => {
                    let e = e.value;
                    let standing = self
                        .standing_of(e.creator.as_deref(), e.creator_revision)
                        .await?;
                    json!({
                        "id": id, "kind": "expected_site", "provider": e.provider,
                        "tenant": e.tenant, "site": site,
                        "issued_at": e.recorded_at,
                        "expires_at": rfc3339_of_unix(e.expires_at),
                        "creator": e.creator, "status": standing,
                        "governance": e.governance,
                    })
                }
                _ => continue,
            };
            links.push(entry);
        }
        links.sort_by(|a, b| {
            (a["tenant"].as_str(), a["id"].as_str()).cmp(&(b["tenant"].as_str(), b["id"].as_str()))
        });
        Ok(Plan::new(
            format!("onboarding links={}", links.len()),
            json!({ "onboarding_links": links }),
        ))
    }

    pub(super) async fn plan_onboarding_revoke(&self, id: &str) -> Result<Plan, ApiError> {
        let unknown = || ApiError::new(ErrorCode::UnknownRecord, "no such onboarding link");
        if !is_onboarding_link_id(id) {
            return Err(unknown());
        }
        let (key, found) = self
            .core
            .records
            .outstanding_onboardings()
            .await
            .map_err(store_err)?
            .into_iter()
            .filter(|(_, found)| !matches!(found, Outstanding::InstallLink(s) if s.value.spent()))
            .find(|(key, _)| outstanding_id(key).as_deref() == Some(id))
            .ok_or_else(unknown)?;
        let mut plan;
        match &found {
            Outstanding::InstallLink(read) => {
                let s = &read.value;
                let account = s
                    .pin
                    .as_ref()
                    .map(|p| format!(" for account {}", p.login))
                    .unwrap_or_default();
                plan = Plan::new(
                    format!(
                        "install link {id} of {}{account} for tenant {} revoked",
                        s.provider, s.tenant
                    ),
                    json!({ "revoked": id, "kind": "install_link", "tenant": s.tenant }),
                );
                if s.opens == 0 {
                    plan.batch.forget_callback_state(&key, read);
                } else {
                    plan.batch
                        .replace_callback_state(&key, read, &s.tombstone(true));
                }
                plan.tenant = Some(s.tenant.clone());
            }
            Outstanding::ExpectedSite(site, read) => {
                let e = &read.value;
                plan = Plan::new(
                    format!(
                        "site expectation {id} of {} ({site}) for tenant {} revoked",
                        e.provider, e.tenant
                    ),
                    json!({ "revoked": id, "kind": "expected_site", "tenant": e.tenant, "site": site }),
                );
                plan.batch.remove_expected_site(&key, read);
                plan.tenant = Some(e.tenant.clone());
            }
        }
        Ok(plan)
    }
}

/// Whether `id` has an onboarding link id's shape: `il_` or `es_` and 24 lower-case hex
/// digits ([`crate::store::records::outstanding_id`]). Anything else names nothing.
pub(super) fn is_onboarding_link_id(id: &str) -> bool {
    id.len() == 27
        && (id.starts_with("il_") || id.starts_with("es_"))
        && id[3..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}
