//! One bounded HTTP(S) client for providers that speak plain HTTP to their upstream (Entra,
//! ARM, Graph, ServiceNow): rustls with the platform's roots, plain http only where a
//! provider's own URL rules allow it, every call under a deadline, answers capped at 1 MiB.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use crate::ProviderError;

/// An upstream's answer.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `x-ms-request-id` (Microsoft) or `x-transaction-id` (ServiceNow), when short.
    pub request_id: Option<String>,
    /// `Content-Type`, lower case, parameters dropped.
    pub content_type: String,
    /// The body (at most 1 MiB).
    pub body: Bytes,
}

/// HTTP(S) to the authority and ARM, each call bounded.
#[derive(Clone)]
pub struct Http {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector<Resolver>>, Full<Bytes>>,
}

/// Resolves host names for [`Http`]: hyper-util's resolver (the system's), and for a client
/// of customer-named hosts ([`Http::public_only`]) only public addresses. The check runs on
/// every connection, so a name that answered a public address at validation and a private
/// one now (DNS rebinding) is refused too. Address literals are never resolved: the
/// provider's URL rules judge those.
#[derive(Clone)]
pub struct Resolver {
    system: GaiResolver,
    /// `None`: any address. Otherwise the hosts (lower case, no port) allowed to resolve to
    /// non-public addresses.
    public_only: Option<Arc<[String]>>,
}

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        // Looked up as written (a fully qualified name stays one); compared without case or
        // the trailing dot.
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let filter = self
            .public_only
            .as_ref()
            .is_some_and(|allowed| !allowed.contains(&host));
        let found = self.system.call(name);
        Box::pin(async move {
            let kept: Vec<SocketAddr> = found
                .await?
                .filter(|a| !filter || is_public(a.ip()))
                .collect();
            if kept.is_empty() && filter {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    NoPublicAddress(host),
                ));
            }
            Ok(kept.into_iter())
        })
    }
}

/// The [`Resolver`]'s refusal: the host resolved only to addresses it may not use.
#[derive(Debug)]
struct NoPublicAddress(String);

impl std::fmt::Display for NoPublicAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} resolves to no public address (allow the host in allowed_hosts if it is meant)",
            self.0
        )
    }
}

impl std::error::Error for NoPublicAddress {}

/// Bytes that are wiped when their last handle is dropped: a request body or a header value
/// that carries a secret. (hyper and the TLS layer still copy what they send into buffers
/// of their own.)
pub fn wiped_bytes(v: Vec<u8>) -> Bytes {
    Bytes::from_owner(zeroize::Zeroizing::new(v))
}

/// An `application/x-www-form-urlencoded` body of `pairs` that carries a secret: built in
/// one buffer sized up front (percent-encoding at most triples a byte), so it never grows
/// and leaves a copy behind, and held as [`wiped_bytes`].
pub fn secret_form(pairs: &[(&str, &str)]) -> Bytes {
    let room = pairs.iter().map(|(k, v)| 3 * (k.len() + v.len()) + 2).sum();
    let mut form = form_urlencoded::Serializer::new(String::with_capacity(room));
    for (k, v) in pairs {
        form.append_pair(k, v);
    }
    wiped_bytes(form.finish().into_bytes())
}

/// `Bearer {token}` as a sensitive header value whose bytes are wiped when it is dropped;
/// `None` when the token cannot be a header value.
pub fn bearer(token: &str) -> Option<http::HeaderValue> {
    let mut v = Vec::with_capacity(7 + token.len());
    v.extend_from_slice(b"Bearer ");
    v.extend_from_slice(token.as_bytes());
    let mut h = http::HeaderValue::from_maybe_shared(wiped_bytes(v)).ok()?;
    h.set_sensitive(true);
    Some(h)
}

/// The host an allow-list entry names (`host`, `host:port`, `[v6]:port`): lower case,
/// without brackets or a trailing dot.
pub fn allow_entry_host(entry: &str) -> String {
    allow_entry(entry).0
}

/// An allow-list entry's host (as [`allow_entry_host`]) and port, when it names one.
pub fn allow_entry(entry: &str) -> (String, Option<u16>) {
    let a = entry.trim().to_ascii_lowercase();
    let (host, port) = match a.rsplit_once(':') {
        Some((h, p))
            if !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') =>
        {
            (
                h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                p.parse().ok(),
            )
        }
        _ => (a, None),
    };
    (host.trim_end_matches('.').to_owned(), port)
}

/// The [`Resolver`]'s refusal somewhere in `e`'s chain of causes: the one reason worth
/// naming (a host that resolves only to internal addresses), the rest stays "could not be
/// reached".
fn refused_address(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(refused) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<NoPublicAddress>())
        {
            return Some(crate::quoted(&refused.to_string(), 300));
        }
        cause = c.source();
    }
    None
}

