//! `credbroker health`: asks the running daemon's loopback health listener (`[health]`)
//! whether it is ready, without any certificate — the check a container `HEALTHCHECK`, a
//! Kubernetes exec probe or a monitoring script runs on the broker's host.
//!
//! Exit status: 0 when `GET /readyz` answers 200 within 3 s, 1 for anything else (not
//! ready, no answer, no daemon, no `[health]` section, an unreadable config). Never 2:
//! container engines reserve it, so this command reports every failure as 1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::Config;

/// Deadline for the whole check: connect, request, answer.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer read (the JSON status is a few dozen bytes).
const MAX_ANSWER_BYTES: usize = 4096;

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// TOML config file: its `[health] listen` address is checked.
    #[arg(long, env = "CREDBROKER_CONFIG")]
    config: Option<PathBuf>,
    /// The health listener's address instead (e.g. 127.0.0.1:9090); wins over --config.
    #[arg(long)]
    addr: Option<SocketAddr>,
}

/// `credbroker health`: one line on stdout when ready (exit 0), one on stderr otherwise
/// (exit 1).
pub fn run_health(args: &HealthArgs) -> ExitCode {
    let verdict = target(args).and_then(|addr| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start runtime: {e}"))?
            .block_on(probe(addr))
    });
    match verdict {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(line) => {
            eprintln!("credbroker health: {line}");
            ExitCode::from(1)
        }
    }
}

/// The address to check: `--addr`, else the config's `[health] listen`.
fn target(args: &HealthArgs) -> Result<SocketAddr, String> {
    if let Some(addr) = args.addr {
        return Ok(addr);
    }
    let path = args
        .config
        .as_ref()
        .ok_or("give --config FILE (or CREDBROKER_CONFIG) or --addr ADDR")?;
    let config = Config::load(path).map_err(|e| e.to_string())?;
    config.health.map(|h| h.listen).ok_or_else(|| {
        format!(
            "{}: no [health] section; add `[health] listen = \"127.0.0.1:9090\"` and restart the daemon, or pass --addr",
            path.display()
        )
    })
}

/// `GET /readyz` on `addr` within [`TIMEOUT`]; `Ok` only for 200.
async fn probe(addr: SocketAddr) -> Result<String, String> {
    tokio::time::timeout(TIMEOUT, get_readyz(addr))
        .await
        .map_err(|_| {
            format!(
                "no answer from http://{addr}/readyz within {} s",
                TIMEOUT.as_secs()
            )
        })?
}

async fn get_readyz(addr: SocketAddr) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| {
        format!("cannot connect to {addr}: {e} (is the daemon running, with [health] listen = \"{addr}\"?)")
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    // The connection task ends when the server closes (one request per connection) or
    // when the runtime is dropped after the answer.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::get("/readyz")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET http://{addr}/readyz: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| format!("GET http://{addr}/readyz: answer unreadable: {e}"))?
        .to_bytes();
    // Whatever answers on that address chose the body: one line, nothing a terminal acts on.
    let summary = format!(
        "GET http://{addr}/readyz: {} {}",
        status.as_u16(),
        super::output::sanitize(String::from_utf8_lossy(&body).trim())
    );
    if status == StatusCode::OK {
        Ok(format!("ready ({summary})"))
    } else {
        Err(format!("not ready ({summary})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_wins_over_config_and_neither_is_an_error() {
        let addr: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let both = HealthArgs {
            config: Some(PathBuf::from("/nonexistent/credbroker.toml")),
            addr: Some(addr),
        };
        assert_eq!(target(&both), Ok(addr));
        let neither = HealthArgs {
            config: None,
            addr: None,
        };
        assert!(target(&neither).unwrap_err().contains("--addr"));
    }

    #[test]
    fn nothing_listening_is_exit_1_not_a_panic() {
        // A port that was free a moment ago: connection refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let args = HealthArgs {
            config: None,
            addr: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        };
        assert_eq!(run_health(&args), ExitCode::from(1));
    }
}
