//! A local fake of AWS STS `AssumeRole` that behaves like the real one (PROTOCOLS.md):
//! form-encoded POST, every request's SigV4 signature verified with the vendor keys it knows
//! (`SignatureDoesNotMatch`, `InvalidClientTokenId`, `IncompleteSignature`,
//! `MissingAuthenticationToken` as STS answers them), XML answers, the real error shapes
//! (`<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>…`), trust rules
//! (trusted account, ExternalId required when the role says so — and accepted in any form
//! when it does not, like the real service; `sts:SetSourceIdentity` and `sts:TagSession` in
//! the trust policy before a SourceIdentity or session tags are accepted), the request limits
//! (≤ 10 PolicyArns, ≤ 50 tags, inline policy ≤ 2048 characters) and the packed size of
//! policies + ARNs + tags (`PackedPolicyTooLarge`, `PackedPolicySize`), DurationSeconds against
//! the role's maximum, plus injectable throttling, 5xx, latency, outages, expired caller
//! credentials (`ExpiredToken`), a region where STS is disabled (`RegionDisabledException`),
//! credentials that are already expired on arrival and malformed XML.
//!
//! `AssumeRoleWithWebIdentity` (unsigned, a JWT from an IAM OIDC provider registered with
//! [`FakeSts::add_oidc_provider`], trusted by a role's [`WebIdentityTrust`]) lives in
//! `web_identity.rs`; what both actions share (request limits, DurationSeconds, packed size,
//! the granted session's answer) in `session.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use time::OffsetDateTime;

mod session;
mod web_identity;

use session::SessionGrant;

pub use web_identity::{rsa_jwk, OidcProvider, WebIdentityTrust};

/// The vendor access key id the fake knows from the start (the daemon gets it through
/// [`crate::aws_test_env`]).
pub const TEST_ACCESS_KEY_ID: &str = "AKIAVENDORTESTKEY000";
/// The secret of [`TEST_ACCESS_KEY_ID`].
pub const TEST_SECRET_ACCESS_KEY: &str = "vendor-test-secret";
/// The region the fake's endpoint is in: SigV4 credential scopes must name it.
pub const TEST_REGION: &str = "us-east-1";

/// One customer role.
#[derive(Clone, Debug)]
pub struct FakeRole {
    /// Account the role lives in.
    pub account: String,
    /// Account its trust policy trusts.
    pub trusted_account: String,
    /// `sts:ExternalId` the trust policy requires (None: not required — the trap).
    pub external_id: Option<String>,
    /// The trust policy only requires that *an* ExternalId is present
    /// (`"Condition": {"Null": {"sts:ExternalId": "false"}}`), whatever its value — the
    /// second trap: `external_id` is then ignored.
    pub any_external_id: bool,
    /// MaxSessionDuration.
    pub max_session_s: u32,
    /// Account to report in AssumedRoleUser.Arn instead of `account` (misbinding tests).
    pub report_account: Option<String>,
    /// Role name to report in AssumedRoleUser.Arn instead of the role's own (a malicious
    /// STS answering with a session of another role of the same account).
    pub report_role: Option<String>,
    /// Partition to report in AssumedRoleUser.Arn instead of `aws` (a malicious STS
    /// answering with a session of the same account and role name in another partition).
    pub report_partition: Option<String>,
    /// The trust policy allows `sts:SetSourceIdentity` for the trusted account: without it
    /// an AssumeRole that carries a `SourceIdentity` is AccessDenied.
    pub allow_set_source_identity: bool,
    /// The trust policy allows `sts:TagSession`: without it an AssumeRole that carries
    /// session tags (`Tags.member.N.*`, `TransitiveTagKeys.member.N`) is AccessDenied.
    pub allow_tag_session: bool,
    /// The trust policy requires a SourceIdentity to be present
    /// (`"Condition": {"Null": {"sts:SourceIdentity": "false"}}`): an AssumeRole without one
    /// is AccessDenied, whatever its ExternalId.
    pub require_source_identity: bool,
    /// The trust policy's `sts:AssumeRoleWithWebIdentity` statement (None: the role trusts
    /// no web identity, and every such call is AccessDenied).
    pub web_identity: Option<WebIdentityTrust>,
}

impl Default for FakeRole {
    /// A role of no account that trusts nobody yet; both session permissions allowed.
    fn default() -> Self {
        FakeRole {
            account: String::new(),
            trusted_account: String::new(),
            external_id: None,
            any_external_id: false,
            max_session_s: 3600,
            report_account: None,
            report_role: None,
            report_partition: None,
            allow_set_source_identity: true,
            allow_tag_session: true,
            require_source_identity: false,
            web_identity: None,
        }
    }
}

