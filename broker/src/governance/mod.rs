//! Credential governance state kept in memory: when each binding and worker last resolved
//! (made durable in periodic batches, never a store write per resolve), the reveal budget of
//! each operator, and the budget of failed-verification log lines.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::api_error::ApiError;
use crate::broker::Answer;
use crate::identity::PeerIdentity;
use crate::store::records::{LastUseKind, Records};
use crate::store::{Batch, StoreError};

pub mod inventory;

/// In-memory governance state of one broker.
pub struct Governance {
    last_use: Mutex<LastUse>,
    reveals: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Per caller (a worker's name): the minute's start, lines logged in it, lines
    /// suppressed since the last one logged.
    failure_logs: Mutex<HashMap<String, (Instant, u32, u64)>>,
    settings: (
        crate::config::InventorySettings,
        crate::config::WebhookSettings,
    ),
}

/// Last uses by kind (bindings, workers), each id → when and whether the store has it yet.
#[derive(Default)]
struct LastUse {
    by_kind: [HashMap<String, Use>; 2],
}

#[derive(Clone, Copy)]
struct Use {
    at: i64,
    dirty: bool,
}

const KINDS: [LastUseKind; 2] = [LastUseKind::Binding, LastUseKind::Worker];

/// Last-use rows written per store transaction.
const FLUSH_CHUNK: usize = 1000;

#[cfg(test)]
impl LastUse {
    fn dirty(&self) -> usize {
        self.by_kind
            .iter()
            .map(|m| m.values().filter(|u| u.dirty).count())
            .sum()
    }
}

impl Governance {
    /// Empty state under these settings.
    pub fn new(
        inventory: crate::config::InventorySettings,
        webhooks: crate::config::WebhookSettings,
    ) -> Governance {
        Governance {
            last_use: Mutex::new(LastUse::default()),
            reveals: Mutex::new(HashMap::new()),
            failure_logs: Mutex::new(HashMap::new()),
            settings: (inventory, webhooks),
        }
    }

    /// `[inventory]`.
    pub fn inventory(&self) -> &crate::config::InventorySettings {
        &self.settings.0
    }

    /// `[webhooks]`.
    pub fn webhooks(&self) -> &crate::config::WebhookSettings {
        &self.settings.1
    }

    /// Notes a successful resolve of `binding` by `worker`, now. Memory only.
    pub fn record_use(&self, binding: &str, worker: &str) {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if let Ok(mut lu) = self.last_use.lock() {
            // No allocation once an id is known: the hot path only updates in place.
            for (map, id) in lu.by_kind.iter_mut().zip([binding, worker]) {
                match map.get_mut(id) {
                    Some(u) => {
                        u.at = u.at.max(now);
                        u.dirty = true;
                    }
                    None => {
                        map.insert(
                            id.to_owned(),
                            Use {
                                at: now,
                                dirty: true,
                            },
                        );
                    }
                }
            }
        }
    }

