//! A local fake of the Microsoft Entra v2.0 token endpoint for a multi-tenant app, behaving
//! like the real one (PROTOCOLS.md, "Microsoft Entra multi-tenant app"): one form-encoded
//! `POST /{tenant}/oauth2/v2.0/token` per customer tenant GUID, the client-credentials grant
//! with a client secret, a certificate-signed client assertion or a federated assertion from
//! the broker's own issuer (module `federated`), `scope={resource}/.default`
//! (one resource), tokens signed by the fake carrying `tid`, `iss` (v1 or v2 form),
//! `appid`/`azp`, `oid`, `roles` (Graph only), `idtyp`, and the real AADSTS error bodies for an
//! unknown tenant, an unconsented app, a bad or expired secret, a bad assertion, a disabled
//! app and `/common`. It records every request, with the client authentication used and never
//! a secret or an assertion. The broker is to decode these tokens, never to
//! trust them: the fake can be told to issue wrong claims.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};

use crate::fake_github::AppKey;
use crate::fake_sts::parse_form;

mod federated;
pub use federated::{ClientAuth, FederatedCredential, JWT_BEARER, TOKEN_EXCHANGE_AUDIENCE};

/// Microsoft Graph's resource URL.
pub const GRAPH: &str = "https://graph.microsoft.com";
/// Azure Resource Manager's resource URL.
pub const ARM: &str = "https://management.azure.com";

/// A customer tenant as the fake sees it.
#[derive(Clone, Debug, Default)]
pub struct FakeTenant {
    /// Whether an admin consented to our app (a service principal exists).
    pub consented: bool,
    /// Object id of our service principal in that tenant.
    pub sp_oid: String,
    /// Application permissions granted to it on Microsoft Graph.
    pub graph_roles: Vec<String>,
    /// Next token requests answered with a transient AADSTS7000229 (consent still
    /// propagating).
    pub propagating: u32,
    /// When the admin granted the application permissions (unix seconds): the
    /// `createdDateTime` of our service principal's app role assignments.
    pub granted_at: i64,
    /// Directory roles (template ids) an admin gave our service principal: every token
    /// carries them in `wids`, besides the app-only marker.
    pub directory_roles: Vec<String>,
}

/// How the fake misbehaves (for the broker's claim checks).
#[derive(Clone, Debug, Default)]
pub struct Misissue {
    /// Issue tokens whose `tid` is this instead of the tenant asked for.
    pub tid: Option<String>,
    /// Issue tokens whose `appid`/`azp` is this instead of our client id.
    pub appid: Option<String>,
    /// Extra roles put into Graph tokens.
    pub extra_roles: Vec<String>,
}

/// Shared state of the fake.
pub struct EntraState {
    /// Our multi-tenant app's client id.
    pub client_id: String,
    /// Valid client secrets.
    pub secrets: Mutex<Vec<String>>,
    /// Expired client secrets (AADSTS7000222).
    pub expired_secrets: Mutex<Vec<String>>,
    /// Certificates registered on the app (PKCS#1 DER public keys) for client assertions.
    pub certificates: Mutex<Vec<Vec<u8>>>,
    /// Whether the app is disabled (AADSTS7000112).
    pub disabled: Mutex<bool>,
    /// Tenants by GUID.
    pub tenants: Mutex<HashMap<String, FakeTenant>>,
    /// Issue v1 tokens (`iss` = `https://sts.windows.net/{tid}/`, `appid`) instead of v2.
    pub v1_tokens: Mutex<bool>,
    /// Deliberately wrong claims.
    pub misissue: Mutex<Misissue>,
    /// Every request: (tenant path segment, form fields minus `client_secret` and
    /// `client_assertion`, plus `client_auth` = `secret` | `certificate` | `federated` |
    /// `none` and, for an assertion, its `assertion_sub` and `assertion_jti` when present).
    pub requests: Mutex<Vec<(String, BTreeMap<String, String>)>>,
    /// The app's federated identity credential (one serves every consented tenant).
    pub federated: Mutex<Option<FederatedCredential>>,
    /// Only the federated credential authenticates: secrets and certificates are refused
    /// as if the app held none.
    pub require_federated: Mutex<bool>,
    /// A broken or hostile upstream: ARM and Graph list answers come back without their
    /// `value` list (`{}` with the paging fields only).
    pub lists_without_value: Mutex<bool>,
    /// A hostile upstream: ARM and Graph list answers carry an array of this many zeros.
    pub list_padding: Mutex<usize>,
    /// Azure RBAC role assignments: (scope, principal object id, role definition GUID).
    pub role_assignments: Mutex<Vec<(String, String, String)>>,
    /// Subscriptions placed under a management group: (group name, subscription GUID).
    pub placements: Mutex<Vec<(String, String)>>,
    /// Security groups: (group object id, member object id).
    pub group_members: Mutex<Vec<(String, String)>>,
    /// Role-assignment reads answered (any scope).
    pub role_reads: Mutex<usize>,
    /// A hostile upstream (or a proxy before it): token requests are answered with this
    /// status and an error whose description repeats the form's `client_secret` (or
    /// assertion), as some echo what they were sent.
    pub echo_secret: Mutex<Option<u16>>,
    /// Redirect URIs registered on the app: an authorization request naming another is
    /// refused (AADSTS50011).
    pub redirect_uris: Mutex<Vec<String>>,
    /// How long the token endpoint takes to answer, ms (a slow sign-in redemption).
    pub token_delay_ms: Mutex<u64>,
    /// Authorization codes issued by sign-ins, until redeemed or expired.
    codes: Mutex<HashMap<String, CodeGrant>>,
    /// Every `x-ms-request-id` the token endpoint and ARM answered with, in order, refusals
    /// included: (`token` | `arm`, id). A refused token request's id is its error's
    /// `trace_id`, as Entra's are. (Graph answers carry `request-id` instead, as Graph's do.)
    pub answered: Mutex<Vec<(&'static str, String)>>,
    signing: AppKey,
    base_url: Mutex<String>,
    counter: AtomicU64,
}

/// The template id of Entra's Global Administrator role.
pub const GLOBAL_ADMIN: &str = "62e90394-69f5-4237-9190-012177145e10";
/// The template id of Entra's Privileged Role Administrator role.
pub const PRIVILEGED_ROLE_ADMIN: &str = "e8611ab8-c189-46e8-94e1-60213ab1f814";
/// The template id of Entra's Cloud Application Administrator role (cannot grant Graph's
/// application permissions).
pub const CLOUD_APP_ADMIN: &str = "158c047a-c907-4556-b7ef-446551a6b5f7";

/// A person signing in at the authorize page.
#[derive(Clone, Debug)]
pub struct SignIn {
    /// The tenant (GUID) whose directory holds the person: they can sign in to it only.
    pub tenant: String,
    /// Their object id there.
    pub oid: String,
    /// Their directory roles (template ids); `None` when the app registration does not ask
    /// for them in the `id_token` (`groupMembershipClaims` unset).
    pub wids: Option<Vec<String>>,
}

impl SignIn {
    /// A Global Administrator of `tenant`.
    pub fn admin(tenant: &str) -> SignIn {
        SignIn {
            tenant: tenant.to_owned(),
            oid: "cccccccc-0000-4000-8000-00000000000a".into(),
            wids: Some(vec![GLOBAL_ADMIN.into()]),
        }
    }

