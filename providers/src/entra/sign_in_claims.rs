//! Parsers of what the consent link's sign-in hands back: the callback's query (from the
//! customer's browser) and the `id_token` of the code's redemption (from Entra), and the
//! checks that the id_token names an administrator of the pinned tenant signing in through
//! this link. All of it is untrusted input (fuzzed in tests/fuzz, `entra_consent`): every
//! function refuses, never panics.

use serde::Deserialize;

use super::claims::{decode_payload, guid, issuer_tenant, MAX_TOKEN};

/// The sign-in's redirect (`GET /callbacks/entra_multi_tenant/setup?…`), parsed. The
/// `code` is a claim until the broker redeems it at the pinned tenant's token endpoint and
/// reads the `id_token` Entra answers with (module `sign_in`).
#[derive(Clone)]
pub struct ConsentCallback {
    /// The `state` the broker issued.
    pub state: String,
    /// The one-time authorization code (never logged).
    pub code: Option<secrecy::SecretString>,
    /// `error` and `error_description` (truncated, printable): overrides a `code`.
    pub error: Option<(String, String)>,
}

impl std::fmt::Debug for ConsentCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsentCallback")
            .field("state", &self.state)
            .field("code", &self.code.as_ref().map(|_| "(redacted)"))
            .field("error", &self.error)
            .finish()
    }
}

const MAX_QUERY: usize = 4096;
/// The longest authorization code read: Entra's are about 1,000 characters.
const MAX_CODE: usize = 2048;

/// Parses the sign-in callback's query string. The `state` must be 1-128 alphanumerics, the
/// `code` 1-2048 characters of `[A-Za-z0-9._~-]`; every parameter at most once. Either a
/// `code` or an `error` must be present. `tenant` and `admin_consent` (what the admin-consent
/// endpoint sends) are not read: only a code redeemed by the broker proves anything.
///
/// # Errors
/// A message naming what is missing, repeated or malformed.
pub fn parse_consent_query(query: &str) -> Result<ConsentCallback, String> {
    if query.len() > MAX_QUERY {
        return Err("query too long".into());
    }
    let mut state = None;
    let mut code = None;
    let mut error = None;
    let mut description = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match k.as_ref() {
            "state" => &mut state,
            "code" => &mut code,
            "error" => &mut error,
            "error_description" => &mut description,
            // `session_state`, `error_uri`, `error_subcode`, `trace_id`, `correlation_id`…
            _ => continue,
        };
        if slot.replace(v.into_owned()).is_some() {
            return Err(format!("parameter {k} given twice"));
        }
    }
    let state = state
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric()))
        .ok_or("state is missing or malformed")?;
    let printable = |s: String| crate::quoted(&s, 300);
    let error = error.map(|e| (printable(e), printable(description.unwrap_or_default())));
    let code = match code {
        Some(c)
            if !c.is_empty()
                && c.len() <= MAX_CODE
                && c.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-')
                }) =>
        {
            Some(secrecy::SecretString::from(c))
        }
        Some(_) => return Err("code is malformed".into()),
        None => None,
    };
    if error.is_none() && code.is_none() {
        return Err("the redirect carries no code".into());
    }
    Ok(ConsentCallback { state, code, error })
}

/// The directory roles whose holders can grant our app its application permissions on
/// Microsoft Graph for the whole tenant: Global Administrator and Privileged Role
/// Administrator (template ids). Cloud Application and Application Administrators can
/// consent for other APIs, not for Graph's application permissions.
pub const CONSENT_ADMIN_ROLES: [&str; 2] = [
    "62e90394-69f5-4237-9190-012177145e10",
    "e8611ab8-c189-46e8-94e1-60213ab1f814",
];

/// The claims of the `id_token` a sign-in's code is redeemed for: who signed in, where.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct IdTokenClaims {
    /// Our client id.
    #[serde(default)]
    pub aud: Option<String>,
    /// `https://login.microsoftonline.com/{tid}/v2.0`.
    #[serde(default)]
    pub iss: Option<String>,
    /// The tenant the person signed in to.
    #[serde(default)]
    pub tid: Option<String>,
    /// The person's object id in that tenant.
    #[serde(default)]
    pub oid: Option<String>,
    /// The nonce the authorization request carried.
    #[serde(default)]
    pub nonce: Option<String>,
    /// Expiry, seconds since the epoch.
    #[serde(default)]
    pub exp: Option<i64>,
    /// The person's directory roles (template ids), present when the app registration sets
    /// `groupMembershipClaims` to `DirectoryRole` or `All`.
    #[serde(default)]
    pub wids: Option<Vec<String>>,
}

