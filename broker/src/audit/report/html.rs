//! The audit report as one self-contained HTML5 page: no script, no external stylesheet,
//! font or image, no link anywhere (a strict CSP meta says so too). Charts are inline SVG.
//!
//! Every string taken from the [`ReportSummary`] goes through `esc`; numbers are formatted
//! here. Nothing is shown that is not in the summary.
//!
//! Hooks for tests and tooling: the banner is `#verification` with `data-verified="true|false"`;
//! the resolve counts are `table#outcomes`, one `<tr data-outcome="…">` per outcome with the
//! plain count in `<td class="count">`. Sections are `<section id="…">`: `verify`, `timeline`,
//! `by-provider`, `by-tenant`, `error-codes`, `denials`, `admin-changes`, `coverage`.

use std::fmt::Write;

use super::{ChainReport, OutcomeCount, ReportSummary, TimeBucket};

const GREEN: &str = "#2e7d32";
const ORANGE: &str = "#ef6c00";
const RED: &str = "#c62828";

const CSS: &str = "\
:root{color-scheme:light}body{font-family:system-ui,sans-serif;margin:0;color:#1a1a1a}
body{background:#fff;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:1.5rem}h1{font-size:1.6rem;margin:.2rem 0 .3rem}
h2{font-size:1.25rem;border-bottom:2px solid #ddd;margin:2rem 0 .6rem;break-after:avoid}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #bbb;padding:.3rem .5rem;text-align:left;vertical-align:top}
thead th{background:#f0f0f0}table.narrow{width:auto;min-width:20rem}
td.num,td.count{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}
dl.meta dt{font-weight:600}dl.meta dd{margin:0}.note,.sub{color:#555}.note{font-style:italic}
.banner{padding:1rem 1.25rem;border-radius:6px;color:#fff;font-size:1.6rem;font-weight:700}
.banner.ok{background:#2e7d32}.banner.bad{background:#c62828}.o-denied{color:#b34d00}
.banner small{display:block;font-size:.95rem;font-weight:400;margin-top:.2rem}
.yes,.o-allowed{color:#2e7d32}.no,.o-failed{color:#c62828}.yes,.no,[class^=o-]{font-weight:600}
svg{display:block;max-width:100%;height:auto;break-inside:avoid}svg text{font-size:12px;fill:#333}
@media print{body{font-size:10pt}main{max-width:none;padding:0}tr{break-inside:avoid}
.banner,svg,thead th{print-color-adjust:exact;-webkit-print-color-adjust:exact}}
";

/// Renders `s` as one complete, self-contained HTML5 page (no script, no external resource).
pub fn render(s: &ReportSummary) -> String {
    let mut out = String::with_capacity(32 * 1024);
    let (at, filter) = (esc(&s.generated_at), filter_text(s));
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'; img-src data:; form-action 'none'; base-uri 'none'\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>credbroker audit report, {at}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n\
         <main>\n<h1>credbroker audit report</h1>\n<p class=\"sub\">Generated {at} &middot; \
         {filter}</p>\n"
    );
    type Part = fn(&mut String, &ReportSummary);
    let sections: [(&str, &str, Part); 8] = [
        ("verify", "Verification", verification),
        ("timeline", "Resolves over time", timeline),
        ("by-provider", "By provider", |o, s| {
            counts(o, "Provider", &s.by_provider)
        }),
        ("by-tenant", "By tenant", |o, s| {
            counts(o, "Tenant", &s.by_tenant)
        }),
        ("error-codes", "Refusals by error code", error_codes),
        ("denials", "Denials", denials),
        (
            "admin-changes",
            "Admin changes and callbacks",
            admin_changes,
        ),
        ("coverage", "Checkpoint coverage", coverage),
    ];
    for (id, title, part) in sections {
        let _ = write!(out, "<section id=\"{id}\">\n<h2>{title}</h2>\n");
        part(&mut out, s);
        out.push_str("</section>\n");
    }
    out.push_str("</main>\n</body>\n</html>\n");
    out
}

use crate::html::escape as esc;

/// An optional string, escaped, or a dash.
fn opt(s: Option<&String>) -> String {
    s.map_or_else(|| "&mdash;".to_string(), |v| esc(v))
}

/// `1234567` → `1,234,567`.
fn num(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// An optional sequence number as `#n`, or a dash.
fn seq(n: Option<u64>) -> String {
    n.map_or_else(|| "&mdash;".to_string(), |v| format!("#{}", num(v)))
}

/// `part` as a percentage of `whole`, one decimal (`0.0%` of nothing).
fn pct(part: u64, whole: u64) -> String {
    format!("{:.1}%", part as f64 * 100.0 / whole.max(1) as f64)
}

/// A bucket width in words: `1 hour`, `15 minutes`, `2 days`.
fn human_duration(secs: u64) -> String {
    let secs = secs.max(1);
    let units = [(86_400, "day"), (3_600, "hour"), (60, "minute")];
    let unit = units.into_iter().find(|&(u, _)| secs.is_multiple_of(u));
    let (n, unit) = unit.map_or((secs, "second"), |(u, name)| (secs / u, name));
    let plural = if n == 1 { "" } else { "s" };
    format!("{} {unit}{plural}", num(n))
}

/// The window and tenant asked for, escaped, or `whole log`.
fn filter_text(s: &ReportSummary) -> String {
    let f = &s.filter;
    let given = [
        ("since", &f.since),
        ("until", &f.until),
        ("tenant", &f.tenant),
    ];
    let given = given
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {}", esc(v))));
    let parts: Vec<String> = given.collect();
    match parts.is_empty() {
        true => "whole log".to_string(),
        false => parts.join(", "),
    }
}

/// A CSS class for a known outcome (never taken from the data as is).
fn outcome_class(outcome: &str) -> &'static str {
    match outcome {
        "allowed" => "o-allowed",
        "denied" => "o-denied",
        "failed" => "o-failed",
        _ => "",
    }
}

/// A `<td>` of already escaped or formatted HTML.
fn td(html: String) -> String {
    format!("<td>{html}</td>")
}

/// A right-aligned number cell.
fn tn(n: u64) -> String {
    format!("<td class=\"num\">{}</td>", num(n))
}

/// An outcome cell, coloured for the known outcomes.
fn to(outcome: &str) -> String {
    let class = outcome_class(outcome);
    format!("<td class=\"{class}\">{}</td>", esc(outcome))
}

/// A table, or the `empty` note when there are no rows. `head` is `attrs|Column|Column…`
/// (attributes of `<table>`, then the column names); cells come from [`td`], [`tn`]…
fn table(out: &mut String, head: &str, rows: Vec<Vec<String>>, empty: &str) {
    if rows.is_empty() {
        let _ = writeln!(out, "<p class=\"note\">{empty}</p>");
        return;
    }
    let mut head = head.split('|');
    let _ = write!(out, "<table{}>\n<thead><tr>", head.next().unwrap_or(""));
    for h in head {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        let _ = writeln!(out, "<tr>{}</tr>", row.concat());
    }
    out.push_str("</tbody>\n</table>\n");
}

/// `showing the newest N of M` when the list was cut.
fn shown_note(out: &mut String, shown: usize, total: u64) {
    let (n, m) = (num(shown as u64), num(total));
    if total > shown as u64 {
        let _ = writeln!(
            out,
            "<p class=\"note\">List cut: showing the newest {n} of {m}.</p>"
        );
    }
}

fn verification(out: &mut String, s: &ReportSummary) {
    let chains = num(s.chains.len() as u64);
    if s.chains.is_empty() {
        let _ = writeln!(
            out,
            "<div id=\"verification\" class=\"banner bad\" data-verified=\"false\">No audit \
             chain to verify<small>The store holds no audit record: nothing is proven.</small></div>"
        );
    } else if s.verified {
        let (anchored, tail) = (num(s.anchored_records), num(s.unanchored_records));
        let _ = writeln!(
            out,
            "<div id=\"verification\" class=\"banner ok\" data-verified=\"true\">Audit log verified\
             <small>Every chain ({chains}) verified against the public key below: {anchored} \
             record(s) anchored by signed checkpoints; {tail} in the unsigned tail (chained to \
             them, not yet signed: proven only once the next checkpoint covers them).</small></div>"
        );
    } else {
        let failed = num(s.chains.iter().filter(|c| !c.verified).count() as u64);
        let _ = writeln!(
            out,
            "<div id=\"verification\" class=\"banner bad\" data-verified=\"false\">Audit log \
             verification FAILED<small>{failed} of {chains} chains did not verify.</small></div>"
        );
        out.push_str("<ul class=\"failures\">\n");
        for c in s.chains.iter().filter(|c| !c.verified) {
            let (label, why) = (esc(&c.label), result(c));
            let _ = writeln!(out, "<li><strong>{label}</strong>: {why}</li>");
        }
        out.push_str("</ul>\n");
        out.push_str(
            "<p class=\"note\">The figures below cover, of a chain that failed, only the records \
             before its first failure.</p>\n",
        );
    }
    if !s.public_key_pinned {
        out.push_str(
            "<p class=\"note\" id=\"unpinned\">Verified with the public key found on the host \
             whose log this is: anyone able to rewrite the log there could have replaced it. \
             Compare its SHA-256 with a copy kept elsewhere, or make the report with \
             <code>--public-key</code>.</p>\n",
        );
    }
    match &s.pinned_copy {
        Some(copy) => {
            let (copy, n) = (esc(copy), num(s.chains.iter().map(|c| c.pinned).sum()));
            let _ = writeln!(
                out,
                "<p class=\"note\" id=\"pinned\">Checked against the copy of the checkpoints \
                 kept off the host, <code>{copy}</code>: {n} record(s) it vouches for found \
                 unchanged.</p>"
            );
        }
        None => out.push_str(
            "<p class=\"note\" id=\"no-pinned-copy\">Not checked against a copy of the \
             checkpoints kept off the host: a log rolled back, emptied, or rewritten after its \
             latest checkpoints were removed verifies on the host alone. Make the report with \
             <code>--pinned</code>.</p>\n",
        ),
    }
    if let Some(run) = &s.previous_run {
        let _ = writeln!(
            out,
            "<p class=\"note\" id=\"previous-run\">Checked against the earlier verification \
             <code>{}</code>: each chain's last record it named must still be in the log, \
             unchanged (a tail cut since then fails its chain).</p>",
            esc(run)
        );
    }
    let (key, src) = (esc(&s.public_key_sha256), esc(&s.public_key_source));
    let (filter, at) = (filter_text(s), esc(&s.generated_at));
    let _ = write!(
        out,
        "<dl class=\"meta\">\n<dt>Public key SHA-256</dt><dd><code>{key}</code></dd>\n\
         <dt>Public key file</dt><dd><code>{src}</code></dd>\n<dt>Filter</dt><dd>{filter}</dd>\n\
         <dt>Generated at</dt><dd>{at}</dd>\n</dl>\n"
    );
    let rows = s.chains.iter().map(|c| {
        let range = match (c.first_seq, c.last_seq) {
            (Some(a), Some(b)) => format!("#{} &hellip; #{}", num(a), num(b)),
            _ => "&mdash;".to_string(),
        };
        let ok =
            ["<td class=\"no\">no</td>", "<td class=\"yes\">yes</td>"][usize::from(c.verified)];
        vec![
            td(esc(&c.label)),
            ok.to_string(),
            tn(c.records),
            td(range),
            tn(c.checkpoints),
            td(seq(c.last_checkpoint)),
            tn(c.unanchored),
            td(result(c)),
        ]
    });
    let head = " id=\"chains\"|Chain|Verified|Records|Sequence|Checkpoints|Last checkpoint|\
                Unanchored|Result";
    table(out, head, rows.collect(), "No chains.");
}

/// `No gap` for a verified chain, else the first bad record and why (escaped).
fn result(c: &ChainReport) -> String {
    match (&c.failure, c.verified) {
        (Some(f), _) => {
            let (at, why) = (num(f.seq), esc(&f.reason));
            format!("<span class=\"no\">Failed at #{at}: {why}</span>")
        }
        (None, true) => "<span class=\"yes\">No gap</span>".to_string(),
        (None, false) => "<span class=\"no\">Failed (no detail recorded)</span>".to_string(),
    }
}

fn bucket_total(b: &TimeBucket) -> u64 {
    b.allowed.saturating_add(b.denied).saturating_add(b.failed)
}

fn timeline(out: &mut String, s: &ReportSummary) {
    let per_bar = human_duration(s.bucket_s);
    if s.timeline.iter().all(|b| bucket_total(b) == 0) {
        out.push_str("<p class=\"note\">No resolves in this window.</p>\n");
    } else {
        let _ = writeln!(out, "<p class=\"sub\">{per_bar} per bar.</p>");
        timeline_svg(out, &s.timeline, &per_bar);
    }
    let by = &s.resolves_by_outcome;
    let total: u64 = by.values().fold(0, |a, &b| a.saturating_add(b));
    out.push_str(
        "<table id=\"outcomes\" class=\"narrow\">\n<thead><tr><th>Outcome</th><th>Resolves</th>\
         <th>Share</th></tr></thead>\n<tbody>\n",
    );
    let known = ["allowed", "denied", "failed"];
    let others = by.keys().map(String::as_str).filter(|k| !known.contains(k));
    for name in known.into_iter().chain(others) {
        let n = by.get(name).copied().unwrap_or(0);
        let (e, class, share) = (esc(name), outcome_class(name), pct(n, total));
        let _ = writeln!(
            out,
            "<tr data-outcome=\"{e}\"><th scope=\"row\" class=\"{class}\">{e}</th>\
             <td class=\"count\">{n}</td><td class=\"num\">{share}</td></tr>"
        );
    }
    let (total, records) = (num(total), num(s.records));
    let _ = writeln!(
        out,
        "</tbody>\n</table>\n<p>Resolves in window: <strong>{total}</strong> &middot; records in \
         window: <strong id=\"records\">{records}</strong></p>"
    );
}

/// A stacked bar chart of the timeline (allowed at the bottom, then denied, then failed).
/// Plot area: x 70..988, y 36..264 of a 1000×300 view box.
fn timeline_svg(out: &mut String, t: &[TimeBucket], per_bar: &str) {
    let max = t.iter().map(bucket_total).max().unwrap_or(0).max(1);
    let slot = 918.0 / t.len().max(1) as f64;
    let gap = if slot > 4.0 { slot * 0.15 } else { 0.0 };
    let bw = (slot - gap).max(0.5);
    let top = num(max);
    let _ = writeln!(
        out,
        "<svg class=\"chart\" viewBox=\"0 0 1000 300\" width=\"1000\" height=\"300\" role=\"img\" \
         aria-label=\"Resolves over time, {per_bar} per bar\">\n\
         <title>Resolves over time, {per_bar} per bar</title>\n\
         <line x1=\"70\" y1=\"36\" x2=\"988\" y2=\"36\" stroke=\"#ddd\" stroke-dasharray=\"4 3\"/>\
         <line x1=\"70\" y1=\"36\" x2=\"70\" y2=\"264\" stroke=\"#666\"/>\
         <line x1=\"70\" y1=\"264\" x2=\"988\" y2=\"264\" stroke=\"#666\"/>\n\
         <text x=\"64\" y=\"40\" text-anchor=\"end\">{top}</text>\
         <text x=\"64\" y=\"268\" text-anchor=\"end\">0</text>\n\
         <rect x=\"70\" y=\"8\" width=\"12\" height=\"12\" fill=\"{GREEN}\"/>\
         <text x=\"87\" y=\"18\">allowed</text>\
         <rect x=\"180\" y=\"8\" width=\"12\" height=\"12\" fill=\"{ORANGE}\"/>\
         <text x=\"197\" y=\"18\">denied</text>\
         <rect x=\"290\" y=\"8\" width=\"12\" height=\"12\" fill=\"{RED}\"/>\
         <text x=\"307\" y=\"18\">failed</text>"
    );
    let series = [(GREEN, "allowed"), (ORANGE, "denied"), (RED, "failed")];
    for (i, b) in t.iter().enumerate() {
        let x = 70.0 + i as f64 * slot + gap / 2.0;
        let (start, total) = (esc(&b.start), num(bucket_total(b)));
        let mut y = 264.0;
        for (n, (color, name)) in [b.allowed, b.denied, b.failed].into_iter().zip(series) {
            if n == 0 {
                continue;
            }
            let h = n as f64 / max as f64 * 228.0;
            y -= h;
            let n = num(n);
            let _ = writeln!(
                out,
                "<rect x=\"{x:.2}\" y=\"{y:.2}\" width=\"{bw:.2}\" height=\"{h:.2}\" \
                 fill=\"{color}\"><title>{start}: {n} {name} of {total} resolves</title></rect>"
            );
        }
    }
    if let Some(first) = t.first() {
        let first = esc(&first.start);
        let _ = writeln!(out, "<text x=\"70\" y=\"284\">{first}</text>");
    }
    if let (true, Some(last)) = (t.len() > 1, t.last()) {
        let last = esc(&last.start);
        let _ = writeln!(
            out,
            "<text x=\"988\" y=\"284\" text-anchor=\"end\">{last}</text>"
        );
    }
    out.push_str("</svg>\n");
}

/// Resolves by outcome, per provider or tenant.
fn counts(out: &mut String, what: &str, rows: &[OutcomeCount]) {
    let rows = rows.iter().map(|r| {
        let total = r.allowed.saturating_add(r.denied).saturating_add(r.failed);
        let (a, d, f) = (tn(r.allowed), tn(r.denied), tn(r.failed));
        vec![td(esc(&r.name)), a, d, f, tn(total)]
    });
    let head = format!("|{what}|Allowed|Denied|Failed|Total");
    let empty = "No resolves to list in this window.";
    table(out, &head, rows.collect(), empty);
}

fn error_codes(out: &mut String, s: &ReportSummary) {
    let rows = s.by_error_code.iter();
    let rows = rows.map(|r| vec![td(esc(&r.name)), tn(r.count)]);
    let head = " class=\"narrow\"|Error code|Refusals";
    table(out, head, rows.collect(), "No refusals in this window.");
}

fn denials(out: &mut String, s: &ReportSummary) {
    shown_note(out, s.denials.len(), s.denials_total);
    let rows = s.denials.iter().map(|d| {
        vec![
            td(esc(&d.time)),
            td(esc(&d.record)),
            td(esc(&d.audit_id)),
            td(esc(&d.actor)),
            td(opt(d.tenant.as_ref())),
            td(opt(d.instance.as_ref())),
            to(&d.outcome),
            td(opt(d.error_code.as_ref())),
        ]
    });
    let head = "|Time|Record|Audit id|Actor|Tenant|Instance|Outcome|Error code";
    let empty = "No denied or failed resolves in this window.";
    table(out, head, rows.collect(), empty);
}

fn admin_changes(out: &mut String, s: &ReportSummary) {
    let _ = write!(
        out,
        "<p id=\"admin-reads\">Every change an operator or the CLI made (reveals included), allowed or refused, and every callback from the public listener (installs, consents, invocations). Read-only admin requests (lists, shows) are audited too: {} allowed in this window, not listed here; refused ones are listed.</p>",
        s.admin_reads
    );
    shown_note(out, s.admin_changes.len(), s.admin_changes_total);
    let rows = s.admin_changes.iter().map(|a| {
        vec![
            td(esc(&a.time)),
            td(esc(&a.record)),
            td(esc(&a.actor)),
            td(if a.kind == "admin" {
                esc(&a.action)
            } else {
                format!("{}: {}", esc(&a.kind), esc(&a.action))
            }),
            to(&a.outcome),
            td(opt(a.tenant.as_ref())),
            td(opt(a.error_code.as_ref())),
            td(opt(a.detail.as_ref())),
        ]
    });
    let head = "|Time|Record|Actor|Action|Outcome|Tenant|Error code|Detail";
    let empty = "No admin changes in this window.";
    table(out, head, rows.collect(), empty);
}

fn coverage(out: &mut String, s: &ReportSummary) {
    let rows = s.chains.iter().map(|c| {
        vec![
            td(esc(&c.label)),
            tn(c.records),
            tn(c.checkpoints),
            td(seq(c.last_checkpoint)),
            td(opt(c.last_checkpoint_time.as_ref())),
            tn(c.unanchored),
        ]
    });
    let head = "|Chain|Records|Checkpoints|Last checkpoint|Last checkpoint time|Unanchored tail";
    table(out, head, rows.collect(), "No chains.");
    for c in &s.chains {
        coverage_bar(out, c);
    }
}

/// One chain's anchored vs unanchored records, proportional, with the numbers in text.
fn coverage_bar(out: &mut String, c: &ChainReport) {
    let unanchored = c.unanchored.min(c.records);
    let anchored = c.records - unanchored;
    let (a, u, share) = (num(anchored), num(unanchored), pct(anchored, c.records));
    let text = match c.records {
        0 => "no records".to_string(),
        _ => format!(
            "{a} anchored by a signed checkpoint (green, {share}), {u} in the unanchored tail \
             not yet signed (grey)"
        ),
    };
    let label = esc(&c.label);
    let _ = writeln!(
        out,
        "<p><strong>{label}</strong>: {text}</p>\n<svg class=\"coverage\" viewBox=\"0 0 1000 24\" \
         width=\"1000\" height=\"24\" role=\"img\" aria-label=\"{label}: {text}\">\n\
         <title>{label}: {text}</title>\n\
         <rect x=\"0\" y=\"2\" width=\"1000\" height=\"20\" fill=\"#f3f3f3\" stroke=\"#bbb\"/>"
    );
    let aw = anchored as f64 / c.records.max(1) as f64 * 1000.0;
    let uw = if unanchored == 0 { 0.0 } else { 1000.0 - aw };
    let _ = writeln!(
        out,
        "<rect x=\"0\" y=\"2\" width=\"{aw:.2}\" height=\"20\" fill=\"{GREEN}\">\
         <title>{label}: {a} anchored</title></rect>\
         <rect x=\"{aw:.2}\" y=\"2\" width=\"{uw:.2}\" height=\"20\" fill=\"#9e9e9e\">\
         <title>{label}: {u} unanchored</title></rect>\n</svg>"
    );
}

#[cfg(test)]
mod tests {
    use super::super::{ChainFailure, Denial, ReportFilter};
    use super::*;

    const XSS: &str = "<script>alert(1)</script>";

    fn chain(label: &str) -> ChainReport {
        ChainReport {
            label: label.into(),
            verified: true,
            failure: None,
            records: 1200,
            first_seq: Some(1),
            last_seq: Some(1200),
            checkpoints: 12,
            last_checkpoint: Some(1197),
            unanchored: 3,
            pinned: 0,
            last_checkpoint_time: Some("2025-01-02T03:04:05Z".into()),
        }
    }

    fn summary() -> ReportSummary {
        let outcomes = [("allowed", 40), ("denied", 3), ("failed", 1)];
        let b = TimeBucket {
            start: "2025-01-02T00:00:00Z".into(),
            allowed: 20,
            denied: 2,
            failed: 1,
        };
        let mut zero = b.clone();
        (zero.allowed, zero.denied, zero.failed) = (0, 0, 0);
        let tenant = OutcomeCount {
            name: XSS.into(),
            allowed: 40,
            denied: 3,
            failed: 1,
        };
        ReportSummary {
            anchored_records: 0,
            unanchored_records: 0,
            public_key_pinned: true,
            generated_at: "2025-01-02T04:00:00Z".into(),
            filter: ReportFilter {
                tenant: Some(XSS.into()),
                ..ReportFilter::default()
            },
            verified: true,
            public_key_sha256: "ab".repeat(32),
            public_key_source: "/etc/credbroker/audit.pub".into(),
            pinned_copy: None,
            previous_run: None,
            chains: vec![chain("file log")],
            records: 50,
            resolves_by_outcome: outcomes.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            bucket_s: 3600,
            timeline: vec![b.clone(), zero, b],
            by_provider: vec![],
            by_tenant: vec![tenant],
            by_error_code: vec![],
            denials: vec![Denial {
                time: "2025-01-02T02:10:00Z".into(),
                record: "file log #1190".into(),
                audit_id: "aud_1".into(),
                actor: "svc \"a\" & 'b'".into(),
                tenant: None,
                instance: Some("aws-prod".into()),
                outcome: "denied".into(),
                error_code: Some("policy_denied".into()),
            }],
            denials_total: 4,
            admin_changes: vec![],
            admin_changes_total: 0,
            admin_reads: 0,
        }
    }

    fn assert_self_contained(page: &str) {
        assert!(page.starts_with("<!DOCTYPE html>") && page.contains("<meta charset=\"utf-8\">"));
        assert!(page.contains("default-src 'none'"));
        assert!(!page.to_lowercase().contains("<script"));
        assert!(!page.contains("http://") && !page.contains("https://"));
    }

    #[test]
    fn esc_escapes_script_in_tenant() {
        assert_eq!(esc("<script>\"&'"), "&lt;script&gt;&quot;&amp;&#39;");
        assert!(render(&summary()).contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        // The pinned copy's path is the operator's text: escaped too.
        let mut s = summary();
        s.pinned_copy = Some(XSS.into());
        s.previous_run = Some(XSS.into());
        s.chains[0].pinned = 1197;
        let page = render(&s);
        assert!(page.contains("id=\"pinned\"") && page.contains("1,197 record(s)"));
        assert!(!page.contains(XSS) && !page.contains("id=\"no-pinned-copy\""));
    }

    #[test]
    fn renders_verified_page() {
        let page = render(&summary());
        assert_self_contained(&page);
        assert!(page.contains("id=\"verification\" class=\"banner ok\" data-verified=\"true\""));
        assert!(page.contains("Audit log verified") && page.contains("No gap"));
        assert!(page.contains("id=\"no-pinned-copy\"") && !page.contains("id=\"pinned\""));
        assert!(page.contains("<svg") && page.contains("1 hour per bar"));
        assert!(page.contains("<tr data-outcome=\"denied\">"));
        assert!(page.contains("<td class=\"count\">3</td>"));
        assert!(page.contains("showing the newest 1 of 4."));
        assert!(page.contains("svc &quot;a&quot; &amp; &#39;b&#39;"));
        let ids =
            "verify timeline by-provider by-tenant error-codes denials admin-changes coverage";
        let at = |id: &str| page.find(&format!("<section id=\"{id}\">")).unwrap();
        let pos: Vec<usize> = ids.split(' ').map(at).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn failed_page_shows_reason() {
        let mut s = summary();
        s.verified = false;
        let failure = Some(ChainFailure {
            seq: 40,
            reason: "hash <mismatch>".into(),
        });
        s.chains.push(ChainReport {
            verified: false,
            failure,
            ..chain("replica 2")
        });
        let page = render(&s);
        assert_self_contained(&page);
        assert!(page.contains("data-verified=\"false\""));
        assert!(!page.contains("data-verified=\"true\""));
        assert!(page.contains("Audit log verification FAILED"));
        assert!(page.contains("Failed at #40: hash &lt;mismatch&gt;"));
        s.timeline.clear();
        assert!(render(&s).contains("No resolves in this window."));
        assert_eq!(num(1_234_567) + " " + &num(999), "1,234,567 999");
    }
}
