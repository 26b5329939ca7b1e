//! The fake's federated identity credential (FIC): client authentication by a JWT from the
//! broker's own OIDC issuer (PROTOCOLS.md, "Additions checked against primary sources (wave
//! 2)", Entra). One FIC on the multi-tenant app serves every tenant that consented; the
//! tenant comes from the token URL, the client from `client_id`.
//!
//! The checks follow the order Entra needs them in: it cannot know whose keys to verify with
//! before it has found the FIC the assertion claims to match, so it first matches the
//! (unverified) `iss`, `sub` and `aud` against the FIC, then verifies the signature with the
//! FIC's keys, then the time range. Each refusal is the AADSTS code Entra answers with:
//!
//! | refusal | status, `error` | code |
//! |---|---|---|
//! | the app has no FIC (or one just created, still propagating) | 400 `invalid_request` | 70021 |
//! | `iss` is not the FIC's issuer | 401 `invalid_client` | 700211 |
//! | `sub` is not the FIC's subject | 401 `invalid_client` | 700213 |
//! | `aud` is not the FIC's audience | 401 `invalid_client` | 700212 |
//! | not RS256, no `kid`, `kid` not among the first 100 `"use":"sig"` keys, bad signature | 401 `invalid_client` | 700027 |
//! | `exp` passed, `nbf` in the future, `exp` missing | 401 `invalid_client` | 700024 |
//!
//! Matching is exact and case-sensitive (Entra compares FIC fields byte for byte). No clock
//! leeway: a test can show an expired assertion refused without waiting.

use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// The `client_assertion_type` of a JWT client assertion (certificate or federated).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The one audience Entra accepts on a federated credential (public cloud).
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Entra reads at most this many keys of an issuer's JWKS.
const MAX_KEYS: usize = 100;

/// A federated identity credential on the fake's app.
#[derive(Clone, Debug)]
pub struct FederatedCredential {
    /// The issuer URL the assertion's `iss` must equal.
    pub issuer: String,
    /// The subject the assertion's `sub` must equal.
    pub subject: String,
    /// The audience the assertion's `aud` must equal (`api://AzureADTokenExchange`).
    pub audience: String,
    /// The issuer's JWKS (`{"keys": [...]}`), as Entra would fetch it from `jwks_uri`; the
    /// test hands in what the broker publishes.
    pub jwks: Value,
    /// The next federated requests answered with AADSTS70021, as Entra does for a few
    /// minutes after a FIC is created.
    pub propagating: u32,
}

/// How a token request authenticated the client, as recorded in the request log (field
/// `client_auth`; `assertion_sub` / `assertion_jti` for an assertion, never the assertion).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret`.
    Secret,
    /// A certificate-signed assertion (`iss` = `sub` = the client id), or one that does not
    /// decode at all.
    Certificate,
    /// A federated assertion (any other `iss`).
    Federated,
    /// Neither a secret nor an assertion.
    None,
}

impl ClientAuth {
    /// The value recorded under `client_auth`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Secret => "secret",
            ClientAuth::Certificate => "certificate",
            ClientAuth::Federated => "federated",
            ClientAuth::None => "none",
        }
    }
}

/// An Entra refusal: HTTP status, `error`, AADSTS code, text.
pub(super) struct Refusal {
    pub status: u16,
    pub error: &'static str,
    pub code: u32,
    pub text: String,
}

fn invalid_client(code: u32, text: String) -> Refusal {
    Refusal {
        status: 401,
        error: "invalid_client",
        code,
        text,
    }
}

/// The claims of `jwt` read without any check (what Entra reads to find the FIC).
pub(super) fn unverified_claims(jwt: &str) -> Option<Value> {
    jsonwebtoken::dangerous::insecure_decode_claims::<Value>(jwt)
        .ok()
        .filter(Value::is_object)
}

