//! The closed set of error codes the HTTP API answers with. Every failure of every layer is
//! mapped here exactly once; README's "Error codes" table lists the same set.

use http::StatusCode;

use credbroker_providers::{ProviderError, RefusalReason};

/// One API failure: a code from the closed set plus an operator/worker-facing message that
/// never contains secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The error code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

/// The closed set of error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed request: bad JSON, unknown field, invalid identifier, wrong content type.
    BadRequest,
    /// Body larger than the configured limit.
    PayloadTooLarge,
    /// No such route.
    NotFound,
    /// Route exists, method does not.
    MethodNotAllowed,
    /// The instance id is not in the store, or belongs to a tenant the worker may not serve
    /// (one answer for both, so ids cannot be probed).
    UnknownInstance,
    /// The caller is not a worker, the worker is unknown or disabled, or it may not act for
    /// the instance's connector kind.
    WorkerNotAuthorized,
    /// The caller is not an operator (admin API).
    OperatorRequired,
    /// The request's `tenant_id` disagrees with the tenant the store derives.
    TenantMismatch,
    /// The connector instance is disabled.
    InstanceInactive,
    /// The tenant is disabled.
    TenantInactive,
    /// The binding is disabled, missing, or its provider is not available in this build.
    BindingInactive,
    /// The binding has no active secret version.
    SecretMissing,
    /// The narrowing asks for more than the binding's ceiling.
    NarrowingExceedsCeiling,
    /// The customer has not granted consent (or withdrew it).
    ConsentMissing,
    /// The customer's consent no longer grants what the binding expects; re-consent
    /// restores it.
    ConsentStale,
    /// The upstream refused.
    ProviderDenied,
    /// The upstream could not be reached in time.
    ProviderUnavailable,
    /// The audit record could not be made durable: nothing was handed out.
    AuditUnavailable,
    /// Admin: the record does not exist.
    UnknownRecord,
    /// Admin: the change conflicts with existing records (duplicate id, still referenced).
    Conflict,
    /// Admin: the secret version to destroy is the binding's active version (resolves would
    /// fail with `secret_missing` until another is promoted); `force` destroys it anyway.
    SecretVersionActive,
    /// Admin: the key to retire is the last active key of a kind its provider cannot work
    /// without (the GitHub App private key: nothing could be minted); activate another first.
    LastActiveKey,
    /// Activation probe: the customer's role accepts AssumeRole without the ExternalId.
    ExternalIdNotEnforced,
    /// Activation probe: the customer's trust accepts the broker's OIDC assertion for a
    /// subject other than the binding's (no `sub` condition).
    SubjectNotEnforced,
    /// Activation probe: the assumed role is in another account than the binding names.
    AccountMismatch,
    /// Activation probe failed for another stated reason.
    ActivationFailed,
    /// A provider callback failed verification (state, signature) and changed nothing.
    CallbackRejected,
    /// A signed invocation (a Forge Invocation Token) failed verification and changed
    /// nothing: 401, so the upstream retries.
    InvocationRejected,
    /// A stored record could not be read or opened (corruption, missing KEK version).
    Internal,
    /// The daemon is shutting down or overloaded.
    Unavailable,
    /// A rate limit was reached: the public listener's (per source or overall), or the
    /// mint limit per worker or per binding on resolve (cached credentials are still served).
    RateLimited,
}

