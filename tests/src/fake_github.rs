//! A local fake of the GitHub REST API for App installation tokens (PROTOCOLS.md): verifies the
//! App JWT's RS256 signature with the App's registered public keys and GitHub's claim rules
//! (`exp` at most 10 minutes ahead, `iss` = app id or client id), and answers like GitHub —
//! 201 token objects, 401/403/404/422 with GitHub's `{"message", "documentation_url"}` bodies,
//! GET instead of POST → 404. What GitHub refuses outright it refuses too: a request without
//! `User-Agent` (403, text), an unsupported `X-GitHub-Api-Version` (400); the OAuth code
//! exchange answers form-encoded unless asked for `application/json`. Records every request —
//! method, path, headers (not `Authorization`), body, the key and `iss` of its App JWT, the
//! status and request id of the answer — so tests can assert exactly what the broker sent.
//! Faults can be injected per route: 5xx with GitHub's bodies, primary and secondary rate
//! limits with GitHub's headers, and answers held back longer than a deadline.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

/// The REST API versions GitHub serves (`X-GitHub-Api-Version`); any other value is refused
/// with 400, a missing header means the oldest. (2026-03-10: inferred from GitHub's changelog
/// as reported by API clients, not checked against a primary source.)
pub const API_VERSIONS: [&str; 2] = ["2022-11-28", "2026-03-10"];

/// An RSA App key generated for a test.
pub struct AppKey {
    /// PKCS#8 PEM of the private key.
    pub private_pem: String,
    /// PKCS#1 DER of the public key.
    pub public_der: Vec<u8>,
}

/// PEM text of `der` under `label`, 64 columns.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// (tag, contents, rest) of the DER element at the start of `d`.
pub fn der_element(d: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = d.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, b| (a << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

impl AppKey {
    /// A fresh 2048-bit key.
    pub fn generate() -> AppKey {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp).unwrap();
        AppKey {
            private_pem: pem("PRIVATE KEY", der.as_ref()),
            public_der: kp.public_key().as_ref().to_vec(),
        }
    }

    /// The same private key as GitHub's download gives it: PKCS#1 PEM
    /// (`-----BEGIN RSA PRIVATE KEY-----`), taken out of the PKCS#8 wrapping.
    pub fn pkcs1_pem(&self) -> String {
        let body: String = self
            .private_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let pkcs8 = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        // PrivateKeyInfo ::= SEQUENCE { version INTEGER, algorithm SEQUENCE, privateKey OCTET STRING }
        let (tag, info, _) = der_element(&pkcs8).unwrap();
        assert_eq!(tag, 0x30, "PKCS#8 is a SEQUENCE");
        let (_, _, rest) = der_element(info).unwrap();
        let (_, _, rest) = der_element(rest).unwrap();
        let (tag, rsa_private_key, _) = der_element(rest).unwrap();
        assert_eq!(tag, 0x04, "PKCS#8 privateKey is an OCTET STRING");
        pem("RSA PRIVATE KEY", rsa_private_key)
    }

    /// The fingerprint GitHub shows for this key in the App settings: `SHA256:` + base64
    /// (standard, padded) of the SHA-256 of the public key's DER SubjectPublicKeyInfo — what
    /// `openssl rsa -in KEY.pem -pubout -outform DER | openssl sha256 -binary | openssl base64`
    /// prints.
    pub fn github_fingerprint(&self) -> String {
        let public = aws_lc_rs::rsa::PublicKey::from_der(&self.public_der).unwrap();
        let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(&public).unwrap();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki.as_ref());
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
        )
    }

    /// An App JWT signed with this key as GitHub expects it (iat now − 60 s, exp now + 9 min)
    /// with issuer `iss`.
    pub fn app_jwt(&self, iss: Value) -> String {
        let enc = jsonwebtoken::EncodingKey::from_rsa_pem(self.private_pem.as_bytes()).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::RS256),
            &json!({"iat": now - 60, "exp": now + 540, "iss": iss}),
            &enc,
        )
        .unwrap()
    }
}

/// One installation of the App.
#[derive(Clone, Debug)]
pub struct FakeInstallation {
    /// Account login.
    pub login: String,
    /// Granted permissions.
    pub permissions: BTreeMap<String, String>,
    /// Repositories the installation covers.
    pub repositories: Vec<String>,
    /// Suspended.
    pub suspended: bool,
}

