//! A local fake of a Jira or Confluence Data Center instance's PAT handling (PROTOCOLS.md,
//! "Atlassian Data Center PAT"): bearer auth only; `GET /rest/api/2/myself` (Jira) and
//! `/rest/api/user/current` (Confluence); `POST /rest/pat/latest/tokens`
//! `{"name","expirationDuration"}` (XSRF: `X-Atlassian-Token: no-check`) → 201
//! `{id,name,createdAt,expiringAt,rawToken}` shown once; `GET` lists the caller's PATs;
//! `DELETE /rest/pat/latest/tokens/{id}` → 204. An instance without the PAT API (older
//! Server versions) answers 404 there. Requests are recorded without tokens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

/// One PAT.
#[derive(Clone, Debug)]
pub struct FakePat {
    /// Numeric id.
    pub id: u64,
    /// The raw token.
    pub raw: String,
    /// Its owner.
    pub user: String,
    /// Expiry, Unix seconds.
    pub expires: i64,
    /// Its name.
    pub name: String,
}

/// State.
pub struct DcState {
    /// Valid PATs.
    pub pats: Mutex<Vec<FakePat>>,
    /// The instance has the PAT API.
    pub pat_api: Mutex<bool>,
    /// Every request: "METHOD path".
    pub requests: Mutex<Vec<String>>,
    /// A create makes the PAT, then answers with this status and an HTML page (a proxy in
    /// front of the instance giving up before it answered).
    pub create_answer_lost: Mutex<Option<u16>>,
    /// A create hands out a PAT that has already expired (so it fails every probe).
    pub create_expired: Mutex<bool>,
    /// A hostile or broken instance: a create's answer carries this `id` instead of the
    /// PAT's (`Value::Null`: no `id` at all).
    pub create_id: Mutex<Option<Value>>,
    /// A hostile instance: a create hands out a PAT of this user (an administrator's), not
    /// of the user whose PAT asked.
    pub create_as: Mutex<Option<String>>,
    /// A proxy answering for the instance: `myself` / `user/current` answer 200 naming
    /// nobody (`{}`; Confluence's anonymous caller).
    pub names_nobody: Mutex<bool>,
    /// The next this many revocations (`DELETE`) fail: 503 with the HTML page of a proxy
    /// whose instance did not answer, the PAT left as it was.
    pub delete_fails: Mutex<u32>,
    counter: AtomicU64,
}

/// A running fake.
pub struct FakeAtlassianDc {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub authority: String,
    /// State.
    pub state: Arc<DcState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAtlassianDc {
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

/// A time as Data Center writes it: milliseconds and a `+0000` offset (not RFC 3339's
/// `+00:00` or `Z`).
fn rfc(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .unwrap()
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].000+0000"
        ))
        .unwrap()
}

impl DcState {
    fn who(&self, bearer: Option<&str>) -> Option<FakePat> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        bearer.and_then(|b| {
            self.pats
                .lock()
                .unwrap()
                .iter()
                .find(|p| p.raw == b && p.expires > now)
                .cloned()
        })
    }

    /// Mints a PAT for `user` valid `days`.
    pub fn issue(&self, user: &str, days: i64) -> FakePat {
        self.issue_for_seconds(user, days * 86_400)
    }

    /// Mints a PAT for `user` valid `seconds` (the instance refuses it after that, and its
    /// `expiringAt` says so).
    pub fn issue_for_seconds(&self, user: &str, seconds: i64) -> FakePat {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let pat = FakePat {
            id: n,
            raw: format!("NjQ{n:04}{:024x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            user: user.to_owned(),
            expires: time::OffsetDateTime::now_utc().unix_timestamp() + seconds,
            name: format!("pat {n}"),
        };
        self.pats.lock().unwrap().push(pat.clone());
        pat
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let bearer = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let xsrf_ok = req
            .headers()
            .get("x-atlassian-token")
            .and_then(|v| v.to_str().ok())
            == Some("no-check");
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        self.requests
            .lock()
            .unwrap()
            .push(format!("{method} {path}"));
        let Some(me) = self.who(bearer.as_deref()) else {
            return json_response(
                401,
                &json!({"message": "Client must be authenticated to access this resource.", "status-code": 401}),
            );
        };
        let pat_api = *self.pat_api.lock().unwrap();
        let names_nobody = *self.names_nobody.lock().unwrap();
        match (method.as_str(), path.as_str()) {
            ("GET", "/rest/api/2/myself") if names_nobody => json_response(200, &json!({})),
            ("GET", "/rest/api/user/current") if names_nobody => json_response(
                200,
                &json!({"type": "anonymous", "username": "anonymous", "displayName": "Anonymous"}),
            ),
            ("GET", "/rest/api/2/myself") => json_response(
                200,
                &json!({"name": me.user, "key": me.user, "displayName": "Scanner", "active": true}),
            ),
            ("GET", "/rest/api/user/current") => json_response(
                200,
                &json!({"type": "known", "username": me.user, "userKey": me.user, "displayName": "Scanner"}),
            ),
            (_, p) if p.starts_with("/rest/pat/") && !pat_api => {
                json_response(404, &json!({"message": "null for uri"}))
            }
            ("GET", "/rest/pat/latest/tokens") => {
                let list: Vec<Value> = self
                    .pats
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|p| p.user == me.user)
                    .map(|p| json!({"id": p.id, "name": p.name, "createdAt": rfc(p.expires - 86_400), "expiringAt": rfc(p.expires)}))
                    .collect();
                json_response(200, &json!(list))
            }
            ("POST", "/rest/pat/latest/tokens") => {
                if !xsrf_ok {
                    return json_response(403, &json!({"message": "XSRF check failed"}));
                }
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let days = v["expirationDuration"].as_i64().unwrap_or(90);
                let Some(name) = v["name"].as_str() else {
                    return json_response(400, &json!({"message": "name is required"}));
                };
                let owner = self
                    .create_as
                    .lock()
                    .unwrap()
                    .clone()
                    .unwrap_or_else(|| me.user.clone());
                let mut pat = self.issue(&owner, days);
                pat.name = name.to_owned();
                let expired = *self.create_expired.lock().unwrap();
                if let Some(p) = self
                    .pats
                    .lock()
                    .unwrap()
                    .iter_mut()
                    .find(|p| p.id == pat.id)
                {
                    p.name = name.to_owned();
                    if expired {
                        p.expires = time::OffsetDateTime::now_utc().unix_timestamp() - 1;
                    }
                }
                if let Some(status) = *self.create_answer_lost.lock().unwrap() {
                    return Response::builder()
                        .status(status)
                        .header("content-type", "text/html")
                        .body(Full::new(Bytes::from_static(
                            b"<html>Gateway Timeout</html>",
                        )))
                        .unwrap_or_default();
                }
                let mut answer = json!({"id": pat.id, "name": name, "createdAt": rfc(pat.expires - days * 86_400), "expiringAt": rfc(pat.expires), "rawToken": pat.raw});
                match self.create_id.lock().unwrap().clone() {
                    Some(Value::Null) => {
                        answer.as_object_mut().unwrap().remove("id");
                    }
                    Some(id) => answer["id"] = id,
                    None => {}
                }
                json_response(201, &answer)
            }
            ("DELETE", p) if p.starts_with("/rest/pat/latest/tokens/") => {
                {
                    let mut fails = self.delete_fails.lock().unwrap();
                    if *fails > 0 {
                        *fails -= 1;
                        return Response::builder()
                            .status(503)
                            .header("content-type", "text/html")
                            .body(Full::new(Bytes::from_static(
                                b"<html>Service Unavailable</html>",
                            )))
                            .unwrap_or_default();
                    }
                }
                let id: u64 = p
                    .rsplit('/')
                    .next()
                    .and_then(|i| i.parse().ok())
                    .unwrap_or(0);
                let mut pats = self.pats.lock().unwrap();
                let before = pats.len();
                pats.retain(|t| !(t.id == id && t.user == me.user));
                if pats.len() == before {
                    return json_response(404, &json!({"message": "token not found"}));
                }
                Response::builder()
                    .status(204)
                    .body(Full::new(Bytes::new()))
                    .unwrap_or_default()
            }
            _ => json_response(404, &json!({"message": "null for uri"})),
        }
    }
}

