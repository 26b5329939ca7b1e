//! `[inventory]` and `[webhooks]`: credential governance.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[inventory]`: what the credential inventory flags, and how last use is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InventorySettings {
    /// How often the last successful resolve of each binding and worker, kept in memory, is
    /// written to the store (one batch, only what changed), seconds; also at shutdown.
    pub flush_interval_s: u64,
    /// How often the inventory's flag gauges are recomputed, seconds.
    pub metrics_interval_s: u64,
    /// A binding or worker without a resolve for this long is `dormant`, seconds (the
    /// default of `credbroker inventory --dormant`).
    pub dormant_after_s: u64,
    /// A known expiry within this long is `expiring_soon`, seconds.
    pub expiring_within_s: u64,
    /// The most days a binding's active secret may age before `rotation_overdue`, by
    /// provider id, overriding the provider's declared default (`credbroker provider show`);
    /// a binding's own `max_secret_age_days` overrides both.
    pub max_secret_age_days: BTreeMap<String, u32>,
}

impl Default for InventorySettings {
    fn default() -> Self {
        InventorySettings {
            flush_interval_s: 60,
            metrics_interval_s: 300,
            dormant_after_s: 30 * 86_400,
            expiring_within_s: 14 * 86_400,
            max_secret_age_days: BTreeMap::new(),
        }
    }
}

/// `[webhooks]`: connector instances' webhook secrets and `POST /v1/webhooks/verify`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// After `webhook-secret rotate`, how long the previous secret still verifies (time to
    /// update the vendor side), seconds.
    pub overlap_s: u64,
    /// Reveals an operator may make per hour (per replica).
    pub reveals_per_hour: u32,
    /// The largest event body a worker may post to verify, bytes.
    pub max_body_bytes: usize,
    /// Failed verifications logged per minute at most, for each worker (all are counted).
    pub failure_logs_per_minute: u32,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            overlap_s: 86_400,
            reveals_per_hour: 10,
            max_body_bytes: 1024 * 1024,
            failure_logs_per_minute: 10,
        }
    }
}
