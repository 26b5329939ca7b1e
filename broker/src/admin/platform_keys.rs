//! Platform keys: the broker's own secrets for a provider (e.g. the GitHub App private key,
//! which can mint for every installation). Sealed in the store like tenant secrets (tenant
//! `platform`, binding = the key kind), write-only, and never returned or logged.
//!
//! Lifecycle for zero-downtime rotation: `add` stores a key as `staged`; `activate` makes it
//! the preferred signing key while other active keys stay usable as fallbacks; `retire` stops
//! a key and destroys its sealed material (metadata stays for the record).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use credbroker_providers::{PlatformKey, SecretFields};

use super::{store_err, Plan};
use crate::api_error::{ApiError, ErrorCode};
use crate::broker::Broker;
use crate::ids::{BindingId, TenantId};
use crate::model::now_rfc3339;
use crate::seal::{open_secret, seal_secret};
use crate::store::records::BatchExt;
use crate::store::Table;

/// Lifecycle of a platform key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Stored, not used yet.
    Staged,
    /// Signs (the most recently activated is preferred).
    Active,
    /// Retired: no longer used, material destroyed.
    Retired,
}

/// One stored platform key.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformKeyRecord {
    kind: String,
    version: u32,
    state: KeyState,
    fingerprint: String,
    #[serde(default)]
    kek_version: u32,
    #[serde(default)]
    wrapped_dek: String,
    #[serde(default)]
    sealed_payload: String,
    created_at: String,
    #[serde(default)]
    activated_at: Option<String>,
    #[serde(default)]
    retired_at: Option<String>,
}

impl PlatformKeyRecord {
    fn view(&self) -> Value {
        json!({
            "kind": self.kind, "version": self.version, "state": self.state,
            "fingerprint": self.fingerprint, "created_at": self.created_at,
            "activated_at": self.activated_at, "retired_at": self.retired_at,
        })
    }
}

fn key_id(kind: &str, version: u32) -> String {
    format!("{kind}/{version:010}")
}

fn platform_ids(kind: &str) -> Result<(TenantId, BindingId), ApiError> {
    Ok((
        TenantId::parse("platform").map_err(ApiError::bad_request)?,
        BindingId::parse(kind).map_err(ApiError::bad_request)?,
    ))
}

impl Broker {
    /// Drops every cached credential of `provider` and revokes each upstream. Audited with
    /// the counts (the credentials themselves never appear).
    pub(super) async fn revoke_cached(
        &self,
        provider_name: &str,
        mut event: crate::audit::AuditEvent,
    ) -> Result<super::AdminOutcome, (ApiError, Option<crate::audit::AuditReceipt>)> {
        let provider = self.registry.get(provider_name).cloned().ok_or_else(|| {
            (
                ApiError::new(ErrorCode::UnknownRecord, "no such provider configured"),
                None,
            )
        })?;
        let Some(revocation) = provider.revocation() else {
            return Err((
                ApiError::bad_request(format!(
                    "{provider_name} credentials cannot be revoked upstream"
                )),
                None,
            ));
        };
        let bindings: Vec<String> = self
            .records
            .bindings()
            .map_err(|e| (store_err(e), None))?
            .into_iter()
            .filter(|b| b.provider == provider_name)
            .map(|b| b.id.to_string())
            .collect();
        let drained = self.cache.drain_bindings(&bindings);
        let (mut revoked, mut failed) = (0, 0);
        for cred in &drained {
            match revocation.revoke(cred, self.mint_timeout()).await {
                Ok(()) => revoked += 1,
                Err(e) => {
                    failed += 1;
                    tracing::error!(provider = provider_name, error = %e, "could not revoke a cached credential");
                }
            }
        }
        event.outcome = if failed == 0 { "allowed" } else { "failed" }.into();
        event.provider = Some(provider_name.to_owned());
        event.detail = Some(format!(
            "dropped {} cached credential(s): {revoked} revoked upstream, {failed} failed",
            drained.len()
        ));
        let receipt = self.audit.append(event).await.map_err(|_| {
            (
                ApiError::new(ErrorCode::AuditUnavailable, "audit log unavailable"),
                None,
            )
        })?;
        Ok(super::AdminOutcome {
            response: json!({ "provider": provider_name, "dropped": drained.len(), "revoked": revoked, "failed": failed }),
            created: false,
            receipt,
        })
    }