impl FakeAtlassianDc {
    /// Starts the fake with the PAT API.
    pub async fn start() -> FakeAtlassianDc {
        Self::start_with(None).await
    }

    /// Starts the fake over TLS with this certificate chain and key (a private PKI).
    pub async fn start_tls(cert_pem: &[u8], key_pem: &[u8]) -> FakeAtlassianDc {
        Self::start_with(Some((cert_pem.to_vec(), key_pem.to_vec()))).await
    }

    async fn start_with(tls: Option<(Vec<u8>, Vec<u8>)>) -> FakeAtlassianDc {
        let state = Arc::new(DcState {
            pats: Mutex::new(Vec::new()),
            pat_api: Mutex::new(true),
            requests: Mutex::new(Vec::new()),
            create_answer_lost: Mutex::new(None),
            create_expired: Mutex::new(false),
            create_id: Mutex::new(None),
            create_as: Mutex::new(None),
            names_nobody: Mutex::new(false),
            delete_fails: Mutex::new(0),
            counter: AtomicU64::new(100),
        });
        let s = state.clone();
        let handler = move |req| s.clone().handle(req);
        let (url, task) = match tls {
            Some((cert, key)) => crate::loopback::serve_tls(handler, &cert, &key).await,
            None => crate::loopback::serve(handler).await,
        };
        let authority = url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_owned();
        FakeAtlassianDc {
            url,
            authority,
            state,
            task,
        }
    }
}

/// Binds the fake instance to t1 as `acme-jira` (Jira) with PAT `token` (and its id, when
/// known), and probes it; the probe's answer.
pub async fn bind_jira(
    op: &mut credbroker::client::BrokerClient,
    dc: &FakeAtlassianDc,
    token: &str,
    id: Option<u64>,
) -> Value {
    let (s, v) = add_jira_and_probe(op, dc, token, id).await;
    assert_eq!(s, 200, "{v}");
    v
}

/// As [`bind_jira`], answering the probe's status and body, whatever they are.
pub async fn add_jira_and_probe(
    op: &mut credbroker::client::BrokerClient,
    dc: &FakeAtlassianDc,
    token: &str,
    id: Option<u64>,
) -> (u16, Value) {
    let (s, v) = crate::call(
        op,
        http::Method::POST,
        "/v1/admin/bindings",
        Some(
            json!({"owner": "team-tests", "purpose": "integration test", "id": "acme-jira", "tenant": "t1", "provider": "atlassian_dc_pat",
                    "config": {"base_url": dc.url, "product": "jira"}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let mut fields = json!({"token": token});
    if let Some(id) = id {
        fields["token_id"] = json!(id.to_string());
    }
    let (s, v) = crate::call(
        op,
        http::Method::PUT,
        "/v1/admin/bindings/acme-jira/secret",
        Some(json!({ "fields": fields })),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    crate::call(
        op,
        http::Method::POST,
        "/v1/admin/bindings/acme-jira/probe",
        Some(json!({})),
    )
    .await
}