/// Injected faults and behaviour.
#[derive(Default, Debug)]
pub struct Faults {
    /// Answer the next N calls with 400 Throttling.
    pub throttle_next: u32,
    /// Answer the next N calls with 500 InternalFailure.
    pub fail_next: u32,
    /// Answer every call with 503 ServiceUnavailable.
    pub down: bool,
    /// Answer calls for these role ARNs with 503 (one customer's trouble, not an outage).
    pub down_roles: Vec<String>,
    /// Sleep this long before answering.
    pub delay: Duration,
    /// Hand out credentials that expired an hour ago.
    pub expired: bool,
    /// Answer 200 with malformed XML.
    pub malformed: bool,
    /// A malicious or broken STS: hand out credentials whose `Expiration` is years away.
    pub far_expiration: bool,
    /// A malicious or broken STS: hand out this `SessionToken` instead of a real-looking one
    /// (XML-escaped as STS would).
    pub session_token: Option<String>,
    /// A malicious or broken STS: answer with this request id (header and body).
    pub request_id: Option<String>,
    /// A malicious or broken STS: follow the success answer with this many bytes of
    /// whitespace (a well-formed answer a parser would accept, if it read that far).
    pub padding: Option<usize>,
    /// Answer a call whose ExternalId the role does not accept with 403
    /// `RegionDisabledException` instead of AccessDenied (a refusal that says nothing about
    /// the trust policy).
    pub region_disabled_on_external_id_mismatch: bool,
    /// Answer a call whose ExternalId the role does not accept with a 403 that is not STS's
    /// (an egress proxy's or a WAF's HTML page): nothing about the trust policy either.
    pub html_403_on_external_id_mismatch: bool,
    /// The broker's own caller credentials (temporary ones: an instance profile's or an
    /// assumed role's) have expired: every correctly signed call gets 403 `ExpiredToken`,
    /// "The security token included in the request is expired".
    pub caller_token_expired: bool,
    /// STS is not activated in this endpoint's region for the caller's account: every
    /// correctly signed call gets 403 `RegionDisabledException`.
    pub region_disabled: bool,
}

/// Shared state of the fake.
#[derive(Default)]
pub struct State {
    /// Roles by ARN.
    pub roles: Mutex<HashMap<String, FakeRole>>,
    /// Faults.
    pub faults: Mutex<Faults>,
    /// Every request's form parameters, in order (refused ones included).
    pub requests: Mutex<Vec<HashMap<String, String>>>,
    /// Account of the caller (the vendor account whose keys the broker signs with).
    pub caller_account: Mutex<String>,
    /// The caller's access keys: access key id → secret access key. Every request must be
    /// SigV4-signed with one of them.
    pub credentials: Mutex<HashMap<String, String>>,
    /// The region credential scopes must name.
    pub region: Mutex<String>,
    /// `PackedPolicySize` of the last successful AssumeRole that carried session policies
    /// or tags.
    pub packed_policy_size: Mutex<Option<u32>>,
    /// The IAM OIDC identity providers registered in the account, by URL without `https://`
    /// (the host, plus a path if the issuer has one).
    pub oidc_providers: Mutex<HashMap<String, OidcProvider>>,
    /// Every request id the fake answered with, in order (refusals included), as a
    /// customer's CloudTrail would list the calls.
    pub answered: Mutex<Vec<String>>,
    counter: AtomicU64,
}

/// A running fake STS.
pub struct FakeSts {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// State.
    pub state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSts {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses an `application/x-www-form-urlencoded` body.
pub fn parse_form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn session_name_ok(s: &str) -> bool {
    (2..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
}

fn external_id_ok(s: &str) -> bool {
    (2..=1224).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@:/-".contains(&b))
}

// ---- SigV4 ----------------------------------------------------------------------------

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    aws_lc_rs::hmac::sign(&key, data).as_ref().to_vec()
}

/// `yyyyMMdd'T'HHmmss'Z'`, the form of `X-Amz-Date`.
fn parse_amz_date(s: &str) -> Option<OffsetDateTime> {
    let b = s.as_bytes();
    let digits_ok = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 8 || i == 15 || c.is_ascii_digit());
    if !digits_ok {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u32> { s.get(from..to)?.parse().ok() };
    let date = time::Date::from_calendar_date(
        i32::try_from(num(0, 4)?).ok()?,
        time::Month::try_from(u8::try_from(num(4, 6)?).ok()?).ok()?,
        u8::try_from(num(6, 8)?).ok()?,
    )
    .ok()?;
    let clock = time::Time::from_hms(
        u8::try_from(num(9, 11)?).ok()?,
        u8::try_from(num(11, 13)?).ok()?,
        u8::try_from(num(13, 15)?).ok()?,
    )
    .ok()?;
    Some(time::PrimitiveDateTime::new(date, clock).assume_utc())
}

fn amz_date(t: OffsetDateTime) -> String {
    t.format(&time::macros::format_description!(
        "[year][month][day]T[hour][minute][second]Z"
    ))
    .unwrap_or_default()
}

/// A header value as SigV4 canonicalizes it: spaces trimmed at both ends, runs of spaces
/// collapsed to one (only spaces, as the AWS signers do).
fn canonical_header_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut after_space = false;
    for c in v.trim_matches(' ').chars() {
        if c == ' ' {
            if !after_space {
                out.push(' ');
            }
            after_space = true;
        } else {
            out.push(c);
            after_space = false;
        }
    }
    out
}

/// The canonical query string: the request's (already encoded) `name=value` pairs sorted.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    pairs.sort_unstable();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

const SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

/// Why a request's SigV4 authentication failed, as STS words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigV4Refusal {
    /// No `Authorization` header: 403 `MissingAuthenticationToken`.
    Missing,
    /// An `Authorization` header STS cannot read as SigV4: 400 `IncompleteSignature`.
    Incomplete(String),
    /// An access key id the caller account does not have: 403 `InvalidClientTokenId`.
    UnknownAccessKey,
    /// Wrong secret, scope, date or content: 403 `SignatureDoesNotMatch`.
    Mismatch(String),
}

