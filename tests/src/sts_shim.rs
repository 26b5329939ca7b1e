//! A loopback shim in front of moto's STS that adds the one rule moto does not implement.
//!
//! Real STS denies `AssumeRole` without an ExternalId when the role's trust policy requires
//! one (`StringEquals sts:ExternalId`); moto 5 lets such calls through (PROTOCOLS.md), which
//! is exactly the trap the activation probe exists to catch. With `enforce` on, the shim
//! answers an ExternalId-less AssumeRole with STS's own AccessDenied error; everything else is
//! forwarded to moto byte for byte (SigV4 headers included), and moto's answer relayed
//! unchanged. With `enforce` off it is a transparent proxy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::fake_sts::parse_form;

/// A running shim.
pub struct StsShim {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Whether ExternalId-less AssumeRole calls are denied.
    pub enforce: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StsShim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    upstream: &str,
    parts: http::request::Parts,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let bad_gateway = || {
        Response::builder()
            .status(502)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let Ok(tcp) = TcpStream::connect(upstream).await else {
        return bad_gateway();
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
    else {
        return bad_gateway();
    };
    tokio::spawn(conn);
    let req = Request::from_parts(parts, Full::new(body));
    match sender.send_request(req).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::from_parts(parts, Full::new(body))
        }
        Err(_) => bad_gateway(),
    }
}

fn access_denied(role: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <Error>\n    <Type>Sender</Type>\n    <Code>AccessDenied</Code>\n    <Message>User: arn:aws:iam::123456789012:user/credbroker-vendor is not authorized to perform: sts:AssumeRole on resource: {role}</Message>\n  </Error>\n  <RequestId>5b9e0c47-shim-0000-0000-000000000000</RequestId>\n</ErrorResponse>\n"
    );
    Response::builder()
        .status(403)
        .header("content-type", "text/xml")
        .header("x-amzn-RequestId", "5b9e0c47-shim-0000-0000-000000000000")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

impl StsShim {
    /// Starts a shim forwarding to `upstream` (`127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> StsShim {
        let enforce = Arc::new(AtomicBool::new(true));
        let upstream = upstream.to_owned();
        let flag = enforce.clone();
        let (url, task) = crate::loopback::serve(move |req: Request<Incoming>| {
            let upstream = upstream.clone();
            let flag = flag.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let form = parse_form(&String::from_utf8_lossy(&body));
                if flag.load(Ordering::SeqCst)
                    && form.get("Action").map(String::as_str) == Some("AssumeRole")
                    && !form.contains_key("ExternalId")
                {
                    access_denied(form.get("RoleArn").map_or("", String::as_str))
                } else {
                    forward(&upstream, parts, body).await
                }
            }
        })
        .await;
        StsShim { url, enforce, task }
    }
}
