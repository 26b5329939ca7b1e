//! GitHub installation token answers: the token, expiry and grant checks a mint applies to
//! whatever the upstream sends, against a narrowed request and the installation's selection;
//! the rate-limit headers of any answer; and the node bound every GitHub answer is held to before it is parsed (it must never
//! count fewer nodes than serde_json builds).
#![no_main]
use libfuzzer_sys::fuzz_target;

/// Nodes as serde_json builds them: values, and keys of objects.
fn nodes(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(nodes).sum::<usize>(),
        serde_json::Value::Object(o) => 1 + o.values().map(|v| 1 + nodes(v)).sum::<usize>(),
        _ => 1,
    }
}

/// The input's lines as `retry-after`, `x-ratelimit-remaining` and `x-ratelimit-reset`
/// (GitHub's rate-limit headers), its first byte choosing the status.
fn rate_limit(data: &[u8]) {
    let status = match data.first().copied().unwrap_or(0) % 4 {
        0 => 429,
        1 | 2 => 403,
        _ => 200,
    };
    let mut headers = http::HeaderMap::new();
    let names = ["retry-after", "x-ratelimit-remaining", "x-ratelimit-reset"];
    for (name, line) in names
        .iter()
        .zip(data.get(1..).unwrap_or(&[]).split(|b| *b == b'\n'))
    {
        if let Ok(v) = http::HeaderValue::from_bytes(line) {
            headers.insert(*name, v);
        }
    }
    let message = if data.len() % 2 == 0 {
        "API rate limit exceeded"
    } else {
        ""
    };
    let wait = credbroker_providers::github::rate_limit_of(status, &headers, message);
    match status {
        // A 429 is always a limit; a success never is.
        429 => assert!(wait.is_some()),
        200 => assert!(wait.is_none()),
        _ => {}
    }
    // Whatever GitHub sends, a pause is between a second and an hour.
    if let Some(w) = wait {
        assert!(
            w >= std::time::Duration::from_secs(1) && w <= std::time::Duration::from_secs(3600)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    rate_limit(data);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let bound = credbroker_providers::json_node_bound(data, usize::MAX);
        assert!(nodes(&v) <= bound, "{} nodes, bound {bound}", nodes(&v));
    }
    let named = serde_json::json!({
        "permissions": {"contents": "read", "issues": "write"},
        "repositories": ["api", "web"],
    });
    let all = serde_json::json!({"permissions": {"metadata": "read"}});
    for wanted in [&named, &all] {
        if let Ok(cred) = credbroker_providers::github::read_token_answer(data, Some("id"), wanted)
        {
            // Whatever was accepted is bounded: it expires, within the hour.
            let expires = cred.expires_at.expect("an installation token expires");
            assert!(expires <= time::OffsetDateTime::now_utc() + time::Duration::hours(1));
        }
    }
});
