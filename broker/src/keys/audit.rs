//! The Ed25519 key pair that signs the audit log's checkpoints: the private key file the
//! daemon signs with, and the public one auditors verify with.

use std::path::Path;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use zeroize::Zeroizing;

use super::{io_err, json_exact, read_private_file, write_private_file, KeyError, B64};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SigningKeyFile {
    algorithm: String,
    pkcs8: String,
}

impl Drop for SigningKeyFile {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.pkcs8);
    }
}

/// Public key file format: `{"algorithm":"ed25519","public_key":"<base64>"}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicKeyFile {
    algorithm: String,
    public_key: String,
}

/// The Ed25519 key that signs audit checkpoints.
pub struct AuditSigner {
    pair: Ed25519KeyPair,
}

impl AuditSigner {
    /// Generates a key and writes the private (0600) and public key files.
    ///
    /// # Errors
    /// On CSPRNG or I/O failure.
    pub fn generate(private_path: &Path, public_path: &Path) -> Result<AuditSigner, KeyError> {
        let pair = Ed25519KeyPair::generate()
            .map_err(|_| KeyError::Invalid("could not generate Ed25519 key".into()))?;
        let pkcs8 = pair
            .to_pkcs8()
            .map_err(|_| KeyError::Invalid("could not encode Ed25519 key".into()))?;
        let file = SigningKeyFile {
            algorithm: "ed25519".into(),
            pkcs8: B64.encode(pkcs8.as_ref()),
        };
        if !super::create_private_file(private_path, &json_exact(&file, false))? {
            // Another command created it meanwhile: that one is the key, and its public key
            // is the one to write.
            let signer = AuditSigner::load(private_path)?;
            signer.write_public_key(public_path)?;
            return Ok(signer);
        }
        let signer = AuditSigner { pair };
        signer.write_public_key(public_path)?;
        Ok(signer)
    }

    /// Writes the public key file (what `audit verify` and auditors pin).
    ///
    /// # Errors
    /// On I/O failure.
    pub fn write_public_key(&self, public_path: &Path) -> Result<(), KeyError> {
        write_private_file(public_path, self.public_key_json().as_bytes())
    }

    /// Loads the private key file.
    ///
    /// # Errors
    /// When the file is missing or not an Ed25519 PKCS#8 key file.
    pub fn load(path: &Path) -> Result<AuditSigner, KeyError> {
        let text = read_private_file(path)?;
        let file: SigningKeyFile = serde_json::from_slice(&text)
            .map_err(|_| KeyError::Invalid(format!("{}: not an audit key file", path.display())))?;
        if file.algorithm != "ed25519" {
            return Err(KeyError::Invalid(
                "audit key algorithm must be ed25519".into(),
            ));
        }
        let der = Zeroizing::new(
            B64.decode(&file.pkcs8)
                .map_err(|_| KeyError::Invalid("audit key is not valid base64".into()))?,
        );
        let pair = Ed25519KeyPair::from_pkcs8(&der)
            .map_err(|_| KeyError::Invalid("audit key is not Ed25519 PKCS#8".into()))?;
        Ok(AuditSigner { pair })
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }

    /// The public key in its file format.
    pub fn public_key_json(&self) -> String {
        let file = PublicKeyFile {
            algorithm: "ed25519".into(),
            public_key: B64.encode(self.pair.public_key().as_ref()),
        };
        serde_json::to_string(&file).unwrap_or_default()
    }

    /// The verifier for this key.
    pub fn verifier(&self) -> AuditVerifier {
        AuditVerifier {
            public_key: self.pair.public_key().as_ref().to_vec(),
        }
    }
}

/// Verifies audit checkpoint signatures with only the public key.
#[derive(Clone)]
pub struct AuditVerifier {
    public_key: Vec<u8>,
}

impl AuditVerifier {
    /// Parses the public key file format.
    ///
    /// # Errors
    /// When the content is not an Ed25519 public key file.
    pub fn parse(text: &[u8]) -> Result<AuditVerifier, KeyError> {
        let file: PublicKeyFile = serde_json::from_slice(text)
            .map_err(|_| KeyError::Invalid("not an audit public key file".into()))?;
        let public_key = B64
            .decode(&file.public_key)
            .map_err(|_| KeyError::Invalid("public key is not valid base64".into()))?;
        if file.algorithm != "ed25519" || public_key.len() != 32 {
            return Err(KeyError::Invalid(
                "public key must be a 32-byte ed25519 key".into(),
            ));
        }
        Ok(AuditVerifier { public_key })
    }

    /// Loads a public key file.
    ///
    /// # Errors
    /// See [`AuditVerifier::parse`].
    pub fn load(path: &Path) -> Result<AuditVerifier, KeyError> {
        AuditVerifier::parse(&read_public_key_file(path).map_err(io_err(path))?)
    }

    /// The raw Ed25519 public key.
    pub fn public_key_bytes(&self) -> &[u8] {
        &self.public_key
    }

    /// Whether `signature` is valid for `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(message, signature)
            .is_ok()
    }
}

/// The most a public key file holds (a JSON key file is under 200 bytes).
const MAX_PUBLIC_KEY_FILE: u64 = 64 * 1024;

/// Reads a public key file, as handed over to an auditor or left on the host: a regular
/// file of at most 64 KiB. A FIFO (which would hang the reader), a device or a file past the
/// bound (a link to `/dev/zero`) is refused.
///
/// # Errors
/// When it cannot be read, or is not such a file.
pub fn read_public_key_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = crate::audit::segments::open_regular(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PUBLIC_KEY_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PUBLIC_KEY_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "larger than {} KiB: not a public key file",
                MAX_PUBLIC_KEY_FILE / 1024
            ),
        ));
    }
    Ok(bytes)
}
