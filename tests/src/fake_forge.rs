//! A local fake of Atlassian Forge as a Forge Remote sees it (PROTOCOLS.md, "Atlassian Forge
//! Remote"): the JWKS endpoint Forge signs its invocation tokens (FITs) with — its own
//! 2048-bit RSA keys, published as `{"keys": [{"kty": "RSA", "kid", "alg": "RS256", "use":
//! "sig", "n", "e"}]}`, counted per fetch, rotatable — and what Forge sends to the remote:
//! FITs with the real claim layout (`iss` `forge/invocation-token`, `aud` the app ARI,
//! `iat`/`nbf`/`exp` about 25 s apart, `app.{id, installationId, apiBaseUrl, environment,
//! module}`, optional `context` and `principal`), app system tokens (a JWT whose `exp` is the
//! only thing a remote reads), scheduled-trigger, endpoint and lifecycle-event bodies.
//!
//! Every way a FIT can be wrong is one [`Defect`]: a forged, expired, foreign or mistyped
//! token must be refused by the broker with `401 invocation_rejected` and change nothing.
//! [`send`] posts one invocation to the broker's public listener (`POST /forge/{kind}`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::AsDer;
use base64::Engine as _;
use bytes::Bytes;
use credbroker::client::BrokerClient;
use http::Method;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use crate::fake_github::{der_element, pem, AppKey};

mod defects;
pub use defects::Defect;

/// The `iss` of every Forge invocation token.
pub const ISSUER: &str = "forge/invocation-token";
/// Path of the JWKS on the fake (as on `forge.cdn.prod.atlassian-dev.net`).
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// How long Forge's invocation tokens live (seconds, `exp - iat`).
pub const FIT_LIFETIME_S: i64 = 25;
/// Another Forge app's ARI (a token minted for it must not be accepted by ours).
pub const OTHER_APP: &str = "ari:cloud:ecosystem::app/99999999-8888-4777-8666-555555555555";

/// Unix seconds now.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// base64url without padding (JWS segments, JWK numbers).
pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b
}

/// A random version-4 UUID in its textual form.
pub fn uuid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The broker's keyed fingerprint (its key in `data_dir`) of what a resolve hands out for
/// `token`: what it audits a captured system token under (never the token, nor an unkeyed
/// hash of it).
pub fn fingerprint(data_dir: &std::path::Path, token: &str) -> String {
    let key = credbroker::keys::FingerprintKey::load(&data_dir.join("keys/fingerprint.key"))
        .expect("the broker's fingerprint key");
    key.fingerprint(
        serde_json::json!({ "access_token": token })
            .to_string()
            .as_bytes(),
    )
}

/// (n, e) big-endian without leading zeros, from a PKCS#1 `RSAPublicKey` DER
/// (`SEQUENCE { INTEGER n, INTEGER e }`).
fn rsa_components(pkcs1: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (tag, seq, _) = der_element(pkcs1).expect("RSAPublicKey");
    assert_eq!(tag, 0x30, "RSAPublicKey is a SEQUENCE");
    let (tag, n, rest) = der_element(seq).expect("modulus");
    assert_eq!(tag, 0x02, "modulus is an INTEGER");
    let (tag, e, _) = der_element(rest).expect("exponent");
    assert_eq!(tag, 0x02, "exponent is an INTEGER");
    let strip = |x: &[u8]| {
        let i = x.iter().position(|b| *b != 0).unwrap_or(x.len());
        x[i..].to_vec()
    };
    (strip(n), strip(e))
}

/// One of Forge's signing keys.
pub struct ForgeKey {
    /// Its `kid` in the JWKS and in token headers.
    pub kid: String,
    /// The RSA key pair (PKCS#8 PEM private key, PKCS#1 DER public key).
    pub key: AppKey,
}

impl ForgeKey {
    /// A fresh 2048-bit RSA key named `kid`.
    pub fn generate(kid: &str) -> ForgeKey {
        ForgeKey {
            kid: kid.to_owned(),
            key: AppKey::generate(),
        }
    }

    /// Its JWK as Forge publishes it.
    pub fn jwk(&self) -> Value {
        let (n, e) = rsa_components(&self.key.public_der);
        json!({"kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig", "n": b64url(&n), "e": b64url(&e)})
    }

