//! The client-credentials grant against the Entra v2.0 token endpoint, and how the broker
//! authenticates as its app there.
//!
//! Written as a form POST rather than through `azure_identity` (see the module docs of
//! `entra`): the request is one form, the answer one JSON object, and the broker must see
//! Entra's AADSTS error codes and the token's claims itself.

use std::time::Duration;

use base64::Engine;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::claims::{decode_claims, parse_error, AadError, TokenClaims};
use crate::ProviderError;

/// `client_assertion_type` of a JWT client assertion (certificate or federated).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How the broker authenticates as its multi-tenant app at a tenant's token endpoint. The
/// provider holds a list of these (two during a rotation) and never looks inside: a
/// federated assertion from the broker's own issuer (`iss` our issuer, `sub` the FIC
/// subject, `aud` `api://AzureADTokenExchange`) is one more implementation, and the
/// provider's callers do not change.
pub trait ClientAuth: Send + Sync {
    /// The form fields that authenticate the request to `token_url`.
    ///
    /// # Errors
    /// When an assertion cannot be signed.
    fn form_fields(
        &self,
        client_id: &str,
        token_url: &str,
        signer: &dyn crate::AssertionSigner,
    ) -> Result<Vec<(&'static str, SecretString)>, ProviderError>;

    /// What it is, for operators (never the secret): `client secret v3`.
    fn label(&self) -> String;

    /// What it is, in a refusal that can reach a customer's browser (an install link's
    /// callback): its kind and version, never the FIC's subject or a certificate's
    /// thumbprint. (Required of every credential type: a default of [`ClientAuth::label`]
    /// would let a new one say more than it should.)
    fn name(&self) -> String;
}

/// A federated credential: the broker's own issuer signs the assertion (`sub` the FIC's
/// subject, `aud` `api://AzureADTokenExchange`). One FIC on the multi-tenant app serves every
/// consented tenant; the platform then holds no Entra secret.
pub struct FederatedAssertion {
    /// The FIC's subject.
    pub subject: String,
    /// The FIC's audience.
    pub audience: String,
}

impl ClientAuth for FederatedAssertion {
    fn form_fields(
        &self,
        _client_id: &str,
        _token_url: &str,
        signer: &dyn crate::AssertionSigner,
    ) -> Result<Vec<(&'static str, SecretString)>, ProviderError> {
        let jwt = signer.sign(&self.subject, &self.audience)?;
        Ok(vec![
            ("client_assertion_type", SecretString::from(JWT_BEARER)),
            ("client_assertion", jwt),
        ])
    }

    fn label(&self) -> String {
        format!("federated credential (subject {})", self.subject)
    }

    fn name(&self) -> String {
        "federated credential".into()
    }
}

/// A client secret (`client_secret`).
pub struct ClientSecret {
    /// Platform key version.
    pub version: u32,
    /// The secret value.
    pub secret: SecretString,
}

impl ClientAuth for ClientSecret {
    fn form_fields(
        &self,
        _client_id: &str,
        _token_url: &str,
        _signer: &dyn crate::AssertionSigner,
    ) -> Result<Vec<(&'static str, SecretString)>, ProviderError> {
        Ok(vec![("client_secret", self.secret.clone())])
    }

    fn label(&self) -> String {
        format!("client secret v{}", self.version)
    }

    fn name(&self) -> String {
        self.label()
    }
}

/// A certificate: an RS256 client assertion (`aud` the token URL, `iss` = `sub` = client id,
/// a fresh `jti`, at most 10 minutes) naming the certificate by `x5t#S256`.
pub struct ClientCertificate {
    /// Platform key version.
    pub version: u32,
    /// The certificate's private key.
    pub key: EncodingKey,
    /// base64url SHA-256 of the certificate's DER.
    pub x5t_s256: String,
}

impl ClientAuth for ClientCertificate {
    fn form_fields(
        &self,
        client_id: &str,
        token_url: &str,
        _signer: &dyn crate::AssertionSigner,
    ) -> Result<Vec<(&'static str, SecretString)>, ProviderError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti)
            .map_err(|_| ProviderError::Internal("no randomness for the assertion".into()))?;
        let claims = json!({
            "aud": token_url, "iss": client_id, "sub": client_id,
            "jti": hex::encode(jti), "nbf": now - 60, "iat": now, "exp": now + 300,
        });
        let mut header = Header::new(Algorithm::RS256);
        header.x5t_s256 = Some(self.x5t_s256.clone());
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|_| ProviderError::Internal("could not sign the client assertion".into()))?;
        Ok(vec![
            ("client_assertion_type", SecretString::from(JWT_BEARER)),
            ("client_assertion", SecretString::from(jwt)),
        ])
    }

