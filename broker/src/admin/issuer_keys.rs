//! The issuer's keys through the audited pipeline: the first key at start, `rotate`,
//! `retire`, `list`, and loading them into the issuer after every change. Stored as platform
//! keys of kind [`crate::issuer::KEY_KIND`] (sealed in the platform-key domain, re-wrapped by
//! KEK rotation like the others), with the issuer's `signs_from`.

use serde_json::{json, Value};
use time::OffsetDateTime;

use super::{store_err, AdminService, Plan};
use crate::api_error::{ApiError, ErrorCode};
use crate::issuer::{
    key_view, phases, signs_from, times_of, KeyTimes, Phase, KEY_KIND, MAX_PUBLISHED, SKEW_S,
};
use crate::model::{now_rfc3339, rfc3339, KeyState, PlatformKeyRecord, SealedAs};
use crate::seal::{open, seal, SealContext};
use crate::store::records::Stored;

fn times(keys: &[Stored<PlatformKeyRecord>]) -> Vec<KeyTimes> {
    keys.iter().map(|k| times_of(&k.value)).collect()
}

impl AdminService {
    fn issuer(&self) -> Result<&std::sync::Arc<crate::issuer::Issuer>, ApiError> {
        self.core.issuer.as_ref().ok_or_else(|| {
            ApiError::new(
                ErrorCode::UnknownRecord,
                "the daemon has no [issuer] section: the broker's own OIDC issuer is off",
            )
        })
    }

    async fn issuer_records(&self) -> Result<Vec<Stored<PlatformKeyRecord>>, ApiError> {
        self.core
            .records
            .platform_keys(KEY_KIND)
            .await
            .map_err(store_err)
    }

    /// Opens the issuer's live keys and installs them (at start and after every change). A
    /// key that does not open is left out (logged), so a retirement always takes effect.
    ///
    /// # Errors
    /// When live keys exist and none opens or can sign.
    pub async fn load_issuer_keys(&self) -> Result<usize, ApiError> {
        let Some(issuer) = self.core.issuer.as_ref() else {
            return Ok(0);
        };
        let records = self.issuer_records().await?;
        let all_times = times(&records);
        let mut opened = Vec::new();
        let mut failures = Vec::new();
        for k in records {
            let k = k.value;
            if k.state == KeyState::Retired || k.wrapped_dek.is_empty() {
                continue;
            }
            let material = open(
                &self.core.keyring,
                SealContext::PlatformKey {
                    kind: KEY_KIND,
                    version: k.version,
                },
                k.kek_version,
                &k.wrapped_dek,
                &k.sealed_payload,
            );
            match material {
                Ok(m) => opened.push((k, m)),
                Err(e) => {
                    tracing::error!(version = k.version, error = %e, "an issuer key cannot be opened; it is not used");
                    failures.push(format!("issuer key {} cannot be opened: {e}", k.version));
                }
            }
        }
        let n = opened.len();
        let installed = issuer.install(opened, all_times);
        match (installed, failures.is_empty() || n > 0) {
            (Ok(()), true) => Ok(n),
            (Ok(()), false) => Err(ApiError::new(ErrorCode::Internal, failures.join("; "))),
            (Err(e), _) => {
                // Nothing usable: sign nothing rather than with a set that may hold a
                // retired key.
                let _ = issuer.install(Vec::new(), Vec::new());
                Err(ApiError::new(ErrorCode::Internal, e))
            }
        }
    }