    /// The public key as `-----BEGIN PUBLIC KEY-----` PEM (SubjectPublicKeyInfo): the text
    /// an attacker turns into an HMAC secret (RS256 → HS256 confusion).
    pub fn public_pem(&self) -> String {
        let public = aws_lc_rs::rsa::PublicKey::from_der(&self.key.public_der).unwrap();
        let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(&public).unwrap();
        pem("PUBLIC KEY", spki.as_ref())
    }

    /// The public key as `-----BEGIN RSA PUBLIC KEY-----` PEM (PKCS#1).
    pub fn pkcs1_public_pem(&self) -> String {
        pem("RSA PUBLIC KEY", &self.key.public_der)
    }

    /// Its private key, for signing.
    pub fn encoding_key(&self) -> EncodingKey {
        EncodingKey::from_rsa_pem(self.key.private_pem.as_bytes()).unwrap()
    }
}

impl std::fmt::Debug for ForgeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ForgeKey({})", self.kid)
    }
}

/// One installation of our app on one Atlassian site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// The site's cloudId (a UUID; stable across reinstalls).
    pub cloud_id: String,
    /// `ari:cloud:ecosystem::installation/{uuid}` (changes on reinstall).
    pub installation_id: String,
    /// `jira` or `confluence` (the `apiBaseUrl` path).
    pub product: String,
}

impl Site {
    /// A Jira site `cloud_id` with installation `installation_uuid`.
    pub fn new(cloud_id: &str, installation_uuid: &str) -> Site {
        Site {
            cloud_id: cloud_id.to_owned(),
            installation_id: format!("ari:cloud:ecosystem::installation/{installation_uuid}"),
            product: "jira".to_owned(),
        }
    }

    /// The same site after the app was uninstalled and installed again.
    pub fn reinstalled(&self, installation_uuid: &str) -> Site {
        Site {
            installation_id: format!("ari:cloud:ecosystem::installation/{installation_uuid}"),
            ..self.clone()
        }
    }

    /// `https://api.atlassian.com/ex/{product}/{cloudId}`.
    pub fn api_base_url(&self) -> String {
        format!(
            "https://api.atlassian.com/ex/{}/{}",
            self.product, self.cloud_id
        )
    }
}

/// How a FIT is signed.
#[derive(Clone, Debug)]
enum Signer {
    /// RS256 with this key (its kid in the header unless the header names another).
    Rsa(Arc<ForgeKey>),
    /// `alg: none`, empty signature: `header.payload.`.
    Unsigned,
    /// HS256 with this secret.
    Hmac(Vec<u8>),
}

/// A Forge invocation token being built: header, claims, signer. Every field can be
/// overwritten ([`Fit::set`], [`Fit::remove`], [`Fit::header`]) before [`Fit::token`].
#[derive(Clone, Debug)]
pub struct Fit {
    /// The JOSE header.
    pub header: Value,
    /// The claims.
    pub claims: Value,
    signer: Signer,
}

/// Sets `value` at JSON pointer `pointer` (`/app/installationId`), creating objects on the way.
fn set_at(root: &mut Value, pointer: &str, value: Value) {
    let mut cur = root;
    for p in pointer.trim_start_matches('/').split('/') {
        if !cur.is_object() {
            *cur = json!({});
        }
        cur = &mut cur[p];
    }
    *cur = value;
}

/// Removes what JSON pointer `pointer` names, if anything.
fn remove_at(root: &mut Value, pointer: &str) {
    let (parent, last) = match pointer.rfind('/') {
        Some(i) => (&pointer[..i], &pointer[i + 1..]),
        None => ("", pointer),
    };
    let target = if parent.is_empty() {
        Some(root)
    } else {
        root.pointer_mut(parent)
    };
    if let Some(Value::Object(m)) = target {
        m.remove(last);
    }
}

