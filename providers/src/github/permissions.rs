//! GitHub App permissions and repository selections: parsing, the ceiling, narrowing.
//!
//! GitHub permission keys use underscores (`pull_requests`), levels are `read`, `write` and
//! (for a few) `admin`. A binding's ceiling says which permissions and repositories a token
//! may ever carry; a resolve may ask for fewer permissions, lower levels or a repository
//! subset — never more. Unnarrowed resolves request exactly the ceiling, so a token never
//! carries what the installation happens to grant beyond it.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

/// Permission names GitHub Apps can request (REST "app permissions"; a name outside this list
/// is refused as malformed).
pub const KNOWN_PERMISSIONS: &[&str] = &[
    "actions",
    "administration",
    "checks",
    "codespaces",
    "contents",
    "dependabot_secrets",
    "deployments",
    "environments",
    "issues",
    "merge_queues",
    "metadata",
    "packages",
    "pages",
    "pull_requests",
    "repository_custom_properties",
    "repository_hooks",
    "repository_projects",
    "secret_scanning_alerts",
    "secrets",
    "security_events",
    "single_file",
    "statuses",
    "vulnerability_alerts",
    "workflows",
    "members",
    "organization_administration",
    "organization_custom_roles",
    "organization_custom_org_roles",
    "organization_custom_properties",
    "organization_copilot_seat_management",
    "organization_announcement_banners",
    "organization_events",
    "organization_hooks",
    "organization_personal_access_tokens",
    "organization_personal_access_token_requests",
    "organization_plan",
    "organization_projects",
    "organization_packages",
    "organization_secrets",
    "organization_self_hosted_runners",
    "organization_user_blocking",
    "team_discussions",
    "email_addresses",
    "followers",
    "git_ssh_keys",
    "gpg_keys",
    "interaction_limits",
    "profile",
    "starring",
];

/// A permission level, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `read`
    Read,
    /// `write`
    Write,
    /// `admin`
    Admin,
}

impl Level {
    pub(crate) fn parse(s: &str) -> Option<Level> {
        match s {
            "read" => Some(Level::Read),
            "write" => Some(Level::Write),
            "admin" => Some(Level::Admin),
            _ => None,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Read => "read",
            Level::Write => "write",
            Level::Admin => "admin",
        }
    }
}

/// Validated permissions, sorted by name.
pub type Permissions = BTreeMap<String, Level>;

/// Parses `{"name": "level", …}`.
///
/// # Errors
/// On unknown names or levels.
pub fn parse_permissions(v: &Value) -> Result<Permissions, String> {
    let obj = v
        .as_object()
        .ok_or("permissions must be an object of name: level")?;
    let mut out = Permissions::new();
    for (name, level) in obj {
        if !KNOWN_PERMISSIONS.contains(&name.as_str()) {
            return Err(format!(
                "unknown GitHub permission {name:?} (names use underscores, e.g. pull_requests)"
            ));
        }
        let level = level
            .as_str()
            .and_then(Level::parse)
            .ok_or_else(|| format!("permission {name}: level must be read, write or admin"))?;
        out.insert(name.clone(), level);
    }
    Ok(out)
}

/// Serializes permissions for GitHub and cache keys.
pub fn permissions_json(p: &Permissions) -> Value {
    Value::Object(
        p.iter()
            .map(|(k, v)| (k.clone(), json!(v.as_str())))
            .collect(),
    )
}

