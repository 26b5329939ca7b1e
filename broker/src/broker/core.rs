//! What the services ask of the shared core: its issuer and signer, parsed bindings, the
//! settings they read, and the sealed secrets they open.

use std::sync::Arc;
use std::time::Duration;

use credbroker_providers::{Bound, Provider, ProviderError, SecretFields};

use super::Core;
use crate::audit::AuditLog;
use crate::model::{Binding, SecretVersion};
use crate::seal::open_secret;
use crate::store::records::Records;

impl Core {
    /// Whether the daemon is stopping: no mint starts any more (see
    /// [`super::Broker::settle_reports`]).
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The broker's own OIDC issuer, when configured.
    pub fn issuer(&self) -> Option<&Arc<crate::issuer::Issuer>> {
        self.issuer.as_ref()
    }

    /// A signer for one mint or probe, recording what it signs for the audit record.
    pub(crate) fn assertion_signer(&self) -> crate::issuer::RecordingSigner {
        crate::issuer::RecordingSigner::new(self.issuer.clone())
    }

    /// `binding` as its provider parses it ([`Provider::bind`]), parsed once per binding
    /// generation.
    ///
    /// # Errors
    /// The provider's refusal of the stored configuration.
    pub(crate) fn bound(
        &self,
        binding: &Binding,
        provider: &dyn Provider,
    ) -> Result<Bound, ProviderError> {
        // Looked up by reference: a hit allocates nothing.
        let hit = self.bound.lock().ok().and_then(|m| {
            m.get(&binding.id)
                .filter(|(generation, _)| *generation == binding.generation)
                .map(|(_, b)| b.clone())
        });
        if let Some(b) = hit {
            return Ok(b);
        }
        let b = provider.bind(&binding.config, &binding.ceiling)?;
        if let Ok(mut m) = self.bound.lock() {
            if m.len() >= self.settings.record_cache_entries.max(1) {
                m.clear();
            }
            // A newer generation replaces the older one's entry.
            m.insert(binding.id.clone(), (binding.generation.clone(), b.clone()));
        }
        Ok(b)
    }

    /// How long superseded secret versions are kept.
    pub fn superseded_overlap_s(&self) -> u64 {
        self.settings.superseded_overlap_s
    }

    /// Lifetime of install `state`s.
    pub fn callback_state_ttl_s(&self) -> u64 {
        self.settings.callback_state_ttl_s
    }

    /// `[public] base_url`, if configured.
    pub fn public_base_url(&self) -> Option<&str> {
        self.settings.public_base_url.as_deref()
    }

    /// The metrics a mint updates.
    pub(crate) fn mint_metrics(&self) -> crate::resolve::MintMetrics {
        crate::resolve::MintMetrics {
            mints: self.metrics.mints.clone(),
            mint_latency: self.metrics.mint_latency.clone(),
        }
    }

    /// Deadline for one upstream mint or probe.
    pub fn mint_timeout(&self) -> Duration {
        self.settings.mint_timeout
    }

    /// The SPIFFE trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.settings.trust_domain
    }

    /// The audit log.
    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// Typed store access.
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// Whether the broker can serve resolves (audit writable).
    pub fn ready(&self) -> bool {
        self.audit.healthy()
    }

    /// Stops the audit writer after a final checkpoint.
    pub fn shutdown(&self) {
        self.audit.close();
    }

    /// Stops renewing the replica's leases and gives them up, so another broker may lead
    /// at once (at shutdown, after the last request).
    pub async fn leave(&self) {
        self.replica.leave().await;
    }

    /// Opens the active secret version of `binding`.
    pub(crate) async fn open_active_secret(
        &self,
        binding: &Binding,
    ) -> Result<SecretFields, ProviderError> {
        let sealed = self.sealed_active_secret(binding).await?;
        self.open_sealed(binding, &sealed)
    }

    /// The sealed (still encrypted) active secret version of `binding`.
    pub(crate) async fn sealed_active_secret(
        &self,
        binding: &Binding,
    ) -> Result<Arc<SecretVersion>, ProviderError> {
        let version = binding
            .active_secret_version
            .ok_or(ProviderError::SecretMissing)?;
        self.records
            .shared_secret_version(&binding.id, version)
            .await
            .map_err(|e| secret_read_failed(binding, &e))?
            .ok_or(ProviderError::SecretMissing)
    }

    /// Opens a sealed secret version of `binding` (plaintext in a zeroizing value).
    pub(crate) fn open_sealed(
        &self,
        binding: &Binding,
        stored: &SecretVersion,
    ) -> Result<SecretFields, ProviderError> {
        open_secret(
            &self.keyring,
            &binding.tenant,
            &binding.id,
            stored.version,
            stored.kek_version,
            &stored.wrapped_dek,
            &stored.sealed_payload,
        )
        .map_err(|e| {
            tracing::error!(binding = %binding.id, version = stored.version, error = %e, "stored secret failed to open");
            ProviderError::Internal("stored secret could not be opened".into())
        })
    }
}

/// A store failure reading a binding's sealed secret: logged for the operator, answered with
/// no word of the store's own (a database's error text, a key) to the worker or operator who
/// asked.
pub(crate) fn secret_read_failed(binding: &Binding, e: &crate::store::StoreError) -> ProviderError {
    tracing::error!(binding = %binding.id, error = %e, "store read of a sealed secret failed");
    ProviderError::Internal("store read failed".into())
}
