//! Web-identity bindings: `AssumeRoleWithWebIdentity` with the broker's own OIDC assertion —
//! an unsigned call, so the platform holds no AWS credential for them. The customer's role
//! trusts our issuer (an IAM OIDC provider) with `StringEquals` on `<issuer>:aud` and
//! `<issuer>:sub` = the binding's subject; the probe shows an assertion for a foreign subject
//! is denied (a trust without the `sub` condition would accept every tenant's assertion).

use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::assume_role_with_web_identity::{
    AssumeRoleWithWebIdentityError, AssumeRoleWithWebIdentityOutput,
};
use secrecy::ExposeSecret;

use super::*;

/// The per-call parameters of one AssumeRoleWithWebIdentity.
pub(super) struct WebCall<'a> {
    pub subject: &'a str,
    pub session: &'a str,
    pub duration_s: u32,
    pub narrowing: &'a AwsNarrowing,
}

/// A refusal of AssumeRoleWithWebIdentity, worded for who can fix it.
/// Its text and request id are kept only when they repeat nothing of `sent` (the assertion).
fn web_error(err: SdkError<AssumeRoleWithWebIdentityError>, sent: &[&str]) -> ProviderError {
    let code = err
        .as_service_error()
        .and_then(ProvideErrorMetadata::code)
        .map(str::to_owned);
    let message = crate::quoted_unless_echo(
        err.as_service_error()
            .and_then(ProvideErrorMetadata::message)
            .unwrap_or(""),
        300,
        sent,
    );
    let request_id = crate::request_id_of(err.request_id()).filter(|id| !crate::echoes(id, sent));
    match code.as_deref() {
        // The customer's trust or OIDC provider refused our assertion.
        Some("AccessDenied") => ProviderError::Denied {
            message: format!("{ACCESS_DENIED} {message} (the role no longer trusts the broker's issuer for this binding's subject, or the role is gone)"),
            upstream_request_id: request_id,
            trust_broken: true,
        },
        // No key for the assertion's `kid`: AWS could not fetch the broker's JWKS, or holds
        // one from before a rotation. The broker's side, not the customer's trust.
        Some("InvalidIdentityToken")
            if message
                .to_ascii_lowercase()
                .contains("retrieve verification key") =>
        {
            ProviderError::Unavailable {
                message: format!("STS InvalidIdentityToken: {message} (AWS could not fetch the broker's JWKS, or does not hold its current key yet)"),
                upstream_request_id: request_id,
            }
        }
        Some("InvalidIdentityToken" | "IDPRejectedClaim") => ProviderError::Denied {
            message: format!("STS {}: {message} (the customer's IAM OIDC provider for the broker's issuer is missing, lists another audience, or cannot verify the key)", code.as_deref().unwrap_or_default()),
            upstream_request_id: request_id,
            trust_broken: true,
        },
        // AWS could not fetch our discovery document or JWKS: retry later.
        Some("IDPCommunicationError") => ProviderError::Unavailable {
            message: format!("STS IDPCommunicationError: {message} (AWS could not reach the broker's OIDC discovery or JWKS)"),
            upstream_request_id: request_id,
        },
        _ => sdk_error(err, sent),
    }
}

/// Whether `e` is STS's AccessDenied (the role's trust refusing the call).
fn is_access_denied(e: &ProviderError) -> bool {
    matches!(e, ProviderError::Denied { message, trust_broken: true, .. } if message.starts_with(ACCESS_DENIED))
}

/// How [`web_error`] words STS's AccessDenied.
const ACCESS_DENIED: &str = "STS AccessDenied:";

