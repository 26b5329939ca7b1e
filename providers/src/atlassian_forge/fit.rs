//! The Forge Invocation Token (FIT): Atlassian signs every call Forge makes to our remote
//! (RS256, keys published at a JWKS URL). Verified here before anything else is read: the
//! algorithm is fixed (never `none` or HS*), the key comes from the JWKS by `kid` (cached;
//! an unknown `kid` refetches once, single flight, at most once per cooldown), `iss`, `aud`,
//! `exp`, `nbf` are required and checked with a small leeway, and every claim the broker
//! reads is parsed into a strict struct (a claim of the wrong JSON type fails).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::http::Http;

/// The FIT's `iss`.
pub const ISSUER: &str = "forge/invocation-token";
/// Keys kept from one JWKS answer.
const MAX_KEYS: usize = 32;
/// Least time between two JWKS fetches (an unknown `kid` cannot make the broker fetch more
/// often than this, whoever sends it).
pub const REFETCH_COOLDOWN: Duration = Duration::from_secs(30);
/// Longest remaining lifetime a FIT may claim, seconds, before leeway (Forge issues them for
/// about 25 s): a FIT copied from somewhere cannot be replayed for long.
pub const MAX_FIT_LIFETIME_S: i64 = 60;
/// Age after which the key set is fetched again when a FIT is verified (a key Atlassian
/// withdrew stops being trusted); a failed refresh keeps the keys held.
pub const MAX_KEYS_AGE: Duration = Duration::from_secs(3600);
/// Longest FIT accepted, bytes.
pub const MAX_FIT_BYTES: usize = 8 * 1024;
/// Longest app system token accepted, bytes.
pub const MAX_SYSTEM_TOKEN_BYTES: usize = 8 * 1024;
/// Longest lifetime of an app system token (Atlassian: 4 h), plus clock skew.
pub const MAX_SYSTEM_TOKEN_LIFETIME_S: i64 = 4 * 3600 + 300;

/// The FIT's claims the broker reads (others are ignored).
#[derive(Debug, Deserialize)]
pub struct FitClaims {
    /// Issuer.
    pub iss: String,
    /// Audience: our app's ARI (a string; an array is refused).
    pub aud: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Not before, Unix seconds.
    pub nbf: i64,
    /// The app and installation the call is for.
    pub app: AppClaim,
    /// The Atlassian account that invoked the app: present on a call from a UI module only.
    #[serde(default)]
    pub principal: Option<String>,
}

/// `app` of a FIT.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppClaim {
    /// Our app's ARI.
    pub id: String,
    /// The installation's ARI (changes on reinstall).
    pub installation_id: String,
    /// The product API base of the site: `https://api.atlassian.com/ex/{product}/{cloudId}`.
    pub api_base_url: String,
    /// The Forge environment the app runs in.
    pub environment: EnvironmentClaim,
    /// The module invoked, when the call is a module's.
    #[serde(default)]
    pub module: Option<ModuleClaim>,
}

/// `app.environment`.
#[derive(Debug, Deserialize)]
pub struct EnvironmentClaim {
    /// `PRODUCTION`, `STAGING` or `DEVELOPMENT`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The environment's id.
    pub id: String,
}

/// `app.module`.
#[derive(Debug, Deserialize)]
pub struct ModuleClaim {
    /// Module type (e.g. `core:endpoint`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Module key.
    pub key: String,
}

/// What a verified FIT establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedFit {
    /// The site's cloudId (lower case), read from the signed `app.apiBaseUrl`.
    pub cloud_id: String,
    /// The product API base (`https://api.atlassian.com/ex/jira/{cloudId}`).
    pub api_base_url: String,
    /// The installation's ARI.
    pub installation_id: String,
    /// The environment type.
    pub environment: String,
    /// The module key, when a module was invoked.
    pub module: Option<String>,
    /// The Atlassian account that invoked the app from a UI module, if any.
    pub principal: Option<String>,
}

/// What claims must satisfy besides the signature.
#[derive(Debug, Clone)]
pub struct Expect {
    /// Our app's ARI (`aud` and `app.id`).
    pub app_id: String,
    /// The environment type accepted.
    pub environment: String,
    /// Hosts `app.apiBaseUrl` may name.
    pub api_base_hosts: Vec<String>,
}

/// A lower-case UUID (8-4-4-4-12 hex), when `s` is one (any case).
pub fn uuid(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let ok = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    ok.then(|| s.to_ascii_lowercase())
}

/// The `{uuid}` of `ari:cloud:ecosystem::{kind}/{uuid}`.
pub fn ari_uuid(ari: &str, kind: &str) -> Option<String> {
    ari.strip_prefix("ari:cloud:ecosystem::")
        .and_then(|r| r.strip_prefix(kind))
        .and_then(|r| r.strip_prefix('/'))
        .and_then(uuid)
}