/// Which kind of client authentication `form` carries, with the assertion's `sub` and `jti`
/// (strings, when present).
pub(super) fn classify(
    client_id: &str,
    form: &std::collections::HashMap<String, String>,
) -> (ClientAuth, Option<String>, Option<String>) {
    if form.contains_key("client_secret") {
        return (ClientAuth::Secret, None, None);
    }
    if form.get("client_assertion_type").map(String::as_str) != Some(JWT_BEARER) {
        return (ClientAuth::None, None, None);
    }
    let claims = form
        .get("client_assertion")
        .and_then(|jwt| unverified_claims(jwt));
    let Some(c) = claims else {
        return (ClientAuth::Certificate, None, None);
    };
    let text = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_owned);
    let kind = match c.get("iss").and_then(Value::as_str) {
        Some(iss) if iss != client_id => ClientAuth::Federated,
        _ => ClientAuth::Certificate,
    };
    (kind, text("sub"), text("jti"))
}

/// Claim `k` of `claims` when it is a string, else "".
fn str_claim<'a>(claims: &'a Value, k: &str) -> &'a str {
    claims.get(k).and_then(Value::as_str).unwrap_or("")
}

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// Checks a federated assertion against the app's FIC at `now` (unix seconds). Decrements
/// the FIC's `propagating` count when it answers with it.
pub(super) fn check(
    fic: Option<&mut FederatedCredential>,
    jwt: &str,
    now: i64,
) -> Result<(), Refusal> {
    let claims = unverified_claims(jwt).unwrap_or(Value::Null);
    let (iss, sub) = (str_claim(&claims, "iss"), str_claim(&claims, "sub"));
    let aud = match claims.get("aud") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let no_record = || {
        Refusal {
        status: 400,
        error: "invalid_request",
        code: 70021,
        text: format!(
            "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{aud}'. https://learn.microsoft.com/entra/workload-id/workload-identity-federation"
        ),
    }
    };
    let Some(fic) = fic else {
        return Err(no_record());
    };
    if fic.propagating > 0 {
        fic.propagating -= 1;
        return Err(no_record());
    }
    if iss != fic.issuer {
        return Err(invalid_client(700211, format!("No matching federated identity record found for presented assertion issuer '{iss}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation")));
    }
    if sub != fic.subject {
        return Err(invalid_client(700213, format!("No matching federated identity record found for presented assertion subject '{sub}'. Please note that the matching is done using a case-sensitive comparison. Check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation")));
    }
    // `aud` must be the single string the FIC names (the broker sends one string).
    if claims.get("aud").and_then(Value::as_str) != Some(fic.audience.as_str()) {
        return Err(invalid_client(700212, format!("No matching federated identity record found for presented assertion audience '{aud}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation")));
    }
    verify_signature(&fic.jwks, jwt).map_err(|()| {
        invalid_client(
            700027,
            "Client assertion failed signature validation.".to_owned(),
        )
    })?;
    let exp = claims.get("exp").and_then(Value::as_i64);
    let nbf = claims.get("nbf").and_then(Value::as_i64);
    let in_range = exp.is_some_and(|e| now < e) && nbf.is_none_or(|n| n <= now);
    if !in_range {
        return Err(invalid_client(
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}.",
                rfc3339(now),
                nbf.map(rfc3339).unwrap_or_else(|| "(none)".into()),
                exp.map(rfc3339).unwrap_or_else(|| "(none)".into()),
            ),
        ));
    }
    Ok(())
}

/// RS256 only, a `kid` among the first 100 signing keys of `jwks`, a valid signature.
fn verify_signature(jwks: &Value, jwt: &str) -> Result<(), ()> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| ())?;
    if header.alg != Algorithm::RS256 {
        return Err(());
    }
    let kid = header.kid.ok_or(())?;
    let set: JwkSet = serde_json::from_value(jwks.clone()).map_err(|_| ())?;
    let jwk = set
        .keys
        .iter()
        .take(MAX_KEYS)
        .find(|k| k.common.key_id.as_deref() == Some(kid.as_str()))
        .ok_or(())?;
    if jwk.common.public_key_use != Some(PublicKeyUse::Signature) {
        return Err(());
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| ())?;
    // Claims are checked by `check`; here only the signature.
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .map(|_| ())
        .map_err(|_| ())
}
