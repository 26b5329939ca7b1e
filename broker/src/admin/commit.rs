//! The one audited pipeline every change commits through, and the operator's standing that
//! is a precondition of each of their changes.

use crate::api_error::{ApiError, ErrorCode};
use crate::audit::{AuditEvent, AuditReceipt};
use crate::model::{Operator, Status};
use crate::store::records::Stored;
use crate::store::{Batch, StoreError};

use super::{store_err, AdminOutcome, AdminService};

/// Who issued a link or a site expectation, as it recorded them: the actor of the request
/// that made it (`operator:<name>` or a local command's `cli:…`) and, for an operator, the
/// revision of their record then. A disable bumps the revision and so does the re-enable
/// after it: what an operator issued before a disable stays dead (a certificate stolen and
/// revoked meanwhile must not get its links back with the operator).
pub type Issuer = (String, Option<u64>);

tokio::task_local! {
    /// The operator record an admin request was admitted on, for the task running it
    /// ([`AdminService::execute_admitted`]): every commit of that request requires the record
    /// to be unchanged since, not merely active now.
    pub(super) static ADMITTED: Option<Stored<Operator>>;

    /// Who a change acts for besides its actor: the issuer of the install link or site
    /// expectation a callback came through ([`AdminService::execute_on_behalf`],
    /// [`AdminService::on_behalf_of`]). Each commit also requires that operator's record
    /// active and unchanged, so an operator disabled while an install's proof or probe runs
    /// gets nothing bound or activated in their name.
    pub(super) static ON_BEHALF_OF: Option<Issuer>;
}

impl AdminService {
    /// The one audited pipeline every change goes through (operator changes, probes,
    /// callbacks, the broker's own flags): `event`'s record is made durable first, then
    /// `batch` is committed, then the token cache forgets `invalidate`; a commit that fails
    /// after its record gets a second record saying so. Callers run it where a dropped
    /// client cannot cut it in two ([`AdminService::execute`] spawns; the server spawns
    /// callbacks).
    ///
    /// # Errors
    /// `audit_unavailable` (nothing changed), or the commit's error with the receipt of the
    /// second record.
    pub(crate) async fn commit_audited(
        &self,
        mut event: AuditEvent,
        batch: Batch,
        invalidate: &[&str],
    ) -> Result<AuditReceipt, (ApiError, Option<AuditReceipt>)> {
        // An operator's change lands only while the operator is still active: their status
        // was checked when the request arrived, but a probe or a self-rotation calls an
        // upstream for seconds, and a change may wait for the admin lock, before it commits.
        // The operator's record — the one the request was admitted on — is a precondition
        // of the commit, so a disable (on any replica) in the meantime makes it fail and
        // write nothing.
        let issuer = ON_BEHALF_OF.try_with(Clone::clone).ok().flatten();
        // The operators whose records guard the commit: a failure of their precondition is
        // theirs, not the change's own (a record the change itself reads, as in
        // `operator disable bob`, is a plain conflict).
        let guards: Vec<String> = [
            Some(event.actor.as_str()),
            issuer.as_ref().map(|i| i.0.as_str()),
        ]
        .into_iter()
        .flatten()
        .filter_map(|a| a.strip_prefix("operator:").map(str::to_owned))
        .collect();
        let guarded = match self.actor_precondition(&event.actor, batch).await {
            Ok(batch) => match issuer {
                Some((issuer, revision)) => {
                    self.issuer_precondition(&issuer, revision, batch).await
                }
                None => Ok(batch),
            },
            Err(err) => Err(err),
        };
        let batch = match guarded {
            Ok(batch) => batch,
            Err(err) => {
                event.outcome = "denied".into();
                event.error_code = Some(err.code.as_str().to_owned());
                event.detail = Some(format!(
                    "not applied: {}; planned: {}",
                    err.message,
                    event.detail.take().unwrap_or_default()
                ));
                let receipt = self.core.audit.append(event).await.ok();
                return Err((err, receipt));
            }
        };
        let receipt = self.core.audit.append(event.clone()).await.map_err(|e| {
            tracing::error!(error = %e, "change refused: audit unavailable");
            (
                ApiError::new(
                    ErrorCode::AuditUnavailable,
                    "audit log unavailable; nothing was changed",
                ),
                None,
            )
        })?;
        if let Err(e) = self.core.records.commit(batch).await {
            // A precondition failure wrote nothing; a backend failure (a failed flush) may
            // have landed: the record says which.
            let outcome = match e {
                StoreError::Precondition { .. } => "nothing was written",
                _ => "its outcome is unknown until the store is checked",
            };
            // An operator record changed between the check and the commit (a disable on
            // another replica): the actor or the issuer may no longer act.
            let err = match e
                .changed_operator()
                .filter(|n| guards.iter().any(|g| g == n))
            {
                Some(name) => ApiError::new(
                    ErrorCode::OperatorRequired,
                    format!(
                        "operator {name} was disabled or changed while this change was under way"
                    ),
                ),
                None => store_err(e),
            };
            event.outcome = "failed".into();
            event.error_code = Some(err.code.as_str().to_owned());
            event.detail = Some(format!(
                "commit of {} failed after audit; {outcome}",
                receipt.audit_id
            ));
            let second = self.core.audit.append(event).await.ok();
            return Err((err, second));
        }
        for b in invalidate {
            self.core.cache.invalidate_binding(b);
        }
        Ok(receipt)
    }

