//! Envelope encryption of secret versions and platform keys.
//!
//! Each sealed item gets a fresh 256-bit data key. The payload is AES-256-GCM sealed with
//! additional authenticated data naming what the item is ([`SealContext`]: its purpose, and
//! (tenant, binding, version) or (key kind, version)), so ciphertext copied onto another
//! record, or a platform key presented as a tenant secret, fails to open. The data key is
//! itself AES-256-GCM wrapped by the active KEK, with AAD binding the wrap to the same item and
//! the KEK version. Rotating the KEK re-wraps data keys and never touches payloads.

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use zeroize::Zeroizing;

use credbroker_providers::SecretFields;

use crate::ids::{BindingId, TenantId};
use crate::keys::{random_bytes, Keyring};

/// Why a secret could not be sealed or opened. Carries no key or plaintext bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The KEK version that wrapped this data key is not in the keyring.
    #[error("KEK version {0} is not loaded")]
    MissingKek(u32),
    /// Authentication failed: wrong record, wrong key, or tampered ciphertext.
    #[error("sealed secret failed to authenticate (moved, tampered or wrong key)")]
    Authentication,
    /// The stored encoding is malformed.
    #[error("sealed secret is malformed")]
    Malformed,
    /// The CSPRNG or cipher failed.
    #[error("cryptographic failure while sealing")]
    Crypto,
    /// A secret of the tenant `platform`: releases before schema 3 sealed platform keys so,
    /// and one sealed now could be passed off as such a key (see [`seal_secret`]).
    #[error("the tenant id `platform` is reserved: nothing is sealed for it")]
    ReservedTenant,
}

/// The sealed parts of one secret version.
pub struct Sealed {
    /// KEK version used to wrap the data key.
    pub kek_version: u32,
    /// Wrapped data key (base64 of nonce ‖ ciphertext ‖ tag).
    pub wrapped_dek: String,
    /// Sealed payload (base64 of nonce ‖ ciphertext ‖ tag).
    pub sealed_payload: String,
}

/// What a sealed item is. Bound into both AADs, so an item opens only as what it was sealed
/// as: a platform key never opens as a tenant secret (whatever the tenant is called), and a
/// secret never opens on another record.
#[derive(Debug, Clone, Copy)]
pub enum SealContext<'a> {
    /// Version `version` of a tenant's secret on `binding`.
    TenantSecret {
        /// Owning tenant.
        tenant: &'a TenantId,
        /// Binding.
        binding: &'a BindingId,
        /// Secret version.
        version: u32,
    },
    /// Version `version` of connector instance `instance`'s webhook secret (of `tenant`).
    WebhookSecret {
        /// Owning tenant.
        tenant: &'a str,
        /// The instance.
        instance: &'a str,
        /// Version.
        version: u32,
    },
    /// Version `version` of the broker's platform key of `kind` (e.g. the GitHub App key).
    PlatformKey {
        /// Key kind (the provider id).
        kind: &'a str,
        /// Key version.
        version: u32,
    },
}

impl SealContext<'_> {
    /// `(payload label, data-key label, first id, second id, version)`.
    fn parts(&self) -> (&'static [u8], &'static [u8], &str, &str, u32) {
        match *self {
            SealContext::TenantSecret {
                tenant,
                binding,
                version,
            } => (
                b"credbroker/secret-payload/v1\0",
                b"credbroker/data-key/v1\0",
                tenant.as_str(),
                binding.as_str(),
                version,
            ),
            SealContext::WebhookSecret {
                tenant,
                instance,
                version,
            } => (
                b"credbroker/webhook-secret-payload/v1\0",
                b"credbroker/webhook-secret-data-key/v1\0",
                tenant,
                instance,
                version,
            ),
            SealContext::PlatformKey { kind, version } => (
                b"credbroker/platform-key-payload/v1\0",
                b"credbroker/platform-key-data-key/v1\0",
                "platform",
                kind,
                version,
            ),
        }
    }
}