/// Reads a 200 answer of the token endpoint to an authorization-code grant: its `id_token`'s
/// claims. The access token beside it is not read (nor kept). Never panics on any input
/// (fuzzed).
///
/// # Errors
/// When there is no `id_token`, or it is not a JWT of the expected claim types.
pub fn read_sign_in_answer(answer: &[u8]) -> Result<IdTokenClaims, String> {
    /// Only the `id_token`, borrowed from the answer: the access token beside it (and a
    /// refresh token, if any) is skipped by the parser, never copied into a string.
    #[derive(Deserialize)]
    struct SignInAnswer<'a> {
        #[serde(borrow, default)]
        id_token: Option<&'a str>,
    }
    let v: SignInAnswer<'_> = serde_json::from_slice(answer)
        .map_err(|_| "not a JSON object with a string id_token".to_owned())?;
    let token = v.id_token.filter(|t| !t.is_empty()).ok_or("no id_token")?;
    if token.len() > MAX_TOKEN || !crate::is_jwt_text(token) {
        return Err("the id_token is not a compact JWT".into());
    }
    decode_payload(token).map_err(|_| "the id_token's claims are not of the expected types".into())
}

/// Checks that an `id_token` names a person who signed in to `tenant` (GUID, lower case)
/// for our `client_id`, in answer to the authorization request that carried `nonce`, and
/// who holds one of [`CONSENT_ADMIN_ROLES`] there; `now` in seconds since the epoch. Returns
/// the person's object id.
///
/// # Errors
/// What failed, for the audit record and the admin's browser (no token material).
pub fn check_sign_in(
    claims: &IdTokenClaims,
    tenant: &str,
    client_id: &str,
    nonce: &str,
    issuer_hosts: &[String],
    now: i64,
) -> Result<String, String> {
    if !claims
        .aud
        .as_deref()
        .is_some_and(|a| a.eq_ignore_ascii_case(client_id))
    {
        return Err("the sign-in was not for our app (id_token aud)".into());
    }
    let tid = claims.tid.as_deref().and_then(guid);
    if tid.as_deref() != Some(tenant) {
        return Err(format!(
            "the person signed in to tenant {}, not the tenant {tenant} named at onboarding",
            claims
                .tid
                .as_deref()
                .map_or("(none)".into(), |t| crate::quoted(t, 40))
        ));
    }
    let iss_tenant = claims
        .iss
        .as_deref()
        .and_then(|i| issuer_tenant(i, issuer_hosts));
    if iss_tenant.as_deref() != Some(tenant) {
        return Err(format!(
            "the id_token's issuer does not name the tenant {tenant}"
        ));
    }
    let sent = claims.nonce.as_deref().unwrap_or("");
    if aws_lc_rs::constant_time::verify_slices_are_equal(sent.as_bytes(), nonce.as_bytes()).is_err()
    {
        return Err(
            "the sign-in answered another authorization request (id_token nonce): start again from the link"
                .into(),
        );
    }
    if claims.exp.is_none_or(|e| e <= now) {
        return Err("the id_token has expired".into());
    }
    let oid = claims
        .oid
        .as_deref()
        .and_then(guid)
        .ok_or("the id_token names no person (oid)")?;
    let Some(wids) = &claims.wids else {
        return Err("the id_token lists no directory roles (wids): the app registration must set groupMembershipClaims to DirectoryRole (or All); see runbooks/entra-onboarding.md".into());
    };
    let admin = wids
        .iter()
        .filter_map(|w| guid(w))
        .any(|w| CONSENT_ADMIN_ROLES.contains(&w.as_str()));
    if !admin {
        return Err(format!(
            "the person who signed in is not a Global Administrator or Privileged Role Administrator of tenant {tenant}: only they can grant our app's permissions"
        ));
    }
    Ok(oid)
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use serde_json::Value;

    use super::super::claims::APP_ONLY_WID;
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

    fn hosts() -> Vec<String> {
        vec!["sts.windows.net".into(), "login.microsoftonline.com".into()]
    }

    #[test]
    fn consent_query() {
        use secrecy::ExposeSecret;
        let c = parse_consent_query("code=0.AAB~x_y-z&state=abc123&session_state=q").unwrap();
        assert_eq!(
            c.code.as_ref().map(|c| c.expose_secret()),
            Some("0.AAB~x_y-z")
        );
        assert!(c.error.is_none());
        assert!(!format!("{c:?}").contains("AAB"), "the code is not printed");
        let c = parse_consent_query(
            "error=access_denied&error_description=AADSTS65004%3A+declined&code=abc&state=s1",
        )
        .unwrap();
        assert_eq!(c.error.unwrap().0, "access_denied");
        for bad in [
            // What the admin-consent endpoint sends: no code, nothing proven.
            format!("admin_consent=True&tenant={T}&state=s1"),
            "code=abc".to_owned(),
            "code=abc&state=s1&state=s2".to_owned(),
            "code=abc&code=abd&state=s1".to_owned(),
            "code=abc&state=s%2F1".to_owned(),
            "code=a%20b&state=s1".to_owned(),
            format!("code={}&state=s1", "a".repeat(2049)),
            "code=&state=s1".to_owned(),
        ] {
            assert!(parse_consent_query(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_sign_in_is_checked_claim_by_claim() {
        const APP: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
        const NOW: i64 = 1_700_000_000;
        let good = IdTokenClaims {
            aud: Some(APP.to_uppercase()),
            iss: Some(format!("https://login.microsoftonline.com/{T}/v2.0")),
            tid: Some(T.to_uppercase()),
            oid: Some("aaaaaaaa-0000-4000-8000-000000000001".into()),
            nonce: Some("n1".into()),
            exp: Some(NOW + 60),
            wids: Some(vec![
                "158c047a-c907-4556-b7ef-446551a6b5f7".into(),
                CONSENT_ADMIN_ROLES[1].to_uppercase(),
            ]),
        };
        let check = |c: &IdTokenClaims| check_sign_in(c, T, APP, "n1", &hosts(), NOW);
        assert_eq!(
            check(&good).as_deref(),
            Ok("aaaaaaaa-0000-4000-8000-000000000001")
        );
        let other = "99999999-2222-3333-4444-555555555555";
        let cases: Vec<(IdTokenClaims, &str)> = vec![
            (
                IdTokenClaims {
                    aud: Some(other.into()),
                    ..good.clone()
                },
                "not for our app",
            ),
            (
                IdTokenClaims {
                    aud: None,
                    ..good.clone()
                },
                "not for our app",
            ),
            (
                IdTokenClaims {
                    tid: Some(other.into()),
                    ..good.clone()
                },
                "signed in to tenant",
            ),
            (
                IdTokenClaims {
                    tid: None,
                    ..good.clone()
                },
                "signed in to tenant",
            ),
            // The right tid, issued for another tenant or by another host.
            (
                IdTokenClaims {
                    iss: Some(format!("https://login.microsoftonline.com/{other}/v2.0")),
                    ..good.clone()
                },
                "issuer",
            ),
            (
                IdTokenClaims {
                    iss: Some(format!("https://login.example.com/{T}/v2.0")),
                    ..good.clone()
                },
                "issuer",
            ),
            (
                IdTokenClaims {
                    nonce: None,
                    ..good.clone()
                },
                "another authorization request",
            ),
            (
                IdTokenClaims {
                    nonce: Some(String::new()),
                    ..good.clone()
                },
                "another authorization request",
            ),
            (
                IdTokenClaims {
                    nonce: Some("n2".into()),
                    ..good.clone()
                },
                "another authorization request",
            ),
            (
                IdTokenClaims {
                    exp: Some(NOW),
                    ..good.clone()
                },
                "expired",
            ),
            (
                IdTokenClaims {
                    exp: None,
                    ..good.clone()
                },
                "expired",
            ),
            (
                IdTokenClaims {
                    oid: None,
                    ..good.clone()
                },
                "oid",
            ),
            (
                IdTokenClaims {
                    oid: Some("nobody".into()),
                    ..good.clone()
                },
                "oid",
            ),
            (
                IdTokenClaims {
                    wids: None,
                    ..good.clone()
                },
                "groupMembershipClaims",
            ),
            (
                IdTokenClaims {
                    wids: Some(vec![]),
                    ..good.clone()
                },
                "not a Global Administrator",
            ),
            (
                IdTokenClaims {
                    wids: Some(vec![APP_ONLY_WID.into()]),
                    ..good.clone()
                },
                "not a Global Administrator",
            ),
        ];
        for (claims, why) in cases {
            let e = check(&claims).expect_err(why);
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn a_sign_in_answer_yields_its_id_token_alone() {
        let token = jwt(&serde_json::json!({"tid": T, "nonce": "n", "wids": ["x"]}));
        let answer = serde_json::json!({"token_type": "Bearer", "access_token": "AT", "refresh_token": "RT", "id_token": token});
        let c = read_sign_in_answer(answer.to_string().as_bytes()).unwrap();
        assert_eq!((c.tid.as_deref(), c.nonce.as_deref()), (Some(T), Some("n")));
        for bad in [
            serde_json::json!({"access_token": "AT"}),
            serde_json::json!({"id_token": ""}),
            serde_json::json!({"id_token": 7}),
            serde_json::json!({"id_token": "a.b"}),
            serde_json::json!({"id_token": jwt(&serde_json::json!({"aud": ["x"]}))}),
            serde_json::json!({"id_token": jwt(&serde_json::json!({"wids": [1]}))}),
            serde_json::json!([]),
        ] {
            assert!(
                read_sign_in_answer(bad.to_string().as_bytes()).is_err(),
                "{bad}"
            );
        }
    }
}
