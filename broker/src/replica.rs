//! This broker's place among the replicas sharing a store: its replica id and whether it
//! leads.
//!
//! On a shared store (PostgreSQL) both are leases on the database's clock, as OpenBao's
//! PostgreSQL lock row: claimed for [`LEASE_TTL`], renewed every [`RENEW_EVERY`].
//! - The replica id is the lowest `replica/<n>` lease free at start-up (1..=[`MAX_REPLICAS`]):
//!   no two live brokers hold one id, so each writes its own audit chain. A broker whose
//!   renewal failed re-claims its id (free again unless its claim lapsed and another
//!   broker took it meanwhile; its audit then fails closed until it is restarted). A broker
//!   that re-claims its id after it lapsed holds it back from an offline change started in
//!   the gap (the change's confirmation finds a replica running), and its audit chain takes
//!   no record while an offline change's hold is live (checked in each write's
//!   transaction).
//! - The `leader` lease decides which broker runs the jobs one broker must run alone:
//!   forgetting expired states and deliveries, destroying superseded secret versions past
//!   their overlap, self-rotating pasted secrets. A broker counts itself leader only until
//!   [`LEASE_TTL`] minus a margin after its last successful claim, measured on its own
//!   monotonic clock from before the claim was sent, so two brokers never both act as
//!   leader while the database is reachable.
//!
//! On sled (one broker per store) there is no replica id and the broker always leads.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::{Store, StoreError};

/// How long a claim lasts on the database's clock.
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often claims are renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// The highest replica id.
pub const MAX_REPLICAS: u32 = 64;
/// How long before the lease's end a broker stops counting itself leader.
const MARGIN: Duration = Duration::from_secs(3);
const LEADER: &str = "leader";

/// This broker's replica id and leadership.
pub struct Replica {
    store: Arc<dyn Store>,
    /// The replica id (`None` on a store one broker opens).
    id: Option<u32>,
    /// This process's claim token: host, process id and a random part.
    holder: String,
    /// Until when this broker may act as leader.
    leader_until: Mutex<Option<Instant>>,
    /// Until when this broker's replica id is surely its own.
    id_until: Mutex<Option<Instant>>,
    /// The renewal task and what stops it: [`Replica::leave`] stops it and waits for it
    /// before giving the leases up, so a renewal in flight cannot claim them again after.
    renewal: Mutex<Option<Renewal>>,
    /// What else leading needs besides this broker's replica id (its audit log taking
    /// records): see [`Replica::lead_only_while`].
    lead_while: Mutex<Option<LeadCondition>>,
}

/// A condition of leadership, asked at every renewal.
pub type LeadCondition = Arc<dyn Fn() -> bool + Send + Sync>;

type Renewal = (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
);

/// Refuses an offline change (KEK rotation, an operator registered offline, a store move)
/// while brokers run on `store`: on sled its directory lock refuses a running daemon's store;
/// a shared store's replicas are found by their live leases.
///
/// # Errors
/// When a replica runs, or the store cannot be asked.
pub async fn ensure_no_replica_runs(store: &dyn Store) -> Result<(), String> {
    let running = store
        .live_leases("replica/")
        .await
        .map_err(|e| e.to_string())?;
    if running > 0 {
        return Err(format!(
            "{running} broker replica(s) run on this store: stop every replica first (a stopped replica's lease is released at once, a killed one's lapses within {} s)",
            LEASE_TTL.as_secs()
        ));
    }
    Ok(())
}

/// The lease an offline change holds on a shared store while it runs: one at a time, and
/// no broker starts beside it (a broker checks for it after claiming its replica id, the
/// change for replicas after claiming it, so one of the two always sees the other).
pub const OFFLINE: &str = "offline/change";

/// An offline change's hold on a store, taken by [`hold_offline`]: renewed while it lives,
/// given up by [`OfflineHold::release`] (or, if the process dies, lapsing within
/// [`LEASE_TTL`]). On a store one broker opens (sled) its directory lock does the same, and
/// the hold is empty.
pub struct OfflineHold {
    store: Arc<dyn Store>,
    holder: String,
    stop: tokio::sync::watch::Sender<bool>,
    /// The renewal task: waited for before the lease is given up, so a renewal in flight
    /// cannot claim it again after the release.
    renewal: Option<tokio::task::JoinHandle<()>>,
    /// Set when a renewal failed: the hold may have lapsed, and another change or a
    /// replica may have started since.
    lost: Arc<std::sync::atomic::AtomicBool>,
}

