//! The audit on a store several replicas share: one hash chain per replica in PostgreSQL.
//!
//! Each replica appends to its own chain (`credbroker_audit`, keyed by replica id and
//! sequence), so no replica waits for another and losing a replica's machine loses nothing
//! it acknowledged: a batch is acknowledged only after its transaction committed. Records
//! name their replica (covered by the hash); signed checkpoints go to
//! `credbroker_audit_checkpoints`, in the batch's own transaction when one is due.
//!
//! Two writers can never fork a chain: a batch is written only while the replica's lease is
//! this process's (checked in the same transaction), and the primary key refuses a second
//! record at any sequence. After a failed batch — whose commit may or may not have happened —
//! the chain's tail is read back from the database before the next one, so the chain goes on
//! from what is really there. The database unreachable: every batch fails closed
//! (`audit_unavailable`) and the writer reconnects on the next one, without a restart.

use std::time::Duration;

use tokio_postgres::{Client, GenericClient};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::record::Checkpoint;
use super::verify::ChainCheck;
use crate::keys::AuditVerifier;
use crate::store::StoreSettings;

mod writer;

pub use writer::ChainOwner;

/// Rows read per query when a chain is read whole.
const PAGE: i64 = 10_000;

fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn replica_i32(replica: u32) -> i32 {
    i32::try_from(replica).unwrap_or(i32::MAX)
}

/// Connects with `settings`' URL and TLS, the connection driven on the current runtime, for
/// the offline readers (no statement or idle-in-transaction timeout).
///
/// # Errors
/// When the database cannot be reached within the store's timeout.
pub async fn connect(settings: &StoreSettings) -> Result<Client, String> {
    let (pg, tls) = crate::store::postgres::connection(settings).map_err(|e| e.to_string())?;
    let client = connect_with(&pg, tls, Duration::from_millis(settings.timeout_ms.max(1))).await?;
    // The connection's options carry the daemon's per-request limits (statement and idle-in-
    // transaction timeouts of `timeout_ms`). These readers are the offline tools (verify,
    // export, report, doctor): one pass over a chain of millions of records, or a snapshot
    // held while the file log is exported first, takes longer than any request and must not
    // be cut off half way. A dead server is still noticed (TCP user timeout, keepalives).
    client
        .batch_execute("SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0")
        .await
        .map_err(|e| format!("database: {e}"))?;
    Ok(client)
}

async fn connect_with(
    pg: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
    timeout: Duration,
) -> Result<Client, String> {
    let (client, conn) = tokio::time::timeout(timeout, pg.connect(tls))
        .await
        .map_err(|_| {
            format!(
                "database connection timed out after {} ms",
                timeout.as_millis()
            )
        })?
        .map_err(|e| format!("database: {e}"))?;
    tokio::spawn(conn);
    Ok(client)
}

/// A read-only, repeatable-read transaction: every chain read through it is one consistent
/// snapshot, so a writer appending meanwhile (its due checkpoints in the batch's own
/// transaction) never makes a live chain look like one whose checkpoints were removed.
///
/// # Errors
/// On a database error.
pub async fn snapshot(client: &mut Client) -> Result<tokio_postgres::Transaction<'_>, String> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| format!("database: {e}"))
}

/// The replicas that have a chain: that hold a record or a checkpoint. A chain whose
/// records were all deleted still has its checkpoints, and is then verified (and fails)
/// rather than left out.
///
/// # Errors
/// On a database error, or a replica number no broker writes (negative).
pub async fn replicas(client: &impl GenericClient) -> Result<Vec<u32>, String> {
    let rows = client
        .query(
            "SELECT replica FROM credbroker_audit UNION SELECT replica FROM credbroker_audit_checkpoints ORDER BY replica",
            &[],
        )
        .await
        .map_err(|e| format!("database: {e}"))?;
    rows.iter()
        .map(|r| {
            let id = r
                .try_get::<_, i32>(0)
                .map_err(|e| format!("database: {e}"))?;
            u32::try_from(id).map_err(|_| {
                format!("the audit tables hold a chain of replica {id}, which no broker writes")
            })
        })
        .collect()
}

/// The line of record `seq` of `replica`'s chain, if there is one.
///
/// # Errors
/// On a database failure.
pub async fn line_at(
    client: &impl GenericClient,
    replica: u32,
    seq: u64,
) -> Result<Option<String>, String> {
    Ok(client
        .query_opt(
            "SELECT line FROM credbroker_audit WHERE replica = $1 AND seq = $2",
            &[&replica_i32(replica), &seq_i64(seq)],
        )
        .await
        .map_err(|e| format!("database: {e}"))?
        .and_then(|r| r.try_get::<_, String>(0).ok()))
}

