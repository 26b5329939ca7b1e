//! Onboardings still out: install links' single-use states (GitHub, Entra) and the Atlassian
//! sites an onboarding expects — their types, reads, the ids an operator names them by, and
//! their batch builders. Both live in the identifiers table until consumed or expired (the
//! collector forgets them, [`Records::expired_ephemera`]).

use serde::{Deserialize, Serialize};

use super::identifiers::AccountPin;
use super::{decode, Records, Stored};
use crate::hex_text::sha256_hex;
use crate::store::{Batch, Op, StoreError, Table};

/// A single-use install `state` issued by onboarding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackState {
    /// The provider it was issued for.
    pub provider: String,
    /// The tenant it binds the install to.
    pub tenant: String,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// The account the operator expects the installation to belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<AccountPin>,
    /// SHA-256 (hex) of the browser nonce set as a cookie when the install link was last
    /// opened; the callback must carry that cookie. Absent until the link is opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<String>,
    /// How many times the link was opened (link scanners open links before people do; the
    /// last opener's browser is the one that counts, up to a few opens).
    #[serde(default)]
    pub opens: u32,
    /// When the link was issued, Unix seconds (absent in states written before it existed:
    /// expiry less the configured lifetime is used then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<i64>,
    /// Owner and purpose of the binding the install creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governance: Option<crate::model::Governance>,
    /// Who issued the link (`operator:<name>` or a local command's `cli:…`): the install acts
    /// for them, so an operator's links die once that operator is disabled or removed.
    /// Absent in states written before it existed (they are not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<String>,
    /// The revision of the issuing operator's record then: a link issued before a disable
    /// stays dead after a re-enable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator_revision: Option<u64>,
    /// Revoked by an operator after it was opened: kept until it expires, completing
    /// nothing (no browser, every opening used), so that a consent given through it meanwhile
    /// is never taken for another tenant's (Entra's one-live-link rule still counts it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
    /// Used: its setup callback came back (accepted or refused) and consumed it. Kept until it
    /// expires as a revoked link is, completing nothing, and for the same reason: the
    /// customer's admin may still be on the consent page it led to, so Entra's one-live-link
    /// rule still counts it (a used link deleted at once let a refused callback — anyone
    /// holding the link can send one — lift the block).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub used: bool,
}

impl CallbackState {
    /// Whether it can complete nothing more (revoked or used): what reaches it is refused
    /// without a write.
    pub fn spent(&self) -> bool {
        self.revoked || self.used
    }

    /// What it becomes once it may complete nothing more: no browser can match and no
    /// opening is left — on any replica, this release's or an older one's — and it is
    /// forgotten at its expiry as any state.
    pub fn tombstone(&self, revoked: bool) -> CallbackState {
        CallbackState {
            browser: None,
            opens: u32::MAX,
            revoked: self.revoked || revoked,
            used: self.used || !revoked,
            ..self.clone()
        }
    }
}

/// A site an operator's onboarding expects (Atlassian Forge): its first verified invocation
/// binds its installation to `tenant`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedSite {
    /// The provider it was recorded for.
    pub provider: String,
    /// The tenant the site's installation is bound to.
    pub tenant: String,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// When it was recorded, RFC 3339.
    pub recorded_at: String,
    /// Owner and purpose of the binding its first invocation creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governance: Option<crate::model::Governance>,
    /// Who recorded it (`operator:<name>` or a local command's `cli:…`): an operator's
    /// expectation binds nothing once that operator is disabled or removed. Absent in
    /// expectations written before it existed (they are not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<String>,
    /// The revision of that operator's record then: an expectation recorded before a
    /// disable stays dead after a re-enable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator_revision: Option<u64>,
    /// SHA-256 (hex) of the connect code the onboarding handed out: the site is bound only
    /// when an administrator of it types that code on the app's admin page. Absent in
    /// expectations written before codes existed: those bind nothing (onboard again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_sha256: Option<String>,
}

/// The record every install link pinning one account (an Entra tenant GUID) passes
/// through: each issuance rewrites it, as it read it before looking for other links, in the
/// batch that stores its own link. Two issuances for one account planned at the same moment
/// (on two replicas) do not both land: the second fails that precondition (`conflict`), and
/// when it is retried its check sees the first one's link. It holds nothing the check
/// reads; the collector forgets it once every link through it has expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkPin {
    /// The provider of the links.
    pub provider: String,
    /// The tenant of the last link issued through it.
    pub tenant: String,
    /// When that link was issued, Unix seconds.
    pub issued_at: i64,
    /// The latest expiry of a link issued through it, Unix seconds.
    pub expires_at: i64,
    /// How many issuances and openings passed through it: every pass writes a record that
    /// differs from the one read, so a precondition on the one read fails.
    #[serde(default)]
    pub passes: u64,
}

