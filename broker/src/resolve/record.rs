//! What a resolve leaves behind: its one audit record (from the [`Decision`], or the stand-in
//! a mint's signer writes for a resolve whose client went away), its outcome, and the answer
//! a granted resolve sends.

use zeroize::Zeroizing;

use crate::api_error::ErrorCode;
use crate::audit::AuditEvent;
use crate::broker::Answer;
use crate::model::rfc3339;
use crate::token_cache::Source;

use super::{ChainFacts, Decision, Granted, ParsedResolve, TRUST_BROKEN_DETAIL};

/// The record of a resolve dropped while the mint it started ran (its client went away):
/// written by the mint's signer, completed with what the mint did
/// ([`crate::issuer::RecordingSigner::until_reported`]).
pub(super) fn abandoned_event(
    facts: &ChainFacts,
    request: &ParsedResolve,
    (request_id, actor): (&str, &str),
) -> AuditEvent {
    AuditEvent {
        kind: "resolve".into(),
        action: "resolve".into(),
        request_id: request_id.to_owned(),
        actor: actor.to_owned(),
        tenant: facts.tenant.as_ref().map(ToString::to_string),
        instance: facts.instance.as_ref().map(ToString::to_string),
        binding: facts.binding.as_ref().map(ToString::to_string),
        provider: facts.provider.clone(),
        outcome: "failed".into(),
        error_code: Some(ABANDONED_CODE.into()),
        job_id: request.job_id.clone(),
        ..Default::default()
    }
}

/// The error code of a resolve whose client went away while its mint ran.
const ABANDONED_CODE: &str = "client_closed";

/// A decision's outcome as the audit record and the metrics name it.
pub(super) fn outcome_of(decision: &Decision) -> &'static str {
    match &decision.result {
        Ok(_) => "allowed",
        Err(r)
            if matches!(
                r.error.code,
                ErrorCode::ProviderUnavailable | ErrorCode::Internal | ErrorCode::Unavailable
            ) =>
        {
            "failed"
        }
        Err(_) => "denied",
    }
}

/// The one audit record of a resolve, built from its decision.
pub(super) fn audit_event(
    decision: &Decision,
    request_id: &str,
    actor: String,
    token_fingerprint: Option<String>,
    latency_us: u64,
) -> AuditEvent {
    let outcome = outcome_of(decision);
    let facts = match &decision.result {
        Ok(g) => &g.facts,
        Err(r) => &r.facts,
    };
    let mut event = AuditEvent {
        kind: "resolve".into(),
        action: "resolve".into(),
        request_id: request_id.to_owned(),
        actor,
        tenant: facts.tenant.as_ref().map(ToString::to_string),
        instance: facts.instance.as_ref().map(ToString::to_string),
        binding: facts.binding.as_ref().map(ToString::to_string),
        provider: facts.provider.clone(),
        outcome: outcome.to_owned(),
        job_id: decision.job_id.clone(),
        latency_us,
        ..Default::default()
    };
    match &decision.result {
        Ok(g) => {
            event.cached = Some(g.source != Source::Minted);
            event.token_fingerprint = token_fingerprint;
            event.upstream_request_id = g.credential.upstream_request_id.clone();
            event.detail = g.assertion.clone();
        }
        Err(r) => {
            event.error_code = Some(r.error.code.as_str().to_owned());
            event.upstream_request_id = r.upstream_request_id.clone();
            event.detail = r.facts.detail.map(str::to_owned);
            // What the upstream or a token check showed (provider messages never carry
            // secrets): the record names the failed check or the missing permission.
            if matches!(
                r.error.code,
                ErrorCode::ProviderDenied | ErrorCode::ConsentMissing | ErrorCode::ConsentStale
            ) {
                event.detail = Some(r.error.message.chars().take(500).collect());
            }
            if r.trust_broken {
                event.detail = Some(TRUST_BROKEN_DETAIL.to_owned());
            }
            if let Some(a) = &r.assertion {
                event.detail = Some(match event.detail.take() {
                    Some(d) => format!("{d}; {a}"),
                    None => a.clone(),
                });
            }
        }
    }
    event
}

/// A granted resolve's answer, less its credentials (spliced in from a zeroizing buffer).
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct ResolveHead<'a> {
    /// The binding's provider.
    pub provider: Option<&'a str>,
    /// What the credentials are (`aws_sts`, `secret_fields`, `github_installation`…).
    pub kind: &'a str,
    /// When the credential stops working (RFC 3339); absent for static secrets.
    pub expires_at: Option<String>,
    /// Whether it was served from the token cache.
    pub cached: bool,
    /// The resolve's audit record.
    pub audit_id: &'a str,
    /// The request id.
    pub request_id: &'a str,
    /// Non-secret facts about the credential (granted permissions…), when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<&'a serde_json::Value>,
}

pub(super) fn success_answer(
    granted: &Granted,
    credentials_json: &[u8],
    audit_id: &str,
    request_id: &str,
) -> Answer {
    let cred = &granted.credential;
    let head = ResolveHead {
        provider: granted.facts.provider.as_deref(),
        kind: cred.kind,
        expires_at: cred.expires_at.map(rfc3339),
        cached: granted.source != Source::Minted,
        audit_id,
        request_id,
        details: (!cred.details.is_null()).then_some(&cred.details),
    };
    let mut head_json = Vec::with_capacity(384);
    let head = match serde_json::to_writer(&mut head_json, &head) {
        Ok(()) => head_json,
        Err(_) => b"{}".to_vec(),
    };
    // Splice `"credentials":{…}` into the object without copying the secret into a
    // non-zeroizing buffer.
    let mut body = Zeroizing::new(Vec::with_capacity(head.len() + credentials_json.len() + 20));
    body.extend_from_slice(&head[..head.len().saturating_sub(1)]);
    body.extend_from_slice(b",\"credentials\":");
    body.extend_from_slice(credentials_json);
    body.push(b'}');
    Answer {
        status: http::StatusCode::OK,
        body,
    }
}
