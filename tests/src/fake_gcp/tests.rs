//! The fake against itself over loopback HTTP: what real STS and IAM Credentials accept and
//! refuse, so a broker test that passes against it means something.

use super::*;
use crate::fake_forge::ForgeKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const SA: &str = "credbroker-reader@acme-prod.iam.gserviceaccount.com";
const ISSUER: &str = "https://broker.example.com";
const OWN: &str = "cb-own0000000000000000000000000000000000000";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform.read-only";

fn jwt(key: &ForgeKey, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    let enc = EncodingKey::from_rsa_pem(key.key.private_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &enc).unwrap()
}

fn claims(spec: &ProviderSpec, sub: &str) -> Value {
    let t = now();
    json!({"iss": ISSUER, "sub": sub, "aud": spec.jwt_audience(), "iat": t, "nbf": t,
           "exp": t + 300, "jti": "jti-1"})
}

async fn post(url: &str, path: &str, bearer: Option<&str>, body: String) -> (u16, Value) {
    let authority = url.trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method("POST")
        .uri(path)
        .header("host", authority);
    if let Some(b) = bearer {
        req = req
            .header("authorization", format!("Bearer {b}"))
            .header("content-type", "application/json");
    } else {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The exchange form for `token` (every value here is form-safe as it is).
fn form(audience: &str, token: &str) -> String {
    format!("grant_type={GRANT_TYPE}&audience={audience}&scope=https://www.googleapis.com/auth/cloud-platform&requested_token_type={ACCESS_TOKEN_TYPE}&subject_token={token}&subject_token_type={JWT_TOKEN_TYPE}")
}

async fn setup() -> (FakeGcp, ForgeKey, ProviderSpec) {
    let key = ForgeKey::generate("k1");
    let jwks = json!({"keys": [key.jwk()]});
    let mut spec = ProviderSpec::new(
        "123456789012",
        "credbroker",
        "credbroker",
        ISSUER,
        JwksSource::Inline(jwks),
    );
    spec.subject_condition = Some(OWN.into());
    let fake = FakeGcp::start().await;
    fake.add_provider(spec.clone());
    fake.grant_workload_identity_user(SA, &principal("123456789012", "credbroker", OWN));
    (fake, key, spec)
}

async fn exchange(fake: &FakeGcp, spec: &ProviderSpec, token: &str) -> (u16, Value) {
    post(
        &fake.url,
        "/v1/token",
        None,
        form(&spec.sts_audience(), token),
    )
    .await
}

async fn impersonate(fake: &FakeGcp, bearer: &str, body: Value) -> (u16, Value) {
    let path = format!(
        "/v1/projects/-/serviceAccounts/{}:generateAccessToken",
        SA.replace('@', "%40")
    );
    post(&fake.url, &path, Some(bearer), body.to_string()).await
}

#[tokio::test]
async fn own_subject_exchanges_and_impersonates() {
    let (fake, key, spec) = setup().await;
    let (s, v) = exchange(&fake, &spec, &jwt(&key, &claims(&spec, OWN))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["expires_in"], 3599);
    assert_eq!(v["issued_token_type"], ACCESS_TOKEN_TYPE);
    let fed = v["access_token"].as_str().unwrap();
    assert!(fed.starts_with("ya29.fed-"));
    let (s, v) = impersonate(&fake, fed, json!({"scope": [SCOPE], "lifetime": "3600s"})).await;
    assert_eq!(s, 200, "{v}");
    let info = fake.token_info(v["accessToken"].as_str().unwrap()).unwrap();
    assert_eq!(
        (info.service_account.as_str(), info.scopes.clone()),
        (SA, vec![SCOPE.to_owned()])
    );
    assert!(v["expireTime"].as_str().unwrap().ends_with('Z'));
    let requests = fake.requests();
    assert_eq!(requests[0].claims.as_ref().unwrap()["sub"], OWN);
    assert!(!requests[0].fields.contains_key("subject_token"));
    assert_eq!(requests[1].service_account.as_deref(), Some(SA));
    assert_eq!((fake.sts_calls(), fake.iam_calls()), (1, 1));
}

#[tokio::test]
async fn foreign_subject_is_refused_unless_the_customer_left_it_open() {
    let (fake, key, spec) = setup().await;
    let foreign = jwt(&key, &claims(&spec, "cb-foreign"));
    let (s, v) = exchange(&fake, &spec, &foreign).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("unauthorized_client")));
    assert_eq!(v["error_description"], CONDITION_REJECTED);
    // No attribute condition: STS accepts it, the principal grant still refuses it.
    fake.update_provider(&spec.resource(), |p| p.subject_condition = None);
    let (s, v) = exchange(&fake, &spec, &foreign).await;
    assert_eq!(s, 200, "{v}");
    let fed = v["access_token"].as_str().unwrap().to_owned();
    let body = json!({"scope": [SCOPE]});
    let (s, v) = impersonate(&fake, &fed, body.clone()).await;
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    assert_eq!(v["error"]["message"], PERMISSION_DENIED);
    // The whole pool granted: any subject impersonates.
    fake.grant_workload_identity_user(SA, &principal_set("123456789012", "credbroker"));
    assert_eq!(impersonate(&fake, &fed, body).await.0, 200);
}