/// `(cloudId, normalized base)` of an `apiBaseUrl` on one of `hosts`.
fn api_base(url: &str, hosts: &[String]) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or("app.apiBaseUrl is not https")?;
    let mut parts = rest.split('/');
    let (host, ex, product, cloud) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    if parts.next().is_some() {
        return Err("app.apiBaseUrl has an unexpected path".into());
    }
    if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return Err("app.apiBaseUrl names a host that is not an Atlassian API host".into());
    }
    if ex != "ex" || !matches!(product, "jira" | "confluence") {
        return Err("app.apiBaseUrl is not /ex/{jira|confluence}/{cloudId}".into());
    }
    let cloud = uuid(cloud).ok_or("app.apiBaseUrl does not end in a cloudId")?;
    Ok((
        cloud.clone(),
        format!("https://{}/ex/{product}/{cloud}", host.to_ascii_lowercase()),
    ))
}

/// Checks claims whose signature, `exp` and `nbf` were verified.
///
/// # Errors
/// Naming the claim that is wrong.
pub fn check_claims(claims: &FitClaims, expect: &Expect) -> Result<VerifiedFit, String> {
    if claims.iss != ISSUER {
        return Err("iss is not forge/invocation-token".into());
    }
    if claims.aud != expect.app_id {
        return Err("aud is not this app".into());
    }
    if claims.app.id != expect.app_id {
        return Err("app.id is not this app".into());
    }
    let installation = ari_uuid(&claims.app.installation_id, "installation")
        .ok_or("app.installationId is not an installation ARI")?;
    if claims.app.environment.kind != expect.environment {
        return Err(format!(
            "app.environment.type is not {} (this broker accepts one environment)",
            expect.environment
        ));
    }
    let (cloud_id, api_base_url) = api_base(&claims.app.api_base_url, &expect.api_base_hosts)?;
    // Names kept only when short and printable: they go into the audit record and the log.
    let shown =
        |v: &str| (v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())).then(|| v.to_owned());
    let module = claims.app.module.as_ref();
    Ok(VerifiedFit {
        cloud_id,
        api_base_url,
        installation_id: format!("ari:cloud:ecosystem::installation/{installation}"),
        environment: claims.app.environment.kind.clone(),
        module: module.and_then(|m| shown(&m.key)),
        principal: claims.principal.as_deref().and_then(shown),
    })
}

/// The Forge JWKS, cached by `kid`.
pub struct Jwks {
    url: String,
    http: Http,
    timeout: Duration,
    keys: Mutex<HashMap<String, Arc<DecodingKey>>>,
    /// When the last fetch started; held while fetching (single flight).
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    fetches: std::sync::atomic::AtomicU64,
}

impl Jwks {
    /// A cache of the JWKS at `url`, fetched within `timeout`.
    pub fn new(url: String, http: Http, timeout: Duration) -> Jwks {
        Jwks {
            url,
            http,
            timeout,
            keys: Mutex::new(HashMap::new()),
            last_fetch: tokio::sync::Mutex::new(None),
            fetches: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn cached(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.keys.lock().ok().and_then(|k| k.get(kid).cloned())
    }

    /// The key `kid`: cached, or after one refetch (single flight, at most one per
    /// [`REFETCH_COOLDOWN`]).
    async fn key(&self, kid: &str) -> Result<Arc<DecodingKey>, String> {
        if let Some(k) = self.cached(kid) {
            // Known, and fetched within the hour (or a refresh is already running, or
            // failed moments ago): use it.
            let stale = match self.last_fetch.try_lock() {
                Ok(last) => last.is_some_and(|t| t.elapsed() >= MAX_KEYS_AGE),
                Err(_) => false,
            };
            if !stale {
                return Ok(k);
            }
        }
        let mut last = self.last_fetch.lock().await;
        let age = last.map(|t| t.elapsed());
        // Another request may have fetched while this one waited.
        if let Some(k) = self.cached(kid) {
            if age.is_some_and(|a| a < MAX_KEYS_AGE) {
                return Ok(k);
            }
        }
        if age.is_some_and(|a| a < REFETCH_COOLDOWN) {
            return Err("unknown kid (the key set was fetched moments ago)".into());
        }
        *last = Some(Instant::now());
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.fetch().await {
            // An empty or unusable answer never wipes the keys held.
            Ok(fresh) if !fresh.is_empty() => {
                if let Ok(mut keys) = self.keys.lock() {
                    *keys = fresh;
                }
            }
            Ok(_) => tracing::warn!("the Forge key set has no usable key; keeping the keys held"),
            Err(e) => {
                if self.cached(kid).is_none() {
                    return Err(e);
                }
                tracing::warn!(error = %e, "the Forge key set could not be refreshed; keeping the keys held");
            }
        }
        self.cached(kid)
            .ok_or_else(|| "unknown kid (not in the Forge key set)".into())
    }

    /// How many times the key set was fetched.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
        let request = http::Request::get(&self.url)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|_| "the JWKS request could not be built".to_owned())?;
        let answer = self
            .http
            .exchange(request, self.timeout, "the Forge key set", &[])
            .await
            .map_err(|e| e.to_string())?;
        if answer.status != 200 {
            return Err(format!("the Forge key set answered {}", answer.status));
        }
        parse_jwks(&answer.body)
    }
}

