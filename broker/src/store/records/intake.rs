//! One-time intake links: where a customer's admin pastes a secret straight into sealed
//! storage. The store keeps only the SHA-256 of the link's token (the link is shown once);
//! records live in the identifiers table under `intake:<token hash>` and are forgotten by the
//! periodic gc once expired.

use serde::{Deserialize, Serialize};

use super::{decode, encode, Records, Stored};
use crate::store::{Batch, Op, StoreError, Table};

/// An open intake link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeLink {
    /// Public id (`ik_` + hex), for listing and revoking; not the token.
    pub id: String,
    /// The tenant the secret is for.
    pub tenant: String,
    /// The binding the secret is for.
    pub binding: String,
    /// That binding's creation time: a binding removed and re-created under the same id
    /// (perhaps for another tenant) is not the one the link was made for.
    pub binding_created_at: String,
    /// The fields the form asks for, exactly.
    pub fields: Vec<String>,
    /// The operator who created the link.
    pub creator: String,
    /// The revision of that operator's record then: a link made before a disable stays dead
    /// after a re-enable (absent on links made before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator_revision: Option<u64>,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// Submissions so far (each reserves one before anything is written; a working one
    /// uses the link up).
    #[serde(default)]
    pub failures: u32,
}

fn intake_key(token_hash: &str) -> String {
    format!("intake:{token_hash}")
}

impl Records {
    /// The intake link whose token hashes to `token_hash`, as read for a change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn intake_link(
        &self,
        token_hash: &str,
    ) -> Result<Option<(String, Stored<IntakeLink>)>, StoreError> {
        let key = intake_key(token_hash);
        Ok(self
            .get_stored(Table::Identifiers, &key)
            .await?
            .map(|s| (key, s)))
    }

    /// Every intake link (open or expired, not yet forgotten), as read for a change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn intake_links(&self) -> Result<Vec<(String, Stored<IntakeLink>)>, StoreError> {
        let mut out = Vec::new();
        for (key, raw) in self.store.scan(Table::Identifiers, "intake:").await? {
            let value: IntakeLink = decode(Table::Identifiers, &key, &raw)?;
            out.push((key, Stored { value, raw }));
        }
        Ok(out)
    }
}

impl IntakeLink {
    /// The binding the link was made for as [`crate::model::Binding::made`] names it.
    pub fn made(&self) -> (&str, &str) {
        (self.tenant.as_str(), self.binding_created_at.as_str())
    }

    /// Whether the link takes a submission at `now` (Unix seconds): unexpired, with an
    /// attempt left.
    pub fn admits(&self, now: i64) -> bool {
        !self.expired(now) && self.failures < crate::admin::MAX_INTAKE_FAILURES
    }

    /// Whether the link has expired by `now` (unix seconds): it admits nothing from then on,
    /// whatever a submission it admitted before is still doing.
    pub fn expired(&self, now: i64) -> bool {
        self.expires_at < now
    }

    /// [`IntakeLink::expired`] by the clock now.
    pub fn expired_now(&self) -> bool {
        self.expired(time::OffsetDateTime::now_utc().unix_timestamp())
    }
}

impl Batch {
    /// Stores a new intake link under its token's hash.
    pub fn put_intake_link(&mut self, token_hash: &str, link: &IntakeLink) -> &mut Self {
        let key = intake_key(token_hash);
        self.push(Op::ExpectAbsent(Table::Identifiers, key.clone()))
            .push(Op::Put(Table::Identifiers, key, encode(link)))
    }

    /// Replaces an intake link as read (a failed submission counted).
    pub fn update_intake_link(
        &mut self,
        key: &str,
        read: &Stored<IntakeLink>,
        link: &IntakeLink,
    ) -> &mut Self {
        self.replace_identifier_record(key, read, link)
    }

    /// Requires an intake link to be still as read (a write it authorizes: a revocation or a
    /// use committed meanwhile, on any replica, fails the write).
    pub fn expect_intake_link(&mut self, key: &str, read: &Stored<IntakeLink>) -> &mut Self {
        self.expect_identifier_record(key, read)
    }

    /// Removes an intake link as read (used, revoked): of two concurrent uses one fails.
    pub fn remove_intake_link(&mut self, key: &str, read: &Stored<IntakeLink>) -> &mut Self {
        self.remove_identifier_record(key, read)
    }
}