/// Whether `ip` is an address of the public internet: not loopback, private, link-local,
/// carrier-grade NAT, unspecified, broadcast, multicast, documentation, benchmarking or
/// reserved space, nor an IPv6 unique-local, link-local or site-local one (an IPv4-mapped
/// IPv6 address is judged as its IPv4 address).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                is_public(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)))
            };
            match s {
                // IPv4-compatible (deprecated), `::`, `::1` and the rest of `::/96`.
                [0, 0, 0, 0, 0, 0, ..] => false,
                // `::ffff:0:0:0/96` (SIIT).
                [0, 0, 0, 0, 0xffff, 0, ..] => false,
                // NAT64: the well-known prefix carries the IPv4 address it reaches; the
                // local-use one is site-defined.
                [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => embedded(hi, lo),
                [0x64, 0xff9b, 1, ..] => false,
                [0x64, 0xff9b, ..] => false,
                // 6to4 carries an IPv4 address in its second and third groups.
                [0x2002, hi, lo, ..] => embedded(hi, lo),
                // IETF protocol assignments (Teredo, benchmarking, ORCHID: 2001::/23), documentation,
                // discard-only.
                [0x2001, s1, ..] if s1 < 0x200 => false,
                [0x2001, 0x0db8, ..] | [0x0100, 0, 0, 0, ..] => false,
                [0x3fff, ..] => false,
                [0x5f00, ..] => false,
                [first, ..] => {
                    !(v6.is_multicast()
                        || (first & 0xfe00) == 0xfc00
                        || (first & 0xffc0) == 0xfe80
                        || (first & 0xffc0) == 0xfec0)
                }
            }
        }
    }
}

/// Largest answer read from Entra or ARM.
const MAX_ANSWER: usize = 1024 * 1024;

/// Most JSON nodes an answer may hold before it is parsed (one per 8 bytes of the largest
/// answer; real ones hold a node per 20 bytes or more): a dense answer (`[0,0,…]`) would be a
/// parsed value many times its size. See [`crate::json_node_bound`].
pub const MAX_ANSWER_NODES: usize = 131_072;

impl Http {
    /// A client trusting the platform's root certificates.
    pub fn new() -> Http {
        Self::with_roots(Vec::new(), None)
    }

    /// A client for hosts a customer names (a Data Center base URL): names resolve only to
    /// public addresses, except the hosts in `allowed` (an operator's allow-list: host or
    /// `host:port`, matched on the host). `extra_roots`: CA certificates (PEM) trusted besides
    /// the platform's.
    ///
    /// # Errors
    /// When `extra_roots` holds no certificate or one that does not parse.
    pub fn public_only(allowed: &[String], extra_roots: Option<&str>) -> Result<Http, String> {
        let hosts: Arc<[String]> = allowed.iter().map(|a| allow_entry_host(a)).collect();
        let certs = match extra_roots {
            Some(pem) => Self::parse_roots(pem)?,
            None => Vec::new(),
        };
        Ok(Self::with_roots(certs, Some(hosts)))
    }

    /// A client trusting the platform's roots and the CA certificates in `pem` too (a
    /// customer's private PKI).
    ///
    /// # Errors
    /// When `pem` holds no certificate or one that does not parse.
    pub fn with_extra_roots(pem: &str) -> Result<Http, String> {
        Ok(Self::with_roots(Self::parse_roots(pem)?, None))
    }

    fn parse_roots(pem: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|_| "the CA bundle is not PEM certificates".to_owned())?;
        if certs.is_empty() {
            return Err("the CA bundle holds no certificate".into());
        }
        Ok(certs)
    }

    fn with_roots(
        extra: Vec<rustls::pki_types::CertificateDer<'static>>,
        public_only: Option<Arc<[String]>>,
    ) -> Http {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        for cert in extra {
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        let tls = match tls {
            Ok(t) => t,
            // The default provider supports the default versions; keep a client that
            // refuses every https peer rather than panic.
            Err(_) => rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        };
        let mut http = HttpConnector::new_with_resolver(Resolver {
            system: GaiResolver::new(),
            public_only,
        });
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Http {
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
        }
    }

    /// Sends `request`; the status, the request id (`x-ms-request-id` or `x-transaction-id`)
    /// and the body (at most 1 MiB). As [`Http::exchange`] for `sent`.
    ///
    /// # Errors
    /// `Unavailable` when unreachable or slower than `timeout`.
    pub async fn send(
        &self,
        request: http::Request<Full<Bytes>>,
        timeout: Duration,
        what: &str,
        sent: &[&str],
    ) -> Result<(u16, Option<String>, Bytes), ProviderError> {
        let a = self.exchange(request, timeout, what, sent).await?;
        Ok((a.status, a.request_id, a.body))
    }

    /// Sends `request`; the whole [`Answer`]. Its request id and content type are quoted in
    /// refusals, probe results, audit records and the intake page, so neither is kept when
    /// it repeats what the request sent (`sent`: its secrets, a token or an assertion; an
    /// upstream, a customer's own server among them, or a proxy before it, could echo one
    /// there), and a content type only in a media type's shape.
    ///
    /// # Errors
    /// `Unavailable` when unreachable or slower than `timeout`.
    pub async fn exchange(
        &self,
        request: http::Request<Full<Bytes>>,
        timeout: Duration,
        what: &str,
        sent: &[&str],
    ) -> Result<Answer, ProviderError> {
        let unavailable = |m: String| ProviderError::Unavailable {
            message: m,
            upstream_request_id: None,
        };
        let exchange = async {
            let resp = self.client.request(request).await.map_err(|e| {
                unavailable(format!(
                    "{what} could not be reached{}",
                    refused_address(&e)
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ))
            })?;
            let status = resp.status().as_u16();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| crate::is_request_id(v) && !crate::echoes(v, sent))
                    .map(str::to_owned)
            };
            let request_id = header("x-ms-request-id").or_else(|| header("x-transaction-id"));
            let content_type = resp
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            // Quoted in refusals, probe results and audit details: an upstream (a customer's
            // own server) must not plant an arbitrarily long text there.
            let content_type = if content_type.len() <= 100
                && is_media_type(&content_type)
                && !crate::answer_checks::echoes_ignoring_case(&content_type, sent)
            {
                content_type
            } else {
                "(unreadable)".to_owned()
            };
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|_| unavailable(format!("{what}'s answer could not be read")))?
                .to_bytes();
            crate::json_nodes_within(&body, MAX_ANSWER_NODES, what).map_err(unavailable)?;
            Ok(Answer {
                status,
                request_id,
                content_type,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(format!(
                    "{what} did not answer within {} ms",
                    timeout.as_millis()
                )))
            })
    }
}

