//! The template lint of the web identity variant (credbroker-role-web-identity.json). Its role
//! trusts the broker's OIDC issuer registered as an IAM OIDC provider; every token the issuer
//! mints is signed by the same key, so only the trust condition on `<issuer>:sub` — the
//! binding's broker-generated Subject — keeps one customer's role from accepting a token minted
//! for another (the ExternalId's role in the AssumeRole variant; PROTOCOLS.md "Own OIDC
//! issuer"). So a Federated statement must allow only `sts:AssumeRoleWithWebIdentity`, name the
//! provider by its ARN, and pin both `<issuer>:aud` and `<issuer>:sub` with `StringEquals` to
//! single values without wildcards; any other condition operator is a finding.
//!
//! CloudFormation cannot compute object keys, so the template writes its trust policy as the
//! JSON string of an `Fn::Sub` whose `${IssuerHost}` is the host of `IssuerUrl`; the lint reads
//! that string as JSON, placeholders and all.

use serde_json::Value;

use super::list;

/// The only derivation of `${IssuerHost}` the lint accepts: the host of `IssuerUrl`.
fn issuer_host_expr() -> Value {
    serde_json::json!({ "Fn::Select": [1, { "Fn::Split": ["https://", { "Ref": "IssuerUrl" }] }] })
}

/// The Subject parameter's pattern: `cb-` and 40 alphanumerics, as the broker generates it.
const SUBJECT_PATTERN: &str = "^cb-[A-Za-z0-9]{40}$";

fn is_subject(s: &str) -> bool {
    s.strip_prefix("cb-")
        .is_some_and(|r| r.len() == 40 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// A template is of the web identity variant when it declares the issuer or the subject, or
/// registers an OIDC provider.
pub(super) fn is_web_identity_template(doc: &Value) -> bool {
    doc.pointer("/Parameters/IssuerUrl").is_some()
        || doc.pointer("/Parameters/Subject").is_some()
        || doc
            .get("Resources")
            .and_then(Value::as_object)
            .is_some_and(|r| {
                r.values().any(|res| {
                    res.get("Type").and_then(Value::as_str) == Some("AWS::IAM::OIDCProvider")
                })
            })
}

/// A role's trust policy as JSON: the object itself, or the text of a JSON string or an
/// `Fn::Sub` (with `${…}` placeholders left in place).
///
/// # Errors
/// A finding when the document cannot be read statically: a `Fn::Sub` whose text is not JSON,
/// or whose variables are not exactly `IssuerHost` derived from `IssuerUrl`.
pub(super) fn trust_document(props: &Value) -> Result<Value, String> {
    let Some(doc) = props.get("AssumeRolePolicyDocument") else {
        return Ok(Value::Null);
    };
    let (text, vars) = match doc {
        Value::String(s) => (s.as_str(), None),
        Value::Object(o) => match o.get("Fn::Sub") {
            None => return Ok(doc.clone()),
            Some(Value::String(s)) => (s.as_str(), None),
            Some(Value::Array(a)) => match a.as_slice() {
                [Value::String(s), Value::Object(vars)] => (s.as_str(), Some(vars)),
                _ => {
                    return Err("AssumeRolePolicyDocument Fn::Sub must be [text, variables]".into())
                }
            },
            Some(_) => return Err("AssumeRolePolicyDocument Fn::Sub must be text".into()),
        },
        _ => return Err("AssumeRolePolicyDocument cannot be checked statically".into()),
    };
    for (name, value) in vars.into_iter().flatten() {
        if name != "IssuerHost" || *value != issuer_host_expr() {
            return Err(format!(
                "AssumeRolePolicyDocument Fn::Sub variable {name} cannot be checked statically (only IssuerHost = {})",
                issuer_host_expr()
            ));
        }
    }
    if text.contains("${IssuerHost}") && !vars.is_some_and(|v| v.contains_key("IssuerHost")) {
        return Err(format!(
            "AssumeRolePolicyDocument uses ${{IssuerHost}} without defining it as {}",
            issuer_host_expr()
        ));
    }
    serde_json::from_str(text)
        .map_err(|e| format!("AssumeRolePolicyDocument Fn::Sub text is not a JSON policy: {e}"))
}

/// The issuer host the Federated principal names (`…:oidc-provider/HOST`, literal or in a
/// `Fn::Sub` text), when it names one statically.
fn provider_host(principal: &Value) -> Option<String> {
    let federated = principal.get("Federated")?;
    let arn = match federated {
        Value::String(s) => s.as_str(),
        Value::Object(o) if o.len() == 1 => o.get("Fn::Sub")?.as_str()?,
        _ => return None,
    };
    let (_, host) = arn.split_once(":oidc-provider/")?;
    (!host.is_empty() && !host.contains(['*', '?'])).then(|| host.to_owned())
}

/// A single condition value as text: a string (a `${Param}` placeholder or a literal) or a
/// `{"Ref": Param}`, rendered `${Param}`. Lists and other functions: None.
fn single_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) if a.len() == 1 => a.first().and_then(single_value),
        Value::Object(o) if o.len() == 1 => o
            .get("Ref")
            .and_then(Value::as_str)
            .map(|p| format!("${{{p}}}")),
        _ => None,
    }
}

