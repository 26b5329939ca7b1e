//! Every HTTP route the daemon serves, as data: one table per listener, matched by
//! `matchit` (the router axum is built on). The server dispatches on the matched
//! [`Endpoint`]; the admin API builds its operations from the matched parameters. A route's
//! allowed methods are part of its entry, so a wrong method is `method_not_allowed` and an
//! unknown path `not_found`, decided in one place.
//!
//! axum itself is not used: its response body type carries `Bytes`, so a resolve answer
//! would be copied out of the zeroizing buffer the credential lives in (`body.rs`).

use std::sync::LazyLock;

use http::Method;

use crate::api_error::{ApiError, ErrorCode};

/// What a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /healthz`
    Healthz,
    /// `GET /readyz`
    Readyz,
    /// `GET /metrics`
    Metrics,
    /// `POST /v1/resolve`
    Resolve,
    /// `GET /v1/openapi.json`
    OpenApi,
    /// `POST /v1/webhooks/verify`: a worker asks whether an inbound event was signed with
    /// its instance's webhook secret.
    WebhookVerify,
    /// An admin API route.
    Admin(AdminEndpoint),
    /// `GET /callbacks/{provider}/start`: the install link; binds the state to the browser.
    CallbackStart,
    /// `GET /callbacks/{provider}/setup`
    CallbackSetup,
    /// `POST /callbacks/{provider}/webhook`
    CallbackWebhook,
    /// `GET|POST /intake/{token}`: the one-time intake page.
    Intake,
    /// `POST /forge/{kind}` (`invoke`, `trigger`, `lifecycle`): a signed Forge Remote call.
    ForgeRemote,
    /// `GET /.well-known/openid-configuration`: the OIDC issuer's discovery document.
    OidcDiscovery,
    /// `GET /.well-known/jwks.json`: the OIDC issuer's published keys.
    OidcJwks,
}

/// The admin API's routes (below `/v1/admin/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminEndpoint {
    /// `/v1/admin/{collection}`: list, add.
    Collection,
    /// `/v1/admin/{collection}/{id}`: show, remove.
    Record,
    /// `/v1/admin/{collection}/{id}/{action}`: enable, disable, probe (bindings).
    RecordAction,
    /// `/v1/admin/bindings/{id}/secret`: set, destroy every version.
    Secret,
    /// `/v1/admin/bindings/{id}/secret/rotate`
    SecretRotate,
    /// `/v1/admin/bindings/{id}/secret/{version}`: destroy one version.
    SecretVersion,
    /// `/v1/admin/bindings/{id}/secret/{version}/promote`: make a pending version active.
    SecretPromote,
    /// `/v1/admin/bindings/{id}/secret/self-rotate`: the current secret creates its successor.
    SecretSelfRotate,
    /// `/v1/admin/workers/{id}/tenants`: replace the tenants (and connector kinds) a worker
    /// may serve, without removing it.
    WorkerTenants,
    /// `/v1/admin/intake`: list, create one-time intake links.
    IntakeLinks,
    /// `/v1/admin/intake/{id}`: revoke one.
    IntakeLink,
    /// `/v1/admin/onboarding-links`: the install links and site expectations still out.
    OnboardingLinks,
    /// `/v1/admin/onboarding-links/{id}`: revoke one.
    OnboardingLink,
    /// `/v1/admin/onboard/{provider}`
    Onboard,
    /// `/v1/admin/keys/{provider}`: list, add.
    Keys,
    /// `/v1/admin/keys/{provider}/{version}/{action}`: activate, retire.
    KeyAction,
    /// `/v1/admin/providers/{provider}/revoke-cached`
    RevokeCached,
    /// `/v1/admin/unclaimed`: installations kept for an operator.
    Unclaimed,
    /// `/v1/admin/unclaimed/claim`: bind one explicitly to a tenant.
    ClaimUnclaimed,
    /// `/v1/admin/unclaimed/ignore`: stop counting some against the cap.
    IgnoreUnclaimed,
    /// `/v1/admin/issuer/keys`: list (GET) or rotate (POST) the OIDC issuer's keys.
    IssuerKeys,
    /// `/v1/admin/issuer/keys/{version}/retire`.
    IssuerKeyRetire,
    /// `/v1/admin/issuer/jwks`: the published JWKS.
    IssuerJwks,
    /// `/v1/admin/inventory`: every binding and worker with owner, age, last use and flags.
    Inventory,
    /// `/v1/admin/bindings/{id}/governance`: set owner, purpose, rotation policy.
    BindingGovernance,
    /// `/v1/admin/workers/{id}/governance`: set owner and purpose.
    WorkerGovernance,
    /// `/v1/admin/providers`: the provider catalog.
    Providers,
    /// `/v1/admin/providers/{provider}`: one provider's catalog entry.
    Provider,
    /// `/v1/admin/instances/{id}/webhook-secret`: generate (POST), describe (GET), retire
    /// (DELETE).
    WebhookSecret,
    /// `/v1/admin/instances/{id}/webhook-secret/{action}`: reveal, rotate.
    WebhookSecretAction,
}

