//! What `credbroker client gcp-metadata` reads of a request on its loopback port before it
//! resolves anything: the method, the target and the headers. Anything on the host can send
//! one, a web page that rebound its name among them, so a request goes on only with exactly
//! one `Host` naming a loopback endpoint, no proxy or browser headers and (but for the ping)
//! `Metadata-Flavor: Google` and GET; the account and scopes are exactly the target's.
#![no_main]
use credbroker::cli::gcp_metadata::{route, Leaf, Route};
use libfuzzer_sys::fuzz_target;

const FORWARDED_OR_BROWSER: [&str; 6] = [
    "x-forwarded-for",
    "forwarded",
    "x-real-ip",
    "origin",
    "sec-fetch-site",
    "sec-fetch-mode",
];

/// The oracle's own reading of a `Host` value: `name[:port]` or `[v6][:port]`, the port
/// 1–5 digits, the name `localhost` or a loopback address.
fn loopback(host: &str) -> bool {
    let (name, rest) = match host.strip_prefix('[') {
        Some(r) => match r.find(']') {
            Some(i) => (&r[..i], &r[i + 1..]),
            None => return false,
        },
        None => match host.find(':') {
            Some(i) => (&host[..i], &host[i..]),
            None => (host, ""),
        },
    };
    let port_ok = rest.is_empty()
        || rest
            .strip_prefix(':')
            .is_some_and(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    let bracketed = host.starts_with('[');
    let name_ok = if bracketed {
        name.parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| ip.is_loopback())
    } else {
        name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    port_ok && name_ok
}

fn check(method: &http::Method, uri: &http::Uri, headers: &http::HeaderMap) {
    let got = route(method, uri, headers);
    if matches!(got, Route::Refused(..)) {
        return;
    }
    assert!(
        !FORWARDED_OR_BROWSER
            .iter()
            .any(|h| headers.contains_key(*h)),
        "a forwarded or browser request went on: {got:?}"
    );
    let hosts: Vec<_> = headers.get_all(http::header::HOST).iter().collect();
    assert_eq!(hosts.len(), 1, "{got:?}");
    let host = hosts[0].to_str().expect("an admitted Host is text");
    assert!(loopback(host), "Host {host:?} went on: {got:?}");
    assert!(uri.authority().is_none(), "absolute form went on");
    if got == Route::Ping {
        assert_eq!(uri.path(), "/");
        return;
    }
    assert_eq!(method, http::Method::GET);
    assert!(headers
        .get_all("metadata-flavor")
        .iter()
        .any(|v| v.as_bytes() == b"Google"));
    let path = uri.path();
    match got {
        Route::ProjectNumber => {
            assert_eq!(path, "/computeMetadata/v1/project/numeric-project-id")
        }
        Route::Account { account, leaf } => {
            assert!(!account.is_empty() && !account.contains('/'), "{account:?}");
            let base = format!("/computeMetadata/v1/instance/service-accounts/{account}");
            let want_path = match &leaf {
                Leaf::Token(_) => vec![format!("{base}/token")],
                Leaf::Email => vec![format!("{base}/email")],
                Leaf::Directory => vec![base.clone(), format!("{base}/")],
            };
            assert!(want_path.contains(&path.to_owned()), "{path} as {leaf:?}");
            if let Leaf::Token(scopes) = leaf {
                let want = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                    .find(|(k, _)| k == "scopes")
                    .map(|(_, v)| {
                        v.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect::<Vec<_>>()
                    });
                assert_eq!(scopes, want);
            }
        }
        Route::Ping | Route::Refused(..) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    // Line 1: method and target; then one header per line, `name: value`. The input also
    // goes in as the Host value and as the target under a well-formed request, so the
    // fuzzer reaches each check at once.
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or("");
    let (method, target) = first.split_once(' ').unwrap_or(("GET", first));
    let mut headers = http::HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.trim().as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            ) {
                headers.append(k, v);
            }
        }
    }
    if let (Ok(m), Ok(u)) = (
        http::Method::from_bytes(method.as_bytes()),
        target.parse::<http::Uri>(),
    ) {
        check(&m, &u, &headers);
    }
    let mut plain = http::HeaderMap::new();
    plain.insert("metadata-flavor", http::HeaderValue::from_static("Google"));
    // The Host: the input, and the input after each loopback name (what follows a name
    // is where a lax reading lets a rebound name through).
    let token = "/computeMetadata/v1/instance/service-accounts/default/token"
        .parse::<http::Uri>()
        .expect("a literal target");
    for prefix in [&b""[..], b"[::1]", b"127.0.0.1", b"localhost", b"[::1]:"] {
        if let Ok(v) = http::HeaderValue::from_bytes(&[prefix, data].concat()) {
            let mut h = plain.clone();
            h.insert(http::header::HOST, v);
            check(&http::Method::GET, &token, &h);
        }
    }
    if let Ok(u) = text.parse::<http::Uri>() {
        let mut h = plain;
        h.insert(
            http::header::HOST,
            http::HeaderValue::from_static("127.0.0.1:8954"),
        );
        check(&http::Method::GET, &u, &h);
    }
});
