//! Signed invocations on the public listener (`POST /forge/{invoke|trigger|lifecycle|connect}`,
//! Atlassian Forge Remote).
//!
//! `connect` is the call of the app's admin page, where a site administrator types the
//! connect code the tenant's onboarding handed out: it is applied before it is answered
//! (the page shows the result; Forge gives a UI call 25 s), and it is what binds an expected
//! site.
//!
//! The Forge Invocation Token is verified from the headers before the body is read; a
//! failure is a 401 (`invocation_rejected`, so Forge retries), changes nothing and is counted,
//! not audited (anyone can send one). A verified call naming a person (`principal`: the
//! page's) is taken on `connect` only, 403 elsewhere. Any other verified invocation is
//! acknowledged at once — Forge
//! gives events and triggers 5 s — and what it changes (a binding, a reinstall, a captured
//! token, an unclaimed site) is then planned, audited and committed in the background,
//! within the listener's cap on detached work. A change that fails after the
//! acknowledgement is logged and counted; the next hourly trigger brings a fresh token.

use std::sync::Arc;

use http::HeaderMap;
use serde_json::json;
use zeroize::Zeroizing;

use credbroker_providers::{Invocation, Provider};

use super::{CallbackAnswer, CallbackService};
use crate::api_error::{ApiError, ErrorCode};
use crate::broker::{error_answer, Answer};

/// The invocation kinds `/forge/{kind}` serves.
pub const INVOCATION_KINDS: &[&str] = &["invoke", "trigger", "lifecycle", CONNECT];

/// The admin page's call, which carries a connect code.
const CONNECT: &str = "connect";

/// Connect calls a site may make in a [`CONNECT_WINDOW`] (a person typing a code makes a
/// few): more are refused before the admin lock, so one site's page cannot hold the lock
/// that every tenant's triggers and the admin API wait on.
pub const CONNECT_PER_SITE: u32 = 10;
/// The window [`CONNECT_PER_SITE`] counts in.
pub const CONNECT_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Sites whose connect calls are counted at once. Beyond it, ended windows are dropped, then
/// the one that started first (its site's count only restarts early; a site needs a real
/// Forge installation): no site is refused for others' calls.
const CONNECT_SITES: usize = 4096;

/// The connect calls of each site in its current window.
#[derive(Default)]
pub struct ConnectLimit(
    std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u32)>>,
);

impl ConnectLimit {
    /// Whether `site` may make one more connect call now.
    fn admit(&self, site: &str, now: std::time::Instant) -> bool {
        let mut sites = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if sites.len() >= CONNECT_SITES && !sites.contains_key(site) {
            sites.retain(|_, (since, _)| now.duration_since(*since) < CONNECT_WINDOW);
            let first = sites
                .iter()
                .min_by_key(|(_, (since, _))| *since)
                .map(|(k, _)| k.clone());
            if let (true, Some(first)) = (sites.len() >= CONNECT_SITES, first) {
                sites.remove(&first);
            }
        }
        let entry = sites.entry(site.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= CONNECT_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= CONNECT_PER_SITE
    }
}

/// A verified invocation, waiting for its body.
pub struct VerifiedInvocation {
    provider: Arc<dyn Provider>,
    invocation: Invocation,
    connect: bool,
}

impl CallbackService {
    fn count_invocation(&self, provider: &str, error: Option<ErrorCode>) {
        self.core.metrics.count_callback(
            if error.is_some() { "denied" } else { "allowed" },
            provider,
            error.map_or("none", ErrorCode::as_str),
        );
    }

    /// A refusal before the invocation authenticated: counted, logged (throttled), answered.
    fn refuse_anonymous(&self, provider: &str, err: &ApiError, request_id: &str) -> CallbackAnswer {
        self.count_invocation(provider, Some(err.code));
        if let Some(suppressed) = self.anonymous_log.admit() {
            tracing::info!(request_id, provider, code = %err.code, reason = %err.message, suppressed, "unauthenticated invocation rejected (counted, not audited)");
        }
        CallbackAnswer::unauthenticated(error_answer(err, None, request_id))
    }

