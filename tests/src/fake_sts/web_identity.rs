//! `AssumeRoleWithWebIdentity` in the fake STS, as the real one answers it (PROTOCOLS.md, AWS
//! section and "Own OIDC issuer"): an unsigned form POST whose credential is the
//! `WebIdentityToken`, a JWT (RS256/384/512, ES256/384) from an issuer registered as an IAM
//! OIDC identity provider. STS finds the provider from `iss` (`https://` + the provider URL),
//! the key by `kid` in the provider's JWKS, checks the signature, that `aud` is one of the
//! provider's client ids and that the token has not expired; then the role's trust policy
//! decides, by `StringEquals` on `{url}:aud` and `{url}:sub`. A role without a `sub` condition
//! accepts every token the issuer mints: the trap the broker's probe must detect.
//!
//! Errors, in STS's words: `InvalidIdentityToken` 400 (no provider for the issuer, "Incorrect
//! token audience", unknown key, bad signature, malformed token), `ExpiredTokenException` 400
//! "Token is expired", `AccessDenied` 403 "Not authorized to perform
//! sts:AssumeRoleWithWebIdentity" (trust policy). The request log keeps the token's claims
//! (`WebIdentityToken.iss`, `.sub`, `.aud`, `.jti`, `.kid`), never the token.

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::{xml_escape, Answer, SessionGrant, State};

/// The `sts:AssumeRoleWithWebIdentity` statement of a role's trust policy:
/// `"Principal": {"Federated": "arn:aws:iam::ACCOUNT:oidc-provider/{provider_host}"}` with
/// `StringEquals` conditions on `{provider_host}:aud` and `{provider_host}:sub`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebIdentityTrust {
    /// The IAM OIDC provider URL (issuer without `https://`) the statement trusts.
    pub provider_host: String,
    /// `{provider_host}:aud` must equal this (None: no audience condition).
    pub aud: Option<String>,
    /// `{provider_host}:sub` must equal this (None: no subject condition — the dangerous
    /// role that accepts every token of the issuer, whoever it was minted for).
    pub sub: Option<String>,
}

/// One IAM OIDC identity provider registered in the account.
#[derive(Clone, Debug)]
pub struct OidcProvider {
    /// The client ids (audiences): a token's `aud` must be one of them.
    pub client_ids: Vec<String>,
    /// The issuer's JWKS (`{"keys": [...]}`), as STS would fetch it from the `jwks_uri`.
    pub jwks: Value,
}

/// A JWK (`kty` RSA, `use` sig, `alg` RS256, `kid`, `n`, `e`) for the PKCS#1 DER public
/// key `public_der` (what `aws_lc_rs::rsa::KeyPair::public_key()` gives, or
/// `fake_github::AppKey::public_der`), so a test can register a key of its own.
pub fn rsa_jwk(public_der: &[u8], kid: &str) -> Value {
    let b64 = |b: &[u8]| {
        let b = &b[b.iter().take_while(|x| **x == 0).count()..];
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    };
    // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
    let parts = crate::fake_github::der_element(public_der).and_then(|(_, seq, _)| {
        let (_, n, rest) = crate::fake_github::der_element(seq)?;
        let (_, e, _) = crate::fake_github::der_element(rest)?;
        Some((n, e))
    });
    let (n, e): (&[u8], &[u8]) = parts.unwrap_or_default();
    serde_json::json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": b64(n), "e": b64(e)})
}

/// The form parameters as the request log keeps them: `WebIdentityToken` replaced by the
/// claims it carries (`WebIdentityToken.iss`, `.sub`, `.aud` — several joined by `,` —,
/// `.jti`, and the header's `.kid`), read without verification: what the caller sent.
pub(super) fn loggable(params: &HashMap<String, String>) -> HashMap<String, String> {
    let mut out = params.clone();
    let Some(token) = out.remove("WebIdentityToken") else {
        return out;
    };
    let claims: Value =
        jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap_or(Value::Null);
    for name in ["iss", "sub", "jti"] {
        if let Some(v) = claims.get(name).and_then(Value::as_str) {
            out.insert(format!("WebIdentityToken.{name}"), v.to_owned());
        }
    }
    let aud = audiences(&claims);
    if !aud.is_empty() {
        out.insert("WebIdentityToken.aud".to_owned(), aud.join(","));
    }
    if let Some(kid) = jsonwebtoken::decode_header(&token).ok().and_then(|h| h.kid) {
        out.insert("WebIdentityToken.kid".to_owned(), kid);
    }
    out
}

