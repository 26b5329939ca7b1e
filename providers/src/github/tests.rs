//! Unit tests of the GitHub App provider (configuration, rate-limit answers, credentials).

use super::answer::rate_limit_wait;
use super::*;

#[test]
fn rate_limits_are_told_apart_from_refusals() {
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs());
    // Secondary limit: retry-after wins, on 403 and 429.
    assert_eq!(secs(rate_limit_wait(429, "", Some(7), None, None)), Some(7));
    assert_eq!(
        secs(rate_limit_wait(
            403,
            "You have exceeded a secondary rate limit.",
            Some(3),
            None,
            None
        )),
        Some(3)
    );
    // Primary limit: until the reset.
    let reset = OffsetDateTime::now_utc().unix_timestamp() + 120;
    let w = secs(rate_limit_wait(
        403,
        "API rate limit exceeded",
        None,
        Some(0),
        Some(reset),
    ))
    .unwrap();
    assert!((119..=120).contains(&w), "{w}");
    // A rate limit that names no time: a minute; a reset in the past: one second.
    assert_eq!(secs(rate_limit_wait(429, "", None, None, None)), Some(60));
    assert_eq!(
        secs(rate_limit_wait(
            403,
            "secondary rate limit",
            None,
            None,
            None
        )),
        Some(60)
    );
    assert_eq!(
        secs(rate_limit_wait(403, "", None, Some(0), Some(0))),
        Some(1)
    );
    // At most an hour.
    assert_eq!(
        secs(rate_limit_wait(429, "", Some(86_400), None, None)),
        Some(3600)
    );
    // Not rate limits: a suspended installation, a plain 403, 5xx, 404.
    assert_eq!(
        rate_limit_wait(
            403,
            "This installation has been suspended",
            None,
            Some(4999),
            None
        ),
        None
    );
    assert_eq!(
        rate_limit_wait(
            403,
            "Resource not accessible by integration",
            None,
            None,
            None
        ),
        None
    );
    assert_eq!(
        rate_limit_wait(503, "Service Unavailable", Some(5), None, None),
        None
    );
    assert_eq!(rate_limit_wait(404, "Not Found", None, Some(0), None), None);
}

#[test]
fn error_codes_of_githubs_answers() {
    let answer = |status: u16, message: &str, rate_limit: Option<Duration>| Answer {
        status,
        body: json!({ "message": message }),
        request_id: Some("F00D:1".into()),
        rate_limit,
        echoed_token: false,
    };
    let unavailable = |e: &ProviderError| matches!(e, ProviderError::Unavailable { .. });
    let withdrawn = |e: &ProviderError| {
        matches!(
            e,
            ProviderError::Denied {
                trust_broken: true,
                ..
            }
        )
    };
    assert!(withdrawn(&error_for(answer(404, "Not Found", None), 1)));
    assert!(withdrawn(&error_for(
        answer(403, "This installation has been suspended", None),
        1
    )));
    assert!(!withdrawn(&error_for(answer(422, "not granted", None), 1)));
    for s in [500, 502, 503, 504] {
        assert!(
            unavailable(&error_for(answer(s, "Server Error", None), 1)),
            "{s}"
        );
    }
    let limited = error_for(
        answer(429, "secondary rate limit", Some(Duration::from_secs(5))),
        1,
    );
    assert!(unavailable(&limited));
    assert_eq!(limited.upstream_request_id(), Some("F00D:1"));
    assert!(!unavailable(&error_for(answer(403, "Forbidden", None), 1)));
}

/// GitHub's `message` goes into error messages, logs and audit records: an upstream's line
/// breaks (a forged log line) are dropped, and it is cut to 200 characters.
#[test]
fn an_upstream_message_is_quoted_without_control_characters() {
    let m = super::answer::message_of(
        &serde_json::json!({"message": "Bad credentials\r\nlevel=error forged=yes"}),
    );
    assert_eq!(m, "Bad credentialslevel=error forged=yes");
    let long = super::answer::message_of(&serde_json::json!({"message": "x".repeat(500)}));
    assert_eq!(long.len(), 200);
}

/// A token answer's named repositories are one account's: the binding's pinned account, or,
/// for a binding that pins none, the first listed's. Another owner, or none, is refused.
#[test]
fn a_token_answers_repositories_are_one_accounts() {
    let wanted = super::permissions::TokenRequest::from_value(&serde_json::json!({
        "permissions": {"contents": "read"}, "repositories": ["api", "web"]
    }))
    .unwrap();
    let answer = |owners: [Option<u64>; 2]| {
        let repos: Vec<serde_json::Value> = ["api", "web"]
            .iter()
            .zip(owners)
            .map(|(name, owner)| match owner {
                Some(id) => serde_json::json!({"name": name, "owner": {"id": id}}),
                None => serde_json::json!({"name": name}),
            })
            .collect();
        Answer {
            status: 201,
            body: serde_json::json!({
                "token": "ghs_abc", "expires_at": "2999-01-01T00:00:00Z",
                "permissions": {"contents": "read"}, "repository_selection": "selected",
                "repositories": repos,
            }),
            request_id: None,
            rate_limit: None,
            echoed_token: false,
        }
    };
    let judged = |owners, account| {
        super::answer::to_credential(answer(owners), 7, account, &wanted).map(|_| ())
    };
    assert!(judged([Some(1), Some(1)], Some(1)).is_ok());
    assert!(judged([Some(1), Some(1)], None).is_ok());
    for (owners, account) in [
        ([Some(1), Some(2)], Some(1)),
        ([Some(2), Some(2)], Some(1)),
        ([Some(1), Some(2)], None),
        ([Some(1), None], None),
        ([None, None], None),
    ] {
        let e = judged(owners, account).unwrap_err().to_string();
        assert!(
            e.contains("belongs to account"),
            "{owners:?} {account:?}: {e}"
        );
    }
}
