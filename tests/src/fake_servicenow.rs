//! A local fake of a ServiceNow instance for the client-credentials grant, behaving like the
//! real one (PROTOCOLS.md, "ServiceNow OAuth client credentials"): `POST /oauth_token.do`
//! takes a form (a JSON body fails), answers `{access_token, scope, token_type,
//! expires_in}`; a wrong secret *and* a disabled grant type (the system property
//! `glide.oauth.inbound.client.credential.grant_type.enabled`) both answer 401
//! `{"error":"server_error","error_description":"access_denied"}`; an OAuth entity without
//! an application user answers `unauthorized_client`; a hibernating instance answers 200
//! with an HTML page. The table API answers with the bearers it issued: the application
//! user's roles (`sys_user_has_role`) and one record of any table. Every request is recorded
//! without secrets.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

use crate::fake_sts::parse_form;

/// State of the fake instance.
pub struct SnState {
    /// OAuth clients: client id → secrets accepted (two during a rotation).
    pub clients: Mutex<HashMap<String, Vec<String>>>,
    /// The client-credentials grant is enabled (system property).
    pub grant_enabled: Mutex<bool>,
    /// The OAuth entity has an OAuth Application User.
    pub app_user: Mutex<bool>,
    /// The instance is hibernating (developer instances).
    pub hibernating: Mutex<bool>,
    /// The content type of the hibernation page, when not `text/html;charset=UTF-8` (a
    /// hostile instance's arbitrarily long one).
    pub page_content_type: Mutex<Option<String>>,
    /// Answers this late, milliseconds (a slow or stuck instance).
    pub delay_ms: Mutex<u64>,
    /// The application user's active roles.
    pub roles: Mutex<Vec<String>>,
    /// Bearers issued (valid).
    pub tokens: Mutex<Vec<String>>,
    /// Every request: (method and path, form fields or query minus secrets).
    pub requests: Mutex<Vec<(String, BTreeMap<String, String>)>>,
    /// A hostile instance (or a proxy before it) that repeats the form's `client_secret`
    /// in its answer to the token request, where [`Echo`] says.
    pub echo_secret: Mutex<Echo>,
    /// Requests that have arrived, counted before any delay (one held by `delay_ms` is
    /// counted while it waits).
    pub arrived: AtomicU64,
    counter: AtomicU64,
}

/// Where a hostile instance repeats the client secret it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Nowhere: an honest instance.
    Off,
    /// A 400 whose `error` is the secret.
    ErrorField,
    /// A 401 whose `X-Transaction-ID` (ServiceNow's request id header) is the secret.
    RequestId,
    /// A 200 whose `access_token` holds the secret.
    AccessToken,
    /// A 200 page (not JSON) whose content type is `application/` and the secret.
    ContentType,
}

