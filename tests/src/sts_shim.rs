//! A loopback shim in front of moto's STS that adds the one rule moto does not implement.
//!
//! Real STS denies `AssumeRole` without an ExternalId when the role's trust policy requires
//! one (`StringEquals sts:ExternalId`); moto 5 lets such calls through (PROTOCOLS.md), which
//! is exactly the trap the activation probe exists to catch. With `enforce` on, the shim
//! answers an ExternalId-less AssumeRole with STS's own AccessDenied error; everything else is
//! forwarded to moto byte for byte (SigV4 headers included), and moto's answer relayed
//! unchanged but for its error bodies, which moto wraps in `<Errors>` where STS does not
//! (the SDK cannot read moto's; the broker counts only a readable AccessDenied as the trust
//! refusing). With `enforce` off it forwards every call.

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
    /// The `sub` a role's web-identity trust pins (`None`: whatever moto does — it checks no
    /// condition). With it set, an AssumeRoleWithWebIdentity whose token names another
    /// subject is denied, as real STS denies it for a trust with that condition.
    pub web_subject: Arc<std::sync::Mutex<Option<String>>>,
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
            let mut parts = parts;
            let body = sts_shaped(body);
            parts
                .headers
                .insert(http::header::CONTENT_LENGTH, body.len().into());
            Response::from_parts(parts, Full::new(body))
        }
        Err(_) => bad_gateway(),
    }
}

/// moto's error in the shape real STS answers: moto wraps `<Error>` in `<Errors>` (the
/// query-protocol shape of other services), which the SDK cannot read; STS's own
/// `<ErrorResponse>` holds `<Error>` directly (PROTOCOLS.md). Nothing else is changed.
fn sts_shaped(body: Bytes) -> Bytes {
    let text = String::from_utf8_lossy(&body);
    if text.contains("<ErrorResponse") && text.contains("<Errors>") {
        Bytes::from(text.replace("<Errors>", "").replace("</Errors>", ""))
    } else {
        body
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

/// The `sub` of a JWT, read without verification (moto verifies nothing either).
fn token_subject(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["sub"].as_str().map(str::to_owned)
}

impl StsShim {
    /// Starts a shim forwarding to `upstream` (`127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> StsShim {
        let enforce = Arc::new(AtomicBool::new(true));
        let web_subject: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let upstream = upstream.to_owned();
        let flag = enforce.clone();
        let pinned = web_subject.clone();
        let (url, task) = crate::loopback::serve(move |req: Request<Incoming>| {
            let upstream = upstream.clone();
            let flag = flag.clone();
            let pinned = pinned.lock().unwrap().clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let form = parse_form(&String::from_utf8_lossy(&body));
                let action = form.get("Action").map(String::as_str);
                let no_external_id = flag.load(Ordering::SeqCst)
                    && action == Some("AssumeRole")
                    && !form.contains_key("ExternalId");
                let foreign_subject = action == Some("AssumeRoleWithWebIdentity")
                    && pinned.is_some()
                    && token_subject(form.get("WebIdentityToken").map_or("", String::as_str))
                        != pinned;
                if no_external_id || foreign_subject {
                    access_denied(form.get("RoleArn").map_or("", String::as_str))
                } else {
                    forward(&upstream, parts, body).await
                }
            }
        })
        .await;
        StsShim {
            url,
            enforce,
            web_subject,
            task,
        }
    }
}