    /// A member of `tenant` without a directory role.
    pub fn member(tenant: &str) -> SignIn {
        SignIn {
            tenant: tenant.to_owned(),
            oid: "cccccccc-0000-4000-8000-00000000000b".into(),
            wids: Some(Vec::new()),
        }
    }
}

#[derive(Clone, Debug)]
struct CodeGrant {
    tenant: String,
    redirect_uri: String,
    nonce: Option<String>,
    person: SignIn,
    issued_at: i64,
}

/// A running fake.
pub struct FakeEntra {
    /// `http://127.0.0.1:PORT` (the authority host).
    pub url: String,
    /// State.
    pub state: Arc<EntraState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeEntra {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `s` is a GUID in Entra's textual form.
pub fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn error_body(status: u16, error: &str, code: u32, text: &str, n: u64) -> (u16, Value) {
    let trace = format!("{n:08x}-1111-2222-3333-444444444444");
    let correlation = format!("{n:08x}-5555-6666-7777-888888888888");
    let timestamp = "2026-11-30 12:00:00Z";
    (
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {timestamp}"),
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

impl EntraState {
    /// Answers `POST /{tenant}/oauth2/v2.0/token` with `form`: (HTTP status, JSON body).
    pub fn token(&self, tenant: &str, form: &HashMap<String, String>) -> (u16, Value) {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let mut recorded: BTreeMap<String, String> = form
            .iter()
            .filter(|(k, _)| k.as_str() != "client_secret" && k.as_str() != "client_assertion")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (auth, assertion_sub, assertion_jti) = federated::classify(&self.client_id, form);
        recorded.insert("client_auth".into(), auth.as_str().into());
        if let Some(sub) = assertion_sub {
            recorded.insert("assertion_sub".into(), sub);
        }
        if let Some(jti) = assertion_jti {
            recorded.insert("assertion_jti".into(), jti);
        }
        self.requests
            .lock()
            .unwrap()
            .push((tenant.to_owned(), recorded));
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        if let Some(status) = *self.echo_secret.lock().unwrap() {
            // A code being redeemed is what such an upstream repeats first.
            let sent = form
                .get("code")
                .or_else(|| form.get("client_secret"))
                .or_else(|| form.get("client_assertion"))
                .cloned()
                .unwrap_or_default();
            return error_body(
                status,
                "invalid_request",
                900144,
                &format!("The request body is not as expected: client_secret={sent}"),
                n,
            );
        }
        if matches!(tenant, "common" | "organizations" | "consumers") {
            return error_body(400, "invalid_request", 9001023, "The grant type isn't supported over the /common or /consumers endpoints. Please use the /organizations or tenant-specific endpoint.", n);
        }
        let code_grant = field("grant_type") == "authorization_code";
        if field("grant_type") != "client_credentials" && !code_grant {
            return error_body(
                400,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type.",
                n,
            );
        }
        if code_grant {
            if field("client_id") != self.client_id {
                return error_body(400, "unauthorized_client", 700016, &format!("Application with identifier '{}' was not found in the directory '{tenant}'.", field("client_id")), n);
            }
            if let Some(refused) = self.client_refused(tenant, form, auth, n) {
                return refused;
            }
            return self.redeem(tenant, form, n);
        }
        let scope = field("scope");
        let resource = match scope.strip_suffix("/.default") {
            Some(r) if !r.is_empty() && !scope.contains(' ') => r.to_owned(),
            _ => {
                return error_body(400, "invalid_scope", 1002012, "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", n)
            }
        };
        let Some(t) = self.tenants.lock().unwrap().get(tenant).cloned() else {
            return error_body(400, "invalid_request", 90002, &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."), n);
        };
        if field("client_id") != self.client_id {
            return error_body(
                400,
                "unauthorized_client",
                700016,
                &format!(
                    "Application with identifier '{}' was not found in the directory '{tenant}'.",
                    field("client_id")
                ),
                n,
            );
        }
        if *self.disabled.lock().unwrap() {
            return error_body(
                400,
                "unauthorized_client",
                7000112,
                // Entra's text names the app (its id and display name).
                &format!(
                    "Application '{}'(credbroker-fake-app) is disabled.",
                    self.client_id
                ),
                n,
            );
        }
        if let Some(refused) = self.client_refused(tenant, form, auth, n) {
            return refused;
        }
        if !t.consented {
            return error_body(400, "invalid_client", 7000229, &format!("The client application {} is missing service principal in the tenant {tenant}.", self.client_id), n);
        }
        if t.propagating > 0 {
            if let Some(t) = self.tenants.lock().unwrap().get_mut(tenant) {
                t.propagating -= 1;
            }
            return error_body(400, "invalid_client", 7000229, &format!("The client application {} is missing service principal in the tenant {tenant}.", self.client_id), n);
        }
        (
            200,
            json!({
                "token_type": "Bearer",
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": self.issue(tenant, &t, &resource),
            }),
        )
    }

    /// Entra's refusal of the request's client authentication, if any.
    fn client_refused(
        &self,
        tenant: &str,
        form: &HashMap<String, String>,
        auth: ClientAuth,
        n: u64,
    ) -> Option<(u16, Value)> {
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        let invalid_secret = "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.";
        let federated_only = *self.require_federated.lock().unwrap();
        if let Some(secret) = form.get("client_secret") {
            if federated_only || !self.secrets.lock().unwrap().contains(secret) {
                if self.expired_secrets.lock().unwrap().contains(secret) && !federated_only {
                    return Some(error_body(
                        401,
                        "invalid_client",
                        7000222,
                        "The provided client secret keys for app are expired.",
                        n,
                    ));
                }
                return Some(error_body(
                    401,
                    "invalid_client",
                    7000215,
                    invalid_secret,
                    n,
                ));
            }
        } else if auth == ClientAuth::Federated {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let mut fic = self.federated.lock().unwrap();
            if let Err(r) = federated::check(fic.as_mut(), field("client_assertion"), now) {
                return Some(error_body(r.status, r.error, r.code, &r.text, n));
            }
        } else if field("client_assertion_type") == JWT_BEARER {
            if federated_only || !self.assertion_ok(tenant, field("client_assertion")) {
                return Some(error_body(401, "invalid_client", 700027, "The certificate with identifier used to sign the client assertion is not registered on application, or the assertion is invalid.", n));
            }
        } else {
            return Some(error_body(401, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.", n));
        }
        None
    }

    /// The browser at `GET /{tenant}/oauth2/v2.0/authorize?{query}` with `person` signing
    /// in (and, for `prompt=consent`, accepting): where Entra sends the browser next, a
    /// redirect to the app's `redirect_uri` with a one-time `code` (or an `error`); or, as
    /// Entra's own error page, `Err` with its AADSTS text when the request cannot be
    /// answered at the redirect URI at all (unknown app, unregistered redirect URI, a person
    /// who is not in that tenant's directory).
    pub fn authorize(&self, tenant: &str, query: &str, person: &SignIn) -> Result<String, String> {
        let q: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let field = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
        if field("client_id") != self.client_id {
            return Err(format!("AADSTS700016: Application with identifier '{}' was not found in the directory '{tenant}'.", field("client_id")));
        }
        let redirect_uri = field("redirect_uri").to_owned();
        if !self.redirect_uris.lock().unwrap().contains(&redirect_uri) {
            return Err(format!("AADSTS50011: The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{}'.", self.client_id));
        }
        if !is_guid(tenant) && !matches!(tenant, "organizations" | "common") {
            return Err(format!("AADSTS90002: Tenant '{tenant}' not found."));
        }
        if matches!(tenant, "organizations" | "common") || person.tenant != tenant {
            return Err(format!("AADSTS50020: User account from identity provider does not exist in tenant '{tenant}' and cannot access the application '{}' in that tenant.", self.client_id));
        }
        let back = |pairs: &[(&str, &str)]| {
            let mut out = form_urlencoded::Serializer::new(String::new());
            for (k, v) in pairs {
                out.append_pair(k, v);
            }
            if let Some(state) = q.get("state") {
                out.append_pair("state", state);
            }
            format!("{redirect_uri}?{}", out.finish())
        };
        if field("response_type") != "code" {
            return Ok(back(&[
                ("error", "unsupported_response_type"),
                (
                    "error_description",
                    "AADSTS70005: response_type 'token' is not enabled for the application.",
                ),
            ]));
        }
        let scopes: Vec<&str> = field("scope").split(' ').collect();
        if !scopes.contains(&"openid") {
            return Ok(back(&[
                ("error", "invalid_request"),
                ("error_description", "AADSTS900144: The request body must contain the following parameter: 'openid' scope for an id_token."),
            ]));
        }
        let mut raw = [0u8; 32];
        aws_lc_rs::rand::fill(&mut raw).unwrap();
        use base64::Engine;
        let code = format!(
            "1.AQ{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        self.codes.lock().unwrap().insert(
            code.clone(),
            CodeGrant {
                tenant: tenant.to_owned(),
                redirect_uri: redirect_uri.clone(),
                nonce: q.get("nonce").cloned(),
                person: person.clone(),
                issued_at: time::OffsetDateTime::now_utc().unix_timestamp(),
            },
        );
        Ok(back(&[
            ("code", &code),
            ("session_state", "dddddddd-0000-4000-8000-000000000001"),
        ]))
    }

    /// The authorization-code grant: the code of a sign-in at this tenant, for our app and
    /// the same redirect URI, once, within ten minutes; answered with an access token and
    /// the `id_token` naming the person.
    fn redeem(&self, tenant: &str, form: &HashMap<String, String>, n: u64) -> (u16, Value) {
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        let invalid = |code: u32, text: &str| error_body(400, "invalid_grant", code, text, n);
        // Redeemed or not, a code is good for one request.
        let Some(grant) = self.codes.lock().unwrap().remove(field("code")) else {
            return invalid(54005, "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.");
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if now - grant.issued_at > 600 {
            return invalid(70008, "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.");
        }
        if grant.tenant != tenant || grant.redirect_uri != field("redirect_uri") {
            return invalid(70000, "The request was denied because one or more scopes requested are unauthorized or expired. The user must first sign in and grant the client application access to the requested scope.");
        }
        let m = self.misissue.lock().unwrap().clone();
        let tid = m.tid.unwrap_or_else(|| tenant.to_owned());
        let mut claims = json!({
            "aud": m.appid.clone().unwrap_or_else(|| self.client_id.clone()),
            "iss": format!("https://login.microsoftonline.com/{tid}/v2.0"),
            "iat": now, "nbf": now, "exp": now + 3600,
            "tid": tid,
            "oid": grant.person.oid, "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
            "ver": "2.0",
        });
        if let Some(nonce) = &grant.nonce {
            claims["nonce"] = json!(nonce);
        }
        if let Some(wids) = &grant.person.wids {
            claims["wids"] = json!(wids);
        }
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("fake-entra-signing".into());
        let key = EncodingKey::from_rsa_pem(self.signing.private_pem.as_bytes()).unwrap();
        let id_token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        let access = json!({
            "aud": "00000003-0000-0000-c000-000000000000",
            "iss": format!("https://sts.windows.net/{tid}/"),
            "iat": now, "nbf": now, "exp": now + 3600,
            "tid": tid, "oid": grant.person.oid, "scp": "openid profile User.Read",
            "appid": self.client_id,
        });
        let access_token = jsonwebtoken::encode(&header, &access, &key).unwrap();
        (
            200,
            json!({
                "token_type": "Bearer",
                "scope": "openid profile https://graph.microsoft.com/.default",
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": access_token,
                "id_token": id_token,
            }),
        )
    }

    fn assertion_ok(&self, tenant: &str, jwt: &str) -> bool {
        let aud = format!(
            "{}/{tenant}/oauth2/v2.0/token",
            self.base_url.lock().unwrap()
        );
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[aud]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = 0;
        for der in self.certificates.lock().unwrap().iter() {
            let Ok(data) =
                jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_rsa_der(der), &validation)
            else {
                continue;
            };
            let c = &data.claims;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let lifetime_ok = c["exp"].as_i64().unwrap_or(0) <= now + 600;
            return c["iss"] == self.client_id
                && c["sub"] == self.client_id
                && c.get("jti").is_some()
                && lifetime_ok;
        }
        false
    }

    fn issue(&self, tenant: &str, t: &FakeTenant, resource: &str) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let m = self.misissue.lock().unwrap().clone();
        let tid = m.tid.unwrap_or_else(|| tenant.to_owned());
        let appid = m.appid.unwrap_or_else(|| self.client_id.clone());
        let v1 = *self.v1_tokens.lock().unwrap();
        let mut claims = json!({
            "aud": resource,
            "iat": now, "nbf": now, "exp": now + 3599,
            "tid": tid,
            "oid": t.sp_oid, "sub": t.sp_oid,
            "idtyp": "app",
        });
        // Entra's app-only tokens carry this id in `wids` (no directory role has it), and
        // every directory role the service principal holds.
        let mut wids = vec!["0997a1d0-0d1d-4acb-b408-d5ca73121e90".to_owned()];
        wids.extend(t.directory_roles.iter().cloned());
        claims["wids"] = json!(wids);
        if v1 {
            claims["iss"] = json!(format!("https://sts.windows.net/{tid}/"));
            claims["appid"] = json!(appid);
            claims["ver"] = json!("1.0");
        } else {
            claims["iss"] = json!(format!("https://login.microsoftonline.com/{tid}/v2.0"));
            claims["azp"] = json!(appid);
            claims["ver"] = json!("2.0");
        }
        if resource == GRAPH {
            let mut roles = t.graph_roles.clone();
            roles.extend(m.extra_roles);
            claims["roles"] = json!(roles);
        }
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("fake-entra-signing".into());
        let key = EncodingKey::from_rsa_pem(self.signing.private_pem.as_bytes());
        key.and_then(|k| jsonwebtoken::encode(&header, &claims, &k))
            .unwrap_or_default()
    }

    /// Claims of a bearer this fake issued for `audience`, when valid.
    fn bearer_claims(&self, bearer: Option<&str>, audience: &str) -> Option<Value> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[audience]);
        let public = DecodingKey::from_rsa_der(&self.signing.public_der);
        bearer
            .and_then(|t| jsonwebtoken::decode::<Value>(t, &public, &validation).ok())
            .map(|d| d.claims)
    }

    /// Graph `GET /v1.0/servicePrincipals(appId='{appId}')/appRoleAssignments`: the
    /// application permissions granted to our service principal in the token's tenant, with
    /// their `createdDateTime`. Needs Application.Read.All.
    fn app_role_assignments(&self, sp: &str, bearer: Option<&str>) -> (u16, Value) {
        let denied = |status: u16, code: &str, message: &str| {
            (
                status,
                json!({"error": {"code": code, "message": message, "innerError": {"request-id": "00000000-0000-0000-0000-000000000000"}}}),
            )
        };
        let Some(claims) = self.bearer_claims(bearer, GRAPH) else {
            return denied(
                401,
                "InvalidAuthenticationToken",
                "Access token validation failure.",
            );
        };
        let roles: Vec<&str> = claims["roles"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !roles.contains(&"Application.Read.All") {
            return denied(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            );
        }
        if sp != format!("servicePrincipals(appId='{}')", self.client_id) {
            return denied(404, "Request_ResourceNotFound", "Resource does not exist or one of its queried reference-property objects are not present.");
        }
        let tid = claims["tid"].as_str().unwrap_or("");
        let Some(t) = self.tenants.lock().unwrap().get(tid).cloned() else {
            return denied(404, "Request_ResourceNotFound", "Resource does not exist.");
        };
        let created = time::OffsetDateTime::from_unix_timestamp(t.granted_at)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let value: Vec<Value> = t
            .graph_roles
            .iter()
            .enumerate()
            .map(|(i, _)| {
                json!({
                    "id": format!("assign{i:04}"),
                    "deletedDateTime": null,
                    "appRoleId": format!("{i:08}-1111-4111-8111-111111111111"),
                    "createdDateTime": created,
                    "principalDisplayName": "credbroker",
                    "principalId": t.sp_oid,
                    "principalType": "ServicePrincipal",
                    "resourceDisplayName": "Microsoft Graph",
                    "resourceId": "99999999-0000-4000-8000-00000000aaaa",
                })
            })
            .collect();
        (200, json!({ "value": value }))
    }

    /// ARM `GET /subscriptions?api-version=…`: the subscriptions the token's principal holds
    /// any role in.
    fn subscriptions(&self, query: &str, bearer: Option<&str>) -> (u16, Value) {
        let Some(claims) = self.bearer_claims(bearer, ARM) else {
            return (
                401,
                json!({"error": {"code": "InvalidAuthenticationToken", "message": "The access token is invalid."}}),
            );
        };
        if !parse_form(query).contains_key("api-version") {
            return (
                400,
                json!({"error": {"code": "MissingApiVersionParameter", "message": "The api-version query parameter (?api-version=) is required for all requests."}}),
            );
        }
        let oid = claims["oid"].as_str().unwrap_or("").to_owned();
        let tid = claims["tid"].as_str().unwrap_or("").to_owned();
        // What a role reaches the principal through: itself and the groups it is in.
        let principals = self.principal_and_groups(&oid);
        let mut ids: Vec<String> = self
            .role_assignments
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p, _)| principals.contains(p))
            .filter_map(|(s, _, _)| {
                s.strip_prefix("/subscriptions/")
                    .map(|r| r.split('/').next().unwrap_or("").to_owned())
            })
            .collect();
        // A role at a management group reaches every subscription placed under it.
        let groups: Vec<String> = self
            .role_assignments
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p, _)| principals.contains(p))
            .filter_map(|(s, _, _)| {
                s.strip_prefix("/providers/Microsoft.Management/managementGroups/")
                    .map(str::to_owned)
            })
            .collect();
        ids.extend(
            self.placements
                .lock()
                .unwrap()
                .iter()
                .filter(|(g, _)| groups.contains(g))
                .map(|(_, s)| s.clone()),
        );
        ids.sort();
        ids.dedup();
        let value: Vec<Value> = ids
            .iter()
            .map(|id| json!({"id": format!("/subscriptions/{id}"), "subscriptionId": id, "tenantId": tid, "displayName": "sub", "state": "Enabled"}))
            .collect();
        (
            200,
            json!({ "value": value, "count": {"type": "Total", "value": value.len()} }),
        )
    }

    /// `principal` and the security groups it is a member of.
    fn principal_and_groups(&self, principal: &str) -> Vec<String> {
        let mut all = vec![principal.to_owned()];
        all.extend(
            self.group_members
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, m)| m == principal)
                .map(|(g, _)| g.clone()),
        );
        all
    }

