//! The audit report: what an auditor looks at first. One pass over the verified log (every
//! chain of a shared store) builds a [`ReportSummary`]; [`html::render`] turns it into one
//! self-contained page, and the same summary serializes as JSON for tooling.
//!
//! What goes in is chosen field by field from the records: ids, actions, outcomes, error
//! codes, the non-secret admin detail. Never a token fingerprint, never anything of a
//! credential (records hold none), never a key.

pub mod html;

use std::collections::BTreeMap;

use serde::Serialize;

/// The most rows of denials and of admin changes a report lists (the counts cover all).
pub const MAX_ROWS: usize = 500;

/// Everything the report shows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReportSummary {
    /// When the report was made (RFC 3339 UTC).
    pub generated_at: String,
    /// The window and tenant asked for.
    pub filter: ReportFilter,
    /// Whether there was at least one chain and every chain verified (the page's first line).
    pub verified: bool,
    /// Records of verified chains covered by a signed checkpoint (proven with the key).
    pub anchored_records: u64,
    /// Records of verified chains after their last checkpoint: chained, not yet signed.
    pub unanchored_records: u64,
    /// Whether the public key was given (`--public-key`, a copy kept elsewhere) rather
    /// than taken from the host whose log it verifies.
    pub public_key_pinned: bool,
    /// SHA-256 (hex) of the audit public key file the chains were verified with.
    pub public_key_sha256: String,
    /// The file the public key was read from.
    pub public_key_source: String,
    /// The copy of the checkpoints kept off the host the chains were checked against
    /// (`--pinned`), if one was given.
    pub pinned_copy: Option<String>,
    /// The earlier `audit verify --output json` run the chains' last records were checked
    /// against (`--previous`), if one was given.
    pub previous_run: Option<String>,
    /// One entry per chain (the file log, and each replica's chain on a shared store).
    pub chains: Vec<ChainReport>,
    /// Records inside the window (and tenant).
    pub records: u64,
    /// Resolves inside the window, by outcome (`allowed`, `denied`, `failed`).
    pub resolves_by_outcome: BTreeMap<String, u64>,
    /// Width of one [`TimeBucket`], seconds.
    pub bucket_s: u64,
    /// Resolves over time, oldest first (empty buckets included, so the axis is even).
    pub timeline: Vec<TimeBucket>,
    /// Resolves by provider, most first.
    pub by_provider: Vec<OutcomeCount>,
    /// Resolves by tenant, most first.
    pub by_tenant: Vec<OutcomeCount>,
    /// Refusals (resolve and admin) by error code, most first.
    pub by_error_code: Vec<NameCount>,
    /// Denied or failed resolves, newest first, at most [`MAX_ROWS`].
    pub denials: Vec<Denial>,
    /// All denied or failed resolves in the window (`denials` may list fewer).
    pub denials_total: u64,
    /// Admin changes (every `admin` record but allowed reads: a refused read is listed) and
    /// callbacks (every other record that is not a resolve), newest first, at most
    /// [`MAX_ROWS`].
    pub admin_changes: Vec<AdminChange>,
    /// All admin changes in the window.
    pub admin_changes_total: u64,
    /// Allowed read-only admin requests in the window (audited, not listed).
    pub admin_reads: u64,
}

/// Whether an audited admin action only read (`tenant.list`, `binding.show`, `issuer.jwks`…):
/// the report counts those and lists the changes. A webhook secret `reveal` is not a read
/// here: it discloses a secret and is listed.
pub fn is_read_action(action: &str) -> bool {
    action.ends_with(".list")
        || action.ends_with(".show")
        || action == "issuer.jwks"
        // A request refused before its operation was known is recorded by method and path.
        || action.starts_with("admin GET ")
}

/// The window and tenant of a report.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReportFilter {
    /// Records at or after (RFC 3339), if given.
    pub since: Option<String>,
    /// Records before (RFC 3339), if given.
    pub until: Option<String>,
    /// Only this tenant's records, if given.
    pub tenant: Option<String>,
}

