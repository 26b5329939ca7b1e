//! The STS clients built from the settings: the ceiling file read, the settings held to
//! their ranges, the endpoints the SDK will call held to https (or loopback), and one
//! client that signs with the platform's identity beside one that does not (web identity).

use std::time::Duration;

use aws_sdk_sts::config::retry::RetryConfig;
use aws_sdk_sts::config::timeout::TimeoutConfig;
use aws_sdk_sts::config::{BehaviorVersion, Region};
use serde_json::Value;

use super::bounded::{BoundedAnswers, NoRetryPastTheBound};
use super::{params, AwsAssumeRole, AwsCeiling, AwsSettings};

/// The STS endpoint the SDK takes when the settings name none, read as aws-sdk-sts's config
/// reads it (the environment's `AWS_ENDPOINT_URL_STS` and `AWS_ENDPOINT_URL`, then the
/// profile's `services` section and `endpoint_url`); `None` for the SDK's own regional one,
/// or when `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` is set (the variables are checked on their
/// own, see the caller).
fn configured_endpoint(shared: &aws_config::SdkConfig) -> Result<Option<String>, String> {
    let key = aws_types::service_config::ServiceConfigKey::builder()
        .service_id("STS")
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .map_err(|e| format!("providers.aws_assume_role: {e}"))?;
    Ok(shared
        .service_config()
        .and_then(|c| c.load_config(key))
        .or_else(|| shared.endpoint_url().map(str::to_owned)))
}

impl AwsAssumeRole {
    /// Builds the STS client from the standard AWS credential chain and `settings`.
    ///
    /// # Errors
    /// When the ceiling file is unreadable or invalid (a missing policy denies: the provider
    /// is not started), or the settings are out of range.
    pub async fn new(settings: AwsSettings) -> Result<AwsAssumeRole, String> {
        let text = std::fs::read(&settings.ceiling_file)
            .map_err(|e| format!("{}: {e}", settings.ceiling_file.display()))?;
        let value: Value = serde_json::from_slice(&text)
            .map_err(|e| format!("{}: {e}", settings.ceiling_file.display()))?;
        let ceiling = AwsCeiling::from_value(&value)?;
        // Every unnarrowed session carries the ceiling: one STS cannot carry fails start-up.
        ceiling
            .session("aws")
            .map_err(|e| format!("{}: {e}", settings.ceiling_file.display()))?;
        let account_ok = settings.vendor_account_id.len() == 12
            && settings
                .vendor_account_id
                .bytes()
                .all(|b| b.is_ascii_digit());
        if !account_ok {
            return Err(
                "providers.aws_assume_role.vendor_account_id must be a 12-digit account id".into(),
            );
        }
        if let Some(arn) = &settings.broker_principal_arn {
            if !broker_principal_ok(arn, &settings.vendor_account_id) {
                return Err(format!(
                    "providers.aws_assume_role.broker_principal_arn must be an IAM role ARN in account {} (arn:aws:iam::{}:role/NAME)",
                    settings.vendor_account_id, settings.vendor_account_id
                ));
            }
        }
        if !(params::MIN_DURATION_S..=43_200).contains(&settings.max_duration_s)
            || settings.max_attempts == 0
        {
            return Err("providers.aws_assume_role: max_duration_s must be 900..=43200 and max_attempts at least 1".into());
        }
        let audience = &settings.web_identity_audience;
        if audience.is_empty()
            || audience.len() > 255
            || !audience.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err("providers.aws_assume_role: web_identity_audience must be 1-255 printable characters (the client id of the customer's IAM OIDC provider)".into());
        }
        let attempt = Duration::from_millis(settings.attempt_timeout_ms.max(100));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(settings.max_attempts)
                    .with_initial_backoff(Duration::from_millis(100))
                    .with_max_backoff(Duration::from_secs(2)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(attempt)
                    .operation_attempt_timeout(attempt)
                    .operation_timeout(attempt * settings.max_attempts + Duration::from_secs(5))
                    .build(),
            );
        if let Some(url) = &settings.endpoint_url {
            // Customers' session credentials and the broker's assertions cross it: never in
            // clear text past this machine.
            crate::github::settings::check_base("providers.aws_assume_role.endpoint_url", url)?;
            loader = loader.endpoint_url(url);
        }
        let shared = loader.load().await;
        // An endpoint the environment or the AWS profile names is held to the same rule,
        // whatever the settings say: the SDK's own credential chain (web identity, a
        // profile's role, SSO) makes its STS calls there even when the settings name ours,
        // and even when AWS_IGNORE_CONFIGURED_ENDPOINT_URLS is set.
        for var in ["AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL"] {
            if let Some(url) = std::env::var(var).ok().filter(|u| !u.is_empty()) {
                crate::github::settings::check_base(
                    &format!("providers.aws_assume_role: {var}"),
                    &url,
                )?;
            }
        }
        if let Some(url) = configured_endpoint(&shared)? {
            crate::github::settings::check_base(
                "providers.aws_assume_role: the STS endpoint the AWS profile (or the environment) names",
                &url,
            )?;
        }
        let bounded = || {
            aws_sdk_sts::config::Builder::from(&shared)
                .interceptor(BoundedAnswers)
                .retry_classifier(NoRetryPastTheBound)
        };
        let mut unsigned = bounded();
        unsigned.set_credentials_provider(None);
        Ok(AwsAssumeRole {
            client: aws_sdk_sts::Client::from_conf(bounded().build()),
            web_client: aws_sdk_sts::Client::from_conf(unsigned.build()),
            settings,
            ceiling,
        })
    }
}