fn valid_repo_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A ceiling: `{"permissions": {...}, "repositories": ["name", …] | "all"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubCeiling {
    /// Most a token may carry.
    pub permissions: Permissions,
    /// Repository names a token may cover; None = every repository of the installation.
    pub repositories: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CeilingDoc {
    #[serde(default)]
    description: Option<String>,
    permissions: Value,
    #[serde(default)]
    repositories: Option<Value>,
}

fn parse_repos(v: &Value) -> Result<Option<Vec<String>>, String> {
    match v {
        Value::String(s) if s == "all" => Ok(None),
        Value::Array(items) => {
            let mut names = Vec::new();
            for i in items {
                let n = i
                    .as_str()
                    .filter(|n| valid_repo_name(n))
                    .ok_or("repositories must be repository names (without owner)")?;
                names.push(n.to_owned());
            }
            if names.is_empty() || names.len() > 500 {
                return Err("repositories must list 1-500 names".into());
            }
            names.sort();
            names.dedup();
            Ok(Some(names))
        }
        _ => Err("repositories must be \"all\" or an array of names".into()),
    }
}

impl GithubCeiling {
    /// Parses a ceiling document.
    ///
    /// # Errors
    /// When malformed.
    pub fn from_value(v: &Value) -> Result<GithubCeiling, String> {
        let doc: CeilingDoc =
            serde_json::from_value(v.clone()).map_err(|e| format!("GitHub ceiling: {e}"))?;
        let _ = doc.description;
        let permissions = parse_permissions(&doc.permissions)?;
        // A token request with no permissions gets every permission of the installation:
        // an empty ceiling would be the widest one.
        if permissions.is_empty() {
            return Err("GitHub ceiling: permissions must name at least one permission".into());
        }
        Ok(GithubCeiling {
            permissions,
            repositories: match &doc.repositories {
                None => None,
                Some(r) => parse_repos(r)?,
            },
        })
    }

    /// Whether `p` is within the ceiling (names present, levels not higher).
    pub fn allows_permissions(&self, p: &Permissions) -> Result<(), String> {
        for (name, level) in p {
            match self.permissions.get(name) {
                Some(max) if level <= max => {}
                Some(max) => {
                    return Err(format!(
                        "permission {name}: {} exceeds the ceiling's {}",
                        level.as_str(),
                        max.as_str()
                    ))
                }
                None => return Err(format!("permission {name} is not in the ceiling")),
            }
        }
        Ok(())
    }

    /// Whether `self` is within `outer`.
    pub fn within(&self, outer: &GithubCeiling) -> Result<(), String> {
        outer.allows_permissions(&self.permissions)?;
        if let Some(outer_repos) = &outer.repositories {
            match &self.repositories {
                None => {
                    return Err(
                        "repositories \"all\" exceeds a ceiling that lists repositories".into(),
                    )
                }
                Some(mine) => {
                    if let Some(r) = mine.iter().find(|r| !outer_repos.contains(r)) {
                        return Err(format!("repository {r} is outside the ceiling"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// What one mint asks GitHub for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// Permissions (never empty: at least the ceiling's).
    pub permissions: Permissions,
    /// Repository names, or None for the installation's selection.
    pub repositories: Option<Vec<String>>,
}

impl TokenRequest {
    /// The full ceiling.
    pub fn from_ceiling(c: &GithubCeiling) -> TokenRequest {
        TokenRequest {
            permissions: c.permissions.clone(),
            repositories: c.repositories.clone(),
        }
    }

    /// Canonical JSON (cache key and GitHub body).
    pub fn to_value(&self) -> Value {
        let mut v = json!({ "permissions": permissions_json(&self.permissions) });
        if let Some(r) = &self.repositories {
            v["repositories"] = json!(r);
        }
        v
    }

    /// Parses what [`TokenRequest::to_value`] wrote.
    pub fn from_value(v: &Value) -> Option<TokenRequest> {
        Some(TokenRequest {
            permissions: parse_permissions(v.get("permissions")?).ok()?,
            repositories: match v.get("repositories") {
                None => None,
                Some(r) => parse_repos(r).ok()?,
            },
        })
    }
}

/// Validates `{"permissions": {...}?, "repositories": [...]?}` against `ceiling`. Errors are
/// `(exceeds, message)`.
pub fn narrow(narrow: &Value, ceiling: &GithubCeiling) -> Result<TokenRequest, (bool, String)> {
    let obj = narrow
        .as_object()
        .ok_or((false, "narrow must be an object".to_owned()))?;
    if let Some(k) = obj
        .keys()
        .find(|k| *k != "permissions" && *k != "repositories")
    {
        return Err((
            false,
            format!("unknown narrow key {k:?} (permissions, repositories)"),
        ));
    }
    let permissions = match obj.get("permissions") {
        None => ceiling.permissions.clone(),
        Some(p) => {
            let p = parse_permissions(p).map_err(|e| (false, e))?;
            if p.is_empty() {
                return Err((false, "permissions must not be empty".into()));
            }
            ceiling.allows_permissions(&p).map_err(|e| (true, e))?;
            p
        }
    };
    let repositories = match obj.get("repositories") {
        None => ceiling.repositories.clone(),
        Some(r) => {
            let wanted = parse_repos(r).map_err(|e| (false, e))?;
            match (&wanted, &ceiling.repositories) {
                (None, Some(_)) => {
                    return Err((
                        true,
                        "\"all\" repositories exceeds the ceiling's list".into(),
                    ))
                }
                (Some(w), Some(allowed)) => {
                    if let Some(x) = w.iter().find(|x| !allowed.contains(x)) {
                        return Err((true, format!("repository {x} is not in the ceiling")));
                    }
                }
                _ => {}
            }
            wanted
        }
    };
    Ok(TokenRequest {
        permissions,
        repositories,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceiling() -> GithubCeiling {
        GithubCeiling::from_value(&json!({"permissions": {"contents": "read", "metadata": "read", "issues": "write"}, "repositories": ["api", "web"]})).unwrap()
    }

    #[test]
    fn narrowing() {
        let c = ceiling();
        let n = narrow(
            &json!({"permissions": {"contents": "read"}, "repositories": ["api"]}),
            &c,
        )
        .unwrap();
        assert_eq!(n.repositories, Some(vec!["api".to_owned()]));
        assert_eq!(n.permissions.len(), 1);
        for (req, exceeds) in [
            (json!({"permissions": {"contents": "write"}}), true),
            (json!({"permissions": {"administration": "read"}}), true),
            (json!({"repositories": ["secret-repo"]}), true),
            (json!({"repositories": "all"}), true),
            (json!({"permissions": {"pull-requests": "read"}}), false),
            (json!({"permissions": {"contents": "owner"}}), false),
            (json!({"permissions": {}}), false),
            (json!({"scopes": []}), false),
        ] {
            assert_eq!(narrow(&req, &c).unwrap_err().0, exceeds, "{req}");
        }
        let full = narrow(&json!({}), &c).unwrap();
        assert_eq!(full, TokenRequest::from_ceiling(&c));
        assert_eq!(TokenRequest::from_value(&full.to_value()), Some(full));
    }

    #[test]
    fn ceilings_nest() {
        let c = ceiling();
        let inner = GithubCeiling::from_value(
            &json!({"permissions": {"contents": "read"}, "repositories": ["api"]}),
        )
        .unwrap();
        assert!(inner.within(&c).is_ok());
        let wide = GithubCeiling::from_value(
            &json!({"permissions": {"contents": "read"}, "repositories": "all"}),
        )
        .unwrap();
        assert!(wide.within(&c).is_err());
        let higher =
            GithubCeiling::from_value(&json!({"permissions": {"issues": "admin"}})).unwrap();
        assert!(higher.within(&c).is_err());
    }

    #[test]
    fn an_empty_ceiling_is_refused() {
        let err = GithubCeiling::from_value(&json!({"permissions": {}})).unwrap_err();
        assert!(err.contains("at least one permission"), "{err}");
        assert!(
            GithubCeiling::from_value(&json!({"permissions": {}, "repositories": ["a"]})).is_err()
        );
        assert!(GithubCeiling::from_value(&json!({"permissions": {"contents": "read"}})).is_ok());
    }
}