/// Takes the store for an offline change (`what` names it in the refusals): refused while
/// another offline change holds it or a replica runs on it.
///
/// # Errors
/// When either runs, or the store cannot be asked.
pub async fn hold_offline(store: Arc<dyn Store>, what: &str) -> Result<OfflineHold, String> {
    let holder = new_holder().map_err(|e| e.to_string())?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    if !store
        .claim_lease(OFFLINE, &holder, LEASE_TTL)
        .await
        .map_err(|e| e.to_string())?
    {
        return Err(format!(
            "another offline change (a KEK rotation, an operator registered offline or a store move) holds this store: run the {what} when it has ended (a killed one's hold lapses within {} s)",
            LEASE_TTL.as_secs()
        ));
    }
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut hold = OfflineHold {
        store: Arc::clone(&store),
        holder: holder.clone(),
        stop,
        renewal: None,
        lost: Arc::clone(&lost),
    };
    if let Err(e) = ensure_no_replica_runs(store.as_ref()).await {
        hold.release().await;
        return Err(e);
    }
    hold.renewal = Some(tokio::spawn(async move {
        // The claim above is fresh: the first renewal is due a period from now.
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + RENEW_EVERY, RENEW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.changed() => return,
            }
            if !matches!(
                store.claim_lease(OFFLINE, &holder, LEASE_TTL).await,
                Ok(true)
            ) && !lost.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                // Kept trying (the lease may come back), but the change commits nothing
                // now: another one, or a replica, may have started meanwhile.
                tracing::error!("the offline change's hold on the store could not be renewed; it will commit nothing");
            }
        }
    }));
    Ok(hold)
}

impl OfflineHold {
    /// Whether the hold is still this change's, asked of the store once more (and renewed):
    /// called before the change commits, so a hold that lapsed meanwhile (a database that
    /// did not answer its renewals) commits nothing.
    ///
    /// # Errors
    /// When a renewal failed, or the store no longer grants it.
    pub async fn confirm(&self) -> Result<(), String> {
        let lapsed = || {
            "the offline change's hold on the store lapsed while it ran (the database did not answer its renewals): another change or a replica may have started since".to_owned()
        };
        if self.lost.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(lapsed());
        }
        match self
            .store
            .claim_lease(OFFLINE, &self.holder, LEASE_TTL)
            .await
        {
            // Granted again, perhaps after it lapsed unnoticed (a process paused past the
            // lease's end): a replica that started in that gap is looked for, as at the
            // first claim.
            Ok(true) => ensure_no_replica_runs(self.store.as_ref()).await,
            _ => Err(lapsed()),
        }
    }

    /// Gives the hold up, once its renewal has stopped.
    pub async fn release(mut self) {
        let _ = self.stop.send(true);
        if let Some(renewal) = self.renewal.take() {
            let _ = renewal.await;
        }
        let _ = self.store.release_lease(OFFLINE, &self.holder).await;
    }
}

impl Drop for OfflineHold {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn lease_name(id: u32) -> String {
    format!("replica/{id}")
}

fn new_holder() -> Result<String, StoreError> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let random = credbroker_providers::random_alphanumeric(12)
        .map_err(|e| StoreError::Backend(format!("replica claim token: {e}")))?;
    Ok(format!(
        "{}:{}:{random}",
        if host.is_empty() { "host" } else { &host },
        std::process::id(),
    ))
}

impl Replica {
    /// Claims a replica id (on a shared store) and tries the leader lease once.
    ///
    /// # Errors
    /// When the store cannot be reached or every replica id is held.
    pub async fn join(store: Arc<dyn Store>) -> Result<Arc<Replica>, StoreError> {
        let holder = new_holder()?;
        if !store.shared() {
            return Ok(Arc::new(Replica {
                store,
                id: None,
                holder,
                leader_until: Mutex::new(None),
                id_until: Mutex::new(None),
                renewal: Mutex::new(None),
                lead_while: Mutex::new(None),
            }));
        }
        let mut claimed = None;
        for n in 1..=MAX_REPLICAS {
            let sent = Instant::now();
            if store
                .claim_lease(&lease_name(n), &holder, LEASE_TTL)
                .await?
            {
                claimed = Some((n, sent));
                break;
            }
        }
        let Some((id, sent)) = claimed else {
            return Err(StoreError::Backend(format!(
                "every replica id (1..={MAX_REPLICAS}) is held by a running broker"
            )));
        };
        // An offline change (a KEK rotation) rewrites what this broker's start checks read:
        // it must not start beside one.
        if store.live_leases(OFFLINE).await? > 0 {
            let _ = store.release_lease(&lease_name(id), &holder).await;
            return Err(StoreError::Backend(
                "an offline change (a KEK rotation, an operator registered offline or a store move) holds this store: start the broker when it has ended".into(),
            ));
        }
        let replica = Arc::new(Replica {
            store,
            id: Some(id),
            holder,
            leader_until: Mutex::new(None),
            id_until: Mutex::new(Some(sent + LEASE_TTL - MARGIN)),
            renewal: Mutex::new(None),
            lead_while: Mutex::new(None),
        });
        replica.try_lead().await;
        tracing::info!(replica = id, holder = %replica.holder, leader = replica.is_leader(), "joined the replicas sharing the store");
        Ok(replica)
    }

    /// The replica id (`None` on a store one broker opens).
    pub fn id(&self) -> Option<u32> {
        self.id
    }

    /// This process's claim token.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The name of this broker's replica lease, when it has one.
    pub fn lease(&self) -> Option<String> {
        self.id.map(lease_name)
    }

