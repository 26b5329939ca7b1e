//! Records of the identifiers table that are not a tenant's configuration: exclusive
//! identifiers (one owner each), broker-generated tenant parameters, webhook deliveries and
//! unclaimed installations — their types, reads and batch builders (install states and
//! expected sites: [`super::onboarding`]).

use serde::{Deserialize, Serialize};

use super::{decode, encode, Records, Stored};
use crate::ids::{BindingId, TenantId};
use crate::store::{Batch, Op, StoreError, Table};

/// Who holds an exclusive identifier (role ARN, installation…).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentifierOwner {
    /// Owning tenant.
    pub tenant: String,
    /// Owning binding (absent for broker-generated tenant parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
}

/// An account an installation must belong to (GitHub: organisation or user login and id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountPin {
    /// Account login (compared case-insensitively).
    pub login: String,
    /// Numeric account id (compared exactly; survives renames).
    pub id: u64,
}

/// An installation that arrived proven but not claimable (its account differs from the pin,
/// or no state named it): kept for an operator to bind explicitly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unclaimed {
    /// Provider id.
    pub provider: String,
    /// Its exclusive identifier (e.g. `github_installation:42`).
    pub identifier: String,
    /// The binding configuration it would establish.
    pub config: serde_json::Value,
    /// The account the provider proved it belongs to.
    pub account: AccountPin,
    /// Why it was not bound.
    pub reason: String,
    /// When it was seen, RFC 3339.
    pub seen_at: String,
    /// When it is forgotten unless claimed, Unix seconds (absent in records written before
    /// unclaimed installations expired: kept until claimed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Ignored by an operator (`credbroker unclaimed ignore`): kept until claimed, not
    /// counted against [`MAX_UNCLAIMED`], and its further invocations are counted, not
    /// recorded. An onboarding naming it binds it on its administrator's connect code.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignored: bool,
}

/// Most unclaimed installations kept: beyond it a new one is refused (counted), so a stream
/// of installations from unknown accounts cannot grow the store without bound.
pub const MAX_UNCLAIMED: usize = 256;

/// Most unclaimed installations kept ignored: ignoring more is refused, so an operator
/// ignoring flood after flood cannot grow the store (and the listing) without bound either.
pub const MAX_IGNORED_UNCLAIMED: usize = 16 * MAX_UNCLAIMED;

/// How long an unclaimed installation is kept, seconds (30 days).
pub const UNCLAIMED_TTL_S: i64 = 30 * 24 * 3600;

fn exclusive_key(identifier: &str) -> String {
    format!("exclusive:{identifier}")
}

fn tenant_param_key(provider: &str, name: &str, tenant: &TenantId) -> String {
    format!("tenant-param:{provider}:{name}:{tenant}")
}

fn consent_proof_key(identifier: &str) -> String {
    format!("consent-proof:{identifier}")
}

fn unclaimed_key(identifier: &str) -> String {
    format!("unclaimed:{identifier}")
}

fn delivery_key(provider: &str, id: &str) -> String {
    format!("webhook-delivery:{provider}:{id}")
}

/// A processed webhook delivery, remembered until `expires_at` (Unix seconds) so a replay is
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Expiry, Unix seconds.
    pub expires_at: i64,
}

