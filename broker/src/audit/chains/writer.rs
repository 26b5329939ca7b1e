//! This replica's chain written: a batch per transaction, only while the replica's lease is
//! this process's, its tail read back after a failed batch (see the module above).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::super::record::{AuditEvent, AuditRecord, Checkpoint};
use super::super::writer::{AuditLog, AuditReceipt, AuditStats, BatchObserver, Sink, Waiter};
use super::super::{AuditConfig, AuditError};
use super::{connect_with, replica_i32, seq_i64, verify_tail};

mod recovery;
mod tail;

use crate::keys::AuditSigner;
use crate::model::now_rfc3339;
use crate::store::StoreSettings;
use recovery::{own_backend, Backend};
use tail::{check_owned_tail, last_record, read_tail, ChainTail};

/// How long an idle writer goes without asking the database whether it is there.
const IDLE_PING: Duration = Duration::from_secs(10);

/// Where this replica's chain is and who may write it.
#[derive(Debug, Clone)]
pub struct ChainOwner {
    /// The replica id.
    pub replica: u32,
    /// The replica's lease (`replica/<id>`).
    pub lease: String,
    /// This process's claim token.
    pub holder: String,
}

/// A batch sent to the database whose outcome this writer may not have heard: a timeout or a
/// lost connection can come after the server committed it. Its requests were refused, so if
/// its records are in the chain, a record saying so must follow each.
struct InFlight {
    /// The server process of the connection it was sent on: until that process has ended,
    /// a COMMIT it runs may still land.
    backend: Option<Backend>,
    /// The sequence of its first record.
    first_seq: u64,
    /// Its lines as sent.
    lines: Arc<Vec<String>>,
    /// How many of `lines` (at the front) were corrections owed from an earlier batch.
    owed: usize,
}

struct DbWriter {
    config: AuditConfig,
    rt: Arc<tokio::runtime::Runtime>,
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    timeout: Duration,
    client: Option<Client>,
    owner: ChainOwner,
    /// `None`: unknown (start, or after a failed batch): read back before the next write.
    tail: Option<ChainTail>,
    last_checkpoint_at: Instant,
    /// When the database last answered this writer: an idle writer asks it every
    /// [`IDLE_PING`], so `/readyz` tells a dead database before the next request does.
    last_contact: Instant,
    signer: AuditSigner,
    healthy: Arc<AtomicBool>,
    stats: Arc<AuditStats>,
    batch_sizes: Option<BatchObserver>,
    /// The last batch sent, until its commit is heard (kept when it is not: settled against
    /// the chain on the next connection).
    in_flight: Option<InFlight>,
    /// The server process of the current connection.
    backend: Option<Backend>,
    /// Records owed to the chain: for each record committed although its batch was reported
    /// failed (its request refused), one that says so. Written first in the next batch.
    owed: Vec<AuditEvent>,
    /// The latest records of the chain this writer knows are genuine (sequence, hash; newest
    /// last): the ones it wrote, and the end it found at its start. A chain end read again
    /// after a failure is taken up only if it is one of these, or a signed checkpoint names
    /// it ([`DbWriter::take_up`]).
    known: std::collections::VecDeque<(u64, String)>,
    /// While the record of a cut is owed: the last record the writer knew of before the
    /// first cut since its last write (a later cut's record names it too).
    cut_from: Option<u64>,
    /// The last chain end refused as not genuine (its refusal is logged at error once).
    refused_end: Option<(u64, String)>,
}

/// How many of its latest records a writer keeps in [`DbWriter::known`]: a failover that
/// lost more of the chain than this is taken up only at a signed checkpoint.
fn known_bound(config: &AuditConfig) -> usize {
    usize::try_from(config.max_unanchored())
        .unwrap_or(usize::MAX)
        .saturating_mul(2)
        .saturating_add(config.max_batch.saturating_mul(2))
}

