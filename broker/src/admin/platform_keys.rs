//! Platform keys: the broker's own secrets for a provider (e.g. the GitHub App private key,
//! which can mint for every installation). Sealed in the store like tenant secrets (tenant
//! `platform`, binding = the key kind), write-only, and never returned or logged.
//!
//! Lifecycle for zero-downtime rotation: `add` stores a key as `staged`; `activate` makes it
//! the preferred signing key while other active keys stay usable as fallbacks; `retire` stops
//! a key and destroys its sealed material (metadata stays for the record). The last active key
//! of a kind its provider cannot work without (the GitHub App private key) is not retired:
//! another must be activated first, as with the last active operator.

use serde_json::{json, Value};

use credbroker_providers::{PlatformKey, SecretFields};

use super::AdminService;
use super::{store_err, Plan};
use crate::api_error::{ApiError, ErrorCode};
use crate::ids::{BindingId, TenantId};
use crate::model::{now_rfc3339, KeyState, PlatformKeyRecord, SealedAs};
use crate::seal::{open, seal, SealContext};
use crate::store::records::Stored;

/// Whether `fingerprint` is a client secret's unkeyed hash, as releases before keyed
/// fingerprints stored it (`LABEL:sha256:` and 32 hex digits, see
/// `credbroker_providers::plain_sha256_prefix`): whoever reads it can test a guessed or
/// leaked secret against it offline, so it is kept for comparison only, never shown.
fn unkeyed_secret_hash(fingerprint: &str) -> bool {
    let mut parts = fingerprint.split(':');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(_), Some("sha256"), Some(hex), None)
            if hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    )
}

/// A key's fingerprint as it may be shown or put on the record: `None` for an unkeyed hash.
fn shown_fingerprint(k: &PlatformKeyRecord) -> Option<&str> {
    (!unkeyed_secret_hash(&k.fingerprint)).then_some(k.fingerprint.as_str())
}

fn view(k: &PlatformKeyRecord) -> Value {
    // The KEK version wrapping the key's data key; none once retired (its material is
    // destroyed, so no KEK version is needed to keep it: the KEK rotation runbook's check).
    let kek_version = (!k.wrapped_dek.is_empty()).then_some(k.kek_version);
    let fingerprint = shown_fingerprint(k);
    json!({
        "kind": k.kind, "version": k.version, "state": k.state,
        "fingerprint": fingerprint, "created_at": k.created_at,
        "activated_at": k.activated_at, "retired_at": k.retired_at,
        "kek_version": kek_version,
    })
}

/// The (tenant, binding) pair platform keys were sealed under before they had their own
/// domain; only the start-up migration uses it.
fn legacy_ids(kind: &str) -> Result<(TenantId, BindingId), ApiError> {
    Ok((
        TenantId::parse("platform").map_err(ApiError::bad_request)?,
        BindingId::parse(kind).map_err(ApiError::bad_request)?,
    ))
}

fn key_context(k: &PlatformKeyRecord) -> SealContext<'_> {
    SealContext::PlatformKey {
        kind: &k.kind,
        version: k.version,
    }
}