    /// An operator certificate administers only while its operator record is active. A store
    /// with no operator records at all (a deployment upgraded from a release without them)
    /// accepts every operator certificate until the first is registered — logged at start.
    /// `batch`, preconditioned on `actor`'s operator record when the actor is an operator: the
    /// record as it is now, which must also be the one the request was admitted on when it
    /// came through the admin API (while no operator is registered any operator certificate
    /// administers, and nothing is added).
    ///
    /// # Errors
    /// `operator_required` when the operator is disabled or no longer registered.
    pub(super) async fn actor_precondition(
        &self,
        actor: &str,
        batch: Batch,
    ) -> Result<Batch, ApiError> {
        let Some(name) = actor.strip_prefix("operator:") else {
            return Ok(batch);
        };
        let name = crate::ids::OperatorId::parse(name).map_err(ApiError::bad_request)?;
        let Some(read) = self.standing(&name).await? else {
            return Ok(batch);
        };
        // Active now is not enough after a disable and re-enable (a certificate revoked
        // meanwhile, the name given a new one): the record must be the one the request was
        // admitted on.
        let changed = ADMITTED
            .try_with(|a| {
                a.as_ref()
                    .is_some_and(|a| a.value.id == name && a.value != read.value)
            })
            .unwrap_or(false);
        if changed {
            return Err(ApiError::new(
                ErrorCode::OperatorRequired,
                format!("operator {name} was disabled or changed after this request was admitted"),
            ));
        }
        Ok(guarded(&read, batch))
    }

    /// Runs `work` on behalf of `issuer` (see [`ON_BEHALF_OF`]).
    pub(crate) async fn on_behalf_of<F: std::future::Future>(
        issuer: Option<Issuer>,
        work: F,
    ) -> F::Output {
        ON_BEHALF_OF.scope(issuer, work).await
    }

    /// The issuer of what `actor` makes now: for an operator, with their record's revision
    /// (none while no operator is registered).
    ///
    /// # Errors
    /// `operator_required` for an operator no longer active; a store error.
    pub(super) async fn issuer_now(&self, actor: &str) -> Result<Issuer, ApiError> {
        // While no operator is registered yet, revision 0: the record the operator gets
        // when registered (a later disable and re-enable still kill what they issued now).
        let revision = match actor.strip_prefix("operator:") {
            Some(name) => {
                let name = crate::ids::OperatorId::parse(name).map_err(ApiError::bad_request)?;
                Some(self.standing(&name).await?.map_or(0, |r| r.value.revision))
            }
            None => None,
        };
        Ok((actor.to_owned(), revision))
    }

