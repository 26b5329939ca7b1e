//! `POST /v1/webhooks/verify`: a worker hands over an inbound event (the vendor's headers
//! and the raw body) and learns whether it was signed with its connector instance's webhook
//! secret. Workers never hold the secret; the broker opens it, checks every version still
//! valid in constant time, and answers valid or invalid. The request parser is fuzzed
//! (`tests/fuzz`, target `webhook_verify`).

use std::collections::BTreeMap;

use aws_lc_rs::{constant_time, digest, hmac};
use base64::Engine as _;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::api_error::{json_error, ApiError, ErrorCode};
use crate::ids::InstanceId;
use crate::store::records::WebhookScheme;

/// The most `[webhooks] max_body_bytes` may raise the event body limit to (16 MiB).
pub const MAX_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Headers a verify request may carry.
pub const MAX_HEADERS: usize = 32;
/// Longest header value accepted, bytes.
pub const MAX_HEADER_VALUE: usize = 4096;

/// `POST /v1/webhooks/verify`
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The connector instance the event is for.
    instance_id: String,
    /// The vendor's request headers that carry the signature or token (names are
    /// case-insensitive; others may be left out).
    #[serde(deserialize_with = "bounded_headers")]
    headers: BTreeMap<String, String>,
    /// The raw request body, base64 (standard alphabet, padded).
    body_base64: String,
}

/// Whether `name` is a header name a webhook scheme or verify request may use: an HTTP
/// token of at most 128 bytes.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Reads a verify request's headers entry by entry, refusing as soon as one breaks a rule:
/// at most [`MAX_HEADERS`] (the next is refused before its value is read, so an envelope of
/// many short headers never becomes a map many times its size), names HTTP tokens of at
/// most 128 bytes, values of at most [`MAX_HEADER_VALUE`] visible bytes, no name twice
/// (case-insensitive, and an exact repeat, which a map would take last-one-wins). Names
/// are kept lower case. Errors name no value.
fn bounded_headers<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Headers;
    impl<'de> serde::de::Visitor<'de> for Headers {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of header names to values")
        }

        fn visit_map<A>(self, mut map: A) -> Result<Self::Value, A::Error>
        where
            A: serde::de::MapAccess<'de>,
        {
            use serde::de::Error as _;
            let mut headers = BTreeMap::new();
            while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if headers.len() == MAX_HEADERS {
                    return Err(A::Error::custom(format!("at most {MAX_HEADERS} headers")));
                }
                if !is_header_name(&name) {
                    return Err(A::Error::custom("a header name is not an HTTP token"));
                }
                let value: String = map.next_value()?;
                if value.len() > MAX_HEADER_VALUE || value.bytes().any(|b| b < 0x20 || b == 0x7f) {
                    return Err(A::Error::custom(format!(
                        "header {name} has a value longer than {MAX_HEADER_VALUE} bytes or with control characters"
                    )));
                }
                if headers.insert(name.to_ascii_lowercase(), value).is_some() {
                    return Err(A::Error::custom(
                        "a header is given twice (names are case-insensitive)",
                    ));
                }
            }
            Ok(headers)
        }
    }
    d.deserialize_map(Headers)
}

/// A validated verify request.
pub struct ParsedVerify {
    /// The instance.
    pub instance: InstanceId,
    /// Header name (lower case) → value.
    pub headers: BTreeMap<String, String>,
    /// The raw body.
    pub body: Zeroizing<Vec<u8>>,
}

impl Drop for ParsedVerify {
    /// A shared-token scheme (`gitlab`, `token`) presents the webhook secret itself in a
    /// header: wiped with the rest of what the request carried.
    fn drop(&mut self) {
        for value in self.headers.values_mut() {
            zeroize::Zeroize::zeroize(value);
        }
    }
}

impl std::fmt::Debug for ParsedVerify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedVerify")
            .field("instance", &self.instance)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// The JSON envelope's largest size for a body limit of `max_body` bytes (base64 and the
/// headers around it).
pub const fn envelope_limit(max_body: usize) -> usize {
    max_body
        .saturating_mul(4)
        .div_ceil(3)
        .saturating_add(MAX_HEADERS * (MAX_HEADER_VALUE + 128) + 1024)
}

