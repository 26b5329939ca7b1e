//! The App's own secrets: its private keys and OAuth client secrets as platform keys
//! (checked, installed, rotated with two active), and upstream revocation of the
//! installation tokens it minted.

use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::EncodingKey;
use secrecy::SecretString;

use super::GithubApp;
use crate::{IssuedCredential, PlatformKey, PlatformKeys, ProviderError, Revocation, SecretFields};

/// `sha256:<first 16 bytes hex>` of a key's PEM text: identifies it, reveals nothing.
fn fingerprint(pem: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pem.trim().as_bytes());
    format!("sha256:{}", hex::encode(&d.as_ref()[..16]))
}

#[async_trait]
impl Revocation for GithubApp {
    async fn revoke(
        &self,
        credential: &IssuedCredential,
        timeout: Duration,
    ) -> Result<(), ProviderError> {
        let token = credential
            .credentials
            .expose("token")
            .unwrap_or("")
            .to_owned();
        if token.is_empty() {
            return Ok(());
        }
        let answer = self
            .call(
                token,
                http::Method::DELETE,
                "/installation/token",
                None,
                timeout,
            )
            .await?;
        match answer.status {
            204 | 401 => Ok(()), // 401: already revoked or expired
            _ => Err(ProviderError::Unavailable {
                message: format!("GitHub HTTP {} revoking a token", answer.status),
                upstream_request_id: answer.request_id,
            }),
        }
    }
}

/// The two kinds of platform key material the App uses.
enum Material<'a> {
    /// The App private key (signs App JWTs).
    PrivateKey(&'a str),
    /// An OAuth client secret (proves who installed).
    OAuthClientSecret(&'a str),
}

fn material_of(m: &SecretFields) -> Result<Material<'_>, ProviderError> {
    match (m.expose("private_key_pem"), m.expose("oauth_client_secret")) {
        (Some(pem), None) => Ok(Material::PrivateKey(pem)),
        (None, Some(secret)) => Ok(Material::OAuthClientSecret(secret.trim())),
        _ => Err(ProviderError::InvalidConfig(
            "a key has exactly one field: private_key_pem (the App private key) or oauth_client_secret (an App client secret)".into(),
        )),
    }
}

impl PlatformKeys for GithubApp {
    fn check(&self, material: &SecretFields) -> Result<String, ProviderError> {
        match material_of(material)? {
            Material::PrivateKey(pem) => {
                EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| {
                    ProviderError::InvalidConfig(
                        "private_key_pem is not an RSA private key in PEM".into(),
                    )
                })?;
                Ok(fingerprint(pem))
            }
            Material::OAuthClientSecret(secret) => {
                // GitHub client secrets are 40 hex characters; accept any printable token of
                // a plausible length, never echo it.
                if !(20..=255).contains(&secret.len())
                    || !secret.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(ProviderError::InvalidConfig(
                        "oauth_client_secret must be 20-255 printable characters".into(),
                    ));
                }
                Ok(format!("oauth-client-secret:{}", fingerprint(secret)))
            }
        }
    }

    fn install(&self, keys: Vec<PlatformKey>) -> Result<(), ProviderError> {
        let mut parsed = Vec::with_capacity(keys.len());
        let mut secrets = Vec::new();
        for k in keys {
            let pem = match material_of(&k.material)? {
                Material::PrivateKey(pem) => pem,
                Material::OAuthClientSecret(secret) => {
                    secrets.push(SecretString::from(secret.to_owned()));
                    continue;
                }
            };
            let key = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| {
                ProviderError::InvalidConfig(format!(
                    "platform key {} is not an RSA key",
                    k.version
                ))
            })?;
            parsed.push((k.version, key));
        }
        // A retired key must stop being used even if a panic poisoned a lock.
        match self.keys.write() {
            Ok(mut slot) => *slot = parsed,
            Err(poisoned) => *poisoned.into_inner() = parsed,
        }
        match self.oauth_secrets.write() {
            Ok(mut slot) => *slot = secrets,
            Err(poisoned) => *poisoned.into_inner() = secrets,
        }
        Ok(())
    }

    /// Without an App private key no JWT can be signed, so nothing can be minted (unless
    /// `private_key_file` is configured: it signs when the store holds no active key); the
    /// OAuth client secret only proves who installed and is not required.
    fn required_kind(&self, material: &SecretFields) -> Option<&'static str> {
        if self.file_key.is_some() {
            return None;
        }
        matches!(material_of(material), Ok(Material::PrivateKey(_)))
            .then_some("GitHub App private key")
    }
}
