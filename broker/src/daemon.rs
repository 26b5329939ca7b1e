//! Running the daemon: broker, listener, signals.
//!
//! SIGHUP reloads the listener certificate, key, client CA bundle and CRL without dropping
//! the process or open connections (a failed reload keeps the old config and logs why).
//! SIGTERM/SIGINT stop accepting (the health listener first), let in-flight requests finish
//! (public listener up to 5 s, then mTLS up to 10 s), write a final audit checkpoint and
//! exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};

use credbroker_providers::ProviderRegistry;

use crate::broker::{Broker, StartError};
use crate::config::Config;
use crate::server;
use crate::tls::ReloadableTls;

/// Starts the daemon for `config`, calls `on_ready` once the listener accepts connections,
/// and runs until SIGTERM or SIGINT.
///
/// # Errors
/// When the broker, TLS config or listener cannot be set up.
pub async fn run(
    config: Config,
    registry: ProviderRegistry,
    hup: Signal,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), StartError> {
    let broker = Broker::open_with_config(&config, registry).await?;
    run_with_broker(config, broker, hup, on_ready).await
}

/// SIGHUP taken from now on ([`run`] and [`run_with_broker`] apply it as a reload). Taken
/// first thing at start: until a process handles SIGHUP it terminates it, and a reload asked
/// for while the broker opens (a certificate renewal hook's `systemctl reload`) would end
/// it — cleanly in systemd's eyes, so not restarted. One asked for during the start is
/// applied once the listeners run.
///
/// # Errors
/// When the signal cannot be taken.
pub fn hangups() -> Result<Signal, StartError> {
    signal(SignalKind::hangup()).map_err(|e| StartError::Other(e.to_string()))
}

/// How far ahead the daemon warns that a certificate expires or a CRL is due.
const EXPIRY_WARN_S: i64 = 30 * 86_400;

/// Sets `credbroker_tls_expiry_seconds` for every TLS file in use — from what was read at
/// its last successful load, not from the file on disk now — and removes the series of a
/// file no longer configured; logs a warning for one that expires (or, a CRL, is due)
/// within [`EXPIRY_WARN_S`], an error for one past it. Run at start, hourly, and after each
/// reload (no file is read here).
fn check_tls_expiry(broker: &Broker, listeners: &[&ReloadableTls]) {
    use crate::metrics::TlsFileLabel;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let gauge = &broker.metrics().tls_expiry;
    let mut seen = Vec::new();
    for tls in listeners {
        for d in tls.deadlines() {
            let left = match &d.at {
                Ok(Some(at)) => at - now,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(file = d.file, error = %e, "cannot read a TLS file to check its expiry");
                    continue;
                }
            };
            seen.push(d.file);
            gauge
                .get_or_create(&TlsFileLabel {
                    file: d.file.to_owned(),
                })
                .set(left);
            let what = if d.crl {
                "CRL next update"
            } else {
                "certificate expiry"
            };
            if left < 0 && d.refused_when_due {
                tracing::error!(file = d.file, path = %d.path.display(), days_past = -left / 86_400, "CRL next update has passed: every client certificate it checks is refused ([tls] stale_crl = \"refuse\") until a current CRL is in place (the watcher loads it, or run `credbroker reload`)");
            } else if left < 0 {
                tracing::error!(file = d.file, path = %d.path.display(), days_past = -left / 86_400, "{what} has passed: renew it and run `credbroker reload`");
            } else if left < EXPIRY_WARN_S {
                tracing::warn!(file = d.file, path = %d.path.display(), days_left = left / 86_400, "{what} is near: renew it and run `credbroker reload`");
            }
        }
    }
    for file in ["server", "client_ca", "crl", "public"] {
        if !seen.contains(&file) {
            gauge.remove(&TlsFileLabel {
                file: file.to_owned(),
            });
        }
    }
}