/// One route: its path pattern, what it is for, and the methods it accepts.
#[derive(Debug)]
pub struct Route {
    /// `matchit` pattern.
    pub path: &'static str,
    /// What it is for.
    pub endpoint: Endpoint,
    /// Accepted methods.
    pub methods: &'static [Method],
}

const fn route(path: &'static str, endpoint: Endpoint, methods: &'static [Method]) -> Route {
    Route {
        path,
        endpoint,
        methods,
    }
}

const GET: &[Method] = &[Method::GET];
const POST: &[Method] = &[Method::POST];
const GET_POST: &[Method] = &[Method::GET, Method::POST];
const GET_DELETE: &[Method] = &[Method::GET, Method::DELETE];
const GET_POST_DELETE: &[Method] = &[Method::GET, Method::POST, Method::DELETE];
const PUT_DELETE: &[Method] = &[Method::PUT, Method::DELETE];
const DELETE: &[Method] = &[Method::DELETE];
const PUT: &[Method] = &[Method::PUT];

use AdminEndpoint as A;
use Endpoint as E;

/// The mutual-TLS listener: resolve, admin API, health and metrics.
pub const MTLS: &[Route] = &[
    route("/healthz", E::Healthz, GET),
    route("/readyz", E::Readyz, GET),
    route("/metrics", E::Metrics, GET),
    route("/v1/resolve", E::Resolve, POST),
    route("/v1/webhooks/verify", E::WebhookVerify, POST),
    route("/v1/openapi.json", E::OpenApi, GET),
    route("/v1/admin/{collection}", E::Admin(A::Collection), GET_POST),
    route(
        "/v1/admin/{collection}/{id}",
        E::Admin(A::Record),
        GET_DELETE,
    ),
    route(
        "/v1/admin/{collection}/{id}/{action}",
        E::Admin(A::RecordAction),
        POST,
    ),
    // Bindings have their own subtree (secrets); matchit prefers static segments, so the
    // record routes are repeated under it.
    route("/v1/admin/bindings", E::Admin(A::Collection), GET_POST),
    route("/v1/admin/bindings/{id}", E::Admin(A::Record), GET_DELETE),
    route(
        "/v1/admin/bindings/{id}/{action}",
        E::Admin(A::RecordAction),
        POST,
    ),
    route(
        "/v1/admin/bindings/{id}/secret",
        E::Admin(A::Secret),
        PUT_DELETE,
    ),
    route(
        "/v1/admin/bindings/{id}/secret/rotate",
        E::Admin(A::SecretRotate),
        POST,
    ),
    route(
        "/v1/admin/bindings/{id}/secret/{version}",
        E::Admin(A::SecretVersion),
        DELETE,
    ),
    route(
        "/v1/admin/bindings/{id}/secret/self-rotate",
        E::Admin(A::SecretSelfRotate),
        POST,
    ),
    route(
        "/v1/admin/bindings/{id}/secret/{version}/promote",
        E::Admin(A::SecretPromote),
        POST,
    ),
    route(
        "/v1/admin/workers/{id}/tenants",
        E::Admin(A::WorkerTenants),
        PUT,
    ),
    route(
        "/v1/admin/workers/{id}/governance",
        E::Admin(A::WorkerGovernance),
        PUT,
    ),
    route(
        "/v1/admin/bindings/{id}/governance",
        E::Admin(A::BindingGovernance),
        PUT,
    ),
    route(
        "/v1/admin/instances/{id}/webhook-secret",
        E::Admin(A::WebhookSecret),
        GET_POST_DELETE,
    ),
    route(
        "/v1/admin/instances/{id}/webhook-secret/{action}",
        E::Admin(A::WebhookSecretAction),
        POST,
    ),
    route("/v1/admin/inventory", E::Admin(A::Inventory), GET),
    route("/v1/admin/providers", E::Admin(A::Providers), GET),
    route("/v1/admin/providers/{provider}", E::Admin(A::Provider), GET),
    route("/v1/admin/onboard/{provider}", E::Admin(A::Onboard), POST),
    route("/v1/admin/intake", E::Admin(A::IntakeLinks), GET_POST),
    route("/v1/admin/intake/{id}", E::Admin(A::IntakeLink), DELETE),
    route(
        "/v1/admin/onboarding-links",
        E::Admin(A::OnboardingLinks),
        GET,
    ),
    route(
        "/v1/admin/onboarding-links/{id}",
        E::Admin(A::OnboardingLink),
        DELETE,
    ),
    route("/v1/admin/unclaimed", E::Admin(A::Unclaimed), GET),
    route(
        "/v1/admin/unclaimed/claim",
        E::Admin(A::ClaimUnclaimed),
        POST,
    ),
    route(
        "/v1/admin/unclaimed/ignore",
        E::Admin(A::IgnoreUnclaimed),
        POST,
    ),
    route("/v1/admin/keys/{provider}", E::Admin(A::Keys), GET_POST),
    route(
        "/v1/admin/keys/{provider}/{version}/{action}",
        E::Admin(A::KeyAction),
        POST,
    ),
    route("/v1/admin/issuer/keys", E::Admin(A::IssuerKeys), GET_POST),
    route(
        "/v1/admin/issuer/keys/{version}/retire",
        E::Admin(A::IssuerKeyRetire),
        POST,
    ),
    route("/v1/admin/issuer/jwks", E::Admin(A::IssuerJwks), GET),
    route(
        "/v1/admin/providers/{provider}/revoke-cached",
        E::Admin(A::RevokeCached),
        POST,
    ),
];

