//! GitHub installation token answers: the token, expiry and grant checks a mint applies to
//! whatever the upstream sends, against a narrowed request and the installation's selection;
//! and the node bound every GitHub answer is held to before it is parsed (it must never
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

fuzz_target!(|data: &[u8]| {
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
