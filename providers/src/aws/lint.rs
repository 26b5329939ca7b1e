//! The template lint of `aws_assume_role` (run by `credbroker lint-templates`): the
//! CloudFormation JSON we ship in onboarding-templates/aws/ must stay within
//! policies/aws.json (missing or unreadable: the lint fails — no ceiling, no pass). Every IAM role trusts only the
//! `VendorAccountId` parameter, only with `sts:ExternalId` equal to the `ExternalId` parameter
//! (NoEcho, at least 32 characters) and `aws:PrincipalArn` equal to the `BrokerPrincipalArn`
//! parameter (the broker's own role: no other identity of the vendor account may assume it,
//! the ExternalId being no secret), allows sessions of at most 3600 s, and attaches only
//! managed policies / inline actions inside policies/aws.json. A service-managed StackSet must
//! auto-deploy with CAPABILITY_NAMED_IAM and embed exactly the single-account role template.
//! The web identity variant (a template with an `IssuerUrl` or `Subject` parameter, or an
//! `AWS::IAM::OIDCProvider`) trusts nothing but `sts:AssumeRoleWithWebIdentity` from its
//! issuer's OIDC provider, pinned by `StringEquals` on both `<issuer>:aud` and `<issuer>:sub`
//! (web_identity.rs): the sub condition is its confused-deputy defence.

use std::path::Path;

use serde_json::Value;

use super::AwsCeiling;

mod web_identity;

const SINGLE_ACCOUNT_TEMPLATE: &str = "credbroker-role.json";

/// The `AllowedPattern` of the `BrokerPrincipalArn` parameter: one IAM role ARN, whose name
/// cannot hold the `*` or `?` that `ArnEquals` would read as wildcards.
const BROKER_PRINCIPAL_PATTERN: &str = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]{1,512}$";

fn is_vendor_principal(v: &Value) -> bool {
    v == &serde_json::json!({ "Fn::Sub": "arn:${AWS::Partition}:iam::${VendorAccountId}:root" })
        || v == &serde_json::json!({ "Ref": "VendorAccountId" })
}

fn list(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    }
}

/// The partition-neutral form of a managed policy ARN expression, or None when it is not
/// one we can read statically.
fn policy_arn_expr(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.replacen("arn:aws:", "arn:${Partition}:", 1)),
        Value::Object(o) => o
            .get("Fn::Sub")
            .and_then(Value::as_str)
            .map(|s| s.replace("${AWS::Partition}", "${Partition}")),
        _ => None,
    }
}