/// A running fake.
pub struct FakeServiceNow {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT` (for `allowed_hosts`).
    pub authority: String,
    /// State.
    pub state: Arc<SnState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServiceNow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json_response(status: u16, v: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json;charset=UTF-8")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap_or_default()
}

impl SnState {
    fn token(&self, content_type: &str, body: &str) -> Response<Full<Bytes>> {
        let form = parse_form(body);
        let recorded: BTreeMap<String, String> = form
            .iter()
            .filter(|(k, _)| k.as_str() != "client_secret")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.requests
            .lock()
            .unwrap()
            .push(("POST /oauth_token.do".into(), recorded));
        if *self.hibernating.lock().unwrap() {
            let content_type = self
                .page_content_type
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| "text/html;charset=UTF-8".into());
            return Response::builder()
                .status(200)
                .header("content-type", content_type)
                .body(Full::new(Bytes::from_static(
                    b"<html><body><h1>Your instance is hibernating</h1><p>Sign in to wake it.</p></body></html>",
                )))
                .unwrap_or_default();
        }
        let access_denied = || {
            json_response(
                401,
                &json!({"error": "server_error", "error_description": "access_denied"}),
            )
        };
        if !content_type.starts_with("application/x-www-form-urlencoded") {
            return access_denied();
        }
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return json_response(
                400,
                &json!({"error": "unsupported_grant_type", "error_description": "Unsupported grant type"}),
            );
        }
        let id = form.get("client_id").cloned().unwrap_or_default();
        let secret = form.get("client_secret").cloned().unwrap_or_default();
        match *self.echo_secret.lock().unwrap() {
            Echo::Off => {}
            Echo::ErrorField => return json_response(400, &json!({ "error": secret })),
            Echo::RequestId => {
                let mut r = access_denied();
                if let Ok(v) = hyper::header::HeaderValue::from_str(&secret) {
                    r.headers_mut().insert("x-transaction-id", v);
                }
                return r;
            }
            Echo::AccessToken => {
                return json_response(
                    200,
                    &json!({"access_token": format!("tok.{secret}"), "token_type": "Bearer", "expires_in": 1799}),
                )
            }
            Echo::ContentType => {
                return Response::builder()
                    .status(200)
                    .header("content-type", format!("application/{secret}"))
                    .body(Full::new(Bytes::from_static(b"<html></html>")))
                    .unwrap_or_default()
            }
        }
        let known = self
            .clients
            .lock()
            .unwrap()
            .get(&id)
            .is_some_and(|s| s.contains(&secret));
        if !known || !*self.grant_enabled.lock().unwrap() {
            return access_denied();
        }
        if !*self.app_user.lock().unwrap() {
            return json_response(
                401,
                &json!({"error": "unauthorized_client", "error_description": "access_denied"}),
            );
        }
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let token = format!("sn{n:04}-{:016x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        self.tokens.lock().unwrap().push(token.clone());
        json_response(
            200,
            &json!({"access_token": token, "scope": "useraccount", "token_type": "Bearer", "expires_in": 1799}),
        )
    }

    fn table(&self, path: &str, query: &str, bearer: Option<&str>) -> Response<Full<Bytes>> {
        let q: BTreeMap<String, String> = parse_form(query).into_iter().collect();
        self.requests
            .lock()
            .unwrap()
            .push((format!("GET {path}"), q.clone()));
        let valid = bearer.is_some_and(|b| self.tokens.lock().unwrap().iter().any(|t| t == b));
        if !valid {
            return json_response(
                401,
                &json!({"error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"}, "status": "failure"}),
            );
        }
        let table = path.trim_start_matches("/api/now/table/");
        if table == "sys_user_has_role" {
            let result: Vec<Value> = self
                .roles
                .lock()
                .unwrap()
                .iter()
                // An empty name stands for a row whose role an ACL hides: the field is left out.
                .map(|r| {
                    if r.is_empty() {
                        json!({})
                    } else {
                        json!({"role.name": r})
                    }
                })
                .collect();
            return json_response(200, &json!({ "result": result }));
        }
        json_response(
            200,
            &json!({"result": [{"sys_id": "0123456789abcdef0123456789abcdef", "sys_class_name": table}]}),
        )
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let delay = *self.delay_ms.lock().unwrap();
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let post = req.method() == hyper::Method::POST;
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bearer = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if query.contains("client_secret") {
            // The secret must never travel in a query string.
            return json_response(400, &json!({"error": "invalid_request"}));
        }
        match (post, path.as_str()) {
            (true, "/oauth_token.do") => self.token(&content_type, &String::from_utf8_lossy(&body)),
            (false, p) if p.starts_with("/api/now/table/") => {
                self.table(p, &query, bearer.as_deref())
            }
            _ => json_response(
                404,
                &json!({"error": {"message": "Not found"}, "status": "failure"}),
            ),
        }
    }
}

impl FakeServiceNow {
    /// Starts the fake with one OAuth client, the grant enabled, an application user holding
    /// `roles`.
    pub async fn start(client_id: &str, secret: &str, roles: &[&str]) -> FakeServiceNow {
        let mut clients = HashMap::new();
        clients.insert(client_id.to_owned(), vec![secret.to_owned()]);
        let state = Arc::new(SnState {
            clients: Mutex::new(clients),
            grant_enabled: Mutex::new(true),
            app_user: Mutex::new(true),
            hibernating: Mutex::new(false),
            page_content_type: Mutex::new(None),
            delay_ms: Mutex::new(0),
            roles: Mutex::new(roles.iter().map(|r| (*r).to_owned()).collect()),
            tokens: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            echo_secret: Mutex::new(Echo::Off),
            arrived: AtomicU64::new(0),
            counter: AtomicU64::new(1),
        });
        let s = state.clone();
        let (url, task) = crate::loopback::serve(move |req| s.clone().handle(req)).await;
        let authority = url.trim_start_matches("http://").to_owned();
        FakeServiceNow {
            url,
            authority,
            state,
            task,
        }
    }

    /// Token requests so far.
    pub fn token_requests(&self) -> usize {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r == "POST /oauth_token.do")
            .count()
    }
}
