//! Google's answers, parsed: the STS token exchange (`{access_token, issued_token_type,
//! token_type, expires_in}`, `expires_in` a number or a string; errors `{error,
//! error_description}`) and IAM Credentials' `generateAccessToken` (`{accessToken,
//! expireTime}`, absolute; errors `{"error":{code, message, status}}`). Untrusted input
//! (fuzzed): refused with a typed error, never a panic. Expiry normalized to one UTC instant.

use secrecy::SecretString;
use serde_json::Value;
use time::OffsetDateTime;

use crate::ProviderError;

/// Largest answer parsed, bytes.
const MAX_ANSWER: usize = 64 * 1024;

/// A federated token from STS.
pub struct StsToken {
    /// The federated access token (only good for `generateAccessToken`).
    pub access_token: SecretString,
    /// Now plus `expires_in`.
    pub expires_at: OffsetDateTime,
}

/// A service account's access token from IAM Credentials.
pub struct AccessToken {
    /// The OAuth2 bearer.
    pub access_token: SecretString,
    /// `expireTime`.
    pub expires_at: OffsetDateTime,
}

fn token_text(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str)
        .filter(|t| crate::is_printable(t, 8192))
}

/// Printable, bounded text of an upstream message (never a secret: Google's error texts).
/// Upstream text for a message: quoted, and withheld when it repeats what the request sent
/// (`sent`: the assertion or the federated token; an echo, by Google or a proxy before it).
fn clean(s: &str, sent: &[&str]) -> String {
    crate::quoted_unless_echo(s, 300, sent)
}

fn denied(message: String, trust_broken: bool) -> ProviderError {
    ProviderError::Denied {
        message,
        upstream_request_id: None,
        trust_broken,
    }
}

fn unavailable(message: String) -> ProviderError {
    ProviderError::Unavailable {
        message,
        upstream_request_id: None,
    }
}

/// Parses STS's answer to the token exchange.
///
/// # Errors
/// `Denied` for Google's refusals (`unauthorized_client`, or `invalid_grant` naming the
/// attribute condition: the customer's condition rejected our assertion; `invalid_target`:
/// the pool or provider is disabled, deleted or wrong — these flag the trust as broken; any
/// other `invalid_grant` — the pool could not reach the broker's issuer, does not hold its
/// signing key yet, or found a claim stale — does not: the fault may be the broker's own),
/// `Unavailable`
/// for 429, 5xx and unreadable answers. Google's text is quoted in a message only when it
/// repeats nothing of `sent` (the assertion the exchange sent).
pub fn sts_answer(status: u16, body: &[u8], sent: &[&str]) -> Result<StsToken, ProviderError> {
    if body.len() > MAX_ANSWER {
        return Err(unavailable(format!(
            "GCP STS answered {status} with an oversized body"
        )));
    }
    let v: Option<Value> = serde_json::from_slice(body).ok();
    if status == 429 || status >= 500 {
        return Err(unavailable(format!("GCP STS HTTP {status}")));
    }
    let Some(v) = v else {
        return Err(unavailable(format!("GCP STS HTTP {status}: not JSON")));
    };
    if status != 200 {
        let error = v
            .get("error")
            .and_then(Value::as_str)
            .map(|t| clean(t, sent));
        let description = v
            .get("error_description")
            .and_then(Value::as_str)
            .map(|t| clean(t, sent))
            .unwrap_or_default();
        return Err(match error.as_deref() {
            Some(e @ "unauthorized_client") => denied(
                format!("GCP STS refused the broker's assertion ({e}): {description}"),
                true,
            ),
            Some(e @ "invalid_grant") => denied(
                format!("GCP STS refused the broker's assertion ({e}): {description}"),
                refused_by_condition(status, body),
            ),
            Some("invalid_target") => denied(
                format!("GCP STS: the workload identity pool or provider is disabled, deleted or wrong (invalid_target): {description}"),
                true,
            ),
            Some(e) => denied(format!("GCP STS HTTP {status} ({e}): {description}"), false),
            None => denied(format!("GCP STS HTTP {status}"), false),
        });
    }
    let token = token_text(v.get("access_token"))
        .ok_or_else(|| unavailable("GCP STS answer has no usable access_token".into()))?;
    if let Some(t) = v.get("token_type").and_then(Value::as_str) {
        if !t.eq_ignore_ascii_case("bearer") {
            return Err(unavailable("GCP STS token_type is not Bearer".into()));
        }
    }
    let expires_in = match v.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .filter(|s| (1..=43_200).contains(s))
    .ok_or_else(|| unavailable("GCP STS expires_in missing or out of range".into()))?;
    Ok(StsToken {
        access_token: SecretString::from(token.to_owned()),
        expires_at: OffsetDateTime::now_utc()
            + time::Duration::seconds(i64::try_from(expires_in).unwrap_or(1)),
    })
}