    /// A new sealed issuer key record, version `version`, signing from `signs_from`.
    fn new_issuer_key(
        &self,
        version: u32,
        signs_from: OffsetDateTime,
    ) -> Result<PlatformKeyRecord, ApiError> {
        let (material, kid) =
            crate::issuer::generate_key().map_err(|e| ApiError::new(ErrorCode::Internal, e))?;
        let sealed = seal(
            &self.core.keyring,
            SealContext::PlatformKey {
                kind: KEY_KIND,
                version,
            },
            &material,
        )
        .map_err(|_| ApiError::new(ErrorCode::Internal, "sealing failed"))?;
        Ok(PlatformKeyRecord {
            kind: KEY_KIND.to_owned(),
            version,
            state: KeyState::Active,
            fingerprint: kid,
            kek_version: sealed.kek_version,
            wrapped_dek: sealed.wrapped_dek,
            sealed_payload: sealed.sealed_payload,
            created_at: now_rfc3339(),
            activated_at: None,
            retired_at: None,
            sealed_as: SealedAs::PlatformKey,
            signs_from: Some(rfc3339(signs_from)),
            compromised: false,
        })
    }

    /// At start: the issuer's first key, when `[issuer]` is set and no live key exists
    /// (audited as `keys.issuer.rotate` by `credbroker:start`); then loads the keys.
    ///
    /// # Errors
    /// When the key cannot be made, audited, stored or loaded.
    pub async fn ensure_issuer_key(&self) -> Result<(), ApiError> {
        if self.core.issuer.is_none() {
            return Ok(());
        }
        let records = self.issuer_records().await?;
        if !records.iter().any(|k| k.state != KeyState::Retired) {
            let version = records.iter().map(|k| k.version).max().unwrap_or(0) + 1;
            let record = self.new_issuer_key(version, OffsetDateTime::now_utc())?;
            let mut batch = crate::store::Batch::new();
            batch.create(&record);
            let event = crate::audit::AuditEvent {
                kind: "admin".into(),
                action: "keys.issuer.rotate".into(),
                request_id: crate::server::new_request_id(),
                actor: "credbroker:start".into(),
                outcome: "allowed".into(),
                detail: Some(format!(
                    "first issuer key: version={version} kid={} signs at once",
                    record.fingerprint
                )),
                ..Default::default()
            };
            if let Err((e, _)) = self.commit_audited(event, batch, &[]).await {
                // Replicas starting together on a new store race to make the first key:
                // one wins (the loser's record says its commit failed), and the winner's
                // key is everyone's.
                let made_meanwhile = e.code == ErrorCode::Conflict
                    && self
                        .issuer_records()
                        .await?
                        .iter()
                        .any(|k| k.state != KeyState::Retired);
                if !made_meanwhile {
                    return Err(e);
                }
                tracing::info!("another replica made the issuer's first key meanwhile; using it");
            }
        }
        self.load_issuer_keys().await?;
        Ok(())
    }

    pub(super) async fn plan_issuer_list(&self) -> Result<Plan, ApiError> {
        self.issuer()?;
        let records = self.issuer_records().await?;
        let now = OffsetDateTime::now_utc();
        let phases = phases(&times(&records), now);
        let keys: Vec<Value> = records
            .iter()
            .filter_map(|k| {
                let (_, phase, superseded) = phases.iter().find(|p| p.0 == k.version)?;
                Some(key_view(k, *phase, *superseded))
            })
            .collect();
        Ok(Plan::new(
            format!("issuer keys={}", keys.len()),
            json!({ "issuer": self.issuer()?.settings().url, "keys": keys }),
        ))
    }

    pub(super) fn plan_issuer_jwks(&self) -> Result<Plan, ApiError> {
        let jwks = self.issuer()?.jwks(OffsetDateTime::now_utc());
        let n = jwks["keys"].as_array().map_or(0, Vec::len);
        Ok(Plan::new(format!("issuer jwks keys={n}"), jwks))
    }

