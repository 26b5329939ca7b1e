//! How STS refusals become provider errors, worded for who can fix them: the customer's
//! trust (flags the binding), the platform's own credentials, or a narrowing or ceiling that
//! does not pack into one session.

use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::assume_role::AssumeRoleError;
use aws_sdk_sts::operation::RequestId;

use super::PolicySource;
use crate::{ProviderError, RefusalReason};

/// The refusal of an STS-compatible service whose error body the SDK cannot read (moto).
const OPAQUE_403: &str = "STS refused with HTTP 403 (error body not in the STS format)";

/// Whether `e` is the trust policy refusing the call: STS's AccessDenied, read as such.
/// Anything else (expired vendor credentials, a disabled region, a 403 whose body is not
/// STS's: a proxy's or a WAF's page in the path) proves nothing about the trust policy.
pub(super) fn is_trust_refusal(e: &ProviderError) -> bool {
    matches!(
        e,
        ProviderError::Denied {
            trust_broken: true,
            ..
        }
    )
}

/// STS's refusal as a [`ProviderError`]; its text and request id are kept only when they
/// repeat nothing of `sent` (what the request carried that is secret: a web-identity
/// assertion; an echo, by whatever answers as STS, would reach the worker and the audit log).
pub(super) fn sdk_error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    err: SdkError<E>,
    sent: &[&str],
) -> ProviderError {
    let request_id = crate::request_id_of(err.request_id()).filter(|id| !crate::echoes(id, sent));
    match &err {
        // An error body the SDK cannot read: key on the status. STS answers refusals with 403
        // (some STS-compatible services wrap the error differently); anything else is an
        // unusable answer.
        SdkError::ServiceError(ctx)
            if ctx.err().code().is_none() && ctx.raw().status().as_u16() == 403 =>
        {
            ProviderError::Denied {
                message: OPAQUE_403.into(),
                upstream_request_id: request_id,
                trust_broken: false,
            }
        }
        SdkError::ServiceError(ctx) if ctx.err().code().is_none() => ProviderError::Unavailable {
            message: format!(
                "STS answered HTTP {} without a recognizable error or result (malformed)",
                ctx.raw().status().as_u16()
            ),
            upstream_request_id: request_id,
        },
        SdkError::ServiceError(ctx) => {
            // Both go into the worker's error body, the audit record and `last_probe`: an
            // upstream (or whatever answers as STS) must not plant a long text or a line
            // break there.
            let raw_code = ctx
                .err()
                .code()
                .filter(|c| !crate::echoes(c, sent))
                .unwrap_or("Unknown");
            let code = crate::quoted(raw_code, 64);
            let message = crate::quoted_unless_echo(ctx.err().message().unwrap_or(""), 300, sent);
            let status = ctx.raw().status().as_u16();
            if raw_code == "AccessDenied" {
                ProviderError::Denied {
                    message: format!("STS AccessDenied: {message} (the customer's role no longer trusts the vendor account with this ExternalId, or the role is gone)"),
                    upstream_request_id: request_id,
                    trust_broken: true,
                }
            } else if status >= 500 || code.contains("Throttl") || code == "RequestLimitExceeded" {
                ProviderError::Unavailable {
                    message: format!("STS {code} (HTTP {status}) after retries"),
                    upstream_request_id: request_id,
                }
            } else {
                ProviderError::Denied {
                    message: format!("STS {code}: {message}"),
                    upstream_request_id: request_id,
                    trust_broken: false,
                }
            }
        }
        SdkError::TimeoutError(_) => ProviderError::Unavailable {
            message: "STS did not answer in time".into(),
            upstream_request_id: request_id,
        },
        SdkError::DispatchFailure(_) => ProviderError::Unavailable {
            message: "cannot reach STS".into(),
            upstream_request_id: request_id,
        },
        SdkError::ResponseError(_) if super::bounded::over_the_bound(&err) => {
            ProviderError::Unavailable {
                message: format!(
                    "STS answered with more than {} KiB: not read",
                    super::bounded::MAX_STS_ANSWER / 1024
                ),
                upstream_request_id: request_id,
            }
        }
        SdkError::ResponseError(_) => ProviderError::Unavailable {
            message: "STS answered with a malformed response".into(),
            upstream_request_id: request_id,
        },
        _ => ProviderError::Internal("could not build the STS request".into()),
    }
}

/// An AssumeRole refusal, worded for who can fix it.
///
/// `PackedPolicyTooLarge` (STS could not pack the session policies, policy ARNs and tags into
/// one session although each is within its own limit — the packed size cannot be computed
/// beforehand) is never the customer's trust: on a narrowed mint it names the narrowing, on
/// an unnarrowed one the binding's ceiling, and on the probe it refuses activation, since every
/// unnarrowed resolve would be refused the same way. An AccessDenied on a call that carried a
/// SourceIdentity says that the trust policy must also allow `sts:SetSourceIdentity`.
pub(super) fn assume_error(
    err: SdkError<AssumeRoleError>,
    policies_from: PolicySource,
    source_identity_sent: bool,
) -> ProviderError {
    let packed = err
        .as_service_error()
        .is_some_and(AssumeRoleError::is_packed_policy_too_large_exception);
    if packed {
        let upstream_request_id = crate::request_id_of(err.request_id());
        let sts = format!(
            "STS PackedPolicyTooLarge: {}",
            crate::quoted(
                err.message().unwrap_or("the session policies do not pack"),
                300
            )
        );
        return match policies_from {
            PolicySource::Narrowing => ProviderError::Denied {
                message: format!(
                    "{sts} (the narrowing's session policies do not fit one STS session: narrow with fewer policy_arns or a shorter policy)"
                ),
                upstream_request_id,
                trust_broken: false,
            },
            PolicySource::Ceiling => ProviderError::Denied {
                message: format!(
                    "{sts} (the binding's ceiling — the platform ceiling when the binding sets none — does not fit one STS session: restrict the binding's ceiling to fewer managed_policy_arns or fewer, wider action prefixes, then re-run the probe)"
                ),
                upstream_request_id,
                trust_broken: false,
            },
            PolicySource::Probe => ProviderError::ActivationRefused {
                reason: RefusalReason::Other,
                message: format!(
                    "{sts}: the binding's ceiling (the platform ceiling when the binding sets none) does not fit one STS session, so every unnarrowed resolve would be refused. \
                     Restrict the binding's ceiling to fewer managed_policy_arns or fewer, wider action prefixes, then re-run the probe."
                ),
                upstream_request_id,
            },
        };
    }
    match sdk_error(err, &[]) {
        ProviderError::Denied {
            message,
            upstream_request_id,
            trust_broken: true,
        } if source_identity_sent => ProviderError::Denied {
            message: format!(
                "{message}; the call carried a SourceIdentity (the binding sets source_identity), so the trust policy must also allow sts:SetSourceIdentity"
            ),
            upstream_request_id,
            trust_broken: true,
        },
        other => other,
    }
}