    /// ARM `GET {scope}/providers/Microsoft.Authorization/roleAssignments?api-version=…&$filter=…`
    /// with an ARM token this fake issued: `principalId eq '{id}'` lists what was given to
    /// that principal itself, `assignedTo('{id}')` also what was given to a group it is in
    /// (each naming the principal it was given to), no filter everything at the scope.
    fn role_assignments_at(&self, scope: &str, query: &str, bearer: Option<&str>) -> (u16, Value) {
        *self.role_reads.lock().unwrap() += 1;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[ARM]);
        validation.validate_exp = true;
        let claims = bearer.and_then(|t| {
            let public = DecodingKey::from_rsa_der(&self.signing.public_der);
            jsonwebtoken::decode::<Value>(t, &public, &validation).ok()
        });
        let Some(claims) = claims else {
            return (
                401,
                json!({"error": {"code": "InvalidAuthenticationToken", "message": "The access token is invalid."}}),
            );
        };
        let params = parse_form(query);
        if params.get("api-version").map(String::as_str) != Some("2022-04-01") {
            return (
                400,
                json!({"error": {"code": "InvalidApiVersionParameter", "message": "The api-version is invalid."}}),
            );
        }
        let filter = params.get("$filter").map(String::as_str).unwrap_or("");
        let principals: Option<Vec<String>> = if let Some(id) = filter
            .strip_prefix("principalId eq '")
            .and_then(|f| f.strip_suffix('\''))
        {
            Some(vec![id.to_owned()])
        } else if let Some(id) = filter
            .strip_prefix("assignedTo('")
            .and_then(|f| f.strip_suffix("')"))
        {
            Some(self.principal_and_groups(id))
        } else if filter.is_empty() {
            None
        } else {
            return (
                400,
                json!({"error": {"code": "InvalidFilter", "message": "The filter is invalid."}}),
            );
        };
        let tid = claims.claims["tid"].as_str().unwrap_or("").to_owned();
        let groups: Vec<String> = self
            .group_members
            .lock()
            .unwrap()
            .iter()
            .map(|(g, _)| g.clone())
            .collect();
        let value: Vec<Value> = self
            .role_assignments
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, p, _)| s == scope && principals.as_ref().is_none_or(|x| x.contains(p)))
            .enumerate()
            .map(|(i, (s, p, role))| {
                json!({
                    "id": format!("{s}/providers/Microsoft.Authorization/roleAssignments/{i:08}-0000-0000-0000-000000000000"),
                    "name": format!("{i:08}-0000-0000-0000-000000000000"),
                    "type": "Microsoft.Authorization/roleAssignments",
                    "properties": {
                        "roleDefinitionId": format!("{s}/providers/Microsoft.Authorization/roleDefinitions/{role}"),
                        "principalId": p,
                        "principalType": if groups.contains(p) { "Group" } else { "ServicePrincipal" },
                        "scope": s,
                        "tenantId": tid,
                    }
                })
            })
            .collect();
        (200, json!({ "value": value }))
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let bearer = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let post = req.method() == hyper::Method::POST;
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if post && path.ends_with("/oauth2/v2.0/token") {
            let delay = *self.token_delay_ms.lock().unwrap();
            if delay > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            }
        }
        const ASSIGNMENTS: &str = "/providers/Microsoft.Authorization/roleAssignments";
        let ((status, value), service) = match segs.as_slice() {
            [tenant, "oauth2", "v2.0", "token"] if post => (
                self.token(tenant, &parse_form(&String::from_utf8_lossy(&body))),
                Some("token"),
            ),
            ["v1.0", sp, "appRoleAssignments"] if !post => (
                self.app_role_assignments(sp, bearer.as_deref()),
                Some("graph"),
            ),
            ["subscriptions"] if !post => {
                (self.subscriptions(&query, bearer.as_deref()), Some("arm"))
            }
            _ if !post && path.ends_with(ASSIGNMENTS) => (
                self.role_assignments_at(
                    path.trim_end_matches(ASSIGNMENTS),
                    &query,
                    bearer.as_deref(),
                ),
                Some("arm"),
            ),
            _ => ((404, json!({"error": "not_found"})), None),
        };
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let request_id = value["trace_id"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{n:08x}-9999-4aaa-8bbb-cccccccccccc"));
        // A path no service serves is answered without an id.
        let id_header = match service {
            Some("graph") => Some("request-id"),
            Some(service) => {
                self.answered
                    .lock()
                    .unwrap()
                    .push((service, request_id.clone()));
                Some("x-ms-request-id")
            }
            None => None,
        };
        let mut value = value;
        if *self.lists_without_value.lock().unwrap() {
            if let Some(o) = value.as_object_mut() {
                o.remove("value");
            }
        }
        let padding = *self.list_padding.lock().unwrap();
        if padding > 0 {
            if let Some(o) = value.as_object_mut() {
                o.insert("padding".into(), json!(vec![0u8; padding]));
            }
        }
        let mut answer = Response::builder()
            .status(status)
            .header("content-type", "application/json; charset=utf-8");
        if let Some(name) = id_header {
            answer = answer.header(name, request_id);
        }
        answer
            .body(Full::new(Bytes::from(value.to_string())))
            .unwrap_or_default()
    }
}