/// Whether STS refused an exchange the way a subject condition does: 400
/// `unauthorized_client` (what Google answers; `invalid_grant` is accepted too) whose
/// description names the attribute condition ("The given credential is rejected by the
/// attribute condition."). STS answers `invalid_grant` for other reasons — the issuer
/// unreachable, a signing key its JWKS (fetched or pinned inline) does not hold yet, a stale
/// token — and none of them shows the condition pins the subject.
pub fn refused_by_condition(status: u16, body: &[u8]) -> bool {
    status == 400
        && serde_json::from_slice::<Value>(body).is_ok_and(|v| {
            matches!(
                v.get("error").and_then(Value::as_str),
                Some("unauthorized_client" | "invalid_grant")
            ) && v
                .get("error_description")
                .and_then(Value::as_str)
                .is_some_and(|d| d.to_ascii_lowercase().contains("attribute condition"))
        })
}

/// Whether IAM Credentials refused an impersonation the way a missing principal grant does:
/// 403 `PERMISSION_DENIED`.
pub fn refused_by_grant(status: u16, body: &[u8]) -> bool {
    status == 403
        && serde_json::from_slice::<Value>(body).is_ok_and(|v| {
            v.get("error")
                .and_then(|e| e.get("status"))
                .and_then(Value::as_str)
                == Some("PERMISSION_DENIED")
        })
}