/// One chain's verification and checkpoint coverage.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChainReport {
    /// `file log` or `replica N`.
    pub label: String,
    /// Whether it verified.
    pub verified: bool,
    /// When it did not: the first bad sequence and why.
    pub failure: Option<ChainFailure>,
    /// Records in the chain (all of it, not only the window).
    pub records: u64,
    /// First and last sequence numbers.
    pub first_seq: Option<u64>,
    /// Last sequence number.
    pub last_seq: Option<u64>,
    /// Signed checkpoints that matched.
    pub checkpoints: u64,
    /// Highest sequence a signed checkpoint covers.
    pub last_checkpoint: Option<u64>,
    /// Records after the last checkpoint (not yet signed; the writer signs them soon).
    pub unanchored: u64,
    /// Records found unchanged as the pinned copy (`--pinned`) held them.
    pub pinned: u64,
    /// Time of the last checkpointed record, if known.
    pub last_checkpoint_time: Option<String>,
}

/// Where and why a chain failed verification.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChainFailure {
    /// First bad sequence number.
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

/// Resolves in one interval.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TimeBucket {
    /// Start of the interval (RFC 3339 UTC).
    pub start: String,
    /// Allowed resolves.
    pub allowed: u64,
    /// Denied resolves.
    pub denied: u64,
    /// Failed resolves.
    pub failed: u64,
}

/// Resolves of one provider or tenant, by outcome.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OutcomeCount {
    /// Provider or tenant id (`-` when the record has none).
    pub name: String,
    /// Allowed.
    pub allowed: u64,
    /// Denied.
    pub denied: u64,
    /// Failed.
    pub failed: u64,
}

/// A name and a count.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NameCount {
    /// The name (an error code).
    pub name: String,
    /// How many.
    pub count: u64,
}

/// One denied or failed resolve.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Denial {
    /// Record time.
    pub time: String,
    /// Chain label and sequence (`file log #12`, `replica 2 #40`).
    pub record: String,
    /// Audit id (`aud_…`).
    pub audit_id: String,
    /// Who asked.
    pub actor: String,
    /// Tenant, if the store derived one.
    pub tenant: Option<String>,
    /// Connector instance asked for.
    pub instance: Option<String>,
    /// `denied` or `failed`.
    pub outcome: String,
    /// The error code (the reason).
    pub error_code: Option<String>,
}

/// One admin change or callback record.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AdminChange {
    /// `admin`, or `callback` (an install, consent or invocation from the public listener
    /// that bound or changed something).
    pub kind: String,
    /// Record time.
    pub time: String,
    /// Chain label and sequence.
    pub record: String,
    /// Who (operator, CLI user).
    pub actor: String,
    /// What (`tenant.add`, `secret.rotate`…).
    pub action: String,
    /// `allowed`, `denied` or `failed`.
    pub outcome: String,
    /// Tenant concerned, if any.
    pub tenant: Option<String>,
    /// Error code when refused.
    pub error_code: Option<String>,
    /// The record's non-secret detail (ids, statuses, field names).
    pub detail: Option<String>,
}

/// Which records a report covers: the same window and tenant an export takes.
pub use super::ExportFilter as Window;

const OUTCOMES: [&str; 3] = ["allowed", "denied", "failed"];

/// Builds a [`ReportSummary`] chain by chain.
#[derive(Debug, Default)]
pub struct ReportBuilder {
    window: Window,
    chains: Vec<ChainReport>,
    records: u64,
    /// Resolves of the window per minute (its start, Unix seconds), by outcome: memory
    /// grows with the window's span, not with the number of records.
    minutes: BTreeMap<i64, [u64; 3]>,
    /// Earliest and latest resolve time of the window.
    span: Option<(i64, i64)>,
    by_provider: BTreeMap<String, [u64; 3]>,
    by_tenant: BTreeMap<String, [u64; 3]>,
    by_error: BTreeMap<String, u64>,
    /// Newest last per chain; keyed by (time in nanoseconds, sequence) for the merge.
    denials: Vec<((i128, u64), Denial)>,
    denials_total: u64,
    admin: Vec<((i128, u64), AdminChange)>,
    admin_total: u64,
    admin_reads: u64,
}

fn outcome_index(outcome: &str) -> usize {
    OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(2)
}

/// Keeps the newest [`MAX_ROWS`] of a chain's rows (they arrive oldest first).
fn keep_newest<K, T>(rows: &mut std::collections::VecDeque<(K, T)>, row: (K, T)) {
    rows.push_back(row);
    if rows.len() > MAX_ROWS {
        rows.pop_front();
    }
}

