//! KEK rotation, offline: add a KEK version and re-wrap every data key with it (payloads
//! untouched): tenant secrets, platform keys, and any table that declares sealed material
//! ([`crate::store::Table::holds_sealed_material`]). Order matters for crash safety: the keyring holding both the old and the new
//! version is saved once the rotation is audited, then all data keys are re-wrapped in one
//! atomic batch. A crash at any point leaves every secret openable.

use crate::audit::{AuditEvent, AuditLog};
use crate::broker::BrokerSettings;
use crate::config::Config;
use crate::ids::{BindingId, TenantId};
use crate::keys::{AuditSigner, Keyring};
use crate::model::SealedAs;
use crate::progress::{Progress, Unit};
use crate::seal::{rewrap, SealContext};
use crate::store::records::{Records, SealedTable};
use crate::store::Batch;

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// The KEK version active before.
    pub old_version: u32,
    /// The new active version.
    pub new_version: u32,
    /// Data keys re-wrapped.
    pub rewrapped: usize,
    /// Why the record saying the rotation committed could not be appended, if it could not
    /// (the rotation stands; only its second record is missing).
    pub committed_unrecorded: Option<String>,
}

/// Rotates the KEK of `config`'s data directory, auditing the rotation as `actor`.
///
/// # Errors
/// When the keyring comes from an environment variable, the store or keyring cannot be
/// opened, a data key cannot be re-wrapped, or the audit record cannot be written (nothing
/// is re-wrapped then).
pub async fn rotate_kek(
    config: &Config,
    actor: &str,
    progress: &dyn Progress,
) -> Result<RotationReport, String> {
    if config.keys.kek_env.is_some() {
        return Err("the keyring comes from an environment variable (keys.kek_env); rotate it where it is managed, then re-run with a file keyring".into());
    }
    let store = crate::store::open(&config.store, &config.data_dir)
        .await
        .map_err(|e| e.to_string())?;
    // One rotation at a time, and no broker starting beside it: two rotations of one
    // keyring file would each save their own new version over the other's, and the store's
    // data keys would end up wrapped by a key no file holds.
    let hold = crate::replica::hold_offline(std::sync::Arc::clone(&store), "KEK rotation").await?;
    let result = match lock_keyring(&config.kek_file()) {
        Ok(_lock) => rotate_held(config, &hold, Records::new(store), actor, progress).await,
        Err(e) => Err(e),
    };
    hold.release().await;
    result
}

/// The `keys.rotate_kek` record of `actor`'s rotation: allowed, or failed with
/// `error_code`.
fn rotation_record(
    request_id: &str,
    actor: &str,
    error_code: Option<&str>,
    detail: String,
) -> AuditEvent {
    AuditEvent {
        kind: "admin".into(),
        action: "keys.rotate_kek".into(),
        request_id: request_id.to_owned(),
        actor: actor.to_owned(),
        outcome: if error_code.is_some() {
            "failed"
        } else {
            "allowed"
        }
        .into(),
        error_code: error_code.map(Into::into),
        detail: Some(detail),
        ..Default::default()
    }
}

/// Takes the keyring's rotation lock: an exclusive `flock` on `.<keyring name>.lock` beside
/// it, held while the returned handle lives. (Not on the keyring itself: a save replaces the
/// file by a rename, so a lock on it would not outlive the first save.)
fn lock_keyring(kek_file: &std::path::Path) -> Result<std::fs::File, String> {
    let name = kek_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = kek_file.with_file_name(format!(".{name}.lock"));
    crate::keys::lock_file(&path).map_err(|e| match e {
        crate::keys::LockFailure::Held => format!(
            "another KEK rotation holds the keyring's lock ({}): run this one when it has ended; nothing was changed",
            path.display()
        ),
        crate::keys::LockFailure::Io(e) => format!("{e}; nothing was changed"),
    })
}

