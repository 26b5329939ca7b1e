//! The key material a daemon runs with, loaded (or created) from the places its config
//! names: the KEK keyring (a file, or an environment variable taken out of the environment),
//! the audit signing key and the fingerprint key.

use zeroize::Zeroizing;

use super::{AuditSigner, AuditVerifier, FingerprintKey, KeyError, Keyring};
use crate::config::Config;

/// Key material the broker runs with.
pub struct BrokerKeys {
    /// KEK keyring.
    pub keyring: Keyring,
    /// Audit checkpoint signer.
    pub audit_signer: AuditSigner,
    /// Token fingerprint key.
    pub fingerprint: FingerprintKey,
}

/// The keyring taken out of the environment by [`take_kek_from_env`]: (variable, value).
static TAKEN_KEK: std::sync::Mutex<Option<(String, Zeroizing<String>)>> =
    std::sync::Mutex::new(None);

/// Reads the KEK keyring from environment variable `var` and removes the variable from the
/// process environment, so that child processes do not inherit it and later reads of the
/// environment do not find it; [`BrokerKeys::load`] then uses the value taken. Call it
/// before any thread is started (`serve` does, before its runtime): changing the environment
/// while another thread reads it is unsound in C libraries. `/proc/<pid>/environ` still shows
/// the environment the process was started with.
///
/// # Errors
/// When the variable is not set or not UTF-8.
pub fn take_kek_from_env(var: &str) -> Result<(), KeyError> {
    let value = Zeroizing::new(std::env::var(var).map_err(|_| {
        KeyError::Invalid(format!(
            "environment variable {var} (keys.kek_env) is not set"
        ))
    })?);
    std::env::remove_var(var);
    let mut taken = TAKEN_KEK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *taken = Some((var.to_owned(), value));
    Ok(())
}

/// The keyring taken for `var`, moved out: no copy of every KEK version stays in a static for
/// the life of the process once the keyring is parsed (wiped when dropped).
fn taken_kek(var: &str) -> Option<Zeroizing<String>> {
    let mut taken = TAKEN_KEK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match taken.take() {
        Some((v, value)) if v == var => Some(value),
        other => {
            *taken = other;
            None
        }
    }
}

impl BrokerKeys {
    /// Loads the keys named by `config`.
    ///
    /// # Errors
    /// When a key is missing (run `credbroker init`) or malformed.
    pub fn load(config: &Config) -> Result<BrokerKeys, KeyError> {
        let keyring = match &config.keys.kek_env {
            Some(var) => {
                let value = match taken_kek(var) {
                    Some(v) => v,
                    None => Zeroizing::new(std::env::var(var).map_err(|_| {
                        KeyError::Invalid(format!(
                            "environment variable {var} (keys.kek_env) is not set"
                        ))
                    })?),
                };
                Keyring::parse(value.as_bytes())?
            }
            None => Keyring::load(&config.kek_file())?,
        };
        let audit_signer = AuditSigner::load(&config.audit_key_file())?;
        check_audit_public_key(&audit_signer, &config.audit_public_key_file())?;
        Ok(BrokerKeys {
            keyring,
            audit_signer,
            fingerprint: FingerprintKey::load(&config.fingerprint_key_file())?,
        })
    }

    /// Creates every key file that does not exist yet; never overwrites one. Returns the
    /// files created.
    ///
    /// # Errors
    /// On I/O or CSPRNG failure, and when the audit public key exists without its private
    /// key (never replaced by a new pair).
    pub fn init(config: &Config) -> Result<Vec<std::path::PathBuf>, KeyError> {
        let mut created = Vec::new();
        if config.keys.kek_env.is_none()
            && !config.kek_file().exists()
            && Keyring::generate()?.create(&config.kek_file())?
        {
            created.push(config.kek_file());
        }
        if !config.audit_key_file().exists() && config.audit_public_key_file().exists() {
            // A public key without its private key: the signing key was moved or lost (or
            // `[keys] audit_key_file` names the wrong place). A new key would replace the
            // public key auditors verify the existing log with.
            return Err(KeyError::Invalid(format!(
                "{} exists but the audit signing key {} does not: point [keys] audit_key_file at the key that signed this log (a new key would replace the public key its checkpoints verify with; move the public key away first only to start a new log)",
                config.audit_public_key_file().display(),
                config.audit_key_file().display()
            )));
        }
        if !config.audit_key_file().exists() {
            AuditSigner::generate(&config.audit_key_file(), &config.audit_public_key_file())?;
            created.push(config.audit_key_file());
            created.push(config.audit_public_key_file());
        } else if !config.audit_public_key_file().exists() {
            // Interrupted between the two files (or the public one deleted): the public key is
            // derived from the private one again, or `audit verify` and `doctor` have none.
            let signer = AuditSigner::load(&config.audit_key_file())?;
            signer.write_public_key(&config.audit_public_key_file())?;
            created.push(config.audit_public_key_file());
        }
        if !config.fingerprint_key_file().exists() {
            FingerprintKey::generate(&config.fingerprint_key_file())?;
            created.push(config.fingerprint_key_file());
        }
        Ok(created)
    }
}

/// Refuses an audit public key file that is not the signing key's: auditors are handed that
/// file (`audit public-key`) and verify with it when they pinned nothing, so a key swapped in
/// beside the log would have them verify a log its holder re-signed. A missing file is left
/// to `init` (it derives it again).
///
/// # Errors
/// When the file exists and holds another key, or cannot be read as a public key.
pub fn check_audit_public_key(
    signer: &AuditSigner,
    path: &std::path::Path,
) -> Result<(), KeyError> {
    if !path.exists() {
        return Ok(());
    }
    let found = AuditVerifier::load(path)?;
    if found.public_key_bytes() != signer.verifier().public_key_bytes() {
        return Err(KeyError::Invalid(format!(
            "{} is not the public key of the audit signing key: it was replaced or belongs to another broker; auditors verify with it, so restore it from the copy auditors pinned (or delete it and run `credbroker init`, which derives it from the signing key)",
            path.display()
        )));
    }
    Ok(())
}