/// The checkpoint signed at record `seq` of `replica`'s chain, if a row holds one that
/// parses (its signature is the caller's to check).
///
/// # Errors
/// On a database failure.
pub async fn checkpoint_at(
    client: &impl GenericClient,
    replica: u32,
    seq: u64,
) -> Result<Option<Checkpoint>, String> {
    Ok(client
        .query_opt(
            "SELECT line FROM credbroker_audit_checkpoints WHERE replica = $1 AND seq = $2",
            &[&replica_i32(replica), &seq_i64(seq)],
        )
        .await
        .map_err(|e| format!("database: {e}"))?
        .and_then(|r| r.try_get::<_, String>(0).ok())
        .and_then(|l| serde_json::from_str::<Checkpoint>(&l).ok()))
}

/// Every checkpoint of `replica`'s chain, in sequence order.
///
/// # Errors
/// On a database error or a checkpoint that does not parse.
pub async fn checkpoints(
    client: &impl GenericClient,
    replica: u32,
) -> Result<Vec<Checkpoint>, String> {
    let rows = client
        .query(
            "SELECT line FROM credbroker_audit_checkpoints WHERE replica = $1 ORDER BY seq",
            &[&replica_i32(replica)],
        )
        .await
        .map_err(|e| format!("database: {e}"))?;
    rows.iter().map(|r| checkpoint_of(r, replica)).collect()
}

/// The last checkpoint of `replica`'s chain (the one row a start needs: a chain of months
/// holds hundreds of thousands, which a start must neither hold nor wait for).
///
/// # Errors
/// On a database error or a checkpoint that does not parse.
pub async fn last_checkpoint(
    client: &impl GenericClient,
    replica: u32,
) -> Result<Option<Checkpoint>, String> {
    client
        .query_opt(
            "SELECT line FROM credbroker_audit_checkpoints WHERE replica = $1 ORDER BY seq DESC LIMIT 1",
            &[&replica_i32(replica)],
        )
        .await
        .map_err(|e| format!("database: {e}"))?
        .map(|r| checkpoint_of(&r, replica))
        .transpose()
}

/// A checkpoint row's line, parsed.
fn checkpoint_of(row: &tokio_postgres::Row, replica: u32) -> Result<Checkpoint, String> {
    // Rows the broker never writes: the chain's failure, not a read error.
    let line = row.try_get::<_, &str>(0).map_err(|_| {
        format!("{NOT_WRITTEN_BY_US}: a checkpoint of replica {replica}'s chain is not text")
    })?;
    serde_json::from_str::<Checkpoint>(line).map_err(|_| {
        format!("{NOT_WRITTEN_BY_US}: a checkpoint of replica {replica}'s chain does not parse")
    })
}

/// Feeds `replica`'s record lines from sequence `from` on, in order, to `each`, a page at
/// a time.
///
/// # Errors
/// On a database error, or the first error `each` returns.
pub async fn for_each_line(
    client: &impl GenericClient,
    replica: u32,
    from: u64,
    mut each: impl FnMut(&str) -> Result<(), String>,
) -> Result<(), String> {
    let mut next = seq_i64(from);
    loop {
        let rows = client
            .query(
                "SELECT seq, line FROM credbroker_audit WHERE replica = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
                &[&replica_i32(replica), &next, &PAGE],
            )
            .await
            .map_err(|e| format!("database: {e}"))?;
        for row in &rows {
            let line = row.try_get::<_, &str>(1).map_err(|_| {
                format!("{NOT_WRITTEN_BY_US}: a line of replica {replica}'s chain is not text")
            })?;
            each(line)?;
        }
        match rows.last() {
            // The column is the database's, not the record's: a page ending at the largest
            // value (a row someone wrote) would wrap around and read the chain again forever.
            Some(last) if rows.len() as i64 == PAGE => match next_page(
                next,
                last.try_get::<_, i64>(0).map_err(|e| format!("database: {e}"))?,
            ) {
                Some(n) => next = n,
                _ => return Err(format!("{NOT_WRITTEN_BY_US}: replica {replica}'s chain has a row at the largest sequence number")),
            },
            _ => return Ok(()),
        }
    }
}

/// Where the page after one that began at `next` and ended at sequence `last` begins:
/// `None` when there is no such place, the page ending at the largest sequence number (the
/// next would wrap around to the chain's start) or not past where it began.
fn next_page(next: i64, last: i64) -> Option<i64> {
    last.checked_add(1).filter(|n| *n > next)
}

/// How a read error for rows no broker writes begins.
const NOT_WRITTEN_BY_US: &str = "not a chain this broker wrote";

/// What [`verify_chain`]'s reader returns to stop at the first failure.
const STOPPED: &str = "stopped at the first failure";

