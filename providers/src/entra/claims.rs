//! Parsers of what Entra hands back to a mint: the claims of an issued token and Entra's
//! error bodies, and the GUID and issuer forms every Entra parser shares (the sign-in's are
//! in `sign_in_claims`). All of it is untrusted input (fuzzed in tests/fuzz): every function
//! refuses, never panics.

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

/// Whether `s` is a tenant id in GUID form (8-4-4-4-12 hex digits). `common`,
/// `organizations`, `consumers` and domain names are not tenant ids here.
pub fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The GUID `s` in lower case, when it is one.
pub fn guid(s: &str) -> Option<String> {
    is_guid(s).then(|| s.to_ascii_lowercase())
}

/// The claims of an Entra access token the broker looks at. Decoded, not verified: these
/// tokens are for Microsoft's APIs, and the broker checks them only to refuse one that is
/// not for the tenant, app or permissions it asked for.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct TokenClaims {
    /// Tenant the token was issued in.
    #[serde(default)]
    pub tid: Option<String>,
    /// Issuer (`https://sts.windows.net/{tid}/` or `https://login.microsoftonline.com/{tid}/v2.0`).
    #[serde(default)]
    pub iss: Option<String>,
    /// v1 client id.
    #[serde(default)]
    pub appid: Option<String>,
    /// v2 client id.
    #[serde(default)]
    pub azp: Option<String>,
    /// `app` for an app-only token.
    #[serde(default)]
    pub idtyp: Option<String>,
    /// Our service principal's object id in that tenant.
    #[serde(default)]
    pub oid: Option<String>,
    /// Application permissions granted (Graph tokens).
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    /// Expiry, seconds since the epoch.
    #[serde(default)]
    pub exp: Option<i64>,
    /// Delegated scopes: present only in tokens acting for a user (refused here).
    #[serde(default)]
    pub scp: Option<Value>,
    /// Directory role template ids our service principal holds in the tenant. App-only
    /// tokens carry [`APP_ONLY_WID`] (not a role); any other is a directory role (Global
    /// Reader, Global Administrator…) that no binding's ceiling grants.
    #[serde(default)]
    pub wids: Option<Vec<String>>,
}

/// The id every app-only Entra token carries in `wids`: no directory role has it as its
/// template id (it marks the token's subject as an application, not a grant).
pub const APP_ONLY_WID: &str = "0997a1d0-0d1d-4acb-b408-d5ca73121e90";

pub(super) const MAX_TOKEN: usize = 16 * 1024;

/// Decodes a JWT's payload into [`TokenClaims`] (the signature is not checked).
///
/// # Errors
/// When the token is not three base64url segments or its payload is not a JSON object of
/// the expected claim types.
pub fn decode_claims(token: &str) -> Result<TokenClaims, String> {
    decode_payload(token)
}

/// Decodes a JWT's payload into `T` (the signature is not checked).
pub(super) fn decode_payload<T: serde::de::DeserializeOwned>(token: &str) -> Result<T, String> {
    if token.len() > MAX_TOKEN {
        return Err("token too long".into());
    }
    // Only the compact form's characters: the token is handed out as it is and goes into a
    // worker's `Authorization` header, so no segment may carry a line break or a space.
    if !crate::is_jwt_text(token) {
        return Err("token holds characters outside base64url".into());
    }
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT".into());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "token payload is not base64url".to_owned())?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|_| "token payload is not JSON".to_owned())?;
    if !value.is_object() {
        return Err("token payload is not a JSON object".into());
    }
    // serde's message quotes a wrong-typed value whole (up to the token's size): the claim's
    // position is enough.
    serde_json::from_value(value).map_err(|e| {
        format!(
            "token claims malformed (line {}, column {})",
            e.line(),
            e.column()
        )
    })
}