/// A recorded request.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Request headers, names lower-case, in the order sent (`Authorization` left out).
    pub headers: Vec<(String, String)>,
    /// JSON body.
    pub body: Value,
    /// Name of the registered key that verified the App JWT, if any.
    pub verified_by: Option<String>,
    /// The `iss` claim of the verified App JWT, if any.
    pub iss: Option<Value>,
    /// Status of the answer (0 while it is being answered, or when it never was).
    pub status: u16,
    /// The `x-github-request-id` the answer carries.
    pub request_id: String,
}

impl Recorded {
    /// Every value of header `name` (lower-case), in order.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A fault the fake answers with instead of GitHub's normal answer.
#[derive(Clone, Debug)]
pub enum Fault {
    /// A server error with GitHub's body for it (500, 502, 503, 504).
    ServerError(u16),
    /// The primary rate limit is spent: `status` (403 or 429) with `x-ratelimit-remaining: 0`
    /// and `x-ratelimit-reset` = now + `reset_in_s` (epoch seconds).
    PrimaryRateLimit {
        /// 403 or 429.
        status: u16,
        /// Seconds until the window resets.
        reset_in_s: u64,
    },
    /// A secondary rate limit: `status` (403 or 429), with `retry-after` when given.
    SecondaryRateLimit {
        /// 403 or 429.
        status: u16,
        /// The `retry-after` header, seconds.
        retry_after_s: Option<u64>,
    },
    /// Handle the request at once (a token minted for it exists from then on, as on GitHub,
    /// whether or not the caller is still there) and hold the answer this long.
    Hold(Duration),
    /// A malicious or broken upstream: a success status with a JSON body of this many bytes
    /// (the object padded with whitespace).
    Oversized(usize),
    /// A malicious or broken upstream: the endpoint's own answer (and its side effects, such
    /// as a token minted), changed by this before it is sent.
    Tamper(Tamper),
    /// A redirect (307) to this URL, as a compromised or misconfigured front would answer.
    Redirect(String),
}

/// How [`Fault::Tamper`] changes an installation token answer.
#[derive(Clone, Copy, Debug)]
pub enum Tamper {
    /// `expires_at` ten years away.
    FarExpiry,
    /// A well-formed answer padded with an array of 600,000 zeros (1.2 MB of text, well
    /// under the byte bound, that a parser would make into many times that).
    ManyValues,
    /// `expires_at` 40 seconds away (a token GitHub issued an hour ago, as a cache would
    /// hold it near its end).
    NearExpiry,
    /// The token followed by a line break and a header of the attacker's.
    TokenWithLineBreak,
    /// `repository_selection: "all"` and no repository list, whatever was asked.
    AllRepositories,
    /// `administration: admin` besides what was asked.
    ExtraPermission,
    /// Every permission granted (except `metadata`, which GitHub adds) raised to `write`.
    RaisedLevel,
    /// An `x-github-request-id` of 300 characters.
    LongRequestId,
    /// A repository nobody asked for added to the named ones (`repository_selection` stays
    /// `selected`).
    ExtraRepository,
    /// The named repositories listed as another account's (`othercorp`, id 4242): the same
    /// names, another owner.
    ForeignOwner,
    /// `expires_at` a minute ago.
    PastExpiry,
    /// An installation answer (`GET /app/installations/{id}`) for the next installation id.
    OtherInstallation,
    /// An installation answer whose `suspended_at` is `false`: neither GitHub's time nor
    /// its null.
    SuspendedAtNotATime,
    /// The `token` replaced by the bearer the request carried (the App JWT), as a broken
    /// proxy echoing the request would answer.
    EchoBearer,
}

impl Tamper {
    fn apply(self, body: &mut Value, headers: &mut http::HeaderMap, auth: &str) {
        match self {
            Tamper::EchoBearer => {
                let bearer = auth.split_once(' ').map_or(auth, |(_, b)| b);
                body["token"] = json!(bearer);
            }
            Tamper::FarExpiry => body["expires_at"] = json!("2036-01-01T00:00:00Z"),
            Tamper::ManyValues => body["padding"] = json!(vec![0u8; 600_000]),
            Tamper::NearExpiry => {
                let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(40);
                body["expires_at"] = json!(soon
                    .format(&time::macros::format_description!(
                        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
                    ))
                    .unwrap_or_default());
            }
            Tamper::TokenWithLineBreak => {
                let token = body["token"].as_str().unwrap_or("").to_owned();
                body["token"] = json!(format!("{token}\r\nX-Injected: yes"));
            }
            Tamper::AllRepositories => {
                body["repository_selection"] = json!("all");
                if let Some(o) = body.as_object_mut() {
                    o.remove("repositories");
                }
            }
            Tamper::ExtraPermission => body["permissions"]["administration"] = json!("admin"),
            Tamper::RaisedLevel => {
                if let Some(granted) = body["permissions"].as_object_mut() {
                    for (name, level) in granted.iter_mut() {
                        if name != "metadata" {
                            *level = json!("write");
                        }
                    }
                }
            }
            Tamper::ExtraRepository => {
                if let Some(listed) = body["repositories"].as_array_mut() {
                    listed.push(
                        json!({"id": 4242, "name": "secrets", "full_name": "acme-org/secrets", "owner": {"login": "acme-org", "id": 10001, "type": "Organization"}}),
                    );
                }
            }
            Tamper::PastExpiry => {
                let past = time::OffsetDateTime::now_utc() - time::Duration::seconds(60);
                body["expires_at"] = json!(past
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default());
            }
            Tamper::ForeignOwner => {
                if let Some(listed) = body["repositories"].as_array_mut() {
                    for repo in listed {
                        let name = repo["name"].as_str().unwrap_or("").to_owned();
                        repo["full_name"] = json!(format!("othercorp/{name}"));
                        repo["owner"] =
                            json!({"login": "othercorp", "id": 4242, "type": "Organization"});
                    }
                }
            }
            Tamper::OtherInstallation => {
                body["id"] = json!(body["id"].as_u64().unwrap_or(0) + 1);
            }
            Tamper::SuspendedAtNotATime => body["suspended_at"] = json!(false),
            Tamper::LongRequestId => {
                headers.insert(
                    "x-github-request-id",
                    http::HeaderValue::from_str(&"A".repeat(300)).unwrap(),
                );
            }
        }
    }
}

/// Shared state.
pub struct GithubState {
    /// App id (numeric `iss`).
    pub app_id: u64,
    /// Registered public keys by name.
    pub keys: Mutex<Vec<(String, Vec<u8>)>>,
    /// Installations by id.
    pub installations: Mutex<HashMap<u64, FakeInstallation>>,
    /// Issued installation tokens → installation.
    pub tokens: Mutex<HashMap<String, u64>>,
    /// Revoked tokens.
    pub revoked: Mutex<HashSet<String>>,
    /// Every request.
    pub requests: Mutex<Vec<Recorded>>,
    /// The App's OAuth side: client, user authorization codes and user tokens.
    pub oauth: Mutex<OAuth>,
    /// Injected faults: (path suffix, fault), each used by one matching request, in order.
    pub faults: Mutex<VecDeque<(String, Fault)>>,
    counter: AtomicU64,
}

/// The App's OAuth client and the user authorizations GitHub would hand out.
#[derive(Default, Debug)]
pub struct OAuth {
    /// The App's client id (also accepted as the App JWT's `iss`).
    pub client_id: Option<String>,
    /// Its client secrets (GitHub allows two).
    pub client_secrets: Vec<String>,
    /// Unused authorization codes → the installations the user can administer.
    pub codes: HashMap<String, Vec<u64>>,
    /// Issued user tokens → the installations the user can administer.
    pub user_tokens: HashMap<String, Vec<u64>>,
    /// Revoked user tokens.
    pub revoked_user_tokens: HashSet<String>,
    /// Codes (then tokens) of people who can read the installations' repositories but own
    /// none of their organizations (an organization `member`, not an `admin`).
    pub readers: HashSet<String>,
    /// Code exchanges seen (to check codes are used once).
    pub exchanges: u32,
}

/// A running fake.
pub struct FakeGithub {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// State.
    pub state: Arc<GithubState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// GitHub's request id of answer number `n`.
fn request_id(n: u64) -> String {
    format!("F00D:{n:04X}:1A2B3C:4D5E6F:67890ABC")
}

fn gh(status: u16, body: Value, n: u64) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .header("x-github-request-id", request_id(n))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn error(status: u16, message: &str, n: u64) -> Response<Full<Bytes>> {
    error_doc(status, message, "https://docs.github.com/rest", n)
}

fn error_doc(status: u16, message: &str, doc: &str, n: u64) -> Response<Full<Bytes>> {
    gh(
        status,
        json!({ "message": message, "documentation_url": doc, "status": status.to_string() }),
        n,
    )
}

fn with_header(
    mut resp: Response<Full<Bytes>>,
    name: &'static str,
    value: String,
) -> Response<Full<Bytes>> {
    resp.headers_mut()
        .insert(name, http::HeaderValue::from_str(&value).unwrap());
    resp
}

/// `application/x-www-form-urlencoded` escaping of one value.
fn form_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The OAuth endpoint's answer: JSON only when the request accepted it, else form-encoded.
fn oauth_answer(v: Value, json_accepted: bool, n: u64) -> Response<Full<Bytes>> {
    if json_accepted {
        return gh(200, v, n);
    }
    let form = v
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={}", form_escape(v.as_str().unwrap_or(""))))
                .collect::<Vec<_>>()
                .join("&")
        })
        .unwrap_or_default();
    Response::builder()
        .status(200)
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .header("x-github-request-id", request_id(n))
        .body(Full::new(Bytes::from(form)))
        .unwrap()
}

