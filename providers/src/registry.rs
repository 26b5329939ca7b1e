//! The only place that maps a provider name to code.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{PastedSecret, Provider};

/// Every provider name the binding model knows (DESIGN.md's table). A binding may name one
/// only if this build's registry actually holds an implementation for it.
pub const KNOWN_PROVIDERS: &[&str] = &[
    "aws_assume_role",
    "entra_multi_tenant",
    "gcp_wif",
    "github_app",
    "atlassian_forge",
    "servicenow_oauth",
    "pasted_secret",
];

/// A validated provider name (`[a-z][a-z0-9_]{1,47}`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProviderId(String);

impl ProviderId {
    /// Parses a provider name.
    ///
    /// # Errors
    /// When the name has characters outside `[a-z0-9_]`, does not start with a letter, or is
    /// not 2–48 characters long.
    pub fn parse(name: &str) -> Result<Self, String> {
        let ok = (2..=48).contains(&name.len())
            && name.as_bytes()[0].is_ascii_lowercase()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(ProviderId(name.to_owned()))
        } else {
            Err(format!("invalid provider name {name:?}"))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The providers available to this daemon, by name.
#[derive(Clone, Default)]
pub struct ProviderRegistry {
    providers: BTreeMap<String, Arc<dyn Provider>>,
}

impl ProviderRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The providers built into this release: currently `pasted_secret`.
    pub fn builtin() -> Self {
        let mut registry = Self::new();
        registry.register(Arc::new(PastedSecret));
        registry
    }

    /// Adds (or replaces) a provider under its own [`Provider::id`].
    pub fn register(&mut self, provider: Arc<dyn Provider>) {
        self.providers.insert(provider.id().to_owned(), provider);
    }

    /// The provider registered under `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.providers.get(name)
    }

    /// Names of the registered providers, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.providers.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_pasted_secret_only() {
        let r = ProviderRegistry::builtin();
        assert_eq!(r.names().collect::<Vec<_>>(), vec!["pasted_secret"]);
        assert!(r.get("aws_assume_role").is_none());
    }

    #[test]
    fn provider_names_are_validated() {
        assert!(ProviderId::parse("pasted_secret").is_ok());
        assert!(ProviderId::parse("Pasted").is_err());
        assert!(ProviderId::parse("_x").is_err());
        assert!(ProviderId::parse("a").is_err());
        assert!(ProviderId::parse("a-b").is_err());
    }
}