impl Records {
    /// Who holds `identifier`, if anyone.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn identifier_owner(
        &self,
        identifier: &str,
    ) -> Result<Option<IdentifierOwner>, StoreError> {
        Ok(self
            .get_stored(Table::Identifiers, &exclusive_key(identifier))
            .await?
            .map(|s| s.value))
    }

    /// The broker tenant a consent callback last proved `identifier` for (the customer's
    /// admin consented through that tenant's link), with the record as read.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn consent_proof(
        &self,
        identifier: &str,
    ) -> Result<Option<(String, Stored<IdentifierOwner>)>, StoreError> {
        let key = consent_proof_key(identifier);
        Ok(self
            .get_stored(Table::Identifiers, &key)
            .await?
            .map(|s| (key, s)))
    }

    /// The consent proofs `tenant` holds, as read: `(key, record)`.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn consent_proofs_of(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(String, Stored<IdentifierOwner>)>, StoreError> {
        let mut out = Vec::new();
        for (key, raw) in self
            .store
            .scan(Table::Identifiers, "consent-proof:")
            .await?
        {
            let value: IdentifierOwner = decode(Table::Identifiers, &key, &raw)?;
            if value.tenant == tenant.as_str() {
                out.push((key, Stored { value, raw }));
            }
        }
        Ok(out)
    }

    /// The exclusive identifiers `binding` holds.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn identifiers_of(&self, binding: &BindingId) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for (key, raw) in self.store.scan(Table::Identifiers, "exclusive:").await? {
            let owner: IdentifierOwner = decode(Table::Identifiers, &key, &raw)?;
            if owner.binding.as_deref() == Some(binding.as_str()) {
                if let Some(identifier) = key.strip_prefix("exclusive:") {
                    out.push(identifier.to_owned());
                }
            }
        }
        Ok(out)
    }

    /// The broker-generated parameter `name` of `provider` for `tenant`, if generated.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn tenant_parameter(
        &self,
        provider: &str,
        name: &str,
        tenant: &TenantId,
    ) -> Result<Option<String>, StoreError> {
        let key = tenant_param_key(provider, name, tenant);
        match self.store.get(Table::Identifiers, &key).await? {
            Some(raw) => String::from_utf8(raw)
                .map(Some)
                .map_err(|_| StoreError::Corrupt {
                    table: Table::Identifiers.name(),
                    key,
                }),
            None => Ok(None),
        }
    }

    /// The broker-generated parameters of `tenant` (every provider): `(key, value)`.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn tenant_parameters_of(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let suffix = format!(":{tenant}");
        let mut out = Vec::new();
        for (key, raw) in self.store.scan(Table::Identifiers, "tenant-param:").await? {
            // tenant-param:<provider>:<name>:<tenant>
            if key.ends_with(&suffix) && key.split(':').count() == 4 {
                let value = String::from_utf8(raw).map_err(|_| StoreError::Corrupt {
                    table: Table::Identifiers.name(),
                    key: key.clone(),
                })?;
                out.push((key, value));
            }
        }
        Ok(out)
    }

    /// Whether `provider`'s webhook delivery `id` was already processed (and not yet
    /// forgotten).
    ///
    /// # Errors
    /// On store failure.
    pub async fn delivery_seen(&self, provider: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .get(Table::Identifiers, &delivery_key(provider, id))
            .await?
            .is_some())
    }

    /// Expired ephemeral records (install states, webhook deliveries) at `now` (Unix
    /// seconds), as read for their removal: `(key, raw)`, at most `limit` of them. The rows
    /// are read a page at a time and only expired ones kept: a store holding many live ones
    /// (a week of webhook deliveries) is never read whole into memory, nor in one statement.
    ///
    /// # Errors
    /// On store failure.
    pub async fn expired_ephemera(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        #[derive(Deserialize)]
        struct Expiring {
            expires_at: i64,
        }
        let mut out = Vec::new();
        for prefix in [
            "callback-state:",
            "webhook-delivery:",
            "intake:",
            "unclaimed:",
            "expected-site:",
            "link-pin:",
        ] {
            let room = limit.saturating_sub(out.len());
            out.extend(
                self.picked(Table::Identifiers, prefix, room, move |key, raw| {
                    // An unreadable record is kept (and reported by whoever reads it).
                    Ok(serde_json::from_slice::<Expiring>(raw)
                        .is_ok_and(|e| e.expires_at < now)
                        .then(|| (key.to_owned(), raw.to_vec())))
                })
                .await?,
            );
        }
        Ok(out)
    }

    /// Installations kept for an operator to claim, as read for a change.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn unclaimed(&self) -> Result<Vec<(String, Stored<Unclaimed>)>, StoreError> {
        let mut out = Vec::new();
        for (key, raw) in self.store.scan(Table::Identifiers, "unclaimed:").await? {
            let value: Unclaimed = decode(Table::Identifiers, &key, &raw)?;
            out.push((key, Stored { value, raw }));
        }
        Ok(out)
    }
}