impl LinkPin {
    /// The record a pass writes over `read` (absent: none yet) for a link of `link`'s
    /// tenant, expiring no earlier than that link, at `now` (Unix seconds).
    pub fn passed(read: Option<&LinkPin>, link: &CallbackState, now: i64) -> LinkPin {
        LinkPin {
            provider: link.provider.clone(),
            tenant: link.tenant.clone(),
            issued_at: now,
            expires_at: read.map_or(i64::MIN, |r| r.expires_at).max(link.expires_at),
            passes: read.map_or(0, |r| r.passes).wrapping_add(1),
        }
    }

    /// The record a binding of the pinned identifier to `tenant` writes over `read` at `now`
    /// (Unix seconds): it changes the record, so an issuance planned before it fails, and
    /// extends no link's life.
    pub fn bound(read: Option<&LinkPin>, provider: &str, tenant: &str, now: i64) -> LinkPin {
        LinkPin {
            provider: provider.to_owned(),
            tenant: tenant.to_owned(),
            issued_at: now,
            expires_at: read.map_or(now, |r| r.expires_at),
            passes: read.map_or(0, |r| r.passes).wrapping_add(1),
        }
    }
}

fn link_pin_key(provider: &str, login: &str) -> String {
    format!("link-pin:{provider}:{}", login.to_ascii_lowercase())
}

impl ExpectedSite {
    /// Whether it has expired at `now` (Unix seconds): it then binds nothing.
    #[must_use]
    pub fn expired(&self, now: i64) -> bool {
        self.expires_at < now
    }
}

fn expected_site_key(site: &str) -> String {
    format!("expected-site:{site}")
}

/// An install state is keyed by its SHA-256, as intake links are: the state itself, live until
/// consumed, never reaches the store (a copy of the data directory) nor any message that
/// names a key (a failed precondition's error).
///
/// The digest is under `sha256-`, which no state can spell (states are alphanumeric): the
/// hashed key, read from a copy of the store, is not itself a state that opens the link.
fn callback_state_key(state: &str) -> String {
    format!("callback-state:sha256-{}", sha256_hex(state.as_bytes()))
}

/// Where the release before the state was hashed kept it (its states were 40 alphanumeric
/// characters): read only, so that a link issued just before an upgrade still works until it
/// expires (the collector forgets it as any). Nothing else is looked up there.
fn legacy_callback_state_key(state: &str) -> Option<String> {
    (state.len() == 40 && state.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| format!("callback-state:{state}"))
}

/// An onboarding still out (not consumed, perhaps expired): an install link or a site
/// expectation, as read for its revocation.
#[derive(Debug, Clone)]
pub enum Outstanding {
    /// An install link's state (never the state itself: its digest names it).
    InstallLink(Stored<CallbackState>),
    /// An expected site, with the site's exclusive identifier.
    ExpectedSite(String, Stored<ExpectedSite>),
}

/// The id an operator names an outstanding onboarding by (`il_…` for an install link,
/// `es_…` for a site expectation): a digest of what it is stored under, so neither a listing
/// nor an audit record holds a state that opens the link. `None` for a key that is neither.
pub fn outstanding_id(key: &str) -> Option<String> {
    // The first 12 bytes of the digest.
    let short = |bytes: &[u8]| sha256_hex(bytes)[..24].to_owned();
    if let Some(hashed) = key.strip_prefix("callback-state:sha256-") {
        // The stored digest's first 12 bytes, as a legacy key's state hashes to.
        return (hashed.len() == 64 && hashed.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| format!("il_{}", &hashed[..24]));
    }
    if let Some(state) = key.strip_prefix("callback-state:") {
        return Some(format!("il_{}", short(state.as_bytes())));
    }
    key.strip_prefix("expected-site:")
        .map(|site| format!("es_{}", short(site.as_bytes())))
}

