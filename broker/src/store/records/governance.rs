//! Governance records: when bindings and workers last resolved (flushed in periodic
//! batches), and the sealed webhook secrets of connector instances.

use serde::{Deserialize, Serialize};

use super::{decode, encode, Record, Records, Stored};
use crate::store::{Batch, Op, StoreError, Table};

/// What a last-use row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LastUseKind {
    /// A binding.
    Binding,
    /// A worker.
    Worker,
}

impl LastUseKind {
    fn letter(self) -> &'static str {
        match self {
            LastUseKind::Binding => "b",
            LastUseKind::Worker => "w",
        }
    }
}

/// How a connector instance's inbound events are signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "scheme", rename_all = "snake_case", deny_unknown_fields)]
pub enum WebhookScheme {
    /// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`.
    Github,
    /// GitLab: `X-Gitlab-Token: <the secret>` (a shared token, no signature).
    Gitlab,
    /// HMAC-SHA256 of the raw body, hex, in `header`, after `prefix` (e.g. `sha256=`).
    HmacSha256 {
        /// The header carrying the signature (case-insensitive).
        header: String,
        /// What precedes the hex digest in the header (may be empty).
        #[serde(default)]
        prefix: String,
    },
    /// The secret itself in `header` (a plain shared token).
    Token {
        /// The header carrying the token (case-insensitive).
        header: String,
    },
    /// Events are accepted unsigned: said explicitly, so it is never a default.
    Unsigned,
}

impl WebhookScheme {
    /// The scheme's name (metric label, audit detail).
    pub fn name(&self) -> &'static str {
        match self {
            WebhookScheme::Github => "github",
            WebhookScheme::Gitlab => "gitlab",
            WebhookScheme::HmacSha256 { .. } => "hmac_sha256",
            WebhookScheme::Token { .. } => "token",
            WebhookScheme::Unsigned => "unsigned",
        }
    }
}

/// One sealed version of a webhook secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookVersion {
    /// Version, from 1 (never reused).
    pub version: u32,
    /// KEK version wrapping the data key.
    pub kek_version: u32,
    /// Wrapped data key, base64.
    pub wrapped_dek: String,
    /// Sealed secret, base64.
    pub sealed_payload: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// For a previous version: when it stops verifying, RFC 3339 (`None`: current).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
}

impl WebhookVersion {
    /// Whether it verifies at `now`: the current version always; a previous one until its
    /// `valid_until` (an unreadable one never).
    pub fn verifies_at(&self, now: time::OffsetDateTime) -> bool {
        match &self.valid_until {
            None => true,
            Some(t) => {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .is_ok_and(|t| now < t)
            }
        }
    }
}

impl std::fmt::Debug for WebhookVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookVersion")
            .field("version", &self.version)
            .field("valid_until", &self.valid_until)
            .finish_non_exhaustive()
    }
}

/// A connector instance's webhook secret: the current version and, during a rotation's
/// overlap window, the previous one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSecret {
    /// The instance.
    pub instance: String,
    /// Its tenant when generated (the seal's context: a record moved to another instance
    /// or tenant does not open).
    pub tenant: String,
    /// How events are signed.
    pub scheme: WebhookScheme,
    /// Highest version ever written.
    pub last_version: u32,
    /// Current first, then previous ones while their windows last (empty for `unsigned`).
    pub versions: Vec<WebhookVersion>,
    /// When it was revealed within the last hour, Unix seconds: the budget every replica
    /// shares (`[webhooks] reveals_per_hour` per instance, on top of the per-operator one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reveals: Vec<i64>,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

impl Record for WebhookSecret {
    const TABLE: Table = Table::WebhookSecrets;
    fn key(&self) -> String {
        self.instance.clone()
    }
}

fn last_use_key(replica: u32, kind: LastUseKind, id: &str) -> String {
    format!("{replica:05}/{}/{id}", kind.letter())
}

/// What the inventory needs of a secret version: its sealed material is skipped, not
/// decoded (100,000 versions would otherwise hold their payloads in memory at once).
#[derive(Debug, Clone, Deserialize)]
pub struct SecretMeta {
    /// Owning binding.
    pub binding: String,
    /// Version.
    pub version: u32,
    /// Lifecycle state.
    pub state: crate::model::SecretState,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Declared expiry, RFC 3339.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// When it was superseded, RFC 3339.
    #[serde(default)]
    pub superseded_at: Option<String>,
    /// Its upstream revocation is owed.
    #[serde(default)]
    pub upstream_revocation_owed: bool,
}

impl SecretMeta {
    /// As [`crate::model::SecretVersion::owes_revocation`].
    pub fn owes_revocation(&self) -> bool {
        self.upstream_revocation_owed && self.state == crate::model::SecretState::Superseded
    }
}

impl Records {
    /// The metadata of the secret versions `keep` accepts, without their sealed material;
    /// the table is read one row at a time and only what is kept is held.
    ///
    /// # Errors
    /// On store failure.
    pub async fn secret_metas_where(
        &self,
        keep: impl Fn(&SecretMeta) -> bool + Send + 'static,
    ) -> Result<Vec<SecretMeta>, StoreError> {
        self.all_where(Table::Secrets, "", keep).await
    }

    /// As [`Records::secret_metas_where`], each with the key it was read at.
    ///
    /// # Errors
    /// On store failure.
    pub async fn keyed_secret_metas_where(
        &self,
        keep: impl Fn(&SecretMeta) -> bool + Send + 'static,
    ) -> Result<Vec<(String, SecretMeta)>, StoreError> {
        self.keyed_where(Table::Secrets, "", keep).await
    }

