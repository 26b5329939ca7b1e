//! The signer a provider gets for one mint or probe: signs through the issuer and keeps
//! what it signed (never the token) for that operation's one audit record.

use std::sync::{Arc, Mutex};

use credbroker_providers::{AssertionSigner, ProviderError};

use super::{AssertionFacts, Issuer};

/// Signs through the daemon's issuer (if any) and records each assertion's facts.
pub struct RecordingSigner {
    issuer: Option<Arc<Issuer>>,
    signed: Mutex<Vec<AssertionFacts>>,
}

impl RecordingSigner {
    /// A signer over `issuer` (`None`: the daemon has no `[issuer]`; every request fails).
    pub fn new(issuer: Option<Arc<Issuer>>) -> RecordingSigner {
        RecordingSigner {
            issuer,
            signed: Mutex::new(Vec::new()),
        }
    }

    /// What was signed, as audit detail: `assertion jti=… sub=… aud=… kid=…` per assertion;
    /// `None` when nothing was.
    pub fn detail(&self) -> Option<String> {
        let signed = self.signed.lock().ok()?;
        (!signed.is_empty()).then(|| {
            signed
                .iter()
                .map(|f| {
                    format!(
                        "assertion jti={} sub={} aud={} kid={}",
                        f.jti, f.subject, f.audience, f.kid
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

impl AssertionSigner for RecordingSigner {
    fn sign(&self, subject: &str, audience: &str) -> Result<secrecy::SecretString, ProviderError> {
        let Some(issuer) = &self.issuer else {
            return credbroker_providers::NoIssuer.sign(subject, audience);
        };
        let (token, facts) = issuer.sign(subject, audience)?;
        if let Ok(mut signed) = self.signed.lock() {
            signed.push(facts);
        }
        Ok(token)
    }
}
