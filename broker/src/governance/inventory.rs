//! The credential inventory: every binding and worker as a non-human identity, with its
//! owner, purpose, last use, secret age, known expiry, rotation policy and revocation path,
//! and the flags an operator acts on. Computed from the store (and this broker's own
//! unflushed last uses), never written.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use time::OffsetDateTime;

use crate::model::{Binding, SecretState, Status, Worker};
use crate::store::records::{LastUseKind, SecretMeta};

/// The flags, in the order the inventory prints them.
pub const FLAGS: &[&str] = &[
    UNOWNED,
    DORMANT,
    ROTATION_OVERDUE,
    EXPIRING_SOON,
    PROBE_FAILED,
    REVOCATION_OWED,
];
/// No owner or purpose recorded.
pub const UNOWNED: &str = "unowned";
/// No successful resolve within the dormancy window (since creation when never used).
pub const DORMANT: &str = "dormant";
/// The active secret is older than its rotation policy allows.
pub const ROTATION_OVERDUE: &str = "rotation_overdue";
/// A known expiry falls within the warning window (or has passed).
pub const EXPIRING_SOON: &str = "expiring_soon";
/// The last probe failed, or the upstream said the trust or consent is gone.
pub const PROBE_FAILED: &str = "last_probe_failed";
/// A credential a self-rotation replaced still works upstream: its revocation, retried by
/// the broker, has been owed for longer than [`OWED_GRACE_S`].
pub const REVOCATION_OWED: &str = "revocation_owed";

/// How long a replaced credential's revocation may be owed before it is flagged: the
/// broker makes it at once after the promotion, and retries it at its rotation ticks.
pub const OWED_GRACE_S: i64 = 900;

/// The windows an inventory is computed with.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    /// Dormant after this long without a resolve, seconds.
    pub dormant_s: u64,
    /// Expiring soon within this long, seconds.
    pub expiring_s: u64,
}

/// One row of the inventory.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Item {
    /// `binding` or `worker`.
    pub kind: &'static str,
    /// Its id.
    pub id: String,
    /// Owning tenant (bindings) or the tenants it serves (workers), comma-separated.
    pub tenant: String,
    /// Provider (bindings) or connector kinds (workers, empty: any).
    pub provider: String,
    /// Status.
    pub status: Status,
    /// Owner, when recorded.
    pub owner: Option<String>,
    /// Purpose, when recorded.
    pub purpose: Option<String>,
    /// Creation time.
    pub created_at: String,
    /// Last successful resolve, RFC 3339.
    pub last_resolve_at: Option<String>,
    /// Last probe, RFC 3339 (bindings).
    pub last_probe_at: Option<String>,
    /// What the last probe found (bindings).
    pub last_probe: Option<String>,
    /// The active secret version (bindings with a stored secret).
    pub secret_version: Option<u32>,
    /// The active secret version's age, days.
    pub secret_age_days: Option<i64>,
    /// The rotation policy: the most days the active secret may age.
    pub max_secret_age_days: Option<u32>,
    /// The earliest known expiry, RFC 3339 (declared with the secret, or reported upstream).
    pub expires_at: Option<String>,
    /// How to revoke it.
    pub revocation: String,
    /// What needs attention ([`FLAGS`]).
    pub flags: Vec<&'static str>,
}

/// The inventory.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Inventory {
    /// When it was computed.
    pub generated_at: String,
    /// Dormancy window used, seconds.
    pub dormant_after_s: u64,
    /// Expiry warning window used, seconds.
    pub expiring_within_s: u64,
    /// Rows flagged, by flag and kind (`{"dormant": {"binding": 3, "worker": 0}, …}`).
    pub counts: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// Bindings, then workers, each by id.
    pub items: Vec<Item>,
}

fn parse(t: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
}

/// The expiry a provider's probe reported (Data Center PATs: `expiring_at`, as the instance
/// wrote it: `2026-12-31T10:00:00.000+0000`, which strict RFC 3339 refuses).
fn upstream_expiry(b: &Binding) -> Option<OffsetDateTime> {
    b.trust_facts
        .as_ref()
        .and_then(credbroker_providers::atlassian_dc::reported_expiry)
}

/// Rows flagged, by flag and kind: every flag and kind present, zero when none.
pub type Counts = BTreeMap<&'static str, BTreeMap<&'static str, u64>>;