    /// Verifies an invocation of `kind` from its headers alone (before its body is read).
    ///
    /// # Errors
    /// The answer to send: 404 for an unknown kind or no provider that takes invocations,
    /// 401 `invocation_rejected` when the token does not verify.
    pub async fn verify_invocation(
        &self,
        kind: &str,
        headers: &HeaderMap,
        request_id: &str,
    ) -> Result<VerifiedInvocation, CallbackAnswer> {
        let provider = self
            .core
            .registry
            .providers()
            .find(|p| p.invocations().is_some())
            .cloned()
            .filter(|_| INVOCATION_KINDS.contains(&kind));
        // (Labelled `unknown`: the kind in the path is the caller's.)
        let Some(provider) = provider else {
            self.core
                .metrics
                .count_public_refusal("unknown", "not_found");
            let err = ApiError::new(ErrorCode::NotFound, "no such route");
            return Err(error_answer(&err, None, request_id).into());
        };
        let Some(inv) = provider.invocations() else {
            self.core
                .metrics
                .count_public_refusal("unknown", "not_found");
            let err = ApiError::new(ErrorCode::NotFound, "no such route");
            return Err(error_answer(&err, None, request_id).into());
        };
        match inv.verify(headers).await {
            Ok(invocation) => Ok(VerifiedInvocation {
                provider: provider.clone(),
                invocation,
                connect: kind == CONNECT,
            }),
            Err(reason) => Err(self.refuse_anonymous(
                provider.id(),
                &ApiError::new(ErrorCode::InvocationRejected, reason),
                request_id,
            )),
        }
    }