/// The value of header `name` (lower-case) in `headers`, the first one.
fn first<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl GithubState {
    /// Requests to one path, in order.
    pub fn requests_to(&self, suffix: &str) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.ends_with(suffix))
            .cloned()
            .collect()
    }

    /// Verifies an App JWT; returns the verifying key's name or GitHub's 401 message.
    pub fn verify_app_jwt(&self, auth: &str) -> Result<String, &'static str> {
        self.verify_app_jwt_claims(auth).map(|(name, _)| name)
    }

    /// Verifies an App JWT; returns the verifying key's name and the claims, or GitHub's 401
    /// message.
    pub fn verify_app_jwt_claims(&self, auth: &str) -> Result<(String, Value), &'static str> {
        let jwt = auth
            .strip_prefix("Bearer ")
            .ok_or("A JSON web token could not be decoded")?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = 0;
        validation.validate_exp = true;
        // `iss` may be a number (the app id), which jsonwebtoken's spec-claim check does not
        // accept: it is checked by hand below, like `iat`.
        validation.set_required_spec_claims(&["exp"]);
        for (name, der) in self.keys.lock().unwrap().iter() {
            let Ok(data) =
                jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_rsa_der(der), &validation)
            else {
                continue;
            };
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let exp = data.claims["exp"].as_i64().unwrap_or(0);
            let iat = data.claims["iat"].as_i64().unwrap_or(i64::MAX);
            if exp > now + 600 {
                return Err("'Expiration time' claim ('exp') is too far in the future");
            }
            if iat > now + 60 {
                return Err("'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued");
            }
            let iss = &data.claims["iss"];
            let client_id = self.oauth.lock().unwrap().client_id.clone();
            if iss.as_u64() != Some(self.app_id)
                && iss.as_str() != Some(&self.app_id.to_string())
                && (client_id.is_none() || iss.as_str() != client_id.as_deref())
            {
                return Err("'Issuer' claim ('iss') must be an Integer");
            }
            return Ok((name.clone(), data.claims));
        }
        Err("A JSON web token could not be decoded")
    }

    /// Takes the first injected fault for `path`, if any.
    fn take_fault(&self, path: &str) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap();
        let i = faults
            .iter()
            .position(|(s, _)| path.ends_with(s.as_str()))?;
        faults.remove(i).map(|(_, f)| f)
    }

    /// GitHub's answer for an injected fault (never [`Fault::Hold`] or [`Fault::Tamper`]: those
    /// change the endpoint's own answer).
    fn fault_answer(&self, fault: &Fault, n: u64) -> Response<Full<Bytes>> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        match fault {
            Fault::ServerError(status) => {
                // (inferred) GitHub's JSON bodies for its 5xx answers.
                let message = match *status {
                    503 => "Service Unavailable",
                    504 => "We couldn't respond to your request in time. Sorry about that. Please try resubmitting your request and contact us if the problem persists.",
                    _ => "Server Error",
                };
                gh(
                    *status,
                    json!({"message": message, "documentation_url": "https://docs.github.com/rest"}),
                    n,
                )
            }
            Fault::PrimaryRateLimit { status, reset_in_s } => {
                let reset = now + i64::try_from(*reset_in_s).unwrap_or(0);
                let mut resp = error_doc(
                    *status,
                    &format!(
                        "API rate limit exceeded for app ID {}. If you reach out to GitHub Support for help, please include the request ID {}.",
                        self.app_id,
                        request_id(n)
                    ),
                    "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
                    n,
                );
                for (k, v) in [
                    ("x-ratelimit-limit", "5000".to_owned()),
                    ("x-ratelimit-remaining", "0".to_owned()),
                    ("x-ratelimit-used", "5000".to_owned()),
                    ("x-ratelimit-reset", reset.to_string()),
                    ("x-ratelimit-resource", "core".to_owned()),
                ] {
                    resp = with_header(resp, k, v);
                }
                resp
            }
            Fault::SecondaryRateLimit {
                status,
                retry_after_s,
            } => {
                let resp = error_doc(
                    *status,
                    &format!(
                        "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID {}.",
                        request_id(n)
                    ),
                    "https://docs.github.com/free-pro-team@latest/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
                    n,
                );
                match retry_after_s {
                    Some(s) => with_header(resp, "retry-after", s.to_string()),
                    None => resp,
                }
            }
            Fault::Hold(_) | Fault::Tamper(_) => error(500, "Server Error", n),
            Fault::Redirect(to) => Response::builder()
                .status(307)
                .header("location", to.as_str())
                .header("x-github-request-id", request_id(n))
                .body(Full::new(Bytes::new()))
                .unwrap(),
            Fault::Oversized(len) => {
                let mut body = vec![b' '; len.saturating_sub(2)];
                body.extend_from_slice(b"{}");
                Response::builder()
                    .status(201)
                    .header("content-type", "application/json; charset=utf-8")
                    .header("x-github-request-id", request_id(n))
                    .body(Full::new(Bytes::from(body)))
                    .unwrap()
            }
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .filter(|(k, _)| *k != http::header::AUTHORIZATION)
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let verified = if path.starts_with("/app/") || path == "/app" {
            self.verify_app_jwt_claims(&auth)
        } else {
            Err("not an app route")
        };
        let index = {
            let mut requests = self.requests.lock().unwrap();
            requests.push(Recorded {
                method: method.to_string(),
                path: path.clone(),
                headers: headers.clone(),
                body: body.clone(),
                verified_by: verified.as_ref().ok().map(|(name, _)| name.clone()),
                iss: verified
                    .as_ref()
                    .ok()
                    .map(|(_, claims)| claims["iss"].clone()),
                status: 0,
                request_id: request_id(n),
            });
            requests.len() - 1
        };
        let verified = verified.map(|(name, _)| name);
        let resp = self
            .route(&method, &path, &query, &auth, &headers, &body, verified, n)
            .await;
        if let Some(r) = self.requests.lock().unwrap().get_mut(index) {
            r.status = resp.status().as_u16();
        }
        resp
    }

    #[allow(clippy::too_many_arguments)]
    async fn route(
        &self,
        method: &http::Method,
        path: &str,
        query: &str,
        auth: &str,
        headers: &[(String, String)],
        body: &Value,
        verified: Result<String, &'static str>,
        n: u64,
    ) -> Response<Full<Bytes>> {
        // GitHub refuses a request without a User-Agent before anything else, in plain text.
        if first(headers, "user-agent").is_none_or(|ua| ua.trim().is_empty()) {
            return Response::builder()
                .status(403)
                .header("content-type", "text/plain; charset=utf-8")
                .body(Full::new(Bytes::from_static(b"Request forbidden by administrative rules. Please make sure your request has a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). Check https://developer.github.com for other possible causes.\n")))
                .unwrap();
        }
        // The API host refuses a version it does not serve; a missing header means the oldest.
        if !path.starts_with("/login/") {
            if let Some(version) = first(headers, "x-github-api-version") {
                if !API_VERSIONS.contains(&version) {
                    return error(
                        400,
                        &format!(
                            "The version you specified in the \"X-GitHub-API-Version\" request header, \"{version}\", is not a supported version. The following versions are currently supported: \"{}\" (most recent), \"{}\".",
                            API_VERSIONS[1], API_VERSIONS[0]
                        ),
                        n,
                    );
                }
            }
        }
        let (hold, tamper) = match self.take_fault(path) {
            Some(Fault::Hold(d)) => (Some(d), None),
            Some(Fault::Tamper(t)) => (None, Some(t)),
            Some(f) => return self.fault_answer(&f, n),
            None => (None, None),
        };
        let answer = self.endpoint(method, path, query, auth, headers, body, verified, n);
        if let Some(d) = hold {
            tokio::time::sleep(d).await;
        }
        match tamper {
            Some(t) => {
                let (mut parts, body) = answer.into_parts();
                let bytes = http_body_util::BodyExt::collect(body)
                    .await
                    .unwrap()
                    .to_bytes();
                let mut v: Value = serde_json::from_slice(&bytes).unwrap();
                t.apply(&mut v, &mut parts.headers, auth);
                parts.headers.remove(http::header::CONTENT_LENGTH);
                Response::from_parts(parts, Full::new(Bytes::from(v.to_string())))
            }
            None => answer,
        }
    }

    /// The answer of the endpoint `method` `path` names.
    #[allow(clippy::too_many_arguments)]
    fn endpoint(
        &self,
        method: &http::Method,
        path: &str,
        query: &str,
        auth: &str,
        headers: &[(String, String)],
        body: &Value,
        verified: Result<String, &'static str>,
        n: u64,
    ) -> Response<Full<Bytes>> {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method.as_str(), segs.as_slice()) {
            ("POST", ["login", "oauth", "access_token"]) => {
                let json_accepted = headers
                    .iter()
                    .any(|(k, v)| k == "accept" && v.contains("application/json"));
                self.exchange_code(body, json_accepted, n)
            }
            ("GET", ["user", "installations"]) => self.user_installations(auth, query, n),
            ("GET", ["user", "memberships", "orgs", org]) => self.user_membership(auth, org, n),
            ("DELETE", ["applications", client, "token"]) => {
                self.revoke_user_token(client, auth, body, n)
            }
            ("DELETE", ["installation", "token"]) => {
                let token = auth.strip_prefix("Bearer ").unwrap_or("").to_owned();
                if self.tokens.lock().unwrap().contains_key(&token)
                    && self.revoked.lock().unwrap().insert(token)
                {
                    return Response::builder()
                        .status(204)
                        .header("x-github-request-id", request_id(n))
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                }
                error(401, "Bad credentials", n)
            }
            (_, ["app", ..]) if verified.is_err() => error(401, verified.err().unwrap_or(""), n),
            ("POST", ["app", "installations", id, "access_tokens"]) => {
                self.access_token(id, body, n)
            }
            // GitHub answers a method an endpoint does not support with 404, not 405.
            (_, ["app", "installations", _, "access_tokens"]) => error(404, "Not Found", n),
            ("GET", ["app", "installations", id]) => {
                let id: u64 = id.parse().unwrap_or(0);
                let Some(inst) = self.installations.lock().unwrap().get(&id).cloned() else {
                    return error(404, "Not Found", n);
                };
                gh(
                    200,
                    json!({
                        "id": id, "app_id": self.app_id, "target_type": "Organization",
                        "account": { "login": inst.login, "id": 9000 + id, "type": "Organization" },
                        "permissions": inst.permissions, "repository_selection": "all",
                        "suspended_at": if inst.suspended { json!("2026-01-01T00:00:00Z") } else { Value::Null },
                    }),
                    n,
                )
            }
            _ => error(404, "Not Found", n),
        }
    }

    /// `POST /login/oauth/access_token` (web host): GitHub answers 200 with an `error` field
    /// for a bad code or client, and JSON only when asked (`Accept: application/json`);
    /// otherwise the same fields form-encoded.
    fn exchange_code(&self, body: &Value, json_accepted: bool, n: u64) -> Response<Full<Bytes>> {
        let mut o = self.oauth.lock().unwrap();
        o.exchanges += 1;
        let field = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let oauth_error = |e: &str, d: &str| {
            oauth_answer(
                json!({"error": e, "error_description": d, "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors"}),
                json_accepted,
                n,
            )
        };
        if o.client_id.as_deref() != Some(field("client_id").as_str())
            || !o.client_secrets.contains(&field("client_secret"))
        {
            return oauth_error(
                "incorrect_client_credentials",
                "The client_id and/or client_secret passed are incorrect.",
            );
        }
        let Some(installations) = o.codes.remove(&field("code")) else {
            return oauth_error(
                "bad_verification_code",
                "The code passed is incorrect or expired.",
            );
        };
        let token = format!("ghu_{n:036x}");
        if o.readers.remove(&field("code")) {
            o.readers.insert(token.clone());
        }
        o.user_tokens.insert(token.clone(), installations);
        oauth_answer(
            json!({"access_token": token, "token_type": "bearer", "scope": ""}),
            json_accepted,
            n,
        )
    }

    /// What a live user token (`Authorization: Bearer …`) grants: the installations listed as
    /// the user's, and whether the user only reads them (not an owner).
    fn user_grant(&self, auth: &str) -> Option<(Vec<u64>, bool)> {
        let token = auth.strip_prefix("Bearer ").unwrap_or("");
        let o = self.oauth.lock().unwrap();
        let ids = o
            .user_tokens
            .get(token)
            .filter(|_| !o.revoked_user_tokens.contains(token))?
            .clone();
        Some((ids, o.readers.contains(token)))
    }

    /// `GET /user/installations?per_page&page` with a user token: the App's installations the
    /// user can administer, paginated with a `Link` header.
    fn user_installations(&self, auth: &str, query: &str, n: u64) -> Response<Full<Bytes>> {
        let Some((ids, _)) = self.user_grant(auth) else {
            return error(401, "Bad credentials", n);
        };
        let q = |k: &str| {
            query.split('&').find_map(|p| {
                let (a, b) = p.split_once('=')?;
                (a == k).then(|| b.parse::<usize>().ok()).flatten()
            })
        };
        let per_page = q("per_page").unwrap_or(30).clamp(1, 100);
        let page = q("page").unwrap_or(1).max(1);
        let installations = self.installations.lock().unwrap();
        let all: Vec<Value> = ids
            .iter()
            .filter_map(|id| {
                installations.get(id).map(|inst| {
                    json!({"id": id, "app_id": self.app_id, "target_type": "Organization",
                        "account": {"login": inst.login, "id": 9000 + id, "type": "Organization"},
                        "permissions": inst.permissions, "repository_selection": "all"})
                })
            })
            .collect();
        let total = all.len();
        let chunk: Vec<Value> = all
            .into_iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .collect();
        let mut resp = gh(
            200,
            json!({"total_count": total, "installations": chunk}),
            n,
        );
        if page * per_page < total {
            resp.headers_mut().insert(
                "link",
                format!(
                    "<{}/user/installations?per_page={per_page}&page={}>; rel=\"next\"",
                    "http://fake",
                    page + 1
                )
                .parse()
                .unwrap(),
            );
        }
        resp
    }

    /// `GET /user/memberships/orgs/{org}` with a user token: the user's membership of an
    /// organization one of their installations is on (`admin` unless they were authorized
    /// as a reader), 404 for any other organization.
    fn user_membership(&self, auth: &str, org: &str, n: u64) -> Response<Full<Bytes>> {
        let Some((ids, reader)) = self.user_grant(auth) else {
            return error(401, "Bad credentials", n);
        };
        let role = if reader { "member" } else { "admin" };
        let installations = self.installations.lock().unwrap();
        let Some((id, inst)) = ids.iter().find_map(|id| {
            installations
                .get(id)
                .filter(|inst| inst.login.eq_ignore_ascii_case(org))
                .map(|inst| (*id, inst.clone()))
        }) else {
            return error(404, "Not Found", n);
        };
        gh(
            200,
            json!({
                "url": format!("https://api.github.com/orgs/{}/memberships/installer", inst.login),
                "state": "active", "role": role,
                "organization_url": format!("https://api.github.com/orgs/{}", inst.login),
                "organization": {"login": inst.login, "id": 9000 + id},
                "user": {"login": "installer", "id": 77, "type": "User"},
            }),
            n,
        )
    }

    /// `DELETE /applications/{client_id}/token`, basic auth with the client credentials.
    fn revoke_user_token(
        &self,
        client: &str,
        auth: &str,
        body: &Value,
        n: u64,
    ) -> Response<Full<Bytes>> {
        let mut o = self.oauth.lock().unwrap();
        let creds = auth
            .strip_prefix("Basic ")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let ok = creds.split_once(':').is_some_and(|(id, secret)| {
            o.client_id.as_deref() == Some(id)
                && id == client
                && o.client_secrets.iter().any(|s| s == secret)
        });
        if !ok {
            return error(404, "Not Found", n);
        }
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !o.user_tokens.contains_key(token) {
            return error(404, "Not Found", n);
        }
        o.revoked_user_tokens.insert(token.to_owned());
        Response::builder()
            .status(204)
            .header("x-github-request-id", request_id(n))
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    fn access_token(&self, id: &str, body: &Value, n: u64) -> Response<Full<Bytes>> {
        let id: u64 = id.parse().unwrap_or(0);
        let Some(inst) = self.installations.lock().unwrap().get(&id).cloned() else {
            return error(404, "Not Found", n);
        };
        if inst.suspended {
            return error(403, "This installation has been suspended", n);
        }
        let rank = |l: &str| match l {
            "read" => 1,
            "write" => 2,
            "admin" => 3,
            _ => 99,
        };
        let requested: BTreeMap<String, String> = body
            .get("permissions")
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                    .collect()
            })
            .unwrap_or_else(|| inst.permissions.clone());
        for (name, level) in &requested {
            match inst.permissions.get(name) {
                Some(granted) if rank(level) <= rank(granted) => {}
                _ => {
                    return error(
                        422,
                        "The permissions requested are not granted to this installation.",
                        n,
                    )
                }
            }
        }
        let repos: Option<Vec<String>> =
            body.get("repositories").and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            });
        if let Some(r) = &repos {
            if r.len() > 500 || r.iter().any(|x| !inst.repositories.contains(x)) {
                return error(422, "There is at least one repository that does not exist or is not accessible to the parent installation.", n);
            }
        }
        let token = format!(
            "ghs_{:036x}",
            (u128::from(n) << 64) ^ 0x5eed_cafe_f00d_u128 ^ (u128::from(id) << 8)
        );
        self.tokens.lock().unwrap().insert(token.clone(), id);
        let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        let expires = expires
            .format(&time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .unwrap();
        let mut out = json!({
            "token": token, "expires_at": expires, "permissions": requested,
            "repository_selection": if repos.is_some() { "selected" } else { "all" },
        });
        if let Some(r) = repos {
            // GitHub lists each repository as a full repository object: its owner is the
            // installation's account.
            out["repositories"] = json!(r
                .iter()
                .enumerate()
                .map(|(i, name)| json!({
                    "id": 100 + i, "name": name, "full_name": format!("{}/{name}", inst.login),
                    "owner": {"login": inst.login, "id": 9000 + id, "type": "Organization"},
                }))
                .collect::<Vec<_>>());
        }
        gh(201, out, n)
    }
}

