//! Key material the broker holds outside its store: the versioned key-encryption key (KEK)
//! ring, the Ed25519 audit checkpoint key and the HMAC key for token fingerprints.
//!
//! Key files are JSON, created with mode 0600, replaced atomically (write, fsync, rename,
//! fsync the directory) so a crash never leaves a half-written key file. In-memory key bytes
//! are zeroizing and no type here implements `Debug` or `Display` over key bytes.

mod audit;
mod files;
pub mod loaded;
pub mod rotation;

pub use audit::{read_public_key_file, AuditSigner, AuditVerifier};
pub(crate) use files::append_zeroizing;
pub use files::{
    create_private_dir, create_private_file, lock_file, read_private_file, read_wiped,
    write_private_file, LockFailure, MAX_SECRET_INPUT,
};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{RandomizedNonceKey, AES_256_GCM};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// A failure to load, parse or write key material. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Path concerned.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The content is not a valid key file of the expected kind.
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Fills `n` bytes from the system CSPRNG.
///
/// # Errors
/// When the CSPRNG fails (the daemon then refuses to start or to seal).
pub fn random_bytes(n: usize) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let mut out = Zeroizing::new(vec![0u8; n]);
    aws_lc_rs::rand::fill(&mut out)
        .map_err(|_| KeyError::Invalid("system CSPRNG failed".into()))?;
    Ok(out)
}

/// `value` as JSON (`pretty` or compact) in a wiped buffer sized first and written once: a
/// buffer that grew would leave freed copies of the key text behind.
fn json_exact<T: Serialize>(value: &T, pretty: bool) -> Zeroizing<Vec<u8>> {
    let write = |w: &mut dyn std::io::Write| {
        if pretty {
            serde_json::to_writer_pretty(w, value)
        } else {
            serde_json::to_writer(w, value)
        }
    };
    let mut size = ByteCount(0);
    let _ = write(&mut size);
    let mut out = Zeroizing::new(Vec::with_capacity(size.0));
    if write(&mut *out).is_err() {
        out.clear();
    }
    out
}

/// A writer that only counts what it is given.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    active: u32,
    keys: BTreeMap<u32, String>,
}

/// The versioned key-encryption keys. Data keys are wrapped with the active version; older
/// versions stay so existing wraps open until `keys rotate-kek` has re-wrapped them.
pub struct Keyring {
    active: u32,
    keys: BTreeMap<u32, Kek>,
}

/// One KEK version: its bytes (to save the keyring) and its AES-256-GCM key prepared once,
/// so that opening a secret does not expand the KEK's key schedule on every resolve. The
/// prepared key lives in memory allocated by aws-lc, which cleanses it when it is freed
/// (`OPENSSL_free`, with aws-lc's default allocator: nothing here installs
/// `CRYPTO_set_mem_functions` or `OPENSSL_memory_free`, and doing so would drop that
/// cleanse), as `Zeroizing` does for the bytes.
struct Kek {
    bytes: Zeroizing<Vec<u8>>,
    cipher: RandomizedNonceKey,
}

impl Kek {
    fn new(bytes: Zeroizing<Vec<u8>>, version: u32) -> Result<Kek, KeyError> {
        let cipher = RandomizedNonceKey::new(&AES_256_GCM, &bytes).map_err(|_| {
            KeyError::Invalid(format!("KEK version {version} is not a usable AES-256 key"))
        })?;
        Ok(Kek { bytes, cipher })
    }
}

impl Keyring {
    /// A new keyring with one random version 1.
    ///
    /// # Errors
    /// When the CSPRNG fails.
    pub fn generate() -> Result<Keyring, KeyError> {
        let mut keys = BTreeMap::new();
        keys.insert(1, Kek::new(random_bytes(32)?, 1)?);
        Ok(Keyring { active: 1, keys })
    }

