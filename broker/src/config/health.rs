//! `[health]`: the optional loopback health listener, and the check that keeps it on
//! loopback.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[health]`: a plain-HTTP listener serving only `GET /healthz` and `GET /readyz`, for a
/// supervisor on the broker's own host that holds no certificate (`credbroker health`, a
/// container `HEALTHCHECK`, a Kubernetes exec probe). It has no TLS and no authentication,
/// so it is accepted on a loopback address only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSettings {
    /// Listener address: a loopback address (127.0.0.0/8 or ::1) and a fixed port, which
    /// `credbroker health --config FILE` reads from this file.
    pub listen: SocketAddr,
}

impl HealthSettings {
    /// Refuses an address another host could reach, and port 0.
    ///
    /// # Errors
    /// Naming the address and why it is refused.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let listen = self.listen;
        // Plain HTTP without authentication: anything but loopback would expose the
        // broker's readiness (and a connection budget) to the network.
        if !listen.ip().is_loopback() {
            return Err(ConfigError(format!(
                "[health] listen {listen} must be a loopback address (127.0.0.1 or [::1]): the health listener is plain HTTP without authentication"
            )));
        }
        if listen.port() == 0 {
            return Err(ConfigError(format!(
                "[health] listen {listen} must name a fixed port: `credbroker health --config` reads it from the config file"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(addr: &str) -> Result<(), String> {
        HealthSettings {
            listen: addr.parse().unwrap(),
        }
        .validate()
        .map_err(|e| e.0)
    }

    #[test]
    fn loopback_addresses_with_a_port_are_accepted() {
        assert!(check("127.0.0.1:9090").is_ok());
        assert!(check("127.0.0.53:9090").is_ok());
        assert!(check("[::1]:9090").is_ok());
    }

    #[test]
    fn anything_another_host_can_reach_is_refused_naming_it() {
        for addr in [
            "0.0.0.0:9090",
            "[::]:9090",
            "10.0.0.5:9090",
            "192.168.1.2:9090",
            // IPv4-mapped loopback is not `is_loopback` for IPv6: refused, conservatively.
            "[::ffff:127.0.0.1]:9090",
        ] {
            let err = check(addr).unwrap_err();
            assert!(err.contains("must be a loopback address"), "{addr}: {err}");
            assert!(err.contains("[health] listen"), "{addr}: {err}");
        }
    }

    #[test]
    fn port_zero_is_refused() {
        let err = check("127.0.0.1:0").unwrap_err();
        assert!(err.contains("fixed port"), "{err}");
    }
}