fn lint_role(
    file: &str,
    name: &str,
    props: &Value,
    ceiling: &AwsCeiling,
    web_identity_template: bool,
    out: &mut Vec<String>,
) {
    let mut say = |m: String| out.push(format!("{file}: {name}: {m}"));
    match props.get("MaxSessionDuration").and_then(Value::as_u64) {
        Some(d) if (900..=3600).contains(&d) => {}
        Some(d) => say(format!("MaxSessionDuration {d} exceeds 3600 seconds")),
        None => say("MaxSessionDuration must be set (at most 3600)".into()),
    }
    let trust = web_identity::trust_document(props).unwrap_or_else(|m| {
        say(m);
        Value::Null
    });
    let statements = trust.get("Statement").map(list).unwrap_or_default();
    if statements.is_empty() {
        say("AssumeRolePolicyDocument has no statements".into());
    }
    for st in statements {
        // Only a plain Deny is skipped: an Effect built by an intrinsic function
        // ({"Fn::Sub": "Allow"}) or a statement that is not an object cannot be judged, and
        // skipping it would skip the ExternalId check.
        match st.get("Effect").and_then(Value::as_str) {
            Some("Deny") => continue,
            Some("Allow") => {}
            _ => {
                say(format!(
                    "trust policy statement {} has no plain Allow or Deny Effect: it cannot be checked",
                    crate::quoted(&st.to_string(), 120)
                ));
                continue;
            }
        }
        let principal = st.get("Principal");
        if principal.and_then(|p| p.get("Federated")).is_some() {
            web_identity::lint_statement(st, &mut say);
            continue;
        }
        if web_identity_template {
            say(format!(
                "trust policy principal {} in a web identity template: only sts:AssumeRoleWithWebIdentity from the issuer's OIDC provider",
                principal.map_or("(missing)".to_owned(), Value::to_string)
            ));
            continue;
        }
        let trusted = principal
            .and_then(|p| p.as_object())
            .filter(|p| p.len() == 1)
            .and_then(|p| p.get("AWS"))
            .map(|aws| list(aws).into_iter().all(is_vendor_principal))
            .unwrap_or(false);
        if !trusted {
            say(format!(
                "trust policy principal {} is not exactly the VendorAccountId parameter",
                principal.map_or("(missing)".to_owned(), Value::to_string)
            ));
        }
        // NotAction / NotPrincipal allow what they do not name (sts:AssumeRole without the
        // ExternalId condition, say), and an Allow that names no action is read the same way
        // by nothing: each is a finding, never a statement with nothing to check.
        for not in ["NotAction", "NotPrincipal"] {
            if st.get(not).is_some() {
                say(format!(
                    "trust policy statement uses {not}: name the principal and actions"
                ));
            }
        }
        let named = st.get("Action").map(list).unwrap_or_default();
        // An action that is not a plain string (an intrinsic function) cannot be checked:
        // `{"Fn::Join": ["", ["sts:", "AssumeRole"]]}` would skip the ExternalId check.
        if let Some(odd) = named.iter().find(|a| !a.is_string()) {
            say(format!(
                "trust policy action {odd} is not a plain string: it cannot be checked"
            ));
        }
        let actions: Vec<&str> = named.into_iter().filter_map(Value::as_str).collect();
        if actions.is_empty() {
            say(
                "trust policy statement allows no named action (Action missing or not strings)"
                    .into(),
            );
        }
        if let Some(a) = actions.iter().find(|a| {
            !matches!(
                **a,
                "sts:AssumeRole" | "sts:TagSession" | "sts:SetSourceIdentity"
            )
        }) {
            say(format!("trust policy allows {a}; only sts:AssumeRole, sts:TagSession, sts:SetSourceIdentity"));
        }
        if actions.contains(&"sts:AssumeRole") {
            let cond = st.pointer("/Condition/StringEquals/sts:ExternalId");
            if cond != Some(&serde_json::json!({ "Ref": "ExternalId" })) {
                say("trust policy lacks Condition StringEquals sts:ExternalId = {\"Ref\": \"ExternalId\"} (confused-deputy defence)".into());
            }
            let broker = st.pointer("/Condition/ArnEquals/aws:PrincipalArn");
            if broker != Some(&serde_json::json!({ "Ref": "BrokerPrincipalArn" })) {
                say("trust policy lacks Condition ArnEquals aws:PrincipalArn = {\"Ref\": \"BrokerPrincipalArn\"} (only the broker's role, not every identity of the vendor account)".into());
            }
        }
    }
    for arn in props.get("ManagedPolicyArns").map(list).unwrap_or_default() {
        match policy_arn_expr(arn) {
            Some(expr) if ceiling.managed_policy_arns.contains(&expr) => {}
            Some(expr) => say(format!(
                "managed policy {expr} is outside policies/aws.json"
            )),
            None => say(format!("managed policy {arn} cannot be checked statically")),
        }
    }
    for policy in props.get("Policies").map(list).unwrap_or_default() {
        // A document built by an intrinsic function (`{"Fn::Sub": "…"}`) has no statements
        // to read: nothing in it could be checked.
        if policy.pointer("/PolicyDocument/Statement").is_none() {
            say("inline policy document has no Statement to read: it cannot be checked".into());
        }
        for st in policy
            .pointer("/PolicyDocument/Statement")
            .map(list)
            .unwrap_or_default()
        {
            match st.get("Effect").and_then(Value::as_str) {
                Some("Deny") => continue,
                Some("Allow") => {}
                _ => {
                    say("inline policy statement has no plain Allow or Deny Effect: it cannot be checked".into());
                    continue;
                }
            }
            if st.get("NotAction").is_some() {
                say("inline policy uses Allow with NotAction".into());
            }
            for a in st.get("Action").map(list).unwrap_or_default() {
                match a.as_str() {
                    Some(a) if ceiling.allows_action(a) => {}
                    Some(a) => say(format!(
                        "inline policy allows {a}, outside policies/aws.json"
                    )),
                    None => say("inline policy action is not a string".into()),
                }
            }
        }
    }
}

fn lint_parameters(file: &str, doc: &Value, out: &mut Vec<String>) {
    let ext = doc.pointer("/Parameters/ExternalId");
    let Some(ext) = ext else {
        out.push(format!("{file}: missing ExternalId parameter"));
        return;
    };
    if ext.get("NoEcho") != Some(&Value::Bool(true)) {
        out.push(format!("{file}: ExternalId parameter must be NoEcho"));
    }
    if ext.get("MinLength").and_then(Value::as_u64).unwrap_or(0) < 32 {
        out.push(format!(
            "{file}: ExternalId parameter needs MinLength of at least 32"
        ));
    }
    if ext.get("AllowedPattern").and_then(Value::as_str).is_none() {
        out.push(format!(
            "{file}: ExternalId parameter needs the AWS AllowedPattern"
        ));
    }
    // A default is one value every stack made without it shares: the confused deputy the
    // ExternalId exists to stop.
    if ext.get("Default").is_some() {
        out.push(format!(
            "{file}: ExternalId parameter must have no Default (each tenant's is the broker's)"
        ));
    }
    // Exactly this pattern: ArnEquals honours `*` and `?`, so a looser one (`role/.*`) would
    // let a stack trust every role of the vendor account.
    if doc
        .pointer("/Parameters/BrokerPrincipalArn/AllowedPattern")
        .and_then(Value::as_str)
        != Some(BROKER_PRINCIPAL_PATTERN)
    {
        out.push(format!(
            "{file}: BrokerPrincipalArn parameter must have AllowedPattern {BROKER_PRINCIPAL_PATTERN} (one IAM role, no wildcard)"
        ));
    }
    if doc
        .pointer("/Parameters/VendorAccountId/AllowedPattern")
        .and_then(Value::as_str)
        != Some("^[0-9]{12}$")
    {
        out.push(format!(
            "{file}: VendorAccountId parameter must have AllowedPattern ^[0-9]{{12}}$"
        ));
    }
}

