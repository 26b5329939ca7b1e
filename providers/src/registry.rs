//! The only list of providers, and the registry a daemon runs with.
//!
//! Each provider module declares one [`ProviderDescriptor`]: its id, how its
//! `[providers.<id>]` settings section builds it, what the CLI needs to add, onboard and
//! key-manage its bindings, and how its shipped templates are linted. [`CATALOG`] lists the
//! descriptors; adding a provider is its folder plus one line there. The broker core and the
//! CLI work from the catalog and the [`ProviderRegistry`] and never name a provider.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use crate::Provider;

/// Every provider this build knows, in the order the CLI lists them.
pub const CATALOG: &[&ProviderDescriptor] = &[
    &crate::atlassian_dc::DESCRIPTOR,
    &crate::atlassian_forge::DESCRIPTOR,
    &crate::aws::DESCRIPTOR,
    &crate::entra::DESCRIPTOR,
    &crate::gcp_wif::DESCRIPTOR,
    &crate::github::DESCRIPTOR,
    &crate::pasted_secret::DESCRIPTOR,
    &crate::servicenow::DESCRIPTOR,
];

/// The provider dev mode's demo binding uses: it needs no upstream and no settings.
pub const DEMO_PROVIDER: &str = crate::pasted_secret::ID;

/// A provider being built from its settings section.
pub type BuildFuture = Pin<Box<dyn Future<Output = Result<Arc<dyn Provider>, String>> + Send>>;

/// How a daemon gets an instance of a provider.
pub enum Availability {
    /// Always present; takes no settings section.
    Builtin(fn() -> Arc<dyn Provider>),
    /// Present when `[providers.<id>]` is in the config: built from that section, with
    /// relative paths resolved against the directory given (the config file's).
    Configured(fn(toml::Value, &Path) -> BuildFuture),
}

/// The kind of value a CLI flag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagValue {
    /// A string.
    Text,
    /// A non-negative integer.
    Integer,
    /// A switch: present means `true`.
    Switch,
    /// A JSON object.
    JsonObject,
}

/// Where a flag's value goes in the binding's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagTarget {
    /// `config[key]`.
    Key(&'static str),
    /// The whole `config` object.
    WholeConfig,
    /// `config[outer][inner]`.
    Nested(&'static str, &'static str),
}

/// One flag of `credbroker binding add <provider>`. The CLI adds the binding id, `--tenant`
/// and `--ceiling` to every provider's flags.
#[derive(Debug, Clone, Copy)]
pub struct ConfigFlag {
    /// The long name, without dashes (`role-arn`).
    pub long: &'static str,
    /// Help text.
    pub help: &'static str,
    /// The value's kind.
    pub value: FlagValue,
    /// Where it goes.
    pub target: FlagTarget,
    /// Whether the flag must be given.
    pub required: bool,
}

/// How `credbroker onboard <provider>` names the customer account an install must come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnboardPin {
    /// Nothing pinned (no install flow).
    None,
    /// `--account-login L --account-id N` (GitHub: the organisation and its numeric id).
    Account,
    /// One identifier flag (Entra: `--entra-tenant GUID`); the pin's id is 0.
    Identifier {
        /// The flag's long name.
        long: &'static str,
        /// Its help.
        help: &'static str,
    },
}

/// What `credbroker keys <provider> …` needs for a provider with platform keys.
#[derive(Debug, Clone, Copy)]
pub struct KeysCli {
    /// The kinds of material `add --as <name>` accepts: `(name, secret field)`, the first
    /// the default (e.g. `("private-key", "private_key_pem")`).
    pub materials: &'static [(&'static str, &'static str)],
    /// Help for `--from-file`.
    pub file_help: &'static str,
}

/// What the CLI needs to know about a provider.
#[derive(Debug, Clone, Copy)]
pub struct CliSpec {
    /// The subcommand name (`credbroker binding add aws`, `credbroker onboard aws`).
    pub name: &'static str,
    /// Help for `binding add <name>`.
    pub about: &'static str,
    /// The provider's own flags for `binding add <name>`.
    pub binding_flags: &'static [ConfigFlag],
    /// Whether an operator may bind it by hand (`binding add <name>`). Not a provider whose
    /// sites are bound on their own proof only (Atlassian Forge: the connect code, or an
    /// unclaimed installation's signed invocation).
    pub by_hand: bool,
    /// Help for `onboard <name>`, when onboarding starts at the broker.
    pub onboard: Option<&'static str>,
    /// Which customer account `onboard <name>` pins: the install callback is accepted only
    /// for that account.
    pub onboard_pin: OnboardPin,
    /// `keys <name> …`, when the provider signs with platform keys.
    pub keys: Option<KeysCli>,
    /// Whether `keys <name> revoke-tokens` exists (upstream revocation).
    pub revoke_tokens: bool,
}

