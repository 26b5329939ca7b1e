//! The signer a provider gets for one mint or probe: signs through the issuer and keeps
//! what it signed (never the token) for that operation's one audit record.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use credbroker_providers::{AssertionSigner, ProviderError};

use super::{AssertionFacts, Issuer};

/// Signs through the daemon's issuer (if any) and records each assertion's facts.
///
/// A resolve's mint runs in a task of its own (single flight), so it goes on when the
/// resolve that started it is dropped (its client went away) before writing its record.
/// Given that record's stand-in ([`RecordingSigner::until_reported`]), the signer writes it
/// when dropped — by whichever of the resolve and the mint lets go of it last — unless the
/// resolve reported its own ([`RecordingSigner::reported`]) or no upstream was called.
pub struct RecordingSigner {
    issuer: Option<Arc<Issuer>>,
    signed: Mutex<Vec<AssertionFacts>>,
    /// Whether a mint under this signer called its upstream.
    called_upstream: AtomicBool,
    /// The record to write if the operation never writes its own.
    unreported: Mutex<
        Option<(
            crate::audit::AuditLog,
            crate::audit::AuditEvent,
            PendingReport,
        )>,
    >,
}

/// A stand-in record not settled yet (written, or found not needed), counted so that
/// shutdown waits for it before closing the audit log.
pub struct PendingReport(Arc<std::sync::atomic::AtomicUsize>);

impl PendingReport {
    /// One more pending in `count`.
    pub fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> PendingReport {
        count.fetch_add(1, Ordering::AcqRel);
        PendingReport(Arc::clone(count))
    }
}

impl Drop for PendingReport {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RecordingSigner {
    /// A signer over `issuer` (`None`: the daemon has no `[issuer]`; every request fails).
    pub fn new(issuer: Option<Arc<Issuer>>) -> RecordingSigner {
        RecordingSigner {
            issuer,
            signed: Mutex::new(Vec::new()),
            called_upstream: AtomicBool::new(false),
            unreported: Mutex::new(None),
        }
    }

    /// This signer, which appends `event` to `audit` when dropped if an upstream was called
    /// under it and [`RecordingSigner::reported`] was not (the detail names what was
    /// signed).
    #[must_use]
    pub fn until_reported(
        self,
        audit: crate::audit::AuditLog,
        event: crate::audit::AuditEvent,
        pending: PendingReport,
    ) -> RecordingSigner {
        if let Ok(mut unreported) = self.unreported.lock() {
            *unreported = Some((audit, event, pending));
        }
        self
    }

    /// The mint under this signer is about to call its upstream.
    pub fn calling_upstream(&self) {
        self.called_upstream.store(true, Ordering::Release);
    }

    /// The operation wrote its own record: nothing is written on drop.
    pub fn reported(&self) {
        if let Ok(mut unreported) = self.unreported.lock() {
            unreported.take();
        }
    }

    /// What was signed, as audit detail: `assertion jti=… sub=… aud=… kid=…` per assertion;
    /// `None` when nothing was.
    pub fn detail(&self) -> Option<String> {
        let signed = self.signed.lock().ok()?;
        (!signed.is_empty()).then(|| {
            signed
                .iter()
                .map(|f| {
                    format!(
                        "assertion jti={} sub={} aud={} kid={}",
                        f.jti, f.subject, f.audience, f.kid
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

impl Drop for RecordingSigner {
    fn drop(&mut self) {
        let Some((audit, mut event, pending)) =
            self.unreported.get_mut().ok().and_then(Option::take)
        else {
            return;
        };
        let signed = self.detail();
        if !self.called_upstream.load(Ordering::Acquire) && signed.is_none() {
            return;
        }
        let gone = "the client went away before the answer while the mint it started ran (the token cache keeps what a cached provider's mint returns; an uncached one's is cut short); nothing was handed to this client";
        event.detail = Some(match signed {
            Some(signed) => format!("{gone}; {signed}"),
            None => gone.to_owned(),
        });
        let request_id = event.request_id.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _pending = pending;
                    if let Err(e) = audit.append(event).await {
                        tracing::error!(request_id, error = %e, "the record of a resolve whose client went away could not be written");
                    }
                });
            }
            Err(_) => {
                tracing::error!(request_id, "the record of a resolve whose client went away could not be written: no runtime");
            }
        }
    }
}

impl AssertionSigner for RecordingSigner {
    fn sign(&self, subject: &str, audience: &str) -> Result<secrecy::SecretString, ProviderError> {
        let Some(issuer) = &self.issuer else {
            return credbroker_providers::NoIssuer.sign(subject, audience);
        };
        let (token, facts) = issuer.sign(subject, audience)?;
        if let Ok(mut signed) = self.signed.lock() {
            signed.push(facts);
        }
        Ok(token)
    }
}