impl FakeEntra {
    /// Starts the fake for our app `client_id`, accepting `secret`.
    pub async fn start(client_id: &str, secret: &str) -> FakeEntra {
        let state = Arc::new(EntraState {
            client_id: client_id.to_owned(),
            secrets: Mutex::new(vec![secret.to_owned()]),
            expired_secrets: Mutex::new(Vec::new()),
            certificates: Mutex::new(Vec::new()),
            disabled: Mutex::new(false),
            tenants: Mutex::new(HashMap::new()),
            v1_tokens: Mutex::new(false),
            misissue: Mutex::new(Misissue::default()),
            requests: Mutex::new(Vec::new()),
            federated: Mutex::new(None),
            require_federated: Mutex::new(false),
            lists_without_value: Mutex::new(false),
            list_padding: Mutex::new(0),
            role_assignments: Mutex::new(Vec::new()),
            placements: Mutex::new(Vec::new()),
            group_members: Mutex::new(Vec::new()),
            role_reads: Mutex::new(0),
            echo_secret: Mutex::new(None),
            redirect_uris: Mutex::new(Vec::new()),
            token_delay_ms: Mutex::new(0),
            codes: Mutex::new(HashMap::new()),
            answered: Mutex::new(Vec::new()),
            signing: AppKey::generate(),
            base_url: Mutex::new(String::new()),
            counter: AtomicU64::new(1),
        });
        let s = state.clone();
        let (url, task) = crate::loopback::serve(move |req| s.clone().handle(req)).await;
        *state.base_url.lock().unwrap() = url.clone();
        FakeEntra { url, state, task }
    }