/// Where a batch signs checkpoints: over the owed records' last one (`Some(seq)`), and over
/// the batch's last record (`true`). `(last, signed)`: the chain's end and its last signed
/// checkpoint before the batch; `(owed, events)`: the batch's records owed for an earlier
/// batch, then its new ones; `every`: `checkpoint_every_records`; `late`: the checkpoint
/// interval has passed.
///
/// Verification allows at most `every + max_batch` records between two checkpoints. Signing
/// at a batch's end once `every` are unsigned keeps the stretch within it for a batch of at
/// most `max_batch` records — but a batch that carries the records owed for one that
/// committed unheard (and at most one record of a cut) holds up to two batches' worth and
/// one, and the stretch could reach `every + 2 × max_batch`: a genuine chain failing
/// verification for good. Owed records are therefore signed over on their own, before the
/// new ones: `every - 1 + max_batch + 1` at most.
fn checkpoints_due(
    (last, signed): (u64, u64),
    (owed, events): (u64, u64),
    every: u64,
    late: bool,
) -> (Option<u64>, bool) {
    let after_owed = (owed > 0 && events > 0).then_some(last + owed);
    let base = after_owed.unwrap_or(signed);
    let end = last + owed + events;
    (after_owed, end > base && (end - base >= every || late))
}