/// The usable keys of a JWKS document: RSA, for signing (or unmarked), RS256 (or
/// unmarked), with a `kid`; at most [`MAX_KEYS`].
///
/// # Errors
/// When the document is not a key set.
pub fn parse_jwks(body: &[u8]) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
    let set: JwkSet =
        serde_json::from_slice(body).map_err(|_| "the Forge key set is not a JWKS".to_owned())?;
    let mut keys = HashMap::new();
    for jwk in set.keys {
        let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let use_ok = matches!(
            jwk.common.public_key_use,
            None | Some(PublicKeyUse::Signature)
        );
        let alg_ok = matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::RS256));
        if !use_ok || !alg_ok || kid.len() > 128 || keys.len() >= MAX_KEYS {
            continue;
        }
        // From the RSA components only: nothing else in the JWK is trusted.
        if let Ok(key) = DecodingKey::from_rsa_components(&rsa.n, &rsa.e) {
            keys.insert(kid, Arc::new(key));
        }
    }
    Ok(keys)
}

/// Verifies a FIT: signature (RS256, key by `kid` from the JWKS), `iss`, `aud`, `exp`,
/// `nbf` (leeway `leeway_s`), then the claims.
///
/// # Errors
/// Why it is refused (for the broker's throttled log; never the token).
pub async fn verify(
    token: &str,
    jwks: &Jwks,
    expect: &Expect,
    leeway_s: u64,
) -> Result<VerifiedFit, String> {
    if token.len() > MAX_FIT_BYTES {
        return Err("the FIT is too long".into());
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed FIT header")?;
    if header.alg != Algorithm::RS256 {
        return Err("the FIT is not RS256".into());
    }
    let kid = header.kid.ok_or("the FIT names no kid")?;
    let key = jwks.key(&kid).await?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.leeway = leeway_s;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud"]);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[&expect.app_id]);
    let data = jsonwebtoken::decode::<FitClaims>(token, &key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::ExpiredSignature => "the FIT has expired".to_owned(),
            K::ImmatureSignature => "the FIT is not valid yet (nbf)".to_owned(),
            K::InvalidIssuer => "iss is not forge/invocation-token".to_owned(),
            K::InvalidAudience => "aud is not this app".to_owned(),
            K::InvalidSignature => "the FIT's signature does not verify".to_owned(),
            K::MissingRequiredClaim(c) => format!("the FIT has no {c}"),
            K::Json(_) => "a FIT claim is missing or of the wrong type".to_owned(),
            _ => "the FIT does not verify".to_owned(),
        }
    })?;
    let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX);
    let leeway = i64::try_from(leeway_s).unwrap_or(0);
    if data.claims.exp - now > MAX_FIT_LIFETIME_S + leeway {
        return Err("the FIT claims to live longer than a Forge invocation token does".into());
    }
    check_claims(&data.claims, expect)
}

