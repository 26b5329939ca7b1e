//! The listening connection: `LISTEN credbroker_changes` on a connection of its own, outside
//! the pool, reporting every other replica's commit to this one's caches as it arrives.
//!
//! Notifications only shorten the time a cache holds a changed record when no resolve asks
//! ([`super::PgStore::sync`] is what bounds it); so a lost connection is re-established with
//! a growing pause (up to 5 s), and on every (re)connection the generation is read and a
//! change to every table reported. The task ends when the store is dropped.

use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Inner, CHANNEL};

/// Starts the listening task for the store behind `inner`.
pub(super) fn spawn(
    inner: Weak<Inner>,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    mut stopped: tokio::sync::watch::Receiver<()>,
) {
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(100);
        loop {
            let session = listen(&inner, &config, tls.clone());
            tokio::select! {
                outcome = session => {
                    match outcome {
                        Ok(()) => pause = Duration::from_millis(100),
                        Err(e) => tracing::warn!(error = %e, "database change notifications interrupted; reconnecting"),
                    }
                }
                _ = stopped.changed() => return,
            }
            if inner.strong_count() == 0 {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stopped.changed() => return,
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    });
}

/// One listening session, until its connection ends.
async fn listen(
    inner: &Weak<Inner>,
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
) -> Result<(), String> {
    // Named apart from the pool's connections, for operators reading pg_stat_activity.
    let mut config = config.clone();
    config.application_name("credbroker-listen");
    let (client, mut connection) = config.connect(tls).await.map_err(|e| e.to_string())?;
    // Only the latest notification matters (a burst is one change to report), so they are
    // coalesced: a flood of them costs one report, not a queue without bound.
    let (tx, mut rx) = tokio::sync::watch::channel(());
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let driver = tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if tx.send(()).is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| e.to_string())?;
    // Changes committed while no connection listened.
    let generation = read_generation(&client).await?;
    // And every cached record is forgotten: a connection is lost in a failover, and a record
    // this replica read (and cached) from a commit it had not heard of yet may be one the
    // promoted server lost, while its generation is the one last seen here, so no generation
    // read tells them apart.
    match inner.upgrade() {
        Some(inner) => {
            inner.notify(super::Changed::ALL);
            inner.saw(generation);
        }
        None => return Ok(()),
    }
    // A notification is a wake-up, its payload never trusted: any login to the database may
    // NOTIFY, and taking each payload as a change emptied every replica's record cache (and
    // had the platform and issuer keys unsealed again) at a forger's rate. The real
    // generation is read instead, a read at a time (notifications arriving meanwhile are
    // coalesced into one more), and only a change of it is reported.
    while rx.changed().await.is_ok() {
        rx.borrow_and_update();
        let Some(inner) = inner.upgrade() else {
            return Ok(());
        };
        // A generation judged meanwhile (a resolve's sync, a commit) may be newer than the
        // one read, or older: read again, so that what is judged last is the latest (a few
        // times at most; then judged as read: an extra report of a change, never a missed one).
        for attempt in 0..4 {
            let before = inner.saws.load(std::sync::atomic::Ordering::Acquire);
            let generation = read_generation(&client).await?;
            // Already judged (this replica's own commit, a sync): nothing to report.
            if inner.seen.load(std::sync::atomic::Ordering::Acquire) == generation {
                break;
            }
            if attempt == 3 || inner.saws.load(std::sync::atomic::Ordering::Acquire) == before {
                inner.saw(generation);
                break;
            }
        }
    }
    drop(client);
    driver
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|e| format!("listening connection closed: {e}"))
}

/// The store's change generation, read on the listening connection (within 5 s).
async fn read_generation(client: &tokio_postgres::Client) -> Result<i64, String> {
    tokio::time::timeout(
        Duration::from_secs(5),
        client.query_one("SELECT generation FROM credbroker_state WHERE id = 1", &[]),
    )
    .await
    .map_err(|_| "reading the change generation timed out".to_owned())?
    .map_err(|e| e.to_string())?
    .try_get(0)
    .map_err(|e| e.to_string())
}
