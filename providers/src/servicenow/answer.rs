//! ServiceNow's token answer (`{access_token, scope, token_type, expires_in}`), parsed. It is
//! untrusted input (fuzzed): refused, never a panic.

use secrecy::SecretString;
use serde_json::Value;
use time::OffsetDateTime;

/// A parsed token answer.
pub struct TokenAnswer {
    /// The bearer.
    pub access_token: SecretString,
    /// `scope` as ServiceNow reports it (`useraccount` by default).
    pub scope: Option<String>,
    /// When it expires: now plus `expires_in` (a number or a numeric string).
    pub expires_at: OffsetDateTime,
}

/// Parses a 200 answer of `/oauth_token.do`.
///
/// # Errors
/// A message naming what is missing or malformed.
pub fn parse_token_answer(body: &[u8]) -> Result<TokenAnswer, String> {
    if body.len() > 64 * 1024 {
        return Err("answer too long".into());
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| "not JSON".to_owned())?;
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| crate::is_printable(t, 8192))
        .ok_or("no usable access_token")?;
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
        .map(|s| s.chars().filter(|c| !c.is_control()).take(200).collect());
    Ok(TokenAnswer {
        access_token: SecretString::from(token.to_owned()),
        scope,
        expires_at: OffsetDateTime::now_utc()
            + time::Duration::seconds(i64::try_from(expires_in).unwrap_or(60)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let ok = parse_token_answer(br#"{"access_token":"abc","scope":"useraccount","token_type":"Bearer","expires_in":1799}"#).unwrap();
        assert_eq!(ok.scope.as_deref(), Some("useraccount"));
        assert!(parse_token_answer(
            br#"{"access_token":"abc","token_type":"Bearer","expires_in":"1799"}"#
        )
        .is_ok());
        for bad in [
            &br#"{"access_token":"","token_type":"Bearer","expires_in":1799}"#[..],
            br#"{"access_token":"a","token_type":"mac","expires_in":1799}"#,
            br#"{"access_token":"a","token_type":"Bearer","expires_in":5}"#,
            br#"<html>hibernating</html>"#,
        ] {
            assert!(parse_token_answer(bad).is_err());
        }
    }
}
