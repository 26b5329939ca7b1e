//! What each open connection is doing (a request in progress, or idle since when), and the
//! public listener's list of them, for the one idle longest to be closed when a newcomer
//! finds every slot taken.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a public connection must have been idle (no request in progress) before a
/// newcomer finding every slot taken may have it closed.
pub(super) const EVICTABLE_AFTER: Duration = Duration::from_secs(1);
/// How long a connection closed for a newcomer has to finish what it is writing.
pub(super) const EVICTION_GRACE: Duration = Duration::from_secs(1);
/// How long, in steps, a newcomer waits for the slot of the connection closed for it (past
/// that grace).
pub(super) const EVICTION_WAIT_STEP: Duration = Duration::from_millis(20);
pub(super) const EVICTION_WAIT_STEPS: usize = 75;

/// The public listener's open connections, for the one idle longest to be closed when a
/// newcomer finds every slot taken. Without it, `max_connections / max_connections_per_source`
/// sources (16 at the defaults) each keeping its share open with a request every few seconds
/// held every public connection: deliveries, setup returns and the clouds' JWKS fetches were
/// closed after their handshake. Now such connections, idle between their requests, make
/// room; only connections kept busy with requests all the time cannot be closed. (Idle is
/// counted from when the handler answered: a response still unread by its client a second
/// later, or a next request whose head is still arriving, may be cut.)
#[derive(Default)]
pub(super) struct IdleConnections {
    next: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<HashMap<u64, OpenConnection>>,
}

/// A connection's activity, and how to ask it to close.
type OpenConnection = (Arc<Activity>, Arc<tokio::sync::Notify>);

/// A connection's place in [`IdleConnections`], given up when dropped.
pub(super) struct Evictable(Arc<IdleConnections>, u64);

impl IdleConnections {
    pub(super) fn register(
        self: &Arc<Self>,
        activity: Arc<Activity>,
        close: Arc<tokio::sync::Notify>,
    ) -> Evictable {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, (activity, close));
        Evictable(self.clone(), id)
    }

    /// Asks the connection idle longest, at least `floor`, to close (it leaves the list at
    /// once, so no other newcomer counts on it); whether there was one.
    pub(super) fn close_longest_idle(&self, floor: Duration) -> bool {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let longest = open
            .iter()
            .filter_map(|(id, (activity, _))| {
                activity
                    .idle_for()
                    .filter(|idle| *idle >= floor)
                    .map(|idle| (idle, *id))
            })
            .max();
        let Some((_, id)) = longest else {
            return false;
        };
        if let Some((_, close)) = open.remove(&id) {
            close.notify_one();
        }
        true
    }
}

impl Drop for Evictable {
    fn drop(&mut self) {
        self.0
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.1);
    }
}

/// Requests in progress on one connection and when the last one ended.
pub(super) struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    since: std::sync::Mutex<std::time::Instant>,
}

/// Marks a request in progress until dropped; a request that counts as use (not a free
/// one: health, discovery, JWKS, a refusal) makes the connection idle from its end.
pub(super) struct Busy(Arc<Activity>, bool);

impl Activity {
    pub(super) fn new() -> Activity {
        Activity {
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            since: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    pub(super) fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Busy(self.clone(), true)
    }

    /// [`Activity::begin`] for a request that is no use of the connection (answered from
    /// memory, free of the rate limit): the idle time it finds goes on counting after it, so
    /// a connection kept open with health checks alone is still the first closed for a
    /// newcomer.
    pub(super) fn begin_free(self: &Arc<Self>) -> Busy {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Busy(self.clone(), false)
    }

    /// A request has started (its headers are read): idle time counts from now, also while
    /// its body arrives before the request is marked busy.
    pub(super) fn touch(&self) {
        *self
            .since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::time::Instant::now();
    }

    /// How long the connection has had no request in progress, or `None` while one is.
    pub(super) fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return None;
        }
        let since = *self
            .since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(since.elapsed())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.1 {
            *self
                .0
                .since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = std::time::Instant::now();
        }
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
