//! One submission of an intake link's form, from its attempt reserved to its answer: the
//! value sealed as a pending version while the link is as reserved, probed against the
//! source system, then promoted (using the link up) or dropped, each step audited under the
//! link's creator; a link that died or expired meanwhile stops it at whichever step finds it.

use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;

use credbroker_providers::SecretFields;

use super::MAX_INTAKE_FAILURES;
use crate::admin::{store_err, AdminService};
use crate::api_error::{ApiError, ErrorCode};
use crate::audit::AuditReceipt;
use crate::intake_page::{self as pages, IntakeAnswer};
use crate::store::records::IntakeLink;
use crate::store::Batch;

impl AdminService {
    pub(super) async fn intake_submit(
        self: &Arc<Self>,
        key: &str,
        read: &crate::store::records::Stored<IntakeLink>,
        fields: SecretFields,
        request_id: &str,
    ) -> IntakeAnswer {
        let link = read.value.clone();
        let by = format!("set by intake link {} created by {}", link.id, link.creator);
        // The link acts for its creator: each write below requires their record as it was
        // when the link was made, so a creator disabled meanwhile (on any replica) gets no
        // attempt reserved and no version written in their name.
        let issuer = Some((link.creator.clone(), link.creator_revision));
        let fail = |e: (ApiError, Option<AuditReceipt>)| {
            tracing::warn!(link = %link.id, code = %e.0.code, "intake submission could not be stored");
            pages::refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "The credential could not be stored; open the link again and retry.",
            )
        };
        // Counted until it ends, so a stop waits for its probe's record (the submission runs
        // detached from the customer's connection).
        let _running = crate::issuer::PendingReport::new(&self.core.pending_reports);
        // An operator's staged version (passed its probe, or not probed yet) is not the
        // customer's to destroy: refused before an attempt is spent (and, should one be staged
        // meanwhile, by the write itself). One that failed its probe is replaced.
        let staged = match self.binding_or_404(&link.binding).await {
            Ok(b) => match b.value.pending_secret_version {
                Some(p) => matches!(self.core.records.secret_version(&b.value.id, p).await,
                    Ok(Some(v)) if v.value.worth_keeping()),
                None => false,
            },
            Err(_) => false,
        };
        if staged {
            // The version is this connection's own submission's, still being checked (of
            // this link or another; seen on this replica): the customer is told to wait,
            // not to ask for it to be discarded.
            if self.intake_checking(&link.binding) {
                self.count_intake("conflict", false);
                return pages::refused(
                    StatusCode::CONFLICT,
                    "Another submission for this connection is being checked. Wait a moment, then open the link again.",
                );
            }
            self.count_intake("pending_version", false);
            return pages::refused(
                StatusCode::CONFLICT,
                "Another new credential for this connection is already waiting to be checked. Ask your contact to finish or discard it, then open the link again.",
            );
        }
        // Judged from here on (and audited): counted once, as admitted.
        self.count_intake("none", true);
        // 0. One attempt is reserved on the link as read, before anything is written: of
        //    concurrent submissions one proceeds, and a link revoked or used meanwhile
        //    stops them all.
        let mut reserved = link.clone();
        reserved.failures = reserved.failures.saturating_add(1);
        let left = MAX_INTAKE_FAILURES.saturating_sub(reserved.failures);
        let mut _checking = None;
        let (key, read) = {
            let mut ev = Self::intake_event(&link, request_id, "intake.submit");
            ev.outcome = "allowed".into();
            ev.detail = Some(format!(
                "intake link {} submission {} of at most {MAX_INTAKE_FAILURES}",
                link.id, reserved.failures
            ));
            let mut batch = Batch::new();
            batch.update_intake_link(key, read, &reserved);
            let _guard = self.lock.lock().await;
            // A link that expired while this submission waited (for the lock, for the
            // store) is dead to it, as at its admission: nothing is recorded for it.
            if link.expired_now() {
                self.count_intake("invalid_link", false);
                return pages::invalid();
            }
            // Of concurrent submissions of one link, those that lost the race for its
            // attempt are refused here, before any record (each wrote an "allowed" record
            // and a "failed" one), as a used link is.
            let holds = match self.core.records.preconditions_hold(&batch).await {
                Ok(holds) => holds,
                Err(e) => return fail((super::store_err(e), None)),
            };
            if !holds {
                let changed = ApiError::new(ErrorCode::Conflict, "intake link changed meanwhile");
                if self.link_died(&changed, key, &link).await {
                    self.count_intake("invalid_link", false);
                    return pages::invalid();
                }
                self.count_intake("conflict", false);
                return pages::refused(
                    StatusCode::CONFLICT,
                    "Another submission of this link is being checked. Wait a moment, then open the link again.",
                );
            }
            // Another submission for this connection (through another link) being checked
            // here: this one could not write its version, and is refused before its attempt
            // is spent. (Marks are set under the lock held here: at most one submission
            // per connection is between its attempt and its answer on this replica.)
            if self.intake_checking(&link.binding) {
                self.count_intake("conflict", false);
                return pages::refused(
                    StatusCode::CONFLICT,
                    "Another submission for this connection is being checked. Wait a moment, then open the link again.",
                );
            }
            // Marked before its version can be written, until its answer.
            _checking = Some(Checking::new(self, &link.binding));
            if let Err(e) =
                Self::on_behalf_of(issuer.clone(), self.commit_audited(ev, batch, &[])).await
            {
                // Refused on the link as read: another submission reserved its last
                // attempt meanwhile (or it was revoked), and the link is dead to this one.
                if self.link_died(&e.0, key, &link).await {
                    self.count_intake("invalid_link", false);
                    return pages::invalid();
                }
                return fail(e);
            }
            match self
                .core
                .records
                .intake_link(key.trim_start_matches("intake:"))
                .await
            {
                Ok(Some(fresh)) => fresh,
                Ok(None) => {
                    self.count_intake("invalid_link", false);
                    return pages::invalid();
                }
                Err(_) => {
                    return pages::refused(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "The credential could not be stored; open the link again and retry.",
                    )
                }
            }
        };
        let (key, read) = (key.as_str(), &read);
        // 1. Sealed as a pending version, only while the link is as reserved: a link revoked
        //    (or used up) meanwhile, on any replica, writes nothing.
        let written = {
            let _guard = self.lock.lock().await;
            let plan = async {
                // A link that expired while this submission waited for the lock writes
                // nothing (the stored bytes, the write's precondition, do not change with
                // time).
                if link.expired_now() {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        "the intake link expired meanwhile",
                    ));
                }
                // The tenant as it is now, a precondition: one disabled since the admission
                // (on any replica) gets nothing written.
                let tenant = self.link_target(&link).await?;
                let mut p = self
                    .plan_secret_write(
                        &link.binding,
                        fields,
                        None,
                        crate::admin::secrets::SecretWrite::StageBeside,
                    )
                    .await?;
                p.batch.expect_intake_link(key, read);
                p.batch.expect_unchanged(&tenant);
                Ok(p)
            }
            .await;
            Self::on_behalf_of(
                issuer.clone(),
                self.commit_plan(
                    Self::intake_event(&link, request_id, "secret.rotate"),
                    plan,
                    &by,
                ),
            )
            .await
        };
        let version = match written {
            Ok((v, _)) => v["version"]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0),
            // A conflict is the link revoked or used meanwhile, or the binding changed under
            // the write (a probe's stamp): only the first is a dead link.
            Err((e, _)) if self.link_died(&e, key, &link).await => {
                self.count_intake("invalid_link", false);
                return pages::invalid();
            }
            Err(e) => return fail(e),
        };
        // 2. Probed against the source system: the link's binding, not one made again under
        //    its id meanwhile (whose removal took this link and the version written with it).
        let binding = match self.binding_or_404(&link.binding).await {
            Ok(b) if b.value.made() == link.made() => b.value,
            Ok(_) => {
                self.count_intake("invalid_link", false);
                return pages::invalid();
            }
            // Not probed: the version just written is not left staged for a later
            // promotion (nor in the way of the link's next submission).
            Err(e) => {
                let dropped = self
                    .drop_intake_pending(
                        &link,
                        request_id,
                        version,
                        &format!("{by}; not probed ({})", e.code),
                    )
                    .await;
                return if e.code == ErrorCode::UnknownRecord {
                    self.count_intake("invalid_link", false);
                    pages::invalid()
                } else {
                    unprobed(dropped, left)
                };
            }
        };
        // Nor is the customer's system called for a creator disabled since the write: the
        // version is dropped unprobed, and the link is dead.
        let alive = self
            .issuer_alive(Some(&link.creator), link.creator_revision)
            .await;
        if !matches!(alive, Ok(true)) {
            let why = if alive.is_ok() {
                "its creator was disabled"
            } else {
                "its creator's record could not be read"
            };
            let dropped = self
                .drop_intake_pending(
                    &link,
                    request_id,
                    version,
                    &format!("{by}; not probed: {why}"),
                )
                .await;
            return if alive.is_ok() {
                self.count_intake("invalid_link", false);
                pages::invalid()
            } else {
                unprobed(dropped, left)
            };
        }
        // Its stamp, too, is written for the creator: one disabled while the probe ran gets
        // nothing recorded in their name (the version is dropped below, the link dead).
        let probed = Self::on_behalf_of(
            issuer.clone(),
            self.probe_pending(
                &binding,
                version,
                Self::intake_event(&link, request_id, "binding.probe"),
                Instant::now(),
            ),
        )
        .await;
        match probed {
            Ok(_) => {
                // 3. Promoted; the link is used up in the same batch. The link acts for its
                //    creator: their record as it is now is a precondition, so a creator
                //    disabled while the probe ran (on any replica) does not get it landed.
                let _guard = self.lock.lock().await;
                let plan = async {
                    let mut p = self
                        .plan_secret_promote(&link.binding, version, false)
                        .await?;
                    // The link as it is now, so long as it is still this link: another
                    // submission that reserved an attempt meanwhile (it cannot write: this
                    // version is staged) does not void this one, which has proved itself;
                    // a link revoked, used or expired meanwhile is gone, and stops it (an
                    // expired one may still be stored until the next sweep).
                    let now = time::OffsetDateTime::now_utc().unix_timestamp();
                    let now_read = self
                        .core
                        .records
                        .intake_link(key.trim_start_matches("intake:"))
                        .await
                        .map_err(store_err)?
                        .map(|(_, l)| l)
                        .filter(|l| l.value.id == link.id && !l.value.expired(now))
                        .ok_or_else(|| {
                            ApiError::new(
                                ErrorCode::Conflict,
                                "the intake link was revoked, used or expired meanwhile",
                            )
                        })?;
                    p.batch.remove_intake_link(key, &now_read);
                    // A tenant or binding disabled while the probe ran (on any replica)
                    // stops it too.
                    let tenant = self.link_target(&link).await?;
                    p.batch.expect_unchanged(&tenant);
                    p.batch = self
                        .issuer_precondition(
                            &link.creator,
                            link.creator_revision,
                            std::mem::take(&mut p.batch),
                        )
                        .await?;
                    Ok(p)
                }
                .await;
                let promoted = self
                    .commit_plan(
                        Self::intake_event(&link, request_id, "secret.promote"),
                        plan,
                        &format!("{by}; link used"),
                    )
                    .await;
                drop(_guard);
                match promoted {
                    Ok(_) => {
                        // A binding waiting for its first secret is activated by its probe.
                        // The activation, too, acts for the link's creator.
                        if binding.status == crate::model::Status::PendingActivation {
                            let probe = self.probe_binding(
                                &link.binding,
                                Self::intake_event(&link, request_id, "binding.probe"),
                                Instant::now(),
                            );
                            let _ = Self::on_behalf_of(issuer, probe).await;
                        }
                        pages::result(true, "", 0)
                    }
                    Err((e, _)) => {
                        // Nothing a link that could not be used (revoked or used meanwhile,
                        // its creator disabled, a failed commit) brought stays behind for an
                        // operator to promote later.
                        self.drop_intake_pending(
                            &link,
                            request_id,
                            version,
                            &format!("{by}; not promoted ({})", e.code),
                        )
                        .await;
                        if self.link_died(&e, key, &link).await {
                            self.count_intake("invalid_link", false);
                            pages::invalid()
                        } else {
                            fail((e, None))
                        }
                    }
                }
            }
            // No verdict on the value: the probe was refused before it ran (a stop, the
            // audit log), or its result could not be recorded (the link's binding removed,
            // perhaps made again under its id, meanwhile). Not shown as the value's fault
            // (no provider's refusal has these codes; an internal error may be a probe's that
            // ran and is recorded, and is left to the branch below).
            Err((e, _))
                if matches!(
                    e.code,
                    ErrorCode::Conflict
                        | ErrorCode::Unavailable
                        | ErrorCode::AuditUnavailable
                        | ErrorCode::OperatorRequired
                ) =>
            {
                let what = match e.code {
                    ErrorCode::Conflict => "its probe not recorded",
                    ErrorCode::OperatorRequired => "its creator was disabled during the probe",
                    _ => "not probed",
                };
                let dropped = self
                    .drop_intake_pending(
                        &link,
                        request_id,
                        version,
                        &format!("{by}; {what} ({})", e.code),
                    )
                    .await;
                if self.link_died(&e, key, &link).await {
                    self.count_intake("invalid_link", false);
                    pages::invalid()
                } else if !dropped {
                    // Still staged: the link's next submission would be refused for it.
                    pages::refused(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "The credential was stored but could not be checked. Ask your contact to check or discard it.",
                    )
                } else if left == 0 {
                    pages::refused(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "The credential could not be checked, and this link has no attempts left. Ask your contact for a new link.",
                    )
                } else {
                    fail((e, None))
                }
            }
            Err((e, _)) => {
                // The attempt was counted when reserved; the last one uses the link up.
                let mut batch = Batch::new();
                if left == 0 {
                    batch.remove_intake_link(key, read);
                }
                // A probe that outlived the link leaves the customer no attempt either (they
                // are not told to open it again); the expired link, admitting nothing, is
                // left to the sweep.
                let left = if link.expired_now() { 0 } else { left };
                let mut ev = Self::intake_event(&link, request_id, "intake.failed");
                ev.outcome = "denied".into();
                ev.error_code = Some(e.code.as_str().to_owned());
                ev.detail = Some(format!(
                    "pending version {version} {by} failed its probe; {left} attempt(s) left"
                ));
                let recorded = {
                    let _guard = self.lock.lock().await;
                    self.commit_audited(ev, batch, &[]).await
                };
                // A version that failed its probe is not kept: while it is pending,
                // `binding probe` tests it instead of the active one (the next submission
                // stages its own).
                self.drop_intake_pending(
                    &link,
                    request_id,
                    version,
                    &format!("{by}; failed its probe"),
                )
                .await;
                if let Err(e) = recorded {
                    return fail(e);
                }
                pages::result(false, &e.message, left)
            }
        }
    }
}