impl DbWriter {
    /// Connects when there is no live connection and reads the tail back when unknown.
    async fn ready(&mut self) -> Result<(), String> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.tail = None;
            let client = connect_with(&self.pg, self.tls.clone(), self.timeout).await?;
            self.backend = Some(own_backend(&client).await?);
            self.client = Some(client);
        }
        // (A batch in doubt is settled first: the settle reads the tail once it is final.)
        self.settle().await?;
        if self.tail.is_none() {
            let client = self.client.as_ref().ok_or("no database connection")?;
            let found = read_tail(client, self.owner.replica, &self.signer.verifier()).await?;
            self.take_up(found).await?;
        }
        Ok(())
    }

    /// Connects when needed and checks what a batch needs: the database answers, this
    /// broker holds its lease, and its chain ends where it last wrote (a transaction rolled
    /// back). A database that answers while another broker holds the lease is not writable.
    async fn ping(&mut self) -> Result<(), String> {
        self.ready().await?;
        let tail = self.tail.clone().ok_or("chain tail unknown")?;
        let tx = self.owned_transaction(&tail).await?;
        tx.rollback().await.map_err(|e| format!("database: {e}"))
    }

    /// A transaction on this writer's connection in which its chain was found to end where
    /// it last wrote, under its lease.
    async fn owned_transaction(
        &mut self,
        tail: &ChainTail,
    ) -> Result<tokio_postgres::Transaction<'_>, String> {
        let client = self.client.as_mut().ok_or("no database connection")?;
        // Read committed whatever the database's default: the lease check's row lock may
        // wait on a renewal, and re-reads the renewed row afterwards (under repeatable read
        // or serializable that wait would fail the batch).
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
            .start()
            .await
            .map_err(|e| format!("database: {e}"))?;
        check_owned_tail(&tx, &self.owner, tail).await?;
        Ok(tx)
    }

    fn checkpoint_line(&self, seq: u64, hash: &str) -> Result<(Checkpoint, String), String> {
        let cp = Checkpoint::signed(seq, hash, &self.signer);
        let line = serde_json::to_string(&cp).map_err(|e| e.to_string())?;
        Ok((cp, line))
    }

    /// Writes one batch (and a checkpoint when due) in one transaction under the lease.
    async fn write(
        &mut self,
        events: Vec<AuditEvent>,
    ) -> Result<(Vec<AuditReceipt>, ChainTail), String> {
        self.ready().await?;
        let tail = self.tail.clone().ok_or("chain tail unknown")?;
        if events.is_empty() && self.owed.is_empty() {
            return Ok((Vec::new(), tail));
        }
        let time = now_rfc3339();
        let mut seq = tail.seq;
        let mut prev = tail.hash.clone();
        let (mut seqs, mut lines, mut receipts) = (Vec::new(), Vec::new(), Vec::new());
        let mut hashes = Vec::new();
        let owed = self.owed.len();
        for event in self.owed.iter().cloned().chain(events) {
            seq += 1;
            let mut rec = AuditRecord {
                replica: Some(self.owner.replica),
                seq,
                time: time.clone(),
                event,
                prev_hash: prev,
                hash: String::new(),
            };
            let line = String::from_utf8(rec.seal()).map_err(|e| e.to_string())?;
            receipts.push(AuditReceipt {
                seq,
                audit_id: rec.audit_id(),
            });
            seqs.push(seq_i64(seq));
            lines.push(line);
            hashes.push((seq, rec.hash.clone()));
            prev = rec.hash;
        }
        let (after_owed, due) = checkpoints_due(
            (tail.seq, tail.checkpoint_seq),
            (owed as u64, seq - tail.seq - owed as u64),
            self.config.checkpoint_every_records,
            // A chain's first batch is signed in the same transaction: no chain of a broker
            // is ever without a checkpoint, which `audit verify` takes as records nobody
            // with the key wrote (a broker killed within its first interval left one).
            tail.checkpoint_seq == 0
                || self.last_checkpoint_at.elapsed() >= self.config.checkpoint_interval,
        );
        let mut checkpoints = Vec::new();
        if let Some(at) = after_owed {
            // (The owed records come first: the last of them is the batch's record `owed`.)
            let hash = hashes
                .get(owed - 1)
                .map(|(_, h)| h.clone())
                .ok_or("the owed records' last hash is missing")?;
            checkpoints.push(self.checkpoint_line(at, &hash)?);
        }
        if due {
            checkpoints.push(self.checkpoint_line(seq, &prev)?);
        }
        let replica = replica_i32(self.owner.replica);
        // Kept until the commit is heard: a commit the server makes after this writer gave
        // up on it is found on the next connection (`settle`).
        let lines = Arc::new(lines);
        self.in_flight = Some(InFlight {
            backend: self.backend.clone(),
            first_seq: tail.seq + 1,
            lines: Arc::clone(&lines),
            owed,
        });
        let tx = self.owned_transaction(&tail).await?;
        tx.execute(
            "INSERT INTO credbroker_audit (replica, seq, line) SELECT $1, s, l FROM unnest($2::bigint[], $3::text[]) AS t(s, l)",
            &[&replica, &seqs, &*lines],
        )
        .await
        .map_err(|e| format!("database: {e}"))?;
        for (cp, line) in &checkpoints {
            tx.execute(
                "INSERT INTO credbroker_audit_checkpoints (replica, seq, line) VALUES ($1, $2, $3)",
                &[&replica, &seq_i64(cp.seq), line],
            )
            .await
            .map_err(|e| format!("database: {e}"))?;
        }
        tx.commit().await.map_err(|e| format!("database: {e}"))?;
        self.in_flight = None;
        self.owed.clear();
        self.cut_from = None;
        for (at, hash) in &hashes {
            self.remember(*at, hash);
        }
        Ok((
            receipts.split_off(owed),
            ChainTail {
                seq,
                hash: prev,
                checkpoint_seq: checkpoints
                    .last()
                    .map_or(tail.checkpoint_seq, |(cp, _)| cp.seq),
            },
        ))
    }

    async fn write_checkpoint(&mut self) -> Result<Option<u64>, String> {
        self.ready().await?;
        let tail = self.tail.clone().ok_or("chain tail unknown")?;
        if tail.seq <= tail.checkpoint_seq {
            return Ok(None);
        }
        let (cp, line) = self.checkpoint_line(tail.seq, &tail.hash)?;
        // Never sign over a record that is not (or no longer) there.
        let replica = replica_i32(self.owner.replica);
        let verifier = self.signer.verifier();
        let tx = self.owned_transaction(&tail).await?;
        let inserted = tx
            .execute(
                "INSERT INTO credbroker_audit_checkpoints (replica, seq, line) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&replica, &seq_i64(cp.seq), &line],
            )
            .await
            .map_err(|e| format!("database: {e}"))?;
        // A row already there is this writer's own only if it covers the same record (one
        // whose commit went unheard); any other was planted, and nothing is signed over it.
        if inserted == 0 {
            let there = tx
                .query_one(
                    "SELECT line FROM credbroker_audit_checkpoints WHERE replica = $1 AND seq = $2",
                    &[&replica, &seq_i64(cp.seq)],
                )
                .await
                .map_err(|e| format!("database: {e}"))?;
            let same = there
                .try_get::<_, &str>(0)
                .ok()
                .and_then(|l| serde_json::from_str::<Checkpoint>(l).ok())
                .is_some_and(|c| c.seq == cp.seq && c.hash == cp.hash && c.verifies(&verifier));
            if !same {
                return Err(format!(
                    "{}: replica {}'s checkpoint row at {} was already there and covers another record; nothing is signed over it (runbooks/audit-unavailable.md)",
                    super::NOT_WRITTEN_BY_US,
                    replica,
                    cp.seq
                ));
            }
        }
        tx.commit().await.map_err(|e| format!("database: {e}"))?;
        Ok(Some(cp.seq))
    }

    fn block_on<T>(
        &mut self,
        work: impl FnOnce(
            &mut Self,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, String>> + '_>,
        >,
    ) -> Result<T, String> {
        let rt = Arc::clone(&self.rt);
        let timeout = self.timeout;
        rt.block_on(async {
            tokio::time::timeout(timeout, work(self))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "database write timed out after {} ms",
                        timeout.as_millis()
                    ))
                })
        })
    }
}