#[tokio::test]
async fn exchange_refusals_are_the_real_ones() {
    let (fake, key, spec) = setup().await;
    let good = claims(&spec, OWN);
    let (s, v) = post(
        &fake.url,
        "/v1/token",
        None,
        form(&spec.sts_audience(), &jwt(&key, &good)).replace("token-exchange", "jwt-bearer"),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_request")));
    let other = spec
        .sts_audience()
        .replace("providers/credbroker", "providers/other");
    let (_, v) = post(
        &fake.url,
        "/v1/token",
        None,
        form(&other, &jwt(&key, &good)),
    )
    .await;
    assert_eq!(v["error_description"], INVALID_TARGET);
    let with = |pointer: &str, value: Value| {
        let mut c = good.clone();
        *c.pointer_mut(pointer).unwrap() = value;
        jwt(&key, &c)
    };
    let cases = [
        (
            with("/aud", json!("https://elsewhere")),
            "does not match the expected audience",
        ),
        (
            with("/iss", json!("https://broker.example.com/")),
            "The issuer in ID Token",
        ),
        (with("/iat", json!(now() - 7200)), "is stale to sign-in"),
        (with("/exp", json!(now() - 1)), "expired"),
        (with("/sub", json!("x".repeat(128))), "127 bytes"),
        (
            jwt(&ForgeKey::generate("k2"), &good),
            "was not found in the JWKS",
        ),
    ];
    for (token, why) in cases {
        let (s, v) = exchange(&fake, &spec, &token).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("invalid_grant")),
            "{why}: {v}"
        );
        assert!(
            v["error_description"].as_str().unwrap().contains(why),
            "{v}"
        );
    }
    fake.update_provider(&spec.resource(), |p| p.disabled = true);
    let (_, v) = exchange(&fake, &spec, &jwt(&key, &good)).await;
    assert_eq!(v["error"], "invalid_target");
}

