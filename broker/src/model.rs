//! The records the store keeps. None of them holds secret material in the clear: secret
//! versions are sealed (see `seal`), everything else is configuration and status.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{BindingId, InstanceId, TenantId, WorkerId};

/// Whether a record takes part in resolves. Disabling keeps configuration intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// In service.
    Active,
    /// Kept but refused by every resolve.
    Disabled,
    /// A new binding whose provider requires an activation probe that has not passed yet.
    PendingActivation,
}

/// A customer tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Tenant id.
    pub id: TenantId,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Status.
    pub status: Status,
    /// Bumped whenever a worker, binding or instance of the tenant is added or removed, so a
    /// change planned on "no children" fails if one appeared meanwhile.
    #[serde(default)]
    pub revision: u64,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// Who answers for a non-human identity (a worker, a binding) and why it exists: the owner
/// and purpose the inventory reports. Records made before the inventory have none and are
/// flagged `unowned` until an operator sets them (`credbroker binding set-owner`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Governance {
    /// The team or contact that answers for it (1-200 printable characters).
    pub owner: String,
    /// What it is for (1-200 printable characters).
    pub purpose: String,
}

/// A connector worker, identified by its certificate, and what it may act for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Worker {
    /// Worker name (the last segment of `spiffe://<trust-domain>/worker/<name>`).
    pub id: WorkerId,
    /// Tenants this worker may resolve for. Explicit list only: there is no wildcard.
    pub tenants: Vec<TenantId>,
    /// Connector kinds this worker may resolve for; empty means any kind.
    #[serde(default)]
    pub connector_kinds: Vec<String>,
    /// Status.
    pub status: Status,
    /// Owner and purpose (absent on workers added before the inventory: `unowned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governance: Option<Governance>,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// A worker record as the resolve path reads it: the record, and the tenants it may serve
/// as a set, built once when the record is decoded — a worker serving every customer of a
/// platform (thousands of tenants) is checked in one lookup per resolve, not a scan of its
/// list. Read-only: changes go to [`Worker`] through the admin pipeline.
#[derive(Debug, Deserialize)]
#[serde(from = "Worker")]
pub struct ServingWorker {
    record: Worker,
    /// `record.tenants` as a set (named apart: outside this module `tenants` is the list,
    /// through `Deref`).
    tenant_set: std::collections::HashSet<TenantId>,
}

impl From<Worker> for ServingWorker {
    fn from(record: Worker) -> Self {
        ServingWorker {
            tenant_set: record.tenants.iter().cloned().collect(),
            record,
        }
    }
}

impl ServingWorker {
    /// Whether the worker may resolve for `tenant`.
    pub fn serves(&self, tenant: &TenantId) -> bool {
        self.tenant_set.contains(tenant)
    }
}

impl std::ops::Deref for ServingWorker {
    type Target = Worker;
    fn deref(&self) -> &Worker {
        &self.record
    }
}