/// SIGHUP: re-reads the config file (when there is one) and reloads the TLS files it names
/// — server certificate and key, client CA bundle, CRL, the public listener's certificate
/// and key — so a CRL added to the config after start-up takes effect. A config that no
/// longer loads, or TLS files that do not, change nothing and say so; changes outside the
/// TLS files need a restart and are named in a warning.
fn reload(config: &Config, tls: &ReloadableTls, public: Option<&ReloadableTls>, broker: &Broker) {
    let fresh = match &config.source_file {
        None => None,
        Some(path) => match Config::load(path) {
            Ok(c) => Some(c),
            Err(e) => {
                // The files at the paths in force are still re-read: a CRL updated in place
                // must not wait for an unrelated config mistake to be fixed.
                tracing::error!(error = %e, "SIGHUP: the config file does not load; re-reading the TLS files at the paths in force, changes to the config ignored");
                None
            }
        },
    };
    if let Some(fresh) = &fresh {
        let ignored = changes_needing_restart(config, fresh);
        if !ignored.is_empty() {
            tracing::warn!(sections = %ignored.join(", "), "SIGHUP: these config changes take effect only after a restart");
        }
    }
    // Without a config that loads (or without a file: dev mode), the files at the paths in
    // force — those of the last successful reload — are read again.
    let result = match &fresh {
        Some(f) => tls.reload_with(f.tls.clone()),
        None => tls.reload(),
    };
    match result {
        Ok(()) => tracing::info!("SIGHUP: TLS certificates, client CA and CRL reloaded"),
        Err(e) => {
            broker.metrics().tls_reload_failures.inc();
            tracing::error!(error = %e, "SIGHUP: reload failed; keeping the previous TLS config");
            // A revocation does not wait for the failing file: the CRL in force (at the path
            // of the config in force, not of the new one) is read again alone, with the
            // certificate, key and client CA in force.
            match tls.reload_crl() {
                Ok(()) => {
                    tracing::warn!(crl = %tls.crl_in_force().unwrap_or_default(), "SIGHUP: the CRL in force was read again alone (the certificate, key and client CA in force are kept)")
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: the CRL in force could not be read again either")
                }
            }
        }
    }
    if let Some(ptls) = public {
        let result = match fresh.as_ref().and_then(|f| f.public.as_ref()) {
            Some(p) => ptls.reload_public_with(p.cert.clone(), p.key.clone()),
            None => ptls.reload(),
        };
        match result {
            Ok(()) => tracing::info!("SIGHUP: public listener certificate reloaded"),
            Err(e) => {
                broker.metrics().tls_reload_failures.inc();
                tracing::error!(error = %e, "SIGHUP: public listener reload failed; keeping its previous TLS config")
            }
        }
    }
}

/// Writes this process's id to `path`, never through a symbolic link (one planted in the
/// data directory could otherwise point the write at a key file).
fn write_pid_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?
        .write_all(format!("{}\n", std::process::id()).as_bytes())
}

/// Top-level config sections that differ between `old` and `new`, other than the TLS files
/// SIGHUP applies (`[tls]`, and `[public]` `cert`/`key`).
fn changes_needing_restart(old: &Config, new: &Config) -> Vec<String> {
    let table = |c: &Config| -> toml::map::Map<String, toml::Value> {
        let mut t = match toml::Value::try_from(c) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::map::Map::new(),
        };
        // The TLS files (and what a stale CRL does, part of the verifier they build) are
        // what SIGHUP reloads; anything else in [tls] (the CRL check interval) is read at
        // start only.
        if let Some(toml::Value::Table(tls)) = t.get_mut("tls") {
            for reloaded in ["cert", "key", "client_ca", "crl", "stale_crl"] {
                tls.remove(reloaded);
            }
        }
        if let Some(toml::Value::Table(p)) = t.get_mut("public") {
            p.remove("cert");
            p.remove("key");
        }
        t
    };
    let (a, b) = (table(old), table(new));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("[{k}]"))
        .collect()
}

/// As [`run`], with a broker already opened (dev mode seeds it first).
///
/// # Errors
/// When the TLS config or listener cannot be set up.
pub async fn run_with_broker(
    config: Config,
    broker: Arc<Broker>,
    hup: Signal,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), StartError> {
    // A start that fails here (TLS files, the listener, signals) gives the replica's
    // leases back at once, as a clean stop does, instead of leaving them to lapse.
    let held = Arc::clone(&broker);
    let served = serve_with_broker(config, broker, hup, on_ready).await;
    if served.is_err() {
        held.leave().await;
    }
    served
}

