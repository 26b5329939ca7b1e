//! A local fake of AWS STS `AssumeRole` that behaves like the real one (PROTOCOLS.md):
//! form-encoded POST, SigV4 `Authorization` required, XML answers, the real error shapes
//! (`<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>…`), trust rules
//! (trusted account, ExternalId required when the role says so — and accepted in any form
//! when it does not, like the real service), DurationSeconds against the role's maximum,
//! plus injectable throttling, 5xx, latency, outages, expired credentials and malformed XML.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

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
    /// Answer a call whose ExternalId the role does not accept with 403
    /// `RegionDisabledException` instead of AccessDenied (a refusal that says nothing about
    /// the trust policy).
    pub region_disabled_on_external_id_mismatch: bool,
}

/// Shared state of the fake.
#[derive(Default)]
pub struct State {
    /// Roles by ARN.
    pub roles: Mutex<HashMap<String, FakeRole>>,
    /// Faults.
    pub faults: Mutex<Faults>,
    /// Every request's form parameters, in order.
    pub requests: Mutex<Vec<HashMap<String, String>>>,
    /// Account of the caller (the vendor account whose keys the broker signs with).
    pub caller_account: Mutex<String>,
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

impl State {
    fn request_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        format!("c6104cbe-af31-11e0-8154-{n:012x}")
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
        if role_arn.len() < 20 || role_arn.len() > 2048 {
            return self.error(
                StatusCode::BAD_REQUEST,
                "Sender",
                "ValidationError",
                "1 validation error detected: Value at 'roleArn' failed to satisfy constraint",
            );
        }
        if !session_name_ok(&session) {
            return self.error(StatusCode::BAD_REQUEST, "Sender", "ValidationError", "1 validation error detected: Value at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*");
        }
        if let Some(e) = p.get("ExternalId") {
            if !external_id_ok(e) {
                return self.error(StatusCode::BAD_REQUEST, "Sender", "ValidationError", "1 validation error detected: Value at 'externalId' failed to satisfy constraint");
            }
        }
        if p.get("Policy").is_some_and(|x| x.len() > 2048) {
            return self.error(StatusCode::BAD_REQUEST, "Sender", "ValidationError", "Value at 'policy' failed to satisfy constraint: Member must have length less than or equal to 2048");
        }
        let duration: u32 = match p.get("DurationSeconds").map(|d| d.parse()) {
            None => 3600,
            Some(Ok(d)) => d,
            Some(Err(_)) => {
                return self.error(
                    StatusCode::BAD_REQUEST,
                    "Sender",
                    "ValidationError",
                    "DurationSeconds is not a number",
                )
            }
        };
        let caller = self.caller_account.lock().unwrap().clone();
        let denied = || {
            self.error(
                StatusCode::FORBIDDEN,
                "Sender",
                "AccessDenied",
                &format!("User: arn:aws:iam::{caller}:user/credbroker is not authorized to perform: sts:AssumeRole on resource: {role_arn}"),
            )
        };
        let Some(role) = self.roles.lock().unwrap().get(&role_arn).cloned() else {
            return denied();
        };
        if role.trusted_account != caller {
            return denied();
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
                return self.error(
                    StatusCode::FORBIDDEN,
                    "Sender",
                    "RegionDisabledException",
                    "STS is not activated in this region for account:111111111111. Your account administrator can activate STS in this region using the IAM Console.",
                );
            }
            return denied();
        }
        if duration < 900 {
            return self.error(StatusCode::BAD_REQUEST, "Sender", "ValidationError", "1 validation error detected: Value at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to 900");
        }
        if duration > role.max_session_s {
            return self.error(
                StatusCode::BAD_REQUEST,
                "Sender",
                "ValidationError",
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
            );
        }
        let faults = self.faults.lock().unwrap();
        let expiration = if faults.expired {
            time::OffsetDateTime::now_utc() - time::Duration::hours(1)
        } else {
            time::OffsetDateTime::now_utc() + time::Duration::seconds(i64::from(duration))
        };
        let malformed = faults.malformed;
        drop(faults);
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let rid = format!("c6104cbe-af31-11e0-8154-{n:012x}");
        if malformed {
            return Response::builder()
                .status(200)
                .header("x-amzn-RequestId", rid)
                .body(Full::new(Bytes::from("<AssumeRoleResponse><AssumeRoleRes")))
                .unwrap();
        }
        // Fractional seconds of variable length, as STS emits.
        let exp = format!(
            "{}.{:03}Z",
            expiration
                .format(&time::macros::format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second]"
                ))
                .unwrap(),
            expiration.millisecond()
        );
        let role_name = role_arn.rsplit('/').next().unwrap_or("role");
        let account = role.report_account.clone().unwrap_or(role.account.clone());
        let source = p
            .get("SourceIdentity")
            .map(|s| format!("    <SourceIdentity>{}</SourceIdentity>\n", xml_escape(s)))
            .unwrap_or_default();
        let body = format!(
            "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <AssumeRoleResult>\n{source}    <AssumedRoleUser>\n      <AssumedRoleId>AROA3XFRBF535PLBIFPI4:{session}</AssumedRoleId>\n      <Arn>arn:aws:sts::{account}:assumed-role/{role_name}/{session}</Arn>\n    </AssumedRoleUser>\n    <Credentials>\n      <SecretAccessKey>fakeSecret{n:016x}wJalrXUtnFEMI</SecretAccessKey>\n      <SessionToken>FwoGZXIvYXdzEfakeSessionToken{n:016x}</SessionToken>\n      <Expiration>{exp}</Expiration>\n      <AccessKeyId>ASIAFAKE{n:012X}</AccessKeyId>\n    </Credentials>\n    <PackedPolicySize>6</PackedPolicySize>\n  </AssumeRoleResult>\n  <ResponseMetadata>\n    <RequestId>{rid}</RequestId>\n  </ResponseMetadata>\n</AssumeRoleResponse>\n"
        );
        Response::builder()
            .status(200)
            .header("content-type", "text/xml")
            .header("x-amzn-RequestId", rid)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let has_date = req.headers().contains_key("x-amz-date");
        let method = req.method().clone();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let params = parse_form(&String::from_utf8_lossy(&body));
        self.requests.lock().unwrap().push(params.clone());
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
        if method != hyper::Method::POST {
            return self.error(
                StatusCode::BAD_REQUEST,
                "Sender",
                "InvalidAction",
                "Could not find operation for GET",
            );
        }
        let sigv4 = auth.starts_with("AWS4-HMAC-SHA256 Credential=")
            && auth.contains("/sts/aws4_request")
            && auth.contains("SignedHeaders=")
            && auth.contains("Signature=");
        if !sigv4 || !has_date {
            return self.error(
                StatusCode::FORBIDDEN,
                "Sender",
                "MissingAuthenticationToken",
                "Request is missing Authentication Token",
            );
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
    /// Starts the fake on 127.0.0.1 with `caller_account` as the vendor account.
    pub async fn start(caller_account: &str) -> FakeSts {
        let state = Arc::new(State::default());
        *state.caller_account.lock().unwrap() = caller_account.to_owned();
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
}
