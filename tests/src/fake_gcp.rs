//! A local fake of Google's Security Token Service and IAM Service Account Credentials API,
//! behaving like the real ones (PROTOCOLS.md, "GCP Workload Identity Federation" and "Own
//! OIDC issuer"): one server answers `POST /v1/token` (the token exchange: form fields checked
//! exactly, the subject token verified against the workload identity provider named by
//! `audience` — RS256, `kid` in the provider's JWKS, signature, `iss`, `aud`, `exp`, `iat`,
//! `sub` ≤ 127 bytes mapped to `google.subject`, then the attribute condition) and
//! `POST /v1/projects/-/serviceAccounts/{email}:generateAccessToken` (the federated token as
//! bearer, `roles/iam.workloadIdentityUser` checked for its principal, `scope` and `lifetime`
//! checked), with the real error bodies. The broker is configured with
//! `sts_url = "{url}/v1/token"` and `iam_credentials_url = "{url}"`.
//!
//! A provider without a subject condition and a `principalSet://…/*` grant are the customer
//! mistakes the broker's probe must detect: with them, a token for any `sub` succeeds.
//! Every request is recorded without its secret (the subject token's decoded claims instead of
//! the token, the bearer's principal instead of the bearer); failures and latency can be
//! injected.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::Value;

use crate::fake_sts::parse_form;

mod iam;
use iam::google_error;
mod jwks;
mod sts;
pub use jwks::JwksSource;

/// `grant_type` of the token exchange.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `requested_token_type` and `issued_token_type`.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// `subject_token_type` of an OIDC ID token.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The role a principal needs on a service account to impersonate it.
pub const WORKLOAD_IDENTITY_USER: &str = "roles/iam.workloadIdentityUser";
/// STS's answer to an audience that names no usable provider.
pub const INVALID_TARGET: &str = "The target service indicated by the \"audience\" parameters is invalid. This might either be because the pool or provider is disabled or deleted or because it doesn't exist.";
/// STS's answer when the attribute condition refuses the token.
pub const CONDITION_REJECTED: &str = "The given credential is rejected by the attribute condition.";
/// IAM Credentials' 403 message.
pub const PERMISSION_DENIED: &str =
    "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).";
/// IAM Credentials' 401 message.
pub const UNAUTHENTICATED: &str = "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.";

/// `projects/{N}/locations/global/workloadIdentityPools/{POOL}`.
pub fn pool_resource(project_number: &str, pool_id: &str) -> String {
    format!("projects/{project_number}/locations/global/workloadIdentityPools/{pool_id}")
}

/// The IAM principal of one federated subject:
/// `principal://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/POOL/subject/SUB`.
pub fn principal(project_number: &str, pool_id: &str, subject: &str) -> String {
    format!(
        "principal://iam.googleapis.com/{}/subject/{subject}",
        pool_resource(project_number, pool_id)
    )
}

/// Every identity of a pool: `principalSet://iam.googleapis.com/projects/N/…/POOL/*` (granting
/// it the role is the dangerous customer setup).
pub fn principal_set(project_number: &str, pool_id: &str) -> String {
    format!(
        "principalSet://iam.googleapis.com/{}/*",
        pool_resource(project_number, pool_id)
    )
}

/// One OIDC workload identity pool provider, as the customer configured it.
#[derive(Clone, Debug)]
pub struct ProviderSpec {
    /// Project number (never the project id).
    pub project_number: String,
    /// Pool id.
    pub pool_id: String,
    /// Provider id.
    pub provider_id: String,
    /// `issuerUri`: the subject token's `iss` must equal it byte for byte.
    pub issuer: String,
    /// Where the signing keys come from.
    pub jwks: JwksSource,
    /// `allowedAudiences`; empty: the default, the provider's full resource name with or
    /// without `https:`.
    pub allowed_audiences: Vec<String>,
    /// The attribute condition `assertion.sub == '<this>'`; `None`: no condition (every token
    /// of the issuer is accepted — the dangerous case).
    pub subject_condition: Option<String>,
    /// The pool or provider is disabled (STS answers `invalid_target`).
    pub disabled: bool,
}

impl ProviderSpec {
    /// A provider for `issuer` with the default audiences, no condition, enabled.
    pub fn new(
        project_number: &str,
        pool_id: &str,
        provider_id: &str,
        issuer: &str,
        jwks: JwksSource,
    ) -> ProviderSpec {
        ProviderSpec {
            project_number: project_number.to_owned(),
            pool_id: pool_id.to_owned(),
            provider_id: provider_id.to_owned(),
            issuer: issuer.to_owned(),
            jwks,
            allowed_audiences: Vec::new(),
            subject_condition: None,
            disabled: false,
        }
    }