/// The claim that keeps a broker-generated binding parameter (`value` of `provider`'s
/// `name`, e.g. an OIDC subject) from ever being issued again.
pub fn binding_parameter_claim(provider: &str, name: &str, value: &str) -> String {
    format!("{BINDING_PARAMETER_CLAIM}{provider}:{name}:{value}")
}

/// Whether `identifier` outlives the binding that holds it (a binding parameter's claim:
/// a customer's trust may still pin the value).
pub fn outlives_binding(identifier: &str) -> bool {
    identifier.starts_with(BINDING_PARAMETER_CLAIM)
}

const BINDING_PARAMETER_CLAIM: &str = "binding-param:";

impl Batch {
    /// Gives `identifier` to `owner`; fails if anyone holds it (one identifier, one tenant).
    pub fn claim_identifier(&mut self, identifier: &str, owner: &IdentifierOwner) -> &mut Self {
        let key = exclusive_key(identifier);
        self.push(Op::ExpectAbsent(Table::Identifiers, key.clone()))
            .push(Op::Put(Table::Identifiers, key, encode(owner)))
    }

    /// Requires `identifier` to be held by nobody when the batch commits.
    pub fn expect_identifier_free(&mut self, identifier: &str) -> &mut Self {
        self.push(Op::ExpectAbsent(
            Table::Identifiers,
            exclusive_key(identifier),
        ))
    }

    /// Records that a consent callback proved `identifier` for `tenant` (replacing any
    /// earlier proof: the latest consent is the customer's word). A binding added by hand
    /// for an identifier a consent proves is refused without it.
    pub fn prove_consent(&mut self, identifier: &str, tenant: &str) -> &mut Self {
        self.push(Op::Put(
            Table::Identifiers,
            consent_proof_key(identifier),
            encode(&IdentifierOwner {
                tenant: tenant.to_owned(),
                binding: None,
            }),
        ))
    }

    /// Requires the consent proof `key` as read (a newer consent for another tenant, or the
    /// tenant's removal, committed meanwhile fails the batch).
    pub fn expect_consent_proof(&mut self, key: &str, read: &Stored<IdentifierOwner>) -> &mut Self {
        self.expect_identifier_record(key, read)
    }

    /// Removes the consent proof `key`, which must still be as read (with its tenant).
    pub fn forget_consent_proof(&mut self, key: &str, read: &Stored<IdentifierOwner>) -> &mut Self {
        self.remove_identifier_record(key, read)
    }

    /// Frees `identifier`, which must be held.
    pub fn release_identifier(&mut self, identifier: &str) -> &mut Self {
        let key = exclusive_key(identifier);
        self.push(Op::ExpectPresent(Table::Identifiers, key.clone()))
            .push(Op::Delete(Table::Identifiers, key))
    }

    /// Records a generated tenant parameter; fails if the tenant already has one, or if
    /// another tenant has the same value (values are unique across tenants).
    pub fn put_tenant_parameter(
        &mut self,
        provider: &str,
        name: &str,
        tenant: &TenantId,
        value: &str,
    ) -> &mut Self {
        let key = tenant_param_key(provider, name, tenant);
        self.push(Op::ExpectAbsent(Table::Identifiers, key.clone()))
            .push(Op::Put(Table::Identifiers, key, value.as_bytes().to_vec()))
            .claim_identifier(
                &format!("tenant-param:{provider}:{name}:{value}"),
                &IdentifierOwner {
                    tenant: tenant.to_string(),
                    binding: None,
                },
            )
    }

