//! KEK rotation, offline: add a KEK version and re-wrap every data key with it (payloads
//! untouched). Order matters for crash safety: the keyring holding both the old and the new
//! version is saved first, the rotation is audited, then all data keys are re-wrapped in one
//! atomic batch. A crash at any point leaves every secret openable.

use crate::audit::{AuditEvent, AuditLog};
use crate::broker::BrokerSettings;
use crate::config::Config;
use crate::keys::{AuditSigner, Keyring};
use crate::seal::rewrap_data_key;
use crate::store::records::Records;
use crate::store::Batch;

/// What a rotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationReport {
    /// The KEK version active before.
    pub old_version: u32,
    /// The new active version.
    pub new_version: u32,
    /// Data keys re-wrapped.
    pub rewrapped: usize,
}

/// Rotates the KEK of `config`'s data directory, auditing the rotation as `actor`.
///
/// # Errors
/// When the keyring comes from an environment variable, the store or keyring cannot be
/// opened, a data key cannot be re-wrapped, or the audit record cannot be written (nothing
/// is re-wrapped then).
pub async fn rotate_kek(config: &Config, actor: &str) -> Result<RotationReport, String> {
    if config.keys.kek_env.is_some() {
        return Err("the keyring comes from an environment variable (keys.kek_env); rotate it where it is managed, then re-run with a file keyring".into());
    }
    let store = crate::store::open(&config.store, &config.data_dir).map_err(|e| e.to_string())?;
    let records = Records::new(store);
    let mut keyring = Keyring::load(&config.kek_file()).map_err(|e| e.to_string())?;
    let old = keyring.active_version();
    let new = keyring.rotate().map_err(|e| e.to_string())?;
    let versions = records
        .all_secret_versions()
        .await
        .map_err(|e| e.to_string())?;
    let mut batch = Batch::new();
    for read in &versions {
        let mut v = read.value.clone();
        let binding = records
            .binding(&v.binding)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("secret {}/{} has no binding record", v.binding, v.version))?;
        let (kek_version, wrapped) = rewrap_data_key(
            &keyring,
            &binding.tenant,
            &v.binding,
            v.version,
            v.kek_version,
            &v.wrapped_dek,
        )
        .map_err(|e| format!("secret {}/{}: {e}", v.binding, v.version))?;
        v.kek_version = kek_version;
        v.wrapped_dek = wrapped;
        batch.replace(read, &v);
    }
    keyring
        .save(&config.kek_file())
        .map_err(|e| e.to_string())?;
    let settings = BrokerSettings::from_config(config);
    let signer = AuditSigner::load(&config.audit_key_file()).map_err(|e| e.to_string())?;
    let log = AuditLog::open(settings.audit, signer).map_err(|e| e.to_string())?;
    let event = AuditEvent {
        kind: "admin".into(),
        action: "keys.rotate_kek".into(),
        request_id: crate::server::new_request_id(),
        actor: actor.to_owned(),
        outcome: "allowed".into(),
        detail: Some(format!(
            "kek {old} -> {new}; rewrapping {} data keys",
            versions.len()
        )),
        ..Default::default()
    };
    let receipt = log.append(event).await;
    if let Err(e) = receipt {
        log.close();
        return Err(format!(
            "audit append failed; data keys not re-wrapped: {e}"
        ));
    }
    records.commit(batch).await.map_err(|e| e.to_string())?;
    log.close();
    Ok(RotationReport {
        old_version: old,
        new_version: new,
        rewrapped: versions.len(),
    })
}