impl ReportBuilder {
    /// A report of the records in `window`.
    pub fn new(window: Window) -> ReportBuilder {
        ReportBuilder {
            window,
            ..ReportBuilder::default()
        }
    }

    /// Adds one chain: its label (`file log`, `replica 2`), how it verified, and `feed`,
    /// which hands over its records in sequence order (from a pass that verifies them as it
    /// goes). Of a chain that failed only the records before its failure are summed up; of
    /// one that verified, only those up to the last one verified.
    pub fn chain(
        &mut self,
        label: &str,
        verified: &Result<super::VerifySummary, super::VerifyFailure>,
        feed: impl FnOnce(&mut dyn FnMut(&super::AuditRecord)),
    ) {
        use time::format_description::well_known::Rfc3339;
        let mut denials = std::collections::VecDeque::new();
        let mut admin = std::collections::VecDeque::new();
        let (last_checkpoint, records_in_chain) = match verified {
            Ok(s) => (s.last_checkpoint, s.records),
            Err(_) => (None, 0),
        };
        // Of a chain that failed, only what precedes the failure is summed up (records from
        // the bad one on may be forged); of one that verified, only what was verified.
        let through = match verified {
            Ok(s) => s.last_seq.unwrap_or(0),
            Err(f) => f.seq.saturating_sub(1),
        };
        let mut counted = 0u64;
        let mut last_seq = None;
        let mut first_seq = None;
        let mut last_checkpoint_time = None;
        // Fed in sequence order without a gap, or nothing more is summed up: a record out of
        // order is a row the verification never reached (one planted past a chain's failure
        // with a small seq, to be counted among the records before it).
        let (mut last_fed, mut broken) = (None::<u64>, false);
        let mut each = |rec: &super::AuditRecord| {
            if broken || last_fed.is_some_and(|p| p.checked_add(1) != Some(rec.seq)) {
                broken = true;
                return;
            }
            last_fed = Some(rec.seq);
            if rec.seq > through {
                return;
            }
            counted += 1;
            first_seq.get_or_insert(rec.seq);
            last_seq = Some(rec.seq);
            if Some(rec.seq) == last_checkpoint {
                last_checkpoint_time = Some(rec.time.clone());
            }
            let Ok(at) = time::OffsetDateTime::parse(&rec.time, &Rfc3339) else {
                return;
            };
            if self.window.since.is_some_and(|s| at < s)
                || self.window.until.is_some_and(|u| at >= u)
            {
                return;
            }
            let e = &rec.event;
            if let Some(t) = &self.window.tenant {
                if e.tenant.as_deref() != Some(t.as_str()) {
                    return;
                }
            }
            self.records += 1;
            let unix = at.unix_timestamp();
            let order = (at.unix_timestamp_nanos(), rec.seq);
            let place = format!("{label} #{}", rec.seq);
            if let Some(code) = &e.error_code {
                *self.by_error.entry(code.clone()).or_default() += 1;
            }
            if e.kind == "resolve" {
                let o = outcome_index(&e.outcome);
                self.minutes.entry(unix.div_euclid(60) * 60).or_default()[o] += 1;
                self.span = Some(
                    self.span
                        .map_or((unix, unix), |(a, b)| (a.min(unix), b.max(unix))),
                );
                let name = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
                self.by_provider.entry(name(&e.provider)).or_default()[o] += 1;
                self.by_tenant.entry(name(&e.tenant)).or_default()[o] += 1;
                if o != 0 {
                    self.denials_total += 1;
                    keep_newest(
                        &mut denials,
                        (
                            order,
                            Denial {
                                time: rec.time.clone(),
                                record: place,
                                audit_id: rec.audit_id(),
                                actor: e.actor.clone(),
                                tenant: e.tenant.clone(),
                                instance: e.instance.clone(),
                                outcome: e.outcome.clone(),
                                error_code: e.error_code.clone(),
                            },
                        ),
                    );
                }
            // A refused read is listed with the changes: who tried (a disabled operator, a
            // worker's certificate) is what the auditor looks for.
            } else if e.kind == "admin" && is_read_action(&e.action) && e.outcome == "allowed" {
                self.admin_reads += 1;
            } else {
                self.admin_total += 1;
                keep_newest(
                    &mut admin,
                    (
                        order,
                        AdminChange {
                            kind: e.kind.clone(),
                            time: rec.time.clone(),
                            record: place,
                            actor: e.actor.clone(),
                            action: e.action.clone(),
                            outcome: e.outcome.clone(),
                            tenant: e.tenant.clone(),
                            error_code: e.error_code.clone(),
                            detail: e.detail.clone(),
                        },
                    ),
                );
            }
        };
        feed(&mut each);
        self.denials.extend(denials);
        self.admin.extend(admin);
        let last_checkpoint = last_checkpoint.filter(|c| *c > 0);
        self.chains.push(ChainReport {
            label: label.to_owned(),
            verified: verified.is_ok(),
            failure: verified.as_ref().err().map(|f| ChainFailure {
                seq: f.seq,
                reason: f.reason.clone(),
            }),
            records: if verified.is_ok() {
                records_in_chain
            } else {
                counted
            },
            first_seq,
            last_seq,
            checkpoints: verified.as_ref().map_or(0, |s| s.checkpoints),
            last_checkpoint,
            unanchored: last_seq.map_or(0, |l| l.saturating_sub(last_checkpoint.unwrap_or(0))),
            pinned: verified.as_ref().map_or(0, |s| s.pinned),
            last_checkpoint_time,
        });
    }

