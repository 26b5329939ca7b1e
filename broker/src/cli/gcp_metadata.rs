//! `credbroker client gcp-metadata`: the GCE metadata server's token endpoints on loopback,
//! answered with access tokens resolved through the broker. Stock Google client libraries
//! (`GCE_METADATA_HOST`) then work unchanged, and the worker never holds the broker's own
//! assertion: an executable-sourced credential would hand it the subject token to exchange
//! itself, bypassing the ceiling, the cache and the audit log.
//!
//! Served (like GCE, only with `Metadata-Flavor: Google`, never through a proxy that adds
//! `X-Forwarded-For`): `/` (the ping), `…/service-accounts/{default|EMAIL}/token[?scopes=…]`,
//! `…/{default|EMAIL}/email`, `…/{default|EMAIL}/?recursive=true` and
//! `project/numeric-project-id`. Anything else is 404. Only processes of this command's user
//! (or of the users `--allow-uid` names) are served: the kernel's socket table names the user
//! owning each connection's other end.

use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use clap::Args;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::client::{resolve_async, ClientArgs};
use super::runtime;

/// `credbroker client gcp-metadata`.
#[derive(Args, Debug, Clone)]
pub struct GcpMetadataArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Loopback address to serve on (port 0: any free port). The address is printed as
    /// `GCE_METADATA_HOST=…` on the first line of stdout.
    #[arg(long, default_value = "127.0.0.1:8954")]
    listen: SocketAddr,
    /// A local user (numeric uid) whose processes may take tokens (repeatable; replaces the
    /// default, so name this command's own uid too if it should still be served). By default
    /// only this command's own user: any other process on the host reaches loopback too,
    /// and would be handed this instance's tokens under this worker's identity.
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uid: Vec<u32>,
}

/// What reading the kernel's socket tables needs of the host: only its byte order (the
/// addresses are in it); the rest serves other tables.
const THIS_HOST: procfs_core::ExplicitSystemInfo = procfs_core::ExplicitSystemInfo {
    boot_time_secs: 0,
    ticks_per_second: 100,
    page_size: 4096,
    is_little_endian: cfg!(target_endian = "little"),
};

/// The user owning the client's end of the loopback connection from `peer` to `local`: the
/// established socket in the kernel's table of the listener's address family whose local
/// address is `peer` and remote `local`, held by a process (an inode). `None` when there is
/// none (the client already gone, no `/proc`): a client that closed at once leaves an entry
/// in TIME_WAIT, which the table shows as root's, and must not be taken for one.
fn connecting_uid(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    use procfs_core::FromReadSI;
    // Addresses compared as IPv4 where they are mapped ones: a client on a dual-stack socket
    // (the JVM's and .NET's default) that connects to 127.0.0.1 has its end in the IPv6 table,
    // as `::ffff:127.0.0.1`, whatever family the listener is.
    let same = |a: &SocketAddr, b: &SocketAddr| {
        a.ip().to_canonical() == b.ip().to_canonical() && a.port() == b.port()
    };
    let tables = if local.is_ipv4() {
        ["/proc/net/tcp", "/proc/net/tcp6"]
    } else {
        ["/proc/net/tcp6", "/proc/net/tcp"]
    };
    tables.into_iter().find_map(|table| {
        let file = std::fs::File::open(table).ok()?;
        let entries = procfs_core::net::TcpNetEntries::from_read(file, &THIS_HOST).ok()?;
        entries
            .0
            .iter()
            .find(|e| {
                same(&e.local_address, &peer)
                    && same(&e.remote_address, &local)
                    && e.state == procfs_core::net::TcpState::Established
                    && e.inode != 0
            })
            .map(|e| e.uid)
    })
}

const PREFIX: &str = "/computeMetadata/v1/";

fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("metadata-flavor", http::HeaderValue::from_static("Google"));
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        h.insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    answer(status, "text/plain", body.as_bytes().to_vec())
}