    /// Parses the JSON keyring format `{"active": N, "keys": {"N": "<base64 32 bytes>"}}`.
    ///
    /// # Errors
    /// When the JSON is malformed, a key is not 32 bytes, or the active version is missing.
    pub fn parse(text: &[u8]) -> Result<Keyring, KeyError> {
        let mut file: KeyringFile = serde_json::from_slice(text)
            .map_err(|_| KeyError::Invalid("KEK keyring is not valid keyring JSON".into()))?;
        let keyring = Keyring::from_file(&file);
        // The keys' base64 text is key material too: wiped whatever the outcome.
        for (_, mut b64) in std::mem::take(&mut file.keys) {
            zeroize::Zeroize::zeroize(&mut b64);
        }
        keyring
    }

    fn from_file(file: &KeyringFile) -> Result<Keyring, KeyError> {
        let mut keys = BTreeMap::new();
        for (version, b64) in &file.keys {
            let bytes = Zeroizing::new(B64.decode(b64).map_err(|_| {
                KeyError::Invalid(format!("KEK version {version} is not valid base64"))
            })?);
            if bytes.len() != 32 {
                return Err(KeyError::Invalid(format!(
                    "KEK version {version} must be 32 bytes"
                )));
            }
            keys.insert(*version, Kek::new(bytes, *version)?);
        }
        if !keys.contains_key(&file.active) {
            return Err(KeyError::Invalid(format!(
                "active KEK version {} is not in the keyring",
                file.active
            )));
        }
        Ok(Keyring {
            active: file.active,
            keys,
        })
    }

    /// Loads a keyring file.
    ///
    /// # Errors
    /// See [`Keyring::parse`]; also I/O errors.
    pub fn load(path: &Path) -> Result<Keyring, KeyError> {
        let text = read_private_file(path)?;
        Keyring::parse(&text)
    }

    /// Serializes to the keyring JSON format (zeroizing buffer).
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let file = KeyringFile {
            active: self.active,
            keys: self
                .keys
                .iter()
                .map(|(v, k)| (*v, B64.encode(k.bytes.as_slice())))
                .collect(),
        };
        let out = json_exact(&file, true);
        for (_, mut b64) in file.keys {
            zeroize::Zeroize::zeroize(&mut b64);
        }
        out
    }

    /// Writes the keyring atomically (mode 0600). Call it holding the keyring's lock (a
    /// rotation's): every temporary of the keyring is removed first, whatever its age.
    ///
    /// # Errors
    /// On I/O failure.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        // A rotation saves under the keyring's lock: no other writer of it is at work, and
        // a killed one's temporary (every KEK version it had) goes now, whatever its age.
        if let Some(dir) = path.parent() {
            files::remove_stale_temporaries(dir, path, std::time::Duration::ZERO);
        }
        write_private_file(path, &self.to_json())
    }

    /// Writes the keyring (mode 0600) when none is at `path`: `Ok(false)` when one is (made
    /// meanwhile by another command), which is left as it is.
    ///
    /// # Errors
    /// On I/O failure.
    pub fn create(&self, path: &Path) -> Result<bool, KeyError> {
        create_private_file(path, &self.to_json())
    }

    /// Adds a new random version and makes it active; returns the new version.
    ///
    /// # Errors
    /// When the CSPRNG fails.
    pub fn rotate(&mut self) -> Result<u32, KeyError> {
        let next = self.keys.keys().next_back().copied().unwrap_or(0) + 1;
        self.keys.insert(next, Kek::new(random_bytes(32)?, next)?);
        self.active = next;
        Ok(next)
    }

    /// The active version.
    pub fn active_version(&self) -> u32 {
        self.active
    }

    /// All versions held.
    pub fn versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }

    /// The prepared AES-256-GCM key of one version.
    pub(crate) fn cipher(&self, version: u32) -> Option<&RandomizedNonceKey> {
        self.keys.get(&version).map(|k| &k.cipher)
    }
}

