//! The activation probe: before anything is minted, the customer's trust must be shown to
//! require the broker-made ExternalId (AssumeRole with it succeeds; without it, and with a
//! random other value, it is denied).

use super::*;

#[async_trait]
impl Probe for AwsAssumeRole {
    fn gates_activation(&self) -> bool {
        // The ExternalId must be shown to be enforced before anything is minted.
        true
    }

    async fn probe(&self, request: &MintRequest<'_>) -> Result<ProbeReport, ProviderError> {
        let bound = request.binding.bound.get::<AwsBinding>()?;
        let parsed = &bound.parsed;
        if parsed.web_subject.is_some() {
            return self.probe_web(bound, request).await;
        }
        let session = probe_session_name(request.binding.tenant_id);
        // The first call is what an unnarrowed mint sends, but for the session name: the
        // tenant's ExternalId, the SourceIdentity when the binding enables it (here the
        // probe's own worker name), the binding's ceiling as session policies and the
        // duration a mint asks for. A role whose trust lacks sts:SetSourceIdentity, a
        // ceiling STS cannot pack into one session, or a MaxSessionDuration below the
        // binding's duration would otherwise activate and then fail every resolve.
        let source_identity = mint_source_identity(parsed, request.worker)?;
        let duration_s = params::clamp_duration(
            parsed.duration_s,
            self.settings.default_duration_s,
            self.settings.max_duration_s,
        );
        let call = |external_id| AssumeCall {
            session: &session,
            duration_s,
            external_id,
            source_identity: source_identity.clone(),
            narrowing: Some(&bound.session),
            policies_from: PolicySource::Probe,
        };
        let first = call(ExternalIdUse::Tenant);
        let out = self.assume(parsed, first, request.timeout).await?;
        let request_id = crate::request_id_of(out.request_id());
        // Every call's id, refused ones too: each is an AssumeRole in the customer's
        // CloudTrail that the probe's audit record must account for.
        let mut calls: Vec<String> = request_id.iter().cloned().collect();
        let assumed = out
            .assumed_role_user()
            .map(|u| u.arn().to_owned())
            .unwrap_or_default();
        session_in_bound_account(parsed, &assumed, "AssumeRole", request_id)?;
        // The traps: AssumeRole succeeds with any ExternalId when the role does not require
        // one, and with any value when the role only requires that one is present
        // (`"Null": {"sts:ExternalId": "false"}`). Without it, and with a random other
        // value, the call must be denied: only then is the role bound to this tenant's id.
        // These calls are the first call but for the ExternalId (same SourceIdentity, same
        // session policies), so their denial is the ExternalId condition's: a role that only
        // demands a SourceIdentity would otherwise refuse them for that and pass as enforcing
        // the ExternalId.
        let other = random_external_id()?;
        for (use_, what) in [
            (ExternalIdUse::Omitted, "WITHOUT the ExternalId"),
            (
                ExternalIdUse::Other(&other),
                "with a WRONG ExternalId (any value is accepted)",
            ),
        ] {
            match self.assume(parsed, call(use_), request.timeout).await
            {
                // Only the trust policy's own refusal counts: an expired vendor credential or
                // a disabled region would deny anything and prove nothing.
                Err(e) if is_trust_refusal(&e) => {
                    calls.extend(e.upstream_request_id().map(str::to_owned));
                }
                Ok(out) => {
                    return Err(ProviderError::ActivationRefused {
                        reason: RefusalReason::ExternalIdNotEnforced,
                        message: format!(
                            "AssumeRole into {} succeeds {what}: the role's trust policy must require this tenant's ExternalId exactly. \
                             Use in the statement trusting account {}: \"Condition\": {{\"StringEquals\": {{\"sts:ExternalId\": \"<the tenant's ExternalId>\"}}}} \
                             (the shipped CloudFormation template does this), then re-run the probe.",
                            parsed.role.as_str(),
                            self.settings.vendor_account_id
                        ),
                        upstream_request_id: crate::request_id_of(out.request_id()),
                    }
                    .after_calls(&calls))
                }
                Err(other) => return Err(other.after_calls(&calls)),
            }
        }
        Ok(ProbeReport {
            summary: format!(
                "assumed {assumed} with the ExternalId; AssumeRole without it or with another value is denied"
            ),
            facts: Value::Null,
            upstream_request_ids: calls,
        })
    }
}

/// Refuses activation when the session `call` returned (`assumed`, an assumed-role ARN) is
/// not one of the binding's role (another account, another role of its account).
pub(super) fn session_in_bound_account(
    parsed: &Parsed,
    assumed: &str,
    call: &str,
    request_id: Option<String>,
) -> Result<(), ProviderError> {
    super::answer::in_role_account(parsed, Some(assumed)).map_err(|found| {
        ProviderError::ActivationRefused {
            reason: RefusalReason::AccountMismatch,
            message: super::answer::not_the_role(parsed, call, found),
            upstream_request_id: request_id,
        }
    })
}

/// A random ExternalId of the broker's form (40 alphanumerics), never any tenant's.
fn random_external_id() -> Result<String, ProviderError> {
    crate::random_alphanumeric(40)
}
