//! Start-up checks of the store against the keyring: every sealed secret, webhook secret
//! and platform key names a KEK version the keyring holds, and for each KEK version one data
//! key unwraps — so a stale or wrong keyring fails the start, not the first resolve.

use std::sync::Arc;

use super::StartError;
use crate::keys::Keyring;
use crate::model::SealedAs;
use crate::seal::SealContext;
use crate::store::records::Records;

/// At a daemon's start (not a rotation's): a keyring whose active version is newer than the
/// version the store was last rotated to is one a KEK rotation saved before its re-wrap
/// batch landed (killed, or the store failed). A broker started with it would seal under a
/// version only this keyring holds, and every replica still holding the old keyring (which
/// the store does not refuse) would fail to open what it sealed.
///
/// # Errors
/// Naming both versions and what to do.
pub(crate) async fn active_not_ahead(
    records: &Records,
    keyring: &Keyring,
) -> Result<(), StartError> {
    let active = keyring.active_version();
    match records.kek_active_version().await? {
        Some(recorded) if u64::from(active) > recorded => Err(StartError::Other(format!(
            "the keyring's active KEK version {active} is newer than the version the store was last rotated to ({recorded}): a KEK rotation saved this keyring but its re-wrap did not land. Start no broker with it: run `credbroker keys rotate-kek` again (it adds a further version and re-wraps every data key), or put back the keyring copy taken before that rotation"
        ))),
        _ => Ok(()),
    }
}

/// Runs every check.
///
/// # Errors
/// The first mismatch, naming the record and the KEK version.
pub(crate) async fn check(records: &Records, keyring: &Keyring) -> Result<(), StartError> {
    if let Some(required) = records.kek_active_version().await? {
        if !keyring.versions().any(|v| u64::from(v) == required) {
            return Err(StartError::Other(format!(
                "the store was last rotated to KEK version {required}, which the keyring does not hold (stale keyring file?)"
            )));
        }
    }
    let held: Vec<u32> = keyring.versions().collect();
    let (missing, candidates) = kek_candidates(records, &held).await?;
    if let Some(m) = missing {
        return Err(StartError::Other(m));
    }
    // One data key per KEK version must unwrap: a keyring (file or variable) that holds
    // another key under the same version number would otherwise start and fail every
    // resolve. Tried on a tenant secret first, then, for a version none is under (a store
    // that holds only platform keys and webhook secrets, as a federation-only one does), on
    // those: such a keyring would otherwise start and seal what no other replica opens.
    let mut opened: Vec<u32> = Vec::new();
    let mut try_open =
        |ctx: SealContext<'_>, kek_version: u32, wrapped: &str, item: &dyn Fn() -> String| {
            if opened.contains(&kek_version) {
                return Ok(());
            }
            if !crate::seal::data_key_opens(keyring, ctx, kek_version, wrapped) {
                return Err(wrong_key(&item(), kek_version));
            }
            opened.push(kek_version);
            Ok(())
        };
    for c in candidates {
        if let Some(b) = records.binding(&c.binding).await? {
            let ctx = SealContext::TenantSecret {
                tenant: &b.value.tenant,
                binding: &c.binding,
                version: c.version,
            };
            try_open(ctx, c.kek_version, &c.wrapped_dek, &|| {
                format!("secret {}/{}", c.binding, c.version)
            })?;
        }
    }
    let platform_keys = records.all_platform_keys().await?;
    for k in &platform_keys {
        if !k.wrapped_dek.is_empty() && !held.contains(&k.kek_version) {
            return Err(StartError::Other(format!(
                "platform key {}/{} is wrapped by KEK version {}, which the keyring does not hold",
                k.kind, k.version, k.kek_version
            )));
        }
    }
    for k in &platform_keys {
        if k.wrapped_dek.is_empty() || k.sealed_as != SealedAs::PlatformKey {
            continue;
        }
        let ctx = SealContext::PlatformKey {
            kind: &k.kind,
            version: k.version,
        };
        try_open(ctx, k.kek_version, &k.wrapped_dek, &|| {
            format!("platform key {}/{}", k.kind, k.version)
        })?;
    }
    for w in records.all_webhook_secrets().await? {
        for v in &w.value.versions {
            // As for tenant secrets and platform keys: fail at start, not at the first
            // verification.
            if !held.contains(&v.kek_version) {
                return Err(StartError::Other(format!(
                    "webhook secret {}/{} is wrapped by KEK version {}, which the keyring does not hold",
                    w.value.instance, v.version, v.kek_version
                )));
            }
            let ctx = SealContext::WebhookSecret {
                tenant: &w.value.tenant,
                instance: &w.value.instance,
                version: v.version,
            };
            try_open(ctx, v.kek_version, &v.wrapped_dek, &|| {
                format!("webhook secret {}/{}", w.value.instance, v.version)
            })?;
        }
    }
    Ok(())
}

/// The start's refusal of a keyring holding another key under `kek_version` than the one
/// that wrapped `item`.
fn wrong_key(item: &str, kek_version: u32) -> StartError {
    StartError::Other(format!(
        "{item} does not open with KEK version {kek_version} of this keyring: it holds another key under that version (wrong keyring file or variable?)"
    ))
}