/// Parses IAM Credentials' answer to `generateAccessToken`.
///
/// # Errors
/// `Denied` for 403 `PERMISSION_DENIED` and 404 (the customer removed the
/// `workloadIdentityUser` grant or the service account: trust broken) and other 4xx;
/// `Unavailable` for 429, 5xx and unreadable answers, or an expiry in the past or more than
/// 12 h away. An expiry later than the `lifetime_s` asked for is taken as now + `lifetime_s`:
/// Google ends the token then, and a token said to live longer would be served from the
/// cache after it stopped working (a clock behind Google's by minutes changes nothing).
/// Google's text is quoted in a message only when it repeats nothing of `sent` (the
/// federated token the request sent).
pub fn iam_answer(
    status: u16,
    body: &[u8],
    lifetime_s: u64,
    sent: &[&str],
) -> Result<AccessToken, ProviderError> {
    if body.len() > MAX_ANSWER {
        return Err(unavailable(format!(
            "IAM Credentials answered {status} with an oversized body"
        )));
    }
    if status == 429 || status >= 500 {
        return Err(unavailable(format!("IAM Credentials HTTP {status}")));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| unavailable(format!("IAM Credentials HTTP {status}: not JSON")))?;
    if status != 200 {
        let e = v.get("error");
        let gstatus = e
            .and_then(|e| e.get("status"))
            .and_then(Value::as_str)
            .map(|t| clean(t, sent))
            .unwrap_or_default();
        let message = e
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map(|t| clean(t, sent))
            .unwrap_or_default();
        let broken = matches!(status, 403 | 404);
        return Err(denied(
            format!("IAM Credentials HTTP {status} {gstatus}: {message}"),
            broken,
        ));
    }
    let token = token_text(v.get("accessToken"))
        .ok_or_else(|| unavailable("IAM Credentials answer has no usable accessToken".into()))?;
    let expires_at = v
        .get("expireTime")
        .and_then(Value::as_str)
        .and_then(|t| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .ok_or_else(|| unavailable("IAM Credentials expireTime missing or not RFC 3339".into()))?;
    let now = OffsetDateTime::now_utc();
    if expires_at <= now
        || expires_at > now + time::Duration::hours(12) + time::Duration::minutes(5)
    {
        return Err(unavailable(
            "IAM Credentials expireTime is in the past or more than 12 h away".into(),
        ));
    }
    let asked = time::Duration::seconds(i64::try_from(lifetime_s.min(43_200)).unwrap_or(43_200));
    Ok(AccessToken {
        access_token: SecretString::from(token.to_owned()),
        expires_at: expires_at.min(now + asked),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: &ProviderError) -> (&'static str, bool) {
        match e {
            ProviderError::Denied { trust_broken, .. } => ("denied", *trust_broken),
            ProviderError::Unavailable { .. } => ("unavailable", false),
            _ => ("other", false),
        }
    }

    #[test]
    fn sts_answers() {
        let ok = sts_answer(200, br#"{"access_token":"ya29.x","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3599}"#, &[]).unwrap();
        assert!(ok.expires_at > OffsetDateTime::now_utc() + time::Duration::seconds(3500));
        assert!(sts_answer(
            200,
            br#"{"access_token":"ya29.x","token_type":"Bearer","expires_in":"3599"}"#,
            &[]
        )
        .is_ok());
        let e = sts_answer(400, br#"{"error":"invalid_grant","error_description":"The given credential is rejected by the attribute condition."}"#, &[]).err().unwrap();
        assert_eq!(code(&e), ("denied", true));
        assert!(e.to_string().contains("attribute condition"));
        // Google could not reach the broker's issuer, or found no key for the assertion:
        // refused, not the customer's trust withdrawn.
        for body in [
            &br#"{"error":"invalid_grant","error_description":"Error connecting to the given credential's issuer."}"#[..],
            br#"{"error":"invalid_grant","error_description":"Invalid JWT signature."}"#,
            br#"{"error":"invalid_grant"}"#,
        ] {
            let e = sts_answer(400, body, &[]).err().unwrap();
            assert_eq!(code(&e), ("denied", false), "{e}");
        }
        let e = sts_answer(
            400,
            br#"{"error":"invalid_target","error_description":"x"}"#,
            &[],
        )
        .err()
        .unwrap();
        assert_eq!(code(&e), ("denied", true));
        let e = sts_answer(
            400,
            br#"{"error":"invalid_request","error_description":"x"}"#,
            &[],
        )
        .err()
        .unwrap();
        assert_eq!(code(&e), ("denied", false));
        // Two hours, when one was asked for: held for one (Google ends it then).
        let now = OffsetDateTime::now_utc();
        let in_two_hours = (now + time::Duration::hours(2))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let long = format!(r#"{{"accessToken":"a","expireTime":"{in_two_hours}"}}"#);
        let held = iam_answer(200, long.as_bytes(), 3600, &[])
            .unwrap()
            .expires_at;
        assert!(held <= OffsetDateTime::now_utc() + time::Duration::hours(1));
        assert!(held >= now + time::Duration::hours(1));
        let held = iam_answer(200, long.as_bytes(), 7200, &[])
            .unwrap()
            .expires_at;
        assert!(held > now + time::Duration::minutes(119));
        for (s, b) in [
            (503, &b"{}"[..]),
            (429, b"{}"),
            (200, b"<html>"),
            (200, br#"{"access_token":"","expires_in":3599}"#),
            (200, br#"{"access_token":"a","expires_in":0}"#),
            (200, br#"{"access_token":"a","expires_in":"soon"}"#),
            (
                200,
                br#"{"access_token":"a","token_type":"mac","expires_in":5}"#,
            ),
        ] {
            assert_eq!(
                code(&sts_answer(s, b, &[]).err().unwrap()).0,
                "unavailable",
                "{s}"
            );
        }
    }

    #[test]
    fn only_the_attribute_condition_s_refusal_counts() {
        let condition = br#"{"error":"unauthorized_client","error_description":"The given credential is rejected by the attribute condition."}"#;
        assert!(refused_by_condition(400, condition));
        assert!(!refused_by_condition(403, condition));
        assert!(refused_by_condition(
            400,
            br#"{"error":"invalid_grant","error_description":"The given credential is rejected by the attribute condition."}"#
        ));
        assert_eq!(
            code(&sts_answer(400, condition, &[]).err().unwrap()),
            ("denied", true)
        );
        for other in [
            &br#"{"error":"invalid_grant","error_description":"Error connecting to the given credential's issuer."}"#[..],
            br#"{"error":"invalid_grant","error_description":"Invalid JWT signature."}"#,
            br#"{"error":"invalid_grant"}"#,
            br#"{"error":"invalid_request","error_description":"attribute condition"}"#,
        ] {
            assert!(!refused_by_condition(400, other), "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn only_a_403_permission_denied_is_a_missing_grant() {
        let denied = br#"{"error":{"code":403,"message":"Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).","status":"PERMISSION_DENIED"}}"#;
        assert!(refused_by_grant(403, denied));
        // Another status with that body, or a 403 for another reason: nothing learned.
        assert!(!refused_by_grant(400, denied));
        assert!(!refused_by_grant(404, denied));
        for other in [
            &br#"{"error":{"code":403,"message":"API not enabled","status":"FAILED_PRECONDITION"}}"#[..],
            br#"{"error":"PERMISSION_DENIED"}"#,
            br#"<html>403 Forbidden</html>"#,
        ] {
            assert!(!refused_by_grant(403, other), "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn iam_answers() {
        let in_an_hour = OffsetDateTime::now_utc() + time::Duration::hours(1);
        let t = in_an_hour
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let ok = iam_answer(
            200,
            format!(r#"{{"accessToken":"ya29.sa","expireTime":"{t}"}}"#).as_bytes(),
            3600,
            &[],
        )
        .unwrap();
        assert_eq!(ok.expires_at.unix_timestamp(), in_an_hour.unix_timestamp());
        let e = iam_answer(403, br#"{"error":{"code":403,"message":"Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).","status":"PERMISSION_DENIED"}}"#, 3600, &[]).err().unwrap();
        assert_eq!(code(&e), ("denied", true));
        assert!(e.to_string().contains("PERMISSION_DENIED"));
        let e = iam_answer(
            400,
            br#"{"error":{"code":400,"message":"x","status":"INVALID_ARGUMENT"}}"#,
            3600,
            &[],
        )
        .err()
        .unwrap();
        assert_eq!(code(&e), ("denied", false));
        for (s, b) in [
            (500, &b"{}"[..]),
            (
                200,
                br#"{"accessToken":"a","expireTime":"2001-01-01T00:00:00Z"}"#,
            ),
            (
                200,
                br#"{"accessToken":"a","expireTime":"2999-01-01T00:00:00Z"}"#,
            ),
            (200, br#"{"accessToken":"a","expireTime":"tomorrow"}"#),
            (200, br#"{"accessToken":"a"}"#),
        ] {
            assert_eq!(
                code(&iam_answer(s, b, 3600, &[]).err().unwrap()).0,
                "unavailable",
                "{s}"
            );
        }
    }

    /// Google's text that repeats what the request sent (an echo, by Google or a proxy) is
    /// withheld from the message: the assertion for STS, the federated token for IAM.
    #[test]
    fn an_echo_of_what_was_sent_is_withheld() {
        let sent = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjYi1ab3EifQ.Zq3sIgNaTuRe_x-Y";
        let body = format!(
            r#"{{"error":"invalid_grant","error_description":"bad subject_token {}"}}"#,
            &sent[20..]
        );
        let e = sts_answer(400, body.as_bytes(), &[sent]).err().unwrap();
        assert_eq!(code(&e), ("denied", false));
        assert!(!crate::echoes(&e.to_string(), &[sent]), "{e}");
        assert!(e.to_string().contains("withheld"), "{e}");
        let body = format!(
            r#"{{"error":{{"code":401,"message":"token {} expired","status":"UNAUTHENTICATED"}}}}"#,
            &sent[30..]
        );
        let e = iam_answer(401, body.as_bytes(), 3600, &[sent])
            .err()
            .unwrap();
        assert!(!crate::echoes(&e.to_string(), &[sent]), "{e}");
        assert!(e.to_string().contains("UNAUTHENTICATED"), "{e}");
    }
}