/// Parses a verify request: strict JSON, the instance id by its grammar, at most
/// [`MAX_HEADERS`] headers of token characters with values of at most [`MAX_HEADER_VALUE`]
/// visible bytes, a body of at most `max_body` bytes. Never panics (fuzzed); never echoes a
/// header value or the body.
///
/// # Errors
/// `bad_request` or `payload_too_large`.
pub fn parse_verify_request(raw: &[u8], max_body: usize) -> Result<ParsedVerify, ApiError> {
    let request: VerifyRequest = serde_json::from_slice(raw).map_err(|e| {
        ApiError::bad_request(format!("invalid verify request: {}", json_error(&e)))
    })?;
    let instance = InstanceId::parse(&request.instance_id)
        .map_err(|_| ApiError::bad_request("instance_id is not a valid instance id"))?;
    // (The headers were checked as they were read: `bounded_headers`.)
    let headers = request.headers;
    // Refused before it is decoded: no more base64 than a body of `max_body` bytes takes
    // (the decoded copy is not counted in the listener's body budget).
    if request.body_base64.len() > max_body.div_ceil(3).saturating_mul(4) {
        return Err(too_large(max_body));
    }
    let body = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(request.body_base64.as_bytes())
            .map_err(|_| ApiError::bad_request("body_base64 is not valid base64"))?,
    );
    if body.len() > max_body {
        return Err(too_large(max_body));
    }
    Ok(ParsedVerify {
        instance,
        headers,
        body,
    })
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the event body exceeds {max} bytes"),
    )
}

/// A fresh webhook secret: 256 random bits, hex (what the vendor's form takes).
///
/// # Errors
/// When the system CSPRNG fails.
pub fn generate_secret() -> Result<Zeroizing<String>, ApiError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(&mut *bytes)
        .map_err(|_| ApiError::new(ErrorCode::Internal, "the system random generator failed"))?;
    Ok(Zeroizing::new(hex::encode(*bytes)))
}

/// What a scheme compares: the MAC or token the event presents.
enum Presented<'a> {
    /// An HMAC-SHA256 digest (decoded from hex).
    Mac(Vec<u8>),
    /// A shared token (borrowed from the headers, which are wiped: no copy of it is made).
    Token(&'a [u8]),
}

fn header<'a>(headers: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    headers.get(&name.to_ascii_lowercase()).map(String::as_str)
}

fn presented<'a>(
    scheme: &WebhookScheme,
    headers: &'a BTreeMap<String, String>,
) -> Option<Presented<'a>> {
    let mac = |value: &str, prefix: &str| {
        value
            .strip_prefix(prefix)
            .and_then(|h| hex::decode(h.trim()).ok())
            .filter(|m| m.len() == 32)
            .map(Presented::Mac)
    };
    match scheme {
        WebhookScheme::Github => mac(header(headers, "x-hub-signature-256")?, "sha256="),
        WebhookScheme::HmacSha256 { header: h, prefix } => mac(header(headers, h)?, prefix),
        WebhookScheme::Gitlab => {
            header(headers, "x-gitlab-token").map(|t| Presented::Token(t.as_bytes()))
        }
        WebhookScheme::Token { header: h } => {
            header(headers, h).map(|t| Presented::Token(t.as_bytes()))
        }
        WebhookScheme::Unsigned => None,
    }
}

