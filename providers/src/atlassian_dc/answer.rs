//! What a Data Center instance answers: who a PAT is, a PAT's `expiringAt` from the PAT
//! list, and a PAT the broker created. Untrusted input (fuzzed): whatever is kept is bounded
//! printable text, and nothing panics.

use secrecy::SecretString;
use serde_json::Value;

/// The user a `myself` / `user/current` answer names (`name`, or `username`): at most 100
/// characters with control characters dropped; `None` when it names none (absent, empty, or
/// only what is dropped), when the name repeats what the request sent (`sent`: the PAT; the
/// name goes into the probe's note and the audit record), or when Confluence describes the
/// caller as `anonymous` (a request whose bearer did not reach it). Who a PAT is decides
/// whether its successor may be promoted: a PAT of nobody in particular is not probed good.
pub fn pat_user(body: &[u8], sent: &[&str]) -> Option<String> {
    let me: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if me.get("type").and_then(Value::as_str) == Some("anonymous") {
        return None;
    }
    let name = me
        .get("name")
        .or_else(|| me.get("username"))
        .and_then(Value::as_str)?;
    if crate::echoes(name, sent) {
        return None;
    }
    let user = crate::quoted_unless_echo(name, 100, sent);
    let named = !user.is_empty() && !crate::echoes(&user, sent);
    named.then_some(user)
}

/// `expiringAt` of PAT `id` in a PAT list (`GET /rest/pat/latest/tokens`), when listed with
/// one of at most 40 printable characters that does not repeat what the request sent
/// (`sent`: the PAT).
pub fn pat_expiry(body: &[u8], id: Option<&str>, sent: &[&str]) -> Option<String> {
    let id = id?;
    let list: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    list.as_array()?
        .iter()
        .find(|t| t.get("id").map(value_text).as_deref() == Some(id))
        .and_then(|t| t.get("expiringAt").and_then(Value::as_str))
        .filter(|s| crate::is_printable(s, 40) && !crate::echoes(s, sent))
        .map(str::to_owned)
}

/// Whether `id` may name a PAT in a path (`DELETE /rest/pat/latest/tokens/{id}`): 1 to 64
/// characters of `[A-Za-z0-9-]`, so no `/`, `..`, `?` or `#` takes the request elsewhere.
/// Ids come from upstream answers and from pasted secrets (`token_id`).
pub fn path_safe_pat_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
}

/// The ids of the PATs named exactly `name` in a PAT list (`GET /rest/pat/latest/tokens`),
/// each [`path_safe_pat_id`]; at most 16.
pub fn pat_ids_named(body: &[u8], name: &str) -> Vec<String> {
    let list: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    list.as_array()
        .map(|all| {
            all.iter()
                .filter(|t| t.get("name").and_then(Value::as_str) == Some(name))
                .filter_map(|t| t.get("id").map(value_text))
                .filter(|i| path_safe_pat_id(i))
                .take(16)
                .collect()
        })
        .unwrap_or_default()
}

/// A created PAT (`POST /rest/pat/latest/tokens`): its `rawToken` (1 to 1,024 printable
/// characters) and its `id` when that is 1 to 64 printable characters.
///
/// # Errors
/// When the answer is not JSON or carries no usable `rawToken`.
pub fn created_pat(body: &[u8]) -> Result<(SecretString, Option<String>), String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "the PAT answer is not JSON")?;
    let raw = v
        .get("rawToken")
        .and_then(Value::as_str)
        .filter(|t| crate::is_printable(t, 1024))
        .ok_or("the PAT answer has no rawToken")?;
    let id = v
        .get("id")
        .map(value_text)
        .filter(|i| crate::is_printable(i, 64));
    Ok((SecretString::from(raw.to_owned()), id))
}

/// A JSON id as text (Data Center's ids are numbers; strings are taken as they are).
pub(super) fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An instance (or a proxy before it) that names the user, or the expiry, with the PAT
    /// it was sent: withheld, never put into the probe's note or the audit record.
    /// An answer that names nobody in particular: no user, so the probe fails.
    #[test]
    fn an_answer_naming_no_user_names_none() {
        for body in [
            &br#"{}"#[..],
            br#"{"name":""}"#,
            br#"{"name":"\u0007"}"#,
            br#"{"name":7}"#,
            br#"{"type":"anonymous","username":"anonymous"}"#,
            b"not json",
        ] {
            assert_eq!(
                pat_user(body, &["pat"]),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            pat_user(br#"{"type":"known","username":"scan"}"#, &["pat"]).as_deref(),
            Some("scan")
        );
    }

    #[test]
    fn what_repeats_the_pat_is_not_kept() {
        let pat = "NjQ2MzE5ODQ0NTc3OqZ1dC9yJtk5";
        assert_eq!(
            pat_user(br#"{"name":"alice"}"#, &[pat]).as_deref(),
            Some("alice")
        );
        let echoed = format!(r#"{{"name":"Bearer {pat}"}}"#);
        assert_eq!(pat_user(echoed.as_bytes(), &[pat]), None);
        let list = format!(r#"[{{"id":1,"expiringAt":"{}"}}]"#, &pat[..20]);
        assert_eq!(pat_expiry(list.as_bytes(), Some("1"), &[pat]), None);
        let list = r#"[{"id":1,"expiringAt":"2027-01-01T00:00:00.000+0000"}]"#;
        assert!(pat_expiry(list.as_bytes(), Some("1"), &[pat]).is_some());
    }
}
