//! `pasted_secret`: the fallback for systems with no federation (Atlassian Data Center PATs,
//! generic SaaS keys). The secret is envelope-decrypted on demand by the core and handed back
//! as-is, optionally restricted to a subset of its fields. It is never cached: plaintext
//! should not outlive one resolve response.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::registry::{
    Availability, CatalogEntry, CeilingMode, CliSpec, ConfigFlag, CredentialSource, FlagTarget,
    FlagValue, ProviderDescriptor,
};

use crate::{
    BindingContext, Bound, CachePolicy, CeilingEnforcement, IssuedCredential, MintRequest,
    Narrowing, Probe, ProbeReport, Provider, ProviderError, SecretRequirement,
};

/// Returns the decrypted secret fields of the binding's active version.
///
/// Configuration: any JSON object (free-form, non-secret notes such as the target URL).
/// Ceiling: optional `{"fields": ["name", …]}` — the fields a resolve may receive; absent
/// means every field. Narrowing: `{"fields": ["name", …]}` — a subset of the ceiling.
#[derive(Debug, Clone, Copy, Default)]
pub struct PastedSecret;

/// The registry id.
pub const ID: &str = "pasted_secret";

fn builtin() -> Arc<dyn Provider> {
    Arc::new(PastedSecret)
}

/// The catalog entry.
pub(crate) const DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    id: ID,
    availability: Availability::Builtin(builtin),
    cli: CliSpec {
        name: "pasted-secret",
        about: "A pasted secret (set its fields with `credbroker secret set`).",
        binding_flags: &[ConfigFlag {
            long: "config",
            help: "Non-secret notes, JSON object.",
            value: FlagValue::JsonObject,
            target: FlagTarget::WholeConfig,
            required: false,
        }],
        by_hand: true,
        onboard: None,
        keys: None,
        onboard_pin: crate::registry::OnboardPin::None,
        revoke_tokens: false,
    },
    template_lint: None,
    catalog: CatalogEntry {
        max_secret_age_days: Some(90),
        description: "The fallback for systems with no federation: a pasted secret, sealed at rest and handed back as-is on resolve, optionally restricted to a subset of its fields.",
        returns: "kind `secret_fields`: the secret's own fields (or the ceiling's/narrowing's subset)",
        source: CredentialSource::PastedSecret,
        ceiling_mode: CeilingMode::Local,
        policy_file: None,
        artifacts: &[],
        runbooks: &[
            "runbooks/intake-link.md",
            "runbooks/pasted-secret-rotation.md",
            "runbooks/pasted-secret-leak.md",
        ],
        clients: &["POST /v1/resolve (mTLS)"],
    },
};