/// The tenant GUID an `iss` names: v1 `https://{host}/{guid}/`, v2
/// `https://{host}/{guid}/v2.0`, with `host` among `hosts` (compared case-insensitively).
/// Compared on the GUID, never as strings.
pub fn issuer_tenant(iss: &str, hosts: &[String]) -> Option<String> {
    let rest = iss.strip_prefix("https://")?;
    let (host, path) = rest.split_once('/')?;
    if host.is_empty() || !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return None;
    }
    let path = path.strip_suffix('/').unwrap_or(path);
    let tenant = match path.split_once('/') {
        None => path,
        Some((t, "v2.0")) => t,
        Some(_) => return None,
    };
    guid(tenant)
}

/// Which check an issued token failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimFailure {
    /// `tid`, `iss`, `appid`, `idtyp`, `oid` or `token`.
    pub check: &'static str,
    /// What was wrong (no token material).
    pub message: String,
}

fn fail(check: &'static str, message: String) -> ClaimFailure {
    ClaimFailure { check, message }
}

/// Checks an issued token is for `tenant` (GUID, lower case) and our `client_id`, app-only,
/// issued by one of `issuer_hosts`.
///
/// # Errors
/// The first check that failed.
pub fn check_claims(
    claims: &TokenClaims,
    tenant: &str,
    client_id: &str,
    issuer_hosts: &[String],
) -> Result<(), ClaimFailure> {
    let tid = claims.tid.as_deref().and_then(guid);
    if tid.as_deref() != Some(tenant) {
        return Err(fail(
            "tid",
            format!(
                "token tid {:?} is not the bound tenant {tenant}",
                crate::quoted(claims.tid.as_deref().unwrap_or("(none)"), 64)
            ),
        ));
    }
    let iss_tenant = claims
        .iss
        .as_deref()
        .and_then(|i| issuer_tenant(i, issuer_hosts));
    if iss_tenant.as_deref() != Some(tenant) {
        return Err(fail(
            "iss",
            format!(
                "token iss {:?} does not name the bound tenant {tenant}",
                crate::quoted(claims.iss.as_deref().unwrap_or("(none)"), 128)
            ),
        ));
    }
    let app = claims.azp.as_deref().or(claims.appid.as_deref());
    let ours = app.is_some_and(|a| a.eq_ignore_ascii_case(client_id));
    let both_agree = match (&claims.azp, &claims.appid) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => true,
    };
    if !ours || !both_agree {
        return Err(fail(
            "appid",
            format!(
                "token appid/azp {:?} is not our client id",
                crate::quoted(app.unwrap_or("(none)"), 64)
            ),
        ));
    }
    if claims.scp.is_some() {
        return Err(fail(
            "idtyp",
            "token carries delegated scopes (scp): not an app-only token".into(),
        ));
    }
    if let Some(t) = &claims.idtyp {
        if t != "app" {
            return Err(fail(
                "idtyp",
                format!(
                    "token idtyp {:?} is not an app-only token",
                    crate::quoted(t, 32)
                ),
            ));
        }
    }
    if claims.oid.as_deref().and_then(guid).is_none() {
        return Err(fail(
            "oid",
            "token carries no service principal object id".into(),
        ));
    }
    // A directory role given to our service principal rides in every token it gets, for
    // every API: a Graph token within `roles` would still act as a Global Administrator.
    let held: Vec<String> = claims
        .wids
        .iter()
        .flatten()
        .map(|w| guid(w).unwrap_or_else(|| crate::quoted(w, 40)))
        .filter(|w| w != APP_ONLY_WID)
        .take(8)
        .collect();
    if !held.is_empty() {
        return Err(fail(
            "wids",
            format!(
                "our service principal holds directory role(s) {} in tenant {tenant}, which no binding's ceiling grants: an admin of that tenant removes the role assignment(s)",
                held.join(", ")
            ),
        ));
    }
    Ok(())
}

/// An Entra error answer, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AadError {
    /// OAuth `error`.
    pub error: String,
    /// `AADSTS…` codes.
    pub codes: Vec<u32>,
    /// The description's first sentence (without trace ids), at most 200 characters.
    pub description: String,
    /// `trace_id`, for the audit log.
    pub trace_id: Option<String>,
}