/// Counts at zero.
pub fn no_counts() -> Counts {
    FLAGS
        .iter()
        .map(|f| (*f, [("binding", 0), ("worker", 0)].into_iter().collect()))
        .collect()
}

fn count(counts: &mut Counts, kind: &'static str, flags: &[&'static str]) {
    for f in flags {
        *counts.entry(f).or_default().entry(kind).or_default() += 1;
    }
}

/// What one computation judges rows by, fixed at `now`: the active secret versions (binding
/// id → its active version), the last uses, the rotation policy and the windows.
pub struct Assessor<'a> {
    active: &'a HashMap<String, SecretMeta>,
    owed: &'a HashMap<String, OffsetDateTime>,
    last_use: &'a HashMap<(LastUseKind, String), i64>,
    policy: &'a BTreeMap<String, u32>,
    windows: Windows,
    now: OffsetDateTime,
    dormant_before: OffsetDateTime,
    expiring_before: OffsetDateTime,
}

/// What the inventory finds of one binding.
struct BindingFacts<'a> {
    used: Option<i64>,
    version: Option<&'a SecretMeta>,
    created: Option<OffsetDateTime>,
    max_age: Option<u32>,
    expiry: Option<OffsetDateTime>,
    flags: Vec<&'static str>,
}

impl<'a> Assessor<'a> {
    /// An assessor over these facts.
    pub fn new(
        active: &'a HashMap<String, SecretMeta>,
        owed: &'a HashMap<String, OffsetDateTime>,
        last_use: &'a HashMap<(LastUseKind, String), i64>,
        policy: &'a BTreeMap<String, u32>,
        windows: Windows,
        now: OffsetDateTime,
    ) -> Self {
        // Checked: a window reaching past the calendar's range means "none" / "all".
        let dormant_before = now
            .checked_sub(duration(windows.dormant_s))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let expiring_before = now.checked_add(duration(windows.expiring_s)).unwrap_or(now);
        Assessor {
            active,
            owed,
            last_use,
            policy,
            windows,
            now,
            dormant_before,
            expiring_before,
        }
    }