/// Lints one Allow statement whose principal is `Federated`.
pub(super) fn lint_statement(st: &Value, say: &mut impl FnMut(String)) {
    let principal = st.get("Principal").cloned().unwrap_or(Value::Null);
    if principal.as_object().is_some_and(|p| p.len() != 1) {
        say(format!(
            "trust policy principal {principal} mixes Federated with other principals"
        ));
    }
    for a in st.get("Action").map(list).unwrap_or_default() {
        if a.as_str() != Some("sts:AssumeRoleWithWebIdentity") {
            say(format!(
                "web identity trust allows {a}; only sts:AssumeRoleWithWebIdentity"
            ));
        }
    }
    if st.get("NotAction").is_some() || st.get("NotPrincipal").is_some() {
        say("web identity trust uses NotAction/NotPrincipal".into());
    }
    let Some(host) = provider_host(&principal) else {
        say(format!(
            "Federated principal {principal} does not name an IAM OIDC provider ARN (arn:…:oidc-provider/HOST) statically"
        ));
        return;
    };
    let conditions = st
        .get("Condition")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for op in conditions.keys().filter(|op| *op != "StringEquals") {
        say(format!(
            "web identity trust uses condition operator {op}; only StringEquals pins aud and sub"
        ));
    }
    let equals = conditions.get("StringEquals");
    for (claim, expected) in [("aud", "Audience"), ("sub", "Subject")] {
        let key = format!("{host}:{claim}");
        let Some(value) = equals.and_then(|e| e.get(&key)) else {
            let why = if claim == "sub" {
                ": every token the issuer mints would be accepted"
            } else {
                ""
            };
            say(format!(
                "web identity trust lacks the {claim} condition (StringEquals {key} = the {expected} parameter){why}"
            ));
            continue;
        };
        let Some(value) = single_value(value) else {
            say(format!(
                "web identity trust's {claim} condition {value} is not one value"
            ));
            continue;
        };
        let placeholder = format!("${{{expected}}}");
        let literal_ok = !value.contains("${") && !value.contains(['*', '?']) && !value.is_empty();
        let ok = value == placeholder || (literal_ok && (claim == "aud" || is_subject(&value)));
        if !ok {
            say(format!(
                "web identity trust's {claim} condition {key} = {value:?} must be the {expected} parameter (no wildcards)"
            ));
        }
    }
}

/// Parameters of the web identity variant: `Subject` only of the broker's form, `IssuerUrl`
/// https only.
pub(super) fn lint_parameters(file: &str, doc: &Value, out: &mut Vec<String>) {
    let pattern = |name: &str| {
        doc.pointer(&format!("/Parameters/{name}/AllowedPattern"))
            .and_then(Value::as_str)
    };
    if pattern("Subject") != Some(SUBJECT_PATTERN) {
        out.push(format!(
            "{file}: Subject parameter must have AllowedPattern {SUBJECT_PATTERN}"
        ));
    }
    // Each binding's subject is the broker's; a default would be one every stack shares.
    if doc.pointer("/Parameters/Subject/Default").is_some() {
        out.push(format!(
            "{file}: Subject parameter must have no Default (each binding's is the broker's)"
        ));
    }
    if !pattern("IssuerUrl").is_some_and(|p| p.starts_with("^https://") && p.ends_with('$')) {
        out.push(format!(
            "{file}: IssuerUrl parameter must have an AllowedPattern ^https://…$"
        ));
    }
    if doc.pointer("/Parameters/ExternalId").is_some() {
        out.push(format!(
            "{file}: a web identity template takes no ExternalId (the sub condition pins the binding)"
        ));
    }
}

