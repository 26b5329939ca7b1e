//! Hostile clients: slow-loris (headers and body), oversized headers, more connections than
//! the limit, a handshake flood, an HTTP/2 stream flood, and one worker certificate
//! connecting from many addresses. Throughout, a well-behaved worker
//! keeps being served and the daemon's memory stays bounded. Loopback only; every loop is
//! bounded in count and time.

use std::time::{Duration, Instant};

use credbroker_tests::*;
use http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMITS: &str = "[limits]\nmax_connections = 48\nmax_handshakes = 32\nmax_handshakes_per_source = 4\nmax_header_bytes = 8192\nhandshake_timeout_ms = 5000\nheader_read_timeout_ms = 1000\nbody_read_timeout_ms = 1000\nhttp2_max_concurrent_streams = 16\n";

async fn tls_stream(
    pki: &TestPki,
    url: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let addr = url.trim_start_matches("https://");
    let tcp = TcpStream::connect(addr).await.unwrap();
    client_tls(pki, "w1", alpn)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

/// Reads until EOF, an error, or `limit`; returns what was read and how long it took.
async fn read_all(stream: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match tokio::time::timeout(limit - started.elapsed(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

async fn h2_sender(
    pki: &TestPki,
    url: &str,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tls = tls_stream(pki, url, b"h2").await;
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// GET /healthz on an HTTP/2 connection; the status, or 0 when the stream was refused or the
/// connection closed.
async fn h2_get(
    mut sender: hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
) -> u16 {
    let req = http::Request::builder()
        .method("GET")
        .uri("https://localhost/healthz")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    sender
        .send_request(req)
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn good_worker_is_served(pki: &TestPki, url: &str) {
    good_worker_is_served_within(pki, url, Duration::from_secs(5)).await;
}

async fn good_worker_is_served_within(pki: &TestPki, url: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut w = pki.client_for("w1", url);
        if let Ok((s, body)) = w
            .request(
                Method::POST,
                "/v1/resolve",
                Some(serde_json::to_vec(&json!({"instance_id": "i1"})).unwrap()),
            )
            .await
        {
            assert_eq!(s.as_u16(), 200, "{}", String::from_utf8_lossy(&body));
            return;
        }
        assert!(
            Instant::now() < deadline,
            "a well-behaved worker was not served within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_starve_workers() {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            extra_toml: LIMITS.into(),
            ..Default::default()
        },
    );
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    good_worker_is_served(&pki, &daemon.url).await;
    let rss_before = daemon.rss_kib().expect("the daemon's RSS is readable");

    // Slow-loris on headers: a header line every 300 ms never completes the head; the
    // connection is closed after header_read_timeout.
    let mut slow = tls_stream(&pki, &daemon.url, b"http/1.1").await;
    slow.write_all(b"POST /v1/resolve HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let drip = tokio::spawn(async move {
        let started = Instant::now();
        for i in 0..20 {
            if slow
                .write_all(format!("X-Drip-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let _ = read_all(&mut slow, Duration::from_secs(1)).await;
        started.elapsed()
    });
    good_worker_is_served(&pki, &daemon.url).await;
    let dripped = drip.await.unwrap();
    assert!(
        dripped < Duration::from_millis(4000),
        "slow header connection kept open for {dripped:?}"
    );

    // Slow-loris on the body: the head promises 100 bytes, 10 arrive.
    let mut slow_body = tls_stream(&pki, &daemon.url, b"http/1.1").await;
    slow_body
        .write_all(b"POST /v1/resolve HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"instance")
        .await
        .unwrap();
    let (answer, took) = read_all(&mut slow_body, Duration::from_secs(4)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("bad_request") && answer.contains("not received in time"),
        "{answer}"
    );
    assert!(took < Duration::from_millis(3000), "{took:?}");

    // Oversized headers: refused, nothing else affected.
    let mut big = tls_stream(&pki, &daemon.url, b"http/1.1").await;
    let huge = "a".repeat(20_000);
    let _ = big
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {huge}\r\n\r\n").as_bytes(),
        )
        .await;
    // A refusal (431) or a close, well inside the limit: a server that just hangs on the
    // oversized head would run into it and fail here.
    let (answer, took) = read_all(&mut big, Duration::from_secs(3)).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "oversized headers were neither refused nor closed within 1.5 s ({took:?})"
    );
    good_worker_is_served(&pki, &daemon.url).await;

    // Pre-authentication exhaustion: 120 connections from another address (127.0.0.2) that
    // never say hello, held for the whole 5 s handshake deadline. They take no connection
    // slots, at most half of the 32 handshake slots, and the rest are closed at accept: a
    // worker from 127.0.0.1 is served at once, not after the deadline.
    let addr: std::net::SocketAddr = daemon.url.trim_start_matches("https://").parse().unwrap();
    let mut idle = Vec::new();
    for _ in 0..120 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(s) = socket.connect(addr).await {
            idle.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    good_worker_is_served_within(&pki, &daemon.url, Duration::from_millis(1500)).await;
    drop(idle);

    // Handshake flood: 200 handshakes without a client certificate, 20 at a time.
    let mut flood = Vec::new();
    for _ in 0..10 {
        for _ in 0..20 {
            let pki = pki.clone();
            let url = daemon.url.clone();
            flood.push(tokio::spawn(async move {
                let mut c = public_client(&pki, &url);
                c.request(Method::GET, "/healthz", None).await.is_err()
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    good_worker_is_served(&pki, &daemon.url).await;
    for f in flood {
        assert!(
            f.await.unwrap(),
            "a certificate-less handshake was accepted"
        );
    }

    // HTTP/2 stream flood on one connection: 300 streams at once against a limit of 16.
    // Streams beyond the limit are refused, and a connection that keeps provoking resets is
    // closed (GOAWAY) — either way no stream hangs and workers elsewhere are served.
    let flood_conn = h2_sender(&pki, &daemon.url).await;
    let streams: Vec<_> = (0..300)
        .map(|_| tokio::spawn(h2_get(flood_conn.clone())))
        .collect();
    good_worker_is_served(&pki, &daemon.url).await;
    for s in streams {
        tokio::time::timeout(Duration::from_secs(10), s)
            .await
            .expect("a stream hung")
            .unwrap();
    }
    // A well-behaved HTTP/2 client (first request, then 100 concurrent within the advertised
    // limit's queueing) is answered in full.
    let polite = h2_sender(&pki, &daemon.url).await;
    assert_eq!(h2_get(polite.clone()).await, 200);
    let second: Vec<_> = (0..100)
        .map(|_| tokio::spawn(h2_get(polite.clone())))
        .collect();
    for s in second {
        assert_eq!(
            s.await.unwrap(),
            200,
            "well-behaved HTTP/2 streams are served"
        );
    }

    // Counters saw it; memory stayed bounded.
    let (_, m) = scrape(&pki, &daemon.url).await;
    let m = String::from_utf8(m).unwrap();
    let counter = |name: &str| -> u64 { metric_value(&m, name).unwrap_or(0.0) as u64 };
    assert!(
        counter("credbroker_tls_handshakes_refused_total{scope=\"source\"}") > 0,
        "{m}"
    );
    // Every certificate-less handshake of the flood failed or was refused at accept.
    assert!(
        counter("credbroker_tls_handshake_failures_total")
            + counter("credbroker_tls_handshakes_refused_total{scope=\"source\"}")
            + counter("credbroker_tls_handshakes_refused_total{scope=\"global\"}")
            >= 200 + 120,
        "{m}"
    );
    let after = daemon.rss_kib().expect("the daemon's RSS is readable");
    assert!(
        after < rss_before + 96 * 1024,
        "RSS grew from {rss_before} KiB to {after} KiB"
    );
}

/// A daemon with `limits` added to its config, the two usual tenants, and worker w2 (of t2)
/// registered beside w1.
async fn with_two_workers(limits: &str) -> (tempfile::TempDir, std::sync::Arc<TestPki>, Daemon) {
    let (tmp, pki) = setup();
    let daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            extra_toml: limits.into(),
            ..Default::default()
        },
    );
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants_and_w2(&pki, &mut op).await;
    (tmp, pki, daemon)
}

/// Opens a connection from `local` as worker `name` and asks for `/healthz` on it: the
/// stream, kept open, when it was served; `None` when the daemon closed it instead.
async fn held_connection(
    pki: &TestPki,
    addr: std::net::SocketAddr,
    local: &str,
    name: &str,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(addr).await.ok()?;
    let mut tls = client_tls(pki, name, b"http/1.1")
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .ok()?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(3);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, tls.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    head.starts_with(b"HTTP/1.1 200").then_some(tls)
}

/// A worker certificate used from many addresses (a compromised worker's, spread so that no
/// address reaches its per-source share) cannot take every connection: once half of the
/// budget is in use it gets no more than its identity's share, and another worker is still
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_certificate_from_many_addresses_leaves_connections_for_others() {
    let (_tmp, pki, daemon) = with_two_workers("[limits]\nmax_connections = 16\nmax_connections_per_source = 2\nmax_connections_per_identity = 4\n").await;
    let addr: std::net::SocketAddr = daemon.url.trim_start_matches("https://").parse().unwrap();

    // w1 from 24 addresses, one connection each: it is given half of the 16 connections.
    let mut held = Vec::new();
    let mut refused = 0;
    for host in 10..34 {
        match held_connection(&pki, addr, &format!("127.0.0.{host}"), "w1").await {
            Some(c) => held.push(c),
            None => refused += 1,
        }
    }
    assert_eq!(
        (held.len(), refused),
        (8, 16),
        "one identity from many addresses took more than half of the connections"
    );
    // Another worker is served, on connections of its own beyond w1's.
    let mut others = Vec::new();
    for host in 50..53 {
        let c = held_connection(&pki, addr, &format!("127.0.0.{host}"), "w2").await;
        others.push(c.expect("another worker was refused a connection"));
    }
    let mut w2 = pki.client_for("w2", &daemon.url);
    let (s, v) = resolve(&mut w2, json!({"instance_id": "i2"})).await;
    assert_eq!(s, 200, "{v}");
    // Closed, w1's connections no longer count against it: with w2 holding half of the
    // budget (its four, then four more while under half), w1 still gets a connection.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for host in 53..57 {
        let c = held_connection(&pki, addr, &format!("127.0.0.{host}"), "w2").await;
        others.push(c.expect("w2 was refused a connection below half of the budget"));
    }
    assert!(
        held_connection(&pki, addr, "127.0.0.60", "w1")
            .await
            .is_some(),
        "w1's closed connections still count against it"
    );
    let (_, m) = scrape(&pki, &daemon.url).await;
    let m = String::from_utf8(m).unwrap();
    assert!(
        metric_value(&m, "credbroker_connections_refused_total").unwrap_or(0.0) >= 16.0,
        "{m}"
    );
}

/// Workers holding every connection slot (one tenant's fleet of certificates, or a connector
/// leaking connections) leave the operator who would disable them a connection of those kept
/// for operators; another worker is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_holding_every_connection_leave_the_operator_one() {
    let (_tmp, pki, daemon) = with_two_workers("[limits]\nmax_connections = 8\nmax_connections_per_source = 8\nmax_connections_per_identity = 4\n").await;
    let addr: std::net::SocketAddr = daemon.url.trim_start_matches("https://").parse().unwrap();
    // A revoked operator (its record disabled, its certificate not on the CRL) is given none
    // of the kept connections: registered, then disabled.
    pki.operator("op2");
    let mut op = pki.client_for("op", &daemon.url);
    for (path, body) in [
        ("/v1/admin/operators", json!({"id": "op"})),
        ("/v1/admin/operators", json!({"id": "op2"})),
        ("/v1/admin/operators/op2/disable", json!({})),
    ] {
        let (s, v) = call(&mut op, Method::POST, path, Some(body)).await;
        assert!(s == 200 || s == 201, "{path}: {v}");
    }
    drop(op);
    let names: Vec<String> = (3..=8).map(|n| format!("w{n}")).collect();
    for name in &names {
        pki.worker(name);
    }
    let mut held = Vec::new();
    let mut host = 10;
    for name in ["w1", "w2"]
        .iter()
        .copied()
        .chain(names.iter().map(String::as_str))
    {
        for _ in 0..2 {
            host += 1;
            if held.len() < 8 {
                if let Some(c) = held_connection(&pki, addr, &format!("127.0.1.{host}"), name).await
                {
                    held.push(c);
                }
            }
        }
    }
    assert_eq!(held.len(), 8, "the workers hold every connection");
    assert!(
        held_connection(&pki, addr, "127.0.2.1", "w2")
            .await
            .is_none(),
        "a worker was given a connection past the budget"
    );
    assert!(
        held_connection(&pki, addr, "127.0.2.4", "op2")
            .await
            .is_none(),
        "a disabled operator took a kept connection"
    );
    let operator = held_connection(&pki, addr, "127.0.2.2", "op").await;
    assert!(operator.is_some(), "the operator was locked out");
    let mut op = pki.client_for("op", &daemon.url);
    let (s, v) = call(&mut op, Method::GET, "/v1/admin/tenants", None).await;
    assert_eq!(s, 200, "{v}");
    // Two each: one operator (a script leaking connections) cannot take the others'.
    assert!(
        held_connection(&pki, addr, "127.0.2.3", "op")
            .await
            .is_none(),
        "one operator took a third kept connection"
    );
}

/// A request body that sends what the test hands it, and ends when the test drops its end.
struct Dribble(tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl hyper::body::Body for Dribble {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// `name`'s flood: `streams` webhook verifications on one HTTP/2 connection, each sending
/// 1 MiB of its body and then holding it open. The senders (dropping them ends the bodies)
/// and the answers.
async fn flood(
    pki: &TestPki,
    url: &str,
    name: &str,
    streams: usize,
) -> (
    Vec<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    Vec<tokio::task::JoinHandle<u16>>,
) {
    hold_bodies(
        pki,
        url,
        name,
        "/v1/webhooks/verify",
        streams,
        &[64 * 1024; 16],
    )
    .await
}

/// `streams` POSTs to `path` on one HTTP/2 connection of `name`, each sending chunks of the
/// sizes `chunks` and then holding its body open. The senders (dropping them ends the
/// bodies) and the answers (0: no answer).
async fn hold_bodies(
    pki: &TestPki,
    url: &str,
    name: &str,
    path: &str,
    streams: usize,
    chunks: &[usize],
) -> (
    Vec<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    Vec<tokio::task::JoinHandle<u16>>,
) {
    let addr = url.trim_start_matches("https://");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = client_tls(pki, name, b"h2")
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut held = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..streams {
        let (tx, rx) = tokio::sync::mpsc::channel(32);
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("https://localhost{path}"))
            .header("content-type", "application/json")
            .body(Dribble(rx))
            .unwrap();
        let mut sender = sender.clone();
        answers.push(tokio::spawn(async move {
            match sender.send_request(req).await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            }
        }));
        for &size in chunks {
            let _ = tx.send(bytes::Bytes::from(vec![b' '; size])).await;
        }
        held.push(tx);
    }
    (held, answers)
}

/// The bodies refused so far in `scope` (`source` or `global`), once at least one is.
async fn bodies_refused_in(pki: &TestPki, url: &str, scope: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, m) = scrape(pki, url).await;
        let m = String::from_utf8(m).unwrap();
        let refused = metric_value(
            &m,
            &format!("credbroker_mtls_bodies_refused_total{{scope=\"{scope}\"}}"),
        )
        .unwrap_or(0.0);
        if refused >= 1.0 || Instant::now() > deadline {
            return refused;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A worker certificate holding many large, unfinished bodies at once (webhook envelopes on
/// many HTTP/2 streams) gets no more than its identity's share of the listener's body
/// memory: its further bodies are refused (`unavailable`), and resolves (its own too) are
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_s_unfinished_bodies_hold_only_its_share_of_memory() {
    let (_tmp, pki, daemon) = with_two_workers("[limits]\nbody_read_timeout_ms = 8000\n").await;

    // w1: 24 streams of 1 MiB held open. Its share is about 21.5 MiB.
    let (held, mut answers) = flood(&pki, &daemon.url, "w1", 24).await;
    assert!(
        bodies_refused_in(&pki, &daemon.url, "source").await >= 1.0,
        "no body of w1 was refused"
    );
    // Every byte was sent at once: let the refusals settle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut done = Vec::new();
    for a in &mut answers {
        if a.is_finished() {
            done.push(a.await.unwrap());
        }
    }
    assert!(
        !done.is_empty() && done.iter().all(|s| *s == 503),
        "bodies past the share are answered 503, the others still held: {done:?}"
    );
    // About 21 of the 24 MiB are held: envelopes have a pool of their own, beyond the 4 MiB
    // one identity may hold of requests' own bodies.
    assert!(
        done.len() <= 4,
        "more bodies refused than the envelope share explains: {done:?}"
    );
    // Another worker is served meanwhile; so is w1's own resolve: envelopes and requests'
    // own bodies come from pools apart.
    let mut w2 = pki.client_for("w2", &daemon.url);
    let (s, v) = resolve(&mut w2, json!({"instance_id": "i2"})).await;
    assert_eq!(s, 200, "{v}");
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(s, 200, "w1's resolve was refused by its own envelopes: {v}");
    drop(held);
}

/// One worker certificate keeping many resolves in progress at once (here: streams whose
/// bodies never finish) holds at most its share of the listener's in-flight slots: its
/// further resolves are refused at once with 429 `rate_limited`, counted and not audited,
/// and another worker's resolve is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_s_requests_in_flight_hold_only_its_share() {
    let (_tmp, pki, daemon) = with_two_workers(
        "[limits]\nmax_requests_in_flight = 8\nmax_requests_in_flight_per_identity = 2\n",
    )
    .await;
    let records = daemon.audit_records().len();
    // Half of the 8 slots, then its share of 2 is long exceeded: 4 held, 2 refused.
    let (held, mut answers) = hold_bodies(&pki, &daemon.url, "w1", "/v1/resolve", 6, &[1]).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while answers.iter().filter(|a| a.is_finished()).count() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut refused = Vec::new();
    let mut pending = Vec::new();
    for a in answers.drain(..) {
        if a.is_finished() {
            refused.push(a.await.unwrap());
        } else {
            pending.push(a);
        }
    }
    assert_eq!(refused, [429, 429], "two past w1's share refused at once");
    let mut w1 = pki.client_for("w1", &daemon.url);
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!((s, code(&v)), (429, "rate_limited"), "{v}");
    let mut w2 = pki.client_for("w2", &daemon.url);
    let (s, v) = resolve(&mut w2, json!({"instance_id": "i2"})).await;
    assert_eq!(s, 200, "another worker is served: {v}");
    let (_, m) = scrape(&pki, &daemon.url).await;
    let m = String::from_utf8(m).unwrap();
    assert_eq!(
        metric_value(&m, "credbroker_requests_shed_total{scope=\"identity\"}"),
        Some(3.0),
        "{m}"
    );
    // Counted, not audited: the one record is w2's resolve.
    assert_eq!(daemon.audit_records().len(), records + 1);
    // Its held requests over, w1 is served again.
    drop(held);
    for a in pending {
        let _ = a.await;
    }
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i1"})).await;
    assert_eq!(s, 200, "{v}");
}

/// The bodies refused so far, in either scope (the metric's two series summed).
async fn bodies_refused_now(pki: &TestPki, url: &str) -> f64 {
    let (_, m) = scrape(pki, url).await;
    let m = String::from_utf8(m).unwrap();
    ["source", "global"]
        .iter()
        .map(|scope| {
            metric_value(
                &m,
                &format!("credbroker_mtls_bodies_refused_total{{scope=\"{scope}\"}}"),
            )
            .unwrap_or(0.0)
        })
        .sum()
}

/// A stream holds body memory for the bytes it sent, not more: 1,100 resolves of one worker
/// certificate, each sending one byte and then stalling, hold 1,100 bytes of its 4 MiB share
/// (reserved ahead, at 4 KiB a stream they would hold all of it, at 64 KiB a sixteenth of the
/// streams would), and its own next resolve is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_hold_only_the_bytes_they_sent() {
    let (_tmp, pki, daemon) = with_two_workers(
        "[limits]\nbody_read_timeout_ms = 20000\nhttp2_max_concurrent_streams = 1200\n",
    )
    .await;
    let (held, answers) = hold_bodies(&pki, &daemon.url, "w1", "/v1/resolve", 1100, &[1]).await;
    // Let the daemon read every stream's byte.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut probe = pki.client_for("w1", &daemon.url);
    let (s, v) = resolve(&mut probe, json!({"instance_id": "i1"})).await;
    assert_eq!(s, 200, "w1's stalled bodies took its share: {v}");
    assert_eq!(
        bodies_refused_now(&pki, &daemon.url).await,
        0.0,
        "a stalled one-byte body was refused"
    );
    assert!(
        answers.iter().all(|a| !a.is_finished()),
        "the stalled bodies are still held, not answered"
    );
    drop(held);
}

/// Active operators' admin bodies have a pool of their own: sixteen worker certificates
/// holding their whole share of requests' bodies (64 resolves each, 64 KiB sent and held)
/// fill that pool to the byte — a seventeenth certificate's resolve is refused — and an
/// operator's change is still read and applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_request_pool_leaves_operators_bodies_their_own() {
    let (_tmp, pki, daemon) =
        with_two_workers("[limits]\nbody_read_timeout_ms = 30000\nmax_connections = 128\n").await;
    let mut held = Vec::new();
    for n in 0..16 {
        let name = format!("flood{n}");
        pki.worker(&name);
        let (senders, _answers) =
            hold_bodies(&pki, &daemon.url, &name, "/v1/resolve", 64, &[16 * 1024; 4]).await;
        held.push(senders);
    }
    // Full once a one-byte body of another certificate is refused (`global`).
    pki.worker("probe");
    let mut probe = pki.client_for("probe", &daemon.url);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = resolve(&mut probe, json!({"instance_id": "i1"})).await;
        if s == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "the pool never filled: {s} {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut op = pki.client_for("op", &daemon.url);
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/tenants",
        Some(json!({"id": "t3"})),
    )
    .await;
    assert_eq!(
        s, 201,
        "the operator's body waited on the workers' pool: {v}"
    );
    drop(held);
}

/// The public listener admits anonymous handshakes under the strict rule: one source never
/// holds more than `[public] max_handshakes_per_source` (8) of them, however many slots are
/// free. Under the mTLS listener's rule (any source while more than half the budget is free)
/// one address held 32 of the 64 public handshake slots with TCP connections that never send
/// a ClientHello, renewed every 3 s, and a few more addresses the rest: every JWKS fetch,
/// callback and intake page was then closed at accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_holds_only_its_share_of_public_handshakes() {
    let (tmp, pki) = setup();
    let (public, port) = public_section(&pki);
    let daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            extra_toml: public,
            ..DaemonOptions::default()
        },
    );
    let refused = || async {
        let (_, m) = scrape(&pki, &daemon.url).await;
        metric_value(
            &String::from_utf8(m).unwrap(),
            "credbroker_tls_handshakes_refused_total{scope=\"source\"}",
        )
        .unwrap_or(0.0)
    };
    let before = refused().await;
    let mut idle = Vec::new();
    for _ in 0..12 {
        idle.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    // Refused at accept: four of the twelve, once the accept loop has taken them all.
    let deadline = Instant::now() + Duration::from_secs(2);
    while refused().await - before < 4.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refused().await - before, 4.0);
    drop(idle);

    // The public listener's JSON answers (a browser lands on some after an install) are
    // never sniffed as HTML nor framed.
    let public_url = daemon.public_url.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, headers) = loop {
        let mut c = public_client(&pki, &public_url);
        match c
            .exchange(Method::GET, "/callbacks/nope/setup", &[], None)
            .await
        {
            Ok((s, h, _)) => break (s, h),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(status.is_client_error(), "{status}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(
        headers["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
}

/// A TCP connection from `local` to `addr` that never says hello.
async fn silent_from(addr: std::net::SocketAddr, local: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Waits until the daemon closes `stream` (refused at accept, or its slot taken); panics
/// after `within`.
async fn closed_within(mut stream: TcpStream, within: Duration) {
    let (_, took) = read_all(&mut stream, within).await;
    assert!(
        took < within,
        "the connection was not closed within {within:?}"
    );
}

/// A few sources holding every mTLS handshake slot with connections that never say hello —
/// 127.0.0.2 half of the 32, four more addresses four each — shut every worker out for the
/// whole handshake deadline (30 s here), and renewed it after. Now a worker's handshake from
/// another address takes the oldest slot of the largest holder, whose connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_sources_holding_every_handshake_slot_leave_a_newcomer_one() {
    let limits = LIMITS.replace(
        "handshake_timeout_ms = 5000",
        "handshake_timeout_ms = 30000",
    );
    let (_tmp, pki, daemon) = with_two_workers(&limits).await;
    let addr: std::net::SocketAddr = daemon.url.trim_start_matches("https://").parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(silent_from(addr, "127.0.0.2").await);
    }
    // Its seventeenth is refused at accept, once the sixteen before it hold their slots.
    closed_within(silent_from(addr, "127.0.0.2").await, Duration::from_secs(5)).await;
    for n in 3..7 {
        for _ in 0..4 {
            held.push(silent_from(addr, &format!("127.0.0.{n}")).await);
        }
    }
    closed_within(silent_from(addr, "127.0.0.6").await, Duration::from_secs(5)).await;
    // Every slot is held now, the oldest for longer than an honest handshake takes (a
    // second here, a quarter of the deadline at most).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    good_worker_is_served_within(&pki, &daemon.url, Duration::from_secs(3)).await;
    let oldest = held.remove(0);
    closed_within(oldest, Duration::from_secs(2)).await;
    let (_, m) = scrape(&pki, &daemon.url).await;
    let m = String::from_utf8(m).unwrap();
    assert!(
        metric_value(
            &m,
            "credbroker_tls_handshakes_refused_total{scope=\"evicted\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    drop(held);
}