impl Fit {
    /// A valid FIT for our app `app_id` from `site`, signed by `key`, issued now, for the
    /// hourly scheduled trigger (module `scheduledTrigger`), no `context`, no `principal`.
    pub fn new(app_id: &str, site: &Site, key: Arc<ForgeKey>) -> Fit {
        let t = now();
        let app_uuid = app_id.rsplit('/').next().unwrap_or("");
        let claims = json!({
            "iss": ISSUER,
            "aud": app_id,
            "iat": t,
            "nbf": t,
            "exp": t + FIT_LIFETIME_S,
            "jti": uuid(),
            "app": {
                "id": app_id,
                "appVersion": "3.7.0",
                "installationId": site.installation_id,
                "apiBaseUrl": site.api_base_url(),
                "environment": {
                    "type": "PRODUCTION",
                    "id": format!("ari:cloud:ecosystem::environment/{app_uuid}/0c6f5e1d-2b3a-4c5d-8e9f-a0b1c2d3e4f5"),
                },
                "module": {"type": "scheduledTrigger", "key": "credbroker-hourly"},
            },
        });
        Fit {
            header: json!({"alg": "RS256", "typ": "JWT", "kid": key.kid}),
            claims,
            signer: Signer::Rsa(key),
        }
    }

    /// Sets the claim at JSON pointer `pointer` (`/app/environment/type`).
    pub fn set(mut self, pointer: &str, value: Value) -> Fit {
        set_at(&mut self.claims, pointer, value);
        self
    }

    /// Removes the claim at JSON pointer `pointer`.
    pub fn remove(mut self, pointer: &str) -> Fit {
        remove_at(&mut self.claims, pointer);
        self
    }

    /// Sets a header parameter.
    pub fn header(mut self, name: &str, value: Value) -> Fit {
        self.header[name] = value;
        self
    }

    /// As sent by a `core:endpoint` module (a remote call from the app's UI or functions).
    pub fn endpoint(self, key: &str) -> Fit {
        self.set("/app/module", json!({"type": "core:endpoint", "key": key}))
    }

    /// As sent by the app's admin page (`jira:adminPage` `credbroker-connect`, through
    /// `invokeRemote`): the module, the user who typed the code (`principal`) and the page's
    /// `context`, as Forge's contract describes a UI module's FIT.
    pub fn admin_page(self, site: &Site, account_id: &str) -> Fit {
        self.set(
            "/app/module",
            json!({"type": "jira:adminPage", "key": "credbroker-connect"}),
        )
        .principal(account_id)
        .context(json!({
            "cloudId": site.cloud_id,
            "moduleKey": "credbroker-connect",
            "siteUrl": format!("https://{}.atlassian.net", &site.cloud_id[..8]),
            "extension": {"type": "jira:adminPage"},
            "accountId": account_id,
            "accountType": "licensed",
        }))
    }

    /// With an invocation `context` (cloudId, siteUrl, …: ignored by the broker).
    pub fn context(self, context: Value) -> Fit {
        self.set("/context", context)
    }

    /// With a `principal` (the Atlassian account id of the user, for user-initiated calls).
    pub fn principal(self, account_id: &str) -> Fit {
        self.set("/principal", json!(account_id))
    }

    /// Issued at `iat`, valid from `nbf`, until `exp` (Unix seconds).
    pub fn times(self, iat: i64, nbf: i64, exp: i64) -> Fit {
        self.set("/iat", json!(iat))
            .set("/nbf", json!(nbf))
            .set("/exp", json!(exp))
    }

    /// Signed RS256 by `key`, its kid in the header.
    pub fn signed_by(mut self, key: Arc<ForgeKey>) -> Fit {
        self.header["kid"] = json!(key.kid);
        self.header["alg"] = json!("RS256");
        self.signer = Signer::Rsa(key);
        self
    }

    /// Signed RS256 by `key` while the header keeps naming the kid it had.
    pub fn signed_by_keeping_kid(mut self, key: Arc<ForgeKey>) -> Fit {
        self.signer = Signer::Rsa(key);
        self
    }

    /// `alg: none`, no signature (`header.payload.`).
    pub fn unsigned(mut self) -> Fit {
        self.header["alg"] = json!("none");
        self.signer = Signer::Unsigned;
        self
    }

    /// HS256 keyed with `secret` (e.g. the public key's PEM text).
    pub fn hmac(mut self, secret: &[u8]) -> Fit {
        self.header["alg"] = json!("HS256");
        self.signer = Signer::Hmac(secret.to_vec());
        self
    }

