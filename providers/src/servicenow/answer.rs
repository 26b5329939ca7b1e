//! ServiceNow's token answer (`{access_token, scope, token_type, expires_in}`), parsed, and
//! what its other answers to the token request mean. It is untrusted input (fuzzed):
//! refused, never a panic.

use secrecy::SecretString;
use serde_json::Value;
use time::OffsetDateTime;

use super::denied;
use crate::http::Answer;
use crate::ProviderError;

/// A parsed token answer.
pub struct TokenAnswer {
    /// The bearer.
    pub access_token: SecretString,
    /// `scope` as ServiceNow reports it (`useraccount` by default).
    pub scope: Option<String>,
    /// When it expires: now plus `expires_in` (a number or a numeric string).
    pub expires_at: OffsetDateTime,
}

/// Parses a 200 answer of `/oauth_token.do`. A `scope` that repeats what the request sent
/// (`sent`: the client secret) is dropped, and an `access_token` that does is refused:
/// both are handed to the worker, which never holds the client secret.
///
/// # Errors
/// A message naming what is missing or malformed.
pub fn parse_token_answer(body: &[u8], sent: &[&str]) -> Result<TokenAnswer, String> {
    if body.len() > 64 * 1024 {
        return Err("answer too long".into());
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| "not JSON".to_owned())?;
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| crate::is_printable(t, 8192))
        .ok_or("no usable access_token")?;
    if crate::echoes(token, sent) {
        return Err("the access_token repeats what the request sent".into());
    }
    if !v
        .get("token_type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
    {
        return Err("token_type is not Bearer".into());
    }
    let expires_in = match v.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .filter(|s| (60..=86_400).contains(s))
    .ok_or("expires_in missing or out of range")?;
    let scope = v
        .get("scope")
        .and_then(Value::as_str)
        .filter(|s| !crate::echoes(s, sent))
        .map(|s| crate::quoted(s, 200))
        .filter(|s| !crate::echoes(s, sent));
    Ok(TokenAnswer {
        access_token: SecretString::from(token.to_owned()),
        scope,
        expires_at: OffsetDateTime::now_utc()
            + time::Duration::seconds(i64::try_from(expires_in).unwrap_or(60)),
    })
}