/// The HMAC-SHA256 key used to fingerprint issued tokens in audit records (so an auditor can
/// match a token they hold against the log without the log holding tokens).
pub struct FingerprintKey {
    key: aws_lc_rs::hmac::Key,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FingerprintKeyFile {
    hmac_sha256: String,
}

impl Drop for FingerprintKeyFile {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.hmac_sha256);
    }
}

impl FingerprintKey {
    /// Generates a key and writes it (0600).
    ///
    /// # Errors
    /// On CSPRNG or I/O failure.
    pub fn generate(path: &Path) -> Result<FingerprintKey, KeyError> {
        let bytes = random_bytes(32)?;
        let file = FingerprintKeyFile {
            hmac_sha256: B64.encode(bytes.as_slice()),
        };
        if !create_private_file(path, &json_exact(&file, false))? {
            // Another command created it meanwhile: that one is the key.
            return FingerprintKey::load(path);
        }
        Ok(FingerprintKey::from_bytes(&bytes))
    }

    /// Loads a key file.
    ///
    /// # Errors
    /// When missing or malformed.
    pub fn load(path: &Path) -> Result<FingerprintKey, KeyError> {
        let text = read_private_file(path)?;
        let file: FingerprintKeyFile = serde_json::from_slice(&text).map_err(|_| {
            KeyError::Invalid(format!("{}: not a fingerprint key file", path.display()))
        })?;
        let bytes = Zeroizing::new(
            B64.decode(&file.hmac_sha256)
                .map_err(|_| KeyError::Invalid("fingerprint key is not valid base64".into()))?,
        );
        if bytes.len() < 32 {
            return Err(KeyError::Invalid(
                "fingerprint key must be at least 32 bytes".into(),
            ));
        }
        Ok(FingerprintKey::from_bytes(&bytes))
    }