/// A secret version whose data key is tried against the keyring at start-up.
struct KekCandidate {
    binding: crate::ids::BindingId,
    version: u32,
    kek_version: u32,
    wrapped_dek: String,
}

/// One pass over every stored secret version, one at a time (a large store's secrets do not
/// fit in memory twice over): the first that names a KEK version the keyring does not hold,
/// and for each KEK version a few versions whose data key start-up tries to unwrap.
async fn kek_candidates(
    records: &Records,
    held: &[u32],
) -> Result<(Option<String>, Vec<KekCandidate>), StartError> {
    type Pass = (Option<String>, Vec<KekCandidate>);
    let pass: Arc<std::sync::Mutex<Pass>> = Arc::default();
    let (seen, held) = (Arc::clone(&pass), held.to_vec());
    records
        .each_secret_version(move |v| {
            let mut p = match seen.lock() {
                Ok(p) => p,
                Err(poisoned) => poisoned.into_inner(),
            };
            if !held.contains(&v.kek_version) {
                p.0.get_or_insert_with(|| {
                    format!(
                        "secret {}/{} is wrapped by KEK version {}, which the keyring does not hold",
                        v.binding, v.version, v.kek_version
                    )
                });
            } else if !v.wrapped_dek.is_empty()
                && p.1.iter().filter(|c| c.kek_version == v.kek_version).count() < 8
            {
                p.1.push(KekCandidate {
                    binding: v.binding,
                    version: v.version,
                    kek_version: v.kek_version,
                    wrapped_dek: v.wrapped_dek,
                });
            }
            Ok(())
        })
        .await?;
    let mut p = match pass.lock() {
        Ok(p) => p,
        Err(poisoned) => poisoned.into_inner(),
    };
    Ok(std::mem::take(&mut *p))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{KeyState, PlatformKeyRecord};
    use crate::seal::seal;
    use crate::store::records::{WebhookScheme, WebhookSecret, WebhookVersion};
    use crate::store::Batch;
    use crate::store::SledStore;
    use credbroker_providers::SecretFields;

    fn material() -> SecretFields {
        SecretFields::from_json(br#"{"private_key_pem":"canary"}"#).unwrap()
    }

    async fn store_with(
        item: impl FnOnce(&Keyring, &mut Batch),
    ) -> (tempfile::TempDir, Records, Keyring) {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(Arc::new(SledStore::open(dir.path()).unwrap()));
        let keyring = Keyring::generate().unwrap();
        let mut batch = Batch::new();
        item(&keyring, &mut batch);
        records.commit(batch).await.unwrap();
        (dir, records, keyring)
    }

    /// A store holding no tenant secret (federation only) still refuses, at start, a
    /// keyring holding another key under the version its platform keys and webhook secrets
    /// are wrapped by; the keyring that wrapped them starts.
    #[tokio::test]
    async fn a_wrong_key_under_a_held_version_is_found_without_tenant_secrets() {
        let platform_key = |keyring: &Keyring, batch: &mut Batch| {
            let sealed = seal(
                keyring,
                SealContext::PlatformKey {
                    kind: "github_app",
                    version: 1,
                },
                &material(),
            )
            .unwrap();
            batch.create(&PlatformKeyRecord {
                kind: "github_app".into(),
                version: 1,
                state: KeyState::Active,
                fingerprint: "SHA256:x".into(),
                kek_version: sealed.kek_version,
                wrapped_dek: sealed.wrapped_dek,
                sealed_payload: sealed.sealed_payload,
                created_at: "2026-12-07T00:00:00Z".into(),
                activated_at: None,
                retired_at: None,
                sealed_as: SealedAs::PlatformKey,
                signs_from: None,
                compromised: false,
            });
        };
        let webhook_secret = |keyring: &Keyring, batch: &mut Batch| {
            let sealed = seal(
                keyring,
                SealContext::WebhookSecret {
                    tenant: "t1",
                    instance: "i1",
                    version: 1,
                },
                &material(),
            )
            .unwrap();
            batch.create(&WebhookSecret {
                instance: "i1".into(),
                tenant: "t1".into(),
                scheme: WebhookScheme::Github,
                last_version: 1,
                versions: vec![WebhookVersion {
                    version: 1,
                    kek_version: sealed.kek_version,
                    wrapped_dek: sealed.wrapped_dek,
                    sealed_payload: sealed.sealed_payload,
                    created_at: "2026-12-07T00:00:00Z".into(),
                    valid_until: None,
                }],
                reveals: Vec::new(),
                created_at: "2026-12-07T00:00:00Z".into(),
            });
        };
        let other = Keyring::generate().unwrap();
        let (_dir, records, keyring) = store_with(platform_key).await;
        check(&records, &keyring).await.unwrap();
        let refused = check(&records, &other).await.err().unwrap().to_string();
        assert!(
            refused.contains("platform key github_app/1 does not open with KEK version 1"),
            "{refused}"
        );
        let (_dir, records, keyring) = store_with(webhook_secret).await;
        check(&records, &keyring).await.unwrap();
        let refused = check(&records, &other).await.err().unwrap().to_string();
        assert!(
            refused.contains("webhook secret i1/1 does not open with KEK version 1"),
            "{refused}"
        );
    }
}