/// The `exp` of an app system token (a JWT read without verification: it is Atlassian's to
/// verify; the broker only needs when it stops working).
///
/// # Errors
/// When the token is not a JWT with a numeric `exp`.
pub fn system_token_exp(token: &str) -> Result<i64, String> {
    if token.is_empty() || token.len() > MAX_SYSTEM_TOKEN_BYTES || !crate::is_jwt_text(token) {
        return Err("the system token is not a compact JWT".into());
    }
    let mut parts = token.split('.');
    let payload = parts
        .nth(1)
        .ok_or("the system token is not a compact JWT")?;
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "the system token's payload is not base64url")?;
    #[derive(Deserialize)]
    struct Exp {
        exp: i64,
    }
    serde_json::from_slice::<Exp>(&raw)
        .map(|e| e.exp)
        .map_err(|_| "the system token has no numeric exp".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect() -> Expect {
        Expect {
            app_id: "ari:cloud:ecosystem::app/11111111-2222-3333-4444-555555555555".into(),
            environment: "PRODUCTION".into(),
            api_base_hosts: vec!["api.atlassian.com".into()],
        }
    }

    fn claims(patch: impl FnOnce(&mut serde_json::Value)) -> Result<VerifiedFit, String> {
        let mut v = serde_json::json!({
            "iss": ISSUER, "aud": expect().app_id, "exp": 2, "nbf": 1,
            "app": {
                "id": expect().app_id,
                "installationId": "ari:cloud:ecosystem::installation/AAAAAAAA-2222-3333-4444-555555555555",
                "apiBaseUrl": "https://api.atlassian.com/ex/jira/0b1c2d3e-2222-3333-4444-555555555555",
                "environment": {"type": "PRODUCTION", "id": "e"},
                "module": {"type": "core:endpoint", "key": "remote-trigger"}
            }
        });
        patch(&mut v);
        let c: FitClaims = serde_json::from_value(v).map_err(|e| e.to_string())?;
        check_claims(&c, &expect())
    }

    #[test]
    fn good_claims_name_the_site_and_installation() {
        let v = claims(|_| {}).unwrap();
        assert_eq!(v.cloud_id, "0b1c2d3e-2222-3333-4444-555555555555");
        assert_eq!(
            v.installation_id,
            "ari:cloud:ecosystem::installation/aaaaaaaa-2222-3333-4444-555555555555"
        );
        assert_eq!(v.module.as_deref(), Some("remote-trigger"));
    }

    #[test]
    fn wrong_claims_are_refused() {
        for (what, patch) in [
            ("iss", serde_json::json!({"iss": "someone"})),
            (
                "aud",
                serde_json::json!({"aud": "ari:cloud:ecosystem::app/99999999-2222-3333-4444-555555555555"}),
            ),
            ("aud array", serde_json::json!({"aud": ["x"]})),
            ("exp string", serde_json::json!({"exp": "2"})),
        ] {
            let r = claims(|v| {
                for (k, x) in patch.as_object().unwrap() {
                    v[k] = x.clone();
                }
            });
            assert!(r.is_err(), "{what}");
        }
        for (what, field, value) in [
            (
                "installation number",
                "installationId",
                serde_json::json!(42),
            ),
            (
                "installation ARI",
                "installationId",
                serde_json::json!("ari:cloud:ecosystem::app/aaaaaaaa-2222-3333-4444-555555555555"),
            ),
            (
                "foreign host",
                "apiBaseUrl",
                serde_json::json!(
                    "https://evil.example/ex/jira/0b1c2d3e-2222-3333-4444-555555555555"
                ),
            ),
            (
                "http",
                "apiBaseUrl",
                serde_json::json!(
                    "http://api.atlassian.com/ex/jira/0b1c2d3e-2222-3333-4444-555555555555"
                ),
            ),
            (
                "extra path",
                "apiBaseUrl",
                serde_json::json!(
                    "https://api.atlassian.com/ex/jira/0b1c2d3e-2222-3333-4444-555555555555/x"
                ),
            ),
            (
                "environment",
                "environment",
                serde_json::json!({"type": "DEVELOPMENT", "id": "e"}),
            ),
            (
                "app id",
                "id",
                serde_json::json!("ari:cloud:ecosystem::app/99999999-2222-3333-4444-555555555555"),
            ),
        ] {
            let r = claims(|v| v["app"][field] = value.clone());
            assert!(r.is_err(), "{what}");
        }
        let r = claims(|v| {
            v["app"].as_object_mut().unwrap().remove("installationId");
        });
        assert!(r.is_err());
    }

    #[test]
    fn only_rsa_signing_keys_with_a_kid_are_kept() {
        // A real 2048-bit modulus is not needed to check the filtering: from_rsa_components
        // accepts any base64url n/e.
        let n = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";
        let key = |kid: Option<&str>, kty: &str, usage: &str, alg: &str| {
            let mut k =
                serde_json::json!({"kty": kty, "use": usage, "alg": alg, "n": n, "e": "AQAB"});
            if kty == "EC" {
                k = serde_json::json!({"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0", "use": usage, "alg": "ES256"});
            }
            if let Some(kid) = kid {
                k["kid"] = serde_json::json!(kid);
            }
            k
        };
        let set = serde_json::json!({"keys": [
            key(Some("good"), "RSA", "sig", "RS256"),
            key(None, "RSA", "sig", "RS256"),
            key(Some("enc"), "RSA", "enc", "RSA-OAEP"),
            key(Some("ps"), "RSA", "sig", "PS256"),
            key(Some("ec"), "EC", "sig", "ES256"),
        ]});
        let keys = parse_jwks(set.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["good"]);
        assert!(parse_jwks(br#"{"keys": []}"#).unwrap().is_empty());
        assert!(parse_jwks(b"<html>").is_err());
    }

    #[test]
    fn system_token_exp_is_read() {
        use base64::Engine as _;
        let p = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"exp":1234}"#);
        assert_eq!(system_token_exp(&format!("aaa.{p}.sig")).unwrap(), 1234);
        assert!(system_token_exp("not a jwt").is_err());
        assert!(system_token_exp("a.b.c").is_err());
    }
}