    /// Retires a tenant parameter as read (`key`, `value` from
    /// [`Records::tenant_parameters_of`]): the tenant loses it, and since the value's
    /// uniqueness claim stays, it is never issued again — a tenant re-created with the same
    /// id gets a fresh one (a customer's trust policy pinned to the old ExternalId must not
    /// start trusting the new tenant).
    pub fn retire_tenant_parameter(&mut self, key: &str, value: &str) -> &mut Self {
        self.push(Op::ExpectValue(
            Table::Identifiers,
            key.to_owned(),
            value.as_bytes().to_vec(),
        ))
        .push(Op::Delete(Table::Identifiers, key.to_owned()))
    }

    /// Remembers a processed webhook delivery; fails if it was already recorded (two copies
    /// of one delivery cannot both be processed).
    pub fn record_delivery(&mut self, provider: &str, id: &str, delivery: &Delivery) -> &mut Self {
        let key = delivery_key(provider, id);
        self.push(Op::ExpectAbsent(Table::Identifiers, key.clone()))
            .push(Op::Put(Table::Identifiers, key, encode(delivery)))
    }

    /// Removes an expired ephemeral record as read ([`Records::expired_ephemera`]).
    pub fn forget_expired(&mut self, key: &str, raw: &[u8]) -> &mut Self {
        self.push(Op::ExpectValue(
            Table::Identifiers,
            key.to_owned(),
            raw.to_vec(),
        ))
        .push(Op::Delete(Table::Identifiers, key.to_owned()))
    }

    /// Keeps (or refreshes) an unclaimed installation, replacing `read` (the record as read,
    /// `(key, record)`; none: there must be none): a change committed meanwhile (an
    /// operator's ignore, another replica's refresh) fails this one instead of being undone.
    pub fn put_unclaimed(
        &mut self,
        read: Option<(&str, &Stored<Unclaimed>)>,
        record: &Unclaimed,
    ) -> &mut Self {
        let key = read.map_or_else(|| unclaimed_key(&record.identifier), |(k, _)| k.to_owned());
        self.put_identifier_record(&key, read.map(|(_, r)| r), record)
    }

    /// Removes an unclaimed installation as read (it is being claimed).
    pub fn remove_unclaimed(&mut self, key: &str, read: &Stored<Unclaimed>) -> &mut Self {
        self.remove_identifier_record(key, read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled_store::SledStore;
    use std::sync::Arc;

    fn site(reason: &str) -> Unclaimed {
        Unclaimed {
            provider: "atlassian_forge".into(),
            identifier: "atlassian_site:abc".into(),
            config: serde_json::Value::Null,
            account: AccountPin {
                login: "abc".into(),
                id: 0,
            },
            reason: reason.into(),
            seen_at: "2026-12-04T00:00:00Z".into(),
            expires_at: Some(1),
            ignored: false,
        }
    }

    /// An unclaimed record is written as read: a new one over a record kept meanwhile, or a
    /// refresh over one changed meanwhile (an operator's ignore), fails instead of undoing it.
    #[tokio::test]
    async fn unclaimed_records_are_written_as_read() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(Arc::new(SledStore::open(dir.path()).unwrap()));
        let mut b = Batch::new();
        b.put_unclaimed(None, &site("first"));
        records.commit(b).await.unwrap();
        let mut b = Batch::new();
        b.put_unclaimed(None, &site("second, planned before the first landed"));
        assert!(matches!(
            records.commit(b).await,
            Err(StoreError::Precondition { .. })
        ));
        let (key, read) = records.unclaimed().await.unwrap().remove(0);
        let mut ignored = read.value.clone();
        ignored.ignored = true;
        ignored.expires_at = None;
        let mut b = Batch::new();
        b.put_unclaimed(Some((&key, &read)), &ignored);
        records.commit(b).await.unwrap();
        let mut b = Batch::new();
        b.put_unclaimed(Some((&key, &read)), &site("a renewal from the older read"));
        assert!(matches!(
            records.commit(b).await,
            Err(StoreError::Precondition { .. })
        ));
        let (_, now) = records.unclaimed().await.unwrap().remove(0);
        assert!(now.value.ignored, "the ignore was undone");
    }
}
