//! Builds the provider registry a daemon runs with from its configuration: the built-in
//! providers plus every federated provider whose `[providers.*]` section is present.

use std::sync::Arc;

use credbroker_providers::aws::AwsAssumeRole;
use credbroker_providers::ProviderRegistry;

use crate::config::Config;

/// The registry for `config`.
///
/// # Errors
/// When a configured provider cannot start (e.g. its ceiling policy file is missing: a
/// missing policy denies, so the daemon does not start without it).
pub async fn from_config(config: &Config) -> Result<ProviderRegistry, String> {
    let mut registry = ProviderRegistry::builtin();
    if let Some(aws) = &config.providers.aws_assume_role {
        let provider = AwsAssumeRole::new(aws.clone())
            .await
            .map_err(|e| format!("providers.aws_assume_role: {e}"))?;
        registry.register(Arc::new(provider));
    }
    if let Some(gh) = &config.providers.github_app {
        let provider = credbroker_providers::github::GithubApp::new(gh.clone())
            .map_err(|e| format!("providers.github_app: {e}"))?;
        registry.register(Arc::new(provider));
    }
    Ok(registry)
}
