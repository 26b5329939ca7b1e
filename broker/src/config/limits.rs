//! `[limits]`: connection and request limits of the listeners.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent connections; further connections are closed at accept.
    pub max_connections: usize,
    /// Largest request head (HTTP/1 buffer, HTTP/2 header list), bytes; at least 8192.
    pub max_header_bytes: usize,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// TLS handshake deadline, milliseconds.
    pub handshake_timeout_ms: u64,
    /// TLS handshakes in progress at once; a connection arriving when all are taken is
    /// closed at accept. Handshakes do not take connection slots.
    pub max_handshakes: usize,
    /// TLS handshakes in progress from one source (IPv4 address or IPv6 /64) once half the
    /// budget is in use; one source never holds more than half of it (or this, if larger).
    pub max_handshakes_per_source: usize,
    /// Open connections from one source once half of `max_connections` are in use (the
    /// public listener enforces its own cap always).
    pub max_connections_per_source: usize,
    /// Open connections of one client identity (a worker's, operator's or scraper's
    /// certificate, from whatever addresses) once half of `max_connections` are in use: one
    /// identity never holds more than half of them (or this, if larger).
    pub max_connections_per_identity: usize,
    /// A connection with no request in progress for this long is closed, milliseconds.
    pub idle_timeout_ms: u64,
    /// A connection is closed (gracefully) after this long whatever it does, seconds, so
    /// nothing outlives a revocation or a configuration change for long.
    pub max_connection_age_s: u64,
    /// Deadline for a request head (and for the next one on a kept-alive connection), ms.
    pub header_read_timeout_ms: u64,
    /// Deadline for reading a request body, milliseconds.
    pub body_read_timeout_ms: u64,
    /// HTTP/2 concurrent streams per connection.
    pub http2_max_concurrent_streams: u32,
    /// Resolves and webhook verifications in progress on the mTLS listener at once (a
    /// request's slot is taken before its body is read and given back with its answer);
    /// further ones are answered 429 `rate_limited` before any work.
    pub max_requests_in_flight: usize,
    /// Of those, held by one client identity (from any number of connections and
    /// addresses) once half of `max_requests_in_flight` are in progress: one identity never
    /// holds more than half of them (or this, if larger).
    pub max_requests_in_flight_per_identity: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_header_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024,
            handshake_timeout_ms: 3_000,
            max_handshakes: 256,
            max_handshakes_per_source: 16,
            max_connections_per_source: 64,
            max_connections_per_identity: 64,
            idle_timeout_ms: 300_000,
            max_connection_age_s: 3600,
            header_read_timeout_ms: 30_000,
            body_read_timeout_ms: 10_000,
            http2_max_concurrent_streams: 64,
            max_requests_in_flight: 4096,
            max_requests_in_flight_per_identity: 256,
        }
    }
}

impl Limits {
    /// Every limit positive, the head buffer at least hyper's minimum.
    ///
    /// # Errors
    /// Naming the rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = self;
        if l.max_connections == 0
            || l.max_header_bytes < 8192
            || l.max_body_bytes == 0
            || l.handshake_timeout_ms == 0
            || l.header_read_timeout_ms == 0
            || l.body_read_timeout_ms == 0
            || l.http2_max_concurrent_streams == 0
            || l.max_handshakes == 0
            || l.max_handshakes_per_source == 0
            || l.max_connections_per_source == 0
            || l.max_connections_per_identity == 0
            || l.idle_timeout_ms == 0
            || l.max_connection_age_s == 0
            || l.max_requests_in_flight == 0
            || l.max_requests_in_flight_per_identity == 0
        {
            return Err(ConfigError(
                "limits must be positive (max_header_bytes at least 8192, hyper's minimum buffer)"
                    .into(),
            ));
        }
        Ok(())
    }
}