impl Sink for DbWriter {
    fn commit(&mut self, events: Vec<(Box<AuditEvent>, Waiter)>) {
        let (events, waiters): (Vec<AuditEvent>, Vec<_>) =
            events.into_iter().map(|(e, w)| (*e, w)).unzip();
        let count = waiters.len();
        match self.block_on(|w| Box::pin(w.write(events))) {
            Ok((receipts, tail)) => {
                self.last_contact = Instant::now();
                if tail.checkpoint_seq > self.tail.as_ref().map_or(0, |t| t.checkpoint_seq) {
                    self.last_checkpoint_at = Instant::now();
                }
                self.tail = Some(tail);
                self.healthy.store(true, Ordering::Relaxed);
                // (A batch of owed records only, or none, answers no request: not counted.)
                if count > 0 {
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .records
                        .fetch_add(count as u64, Ordering::Relaxed);
                    self.stats.last_batch.store(count as u64, Ordering::Relaxed);
                    if let Some(h) = &self.batch_sizes {
                        h.observe(count as f64);
                    }
                }
                for (done, receipt) in waiters.into_iter().zip(receipts) {
                    done.send(Ok(receipt));
                }
            }
            Err(e) => {
                // The commit may have happened: the tail is read back before the next batch,
                // on a new connection (this one may be stuck behind what timed out).
                self.tail = None;
                self.client = None;
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                self.healthy.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, replica = self.owner.replica, records = count, "audit batch failed; failing its requests closed");
                let err = AuditError::Write(e);
                for done in waiters {
                    done.send(Err(err.clone()));
                }
            }
        }
    }

    fn maybe_checkpoint(&mut self, force: bool) {
        if !force && self.healthy() && self.last_contact.elapsed() >= IDLE_PING {
            match self.block_on(|w| Box::pin(w.ping())) {
                Ok(()) => self.last_contact = Instant::now(),
                Err(e) => {
                    self.tail = None;
                    self.client = None;
                    self.healthy.store(false, Ordering::Relaxed);
                    tracing::error!(error = %e, replica = self.owner.replica, "audit database unreachable while idle; requests fail closed until it answers");
                    return;
                }
            }
        }
        // Records owed for a batch that committed unheard are not left waiting for traffic.
        // A stopping broker also settles a batch still in doubt and writes what that owes,
        // healthy or not: one batch, within the database timeout (with the database gone,
        // stopping waits no longer than that).
        let owing = !self.owed.is_empty();
        if (self.healthy() && owing) || (force && (owing || self.in_flight.is_some())) {
            self.commit(Vec::new());
        }
        let Some(tail) = &self.tail else {
            return;
        };
        let due = tail.seq > tail.checkpoint_seq
            && (force || self.last_checkpoint_at.elapsed() >= self.config.checkpoint_interval);
        if !due {
            return;
        }
        match self.block_on(|w| Box::pin(w.write_checkpoint())) {
            Ok(Some(seq)) => {
                if let Some(t) = self.tail.as_mut() {
                    t.checkpoint_seq = seq;
                }
                self.last_checkpoint_at = Instant::now();
            }
            Ok(None) => {}
            Err(e) => {
                self.tail = None;
                self.client = None;
                tracing::error!(error = %e, replica = self.owner.replica, "could not write an audit checkpoint; will retry");
            }
        }
    }

    fn probe(&mut self) {
        match self.block_on(|w| Box::pin(w.ping())) {
            Ok(()) => {
                self.last_contact = Instant::now();
                tracing::info!(
                    replica = self.owner.replica,
                    "audit database reachable again"
                );
                self.healthy.store(true, Ordering::Relaxed);
            }
            // Read the tail again at the next try (a chain whose end moved is taken up as it
            // is, as a batch would).
            // The connection is dropped too, as on every other failure: a probe cut short by
            // its deadline may have left it inside read_tail's snapshot, which every later
            // statement on it would fail in.
            Err(e) => {
                self.tail = None;
                self.client = None;
                tracing::debug!(error = %e, replica = self.owner.replica, "audit database still not writable");
            }
        }
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn config(&self) -> &AuditConfig {
        &self.config
    }
}