    fn label(&self) -> String {
        format!("certificate v{} ({})", self.version, self.x5t_s256)
    }

    fn name(&self) -> String {
        format!("certificate v{}", self.version)
    }
}

/// The PEM block `label` in `pem`, whole (BEGIN to END line), if present.
fn pem_block<'a>(pem: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)?;
    let stop = pem[start..].find(&end)? + start + end.len();
    Some(&pem[start..stop])
}

/// Parses `certificate_pem` material: one certificate and its RSA private key (PKCS#8 or
/// PKCS#1), in either order.
///
/// # Errors
/// When either is missing or unusable.
pub fn parse_certificate(pem: &str, version: u32) -> Result<ClientCertificate, ProviderError> {
    let bad = |m: &str| ProviderError::InvalidConfig(m.into());
    let cert = pem_block(pem, "CERTIFICATE")
        .ok_or_else(|| bad("certificate_pem holds no CERTIFICATE block"))?;
    let body: String = cert
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| bad("the CERTIFICATE block is not base64"))?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    let key_pem = pem_block(pem, "PRIVATE KEY")
        .or_else(|| pem_block(pem, "RSA PRIVATE KEY"))
        .ok_or_else(|| bad("certificate_pem holds no RSA private key"))?;
    let key = EncodingKey::from_rsa_pem(key_pem.as_bytes())
        .map_err(|_| bad("the private key in certificate_pem is not an RSA key"))?;
    Ok(ClientCertificate {
        version,
        key,
        x5t_s256: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref()),
    })
}

/// An issued token, its claims decoded (not verified).
pub struct TokenAnswer {
    /// The bearer token.
    pub token: SecretString,
    /// When it expires.
    pub expires_at: OffsetDateTime,
    /// Its claims.
    pub claims: TokenClaims,
    /// Entra's request id.
    pub request_id: Option<String>,
}

/// Why no token came back.
pub enum TokenFailure {
    /// Entra answered with an error (AADSTS codes).
    Refused {
        /// HTTP status.
        status: u16,
        /// The parsed error.
        error: AadError,
        /// Entra's request id.
        request_id: Option<String>,
    },
    /// Not reachable, timed out, a server error, or an answer that is not a token.
    Unavailable(ProviderError),
}

pub use crate::http::Http;

/// `POST {authority}/{tenant}/oauth2/v2.0/token`: the client-credentials grant for
/// `resource` (`scope={resource}/.default`, one resource), authenticated by `auth`.
pub async fn request_token(
    http: &Http,
    authority: &str,
    tenant: &str,
    client_id: &str,
    resource: &str,
    (auth, signer): (&dyn ClientAuth, &dyn crate::AssertionSigner),
    timeout: Duration,
) -> Result<TokenAnswer, TokenFailure> {
    let scope = format!("{resource}/.default");
    let grant = [
        ("scope", scope.as_str()),
        ("grant_type", "client_credentials"),
    ];
    let (request_id, answer) = post_token_form(
        http,
        (authority, tenant, client_id),
        &grant,
        (auth, signer),
        timeout,
    )
    .await?;
    read_token_answer(&answer, request_id).map_err(TokenFailure::Unavailable)
}