/// How `credbroker lint-templates` checks a provider's shipped templates.
#[derive(Debug, Clone, Copy)]
pub struct TemplateLint {
    /// The provider's folder under onboarding-templates/.
    pub dir: &'static str,
    /// Lints that folder against policies/; returns the findings.
    pub run: fn(&Path, &Path) -> Result<Vec<String>, String>,
}

/// Where a provider's credential comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    /// Minted on every resolve from a trust relationship the customer set up (no customer
    /// secret is stored).
    Federation,
    /// A secret the customer pasted (or an installation handed over), sealed at rest and
    /// opened on demand.
    PastedSecret,
}

impl CredentialSource {
    /// The catalog's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialSource::Federation => "federation",
            CredentialSource::PastedSecret => "pasted_secret",
        }
    }
}

/// How the most a binding may obtain is enforced, as the catalog shows it (the provider's
/// runtime [`crate::CeilingEnforcement`] must agree; a test checks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeilingMode {
    /// Sent upstream with every mint ([`crate::CeilingEnforcement::Upstream`]).
    Upstream,
    /// Checked on what the upstream issued ([`crate::CeilingEnforcement::Verified`]).
    Verified,
    /// Fixed outside the request ([`crate::CeilingEnforcement::Fixed`]).
    Fixed,
    /// Cut down by the broker ([`crate::CeilingEnforcement::Local`]).
    Local,
}

impl CeilingMode {
    /// The catalog's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            CeilingMode::Upstream => "upstream",
            CeilingMode::Verified => "verified",
            CeilingMode::Fixed => "fixed",
            CeilingMode::Local => "local",
        }
    }
}

/// What `credbroker provider list|show` says about a provider: declared by the provider
/// itself, next to its code, and nowhere else. Paths are relative to the repository root
/// (a test checks that each exists).
#[derive(Debug, Clone, Copy)]
pub struct CatalogEntry {
    /// One or two sentences: what the provider connects to and how.
    pub description: &'static str,
    /// What a resolve returns: the response's `kind` and its credential fields.
    pub returns: &'static str,
    /// Federation or pasted secret.
    pub source: CredentialSource,
    /// How the ceiling is enforced.
    pub ceiling_mode: CeilingMode,
    /// The policies/ file holding its ceiling, when it has one.
    pub policy_file: Option<&'static str>,
    /// What the customer runs or installs (onboarding-templates/…).
    pub artifacts: &'static [&'static str],
    /// Its runbooks (runbooks/…).
    pub runbooks: &'static [&'static str],
    /// How workers consume the credential (`credbroker client …`, SDK hooks).
    pub clients: &'static [&'static str],
    /// The default rotation policy of a stored secret: the most days it may age before the
    /// inventory flags rotation overdue (`None`: no stored secret to rotate, or no policy).
    /// `[inventory] max_secret_age_days` and a binding's own setting override it.
    pub max_secret_age_days: Option<u32>,
}

/// Everything the broker and its CLI know about one provider.
pub struct ProviderDescriptor {
    /// The registry id (`aws_assume_role`): bindings name it, the config's section is
    /// `[providers.<id>]`.
    pub id: &'static str,
    /// How a daemon gets it.
    pub availability: Availability,
    /// CLI declarations.
    pub cli: CliSpec,
    /// Template lint, when the provider ships templates.
    pub template_lint: Option<TemplateLint>,
    /// What the catalog shows.
    pub catalog: CatalogEntry,
}