    /// A new key, published now, signing after `publish_lead_s` (or at once with `now`).
    pub(super) async fn plan_issuer_rotate(&self, now_flag: bool) -> Result<Plan, ApiError> {
        let settings = self.issuer()?.settings().clone();
        let records = self.issuer_records().await?;
        let now = OffsetDateTime::now_utc();
        let phases = phases(&times(&records), now);
        if let Some((v, _, _)) = phases.iter().find(|p| p.1 == Phase::Next) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("issuer key {v} is already waiting to sign (phase next); let it become current, or retire it, before another rotation"),
            ));
        }
        let published = phases
            .iter()
            .filter(|p| matches!(p.1, Phase::Current | Phase::Previous))
            .count();
        if published + 1 > MAX_PUBLISHED {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("{published} issuer keys are still published (at most {MAX_PUBLISHED}): retire a previous key first (--compromised if it must go before its tokens expire)"),
            ));
        }
        let lead = if now_flag {
            0
        } else {
            i64::try_from(settings.publish_lead_s).unwrap_or(0)
        };
        let signs = now + time::Duration::seconds(lead);
        let version = records.iter().map(|k| k.version).max().unwrap_or(0) + 1;
        let record = self.new_issuer_key(version, signs)?;
        let mut plan = Plan::new(
            format!(
                "issuer key version={version} kid={} signs_from={}{}",
                record.fingerprint,
                rfc3339(signs),
                if now_flag { " (--now)" } else { "" }
            ),
            json!({ "key": key_view(&record, if now_flag { Phase::Current } else { Phase::Next }, None) }),
        );
        plan.batch.create(&record);
        // Every other live key is a precondition: two concurrent rotations cannot both pass.
        for k in records.iter().filter(|k| k.state != KeyState::Retired) {
            plan.batch.expect_unchanged(k);
        }
        plan.created = true;
        Ok(plan)
    }

    /// Destroys a key's material. The current key is never retired (rotate first); a
    /// previous one whose tokens may still be valid only with `compromised`.
    pub(super) async fn plan_issuer_retire(
        &self,
        version: u32,
        compromised: bool,
    ) -> Result<Plan, ApiError> {
        self.issuer()?;
        let records = self.issuer_records().await?;
        let read = records
            .iter()
            .find(|k| k.version == version)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownRecord,
                    format!("no issuer key version {version}"),
                )
            })?;
        let now = OffsetDateTime::now_utc();
        let phases = phases(&times(&records), now);
        let phase = phases
            .iter()
            .find(|p| p.0 == version)
            .map_or(Phase::Retired, |p| p.1);
        match phase {
            Phase::Retired => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    "the key is already retired (its material is destroyed)",
                ))
            }
            Phase::Current => {
                return Err(ApiError::new(
                    ErrorCode::LastActiveKey,
                    format!("issuer key {version} is the signing key: rotate first (credbroker keys issuer rotate --now when it is compromised), then retire it"),
                ))
            }
            // A waiting key about to sign may be the signing key by the time the change
            // commits: retire it well before, or after it signed (then rotate first).
            Phase::Next
                if signs_from(&read.value) - time::Duration::seconds(2 * SKEW_S) <= now =>
            {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("issuer key {version} starts signing within {} s: retire it after it became current and another rotation replaced it", 2 * SKEW_S),
                ))
            }
            Phase::Previous if !compromised => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("tokens signed by issuer key {version} may still be valid (phase previous): wait until it shows expired, or pass --compromised to stop them verifying now"),
                ))
            }
            _ => {}
        }
        let mut record = read.value.clone();
        record.state = KeyState::Retired;
        record.retired_at = Some(now_rfc3339());
        record.wrapped_dek.clear();
        record.sealed_payload.clear();
        record.compromised = compromised;
        let mut plan = Plan::new(
            format!(
                "issuer key version={version} kid={} retired from phase {phase:?}{}",
                record.fingerprint,
                if compromised { " as compromised" } else { "" }
            ),
            json!({ "key": key_view(&record, Phase::Retired, None) }),
        );
        plan.batch.replace(&read, &record);
        // Every other live key is a precondition: a concurrent rotation or retirement cannot
        // interleave with this one (at least the current key always survives).
        for k in records
            .iter()
            .filter(|k| k.state != KeyState::Retired && k.version != version)
        {
            plan.batch.expect_unchanged(k);
        }
        Ok(plan)
    }
}