    fn binding_facts(&self, b: &Binding) -> BindingFacts<'a> {
        let id = b.id.as_str();
        let used = since_created(
            self.last_use.get(&(LastUseKind::Binding, id.to_owned())),
            &b.created_at,
        );
        let version = self
            .active
            .get(id)
            .filter(|v| v.state == SecretState::Active);
        let created = version.and_then(|v| parse(&v.created_at));
        let max_age = b.max_secret_age_days.or_else(|| {
            (b.active_secret_version.is_some() || version.is_some())
                .then(|| self.policy.get(&b.provider).copied())
                .flatten()
        });
        let expiry = [
            version
                .and_then(|v| v.expires_at.as_deref())
                .and_then(parse),
            upstream_expiry(b),
        ]
        .into_iter()
        .flatten()
        .min();
        let mut flags = Vec::new();
        if b.governance.is_none() {
            flags.push(UNOWNED);
        }
        if dormant(used, &b.created_at, self.dormant_before) {
            flags.push(DORMANT);
        }
        if let (Some(c), Some(days)) = (created, max_age) {
            if self.now - c > duration(u64::from(days).saturating_mul(86_400)) {
                flags.push(ROTATION_OVERDUE);
            }
        }
        if expiry.is_some_and(|e| e <= self.expiring_before) {
            flags.push(EXPIRING_SOON);
        }
        if b.trust_broken
            || b.drift.is_some()
            || b.last_probe
                .as_deref()
                .is_some_and(crate::model::probe_failed)
        {
            flags.push(PROBE_FAILED);
        }
        if self
            .owed
            .get(id)
            .is_some_and(|since| self.now - *since > time::Duration::seconds(OWED_GRACE_S))
        {
            flags.push(REVOCATION_OWED);
        }
        BindingFacts {
            used,
            version,
            created,
            max_age,
            expiry,
            flags,
        }
    }

    fn worker_flags(&self, w: &Worker) -> (Option<i64>, Vec<&'static str>) {
        let used = since_created(
            self.last_use
                .get(&(LastUseKind::Worker, w.id.as_str().to_owned())),
            &w.created_at,
        );
        let mut flags = Vec::new();
        if w.governance.is_none() {
            flags.push(UNOWNED);
        }
        if dormant(used, &w.created_at, self.dormant_before) {
            flags.push(DORMANT);
        }
        (used, flags)
    }

    /// Counts binding `b`'s flags into `counts` (the gauges need no rows).
    pub fn count_binding(&self, b: &Binding, counts: &mut Counts) {
        count(counts, "binding", &self.binding_facts(b).flags);
    }

    /// Counts worker `w`'s flags into `counts`.
    pub fn count_worker(&self, w: &Worker, counts: &mut Counts) {
        count(counts, "worker", &self.worker_flags(w).1);
    }

    fn binding_item(&self, b: &Binding) -> Item {
        let f = self.binding_facts(b);
        let id = b.id.to_string();
        Item {
            kind: "binding",
            id: id.clone(),
            tenant: b.tenant.to_string(),
            provider: b.provider.clone(),
            status: b.status,
            owner: b.governance.as_ref().map(|g| g.owner.clone()),
            purpose: b.governance.as_ref().map(|g| g.purpose.clone()),
            created_at: b.created_at.clone(),
            last_resolve_at: f.used.and_then(crate::model::rfc3339_of_unix),
            last_probe_at: b.last_tested_at.clone(),
            last_probe: b.last_probe.clone(),
            secret_version: f.version.map(|v| v.version),
            secret_age_days: f.created.map(|c| (self.now - c).whole_days()),
            max_secret_age_days: f.max_age,
            expires_at: f.expiry.map(crate::model::rfc3339),
            revocation: format!(
                "credbroker binding disable {id} (resolves refused at once), then remove the customer's trust or secret upstream"
            ),
            flags: f.flags,
        }
    }

    fn worker_item(&self, w: &Worker) -> Item {
        let (used, flags) = self.worker_flags(w);
        let id = w.id.to_string();
        Item {
            kind: "worker",
            id: id.clone(),
            tenant: w
                .tenants
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(","),
            provider: w.connector_kinds.join(","),
            status: w.status,
            owner: w.governance.as_ref().map(|g| g.owner.clone()),
            purpose: w.governance.as_ref().map(|g| g.purpose.clone()),
            created_at: w.created_at.clone(),
            last_resolve_at: used.and_then(crate::model::rfc3339_of_unix),
            last_probe_at: None,
            last_probe: None,
            secret_version: None,
            secret_age_days: None,
            max_secret_age_days: None,
            expires_at: None,
            revocation: format!(
                "credbroker worker disable {id} (refused at once), then revoke its certificate (CRL, credbroker reload)"
            ),
            flags,
        }
    }

    /// The inventory of `bindings` and `workers`: bindings, then workers, each by id.
    pub fn inventory(&self, bindings: &[Binding], workers: &[Worker]) -> Inventory {
        let mut counts = no_counts();
        let mut items = Vec::with_capacity(bindings.len() + workers.len());
        let mut sorted: Vec<&Binding> = bindings.iter().collect();
        sorted.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        for b in sorted {
            let item = self.binding_item(b);
            count(&mut counts, "binding", &item.flags);
            items.push(item);
        }
        let mut sorted: Vec<&Worker> = workers.iter().collect();
        sorted.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        for w in sorted {
            let item = self.worker_item(w);
            count(&mut counts, "worker", &item.flags);
            items.push(item);
        }
        Inventory {
            generated_at: crate::model::rfc3339(self.now),
            dormant_after_s: self.windows.dormant_s,
            expiring_within_s: self.windows.expiring_s,
            counts,
            items,
        }
    }
}

/// A last use from before the record's creation belongs to an earlier record of that id.
fn since_created(used: Option<&i64>, created_at: &str) -> Option<i64> {
    let created = parse(created_at).map_or(i64::MIN, |c| c.unix_timestamp());
    used.copied().filter(|u| *u >= created)
}

fn duration(s: u64) -> time::Duration {
    // At most about a thousand years: well inside what an OffsetDateTime can move by.
    time::Duration::seconds(i64::try_from(s.min(1 << 35)).unwrap_or(1 << 35))
}

