//! How the fake STS finds the key a subject token was signed with and checks the token, as a
//! GCP OIDC workload identity provider does: the provider holds its JWKS inline (`jwksJson`)
//! or discovers it from the issuer (`{issuer}/.well-known/openid-configuration`, then its
//! `jwks_uri`, over HTTPS), keeps the keys, and fetches again when a token names a `kid` it
//! does not know. RS256 only; the signature is checked before any claim is believed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use credbroker::client::BrokerClient;
use http::Method;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// Where a provider's signing keys come from.
#[derive(Clone, Debug)]
pub enum JwksSource {
    /// The JWKS pinned in the provider (`oidc.jwksJson`): `{"keys": [...]}`. GCP never
    /// contacts the issuer; the customer must re-pin after every key rotation.
    Inline(Value),
    /// Discovered from the issuer over HTTPS: `{url}/.well-known/openid-configuration`, whose
    /// `issuer` must equal the provider's issuer, then its `jwks_uri`. `url` is where the
    /// issuer is reachable (the broker's public listener, normally the issuer URL itself);
    /// a `jwks_uri` under the issuer URL is fetched under `url` instead, so a test issuer may
    /// carry a name that does not resolve. `ca_pem` is the CA that signed the listener's
    /// certificate (the test CA).
    Url {
        /// `https://host:port[/path]` the issuer is served at.
        url: String,
        /// PEM of the CA(s) to trust for that server.
        ca_pem: String,
    },
}

/// Keys discovered from issuers, per provider resource name, and how often they were fetched.
#[derive(Default)]
pub(super) struct KeyCache {
    keys: Mutex<HashMap<String, Vec<Value>>>,
    fetches: AtomicU64,
}

impl KeyCache {
    /// Discovery + JWKS fetches so far (two requests count as one fetch).
    pub(super) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Forgets every discovered key (the next token fetches again).
    pub(super) fn clear(&self) {
        self.keys.lock().unwrap().clear();
    }

    /// The JWK named `kid` for provider `resource`: from the inline JWKS, or from the cached
    /// discovered keys, fetching them again once when `kid` is not among them.
    pub(super) async fn key_for(
        &self,
        resource: &str,
        issuer: &str,
        source: &JwksSource,
        kid: &str,
    ) -> Result<Value, String> {
        let find = |keys: &[Value]| keys.iter().find(|k| k["kid"] == kid).cloned();
        let missing = || {
            format!("The key ID [{kid}] of the ID Token was not found in the JWKS of the identity provider.")
        };
        match source {
            JwksSource::Inline(jwks) => {
                let keys = jwks["keys"].as_array().cloned().unwrap_or_default();
                find(keys.as_slice()).ok_or_else(missing)
            }
            JwksSource::Url { url, ca_pem } => {
                let cached = self.keys.lock().unwrap().get(resource).cloned();
                if let Some(k) = cached.as_deref().and_then(find) {
                    return Ok(k);
                }
                self.fetches.fetch_add(1, Ordering::SeqCst);
                let keys = fetch_keys(issuer, url, ca_pem).await?;
                self.keys
                    .lock()
                    .unwrap()
                    .insert(resource.to_owned(), keys.clone());
                find(keys.as_slice()).ok_or_else(missing)
            }
        }
    }
}

/// Splits `https://host[:port]/path` into (`https://host:port`, `/path`).
fn split_https(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok() && !p.is_empty());
    let authority = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:443")
    };
    Some((format!("https://{authority}"), path.to_owned()))
}

/// `GET url` over HTTPS trusting only `ca_pem`: the JSON body of a 200.
async fn get_json(url: &str, ca_pem: &str) -> Result<Value, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let fail = |why: String| {
        format!("Failed to fetch the OIDC configuration of the identity provider: {why}")
    };
    let (origin, path) =
        split_https(url).ok_or_else(|| fail(format!("not an https URL: {url}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| fail(format!("CA PEM: {e}")))?;
        roots.add(cert).map_err(|e| fail(format!("CA: {e}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(credbroker::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client =
        BrokerClient::with_config(&origin, Arc::new(config)).map_err(|e| fail(e.to_string()))?;
    let (status, body) = client
        .request(Method::GET, &path, None)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if status != http::StatusCode::OK {
        return Err(fail(format!("{url} answered {status}")));
    }
    serde_json::from_slice(&body).map_err(|e| fail(format!("{url}: {e}")))
}

/// Discovery, then the JWKS: the published keys.
async fn fetch_keys(issuer: &str, url: &str, ca_pem: &str) -> Result<Vec<Value>, String> {
    let base = url.trim_end_matches('/');
    let discovery = get_json(&format!("{base}/.well-known/openid-configuration"), ca_pem).await?;
    if discovery["issuer"].as_str() != Some(issuer) {
        return Err(format!(
            "The issuer [{}] in the OIDC discovery document does not match the issuer [{issuer}] of the identity provider.",
            discovery["issuer"]
        ));
    }
    let jwks_uri = discovery["jwks_uri"].as_str().unwrap_or("");
    let jwks_uri = match jwks_uri.strip_prefix(issuer.trim_end_matches('/')) {
        Some(rest) => format!("{base}{rest}"),
        None => jwks_uri.to_owned(),
    };
    let jwks = get_json(&jwks_uri, ca_pem).await?;
    Ok(jwks["keys"].as_array().cloned().unwrap_or_default())
}

/// The header's `kid` when the token is a JWS the provider can check at all: three
/// segments, header `alg` RS256, a `kid`.
pub(super) fn signed_kid(token: &str) -> Result<String, String> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|e| format!("Unable to parse the ID Token: {e}"))?;
    if header.alg != Algorithm::RS256 {
        return Err(format!(
            "The ID Token is signed with an unsupported algorithm [{:?}]; only RS256 is supported.",
            header.alg
        ));
    }
    header
        .kid
        .ok_or_else(|| "The ID Token header has no key ID (kid).".to_owned())
}

/// The payload of `token`, not verified (what a test reads back from the request log).
pub(super) fn unverified_claims(token: &str) -> Option<Value> {
    jsonwebtoken::dangerous::insecure_decode_claims::<Value>(token).ok()
}

/// The claims of `token` once its RS256 signature verifies under `jwk`; no claim is checked
/// here.
pub(super) fn verified_claims(token: &str, jwk: &Value) -> Result<Value, String> {
    let invalid = || "Invalid JWT signature.".to_owned();
    if jwk["kty"] != "RSA" {
        return Err(invalid());
    }
    let (Some(n), Some(e)) = (jwk["n"].as_str(), jwk["e"].as_str()) else {
        return Err(invalid());
    };
    let key = DecodingKey::from_rsa_components(n, e).map_err(|_| invalid())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|d| d.claims)
        .map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::split_https;

    #[test]
    fn splits_https_urls() {
        assert_eq!(
            split_https("https://127.0.0.1:8443/.well-known/jwks.json"),
            Some((
                "https://127.0.0.1:8443".into(),
                "/.well-known/jwks.json".into()
            ))
        );
        assert_eq!(
            split_https("https://broker.example.com"),
            Some(("https://broker.example.com:443".into(), "/".into()))
        );
        assert_eq!(split_https("http://127.0.0.1:1/x"), None);
    }
}
