//! Finding out what the chain holds after a failure: whether a batch whose commit went
//! unheard landed (and what it owes), and whether the chain's end read again is genuine —
//! one this writer knows, one a signed checkpoint names, or one older than anything it
//! remembers whose chain verifies — recording every cut it takes up.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

use super::super::super::record::{AuditEvent, AuditRecord};
use super::super::{checkpoint_at, line_at, verify_tail};
use super::{known_bound, read_tail, ChainTail, DbWriter};

/// A server process: its id and when it started, which together name it on one server (an
/// id alone is reused, and means nothing on another server after a failover).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Backend {
    pid: i32,
    /// `backend_start` in microseconds since the epoch (a number: its text form depends on
    /// the session's time zone and date style).
    started: i64,
}

/// This connection's server process.
pub(super) async fn own_backend(client: &Client) -> Result<Backend, String> {
    let row = client
        .query_one(
            "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::bigint FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| format!("database: {e}"))?;
    Ok(Backend {
        pid: row.try_get(0).map_err(|e| format!("database: {e}"))?,
        started: row.try_get(1).map_err(|e| format!("database: {e}"))?,
    })
}

/// Whether the server process `backend` has ended (on this server: one of another server, or
/// from before a restart, has).
async fn backend_gone(client: &Client, backend: &Backend) -> Result<bool, String> {
    client
        .query_opt(
            "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND (extract(epoch FROM backend_start) * 1000000)::bigint = $2",
            &[&backend.pid, &backend.started],
        )
        .await
        .map(|r| r.is_none())
        .map_err(|e| format!("database: {e}"))
}

/// The record owed for `line`, a record the database committed after its batch was reported
/// failed: the request it records was refused (`audit_unavailable`), so nothing was issued
/// or changed, whatever its outcome says.
fn correction_of(line: &str) -> Option<AuditEvent> {
    let rec: AuditRecord = serde_json::from_str(line).ok()?;
    let corrected = rec.audit_id();
    let e = rec.event;
    Some(AuditEvent {
        kind: e.kind,
        action: e.action,
        request_id: e.request_id,
        actor: e.actor,
        tenant: e.tenant,
        instance: e.instance,
        binding: e.binding,
        provider: e.provider,
        outcome: "failed".into(),
        error_code: Some("audit_unavailable".into()),
        job_id: e.job_id,
        detail: Some(format!(
            "record {} was committed after its batch was reported failed: what wrote it was told audit_unavailable and acted on that (a resolve answered so handed out no credential; an admin change refused so was not made)",
            corrected
        )),
        ..Default::default()
    })
}

impl DbWriter {
    /// Remembers a record of the chain as genuine (see [`DbWriter::known`]).
    pub(super) fn remember(&mut self, seq: u64, hash: &str) {
        if self.known.back().is_some_and(|(s, _)| *s >= seq) {
            // Cut back (a failover): what followed it is no longer the chain.
            self.known.retain(|(s, _)| *s < seq);
        }
        self.known.push_back((seq, hash.to_owned()));
        while self.known.len() > known_bound(&self.config) {
            self.known.pop_front();
        }
    }

    /// Takes up `found`, the chain's end read again after a failure, as this writer's tail
    /// — only when it is genuine:
    /// - the end it last wrote, or an earlier record it knows (a failover lost the latest);
    /// - a record a signed checkpoint names (the end another broker holding this replica's
    ///   id wrote, signed at its stop);
    /// - a record older than any it remembers (a failover lost more than that), if the
    ///   chain verifies from its last signed checkpoint to it, as at a start.
    ///
    /// Anything else was written by someone without the signing key — records added after
    /// its own, or its own rewritten — and chaining onto it, then signing a checkpoint over
    /// it, would make it look genuine: the writer stays failed closed instead.
    pub(super) async fn take_up(&mut self, found: ChainTail) -> Result<(), String> {
        let client = self.client.as_ref().ok_or("no database connection")?;
        let verifier = self.signer.verifier();
        // Why the end is genuine, if it is (the record of a cut names it).
        let mut why = (self.known.is_empty()
            || self
                .known
                .iter()
                .any(|(seq, hash)| *seq == found.seq && *hash == found.hash))
        .then_some(
            "a record this writer knows (it wrote it, started from it, or took it up before)",
        );
        if why.is_none() {
            let named = checkpoint_at(client, self.owner.replica, found.seq)
                .await?
                .is_some_and(|cp| {
                    cp.seq == found.seq && cp.hash == found.hash && cp.verifies(&verifier)
                });
            why = named.then_some("a record a signed checkpoint names");
        }
        if why.is_none()
            && self
                .known
                .front()
                .is_some_and(|(oldest, _)| found.seq < *oldest)
        {
            let verified = verify_tail(
                client,
                self.owner.replica,
                &verifier,
                self.config.max_unanchored(),
            )
            .await
            .is_ok();
            why = verified.then_some(
                "older than any record this writer remembers, taken up because the chain verifies from its last signed checkpoint (if no failover happened, treat as tampering)",
            );
        }
        let Some(why) = why else {
            let newest = self.known.back().map_or(0, |(seq, _)| *seq);
            let refusal = format!(
                "replica {}'s chain now ends at record {}, which this writer did not write (its last is {newest}) and no signed checkpoint names: records were added or rewritten by someone else; nothing is chained onto them or signed, and this replica's audit fails closed (see runbooks/audit-unavailable.md)",
                self.owner.replica, found.seq
            );
            // Logged at error once per end found (the writer's probes ask again every
            // second, and their failures are logged at debug only).
            let end = (found.seq, found.hash.clone());
            if self.refused_end.as_ref() != Some(&end) {
                tracing::error!(replica = self.owner.replica, "{refusal}");
                self.refused_end = Some(end);
            }
            return Err(refusal);
        };
        // A cut: the end is before the last record this writer knew of, or past it while
        // that record is no longer in the chain as it knew it (its records lost, then the
        // id's next holder's taken up through their signed checkpoint).
        let cut = match self.known.back().cloned() {
            Some((last, _)) if last > found.seq => Some(last),
            Some((last, hash)) if last < found.seq => {
                let still = line_at(client, self.owner.replica, last)
                    .await?
                    .is_some_and(|l| AuditRecord::line_hash_matches(&l, &hash));
                (!still).then_some(last)
            }
            _ => None,
        };
        if let Some(last) = cut {
            tracing::error!(
                replica = self.owner.replica,
                seq = found.seq,
                last,
                why,
                "this replica's audit chain no longer holds the last record this writer knew of (records lost in a failover, or removed); the chain goes on from its end"
            );
            // On the record, in the chain itself, in the next batch: a cut is then in every
            // later export, signed, whatever made it. A cut past what the writer remembers
            // is taken up on the chain's own word (it verifies from its last signed
            // checkpoint): a failover cannot be told from a rewrite there. One record of a
            // cut is owed at most: a later cut before it is written replaces it (naming
            // the end the writer knew first), so the owed records never outgrow a batch and
            // one (see `checkpoints_due`).
            self.owed.retain(|e| e.action != "audit.chain_cut");
            let first_last = *self.cut_from.get_or_insert(last);
            self.owed.push(AuditEvent {
                kind: "admin".into(),
                action: "audit.chain_cut".into(),
                request_id: crate::server::new_request_id(),
                actor: "credbroker:audit".into(),
                outcome: "allowed".into(),
                detail: Some(format!(
                    "replica {}'s chain no longer holds record {first_last} as this writer knew it (the last it knew of when the first of these cuts was found); it now ends at record {} (records lost in a failover, or removed): {why}",
                    self.owner.replica,
                    found.seq,
                )),
                ..Default::default()
            });
        }
        self.remember(found.seq, &found.hash);
        self.tail = Some(found);
        Ok(())
    }

    /// Finds out whether the batch whose commit went unheard is in the chain; if it is, its
    /// records are owed a record each saying their requests were refused. The batch stays in
    /// flight until this is known (a settle cut short leaves it for the next).
    pub(super) async fn settle(&mut self) -> Result<(), String> {
        let Some(sent) = self.in_flight.as_ref() else {
            return Ok(());
        };
        let (lines, first_seq, carried, backend) = (
            Arc::clone(&sent.lines),
            sent.first_seq,
            sent.owed,
            sent.backend.clone(),
        );
        let Some(last) = lines.last() else {
            self.in_flight = None;
            return Ok(());
        };
        let last_seq = first_seq + (lines.len() as u64 - 1);
        let client = self.client.as_ref().ok_or("no database connection")?;
        // The connection the batch went out on may still be committing it (a trigger, the
        // disk, a synchronous standby): end its server process first, so that what the
        // chain shows is final. (Ended in its COMMIT, a transaction either committed or
        // did not; ended waiting for a standby, it committed here.)
        if let Some(old) = backend.filter(|b| Some(b) != self.backend.as_ref()) {
            if !backend_gone(client, &old).await? {
                // (It is this writer's own session, of the broker's role, which may end it.
                // Should it not end, the batch's timeout cuts this short, and the batch
                // stays in flight for the next try.)
                let _ = client
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND (extract(epoch FROM backend_start) * 1000000)::bigint = $2",
                        &[&old.pid, &old.started],
                    )
                    .await;
                while !backend_gone(client, &old).await? {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        // A batch commits whole: its last line, as sent, tells.
        let committed = line_at(client, self.owner.replica, last_seq)
            .await?
            .is_some_and(|l| l == *last);
        // The tail, now that the batch's fate is final: the batch's records are this
        // writer's when it committed.
        let found = read_tail(client, self.owner.replica, &self.signer.verifier()).await?;
        if committed {
            for line in lines.iter() {
                if let Ok(rec) = serde_json::from_str::<AuditRecord>(line) {
                    self.remember(rec.seq, &rec.hash);
                }
            }
            // The corrections it carried are in; its own records are owed theirs (before
            // the end is taken up, which may owe a record of its own).
            self.owed = lines
                .iter()
                .skip(carried)
                .filter_map(|l| correction_of(l))
                .collect();
            // (A cut's record it carried is in, too.)
            self.cut_from = None;
        }
        let corrections = self.owed.len();
        self.take_up(found).await?;
        self.in_flight = None;
        if committed {
            tracing::error!(
                replica = self.owner.replica,
                records = corrections,
                "an audit batch reported failed was committed after all; a record saying its request was refused follows each of its records"
            );
        }
        Ok(())
    }
}
