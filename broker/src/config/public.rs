//! `[public]`: the optional public TLS listener for provider callbacks, its limits and their
//! checks.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The longest `[public] state_ttl_s`: a day.
pub const MAX_STATE_TTL_S: u64 = 86_400;

/// `[public]`: the optional public TLS listener for provider callbacks (install redirects,
/// webhooks). No client certificates; every callback is verified before it changes anything.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicSettings {
    /// Listener address.
    pub listen: SocketAddr,
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// Lifetime of an install `state` issued by `credbroker onboard`, seconds.
    #[serde(default = "default_state_ttl")]
    pub state_ttl_s: u64,
    /// The URL customers reach this listener at (`https://broker.example.com`): install
    /// links point at `{base_url}/callbacks/{provider}/start`. Required to onboard a
    /// provider with an install flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Largest webhook body, bytes (GitHub `installation` events of organisations with many
    /// repositories run to megabytes). Bodies are read only by the webhook route.
    #[serde(default = "default_webhook_body")]
    pub max_webhook_body_bytes: usize,
    /// Concurrent connections on this listener (its own budget, apart from `[limits]`).
    #[serde(default = "default_public_connections")]
    pub max_connections: usize,
    /// Open connections from one source (IPv4 address or IPv6 /64), always enforced.
    #[serde(default = "default_public_connections_per_source")]
    pub max_connections_per_source: usize,
    /// A connection with no request in progress for this long is closed, milliseconds.
    #[serde(default = "default_public_idle")]
    pub idle_timeout_ms: u64,
    /// Longest life of a connection, seconds.
    #[serde(default = "default_public_age")]
    pub max_connection_age_s: u64,
    /// TLS handshakes in progress on this listener.
    #[serde(default = "default_public_handshakes")]
    pub max_handshakes: usize,
    /// TLS handshakes in progress from one source (IPv4 address or IPv6 /64).
    #[serde(default = "default_public_handshakes_per_source")]
    pub max_handshakes_per_source: usize,
    /// Requests a second one source may make, sustained; beyond it `rate_limited` (429).
    #[serde(default = "default_public_rate_per_source")]
    pub requests_per_second_per_source: f64,
    /// Requests one source may make at once after a quiet period.
    #[serde(default = "default_public_burst_per_source")]
    pub burst_per_source: f64,
    /// Requests a second from all sources together, sustained.
    #[serde(default = "default_public_rate")]
    pub requests_per_second: f64,
    /// Requests from all sources at once after a quiet period.
    #[serde(default = "default_public_burst")]
    pub burst: f64,
}

fn default_state_ttl() -> u64 {
    3600
}
fn default_public_connections() -> usize {
    64
}
fn default_public_connections_per_source() -> usize {
    4
}
fn default_public_idle() -> u64 {
    10_000
}
fn default_public_age() -> u64 {
    120
}
fn default_webhook_body() -> usize {
    4 * 1024 * 1024
}
fn default_public_handshakes() -> usize {
    64
}
fn default_public_handshakes_per_source() -> usize {
    8
}
fn default_public_rate_per_source() -> f64 {
    1.0
}
fn default_public_burst_per_source() -> f64 {
    10.0
}
fn default_public_rate() -> f64 {
    50.0
}
fn default_public_burst() -> f64 {
    200.0
}

impl PublicSettings {
    /// The section's own rules: an https base URL without a path, positive limits.
    ///
    /// # Errors
    /// The first rule broken, naming it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = self;
        if let Some(url) = &p.base_url {
            let ok = url
                .parse::<http::Uri>()
                .ok()
                .filter(|u| u.scheme_str() == Some("https") && u.host().is_some())
                .is_some_and(|u| u.path() == "/" || u.path().is_empty())
                && !url.ends_with('/');
            if !ok {
                return Err(ConfigError(format!(
                    "[public] base_url {url:?} must be an https URL without a path or trailing slash"
                )));
            }
        }
        let rates = [
            p.requests_per_second_per_source,
            p.burst_per_source,
            p.requests_per_second,
            p.burst,
        ];
        if p.max_connections == 0
            || p.max_connections_per_source == 0
            || p.idle_timeout_ms == 0
            || p.max_connection_age_s == 0
            || p.max_webhook_body_bytes == 0
            || p.max_handshakes == 0
            || p.max_handshakes_per_source == 0
            || rates.iter().any(|r| !r.is_finite() || *r <= 0.0)
            || p.burst_per_source < 1.0
            || p.burst < 1.0
        {
            return Err(ConfigError(
                "[public] limits and rates must be positive (bursts at least 1)".into(),
            ));
        }
        // An opened install link blocks its Entra GUID for other tenants until it expires,
        // revoked or not: a link's life is kept to a day.
        if p.state_ttl_s == 0 || p.state_ttl_s > MAX_STATE_TTL_S {
            return Err(ConfigError(format!(
                "[public] state_ttl_s must be 1..={MAX_STATE_TTL_S} (seconds; an install link lives at most a day)"
            )));
        }
        // One source holds at most a quarter of the listener's 32 MiB body budget: a larger
        // body could never be read.
        if p.max_webhook_body_bytes > 8 * 1024 * 1024 {
            return Err(ConfigError(
                "[public] max_webhook_body_bytes must be at most 8388608 (8 MiB, one source's share of the public listener's body memory)".into(),
            ));
        }
        Ok(())
    }
}