    /// Whether this broker runs the leader-only jobs now.
    pub fn is_leader(&self) -> bool {
        if self.id.is_none() {
            return true;
        }
        let until = self.leader_until.lock().map(|u| *u).unwrap_or(None);
        until.is_some_and(|u| Instant::now() < u)
    }

    /// Whether this broker's replica id is surely still its own.
    pub fn holds_id(&self) -> bool {
        if self.id.is_none() {
            return true;
        }
        let until = self.id_until.lock().map(|u| *u).unwrap_or(None);
        until.is_some_and(|u| Instant::now() < u)
    }

    async fn claim(&self, name: &str, slot: &Mutex<Option<Instant>>) -> bool {
        let sent = Instant::now();
        let held = match self.store.claim_lease(name, &self.holder, LEASE_TTL).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(lease = name, error = %e, "could not renew a lease");
                false
            }
        };
        if let Ok(mut until) = slot.lock() {
            *until = held.then(|| sent + LEASE_TTL - MARGIN);
        }
        held
    }

    async fn try_lead(&self) {
        let was = self.is_leader();
        let now = self.claim(LEADER, &self.leader_until).await;
        if now != was {
            tracing::info!(replica = ?self.id, leader = now, "leadership changed");
        }
    }

    /// Leads only while `condition` holds too (asked at every renewal): the audit log
    /// taking records. Every leader-only job (owed revocations, self-rotation, the store's
    /// clean-up) is audited first, so a leader whose log fails would hold the lease and
    /// run none of them, on every replica, for as long as it lives.
    pub fn lead_only_while(&self, condition: LeadCondition) {
        if let Ok(mut slot) = self.lead_while.lock() {
            *slot = Some(condition);
        }
    }

    /// Whether this broker may lead now: it holds its replica id, and what
    /// [`Replica::lead_only_while`] set holds.
    fn may_lead(&self) -> bool {
        let condition = self.lead_while.lock().ok().and_then(|c| c.clone());
        self.holds_id() && condition.is_none_or(|holds| holds())
    }

    /// Gives leadership up (when it may not lead): another replica takes it at its next
    /// renewal, not once the lease lapses.
    async fn step_down(&self) {
        let was = self.is_leader();
        if let Ok(mut until) = self.leader_until.lock() {
            *until = None;
        }
        if was {
            tracing::warn!(replica = ?self.id, holds_id = self.holds_id(), "leadership given up: this broker's replica id is not surely its own, or its audit log does not take records");
            if let Err(e) = self.store.release_lease(LEADER, &self.holder).await {
                tracing::warn!(error = %e, "could not give the leader lease up; it lapses at its expiry");
            }
        }
    }

    /// Renews the replica id and tries the leader lease every [`RENEW_EVERY`] (the first at
    /// once: a slow start must not let the id lapse) until [`Replica::leave`], or until the
    /// replica is dropped.
    pub fn spawn_renewal(self: &Arc<Self>) {
        let Some(lease) = self.lease() else {
            return;
        };
        let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
        // A weak reference: a broker dropped without leave() (a start that failed later)
        // drops the stop sender with it, which ends the task.
        let weak = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(RENEW_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                let Some(this) = weak.upgrade() else {
                    return;
                };
                let had = this.holds_id();
                if !this.claim(&lease, &this.id_until).await && had {
                    tracing::error!(lease, "this broker's replica id could not be renewed; its audit fails closed until it is re-claimed");
                }
                if this.may_lead() {
                    this.try_lead().await;
                } else {
                    this.step_down().await;
                }
            }
        });
        if let Ok(mut slot) = self.renewal.lock() {
            *slot = Some((stop_tx, task));
        }
    }

    /// Claims the lease `name` for this broker for `ttl`: a job that one broker at a time may
    /// run on a shared store (a binding's self-rotation). Granted again to this broker while
    /// it holds it; always granted on a store one broker opens.
    ///
    /// # Errors
    /// When the store cannot be reached.
    pub async fn claim_job(&self, name: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.store.claim_lease(name, &self.holder, ttl).await
    }

    /// Gives a job's lease up (it lapses at its expiry if the store cannot be reached).
    pub async fn release_job(&self, name: &str) {
        if let Err(e) = self.store.release_lease(name, &self.holder).await {
            tracing::warn!(lease = name, error = %e, "could not give a job's lease up; it lapses at its expiry");
        }
    }

    /// Stops the renewal (waiting for a claim in flight) and gives both leases up (at
    /// shutdown, or a start that failed), so another broker may lead at once.
    pub async fn leave(&self) {
        let renewal = self.renewal.lock().ok().and_then(|mut slot| slot.take());
        if let Some((stop, task)) = renewal {
            let _ = stop.send(true);
            let _ = task.await;
        }
        if let Some(lease) = self.lease() {
            // Whether or not this broker counts itself leader: a claim that timed out here
            // may have landed there, and the release is this holder's only.
            let _ = self.store.release_lease(LEADER, &self.holder).await;
            let _ = self.store.release_lease(&lease, &self.holder).await;
        }
    }
}