    /// A customer tenant that consented, granting `graph_roles`.
    pub fn consent(&self, tenant: &str, sp_oid: &str, graph_roles: &[&str]) {
        self.state.tenants.lock().unwrap().insert(
            tenant.to_owned(),
            FakeTenant {
                consented: true,
                sp_oid: sp_oid.to_owned(),
                graph_roles: graph_roles.iter().map(|r| (*r).to_owned()).collect(),
                propagating: 0,
                granted_at: time::OffsetDateTime::now_utc().unix_timestamp(),
                directory_roles: Vec::new(),
            },
        );
    }

    /// Registers `uri` as a redirect URI of our app.
    pub fn register_redirect_uri(&self, uri: &str) {
        self.state
            .redirect_uris
            .lock()
            .unwrap()
            .push(uri.to_owned());
    }

    /// The browser following `location` (an authorization request of this fake, as the
    /// broker's consent link redirects to) with `person` signing in: the URL Entra sends the
    /// browser back to, or Entra's error page text.
    pub fn sign_in(&self, location: &str, person: &SignIn) -> Result<String, String> {
        let rest = location
            .strip_prefix(&self.url)
            .unwrap_or_else(|| panic!("not this fake's URL: {location}"));
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segs.as_slice() {
            [tenant, "oauth2", "v2.0", "authorize"] => self.state.authorize(tenant, query, person),
            _ => panic!("not an authorization request: {location}"),
        }
    }