    /// Marks the chain added last as failed: `reason` at `seq` (e.g. the log changed
    /// between the pass that verified it and the pass that summed it up).
    pub fn fail_last_chain(&mut self, seq: u64, reason: String) {
        if let Some(c) = self.chains.last_mut() {
            c.verified = false;
            c.failure = Some(ChainFailure { seq, reason });
        }
    }

    /// The summary, with the public key the chains were verified with (and whether it was
    /// pinned, i.e. given rather than found beside the log).
    pub fn finish(
        mut self,
        public_key_sha256: String,
        public_key_source: String,
        public_key_pinned: bool,
    ) -> ReportSummary {
        let fmt = |t: &Option<time::OffsetDateTime>| {
            t.and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
        };
        let mut resolves_by_outcome: BTreeMap<String, u64> =
            OUTCOMES.iter().map(|o| ((*o).to_owned(), 0)).collect();
        for counts in self.minutes.values() {
            for (o, n) in OUTCOMES.iter().zip(counts) {
                *resolves_by_outcome.entry((*o).to_owned()).or_default() += n;
            }
        }
        let (bucket_s, timeline) = timeline(&self.minutes, self.span, &self.window);
        let ranked = |m: BTreeMap<String, [u64; 3]>| {
            let mut v: Vec<OutcomeCount> = m
                .into_iter()
                .map(|(name, [allowed, denied, failed])| OutcomeCount {
                    name,
                    allowed,
                    denied,
                    failed,
                })
                .collect();
            v.sort_by(|a, b| {
                (b.allowed + b.denied + b.failed)
                    .cmp(&(a.allowed + a.denied + a.failed))
                    .then(a.name.cmp(&b.name))
            });
            v
        };
        let mut by_error_code: Vec<NameCount> = self
            .by_error
            .into_iter()
            .map(|(name, count)| NameCount { name, count })
            .collect();
        by_error_code.sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(&b.name)));
        self.denials.sort_by_key(|d| std::cmp::Reverse(d.0));
        self.denials.truncate(MAX_ROWS);
        self.admin.sort_by_key(|a| std::cmp::Reverse(a.0));
        self.admin.truncate(MAX_ROWS);
        ReportSummary {
            generated_at: crate::model::now_rfc3339(),
            filter: ReportFilter {
                since: fmt(&self.window.since),
                until: fmt(&self.window.until),
                tenant: self.window.tenant.clone(),
            },
            verified: !self.chains.is_empty() && self.chains.iter().all(|c| c.verified),
            anchored_records: self
                .chains
                .iter()
                .filter(|c| c.verified)
                .map(|c| c.records.saturating_sub(c.unanchored))
                .sum(),
            unanchored_records: self
                .chains
                .iter()
                .filter(|c| c.verified)
                .map(|c| c.unanchored)
                .sum(),
            public_key_pinned,
            public_key_sha256,
            public_key_source,
            pinned_copy: None,
            previous_run: None,
            chains: self.chains,
            records: self.records,
            resolves_by_outcome,
            bucket_s,
            timeline,
            by_provider: ranked(self.by_provider),
            by_tenant: ranked(self.by_tenant),
            by_error_code,
            denials: self.denials.into_iter().map(|(_, d)| d).collect(),
            denials_total: self.denials_total,
            admin_changes: self.admin.into_iter().map(|(_, a)| a).collect(),
            admin_changes_total: self.admin_total,
            admin_reads: self.admin_reads,
        }
    }
}