    /// What this broker has seen since it started (not yet merged with the store).
    pub fn seen(&self) -> HashMap<(LastUseKind, String), i64> {
        self.last_use
            .lock()
            .map(|lu| {
                KINDS
                    .iter()
                    .zip(&lu.by_kind)
                    .flat_map(|(k, m)| m.iter().map(|(id, u)| ((*k, id.clone()), u.at)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Writes what changed since the last flush as this replica's own rows, in batches of
    /// 1,000 (`FLUSH_CHUNK`). Returns how many rows were written (0: no store write at all).
    ///
    /// # Errors
    /// On store failure: the batch that failed and every later row stay dirty and are written
    /// by the next flush (the batches before it are written).
    pub async fn flush(&self, records: &Records, replica: u32) -> Result<usize, StoreError> {
        let rows: Vec<((LastUseKind, String), i64)> = match self.last_use.lock() {
            Ok(mut lu) => {
                let mut rows = Vec::new();
                for (k, map) in KINDS.iter().zip(lu.by_kind.iter_mut()) {
                    for (id, u) in map.iter_mut().filter(|(_, u)| u.dirty) {
                        u.dirty = false;
                        rows.push(((*k, id.clone()), u.at));
                    }
                }
                rows
            }
            Err(_) => return Ok(0),
        };
        // Bounded batches: one transaction per chunk, not one holding every binding used
        // since the last flush (100,000 after a busy minute on a large store).
        for (n, chunk) in rows.chunks(FLUSH_CHUNK).enumerate() {
            let mut batch = Batch::new();
            for ((kind, id), at) in chunk {
                batch.put_last_use(replica, *kind, id, *at);
            }
            if let Err(e) = records.commit(batch).await {
                // This chunk and every later one stay dirty for the next flush.
                if let Ok(mut lu) = self.last_use.lock() {
                    for ((kind, id), _) in &rows[n * FLUSH_CHUNK..] {
                        let i = KINDS.iter().position(|k| k == kind).unwrap_or(0);
                        if let Some(u) = lu.by_kind[i].get_mut(id) {
                            u.dirty = true;
                        }
                    }
                }
                return Err(e);
            }
        }
        Ok(rows.len())
    }

    /// Takes one reveal from `operator`'s hourly budget; `false` when it is spent.
    pub fn take_reveal(&self, operator: &str) -> bool {
        let limit = usize::try_from(self.webhooks().reveals_per_hour).unwrap_or(usize::MAX);
        let now = Instant::now();
        let Ok(mut all) = self.reveals.lock() else {
            return false;
        };
        let window = all.entry(operator.to_owned()).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(3600))
        {
            window.pop_front();
        }
        if window.len() >= limit {
            return false;
        }
        window.push_back(now);
        true
    }

    /// Whether a failed verification `caller` (a worker) asked for may be logged now: at
    /// most `failure_logs_per_minute` for each caller, so one worker posting bad signatures
    /// in a loop cannot silence the failures of another tenant's. The second value is how
    /// many of this caller's were suppressed before this one.
    pub fn may_log_failure(&self, caller: &str) -> (bool, u64) {
        let limit = self.webhooks().failure_logs_per_minute;
        let Ok(mut all) = self.failure_logs.lock() else {
            return (false, 0);
        };
        // Callers are certificate identities (the CA bounds them); the map forgets the ones
        // whose minute is over once it is large, and logs no newcomer while it stays full.
        if all.len() >= MAX_FAILURE_LOG_CALLERS {
            all.retain(|_, (since, _, _)| since.elapsed() < Duration::from_secs(60));
            if all.len() >= MAX_FAILURE_LOG_CALLERS && !all.contains_key(caller) {
                return (false, 0);
            }
        }
        let (since, logged, suppressed) = all
            .entry(caller.to_owned())
            .or_insert_with(|| (Instant::now(), 0, 0));
        if since.elapsed() >= Duration::from_secs(60) {
            *since = Instant::now();
            *logged = 0;
        }
        if *logged < limit {
            *logged += 1;
            let before = std::mem::take(suppressed);
            (true, before)
        } else {
            *suppressed += 1;
            (false, 0)
        }
    }
}

/// How many callers' failure-log budgets are kept at most.
const MAX_FAILURE_LOG_CALLERS: usize = 4096;

/// The governance entry points of the daemon.
impl crate::broker::Broker {
    /// Handles one `POST /v1/webhooks/verify` (see [`crate::admin::AdminService::verify_webhook_http`]).
    pub async fn verify_webhook(
        &self,
        peer: Option<&PeerIdentity>,
        body: Result<Zeroizing<Vec<u8>>, ApiError>,
        request_id: &str,
    ) -> Answer {
        self.admin_service()
            .verify_webhook_http(peer, body, request_id)
            .await
    }

    /// `[webhooks] max_body_bytes`.
    pub fn webhook_body_limit(&self) -> usize {
        self.core()
            .governance
            .webhooks()
            .max_body_bytes
            .min(crate::webhooks::MAX_BODY_LIMIT)
    }

    /// Writes this broker's unwritten last uses (see [`crate::admin::AdminService::flush_last_use`]).
    pub async fn flush_last_use(&self) -> usize {
        self.admin_service().flush_last_use().await
    }

    /// Recomputes the inventory's flag gauges.
    pub async fn refresh_inventory_metrics(&self) {
        if let Err(e) = self.admin_service().refresh_flag_gauges().await {
            self.core().metrics.inventory_failures.inc();
            tracing::warn!(error = %e.message, "could not compute the inventory for its metrics");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reveals_are_budgeted_per_operator() {
        let w = crate::config::WebhookSettings {
            reveals_per_hour: 2,
            ..Default::default()
        };
        let g = Governance::new(crate::config::InventorySettings::default(), w);
        assert!(g.take_reveal("alice"));
        assert!(g.take_reveal("alice"));
        assert!(!g.take_reveal("alice"));
        assert!(g.take_reveal("bob"));
    }

    #[test]
    fn uses_are_kept_in_memory_and_marked_once() {
        let g = Governance::new(Default::default(), Default::default());
        for _ in 0..1000 {
            g.record_use("b1", "w1");
        }
        let seen = g.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(g.last_use.lock().unwrap().dirty(), 2);
    }

    #[tokio::test]
    async fn a_flush_writes_bounded_batches_and_leaves_the_record_cache_warm() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let records = Records::with_cache(std::sync::Arc::new(store), 100);
        let mut tenant = Batch::new();
        tenant.create(&crate::model::Tenant {
            id: crate::ids::TenantId::parse("t1").unwrap(),
            name: String::new(),
            status: crate::model::Status::Active,
            revision: 0,
            created_at: String::new(),
        });
        records.commit(tenant).await.unwrap();
        let t1 = crate::ids::TenantId::parse("t1").unwrap();
        records.shared_tenant(&t1).await.unwrap().unwrap();
        assert_eq!(records.cached_records(), 1);

        let g = Governance::new(Default::default(), Default::default());
        for i in 0..2500 {
            g.record_use(&format!("b{i}"), "w1");
        }
        let commits = records.commits();
        assert_eq!(g.flush(&records, 0).await.unwrap(), 2501);
        assert_eq!(
            records.commits() - commits,
            3,
            "2,501 rows in chunks of 1,000"
        );
        assert_eq!(records.last_uses().await.unwrap().len(), 2501);
        assert_eq!(
            records.cached_records(),
            1,
            "last-use rows touch no cached table"
        );
        assert_eq!(g.flush(&records, 0).await.unwrap(), 0, "nothing dirty");
    }
}
