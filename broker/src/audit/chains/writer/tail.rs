//! Where a replica's chain ends: its last record, its last signed checkpoint at or before
//! that end (verified), and the check each batch makes that the end is still this writer's.

use tokio_postgres::{Client, GenericClient};

use super::super::super::record::{AuditRecord, Checkpoint, GENESIS_HASH};
use super::super::{replica_i32, seq_i64};
use super::ChainOwner;

/// Where this writer's chain ends, and its last signed checkpoint there.
#[derive(Debug, Clone)]
pub(super) struct ChainTail {
    pub(super) seq: u64,
    pub(super) hash: String,
    pub(super) checkpoint_seq: u64,
}

/// The sequence and hash of the last record of `replica`'s chain (0 and the genesis hash for
/// an empty one).
pub(super) async fn last_record(
    client: &impl GenericClient,
    replica: u32,
) -> Result<(u64, String), String> {
    let last = client
        .query_opt(
            "SELECT line FROM credbroker_audit WHERE replica = $1 ORDER BY seq DESC LIMIT 1",
            &[&replica_i32(replica)],
        )
        .await
        .map_err(|e| format!("database: {e}"))?;
    Ok(match last {
        None => (0, GENESIS_HASH.to_owned()),
        Some(row) => {
            let line = row
                .try_get::<_, &str>(0)
                .map_err(|_| format!("the last record of replica {replica}'s chain is not text"))?;
            let rec: AuditRecord = serde_json::from_str(line).map_err(|_| {
                format!("the last record of replica {replica}'s chain does not parse")
            })?;
            // (The line as stored, hashed as it is: no second serialization per batch.)
            if !AuditRecord::line_hash_matches(line, &rec.hash) {
                return Err(format!(
                    "the last record of replica {replica}'s chain ({}) fails its hash",
                    rec.seq
                ));
            }
            // A record copied in from another replica's chain (with that chain's checkpoint)
            // hashes and is signed: only the replica it names tells it is not this chain's
            // end. Nothing is chained onto it; `audit verify` names it too.
            if rec.replica != Some(replica) {
                return Err(format!(
                    "the last record of replica {replica}'s chain ({}) names replica {} (moved between chains)",
                    rec.seq,
                    rec.replica.map_or("none".into(), |r| r.to_string())
                ));
            }
            (rec.seq, rec.hash)
        }
    })
}

/// Fails unless the chain still ends where this writer believes, under its lease: a failover
/// that lost the last records (or anyone else writing) is found before anything is chained
/// onto a record that is not there; the tail is then read again.
pub(super) async fn check_owned_tail(
    tx: &impl GenericClient,
    owner: &ChainOwner,
    tail: &ChainTail,
) -> Result<(), String> {
    // Both leases in one read, in the write's transaction: the chain's own, and an offline
    // change's hold (a KEK rotation started while this broker's lease had lapsed, and which
    // this broker then re-claimed: nothing is recorded, so nothing is served, beside it).
    // Read as of now (`clock_timestamp()`, not the transaction's start), and locked until the
    // batch commits: a broker claiming the lease once it lapses waits for this commit, and
    // then reads a chain end that holds this batch, rather than one this batch is about to
    // move past.
    let leases = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM credbroker_leases WHERE name = $1 AND holder = $2 AND expires_at > clock_timestamp() FOR SHARE), \
                    EXISTS (SELECT 1 FROM credbroker_leases WHERE name = $3 AND expires_at > clock_timestamp() FOR SHARE)",
            &[&owner.lease, &owner.holder, &crate::replica::OFFLINE],
        )
        .await
        .map_err(|e| format!("database: {e}"))?;
    let flag = |i: usize| -> Result<bool, String> {
        leases.try_get(i).map_err(|e| format!("database: {e}"))
    };
    let (held, offline) = (flag(0)?, flag(1)?);
    if !held {
        return Err(format!(
            "this broker no longer holds {}: its chain is not written (the lease lapsed or another broker took it)",
            owner.lease
        ));
    }
    if offline {
        return Err(
            "an offline change (a KEK rotation, an operator registered offline or a store move) holds this store: no record is written until it has ended".into(),
        );
    }
    let (seq, hash) = last_record(tx, owner.replica).await?;
    if seq != tail.seq || hash != tail.hash {
        return Err(format!(
            "replica {}'s chain ends at {seq}, not at {} as this writer last wrote (records lost in a failover, or written by another): it is read again",
            owner.replica, tail.seq
        ));
    }
    Ok(())
}