impl AdminService {
    /// Drops every cached credential of `provider` and revokes each upstream. Audited with
    /// the counts (the credentials themselves never appear).
    pub(super) async fn revoke_cached(
        &self,
        provider_name: &str,
        mut event: crate::audit::AuditEvent,
    ) -> Result<super::AdminOutcome, (ApiError, Option<crate::audit::AuditReceipt>)> {
        let provider = self
            .core
            .registry
            .get(provider_name)
            .cloned()
            .ok_or_else(|| {
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
        // One revocation at a time (two would revoke one token twice), and a second one is
        // told so rather than queued behind a first that may take long.
        let Some(_revoking) = self.core.cache.revoking() else {
            return Err((
                ApiError::new(
                    ErrorCode::Conflict,
                    "a revocation of cached credentials is running on this replica: run it again once it has ended",
                ),
                None,
            ));
        };
        let bindings: Vec<String> = self
            .core
            .records
            .bindings()
            .await
            .map_err(|e| (store_err(e), None))?
            .into_iter()
            .filter(|b| b.provider == provider_name)
            .map(|b| b.id.to_string())
            .collect();
        // The record comes before the effect: the intent is audited (through the one
        // pipeline, so on the operator's record as admitted) before anything is dropped; a
        // log that cannot take it stops the revocation here.
        event.provider = Some(provider_name.to_owned());
        let mut intent = event.clone();
        intent.outcome = "allowed".into();
        intent.detail = Some(format!(
            "dropping the cached credentials of {} binding(s) and revoking them upstream, with every other credential of the provider this replica minted that is still valid (bindings removed since included)",
            bindings.len()
        ));
        let intended = self
            .commit_audited(intent, crate::store::Batch::new(), &[])
            .await?;
        // A mint in flight is drained too: its token still answers the resolves waiting on
        // it, and is revoked with the cached ones once it lands (the mint is bounded by the
        // mint deadline, so it lands within it).
        let drained = self.core.cache.drain_bindings(&bindings);
        let mark = self.core.cache.issued_mark();
        let (mut drained, unlanded) = drained
            .landed(self.core.mint_timeout() + std::time::Duration::from_secs(2))
            .await;
        // And every token handed out before the drain that the cache no longer holds (a
        // newer one for its key, a worker's min_ttl_s forcing a fresh mint, the tenant's
        // share full): still valid upstream until it expires. Not one minted after the
        // drain (a new mint, which may be cached and served), and not the drained ones
        // again: each is revoked once.
        let already: Vec<_> = drained.iter().map(|d| d.credential.clone()).collect();
        let taken = self.core.cache.take_issued(provider_name, mark, &already);
        self.core.cache.forget_revoked(&taken);
        for credential in taken {
            drained.push(crate::token_cache::DrainedCredential {
                credential,
                was_in_flight: false,
            });
        }
        let in_flight = drained.iter().filter(|d| d.was_in_flight).count();
        let (mut revoked, mut failed) = (0, unlanded);
        if unlanded > 0 {
            tracing::error!(
                provider = provider_name,
                mints = unlanded,
                "mints in flight had not landed by the mint deadline: whatever they issued is not revoked"
            );
        }
        for d in &drained {
            match revocation
                .revoke(&d.credential, self.core.mint_timeout())
                .await
            {
                Ok(()) => revoked += 1,
                Err(e) => {
                    failed += 1;
                    // Kept again: the next revocation tries it once more.
                    self.core.cache.keep_unrevoked(provider_name, &d.credential);
                    tracing::error!(provider = provider_name, error = %e, "could not revoke a credential: kept for the next revocation");
                }
            }
        }
        let dropped = drained.len() + unlanded;
        event.outcome = if failed == 0 { "allowed" } else { "failed" }.into();
        event.detail = Some(format!(
            "dropped {dropped} credential(s) still valid, cached or handed out since ({in_flight} of them minted while the revocation ran): {revoked} revoked upstream, {failed} failed (intent {})",
            intended.audit_id
        ));
        let receipt = self.core.audit.append(event).await.map_err(|_| {
            (
                ApiError::new(
                    ErrorCode::AuditUnavailable,
                    format!(
                        "the cached credentials were dropped ({dropped} of them; {revoked} revoked upstream, {failed} failed), but the audit log could not take the result: the intent is record {}",
                        intended.audit_id
                    ),
                ),
                Some(intended.clone()),
            )
        })?;
        Ok(super::AdminOutcome {
            raw: None,
            response: json!({ "provider": provider_name, "dropped": dropped, "in_flight": in_flight, "revoked": revoked, "failed": failed }),
            created: false,
            receipt,
        })
    }

    fn key_provider(
        &self,
        kind: &str,
    ) -> Result<std::sync::Arc<dyn credbroker_providers::Provider>, ApiError> {
        self.core
            .registry
            .names()
            .filter_map(|n| self.core.registry.get(n))
            .find(|p| p.id() == kind && p.platform_keys().is_some())
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownRecord,
                    format!("no configured provider uses platform keys of kind {kind:?}"),
                )
            })
    }

    async fn key_records(&self, kind: &str) -> Result<Vec<Stored<PlatformKeyRecord>>, ApiError> {
        self.core
            .records
            .platform_keys(kind)
            .await
            .map_err(store_err)
    }

    /// Opens the active keys of `kind` and hands them to its provider, preferred first.
    ///
    /// # Errors
    /// When a key cannot be opened or used.
    pub async fn load_platform_keys(&self, kind: &str) -> Result<usize, ApiError> {
        let provider = self.key_provider(kind)?;
        let mut active: Vec<PlatformKeyRecord> = self
            .key_records(kind)
            .await?
            .into_iter()
            .map(|k| k.value)
            .filter(|k| k.state == KeyState::Active)
            .collect();
        active.sort_by(|a, b| {
            b.activated_at
                .cmp(&a.activated_at)
                .then(b.version.cmp(&a.version))
        });
        let mut keys = Vec::with_capacity(active.len());
        for k in &active {
            if k.sealed_as != SealedAs::PlatformKey {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    format!(
                        "platform key {kind}/{} is still sealed as a tenant secret (the start-up migration did not run)",
                        k.version
                    ),
                ));
            }
            let material = open(
                &self.core.keyring,
                key_context(k),
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

    /// Store migration (schema 3): re-seals platform keys written before they had their own
    /// AAD domain (as tenant `platform`'s secrets) in the platform-key domain, with a fresh
    /// data key under the active KEK. One audited batch, which also removes the mark the
    /// schema upgrade left; a no-op once done. Runs at start, before the keys are loaded.
    ///
    /// Only a store upgraded from before schema 3 (the mark present) is re-sealed: anywhere
    /// else, a key sealed the old way is refused, since re-sealing it would make any tenant
    /// secret copied into the platform keys' table (its sealed fields open as tenant
    /// `platform`'s) a platform key — an issuer key its copier knows.
    ///
    /// # Errors
    /// When a legacy key is found with no mark or cannot be opened, or the audit record or
    /// batch cannot be written (nothing is changed then).
    pub async fn migrate_platform_key_sealing(&self) -> Result<usize, ApiError> {
        // The mark first: another replica's re-seal committed between the two reads then
        // leaves it present and the keys re-sealed (a conflict below), never the keys old and
        // the mark gone.
        let mark = self.core.records.reseal_mark().await.map_err(store_err)?;
        let keys = self
            .core
            .records
            .all_platform_keys()
            .await
            .map_err(store_err)?;
        let legacy: Vec<_> = keys
            .iter()
            .filter(|k| k.value.sealed_as == SealedAs::LegacyTenantSecret)
            .collect();
        // Keys sealed both ways never come from the broker: the re-seal is one batch, and
        // a release that seals keys in their own domain (the issuer key at its first start)
        // re-seals the old ones first. A record of the old kind beside them was written
        // outside it (a secret a tenant `platform` held before the id was reserved, copied
        // in, the mark forged by setting the schema back).
        let names: Vec<String> = legacy
            .iter()
            .map(|k| format!("{}/{}", k.value.kind, k.value.version))
            .collect();
        if !legacy.is_empty() && keys.len() > legacy.len() {
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!(
                    "platform key(s) {} are sealed the way releases before schema 3 sealed them, beside keys sealed in their own domain: written outside the broker; refusing to re-seal them. Restore the store from a backup",
                    names.join(", ")
                ),
            ));
        }
        match mark {
            // Nothing to re-seal: the mark goes, unaudited like the schema bump it belongs to.
            Some(true) if legacy.is_empty() => {
                self.core
                    .records
                    .clear_reseal_mark()
                    .await
                    .map_err(store_err)?;
                return Ok(0);
            }
            Some(true) => {}
            None if legacy.is_empty() => return Ok(0),
            None => {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    format!(
                        "platform key(s) {} sealed the way releases before schema 3 sealed them, in a store not marked for their re-seal by an upgrade from such a release: refusing to re-seal them (written outside the broker?). A store an offline command of an earlier release upgraded, never started since: start that release once first",
                        names.join(", ")
                    ),
                ));
            }
            Some(false) => {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    "the store's platform-key re-seal mark is not one this build writes",
                ))
            }
        }
        let mut batch = crate::store::Batch::new();
        batch.finish_reseal();
        let mut moved = Vec::new();
        for read in legacy {
            let mut k = read.value.clone();
            if !k.wrapped_dek.is_empty() {
                let (tenant, binding) = legacy_ids(&k.kind)?;
                let material = open(
                    &self.core.keyring,
                    SealContext::TenantSecret {
                        tenant: &tenant,
                        binding: &binding,
                        version: k.version,
                    },
                    k.kek_version,
                    &k.wrapped_dek,
                    &k.sealed_payload,
                )
                .map_err(|e| {
                    ApiError::new(
                        ErrorCode::Internal,
                        format!(
                            "platform key {}/{} cannot be opened for migration: {e}",
                            k.kind, k.version
                        ),
                    )
                })?;
                let sealed = seal(&self.core.keyring, key_context(&k), &material)
                    .map_err(|_| ApiError::new(ErrorCode::Internal, "sealing failed"))?;
                k.kek_version = sealed.kek_version;
                k.wrapped_dek = sealed.wrapped_dek;
                k.sealed_payload = sealed.sealed_payload;
            }
            k.sealed_as = SealedAs::PlatformKey;
            moved.push(format!("{}/{}", k.kind, k.version));
            batch.replace(read, &k);
        }
        let event = crate::audit::AuditEvent {
            kind: "admin".into(),
            action: "store.migrate".into(),
            request_id: crate::server::new_request_id(),
            actor: "credbroker:start".into(),
            outcome: "allowed".into(),
            detail: Some(format!(
                "schema 3: re-sealed {} platform key(s) in the platform-key domain: {}",
                moved.len(),
                if moved.is_empty() {
                    "none held".to_string()
                } else {
                    moved.join(", ")
                }
            )),
            ..Default::default()
        };
        match self.commit_audited(event, batch, &[]).await {
            Ok(_) => Ok(moved.len()),
            // Another replica starting at the same moment removed the mark first: it
            // re-sealed them (its record says so).
            Err((e, _)) if e.code == ErrorCode::Conflict => {
                let mark = self.core.records.reseal_mark().await.map_err(store_err)?;
                if mark.is_none() {
                    Ok(0)
                } else {
                    Err(e)
                }
            }
            Err((e, _)) => Err(e),
        }
    }

    /// Loads every provider's platform keys (at start).
    ///
    /// # Errors
    /// When a stored key cannot be opened.
    pub async fn load_all_platform_keys(&self) -> Result<(), ApiError> {
        let kinds: Vec<&'static str> = self
            .core
            .registry
            .names()
            .filter_map(|n| self.core.registry.get(n))
            .filter(|p| p.platform_keys().is_some())
            .map(|p| p.id())
            .collect();
        for kind in kinds {
            self.load_platform_keys(kind).await?;
        }
        Ok(())
    }

    pub(super) async fn plan_keys_list(&self, kind: &str) -> Result<Plan, ApiError> {
        self.key_provider(kind)?;
        let keys: Vec<Value> = self
            .key_records(kind)
            .await?
            .iter()
            .map(|k| view(k))
            .collect();
        Ok(Plan::new(
            format!("kind={kind} keys={}", keys.len()),
            json!({ "keys": keys }),
        ))
    }

    pub(super) async fn plan_keys_add(
        &self,
        kind: &str,
        material: SecretFields,
    ) -> Result<Plan, ApiError> {
        let provider = self.key_provider(kind)?;
        let keys = provider
            .platform_keys()
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "provider lost its platform keys"))?;
        let fingerprint = keys
            .check(&material, &|bytes| self.core.fingerprint.fingerprint(bytes))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        // A secret stored by an earlier release is listed under the fingerprint it had then.
        let earlier = keys.earlier_fingerprint(&material);
        let existing = self.key_records(kind).await?;
        if existing.iter().any(|k| {
            (k.fingerprint == fingerprint || Some(&k.fingerprint) == earlier.as_ref())
                && k.state != KeyState::Retired
        }) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("key {fingerprint} is already stored"),
            ));
        }
        let version = existing.iter().map(|k| k.version).max().unwrap_or(0) + 1;
        let sealed = seal(
            &self.core.keyring,
            SealContext::PlatformKey { kind, version },
            &material,
        )
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
            sealed_as: SealedAs::PlatformKey,
            signs_from: None,
            compromised: false,
        };
        let mut plan = Plan::new(
            format!("kind={kind} version={version} fingerprint={fingerprint} state=staged"),
            json!({ "key": view(&record) }),
        );
        plan.batch.create(&record);
        plan.created = true;
        Ok(plan)
    }

    /// The kind `k` is when its provider cannot work without an active key of that kind
    /// ([`credbroker_providers::PlatformKeys::required_kind`]); `None` for a key that is not
    /// required, or whose material cannot be opened (it could not be used anyway).
    fn required_kind(
        &self,
        keys: &dyn credbroker_providers::PlatformKeys,
        k: &PlatformKeyRecord,
    ) -> Option<&'static str> {
        if k.sealed_as != SealedAs::PlatformKey || k.wrapped_dek.is_empty() {
            return None;
        }
        let material = open(
            &self.core.keyring,
            key_context(k),
            k.kek_version,
            &k.wrapped_dek,
            &k.sealed_payload,
        )
        .ok()?;
        keys.required_kind(&material)
    }

    /// Refuses retiring `leaving` when it is the last active key of a kind its provider
    /// cannot work without (mirrors the last-active-operator rule). The other active keys of
    /// that kind become preconditions of `batch`: a concurrent retirement of the one left
    /// fails instead of both succeeding.
    fn keep_a_required_key(
        &self,
        provider: &dyn credbroker_providers::Provider,
        leaving: &PlatformKeyRecord,
        all: &[Stored<PlatformKeyRecord>],
        batch: &mut crate::store::Batch,
    ) -> Result<(), ApiError> {
        let Some(keys) = provider.platform_keys() else {
            return Ok(());
        };
        let Some(required) = self.required_kind(keys, leaving) else {
            return Ok(());
        };
        let others: Vec<&Stored<PlatformKeyRecord>> = all
            .iter()
            .filter(|k| k.state == KeyState::Active && k.version != leaving.version)
            .filter(|k| self.required_kind(keys, k) == Some(required))
            .collect();
        if others.is_empty() {
            return Err(ApiError::new(
                ErrorCode::LastActiveKey,
                format!(
                    "{} key {} is the last active {required}: the provider cannot work without one; add and activate another key first, then retire this one",
                    leaving.kind, leaving.version
                ),
            ));
        }
        for k in others {
            batch.expect_unchanged(k);
        }
        Ok(())
    }

    pub(super) async fn plan_keys_state(
        &self,
        kind: &str,
        version: u32,
        activate: bool,
    ) -> Result<Plan, ApiError> {
        let provider = self.key_provider(kind)?;
        let all = self.key_records(kind).await?;
        let read = all
            .iter()
            .find(|k| k.version == version)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownRecord,
                    format!("no {kind} key version {version}"),
                )
            })?;
        if read.state == KeyState::Retired {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "a retired key cannot change state (its material is destroyed)",
            ));
        }
        let mut guards = crate::store::Batch::new();
        if !activate && read.state == KeyState::Active {
            self.keep_a_required_key(&*provider, &read.value, &all, &mut guards)?;
        }
        let mut record = read.value.clone();
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
                shown_fingerprint(&record)
                    .unwrap_or("(an earlier release's unkeyed hash: withheld)"),
                record.state
            ),
            json!({ "key": view(&record) }),
        );
        plan.batch = guards;
        plan.batch.replace(&read, &record);
        Ok(plan)
    }
}
