//! `[tls]`: the mTLS listener's certificate, key, client trust and CRL.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[tls]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM, PKCS#8/PKCS#1/SEC1).
    pub key: PathBuf,
    /// CA bundle that worker and operator certificates must chain to (PEM).
    pub client_ca: PathBuf,
    /// Optional CRL file (PEM, one or more CRLs) checked on every handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<PathBuf>,
    /// How often the CRL file is read to see whether it changed, seconds (0: only on
    /// `credbroker reload`): a changed CRL is loaded as a reload would, so a revocation
    /// takes effect within this bound even when nobody signals the daemon.
    #[serde(default = "default_crl_check")]
    pub crl_check_interval_s: u64,
    /// What a CRL past its `nextUpdate` does: `refuse` (the default) fails every handshake
    /// it would have checked, as OpenSSL does, so a publisher that stopped (or is kept from)
    /// publishing cannot leave later revocations unseen; `accept` keeps using it (alerted).
    #[serde(default, skip_serializing_if = "StaleCrl::is_default")]
    pub stale_crl: StaleCrl,
}

/// `[tls] stale_crl`: what a CRL past its `nextUpdate` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StaleCrl {
    /// Client certificates it would check are refused until a current CRL is loaded.
    #[default]
    Refuse,
    /// Still used: revocations it lists hold, later ones are unknown.
    Accept,
}

impl StaleCrl {
    fn is_default(&self) -> bool {
        *self == StaleCrl::Refuse
    }
}

/// `[tls] crl_check_interval_s` unless set.
pub const DEFAULT_CRL_CHECK_S: u64 = 60;

fn default_crl_check() -> u64 {
    DEFAULT_CRL_CHECK_S
}

/// The longest `[tls] crl_check_interval_s`: a day (a revocation waiting longer than that
/// for a signal is not what the setting is for).
pub const MAX_CRL_CHECK_S: u64 = 86_400;

impl TlsSettings {
    /// `crl_check_interval_s` at most [`MAX_CRL_CHECK_S`].
    ///
    /// # Errors
    /// Naming the key and its range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.crl_check_interval_s > MAX_CRL_CHECK_S {
            return Err(ConfigError(format!(
                "tls.crl_check_interval_s must be 0 (on reload only) or at most {MAX_CRL_CHECK_S} (seconds)"
            )));
        }
        Ok(())
    }
}
