//! A TCP proxy on loopback that can cut connections: forwards bytes to an upstream, or — with
//! reset on — resets every live connection and every new one (SO_LINGER 0), the way a crashed
//! load balancer or a dropped NAT entry looks to a client with pooled keep-alive connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy.
pub struct TcpFault {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Connections reset so far (live and new).
    pub resets: Arc<AtomicU64>,
    reset: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpFault {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpFault {
    /// Proxies to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> TcpFault {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (reset, watch_rx) = watch::channel(false);
        let resets = Arc::new(AtomicU64::new(0));
        let (count, upstream) = (resets.clone(), upstream.to_owned());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                // Any close of a proxied connection is an RST. Tokio deprecates set_linger because
                // a non-zero linger blocks on drop; a zero linger never blocks (RST at once).
                #[allow(deprecated)]
                let _ = client.set_linger(Some(Duration::ZERO));
                if *watch_rx.borrow() {
                    count.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let (upstream, count) = (upstream.clone(), count.clone());
                let mut rx = watch_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.wait_for(|r| *r) => {
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        TcpFault {
            url,
            resets,
            reset,
            task,
        }
    }

    /// Starts (true) or stops (false) resetting connections.
    pub fn set_reset(&self, on: bool) {
        let _ = self.reset.send(on);
    }
}