    fn key_provider(
        &self,
        kind: &str,
    ) -> Result<std::sync::Arc<dyn credbroker_providers::Provider>, ApiError> {
        self.registry
            .names()
            .filter_map(|n| self.registry.get(n))
            .find(|p| p.id() == kind && p.platform_keys().is_some())
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownRecord,
                    format!("no configured provider uses platform keys of kind {kind:?}"),
                )
            })
    }

    fn key_records(&self, kind: &str) -> Result<Vec<PlatformKeyRecord>, ApiError> {
        self.records
            .store()
            .scan(Table::PlatformKeys, &format!("{kind}/"))
            .map_err(store_err)?
            .iter()
            .map(|(_, v)| {
                serde_json::from_slice(v)
                    .map_err(|_| ApiError::new(ErrorCode::Internal, "corrupt platform key record"))
            })
            .collect()
    }

    /// Opens the active keys of `kind` and hands them to its provider, preferred first.
    ///
    /// # Errors
    /// When a key cannot be opened or used.
    pub fn load_platform_keys(&self, kind: &str) -> Result<usize, ApiError> {
        let provider = self.key_provider(kind)?;
        let (tenant, binding) = platform_ids(kind)?;
        let mut active: Vec<PlatformKeyRecord> = self
            .key_records(kind)?
            .into_iter()
            .filter(|k| k.state == KeyState::Active)
            .collect();
        active.sort_by(|a, b| {
            b.activated_at
                .cmp(&a.activated_at)
                .then(b.version.cmp(&a.version))
        });
        let mut keys = Vec::with_capacity(active.len());
        for k in &active {
            let material = open_secret(
                &self.keyring,
                &tenant,
                &binding,
                k.version,
                k.kek_version,
                &k.wrapped_dek,
                &k.sealed_payload,
            )
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::Internal,
                    format!("platform key {kind}/{} cannot be opened: {e}", k.version),
                )
            })?;
            keys.push(PlatformKey {
                version: k.version,
                material,
            });
        }
        let n = keys.len();
        provider
            .platform_keys()
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "provider lost its platform keys"))?
            .install(keys)
            .map_err(ApiError::from)?;
        Ok(n)
    }

    /// Loads every provider's platform keys (at start).
    ///
    /// # Errors
    /// When a stored key cannot be opened.
    pub fn load_all_platform_keys(&self) -> Result<(), ApiError> {
        let kinds: Vec<&'static str> = self
            .registry
            .names()
            .filter_map(|n| self.registry.get(n))
            .filter(|p| p.platform_keys().is_some())
            .map(|p| p.id())
            .collect();
        for kind in kinds {
            self.load_platform_keys(kind)?;
        }
        Ok(())
    }

    pub(super) fn plan_keys_list(&self, kind: &str) -> Result<Plan, ApiError> {
        self.key_provider(kind)?;
        let keys: Vec<Value> = self
            .key_records(kind)?
            .iter()
            .map(PlatformKeyRecord::view)
            .collect();
        Ok(Plan::new(
            format!("kind={kind} keys={}", keys.len()),
            json!({ "keys": keys }),
        ))
    }

    pub(super) fn plan_keys_add(
        &self,
        kind: &str,
        material: SecretFields,
    ) -> Result<Plan, ApiError> {
        let provider = self.key_provider(kind)?;
        let fingerprint = provider
            .platform_keys()
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "provider lost its platform keys"))?
            .check(&material)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let existing = self.key_records(kind)?;
        if existing
            .iter()
            .any(|k| k.fingerprint == fingerprint && k.state != KeyState::Retired)
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("key {fingerprint} is already stored"),
            ));
        }
        let version = existing.iter().map(|k| k.version).max().unwrap_or(0) + 1;
        let (tenant, binding) = platform_ids(kind)?;
        let sealed = seal_secret(&self.keyring, &tenant, &binding, version, &material)
            .map_err(|_| ApiError::new(ErrorCode::Internal, "sealing failed"))?;
        let record = PlatformKeyRecord {
            kind: kind.to_owned(),
            version,
            state: KeyState::Staged,
            fingerprint: fingerprint.clone(),
            kek_version: sealed.kek_version,
            wrapped_dek: sealed.wrapped_dek,
            sealed_payload: sealed.sealed_payload,
            created_at: now_rfc3339(),
            activated_at: None,
            retired_at: None,
        };
        let mut plan = Plan::new(
            format!("kind={kind} version={version} fingerprint={fingerprint} state=staged"),
            json!({ "key": record.view() }),
        );
        plan.batch
            .create(Table::PlatformKeys, &key_id(kind, version), &record);
        plan.created = true;
        Ok(plan)
    }

    pub(super) fn plan_keys_state(
        &self,
        kind: &str,
        version: u32,
        activate: bool,
    ) -> Result<Plan, ApiError> {
        self.key_provider(kind)?;
        let mut record = self
            .key_records(kind)?
            .into_iter()
            .find(|k| k.version == version)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownRecord,
                    format!("no {kind} key version {version}"),
                )
            })?;
        if record.state == KeyState::Retired {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "a retired key cannot change state (its material is destroyed)",
            ));
        }
        if activate {
            record.state = KeyState::Active;
            record.activated_at = Some(now_rfc3339());
        } else {
            record.state = KeyState::Retired;
            record.retired_at = Some(now_rfc3339());
            record.wrapped_dek.clear();
            record.sealed_payload.clear();
        }
        let mut plan = Plan::new(
            format!(
                "kind={kind} version={version} fingerprint={} state={:?}",
                record.fingerprint, record.state
            ),
            json!({ "key": record.view() }),
        );
        plan.batch
            .replace(Table::PlatformKeys, &key_id(kind, version), &record);
        plan.reload_keys = Some(kind.to_owned());
        Ok(plan)
    }
}