impl ErrorCode {
    /// Every code, for documentation tests.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::BadRequest,
        ErrorCode::PayloadTooLarge,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::UnknownInstance,
        ErrorCode::WorkerNotAuthorized,
        ErrorCode::OperatorRequired,
        ErrorCode::TenantMismatch,
        ErrorCode::InstanceInactive,
        ErrorCode::TenantInactive,
        ErrorCode::BindingInactive,
        ErrorCode::SecretMissing,
        ErrorCode::NarrowingExceedsCeiling,
        ErrorCode::ConsentMissing,
        ErrorCode::ConsentStale,
        ErrorCode::ProviderDenied,
        ErrorCode::ProviderUnavailable,
        ErrorCode::AuditUnavailable,
        ErrorCode::UnknownRecord,
        ErrorCode::Conflict,
        ErrorCode::SecretVersionActive,
        ErrorCode::LastActiveKey,
        ErrorCode::ExternalIdNotEnforced,
        ErrorCode::SubjectNotEnforced,
        ErrorCode::AccountMismatch,
        ErrorCode::ActivationFailed,
        ErrorCode::CallbackRejected,
        ErrorCode::InvocationRejected,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::RateLimited,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnknownInstance => "unknown_instance",
            ErrorCode::WorkerNotAuthorized => "worker_not_authorized",
            ErrorCode::OperatorRequired => "operator_required",
            ErrorCode::TenantMismatch => "tenant_mismatch",
            ErrorCode::InstanceInactive => "instance_inactive",
            ErrorCode::TenantInactive => "tenant_inactive",
            ErrorCode::BindingInactive => "binding_inactive",
            ErrorCode::SecretMissing => "secret_missing",
            ErrorCode::NarrowingExceedsCeiling => "narrowing_exceeds_ceiling",
            ErrorCode::ConsentMissing => "consent_missing",
            ErrorCode::ConsentStale => "consent_stale",
            ErrorCode::ProviderDenied => "provider_denied",
            ErrorCode::ProviderUnavailable => "provider_unavailable",
            ErrorCode::AuditUnavailable => "audit_unavailable",
            ErrorCode::UnknownRecord => "unknown_record",
            ErrorCode::Conflict => "conflict",
            ErrorCode::SecretVersionActive => "secret_version_active",
            ErrorCode::LastActiveKey => "last_active_key",
            ErrorCode::ExternalIdNotEnforced => "external_id_not_enforced",
            ErrorCode::SubjectNotEnforced => "subject_not_enforced",
            ErrorCode::AccountMismatch => "account_mismatch",
            ErrorCode::ActivationFailed => "activation_failed",
            ErrorCode::CallbackRejected => "callback_rejected",
            ErrorCode::InvocationRejected => "invocation_rejected",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::RateLimited => "rate_limited",
        }
    }

    /// The HTTP status this code is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::NotFound | ErrorCode::UnknownInstance | ErrorCode::UnknownRecord => {
                StatusCode::NOT_FOUND
            }
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::WorkerNotAuthorized
            | ErrorCode::OperatorRequired
            | ErrorCode::TenantMismatch
            | ErrorCode::InstanceInactive
            | ErrorCode::TenantInactive
            | ErrorCode::BindingInactive
            | ErrorCode::NarrowingExceedsCeiling
            | ErrorCode::ConsentMissing
            | ErrorCode::ConsentStale
            | ErrorCode::CallbackRejected => StatusCode::FORBIDDEN,
            ErrorCode::SecretMissing
            | ErrorCode::Conflict
            | ErrorCode::SecretVersionActive
            | ErrorCode::LastActiveKey => StatusCode::CONFLICT,
            ErrorCode::ExternalIdNotEnforced
            | ErrorCode::SubjectNotEnforced
            | ErrorCode::AccountMismatch
            | ErrorCode::ActivationFailed => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ProviderDenied => StatusCode::BAD_GATEWAY,
            ErrorCode::ProviderUnavailable => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::AuditUnavailable | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InvocationRejected => StatusCode::UNAUTHORIZED,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ApiError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// Shorthand for `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        let code = match &e {
            ProviderError::InvalidConfig(_) => ErrorCode::BindingInactive,
            ProviderError::InvalidNarrowing(_) => ErrorCode::BadRequest,
            ProviderError::NarrowingExceedsCeiling(_) => ErrorCode::NarrowingExceedsCeiling,
            ProviderError::SecretMissing => ErrorCode::SecretMissing,
            ProviderError::ConsentMissing(_) => ErrorCode::ConsentMissing,
            ProviderError::ConsentStale(_) => ErrorCode::ConsentStale,
            ProviderError::Denied { .. } => ErrorCode::ProviderDenied,
            ProviderError::Unavailable { .. } => ErrorCode::ProviderUnavailable,
            ProviderError::Internal(_) => ErrorCode::Internal,
            ProviderError::RateLimited(_) => ErrorCode::RateLimited,
            ProviderError::ActivationRefused { reason, .. } => match reason {
                RefusalReason::ExternalIdNotEnforced => ErrorCode::ExternalIdNotEnforced,
                RefusalReason::SubjectNotEnforced => ErrorCode::SubjectNotEnforced,
                RefusalReason::AccountMismatch => ErrorCode::AccountMismatch,
                RefusalReason::Other => ErrorCode::ActivationFailed,
            },
        };
        ApiError::new(code, e.to_string())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl schemars::JsonSchema for ErrorCode {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ErrorCode".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        schemars::json_schema!({
            "type": "string",
            "description": "The closed set of error codes (README, \"Error codes\").",
            "enum": codes
        })
    }
}

/// Every error answer's body: `{"error": {…}}`.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct ErrorBody<'a> {
    /// The error.
    pub error: ErrorDetail<'a>,
}

/// What an error answer says: never secret material.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct ErrorDetail<'a> {
    /// The code, from the closed set.
    pub code: ErrorCode,
    /// What went wrong, for operators and workers.
    pub message: &'a str,
    /// The audit record of the refusal, when one was written.
    pub audit_id: Option<&'a str>,
    /// The request id (also the `x-request-id` header).
    pub request_id: &'a str,
}

/// Describes a serde_json error without echoing input (which could hold secrets).
pub fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    // serde_json messages name fields and types, never values, except "invalid value" /
    // "invalid type" lines which quote the value: keep only the category there.
    if text.starts_with("invalid type") || text.starts_with("invalid value") {
        format!(
            "{} at line {} column {}",
            text.split(':').next().unwrap_or("invalid"),
            e.line(),
            e.column()
        )
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_snake_case() {
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len());
        assert!(names
            .iter()
            .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }

    #[test]
    fn every_code_is_an_error_status() {
        for c in ErrorCode::ALL {
            assert!(c.status().is_client_error() || c.status().is_server_error());
        }
    }
}