/// Verifies AWS Signature Version 4 in the `Authorization` header, by hand: canonical
/// request, string to sign, signing key derived from the secret, HMAC-SHA256
/// (<https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html>).
/// The path is taken as sent (STS is always called on `/`) and the query's pairs as encoded
/// by the client.
pub struct SigV4Verifier<'a> {
    /// Access key id → secret access key.
    pub secrets: &'a HashMap<String, String>,
    /// The region the credential scope must name.
    pub region: &'a str,
    /// The service the credential scope must name (`sts`).
    pub service: &'a str,
    /// The server's clock: requests more than 15 minutes off are refused.
    pub now: OffsetDateTime,
}

impl SigV4Verifier<'_> {
    /// Verifies one request; returns the access key id that signed it.
    ///
    /// # Errors
    /// The refusal STS would answer.
    pub fn verify(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<String, SigV4Refusal> {
        let incomplete = |m: &str| SigV4Refusal::Incomplete(m.to_owned());
        let Some(auth) = headers.get(http::header::AUTHORIZATION) else {
            return Err(SigV4Refusal::Missing);
        };
        let auth = auth
            .to_str()
            .map_err(|_| incomplete("Authorization header is not valid"))?;
        let Some(fields) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
            return Err(incomplete(
                "Unsupported AWS 'algorithm': expected 'AWS4-HMAC-SHA256'",
            ));
        };
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for field in fields.split(',') {
            let field = field.trim();
            let Some((key, value)) = field.split_once('=') else {
                return Err(SigV4Refusal::Incomplete(format!(
                    "'{field}' not a valid key=value pair (missing equal-sign) in Authorization header"
                )));
            };
            match key {
                "Credential" => credential = Some(value),
                "SignedHeaders" => signed_headers = Some(value),
                "Signature" => signature = Some(value),
                _ => {}
            }
        }
        let (Some(credential), Some(signed_headers), Some(signature)) =
            (credential, signed_headers, signature)
        else {
            return Err(incomplete("Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters"));
        };
        let scope: Vec<&str> = credential.split('/').collect();
        let [access_key, scope_date, scope_region, scope_service, terminator] = scope.as_slice()
        else {
            return Err(SigV4Refusal::Incomplete(format!(
                "Credential should have 5 parts (access key/date/region/service/aws4_request): '{credential}'"
            )));
        };
        let Some(secret) = self.secrets.get(*access_key) else {
            return Err(SigV4Refusal::UnknownAccessKey);
        };
        let Some(date_header) = headers.get("x-amz-date").and_then(|v| v.to_str().ok()) else {
            return Err(incomplete(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
            ));
        };
        let Some(signed_at) = parse_amz_date(date_header) else {
            return Err(SigV4Refusal::Incomplete(format!(
                "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\": '{date_header}'"
            )));
        };
        if *scope_date != &date_header[..8] {
            return Err(SigV4Refusal::Mismatch(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{scope_date}' != '{}', from '{date_header}'.",
                &date_header[..8]
            )));
        }
        if *scope_region != self.region {
            return Err(SigV4Refusal::Mismatch(format!(
                "Credential should be scoped to a valid region, not '{scope_region}'."
            )));
        }
        if *scope_service != self.service {
            return Err(SigV4Refusal::Mismatch(format!(
                "Credential should be scoped to correct service: '{}'.",
                self.service
            )));
        }
        if *terminator != "aws4_request" {
            return Err(SigV4Refusal::Mismatch(format!(
                "Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
            )));
        }
        let skew = time::Duration::minutes(15);
        if signed_at < self.now - skew {
            return Err(SigV4Refusal::Mismatch(format!(
                "Signature expired: {date_header} is now earlier than {} ({} - 15 min.)",
                amz_date(self.now - skew),
                amz_date(self.now)
            )));
        }
        if signed_at > self.now + skew {
            return Err(SigV4Refusal::Mismatch(format!(
                "Signature not yet current: {date_header} is still later than {} ({} + 15 min.)",
                amz_date(self.now + skew),
                amz_date(self.now)
            )));
        }

        // Canonical request.
        let path = match uri.path() {
            "" => "/",
            p => p,
        };
        let mut canonical = format!(
            "{}\n{path}\n{}\n",
            method.as_str(),
            canonical_query(uri.query().unwrap_or(""))
        );
        for name in signed_headers.split(';') {
            let values: Vec<String> = headers
                .get_all(name)
                .iter()
                .map(|v| canonical_header_value(v.to_str().unwrap_or("")))
                .collect();
            canonical.push_str(&format!("{name}:{}\n", values.join(",")));
        }
        canonical.push_str(&format!("\n{signed_headers}\n{}", sha256_hex(body)));

        // String to sign and signing key.
        let scope = format!("{scope_date}/{scope_region}/{scope_service}/aws4_request");
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{date_header}\n{scope}\n{}",
            sha256_hex(canonical.as_bytes())
        );
        let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), scope_date.as_bytes());
        let k_region = hmac_sha256(&k_date, scope_region.as_bytes());
        let k_service = hmac_sha256(&k_region, scope_service.as_bytes());
        let k_signing = hmac_sha256(&k_service, b"aws4_request");
        let expected = hex(&hmac_sha256(&k_signing, string_to_sign.as_bytes()));
        if expected != *signature {
            return Err(SigV4Refusal::Mismatch(SIGNATURE_MISMATCH.to_owned()));
        }
        Ok((*access_key).to_owned())
    }
}