/// Dormant: its last resolve (or, never used, its creation) is before `before`.
fn dormant(used: Option<i64>, created_at: &str, before: OffsetDateTime) -> bool {
    let last = used
        .and_then(|u| OffsetDateTime::from_unix_timestamp(u).ok())
        .or_else(|| parse(created_at));
    last.is_some_and(|l| l < before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Governance;

    fn binding(id: &str, owned: bool, created: &str) -> Binding {
        serde_json::from_value(serde_json::json!({
            "id": id, "tenant": "t1", "provider": "pasted_secret", "status": "active",
            "created_at": created, "active_secret_version": 1, "last_secret_version": 1,
            "governance": owned.then(|| Governance { owner: "team".into(), purpose: "p".into() }),
        }))
        .unwrap()
    }

    #[test]
    fn flags_follow_the_facts() {
        let now = OffsetDateTime::now_utc();
        let old = crate::model::rfc3339(now - time::Duration::days(200));
        let fresh = crate::model::rfc3339(now);
        let bindings = vec![
            binding("b-old", false, &old),
            binding("b-new", true, &fresh),
        ];
        let mut active = HashMap::new();
        for (b, created, expires) in [
            ("b-old", &old, None),
            ("b-new", &fresh, Some(fresh.clone())),
        ] {
            let v: SecretMeta = serde_json::from_value(serde_json::json!({
                "binding": b, "version": 1, "state": "active", "field_names": ["token"],
                "kek_version": 1, "wrapped_dek": "", "sealed_payload": "", "created_at": created,
                "expires_at": expires,
            }))
            .unwrap();
            active.insert(b.to_owned(), v);
        }
        let mut uses = HashMap::new();
        uses.insert(
            (LastUseKind::Binding, "b-new".to_owned()),
            now.unix_timestamp(),
        );
        let policy = [("pasted_secret".to_owned(), 90)].into_iter().collect();
        let workers: Vec<Worker> = [("w-old", false, &old), ("w-new", true, &fresh)]
            .into_iter()
            .map(|(id, owned, created)| {
                serde_json::from_value(serde_json::json!({
                    "id": id, "tenants": ["t1"], "status": "active", "created_at": created,
                    "governance": owned.then(|| Governance { owner: "team".into(), purpose: "p".into() }),
                }))
                .unwrap()
            })
            .collect();
        let owed = HashMap::new();
        let assessor = Assessor::new(
            &active,
            &owed,
            &uses,
            &policy,
            Windows {
                dormant_s: 30 * 86_400,
                expiring_s: 86_400,
            },
            now,
        );
        let inv = assessor.inventory(&bindings, &workers);
        let old = &inv.items[1];
        assert_eq!(old.id, "b-old");
        assert_eq!(old.flags, vec![UNOWNED, DORMANT, ROTATION_OVERDUE]);
        let new = &inv.items[0];
        assert_eq!(new.flags, vec![EXPIRING_SOON]);
        assert_eq!(inv.counts[DORMANT]["binding"], 1);
        // The gauges' pass counts the same flags without building rows.
        let mut counts = no_counts();
        for b in &bindings {
            assessor.count_binding(b, &mut counts);
        }
        for w in &workers {
            assessor.count_worker(w, &mut counts);
        }
        assert_eq!(counts, inv.counts);
        assert_eq!(counts[UNOWNED]["binding"], 1);
        assert_eq!(counts[EXPIRING_SOON]["binding"], 1);
        assert_eq!(counts[UNOWNED]["worker"], 1);
        assert_eq!(counts[DORMANT]["worker"], 1);
    }

    /// A replaced credential whose revocation has been owed past the grace is flagged on
    /// its binding; one owed for less is not (the broker is making it).
    #[test]
    fn a_revocation_owed_past_the_grace_is_flagged() {
        let now = OffsetDateTime::now_utc();
        let created = crate::model::rfc3339(now);
        let bindings = vec![
            binding("b-late", true, &created),
            binding("b-now", true, &created),
        ];
        let owed: HashMap<String, OffsetDateTime> = [
            (
                "b-late".to_owned(),
                now - time::Duration::seconds(OWED_GRACE_S + 60),
            ),
            ("b-now".to_owned(), now - time::Duration::seconds(30)),
        ]
        .into_iter()
        .collect();
        let (active, uses, policy) = (HashMap::new(), HashMap::new(), BTreeMap::new());
        let windows = Windows {
            dormant_s: 30 * 86_400,
            expiring_s: 86_400,
        };
        let assessor = Assessor::new(&active, &owed, &uses, &policy, windows, now);
        let inv = assessor.inventory(&bindings, &[]);
        let flags = |id: &str| inv.items.iter().find(|i| i.id == id).unwrap().flags.clone();
        assert_eq!(flags("b-late"), vec![REVOCATION_OWED]);
        assert!(flags("b-now").is_empty());
        assert_eq!(inv.counts[REVOCATION_OWED]["binding"], 1);
    }
}