/// `AWS::IAM::OIDCProvider`: the issuer is the `IssuerUrl` parameter, and the one client id
/// the `Audience` parameter.
pub(super) fn lint_oidc_provider(file: &str, name: &str, props: &Value, out: &mut Vec<String>) {
    if props.get("Url") != Some(&serde_json::json!({ "Ref": "IssuerUrl" })) {
        out.push(format!(
            "{file}: {name}: OIDC provider Url must be {{\"Ref\": \"IssuerUrl\"}}"
        ));
    }
    if props.get("ClientIdList") != Some(&serde_json::json!([{ "Ref": "Audience" }])) {
        out.push(format!(
            "{file}: {name}: OIDC provider ClientIdList must be exactly [{{\"Ref\": \"Audience\"}}]"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{lint_cfn, AwsCeiling};
    use serde_json::{json, Value};

    fn template(trust: &str) -> Value {
        json!({
            "Parameters": {
                "IssuerUrl": {"Type": "String", "AllowedPattern": "^https://[a-z0-9.-]+$"},
                "Audience": {"Type": "String", "Default": "sts.amazonaws.com"},
                "Subject": {"Type": "String", "AllowedPattern": "^cb-[A-Za-z0-9]{40}$"}
            },
            "Resources": {
                "P": {"Type": "AWS::IAM::OIDCProvider",
                      "Properties": {"Url": {"Ref": "IssuerUrl"}, "ClientIdList": [{"Ref": "Audience"}]}},
                "R": {"Type": "AWS::IAM::Role", "Properties": {
                    "MaxSessionDuration": 3600,
                    "AssumeRolePolicyDocument": {"Fn::Sub": [trust, {"IssuerHost":
                        {"Fn::Select": [1, {"Fn::Split": ["https://", {"Ref": "IssuerUrl"}]}]}}]},
                    "ManagedPolicyArns": [{"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/SecurityAudit"}]
                }}
            }
        })
    }

    const FEDERATED: &str = r#""Principal":{"Federated":"arn:${AWS::Partition}:iam::${AWS::AccountId}:oidc-provider/${IssuerHost}"}"#;

    fn statement(principal: &str, action: &str, condition: &str) -> String {
        format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow",{principal},"Action":"{action}","Condition":{condition}}}]}}"#
        )
    }

    fn findings(trust: &str) -> Vec<String> {
        let ceiling = AwsCeiling {
            description: None,
            managed_policy_arns: vec!["arn:${Partition}:iam::aws:policy/SecurityAudit".into()],
            actions: Vec::new(),
        };
        let mut out = Vec::new();
        lint_cfn("t.json", &template(trust), &ceiling, None, &mut out);
        out
    }

    const PINNED: &str =
        r#"{"StringEquals":{"${IssuerHost}:aud":"${Audience}","${IssuerHost}:sub":"${Subject}"}}"#;

    #[test]
    fn aud_and_sub_pinned_pass() {
        let f = findings(&statement(
            FEDERATED,
            "sts:AssumeRoleWithWebIdentity",
            PINNED,
        ));
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn a_trust_without_sub_or_with_wildcards_fails() {
        let no_sub = r#"{"StringEquals":{"${IssuerHost}:aud":"${Audience}"}}"#;
        let f = findings(&statement(
            FEDERATED,
            "sts:AssumeRoleWithWebIdentity",
            no_sub,
        ));
        assert!(
            f.iter().any(|m| m.contains("lacks the sub condition")),
            "{f:?}"
        );
        let like = r#"{"StringEquals":{"${IssuerHost}:aud":"${Audience}"},"StringLike":{"${IssuerHost}:sub":"cb-*"}}"#;
        let f = findings(&statement(FEDERATED, "sts:AssumeRoleWithWebIdentity", like));
        assert!(f.iter().any(|m| m.contains("operator StringLike")), "{f:?}");
        assert!(
            f.iter().any(|m| m.contains("lacks the sub condition")),
            "{f:?}"
        );
        let star =
            r#"{"StringEquals":{"${IssuerHost}:aud":"${Audience}","${IssuerHost}:sub":"*"}}"#;
        let f = findings(&statement(FEDERATED, "sts:AssumeRoleWithWebIdentity", star));
        assert!(f.iter().any(|m| m.contains("no wildcards")), "{f:?}");
        // A condition keyed to another issuer than the principal's does not pin it.
        let other = r#"{"StringEquals":{"other.example.com:aud":"${Audience}","other.example.com:sub":"${Subject}"}}"#;
        let f = findings(&statement(
            FEDERATED,
            "sts:AssumeRoleWithWebIdentity",
            other,
        ));
        assert_eq!(f.len(), 2, "{f:?}");
    }

    #[test]
    fn other_principals_and_actions_fail() {
        let f = findings(&statement(FEDERATED, "sts:AssumeRole", PINNED));
        assert!(
            f.iter().any(|m| m.contains("allows \"sts:AssumeRole\"")),
            "{f:?}"
        );
        let vendor = r#""Principal":{"AWS":"arn:aws:iam::111111111111:root"}"#;
        let f = findings(&statement(vendor, "sts:AssumeRole", "{}"));
        assert!(
            f.iter().any(|m| m.contains("in a web identity template")),
            "{f:?}"
        );
        let by_ref = r#""Principal":{"Federated":"${ProviderArn}"}"#;
        let f = findings(&statement(by_ref, "sts:AssumeRoleWithWebIdentity", PINNED));
        assert!(
            f.iter()
                .any(|m| m.contains("does not name an IAM OIDC provider")),
            "{f:?}"
        );
    }

    #[test]
    fn the_subject_pattern_and_the_provider_are_checked() {
        let mut doc = template(&statement(
            FEDERATED,
            "sts:AssumeRoleWithWebIdentity",
            PINNED,
        ));
        doc["Parameters"]["Subject"]["AllowedPattern"] = json!(".*");
        doc["Resources"]["P"]["Properties"]["ClientIdList"] = json!(["a", "b"]);
        let ceiling = AwsCeiling {
            description: None,
            managed_policy_arns: Vec::new(),
            actions: Vec::new(),
        };
        let mut out = Vec::new();
        lint_cfn("t.json", &doc, &ceiling, None, &mut out);
        for expected in [
            "Subject parameter must have AllowedPattern",
            "ClientIdList must be exactly",
            "SecurityAudit is outside policies/aws.json",
        ] {
            assert!(
                out.iter().any(|m| m.contains(expected)),
                "{expected}: {out:?}"
            );
        }
    }
}
