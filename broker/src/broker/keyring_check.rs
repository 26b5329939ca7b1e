//! Start-up checks of the store against the keyring: every sealed secret, webhook secret
//! and platform key names a KEK version the keyring holds, and for each KEK version one data
//! key unwraps — so a stale or wrong keyring fails the start, not the first resolve.

use std::sync::Arc;

use super::StartError;
use crate::keys::Keyring;
use crate::store::records::Records;

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
    // resolve.
    let mut opened: Vec<u32> = Vec::new();
    for c in candidates {
        if opened.contains(&c.kek_version) {
            continue;
        }
        if let Some(b) = records.binding(&c.binding).await? {
            crate::seal::rewrap_data_key(
                keyring,
                &b.value.tenant,
                &c.binding,
                c.version,
                c.kek_version,
                &c.wrapped_dek,
            )
            .map_err(|_| {
                StartError::Other(format!(
                    "secret {}/{} does not open with KEK version {} of this keyring: it holds another key under that version (wrong keyring file or variable?)",
                    c.binding, c.version, c.kek_version
                ))
            })?;
            opened.push(c.kek_version);
        }
    }
    crate::governance::check_keks(records, &held).await?;
    for k in records.all_platform_keys().await? {
        if !k.wrapped_dek.is_empty() && !held.contains(&k.kek_version) {
            return Err(StartError::Other(format!(
                "platform key {}/{} is wrapped by KEK version {}, which the keyring does not hold",
                k.kind, k.version, k.kek_version
            )));
        }
    }
    Ok(())
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