    /// Reads a verified invocation's body, acknowledges it through `ack`, then applies it
    /// (audited). The acknowledgement never waits for the store.
    pub async fn apply_invocation(
        &self,
        verified: VerifiedInvocation,
        body: Result<Zeroizing<Vec<u8>>, ApiError>,
        ack: tokio::sync::oneshot::Sender<CallbackAnswer>,
        request_id: &str,
    ) {
        let VerifiedInvocation {
            provider,
            invocation,
            connect,
        } = verified;
        let Some(inv) = provider.invocations() else {
            return;
        };
        // A call from a person (a UI module's FIT names its principal) is the admin page's,
        // which sends connect codes only: its page cannot reach the trigger, lifecycle or
        // invoke routes, which are not limited per site.
        if invocation.principal.is_some() && !connect {
            let err = ApiError::new(
                ErrorCode::CallbackRejected,
                "a call from the app's page goes to /forge/connect only",
            );
            self.count_invocation(provider.id(), Some(err.code));
            if let Some(suppressed) = self.anonymous_log.admit() {
                tracing::info!(request_id, provider = provider.id(), site = %invocation.site, reason = %err.message, suppressed, "page call refused");
            }
            let _ = ack.send(error_answer(&err, None, request_id).into());
            return;
        }
        if connect {
            if !self
                .connects
                .admit(&invocation.site, std::time::Instant::now())
            {
                let err = ApiError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "at most {CONNECT_PER_SITE} connect calls per site in {} s: wait a minute",
                        CONNECT_WINDOW.as_secs()
                    ),
                );
                self.count_invocation(provider.id(), Some(err.code));
                let _ = ack.send(error_answer(&err, None, request_id).into());
                return;
            }
            let code = body.and_then(|b| {
                inv.connect_code(&invocation, &b)
                    .map_err(|m| ApiError::new(ErrorCode::CallbackRejected, m))
            });
            let answer = match code {
                Ok(code) => {
                    self.connect(provider.as_ref(), invocation, code, request_id)
                        .await
                }
                Err(err) => {
                    self.count_invocation(provider.id(), Some(err.code));
                    error_answer(&err, None, request_id).into()
                }
            };
            let _ = ack.send(answer);
            return;
        }
        let event_type = match body.and_then(|b| inv.parse_body(&b).map_err(ApiError::bad_request))
        {
            Ok(e) => e,
            Err(err) => {
                let _ = ack.send(self.refuse_anonymous(provider.id(), &err, request_id));
                return;
            }
        };
        let answer = Answer {
            status: http::StatusCode::OK,
            body: Zeroizing::new(
                serde_json::to_vec(&json!({ "result": "accepted", "request_id": request_id }))
                    .unwrap_or_default(),
            ),
        };
        // Forge counts anything slower than 5 s as a failure and retries: answer first.
        let _ = ack.send(answer.into());
        let site = invocation.site.clone();
        match self
            .admin
            .apply_invocation(
                provider.as_ref(),
                invocation,
                (event_type, None),
                request_id,
            )
            .await
        {
            Ok(outcome) => {
                self.count_invocation(provider.id(), None);
                tracing::info!(request_id, provider = provider.id(), %site, result = outcome.as_str(), "invocation applied");
            }
            Err(err) => {
                self.count_invocation(provider.id(), Some(err.code));
                tracing::warn!(request_id, provider = provider.id(), %site, code = %err.code, reason = %err.message, "invocation acknowledged but not applied");
            }
        }
    }

    /// Applies the admin page's connect code, then answers what it did: `{"result":
    /// "bound"}` when it bound the site, another result when the site was bound already or
    /// is expected by nobody, or the refusal (a code that is not the onboarding's).
    async fn connect(
        &self,
        provider: &dyn Provider,
        invocation: Invocation,
        code: Zeroizing<String>,
        request_id: &str,
    ) -> CallbackAnswer {
        let site = invocation.site.clone();
        match self
            .admin
            .apply_invocation(provider, invocation, (None, Some(code)), request_id)
            .await
        {
            Ok(outcome) => {
                self.count_invocation(provider.id(), None);
                tracing::info!(request_id, provider = provider.id(), %site, result = outcome.as_str(), "invocation applied (connect code)");
                Answer {
                    status: http::StatusCode::OK,
                    body: Zeroizing::new(
                        serde_json::to_vec(
                            &json!({ "result": outcome.as_str(), "request_id": request_id }),
                        )
                        .unwrap_or_default(),
                    ),
                }
                .into()
            }
            Err(err) => {
                self.count_invocation(provider.id(), Some(err.code));
                // Any site running the app can send refusals: their lines are throttled.
                if let Some(suppressed) = self.anonymous_log.admit() {
                    tracing::info!(request_id, provider = provider.id(), %site, code = %err.code, reason = %err.message, suppressed, "connect code refused");
                }
                error_answer(&err, None, request_id).into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ConnectLimit, CONNECT_PER_SITE, CONNECT_WINDOW};

    #[test]
    fn a_site_makes_ten_connect_calls_a_minute_and_others_are_not_counted_with_it() {
        let limit = ConnectLimit::default();
        let t = std::time::Instant::now();
        for _ in 0..CONNECT_PER_SITE {
            assert!(limit.admit("atlassian_site:a", t));
        }
        assert!(!limit.admit("atlassian_site:a", t));
        assert!(limit.admit("atlassian_site:b", t));
        assert!(limit.admit("atlassian_site:a", t + CONNECT_WINDOW));
    }

    #[test]
    fn a_full_table_drops_the_oldest_window_and_refuses_no_new_site() {
        let limit = ConnectLimit::default();
        let t = std::time::Instant::now();
        for n in 0..super::CONNECT_SITES {
            let at = t + std::time::Duration::from_millis(u64::try_from(n).unwrap());
            assert!(limit.admit(&format!("atlassian_site:{n}"), at));
        }
        let later = t + std::time::Duration::from_secs(5);
        assert!(limit.admit("atlassian_site:new", later));
        let sites = limit.0.lock().unwrap();
        assert_eq!(sites.len(), super::CONNECT_SITES);
        assert!(
            !sites.contains_key("atlassian_site:0"),
            "the oldest window stayed"
        );
    }
}
