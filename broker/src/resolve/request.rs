//! The resolve request body: strict parsing at the edge, so everything after it works on
//! validated identifiers.

use serde::Deserialize;
use serde_json::Value;

use crate::api_error::{json_error, ApiError};
use crate::ids::{InstanceId, TenantId};

/// Longest `min_ttl_s` accepted (AWS's 12 h maximum session).
pub const MAX_MIN_TTL_S: u64 = 43_200;

/// `POST /v1/resolve`
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    instance_id: String,
    #[serde(default)]
    job_id: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    min_ttl_s: Option<u64>,
    #[serde(default)]
    narrow: Option<Value>,
}

/// A validated resolve request.
#[derive(Debug, Clone)]
pub struct ParsedResolve {
    /// The instance asked for.
    pub instance: InstanceId,
    /// Caller's job id (audit only).
    pub job_id: Option<String>,
    /// Tenant the caller believes it is (cross-checked only).
    pub tenant: Option<TenantId>,
    /// Minimum remaining lifetime of a cached credential the worker asked for (the cache
    /// keeps to [`crate::token_cache::LEAST_REMAINING_S`] at least).
    pub min_ttl_s: u64,
    /// Provider-specific narrowing, validated later by the provider.
    pub narrow: Option<Value>,
}

/// Parses and validates a resolve body: strict JSON (unknown fields rejected), identifiers
/// by their grammar, `job_id` 1–128 printable ASCII, `min_ttl_s` ≤ 43200. Never panics on
/// any input (fuzzed).
///
/// # Errors
/// `bad_request` naming what is wrong, without echoing values.
pub fn parse_resolve_request(body: &[u8]) -> Result<ParsedResolve, ApiError> {
    let request: ResolveRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("invalid resolve request: {}", json_error(&e)))
    })?;
    let instance = InstanceId::parse(&request.instance_id).map_err(ApiError::bad_request)?;
    if let Some(job) = &request.job_id {
        if job.is_empty() || job.len() > 128 || !job.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(ApiError::bad_request(
                "job_id must be 1-128 printable ASCII characters without spaces",
            ));
        }
    }
    let tenant = match &request.tenant_id {
        Some(t) => Some(TenantId::parse(t).map_err(ApiError::bad_request)?),
        None => None,
    };
    let min_ttl_s = request.min_ttl_s.unwrap_or(0);
    if min_ttl_s > MAX_MIN_TTL_S {
        return Err(ApiError::bad_request(format!(
            "min_ttl_s must be at most {MAX_MIN_TTL_S}"
        )));
    }
    Ok(ParsedResolve {
        instance,
        job_id: request.job_id,
        tenant,
        min_ttl_s,
        narrow: request.narrow,
    })
}