    fn from_bytes(bytes: &[u8]) -> FingerprintKey {
        FingerprintKey {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, bytes),
        }
    }

    /// `hmac-sha256:<first 16 bytes, hex>` of the credential bytes.
    pub fn fingerprint(&self, credential: &[u8]) -> String {
        let tag = aws_lc_rs::hmac::sign(&self.key, credential);
        const PREFIX: &str = "hmac-sha256:";
        let mut out = String::with_capacity(PREFIX.len() + 32);
        out.push_str(PREFIX);
        crate::hex_text::push_hex(&mut out, &tag.as_ref()[..16]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::files::temporary_of;
    use super::*;
    use std::fs;

    #[test]
    fn keyring_round_trip_and_rotation() {
        let mut k = Keyring::generate().unwrap();
        assert_eq!(k.active_version(), 1);
        assert_eq!(k.rotate().unwrap(), 2);
        // Written into a buffer of exactly its size (never grown: no copy left behind).
        let json = k.to_json();
        assert_eq!(json.len(), json.capacity());
        let again = Keyring::parse(&k.to_json()).unwrap();
        assert_eq!(again.active_version(), 2);
        assert_eq!(*again.keys[&1].bytes, *k.keys[&1].bytes);
        assert_eq!(again.versions().collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn keyring_rejects_bad_input() {
        assert!(Keyring::parse(b"{}").is_err());
        assert!(Keyring::parse(br#"{"active":2,"keys":{"1":"AAAA"}}"#).is_err());
        assert!(Keyring::parse(br#"{"active":1,"keys":{"1":"AAAA"}}"#).is_err());
    }

    #[test]
    fn audit_key_signs_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let s =
            AuditSigner::generate(&dir.path().join("a.key"), &dir.path().join("a.pub")).unwrap();
        let sig = s.sign(b"msg");
        let v = AuditVerifier::load(&dir.path().join("a.pub")).unwrap();
        assert!(v.verify(b"msg", &sig));
        assert!(!v.verify(b"msh", &sig));
        let s2 = AuditSigner::load(&dir.path().join("a.key")).unwrap();
        assert!(v.verify(b"x", &s2.sign(b"x")));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(dir.path().join("a.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    /// Keys made by commands running at once (two `init`s): one key per file, and the
    /// audit public key is the public half of the private key on disk, whichever won. With
    /// one temporary name per key file, one writer removed or renamed the other's file and
    /// the two files could come from two keys.
    #[test]
    fn keys_created_at_once_are_one_key_each() {
        for _ in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let (key, public, fp, kek) = (
                dir.path().join("a.key"),
                dir.path().join("a.pub"),
                dir.path().join("fp.key"),
                dir.path().join("kek.json"),
            );
            let made: Vec<_> = (0..8)
                .map(|_| {
                    let (key, public, fp, kek) =
                        (key.clone(), public.clone(), fp.clone(), kek.clone());
                    std::thread::spawn(move || {
                        let signer = AuditSigner::generate(&key, &public).unwrap();
                        let fingerprint = FingerprintKey::generate(&fp).unwrap().fingerprint(b"t");
                        let created = Keyring::generate().unwrap().create(&kek).unwrap();
                        (signer.public_key_json(), fingerprint, created)
                    })
                })
                .collect();
            let made: Vec<_> = made.into_iter().map(|t| t.join().unwrap()).collect();
            let on_disk = AuditSigner::load(&key).unwrap().public_key_json();
            assert_eq!(std::fs::read_to_string(&public).unwrap(), on_disk);
            let fingerprint = FingerprintKey::load(&fp).unwrap().fingerprint(b"t");
            for (signer, f, _) in &made {
                assert_eq!(signer, &on_disk, "a signer of another key was handed out");
                assert_eq!(
                    f, &fingerprint,
                    "a fingerprint key not on disk was handed out"
                );
            }
            assert_eq!(
                made.iter().filter(|m| m.2).count(),
                1,
                "one keyring created"
            );
            Keyring::load(&kek).unwrap();
            let leftovers: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".tmp"))
                .collect();
            assert!(leftovers.is_empty(), "{leftovers:?}");
        }
    }

    #[test]
    fn fingerprints_are_keyed() {
        let dir = tempfile::tempdir().unwrap();
        let a = FingerprintKey::generate(&dir.path().join("a")).unwrap();
        let b = FingerprintKey::generate(&dir.path().join("b")).unwrap();
        assert_eq!(a.fingerprint(b"t"), a.fingerprint(b"t"));
        assert_ne!(a.fingerprint(b"t"), b.fingerprint(b"t"));
        let a2 = FingerprintKey::load(&dir.path().join("a")).unwrap();
        assert_eq!(a.fingerprint(b"t"), a2.fingerprint(b"t"));
        let tag = aws_lc_rs::hmac::sign(&a.key, b"t");
        assert_eq!(
            a.fingerprint(b"t"),
            format!("hmac-sha256:{}", hex::encode(&tag.as_ref()[..16])),
            "the HMAC's first 16 bytes in lowercase hex"
        );
    }

    #[test]
    fn key_files_readable_by_others_or_behind_a_link_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.json");
        Keyring::generate().unwrap().save(&path).unwrap();
        assert!(Keyring::load(&path).is_ok());
        for mode in [0o640, 0o604, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = Keyring::load(&path).err().unwrap().to_string();
            assert!(err.contains("chmod 600"), "{mode:o}: {err}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = Keyring::load(&link).err().unwrap().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        // A link planted under a temporary's name is removed, not followed: a keyring save
        // (under the rotation's lock) removes every temporary of the keyring, a fresh one
        // too.
        let target = dir.path().join("elsewhere");
        fs::write(&target, b"untouched").unwrap();
        let planted = temporary_of(&path).unwrap();
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        Keyring::generate().unwrap().save(&path).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"untouched");
        assert!(
            fs::symlink_metadata(&planted).is_err(),
            "the temporary stayed"
        );
        assert!(Keyring::load(&path).is_ok());
    }
}