    /// Whether what `issuer` issued (an intake or install link, a site expectation) may still
    /// act: an operator's links die with the operator's standing, and stay dead after a
    /// re-enable when they recorded the revision (`revision`). A local command's (`cli:…`)
    /// have no operator, nor do those written before issuers were recorded (`None`).
    ///
    /// # Errors
    /// `operator_required` when the issuer is an operator no longer active or changed since
    /// (or a name that is not an operator's); a store error when the record cannot be read.
    pub(crate) async fn issuer_may_act(
        &self,
        issuer: Option<&str>,
        revision: Option<u64>,
    ) -> Result<(), ApiError> {
        match issuer {
            Some(issuer) => self
                .issuer_precondition(issuer, revision, Batch::new())
                .await
                .map(drop),
            None => Ok(()),
        }
    }

    /// [`AdminService::issuer_may_act`] as a yes or no: `false` once the issuer may no longer
    /// act (what they issued is dead).
    ///
    /// # Errors
    /// A store error when the operator's record cannot be read.
    pub(crate) async fn issuer_alive(
        &self,
        issuer: Option<&str>,
        revision: Option<u64>,
    ) -> Result<bool, ApiError> {
        match self.issuer_may_act(issuer, revision).await {
            Ok(()) => Ok(true),
            Err(e) if e.code == ErrorCode::OperatorRequired => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `batch`, preconditioned on the record of the operator who issued what it acts through
    /// (see [`AdminService::issuer_may_act`]): active, at `revision` when one was recorded,
    /// and unchanged until the commit.
    ///
    /// # Errors
    /// As [`AdminService::issuer_may_act`].
    pub(super) async fn issuer_precondition(
        &self,
        issuer: &str,
        revision: Option<u64>,
        batch: Batch,
    ) -> Result<Batch, ApiError> {
        let Some(name) = issuer.strip_prefix("operator:") else {
            return Ok(batch);
        };
        let name = crate::ids::OperatorId::parse(name)
            .map_err(|_| ApiError::new(ErrorCode::OperatorRequired, "not an operator"))?;
        let Some(read) = self.standing(&name).await? else {
            return Ok(batch);
        };
        if revision.is_some_and(|r| r != read.value.revision) {
            return Err(ApiError::new(
                ErrorCode::OperatorRequired,
                format!("operator {name} was disabled after issuing it"),
            ));
        }
        Ok(guarded(&read, batch))
    }

    /// Whether operator `name` may administer now.
    ///
    /// # Errors
    /// `operator_required` when the operator is disabled or not registered.
    pub(crate) async fn operator_may_administer(
        &self,
        name: &crate::ids::OperatorId,
    ) -> Result<(), ApiError> {
        self.standing(name).await.map(drop)
    }

    /// The operator's record when it is active; `None` when no operator is registered at all
    /// (any operator certificate administers until the first is).
    pub(super) async fn standing(
        &self,
        name: &crate::ids::OperatorId,
    ) -> Result<Option<Stored<Operator>>, ApiError> {
        let records = &self.core.records;
        match records.operator(name).await.map_err(store_err)? {
            Some(o) if o.value.status == Status::Active => Ok(Some(o)),
            Some(_) => Err(ApiError::new(
                ErrorCode::OperatorRequired,
                format!("operator {name} is disabled"),
            )),
            None if records.operators().await.map_err(store_err)?.is_empty() => Ok(None),
            None => Err(ApiError::new(
                ErrorCode::OperatorRequired,
                format!("operator {name} is not registered (credbroker operator add)"),
            )),
        }
    }
}

/// `batch`, committed only while the operator record `read` is unchanged.
fn guarded(read: &Stored<Operator>, batch: Batch) -> Batch {
    let mut guard = Batch::new();
    guard.expect_unchanged(read);
    guard.then(batch)
}

impl AdminService {
    /// `result` of an operation that runs outside the plan-and-commit path (a probe, a
    /// revocation of cached credentials, a self-rotation), with a refusal it answered before
    /// writing any record audited as a plan's refusal is: an operator's refused attempt
    /// leaves a trace (THREATS.md). A refusal because the log cannot take records has none to
    /// add.
    pub(super) async fn refusal_recorded(
        &self,
        result: Result<AdminOutcome, (ApiError, Option<AuditReceipt>)>,
        mut event: AuditEvent,
        target: &str,
    ) -> Result<AdminOutcome, (ApiError, Option<AuditReceipt>)> {
        match result {
            Err((err, None)) if err.code != ErrorCode::AuditUnavailable => {
                event.detail = Some(refused_detail(target, &err));
                Err(self.audit_refusal(event, err).await)
            }
            other => other,
        }
    }

    /// `err`, refusing the operation `event` describes, with the receipt of its `denied`
    /// record; `audit_unavailable` when that record cannot be written.
    pub(super) async fn audit_refusal(
        &self,
        mut event: AuditEvent,
        err: ApiError,
    ) -> (ApiError, Option<AuditReceipt>) {
        event.outcome = "denied".into();
        event.error_code = Some(err.code.as_str().to_owned());
        event.detail = event.detail.as_deref().map(bounded_detail);
        match self.core.audit.append(event).await {
            Ok(r) => (err, Some(r)),
            Err(_) => (
                ApiError::new(ErrorCode::AuditUnavailable, "audit log unavailable"),
                None,
            ),
        }
    }
}

/// The detail of a refused operation's record: what it named, and why it was refused.
pub(super) fn refused_detail(target: &str, err: &ApiError) -> String {
    if target.is_empty() {
        err.message.clone()
    } else {
        format!("{target}: {}", err.message)
    }
}

/// The most of an admin change's detail its audit record holds: a request names many values
/// (tenants, connector kinds, secret fields, sites), and a record far longer than this
/// would pass the bound the readers and the segment recovery hold a line to.
const MAX_DETAIL: usize = 24 * 1024;

/// `detail` as the record holds it: whole up to [`MAX_DETAIL`] bytes, else its beginning,
/// its length and its SHA-256.
pub(super) fn bounded_detail(detail: &str) -> String {
    if detail.len() <= MAX_DETAIL {
        detail.to_owned()
    } else {
        cut_on_record(detail, MAX_DETAIL)
    }
}

/// What an audit record holds of a value too long to hold whole: its first `keep` bytes (cut
/// at a character; none when `keep` is 0), its SHA-256 and its length.
pub(super) fn cut_on_record(text: &str, keep: usize) -> String {
    let mut cut = keep.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = format!(
        "sha256:{}, {} bytes",
        crate::hex_text::sha256_hex(text.as_bytes()),
        text.len()
    );
    if cut == 0 {
        digest
    } else {
        format!("{}… ({digest})", &text[..cut])
    }
}

#[cfg(test)]
mod detail_tests {
    /// A detail past the bound is cut at a character, with its length and digest.
    #[test]
    fn a_long_detail_is_cut_and_named() {
        let short = "tenant=t1";
        assert_eq!(super::bounded_detail(short), short);
        // One byte, then three-byte characters: the bound falls inside one.
        let long = "a".to_owned() + &"€".repeat(super::MAX_DETAIL / 3 + 10);
        let cut = super::bounded_detail(&long);
        assert!(cut.len() < super::MAX_DETAIL + 120, "{}", cut.len());
        assert!(cut.contains("(sha256:") && cut.ends_with(&format!(", {} bytes)", long.len())));
    }
}
