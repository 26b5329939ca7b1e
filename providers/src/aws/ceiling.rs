//! The least-privilege ceiling of AWS bindings (policies/aws.json) and narrowing within it.
//!
//! A ceiling lists the managed policy ARNs and the IAM actions a session may ever carry. A
//! binding may restrict its ceiling further, never widen it; a resolve may narrow with an
//! inline session policy and/or managed policy ARNs inside the binding's ceiling. Session
//! policies can only reduce what the role grants, so the ceiling is the broker's own
//! least-privilege rule on top of the customer's role.

use serde::Deserialize;
use serde_json::{json, Value};

/// `{"managed_policy_arns": [...], "actions": [...]}`; ARNs use `${Partition}` for the
/// partition.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsCeiling {
    /// Why the ceiling is what it is (documentation only).
    #[serde(default, skip_serializing)]
    pub description: Option<String>,
    /// Managed policies a session may attach.
    pub managed_policy_arns: Vec<String>,
    /// Actions (exact, or a prefix ending in `*`) an inline session policy may allow.
    pub actions: Vec<String>,
}

/// Most managed policies per AssumeRole.
pub const MAX_POLICY_ARNS: usize = 10;
/// Longest inline session policy.
pub const MAX_POLICY_CHARS: usize = 2048;

fn valid_action(a: &str) -> bool {
    let (service, op) = match a.split_once(':') {
        Some(x) => x,
        None => return a == "*",
    };
    let op_body = op.strip_suffix('*').unwrap_or(op);
    !service.is_empty()
        && service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && op_body.bytes().all(|b| b.is_ascii_alphanumeric())
        && !op_body.contains('*')
}

/// Whether every action `inner` may match is matched by `outer` (both exact or `prefix*`).
pub fn action_within(inner: &str, outer: &str) -> bool {
    let inner = inner.to_ascii_lowercase();
    let outer = outer.to_ascii_lowercase();
    match outer.strip_suffix('*') {
        Some(prefix) => inner.starts_with(prefix),
        None => inner == outer,
    }
}

impl AwsCeiling {
    /// Parses a ceiling document.
    ///
    /// # Errors
    /// When malformed: unknown keys, actions not `service:Name` or `service:Prefix*`.
    pub fn from_value(v: &Value) -> Result<AwsCeiling, String> {
        let c: AwsCeiling =
            serde_json::from_value(v.clone()).map_err(|e| format!("AWS ceiling: {e}"))?;
        if let Some(bad) = c.actions.iter().find(|a| !valid_action(a)) {
            return Err(format!("AWS ceiling: invalid action {bad:?}"));
        }
        Ok(c)
    }

    /// The ARN with `${Partition}` replaced.
    pub fn arn_in(arn: &str, partition: &str) -> String {
        arn.replace("${Partition}", partition)
    }

    /// Whether `arn` is one of the ceiling's managed policies in `partition`.
    pub fn allows_policy_arn(&self, arn: &str, partition: &str) -> bool {
        self.managed_policy_arns
            .iter()
            .any(|a| Self::arn_in(a, partition) == arn)
    }

    /// Whether `action` is covered by the ceiling.
    pub fn allows_action(&self, action: &str) -> bool {
        self.actions
            .iter()
            .any(|outer| action_within(action, outer))
    }

    /// Whether `self` is within `outer`.
    pub fn within(&self, outer: &AwsCeiling) -> Result<(), String> {
        for arn in &self.managed_policy_arns {
            if !outer.managed_policy_arns.contains(arn) {
                return Err(format!(
                    "managed policy {arn} is outside the platform ceiling"
                ));
            }
        }
        for a in &self.actions {
            if !outer.allows_action(a) {
                return Err(format!("action {a} is outside the platform ceiling"));
            }
        }
        Ok(())
    }
}

impl AwsCeiling {
    /// The session parameters that express exactly this ceiling: every managed policy ARN
    /// (in `partition`) plus one inline session policy allowing the ceiling's actions. STS
    /// grants the intersection of the role's policies with the union of the session
    /// policies, so an unnarrowed session carries the ceiling and never more than the
    /// customer's role would grant.
    ///
    /// # Errors
    /// When the ceiling cannot be sent to STS: more than [`MAX_POLICY_ARNS`] managed
    /// policies, an inline policy longer than [`MAX_POLICY_CHARS`], or a ceiling that grants
    /// nothing (an AssumeRole without session policies would grant the whole role).
    pub fn session(&self, partition: &str) -> Result<AwsNarrowing, String> {
        if self.managed_policy_arns.is_empty() && self.actions.is_empty() {
            return Err("the ceiling grants nothing: it needs managed_policy_arns and/or actions (without session policies STS would grant the whole role)".into());
        }
        if self.managed_policy_arns.len() > MAX_POLICY_ARNS {
            return Err(format!(
                "the ceiling names {} managed policies; STS accepts at most {MAX_POLICY_ARNS} per session",
                self.managed_policy_arns.len()
            ));
        }
        let mut policy_arns: Vec<String> = self
            .managed_policy_arns
            .iter()
            .map(|a| Self::arn_in(a, partition))
            .collect();
        policy_arns.sort();
        policy_arns.dedup();
        let policy = if self.actions.is_empty() {
            None
        } else {
            let mut actions = self.actions.clone();
            actions.sort();
            actions.dedup();
            let doc = json!({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]
            });
            let compact = doc.to_string();
            if compact.len() > MAX_POLICY_CHARS {
                return Err(format!(
                    "the ceiling's actions make an inline session policy of {} characters; STS accepts at most {MAX_POLICY_CHARS} (use managed policies or fewer, wider action prefixes)",
                    compact.len()
                ));
            }
            Some(compact)
        };
        Ok(AwsNarrowing {
            policy,
            policy_arns,
        })
    }
}