impl AuditLog {
    /// Opens `owner`'s chain in the shared database: connects, checks the chain from its
    /// last signed checkpoint to its end (refusing to start on one that does not verify,
    /// unless `forensic_start`), and starts the writer thread.
    ///
    /// # Errors
    /// When the database cannot be reached or the chain does not verify.
    pub async fn open_database(
        config: AuditConfig,
        signer: AuditSigner,
        batch_sizes: Option<BatchObserver>,
        settings: &StoreSettings,
        owner: ChainOwner,
    ) -> Result<AuditLog, AuditError> {
        let open_err = |reason: String| AuditError::Open {
            path: format!("audit chain of replica {}", owner.replica),
            reason,
        };
        let (pg, tls) = crate::store::postgres::writable_connection(settings)
            .map_err(|e| open_err(e.to_string()))?;
        let timeout = Duration::from_millis(settings.timeout_ms.max(1));
        // The start-up check runs on the caller's runtime, with a connection of its own. The
        // chain's end it verified is where the writer starts: read in the same snapshot, so
        // a record added after the check is not taken up unverified.
        let mut client = connect_with(&pg, tls.clone(), timeout)
            .await
            .map_err(open_err)?;
        let snapshot = super::snapshot(&mut client).await.map_err(open_err)?;
        let verified = verify_tail(
            &snapshot,
            owner.replica,
            &signer.verifier(),
            config.max_unanchored(),
        )
        .await;
        let start_end = last_record(&snapshot, owner.replica).await;
        // What follows the last checkpoint, as the file log reports it, also on a forensic
        // start (whose check did not get to say).
        let unsigned_tail = match &verified {
            Ok(tail) => *tail,
            Err(_) => {
                let signed = super::last_checkpoint(&snapshot, owner.replica)
                    .await
                    .ok()
                    .flatten()
                    .map_or(0, |c| c.seq);
                start_end
                    .as_ref()
                    .ok()
                    .map(|(seq, _)| *seq)
                    .filter(|seq| *seq > signed)
                    .map(|seq| (signed + 1, seq))
            }
        };
        let _ = snapshot.commit().await;
        let mut forensic = None;
        if let Err(f) = verified {
            if !config.forensic_start {
                return Err(AuditError::Unverified {
                    path: format!("database chain of replica {}", owner.replica),
                    reason: f,
                });
            }
            tracing::error!(failure = %f, replica = owner.replica, "FORENSIC START: the audit chain does not verify from its last signed checkpoint; new records are chained onto it regardless");
            forensic = Some(f);
        }
        drop(client);
        // Made once nothing can refuse the start: a runtime dropped here, on the caller's
        // runtime, panics instead of the start being refused.
        let rt = Arc::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| open_err(e.to_string()))?,
        );
        let healthy = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(AuditStats::default());
        let writer = DbWriter {
            config,
            rt,
            pg,
            tls,
            timeout,
            client: None,
            owner,
            tail: None,
            last_checkpoint_at: Instant::now(),
            last_contact: Instant::now(),
            signer,
            healthy: healthy.clone(),
            stats: stats.clone(),
            batch_sizes,
            in_flight: None,
            backend: None,
            owed: Vec::new(),
            known: start_end.into_iter().collect(),
            cut_from: None,
            refused_end: None,
        };
        AuditLog::spawn(writer, healthy, stats, forensic, unsigned_tail)
    }
}

#[cfg(test)]
mod tests;