// ---- Packed size ----------------------------------------------------------------------

/// The budget of STS's packed form of session policies, policy ARNs and tags, in the units
/// of [`packed_policy_size`].
pub const PACKED_BUDGET: usize = 1200;

/// The members of list parameter `name` (`{name}.member.N{suffix}`), in N order.
fn members(p: &HashMap<String, String>, name: &str, suffix: &str) -> Vec<String> {
    let prefix = format!("{name}.member.");
    let mut found: Vec<(u32, String)> = p
        .iter()
        .filter_map(|(k, v)| {
            let n = k.strip_prefix(prefix.as_str())?.strip_suffix(suffix)?;
            Some((n.parse().ok()?, v.clone()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, v)| v).collect()
}

/// The session tags (`Tags.member.N.Key` / `.Value`), in N order.
fn session_tags(p: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut tags: BTreeMap<u32, (String, String)> = BTreeMap::new();
    for (k, v) in p {
        let Some(rest) = k.strip_prefix("Tags.member.") else {
            continue;
        };
        let Some((n, field)) = rest.split_once('.') else {
            continue;
        };
        let Ok(n) = n.parse::<u32>() else { continue };
        let entry = tags.entry(n).or_default();
        match field {
            "Key" => entry.0 = v.clone(),
            "Value" => entry.1 = v.clone(),
            _ => {}
        }
    }
    tags.into_values().collect()
}

/// What the packed form of a request's session policies, policy ARNs and tags costs:
/// `(policies, tags)` in [`PACKED_BUDGET`] units. AWS does not publish the packing; this
/// model keeps its documented traits: the inline policy is compressed (whitespace and key
/// order do not count: it is measured re-serialized, at 45 %), managed policy ARNs are
/// opaque and count in full, and tags count in full plus a per-tag overhead. So each
/// parameter can be within its own limit (≤ 2048 characters, ≤ 10 ARNs, ≤ 50 tags) while
/// together they are over 100 %: a 2048-character policy alone is ~77 %, ten ARNs ~40 %.
fn packed_units(p: &HashMap<String, String>) -> (usize, usize) {
    let policy = p.get("Policy").map_or(0, |raw| {
        let len = serde_json::from_str::<serde_json::Value>(raw)
            .map_or(raw.len(), |v| v.to_string().len());
        (len * 45).div_ceil(100)
    });
    let arns: usize = members(p, "PolicyArns", ".arn")
        .iter()
        .map(String::len)
        .sum();
    let tags: usize = session_tags(p)
        .iter()
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum::<usize>()
        + members(p, "TransitiveTagKeys", "")
            .iter()
            .map(String::len)
            .sum::<usize>();
    (policy + arns, tags)
}

/// The `PackedPolicySize` STS would report for an AssumeRole with parameters `p` (a
/// percentage of the allowed space; above 100 the call is refused with
/// `PackedPolicyTooLarge`), or `None` when it carries no session policy and no tag.
pub fn packed_policy_size(p: &HashMap<String, String>) -> Option<u32> {
    let (policies, tags) = packed_units(p);
    if policies + tags == 0 {
        return None;
    }
    u32::try_from(((policies + tags) * 100).div_ceil(PACKED_BUDGET)).ok()
}

// ---- The service ----------------------------------------------------------------------

/// An answer of the fake (boxed when it is the refusal of a check).
type Answer = Response<Full<Bytes>>;

impl State {
    fn request_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let rid = format!("c6104cbe-af31-11e0-8154-{n:012x}");
        self.answered.lock().unwrap().push(rid.clone());
        rid
    }

    fn error(
        &self,
        status: StatusCode,
        kind: &str,
        code: &str,
        message: &str,
    ) -> Response<Full<Bytes>> {
        let rid = self.request_id();
        let body = format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <Error>\n    <Type>{kind}</Type>\n    <Code>{code}</Code>\n    <Message>{}</Message>\n  </Error>\n  <RequestId>{rid}</RequestId>\n</ErrorResponse>\n",
            xml_escape(message)
        );
        Response::builder()
            .status(status)
            .header("content-type", "text/xml")
            .header("x-amzn-RequestId", rid)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }

    fn validation_error(&self, message: &str) -> Response<Full<Bytes>> {
        self.error(
            StatusCode::BAD_REQUEST,
            "Sender",
            "ValidationError",
            message,
        )
    }

    fn auth_error(&self, refusal: SigV4Refusal) -> Response<Full<Bytes>> {
        match refusal {
            SigV4Refusal::Missing => self.error(
                StatusCode::FORBIDDEN,
                "Sender",
                "MissingAuthenticationToken",
                "Request is missing Authentication Token",
            ),
            SigV4Refusal::Incomplete(m) => {
                self.error(StatusCode::BAD_REQUEST, "Sender", "IncompleteSignature", &m)
            }
            SigV4Refusal::UnknownAccessKey => self.error(
                StatusCode::FORBIDDEN,
                "Sender",
                "InvalidClientTokenId",
                "The security token included in the request is invalid.",
            ),
            SigV4Refusal::Mismatch(m) => {
                self.error(StatusCode::FORBIDDEN, "Sender", "SignatureDoesNotMatch", &m)
            }
        }
    }

    /// Number of requests received.
    pub fn calls(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The last request's parameters.
    pub fn last_request(&self) -> HashMap<String, String> {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }

    fn assume_role(&self, p: &HashMap<String, String>) -> Response<Full<Bytes>> {
        let role_arn = p.get("RoleArn").cloned().unwrap_or_default();
        let session = p.get("RoleSessionName").cloned().unwrap_or_default();
        // Parameter validation comes first, as in STS.
        let duration = match self.session_limits(p) {
            Ok(d) => d,
            Err(refusal) => return *refusal,
        };
        if let Some(e) = p.get("ExternalId") {
            if !external_id_ok(e) {
                return self.validation_error(
                    "1 validation error detected: Value at 'externalId' failed to satisfy constraint",
                );
            }
        }
        if let Some(si) = p.get("SourceIdentity") {
            if !session_name_ok(si) {
                return self.validation_error("1 validation error detected: Value at 'sourceIdentity' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*");
            }
        }

        // The trust policy.
        let caller = self.caller_account.lock().unwrap().clone();
        let denied = |action: &str| {
            self.error(
                StatusCode::FORBIDDEN,
                "Sender",
                "AccessDenied",
                &format!("User: arn:aws:iam::{caller}:user/credbroker is not authorized to perform: {action} on resource: {role_arn}"),
            )
        };
        let Some(role) = self.roles.lock().unwrap().get(&role_arn).cloned() else {
            return denied("sts:AssumeRole");
        };
        if role.trusted_account != caller {
            return denied("sts:AssumeRole");
        }
        let external_id_ok = if role.any_external_id {
            p.contains_key("ExternalId")
        } else if let Some(required) = &role.external_id {
            p.get("ExternalId") == Some(required)
        } else {
            true
        };
        if !external_id_ok {
            if self
                .faults
                .lock()
                .unwrap()
                .region_disabled_on_external_id_mismatch
            {
                return self.region_disabled(&caller);
            }
            if self.faults.lock().unwrap().html_403_on_external_id_mismatch {
                return Response::builder()
                    .status(StatusCode::FORBIDDEN)
                    .header("content-type", "text/html")
                    .body(Full::new(Bytes::from_static(
                        b"<html><body><h1>403 Forbidden</h1>Request blocked.</body></html>",
                    )))
                    .unwrap();
            }
            return denied("sts:AssumeRole");
        }
        if role.require_source_identity && !p.contains_key("SourceIdentity") {
            return denied("sts:AssumeRole");
        }
        if p.contains_key("SourceIdentity") && !role.allow_set_source_identity {
            return denied("sts:SetSourceIdentity");
        }
        let tagged = p
            .keys()
            .any(|k| k.starts_with("Tags.member.") || k.starts_with("TransitiveTagKeys.member."));
        if tagged && !role.allow_tag_session {
            return denied("sts:TagSession");
        }
        let packed = match self.session_fits(p, duration, role.max_session_s) {
            Ok(packed) => packed,
            Err(refusal) => return *refusal,
        };
        let before = p
            .get("SourceIdentity")
            .map(|s| format!("    <SourceIdentity>{}</SourceIdentity>\n", xml_escape(s)))
            .unwrap_or_default();
        self.issue_session(SessionGrant {
            action: "AssumeRole",
            role_arn: &role_arn,
            session: &session,
            role: &role,
            duration,
            packed,
            before,
            after: String::new(),
        })
    }

    fn region_disabled(&self, caller: &str) -> Response<Full<Bytes>> {
        self.error(
            StatusCode::FORBIDDEN,
            "Sender",
            "RegionDisabledException",
            &format!("STS is not activated in this region for account:{caller}. Your account administrator can activate STS in this region using the IAM Console."),
        )
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let params = parse_form(&String::from_utf8_lossy(&body));
        // The log keeps what the token claimed, never the token.
        self.requests
            .lock()
            .unwrap()
            .push(web_identity::loggable(&params));
        let delay = self.faults.lock().unwrap().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        {
            let mut f = self.faults.lock().unwrap();
            let role_down = params
                .get("RoleArn")
                .is_some_and(|r| f.down_roles.iter().any(|d| d == r));
            if f.down || role_down {
                drop(f);
                return self.error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Receiver",
                    "ServiceUnavailable",
                    "Service is unavailable",
                );
            }
            if f.throttle_next > 0 {
                f.throttle_next -= 1;
                drop(f);
                return self.error(
                    StatusCode::BAD_REQUEST,
                    "Sender",
                    "Throttling",
                    "Rate exceeded",
                );
            }
            if f.fail_next > 0 {
                f.fail_next -= 1;
                drop(f);
                return self.error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Receiver",
                    "InternalFailure",
                    "An internal error occurred",
                );
            }
        }
        if parts.method != hyper::Method::POST {
            return self.error(
                StatusCode::BAD_REQUEST,
                "Sender",
                "InvalidAction",
                "Could not find operation for GET",
            );
        }
        // AssumeRoleWithWebIdentity is unsigned: the token is the credential. A signature,
        // when present, is neither required nor looked at.
        if params.get("Action").map(String::as_str) == Some("AssumeRoleWithWebIdentity")
            && params.get("Version").map(String::as_str) == Some("2011-06-15")
        {
            return self.assume_role_with_web_identity(&params);
        }
        // Authentication: the signature, with the caller's keys, over exactly these bytes.
        let verdict = {
            let secrets = self.credentials.lock().unwrap().clone();
            let region = self.region.lock().unwrap().clone();
            SigV4Verifier {
                secrets: &secrets,
                region: &region,
                service: "sts",
                now: OffsetDateTime::now_utc(),
            }
            .verify(&parts.method, &parts.uri, &parts.headers, &body)
        };
        if let Err(refusal) = verdict {
            return self.auth_error(refusal);
        }
        let (token_expired, region_disabled) = {
            let f = self.faults.lock().unwrap();
            (f.caller_token_expired, f.region_disabled)
        };
        if token_expired {
            return self.error(
                StatusCode::FORBIDDEN,
                "Sender",
                "ExpiredToken",
                "The security token included in the request is expired",
            );
        }
        if region_disabled {
            let caller = self.caller_account.lock().unwrap().clone();
            return self.region_disabled(&caller);
        }
        match (
            params.get("Action").map(String::as_str),
            params.get("Version").map(String::as_str),
        ) {
            (Some("AssumeRole"), Some("2011-06-15")) => self.assume_role(&params),
            (Some(a), _) => self.error(
                StatusCode::BAD_REQUEST,
                "Sender",
                "InvalidAction",
                &format!("Could not find operation {a} for version"),
            ),
            (None, _) => self.error(
                StatusCode::BAD_REQUEST,
                "Sender",
                "MissingAction",
                "Missing Action",
            ),
        }
    }
}