impl FakeGithub {
    /// Starts the fake for App `app_id`.
    pub async fn start(app_id: u64) -> FakeGithub {
        let state = Arc::new(GithubState {
            app_id,
            keys: Mutex::new(Vec::new()),
            installations: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashSet::new()),
            requests: Mutex::new(Vec::new()),
            oauth: Mutex::new(OAuth::default()),
            faults: Mutex::new(VecDeque::new()),
            counter: AtomicU64::new(1),
        });
        let s = state.clone();
        let (url, task) = crate::loopback::serve(move |req| s.clone().handle(req)).await;
        FakeGithub { url, state, task }
    }

    /// Sets the App's OAuth client id and one client secret.
    pub fn set_oauth_client(&self, client_id: &str, secret: &str) {
        let mut o = self.state.oauth.lock().unwrap();
        o.client_id = Some(client_id.to_owned());
        o.client_secrets = vec![secret.to_owned()];
    }

    /// A person who can administer `installations` authorizes the App during installation:
    /// GitHub redirects them with `code`.
    pub fn authorize(&self, code: &str, installations: &[u64]) {
        self.state
            .oauth
            .lock()
            .unwrap()
            .codes
            .insert(code.to_owned(), installations.to_vec());
    }

    /// A person who can read `installations`' repositories but owns none of their
    /// organizations (an organization member) authorizes the App: GitHub redirects them with
    /// `code`, and lists those installations as theirs.
    pub fn authorize_reader(&self, code: &str, installations: &[u64]) {
        let mut o = self.state.oauth.lock().unwrap();
        o.codes.insert(code.to_owned(), installations.to_vec());
        o.readers.insert(code.to_owned());
    }

    /// Registers a public key with the App (as uploading it in the App settings would).
    pub fn register_key(&self, name: &str, key: &AppKey) {
        self.state
            .keys
            .lock()
            .unwrap()
            .push((name.to_owned(), key.public_der.clone()));
    }

    /// Deletes a key from the App.
    pub fn delete_key(&self, name: &str) {
        self.state.keys.lock().unwrap().retain(|(n, _)| n != name);
    }

    /// Adds an installation.
    pub fn install(&self, id: u64, inst: FakeInstallation) {
        self.state.installations.lock().unwrap().insert(id, inst);
    }

    /// Removes installation `id`, as its owner can on GitHub: `GET /app/installations/{id}`
    /// then answers 404.
    pub fn uninstall(&self, id: u64) {
        self.state.installations.lock().unwrap().remove(&id);
    }

    /// Suspends (or unsuspends) installation `id`, as its owner can on GitHub: GitHub then
    /// refuses its token requests with 403.
    pub fn suspend(&self, id: u64, suspended: bool) {
        if let Some(inst) = self.state.installations.lock().unwrap().get_mut(&id) {
            inst.suspended = suspended;
        }
    }

    /// The next `times` requests whose path ends with `path_suffix` get `fault` (after faults
    /// injected earlier for the same path).
    pub fn inject(&self, path_suffix: &str, fault: Fault, times: usize) {
        let mut faults = self.state.faults.lock().unwrap();
        for _ in 0..times {
            faults.push_back((path_suffix.to_owned(), fault.clone()));
        }
    }

    /// Faults injected and not used yet.
    pub fn pending_faults(&self) -> usize {
        self.state.faults.lock().unwrap().len()
    }

    /// Sends one raw HTTP/1.1 request to the fake with exactly `headers` (plus `host` and a
    /// `content-length` for a body): its status, headers (lower-case names) and body text.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> (u16, Vec<(String, String)>, String) {
        use hyper_util::rt::TokioIo;
        let authority = self.url.trim_start_matches("http://").to_owned();
        let tcp = tokio::net::TcpStream::connect(&authority).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", authority.as_str());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_vec())))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }
}