/// An operator: a certificate `spiffe://<trust-domain>/operator/<name>` administers only
/// while this record is active.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    /// Operator name (the last segment of its SPIFFE id).
    pub id: crate::ids::OperatorId,
    /// Status.
    pub status: Status,
    /// Bumped at every status change, so that a disable followed by a re-enable leaves a
    /// different record: a change admitted on the record as it was before does not land.
    /// Absent (0) on a record never changed, which a previous release reads as it wrote it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u64,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One connector instance (e.g. "scan of account 1234 for tenant acme").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// Instance id.
    pub id: InstanceId,
    /// Owning tenant: read from the store on every resolve, never from the request.
    pub tenant: TenantId,
    /// Connector kind (`aws`, `servicenow`, `jira`…), matched against worker policy.
    pub connector_kind: String,
    /// The tenant's binding this instance resolves through.
    pub binding: BindingId,
    /// Status.
    pub status: Status,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// A tenant's trust relationship or pasted secret with one provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// Binding id.
    pub id: BindingId,
    /// Owning tenant.
    pub tenant: TenantId,
    /// Provider name (a registry key).
    pub provider: String,
    /// Non-secret, provider-specific configuration.
    #[serde(default)]
    pub config: Value,
    /// The most a resolve may obtain through this binding.
    #[serde(default)]
    pub ceiling: Value,
    /// Status.
    pub status: Status,
    /// Version number of the active sealed secret, if any.
    #[serde(default)]
    pub active_secret_version: Option<u32>,
    /// Highest secret version ever written (versions are never reused).
    #[serde(default)]
    pub last_secret_version: u32,
    /// The version a rotation wrote, waiting for its probe and promotion (never served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_secret_version: Option<u32>,
    /// When the last probe ran, RFC 3339.
    #[serde(default)]
    pub last_tested_at: Option<String>,
    /// What the last probe found (no secrets).
    #[serde(default)]
    pub last_probe: Option<String>,
    /// Set when the upstream denied us in a way that means the customer changed or removed
    /// the trust relationship; cleared by a passing probe.
    #[serde(default)]
    pub trust_broken: bool,
    /// Random value that changes whenever the binding is created (so a removed and re-added
    /// id is a new binding), its credential source changes, or what was minted from it must
    /// not be served any more (its status changed, a drift was flagged, a probe refused its
    /// trust); the token cache keys on it so nothing minted for an earlier incarnation is
    /// ever served, by any replica. Empty in stores written before it existed (a re-created
    /// binding still gets a fresh one).
    #[serde(default)]
    pub generation: String,
    /// Bumped whenever an instance of the binding is added or removed (see
    /// [`Tenant::revision`]).
    #[serde(default)]
    pub revision: u64,
    /// Who last changed `status`, and why: a webhook only undoes what a webhook did (an
    /// `unsuspend` never re-activates a binding an operator disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_change: Option<StatusChange>,
    /// Set when the upstream said the customer's consent is missing or no longer grants what
    /// the binding expects: resolves are refused with its code until a probe passes (after
    /// the customer consents again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
    /// What the last passing probe established about the trust, for operators (Entra: the
    /// tenant, our service principal's object id, the granted permissions, when confirmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_facts: Option<Value>,
    /// Owner and purpose (absent on bindings added before the inventory: `unowned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governance: Option<Governance>,
    /// The most days the active secret may age before the inventory flags rotation overdue,
    /// overriding `[inventory] max_secret_age_days` for its provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_secret_age_days: Option<u32>,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

impl Binding {
    /// Which binding this is beyond its id: its tenant and creation time. A binding removed
    /// and made again under the same id (perhaps for another tenant) differs here; a writer
    /// that began on one (an intake link, a self-rotation) compares before it acts.
    pub fn made(&self) -> (&str, &str) {
        (self.tenant.as_str(), self.created_at.as_str())
    }
}

/// Why a binding's consent no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriftCode {
    /// Consent withdrawn or our service principal deleted.
    ConsentMissing,
    /// A permission the binding expects is no longer granted.
    ConsentStale,
}

/// A binding's consent drift.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Drift {
    /// Which.
    pub code: DriftCode,
    /// What the upstream showed (e.g. the missing permissions), no secrets.
    pub detail: String,
    /// When it was seen, RFC 3339.
    pub at: String,
}

impl Drift {
    /// The drift a provider error reports, if any.
    pub fn of(e: &credbroker_providers::ProviderError) -> Option<Drift> {
        let (code, detail) = match e {
            credbroker_providers::ProviderError::ConsentMissing(m) => {
                (DriftCode::ConsentMissing, m)
            }
            credbroker_providers::ProviderError::ConsentStale(m) => (DriftCode::ConsentStale, m),
            _ => return None,
        };
        Some(Drift {
            code,
            detail: detail.chars().take(500).collect(),
            at: now_rfc3339(),
        })
    }

    /// The resolve error code it refuses with.
    pub fn error_code(&self) -> crate::api_error::ErrorCode {
        match self.code {
            DriftCode::ConsentMissing => crate::api_error::ErrorCode::ConsentMissing,
            DriftCode::ConsentStale => crate::api_error::ErrorCode::ConsentStale,
        }
    }
}

