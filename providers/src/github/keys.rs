//! The App's own secrets: its private keys and OAuth client secrets as platform keys
//! (checked, installed, rotated with two active), and upstream revocation of the
//! installation tokens it minted.

use std::time::Duration;

use async_trait::async_trait;
use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use jsonwebtoken::EncodingKey;
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::GithubApp;
use crate::{IssuedCredential, PlatformKey, PlatformKeys, ProviderError, Revocation, SecretFields};

/// The label and DER bytes of the first PEM block in `text`.
fn pem_block(text: &str) -> Option<(String, Zeroizing<Vec<u8>>)> {
    const BEGIN: &str = "-----BEGIN ";
    let start = text.find(BEGIN)? + BEGIN.len();
    let rest = &text[start..];
    let label_len = rest.find("-----")?;
    let label = &rest[..label_len];
    let body = &rest[label_len + 5..];
    let end = body.find(&format!("-----END {label}-----"))?;
    let b64: Zeroizing<String> = Zeroizing::new(
        body[..end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect(),
    );
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .ok()?;
    Some((label.to_owned(), Zeroizing::new(der)))
}

/// The fingerprint GitHub shows for an App private key (App settings → Private keys):
/// `SHA256:` + base64 (standard, padded) of the SHA-256 of the DER SubjectPublicKeyInfo of
/// its public half — what `openssl rsa -in KEY.pem -pubout -outform DER | openssl sha256
/// -binary | openssl base64` prints. The same key gives the same fingerprint whatever its
/// PEM encoding (PKCS#1 as GitHub downloads it, or PKCS#8) or line endings.
pub(crate) fn app_key_fingerprint(pem: &str) -> Result<String, String> {
    let unreadable = || {
        "private_key_pem is not an RSA private key in PEM (PKCS#1 or PKCS#8, 2048 bits or more)"
            .to_owned()
    };
    let (label, der) = pem_block(pem).ok_or_else(unreadable)?;
    let pair = match label.as_str() {
        "RSA PRIVATE KEY" => aws_lc_rs::rsa::KeyPair::from_der(&der),
        "PRIVATE KEY" => aws_lc_rs::rsa::KeyPair::from_pkcs8(&der),
        _ => return Err(unreadable()),
    }
    .map_err(|_| unreadable())?;
    let spki = AsDer::<PublicKeyX509Der>::as_der(pair.public_key()).map_err(|_| unreadable())?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki.as_ref());
    Ok(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    ))
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
    fn check(
        &self,
        material: &SecretFields,
        keyed: &dyn Fn(&[u8]) -> String,
    ) -> Result<String, ProviderError> {
        match material_of(material)? {
            Material::PrivateKey(pem) => {
                EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| {
                    ProviderError::InvalidConfig(
                        "private_key_pem is not an RSA private key in PEM".into(),
                    )
                })?;
                app_key_fingerprint(pem).map_err(ProviderError::InvalidConfig)
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
                Ok(crate::keyed_secret_fingerprint(
                    "oauth-client-secret",
                    "github oauth client secret",
                    secret,
                    keyed,
                ))
            }
        }
    }

    fn earlier_fingerprint(&self, material: &SecretFields) -> Option<String> {
        match material_of(material).ok()? {
            Material::OAuthClientSecret(secret) => Some(format!(
                "oauth-client-secret:{}",
                crate::plain_sha256_prefix(secret)
            )),
            Material::PrivateKey(_) => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    /// (tag, contents, rest) of the DER element at the start of `d`.
    fn der_element(d: &[u8]) -> (u8, &[u8], &[u8]) {
        let (tag, first) = (d[0], d[1]);
        let (len, at) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            let len = d[2..2 + n]
                .iter()
                .fold(0usize, |a, b| (a << 8) | usize::from(*b));
            (len, 2 + n)
        };
        (tag, &d[at..at + len], &d[at + len..])
    }

    #[test]
    fn app_key_fingerprints_are_the_ones_github_shows() {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp).unwrap();
        let spki = AsDer::<PublicKeyX509Der>::as_der(kp.public_key()).unwrap();
        let expected = format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD.encode(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki.as_ref()).as_ref()
            )
        );
        // PKCS#1 (GitHub's download) is the OCTET STRING inside PKCS#8's PrivateKeyInfo.
        let (_, info, _) = der_element(pkcs8.as_ref());
        let (_, _, rest) = der_element(info);
        let (_, _, rest) = der_element(rest);
        let (tag, pkcs1, _) = der_element(rest);
        assert_eq!(tag, 0x04);
        let p8 = pem("PRIVATE KEY", pkcs8.as_ref());
        let p1 = pem("RSA PRIVATE KEY", pkcs1);
        assert_eq!(app_key_fingerprint(&p8).unwrap(), expected);
        assert_eq!(app_key_fingerprint(&p1).unwrap(), expected);
        assert_eq!(
            app_key_fingerprint(&p1.replace('\n', "\r\n")).unwrap(),
            expected
        );
        assert_eq!(
            app_key_fingerprint(&format!("\n\n{p1}\n")).unwrap(),
            expected
        );
        // 32 bytes of digest: 44 base64 characters, one of them padding.
        assert_eq!(expected.len(), "SHA256:".len() + 44);
        assert!(expected.ends_with('='));
        for bad in [
            "not a key".to_owned(),
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_owned(),
            p1.replace("-----END RSA PRIVATE KEY-----", ""),
            pem("RSA PRIVATE KEY", b"\x30\x03\x02\x01\x00"),
        ] {
            assert!(app_key_fingerprint(&bad).is_err(), "{bad}");
        }
    }
}