impl Records {
    /// An install `state`, as read for its consumption.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn callback_state(
        &self,
        state: &str,
    ) -> Result<Option<(String, Stored<CallbackState>)>, StoreError> {
        for key in
            std::iter::once(callback_state_key(state)).chain(legacy_callback_state_key(state))
        {
            if let Some(read) = self.get_stored(Table::Identifiers, &key).await? {
                return Ok(Some((key, read)));
            }
        }
        Ok(None)
    }

    /// Install links of `provider` that are still unexpired at `now` (Unix seconds) and pin
    /// the account `login` (compared without case): an onboarding of that account for
    /// another tenant is refused while one is out (and its issuer may still act).
    ///
    /// # Errors
    /// On store failure.
    pub async fn live_links_pinning(
        &self,
        provider: &str,
        login: &str,
        now: i64,
    ) -> Result<Vec<CallbackState>, StoreError> {
        let mut out = Vec::new();
        for (_, raw) in self
            .store
            .scan(Table::Identifiers, "callback-state:")
            .await?
        {
            // An unreadable state pins nothing this check could honour; its own use fails.
            let Ok(state) = serde_json::from_slice::<CallbackState>(&raw) else {
                continue;
            };
            if state.provider == provider
                && state.expires_at >= now
                && state
                    .pin
                    .as_ref()
                    .is_some_and(|p| p.login.eq_ignore_ascii_case(login))
            {
                out.push(state);
            }
        }
        Ok(out)
    }

    /// The pin record of `provider`'s links for the account `login` (compared without
    /// case), as read before an issuance looks for other links: `(key, record)`.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn link_pin(
        &self,
        provider: &str,
        login: &str,
    ) -> Result<(String, Option<Stored<LinkPin>>), StoreError> {
        let key = link_pin_key(provider, login);
        let read = self.get_stored(Table::Identifiers, &key).await?;
        Ok((key, read))
    }

    /// Every install link and site expectation still stored (expired ones too, until the
    /// collector forgets them), as read for a revocation: `(key, record)`.
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn outstanding_onboardings(&self) -> Result<Vec<(String, Outstanding)>, StoreError> {
        let mut out = Vec::new();
        for (key, raw) in self
            .store
            .scan(Table::Identifiers, "callback-state:")
            .await?
        {
            let value: CallbackState = decode(Table::Identifiers, &key, &raw)?;
            out.push((key, Outstanding::InstallLink(Stored { value, raw })));
        }
        for (key, raw) in self
            .store
            .scan(Table::Identifiers, "expected-site:")
            .await?
        {
            let value: ExpectedSite = decode(Table::Identifiers, &key, &raw)?;
            let site = key.trim_start_matches("expected-site:").to_owned();
            out.push((key, Outstanding::ExpectedSite(site, Stored { value, raw })));
        }
        Ok(out)
    }

    /// The onboarding that expects `site` (an exclusive site identifier), as read for a
    /// change (expired or not: the caller decides).
    ///
    /// # Errors
    /// On store failure or corruption.
    pub async fn expected_site(
        &self,
        site: &str,
    ) -> Result<Option<(String, Stored<ExpectedSite>)>, StoreError> {
        let key = expected_site_key(site);
        Ok(self
            .get_stored(Table::Identifiers, &key)
            .await?
            .map(|s| (key, s)))
    }
}

impl Batch {
    /// Stores a new install `state`.
    pub fn put_callback_state(&mut self, state: &str, record: &CallbackState) -> &mut Self {
        self.put_identifier_record::<CallbackState, _>(&callback_state_key(state), None, record)
    }

    /// Marks an install `state` as opened by one browser (`browser`: hash of its nonce), as
    /// read: of two concurrent openings one fails; a later one replaces the browser.
    pub fn start_callback_state(
        &mut self,
        key: &str,
        read: &Stored<CallbackState>,
        browser: &str,
    ) -> &mut Self {
        let mut started = read.value.clone();
        started.browser = Some(browser.to_owned());
        started.opens = started.opens.saturating_add(1);
        self.replace_identifier_record(key, read, &started)
    }

    /// Replaces an install state as read with `record` (a revocation's tombstone): fails if
    /// it changed meanwhile (opened, used).
    pub fn replace_callback_state(
        &mut self,
        key: &str,
        read: &Stored<CallbackState>,
        record: &CallbackState,
    ) -> &mut Self {
        self.replace_identifier_record(key, read, record)
    }

    /// Consumes an install `state` as it was read, leaving its tombstone until it expires: a
    /// second consumption fails.
    pub fn consume_callback_state(&mut self, key: &str, read: &Stored<CallbackState>) -> &mut Self {
        self.replace_identifier_record(key, read, &read.value.tombstone(false))
    }