/// Verifies `replica`'s chain whole: every record, every checkpoint. The outer error is the
/// database's, the inner the chain's first failure.
///
/// # Errors
/// When the chain cannot be read.
pub async fn verify_chain(
    client: &impl GenericClient,
    replica: u32,
    verifier: &AuditVerifier,
    max_unanchored: u64,
) -> Result<Result<super::VerifySummary, super::VerifyFailure>, String> {
    verify_chain_pinned(client, replica, verifier, max_unanchored, None).await
}

/// [`verify_chain`], and every record `pins` vouches for (a copy kept off the host, see
/// [`super::Pins`]) must still be in the chain, unchanged.
///
/// # Errors
/// As [`verify_chain`].
pub async fn verify_chain_pinned(
    client: &impl GenericClient,
    replica: u32,
    verifier: &AuditVerifier,
    max_unanchored: u64,
    pins: Option<&std::collections::BTreeMap<u64, String>>,
) -> Result<Result<super::VerifySummary, super::VerifyFailure>, String> {
    let not_ours = |e: String| super::VerifyFailure {
        seq: 0,
        reason: super::verify::printable(e),
    };
    let cps = match checkpoints(client, replica).await {
        Ok(cps) => cps,
        Err(e) if e.starts_with(NOT_WRITTEN_BY_US) => return Ok(Err(not_ours(e))),
        Err(e) => return Err(e),
    };
    let mut check = match ChainCheck::new(replica, &cps, None, verifier, max_unanchored) {
        Ok(c) => c,
        Err(f) => return Ok(Err(f)),
    };
    if let Some(pins) = pins {
        check.pin(pins);
    }
    let mut failure = None;
    // Reading stops at the first failure: nothing after it changes the verdict.
    let read = for_each_line(client, replica, 1, |line| {
        match check.record(line.as_bytes()) {
            Ok(()) => Ok(()),
            Err(f) => {
                failure = Some(f);
                Err(STOPPED.into())
            }
        }
    })
    .await;
    match read {
        Err(e) if e == STOPPED => {}
        // Rows the broker never writes are the chain's failure (exit 1), not a read error.
        Err(e) if e.starts_with(NOT_WRITTEN_BY_US) => {
            return Ok(Err(super::VerifyFailure {
                seq: u64::MAX,
                reason: super::verify::printable(e),
            }))
        }
        other => other?,
    }
    Ok(match failure {
        Some(f) => Err(f),
        None => check.finish(),
    })
}

/// `replica`'s chain as the record lines of an export or a report: every pass reads it
/// again from the snapshot a page at a time, so memory does not grow with the chain. A pass
/// blocks the calling thread on its pages (the connection is driven by the runtime's worker
/// threads): call it from synchronous code inside `Runtime::block_on`, as the CLI does.
pub struct ChainLines<'a, C> {
    /// The snapshot.
    pub client: &'a C,
    /// Whose chain.
    pub replica: u32,
}

impl<C: GenericClient + Sync> super::LineSource for ChainLines<'_, C> {
    fn each(&self, each: &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
        let mut failed = None;
        let paged =
            futures_executor::block_on(for_each_line(self.client, self.replica, 1, |line| {
                each(line.as_bytes()).map_err(|e| {
                    let text = e.to_string();
                    failed = Some(e);
                    text
                })
            }));
        match (paged, failed) {
            (_, Some(e)) => Err(e),
            (Err(e), None) => Err(std::io::Error::other(e)),
            (Ok(()), None) => Ok(()),
        }
    }
}

/// The start-up check of this replica's chain: from its last signed checkpoint to its end
/// (also the doctor's). The records after that checkpoint (first, last), if any.
///
/// # Errors
/// Where the chain fails, or the database cannot be read.
pub async fn verify_tail(
    client: &impl GenericClient,
    replica: u32,
    verifier: &AuditVerifier,
    max_unanchored: u64,
) -> Result<Option<(u64, u64)>, String> {
    let last = last_checkpoint(client, replica).await?;
    let last = last.as_ref();
    let mut check =
        ChainCheck::new(replica, &[], last, verifier, max_unanchored).map_err(|e| e.to_string())?;
    for_each_line(client, replica, last.map_or(1, |c| c.seq), |line| {
        check.record(line.as_bytes()).map_err(|e| e.to_string())
    })
    .await?;
    let signed = last.map_or(0, |c| c.seq);
    check
        .finish()
        .map(|s| s.last_seq.filter(|l| *l > signed).map(|l| (signed + 1, l)))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    /// Paging never wraps around or stands still, whatever sequence numbers the rows carry.
    #[test]
    fn the_next_page_starts_past_the_last_or_nowhere() {
        assert_eq!(super::next_page(1, 10_000), Some(10_001));
        assert_eq!(super::next_page(1, i64::MAX), None);
        assert_eq!(super::next_page(i64::MAX - 5, i64::MAX - 1), Some(i64::MAX));
        assert_eq!(super::next_page(20_000, 10_000), None);
    }
}
