//! What providers that federate with the broker's own OIDC issuer need from the core: a
//! signer for short-lived assertions, and per-binding values the broker generates (the
//! subject a customer's trust condition pins).

use crate::ProviderError;

/// The broker's own OIDC issuer as a provider sees it: signs a short-lived JWT (minutes) with
/// one subject and one audience. The broker records each assertion's `jti`, subject and
/// audience in the audit record of the resolve or probe that asked for it — never the token.
pub trait AssertionSigner: Send + Sync {
    /// A signed assertion for `subject` and `audience`.
    ///
    /// # Errors
    /// `Unavailable` when no issuer is configured or no key can sign.
    fn sign(&self, subject: &str, audience: &str) -> Result<secrecy::SecretString, ProviderError>;
}

/// The signer of a daemon without an `[issuer]`: every request fails.
pub struct NoIssuer;

impl AssertionSigner for NoIssuer {
    fn sign(
        &self,
        _subject: &str,
        _audience: &str,
    ) -> Result<secrecy::SecretString, ProviderError> {
        Err(ProviderError::Unavailable {
            message: "this binding federates with the broker's own OIDC issuer and the daemon has no [issuer] section".into(),
            upstream_request_id: None,
        })
    }
}

/// A value the broker generates once per **binding** at `binding add` and injects under
/// `config.broker.<name>` — never accepted from an operator, a customer or a request, and
/// never issued again, even after the binding is removed (e.g. the OIDC `sub` a customer's
/// trust condition pins: one tenant's assertion can never satisfy another's trust).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingParameter {
    /// Name under `config.broker`.
    pub name: &'static str,
    /// A fixed prefix, so the value is recognisable in a customer's policy.
    pub prefix: &'static str,
    /// Length of the random part (alphanumeric).
    pub length: usize,
}

/// A random value of [`OIDC_SUBJECT`]'s shape that no binding holds (probability 62^-40):
/// what an activation probe presents to show the customer's trust refuses subjects other than
/// the binding's — including ones that only share its `cb-` prefix.
///
/// # Errors
/// `Internal` when the system CSPRNG fails.
pub fn random_subject() -> Result<String, ProviderError> {
    Ok(format!(
        "{}{}",
        OIDC_SUBJECT.prefix,
        random_alphanumeric(OIDC_SUBJECT.length)?
    ))
}

/// `length` random alphanumerics, uniformly distributed.
///
/// # Errors
/// `Internal` when the system CSPRNG fails.
pub fn random_alphanumeric(length: usize) -> Result<String, ProviderError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(length);
    while out.len() < length {
        let mut bytes = [0u8; 64];
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| ProviderError::Internal("system CSPRNG failed".into()))?;
        // Rejection sampling keeps the distribution uniform (248 = 4 × 62).
        for b in bytes.iter().filter(|b| **b < 248).take(length - out.len()) {
            out.push(ALPHABET[usize::from(*b % 62)] as char);
        }
    }
    Ok(out)
}

/// The subject of the broker's assertions for one binding: `cb-` + 40 alphanumerics (43
/// bytes; GCP's `google.subject` allows 127).
pub const OIDC_SUBJECT: BindingParameter = BindingParameter {
    name: "subject",
    prefix: "cb-",
    length: 40,
};
