//! The provider catalog as JSON: every field comes from the provider's own
//! [`credbroker_providers::ProviderDescriptor`] (its catalog entry and its CLI flags), so
//! nothing here describes a provider by hand.

use serde_json::{json, Value};

use credbroker_providers::{FlagTarget, FlagValue, ProviderDescriptor};

/// One provider's catalog entry.
pub fn entry(d: &ProviderDescriptor) -> Value {
    let c = &d.catalog;
    let flags: Vec<Value> = d
        .cli
        .binding_flags
        .iter()
        .map(|f| {
            json!({
                "flag": format!("--{}", f.long),
                "config": match f.target {
                    FlagTarget::Key(k) => k.to_owned(),
                    FlagTarget::WholeConfig => "(whole config)".to_owned(),
                    FlagTarget::Nested(outer, inner) => format!("{outer}.{inner}"),
                },
                "value": match f.value {
                    FlagValue::Text => "text",
                    FlagValue::Integer => "integer",
                    FlagValue::Switch => "switch",
                    FlagValue::JsonObject => "json_object",
                },
                "required": f.required,
                "help": f.help,
            })
        })
        .collect();
    json!({
        "id": d.id,
        "cli_name": d.cli.name,
        "description": c.description,
        "returns": c.returns,
        "source": c.source.as_str(),
        "ceiling_mode": c.ceiling_mode.as_str(),
        "policy_file": c.policy_file,
        "binding_config": flags,
        "onboarding": d.cli.onboard,
        "artifacts": c.artifacts,
        "runbooks": c.runbooks,
        "clients": c.clients,
        "max_secret_age_days": c.max_secret_age_days,
        "platform_keys": d.cli.keys.is_some(),
        "settings_section": match d.availability {
            credbroker_providers::Availability::Builtin(_) => None,
            credbroker_providers::Availability::Configured(_) => Some(format!("[providers.{}]", d.id)),
        },
    })
}

/// Every provider of this build.
pub fn all() -> Vec<Value> {
    credbroker_providers::CATALOG
        .iter()
        .map(|d| entry(d))
        .collect()
}