/// `aud` as a list: a string, or an array of strings (anything else: none).
fn audiences(claims: &Value) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

const NOT_VALIDATED: &str = "The web identity token that was passed could not be validated by Amazon Web Services. Get a new identity token from the identity provider and then retry the request.";
const NO_KEY: &str = "Couldn't retrieve verification key from your identity provider,  please reference AssumeRoleWithWebIdentity documentation for requirements";

/// The claims of a token STS accepted.
struct Verified {
    iss: String,
    sub: String,
    /// The `aud` value that matched a client id.
    aud: String,
}

impl State {
    fn invalid_token(&self, message: &str) -> Response<Full<Bytes>> {
        self.error(
            StatusCode::BAD_REQUEST,
            "Sender",
            "InvalidIdentityToken",
            message,
        )
    }

    /// Verifies the token as STS does, in its order: shape and algorithm, the provider by
    /// `iss`, the key by `kid`, the signature, `exp`, then `aud` against the client ids.
    fn verify_web_identity(&self, token: &str) -> Result<Verified, Box<Answer>> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Box::new(self.invalid_token(NOT_VALIDATED)))?;
        let accepted = [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::ES256,
            Algorithm::ES384,
        ];
        if !accepted.contains(&header.alg) {
            return Err(Box::new(self.invalid_token(NOT_VALIDATED)));
        }
        let unverified: Value = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| Box::new(self.invalid_token(NOT_VALIDATED)))?;
        let Some(iss) = unverified.get("iss").and_then(Value::as_str) else {
            return Err(Box::new(self.invalid_token(NOT_VALIDATED)));
        };
        let provider = iss
            .strip_prefix("https://")
            .and_then(|url| self.oidc_providers.lock().unwrap().get(url).cloned());
        let Some(provider) = provider else {
            return Err(Box::new(self.invalid_token(&format!(
                "No OpenIDConnect provider found in your account for {iss}"
            ))));
        };
        let key = serde_json::from_value::<JwkSet>(provider.jwks.clone())
            .ok()
            .and_then(|set| {
                let kid = header.kid.as_deref()?;
                DecodingKey::from_jwk(set.find(kid)?).ok()
            });
        let Some(key) = key else {
            return Err(Box::new(self.invalid_token(NO_KEY)));
        };
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.validate_aud = false; // checked below against the client ids
        validation.validate_nbf = true;
        validation.leeway = 0;
        let claims = match jsonwebtoken::decode::<Value>(token, &key, &validation) {
            Ok(data) => data.claims,
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => {
                return Err(Box::new(self.error(
                    StatusCode::BAD_REQUEST,
                    "Sender",
                    "ExpiredTokenException",
                    "Token is expired",
                )));
            }
            Err(_) => return Err(Box::new(self.invalid_token(NOT_VALIDATED))),
        };
        let Some(aud) = audiences(&claims)
            .into_iter()
            .find(|a| provider.client_ids.contains(a))
        else {
            return Err(Box::new(self.invalid_token("Incorrect token audience")));
        };
        let Some(sub) = claims.get("sub").and_then(Value::as_str) else {
            return Err(Box::new(self.invalid_token(NOT_VALIDATED)));
        };
        Ok(Verified {
            iss: iss.to_owned(),
            sub: sub.to_owned(),
            aud,
        })
    }

    /// `Action=AssumeRoleWithWebIdentity`: no caller credential; the request limits shared
    /// with AssumeRole, the token, the role's web-identity trust, then DurationSeconds and
    /// the packed session policies.
    pub(super) fn assume_role_with_web_identity(
        &self,
        p: &HashMap<String, String>,
    ) -> Response<Full<Bytes>> {
        let role_arn = p.get("RoleArn").cloned().unwrap_or_default();
        let session = p.get("RoleSessionName").cloned().unwrap_or_default();
        let duration = match self.session_limits(p) {
            Ok(d) => d,
            Err(refusal) => return *refusal,
        };
        let token = match p.get("WebIdentityToken") {
            None => return self.validation_error("1 validation error detected: Value null at 'webIdentityToken' failed to satisfy constraint: Member must not be null"),
            Some(t) if t.len() < 4 => return self.validation_error("1 validation error detected: Value at 'webIdentityToken' failed to satisfy constraint: Member must have length greater than or equal to 4"),
            Some(t) if t.len() > 20_000 => return self.validation_error("1 validation error detected: Value at 'webIdentityToken' failed to satisfy constraint: Member must have length less than or equal to 20000"),
            Some(t) => t,
        };
        // The role's account: where the provider lives and STS must be active.
        let role_account = role_arn.split(':').nth(4).unwrap_or_default().to_owned();
        if self.faults.lock().unwrap().region_disabled {
            return self.region_disabled(&role_account);
        }
        let verified = match self.verify_web_identity(token) {
            Ok(v) => v,
            Err(refusal) => return *refusal,
        };

        // The trust policy: the Federated principal is this provider, and the StringEquals
        // conditions it has hold.
        let role = self.roles.lock().unwrap().get(&role_arn).cloned();
        let url = verified.iss.trim_start_matches("https://");
        let trusted = role
            .as_ref()
            .and_then(|r| r.web_identity.as_ref())
            .is_some_and(|t| {
                t.provider_host == url
                    && t.aud.as_ref().is_none_or(|a| *a == verified.aud)
                    && t.sub.as_ref().is_none_or(|s| *s == verified.sub)
            });
        let Some(role) = role.filter(|_| trusted) else {
            return self.error(
                StatusCode::FORBIDDEN,
                "Sender",
                "AccessDenied",
                "Not authorized to perform sts:AssumeRoleWithWebIdentity",
            );
        };
        let packed = match self.session_fits(p, duration, role.max_session_s) {
            Ok(packed) => packed,
            Err(refusal) => return *refusal,
        };
        let provider_arn = format!("arn:aws:iam::{}:oidc-provider/{url}", role.account);
        self.issue_session(SessionGrant {
            action: "AssumeRoleWithWebIdentity",
            role_arn: &role_arn,
            session: &session,
            role: &role,
            duration,
            packed,
            before: format!(
                "    <SubjectFromWebIdentityToken>{}</SubjectFromWebIdentityToken>\n    <Audience>{}</Audience>\n",
                xml_escape(&verified.sub),
                xml_escape(&verified.aud)
            ),
            after: format!("    <Provider>{}</Provider>\n", xml_escape(&provider_arn)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::FakeRole;
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::json;

    const HOST: &str = "broker.example.com";
    const ROLE: &str = "arn:aws:iam::222222222222:role/CredbrokerAccess";
    const SUB: &str = "cb-0123456789abcdefghijABCDEFGHIJ0123456789";

    struct Issuer {
        key: crate::fake_github::AppKey,
    }

    impl Issuer {
        fn token(&self, alg: Algorithm, kid: &str, claims: Value) -> String {
            let mut header = jsonwebtoken::Header::new(alg);
            header.kid = Some(kid.to_owned());
            let enc =
                jsonwebtoken::EncodingKey::from_rsa_pem(self.key.private_pem.as_bytes()).unwrap();
            jsonwebtoken::encode(&header, &claims, &enc).unwrap()
        }

        fn claims(&self, sub: &str, aud: &str, exp_in: i64) -> Value {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            json!({"iss": format!("https://{HOST}"), "sub": sub, "aud": aud,
                   "iat": now, "nbf": now, "exp": now + exp_in, "jti": "j-1"})
        }
    }

    fn setup(sub: Option<&str>) -> (State, Issuer) {
        let issuer = Issuer {
            key: crate::fake_github::AppKey::generate(),
        };
        let s = State::default();
        s.oidc_providers.lock().unwrap().insert(
            HOST.to_owned(),
            OidcProvider {
                client_ids: vec!["sts.amazonaws.com".to_owned()],
                jwks: json!({"keys": [rsa_jwk(&issuer.key.public_der, "k1")]}),
            },
        );
        s.roles.lock().unwrap().insert(
            ROLE.to_owned(),
            FakeRole {
                account: "222222222222".into(),
                web_identity: Some(WebIdentityTrust {
                    provider_host: HOST.to_owned(),
                    aud: Some("sts.amazonaws.com".to_owned()),
                    sub: sub.map(str::to_owned),
                }),
                ..FakeRole::default()
            },
        );
        (s, issuer)
    }

    fn form(token: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut p: HashMap<String, String> = [
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", ROLE),
            ("RoleSessionName", "cb.t.i"),
            ("WebIdentityToken", token),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in extra {
            p.insert((*k).to_owned(), (*v).to_owned());
        }
        p
    }

    async fn call(s: &State, p: &HashMap<String, String>) -> (u16, String) {
        let r = s.assume_role_with_web_identity(p);
        let status = r.status().as_u16();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_pinned_subject_gets_a_session_and_nothing_else_does() {
        let (s, iss) = setup(Some(SUB));
        let good = iss.token(
            Algorithm::RS256,
            "k1",
            iss.claims(SUB, "sts.amazonaws.com", 300),
        );
        let (st, body) = call(&s, &form(&good, &[])).await;
        assert_eq!(st, 200, "{body}");
        let subject = format!("<SubjectFromWebIdentityToken>{SUB}</SubjectFromWebIdentityToken>");
        for part in [
            "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">",
            "<AssumeRoleWithWebIdentityResult>",
            subject.as_str(),
            "<Audience>sts.amazonaws.com</Audience>",
            "<Arn>arn:aws:sts::222222222222:assumed-role/CredbrokerAccess/cb.t.i</Arn>",
            "<AccessKeyId>ASIAFAKE",
            "<Provider>arn:aws:iam::222222222222:oidc-provider/broker.example.com</Provider>",
            "<ResponseMetadata>",
        ] {
            assert!(body.contains(part), "missing {part} in {body}");
        }
        // RS384 and RS512 verify too.
        for alg in [Algorithm::RS384, Algorithm::RS512] {
            let t = iss.token(alg, "k1", iss.claims(SUB, "sts.amazonaws.com", 300));
            assert_eq!(call(&s, &form(&t, &[])).await.0, 200);
        }
        // A foreign subject: the trust policy refuses.
        let foreign = iss.token(
            Algorithm::RS256,
            "k1",
            iss.claims("cb-other", "sts.amazonaws.com", 300),
        );
        let (st, body) = call(&s, &form(&foreign, &[])).await;
        assert_eq!(st, 403);
        assert!(
            body.contains("<Code>AccessDenied</Code>")
                && body.contains("Not authorized to perform sts:AssumeRoleWithWebIdentity"),
            "{body}"
        );
        // The same token on a role without a sub condition: accepted (the trap).
        s.roles
            .lock()
            .unwrap()
            .get_mut(ROLE)
            .unwrap()
            .web_identity
            .as_mut()
            .unwrap()
            .sub = None;
        assert_eq!(call(&s, &form(&foreign, &[])).await.0, 200);
        // A role that trusts no web identity.
        s.roles.lock().unwrap().get_mut(ROLE).unwrap().web_identity = None;
        assert_eq!(call(&s, &form(&good, &[])).await.0, 403);
    }

    #[tokio::test]
    async fn token_refusals_in_sts_words() {
        let (s, iss) = setup(Some(SUB));
        let refused = |code: &'static str, message: &'static str| {
            move |(st, body): (u16, String)| {
                assert!(
                    body.contains(&format!("<Code>{code}</Code>")) && body.contains(message),
                    "{st} {body}"
                );
                st
            }
        };
        // Expired.
        let t = iss.token(
            Algorithm::RS256,
            "k1",
            iss.claims(SUB, "sts.amazonaws.com", -10),
        );
        assert_eq!(
            refused("ExpiredTokenException", "Token is expired")(call(&s, &form(&t, &[])).await),
            400
        );
        // Audience not among the client ids.
        let t = iss.token(Algorithm::RS256, "k1", iss.claims(SUB, "other", 300));
        assert_eq!(
            refused("InvalidIdentityToken", "Incorrect token audience")(
                call(&s, &form(&t, &[])).await
            ),
            400
        );
        // An issuer with no provider.
        let mut c = iss.claims(SUB, "sts.amazonaws.com", 300);
        c["iss"] = json!("https://elsewhere.example.com");
        let t = iss.token(Algorithm::RS256, "k1", c);
        assert_eq!(
            refused(
                "InvalidIdentityToken",
                "No OpenIDConnect provider found in your account for https://elsewhere.example.com"
            )(call(&s, &form(&t, &[])).await),
            400
        );
        // Unknown kid; another key under a known kid; not a JWT; HS256.
        let t = iss.token(
            Algorithm::RS256,
            "k2",
            iss.claims(SUB, "sts.amazonaws.com", 300),
        );
        assert_eq!(
            refused("InvalidIdentityToken", "verification key")(call(&s, &form(&t, &[])).await),
            400
        );
        let other = Issuer {
            key: crate::fake_github::AppKey::generate(),
        };
        let t = other.token(
            Algorithm::RS256,
            "k1",
            iss.claims(SUB, "sts.amazonaws.com", 300),
        );
        assert_eq!(
            refused("InvalidIdentityToken", "could not be validated")(
                call(&s, &form(&t, &[])).await
            ),
            400
        );
        assert_eq!(
            refused("InvalidIdentityToken", "could not be validated")(
                call(&s, &form("not.a.jwt", &[])).await
            ),
            400
        );
        let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let t = jsonwebtoken::encode(
            &h,
            &iss.claims(SUB, "sts.amazonaws.com", 300),
            &jsonwebtoken::EncodingKey::from_secret(b"k").unwrap(),
        )
        .unwrap();
        assert_eq!(call(&s, &form(&t, &[])).await.0, 400);
        // Request limits shared with AssumeRole.
        let good = iss.token(
            Algorithm::RS256,
            "k1",
            iss.claims(SUB, "sts.amazonaws.com", 300),
        );
        let (st, body) = call(&s, &form(&good, &[("DurationSeconds", "7200")])).await;
        assert_eq!(st, 400);
        assert!(body.contains("MaxSessionDuration"), "{body}");
        let (st, body) = call(&s, &form(&good, &[("Policy", "{")])).await;
        assert_eq!(st, 400);
        assert!(body.contains("MalformedPolicyDocument"), "{body}");
        let mut p = form(&good, &[]);
        p.remove("WebIdentityToken");
        assert!(call(&s, &p).await.1.contains("webIdentityToken"));
    }

    #[test]
    fn the_log_keeps_claims_not_the_token() {
        let (_, iss) = setup(Some(SUB));
        let t = iss.token(
            Algorithm::RS256,
            "k1",
            iss.claims(SUB, "sts.amazonaws.com", 300),
        );
        let logged = loggable(&form(&t, &[]));
        assert!(!logged.contains_key("WebIdentityToken"));
        assert!(logged.values().all(|v| !v.contains(&t)));
        assert_eq!(logged["WebIdentityToken.sub"], SUB);
        assert_eq!(logged["WebIdentityToken.aud"], "sts.amazonaws.com");
        assert_eq!(logged["WebIdentityToken.iss"], "https://broker.example.com");
        assert_eq!(logged["WebIdentityToken.jti"], "j-1");
        assert_eq!(logged["WebIdentityToken.kid"], "k1");
    }
}