    /// `projects/N/locations/global/workloadIdentityPools/POOL/providers/PROV`.
    pub fn resource(&self) -> String {
        format!(
            "{}/providers/{}",
            pool_resource(&self.project_number, &self.pool_id),
            self.provider_id
        )
    }

    /// The STS form `audience`: `//iam.googleapis.com/` + [`ProviderSpec::resource`].
    pub fn sts_audience(&self) -> String {
        format!("//iam.googleapis.com/{}", self.resource())
    }

    /// The `aud` our JWT carries: `https://iam.googleapis.com/` + [`ProviderSpec::resource`].
    pub fn jwt_audience(&self) -> String {
        format!("https:{}", self.sts_audience())
    }

    fn audiences(&self) -> Vec<String> {
        if self.allowed_audiences.is_empty() {
            vec![self.jwt_audience(), self.sts_audience()]
        } else {
            self.allowed_audiences.clone()
        }
    }
}

/// A customer service account.
#[derive(Clone, Debug, Default)]
pub struct ServiceAccount {
    /// The org policy `constraints/iam.allowServiceAccountCredentialLifetimeExtension` lists
    /// it: lifetimes up to 43200 s are accepted.
    pub extended_lifetime: bool,
    /// Members holding `roles/iam.workloadIdentityUser` on it.
    pub workload_identity_users: Vec<String>,
}

/// A federated token STS issued.
#[derive(Clone, Debug)]
pub struct FederatedToken {
    /// `principal://…/subject/SUB`.
    pub principal: String,
    /// Unix seconds after which IAM refuses it.
    pub expires_at: i64,
}

/// A service-account access token `generateAccessToken` issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    /// The impersonated service account.
    pub service_account: String,
    /// The scopes asked for.
    pub scopes: Vec<String>,
    /// `expireTime`, unix seconds.
    pub expires_at: i64,
    /// The federated principal that asked.
    pub principal: String,
}

/// Which API a request was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/token`.
    Sts,
    /// `POST /v1/projects/-/serviceAccounts/{email}:generateAccessToken`.
    Iam,
    /// Anything else (404).
    Other,
}

/// One request as the fake saw it, without secrets.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Which API.
    pub endpoint: Endpoint,
    /// Method and path.
    pub path: String,
    /// STS: the form fields minus `subject_token`.
    pub fields: BTreeMap<String, String>,
    /// STS: the subject token's payload (decoded, not verified): `sub`, `aud`, `iss`, `jti`…
    pub claims: Option<Value>,
    /// IAM: the service account named in the path.
    pub service_account: Option<String>,
    /// IAM: the JSON body.
    pub body: Option<Value>,
    /// IAM: the principal of the bearer, when it is a federated token this fake issued.
    pub principal: Option<String>,
    /// The status answered.
    pub status: u16,
}

struct InjectedFailure {
    endpoint: Option<Endpoint>,
    remaining: u32,
    status: u16,
    body: String,
}

/// Shared state of the fake.
pub struct GcpState {
    /// Providers by resource name (`projects/N/…/providers/PROV`).
    pub providers: Mutex<HashMap<String, ProviderSpec>>,
    /// Service accounts by email.
    pub service_accounts: Mutex<HashMap<String, ServiceAccount>>,
    /// Federated tokens issued, by token.
    pub federated: Mutex<HashMap<String, FederatedToken>>,
    /// Service-account access tokens issued, by token.
    pub issued: Mutex<HashMap<String, IssuedToken>>,
    /// Every request, in order.
    pub requests: Mutex<Vec<RecordedRequest>>,
    /// Every subject token STS received (the relying party's copy).
    pub subject_tokens: Mutex<Vec<String>>,
    /// Answer this late, milliseconds.
    pub delay_ms: Mutex<u64>,
    /// Answer STS `expires_in` as a string (`"3599"`), as STS sometimes does.
    pub expires_in_as_string: Mutex<bool>,
    /// Lifetime of federated tokens, seconds (`expires_in`).
    pub federated_ttl_s: Mutex<i64>,
    /// A subject token whose `iat` is older than this is stale (`invalid_grant`).
    pub max_token_age_s: Mutex<i64>,
    /// Clock skew tolerated on `iat` in the future, seconds.
    pub clock_skew_s: Mutex<i64>,
    failures: Mutex<VecDeque<InjectedFailure>>,
    keys: jwks::KeyCache,
    sts_calls: AtomicU64,
    iam_calls: AtomicU64,
}