/// The end of `replica`'s chain and its last signed checkpoint at or before that end, which
/// must verify (`verifier`) over the record it names. Anything else fails the writer closed:
/// a checkpoint row past the end (one the key signed: records removed after it; one it did
/// not: a row no broker wrote), or a last checkpoint that does not verify over its record.
/// Taken as the chain's last signed point, such a row would have this writer sign nothing up
/// to it (or nothing more), leaving those records open to rewriting.
pub(super) async fn read_tail(
    client: &Client,
    replica: u32,
    verifier: &crate::keys::AuditVerifier,
) -> Result<ChainTail, String> {
    // One snapshot for all of it: another broker taking the replica id over may commit
    // records and a checkpoint between two of these reads, which would read as a checkpoint
    // past the end.
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(|e| format!("database: {e}"))?;
    let read = read_tail_within(client, replica, verifier).await;
    let ended = client.batch_execute("ROLLBACK").await;
    let tail = read?;
    ended.map_err(|e| format!("database: {e}"))?;
    Ok(tail)
}

/// [`read_tail`]'s reads, in the snapshot it opened.
async fn read_tail_within(
    client: &Client,
    replica: u32,
    verifier: &crate::keys::AuditVerifier,
) -> Result<ChainTail, String> {
    let (seq, hash) = last_record(client, replica).await?;
    let db = |e: tokio_postgres::Error| format!("database: {e}");
    // Two index lookups (an aggregate with a filter would read every checkpoint row).
    let last_at_or_before = client
        .query_opt(
            "SELECT seq, line FROM credbroker_audit_checkpoints WHERE replica = $1 AND seq <= $2 ORDER BY seq DESC LIMIT 1",
            &[&replica_i32(replica), &seq_i64(seq)],
        )
        .await
        .map_err(db)?;
    let past_end = client
        .query_opt(
            "SELECT seq, line FROM credbroker_audit_checkpoints WHERE replica = $1 AND seq > $2 ORDER BY seq DESC LIMIT 1",
            &[&replica_i32(replica), &seq_i64(seq)],
        )
        .await
        .map_err(db)?;
    let parsed = |row: &tokio_postgres::Row| -> (u64, Option<Checkpoint>) {
        let at = row
            .try_get::<_, i64>(0)
            .ok()
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0);
        let cp = row
            .try_get::<_, &str>(1)
            .ok()
            .and_then(|l| serde_json::from_str::<Checkpoint>(l).ok())
            .filter(|c| c.seq == at && c.verifies(verifier));
        (at, cp)
    };
    if let Some(row) = past_end {
        let (at, cp) = parsed(&row);
        return Err(match cp {
            Some(_) => format!(
                "replica {replica}'s chain ends at {seq} but its signed checkpoint names record {at}: records were removed from it (nothing is written until it is examined; runbooks/audit-unavailable.md)"
            ),
            None => format!(
                "{}: replica {replica}'s chain ends at {seq} but a checkpoint row claims record {at}, which no broker wrote; nothing is written until it is examined (runbooks/audit-unavailable.md)",
                super::super::NOT_WRITTEN_BY_US
            ),
        });
    }
    let checkpoint_seq = match last_at_or_before {
        None => 0,
        Some(row) => {
            let (at, cp) = parsed(&row);
            let covered = if at == seq {
                Some(hash.clone())
            } else {
                super::super::line_at(client, replica, at)
                    .await?
                    .and_then(|l| serde_json::from_str::<AuditRecord>(&l).ok())
                    .map(|r| r.hash)
            };
            if cp.is_none_or(|c| Some(&c.hash) != covered.as_ref()) {
                return Err(format!(
                    "{}: replica {replica}'s checkpoint row at {at} does not verify over its record, which no broker wrote; nothing is written until it is examined (runbooks/audit-unavailable.md)",
                    super::super::NOT_WRITTEN_BY_US
                ));
            }
            at
        }
    };
    Ok(ChainTail {
        seq,
        hash,
        checkpoint_seq,
    })
}
