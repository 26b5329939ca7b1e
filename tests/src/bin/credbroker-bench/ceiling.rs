//! The ceilings credbroker is measured against: a bare hyper + rustls mTLS server that
//! answers a fixed body, and the durable ceiling — the same server answering each request
//! only once a fixed 300-byte record is on disk through a group commit (one write and one
//! `fdatasync` per batch of whatever is queued, at most the broker's `[audit] max_batch`),
//! which is the physical limit of the broker's contract that every 200 is backed by a
//! durable audit record.

use std::path::PathBuf;

use serde_json::json;

/// The body both answer (as long as a pasted-secret resolve answer).
fn body() -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(&json!({
        "provider": "pasted_secret", "kind": "secret_fields", "expires_at": null, "cached": false,
        "audit_id": "aud_000000000001", "request_id": "req_00000000000000000000000000000000",
        "credentials": {"password": "0123456789abcdef0123456789abcdef0123", "username": "demo-user"},
        "details": {"pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}
    })).unwrap())
}

/// The group-commit writer: takes everything queued (up to `max_batch`), writes it in one
/// `pwrite`, `fdatasync`s once, then answers every waiter of the batch. As the broker's
/// writer does, it zero-fills the file 1 MiB ahead of itself (one `fsync` per step), so
/// a batch's `fdatasync` writes data only: the cheapest durable write there is.
fn writer(log: PathBuf) -> std::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>> {
    let (tx, rx) = std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>();
    std::thread::spawn(move || {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&log)
            .expect("durable ceiling log");
        let zeros = vec![0u8; 1 << 20];
        let (mut at, mut filled) = (0u64, 0u64);
        let mut record = vec![b'r'; 299];
        record.push(b'\n');
        let max_batch = credbroker::config::AuditSettings::default().max_batch;
        let mut buf = Vec::with_capacity(max_batch * record.len());
        while let Ok(first) = rx.recv() {
            let mut waiters = vec![first];
            while waiters.len() < max_batch {
                match rx.try_recv() {
                    Ok(w) => waiters.push(w),
                    Err(_) => break,
                }
            }
            buf.clear();
            for _ in &waiters {
                buf.extend_from_slice(&record);
            }
            while filled < at + buf.len() as u64 {
                file.write_all_at(&zeros, filled).expect("zero-fill");
                filled += zeros.len() as u64;
                file.sync_all().expect("fsync");
            }
            file.write_all_at(&buf, at).expect("pwrite");
            file.sync_data().expect("fdatasync");
            at += buf.len() as u64;
            for w in waiters {
                let _ = w.send(());
            }
        }
    });
    tx
}

/// Serves the bare ceiling, or with `log` the durable one appending to that file.
pub async fn serve(pki_dir: PathBuf, log: Option<PathBuf>) {
    use credbroker::tls::ReloadableTls;
    let tls = ReloadableTls::new(credbroker::config::TlsSettings {
        cert: pki_dir.join("server.crt"),
        key: pki_dir.join("server.key"),
        client_ca: pki_dir.join("ca.crt"),
        crl: None,
        crl_check_interval_s: credbroker::config::DEFAULT_CRL_CHECK_S,
        stale_crl: credbroker::config::StaleCrl::Refuse,
    })
    .expect("tls");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let commits = log.map(writer);
    println!("listening {}", listener.local_addr().unwrap());
    println!("ready");
    let body = body();
    loop {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let body = body.clone();
        let commits = commits.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |_req| {
                let body = body.clone();
                let commits = commits.clone();
                async move {
                    if let Some(commits) = commits {
                        let (done, durable) = tokio::sync::oneshot::channel();
                        let _ = commits.send(done);
                        let _ = durable.await;
                    }
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(body),
                    ))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
        });
    }
}