    /// Records that `site` is expected, replacing `read` (the expectation as read, if any;
    /// of two concurrent onboardings one fails).
    pub fn put_expected_site(
        &mut self,
        site: &str,
        read: Option<&Stored<ExpectedSite>>,
        record: &ExpectedSite,
    ) -> &mut Self {
        self.put_identifier_record(&expected_site_key(site), read, record)
    }

    /// Passes an issuance through the pin record at `key`, which must still be as `read`
    /// (absent when `None`): of two issuances for one account planned from the same state,
    /// one fails.
    pub fn pass_link_pin(
        &mut self,
        key: &str,
        read: Option<&Stored<LinkPin>>,
        record: &LinkPin,
    ) -> &mut Self {
        self.put_identifier_record(key, read, record)
    }

    /// Forgets an install `state` as read (a never-opened link revoked: nobody can be on a
    /// consent page through it).
    pub fn forget_callback_state(&mut self, key: &str, read: &Stored<CallbackState>) -> &mut Self {
        self.remove_identifier_record(key, read)
    }

    /// Requires an expectation to be still as read (a bind it authorizes: a revocation or a
    /// new onboarding committed meanwhile, on any replica, fails the bind).
    pub fn expect_expected_site(&mut self, key: &str, read: &Stored<ExpectedSite>) -> &mut Self {
        self.expect_identifier_record(key, read)
    }

    /// Requires that no expectation of `site` exists when the batch commits: a binding
    /// planned with none in view does not race one recorded meanwhile, on any replica.
    pub fn expect_no_expected_site(&mut self, site: &str) -> &mut Self {
        self.push(Op::ExpectAbsent(
            Table::Identifiers,
            expected_site_key(site),
        ))
    }

    /// Removes an expectation as read (its site was bound).
    pub fn remove_expected_site(&mut self, key: &str, read: &Stored<ExpectedSite>) -> &mut Self {
        self.remove_identifier_record(key, read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::encode;
    use crate::store::sled_store::SledStore;
    use std::sync::Arc;

    #[test]
    fn an_outstanding_id_is_one_digest_of_a_hashed_or_legacy_state() {
        let state = "Ab3".repeat(13) + "x";
        let hashed = callback_state_key(&state);
        let legacy = legacy_callback_state_key(&state).unwrap();
        let id = outstanding_id(&hashed).unwrap();
        assert_eq!(Some(id.clone()), outstanding_id(&legacy));
        assert!(id.starts_with("il_") && id.len() == 27, "{id}");
        assert!(!id.contains(&state[..8]), "{id}");
        let site = outstanding_id(&expected_site_key("atlassian_site:abc")).unwrap();
        assert!(site.starts_with("es_") && site.len() == 27, "{site}");
        assert_eq!(outstanding_id("intake:abc"), None);
        assert_eq!(outstanding_id("callback-state:sha256-zz"), None);
    }

    fn state_record() -> CallbackState {
        CallbackState {
            provider: "github_app".into(),
            tenant: "t1".into(),
            expires_at: i64::MAX,
            pin: None,
            browser: None,
            opens: 0,
            issued_at: None,
            governance: None,
            creator: None,
            creator_revision: None,
            revoked: false,
            used: false,
        }
    }

    /// Two issuances planned from one read of an account's pin record: the first lands, the
    /// second fails its precondition; the record is one per account whatever its case, and
    /// the collector forgets it once every link through it has expired.
    #[tokio::test]
    async fn a_link_pin_lets_one_of_two_issuances_planned_together_land() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(Arc::new(SledStore::open(dir.path()).unwrap()));
        let guid = "11111111-2222-4333-8444-55555555AAAA";
        let pin = |tenant: &str, expires_at: i64| LinkPin {
            provider: "entra_multi_tenant".into(),
            tenant: tenant.into(),
            issued_at: 1,
            expires_at,
            passes: 0,
        };
        for (first, second) in [(1, 2), (3, 4)] {
            let (key, read) = records.link_pin("entra_multi_tenant", guid).await.unwrap();
            let (again, read_again) = records
                .link_pin("entra_multi_tenant", &guid.to_ascii_lowercase())
                .await
                .unwrap();
            assert_eq!(key, again);
            assert_eq!(
                read.map(|r| r.raw),
                read_again.as_ref().map(|r| r.raw.clone())
            );
            let read = read_again;
            let mut a = Batch::new();
            a.pass_link_pin(&key, read.as_ref(), &pin("t1", first));
            records.commit(a).await.unwrap();
            let mut b = Batch::new();
            b.pass_link_pin(&key, read.as_ref(), &pin("t2", second));
            assert!(
                matches!(
                    records.commit(b).await,
                    Err(StoreError::Precondition { .. })
                ),
                "two issuances planned from one read both landed"
            );
        }
        let (_, read) = records.link_pin("entra_multi_tenant", guid).await.unwrap();
        assert_eq!(read.unwrap().value, pin("t1", 3));
        assert!(records.expired_ephemera(3, 1000).await.unwrap().is_empty());
        let expired = records.expired_ephemera(4, 1000).await.unwrap();
        assert!(
            records.expired_ephemera(4, 0).await.unwrap().is_empty(),
            "the limit holds"
        );
        assert_eq!(expired.len(), 1, "{expired:?}");
        assert!(expired[0].0.starts_with("link-pin:"), "{expired:?}");
    }

    /// A binding of the pinned identifier and an issuance planned from one read of the pin
    /// record: whichever lands first, the other fails its precondition.
    #[tokio::test]
    async fn a_binding_and_a_link_planned_together_do_not_both_land() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(Arc::new(SledStore::open(dir.path()).unwrap()));
        let guid = "11111111-2222-4333-8444-55555555aaaa";
        let provider = "entra_multi_tenant";
        let mut link = state_record();
        link.expires_at = 500;
        for binding_first in [true, false, true] {
            let (key, read) = records.link_pin(provider, guid).await.unwrap();
            let value = read.as_ref().map(|r| &r.value);
            let mut bind = Batch::new();
            bind.pass_link_pin(
                &key,
                read.as_ref(),
                &LinkPin::bound(value, provider, "t2", 7),
            );
            let mut issue = Batch::new();
            issue.pass_link_pin(&key, read.as_ref(), &LinkPin::passed(value, &link, 7));
            let (first, second) = if binding_first {
                (bind, issue)
            } else {
                (issue, bind)
            };
            records.commit(first).await.unwrap();
            assert!(
                matches!(
                    records.commit(second).await,
                    Err(StoreError::Precondition { .. })
                ),
                "a binding and a link for one GUID both landed (binding first: {binding_first})"
            );
        }
        // A bind extends no link's life.
        let (_, read) = records.link_pin(provider, guid).await.unwrap();
        assert_eq!(read.unwrap().value.expires_at, 500);
    }

