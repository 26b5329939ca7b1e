//! The start-up migration of exclusive identifiers (schema 3): every binding holds the
//! identifiers its provider derives today, claimed in their current form.

use super::{store_err, AdminService};
use crate::api_error::{ApiError, ErrorCode};
use crate::audit::AuditEvent;
use crate::model::{now_rfc3339, Status};
use crate::store::records::IdentifierOwner;

impl AdminService {
    /// Store migration (schema 3): every binding holds the exclusive identifiers its provider
    /// derives today. Identifiers changed form (AWS roles are keyed on the canonical role,
    /// not the ARN's spelling), so bindings made before hold only the old form and would not
    /// block a second binding of the same role. Missing identifiers are claimed; a binding
    /// whose identifier another binding already holds (the same role bound twice under two
    /// spellings) is disabled, since only one tenant may hold it. One audited batch; a no-op
    /// once done. Runs at start.
    ///
    /// # Errors
    /// On store failure, or when the audit record or batch cannot be written.
    pub async fn reclaim_exclusive_identifiers(&self) -> Result<usize, ApiError> {
        let r = &self.core.records;
        let mut batch = crate::store::Batch::new();
        let mut claimed: std::collections::HashMap<String, String> = Default::default();
        let mut notes = Vec::new();
        // Bindings this batch already requires unchanged (or changes), and those it changes.
        let mut guarded = std::collections::HashSet::new();
        let mut replaced = std::collections::HashSet::new();
        let mut gone = std::collections::HashSet::new();
        // One pass, a row at a time: only the bindings that hold an exclusive identifier are
        // kept (at every start, so a store of 100,000 bindings is not held in memory at once).
        let registry = self.core.registry.clone();
        // Where a probe is what proves the identifiers (AWS, GCP), only an active binding
        // passed it: one pending, or disabled (perhaps before it was ever proved), is left
        // alone here, claimed by nothing and disabled for nothing (one it holds already, from
        // its probe or from before, stays until it is removed).
        let holds_identifiers = move |b: &crate::model::Binding| {
            registry.get(&b.provider).is_some_and(|p| {
                if p.probe_proves_identifiers() && b.status != Status::Active {
                    return false;
                }
                !p.exclusive_identifiers(&b.config).is_empty()
            })
        };
        let mut bindings = r
            .bindings_where(holds_identifiers)
            .await
            .map_err(store_err)?;
        bindings.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        for b in bindings {
            let Some(provider) = self.core.registry.get(&b.provider) else {
                continue;
            };
            for identifier in provider.exclusive_identifiers(&b.config) {
                let owner = match claimed.get(&identifier) {
                    Some(o) => Some(o.clone()),
                    None => r
                        .identifier_owner(&identifier)
                        .await
                        .map_err(store_err)?
                        .map(|o| o.binding.unwrap_or_default()),
                };
                match owner {
                    Some(o) if o == b.id.as_str() => {}
                    Some(o) => {
                        if b.status != Status::Disabled {
                            let stored =
                                r.binding(&b.id).await.map_err(store_err)?.ok_or_else(|| {
                                    ApiError::new(ErrorCode::Internal, "binding vanished")
                                })?;
                            let mut changed = stored.value.clone();
                            changed.status = Status::Disabled;
                            changed.last_probe = Some(format!(
                                "disabled by the schema-3 migration: {identifier} is held by binding {o} (one role, two spellings) at {}",
                                now_rfc3339()
                            ));
                            // Changed once (a second change's precondition, after the
                            // first, would fail); it guards the binding from then on.
                            if replaced.insert(b.id.to_string()) {
                                batch.replace(&stored, &changed);
                                guarded.insert(b.id.to_string());
                            }
                        }
                        notes.push(format!(
                            "binding {} disabled ({identifier} held by {o})",
                            b.id
                        ));
                    }
                    None => {
                        // Claimed only for a binding that still exists as read: on a shared
                        // store another replica may remove it (releasing the identifier)
                        // between this pass and the commit, and a claim for a removed binding
                        // would never be released.
                        if gone.contains(b.id.as_str()) {
                            continue;
                        }
                        if !guarded.contains(b.id.as_str()) {
                            let Some(stored) = r.binding(&b.id).await.map_err(store_err)? else {
                                // Removed since the scan: none of its identifiers is claimed.
                                gone.insert(b.id.to_string());
                                continue;
                            };
                            batch.expect_unchanged(&stored);
                            guarded.insert(b.id.to_string());
                        }
                        batch.claim_identifier(
                            &identifier,
                            &IdentifierOwner {
                                tenant: b.tenant.to_string(),
                                binding: Some(b.id.to_string()),
                            },
                        );
                        claimed.insert(identifier.clone(), b.id.to_string());
                        notes.push(format!("{identifier} claimed for {}", b.id));
                    }
                }
            }
        }
        if batch.ops.is_empty() {
            return Ok(0);
        }
        // At start nothing is cached yet: no token cache to invalidate.
        let event = AuditEvent {
            kind: "admin".into(),
            action: "store.migrate".into(),
            request_id: crate::server::new_request_id(),
            actor: "credbroker:start".into(),
            outcome: "allowed".into(),
            detail: Some(format!(
                "schema 3: exclusive identifiers: {}",
                notes.join("; ")
            )),
            ..Default::default()
        };
        self.commit_audited(event, batch, &[])
            .await
            .map_err(|(e, _)| e)?;
        Ok(notes.len())
    }
}
