//! The token exchange (`POST /v1/token`): the form checked field by field, the subject token
//! verified against the provider `audience` names, `google.subject` mapped from `sub`, the
//! attribute condition applied, a federated token issued for the subject's principal.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{
    jwks, now, principal, random_token, FederatedToken, GcpState, ACCESS_TOKEN_TYPE,
    CONDITION_REJECTED, GRANT_TYPE, INVALID_TARGET, JWT_TOKEN_TYPE,
};

fn oauth_error(error: &str, description: &str) -> (u16, String) {
    (
        400,
        json!({"error": error, "error_description": description}).to_string(),
    )
}

/// A JSON number of seconds (integer or not) as whole seconds.
fn seconds(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

impl GcpState {
    fn audience_text(aud: &Value) -> String {
        match aud {
            Value::String(s) => s.clone(),
            Value::Array(a) => a
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        }
    }

    /// The token exchange: (status, body).
    pub(super) async fn sts(&self, form: &HashMap<String, String>) -> (u16, String) {
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        for (name, want) in [
            ("grant_type", GRANT_TYPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("subject_token_type", JWT_TOKEN_TYPE),
        ] {
            match form.get(name) {
                None => {
                    return oauth_error(
                        "invalid_request",
                        &format!("Missing required parameter: {name}."),
                    )
                }
                Some(v) if v != want => {
                    return oauth_error("invalid_request", &format!("Invalid value for {name}."))
                }
                Some(_) => {}
            }
        }
        for name in ["audience", "subject_token"] {
            if field(name).is_empty() {
                return oauth_error(
                    "invalid_request",
                    &format!("Missing required parameter: {name}."),
                );
            }
        }
        let resource = field("audience")
            .strip_prefix("//iam.googleapis.com/")
            .unwrap_or("")
            .to_owned();
        let spec = self.providers.lock().unwrap().get(&resource).cloned();
        let Some(spec) = spec.filter(|s| !s.disabled) else {
            return oauth_error("invalid_target", INVALID_TARGET);
        };
        let token = field("subject_token");
        let grant = |d: String| oauth_error("invalid_grant", &d);
        let kid = match jwks::signed_kid(token) {
            Ok(k) => k,
            Err(d) => return grant(d),
        };
        let jwk = match self
            .keys
            .key_for(&resource, &spec.issuer, &spec.jwks, &kid)
            .await
        {
            Ok(k) => k,
            Err(d) => return grant(d),
        };
        let claims = match jwks::verified_claims(token, &jwk) {
            Ok(c) => c,
            Err(d) => return grant(d),
        };
        match claims["iss"].as_str() {
            Some(iss) if iss == spec.issuer => {}
            _ => {
                return grant(format!(
                    "The issuer in ID Token [{}] does not match the expected ones [{}].",
                    claims["iss"].as_str().unwrap_or(""),
                    spec.issuer
                ))
            }
        }
        let audiences = spec.audiences();
        let aud_ok = match &claims["aud"] {
            Value::String(a) => audiences.contains(a),
            Value::Array(a) => a
                .iter()
                .any(|v| v.as_str().is_some_and(|s| audiences.iter().any(|x| x == s))),
            _ => false,
        };
        if !aud_ok {
            return grant(format!(
                "The audience in ID Token [{}] does not match the expected audience.",
                Self::audience_text(&claims["aud"])
            ));
        }
        let t = now();
        let Some(exp) = seconds(&claims["exp"]) else {
            return grant("The ID Token has no valid exp claim.".into());
        };
        if exp <= t {
            return grant(format!("ID Token expired at {exp}."));
        }
        let Some(iat) = seconds(&claims["iat"]) else {
            return grant("The ID Token has no valid iat claim.".into());
        };
        if iat > t + *self.clock_skew_s.lock().unwrap() {
            return grant(format!("ID Token issued at {iat} is in the future."));
        }
        if iat < t - *self.max_token_age_s.lock().unwrap() {
            return grant(format!("ID Token issued at {iat} is stale to sign-in."));
        }
        // attribute mapping google.subject=assertion.sub
        let subject = match claims["sub"].as_str() {
            Some(s) if !s.is_empty() => s.to_owned(),
            _ => return grant("The mapped attribute google.subject must not be empty.".into()),
        };
        if subject.len() > 127 {
            return grant("The size of mapped attribute google.subject exceeds the 127 bytes limit. Either modify your attribute mapping or the incoming assertion to produce a mapped attribute that is less than 127 bytes.".into());
        }
        if let Some(pinned) = &spec.subject_condition {
            if *pinned != subject {
                // Google's own error code for it (not listed in PROTOCOLS.md, whose list
                // has invalid_grant, invalid_request and invalid_target only).
                return oauth_error("unauthorized_client", CONDITION_REJECTED);
            }
        }
        let ttl = *self.federated_ttl_s.lock().unwrap();
        let access_token = random_token("ya29.fed-");
        self.federated.lock().unwrap().insert(
            access_token.clone(),
            FederatedToken {
                principal: principal(&spec.project_number, &spec.pool_id, &subject),
                expires_at: t + ttl,
            },
        );
        let expires_in = if *self.expires_in_as_string.lock().unwrap() {
            json!(ttl.to_string())
        } else {
            json!(ttl)
        };
        (
            200,
            json!({
                "access_token": access_token,
                "issued_token_type": ACCESS_TOKEN_TYPE,
                "token_type": "Bearer",
                "expires_in": expires_in,
            })
            .to_string(),
        )
    }
}