/// A running fake.
pub struct FakeGcp {
    /// `http://127.0.0.1:PORT` (`iam_credentials_url`; `sts_url` is this + `/v1/token`).
    pub url: String,
    /// State.
    pub state: Arc<GcpState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGcp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn random_token(prefix: &str) -> String {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

/// Percent-decodes a path segment.
fn decode_segment(s: &str) -> String {
    parse_form(&format!("x={}", s.replace('+', "%2B")))
        .remove("x")
        .unwrap_or_default()
}

impl GcpState {
    /// The principal of `bearer` when it is an unexpired federated token this fake issued.
    fn bearer_principal(&self, bearer: Option<&str>) -> Option<String> {
        let federated = self.federated.lock().unwrap();
        let token = federated.get(bearer?)?;
        (token.expires_at > now()).then(|| token.principal.clone())
    }

    /// The next injected failure for `endpoint`, if one is pending.
    fn take_failure(&self, endpoint: Endpoint) -> Option<(u16, String)> {
        let mut failures = self.failures.lock().unwrap();
        let i = failures
            .iter()
            .position(|f| f.endpoint.is_none_or(|e| e == endpoint))?;
        let f = failures.get_mut(i)?;
        f.remaining = f.remaining.saturating_sub(1);
        let answer = (f.status, f.body.clone());
        if f.remaining == 0 {
            failures.remove(i);
        }
        Some(answer)
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let delay = *self.delay_ms.lock().unwrap();
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        let post = req.method() == hyper::Method::POST;
        let path = req.uri().path().to_owned();
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
        let sa = path
            .strip_prefix("/v1/projects/-/serviceAccounts/")
            .and_then(|p| p.strip_suffix(":generateAccessToken"))
            .map(decode_segment);
        let endpoint = match (post, path.as_str(), &sa) {
            (true, "/v1/token", _) => Endpoint::Sts,
            (true, _, Some(_)) => Endpoint::Iam,
            _ => Endpoint::Other,
        };
        let mut record = RecordedRequest {
            endpoint,
            path: format!("{} {path}", if post { "POST" } else { "GET" }),
            fields: BTreeMap::new(),
            claims: None,
            service_account: sa.clone(),
            body: None,
            principal: None,
            status: 0,
        };
        let (status, answer) = match endpoint {
            Endpoint::Sts => {
                self.sts_calls.fetch_add(1, Ordering::SeqCst);
                let form: HashMap<String, String> = if content_type.starts_with("application/json")
                {
                    serde_json::from_slice::<serde_json::Map<String, Value>>(&body)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                        .collect()
                } else {
                    parse_form(&String::from_utf8_lossy(&body))
                };
                record.claims = form
                    .get("subject_token")
                    .and_then(|t| jwks::unverified_claims(t));
                // The relying party holds what it was sent; a test that verifies the
                // broker's assertions with an independent JOSE library reads them here.
                if let Some(t) = form.get("subject_token") {
                    self.subject_tokens.lock().unwrap().push(t.clone());
                }
                record.fields = form
                    .iter()
                    .filter(|(k, _)| k.as_str() != "subject_token")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                match self.take_failure(endpoint) {
                    Some(injected) => injected,
                    None => self.sts(&form).await,
                }
            }
            Endpoint::Iam => {
                self.iam_calls.fetch_add(1, Ordering::SeqCst);
                record.body = serde_json::from_slice(&body).ok();
                record.principal = self.bearer_principal(bearer.as_deref());
                match self.take_failure(endpoint) {
                    Some(injected) => injected,
                    None => self.generate_access_token(
                        sa.as_deref().unwrap_or(""),
                        record.principal.as_deref(),
                        record.body.as_ref(),
                    ),
                }
            }
            Endpoint::Other => google_error(404, "NOT_FOUND", "Not found."),
        };
        record.status = status;
        self.requests.lock().unwrap().push(record);
        Response::builder()
            .status(status)
            .header("content-type", "application/json; charset=UTF-8")
            .body(Full::new(Bytes::from(answer)))
            .unwrap_or_default()
    }
}

impl FakeGcp {
    /// Starts the fake with no provider and no service account.
    pub async fn start() -> FakeGcp {
        let state = Arc::new(GcpState {
            providers: Mutex::new(HashMap::new()),
            service_accounts: Mutex::new(HashMap::new()),
            federated: Mutex::new(HashMap::new()),
            issued: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            subject_tokens: Mutex::new(Vec::new()),
            delay_ms: Mutex::new(0),
            expires_in_as_string: Mutex::new(false),
            federated_ttl_s: Mutex::new(3599),
            max_token_age_s: Mutex::new(3600),
            clock_skew_s: Mutex::new(300),
            failures: Mutex::new(VecDeque::new()),
            keys: jwks::KeyCache::default(),
            sts_calls: AtomicU64::new(0),
            iam_calls: AtomicU64::new(0),
        });
        let s = state.clone();
        let (url, task) = crate::loopback::serve(move |req| s.clone().handle(req)).await;
        FakeGcp { url, state, task }
    }

    /// `{url}/v1/token` (the broker's `sts_url`).
    pub fn sts_url(&self) -> String {
        format!("{}/v1/token", self.url)
    }

    /// Adds (or replaces) a workload identity pool provider; returns its resource name.
    pub fn add_provider(&self, spec: ProviderSpec) -> String {
        let resource = spec.resource();
        self.state
            .providers
            .lock()
            .unwrap()
            .insert(resource.clone(), spec);
        resource
    }

    /// Changes the provider `resource` in place (disable it, change its condition, re-pin
    /// its JWKS…).
    pub fn update_provider(&self, resource: &str, change: impl FnOnce(&mut ProviderSpec)) {
        if let Some(spec) = self.state.providers.lock().unwrap().get_mut(resource) {
            change(spec);
        }
    }

    /// Creates service account `email` (no grants yet).
    pub fn add_service_account(&self, email: &str, extended_lifetime: bool) {
        self.state
            .service_accounts
            .lock()
            .unwrap()
            .entry(email.to_owned())
            .or_default()
            .extended_lifetime = extended_lifetime;
    }

    /// Grants `roles/iam.workloadIdentityUser` on `sa_email` to `member` (a `principal://…`
    /// or `principalSet://…/*`); creates the service account when it does not exist.
    pub fn grant_workload_identity_user(&self, sa_email: &str, member: &str) {
        let mut accounts = self.state.service_accounts.lock().unwrap();
        let users = &mut accounts
            .entry(sa_email.to_owned())
            .or_default()
            .workload_identity_users;
        if !users.iter().any(|m| m == member) {
            users.push(member.to_owned());
        }
    }

    /// Removes `member`'s grant on `sa_email`.
    pub fn revoke_workload_identity_user(&self, sa_email: &str, member: &str) {
        if let Some(a) = self
            .state
            .service_accounts
            .lock()
            .unwrap()
            .get_mut(sa_email)
        {
            a.workload_identity_users.retain(|m| m != member);
        }
    }

    /// Answers the next `n` calls (either API) with `status` and `body` instead.
    pub fn fail_next(&self, n: u32, status: u16, body: &str) {
        self.push_failure(None, n, status, body);
    }

    /// Answers the next `n` calls to `endpoint` with `status` and `body` instead.
    pub fn fail_next_on(&self, endpoint: Endpoint, n: u32, status: u16, body: &str) {
        self.push_failure(Some(endpoint), n, status, body);
    }

    fn push_failure(&self, endpoint: Option<Endpoint>, n: u32, status: u16, body: &str) {
        if n > 0 {
            self.state
                .failures
                .lock()
                .unwrap()
                .push_back(InjectedFailure {
                    endpoint,
                    remaining: n,
                    status,
                    body: body.to_owned(),
                });
        }
    }

    /// Delays every answer by `ms` milliseconds.
    pub fn set_delay_ms(&self, ms: u64) {
        *self.state.delay_ms.lock().unwrap() = ms;
    }

    /// Answers STS `expires_in` as a string.
    pub fn set_expires_in_as_string(&self, on: bool) {
        *self.state.expires_in_as_string.lock().unwrap() = on;
    }

    /// Makes every federated token issued so far expired (IAM answers 401).
    pub fn expire_federated_tokens(&self) {
        for t in self.state.federated.lock().unwrap().values_mut() {
            t.expires_at = now() - 1;
        }
    }

    /// Forgets the JWKS discovered so far (the next exchange fetches it again).
    pub fn forget_jwks(&self) {
        self.state.keys.clear();
    }

    /// Calls to `POST /v1/token` so far.
    pub fn sts_calls(&self) -> u64 {
        self.state.sts_calls.load(Ordering::SeqCst)
    }

    /// Calls to `generateAccessToken` so far.
    pub fn iam_calls(&self) -> u64 {
        self.state.iam_calls.load(Ordering::SeqCst)
    }

    /// Discovery + JWKS fetches from issuers so far.
    pub fn jwks_fetches(&self) -> u64 {
        self.state.keys.fetches()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// What `generateAccessToken` issued `token` for, if it did.
    pub fn token_info(&self, token: &str) -> Option<IssuedToken> {
        self.state.issued.lock().unwrap().get(token).cloned()
    }
}

#[cfg(test)]
mod tests;