/// The token, or the error ServiceNow's answer means: keyed on the HTTP status and content
/// type first (ServiceNow's `error` strings are not standard). What the answer says is
/// named only as an OAuth error code, never when it repeats what the request sent
/// (`sent`: the client secret; an instance or a proxy that echoes the form must not hand it
/// to the worker, the audit log or the binding's probe note). Never panics on any input
/// (fuzzed).
///
/// # Errors
/// `Unavailable` for a malformed answer, a non-JSON 200 (a hibernating instance), 429 and
/// 5xx; `Denied` for a refused client and any other status.
pub fn token_or_error(
    a: &Answer,
    instance: &str,
    sent: &[&str],
) -> Result<TokenAnswer, ProviderError> {
    let error_field = || {
        serde_json::from_slice::<Value>(&a.body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .map_or_else(
                || "no error code".to_owned(),
                |e| crate::oauth_error_code(&e, sent),
            )
    };
    match a.status {
        200 if a.content_type != "application/json" => Err(ProviderError::Unavailable {
            message: format!(
                "{instance} answered the token request with {} instead of JSON: the instance is hibernating or not reachable as itself (wake it, check the URL)",
                if a.content_type.is_empty() { "no content type" } else { a.content_type.as_str() }
            ),
            upstream_request_id: a.request_id.clone(),
        }),
        200 => parse_token_answer(&a.body, sent).map_err(|m| ProviderError::Unavailable {
            message: format!("ServiceNow token answer is malformed: {m}"),
            upstream_request_id: a.request_id.clone(),
        }),
        400 | 401 if error_field() == "unauthorized_client" => Err(denied(
            "ServiceNow refused the client (unauthorized_client): the OAuth entity has no OAuth Application User; the customer's admin sets one (onboarding-templates/servicenow)".into(),
            a.request_id.clone(),
        )),
        401 => Err(denied(
            "ServiceNow refused the client credentials (HTTP 401): either the client id or secret is wrong, or the instance does not allow the client-credentials grant (system property glide.oauth.inbound.client.credential.grant_type.enabled must be true)".into(),
            a.request_id.clone(),
        )),
        429 | 500..=599 => Err(ProviderError::Unavailable {
            message: format!("ServiceNow HTTP {}", a.status),
            upstream_request_id: a.request_id.clone(),
        }),
        s => Err(denied(
            format!(
                "ServiceNow HTTP {s} for the token request ({})",
                error_field()
            ),
            a.request_id.clone(),
        )),
    }
}

/// The role names of the application user's `sys_user_has_role` rows (`result` of the table
/// read), sorted, each once. Untrusted input (fuzzed).
///
/// # Errors
/// An empty answer or one of 1,000 rows or more (ACLs can hide rows, and the read asks for
/// at most 1,000: neither is "no roles"), or a row whose `role.name` cannot be read (a role
/// the broker cannot vouch for, not one to skip).
pub fn application_roles(result: &Value) -> Result<Vec<String>, String> {
    let rows = result
        .as_array()
        .filter(|r| !r.is_empty() && r.len() < 1000)
        .ok_or("the application user's roles could not be read (sys_user_has_role answered no rows): give it snc_read_only so the broker can verify its roles")?;
    let mut roles = Vec::with_capacity(rows.len());
    for row in rows {
        match row.get("role.name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => roles.push(name.to_owned()),
            _ => return Err("a role of the application user could not be read (a sys_user_has_role row without role.name): the broker cannot verify it is within policies/servicenow.json".into()),
        }
    }
    roles.sort();
    roles.dedup();
    Ok(roles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let ok = parse_token_answer(br#"{"access_token":"abc","scope":"useraccount","token_type":"Bearer","expires_in":1799}"#, &["s3cret-value"]).unwrap();
        assert_eq!(ok.scope.as_deref(), Some("useraccount"));
        assert!(parse_token_answer(
            br#"{"access_token":"abc","token_type":"Bearer","expires_in":"1799"}"#,
            &[]
        )
        .is_ok());
        // A scope that repeats the client secret is not handed on.
        let echoed = parse_token_answer(
            br#"{"access_token":"abc","scope":"client_secret=s3cret-value","token_type":"Bearer","expires_in":1799}"#,
            &["s3cret-value"],
        )
        .unwrap();
        assert_eq!(echoed.scope, None);
        // So is an access token that does: refused.
        let token = parse_token_answer(
            br#"{"access_token":"x.s3cret-value.y","token_type":"Bearer","expires_in":1799}"#,
            &["s3cret-value"],
        );
        assert_eq!(
            token.err().as_deref(),
            Some("the access_token repeats what the request sent")
        );
        for bad in [
            &br#"{"access_token":"","token_type":"Bearer","expires_in":1799}"#[..],
            br#"{"access_token":"a","token_type":"mac","expires_in":1799}"#,
            br#"{"access_token":"a","token_type":"Bearer","expires_in":5}"#,
            br#"<html>hibernating</html>"#,
        ] {
            assert!(parse_token_answer(bad, &[]).is_err());
        }
    }

    #[test]
    fn a_thousand_role_rows_or_more_are_not_judged() {
        use serde_json::json;
        let rows = |n: usize| Value::Array(vec![json!({"role.name": "snc_read_only"}); n]);
        assert_eq!(
            application_roles(&rows(999)),
            Ok(vec!["snc_read_only".to_owned()])
        );
        // The read asks for at most 1,000: a full page may hide a role past it.
        assert!(application_roles(&rows(1000)).is_err());
        assert!(application_roles(&rows(0)).is_err());
    }
}