impl AwsAssumeRole {
    /// One AssumeRoleWithWebIdentity with an assertion for `call.subject`.
    pub(super) async fn assume_web(
        &self,
        parsed: &Parsed,
        call: WebCall<'_>,
        request: &MintRequest<'_>,
    ) -> Result<AssumeRoleWithWebIdentityOutput, ProviderError> {
        let token = request
            .assertions
            .sign(call.subject, &self.settings.web_identity_audience)?;
        let mut op = self
            .web_client
            .assume_role_with_web_identity()
            .role_arn(parsed.role.as_str())
            .role_session_name(call.session)
            .web_identity_token(token.expose_secret())
            .duration_seconds(i32::try_from(call.duration_s).unwrap_or(3600));
        if let Some(p) = &call.narrowing.policy {
            op = op.policy(p);
        }
        if !call.narrowing.policy_arns.is_empty() {
            op = op.set_policy_arns(Some(descriptors(&call.narrowing.policy_arns)));
        }
        match tokio::time::timeout(request.timeout, op.send()).await {
            Ok(result) => result.map_err(|e| web_error(e, &[token.expose_secret()])),
            Err(_) => Err(ProviderError::Unavailable {
                message: format!(
                    "STS did not answer within {} ms",
                    request.timeout.as_millis()
                ),
                upstream_request_id: None,
            }),
        }
    }

    /// The web-identity probe: the binding's subject assumes the role (in the bound account);
    /// a random foreign subject must be denied.
    pub(super) async fn probe_web(
        &self,
        bound: &AwsBinding,
        request: &MintRequest<'_>,
    ) -> Result<ProbeReport, ProviderError> {
        let parsed = &bound.parsed;
        let subject = parsed.web_subject.as_deref().unwrap_or_default();
        let session = super::params::probe_session_name(request.binding.tenant_id);
        // The duration a mint asks for: a role whose MaxSessionDuration is shorter would
        // otherwise activate and then fail every resolve.
        let duration_s = params::clamp_duration(
            parsed.duration_s,
            self.settings.default_duration_s,
            self.settings.max_duration_s,
        );
        let call = |subject| WebCall {
            subject,
            session: &session,
            duration_s,
            narrowing: &bound.session,
        };
        let out = self.assume_web(parsed, call(subject), request).await?;
        let request_id = crate::request_id_of(out.request_id());
        // Both calls' ids, the refused one too (see the ExternalId probe).
        let mut calls: Vec<String> = request_id.iter().cloned().collect();
        let assumed = out
            .assumed_role_user()
            .map(|u| u.arn().to_owned())
            .unwrap_or_default();
        super::probe::session_in_bound_account(
            parsed,
            &assumed,
            "AssumeRoleWithWebIdentity",
            request_id,
        )?;
        // A subject of the real ones' shape: a condition that checks only the `cb-` prefix
        // (StringLike "cb-*") is caught too. Only the role's own refusal (AccessDenied)
        // counts: an OIDC provider problem (InvalidIdentityToken, IDPRejectedClaim) or an
        // unreadable 403 proves nothing about the `sub` condition.
        let foreign = crate::random_subject()?;
        match self.assume_web(parsed, call(&foreign), request).await {
            Err(e) if is_access_denied(&e) => {
                calls.extend(e.upstream_request_id().map(str::to_owned));
            }
            Ok(out) => {
                return Err(ProviderError::ActivationRefused {
                    reason: RefusalReason::SubjectNotEnforced,
                    message: format!(
                        "AssumeRoleWithWebIdentity into {} succeeds for another subject of the broker's issuer: every tenant's assertion would. \
                         The role's trust must say \"Condition\": {{\"StringEquals\": {{\"<issuer host>:aud\": \"{}\", \"<issuer host>:sub\": \"{subject}\"}}}} \
                         (onboarding-templates/aws/credbroker-role-web-identity.json does this), then re-run the probe.",
                        parsed.role.as_str(),
                        self.settings.web_identity_audience
                    ),
                    upstream_request_id: crate::request_id_of(out.request_id()),
                }
                .after_calls(&calls))
            }
            Err(other) => return Err(other.after_calls(&calls)),
        }
        Ok(ProbeReport {
            summary: format!(
                "assumed {assumed} with the broker's assertion for this binding's subject; another subject is denied"
            ),
            facts: json!({ "model": "web_identity", "subject": subject, "assumed_role": assumed }),
            upstream_request_ids: calls,
        })
    }
}