    /// Makes `tenant`'s grants `secs` older (a consent given long before any link).
    pub fn age(&self, tenant: &str, secs: i64) {
        if let Some(t) = self.state.tenants.lock().unwrap().get_mut(tenant) {
            t.granted_at -= secs;
        }
    }

    /// A tenant that exists but has not consented to our app.
    pub fn add_unconsented(&self, tenant: &str) {
        self.state
            .tenants
            .lock()
            .unwrap()
            .insert(tenant.to_owned(), FakeTenant::default());
    }

    /// The customer deletes our enterprise application (withdraws consent).
    pub fn withdraw(&self, tenant: &str) {
        if let Some(t) = self.state.tenants.lock().unwrap().get_mut(tenant) {
            t.consented = false;
        }
    }

    /// Places subscription `subscription` (a GUID) under management group `group`.
    pub fn place(&self, group: &str, subscription: &str) {
        self.state
            .placements
            .lock()
            .unwrap()
            .push((group.to_owned(), subscription.to_owned()));
    }

    /// Makes `member` (an object id) a member of security group `group`.
    pub fn add_to_group(&self, group: &str, member: &str) {
        self.state
            .group_members
            .lock()
            .unwrap()
            .push((group.to_owned(), member.to_owned()));
    }

    /// Assigns Azure role `role` (a role definition GUID) to `principal` at `scope`.
    pub fn assign(&self, scope: &str, principal: &str, role: &str) {
        self.state.role_assignments.lock().unwrap().push((
            scope.to_owned(),
            principal.to_owned(),
            role.to_owned(),
        ));
    }

