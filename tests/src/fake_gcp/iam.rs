//! IAM Service Account Credentials `generateAccessToken`: the bearer must be a live federated
//! token, the service account must exist and grant `roles/iam.workloadIdentityUser` to the
//! token's principal (or to a principal set holding it), `scope` and `lifetime` are checked.

use serde_json::{json, Value};

use super::{now, random_token, GcpState, IssuedToken, PERMISSION_DENIED, UNAUTHENTICATED};

pub(super) fn google_error(code: u16, status: &str, message: &str) -> (u16, String) {
    let mut error = json!({"code": code, "message": message, "status": status});
    if code == 403 {
        error["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "IAM_PERMISSION_DENIED",
            "domain": "iam.googleapis.com",
            "metadata": {"permission": "iam.serviceAccounts.getAccessToken"}
        }]);
    }
    (code, json!({ "error": error }).to_string())
}

/// A protobuf `Duration` in JSON (`"3600s"`, `"3.5s"`) as whole seconds, rounded up.
pub(super) fn parse_lifetime(s: &str) -> Option<i64> {
    let n = s.strip_suffix('s')?;
    let (whole, frac) = n.split_once('.').unwrap_or((n, ""));
    let ok = !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 9;
    if !ok {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    Some(whole + i64::from(frac.bytes().any(|b| b != b'0')))
}

impl GcpState {
    /// Whether `member` (a principal or a `principalSet://…/*`) names `who`.
    pub(super) fn member_matches(member: &str, who: &str) -> bool {
        if member == who {
            return true;
        }
        let Some(set) = member
            .strip_prefix("principalSet://")
            .and_then(|m| m.strip_suffix("/*"))
        else {
            return false;
        };
        who.strip_prefix("principal://")
            .and_then(|w| w.strip_prefix(set))
            .is_some_and(|rest| rest.starts_with("/subject/"))
    }

    /// `generateAccessToken` for `sa`: (status, body).
    pub(super) fn generate_access_token(
        &self,
        sa: &str,
        principal: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, String) {
        let Some(principal) = principal else {
            return google_error(401, "UNAUTHENTICATED", UNAUTHENTICATED);
        };
        let Some(account) = self.service_accounts.lock().unwrap().get(sa).cloned() else {
            return google_error(
                404,
                "NOT_FOUND",
                &format!("Not found; Gaia id not found for email {sa}"),
            );
        };
        if !account
            .workload_identity_users
            .iter()
            .any(|m| Self::member_matches(m, principal))
        {
            return google_error(403, "PERMISSION_DENIED", PERMISSION_DENIED);
        }
        let invalid = |m: &str| google_error(400, "INVALID_ARGUMENT", m);
        let Some(body) = body.filter(|b| b.is_object()) else {
            return invalid("Invalid JSON payload received.");
        };
        let scopes: Vec<String> = body["scope"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if scopes.is_empty() || scopes.iter().any(String::is_empty) {
            return invalid("Scope required.");
        }
        let lifetime = match &body["lifetime"] {
            Value::Null => Some(3600),
            Value::String(s) => parse_lifetime(s),
            _ => None,
        };
        let Some(lifetime) = lifetime.filter(|l| *l > 0) else {
            return invalid(
                "Invalid value at 'lifetime' (type.googleapis.com/google.protobuf.Duration).",
            );
        };
        let max = if account.extended_lifetime {
            43200
        } else {
            3600
        };
        if lifetime > max {
            return invalid(&format!(
                "The lifetime of the access token must be between 1 and {max} seconds."
            ));
        }
        let expires_at = now() + lifetime;
        let access_token = random_token("ya29.sa-");
        self.issued.lock().unwrap().insert(
            access_token.clone(),
            IssuedToken {
                service_account: sa.to_owned(),
                scopes,
                expires_at,
                principal: principal.to_owned(),
            },
        );
        let expire_time = time::OffsetDateTime::from_unix_timestamp(expires_at)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        (
            200,
            json!({"accessToken": access_token, "expireTime": expire_time}).to_string(),
        )
    }
}