impl FakeSts {
    /// Starts the fake on 127.0.0.1 with `caller_account` as the vendor account, whose key
    /// [`TEST_ACCESS_KEY_ID`] / [`TEST_SECRET_ACCESS_KEY`] it knows, in [`TEST_REGION`].
    pub async fn start(caller_account: &str) -> FakeSts {
        let state = Arc::new(State::default());
        *state.caller_account.lock().unwrap() = caller_account.to_owned();
        *state.region.lock().unwrap() = TEST_REGION.to_owned();
        state.credentials.lock().unwrap().insert(
            TEST_ACCESS_KEY_ID.to_owned(),
            TEST_SECRET_ACCESS_KEY.to_owned(),
        );
        let s = state.clone();
        let (url, task) = crate::loopback::serve(move |req| s.clone().handle(req)).await;
        FakeSts { url, state, task }
    }

    /// Adds (or replaces) a role.
    pub fn add_role(&self, arn: &str, role: FakeRole) {
        self.state
            .roles
            .lock()
            .unwrap()
            .insert(arn.to_owned(), role);
    }

    /// Gives the caller account access key `access_key_id` with `secret` (or replaces its
    /// secret: the key was re-issued, and a daemon still holding the old one is refused).
    pub fn set_credentials(&self, access_key_id: &str, secret: &str) {
        self.state
            .credentials
            .lock()
            .unwrap()
            .insert(access_key_id.to_owned(), secret.to_owned());
    }