/// Whether `v` (lower case) has a media type's shape: `type/subtype`, each of letters,
/// digits and `.+-_!#$&^` (RFC 6838 section 4.2), starting with a letter or digit.
fn is_media_type(v: &str) -> bool {
    let name = |p: &str| {
        p.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && p.len() <= 127
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    v.split_once('/').is_some_and(|(t, s)| name(t) && name(s))
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

#[cfg(test)]
mod address_tests {
    use super::*;

    /// A bearer header holds the token as sent, marked sensitive; none for a token that
    /// could split the header.
    #[test]
    fn a_bearer_header_is_sensitive_and_refuses_line_breaks() {
        let h = bearer("abc.def").unwrap();
        assert_eq!(h.as_bytes(), b"Bearer abc.def");
        assert!(h.is_sensitive());
        assert!(bearer("abc\r\nx-injected: 1").is_none());
    }

    /// A content type is quoted only in a media type's shape, and never when it repeats,
    /// in any case, what the request sent.
    #[test]
    fn a_content_type_is_a_media_type_that_repeats_nothing_sent() {
        for ok in ["application/json", "text/html", "application/vnd.api+json"] {
            assert!(is_media_type(ok), "{ok}");
        }
        for bad in [
            "",
            "json",
            "/json",
            "application/",
            "a/b/c",
            "text/html charset",
            "x/(y)",
        ] {
            assert!(!is_media_type(bad), "{bad}");
        }
        let sent = ["Zq9xK2-Client-Secret"];
        assert!(crate::answer_checks::echoes_ignoring_case(
            "application/zq9xk2-client-secret",
            &sent
        ));
        assert!(!crate::answer_checks::echoes_ignoring_case(
            "application/json",
            &sent
        ));
    }

    /// A secret form is encoded as form_urlencoded does it, in a buffer that never grew
    /// (its length within the capacity it was made with).
    #[test]
    fn a_secret_form_is_the_form() {
        let pairs = [("client_secret", "a b&c=d/é"), ("scope", "x")];
        let body = secret_form(&pairs);
        let plain = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        assert_eq!(&body[..], plain.as_bytes());
        assert_eq!(&secret_form(&[])[..], b"");
    }

    #[test]
    fn public_addresses() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "13.107.42.14",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "240.0.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::7f00:1",
            "::ffff:0:a00:1",
            "2002:a00:1::1",
            "2002:7f00:1::",
            "2001::1",
            "100::1",
            "3fff::1",
            "5f00::1",
            "64:ff9b:1::1",
            "64:ff9b::1:0:a00:1",
            "2001:2::1",
            "2001:10::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    /// A customer-named host that resolves to loopback is refused before any connection,
    /// with the reason; allow-listed, it is reached.
    #[tokio::test]
    async fn names_resolving_to_internal_addresses_are_refused_unless_allowed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        let get_from = |host: &str| {
            http::Request::get(format!("http://{host}:{port}/"))
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        let get = || get_from("localhost");
        // A local name, and loopback in the dotted short forms the system resolver reads
        // as addresses (the URL rules let them through as names).
        for host in ["localhost", "127.1", "0x7f.1", "127.0.1"] {
            let refused = Http::public_only(&[], None)
                .unwrap()
                .send(get_from(host), Duration::from_secs(5), "the test host", &[])
                .await;
            match refused {
                Err(ProviderError::Unavailable { message, .. }) => {
                    assert!(message.contains("no public address"), "{host}: {message}");
                }
                other => panic!("{host} reached: {:?}", other.map(|a| a.0)),
            }
        }
        assert!(!served.is_finished());
        let allowed = Http::public_only(&[format!("LOCALHOST:{port}")], None)
            .unwrap()
            .send(get(), Duration::from_secs(5), "the test host", &[])
            .await;
        assert_eq!(allowed.unwrap().0, 204);
        served.await.unwrap();
    }
}