#[tokio::test]
async fn impersonation_refusals_faults_and_string_expiry() {
    let (fake, key, spec) = setup().await;
    fake.set_expires_in_as_string(true);
    fake.fail_next_on(Endpoint::Sts, 1, 503, "{\"error\":\"unavailable\"}");
    let token = jwt(&key, &claims(&spec, OWN));
    assert_eq!(exchange(&fake, &spec, &token).await.0, 503);
    let (s, v) = exchange(&fake, &spec, &token).await;
    assert_eq!((s, v["expires_in"].as_str()), (200, Some("3599")));
    let fed = v["access_token"].as_str().unwrap().to_owned();
    let (s, v) = impersonate(&fake, "ya29.forged", json!({"scope": [SCOPE]})).await;
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    let (s, v) = impersonate(&fake, &fed, json!({"scope": [SCOPE], "lifetime": "7200s"})).await;
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    fake.add_service_account(SA, true);
    assert_eq!(
        impersonate(&fake, &fed, json!({"scope": [SCOPE], "lifetime": "7200s"}))
            .await
            .0,
        200
    );
    assert_eq!(impersonate(&fake, &fed, json!({"scope": []})).await.0, 400);
    fake.expire_federated_tokens();
    assert_eq!(
        impersonate(&fake, &fed, json!({"scope": [SCOPE]})).await.0,
        401
    );
    assert_eq!(fake.sts_calls(), 2);
}

#[tokio::test]
async fn discovers_the_jwks_over_https_and_refetches_on_an_unknown_kid() {
    let ca = credbroker::pki::CertAuthority::generate("gcp fake test CA").unwrap();
    let server = ca.issue_server(&[], 1).unwrap();
    let (k1, k2) = (ForgeKey::generate("k1"), ForgeKey::generate("k2"));
    let published = Arc::new(Mutex::new(vec![k1.jwk()]));
    let served = published.clone();
    // The issuer's public listener; its discovery names the issuer, not this address.
    let handler = move |req: Request<Incoming>| {
        let served = served.clone();
        async move {
            let body = match req.uri().path() {
                "/.well-known/openid-configuration" => json!({"issuer": ISSUER,
                    "jwks_uri": format!("{ISSUER}/.well-known/jwks.json")}),
                "/.well-known/jwks.json" => json!({"keys": served.lock().unwrap().clone()}),
                _ => json!({}),
            };
            Response::new(Full::new(Bytes::from(body.to_string())))
        }
    };
    let (url, _task) = crate::loopback::serve_tls(
        handler,
        server.cert_pem.as_bytes(),
        server.key_pem.as_bytes(),
    )
    .await;
    let source = JwksSource::Url {
        url,
        ca_pem: ca.cert_pem.clone(),
    };
    let mut spec = ProviderSpec::new("123456789012", "credbroker", "credbroker", ISSUER, source);
    spec.subject_condition = Some(OWN.into());
    let fake = FakeGcp::start().await;
    fake.add_provider(spec.clone());
    let own = claims(&spec, OWN);
    assert_eq!(exchange(&fake, &spec, &jwt(&k1, &own)).await.0, 200);
    assert_eq!(exchange(&fake, &spec, &jwt(&k1, &own)).await.0, 200);
    assert_eq!(fake.jwks_fetches(), 1);
    // A key published after the last fetch: fetched again on its first token.
    published.lock().unwrap().push(k2.jwk());
    assert_eq!(exchange(&fake, &spec, &jwt(&k2, &own)).await.0, 200);
    assert_eq!(fake.jwks_fetches(), 2);
    // A key never published: fetched again, still refused.
    let (s, v) = exchange(&fake, &spec, &jwt(&ForgeKey::generate("k3"), &own)).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "{v}"
    );
    assert_eq!(fake.jwks_fetches(), 3);
}

#[test]
fn lifetimes_and_members() {
    assert_eq!(iam::parse_lifetime("3600s"), Some(3600));
    assert_eq!(iam::parse_lifetime("3600.5s"), Some(3601));
    assert_eq!(iam::parse_lifetime("3600"), None);
    assert_eq!(iam::parse_lifetime("-1s"), None);
    let set = principal_set("1", "pool");
    assert!(GcpState::member_matches(
        &set,
        &principal("1", "pool", "cb-x")
    ));
    assert!(!GcpState::member_matches(
        &set,
        &principal("1", "pool2", "cb-x")
    ));
    assert!(!GcpState::member_matches(
        &principal("1", "pool", "cb-y"),
        &principal("1", "pool", "cb-x")
    ));
}
