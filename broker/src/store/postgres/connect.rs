//! The database connection a store setting describes: TLS verified for any host off this
//! machine, and the server-side limits (statement, lock and idle-in-transaction timeouts)
//! and TCP timeouts that make a stalled or vanished server fail an operation in time.

use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::{StoreError, StoreSettings};

/// Whether every host of `config` is a loopback address, `localhost` or a Unix socket — and
/// every `hostaddr` (which tokio-postgres connects to instead of the host's name) loopback.
fn loopback_only(config: &tokio_postgres::Config) -> bool {
    !config.get_hosts().is_empty()
        && config
            .get_hostaddrs()
            .iter()
            .all(std::net::IpAddr::is_loopback)
        && config.get_hosts().iter().all(|h| match h {
            Host::Unix(_) => true,
            Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        })
}

/// [`connection`] for what serves and records (the store's pool, the audit writer): one
/// host's name may resolve to several servers too (a headless service listing every
/// database pod, a name still pointing at a failed primary brought back as a standby), and
/// every address is tried in turn. A server whose sessions are read-only is skipped (one
/// `SHOW transaction_read_only` per new connection), never read from: a lagging standby
/// would show another replica's disable or removal late. (The offline readers, `audit
/// export|verify|report` and `doctor`, take the URL as it is: reading a standby, or a
/// database made read-only to keep it as evidence, is what they may be run for.)
///
/// # Errors
/// As [`connection`].
pub(crate) fn writable_connection(
    settings: &StoreSettings,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), StoreError> {
    let (mut config, tls) = connection(settings)?;
    config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
    Ok((config, tls))
}

/// The connection settings `settings` describe, checked: a database off this host is
/// reached only over TLS with its certificate verified against `ca_file`.
pub(crate) fn connection(
    settings: &StoreSettings,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), StoreError> {
    let url = settings.database_url()?;
    // The parser's message may quote the URL: it is not passed on.
    let mut config: tokio_postgres::Config = url.expose().parse().map_err(|_| {
        StoreError::Backend(
            "the database URL does not parse (expected postgresql://user@host:port/database?sslmode=require)"
                .into(),
        )
    })?;
    if !loopback_only(&config) {
        if config.get_ssl_mode() != SslMode::Require {
            return Err(StoreError::Backend(
                "the database is not on loopback: its URL must say sslmode=require (the broker then verifies the server's certificate against [store] ca_file)".into(),
            ));
        }
        if settings.ca_file.is_none() {
            return Err(StoreError::Backend(
                "the database is not on loopback: set [store] ca_file to the CA certificates that sign its server certificate".into(),
            ));
        }
    }
    // Several hosts (a primary and its standbys): only the writable one may be used, or a
    // replica could read the generation from a lagging standby.
    if config.get_hosts().len() > 1
        && config.get_target_session_attrs()
            != tokio_postgres::config::TargetSessionAttrs::ReadWrite
    {
        return Err(StoreError::Backend(
            "a database URL naming several hosts must say target_session_attrs=read-write".into(),
        ));
    }
    let tls = crate::tls::server_auth_client_config(settings.ca_file.as_deref())
        .map_err(|e| StoreError::Backend(format!("database TLS: {e}")))?;
    let timeout = Duration::from_millis(settings.timeout_ms.max(1));
    // The server gives up when this broker does: a lock wait or statement past the deadline
    // is cancelled there too (a stalled commit elsewhere cannot leave this connection queued
    // behind it), and a transaction left idle is ended.
    let ms = timeout.as_millis();
    // And a commit is acknowledged only once durable, whatever the role or database says:
    // `synchronous_commit = off` there would let a record, an audit record included, be
    // answered for and then lost in a crash. (`on` waits for the synchronous standbys the
    // server names, if any: runbooks/database-failover.md.)
    let server_side = format!(
        "-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={} -c synchronous_commit=on",
        ms.saturating_mul(4)
    );
    let options = match config.get_options() {
        Some(own) if !own.is_empty() => format!("{own} {server_side}"),
        _ => server_side,
    };
    config
        .options(options)
        .connect_timeout(timeout)
        .application_name("credbroker")
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3)
        // A connection to a server that vanished (a failed-over primary) is dropped once
        // data sent goes unacknowledged this long, not reused until the kernel gives up.
        .tcp_user_timeout(timeout);
    Ok((config, MakeRustlsConnect::new((*tls).clone())))
}

#[cfg(test)]
mod tests {
    use super::connection;
    use crate::store::StoreSettings;

    /// Every session the broker opens asks for durable commits and the broker's deadlines,
    /// after whatever options the URL carries (the last of a repeated option wins).
    #[test]
    fn sessions_commit_durably_whatever_the_url_asks() {
        let settings = StoreSettings {
            url: Some(
                "postgresql://broker@127.0.0.1:5432/credbroker?options=-c%20synchronous_commit%3Doff"
                    .to_owned()
                    .into(),
            ),
            ..StoreSettings::default()
        };
        let (config, _) = connection(&settings).unwrap();
        let options = config.get_options().unwrap_or_default();
        let (theirs, ours) = (
            options.find("synchronous_commit=off"),
            options.rfind("synchronous_commit=on"),
        );
        assert!(theirs.is_some() && ours > theirs, "{options}");
        assert!(options.contains("statement_timeout="), "{options}");
    }
}
