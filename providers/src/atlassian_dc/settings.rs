//! `[providers.atlassian_dc_pat]` and a binding's configuration: the base URL a customer
//! names is a claim, judged here (https, no credentials or query, addresses and local names
//! only when allow-listed, a listed host held to its listed ports) before anything is sent.

use serde::Deserialize;
use serde_json::Value;

use super::ID;

/// Platform-side settings (`[providers.atlassian_dc_pat]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcSettings {
    /// Hosts that may be IP literals, loopback or private (`host` or `host:port`); only
    /// loopback ones may be plain http (a local test double).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Lifetime of a PAT the broker creates, days.
    #[serde(default = "default_days")]
    pub new_token_days: u32,
    /// Rotate (self-rotation) when the PAT expires within this many days; warn from then on.
    #[serde(default = "default_rotate")]
    pub rotate_days_before_expiry: u32,
    /// Per-request deadline, milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_days() -> u32 {
    90
}
fn default_rotate() -> u32 {
    14
}
fn default_timeout() -> u64 {
    5000
}

/// The product behind the base URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    /// Jira Data Center.
    Jira,
    /// Confluence Data Center.
    Confluence,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    base_url: String,
    product: String,
    /// PEM CA certificates of the instance's private PKI (trusted besides the platform's
    /// roots, for this binding only).
    #[serde(default)]
    ca_pem: Option<String>,
}

/// Parses a binding's configuration (`{"base_url", "product": "jira"|"confluence"}`): https;
/// IP literals, localhost, loopback/private/link-local hosts only when allow-listed; plain
/// http only to an allow-listed loopback host. A context path (`/jira`) is kept.
///
/// # Errors
/// Naming what is wrong.
pub fn parse_config(config: &Value, allowed: &[String]) -> Result<(String, Product), String> {
    let c: ConfigFile = serde_json::from_value(config.clone())
        .map_err(|e| format!("atlassian_dc_pat config: {e}"))?;
    if c.ca_pem.as_ref().is_some_and(|p| p.len() > 64 * 1024) {
        return Err("ca_pem is larger than 64 KiB".into());
    }
    let product = match c.product.as_str() {
        "jira" => Product::Jira,
        "confluence" => Product::Confluence,
        _ => return Err("product must be jira or confluence".into()),
    };
    let url = c.base_url.trim_end_matches('/');
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "base_url is not a URL".to_owned())?;
    // A fully qualified name's trailing dot (`localhost.`) names the same host: judged
    // without it, so it cannot slip a local name past the rules below.
    let host = uri
        .host()
        .ok_or("base_url has no host")?
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err("base_url has no host".into());
    }
    if url.contains('@') || uri.query().is_some() {
        return Err("base_url must not carry credentials or a query".into());
    }
    // An allow-list entry names a host, or a host on one port (`host:port`, `[v6]:port`);
    // the resolver sees names, not ports, so the port is held here. Entries and the URL are
    // compared the same way: case, brackets, a trailing dot and a default port aside.
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let entries: Vec<Option<u16>> = allowed
        .iter()
        .map(|a| crate::http::allow_entry(a))
        .filter(|(h, _)| h == bare)
        .map(|(_, p)| p)
        .collect();
    let listed = entries.iter().any(|p| p.is_none() || *p == Some(port));
    if !entries.is_empty() && !listed {
        return Err(format!(
            "base_url port {port} of {host}: allowed_hosts lists that host with other ports only"
        ));
    }
    let ip = bare.parse::<std::net::IpAddr>().ok();
    let special = ip.is_some() || host == "localhost" || !host.contains('.');
    if special && !listed {
        return Err(format!(
            "base_url host {host} is an address or local name; allow it in [providers.{ID}] allowed_hosts"
        ));
    }
    let loopback = ip.is_some_and(|i| i.is_loopback()) || host == "localhost";
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if listed && loopback => {}
        _ => return Err("base_url must be https".into()),
    }
    Ok((url.to_owned(), product))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base_urls() {
        let none: Vec<String> = Vec::new();
        assert!(parse_config(
            &json!({"base_url": "https://jira.acme.example/jira", "product": "jira"}),
            &none
        )
        .is_ok());
        for bad in [
            "http://jira.acme.example",
            "https://10.1.2.3",
            "https://169.254.169.254",
            "https://localhost:8443",
            "https://localhost.:8443",
            "https://jira.",
            "https://jira",
            "https://u:p@jira.acme.example",
            // Addresses in other spellings (the resolver judges the dotted short forms).
            "https://[::ffff:127.0.0.1]",
            "https://[::ffff:a9fe:a9fe]",
            "https://[64:ff9b::a00:1]",
            "https://[fe80::1]",
            "https://2130706433",
        ] {
            assert!(
                parse_config(&json!({"base_url": bad, "product": "jira"}), &none).is_err(),
                "{bad}"
            );
        }
        assert!(parse_config(
            &json!({"base_url": "https://jira.acme.example", "product": "bitbucket"}),
            &none
        )
        .is_err());
        let listed = vec!["127.0.0.1:9000".to_owned()];
        assert!(parse_config(
            &json!({"base_url": "http://127.0.0.1:9000", "product": "confluence"}),
            &listed
        )
        .is_ok());
        // A host listed with a port is allowed (to resolve internally) on that port only.
        let listed = vec![
            "jira.corp.example:8443".to_owned(),
            "wiki.corp.example".to_owned(),
        ];
        for (url, ok) in [
            ("https://jira.corp.example:8443/", true),
            ("https://JIRA.corp.example.:8443/", true),
            ("https://jira.corp.example:6443/", false),
            ("https://jira.corp.example/", false),
            ("https://wiki.corp.example:6443/", true),
            ("https://jira.acme.example:6443/", true),
        ] {
            assert_eq!(
                parse_config(&json!({"base_url": url, "product": "jira"}), &listed).is_ok(),
                ok,
                "{url}"
            );
        }
        // Default ports and written ones are the same; so are case and a trailing dot.
        let listed = vec![" 10.0.0.5:443 ".to_owned(), "[::1]:9000".to_owned()];
        for (url, ok) in [
            ("https://10.0.0.5/", true),
            ("https://10.0.0.5:8443/", false),
            ("http://[::1]:9000/", true),
            ("http://[::1]:9001/", false),
        ] {
            assert_eq!(
                parse_config(&json!({"base_url": url, "product": "jira"}), &listed).is_ok(),
                ok,
                "{url}"
            );
        }
        assert_eq!(crate::http::allow_entry_host("[::1]:9000"), "::1");
        assert_eq!(
            crate::http::allow_entry_host("Jira.Corp.Example.:8443"),
            "jira.corp.example"
        );
    }
}