async fn rotate_held(
    config: &Config,
    hold: &crate::replica::OfflineHold,
    records: Records,
    actor: &str,
    progress: &dyn Progress,
) -> Result<RotationReport, String> {
    let mut keyring = Keyring::load(&config.kek_file()).map_err(|e| e.to_string())?;
    // The store's record of the version, read before the keyring is checked against the
    // store: the re-wrap lands only if no other rotation committed since.
    let kek_as_read = records
        .kek_version_as_read()
        .await
        .map_err(|e| e.to_string())?;
    // The keyring must open the store as it is now: one that lacks the version the store was
    // last rotated to, or holds another key under it (a copy saved by a rotation elsewhere),
    // would wrap every data key afresh from keys it cannot read, or lose the newer ones.
    crate::broker::keyring_check::check(&records, &keyring)
        .await
        .map_err(|e| format!("{e}; nothing was changed"))?;
    let old = keyring.active_version();
    let new = keyring.rotate().map_err(|e| e.to_string())?;
    let mut batch = Batch::new();
    let mut counts = Vec::new();
    let mut expired = 0;
    // Every table that holds sealed material, or no rotation at all: a key left wrapped only
    // by a KEK version the operator then removes is lost.
    let tables = SealedTable::all().map_err(|e| format!("{e}; nothing was changed"))?;
    for table in tables {
        let n = match table {
            SealedTable::Secrets => {
                rewrap_secrets(&records, &keyring, &mut batch, progress).await?
            }
            SealedTable::PlatformKeys => {
                rewrap_platform_keys(&records, &keyring, &mut batch, progress).await?
            }
            SealedTable::WebhookSecrets => {
                let (n, dropped) =
                    rewrap_webhook_secrets(&records, &keyring, &mut batch, progress).await?;
                expired = dropped;
                n
            }
        };
        counts.push((table.name(), n));
    }
    progress.end();
    let rewrapped: usize = counts.iter().map(|(_, n)| n).sum();
    // The store remembers the version it was rotated to: a daemon started with a stale copy
    // of the keyring (one without it) refuses to start.
    // A store never rotated has no record of its version: the one it is on is recorded
    // first (below, before the keyring is saved), so that a keyring saved ahead of the store
    // by a rotation whose re-wrap does not land is refused at a broker's start, the first
    // rotation's as every later one's.
    let first_record = kek_as_read
        .is_none()
        .then(|| format!("{{\"active_version\":{old}}}").into_bytes());
    batch.record_kek_version(new, kek_as_read.as_deref().or(first_record.as_deref()));
    // Still this rotation's store, before anything is saved or recorded.
    hold.confirm()
        .await
        .map_err(|e| format!("{e}; nothing was changed, run the rotation again"))?;
    // The log is opened and the rotation recorded before the keyring changes: a new KEK
    // version is never active (new seals use it) without a record saying who made it.
    crate::broker::refuse_a_lost_log_offline(config, records.store().as_ref()).await?;
    let settings = BrokerSettings::from_config(config);
    let signer = AuditSigner::load(&config.audit_key_file())
        .map_err(|e| format!("{e}; nothing was changed"))?;
    let log =
        AuditLog::open(settings.audit, signer).map_err(|e| format!("{e}; nothing was changed"))?;
    let request_id = crate::server::new_request_id();
    let event = rotation_record(
        &request_id,
        actor,
        None,
        format!(
            "kek {old} -> {new}; rewrapping {rewrapped} data keys ({}){}",
            counts
                .iter()
                .map(|(t, n)| format!("{t}: {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            if expired > 0 {
                format!("; destroying {expired} webhook secret version(s) past their overlap")
            } else {
                String::new()
            }
        ),
    );
    let receipt = log.append(event).await;
    if let Err(e) = receipt {
        log.close();
        return Err(format!(
            "audit append failed; nothing was changed (the keyring is as it was, no data key re-wrapped): {e}"
        ));
    }
    if first_record.is_some() {
        let mut record = Batch::new();
        record.record_kek_version(old, None);
        if let Err(e) = records.commit(record).await {
            let failed = rotation_record(
                &request_id,
                actor,
                Some("internal"),
                format!("kek {old} -> {new}: the store's KEK version could not be recorded ({e}); nothing was changed"),
            );
            let _ = log.append(failed).await;
            log.close();
            return Err(format!(
                "the store's current KEK version ({old}) could not be recorded before the keyring is saved ({e}): nothing was changed (the log records the attempt); run the rotation again"
            ));
        }
    }
    if let Err(e) = keyring.save(&config.kek_file()) {
        // A save renames the new file over the keyring before it syncs the directory: a
        // failure after the rename leaves the new keyring in place. What the file holds now
        // is what is said.
        let on_disk = Keyring::load(&config.kek_file())
            .ok()
            .map(|k| k.active_version());
        let file = config.kek_file();
        let (detail, said) = match on_disk {
            Some(v) if v == new => (
                format!("kek {old} -> {new}: the keyring file holds version {new} but its directory could not be synced; nothing was re-wrapped"),
                format!("{e}: the keyring file was replaced (it holds versions {old} and {new}, {new} active) but its directory could not be synced, so a crash may still bring back the old file; nothing was re-wrapped. Keep this keyring (both versions open every secret), start no broker, and run the rotation again once the file system is sound"),
            ),
            Some(v) if v == old => (
                format!("kek {old} -> {new}: the keyring could not be saved; nothing was re-wrapped"),
                format!("{e}: the keyring could not be saved and is as it was, so nothing was re-wrapped (the log records the attempt)"),
            ),
            _ => (
                format!("kek {old} -> {new}: the keyring could not be saved, and could not be read back; nothing was re-wrapped"),
                format!("{e}: the keyring could not be saved, and could not be read back afterwards: check {} (it should hold version {old}, or {old} and {new}) before starting a broker; nothing was re-wrapped", file.display()),
            ),
        };
        let failed = rotation_record(&request_id, actor, Some("internal"), detail);
        let _ = log.append(failed).await;
        log.close();
        return Err(said);
    }
    let committed = records.commit(batch).await;
    // Another rotation landed first only if the store's KEK version moved on (a precondition
    // on a re-wrapped row alone is some other writer's, and this keyring still holds both).
    let overtaken = matches!(
        &committed,
        Err(crate::store::StoreError::Precondition { .. })
    ) && matches!(
        records.kek_version_as_read().await,
        Ok(now) if now.as_deref() != kek_as_read.as_deref().or(first_record.as_deref())
    );
    if let Err(e) = committed {
        // The record above says the rotation was allowed; this one says it did not land
        // (or that its outcome is not known: an answer lost after the commit).
        let (code, detail, said) = if overtaken {
            // Their holds overlapped: the store is on the other rotation's version, which
            // this keyring (saved above) holds another key under.
            (
                "conflict",
                format!("kek {old} -> {new}: another rotation of this store committed first; nothing was re-wrapped by this one"),
                format!(
                    "the store changed under this rotation (another KEK rotation of it committed first): nothing was re-wrapped by this one, and the keyring file saved here holds a version {new} the store does not use. Copy the keyring from the host whose rotation landed over this one ({}) before starting a broker with it",
                    config.kek_file().display()
                ),
            )
        } else {
            // The keyring holds both versions, so every data key stays openable.
            (
                "internal",
                format!("kek {old} -> {new}: the re-wrap batch failed ({e}); data keys stay wrapped by version {old} unless the store committed it without answering; the keyring holds both"),
                format!("the re-wrap of {rewrapped} data keys failed ({e}): they stay wrapped by KEK version {old} (unless the store committed without answering), and the keyring holds versions {old} and {new}, so every one stays openable (unless another rotation of this store committed first: a broker then refuses this keyring at start, and the keyring to use is that rotation's). Fix the cause (a PostgreSQL store may need a larger [store] timeout_ms) and run the rotation again; it adds a further version"),
            )
        };
        let failed = rotation_record(&request_id, actor, Some(code), detail);
        let _ = log.append(failed).await;
        log.close();
        return Err(said);
    }
    // The record above says the rotation was allowed, before anything changed; this one that
    // it landed. A rotation killed between the two leaves the first alone: every sealed
    // item's `kek_version` (and a broker's start) says whether its batch committed.
    let committed = rotation_record(
        &request_id,
        actor,
        None,
        format!("kek {old} -> {new}: committed, {rewrapped} data keys re-wrapped"),
    );
    let committed_unrecorded = log.append(committed).await.err().map(|e| e.to_string());
    log.close();
    Ok(RotationReport {
        old_version: old,
        new_version: new,
        rewrapped,
        committed_unrecorded,
    })
}

async fn rewrap_secrets(
    records: &Records,
    keyring: &Keyring,
    batch: &mut Batch,
    progress: &dyn Progress,
) -> Result<usize, String> {
    let versions = records
        .all_secret_versions()
        .await
        .map_err(|e| e.to_string())?;
    progress.begin(
        "re-wrapping secret data keys",
        versions.len() as u64,
        Unit::Items,
    );
    for read in &versions {
        progress.advance(1);
        let mut v = read.value.clone();
        let binding = records
            .binding(&v.binding)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("secret {}/{} has no binding record", v.binding, v.version))?;
        let (kek_version, wrapped) = rewrap(
            keyring,
            SealContext::TenantSecret {
                tenant: &binding.tenant,
                binding: &v.binding,
                version: v.version,
            },
            v.kek_version,
            &v.wrapped_dek,
        )
        .map_err(|e| format!("secret {}/{}: {e}", v.binding, v.version))?;
        v.kek_version = kek_version;
        v.wrapped_dek = wrapped;
        batch.replace(read, &v);
    }
    Ok(versions.len())
}