/// The public listener: provider callbacks and health, nothing else.
pub const PUBLIC: &[Route] = &[
    route("/healthz", E::Healthz, GET),
    route("/callbacks/{provider}/start", E::CallbackStart, GET),
    route("/callbacks/{provider}/setup", E::CallbackSetup, GET),
    route("/callbacks/{provider}/webhook", E::CallbackWebhook, POST),
    route("/intake/{token}", E::Intake, GET_POST),
    route("/forge/{kind}", E::ForgeRemote, POST),
    route("/.well-known/openid-configuration", E::OidcDiscovery, GET),
    route("/.well-known/jwks.json", E::OidcJwks, GET),
];

/// The loopback health listener (`[health]`): plain HTTP, liveness and readiness only.
pub const HEALTH: &[Route] = &[
    route("/healthz", E::Healthz, GET),
    route("/readyz", E::Readyz, GET),
];

type Table = Result<matchit::Router<&'static Route>, String>;

fn build(routes: &'static [Route]) -> Table {
    let mut router = matchit::Router::new();
    for r in routes {
        router
            .insert(r.path, r)
            .map_err(|e| format!("route {}: {e}", r.path))?;
    }
    Ok(router)
}

static MTLS_TABLE: LazyLock<Table> = LazyLock::new(|| build(MTLS));
static PUBLIC_TABLE: LazyLock<Table> = LazyLock::new(|| build(PUBLIC));
static HEALTH_TABLE: LazyLock<Table> = LazyLock::new(|| build(HEALTH));

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The mutual-TLS listener.
    Mtls,
    /// The public callback listener.
    Public,
    /// The loopback health listener.
    Health,
}

/// A matched route and its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// What the request is for.
    pub endpoint: Endpoint,
    params: Vec<(String, String)>,
}