    /// Deletes access key `access_key_id`: its requests get `InvalidClientTokenId`.
    pub fn remove_credentials(&self, access_key_id: &str) {
        self.state.credentials.lock().unwrap().remove(access_key_id);
    }

    /// Registers (or replaces) the IAM OIDC identity provider `url` — the issuer URL without
    /// `https://`, as IAM keys it and as trust conditions name it (`{url}:aud`, `{url}:sub`) —
    /// with its client ids (accepted `aud` values) and its JWKS, given inline (what STS would
    /// fetch from the issuer's `jwks_uri`).
    pub fn add_oidc_provider(&self, url: &str, client_ids: Vec<String>, jwks: serde_json::Value) {
        self.state
            .oidc_providers
            .lock()
            .unwrap()
            .insert(url.to_owned(), OidcProvider { client_ids, jwks });
    }

    /// Deletes the IAM OIDC identity provider `url`: its tokens get `InvalidIdentityToken`.
    pub fn remove_oidc_provider(&self, url: &str) {
        self.state.oidc_providers.lock().unwrap().remove(url);
    }

    /// Changes faults.
    pub fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.state.faults.lock().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let p =
            parse_form("Action=AssumeRole&Policy=%7B%22a%22%3A1%7D&RoleSessionName=cb.t.i&X=a+b");
        assert_eq!(p["Policy"], "{\"a\":1}");
        assert_eq!(p["X"], "a b");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    /// The worked example of AWS's SigV4 documentation (IAM `ListUsers`, 2015-08-30), then
    /// each way the same request fails.
    #[test]
    fn sigv4_verification_matches_the_documented_example() {
        let secrets: HashMap<String, String> = [(
            "AKIDEXAMPLE".to_owned(),
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned(),
        )]
        .into_iter()
        .collect();
        let now = time::macros::datetime!(2015-08-30 12:36:00 UTC);
        let v = SigV4Verifier {
            secrets: &secrets,
            region: "us-east-1",
            service: "iam",
            now,
        };
        let uri: http::Uri = "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08"
            .parse()
            .unwrap();
        let headers = |auth: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8"
                    .parse()
                    .unwrap(),
            );
            h.insert("host", "iam.amazonaws.com".parse().unwrap());
            h.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
            if !auth.is_empty() {
                h.insert("authorization", auth.parse().unwrap());
            }
            h
        };
        let good = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";
        let get = http::Method::GET;
        assert_eq!(
            v.verify(&get, &uri, &headers(good), b""),
            Ok("AKIDEXAMPLE".to_owned())
        );
        // Another body, method or header value than the one signed.
        let mismatch = |r: Result<String, SigV4Refusal>| matches!(r, Err(SigV4Refusal::Mismatch(m)) if m == SIGNATURE_MISMATCH);
        assert!(mismatch(v.verify(&get, &uri, &headers(good), b"x")));
        assert!(mismatch(v.verify(
            &http::Method::POST,
            &uri,
            &headers(good),
            b""
        )));
        let mut h = headers(good);
        h.insert("host", "iam.amazonaws.com:8443".parse().unwrap());
        assert!(mismatch(v.verify(&get, &uri, &h, b"")));
        // Another secret for the same key.
        let other: HashMap<String, String> = [("AKIDEXAMPLE".to_owned(), "wrong".to_owned())]
            .into_iter()
            .collect();
        let wrong_secret = SigV4Verifier {
            secrets: &other,
            ..v
        };
        assert!(mismatch(wrong_secret.verify(
            &get,
            &uri,
            &headers(good),
            b""
        )));
        // An unknown key, another region or service, a stale date, no or garbled header.
        let empty = HashMap::new();
        let unknown = SigV4Verifier {
            secrets: &empty,
            region: "us-east-1",
            service: "iam",
            now,
        };
        assert_eq!(
            unknown.verify(&get, &uri, &headers(good), b""),
            Err(SigV4Refusal::UnknownAccessKey)
        );
        for (region, service) in [("eu-west-1", "iam"), ("us-east-1", "sts")] {
            let elsewhere = SigV4Verifier {
                secrets: &secrets,
                region,
                service,
                now,
            };
            assert!(matches!(
                elsewhere.verify(&get, &uri, &headers(good), b""),
                Err(SigV4Refusal::Mismatch(_))
            ));
        }
        let later = SigV4Verifier {
            secrets: &secrets,
            region: "us-east-1",
            service: "iam",
            now: now + time::Duration::minutes(16),
        };
        assert!(matches!(
            later.verify(&get, &uri, &headers(good), b""),
            Err(SigV4Refusal::Mismatch(m)) if m.starts_with("Signature expired: 20150830T123600Z is now earlier than 20150830T123700Z")
        ));
        assert_eq!(
            v.verify(&get, &uri, &headers(""), b""),
            Err(SigV4Refusal::Missing)
        );
        assert!(matches!(
            v.verify(
                &get,
                &uri,
                &headers(
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request"
                ),
                b""
            ),
            Err(SigV4Refusal::Incomplete(_))
        ));
    }

    fn state() -> State {
        let s = State::default();
        *s.caller_account.lock().unwrap() = "111111111111".into();
        s.roles.lock().unwrap().insert(
            "arn:aws:iam::222222222222:role/R".into(),
            FakeRole {
                account: "222222222222".into(),
                trusted_account: "111111111111".into(),
                external_id: Some("ext-0123456789".into()),
                ..FakeRole::default()
            },
        );
        s
    }

    fn params(extra: &[(&str, String)]) -> HashMap<String, String> {
        let mut p: HashMap<String, String> = [
            ("Action", "AssumeRole".to_owned()),
            ("Version", "2011-06-15".to_owned()),
            ("RoleArn", "arn:aws:iam::222222222222:role/R".to_owned()),
            ("RoleSessionName", "cb.t.i".to_owned()),
            ("ExternalId", "ext-0123456789".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in extra {
            p.insert((*k).to_owned(), v.clone());
        }
        p
    }

    async fn answer(r: Response<Full<Bytes>>) -> (u16, String) {
        let status = r.status().as_u16();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn set_role(s: &State, f: impl FnOnce(&mut FakeRole)) {
        let mut roles = s.roles.lock().unwrap();
        f(roles.get_mut("arn:aws:iam::222222222222:role/R").unwrap());
    }

    #[tokio::test]
    async fn session_permissions_limits_and_packing() {
        let s = state();
        let tags = |n: usize, len: usize| -> Vec<(String, String)> {
            (1..=n)
                .flat_map(|i| {
                    [
                        (format!("Tags.member.{i}.Key"), format!("k{i}")),
                        (format!("Tags.member.{i}.Value"), "v".repeat(len)),
                    ]
                })
                .collect()
        };
        let with = |extra: Vec<(String, String)>| {
            let mut p = params(&[]);
            p.extend(extra);
            p
        };

        // Allowed by default; refused once the trust policy lacks the permission.
        let si = params(&[("SourceIdentity", "w1".to_owned())]);
        assert_eq!(answer(s.assume_role(&si)).await.0, 200);
        set_role(&s, |r| r.allow_set_source_identity = false);
        let (st, body) = answer(s.assume_role(&si)).await;
        assert_eq!(st, 403);
        assert!(
            body.contains("<Code>AccessDenied</Code>") && body.contains("sts:SetSourceIdentity"),
            "{body}"
        );
        assert_eq!(answer(s.assume_role(&params(&[]))).await.0, 200);
        assert_eq!(answer(s.assume_role(&with(tags(2, 8)))).await.0, 200);
        set_role(&s, |r| r.allow_tag_session = false);
        let (st, body) = answer(s.assume_role(&with(tags(2, 8)))).await;
        assert_eq!(st, 403);
        assert!(body.contains("sts:TagSession"), "{body}");
        let (st, _) = answer(s.assume_role(&with(vec![(
            "TransitiveTagKeys.member.1".to_owned(),
            "k1".to_owned(),
        )])))
        .await;
        assert_eq!(st, 403);
        set_role(&s, |r| r.allow_tag_session = true);

        // At most 10 PolicyArns and 50 tags.
        let arns = |n: usize| -> Vec<(String, String)> {
            (1..=n)
                .map(|i| {
                    (
                        format!("PolicyArns.member.{i}.arn"),
                        format!("arn:aws:iam::aws:policy/job-function/ViewOnlyAccess{i:02}"),
                    )
                })
                .collect()
        };
        assert_eq!(answer(s.assume_role(&with(arns(10)))).await.0, 200);
        let (st, body) = answer(s.assume_role(&with(arns(11)))).await;
        assert_eq!(st, 400);
        assert!(
            body.contains("<Code>ValidationError</Code>") && body.contains("policyArns"),
            "{body}"
        );
        let (st, body) = answer(s.assume_role(&with(tags(51, 1)))).await;
        assert_eq!(st, 400);
        assert!(body.contains("'tags'"), "{body}");

        // Packing: a policy within 2048 characters packs alone; with ten ARNs, or with
        // tags, it does not; a plausible PackedPolicySize otherwise.
        let deny: Vec<String> = (0..110).map(|i| format!("s3:Nothing{i:04}")).collect();
        let policy = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": deny, "Resource": "*"}]}).to_string();
        assert!(policy.len() <= 2048);
        let alone = with(vec![("Policy".to_owned(), policy.clone())]);
        let (st, body) = answer(s.assume_role(&alone)).await;
        assert_eq!(st, 200, "{body}");
        let size = packed_policy_size(&alone).unwrap();
        assert!((60..100).contains(&size), "{size}");
        assert!(
            body.contains(&format!("<PackedPolicySize>{size}</PackedPolicySize>")),
            "{body}"
        );
        assert_eq!(*s.packed_policy_size.lock().unwrap(), Some(size));
        let mut big = with(arns(10));
        big.insert("Policy".to_owned(), policy.clone());
        let (st, body) = answer(s.assume_role(&big)).await;
        assert_eq!(st, 400);
        assert!(
            body.contains("<Code>PackedPolicyTooLarge</Code>")
                && body.contains("Packed policy consumes 1")
                && body.contains("% of allotted space, please use smaller policy."),
            "{body}"
        );
        let mut tagged = with(tags(40, 60));
        tagged.insert("Policy".to_owned(), policy);
        let (st, body) = answer(s.assume_role(&tagged)).await;
        assert_eq!(st, 400);
        assert!(
            body.contains("Packed size of session tags consumes"),
            "{body}"
        );
        // Nothing passed: no PackedPolicySize at all.
        let (_, body) = answer(s.assume_role(&params(&[]))).await;
        assert!(!body.contains("PackedPolicySize"), "{body}");
        // A policy that is not JSON.
        let (st, body) = answer(s.assume_role(&params(&[("Policy", "{".to_owned())]))).await;
        assert_eq!(st, 400);
        assert!(body.contains("MalformedPolicyDocument"), "{body}");
    }
}