/// Parses an Entra error body. Never fails: an unparseable body yields an empty error.
pub fn parse_error(body: &[u8]) -> AadError {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return AadError::default();
    };
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let mut codes: Vec<u32> = v
        .get("error_codes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .filter_map(|c| u32::try_from(c).ok())
                .take(8)
                .collect()
        })
        .unwrap_or_default();
    let description = text("error_description");
    if codes.is_empty() {
        // Some answers carry the code only in the description: "AADSTS7000229: …".
        if let Some(rest) = description.strip_prefix("AADSTS") {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            codes.extend(digits.parse::<u32>().ok());
        }
    }
    let description = crate::quoted(
        description
            .split(" Trace ID:")
            .next()
            .unwrap_or("")
            .split(['\r', '\n'])
            .next()
            .unwrap_or(""),
        200,
    );
    let trace_id = Some(text("trace_id").to_owned()).filter(|t| {
        !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
    });
    AadError {
        // An OAuth error code is `[a-z_]`; anything else is not quoted onwards.
        error: Some(text("error"))
            .filter(|e| e.len() <= 64 && e.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .unwrap_or("unrecognised_error")
            .to_owned(),
        codes,
        description,
        trace_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "11111111-2222-3333-4444-555555555555";

    fn jwt(claims: &Value) -> String {
        let b = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            b(b"{\"alg\":\"RS256\"}"),
            b(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn a_token_with_a_line_break_in_any_segment_is_refused() {
        let good = jwt(&serde_json::json!({"tid": T}));
        assert!(decode_claims(&good).is_ok());
        let (header, rest) = good.split_once('.').unwrap();
        for bad in [
            format!("{header}\r\nX-Injected: 1.{rest}"),
            format!("{header}.{rest} "),
            format!("{good}\n"),
        ] {
            assert_eq!(
                decode_claims(&bad).err().as_deref(),
                Some("token holds characters outside base64url"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn guids_only() {
        assert!(is_guid(T));
        for bad in [
            "common",
            "organizations",
            "contoso.onmicrosoft.com",
            "",
            "1-2-3-4-5",
        ] {
            assert!(!is_guid(bad), "{bad}");
        }
    }

    fn hosts() -> Vec<String> {
        vec!["sts.windows.net".into(), "login.microsoftonline.com".into()]
    }

    #[test]
    fn issuer_forms() {
        let h = hosts();
        assert_eq!(
            issuer_tenant(&format!("https://sts.windows.net/{T}/"), &h).as_deref(),
            Some(T)
        );
        assert_eq!(
            issuer_tenant(&format!("https://login.microsoftonline.com/{T}/v2.0"), &h).as_deref(),
            Some(T)
        );
        for bad in [
            format!("http://sts.windows.net/{T}/"),
            format!("https://sts.windows.net/{T}/v3"),
            "https://sts.windows.net/common/".to_owned(),
            format!("https:///{T}/"),
            format!("https://evil.example/{T}/"),
        ] {
            assert!(issuer_tenant(&bad, &h).is_none(), "{bad}");
        }
    }

    #[test]
    fn claim_checks() {
        let app = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
        let oid = "99999999-8888-7777-6666-555555555555";
        let ok = serde_json::json!({"tid": T, "iss": format!("https://sts.windows.net/{T}/"), "appid": app, "oid": oid, "idtyp": "app", "roles": ["User.Read.All"]});
        let c = decode_claims(&jwt(&ok)).unwrap();
        check_claims(&c, T, app, &hosts()).unwrap();
        let mut other = ok.clone();
        other["tid"] = serde_json::json!("00000000-0000-0000-0000-000000000000");
        assert_eq!(
            check_claims(&decode_claims(&jwt(&other)).unwrap(), T, app, &hosts())
                .unwrap_err()
                .check,
            "tid"
        );
        // An upstream's long claim is quoted short: a token endpoint cannot bloat the
        // refusal (an audit record, a worker's error) with kilobytes of its own text.
        for claim in ["tid", "iss", "appid", "idtyp"] {
            let mut other = ok.clone();
            other[claim] = serde_json::json!("x".repeat(10_000));
            let refused =
                check_claims(&decode_claims(&jwt(&other)).unwrap(), T, app, &hosts()).unwrap_err();
            assert_eq!(refused.check, claim);
            assert!(refused.message.len() < 300, "{}", refused.message.len());
        }
        let mut other = ok.clone();
        other["appid"] = serde_json::json!(oid);
        assert_eq!(
            check_claims(&decode_claims(&jwt(&other)).unwrap(), T, app, &hosts())
                .unwrap_err()
                .check,
            "appid"
        );
        let mut other = ok.clone();
        other["idtyp"] = serde_json::json!("user");
        assert_eq!(
            check_claims(&decode_claims(&jwt(&other)).unwrap(), T, app, &hosts())
                .unwrap_err()
                .check,
            "idtyp"
        );
        // The app-only marker passes; a directory role (Global Administrator) does not,
        // whatever the case of its GUID.
        let mut other = ok.clone();
        other["wids"] = serde_json::json!([APP_ONLY_WID]);
        check_claims(&decode_claims(&jwt(&other)).unwrap(), T, app, &hosts()).unwrap();
        other["wids"] = serde_json::json!([APP_ONLY_WID, "62E90394-69F5-4237-9190-012177145E10"]);
        let f = check_claims(&decode_claims(&jwt(&other)).unwrap(), T, app, &hosts()).unwrap_err();
        assert_eq!(f.check, "wids");
        assert!(
            f.message.contains("62e90394-69f5-4237-9190-012177145e10"),
            "{}",
            f.message
        );
        other["wids"] = serde_json::json!(["not-a-guid\n"]);
        assert_eq!(
            check_claims(&decode_claims(&jwt(&other)).unwrap(), T, app, &hosts())
                .unwrap_err()
                .check,
            "wids"
        );
        // Each remaining check alone: an issuer naming another tenant (or none), an `azp`
        // that is not the `appid`, delegated scopes without `idtyp`, no object id.
        let failed = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut other = ok.clone();
            edit(&mut other);
            check_claims(&decode_claims(&jwt(&other)).unwrap(), T, app, &hosts())
                .unwrap_err()
                .check
        };
        assert_eq!(
            failed(&|c| {
                c["iss"] = serde_json::json!(
                    "https://sts.windows.net/00000000-0000-0000-0000-000000000000/"
                )
            }),
            "iss"
        );
        assert_eq!(
            failed(&|c| c
                .as_object_mut()
                .unwrap()
                .remove("iss")
                .map(drop)
                .unwrap_or(())),
            "iss"
        );
        assert_eq!(
            failed(&|c| {
                c["azp"] = serde_json::json!(app);
                c["appid"] = serde_json::json!(oid);
            }),
            "appid"
        );
        assert_eq!(
            failed(&|c| {
                c.as_object_mut().unwrap().remove("idtyp");
                c["scp"] = serde_json::json!("User.Read");
            }),
            "idtyp"
        );
        assert_eq!(
            failed(&|c| c
                .as_object_mut()
                .unwrap()
                .remove("oid")
                .map(drop)
                .unwrap_or(())),
            "oid"
        );
        let mut other = ok;
        other["tid"] = serde_json::json!(42);
        assert!(decode_claims(&jwt(&other)).is_err());
        assert!(decode_claims("a.b").is_err());
    }

    #[test]
    fn error_bodies() {
        let e = parse_error(br#"{"error":"invalid_client","error_description":"AADSTS7000229: missing service principal. Trace ID: 1","error_codes":[7000229],"trace_id":"abc-1"}"#);
        assert_eq!(e.codes, vec![7000229]);
        assert_eq!(e.description, "AADSTS7000229: missing service principal.");
        assert_eq!(e.trace_id.as_deref(), Some("abc-1"));
        assert_eq!(parse_error(b"<html>"), AadError::default());
    }
}
