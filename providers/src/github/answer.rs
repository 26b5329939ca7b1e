//! GitHub's answers: rate limits and how long they ask callers to wait, the error each
//! answer means, and an installation token answer as the credential handed out.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::permissions::{Level, TokenRequest};
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
    /// Whether its `token` repeated what the request sent (the App JWT): taken out of
    /// `body`, never handed out nor presented (see [`withhold_echoes`]).
    pub(super) echoed_token: bool,
}

/// Takes out of a GitHub answer what repeats what the request sent (the App JWT, a client
/// secret, a code): a `message` (replaced, never quoted) and a `token` (removed: a broken
/// proxy echoing the request's bearer would otherwise have the App JWT, which mints for
/// every installation, handed to a worker as an installation token). Returns whether the
/// token was one.
pub(super) fn withhold_echoes(body: &mut Value, sent: &[&str]) -> bool {
    let Some(o) = body.as_object_mut() else {
        return false;
    };
    if o.get("message")
        .and_then(Value::as_str)
        .is_some_and(|m| crate::echoes(m, sent))
    {
        o.insert(
            "message".into(),
            json!("(withheld: it repeats what the request sent)"),
        );
    }
    let echoed = o
        .get("token")
        .and_then(Value::as_str)
        .is_some_and(|t| crate::echoes(t, sent));
    if echoed {
        o.remove("token");
    }
    echoed
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

/// [`rate_limit_wait`] of an answer's status, headers and message: each header trimmed and
/// read as a whole number, or left out.
pub fn rate_limit_of(status: u16, headers: &http::HeaderMap, message: &str) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    rate_limit_wait(
        status,
        message,
        header("retry-after").and_then(|v| v.parse::<u64>().ok()),
        header("x-ratelimit-remaining").and_then(|v| v.parse::<u64>().ok()),
        header("x-ratelimit-reset").and_then(|v| v.parse::<i64>().ok()),
    )
}

/// The pause before the one retry of a 5xx: 200-400 ms, jittered.
pub(super) fn retry_pause() -> Duration {
    let mut b = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut b);
    Duration::from_millis(200 + u64::from(b[0]) * 200 / 255)
}

/// Most JSON nodes (values and keys) a GitHub answer may hold: one per 16 bytes of the
/// largest answer read. The largest real one, a token for 500 named repositories each in
/// full, holds about 110,000 in about 3 MB (GitHub's JSON runs at about 25 bytes a node), so
/// the byte bound, not this one, limits a real answer.
pub(super) const MAX_ANSWER_NODES: usize = 524_288;

/// A GitHub answer's text as JSON: `Value::Null` when empty or not JSON (the caller keys on
/// the status then); refused, unparsed, when it holds more than [`MAX_ANSWER_NODES`] nodes,
/// so an 8 MiB answer cannot become a `Value` many times its size.
///
/// # Errors
/// What to tell the caller when the answer holds too many nodes.
pub(super) fn answer_body(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    crate::json_nodes_within(text.as_bytes(), MAX_ANSWER_NODES, "GitHub")?;
    Ok(serde_json::from_str(text).unwrap_or(Value::Null))
}