/// Who changed a binding's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusSource {
    /// An operator (admin API); the audit record names them.
    Operator,
    /// A verified provider webhook (the customer suspended or removed the installation).
    Webhook,
    /// The broker (an activation probe, a store migration).
    Broker,
}

/// The last status change of a binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    /// Who.
    pub by: StatusSource,
    /// Why (no secrets).
    pub why: String,
    /// When, RFC 3339.
    pub at: String,
}

impl StatusChange {
    /// A change now.
    pub fn now(by: StatusSource, why: impl Into<String>) -> Option<StatusChange> {
        Some(StatusChange {
            by,
            why: why.into(),
            at: now_rfc3339(),
        })
    }
}

/// Lifecycle of one sealed secret version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecretState {
    /// The version resolves hand out.
    Active,
    /// Replaced by a newer version; kept (never served) for the overlap window, then
    /// destroyed.
    Superseded,
    /// Written by a rotation, not served: it must pass a probe, then an operator promotes it.
    Pending,
}

/// The last probe of one secret version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionProbe {
    /// Whether it passed.
    pub passed: bool,
    /// When it ran, RFC 3339.
    pub at: String,
    /// What it found (no secrets).
    pub summary: String,
    /// The facts a passing probe established for this version (a PAT's expiry and id, the
    /// roles a client holds): the binding's `trust_facts` once it is promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<Value>,
}

/// One sealed secret version of a binding.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretVersion {
    /// Owning binding.
    pub binding: BindingId,
    /// Version number, from 1.
    pub version: u32,
    /// Lifecycle state.
    pub state: SecretState,
    /// Names of the sealed fields (names are not secret; values are).
    pub field_names: Vec<String>,
    /// KEK version that wraps the data key.
    pub kek_version: u32,
    /// Data key wrapped by the KEK (nonce ‖ ciphertext ‖ tag), base64.
    pub wrapped_dek: String,
    /// Payload sealed by the data key (nonce ‖ ciphertext ‖ tag), base64.
    pub sealed_payload: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// The last probe of this version (a pending version is promoted only after one passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<VersionProbe>,
    /// When it was superseded, RFC 3339: it is destroyed `[secrets] superseded_overlap_s`
    /// later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_at: Option<String>,
    /// When the secret itself stops working, RFC 3339, as declared by whoever wrote it (a
    /// PAT's expiry date): the inventory flags it `expiring_soon`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// A self-rotation superseded it and its revocation upstream is owed: set in the
    /// promotion's own commit, cleared once the upstream answered. A broker that stopped (or
    /// an upstream that failed) in between leaves it set, and the leader tries again at every
    /// `[secrets] gc_interval_s` tick; the collector keeps the version until then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upstream_revocation_owed: bool,
}

impl SecretVersion {
    /// Whether its upstream revocation is still owed (set only on a superseded version).
    pub fn owes_revocation(&self) -> bool {
        self.upstream_revocation_owed && self.state == SecretState::Superseded
    }

    /// Whether a pending version is worth keeping for its promotion: it passed its last
    /// probe, or has not been probed yet. One that failed is replaced by the next write.
    pub fn worth_keeping(&self) -> bool {
        self.probe.as_ref().is_none_or(|p| p.passed)
    }
}

impl std::fmt::Debug for SecretVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretVersion")
            .field("binding", &self.binding)
            .field("version", &self.version)
            .field("state", &self.state)
            .field("kek_version", &self.kek_version)
            .finish_non_exhaustive()
    }
}

/// What operators see of a secret version: never the value.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SecretVersionView {
    /// Version number.
    pub version: u32,
    /// Lifecycle state.
    pub state: SecretState,
    /// Field names.
    pub field_names: Vec<String>,
    /// KEK version wrapping it.
    pub kek_version: u32,
    /// Creation time.
    pub created_at: String,
    /// Its last probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<VersionProbe>,
    /// When it was superseded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superseded_at: Option<String>,
    /// Declared expiry of the secret itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Its revocation upstream, promised by the self-rotation that superseded it, is still
    /// to be made (tried again at every `[secrets] gc_interval_s` tick). Absent when not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upstream_revocation_owed: bool,
}

