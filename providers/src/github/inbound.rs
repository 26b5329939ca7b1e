//! What the App's callbacks carry, parsed strictly before anything is believed: the
//! webhook signature (constant time), the setup redirect's query and the `installation`
//! event's body. Each parser never panics on any input (fuzzed).

use serde_json::Value;

use super::installation_identifier;
use crate::{CallbackEvent, SetupRedirect};
use secrecy::SecretString;
use serde_json::json;

/// Verifies `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(body)>` in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    aws_lc_rs::hmac::verify(&key, body, &sig).is_ok()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// Parses a setup redirect's query (`installation_id`, `setup_action`, `state`). Never panics
/// on any input (fuzzed).
///
/// # Errors
/// A message naming what is missing or malformed.
pub fn parse_setup_query(query: &str) -> Result<SetupRedirect, String> {
    let state = query_param(query, "state")
        .filter(|s| !s.is_empty())
        .ok_or("state is missing")?;
    if !state.bytes().all(|b| b.is_ascii_alphanumeric()) || state.len() > 128 {
        return Err("state is malformed".into());
    }
    let installation: u64 = query_param(query, "installation_id")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .ok_or("installation_id is missing or not a number")?;
    let action = query_param(query, "setup_action").unwrap_or_else(|| "install".into());
    if !matches!(action.as_str(), "install" | "update" | "request") {
        return Err("setup_action is not install, update or request".into());
    }
    // User authorization during installation: GitHub sends the person who installed back
    // with a one-time code. Without it nothing proves who installed.
    let code = query_param(query, "code")
        .filter(|c| !c.is_empty())
        .ok_or("code is missing (the App must request user authorization during installation)")?;
    if code.len() > 256
        || !code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("code is malformed".into());
    }
    Ok(SetupRedirect {
        state,
        config: json!({ "installation_id": installation }),
        action,
        code: Some(SecretString::from(code)),
        refused: None,
    })
}

/// Normalizes a webhook body whose signature was already verified. Never panics on any input
/// (fuzzed).
///
/// # Errors
/// A message when the body is malformed.
pub fn parse_installation_event(event: &str, body: &[u8]) -> Result<CallbackEvent, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|_| "webhook body is not JSON".to_owned())?;
    if event != "installation" {
        return Ok(CallbackEvent::Ignored {
            reason: format!(
                "event {:?} is not handled",
                event.chars().take(64).collect::<String>()
            ),
        });
    }
    // X-GitHub-Event is not covered by the signature: the body must have the shape of the
    // event it is said to be (a signed body of another event, relabelled, is refused).
    for foreign in [
        "repositories_added",
        "repositories_removed",
        "repository",
        "changes",
    ] {
        if v.get(foreign).is_some() {
            return Err(format!(
                "the body has {foreign:?}: it is not an installation event"
            ));
        }
    }
    if !v
        .pointer("/installation/account")
        .is_some_and(Value::is_object)
    {
        return Err("installation.account is missing: not an installation event".into());
    }
    let id = v
        .pointer("/installation/id")
        .and_then(Value::as_u64)
        .ok_or("installation.id is missing")?;
    // No age check: `installation.updated_at` is when the installation last changed, not
    // when this event was sent, and refused genuine removals of installations untouched for
    // a week. A replay outliving the broker's memory of deliveries is caught by asking GitHub
    // (`confirm_event`).
    let identifier = installation_identifier(id);
    let action = v.get("action").and_then(Value::as_str).unwrap_or("");
    Ok(match action {
        "deleted" => CallbackEvent::Removed { identifier },
        "suspend" => CallbackEvent::Suspended { identifier },
        "unsuspend" => CallbackEvent::Unsuspended { identifier },
        "new_permissions_accepted" => CallbackEvent::Changed {
            identifier,
            detail: format!(
                "customer accepted new permissions: {}",
                v.pointer("/installation/permissions")
                    .map(Value::to_string)
                    .unwrap_or_default()
                    .chars()
                    .take(500)
                    .collect::<String>()
            ),
        },
        "created" => CallbackEvent::Ignored {
            reason: "installation created: bound by the setup redirect".into(),
        },
        other => CallbackEvent::Ignored {
            reason: format!(
                "installation action {:?} is not handled",
                other.chars().take(64).collect::<String>()
            ),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let secret = b"a-webhook-secret-of-some-length";
        let body = br#"{"action":"deleted"}"#;
        let tag = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret),
            body,
        );
        let header = format!("sha256={}", hex::encode(tag.as_ref()));
        assert!(verify_signature(secret, body, Some(&header)));
        assert!(!verify_signature(
            secret,
            b"{\"action\":\"created\"}",
            Some(&header)
        ));
        assert!(!verify_signature(
            b"other-secret-xxxxxxxxxxxxxxxxx",
            body,
            Some(&header)
        ));
        assert!(!verify_signature(secret, body, None));
        assert!(!verify_signature(secret, body, Some("sha1=abc")));
        assert!(!verify_signature(secret, body, Some("sha256=zz")));
        assert!(!verify_signature(
            secret,
            body,
            Some(&header[..header.len() - 2])
        ));
    }

    #[test]
    fn query_parsing() {
        assert_eq!(query_param("a=1&state=xyz", "state"), Some("xyz".into()));
        assert_eq!(query_param("a=1", "state"), None);
    }
}
