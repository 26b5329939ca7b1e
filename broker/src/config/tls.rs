//! `[tls]`: the mTLS listener's certificate, key, client trust and CRL.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
}

/// `[tls] crl_check_interval_s` unless set.
pub const DEFAULT_CRL_CHECK_S: u64 = 60;

fn default_crl_check() -> u64 {
    DEFAULT_CRL_CHECK_S
}