    /// A state is stored under its hash: the store holds no live state in clear, and a
    /// state written by a release that kept it in clear is still found (and consumed at the
    /// key it was read from).
    #[tokio::test]
    async fn install_states_are_keyed_by_their_hash_and_old_ones_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(Arc::new(SledStore::open(dir.path()).unwrap()));
        let state = "Zq3stateStateSTATE0123456789abcdefABCDEF";
        let mut batch = Batch::new();
        batch.put_callback_state(state, &state_record());
        records.commit(batch).await.unwrap();
        let keys: Vec<String> = records
            .store()
            .scan(Table::Identifiers, "callback-state:")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(!keys[0].contains(state), "{keys:?}");
        let (key, read) = records.callback_state(state).await.unwrap().unwrap();
        assert_eq!(key, keys[0]);
        assert_eq!(read.tenant, "t1");
        assert!(records.callback_state("other").await.unwrap().is_none());
        // The key read from a copy of the store does not open the link: neither its digest
        // nor the whole suffix is a state.
        let suffix = keys[0].trim_start_matches("callback-state:");
        let digest = suffix.trim_start_matches("sha256-");
        assert_eq!(digest.len(), 64, "{suffix}");
        for guess in [suffix, digest] {
            assert!(
                records.callback_state(guess).await.unwrap().is_none(),
                "{guess}"
            );
        }

        let old = "OldStateWrittenInClearByAnEarlierRelease";
        assert_eq!(
            old.len(),
            40,
            "the previous release's states were 40 characters"
        );
        let mut batch = Batch::new();
        batch.push(Op::Put(
            Table::Identifiers,
            format!("callback-state:{old}"),
            encode(&state_record()),
        ));
        records.commit(batch).await.unwrap();
        let (key, read) = records.callback_state(old).await.unwrap().unwrap();
        assert_eq!(key, format!("callback-state:{old}"));
        let mut batch = Batch::new();
        batch.consume_callback_state(&key, &read);
        records.commit(batch).await.unwrap();
        // Consumed where it was read: a used tombstone there, nothing written elsewhere.
        let (key, used) = records.callback_state(old).await.unwrap().unwrap();
        assert_eq!(key, format!("callback-state:{old}"));
        assert!(
            used.value.used && used.value.browser.is_none(),
            "{:?}",
            used.value
        );
    }
}