impl From<&SecretVersion> for SecretVersionView {
    fn from(v: &SecretVersion) -> Self {
        SecretVersionView {
            version: v.version,
            state: v.state,
            field_names: v.field_names.clone(),
            kek_version: v.kek_version,
            created_at: v.created_at.clone(),
            probe: v.probe.clone(),
            superseded_at: v.superseded_at.clone(),
            expires_at: v.expires_at.clone(),
            upstream_revocation_owed: v.upstream_revocation_owed,
        }
    }
}

/// Lifecycle of a platform key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Stored, not used yet.
    Staged,
    /// Signs (the most recently activated is preferred).
    Active,
    /// Retired: no longer used, material destroyed.
    Retired,
}

/// One stored platform key (the broker's own key for a provider, e.g. a GitHub App key),
/// sealed like a secret version.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformKeyRecord {
    /// The provider id.
    pub kind: String,
    /// Version, from 1.
    pub version: u32,
    /// Lifecycle state.
    pub state: KeyState,
    /// Non-secret fingerprint.
    pub fingerprint: String,
    /// KEK version wrapping the data key.
    #[serde(default)]
    pub kek_version: u32,
    /// Wrapped data key (empty once retired).
    #[serde(default)]
    pub wrapped_dek: String,
    /// Sealed key material (empty once retired).
    #[serde(default)]
    pub sealed_payload: String,
    /// Creation time.
    pub created_at: String,
    /// Last activation time.
    #[serde(default)]
    pub activated_at: Option<String>,
    /// Retirement time.
    #[serde(default)]
    pub retired_at: Option<String>,
    /// The AAD domain the material is sealed in. Records written before platform keys had
    /// their own domain lack the field and read as `legacy_tenant_secret`; the daemon
    /// re-seals them at start (audited) and never opens a legacy one otherwise.
    #[serde(default)]
    pub sealed_as: SealedAs,
    /// Issuer keys only: when the key starts signing (it is published from its creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signs_from: Option<String>,
    /// Issuer keys only: retired as compromised (its tokens stopped verifying at once).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compromised: bool,
}

/// How a platform key's material is sealed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SealedAs {
    /// As a tenant secret of tenant `platform`, binding = the kind (releases before the
    /// platform-key domain). Opened only by the start-up migration.
    #[default]
    LegacyTenantSecret,
    /// In the platform-key domain ([`crate::seal::SealContext::PlatformKey`]).
    PlatformKey,
}

/// Whether a binding's `last_probe` says its last probe did not pass: it failed, or it
/// passed upstream but was not taken (another binding holds its identifier).
pub fn probe_failed(last_probe: &str) -> bool {
    last_probe.starts_with("failed") || last_probe.starts_with("passed upstream, but")
}

/// The current UTC time in RFC 3339.
pub fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// Formats an instant in RFC 3339 (UTC).
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Unix seconds (as records keep expiries) in RFC 3339; `None` out of range.
pub fn rfc3339_of_unix(unix: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .map(rfc3339)
}

/// Unix seconds of an RFC 3339 time, if `text` is one.
pub fn unix_of_rfc3339(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(time::OffsetDateTime::unix_timestamp)
}

impl Tenant {
    /// Whether it was created no later than `unix` (Unix seconds, to the second): the tenant
    /// an onboarding of that time named, not one created again under its id since.
    pub fn created_by(&self, unix: i64) -> bool {
        unix_of_rfc3339(&self.created_at).is_some_and(|created| created <= unix)
    }
}

/// A fresh binding generation: 128 random bits, hex.
///
/// # Errors
/// When the system CSPRNG fails.
pub fn new_generation() -> Result<String, aws_lc_rs::error::Unspecified> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}