fn aad_of(label: &[u8], a: &str, b: &str, version: u32) -> Vec<u8> {
    // Sized once: a DEK's AAD gets four more bytes (its KEK version).
    let mut aad = Vec::with_capacity(label.len() + a.len() + b.len() + 2 + 4 + 4);
    aad.extend_from_slice(label);
    aad.extend_from_slice(a.as_bytes());
    aad.push(0);
    aad.extend_from_slice(b.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

fn payload_aad(ctx: SealContext<'_>) -> Vec<u8> {
    let (label, _, a, b, version) = ctx.parts();
    aad_of(label, a, b, version)
}

fn dek_aad(ctx: SealContext<'_>, kek_version: u32) -> Vec<u8> {
    let (_, label, a, b, version) = ctx.parts();
    let mut aad = aad_of(label, a, b, version);
    aad.extend_from_slice(&kek_version.to_be_bytes());
    aad
}

/// A data key's cipher.
fn data_key(dek: &[u8]) -> Result<RandomizedNonceKey, SealError> {
    RandomizedNonceKey::new(&AES_256_GCM, dek).map_err(|_| SealError::Crypto)
}

fn seal_with(
    key: &RandomizedNonceKey,
    aad: Vec<u8>,
    plaintext: &[u8],
) -> Result<String, SealError> {
    let mut buf = Zeroizing::new(plaintext.to_vec());
    let nonce = key
        .seal_in_place_append_tag(Aad::from(aad), &mut *buf)
        .map_err(|_| SealError::Crypto)?;
    let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
    out.extend_from_slice(nonce.as_ref());
    out.extend_from_slice(&buf);
    Ok(B64.encode(out))
}

/// Opens `nonce ‖ ciphertext ‖ tag` (base64) in one zeroizing buffer: decoded once, opened in
/// place, the nonce then moved out of the way. Returns the plaintext.
fn open_with(
    key: &RandomizedNonceKey,
    aad: Vec<u8>,
    sealed_b64: &str,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let mut buf = Zeroizing::new(Vec::new());
    B64.decode_vec(sealed_b64, &mut buf)
        .map_err(|_| SealError::Malformed)?;
    if buf.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        return Err(SealError::Malformed);
    }
    let (nonce, ct) = buf.split_at_mut(NONCE_LEN);
    let nonce_bytes: [u8; NONCE_LEN] = (&*nonce).try_into().map_err(|_| SealError::Malformed)?;
    let len = key
        .open_in_place(Nonce::from(&nonce_bytes), Aad::from(aad), ct)
        .map_err(|_| SealError::Authentication)?
        .len();
    // Shift the plaintext to the front (in place: no copy is left behind) and cut the rest.
    buf.copy_within(NONCE_LEN..NONCE_LEN + len, 0);
    buf.truncate(len);
    Ok(buf)
}

/// Seals `fields` as version `version` of (tenant, binding) under the active KEK.
///
/// # Errors
/// [`SealError::Crypto`] when the CSPRNG or cipher fails.
pub fn seal_secret(
    keyring: &Keyring,
    tenant: &TenantId,
    binding: &BindingId,
    version: u32,
    fields: &SecretFields,
) -> Result<Sealed, SealError> {
    // Releases before schema 3 sealed platform keys (the issuer's, the GitHub App's) as
    // secrets of a tenant `platform`, and the broker re-seals such a key as a platform key
    // when it upgrades a store. A secret sealed for a tenant of that name (one planted in
    // the store, given a value through its intake link) would read as one.
    if tenant.as_str() == RESERVED_TENANT {
        return Err(SealError::ReservedTenant);
    }
    seal(
        keyring,
        SealContext::TenantSecret {
            tenant,
            binding,
            version,
        },
        fields,
    )
}

/// The tenant id nothing is sealed for (see [`seal_secret`]).
pub const RESERVED_TENANT: &str = "platform";

/// Seals `fields` as the item `ctx` under the active KEK.
///
/// # Errors
/// [`SealError::Crypto`] when the CSPRNG or cipher fails.
pub fn seal(
    keyring: &Keyring,
    ctx: SealContext<'_>,
    fields: &SecretFields,
) -> Result<Sealed, SealError> {
    let kek_version = keyring.active_version();
    let kek = keyring
        .cipher(kek_version)
        .ok_or(SealError::MissingKek(kek_version))?;
    let dek = random_bytes(32).map_err(|_| SealError::Crypto)?;
    let plaintext = fields.to_json_zeroizing();
    let sealed_payload = seal_with(&data_key(&dek)?, payload_aad(ctx), &plaintext)?;
    let wrapped_dek = seal_with(kek, dek_aad(ctx, kek_version), &dek)?;
    Ok(Sealed {
        kek_version,
        wrapped_dek,
        sealed_payload,
    })
}

fn unwrap_dek(
    keyring: &Keyring,
    ctx: SealContext<'_>,
    kek_version: u32,
    wrapped_dek: &str,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let kek = keyring
        .cipher(kek_version)
        .ok_or(SealError::MissingKek(kek_version))?;
    let dek = open_with(kek, dek_aad(ctx, kek_version), wrapped_dek)?;
    if dek.len() != 32 {
        return Err(SealError::Malformed);
    }
    Ok(dek)
}

/// Whether the data key of the item `ctx`, wrapped by `kek_version`, unwraps with this
/// keyring: the start's check that the keyring holds the key that wrapped it, and not another
/// under the same version number. Nothing is sealed again and no payload is opened.
pub(crate) fn data_key_opens(
    keyring: &Keyring,
    ctx: SealContext<'_>,
    kek_version: u32,
    wrapped_dek: &str,
) -> bool {
    unwrap_dek(keyring, ctx, kek_version, wrapped_dek).is_ok()
}

/// Opens a sealed version of (tenant, binding).
///
/// # Errors
/// [`SealError::Authentication`] when the ciphertext belongs to another record or was altered;
/// [`SealError::MissingKek`] when its KEK version is not loaded.
pub fn open_secret(
    keyring: &Keyring,
    tenant: &TenantId,
    binding: &BindingId,
    version: u32,
    kek_version: u32,
    wrapped_dek: &str,
    sealed_payload: &str,
) -> Result<SecretFields, SealError> {
    open(
        keyring,
        SealContext::TenantSecret {
            tenant,
            binding,
            version,
        },
        kek_version,
        wrapped_dek,
        sealed_payload,
    )
}

/// Opens the sealed item `ctx`.
///
/// # Errors
/// As [`open_secret`].
pub fn open(
    keyring: &Keyring,
    ctx: SealContext<'_>,
    kek_version: u32,
    wrapped_dek: &str,
    sealed_payload: &str,
) -> Result<SecretFields, SealError> {
    let dek = unwrap_dek(keyring, ctx, kek_version, wrapped_dek)?;
    let plaintext = open_with(&data_key(&dek)?, payload_aad(ctx), sealed_payload)?;
    SecretFields::from_json(&plaintext).map_err(|_| SealError::Malformed)
}

/// Re-wraps a data key of (tenant, binding, version) under the active KEK without touching
/// the payload.
///
/// # Errors
/// As [`open_secret`] for the unwrap; [`SealError::Crypto`] for the wrap.
pub fn rewrap_data_key(
    keyring: &Keyring,
    tenant: &TenantId,
    binding: &BindingId,
    version: u32,
    kek_version: u32,
    wrapped_dek: &str,
) -> Result<(u32, String), SealError> {
    rewrap(
        keyring,
        SealContext::TenantSecret {
            tenant,
            binding,
            version,
        },
        kek_version,
        wrapped_dek,
    )
}

/// Re-wraps the data key of the item `ctx` under the active KEK without touching the payload.
///
/// # Errors
/// As [`rewrap_data_key`].
pub fn rewrap(
    keyring: &Keyring,
    ctx: SealContext<'_>,
    kek_version: u32,
    wrapped_dek: &str,
) -> Result<(u32, String), SealError> {
    let dek = unwrap_dek(keyring, ctx, kek_version, wrapped_dek)?;
    let active = keyring.active_version();
    let kek = keyring
        .cipher(active)
        .ok_or(SealError::MissingKek(active))?;
    let wrapped = seal_with(kek, dek_aad(ctx, active), &dek)?;
    Ok((active, wrapped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(t: &str, b: &str) -> (TenantId, BindingId) {
        (TenantId::parse(t).unwrap(), BindingId::parse(b).unwrap())
    }

    fn fields() -> SecretFields {
        SecretFields::from_json(br#"{"token":"s3cr3t-canary"}"#).unwrap()
    }

    /// The AAD's exact bytes: a change to their layout would still pass every round trip but
    /// no longer open a secret sealed by an earlier build.
    #[test]
    fn aad_bytes_are_pinned() {
        let (t, b) = ids("t1", "b1");
        let ctx = SealContext::TenantSecret {
            tenant: &t,
            binding: &b,
            version: 3,
        };
        assert_eq!(
            payload_aad(ctx),
            b"credbroker/secret-payload/v1\0t1\0b1\0\0\0\0\x03".to_vec()
        );
        assert_eq!(
            dek_aad(ctx, 2),
            b"credbroker/data-key/v1\0t1\0b1\0\0\0\0\x03\0\0\0\x02".to_vec()
        );
        let hook = SealContext::WebhookSecret {
            tenant: "t1",
            instance: "i1",
            version: 1,
        };
        assert_eq!(
            dek_aad(hook, 1),
            b"credbroker/webhook-secret-data-key/v1\0t1\0i1\0\0\0\0\x01\0\0\0\x01".to_vec()
        );
        let key = SealContext::PlatformKey {
            kind: "github_app",
            version: 258,
        };
        assert_eq!(
            payload_aad(key),
            b"credbroker/platform-key-payload/v1\0platform\0github_app\0\0\0\x01\x02".to_vec()
        );
    }

    #[test]
    fn round_trip() {
        let k = Keyring::generate().unwrap();
        let (t, b) = ids("t1", "b1");
        let s = seal_secret(&k, &t, &b, 1, &fields()).unwrap();
        assert!(!s.sealed_payload.contains("canary"));
        let out = open_secret(
            &k,
            &t,
            &b,
            1,
            s.kek_version,
            &s.wrapped_dek,
            &s.sealed_payload,
        )
        .unwrap();
        assert_eq!(out.expose("token"), Some("s3cr3t-canary"));
    }

    #[test]
    fn moved_ciphertext_fails() {
        let k = Keyring::generate().unwrap();
        let (t, b) = ids("t1", "b1");
        let s = seal_secret(&k, &t, &b, 1, &fields()).unwrap();
        let (t2, b2) = ids("t2", "b2");
        for (tt, bb, v) in [(&t2, &b, 1), (&t, &b2, 1), (&t, &b, 2)] {
            assert_eq!(
                open_secret(
                    &k,
                    tt,
                    bb,
                    v,
                    s.kek_version,
                    &s.wrapped_dek,
                    &s.sealed_payload
                )
                .err(),
                Some(SealError::Authentication)
            );
        }
    }

    #[test]
    fn tampered_payload_fails() {
        let k = Keyring::generate().unwrap();
        let (t, b) = ids("t1", "b1");
        let s = seal_secret(&k, &t, &b, 1, &fields()).unwrap();
        let mut raw = B64.decode(&s.sealed_payload).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let tampered = B64.encode(raw);
        assert_eq!(
            open_secret(&k, &t, &b, 1, 1, &s.wrapped_dek, &tampered).err(),
            Some(SealError::Authentication)
        );
        assert_eq!(
            open_secret(&k, &t, &b, 1, 1, &s.wrapped_dek, "!!").err(),
            Some(SealError::Malformed)
        );
    }

    /// A platform key never opens as a tenant secret, not even of a tenant called
    /// `platform` with a binding named like the key kind (the pre-domain sealing).
    #[test]
    fn a_platform_key_does_not_open_as_a_tenant_secret() {
        let k = Keyring::generate().unwrap();
        let s = seal(
            &k,
            SealContext::PlatformKey {
                kind: "github_app",
                version: 1,
            },
            &fields(),
        )
        .unwrap();
        let (t, b) = ids("platform", "github_app");
        assert_eq!(
            open_secret(
                &k,
                &t,
                &b,
                1,
                s.kek_version,
                &s.wrapped_dek,
                &s.sealed_payload
            )
            .err(),
            Some(SealError::Authentication)
        );
        assert_eq!(
            seal_secret(&k, &t, &b, 1, &fields()).err(),
            Some(SealError::ReservedTenant),
            "nothing is sealed for the tenant platform"
        );
        let legacy = seal(
            &k,
            SealContext::TenantSecret {
                tenant: &t,
                binding: &b,
                version: 1,
            },
            &fields(),
        )
        .unwrap();
        let as_key = SealContext::PlatformKey {
            kind: "github_app",
            version: 1,
        };
        assert_eq!(
            open(&k, as_key, 1, &legacy.wrapped_dek, &legacy.sealed_payload).err(),
            Some(SealError::Authentication)
        );
        let out = open(&k, as_key, s.kek_version, &s.wrapped_dek, &s.sealed_payload).unwrap();
        assert_eq!(out.expose("token"), Some("s3cr3t-canary"));
    }

    #[test]
    fn rewrap_keeps_payload_and_needs_old_kek_only_for_unwrap() {
        let mut k = Keyring::generate().unwrap();
        let (t, b) = ids("t1", "b1");
        let s = seal_secret(&k, &t, &b, 1, &fields()).unwrap();
        k.rotate().unwrap();
        let (kv, wrapped) = rewrap_data_key(&k, &t, &b, 1, s.kek_version, &s.wrapped_dek).unwrap();
        assert_eq!(kv, 2);
        let out = open_secret(&k, &t, &b, 1, kv, &wrapped, &s.sealed_payload).unwrap();
        assert_eq!(out.expose("token"), Some("s3cr3t-canary"));
        // The old wrap names KEK 1; a keyring without it cannot open it.
        let fresh = Keyring::generate().unwrap();
        assert_eq!(
            open_secret(&fresh, &t, &b, 1, 3, &wrapped, &s.sealed_payload).err(),
            Some(SealError::MissingKek(3))
        );
    }
}