    /// The compact JWS.
    pub fn token(&self) -> String {
        let signing_input = format!(
            "{}.{}",
            b64url(self.header.to_string().as_bytes()),
            b64url(self.claims.to_string().as_bytes())
        );
        let signature = match &self.signer {
            Signer::Unsigned => String::new(),
            Signer::Rsa(k) => jsonwebtoken::crypto::sign(
                signing_input.as_bytes(),
                &k.encoding_key(),
                Algorithm::RS256,
            )
            .unwrap(),
            Signer::Hmac(secret) => jsonwebtoken::crypto::sign(
                signing_input.as_bytes(),
                &EncodingKey::from_secret(secret).unwrap(),
                Algorithm::HS256,
            )
            .unwrap(),
        };
        format!("{signing_input}.{signature}")
    }
}

/// Shared state of the fake.
pub struct ForgeState {
    /// Our app's ARI (`ari:cloud:ecosystem::app/{uuid}`).
    pub app_id: String,
    /// Keys in the JWKS, in order.
    published: Mutex<Vec<Arc<ForgeKey>>>,
    /// The key new FITs are signed with.
    signing: Mutex<Arc<ForgeKey>>,
    /// A key never published (for [`Defect::KeyNotInJwks`]).
    stranger: Arc<ForgeKey>,
    /// JWKS fetches so far.
    fetches: AtomicU64,
    /// The status the JWKS is answered with (200; set 503 to make it fail).
    pub jwks_status: Mutex<u16>,
    /// Delay before answering the JWKS, ms.
    pub jwks_delay_ms: Mutex<u64>,
    counter: AtomicU64,
}

impl ForgeState {
    fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .published
            .lock()
            .unwrap()
            .iter()
            .map(|k| k.jwk())
            .collect();
        json!({ "keys": keys })
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let reply = |status: u16, body: String| {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("cache-control", "public, max-age=3600")
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_default()
        };
        if path != JWKS_PATH {
            return reply(404, json!({"message": "Not Found"}).to_string());
        }
        if method != Method::GET {
            return reply(405, json!({"message": "Method Not Allowed"}).to_string());
        }
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let delay = *self.jwks_delay_ms.lock().unwrap();
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        let status = *self.jwks_status.lock().unwrap();
        if status != 200 {
            return reply(
                status,
                json!({"message": "Service Unavailable"}).to_string(),
            );
        }
        reply(200, self.jwks().to_string())
    }
}

