//! One bounded HTTP(S) client for providers that speak plain HTTP to their upstream (Entra,
//! ARM, Graph, ServiceNow): rustls with the platform's roots, plain http only where a
//! provider's own URL rules allow it, every call under a deadline, answers capped at 1 MiB.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
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
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
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
        Self::with_roots(Vec::new())
    }

    /// A client trusting the platform's roots and the CA certificates in `pem` too (a
    /// customer's private PKI).
    ///
    /// # Errors
    /// When `pem` holds no certificate or one that does not parse.
    pub fn with_extra_roots(pem: &str) -> Result<Http, String> {
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|_| "the CA bundle is not PEM certificates".to_owned())?;
        if certs.is_empty() {
            return Err("the CA bundle holds no certificate".into());
        }
        Ok(Self::with_roots(certs))
    }

    fn with_roots(extra: Vec<rustls::pki_types::CertificateDer<'static>>) -> Http {
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
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Http {
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
        }
    }

    /// Sends `request`; the status, the `x-ms-request-id` and the body (at most 1 MiB).
    ///
    /// # Errors
    /// `Unavailable` when unreachable or slower than `timeout`.
    pub async fn send(
        &self,
        request: http::Request<Full<Bytes>>,
        timeout: Duration,
        what: &str,
    ) -> Result<(u16, Option<String>, Bytes), ProviderError> {
        let a = self.exchange(request, timeout, what).await?;
        Ok((a.status, a.request_id, a.body))
    }

    /// Sends `request`; the whole [`Answer`].
    ///
    /// # Errors
    /// `Unavailable` when unreachable or slower than `timeout`.
    pub async fn exchange(
        &self,
        request: http::Request<Full<Bytes>>,
        timeout: Duration,
        what: &str,
    ) -> Result<Answer, ProviderError> {
        let unavailable = |m: String| ProviderError::Unavailable {
            message: m,
            upstream_request_id: None,
        };
        let exchange = async {
            let resp = self
                .client
                .request(request)
                .await
                .map_err(|_| unavailable(format!("{what} could not be reached")))?;
            let status = resp.status().as_u16();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| crate::is_request_id(v))
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
                && content_type.bytes().all(|b| b.is_ascii_graphic())
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

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}