async fn serve_with_broker(
    config: Config,
    broker: Arc<Broker>,
    mut hup: Signal,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), StartError> {
    let tls = Arc::new(
        ReloadableTls::new(config.tls.clone())
            .map_err(|e| StartError::Other(format!("tls: {e}")))?,
    );
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Other(format!("cannot listen on {}: {e}", config.listen)))?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| StartError::Other(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| StartError::Other(e.to_string()))?;
    // Every listener's files loaded and address bound before any accepts: a start that
    // fails on one (the public certificate, a port taken) serves nothing meanwhile.
    let mut public_ready = None;
    if let Some(p) = &config.public {
        let ptls = Arc::new(
            ReloadableTls::public(p.cert.clone(), p.key.clone())
                .map_err(|e| StartError::Other(format!("public tls: {e}")))?,
        );
        let plistener = TcpListener::bind(p.listen)
            .await
            .map_err(|e| StartError::Other(format!("cannot listen on {}: {e}", p.listen)))?;
        public_ready = Some((p, ptls, plistener));
    }
    // The loopback health listener (plain HTTP, /healthz and /readyz only): config
    // validation has refused any address off loopback.
    let mut health_ready = None;
    if let Some(h) = &config.health {
        let hlistener = TcpListener::bind(h.listen).await.map_err(|e| {
            StartError::Other(format!("cannot listen on {} ([health]): {e}", h.listen))
        })?;
        health_ready = Some(hlistener);
    }
    let running = server::spawn(listener, broker.clone(), tls.clone(), config.limits.clone())
        .map_err(|e| StartError::Other(e.to_string()))?;
    tracing::info!(listen = %running.local_addr, trust_domain = %config.trust_domain, "credbroker listening (mTLS)");
    let mut public = None;
    if let Some((p, ptls, plistener)) = public_ready {
        // Its own small budgets: a flood on the public listener cannot take the workers'
        // connection or handshake slots.
        let limits = crate::config::Limits {
            max_connections: p.max_connections,
            max_connections_per_source: p.max_connections_per_source,
            idle_timeout_ms: p.idle_timeout_ms,
            max_connection_age_s: p.max_connection_age_s,
            max_body_bytes: p.max_webhook_body_bytes,
            max_handshakes: p.max_handshakes,
            max_handshakes_per_source: p.max_handshakes_per_source,
            ..config.limits.clone()
        };
        let rates = crate::admission::Rates {
            per_source: p.requests_per_second_per_source,
            per_source_burst: p.burst_per_source,
            global: p.requests_per_second,
            global_burst: p.burst,
        };
        let srv = server::spawn_role(
            server::Role::Public,
            plistener,
            broker.clone(),
            ptls.clone(),
            limits,
            Some(rates),
        )
        .map_err(|e| StartError::Other(e.to_string()))?;
        tracing::info!(listen = %srv.local_addr, "public callback listener (TLS, no client certificates)");
        println!("public {}", srv.local_addr);
        public = Some((srv, ptls));
    }
    let mut health = None;
    if let Some(hlistener) = health_ready {
        let srv = server::spawn_health(hlistener, broker.clone())
            .map_err(|e| StartError::Other(e.to_string()))?;
        tracing::info!(listen = %srv.local_addr, "health listener (plain HTTP, loopback): /healthz and /readyz only");
        println!("health {}", srv.local_addr);
        health = Some(srv);
    }
    // One daemon per data directory (the store is locked), so its pid file names it for
    // `credbroker reload` even when several brokers run on the host.
    let pid_file = config.pid_file();
    let wrote_pid = write_pid_file(&pid_file);
    if let Err(e) = &wrote_pid {
        tracing::warn!(path = %pid_file.display(), error = %e, "cannot write the pid file; `credbroker reload` will not find this daemon");
    }
    // The expiry gauges are there from the first scrape on.
    {
        let listeners: Vec<&ReloadableTls> = std::iter::once(tls.as_ref())
            .chain(public.as_ref().map(|(_, p)| p.as_ref()))
            .collect();
        check_tls_expiry(&broker, &listeners);
    }
    on_ready(running.local_addr);
    let gc_interval_s = config.secrets.gc_interval_s;
    let rotating = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Expired install states, webhook delivery ids and superseded secret versions past the
    // overlap are forgotten every `[secrets] gc_interval_s` (ten minutes by default).
    let mut gc = tokio::time::interval(Duration::from_secs(gc_interval_s.max(1)));
    gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Last uses are written every `[inventory] flush_interval_s` (and at shutdown), by every
    // replica (its own rows); the inventory gauges are recomputed less often.
    let mut flush = tokio::time::interval(Duration::from_secs(
        config.inventory.flush_interval_s.max(1),
    ));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inventory = tokio::time::interval(Duration::from_secs(
        config.inventory.metrics_interval_s.max(1),
    ));
    inventory.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let hour = Duration::from_secs(3600);
    let mut expiry = tokio::time::interval_at(tokio::time::Instant::now() + hour, hour);
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A changed CRL file is loaded without waiting for a signal (0: only on reload).
    let crl_every = Duration::from_secs(config.tls.crl_check_interval_s.max(1));
    let mut crl_check =
        tokio::time::interval_at(tokio::time::Instant::now() + crl_every, crl_every);
    crl_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watch_crl = config.tls.crl_check_interval_s > 0;
    // The changed CRL file whose load failed and was reported: retried at every check,
    // reported again only when the file changes again.
    let mut crl_reported = None;
    let listeners = || -> Vec<&ReloadableTls> {
        std::iter::once(tls.as_ref())
            .chain(public.as_ref().map(|(_, p)| p.as_ref()))
            .collect()
    };
    loop {
        tokio::select! {
            _ = expiry.tick() => check_tls_expiry(&broker, &listeners()),
            _ = crl_check.tick(), if watch_crl => {
                // Reading the files and building the TLS config block: done off the runtime's
                // worker threads, which serve resolves meanwhile.
                let watched = Arc::clone(&tls);
                // When another file fails to load (a key caught half-renewed), the CRL is
                // applied alone, with the certificate, key and CA bundle in force: a
                // revocation never waits for an unrelated file to be fixed.
                let checked = tokio::task::spawn_blocking(move || {
                    watched.crl_changed().map(|file| {
                        let reloaded = watched
                            .reload()
                            .map(|()| None)
                            .or_else(|e| watched.reload_crl().map(|()| Some(e)));
                        (file, reloaded)
                    })
                })
                .await;
                match checked {
                    Ok(Some((_, Ok(None)))) => {
                        crl_reported = None;
                        tracing::info!("the CRL file changed: TLS certificates, client CA and CRL reloaded");
                        check_tls_expiry(&broker, &listeners());
                    }
                    Ok(Some((_, Ok(Some(other))))) => {
                        crl_reported = None;
                        broker.metrics().tls_reload_failures.inc();
                        tracing::error!(error = %other, "the CRL file changed: the CRL alone was loaded, with the certificate, key and client CA in force, since another TLS file does not load (fix it, then reload)");
                        check_tls_expiry(&broker, &listeners());
                    }
                    Ok(Some((file, Err(e)))) if crl_reported.as_ref() != Some(&file) => {
                        crl_reported = Some(file);
                        broker.metrics().tls_reload_failures.inc();
                        tracing::error!(error = %e, "the CRL file changed but does not load; keeping the previous TLS config, trying again at every check");
                    }
                    Ok(Some((_, Err(_)))) => {}
                    // In force (a SIGHUP loaded it): a failure of that file again is news.
                    Ok(None) => crl_reported = None,
                    Err(e) => tracing::error!(error = %e, "the CRL check failed; trying again at the next one"),
                }
            }
            _ = flush.tick() => {
                broker.flush_last_use().await;
            }
            _ = inventory.tick() => {
                broker.refresh_inventory_metrics().await;
            }
            // Jobs one broker runs alone: on a shared store only the leader does.
            _ = gc.tick() => {
                if !broker.is_leader() {
                    continue;
                }
                match broker.forget_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(records = n, "forgot expired install states and webhook deliveries"),
                    Err(e) => tracing::warn!(error = %e.message, "could not forget expired records; will retry"),
                }
                // Off the main loop (upstream calls must not hold up signals), one at a time.
                if !rotating.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    let (b, flag) = (broker.clone(), rotating.clone());
                    tokio::spawn(async move {
                        let rotated = b.rotate_due().await;
                        if rotated > 0 {
                            tracing::info!(rotated, "rotated pasted secrets close to expiry");
                        }
                        flag.store(false, std::sync::atomic::Ordering::Release);
                    });
                }
            }
            _ = hup.recv() => {
                reload(&config, &tls, public.as_ref().map(|(_, p)| p.as_ref()), &broker);
                check_tls_expiry(&broker, &listeners());
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: draining connections");
    let stop_began = tokio::time::Instant::now();
    // Every listener stops accepting at once and drains beside the others: one after the
    // other, the mTLS listener went on taking new resolves while the health and public ones
    // drained (up to 6 s), and the whole drain took up to 16 s.
    let health_drained = async {
        if let Some(srv) = health {
            srv.shutdown(Duration::from_secs(1)).await;
        }
    };
    let public_drained = async {
        if let Some((srv, _)) = public {
            srv.shutdown(Duration::from_secs(5)).await;
        }
    };
    tokio::join!(
        health_drained,
        public_drained,
        running.shutdown(Duration::from_secs(10))
    );
    let flushed = broker.flush_last_use().await;
    tracing::info!(rows = flushed, "wrote last-use times");
    // Mints still running for resolves whose clients went away end within their timeout and
    // then write those resolves' records.
    broker.settle_reports(stop_began).await;
    broker.shutdown();
    broker.leave().await;
    if wrote_pid.is_ok() {
        let _ = std::fs::remove_file(&pid_file);
    }
    tracing::info!("stopped");
    Ok(())
}
