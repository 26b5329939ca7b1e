//! GitHub's answers: rate limits and how long they ask callers to wait, the error each
//! answer means, and an installation token answer as the credential handed out.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::{IssuedCredential, ProviderError, SecretFields};

/// How long to stay away after a rate-limit answer that names no time (GitHub: wait at least
/// a minute).
pub(super) const RATE_LIMIT_DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// The longest pause one rate-limit answer can impose (the primary limit resets hourly).
pub(super) const RATE_LIMIT_MAX_WAIT: Duration = Duration::from_secs(3600);

pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Value,
    pub(super) request_id: Option<String>,
    /// How long GitHub asked callers to stay away, when the answer is a rate limit.
    pub(super) rate_limit: Option<Duration>,
}

/// Whether an answer is one of GitHub's rate limits, and how long it asks callers to wait:
/// 429, or 403 with `retry-after`, `x-ratelimit-remaining: 0` or a rate-limit message.
/// `retry-after` (seconds) wins; then `x-ratelimit-reset` (epoch seconds) when nothing
/// remains; otherwise a minute. Between one second and an hour.
pub(super) fn rate_limit_wait(
    status: u16,
    message: &str,
    retry_after: Option<u64>,
    remaining: Option<u64>,
    reset: Option<i64>,
) -> Option<Duration> {
    let limited = status == 429
        || (status == 403
            && (retry_after.is_some()
                || remaining == Some(0)
                || message.to_ascii_lowercase().contains("rate limit")));
    if !limited {
        return None;
    }
    let wait = match (retry_after, remaining, reset) {
        (Some(s), _, _) => Duration::from_secs(s),
        (None, Some(0), Some(reset)) => {
            let now = OffsetDateTime::now_utc().unix_timestamp();
            Duration::from_secs(u64::try_from(reset.saturating_sub(now)).unwrap_or(0))
        }
        _ => RATE_LIMIT_DEFAULT_WAIT,
    };
    Some(wait.clamp(Duration::from_secs(1), RATE_LIMIT_MAX_WAIT))
}

/// The pause before the one retry of a 5xx: 200-400 ms, jittered.
pub(super) fn retry_pause() -> Duration {
    let mut b = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut b);
    Duration::from_millis(200 + u64::from(b[0]) * 200 / 255)
}

pub(super) fn message_of(body: &Value) -> String {
    body.get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

pub(super) fn error_for(answer: Answer, installation: u64) -> ProviderError {
    let m = message_of(&answer.body);
    let id = answer.request_id;
    if let Some(wait) = answer.rate_limit {
        return ProviderError::Unavailable {
            message: format!(
                "GitHub rate limit (HTTP {}): {m}; the App makes no call to GitHub for {} s",
                answer.status,
                wait.as_secs()
            ),
            upstream_request_id: id,
        };
    }
    match answer.status {
        404 => ProviderError::Denied {
            message: format!("installation {installation} not found (uninstalled?): {m}"),
            upstream_request_id: id,
            trust_broken: true,
        },
        403 if m.to_ascii_lowercase().contains("suspend") => ProviderError::Denied {
            message: format!("installation {installation} is suspended: {m}"),
            upstream_request_id: id,
            trust_broken: true,
        },
        422 => ProviderError::Denied {
            message: format!("GitHub refused the requested permissions or repositories for installation {installation}: {m}"),
            upstream_request_id: id,
            trust_broken: false,
        },
        500..=599 => ProviderError::Unavailable { message: format!("GitHub HTTP {}: {m}", answer.status), upstream_request_id: id },
        s => ProviderError::Denied { message: format!("GitHub HTTP {s}: {m}"), upstream_request_id: id, trust_broken: false },
    }
}

pub(super) fn to_credential(
    answer: Answer,
    installation: u64,
) -> Result<IssuedCredential, ProviderError> {
    let malformed = |id: Option<String>| ProviderError::Unavailable {
        message: "GitHub token answer is malformed".into(),
        upstream_request_id: id,
    };
    let b = &answer.body;
    let token = b
        .get("token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| malformed(answer.request_id.clone()))?;
    let expires_text = b
        .get("expires_at")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(answer.request_id.clone()))?;
    let expires_at =
        OffsetDateTime::parse(expires_text, &time::format_description::well_known::Rfc3339)
            .map_err(|_| malformed(answer.request_id.clone()))?;
    if expires_at <= OffsetDateTime::now_utc() {
        return Err(ProviderError::Unavailable {
            message: "GitHub returned a token that is already expired".into(),
            upstream_request_id: answer.request_id,
        });
    }
    let repositories: Option<Vec<Value>> =
        b.get("repositories").and_then(Value::as_array).map(|r| {
            r.iter()
                .filter_map(|x| x.get("full_name").or_else(|| x.get("name")).cloned())
                .collect()
        });
    let mut credentials = SecretFields::new();
    credentials.insert("token", SecretString::from(token));
    Ok(IssuedCredential {
        kind: "github_installation",
        credentials,
        expires_at: Some(expires_at),
        upstream_request_id: answer.request_id,
        details: json!({
            "installation_id": installation,
            "expires_at": expires_text,
            "permissions": b.get("permissions").cloned().unwrap_or(Value::Null),
            "repository_selection": b.get("repository_selection").cloned().unwrap_or(Value::Null),
            "repositories": repositories,
        }),
        subject: Some(installation.to_string()),
    })
}