/// A running fake Forge.
pub struct FakeForge {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `http://127.0.0.1:PORT/.well-known/jwks.json` (the broker's `jwks_url`).
    pub jwks_url: String,
    /// State.
    pub state: Arc<ForgeState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeForge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeForge {
    /// Starts the fake for our app `app_id`, with one published signing key `forge-key-1`.
    pub async fn start(app_id: &str) -> FakeForge {
        let first = Arc::new(ForgeKey::generate("forge-key-1"));
        let state = Arc::new(ForgeState {
            app_id: app_id.to_owned(),
            published: Mutex::new(vec![first.clone()]),
            signing: Mutex::new(first),
            stranger: Arc::new(ForgeKey::generate("forge-key-stranger")),
            fetches: AtomicU64::new(0),
            jwks_status: Mutex::new(200),
            jwks_delay_ms: Mutex::new(0),
            counter: AtomicU64::new(1),
        });
        let s = state.clone();
        let (url, task) = crate::loopback::serve(move |req| s.clone().handle(req)).await;
        FakeForge {
            jwks_url: format!("{url}{JWKS_PATH}"),
            url,
            state,
            task,
        }
    }

    /// JWKS fetches so far.
    pub fn jwks_fetches(&self) -> u64 {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// The key new FITs are signed with.
    pub fn signing_key(&self) -> Arc<ForgeKey> {
        self.state.signing.lock().unwrap().clone()
    }

    /// Publishes a new key `kid` (not signing with it yet).
    pub fn add_key(&self, kid: &str) -> Arc<ForgeKey> {
        let k = Arc::new(ForgeKey::generate(kid));
        self.state.published.lock().unwrap().push(k.clone());
        k
    }

    /// Publishes a new key `kid` and signs every new FIT with it (the old key stays
    /// published until [`FakeForge::unpublish`]).
    pub fn rotate(&self, kid: &str) -> Arc<ForgeKey> {
        let k = self.add_key(kid);
        *self.state.signing.lock().unwrap() = k.clone();
        k
    }

    /// The published key `kid`.
    pub fn key(&self, kid: &str) -> Option<Arc<ForgeKey>> {
        self.state
            .published
            .lock()
            .unwrap()
            .iter()
            .find(|k| k.kid == kid)
            .cloned()
    }

    /// Takes key `kid` out of the JWKS.
    pub fn unpublish(&self, kid: &str) {
        self.state
            .published
            .lock()
            .unwrap()
            .retain(|k| k.kid != kid);
    }

    /// The JWKS document as served.
    pub fn jwks(&self) -> Value {
        self.state.jwks()
    }

    /// A valid FIT from `site` (scheduled trigger), signed by the current signing key.
    pub fn fit(&self, site: &Site) -> Fit {
        Fit::new(&self.state.app_id, site, self.signing_key())
    }
}

/// An app system token as Forge sends it in `x-forge-oauth-system`: a JWT (RS256-looking
/// header, claims with `exp`, an opaque signature the remote cannot and need not check).
/// Every call returns a different token.
pub fn system_token(exp: i64) -> String {
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "auth.atlassian.io/system-2026"});
    let claims = json!({
        "iss": "https://auth.atlassian.com",
        "sub": "ari:cloud:ecosystem::app/system",
        "aud": "api.atlassian.com",
        "iat": now(),
        "exp": exp,
        "jti": uuid(),
        "https://id.atlassian.com/token_type": "system",
    });
    format!(
        "{}.{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes()),
        b64url(&random_bytes::<256>())
    )
}

/// The body of the hourly scheduled trigger's call (`POST /forge/trigger`).
pub fn trigger_body(site: &Site) -> Value {
    json!({
        "context": {"cloudId": site.cloud_id, "moduleKey": "credbroker-hourly"},
        "contextToken": format!("{}.{}.{}", b64url(b"{\"alg\":\"RS256\"}"), b64url(uuid().as_bytes()), b64url(&random_bytes::<32>())),
    })
}

/// The body of a `core:endpoint` call (`POST /forge/invoke`).
pub fn invoke_body(site: &Site) -> Value {
    json!({
        "call": {"functionKey": "credbroker-connect", "payload": {"action": "status"}},
        "context": {"cloudId": site.cloud_id, "moduleKey": "credbroker-endpoint"},
    })
}

/// A lifecycle event body (`avi:forge:installed:app` or `avi:forge:upgraded:app`,
/// `POST /forge/lifecycle`).
pub fn lifecycle_body(event: &str, site: &Site, app_id: &str) -> Value {
    let account = if event.contains("upgraded") {
        "upgraderAccountId"
    } else {
        "installerAccountId"
    };
    let mut body = json!({
        "eventType": event,
        "id": site.installation_id,
        "app": {"id": app_id, "version": "3.7.0"},
        "environment": {"id": "0c6f5e1d-2b3a-4c5d-8e9f-a0b1c2d3e4f5"},
        "context": {"cloudId": site.cloud_id, "moduleKey": "credbroker-lifecycle"},
    });
    body[account] = json!("5b10ac8d82e05b22cc7d4ef5");
    body
}

/// Posts one invocation to the broker's public listener: `POST /forge/{kind}` with
/// `authorization: Bearer {fit}` (none when `fit` is `None`) and `x-forge-oauth-system`
/// (when given); the status and the JSON answer (`null` when it is not JSON).
pub async fn send(
    public: &mut BrokerClient,
    kind: &str,
    fit: Option<&str>,
    system_token: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let bearer = fit.map(|f| format!("Bearer {f}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    if let Some(t) = system_token {
        headers.push(("x-forge-oauth-system", t));
    }
    send_raw(
        public,
        Method::POST,
        &format!("/forge/{kind}"),
        &headers,
        Some(serde_json::to_vec(body).unwrap()),
    )
    .await
}

/// Any request to the public listener with exactly `headers` (plus host and, with a body,
/// `content-type: application/json`): the status and the JSON answer.
pub async fn send_raw(
    public: &mut BrokerClient,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let (status, out) = public
        .request_with_headers(method, path, headers, body)
        .await
        .unwrap();
    (
        status.as_u16(),
        serde_json::from_slice(&out).unwrap_or(Value::Null),
    )
}