    /// Puts the federated identity credential on our app (replacing any): assertions with
    /// `iss` = `issuer`, `sub` = `subject`, `aud` = `audience` (normally
    /// [`TOKEN_EXCHANGE_AUDIENCE`]) signed by a key of `jwks` (the issuer's `{"keys": [...]}`,
    /// e.g. what the broker publishes) authenticate the app in every consented tenant.
    pub fn set_federated_credential(
        &self,
        issuer: &str,
        subject: &str,
        audience: &str,
        jwks: Value,
    ) {
        *self.state.federated.lock().unwrap() = Some(FederatedCredential {
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            audience: audience.to_owned(),
            jwks,
            propagating: 0,
        });
    }

    /// Replaces the keys Entra knows for the FIC's issuer (after the broker rotated its key:
    /// Entra refetches the JWKS; a test re-hands it).
    pub fn set_federated_jwks(&self, jwks: Value) {
        if let Some(f) = self.state.federated.lock().unwrap().as_mut() {
            f.jwks = jwks;
        }
    }

    /// The next `n` federated token requests get AADSTS70021, as for a few minutes after a
    /// FIC is created.
    pub fn federated_propagating(&self, n: u32) {
        if let Some(f) = self.state.federated.lock().unwrap().as_mut() {
            f.propagating = n;
        }
    }

    /// Deletes the federated identity credential (assertions then get AADSTS70021).
    pub fn remove_federated_credential(&self) {
        *self.state.federated.lock().unwrap() = None;
    }

    /// With `true`, only the federated credential authenticates: a secret is refused with
    /// AADSTS7000215 and a certificate assertion with AADSTS700027, as when the app holds
    /// only the FIC.
    pub fn require_federated(&self, on: bool) {
        *self.state.require_federated.lock().unwrap() = on;
    }

