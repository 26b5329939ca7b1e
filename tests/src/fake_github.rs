//! A local fake of the GitHub REST API for App installation tokens (PROTOCOLS.md): verifies the
//! App JWT's RS256 signature with the App's registered public keys and GitHub's claim rules
//! (`exp` at most 10 minutes ahead, `iss` = app id or client id), and answers like GitHub —
//! 201 token objects, 401/403/404/422 with GitHub's `{"message", "documentation_url"}` bodies,
//! GET instead of POST → 404. Records every request so tests can assert the exact body sent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

/// An RSA App key generated for a test.
pub struct AppKey {
    /// PKCS#8 PEM of the private key.
    pub private_pem: String,
    /// PKCS#1 DER of the public key.
    pub public_der: Vec<u8>,
}

impl AppKey {
    /// A fresh 2048-bit key.
    pub fn generate() -> AppKey {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        AppKey {
            private_pem: pem,
            public_der: kp.public_key().as_ref().to_vec(),
        }
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
    /// JSON body.
    pub body: Value,
    /// Name of the registered key that verified the App JWT, if any.
    pub verified_by: Option<String>,
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

fn gh(status: u16, body: Value, n: u64) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .header(
            "x-github-request-id",
            format!("F00D:{n:04X}:1A2B3C:4D5E6F:67890ABC"),
        )
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn error(status: u16, message: &str, n: u64) -> Response<Full<Bytes>> {
    gh(
        status,
        json!({ "message": message, "documentation_url": "https://docs.github.com/rest", "status": status.to_string() }),
        n,
    )
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
            return Ok(name.clone());
        }
        Err("A JSON web token could not be decoded")
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
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let verified = if segs.first() == Some(&"app") {
            self.verify_app_jwt(&auth)
        } else {
            Err("not an app route")
        };
        self.requests.lock().unwrap().push(Recorded {
            method: method.to_string(),
            path: path.clone(),
            body: body.clone(),
            verified_by: verified.clone().ok(),
        });
        match (method.as_str(), segs.as_slice()) {
            ("POST", ["login", "oauth", "access_token"]) => self.exchange_code(&body, n),
            ("GET", ["user", "installations"]) => self.user_installations(&auth, &query, n),
            ("DELETE", ["applications", client, "token"]) => {
                self.revoke_user_token(client, &auth, &body, n)
            }
            ("DELETE", ["installation", "token"]) => {
                let token = auth.strip_prefix("Bearer ").unwrap_or("").to_owned();
                if self.tokens.lock().unwrap().contains_key(&token)
                    && self.revoked.lock().unwrap().insert(token)
                {
                    return Response::builder()
                        .status(204)
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                }
                error(401, "Bad credentials", n)
            }
            (_, ["app", ..]) if verified.is_err() => error(401, verified.err().unwrap_or(""), n),
            ("POST", ["app", "installations", id, "access_tokens"]) => {
                self.access_token(id, &body, n)
            }
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
    /// for a bad code or client, and JSON only when asked (`Accept: application/json`).
    fn exchange_code(&self, body: &Value, n: u64) -> Response<Full<Bytes>> {
        let mut o = self.oauth.lock().unwrap();
        o.exchanges += 1;
        let field = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let oauth_error = |e: &str, d: &str| {
            gh(
                200,
                json!({"error": e, "error_description": d, "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors"}),
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
        o.user_tokens.insert(token.clone(), installations);
        gh(
            200,
            json!({"access_token": token, "token_type": "bearer", "scope": ""}),
            n,
        )
    }

    /// `GET /user/installations?per_page&page` with a user token: the App's installations the
    /// user can administer, paginated with a `Link` header.
    fn user_installations(&self, auth: &str, query: &str, n: u64) -> Response<Full<Bytes>> {
        let token = auth.strip_prefix("Bearer ").unwrap_or("");
        let o = self.oauth.lock().unwrap();
        let Some(ids) = o
            .user_tokens
            .get(token)
            .filter(|_| !o.revoked_user_tokens.contains(token))
            .cloned()
        else {
            return error(401, "Bad credentials", n);
        };
        drop(o);
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

    /// `DELETE /applications/{client_id}/token`, basic auth with the client credentials.
    fn revoke_user_token(
        &self,
        client: &str,
        auth: &str,
        body: &Value,
        n: u64,
    ) -> Response<Full<Bytes>> {
        use base64::Engine as _;
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
            out["repositories"] = json!(r.iter().enumerate().map(|(i, name)| json!({"id": 100 + i, "name": name, "full_name": format!("{}/{name}", inst.login)})).collect::<Vec<_>>());
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
}
