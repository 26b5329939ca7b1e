//! A small mTLS HTTP/1.1 client for the CLI's admin commands (and for anyone scripting the
//! API from Rust). One kept-alive connection, re-established when the server closes it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::tls::{client_config, TlsError};

/// The largest answer read from the broker: a page of a listing holds at most 8 MiB of
/// records and the inventory of 100,000 bindings about 70 MiB; a broker (or whatever holds a
/// certificate of its CA) cannot exhaust the caller's memory.
pub const MAX_ANSWER: usize = 256 << 20;

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad server URL.
    #[error("server URL must look like https://host:port ({0})")]
    Url(String),
    /// Certificate or key files.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// The TCP connection could not be made: nothing was sent.
    #[error("{0}")]
    Connect(String),
    /// The TLS handshake failed (the server's certificate is not trusted, or ours was
    /// refused): nothing was sent.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// The request was sent (or may have been) and no answer came: its outcome is unknown.
    #[error("{0}")]
    Transport(String),
    /// An answer came, larger than the client reads: not read.
    #[error("the broker answered {0} with more than {1} bytes: not read")]
    AnswerTooLarge(StatusCode, usize),
}

/// A connection to the broker presenting one client certificate.
pub struct BrokerClient {
    config: Arc<ClientConfig>,
    authority: String,
    server_name: ServerName<'static>,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
    max_answer: usize,
}

impl BrokerClient {
    /// A client for `server` (`https://host:port`) trusting `ca` and presenting `cert`/`key`.
    ///
    /// # Errors
    /// On a malformed URL or unreadable certificate files.
    pub fn new(
        server: &str,
        ca: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<BrokerClient, ClientError> {
        Self::with_config(server, client_config(ca, cert, key)?)
    }

    /// A client with a prepared TLS config.
    ///
    /// # Errors
    /// On a malformed URL.
    pub fn with_config(
        server: &str,
        config: Arc<ClientConfig>,
    ) -> Result<BrokerClient, ClientError> {
        let authority = server
            .strip_prefix("https://")
            .ok_or_else(|| ClientError::Url(server.to_owned()))?
            .trim_end_matches('/')
            .to_owned();
        let host = match authority.rsplit_once(':') {
            Some((h, port)) if port.parse::<u16>().is_ok() => {
                h.trim_start_matches('[').trim_end_matches(']').to_owned()
            }
            _ => return Err(ClientError::Url(server.to_owned())),
        };
        let server_name =
            ServerName::try_from(host).map_err(|_| ClientError::Url(server.to_owned()))?;
        Ok(BrokerClient {
            config,
            authority,
            server_name,
            sender: None,
            timeout: Duration::from_secs(30),
            max_answer: MAX_ANSWER,
        })
    }

    /// The same client reading answers of at most `bytes` (at most [`MAX_ANSWER`]): a
    /// resolve's answer is a few KiB.
    #[must_use]
    pub fn with_max_answer(mut self, bytes: usize) -> BrokerClient {
        self.max_answer = bytes.min(MAX_ANSWER);
        self
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| ClientError::Connect(format!("connect to {} timed out", self.authority)))?
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(
            self.timeout,
            TlsConnector::from(self.config.clone()).connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| ClientError::Handshake("timed out".into()))?
        .map_err(|e| ClientError::Handshake(e.to_string()))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ClientError::Handshake(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends one request; returns status and body.
    ///
    /// # Errors
    /// On connection, TLS or protocol failure, or after the request timeout.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        self.request_with_headers(method, path, &[], body).await
    }

    /// As [`BrokerClient::request`], with extra request headers.
    ///
    /// # Errors
    /// As [`BrokerClient::request`].
    pub async fn request_with_headers(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        self.exchange(method, path, headers, body)
            .await
            .map(|(status, _, body)| (status, body))
    }

    /// As [`BrokerClient::request_with_headers`], also returning the response headers.
    ///
    /// # Errors
    /// As [`BrokerClient::request`].
    pub async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, http::HeaderMap, Vec<u8>), ClientError> {
        // A body may carry a secret (`secret set`, `keys add`): held from here on in a buffer
        // wiped when dropped, whether it is sent or the connection fails first.
        let has_body = body.is_some();
        let body = credbroker_providers::http::wiped_bytes(body.unwrap_or_default());
        let mut sender = match self.sender.take() {
            Some(mut s) => {
                if s.ready().await.is_ok() {
                    s
                } else {
                    self.connect().await?
                }
            }
            None => self.connect().await?,
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.authority);
        let typed = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if has_body && !typed {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder
            .body(Full::new(body))
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let exchange = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| ClientError::Transport(e.to_string()))?;
            let status = resp.status();
            let response_headers = resp.headers().clone();
            let bytes = Limited::new(resp.into_body(), self.max_answer)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        ClientError::AnswerTooLarge(status, self.max_answer)
                    } else {
                        ClientError::Transport(e.to_string())
                    }
                })?
                .to_bytes();
            Ok::<_, ClientError>((status, response_headers, bytes.to_vec()))
        };
        let result = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Transport("request timed out".into()))??;
        self.sender = Some(sender);
        Ok(result)
    }
}
