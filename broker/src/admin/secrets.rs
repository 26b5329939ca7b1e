//! Plans for a binding's sealed secret: set, rotate (the previous version is kept as
//! superseded), destroy. Values are sealed here and never returned.

use serde_json::{json, Value};

use credbroker_providers::{SecretFields, SecretRequirement};

use super::AdminService;
use crate::api_error::{ApiError, ErrorCode};
use crate::model::{now_rfc3339, SecretState, SecretVersion};
use crate::seal::seal_secret;
use crate::store::records::Stored;

use super::{fresh_generation, store_err, Plan};

impl AdminService {
    pub(super) async fn plan_secret_write(
        &self,
        id: &str,
        fields: SecretFields,
        rotate: bool,
    ) -> Result<Plan, ApiError> {
        let stored = self.binding_or_404(id).await?;
        let mut binding = stored.value.clone();
        let provider = self.core.registry.get(&binding.provider).ok_or_else(|| {
            ApiError::new(
                ErrorCode::BindingInactive,
                "binding's provider is not available in this build",
            )
        })?;
        if provider.secret_requirement() != SecretRequirement::Required {
            return Err(ApiError::bad_request(format!(
                "provider {} is federated and takes no secret",
                binding.provider
            )));
        }
        let mut plan = Plan::new(String::new(), Value::Null);
        match (rotate, binding.active_secret_version) {
            (false, Some(v)) => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("binding {id} already has active secret version {v}; use rotate"),
                ))
            }
            (true, None) => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("binding {id} has no active secret to rotate; use set"),
                ))
            }
            (true, Some(old)) => {
                let read = self
                    .core
                    .records
                    .secret_version(&binding.id, old)
                    .await
                    .map_err(store_err)?
                    .ok_or_else(|| {
                        ApiError::new(ErrorCode::Internal, "active secret version is missing")
                    })?;
                let mut previous = read.value.clone();
                previous.state = SecretState::Superseded;
                plan.batch.replace(&read, &previous);
            }
            (false, None) => {}
        }
        let version = binding
            .last_secret_version
            .checked_add(1)
            .ok_or_else(|| ApiError::new(ErrorCode::Conflict, "secret version space exhausted"))?;
        let sealed = seal_secret(
            &self.core.keyring,
            &binding.tenant,
            &binding.id,
            version,
            &fields,
        )
        .map_err(|e| {
            tracing::error!(error = %e, "sealing failed");
            ApiError::new(ErrorCode::Internal, "sealing failed")
        })?;
        let names: Vec<String> = fields.names().map(str::to_owned).collect();
        let record = SecretVersion {
            binding: binding.id.clone(),
            version,
            state: SecretState::Active,
            field_names: names.clone(),
            kek_version: sealed.kek_version,
            wrapped_dek: sealed.wrapped_dek,
            sealed_payload: sealed.sealed_payload,
            created_at: now_rfc3339(),
        };
        plan.batch.create(&record);
        binding.active_secret_version = Some(version);
        binding.last_secret_version = version;
        binding.generation = fresh_generation()?;
        plan.batch.replace(&stored, &binding);
        plan.detail = format!(
            "binding={} version={version} fields=[{}]",
            binding.id,
            names.join(",")
        );
        plan.response = json!({
            "binding": binding.id.as_str(),
            "version": version,
            "field_names": names,
            "superseded": if rotate { json!(version - 1) } else { Value::Null },
        });
        plan.tenant = Some(binding.tenant.to_string());
        plan.binding = Some(binding.id.to_string());
        plan.invalidate_binding = Some(binding.id.to_string());
        plan.created = !rotate;
        Ok(plan)
    }

    pub(super) async fn plan_secret_destroy(
        &self,
        id: &str,
        version: Option<u32>,
    ) -> Result<Plan, ApiError> {
        let stored = self.binding_or_404(id).await?;
        let mut binding = stored.value.clone();
        let versions = self
            .core
            .records
            .secret_versions(&binding.id)
            .await
            .map_err(store_err)?;
        let doomed: Vec<&Stored<SecretVersion>> = match version {
            None => versions.iter().collect(),
            Some(v) => {
                let found: Vec<&Stored<SecretVersion>> =
                    versions.iter().filter(|s| s.version == v).collect();
                if found.is_empty() {
                    return Err(ApiError::new(
                        ErrorCode::UnknownRecord,
                        format!("binding {id} has no secret version {v}"),
                    ));
                }
                found
            }
        };
        if doomed.is_empty() {
            return Err(ApiError::new(
                ErrorCode::UnknownRecord,
                format!("binding {id} has no secret"),
            ));
        }
        let mut plan = Plan::new(String::new(), Value::Null);
        let mut destroyed = Vec::new();
        for v in &doomed {
            plan.batch.remove(v);
            destroyed.push(v.version);
            if binding.active_secret_version == Some(v.version) {
                binding.active_secret_version = None;
            }
        }
        plan.batch.replace(&stored, &binding);
        plan.detail = format!(
            "binding={} destroyed_versions=[{}]",
            binding.id,
            destroyed
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        plan.response = json!({
            "binding": binding.id.as_str(),
            "destroyed_versions": destroyed,
            "active_secret_version": binding.active_secret_version,
        });
        plan.tenant = Some(binding.tenant.to_string());
        plan.binding = Some(binding.id.to_string());
        plan.invalidate_binding = Some(binding.id.to_string());
        Ok(plan)
    }
}
