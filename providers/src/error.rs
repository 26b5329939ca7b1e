//! Errors a provider reports to the core. Each variant maps to exactly one code of the closed
//! resolve error set (see the broker's `ApiError`), so callers can act on the variant.

/// Why a provider could not produce a credential, probe a binding or accept its configuration.
///
/// Messages are written for operators and workers: they never contain secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The binding's non-secret configuration is invalid for this provider.
    #[error("invalid binding configuration: {0}")]
    InvalidConfig(String),
    /// The `narrow` object of a resolve request is malformed.
    #[error("invalid narrowing request: {0}")]
    InvalidNarrowing(String),
    /// The narrowing asks for more than the binding's ceiling allows.
    #[error("narrowing exceeds the binding's ceiling: {0}")]
    NarrowingExceedsCeiling(String),
    /// The binding needs a secret and none is active.
    #[error("binding has no active secret version")]
    SecretMissing,
    /// The customer has not (or no longer) granted consent to our application.
    #[error("customer consent missing: {0}")]
    ConsentMissing(String),
    /// The customer's consent no longer grants what the binding expects (a permission was
    /// removed): re-consent restores it.
    #[error("customer consent stale: {0}")]
    ConsentStale(String),
    /// The upstream refused.
    #[error("upstream denied the request: {message}")]
    Denied {
        /// Operator-facing explanation, free of secret material.
        message: String,
        /// The upstream's request id, for the audit log.
        upstream_request_id: Option<String>,
        /// Whether the refusal means the customer removed or changed the trust relationship
        /// (the core then flags the binding `trust_broken` for operators).
        trust_broken: bool,
    },
    /// An activation probe found the binding unsafe or wrong; it stays inactive.
    #[error("activation refused ({}): {message}", reason.code())]
    ActivationRefused {
        /// Why, as a typed reason the core maps to its error code.
        reason: RefusalReason,
        /// What the customer must fix.
        message: String,
        /// The upstream's request id, for the audit log.
        upstream_request_id: Option<String>,
    },
    /// The broker could not prepare the mint (a stored secret failed to open, a task died).
    #[error("internal error: {0}")]
    Internal(String),
    /// The broker's own mint rate limit (per worker or per binding) was reached; nothing was
    /// sent upstream.
    #[error("mint rate limit reached: {0}")]
    RateLimited(String),
    /// The upstream could not be reached, timed out or answered with a server error.
    #[error("upstream unavailable: {message}")]
    Unavailable {
        /// Operator-facing explanation.
        message: String,
        /// The upstream's request id, for the audit log.
        upstream_request_id: Option<String>,
    },
}

/// Why an activation probe refused a binding. Each reason maps to one error code of the
/// closed set (the core's mapping is exhaustive, so a new reason cannot go unmapped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The customer's trust accepts the broker without the broker-made isolation value
    /// (AWS: AssumeRole succeeds without the ExternalId).
    ExternalIdNotEnforced,
    /// The customer's trust accepts an assertion of the broker's issuer for a subject other
    /// than the binding's (no `sub` condition): every tenant's assertion would pass.
    SubjectNotEnforced,
    /// The upstream answered for another account or tenant than the binding names.
    AccountMismatch,
    /// Another stated reason.
    Other,
}

impl RefusalReason {
    /// The stable code (`external_id_not_enforced`, `account_mismatch`, `activation_failed`).
    pub fn code(self) -> &'static str {
        match self {
            RefusalReason::ExternalIdNotEnforced => "external_id_not_enforced",
            RefusalReason::SubjectNotEnforced => "subject_not_enforced",
            RefusalReason::AccountMismatch => "account_mismatch",
            RefusalReason::Other => "activation_failed",
        }
    }
}

/// Whether `v` can stand as an upstream request id: at most 64 printable ASCII characters
/// (no spaces). An id is quoted in every audit record of a mint: an upstream must not plant
/// an arbitrarily long text there, nor a line break in a log line.
pub fn is_request_id(v: &str) -> bool {
    crate::is_printable(v, 64)
}

/// An upstream's request id as the broker keeps it: `raw` when [`is_request_id`], else none.
pub fn request_id_of(raw: Option<&str>) -> Option<String> {
    raw.filter(|v| is_request_id(v)).map(str::to_owned)
}

impl ProviderError {
    /// `self`, raised by a probe's later call, naming in its message the request ids of the
    /// probe's `earlier` calls (the error's own field holds only the failing call's): the
    /// audit record of a failed probe then names every call the upstream logged.
    #[must_use]
    ///
    /// An id of `earlier` that is the error's own (a refusal read from the answer of a call
    /// that succeeded upstream, e.g. a token whose claims failed a check) is not repeated.
    pub fn after_calls(mut self, earlier: &[String]) -> Self {
        let (message, own) = match &mut self {
            ProviderError::Denied {
                message,
                upstream_request_id,
                ..
            }
            | ProviderError::ActivationRefused {
                message,
                upstream_request_id,
                ..
            }
            | ProviderError::Unavailable {
                message,
                upstream_request_id,
            } => (message, upstream_request_id.clone()),
            // Refusals that carry no id of their own (a consent found missing or stale by
            // a later call) still name the calls before them.
            ProviderError::ConsentMissing(message)
            | ProviderError::ConsentStale(message)
            | ProviderError::Internal(message)
            | ProviderError::RateLimited(message) => (message, None),
            _ => return self,
        };
        let earlier: Vec<&str> = earlier
            .iter()
            .map(String::as_str)
            .filter(|id| Some(*id) != own.as_deref())
            .collect();
        if !earlier.is_empty() {
            message.push_str(&format!(
                " (the probe's earlier upstream requests: {})",
                earlier.join(", ")
            ));
        }
        self
    }

    /// The upstream request id carried by the error, if any (and only when
    /// [`is_request_id`]).
    pub fn upstream_request_id(&self) -> Option<&str> {
        match self {
            ProviderError::Denied {
                upstream_request_id,
                ..
            }
            | ProviderError::ActivationRefused {
                upstream_request_id,
                ..
            }
            | ProviderError::Unavailable {
                upstream_request_id,
                ..
            } => upstream_request_id.as_deref().filter(|v| is_request_id(v)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed probe's message names the calls before the failing one: never the failing
    /// call's own id again, and also for refusals that carry no id of their own.
    #[test]
    fn after_calls_names_the_earlier_calls_once() {
        let earlier = vec!["graph-1".to_owned(), "arm-2".to_owned()];
        let denied = ProviderError::Denied {
            message: "refused".into(),
            upstream_request_id: Some("arm-2".into()),
            trust_broken: false,
        }
        .after_calls(&earlier);
        assert_eq!(denied.to_string().matches("arm-2").count(), 0, "{denied}");
        assert!(denied
            .to_string()
            .contains("earlier upstream requests: graph-1"));
        let stale = ProviderError::ConsentStale("no longer grants X".into()).after_calls(&earlier);
        assert!(stale.to_string().contains("graph-1, arm-2"), "{stale}");
        let untouched = ProviderError::InvalidConfig("bad".into()).after_calls(&earlier);
        assert!(!untouched.to_string().contains("graph-1"));
        let none = ProviderError::ConsentMissing("gone".into()).after_calls(&[]);
        assert!(!none.to_string().contains("earlier"));
    }
}