/// The descriptor of provider `id`.
pub fn descriptor(id: &str) -> Option<&'static ProviderDescriptor> {
    CATALOG.iter().copied().find(|d| d.id == id)
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

    /// The providers that need no settings (currently `pasted_secret`).
    pub fn builtin() -> Self {
        let mut registry = Self::new();
        for d in CATALOG {
            if let Availability::Builtin(make) = d.availability {
                registry.register(make());
            }
        }
        registry
    }

    /// The built-in providers plus one per `[providers.<id>]` section.
    ///
    /// # Errors
    /// A section naming no provider of this build, a section for a built-in provider, or a
    /// provider that cannot start (e.g. its ceiling policy file is missing: a missing policy
    /// denies, so the daemon does not start without it).
    pub async fn from_settings(
        sections: &BTreeMap<String, toml::Value>,
        base_dir: &Path,
    ) -> Result<Self, String> {
        let mut registry = Self::builtin();
        for (id, section) in sections {
            let d = descriptor(id).ok_or_else(|| {
                format!(
                    "[providers.{id}]: no such provider in this build (known: {})",
                    CATALOG.iter().map(|d| d.id).collect::<Vec<_>>().join(", ")
                )
            })?;
            match d.availability {
                Availability::Builtin(_) => {
                    return Err(format!(
                        "[providers.{id}]: built in, it takes no settings section"
                    ))
                }
                Availability::Configured(build) => {
                    let provider = build(section.clone(), base_dir)
                        .await
                        .map_err(|e| format!("providers.{id}: {e}"))?;
                    registry.register(provider);
                }
            }
        }
        Ok(registry)
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

    /// The registered providers, sorted by name.
    pub fn providers(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.providers.values()
    }
}

/// Resolves `path` against `base` when it is relative, dropping `.` components.
pub fn resolve_path(base: &Path, path: &mut std::path::PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
    *path = path
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_pasted_secret_only() {
        let r = ProviderRegistry::builtin();
        assert_eq!(r.names().collect::<Vec<_>>(), vec![DEMO_PROVIDER]);
    }

    #[test]
    fn the_catalog_is_consistent() {
        let mut ids: Vec<_> = CATALOG.iter().map(|d| d.id).collect();
        let mut names: Vec<_> = CATALOG.iter().map(|d| d.cli.name).collect();
        ids.sort_unstable();
        names.sort_unstable();
        ids.dedup();
        names.dedup();
        assert_eq!(ids.len(), CATALOG.len(), "duplicate provider id");
        assert_eq!(names.len(), CATALOG.len(), "duplicate CLI name");
        for d in CATALOG {
            assert!(
                d.id.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                d.id
            );
            if let Availability::Builtin(make) = d.availability {
                assert_eq!(make().id(), d.id);
            }
        }
    }

    /// Every provider describes itself in the catalog, and every file it names ships.
    #[test]
    fn every_provider_has_a_complete_catalog_entry() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for d in CATALOG {
            let c = &d.catalog;
            assert!(
                !c.description.trim().is_empty(),
                "{} lacks a description",
                d.id
            );
            assert!(
                !c.returns.trim().is_empty(),
                "{} does not say what it returns",
                d.id
            );
            assert!(
                !c.clients.is_empty(),
                "{} names no client integration",
                d.id
            );
            for path in c.policy_file.iter().chain(c.artifacts).chain(c.runbooks) {
                assert!(root.join(path).exists(), "{}: {path} does not exist", d.id);
            }
            if c.source == CredentialSource::Federation {
                assert!(
                    !c.artifacts.is_empty() || !c.runbooks.is_empty(),
                    "{}",
                    d.id
                );
            }
            if let Availability::Builtin(make) = d.availability {
                let p = make();
                let mode = match p.ceiling_enforcement() {
                    crate::CeilingEnforcement::Upstream => CeilingMode::Upstream,
                    crate::CeilingEnforcement::Verified => CeilingMode::Verified,
                    crate::CeilingEnforcement::Fixed => CeilingMode::Fixed,
                    crate::CeilingEnforcement::Local => CeilingMode::Local,
                };
                assert_eq!(mode, c.ceiling_mode, "{}", d.id);
            }
        }
    }

    #[tokio::test]
    async fn unknown_and_builtin_sections_are_refused() {
        let dir = Path::new("/");
        let mut sections = BTreeMap::new();
        sections.insert("no_such".to_owned(), toml::Value::Table(Default::default()));
        let err = ProviderRegistry::from_settings(&sections, dir)
            .await
            .err()
            .unwrap();
        assert!(err.contains("no such provider"), "{err}");
        let mut sections = BTreeMap::new();
        sections.insert(
            DEMO_PROVIDER.to_owned(),
            toml::Value::Table(Default::default()),
        );
        let err = ProviderRegistry::from_settings(&sections, dir)
            .await
            .err()
            .unwrap();
        assert!(err.contains("takes no settings"), "{err}");
    }
}