/// A validated narrowing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsNarrowing {
    /// Inline session policy, compact JSON.
    pub policy: Option<String>,
    /// Managed policy ARNs, sorted.
    pub policy_arns: Vec<String>,
}

fn as_list(v: &Value) -> Option<Vec<&str>> {
    match v {
        Value::String(s) => Some(vec![s.as_str()]),
        Value::Array(items) => items.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

/// Validates `{"policy": {IAM policy}, "policy_arns": [...]}` against `ceiling`.
///
/// Errors are `(exceeds, message)`: `exceeds` true for a well-formed request beyond the
/// ceiling, false for malformed input.
pub fn narrow(
    narrow: &Value,
    ceiling: &AwsCeiling,
    partition: &str,
) -> Result<AwsNarrowing, (bool, String)> {
    let obj = narrow
        .as_object()
        .ok_or((false, "narrow must be an object".to_owned()))?;
    if let Some(k) = obj.keys().find(|k| *k != "policy" && *k != "policy_arns") {
        return Err((
            false,
            format!("unknown narrow key {k:?} (policy, policy_arns)"),
        ));
    }
    let mut policy_arns = Vec::new();
    if let Some(arns) = obj.get("policy_arns") {
        let list = arns
            .as_array()
            .and_then(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
            .ok_or((false, "policy_arns must be an array of ARNs".to_owned()))?;
        if list.len() > MAX_POLICY_ARNS {
            return Err((false, format!("at most {MAX_POLICY_ARNS} policy_arns")));
        }
        for arn in list {
            if !ceiling.allows_policy_arn(arn, partition) {
                return Err((
                    true,
                    format!("managed policy {arn} is not in the binding's ceiling"),
                ));
            }
            policy_arns.push(arn.to_owned());
        }
        policy_arns.sort();
        policy_arns.dedup();
    }
    let policy = match obj.get("policy") {
        None => None,
        Some(doc) => Some(check_policy(doc, ceiling)?),
    };
    if policy.is_none() && policy_arns.is_empty() {
        return Err((false, "narrow needs policy and/or policy_arns".to_owned()));
    }
    Ok(AwsNarrowing {
        policy,
        policy_arns,
    })
}

fn check_policy(doc: &Value, ceiling: &AwsCeiling) -> Result<String, (bool, String)> {
    let bad = |m: &str| (false, format!("inline session policy: {m}"));
    let obj = doc
        .as_object()
        .ok_or_else(|| bad("must be a JSON object"))?;
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "Version" | "Statement" | "Id"))
    {
        return Err(bad(&format!("unknown key {k:?}")));
    }
    let statements = match obj.get("Statement") {
        Some(Value::Array(s)) => s.clone(),
        Some(s @ Value::Object(_)) => vec![s.clone()],
        _ => return Err(bad("Statement must be an object or array")),
    };
    if statements.is_empty() {
        return Err(bad("Statement is empty"));
    }
    for st in &statements {
        let st = st
            .as_object()
            .ok_or_else(|| bad("each Statement must be an object"))?;
        let effect = st
            .get("Effect")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("Effect is required"))?;
        match effect {
            // Deny statements only narrow further.
            "Deny" => {}
            "Allow" => {
                if st.contains_key("NotAction") {
                    return Err((
                        true,
                        "inline session policy: Allow with NotAction is not permitted".into(),
                    ));
                }
                let actions = st
                    .get("Action")
                    .and_then(as_list)
                    .ok_or_else(|| bad("Allow statements need Action"))?;
                for a in actions {
                    if !valid_action(a) {
                        return Err(bad(&format!("invalid action {a:?}")));
                    }
                    if !ceiling.allows_action(a) {
                        return Err((true, format!("action {a} is not in the binding's ceiling")));
                    }
                }
            }
            _ => return Err(bad("Effect must be Allow or Deny")),
        }
    }
    // serde_json without preserve_order sorts object keys: a stable canonical form for the
    // cache key.
    let compact = serde_json::to_string(&json!(obj)).map_err(|_| bad("unserializable"))?;
    if compact.len() > MAX_POLICY_CHARS {
        return Err(bad(&format!("longer than {MAX_POLICY_CHARS} characters")));
    }
    Ok(compact)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceiling() -> AwsCeiling {
        AwsCeiling::from_value(&json!({
            "managed_policy_arns": ["arn:${Partition}:iam::aws:policy/SecurityAudit"],
            "actions": ["ec2:Describe*", "s3:GetBucketPolicy", "iam:List*"]
        }))
        .unwrap()
    }

    #[test]
    fn containment() {
        assert!(action_within("ec2:DescribeInstances", "ec2:Describe*"));
        assert!(action_within("ec2:Describe*", "ec2:Describe*"));
        assert!(action_within("ec2:DescribeIn*", "ec2:Describe*"));
        assert!(!action_within("ec2:*", "ec2:Describe*"));
        assert!(!action_within("s3:GetObject", "s3:GetBucketPolicy"));
    }

    #[test]
    fn narrowing_within_and_beyond() {
        let c = ceiling();
        let ok = narrow(
            &json!({"policy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["ec2:DescribeInstances"], "Resource": "*"}]},
                    "policy_arns": ["arn:aws:iam::aws:policy/SecurityAudit"]}),
            &c,
            "aws",
        )
        .unwrap();
        assert_eq!(ok.policy_arns.len(), 1);
        assert!(ok.policy.unwrap().contains("DescribeInstances"));
        for (n, exceeds) in [
            (
                json!({"policy_arns": ["arn:aws:iam::aws:policy/AdministratorAccess"]}),
                true,
            ),
            (
                json!({"policy": {"Statement": {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}}}),
                true,
            ),
            (
                json!({"policy": {"Statement": {"Effect": "Allow", "NotAction": "s3:*", "Resource": "*"}}}),
                true,
            ),
            (
                json!({"policy": {"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}}),
                true,
            ),
            (json!({"policy": "text"}), false),
            (json!({"roles": []}), false),
            (json!({}), false),
        ] {
            let e = narrow(&n, &c, "aws").unwrap_err();
            assert_eq!(e.0, exceeds, "{n}: {}", e.1);
        }
        // Deny statements are always acceptable.
        assert!(narrow(
            &json!({"policy": {"Statement": {"Effect": "Deny", "Action": "*", "Resource": "*"}}}),
            &c,
            "aws"
        )
        .is_ok());
    }

    #[test]
    fn binding_ceilings_cannot_widen() {
        let c = ceiling();
        let narrower = AwsCeiling {
            description: None,
            managed_policy_arns: vec![],
            actions: vec!["ec2:DescribeInstances".into()],
        };
        assert!(narrower.within(&c).is_ok());
        let wider = AwsCeiling {
            description: None,
            managed_policy_arns: vec![],
            actions: vec!["ec2:*".into()],
        };
        assert!(wider.within(&c).is_err());
    }

    #[test]
    fn the_ceiling_is_a_session_policy() {
        let s = ceiling().session("aws-us-gov").unwrap();
        assert_eq!(
            s.policy_arns,
            vec!["arn:aws-us-gov:iam::aws:policy/SecurityAudit".to_owned()]
        );
        let policy: Value = serde_json::from_str(s.policy.as_deref().unwrap()).unwrap();
        assert_eq!(
            policy["Statement"][0]["Action"],
            json!(["ec2:Describe*", "iam:List*", "s3:GetBucketPolicy"])
        );
        assert_eq!(policy["Statement"][0]["Effect"], "Allow");
        // The session policy is itself a valid narrowing inside the ceiling.
        assert!(narrow(&json!({"policy": policy}), &ceiling(), "aws").is_ok());
    }

    #[test]
    fn ceilings_sts_cannot_carry_are_refused() {
        let nothing = AwsCeiling {
            description: None,
            managed_policy_arns: vec![],
            actions: vec![],
        };
        assert!(nothing
            .session("aws")
            .unwrap_err()
            .contains("grants nothing"));
        let many_arns = AwsCeiling {
            description: None,
            managed_policy_arns: (0..11)
                .map(|i| format!("arn:${{Partition}}:iam::aws:policy/P{i}"))
                .collect(),
            actions: vec![],
        };
        assert!(many_arns.session("aws").unwrap_err().contains("at most 10"));
        let long = AwsCeiling {
            description: None,
            managed_policy_arns: vec![],
            actions: (0..200).map(|i| format!("ec2:DescribeThing{i}")).collect(),
        };
        assert!(long.session("aws").unwrap_err().contains("characters"));
        // The shipped platform ceiling fits.
        let shipped: Value =
            serde_json::from_str(include_str!("../../../policies/aws.json")).unwrap();
        assert!(AwsCeiling::from_value(&shipped)
            .unwrap()
            .session("aws")
            .is_ok());
    }
}