/// The page of a submission whose version was not probed: dropped (`dropped`; with `left`
/// attempts on its link) or, its removal failed, still staged.
fn unprobed(dropped: bool, left: u32) -> IntakeAnswer {
    if dropped && left == 0 {
        pages::refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "The credential could not be checked, and this link has no attempts left. Ask your contact for a new link.",
        )
    } else if dropped {
        pages::refused(StatusCode::SERVICE_UNAVAILABLE, "Try again.")
    } else {
        // Still staged: the link's next submission would be refused for it.
        pages::refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "The credential was stored but could not be checked. Ask your contact to check or discard it.",
        )
    }
}

impl AdminService {
    /// Whether a submission of this process for `binding` is between its attempt and its
    /// answer.
    fn intake_checking(&self, binding: &str) -> bool {
        self.intake_checking
            .lock()
            .is_ok_and(|m| m.get(binding).is_some_and(|&n| n > 0))
    }
}

/// Marks a binding's intake submission as being checked (see
/// [`AdminService::intake_checking`]) until dropped.
struct Checking<'a> {
    admin: &'a AdminService,
    binding: String,
}

impl<'a> Checking<'a> {
    fn new(admin: &'a AdminService, binding: &str) -> Checking<'a> {
        if let Ok(mut m) = admin.intake_checking.lock() {
            *m.entry(binding.to_owned()).or_insert(0) += 1;
        }
        Checking {
            admin,
            binding: binding.to_owned(),
        }
    }
}

impl Drop for Checking<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.admin.intake_checking.lock() {
            if let Some(n) = m.get_mut(&self.binding) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.binding);
                }
            }
        }
    }
}
