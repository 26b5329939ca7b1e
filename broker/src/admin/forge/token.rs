//! The system token a Forge binding holds: captured from a verified invocation when it
//! outlives the one held (a page's only fills a gap), retired at a reinstall.

use serde_json::{json, Value};

use super::super::AdminService;
use crate::api_error::ApiError;
use crate::model::{now_rfc3339, rfc3339, Binding, SecretState};
use crate::store::Batch;

/// The non-secret facts of a token held for a binding, kept in its `trust_facts`.
const HELD: &str = "system_token";

impl AdminService {
    /// Seals `token` as `binding`'s new active version when it outlives the one held (the
    /// previous version is superseded); `(detail, fingerprint)` when it did.
    pub(super) async fn plan_capture(
        &self,
        binding: &mut Binding,
        (token, from_page): (
            Option<Result<credbroker_providers::CapturedToken, String>>,
            bool,
        ),
        batch: &mut Batch,
    ) -> Result<Option<(String, String)>, ApiError> {
        let token = match token {
            None => return Ok(None),
            Some(Err(why)) => {
                tracing::warn!(binding = %binding.id, reason = %why, "system token refused");
                return Ok(None);
            }
            Some(Ok(t)) => t,
        };
        let held = binding.trust_facts.as_ref().map(|f| &f[HELD]);
        let held_exp = held.and_then(|h| h["expires_at_unix"].as_i64());
        // A token held from before the origin was recorded may have been a page's.
        let held_from_page = held.is_some_and(|h| h["from_page"] != json!(false));
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        // A call from a page (one with a principal: the admin page's connect) carries a
        // header its caller may have had a hand in, which the invocation token does not
        // sign: its token fills a gap (nothing held, or nothing live from a trigger or a
        // lifecycle event) and never keeps theirs out. A fresher one replaces an older one,
        // and one from a trigger or an event always replaces a page's.
        let keep_held = binding.active_secret_version.is_some() && {
            let fresher_held = held_exp.is_some_and(|h| h >= token.expires_at);
            let live_from_elsewhere = !held_from_page && held_exp.is_some_and(|h| h > now);
            if from_page {
                live_from_elsewhere || fresher_held
            } else {
                !held_from_page && fresher_held
            }
        };
        if keep_held {
            return Ok(None);
        }
        let record = self.sealed_version(binding, &token.fields, SecretState::Active)?;
        if let Some(old) = binding.active_secret_version {
            self.plan_supersede(&binding.id, old, false, None, batch)
                .await?;
        }
        batch.create(&record);
        binding.active_secret_version = Some(record.version);
        let expires = time::OffsetDateTime::from_unix_timestamp(token.expires_at)
            .map(rfc3339)
            .unwrap_or_default();
        // The keyed fingerprint of what a resolve hands out: the same as its resolve records'.
        // Never an unkeyed hash: whoever reads the binding or the audit could test a leaked
        // token against one offline (and learn whose it is).
        let keyed = self
            .core
            .fingerprint
            .fingerprint(&token.credentials.to_json_zeroizing());
        let mut facts = match binding.trust_facts.take() {
            Some(Value::Object(m)) => Value::Object(m),
            _ => json!({}),
        };
        facts[HELD] = json!({
            "version": record.version,
            "expires_at": expires,
            "expires_at_unix": token.expires_at,
            "captured_at": now_rfc3339(),
            "fingerprint": keyed,
            "from_page": from_page,
        });
        binding.trust_facts = Some(facts);
        Ok(Some((
            format!(
                "system token {keyed} (expires {expires}) sealed as version {}",
                record.version
            ),
            keyed,
        )))
    }

    /// Retires the token `binding` holds (a reinstall: it belongs to the old installation):
    /// its version is superseded, nothing is active until the new installation delivers one.
    pub(super) async fn plan_retire_token(
        &self,
        binding: &mut Binding,
        batch: &mut Batch,
    ) -> Result<Option<String>, ApiError> {
        let Some(old) = binding.active_secret_version.take() else {
            return Ok(None);
        };
        self.plan_supersede(&binding.id, old, false, None, batch)
            .await?;
        if let Some(Value::Object(facts)) = binding.trust_facts.as_mut() {
            facts.remove(HELD);
        }
        Ok(Some(format!(
            "the previous installation's token (version {old}) superseded"
        )))
    }
}