pub(super) fn message_of(body: &Value) -> String {
    crate::quoted(
        body.get("message").and_then(Value::as_str).unwrap_or(""),
        200,
    )
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

/// GitHub's installation tokens live one hour: a token answered with a later expiry is
/// cached and handed out as expiring an hour after it was received.
const TOKEN_LIFETIME: time::Duration = time::Duration::hours(1);

/// The longest installation token accepted (GitHub documents no fixed length; today's are 40
/// characters).
const MAX_TOKEN_LEN: usize = 8192;

/// The installation token in `answer` (201) to the request `wanted`, checked before anything
/// is cached or handed out: the token is printable ASCII of bounded length (a line break would
/// be a header injection in the worker), it expires in the future and at most an hour from
/// now (a later expiry is taken as an hour), and what the answer says the token carries is
/// within what was asked — the permissions at most at the requested levels (`metadata: read`
/// GitHub grants every token), and named repositories only when named ones were asked, each
/// owned by the binding's pinned `account` (its numeric id) when it pins one.
pub(super) fn to_credential(
    answer: Answer,
    installation: u64,
    account: Option<u64>,
    wanted: &TokenRequest,
) -> Result<IssuedCredential, ProviderError> {
    let request_id = crate::request_id_of(answer.request_id.as_deref());
    let malformed = |what: &str| ProviderError::Unavailable {
        message: format!("GitHub token answer is malformed: {what}"),
        upstream_request_id: request_id.clone(),
    };
    if answer.echoed_token {
        return Err(malformed("the token repeats what the request sent"));
    }
    let b = &answer.body;
    let token = issued_token(b)
        .ok_or_else(|| malformed("token missing, too long or not printable ASCII"))?;
    let expires_text = b
        .get("expires_at")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("expires_at missing"))?;
    let stated =
        OffsetDateTime::parse(expires_text, &time::format_description::well_known::Rfc3339)
            .map_err(|_| malformed("expires_at is not RFC 3339"))?;
    let now = OffsetDateTime::now_utc();
    if stated <= now {
        return Err(ProviderError::Unavailable {
            message: "GitHub returned a token that is already expired".into(),
            upstream_request_id: request_id.clone(),
        });
    }
    let expires_at = crate::no_later_than(stated, now + TOKEN_LIFETIME);
    let expires_text = if expires_at == stated {
        expires_text.to_owned()
    } else {
        expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|_| malformed("expires_at cannot be formatted"))?
    };
    check_grant(b, account, wanted).map_err(|what| ProviderError::Unavailable {
        message: format!("GitHub answered a token beyond the request: {what}"),
        upstream_request_id: request_id.clone(),
    })?;
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
        upstream_request_id: request_id,
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

/// The token a token answer's body carries, when it is one a request could present
/// (printable ASCII, at most [`MAX_TOKEN_LEN`]).
pub(super) fn issued_token(body: &Value) -> Option<&str> {
    body.get("token")
        .and_then(Value::as_str)
        .filter(|t| crate::is_printable(t, MAX_TOKEN_LEN))
}

/// Whether the permissions and repositories a token answer names are within `wanted` (and,
/// with `account`, the repositories that account's).
fn check_grant(body: &Value, account: Option<u64>, wanted: &TokenRequest) -> Result<(), String> {
    let permissions = body
        .get("permissions")
        .and_then(Value::as_object)
        .ok_or("no permissions object")?;
    for (name, level) in permissions {
        let level = level
            .as_str()
            .and_then(Level::parse)
            .ok_or_else(|| format!("permission {name:?} has no known level"))?;
        let within = wanted
            .permissions
            .get(name)
            .is_some_and(|max| level <= *max)
            || (name == "metadata" && level == Level::Read);
        if !within {
            return Err(format!("permission {name:?} at {}", level.as_str()));
        }
    }
    let Some(asked) = &wanted.repositories else {
        return Ok(());
    };
    if body.get("repository_selection").and_then(Value::as_str) != Some("selected") {
        return Err("repository selection is not the named repositories".into());
    }
    let listed = body
        .get("repositories")
        .and_then(Value::as_array)
        .ok_or("named repositories were asked and none are listed")?;
    let mut first_owner: Option<u64> = None;
    for repo in listed {
        let name = repo
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a repository without a name")?;
        if !asked.iter().any(|a| a.eq_ignore_ascii_case(name)) {
            return Err(format!("repository {name:?} was not asked for"));
        }
        // A name is only unique within its owner: `api` of another account (a token of
        // another installation, a misrouted Enterprise Server) is not this binding's `api`.
        // A binding that pins no account (made by hand before accounts were pinned) holds
        // its repositories to one owner, the first listed's.
        let owner = repo.pointer("/owner/id").and_then(Value::as_u64);
        let expected = account.or(first_owner).or(owner);
        first_owner = first_owner.or(owner);
        if owner.is_none() || owner != expected {
            return Err(format!(
                "repository {name:?} belongs to account {}, not to {}",
                owner.map_or("?".to_owned(), |o| o.to_string()),
                match account {
                    Some(a) => format!("the binding's {a}"),
                    None => format!(
                        "{}, the owner of the others",
                        expected.map_or("?".to_owned(), |o| o.to_string())
                    ),
                }
            ));
        }
    }
    Ok(())
}