async fn rewrap_platform_keys(
    records: &Records,
    keyring: &Keyring,
    batch: &mut Batch,
    progress: &dyn Progress,
) -> Result<usize, String> {
    let keys = records
        .all_platform_keys()
        .await
        .map_err(|e| e.to_string())?;
    let mut n = 0;
    progress.begin("re-wrapping platform keys", keys.len() as u64, Unit::Items);
    for read in &keys {
        progress.advance(1);
        let mut k = read.value.clone();
        if k.wrapped_dek.is_empty() {
            continue; // retired: its material is destroyed
        }
        let legacy_ids;
        let ctx = match k.sealed_as {
            SealedAs::PlatformKey => SealContext::PlatformKey {
                kind: &k.kind,
                version: k.version,
            },
            // Not yet migrated (rotation run before the first start of this release).
            SealedAs::LegacyTenantSecret => {
                legacy_ids = (
                    TenantId::parse("platform").map_err(|e| e.to_string())?,
                    BindingId::parse(&k.kind).map_err(|e| e.to_string())?,
                );
                SealContext::TenantSecret {
                    tenant: &legacy_ids.0,
                    binding: &legacy_ids.1,
                    version: k.version,
                }
            }
        };
        let (kek_version, wrapped) = rewrap(keyring, ctx, k.kek_version, &k.wrapped_dek)
            .map_err(|e| format!("platform key {}/{}: {e}", k.kind, k.version))?;
        k.kek_version = kek_version;
        k.wrapped_dek = wrapped;
        batch.replace(read, &k);
        n += 1;
    }
    Ok(n)
}