/// One form POST to `{authority}/{tenant}/oauth2/v2.0/token`: `client_id`, the `grant`'s
/// fields and `auth`'s. The answer of a 200 (and its request id); Entra's refusal, parsed,
/// otherwise. The grant's `code`, like the client secret or assertion, is in a body wiped
/// once sent and never repeated from an error description.
///
/// # Errors
/// [`TokenFailure::Refused`] on a 4xx answer, [`TokenFailure::Unavailable`] when Entra
/// cannot be reached, times out or answers 429 or 5xx.
pub async fn post_token_form(
    http: &Http,
    (authority, tenant, client_id): (&str, &str, &str),
    grant: &[(&str, &str)],
    (auth, signer): (&dyn ClientAuth, &dyn crate::AssertionSigner),
    timeout: Duration,
) -> Result<(Option<String>, bytes::Bytes), TokenFailure> {
    let token_url = format!("{authority}/{tenant}/oauth2/v2.0/token");
    let fields = auth
        .form_fields(client_id, &token_url, signer)
        .map_err(TokenFailure::Unavailable)?;
    // The body carries the secret (or the assertion): in bytes wiped once sent.
    let mut pairs = vec![("client_id", client_id)];
    pairs.extend_from_slice(grant);
    pairs.extend(fields.iter().map(|(k, v)| (*k, v.expose_secret())));
    let body = crate::http::secret_form(&pairs);
    drop(pairs);
    let request = http::Request::post(&token_url)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(body))
        .map_err(|_| {
            TokenFailure::Unavailable(ProviderError::InvalidConfig(
                "the token URL is not a valid URI".into(),
            ))
        })?;
    // The secret fields only: `client_assertion_type` is a fixed URN, and its words
    // ("assertion") would withhold every description that names an assertion.
    let sent: Vec<&str> = fields
        .iter()
        .filter(|(k, _)| matches!(*k, "client_secret" | "client_assertion"))
        .map(|(_, v)| v.expose_secret())
        .chain(grant.iter().filter(|(k, _)| *k == "code").map(|(_, v)| *v))
        .collect();
    let (status, request_id, answer) = http
        .send(request, timeout, "the Entra token endpoint", &sent)
        .await
        .map_err(TokenFailure::Unavailable)?;
    // Entra's description is for the daemon's log, and only when it does not repeat the
    // client secret, assertion or code this request sent (an echo, by Entra or a proxy).
    let error_of = |answer: &[u8]| {
        let mut error = parse_error(answer);
        error.description = crate::quoted_unless_echo(&error.description, 200, &sent);
        error.error = crate::oauth_error_code(&error.error, &sent);
        error
    };
    if status == 429 || status >= 500 {
        let error = error_of(&answer);
        tracing::warn!(%status, description = %error.description, request_id = ?request_id, "Entra's token endpoint is unavailable");
        return Err(TokenFailure::Unavailable(ProviderError::Unavailable {
            message: format!("Entra HTTP {status}"),
            upstream_request_id: request_id.or(error.trace_id),
        }));
    }
    if status != 200 {
        let error = error_of(&answer);
        return Err(TokenFailure::Refused {
            status,
            request_id: request_id.or_else(|| error.trace_id.clone()),
            error,
        });
    }
    Ok((request_id, answer))
}

/// Reads a 200 answer of the token endpoint: a Bearer token that decodes as a JWT, expiring
/// at the earlier of `expires_in` (60 s to a day) and its own `exp`, and more than 30 s from
/// now. Never panics on any input (fuzzed).
///
/// # Errors
/// `provider_unavailable` naming what is missing or malformed.
pub fn read_token_answer(
    answer: &[u8],
    request_id: Option<String>,
) -> Result<TokenAnswer, ProviderError> {
    match token_of(answer) {
        Ok((token, expires_at, claims)) => Ok(TokenAnswer {
            token,
            expires_at,
            claims,
            request_id,
        }),
        Err(m) => Err(ProviderError::Unavailable {
            message: format!("Entra token answer is malformed: {m}"),
            upstream_request_id: request_id,
        }),
    }
}

fn token_of(answer: &[u8]) -> Result<(SecretString, OffsetDateTime, TokenClaims), String> {
    let v: Value = serde_json::from_slice(answer).map_err(|_| "not JSON".to_owned())?;
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or("no access_token")?;
    if !v
        .get("token_type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
    {
        return Err("token_type is not Bearer".into());
    }
    // `expires_in` is relative, a number or a numeric string.
    let expires_in = match v.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        _ => None,
    }
    .filter(|s| (60..=86_400).contains(s))
    .ok_or("expires_in missing or out of range")?;
    let claims = decode_claims(token)?;
    // The earlier of `expires_in` and the token's own `exp`; a token already expired is not
    // a token.
    let now = OffsetDateTime::now_utc();
    let mut expires_at = now + time::Duration::seconds(i64::try_from(expires_in).unwrap_or(0));
    if let Some(exp) = claims.exp {
        let exp = OffsetDateTime::from_unix_timestamp(exp).map_err(|_| "exp out of range")?;
        expires_at = expires_at.min(exp);
    }
    if expires_at <= now + time::Duration::seconds(30) {
        return Err("the token is already expired".into());
    }
    Ok((SecretString::from(token.to_owned()), expires_at, claims))
}
