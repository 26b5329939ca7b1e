//! What AssumeRole and AssumeRoleWithWebIdentity share in the fake STS: the request limits
//! checked before anything else, DurationSeconds against the role and the packed size of
//! session policies and tags after the trust policy, and the shape of a granted session's
//! answer (`<{Action}Response><{Action}Result>…`, with the `expired` / `malformed` faults).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use time::OffsetDateTime;

use super::{
    members, packed_policy_size, packed_units, session_name_ok, session_tags, xml_escape, Answer,
    FakeRole, State,
};

/// What a granted session answer is built from.
pub(super) struct SessionGrant<'a> {
    /// `AssumeRole` or `AssumeRoleWithWebIdentity`: names the response elements.
    pub(super) action: &'a str,
    pub(super) role_arn: &'a str,
    pub(super) session: &'a str,
    pub(super) role: &'a FakeRole,
    pub(super) duration: u32,
    pub(super) packed: Option<u32>,
    /// Result elements ahead of `AssumedRoleUser`.
    pub(super) before: String,
    /// Result elements after `Credentials` (and `PackedPolicySize`).
    pub(super) after: String,
}

impl State {
    /// The request limits AssumeRole and AssumeRoleWithWebIdentity share, checked before
    /// anything else as in STS; returns the DurationSeconds asked for (3600 when absent).
    pub(super) fn session_limits(&self, p: &HashMap<String, String>) -> Result<u32, Box<Answer>> {
        let role_arn = p.get("RoleArn").map_or("", String::as_str);
        let session = p.get("RoleSessionName").map_or("", String::as_str);
        if role_arn.len() < 20 || role_arn.len() > 2048 {
            return Err(Box::new(self.validation_error(
                "1 validation error detected: Value at 'roleArn' failed to satisfy constraint",
            )));
        }
        if !session_name_ok(session) {
            return Err(Box::new(self.validation_error("1 validation error detected: Value at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*")));
        }
        if p.get("Policy").is_some_and(|x| x.len() > 2048) {
            return Err(Box::new(self.validation_error("Value at 'policy' failed to satisfy constraint: Member must have length less than or equal to 2048")));
        }
        let policy_arns = members(p, "PolicyArns", ".arn");
        if policy_arns.len() > 10 {
            return Err(Box::new(self.validation_error("1 validation error detected: Value at 'policyArns' failed to satisfy constraint: Member must have length less than or equal to 10")));
        }
        if policy_arns.iter().any(|a| a.len() < 20 || a.len() > 2048) {
            return Err(Box::new(self.validation_error("1 validation error detected: Value at 'policyArns.member.arn' failed to satisfy constraint: Member must have length greater than or equal to 20")));
        }
        let tags = session_tags(p);
        if tags.len() > 50 {
            return Err(Box::new(self.validation_error("1 validation error detected: Value at 'tags' failed to satisfy constraint: Member must have length less than or equal to 50")));
        }
        if tags
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 256)
        {
            return Err(Box::new(self.validation_error("1 validation error detected: Value at 'tags' failed to satisfy constraint: Member must satisfy constraint: [Key length 1-128, Value length 0-256]")));
        }
        let duration: u32 = match p.get("DurationSeconds").map(|d| d.parse()) {
            None => 3600,
            Some(Ok(d)) => d,
            Some(Err(_)) => {
                return Err(Box::new(
                    self.validation_error("DurationSeconds is not a number"),
                ))
            }
        };
        if let Some(policy) = p.get("Policy") {
            if serde_json::from_str::<serde_json::Value>(policy).is_err() {
                return Err(Box::new(self.error(
                    StatusCode::BAD_REQUEST,
                    "Sender",
                    "MalformedPolicyDocument",
                    "The policy is not in the valid JSON format.",
                )));
            }
        }
        Ok(duration)
    }

    /// The checks after the trust policy: DurationSeconds within 900..=the role's
    /// MaxSessionDuration, and the session policies, ARNs and tags within the packed budget.
    /// Returns the `PackedPolicySize` to report.
    pub(super) fn session_fits(
        &self,
        p: &HashMap<String, String>,
        duration: u32,
        max_session_s: u32,
    ) -> Result<Option<u32>, Box<Answer>> {
        if duration < 900 {
            return Err(Box::new(self.validation_error("1 validation error detected: Value at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to 900")));
        }
        if duration > max_session_s {
            return Err(Box::new(self.validation_error(
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
            )));
        }
        // What the session carries must pack into the token.
        let packed = packed_policy_size(p);
        if let Some(percent) = packed.filter(|pc| *pc > 100) {
            let (policies, tag_units) = packed_units(p);
            let message = if tag_units > policies {
                format!("Packed size of session tags consumes {percent}% of allotted space.")
            } else {
                format!("Packed policy consumes {percent}% of allotted space, please use smaller policy.")
            };
            return Err(Box::new(self.error(
                StatusCode::BAD_REQUEST,
                "Sender",
                "PackedPolicyTooLarge",
                &message,
            )));
        }
        Ok(packed)
    }

    /// The success answer of `grant.action` (`<{action}Response><{action}Result>…`), with the
    /// injected `expired` / `malformed` faults applied.
    pub(super) fn issue_session(&self, grant: SessionGrant<'_>) -> Response<Full<Bytes>> {
        let SessionGrant {
            action,
            role_arn,
            session,
            role,
            duration,
            packed,
            before,
            after,
        } = grant;
        let faults = self.faults.lock().unwrap();
        let expiration = if faults.expired {
            OffsetDateTime::now_utc() - time::Duration::hours(1)
        } else if faults.far_expiration {
            OffsetDateTime::now_utc() + time::Duration::days(3650)
        } else {
            OffsetDateTime::now_utc() + time::Duration::seconds(i64::from(duration))
        };
        let malformed = faults.malformed;
        let token_override = faults.session_token.clone();
        let rid_override = faults.request_id.clone();
        let padding = faults.padding.unwrap_or(0);
        drop(faults);
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let rid = rid_override.unwrap_or_else(|| format!("c6104cbe-af31-11e0-8154-{n:012x}"));
        self.answered.lock().unwrap().push(rid.clone());
        let session_token = token_override
            .map(|t| xml_escape(&t))
            .unwrap_or_else(|| format!("FwoGZXIvYXdzEfakeSessionToken{n:016x}"));
        if malformed {
            return Response::builder()
                .status(200)
                .header("x-amzn-RequestId", rid)
                .body(Full::new(Bytes::from(format!(
                    "<{action}Response><{action}Res"
                ))))
                .unwrap();
        }
        if packed.is_some() {
            *self.packed_policy_size.lock().unwrap() = packed;
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
        let role_name = role
            .report_role
            .clone()
            .unwrap_or_else(|| role_arn.rsplit('/').next().unwrap_or("role").to_owned());
        let account = role.report_account.clone().unwrap_or(role.account.clone());
        let partition = role.report_partition.as_deref().unwrap_or("aws");
        let packed_size = packed
            .map(|pc| format!("    <PackedPolicySize>{pc}</PackedPolicySize>\n"))
            .unwrap_or_default();
        let body = format!(
            "<{action}Response xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <{action}Result>\n{before}    <AssumedRoleUser>\n      <AssumedRoleId>AROA3XFRBF535PLBIFPI4:{session}</AssumedRoleId>\n      <Arn>arn:{partition}:sts::{account}:assumed-role/{role_name}/{session}</Arn>\n    </AssumedRoleUser>\n    <Credentials>\n      <SecretAccessKey>fakeSecret{n:016x}wJalrXUtnFEMI</SecretAccessKey>\n      <SessionToken>{session_token}</SessionToken>\n      <Expiration>{exp}</Expiration>\n      <AccessKeyId>ASIAFAKE{n:012X}</AccessKeyId>\n    </Credentials>\n{packed_size}{after}  </{action}Result>\n  <ResponseMetadata>\n    <RequestId>{rid}</RequestId>\n  </ResponseMetadata>\n</{action}Response>\n{}",
            " ".repeat(padding)
        );
        Response::builder()
            .status(200)
            .header("content-type", "text/xml")
            .header("x-amzn-RequestId", rid)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }
}