/// Lints one CloudFormation template; `single_account` is the shipped role template that a
/// StackSet must embed.
pub fn lint_cfn(
    file: &str,
    doc: &Value,
    ceiling: &AwsCeiling,
    single_account: Option<&Value>,
    out: &mut Vec<String>,
) {
    let Some(resources) = doc.get("Resources").and_then(Value::as_object) else {
        out.push(format!("{file}: no Resources"));
        return;
    };
    let web_identity_template = web_identity::is_web_identity_template(doc);
    if web_identity_template {
        web_identity::lint_parameters(file, doc, out);
    } else {
        lint_parameters(file, doc, out);
    }
    let mut roles = 0;
    for (name, res) in resources {
        let props = res.get("Properties").cloned().unwrap_or(Value::Null);
        match res.get("Type").and_then(Value::as_str) {
            Some("AWS::IAM::Role") => {
                roles += 1;
                lint_role(file, name, &props, ceiling, web_identity_template, out);
            }
            Some("AWS::IAM::OIDCProvider") => {
                web_identity::lint_oidc_provider(file, name, &props, out);
            }
            Some("AWS::CloudFormation::StackSet") => {
                roles += 1;
                let mut say = |m: &str| out.push(format!("{file}: {name}: {m}"));
                if props.get("PermissionModel").and_then(Value::as_str) != Some("SERVICE_MANAGED") {
                    say("PermissionModel must be SERVICE_MANAGED");
                }
                if props.pointer("/AutoDeployment/Enabled") != Some(&Value::Bool(true)) {
                    say("AutoDeployment.Enabled must be true (new accounts get the role)");
                }
                if !props
                    .get("Capabilities")
                    .map(list)
                    .unwrap_or_default()
                    .contains(&&Value::String("CAPABILITY_NAMED_IAM".into()))
                {
                    say("Capabilities must include CAPABILITY_NAMED_IAM");
                }
                // Every parameter the role template requires reaches the stack instances.
                for key in ["VendorAccountId", "BrokerPrincipalArn", "ExternalId"] {
                    let passed = props
                        .get("Parameters")
                        .map(list)
                        .unwrap_or_default()
                        .iter()
                        .any(|p| {
                            p.get("ParameterKey").and_then(Value::as_str) == Some(key)
                                && p.get("ParameterValue")
                                    == Some(&serde_json::json!({ "Ref": key }))
                        });
                    if !passed {
                        say(&format!("Parameters must pass {key} to the stack instances ({{\"Ref\": \"{key}\"}})"));
                    }
                }
                match props
                    .get("TemplateBody")
                    .and_then(Value::as_str)
                    .map(serde_json::from_str::<Value>)
                {
                    Some(Ok(body)) => {
                        if single_account.is_some_and(|s| *s != body) {
                            say("TemplateBody differs from credbroker-role.json (keep them identical)");
                        }
                        lint_cfn(
                            &format!("{file}#{name}.TemplateBody"),
                            &body,
                            ceiling,
                            None,
                            out,
                        );
                    }
                    _ => say("TemplateBody must be the single-account template as a JSON string"),
                }
            }
            Some(t) if t.starts_with("AWS::IAM::") => {
                out.push(format!(
                    "{file}: {name}: {t} is not allowed in onboarding templates"
                ));
            }
            _ => {}
        }
    }
    if roles == 0 {
        out.push(format!("{file}: defines no IAM role or StackSet"));
    }
}

/// Loads policies/aws.json.
///
/// # Errors
/// When missing or malformed (the lint then fails: no ceiling, no pass).
pub fn load_aws_ceiling(policies: &Path) -> Result<AwsCeiling, String> {
    let path = policies.join("aws.json");
    let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    AwsCeiling::from_value(&v).map_err(|e| format!("{}: {e}", path.display()))
}

/// Lints every CloudFormation template in `dir` (onboarding-templates/aws) against
/// policies/aws.json; returns the findings (empty: all good).
///
/// # Errors
/// When the policy file or a template cannot be read or parsed.
pub fn lint(dir: &Path, policies: &Path) -> Result<Vec<String>, String> {
    let ceiling = load_aws_ceiling(policies)?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let read = |p: &Path| -> Result<Value, String> {
        let text = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", p.display()))
    };
    let single = dir.join(SINGLE_ACCOUNT_TEMPLATE);
    let single_doc = if single.exists() {
        Some(read(&single)?)
    } else {
        None
    };
    let mut out = Vec::new();
    if files.is_empty() {
        out.push(format!("{}: no templates", dir.display()));
    }
    for f in files {
        let doc = read(&f)?;
        lint_cfn(
            &f.display().to_string(),
            &doc,
            &ceiling,
            single_doc.as_ref(),
            &mut out,
        );
    }
    Ok(out)
}
