//! `[keys]`: where the key material lives, and the rule that keeps the KEK out of the data.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError};

/// `[keys]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    /// KEK keyring file (default `<data_dir>/keys/kek.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek_file: Option<PathBuf>,
    /// Name of an environment variable holding the keyring JSON instead of a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek_env: Option<String>,
    /// Audit signing key (default `<data_dir>/keys/audit-signing.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_key_file: Option<PathBuf>,
    /// Audit public key (default `<data_dir>/keys/audit-signing.pub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_public_key_file: Option<PathBuf>,
    /// Token fingerprint HMAC key (default `<data_dir>/keys/fingerprint.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint_key_file: Option<PathBuf>,
}

impl Config {
    /// KEK keyring file (when not taken from the environment).
    pub fn kek_file(&self) -> PathBuf {
        self.keys
            .kek_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys/kek.json"))
    }

    /// Refuses a KEK keyring file inside the data directory (or the store directory): a
    /// backup or copy of the data would hold the key and the ciphertext together. `serve`
    /// checks this; dev mode keeps its keys beside its throwaway data.
    ///
    /// # Errors
    /// Naming both paths and the fix.
    pub fn check_kek_outside_data(&self) -> Result<(), ConfigError> {
        if self.keys.kek_env.is_some() {
            return Ok(());
        }
        let kek = self.kek_file();
        // Resolve symbolic links and `..` on the directories that exist; a file that does not
        // exist yet is judged by its directory.
        let resolve = |p: &Path| -> PathBuf {
            let mut missing = Vec::new();
            let mut cur = p.to_path_buf();
            loop {
                if let Ok(c) = cur.canonicalize() {
                    return missing.iter().rev().fold(c, |acc: PathBuf, m| acc.join(m));
                }
                match (cur.file_name().map(ToOwned::to_owned), cur.parent()) {
                    (Some(name), Some(parent)) => {
                        missing.push(name);
                        cur = parent.to_path_buf();
                    }
                    _ => return p.to_path_buf(),
                }
            }
        };
        let kek_real = resolve(&kek);
        for (what, dir) in [
            ("data directory", &self.data_dir),
            ("store directory", &self.store_dir()),
        ] {
            if kek_real.starts_with(resolve(dir)) {
                return Err(ConfigError(format!(
                    "the KEK keyring {} is inside the {what} {}: a backup or copy of it would hold the key with the ciphertext it protects. \
                     Move the file outside (e.g. /etc/credbroker/kek.json, mode 0600, owned by the daemon's user) and set keys.kek_file, \
                     or provide it with keys.kek_env (README, \"Secrets at rest\")",
                    kek.display(),
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    /// Audit signing key file.
    pub fn audit_key_file(&self) -> PathBuf {
        self.keys
            .audit_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys/audit-signing.key"))
    }

    /// Audit public key file.
    pub fn audit_public_key_file(&self) -> PathBuf {
        self.keys
            .audit_public_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys/audit-signing.pub"))
    }

    /// Fingerprint key file.
    pub fn fingerprint_key_file(&self) -> PathBuf {
        self.keys
            .fingerprint_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys/fingerprint.key"))
    }
}