/// Whether `arn` names an IAM role (any path) in account `account`, in a known partition
/// (the role ARN rules every binding's `role_arn` is held to).
fn broker_principal_ok(arn: &str, account: &str) -> bool {
    params::RoleArn::parse(arn).is_ok_and(|r| r.account() == account)
}

#[cfg(test)]
mod tests {
    use super::broker_principal_ok;

    fn settings(endpoint_url: &str) -> super::AwsSettings {
        super::AwsSettings {
            endpoint_url: Some(endpoint_url.into()),
            ..unset()
        }
    }

    fn unset() -> super::AwsSettings {
        super::AwsSettings {
            region: "us-east-1".into(),
            endpoint_url: None,
            vendor_account_id: "111111111111".into(),
            broker_principal_arn: None,
            default_duration_s: 3600,
            max_duration_s: 3600,
            attempt_timeout_ms: 3000,
            max_attempts: 1,
            ceiling_file: std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../policies/aws.json"),
            web_identity_audience: "sts.amazonaws.com".into(),
        }
    }

    /// Customers' session credentials and the broker's assertions never cross a plain-http
    /// STS endpoint past this machine.
    #[tokio::test]
    async fn the_sts_endpoint_is_https_or_loopback() {
        for ok in ["https://sts.us-east-1.amazonaws.com", "http://127.0.0.1:9"] {
            assert!(
                super::AwsAssumeRole::new(settings(ok)).await.is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "http://sts.us-east-1.amazonaws.com",
            "http://127.0.0.1.evil.example",
            "ftp://127.0.0.1",
        ] {
            let e = super::AwsAssumeRole::new(settings(bad)).await.err();
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.contains("endpoint_url must be https")),
                "{bad}: {e:?}"
            );
        }
    }

    /// The same rule for an endpoint the environment names when the settings name none
    /// (each test is a process of its own under nextest: the variable stays in this one).
    #[tokio::test]
    async fn an_sts_endpoint_from_the_environment_is_held_to_it_too() {
        std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/credbroker-test");
        std::env::set_var("AWS_ENDPOINT_URL_STS", "http://sts.example.com");
        let e = super::AwsAssumeRole::new(unset()).await.err();
        assert!(
            e.as_deref().is_some_and(|e| e.contains("must be https")),
            "{e:?}"
        );
        // Also when the settings name one (the SDK's credential chain would still call the
        // environment's), and when the SDK is told to ignore it (the chain is not).
        let e = super::AwsAssumeRole::new(settings("https://sts.us-east-1.amazonaws.com"))
            .await
            .err();
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("AWS_ENDPOINT_URL_STS must be https")),
            "{e:?}"
        );
        std::env::set_var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true");
        assert!(super::AwsAssumeRole::new(unset()).await.is_err());
        std::env::remove_var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS");
        std::env::set_var("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9");
        assert!(super::AwsAssumeRole::new(unset()).await.is_ok());
        std::env::remove_var("AWS_ENDPOINT_URL_STS");
        std::env::set_var("AWS_ENDPOINT_URL", "http://sts.example.com");
        assert!(super::AwsAssumeRole::new(unset()).await.is_err());
    }

    #[test]
    fn the_broker_principal_is_a_role_of_the_vendor_account() {
        let account = "111122223333";
        for good in [
            "arn:aws:iam::111122223333:role/credbroker",
            "arn:aws-us-gov:iam::111122223333:role/platform/credbroker-prod",
        ] {
            assert!(broker_principal_ok(good, account), "{good}");
        }
        for bad in [
            "arn:aws:iam::444455556666:role/credbroker",
            "arn:aws:iam::111122223333:user/credbroker",
            "arn:aws:iam::111122223333:root",
            "arn:aws:sts::111122223333:assumed-role/credbroker/s",
            "arn:aws:iam:us-east-1:111122223333:role/credbroker",
            "arn:aws:iam::111122223333:role/",
            "arn:aws:iam::111122223333:role/a*",
            "arn:AWS:iam::111122223333:role/credbroker",
            "role/credbroker",
        ] {
            assert!(!broker_principal_ok(bad, account), "{bad}");
        }
    }
}
