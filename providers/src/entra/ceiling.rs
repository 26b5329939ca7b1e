//! The Azure ceiling (policies/azure.json) and an `entra_multi_tenant` binding's
//! configuration, narrowing and ceiling.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{json, Value};

use super::claims::guid;

/// Azure built-in roles that write or grant access: never in a ceiling, whatever the file
/// says (Owner, Contributor, User Access Administrator, Role Based Access Control
/// Administrator).
pub const FORBIDDEN_ROLES: &[(&str, &str)] = &[
    ("8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "Owner"),
    ("b24988ac-6180-42a0-ab88-20f7382dd24c", "Contributor"),
    (
        "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
        "User Access Administrator",
    ),
    (
        "f58310d9-a9f6-439a-9e8d-f62e7b41a168",
        "Role Based Access Control Administrator",
    ),
];

/// What a token or role assignment may carry: Graph application permissions (all
/// `*.Read.All`) and ARM role definition ids (lower-case GUID → name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureCeiling {
    /// Graph application permissions.
    pub graph: BTreeSet<String>,
    /// ARM role definitions.
    pub arm_roles: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CeilingFile {
    #[serde(default)]
    description: Option<String>,
    graph_application_permissions: Vec<String>,
    #[serde(default)]
    arm_role_definitions: BTreeMap<String, String>,
}

impl AzureCeiling {
    /// Parses policies/azure.json (or a binding's ceiling of the same shape).
    ///
    /// # Errors
    /// When malformed, when a Graph permission is not `*.Read.All`, or an ARM role is not a
    /// GUID or is a role that writes.
    pub fn from_value(v: &Value) -> Result<AzureCeiling, String> {
        let f: CeilingFile =
            serde_json::from_value(v.clone()).map_err(|e| format!("azure ceiling: {e}"))?;
        let _ = f.description;
        let mut graph = BTreeSet::new();
        for p in f.graph_application_permissions {
            let name_ok = p.len() <= 100
                && p.ends_with(".Read.All")
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
            if !name_ok {
                return Err(format!(
                    "Graph permission {:?} is not a read-only *.Read.All application permission",
                    p.chars().take(100).collect::<String>()
                ));
            }
            graph.insert(p);
        }
        let mut arm_roles = BTreeMap::new();
        for (id, name) in f.arm_role_definitions {
            let id = guid(&id).ok_or_else(|| {
                format!(
                    "ARM role definition id {:?} is not a GUID",
                    id.chars().take(64).collect::<String>()
                )
            })?;
            if let Some((_, forbidden)) = FORBIDDEN_ROLES.iter().find(|(f, _)| *f == id) {
                return Err(format!(
                    "ARM role {id} ({forbidden}) writes or grants access"
                ));
            }
            arm_roles.insert(id, name.chars().take(100).collect());
        }
        Ok(AzureCeiling { graph, arm_roles })
    }

    /// Checks `self` lies within `outer`.
    ///
    /// # Errors
    /// Naming what exceeds it.
    pub fn within(&self, outer: &AzureCeiling) -> Result<(), String> {
        if let Some(p) = self.graph.difference(&outer.graph).next() {
            return Err(format!(
                "Graph permission {p} is outside policies/azure.json"
            ));
        }
        if let Some(r) = self
            .arm_roles
            .keys()
            .find(|r| !outer.arm_roles.contains_key(*r))
        {
            return Err(format!("ARM role {r} is outside policies/azure.json"));
        }
        Ok(())
    }

    /// The ceiling as JSON (policy file shape).
    pub fn to_value(&self) -> Value {
        json!({
            "graph_application_permissions": self.graph,
            "arm_role_definitions": self.arm_roles,
        })
    }
}

/// A resource a token may be requested for (one per token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    /// Microsoft Graph.
    Graph,
    /// Azure Resource Manager.
    Arm,
}

impl Resource {
    /// The name in configurations and narrowings.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Graph => "graph",
            Resource::Arm => "arm",
        }
    }

    fn parse(s: &str) -> Option<Resource> {
        match s {
            "graph" => Some(Resource::Graph),
            "arm" => Some(Resource::Arm),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    tenant_id: String,
    #[serde(default)]
    resources: Option<Vec<String>>,
    #[serde(default)]
    arm_scopes: Vec<String>,
}

/// A binding's configuration, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraConfig {
    /// The customer's tenant GUID (lower case).
    pub tenant: String,
    /// Resources the binding may request, the first the default.
    pub resources: Vec<Resource>,
    /// ARM scopes the probe checks our role assignments at (`/subscriptions/{id}` or
    /// `/providers/Microsoft.Management/managementGroups/{name}`).
    pub arm_scopes: Vec<String>,
}

fn arm_scope_ok(s: &str) -> bool {
    if let Some(sub) = s.strip_prefix("/subscriptions/") {
        return guid(sub).is_some();
    }
    if let Some(mg) = s.strip_prefix("/providers/Microsoft.Management/managementGroups/") {
        return !mg.is_empty()
            && mg != "."
            && mg != ".."
            && mg.len() <= 90
            && mg.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'(' | b')')
            });
    }
    false
}