    /// The `client_auth` of every token request for `tenant`, in order (`secret`,
    /// `certificate`, `federated`, `none`).
    pub fn client_auths(&self, tenant: &str) -> Vec<String> {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == tenant)
            .filter_map(|(_, f)| f.get("client_auth").cloned())
            .collect()
    }

    /// The customer removes one granted application permission.
    pub fn revoke_role(&self, tenant: &str, role: &str) {
        if let Some(t) = self.state.tenants.lock().unwrap().get_mut(tenant) {
            t.graph_roles.retain(|r| r != role);
        }
    }
}

// ---- Driving the broker's Entra admin API (shared by the Entra tests) ----

/// The first 16 bytes of the SHA-256 of `secret`, in hex: what an unkeyed fingerprint of it
/// would show.
pub fn plain_secret_hash(secret: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.trim().as_bytes());
    hex::encode(&d.as_ref()[..16])
}

/// Stores and activates one client secret of the app; its version.
pub async fn add_client_secret(op: &mut credbroker::client::BrokerClient, secret: &str) -> u64 {
    let (s, v) = crate::call(
        op,
        http::Method::POST,
        "/v1/admin/keys/entra_multi_tenant",
        Some(json!({"fields": {"client_secret": secret}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert!(!v.to_string().contains(secret), "secret echoed: {v}");
    // Listed with a keyed fingerprint: a plain hash would let whoever reads the list or the
    // audit log confirm a guessed secret offline.
    assert!(
        v["key"]["fingerprint"]
            .as_str()
            .unwrap_or("")
            .starts_with("client-secret:hmac-sha256:"),
        "{v}"
    );
    assert!(
        !v.to_string().contains(&plain_secret_hash(secret)),
        "a plain hash of the secret: {v}"
    );
    let version = v["key"]["version"].as_u64().unwrap();
    let (s, v) = crate::call(
        op,
        http::Method::POST,
        &format!("/v1/admin/keys/entra_multi_tenant/{version}/activate"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    version
}

/// Onboards `tenant` for the customer tenant `guid`: the state of the consent link.
pub async fn onboard(
    op: &mut credbroker::client::BrokerClient,
    tenant: &str,
    guid: &str,
) -> String {
    let (s, v) = crate::call(
        op,
        http::Method::POST,
        "/v1/admin/onboard/entra_multi_tenant",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "tenant": tenant, "account": {"login": guid, "id": 0}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let url = v["install_url"].as_str().unwrap();
    assert!(
        url.contains("/callbacks/entra_multi_tenant/start?state="),
        "{url}"
    );
    url.rsplit("state=").next().unwrap().to_owned()
}

/// Opens the consent link in a browser: (status, cookie, Location).
pub async fn open_link(
    public: &mut credbroker::client::BrokerClient,
    state: &str,
) -> (u16, Option<String>, String) {
    let (status, headers, _) = public
        .exchange(
            http::Method::GET,
            &format!("/callbacks/entra_multi_tenant/start?state={state}"),
            &[],
            None,
        )
        .await
        .unwrap();
    let header = |n: http::HeaderName| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    (
        status.as_u16(),
        header(http::header::SET_COOKIE).map(|c| c.split(';').next().unwrap().to_owned()),
        header(http::header::LOCATION).unwrap_or_default(),
    )
}

/// `GET /callbacks/entra_multi_tenant/setup?{query}`, with the browser's cookie if any:
/// (status, JSON answer), as [`crate::setup_return`] reports it.
pub async fn callback(
    public: &mut credbroker::client::BrokerClient,
    query: &str,
    cookie: Option<&str>,
) -> (u16, Value) {
    crate::setup_return(public, "entra_multi_tenant", query, cookie).await
}

/// The admin's browser after opening the consent link: it follows the link's `location` to
/// the fake's authorize page, where `person` signs in and consents, and brings what Entra
/// sends back to the broker's setup callback with the link's `cookie`: (status, JSON
/// answer).
pub async fn come_back(
    public: &mut credbroker::client::BrokerClient,
    entra: &FakeEntra,
    location: &str,
    cookie: Option<&str>,
    person: &SignIn,
) -> (u16, Value) {
    let back = entra
        .sign_in(location, person)
        .unwrap_or_else(|page| panic!("Entra showed an error page: {page}"));
    let query = back
        .split_once('?')
        .map(|(_, q)| q.to_owned())
        .unwrap_or_default();
    callback(public, &query, cookie).await
}

/// `guid`'s admin consents through a link of `tenant`'s, which proves the GUID is that
/// tenant's; then the binding the consent made is removed. The GUID may then be bound by
/// hand for `tenant` (as the onboarding runbook's ARM step does), and for no other tenant.
pub async fn prove_then_unbind(
    op: &mut credbroker::client::BrokerClient,
    public: &mut credbroker::client::BrokerClient,
    entra: &FakeEntra,
    tenant: &str,
    guid: &str,
) {
    let state = onboard(op, tenant, guid).await;
    let (s, cookie, location) = open_link(public, &state).await;
    assert_eq!(s, 302, "the link opens");
    let (s, v) = come_back(
        public,
        entra,
        &location,
        cookie.as_deref(),
        &SignIn::admin(guid),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let binding = v["binding"].as_str().unwrap().to_owned();
    let (s, v) = crate::call(
        op,
        http::Method::DELETE,
        &format!("/v1/admin/bindings/{binding}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
}