/// Which of `secrets` (current first) signed the event, if any. Every secret is checked,
/// whatever the outcome, and each comparison is constant-time (tokens are compared by their
/// SHA-256, so neither their content nor their length leaks); `unsigned` accepts every event.
pub fn verify(
    scheme: &WebhookScheme,
    secrets: &[&[u8]],
    headers: &BTreeMap<String, String>,
    body: &[u8],
) -> Option<usize> {
    if *scheme == WebhookScheme::Unsigned {
        return Some(0);
    }
    let presented = presented(scheme, headers)?;
    let mut matched = None;
    for (i, secret) in secrets.iter().enumerate() {
        let ok = match &presented {
            Presented::Mac(mac) => {
                let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
                hmac::verify(&key, body, mac).is_ok()
            }
            Presented::Token(token) => {
                let a = digest::digest(&digest::SHA256, token);
                let b = digest::digest(&digest::SHA256, secret);
                constant_time::verify_slices_are_equal(a.as_ref(), b.as_ref()).is_ok()
            }
        };
        if ok && matched.is_none() {
            matched = Some(i);
        }
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
            .collect()
    }

    /// GitHub's published example ("Validating webhook deliveries"): secret
    /// "It's a Secret to Everybody", payload "Hello, World!".
    #[test]
    fn github_published_test_vector() {
        let secret: &[u8] = b"It's a Secret to Everybody";
        let headers = h(&[(
            "X-Hub-Signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(
            verify(
                &WebhookScheme::Github,
                &[secret],
                &headers,
                b"Hello, World!"
            ),
            Some(0)
        );
        assert_eq!(
            verify(
                &WebhookScheme::Github,
                &[secret],
                &headers,
                b"Hello, World?"
            ),
            None
        );
        assert_eq!(
            verify(
                &WebhookScheme::Github,
                &[b"other", secret],
                &headers,
                b"Hello, World!"
            ),
            Some(1)
        );
        // Without the prefix, or another header, nothing verifies.
        let bare = h(&[(
            "X-Hub-Signature-256",
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(
            verify(&WebhookScheme::Github, &[secret], &bare, b"Hello, World!"),
            None
        );
    }

    #[test]
    fn tokens_and_generic_hmac() {
        let gl = h(&[("X-Gitlab-Token", "tok")]);
        assert_eq!(verify(&WebhookScheme::Gitlab, &[b"tok"], &gl, b""), Some(0));
        assert_eq!(verify(&WebhookScheme::Gitlab, &[b"tok2"], &gl, b""), None);
        assert_eq!(verify(&WebhookScheme::Gitlab, &[b"to"], &gl, b""), None);
        let scheme = WebhookScheme::HmacSha256 {
            header: "X-Signature".into(),
            prefix: "v1=".into(),
        };
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"k");
        let mac = hex::encode(hmac::sign(&key, b"body"));
        let good = h(&[("x-signature", &format!("v1={mac}"))]);
        assert_eq!(verify(&scheme, &[b"k"], &good, b"body"), Some(0));
        assert_eq!(verify(&scheme, &[b"k"], &good, b"bodY"), None);
        assert_eq!(verify(&WebhookScheme::Unsigned, &[], &good, b"x"), Some(0));
    }

    #[test]
    fn requests_are_strict() {
        let ok = br#"{"instance_id":"i1","headers":{"X-A":"b"},"body_base64":"aGk="}"#;
        let p = parse_verify_request(ok, 16).unwrap();
        assert_eq!(&*p.body, b"hi");
        assert_eq!(p.headers["x-a"], "b");
        for bad in [
            &br#"{"instance_id":"i1","headers":{},"body_base64":"aGk=","x":1}"#[..],
            br#"{"instance_id":"../x","headers":{},"body_base64":""}"#,
            br#"{"instance_id":"i1","headers":{"a b":"c"},"body_base64":""}"#,
            br#"{"instance_id":"i1","headers":{"a":"c\n"},"body_base64":""}"#,
            br#"{"instance_id":"i1","headers":{"A":"1","a":"2"},"body_base64":""}"#,
            br#"{"instance_id":"i1","headers":{"a":"1","a":"2"},"body_base64":""}"#,
            br#"{"instance_id":"i1","headers":{},"body_base64":"!!"}"#,
        ] {
            assert!(parse_verify_request(bad, 16).is_err());
        }
        let big = format!(
            r#"{{"instance_id":"i1","headers":{{}},"body_base64":"{}"}}"#,
            base64::engine::general_purpose::STANDARD.encode([0u8; 17])
        );
        let e = parse_verify_request(big.as_bytes(), 16).err().unwrap();
        assert_eq!(e.code, ErrorCode::PayloadTooLarge);
        // The largest body is taken; base64 longer than it takes (here: not even valid
        // base64, so only a refusal by length says so) is refused before it is decoded.
        let most = format!(
            r#"{{"instance_id":"i1","headers":{{}},"body_base64":"{}"}}"#,
            base64::engine::general_purpose::STANDARD.encode([7u8; 16])
        );
        assert_eq!(
            parse_verify_request(most.as_bytes(), 16)
                .unwrap()
                .body
                .len(),
            16
        );
        let long = format!(
            r#"{{"instance_id":"i1","headers":{{}},"body_base64":"{}"}}"#,
            "!".repeat(25)
        );
        let e = parse_verify_request(long.as_bytes(), 16).err().unwrap();
        assert_eq!(e.code, ErrorCode::PayloadTooLarge);
    }

    /// Many short headers are refused at the one past the limit, before the rest of the
    /// map is read (here: before the syntax error that ends it), so they never become a map
    /// many times the envelope's size.
    #[test]
    fn headers_past_the_limit_are_refused_as_they_are_read() {
        let names: Vec<String> = (0..10_000).map(|i| format!(r#""k{i}":"""#)).collect();
        let raw = format!(
            r#"{{"instance_id":"i1","headers":{{{}, not json"#,
            names.join(",")
        );
        let e = parse_verify_request(raw.as_bytes(), 16).err().unwrap();
        assert!(e.message.contains("at most 32 headers"), "{}", e.message);
        let at_limit = format!(
            r#"{{"instance_id":"i1","headers":{{{}}},"body_base64":""}}"#,
            names[..MAX_HEADERS].join(",")
        );
        assert_eq!(
            parse_verify_request(at_limit.as_bytes(), 16)
                .unwrap()
                .headers
                .len(),
            MAX_HEADERS
        );
    }
}