    /// Every replica's last-use rows: `(kind, id)` → the latest Unix second any replica
    /// recorded.
    ///
    /// # Errors
    /// On store failure.
    pub async fn last_uses(
        &self,
    ) -> Result<std::collections::HashMap<(LastUseKind, String), i64>, StoreError> {
        let mut out = std::collections::HashMap::new();
        for (key, raw) in self.store.scan(Table::LastUse, "").await? {
            let mut parts = key.splitn(3, '/');
            let (_, kind, id) = (parts.next(), parts.next(), parts.next());
            let kind = match kind {
                Some("b") => LastUseKind::Binding,
                Some("w") => LastUseKind::Worker,
                _ => continue,
            };
            let at: i64 = decode(Table::LastUse, &key, &raw)?;
            let slot = out
                .entry((kind, id.unwrap_or_default().to_owned()))
                .or_insert(at);
            *slot = (*slot).max(at);
        }
        Ok(out)
    }

    /// A connector instance's webhook secret, as read for a change.
    ///
    /// # Errors
    /// On store failure.
    pub async fn webhook_secret(
        &self,
        instance: &str,
    ) -> Result<Option<Stored<WebhookSecret>>, StoreError> {
        self.get_stored(Table::WebhookSecrets, instance).await
    }

    /// The instances (at most `limit`) whose webhook secret holds a version that no longer
    /// verifies at `now` (its overlap is over): the rows are read one at a time and only
    /// these keys kept; the caller reads each again as read for its change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn webhook_secrets_past_overlap(
        &self,
        now: time::OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        // Only the keys are kept, at most `limit` (not every decoded secret, sealed versions
        // and all, to be cut afterwards).
        self.picked(Table::WebhookSecrets, "", limit, move |k, raw| {
            let w: WebhookSecret = super::decode(Table::WebhookSecrets, k, raw)?;
            Ok(w.versions
                .iter()
                .any(|v| !v.verifies_at(now))
                .then(|| k.to_owned()))
        })
        .await
    }

    /// Every webhook secret (KEK rotation).
    ///
    /// # Errors
    /// On store failure.
    pub async fn all_webhook_secrets(&self) -> Result<Vec<Stored<WebhookSecret>>, StoreError> {
        self.all_stored(Table::WebhookSecrets, "").await
    }
}

impl Batch {
    /// Requires instance `id` to have no webhook secret (a secret generated concurrently
    /// with the instance's removal must not outlive it).
    pub fn expect_no_webhook_secret(&mut self, id: &str) -> &mut Self {
        self.push(Op::ExpectAbsent(Table::WebhookSecrets, id.to_owned()))
    }

    /// Records that `id` last resolved at `at` (Unix seconds) on `replica`: the row is this
    /// replica's own, so it is written without a precondition.
    pub fn put_last_use(
        &mut self,
        replica: u32,
        kind: LastUseKind,
        id: &str,
        at: i64,
    ) -> &mut Self {
        self.push(Op::Put(
            Table::LastUse,
            last_use_key(replica, kind, id),
            encode(&at),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled_store::SledStore;
    use std::sync::Arc;

    /// A periodic pass keeps only what its filter accepts, decoded without the sealed
    /// material, and reads every row (none skipped, none twice).
    #[tokio::test]
    async fn secret_metas_where_keeps_only_the_accepted_rows() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(Arc::new(SledStore::open(dir.path()).unwrap()));
        let mut batch = Batch::new();
        for (binding, version, state) in [
            ("b1", 1, "superseded"),
            ("b1", 2, "active"),
            ("b2", 1, "active"),
            ("b3", 7, "pending"),
        ] {
            let row = serde_json::json!({
                "binding": binding, "version": version, "state": state,
                "created_at": "2026-12-01T00:00:00Z",
                "superseded_at": (state == "superseded").then_some("2026-12-01T01:00:00Z"),
                "wrapped_dek": "AAAA", "sealed_payload": "AAAA", "kek_version": 1,
            });
            batch.push(Op::Put(
                Table::Secrets,
                format!("{binding}/{version:010}"),
                serde_json::to_vec(&row).unwrap(),
            ));
        }
        records.commit(batch).await.unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&seen);
        let active = records
            .secret_metas_where(move |m| {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                m.state == crate::model::SecretState::Active
            })
            .await
            .unwrap();
        assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 4);
        let got: Vec<(String, u32)> = active
            .iter()
            .map(|m| (m.binding.clone(), m.version))
            .collect();
        assert_eq!(got, [("b1".to_owned(), 2), ("b2".to_owned(), 1)]);
        let old = records
            .secret_metas_where(|m| m.superseded_at.is_some())
            .await
            .unwrap();
        assert_eq!(old.len(), 1);
        assert_eq!(
            old[0].superseded_at.as_deref(),
            Some("2026-12-01T01:00:00Z")
        );
        // A row that does not decode is an error, not a silent skip.
        let mut batch = Batch::new();
        batch.push(Op::Put(
            Table::Secrets,
            "b9/0000000001".into(),
            b"{".to_vec(),
        ));
        records.commit(batch).await.unwrap();
        assert!(matches!(
            records.secret_metas_where(|_| true).await,
            Err(StoreError::Corrupt { .. })
        ));
    }
}
