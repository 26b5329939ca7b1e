//! The one way the App talks to GitHub: a request with its authentication, its deadline, one
//! retry of a server error, and an answer read within a bound.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::answer::{message_of, rate_limit_of, retry_pause, Answer};
use super::REST_MEDIA_TYPE;
use crate::ProviderError;

/// The largest GitHub answer read. Larger than other upstreams' 1 MiB: a token minted for
/// named repositories answers with a full repository object for each (about 6 KB), and a
/// ceiling may name 500; a page of `/user/installations` (100) is under 1 MiB.
const MAX_ANSWER: usize = 8 << 20;

/// How a request authenticates.
pub(super) enum Auth {
    /// `Authorization: Bearer` (App JWT, installation or user token).
    Bearer(String),
    /// HTTP basic (the OAuth client id and secret: token revocation).
    Basic(String, SecretString),
    /// None: the OAuth code exchange carries the client credentials in its body.
    OAuthExchange,
}

/// One request to `base` with `auth`, each attempt within `timeout_ms` (and `timeout`), a
/// 5xx retried once (see below); the answer's status, JSON body, request id and whether it
/// is a rate limit. A free function, so that a call owed whatever happens (the revoke of a
/// user token) can run in a task of its own.
pub(super) async fn call_github(
    timeout_ms: u64,
    base: &str,
    auth: Auth,
    method: http::Method,
    route: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Answer, ProviderError> {
    let unavailable = |m: String| ProviderError::Unavailable {
        message: m,
        upstream_request_id: None,
    };
    let per_request = Duration::from_millis(timeout_ms).min(timeout);
    // What the request sends that an echo must not carry on (the request id is kept in
    // audit records): the credential, and every text of the body (the OAuth exchange's
    // client secret and code, a revoked token; a client id among them only costs an echoed
    // request id).
    let sent: Vec<zeroize::Zeroizing<String>> = match &auth {
        Auth::Bearer(token) => Some(token.clone()),
        Auth::Basic(_, secret) => Some(secret.expose_secret().to_owned()),
        Auth::OAuthExchange => None,
    }
    .into_iter()
    .chain(
        body.and_then(Value::as_object)
            .into_iter()
            .flat_map(|o| o.values().filter_map(Value::as_str).map(str::to_owned)),
    )
    .map(zeroize::Zeroizing::new)
    .collect();
    let builder = octocrab::Octocrab::builder()
        .base_uri(base)
        .map_err(|_| ProviderError::InvalidConfig("GitHub base URL is not a URI".into()))?;
    let (builder, accept) = match auth {
        Auth::Bearer(token) => (builder.personal_token(token), REST_MEDIA_TYPE),
        Auth::Basic(user, password) => (
            builder.basic_auth(user, password.expose_secret().to_owned()),
            REST_MEDIA_TYPE,
        ),
        // The OAuth endpoint answers JSON only when asked for exactly that.
        Auth::OAuthExchange => (builder, "application/json"),
    };
    let crab = builder
        // No retries inside the client: its default retries 5xx and 429 at once, three
        // times, while GitHub asks callers to wait out a rate limit. The one retry of a
        // 5xx is decided below, within the deadline.
        .add_retry_config(octocrab::service::middleware::retry::RetryConfig::None)
        // `X-GitHub-Api-Version: 2022-11-28` is added to every request by octocrab itself
        // (its `package.metadata.github-api.request-headers`); adding it here as well sent
        // the header twice. tests/tests/github_app.rs pins the one value GitHub sees.
        .add_header(http::header::ACCEPT, accept.into())
        .set_connect_timeout(Some(per_request))
        .set_read_timeout(Some(per_request))
        .build()
        .map_err(|_| ProviderError::Internal("could not build the GitHub client".into()))?;
    // A 5xx is retried once, after a short pause, when the deadline leaves room: reads,
    // deletions and token mints (minting again is harmless); never the OAuth code
    // exchange (a code is single use).
    let retry_5xx = match method {
        http::Method::GET | http::Method::DELETE => true,
        http::Method::POST => route.ends_with("/access_tokens"),
        _ => false,
    };
    let started = Instant::now();
    let exchange = async {
        let mut retried = false;
        let resp = loop {
            let resp = match method {
                http::Method::POST => crab._post(route, body).await,
                http::Method::DELETE => crab._delete(route, body).await,
                _ => crab._get(route).await,
            }
            .map_err(|e| {
                unavailable(format!(
                    "GitHub request failed: {}",
                    e.to_string().chars().take(200).collect::<String>()
                ))
            })?;
            let status = resp.status().as_u16();
            if retry_5xx && !retried && (500..=599).contains(&status) {
                let pause = retry_pause();
                if started.elapsed() + pause + Duration::from_millis(250) < per_request {
                    tracing::debug!(status, route, "GitHub answered a server error: one retry");
                    drop(resp);
                    retried = true;
                    tokio::time::sleep(pause).await;
                    continue;
                }
            }
            break resp;
        };
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_owned())
        };
        let sent: Vec<&str> = sent.iter().map(|s| s.as_str()).collect();
        let request_id = crate::request_id_of(header("x-github-request-id").as_deref())
            .filter(|id| !crate::echoes(id, &sent));
        let headers = resp.headers().clone();
        // Bounded, as every other upstream's answer (crate::http): a malicious or broken
        // upstream cannot make the broker buffer an unbounded body for as long as the
        // deadline lets it stream.
        let bytes = http_body_util::BodyExt::collect(http_body_util::Limited::new(
            resp.into_body(),
            MAX_ANSWER,
        ))
        .await
        .map_err(|_| unavailable("GitHub answer could not be read (or is over 8 MiB)".into()))?
        .to_bytes();
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| unavailable("GitHub answer is not UTF-8".into()))?;
        let mut body = super::answer::answer_body(text).map_err(unavailable)?;
        let echoed_token = super::answer::withhold_echoes(&mut body, &sent);
        let rate_limit = rate_limit_of(status, &headers, &message_of(&body));
        Ok(Answer {
            status,
            body,
            request_id,
            rate_limit,
            echoed_token,
        })
    };
    tokio::time::timeout(per_request + Duration::from_millis(500), exchange)
        .await
        .unwrap_or_else(|_| {
            Err(unavailable(format!(
                "GitHub did not answer within {} ms",
                per_request.as_millis()
            )))
        })
}

/// `DELETE /installation/token`, authenticated by `token` itself: revokes an installation
/// token nobody was handed (a probe's, or one in an answer the broker refused), within
/// `timeout`. Best effort: a token it cannot revoke expires within the hour, said in the log.
pub(super) async fn revoke_installation_token(
    timeout_ms: u64,
    base: &str,
    token: SecretString,
    installation: u64,
    timeout: Duration,
) {
    let result = call_github(
        timeout_ms,
        base,
        Auth::Bearer(token.expose_secret().to_owned()),
        http::Method::DELETE,
        "/installation/token",
        None,
        timeout,
    )
    .await;
    match result {
        Ok(a) if a.status == 204 => {}
        Ok(a) => tracing::warn!(
            installation,
            status = a.status,
            "a GitHub token nobody was handed could not be revoked; it expires within the hour"
        ),
        Err(e) => tracing::warn!(
            installation,
            error = %e,
            "a GitHub token nobody was handed could not be revoked; it expires within the hour"
        ),
    }
}
