//! The Entra probe: what an activation (and `binding probe`) proves of a consenting tenant.

use async_trait::async_trait;
use serde_json::json;

use super::{claims, EntraApp, EntraBinding, Resource};
use crate::{MintRequest, Probe, ProbeReport, ProviderError, RefusalReason};

#[async_trait]
impl Probe for EntraApp {
    fn gates_activation(&self) -> bool {
        true
    }

    /// Mints a Graph token (claims and permissions checked as for a resolve) and, when the
    /// binding has ARM scopes, an ARM token and the role assignments of our service
    /// principal at each scope, refusing any role outside the ceiling.
    async fn probe(&self, request: &MintRequest<'_>) -> Result<ProbeReport, ProviderError> {
        let bound = request.binding.bound.get::<EntraBinding>()?;
        let tenant = &bound.config.tenant;
        let answer = self
            .token_for(tenant, Resource::Graph, request.timeout, request.assertions)
            .await?;
        // The sign-ins that issued the probe's tokens, as the tenant's service-principal
        // sign-in log lists them (ARM's reads of role assignments are not in its activity
        // log, and a refused app credential is in the daemon's log with its request id).
        let mut calls: Vec<String> = answer.request_id.iter().cloned().collect();
        let roles = self
            .check_roles(&answer, bound)
            .map_err(|e| e.after_calls(&calls))?;
        let oid = answer
            .claims
            .oid
            .as_deref()
            .and_then(claims::guid)
            .unwrap_or_default();
        let mut arm = Vec::new();
        if !bound.config.arm_scopes.is_empty() {
            let arm_token = self
                .token_for(tenant, Resource::Arm, request.timeout, request.assertions)
                .await
                .map_err(|e| e.after_calls(&calls))?;
            calls.extend(arm_token.request_id.iter().cloned());
            arm = self
                .check_arm(&arm_token, bound, request.timeout)
                .await
                .map_err(|e| match e {
                    // At activation a wrong role assignment is the customer's to fix.
                    ProviderError::Denied {
                        message,
                        upstream_request_id,
                        trust_broken: false,
                    } => ProviderError::ActivationRefused {
                        reason: RefusalReason::Other,
                        message,
                        upstream_request_id,
                    },
                    other => other,
                })
                .map_err(|e| e.after_calls(&calls))?;
            if let Some(empty) = arm
                .iter()
                .find(|a| a["roles"].as_array().is_some_and(Vec::is_empty))
            {
                return Err(ProviderError::ActivationRefused {
                    reason: RefusalReason::Other,
                    message: format!(
                        "our service principal {oid} holds no role at {}: deploy onboarding-templates/azure with principalId={oid}",
                        empty["scope"].as_str().unwrap_or("?")
                    ),
                    upstream_request_id: arm_token.request_id.clone(),
                }
                .after_calls(&calls));
            }
        }
        Ok(ProbeReport {
            summary: format!(
                "tenant {tenant}: service principal {oid}; Graph permissions granted: {}{}",
                roles.join(", "),
                if arm.is_empty() {
                    String::new()
                } else {
                    format!("; ARM role assignments checked at {} scope(s)", arm.len())
                }
            ),
            facts: json!({
                "tenant_id": tenant,
                "service_principal_id": oid,
                "graph_permissions": roles,
                "arm": arm,
                "confirmed_at": time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            }),
            upstream_request_ids: calls,
        })
    }
}
