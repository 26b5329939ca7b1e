//! `narrow` objects of resolve requests, for AWS (session policies) and GitHub (permissions,
//! repositories), against fixed ceilings.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let aws = credbroker_providers::aws::AwsCeiling::from_value(&serde_json::json!({
        "managed_policy_arns": ["arn:${Partition}:iam::aws:policy/SecurityAudit"],
        "actions": ["ec2:Describe*", "s3:GetBucketPolicy"]
    }))
    .expect("fixed ceiling");
    let _ = credbroker_providers::aws::narrow(&value, &aws, "aws");
    let gh = credbroker_providers::github::GithubCeiling::from_value(&serde_json::json!({
        "permissions": {"contents": "read", "issues": "write"}, "repositories": ["api"]
    }))
    .expect("fixed ceiling");
    let _ = credbroker_providers::github::narrow(&value, &gh);
    let _ = credbroker_providers::github::GithubCeiling::from_value(&value);
    let _ = credbroker_providers::aws::AwsCeiling::from_value(&value);
});