/// The most bars the chart has.
const MAX_BUCKETS: i64 = 60;

/// Resolves per interval, over the window (or the span of the resolves when the window is
/// open), with an interval width from a fixed ladder so at most [`MAX_BUCKETS`] bars.
fn timeline(
    minutes: &BTreeMap<i64, [u64; 3]>,
    span: Option<(i64, i64)>,
    window: &Window,
) -> (u64, Vec<TimeBucket>) {
    const LADDER: [i64; 10] = [
        60,
        300,
        900,
        3600,
        3 * 3600,
        6 * 3600,
        86_400,
        7 * 86_400,
        30 * 86_400,
        365 * 86_400,
    ];
    let lo = window
        .since
        .map(time::OffsetDateTime::unix_timestamp)
        .or(span.map(|s| s.0));
    let hi = window
        .until
        .map(|u| u.unix_timestamp() - 1)
        .or(span.map(|s| s.1));
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return (3600, Vec::new());
    };
    let span = (hi - lo).max(1);
    // Every width is a whole number of minutes, so a minute falls in one bar.
    // Past the ladder's last rung (a window of centuries, or forged times), wider bars.
    let width = LADDER
        .iter()
        .copied()
        .find(|w| span / w < MAX_BUCKETS)
        .unwrap_or_else(|| (span / (MAX_BUCKETS - 1) / 60 + 1) * 60);
    let first = lo.div_euclid(width) * width;
    let count = usize::try_from((hi.div_euclid(width) * width - first) / width + 1).unwrap_or(1);
    let mut buckets: Vec<[u64; 3]> = vec![[0; 3]; count];
    for (t, counts) in minutes {
        if let Ok(i) = usize::try_from((t - first).div_euclid(width)) {
            if let Some(b) = buckets.get_mut(i) {
                for (sum, n) in b.iter_mut().zip(counts) {
                    *sum += n;
                }
            }
        }
    }
    let timeline = buckets
        .into_iter()
        .enumerate()
        .map(|(i, [allowed, denied, failed])| TimeBucket {
            start: time::OffsetDateTime::from_unix_timestamp(first + width * i as i64)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default(),
            allowed,
            denied,
            failed,
        })
        .collect();
    (width.unsigned_abs(), timeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_has_at_most_sixty_even_bars() {
        let day = 1_767_225_600; // 2026-01-01T00:00:00Z
        let minutes = |times: &[(i64, usize)]| {
            let mut m: BTreeMap<i64, [u64; 3]> = BTreeMap::new();
            for (t, o) in times {
                m.entry(t.div_euclid(60) * 60).or_default()[*o] += 1;
            }
            let span = (
                times.iter().map(|t| t.0).min().unwrap(),
                times.iter().map(|t| t.0).max().unwrap(),
            );
            (m, Some(span))
        };
        let (m, span) = minutes(&[(day + 10, 0), (day + 3 * 3600, 1), (day + 30 * 3600, 2)]);
        let (w, t) = timeline(&m, span, &Window::default());
        assert_eq!(w, 3600);
        assert_eq!(t.len(), 31);
        assert_eq!(t[0].start, "2026-01-01T00:00:00Z");
        assert_eq!((t[0].allowed, t[3].denied, t[30].failed), (1, 1, 1));
        assert!(timeline(&BTreeMap::new(), None, &Window::default())
            .1
            .is_empty());
        let (m, span) = minutes(&[(0, 0), (day * 40, 0)]);
        let far = timeline(&m, span, &Window::default()).1;
        assert!(far.len() <= 60, "{}", far.len());
        assert_eq!(far.iter().map(|b| b.allowed).sum::<u64>(), 2);
    }
}