/// Parses a binding's configuration.
///
/// # Errors
/// When malformed: the tenant must be a GUID (`common`, `organizations` and domain names
/// are refused), resources `graph`/`arm` without repeats, ARM scopes well-formed.
pub fn parse_config(config: &Value) -> Result<EntraConfig, String> {
    let c: ConfigFile = serde_json::from_value(config.clone())
        .map_err(|e| format!("entra_multi_tenant config: {e}"))?;
    let tenant = guid(&c.tenant_id).ok_or(
        "tenant_id must be the customer's tenant GUID (not common, organizations or a domain name)",
    )?;
    let names = c.resources.unwrap_or_else(|| vec!["graph".into()]);
    let mut resources = Vec::new();
    for n in &names {
        let r = Resource::parse(n).ok_or_else(|| {
            format!(
                "resource {:?} is not graph or arm",
                n.chars().take(40).collect::<String>()
            )
        })?;
        if resources.contains(&r) {
            return Err(format!("resource {n} given twice"));
        }
        resources.push(r);
    }
    if resources.is_empty() {
        return Err("resources must name graph and/or arm".into());
    }
    if c.arm_scopes.len() > 50 {
        return Err("at most 50 arm_scopes".into());
    }
    for s in &c.arm_scopes {
        if !arm_scope_ok(s) {
            return Err(format!(
                "arm scope {:?} is not /subscriptions/{{GUID}} or /providers/Microsoft.Management/managementGroups/{{name}}",
                s.chars().take(120).collect::<String>()
            ));
        }
    }
    if !c.arm_scopes.is_empty() && !resources.contains(&Resource::Arm) {
        return Err("arm_scopes given but arm is not among the resources".into());
    }
    // ARM tokens carry no roles: what they may do is checked at these scopes on every mint.
    if resources.contains(&Resource::Arm) && c.arm_scopes.is_empty() {
        return Err("arm needs arm_scopes: the subscriptions or management groups whose role assignments are checked".into());
    }
    Ok(EntraConfig {
        tenant,
        resources,
        arm_scopes: c.arm_scopes,
    })
}

/// Parses a resolve's `narrow`: `{"resource": "graph"|"arm"}`, one resource per token.
///
/// # Errors
/// `(exceeds, message)`: `exceeds` when well-formed but not among the binding's resources.
pub fn parse_narrowing(narrow: &Value, allowed: &[Resource]) -> Result<Resource, (bool, String)> {
    let obj = narrow.as_object().ok_or((
        false,
        "narrow must be an object {\"resource\": \"graph\"|\"arm\"}".to_owned(),
    ))?;
    if let Some(k) = obj.keys().find(|k| k.as_str() != "resource") {
        return Err((
            false,
            format!(
                "unknown narrow field {:?}: Entra tokens carry every granted permission of one resource; only \"resource\" can be chosen",
                k.chars().take(40).collect::<String>()
            ),
        ));
    }
    let name = obj.get("resource").and_then(Value::as_str).ok_or((
        false,
        "narrow.resource must be \"graph\" or \"arm\"".to_owned(),
    ))?;
    let r = Resource::parse(name).ok_or((
        false,
        "narrow.resource must be \"graph\" or \"arm\"".to_owned(),
    ))?;
    if !allowed.contains(&r) {
        return Err((
            true,
            format!("resource {name} is not among the binding's resources"),
        ));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_policy_parses() {
        let v: Value = serde_json::from_str(include_str!("../../../policies/azure.json")).unwrap();
        let c = AzureCeiling::from_value(&v).unwrap();
        assert!(c.graph.contains("Directory.Read.All"));
        assert!(c
            .arm_roles
            .contains_key("acdd72a7-3385-48ef-bd42-f606fba81ae7"));
    }

    #[test]
    fn write_permissions_and_roles_are_refused() {
        for bad in [
            json!({"graph_application_permissions": ["Directory.ReadWrite.All"]}),
            json!({"graph_application_permissions": [], "arm_role_definitions": {"b24988ac-6180-42a0-ab88-20f7382dd24c": "x"}}),
            json!({"graph_application_permissions": [], "arm_role_definitions": {"Reader": "x"}}),
        ] {
            assert!(AzureCeiling::from_value(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn configs() {
        let t = "11111111-2222-3333-4444-555555555555";
        assert_eq!(
            parse_config(&json!({"tenant_id": t})).unwrap().resources,
            vec![Resource::Graph]
        );
        for bad in [
            json!({"tenant_id": "common"}),
            json!({"tenant_id": "contoso.onmicrosoft.com"}),
            json!({"tenant_id": t, "resources": ["graph", "graph"]}),
            json!({"tenant_id": t, "resources": ["vault"]}),
            json!({"tenant_id": t, "arm_scopes": ["/subscriptions/x"], "resources": ["arm"]}),
            json!({"tenant_id": t, "arm_scopes": [format!("/subscriptions/{t}")]}),
            json!({"tenant_id": t, "extra": 1}),
            json!({"tenant_id": t, "resources": ["arm"]}),
            json!({"tenant_id": t, "resources": ["arm"], "arm_scopes": ["/providers/Microsoft.Management/managementGroups/.."]}),
        ] {
            assert!(parse_config(&bad).is_err(), "{bad}");
        }
        let allowed = [Resource::Graph];
        assert!(
            parse_narrowing(&json!({"resource": "arm"}), &allowed)
                .unwrap_err()
                .0
        );
        assert!(
            !parse_narrowing(&json!({"resource": "x"}), &allowed)
                .unwrap_err()
                .0
        );
        assert_eq!(
            parse_narrowing(&json!({"resource": "graph"}), &allowed).unwrap(),
            Resource::Graph
        );
    }
}