impl Matched {
    /// The path parameter `name` (empty when the route has none of that name).
    pub fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Matches `method` and `path` against `listener`'s table.
///
/// # Errors
/// `not_found` for an unknown path, `method_not_allowed` (naming the accepted methods) for a
/// known path with another method, `internal` if the table itself is invalid (a unit test
/// guarantees it is not).
pub fn route_request(listener: Listener, method: &Method, path: &str) -> Result<Matched, ApiError> {
    let table = match listener {
        Listener::Mtls => &*MTLS_TABLE,
        Listener::Public => &*PUBLIC_TABLE,
        Listener::Health => &*HEALTH_TABLE,
    };
    let table = table
        .as_ref()
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("routing table: {e}")))?;
    let found = table
        .at(path)
        .map_err(|_| ApiError::new(ErrorCode::NotFound, "no such route"))?;
    let route = *found.value;
    if !route.methods.contains(method) {
        let allowed: Vec<&str> = route.methods.iter().map(Method::as_str).collect();
        return Err(ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!("use {} on this route", allowed.join(" or ")),
        ));
    }
    Ok(Matched {
        endpoint: route.endpoint,
        params: found
            .params
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_build() {
        assert!(MTLS_TABLE.is_ok(), "{:?}", MTLS_TABLE.as_ref().err());
        assert!(PUBLIC_TABLE.is_ok(), "{:?}", PUBLIC_TABLE.as_ref().err());
        assert!(HEALTH_TABLE.is_ok(), "{:?}", HEALTH_TABLE.as_ref().err());
    }

    #[test]
    fn the_health_listener_serves_liveness_and_readiness_only() {
        let health = |method: Method, path: &str| {
            route_request(Listener::Health, &method, path).map(|m| m.endpoint)
        };
        assert_eq!(health(Method::GET, "/healthz").ok(), Some(E::Healthz));
        assert_eq!(health(Method::GET, "/readyz").ok(), Some(E::Readyz));
        for path in [
            "/metrics",
            "/v1/resolve",
            "/v1/openapi.json",
            "/v1/admin/tenants",
        ] {
            assert_eq!(
                health(Method::GET, path).map_err(|e| e.code).err(),
                Some(ErrorCode::NotFound),
                "{path}"
            );
        }
        assert_eq!(
            health(Method::POST, "/readyz").map_err(|e| e.code).err(),
            Some(ErrorCode::MethodNotAllowed)
        );
    }

    fn mtls(method: Method, path: &str) -> Result<Matched, ErrorCode> {
        route_request(Listener::Mtls, &method, path).map_err(|e| e.code)
    }

    #[test]
    fn static_segments_win_and_parameters_are_named() {
        let m = mtls(Method::POST, "/v1/admin/onboard/github_app").unwrap();
        assert_eq!(m.endpoint, Endpoint::Admin(AdminEndpoint::Onboard));
        assert_eq!(m.param("provider"), "github_app");
        let m = mtls(Method::POST, "/v1/admin/bindings/b1/secret/rotate").unwrap();
        assert_eq!(m.endpoint, Endpoint::Admin(AdminEndpoint::SecretRotate));
        assert_eq!(m.param("id"), "b1");
        let m = mtls(Method::DELETE, "/v1/admin/bindings/b1/secret/3").unwrap();
        assert_eq!(m.endpoint, Endpoint::Admin(AdminEndpoint::SecretVersion));
        assert_eq!(m.param("version"), "3");
        // A static segment beside a parameter does not hide the parameter's routes.
        let m = mtls(Method::POST, "/v1/admin/workers/w1/disable").unwrap();
        assert_eq!(m.endpoint, E::Admin(A::RecordAction));
        assert_eq!(m.param("collection"), "workers");
        let m = mtls(Method::PUT, "/v1/admin/workers/w1/tenants").unwrap();
        assert_eq!(m.endpoint, E::Admin(A::WorkerTenants));
        assert_eq!(m.param("id"), "w1");
        let m = mtls(Method::POST, "/v1/admin/bindings/b1/disable").unwrap();
        assert_eq!(m.endpoint, Endpoint::Admin(AdminEndpoint::RecordAction));
        let m = mtls(Method::GET, "/v1/admin/tenants/t1").unwrap();
        assert_eq!(m.endpoint, Endpoint::Admin(AdminEndpoint::Record));
        assert_eq!((m.param("collection"), m.param("id")), ("tenants", "t1"));
    }

    #[test]
    fn unknown_paths_and_wrong_methods() {
        assert_eq!(
            mtls(Method::GET, "/nothing").err(),
            Some(ErrorCode::NotFound)
        );
        assert_eq!(
            mtls(Method::GET, "/v1/resolve").err(),
            Some(ErrorCode::MethodNotAllowed)
        );
        assert_eq!(
            mtls(Method::PATCH, "/v1/admin/tenants").err(),
            Some(ErrorCode::MethodNotAllowed)
        );
        assert_eq!(
            route_request(Listener::Public, &Method::POST, "/v1/resolve")
                .map_err(|e| e.code)
                .err(),
            Some(ErrorCode::NotFound),
            "the public listener serves callbacks and health only"
        );
        assert_eq!(
            route_request(Listener::Public, &Method::GET, "/callbacks/x/webhook")
                .map_err(|e| e.code)
                .err(),
            Some(ErrorCode::MethodNotAllowed)
        );
    }
}