/// Re-wraps every webhook secret version that still verifies; a version past its overlap
/// (which the daemon's collector, stopped for the rotation, has not destroyed yet) is
/// destroyed instead, not carried under the new KEK: neither a store copy nor a later KEK
/// rotation keeps it. The re-wrapped and the destroyed versions.
async fn rewrap_webhook_secrets(
    records: &Records,
    keyring: &Keyring,
    batch: &mut Batch,
    progress: &dyn Progress,
) -> Result<(usize, usize), String> {
    let secrets = records
        .all_webhook_secrets()
        .await
        .map_err(|e| e.to_string())?;
    let (mut n, mut dropped) = (0, 0);
    let now = time::OffsetDateTime::now_utc();
    progress.begin(
        "re-wrapping webhook secrets",
        secrets.len() as u64,
        Unit::Items,
    );
    for read in &secrets {
        progress.advance(1);
        let mut w = read.value.clone();
        // The newest version never expires, so one is always left.
        if w.versions.iter().any(|v| v.verifies_at(now)) {
            let before = w.versions.len();
            w.versions.retain(|v| v.verifies_at(now));
            dropped += before - w.versions.len();
        }
        for v in &mut w.versions {
            let ctx = SealContext::WebhookSecret {
                tenant: &read.value.tenant,
                instance: &read.value.instance,
                version: v.version,
            };
            let (kek_version, wrapped) = rewrap(keyring, ctx, v.kek_version, &v.wrapped_dek)
                .map_err(|e| format!("webhook secret {}/{}: {e}", w.instance, v.version))?;
            v.kek_version = kek_version;
            v.wrapped_dek = wrapped;
            n += 1;
        }
        batch.replace(read, &w);
    }
    Ok((n, dropped))
}
