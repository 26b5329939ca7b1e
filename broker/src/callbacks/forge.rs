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
//! not audited (anyone can send one). A verified invocation is acknowledged at once — Forge
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
        if connect {
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
                tracing::info!(request_id, provider = provider.id(), %site, code = %err.code, reason = %err.message, "connect code refused");
                error_answer(&err, None, request_id).into()
            }
        }
    }
}