fn field_list(value: &Value, what: &str) -> Result<Vec<String>, String> {
    let obj = value
        .as_object()
        .ok_or_else(|| format!("{what} must be a JSON object"))?;
    for key in obj.keys() {
        if key != "fields" {
            return Err(format!("{what} has unknown key {key:?}"));
        }
    }
    let Some(fields) = obj.get("fields") else {
        return Ok(Vec::new());
    };
    let arr = fields
        .as_array()
        .ok_or_else(|| format!("{what}.fields must be an array of field names"))?;
    let mut names = Vec::with_capacity(arr.len());
    for v in arr {
        let name = v
            .as_str()
            .ok_or_else(|| format!("{what}.fields must be an array of field names"))?;
        crate::secret::validate_field_name(name)?;
        names.push(name.to_owned());
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// A binding as [`Provider::bind`] parsed it: the fields a resolve may obtain (`None`: all).
struct PastedBinding {
    fields: Option<Vec<String>>,
}

fn ceiling_fields(ceiling: &Value) -> Result<Option<Vec<String>>, ProviderError> {
    if ceiling.is_null() {
        return Ok(None);
    }
    let names = field_list(ceiling, "ceiling").map_err(ProviderError::InvalidConfig)?;
    // An empty list used to mean "every field": the widest ceiling written as the narrowest.
    // No ceiling (null) allows every field; a ceiling must name at least one.
    if names.is_empty() {
        return Err(ProviderError::InvalidConfig(
            "ceiling.fields must name at least one field (omit the ceiling to allow every field)"
                .into(),
        ));
    }
    Ok(Some(names))
}

#[async_trait]
impl Provider for PastedSecret {
    fn id(&self) -> &'static str {
        ID
    }

    fn secret_requirement(&self) -> SecretRequirement {
        SecretRequirement::Required
    }

    fn mints_upstream(&self) -> bool {
        false
    }

    fn cache_policy(&self) -> CachePolicy {
        CachePolicy::Never
    }

    fn ceiling_enforcement(&self) -> CeilingEnforcement {
        CeilingEnforcement::Local
    }

    fn secret_fields(&self, binding: &BindingContext<'_>) -> Vec<String> {
        binding
            .bound
            .get::<PastedBinding>()
            .ok()
            .and_then(|b| b.fields.clone())
            .unwrap_or_default()
    }

    fn probe(&self) -> Option<&dyn Probe> {
        Some(self)
    }

    fn bind(&self, config: &Value, ceiling: &Value) -> Result<Bound, ProviderError> {
        if !(config.is_null() || config.is_object()) {
            return Err(ProviderError::InvalidConfig(
                "pasted_secret config must be a JSON object".into(),
            ));
        }
        Ok(Bound::new(PastedBinding {
            fields: ceiling_fields(ceiling)?,
        }))
    }

    fn describe_ceiling(&self, binding: &BindingContext<'_>) -> Value {
        match binding.bound.get::<PastedBinding>().map(|b| &b.fields) {
            Ok(Some(names)) => json!({ "fields": names }),
            Ok(None) => json!({ "fields": "all" }),
            Err(e) => json!({ "error": e.to_string() }),
        }
    }

    fn normalize_narrowing(
        &self,
        binding: &BindingContext<'_>,
        narrow: Option<&Value>,
    ) -> Result<Narrowing, ProviderError> {
        let Some(narrow) = narrow else {
            return Ok(Narrowing::none());
        };
        let wanted = field_list(narrow, "narrow").map_err(ProviderError::InvalidNarrowing)?;
        if wanted.is_empty() {
            return Ok(Narrowing::none());
        }
        if let Some(allowed) = &binding.bound.get::<PastedBinding>()?.fields {
            if let Some(extra) = wanted.iter().find(|w| !allowed.contains(w)) {
                return Err(ProviderError::NarrowingExceedsCeiling(format!(
                    "field {extra:?} is not in the binding's ceiling"
                )));
            }
        }
        Ok(Narrowing {
            canonical: format!("fields={}", wanted.join(",")),
            value: Some(json!({ "fields": wanted })),
        })
    }

    async fn mint(&self, request: &MintRequest<'_>) -> Result<IssuedCredential, ProviderError> {
        let secret = request.secret.ok_or(ProviderError::SecretMissing)?;
        let ceiling = request.binding.bound.get::<PastedBinding>()?.fields.clone();
        let wanted: Option<Vec<String>> = match &request.narrowing.value {
            Some(v) => Some(field_list(v, "narrow").map_err(ProviderError::InvalidNarrowing)?),
            None => ceiling,
        };
        let credentials = match wanted {
            None => secret.clone(),
            Some(names) => secret
                .subset(names.iter().map(String::as_str))
                .ok_or_else(|| {
                    ProviderError::NarrowingExceedsCeiling(
                        "a requested field is not present in the secret".into(),
                    )
                })?,
        };
        Ok(IssuedCredential {
            kind: "secret_fields",
            credentials,
            expires_at: None,
            upstream_request_id: None,
            details: serde_json::Value::Null,
            subject: None,
        })
    }
}

#[async_trait]
impl Probe for PastedSecret {
    fn gates_activation(&self) -> bool {
        false
    }

    async fn probe(&self, request: &MintRequest<'_>) -> Result<ProbeReport, ProviderError> {
        let secret = request.secret.ok_or(ProviderError::SecretMissing)?;
        if secret.is_empty() {
            return Err(ProviderError::SecretMissing);
        }
        // Nothing upstream to ask: the secret must at least carry every field the ceiling
        // promises resolves (a rotation that dropped one would break every worker).
        if let Some(promised) = &request.binding.bound.get::<PastedBinding>()?.fields {
            let names: Vec<&str> = secret.names().collect();
            let missing: Vec<&str> = promised
                .iter()
                .map(String::as_str)
                .filter(|f| !names.contains(f))
                .collect();
            if !missing.is_empty() {
                return Err(ProviderError::ActivationRefused {
                    reason: crate::RefusalReason::Other,
                    message: format!(
                        "the secret lacks field(s) the binding's ceiling serves: {}",
                        missing.join(", ")
                    ),
                    upstream_request_id: None,
                });
            }
        }
        Ok(ProbeReport {
            summary: format!("secret opens; {} field(s)", secret.len()),
            facts: Value::Null,
            upstream_request_ids: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretFields;
    use std::time::Duration;

    fn ctx<'a>(config: &'a Value, ceiling: &'a Value, bound: &'a Bound) -> BindingContext<'a> {
        BindingContext {
            tenant_id: "t1",
            binding_id: "b1",
            config,
            ceiling,
            bound,
        }
    }

    #[tokio::test]
    async fn narrowing_selects_fields_and_respects_ceiling() {
        let config = json!({});
        let ceiling = json!({"fields": ["token", "user"]});
        let bound = PastedSecret.bind(&config, &ceiling).unwrap();
        let b = ctx(&config, &ceiling, &bound);
        let p = PastedSecret;
        let n = p
            .normalize_narrowing(&b, Some(&json!({"fields": ["token"]})))
            .unwrap();
        assert_eq!(n.canonical, "fields=token");
        let err = p
            .normalize_narrowing(&b, Some(&json!({"fields": ["admin"]})))
            .unwrap_err();
        assert!(matches!(err, ProviderError::NarrowingExceedsCeiling(_)));
        assert!(matches!(
            p.normalize_narrowing(&b, Some(&json!({"scopes": []}))),
            Err(ProviderError::InvalidNarrowing(_))
        ));

        let secret = SecretFields::from_json(br#"{"token":"t","user":"u","extra":"e"}"#).unwrap();
        let req = MintRequest {
            binding: b,
            instance_id: "i",
            worker: "w",
            narrowing: &n,
            secret: Some(&secret),
            timeout: Duration::from_secs(1),
            min_ttl_s: 0,
            assertions: &crate::NoIssuer,
        };
        let out = p.mint(&req).await.unwrap();
        assert_eq!(out.credentials.names().collect::<Vec<_>>(), vec!["token"]);

        // Without narrowing, the ceiling still restricts what is handed out.
        let none = Narrowing::none();
        let req = MintRequest {
            narrowing: &none,
            ..req
        };
        let out = p.mint(&req).await.unwrap();
        assert_eq!(
            out.credentials.names().collect::<Vec<_>>(),
            vec!["token", "user"]
        );
    }

    #[tokio::test]
    async fn mint_without_secret_is_secret_missing() {
        let config = json!({});
        let ceiling = Value::Null;
        let bound = PastedSecret.bind(&config, &ceiling).unwrap();
        let n = Narrowing::none();
        let req = MintRequest {
            binding: ctx(&config, &ceiling, &bound),
            instance_id: "i",
            worker: "w",
            narrowing: &n,
            secret: None,
            timeout: Duration::from_secs(1),
            min_ttl_s: 0,
            assertions: &crate::NoIssuer,
        };
        assert_eq!(
            PastedSecret.mint(&req).await.err(),
            Some(ProviderError::SecretMissing)
        );
    }

    #[test]
    fn an_empty_ceiling_is_refused_not_read_as_every_field() {
        let config = json!({});
        for ceiling in [json!({"fields": []}), json!({})] {
            assert!(
                matches!(
                    PastedSecret.bind(&config, &ceiling),
                    Err(ProviderError::InvalidConfig(_))
                ),
                "{ceiling}"
            );
        }
        assert!(PastedSecret.bind(&config, &Value::Null).is_ok());
    }
}