/// Whether a `Host` header names a loopback endpoint: a loopback IP literal, `localhost` or
/// the metadata server's own names, with an optional port. Nothing else may follow the name.
fn loopback_host(host: Option<&http::HeaderValue>) -> bool {
    let Some(host) = host.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`, and only a loopback IPv6 address inside.
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        if !ip
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| ip.is_loopback())
        {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => (ip, port),
                None => return false,
            },
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, port),
            None => (host, "0"),
        }
    };
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    // No other name: `metadata` (one label) can be answered by LLMNR, mDNS or a search
    // domain, and `metadata.google.internal` by whatever serves `.internal` on the network —
    // names a page could rebind. With `GCE_METADATA_HOST` set, Google's libraries send the
    // address itself.
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Headers a proxy adds to what it forwards, or a browser to what it sends.
const FORWARDED_OR_BROWSER: [&str; 6] = [
    "x-forwarded-for",
    "forwarded",
    "x-real-ip",
    "origin",
    "sec-fetch-site",
    "sec-fetch-mode",
];

/// The scopes of `?scopes=a,b`, when asked for.
fn scopes(query: &str) -> Option<Vec<String>> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "scopes")
        .map(|(_, v)| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
}

/// What a request to the endpoint asks for, read from its method, target and headers alone
/// (before anything is resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Refused before any resolve: the status and the text answered.
    Refused(StatusCode, &'static str),
    /// `/`, the ping.
    Ping,
    /// `project/numeric-project-id`.
    ProjectNumber,
    /// `instance/service-accounts/{account}/{leaf}`.
    Account {
        /// `default` or an email (matched against the resolved one later).
        account: String,
        /// What of the account.
        leaf: Leaf,
    },
}

/// What of a service account a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leaf {
    /// `token`, with the scopes of `?scopes=`.
    Token(Option<Vec<String>>),
    /// `email`.
    Email,
    /// The account's directory (`…/{account}/`).
    Directory,
}

/// Reads a request as GCE's metadata server would, refusing what it refuses: requests a
/// proxy forwarded or a browser sent, a `Host` other than this loopback endpoint (one
/// only), a target in absolute form, no `Metadata-Flavor: Google` (but for the ping), a
/// method other than GET.
pub fn route(method: &http::Method, uri: &http::Uri, headers: &http::HeaderMap) -> Route {
    // GCE refuses requests a proxy forwarded (SSRF through a web app on the same host);
    // a browser's request (a page that rebound its name, or a local one) names where it
    // came from. Client libraries send neither.
    if FORWARDED_OR_BROWSER
        .iter()
        .any(|h| headers.contains_key(*h))
    {
        return Route::Refused(
            StatusCode::FORBIDDEN,
            "forwarded or browser requests are refused",
        );
    }
    // A web page on the same host that rebinds its own name to 127.0.0.1 sends its own
    // name as Host: only loopback names are answered (DNS rebinding). A target in absolute
    // form (a proxy's) names a host of its own.
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() || uri.authority().is_some() || !loopback_host(host) {
        return Route::Refused(
            StatusCode::FORBIDDEN,
            "Host must name this loopback endpoint",
        );
    }
    let path = uri.path();
    if path == "/" {
        return Route::Ping;
    }
    let flavored = headers
        .get_all("metadata-flavor")
        .iter()
        .any(|v| v.as_bytes() == b"Google");
    if !flavored {
        return Route::Refused(
            StatusCode::FORBIDDEN,
            "Missing Metadata-Flavor:Google header.",
        );
    }
    if method != http::Method::GET {
        return Route::Refused(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let not_found = Route::Refused(StatusCode::NOT_FOUND, "not found");
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return not_found;
    };
    let Some(rest) = rest.strip_prefix("instance/service-accounts/") else {
        return if rest == "project/numeric-project-id" {
            Route::ProjectNumber
        } else {
            not_found
        };
    };
    let (account, leaf) = rest.split_once('/').unwrap_or((rest, ""));
    let leaf = match leaf {
        "token" => Leaf::Token(scopes(uri.query().unwrap_or(""))),
        "email" => Leaf::Email,
        "" => Leaf::Directory,
        _ => return not_found,
    };
    if account.is_empty() {
        return not_found;
    }
    Route::Account {
        account: account.to_owned(),
        leaf,
    }
}

async fn handle(args: &GcpMetadataArgs, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (account, leaf) = match route(req.method(), req.uri(), req.headers()) {
        Route::Refused(status, why) => return text(status, why),
        Route::Ping => return text(StatusCode::OK, "computeMetadata/\n"),
        Route::ProjectNumber => {
            return match resolve_async(&args.client, None).await {
                Ok(v) => text(
                    StatusCode::OK,
                    v["details"]["project_number"].as_str().unwrap_or(""),
                ),
                Err(e) => refused(&e.to_string()),
            }
        }
        Route::Account { account, leaf } => (account, leaf),
    };
    let narrow = match &leaf {
        Leaf::Token(Some(scopes)) => Some(json!({ "scopes": scopes })),
        _ => None,
    };
    let v = match resolve_async(&args.client, narrow).await {
        Ok(v) if v["kind"] == "gcp_access_token" => v,
        Ok(v) => {
            return text(
                StatusCode::NOT_FOUND,
                &format!(
                    "instance does not resolve to a GCP access token (kind {})",
                    super::output::sanitize(&v["kind"].to_string())
                ),
            )
        }
        Err(e) => return refused(&e.to_string()),
    };
    let email = v["details"]["service_account"].as_str().unwrap_or("");
    if account != "default" && account != email {
        return text(StatusCode::NOT_FOUND, "no such service account");
    }
    match leaf {
        Leaf::Email => text(StatusCode::OK, email),
        Leaf::Directory => answer(
            StatusCode::OK,
            "application/json",
            json!({ "email": email, "scopes": v["details"]["scopes"], "aliases": ["default"] })
                .to_string()
                .into_bytes(),
        ),
        Leaf::Token(_) => token_answer(&v),
    }
}

fn token_answer(v: &Value) -> Response<Full<Bytes>> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        access_token: &'a str,
        expires_in: i64,
        token_type: &'static str,
    }
    let expires_in = v["expires_at"]
        .as_str()
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map_or(0, |t| {
            (t - time::OffsetDateTime::now_utc()).whole_seconds().max(0)
        });
    let Some(token) = v["credentials"]["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
    else {
        return refused("the broker's answer holds no access token");
    };
    // The body the token goes out in is wiped once hyper has sent it.
    let Ok(body) = serde_json::to_vec(&Body {
        access_token: token,
        expires_in,
        token_type: "Bearer",
    }) else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot write the token");
    };
    answer(
        StatusCode::OK,
        "application/json",
        credbroker_providers::http::wiped_bytes(body),
    )
}

/// A refused resolve, as GCE answers an unavailable token: 503 with the reason.
fn refused(e: &str) -> Response<Full<Bytes>> {
    tracing::warn!(error = e, "resolve refused");
    text(StatusCode::SERVICE_UNAVAILABLE, e)
}

/// The most connections served at once (the others wait in the listen backlog).
const MAX_CONNECTIONS: usize = 16;

/// Runs the server until interrupted.
///
/// # Errors
/// When the address is not loopback or cannot be bound.
pub fn serve(args: &GcpMetadataArgs) -> Result<ExitCode, String> {
    if !args.listen.ip().is_loopback() {
        return Err("--listen must be a loopback address: the endpoint hands out tokens to anyone who can reach it".into());
    }
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("{}: {e}", args.listen))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        println!("GCE_METADATA_HOST={local}");
        eprintln!(
            "serving GCE metadata tokens for instance {} on {local} (Ctrl-C stops)",
            args.client.instance
        );
        let args = std::sync::Arc::new(args.clone());
        let mut allowed = args.allow_uid.clone();
        if allowed.is_empty() {
            allowed.push(rustix::process::getuid().as_raw());
        }
        // Inside a user namespace the socket table shows every user the namespace does not
        // map as the kernel's overflow uid (65534, `nobody`): allowing it, by name or by
        // running as it, allows all of them.
        let overflow = std::fs::read_to_string("/proc/sys/kernel/overflowuid")
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .unwrap_or(65_534);
        if allowed.contains(&overflow) {
            eprintln!(
                "warning: uid {overflow} is the kernel's overflow uid: inside a user namespace every user it does not map shows as {overflow}, and is served too; run this as a user of its own"
            );
        }
        eprintln!("tokens only for local processes of uid {allowed:?}");
        let allowed = std::sync::Arc::new(allowed);
        // Each connection of an allowed user may make a resolve (a TLS connection to the
        // broker and an audit record there): a local process opening many is held to a few
        // at a time. One request per connection (no keep-alive), so an idle pooled connection
        // holds no slot. Another local user's connections (another tenant's worker on a
        // shared host) take none of these: sending nothing, they would hold every slot for
        // the 10 s header deadline and the allowed processes' requests would time out behind
        // them. They are answered 403 a few at a time, within 2 s each, and any beyond those
        // are closed at once (so they cannot hold this process's file descriptors either).
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let refusing = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        // Refusals are logged at most once in 10 s, with how many came since.
        let (mut refusals_said, mut refused_since) = (None::<std::time::Instant>, 0u64);
        let stop = tokio::signal::ctrl_c();
        tokio::pin!(stop);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    // Out of file descriptors and the like: wait and go on, never exit.
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut stop => return Ok(ExitCode::SUCCESS),
            };
            // Who is asking, before anything else: the kernel's socket table names the user
            // owning the other end. One lookup at a time, here: another user's connections
            // cost the allowed ones no more than their turn in the accept queue.
            let uid = match stream.local_addr() {
                Ok(local) => tokio::task::spawn_blocking(move || connecting_uid(peer, local))
                    .await
                    .ok()
                    .flatten(),
                Err(_) => None,
            };
            let admitted = uid.is_some_and(|u| allowed.contains(&u));
            if !admitted {
                refused_since += 1;
                if refusals_said.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10)) {
                    tracing::warn!(
                        uid = uid.map_or_else(|| "unknown".to_owned(), |u| u.to_string()),
                        refused = refused_since,
                        "a local process whose user is not allowed (--allow-uid) asked for a token; refused"
                    );
                    (refusals_said, refused_since) = (Some(std::time::Instant::now()), 0);
                }
                let Ok(answering) = std::sync::Arc::clone(&refusing).try_acquire_owned() else {
                    // Reset, not closed: no TIME_WAIT entry is left to grow the table every
                    // lookup reads.
                    let _ = stream.set_zero_linger();
                    drop(stream);
                    continue;
                };
                tokio::spawn(async move {
                    let _answering = answering;
                    let service = service_fn(|_req: Request<Incoming>| async {
                        Ok::<_, std::convert::Infallible>(text(
                            StatusCode::FORBIDDEN,
                            "this process's user may not take tokens here (see --allow-uid)",
                        ))
                    });
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(std::time::Duration::from_secs(2))
                            .keep_alive(false)
                            .serve_connection(TokioIo::new(stream), service),
                    )
                    .await;
                });
                continue;
            }
            let args = std::sync::Arc::clone(&args);
            let slots = std::sync::Arc::clone(&slots);
            tokio::spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else {
                    return;
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let args = std::sync::Arc::clone(&args);
                    async move { Ok::<_, std::convert::Infallible>(handle(&args, &req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{loopback_host, route, Leaf, Route};

    /// What Google's client libraries send (with `GCE_METADATA_HOST` set) is answered: the
    /// fuzz target checks only that nothing else is, so a `route` that refused everything
    /// would pass it.
    #[test]
    fn the_requests_client_libraries_send_are_routed() {
        let ask = |method: &str, target: &str, host: &str, flavor: bool| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::HOST, host.parse().unwrap());
            if flavor {
                headers.insert("metadata-flavor", "Google".parse().unwrap());
            }
            route(&method.parse().unwrap(), &target.parse().unwrap(), &headers)
        };
        let sa = "/computeMetadata/v1/instance/service-accounts";
        assert_eq!(ask("GET", "/", "127.0.0.1:8954", false), Route::Ping);
        assert_eq!(
            ask(
                "GET",
                &format!("{sa}/default/token?scopes=a,b"),
                "[::1]:8954",
                true
            ),
            Route::Account {
                account: "default".into(),
                leaf: Leaf::Token(Some(vec!["a".into(), "b".into()]))
            }
        );
        assert_eq!(
            ask(
                "GET",
                &format!("{sa}/x@p.iam.gserviceaccount.com/email"),
                "localhost",
                true
            ),
            Route::Account {
                account: "x@p.iam.gserviceaccount.com".into(),
                leaf: Leaf::Email
            }
        );
        assert_eq!(
            ask(
                "GET",
                &format!("{sa}/default/?recursive=true"),
                "127.0.0.1",
                true
            ),
            Route::Account {
                account: "default".into(),
                leaf: Leaf::Directory
            }
        );
        assert_eq!(
            ask(
                "GET",
                "/computeMetadata/v1/project/numeric-project-id",
                "127.0.0.1:8954",
                true
            ),
            Route::ProjectNumber
        );
        for (method, target, host, flavor) in [
            (
                "GET",
                "/computeMetadata/v1/project/numeric-project-id",
                "127.0.0.1",
                false,
            ),
            (
                "POST",
                "/computeMetadata/v1/project/numeric-project-id",
                "127.0.0.1",
                true,
            ),
            (
                "GET",
                "http://evil.example/computeMetadata/v1/project/numeric-project-id",
                "127.0.0.1",
                true,
            ),
            ("GET", &format!("{sa}//token"), "127.0.0.1", true),
            ("GET", &format!("{sa}/default/identity"), "127.0.0.1", true),
        ] {
            assert!(
                matches!(ask(method, target, host, flavor), Route::Refused(..)),
                "{method} {target}"
            );
        }
    }

    #[test]
    fn only_loopback_hosts_are_answered() {
        let ok = |h: &str| loopback_host(Some(&http::HeaderValue::from_str(h).unwrap()));
        for h in [
            "127.0.0.1:8954",
            "127.0.0.1",
            "localhost:8954",
            "[::1]:8954",
            "[::1]",
            "LOCALHOST:8954",
            "127.1.2.3:80",
        ] {
            assert!(ok(h), "{h}");
        }
        for h in [
            "evil.example:8954",
            "evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.1:8954",
            "[fe80::1]:80",
            "metadata",
            "metadata:8954",
            "metadata.google.internal",
            "",
            "[::1]evil.example",
            "[::1]:80evil",
            "[localhost]:80",
            "127.0.0.1:",
            "127.0.0.1:80:80",
            "127.0.0.1:123456",
            "::1",
        ] {
            assert!(!ok(h), "{h}");
        }
        assert!(!loopback_host(None));
    }
}
