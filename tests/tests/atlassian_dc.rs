//! `atlassian_dc_pat` end to end against a fake Data Center instance: the probe says whose PAT
//! it is and when it expires; self-rotation creates the successor with the current PAT,
//! stores it pending, probes and promotes it, and revokes the old PAT at the instance; a PAT
//! close to expiry is rotated by the broker on its own; an instance without the PAT API is
//! reported, not assumed; no successor is created upstream before its record is written.

use std::time::Duration;

use credbroker::client::BrokerClient;
use credbroker_tests::fake_atlassian_dc::{add_jira_and_probe, bind_jira as bind, FakeAtlassianDc};
use credbroker_tests::*;
use http::Method;
use serde_json::{json, Value};

async fn start(
    extra: &str,
) -> (
    tempfile::TempDir,
    std::sync::Arc<TestPki>,
    Daemon,
    FakeAtlassianDc,
    BrokerClient,
) {
    let (tmp, pki) = setup();
    let dc = FakeAtlassianDc::start().await;
    let toml = format!(
        "[providers.atlassian_dc_pat]\nallowed_hosts = [\"{}\"]\nnew_token_days = 90\nrotate_days_before_expiry = 14\ntimeout_ms = 3000\n{extra}",
        dc.authority
    );
    let daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            extra_toml: toml,
            ..Default::default()
        },
    );
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    (tmp, pki, daemon, dc, op)
}

/// `credbroker secret rotate acme-jira --self`.
async fn self_rotate(op: &mut BrokerClient) -> (u16, Value) {
    call(
        op,
        Method::POST,
        "/v1/admin/bindings/acme-jira/secret/self-rotate",
        Some(json!({})),
    )
    .await
}

/// Adds connector instance `i-jira` on binding `acme-jira`; returns worker w1's client.
async fn jira_instance(op: &mut BrokerClient, pki: &TestPki, daemon: &Daemon) -> BrokerClient {
    let (s, v) = call(
        op,
        Method::POST,
        "/v1/admin/instances",
        Some(json!({"id": "i-jira", "tenant": "t1", "binding": "acme-jira", "connector_kind": "jira"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    pki.client_for("w1", &daemon.url)
}

/// The detail of the newest failed `secret.self_rotate` record.
fn failed_rotation(daemon: &Daemon) -> String {
    let records = daemon.audit_records();
    records
        .iter()
        .rev()
        .find(|r| r["action"] == "secret.self_rotate" && r["outcome"] == "failed")
        .and_then(|r| r["detail"].as_str())
        .unwrap_or_else(|| panic!("{records:?}"))
        .to_owned()
}

/// Binding `acme-jira` as the admin API shows it, checked to serve version 1 still with no
/// version pending (a failed rotation left nothing behind); returned for further checks.
async fn serves_version_1_with_nothing_pending(op: &mut BrokerClient) -> Value {
    let (_, b) = call(op, Method::GET, "/v1/admin/bindings/acme-jira", None).await;
    assert_eq!(b["binding"]["active_secret_version"], 1, "{b}");
    assert!(b["binding"]["pending_secret_version"].is_null(), "{b}");
    b
}

/// The instance holds PAT `id` and no other: nothing the broker created was left live.
fn only_pat_left(dc: &FakeAtlassianDc, id: u64) {
    let pats = dc.state.pats.lock().unwrap().clone();
    assert_eq!(
        pats.len(),
        1,
        "a PAT created upstream was left live: {pats:?}"
    );
    assert_eq!(pats[0].id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_rotation_replaces_the_pat_and_revokes_the_old_one() {
    let (_tmp, pki, daemon, dc, mut op) = start("").await;
    let old = dc.state.issue("scanner", 60);
    let v = bind(&mut op, &dc, &old.raw, Some(old.id)).await;
    let summary = v["probe"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("scanner") && summary.contains("expires"),
        "{v}"
    );
    let mut w1 = jira_instance(&mut op, &pki, &daemon).await;
    let (s, r) = resolve(&mut w1, json!({"instance_id": "i-jira"})).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["credentials"]["token"], old.raw.as_str());
    let (s, r) = resolve(
        &mut w1,
        json!({"instance_id": "i-jira", "narrow": {"fields": ["token"]}}),
    )
    .await;
    assert_eq!((s, code(&r)), (403, "narrowing_exceeds_ceiling"), "{r}");

    // `credbroker secret rotate acme-jira --self`.
    let (s, v) = self_rotate(&mut op).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["old_revoked_upstream"], true, "{v}");
    assert_eq!(v["active_secret_version"], 2);
    // The old PAT is gone at the instance; the new one serves.
    assert!(!dc.state.pats.lock().unwrap().iter().any(|p| p.id == old.id));
    let new = dc.state.pats.lock().unwrap().last().unwrap().clone();
    let (_, r) = resolve(&mut w1, json!({"instance_id": "i-jira"})).await;
    assert_eq!(r["credentials"]["token"], new.raw.as_str());
    // Every step audited, no token in the log.
    let records = daemon.audit_records();
    for action in [
        "secret.self_rotate",
        "secret.rotate",
        "binding.probe",
        "secret.promote",
        "secret.revoke_upstream",
    ] {
        assert!(records.iter().any(|r| r["action"] == action), "{action}");
    }
    // The intent, recorded before any upstream effect, names the revocation as well as the
    // creation: an old PAT revoked at the instance is never without a record, should the
    // log fail between the revocation and its own record.
    let intent = records
        .iter()
        .position(|r| r["action"] == "secret.self_rotate" && r["outcome"] == "allowed")
        .unwrap();
    let revocation = records
        .iter()
        .position(|r| r["action"] == "secret.revoke_upstream")
        .unwrap();
    assert!(intent < revocation);
    assert!(
        records[intent]["detail"]
            .as_str()
            .unwrap()
            .contains("the superseded secret is revoked upstream"),
        "{}",
        records[intent]
    );
    let audit = serde_json::to_string(&records).unwrap();
    assert!(!audit.contains(&old.raw) && !audit.contains(&new.raw));
    assert!(!daemon.logs().contains(&new.raw));

    // A pasted PAT without its id: rotated, but the answer says the old one was not revoked.
    let (s, v) = rotate_and_promote(
        &mut op,
        "acme-jira",
        json!({"token": dc.state.issue("scanner", 60).raw}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = self_rotate(&mut op).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["old_revoked_upstream"], false, "{v}");
    assert!(v["note"].as_str().unwrap().contains("NOT revoked"), "{v}");

    // A wrong PAT: the probe refuses it (activation stays pending).
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/acme-jira/secret/rotate",
        Some(json!({"fields": {"token": "not-a-pat"}})),
    )
    .await;
    assert_eq!(
        (s, v["probe"]["result"].as_str()),
        (200, Some("failed")),
        "{v}"
    );
}

/// The old PAT's revocation, promised by the self-rotation's intent, fails at the instance
/// (a proxy answering 503): it stays owed, marked on the superseded version in the
/// promotion's own commit, and the leader's tick makes it once the instance answers (each
/// attempt audited); the collector keeps the version, whose overlap is over, until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_pat_whose_revocation_failed_is_revoked_later() {
    let (_tmp, _pki, daemon, dc, mut op) =
        start("[secrets]\ngc_interval_s = 1\nsuperseded_overlap_s = 0\n").await;
    let old = dc.state.issue("scanner", 60);
    bind(&mut op, &dc, &old.raw, Some(old.id)).await;
    // The rotation's own attempt and the next two ticks' fail.
    *dc.state.delete_fails.lock().unwrap() = 3;
    let (s, v) = self_rotate(&mut op).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["active_secret_version"], 2, "{v}");
    assert!(v["old_revoked_upstream"].is_null(), "{v}");
    assert_eq!(v["revocation_owed"], true, "{v}");
    let live = || dc.state.pats.lock().unwrap().iter().any(|p| p.id == old.id);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while live() {
        assert!(
            std::time::Instant::now() < deadline,
            "the old PAT was never revoked"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let records = daemon.audit_records();
    let revocations: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "secret.revoke_upstream")
        .collect();
    let failed = revocations
        .iter()
        .filter(|r| r["outcome"] == "failed")
        .count();
    assert_eq!(failed, 3, "{revocations:#?}");
    let made = revocations
        .iter()
        .find(|r| r["outcome"] == "allowed")
        .unwrap_or_else(|| panic!("{revocations:#?}"));
    assert_eq!(made["actor"], "credbroker:rotation", "{made}");
    assert!(
        made["detail"]
            .as_str()
            .unwrap()
            .contains("whose revocation its self-rotation owed, was revoked upstream"),
        "{made}"
    );
    // Version 1 outlived its overlap while its revocation was owed: the collector destroyed
    // it only after the revocation was made.
    let destroyed = |r: &&Value| {
        r["action"] == "store.gc" && r["detail"].as_str().unwrap().contains("acme-jira/1")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let records = loop {
        let records = daemon.audit_records();
        if records.iter().any(|r| destroyed(&r)) {
            break records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "version 1 was never destroyed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let at = |pred: &dyn Fn(&Value) -> bool| records.iter().position(pred).unwrap();
    assert!(
        at(&|r| destroyed(&r))
            > at(&|r| r["action"] == "secret.revoke_upstream" && r["outcome"] == "allowed"),
        "destroyed before its revocation was made"
    );
    let (_, b) = call(&mut op, Method::GET, "/v1/admin/bindings/acme-jira", None).await;
    assert_eq!(b["binding"]["active_secret_version"], 2, "{b}");
}

/// An owed revocation of a PAT the instance itself said expires (its PAT API's
/// `expiringAt`, read at the probe) is settled once that time has passed, without a call:
/// nothing is left to revoke, and the version may go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owed_revocation_of_an_expired_pat_is_settled_without_a_call() {
    let (_tmp, _pki, daemon, dc, mut op) =
        start("[secrets]\ngc_interval_s = 1\nsuperseded_overlap_s = 0\n").await;
    let old = dc.state.issue_for_seconds("scanner", 5);
    bind(&mut op, &dc, &old.raw, Some(old.id)).await;
    *dc.state.delete_fails.lock().unwrap() = u32::MAX;
    let (s, v) = self_rotate(&mut op).await;
    assert_eq!((s, &v["revocation_owed"]), (200, &json!(true)), "{v}");
    let revocations = |daemon: &Daemon| -> Vec<Value> {
        daemon
            .audit_records()
            .into_iter()
            .filter(|r| r["action"] == "secret.revoke_upstream")
            .collect()
    };
    let settled = |r: &Value| {
        r["outcome"] == "allowed"
            && r["detail"]
                .as_str()
                .unwrap()
                .contains("was NOT revoked upstream: it expired at")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let records = loop {
        let records = revocations(&daemon);
        if records.iter().any(settled) {
            break records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never settled: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Every call before the expiry failed (the instance refused the DELETE); none was made
    // once the PAT had expired, and the settlement is the last word.
    let (last, tried) = records.split_last().unwrap();
    assert!(settled(last), "{records:#?}");
    assert!(!tried.is_empty(), "{records:#?}");
    assert!(
        tried.iter().all(|r| r["outcome"] == "failed"),
        "{records:#?}"
    );
    let settled_at = time::OffsetDateTime::parse(
        last["time"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        settled_at.unix_timestamp() >= old.expires,
        "settled before the PAT expired: {last}"
    );
    let deletes = || {
        let requests = dc.state.requests.lock().unwrap();
        requests.iter().filter(|r| r.starts_with("DELETE ")).count()
    };
    assert_eq!(deletes(), tried.len(), "{records:#?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        deletes(),
        tried.len(),
        "a revocation was tried after the settlement"
    );
    assert_eq!(revocations(&daemon).len(), records.len());
}

/// While three revocations are owed, no further rotation creates a PAT (live PATs do not
/// pile up); and an owed revocation is never made of a PAT back in service (an operator
/// pasted the old PAT again, without its id, and promoted it, as a rollback): it is settled
/// as not revoked, and the PAT keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owed_revocations_hold_rotations_and_spare_a_pat_back_in_service() {
    let (_tmp, pki, daemon, dc, mut op) = start("").await;
    let old = dc.state.issue("scanner", 60);
    bind(&mut op, &dc, &old.raw, Some(old.id)).await;
    *dc.state.delete_fails.lock().unwrap() = u32::MAX;
    for _ in 0..3 {
        let (s, v) = self_rotate(&mut op).await;
        assert_eq!((s, &v["revocation_owed"]), (200, &json!(true)), "{v}");
    }
    let (_, b) = call(&mut op, Method::GET, "/v1/admin/bindings/acme-jira", None).await;
    let versions = b["binding"]["secret_versions"].as_array().unwrap();
    for n in 1..=3 {
        let v = versions.iter().find(|v| v["version"] == n).unwrap();
        assert_eq!(v["upstream_revocation_owed"], true, "{b}");
    }
    let pats = dc.state.pats.lock().unwrap().len();
    let (s, v) = self_rotate(&mut op).await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("still owes"),
        "{v}"
    );
    assert_eq!(
        dc.state.pats.lock().unwrap().len(),
        pats,
        "a PAT was created"
    );
    // The old PAT pasted back (without its id), staged: the two other revocations are made at
    // the next tick (gc_interval_s is 600 here: a restart runs one at once), but not version
    // 1's while its PAT waits to be promoted (it may be destroyed instead: still owed).
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/acme-jira/secret/rotate",
        Some(json!({"fields": {"token": old.raw}})),
    )
    .await;
    assert_eq!((s, &v["probe"]["result"]), (200, &json!("passed")), "{v}");
    let pending = v["version"].as_u64().unwrap();
    *dc.state.delete_fails.lock().unwrap() = 0;
    let mut daemon = daemon;
    daemon.restart();
    let rotation_records = |daemon: &Daemon| {
        daemon
            .audit_records()
            .into_iter()
            .filter(|r| {
                r["action"] == "secret.revoke_upstream" && r["actor"] == "credbroker:rotation"
            })
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while rotation_records(&daemon).len() < 2 {
        assert!(std::time::Instant::now() < deadline, "never revoked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let made = rotation_records(&daemon);
    assert_eq!(made.len(), 2, "{made:#?}");
    assert!(
        !made
            .iter()
            .any(|r| r["detail"].as_str().unwrap().contains("(version 1)")),
        "{made:#?}"
    );
    assert!(dc.state.pats.lock().unwrap().iter().any(|p| p.id == old.id));
    // Promoted: settled as in service at the next tick, not revoked.
    let mut op = pki.client_for("op", &daemon.url);
    let (s, v) = promote(&mut op, "acme-jira", pending).await;
    assert_eq!(s, 200, "{v}");
    daemon.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let settled = daemon
            .audit_records()
            .into_iter()
            .filter(|r| {
                r["action"] == "secret.revoke_upstream" && r["actor"] == "credbroker:rotation"
            })
            .collect::<Vec<_>>();
        if settled.len() == 3 {
            let spared: Vec<&Value> = settled
                .iter()
                .filter(|r| {
                    r["detail"].as_str().unwrap().contains(
                        "version 1) was NOT revoked upstream: the same PAT is in service again",
                    )
                })
                .collect();
            assert_eq!(spared.len(), 1, "{settled:#?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never settled: {settled:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        dc.state.pats.lock().unwrap().iter().any(|p| p.id == old.id),
        "the PAT in service was revoked"
    );
}

/// An owed revocation the broker can no longer make (its version destroyed by an operator,
/// or its binding removed) is named in that change's record, for the operator to make at the
/// source: it does not vanish silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owed_revocation_dropped_by_an_operator_is_named() {
    let (_tmp, _pki, daemon, dc, mut op) = start("").await;
    let old = dc.state.issue("scanner", 60);
    bind(&mut op, &dc, &old.raw, Some(old.id)).await;
    *dc.state.delete_fails.lock().unwrap() = u32::MAX;
    let lost = |daemon: &Daemon, action: &str, version: u32| {
        daemon.audit_records().iter().any(|r| {
            r["action"] == action
                && r["outcome"] == "allowed"
                && r["detail"].as_str().unwrap().contains(&format!(
                    "the upstream revocation of secret version(s) {version} was still owed and will not be made"
                ))
        })
    };
    let (s, v) = self_rotate(&mut op).await;
    assert_eq!((s, &v["revocation_owed"]), (200, &json!(true)), "{v}");
    let (s, v) = call(
        &mut op,
        Method::DELETE,
        "/v1/admin/bindings/acme-jira/secret/1",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(lost(&daemon, "secret.destroy", 1));
    let (s, v) = self_rotate(&mut op).await;
    assert_eq!((s, &v["revocation_owed"]), (200, &json!(true)), "{v}");
    let (s, v) = call(
        &mut op,
        Method::DELETE,
        "/v1/admin/bindings/acme-jira",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(lost(&daemon, "binding.remove", 2));
}

/// The expiry the instance reports for a PAT (`expiringAt`, in Data Center's own form:
/// `….000+0000`, not RFC 3339) flags the binding in the inventory as expiring soon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instances_pat_expiry_flags_the_inventory() {
    let (_tmp, _pki, _daemon, dc, mut op) = start("").await;
    let old = dc.state.issue("scanner", 3);
    let v = bind(&mut op, &dc, &old.raw, Some(old.id)).await;
    let reported = v["binding"]["trust_facts"]["expiring_at"].as_str().unwrap();
    assert!(reported.ends_with(".000+0000"), "{v}");
    let (s, inv) = call(
        &mut op,
        Method::GET,
        "/v1/admin/inventory?expiring_s=604800",
        None,
    )
    .await;
    assert_eq!(s, 200, "{inv}");
    let row = inv["inventory"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "binding" && i["id"] == "acme-jira")
        .unwrap_or_else(|| panic!("{inv}"));
    assert!(
        row["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("expiring_soon")),
        "{row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pat_close_to_expiry_is_rotated_by_the_broker() {
    let (_tmp, _pki, daemon, dc, mut op) = start("[secrets]\ngc_interval_s = 1\n").await;
    let old = dc.state.issue("scanner", 3);
    let v = bind(&mut op, &dc, &old.raw, Some(old.id)).await;
    assert_eq!(v["binding"]["trust_facts"]["rotation_due"], true, "{v}");
    let mut rotated = false;
    for _ in 0..50 {
        let (_, b) = call(&mut op, Method::GET, "/v1/admin/bindings/acme-jira", None).await;
        if b["binding"]["active_secret_version"] == 2 {
            rotated = true;
            assert_eq!(b["binding"]["trust_facts"]["rotation_due"], false, "{b}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        rotated,
        "the broker did not rotate a PAT expiring in 3 days"
    );
    assert!(!dc.state.pats.lock().unwrap().iter().any(|p| p.id == old.id));
    assert!(daemon
        .audit_records()
        .iter()
        .any(|r| r["action"] == "secret.revoke_upstream" && r["actor"] == "credbroker:rotation"));
}

/// A PAT pasted over another brings its own facts: once promoted, the binding's expiry (and
/// so when the broker rotates it) is the new PAT's, not the one it replaced. (Before, the
/// old PAT's facts stayed until someone probed again: a short-lived replacement was never
/// rotated and expired in service.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_pat_brings_its_own_expiry() {
    let (_tmp, _pki, _daemon, dc, mut op) = start("").await;
    let old = dc.state.issue("scanner", 60);
    let v = bind(&mut op, &dc, &old.raw, Some(old.id)).await;
    assert_eq!(v["binding"]["trust_facts"]["rotation_due"], false, "{v}");
    let old_expiry = v["binding"]["trust_facts"]["expiring_at"].clone();
    assert!(old_expiry.is_string(), "{v}");
    let short = dc.state.issue("scanner", 3);
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/acme-jira/secret/rotate",
        Some(json!({"fields": {"token": short.raw, "token_id": short.id.to_string()}})),
    )
    .await;
    assert_eq!(
        (s, v["probe"]["result"].as_str()),
        (200, Some("passed")),
        "{v}"
    );
    let version = v["version"].as_u64().unwrap();
    // Staged only: the binding still describes the PAT it serves.
    let (_, b) = call(&mut op, Method::GET, "/v1/admin/bindings/acme-jira", None).await;
    assert_eq!(b["binding"]["trust_facts"]["rotation_due"], false, "{b}");
    let (s, v) = promote(&mut op, "acme-jira", version).await;
    assert_eq!(s, 200, "{v}");
    let (_, b) = call(&mut op, Method::GET, "/v1/admin/bindings/acme-jira", None).await;
    let facts = &b["binding"]["trust_facts"];
    assert_eq!(facts["rotation_due"], true, "{b}");
    assert!(
        facts["expiring_at"].is_string() && facts["expiring_at"] != old_expiry,
        "{b}"
    );
}

/// A new PAT expiring in `days` staged over acme-jira's active one (its probe passed): its
/// version.
async fn stage_pat(op: &mut BrokerClient, dc: &FakeAtlassianDc, days: i64) -> u64 {
    let pat = dc.state.issue("scanner", days);
    let (s, v) = call(
        op,
        Method::POST,
        "/v1/admin/bindings/acme-jira/secret/rotate",
        Some(json!({"fields": {"token": pat.raw, "token_id": pat.id.to_string()}})),
    )
    .await;
    assert_eq!(
        (s, v["probe"]["result"].as_str()),
        (200, Some("passed")),
        "{v}"
    );
    v["version"].as_u64().unwrap()
}

/// A PAT due for rotation while a pending version waits for an operator: the broker says
/// so (and creates nothing over it); once the operator destroys the pending version, the
/// broker rotates at its next pass, not an hour later (the warning does not spend the
/// hour's attempt). Fails if waiting on the operator holds the rotation back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_held_by_a_pending_version_runs_once_it_is_destroyed() {
    let (_tmp, _pki, daemon, dc, mut op) = start("[secrets]\ngc_interval_s = 1\n").await;
    let old = dc.state.issue("scanner", 60);
    bind(&mut op, &dc, &old.raw, Some(old.id)).await;
    // Set up while the broker's pass leaves the binding alone (disabled): a PAT due for
    // rotation active, another staged over it.
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/acme-jira/disable",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let short = stage_pat(&mut op, &dc, 3).await;
    let (s, v) = promote(&mut op, "acme-jira", short).await;
    assert_eq!(s, 200, "{v}");
    let waiting = stage_pat(&mut op, &dc, 60).await;
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/acme-jira/enable",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["binding"]["status"], "active", "{v}");
    assert_eq!(v["binding"]["trust_facts"]["rotation_due"], true, "{v}");
    daemon.wait_log("pending version waits", 1).await;
    let (s, v) = call(
        &mut op,
        Method::DELETE,
        &format!("/v1/admin/bindings/acme-jira/secret/{waiting}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let mut rotated = false;
    for _ in 0..50 {
        let (_, b) = call(&mut op, Method::GET, "/v1/admin/bindings/acme-jira", None).await;
        if b["binding"]["active_secret_version"].as_u64() > Some(waiting) {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        rotated,
        "the rotation waited after the pending version was destroyed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_without_the_pat_api_is_reported() {
    let (_tmp, _pki, _daemon, dc, mut op) = start("").await;
    *dc.state.pat_api.lock().unwrap() = false;
    let pat = dc.state.issue("scanner", 60);
    let v = bind(&mut op, &dc, &pat.raw, None).await;
    assert!(
        v["probe"]["summary"]
            .as_str()
            .unwrap()
            .contains("no PAT API"),
        "{v}"
    );
    let (s, v) = self_rotate(&mut op).await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no PAT API"),
        "{v}"
    );
    // Hosts outside the rules are refused.
    for url in [
        "http://jira.acme.example",
        "https://10.0.0.7",
        "https://localhost",
    ] {
        let (s, v) = call(
            &mut op,
            Method::POST,
            "/v1/admin/bindings",
            Some(
                json!({"owner": "team-tests", "purpose": "integration test", "id": "bad-jira", "tenant": "t1", "provider": "atlassian_dc_pat",
                        "config": {"base_url": url, "product": "jira"}}),
            ),
        )
        .await;
        assert_eq!((s, code(&v)), (400, "bad_request"), "{url}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_pki_instance_is_trusted_only_with_its_ca() {
    let (tmp, pki) = setup();
    let read = |f: &str| std::fs::read(pki.dir.join(f)).unwrap();
    // The fake serves the test CA's server certificate (127.0.0.1), which no platform root
    // trusts.
    let dc = FakeAtlassianDc::start_tls(&read("server.crt"), &read("server.key")).await;
    let toml = format!(
        "[providers.atlassian_dc_pat]\nallowed_hosts = [\"{}\"]\ntimeout_ms = 3000\n",
        dc.authority
    );
    let daemon = Daemon::start(
        tmp.path(),
        &pki,
        &DaemonOptions {
            extra_toml: toml,
            ..Default::default()
        },
    );
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let pat = dc.state.issue("scanner", 60);
    let ca = String::from_utf8(read("ca.crt")).unwrap();
    for (id, config) in [
        ("dc-public", json!({"base_url": dc.url, "product": "jira"})),
        (
            "dc-private",
            json!({"base_url": dc.url, "product": "jira", "ca_pem": ca}),
        ),
    ] {
        let (s, v) = call(
            &mut op,
            Method::POST,
            "/v1/admin/bindings",
            Some(
                json!({"owner": "team-tests", "purpose": "integration test", "id": id, "tenant": "t1", "provider": "atlassian_dc_pat", "config": config}),
            ),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let (s, v) = call(
            &mut op,
            Method::PUT,
            &format!("/v1/admin/bindings/{id}/secret"),
            Some(json!({"fields": {"token": pat.raw}})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    // Without the CA the TLS handshake fails: unavailable, nothing sent.
    let before = dc.state.requests.lock().unwrap().len();
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/dc-public/probe",
        Some(json!({})),
    )
    .await;
    assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{v}");
    assert_eq!(
        dc.state.requests.lock().unwrap().len(),
        before,
        "a request reached an untrusted server"
    );
    // With the binding's CA it works (for that binding only).
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/dc-private/probe",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // A CA bundle that is not PEM certificates is refused at bind time.
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "dc-bad", "tenant": "t1", "provider": "atlassian_dc_pat",
                    "config": {"base_url": dc.url, "product": "jira", "ca_pem": "not a certificate"}})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");
}

/// A create whose answer is lost (a proxy gives up with a 504 while the instance makes the
/// PAT): the PAT exists upstream, with its user's full permissions. The broker looks for it
/// by the unique name it sent and revokes it, and the failed rotation's record says so
/// rather than that nothing was created. (Before, the record said "did not create" and the
/// automatic rotation made one more such PAT every hour.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pat_created_behind_a_lost_answer_is_found_and_revoked() {
    let (_tmp, _pki, daemon, dc, mut op) = start("").await;
    let old = dc.state.issue("scanner", 60);
    bind(&mut op, &dc, &old.raw, Some(old.id)).await;
    *dc.state.create_answer_lost.lock().unwrap() = Some(504);
    let (s, v) = self_rotate(&mut op).await;
    assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{v}");
    only_pat_left(&dc, old.id);
    let detail = failed_rotation(&daemon);
    assert!(detail.contains("was found and revoked"), "{detail}");
    // The binding serves the PAT it served.
    serves_version_1_with_nothing_pending(&mut op).await;
}

/// A hostile or broken instance answers the create without an id the PAT can be revoked by
/// (none, or one that is not a PAT id): the successor could never be withdrawn nor, once
/// superseded, revoked. It is found by the unique name sent and revoked, and the rotation
/// fails; the binding serves the PAT it served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_without_a_revocable_id_is_found_by_name_and_revoked() {
    let (_tmp, _pki, daemon, dc, mut op) = start("").await;
    let old = dc.state.issue("scanner", 60);
    bind(&mut op, &dc, &old.raw, Some(old.id)).await;
    for id in [Value::Null, json!("1/../2")] {
        *dc.state.create_id.lock().unwrap() = Some(id.clone());
        let (s, v) = self_rotate(&mut op).await;
        assert_eq!((s, code(&v)), (504, "provider_unavailable"), "{id}: {v}");
        only_pat_left(&dc, old.id);
        let detail = failed_rotation(&daemon);
        assert!(
            detail.contains("without an id") && detail.contains("was found and revoked"),
            "{detail}"
        );
        serves_version_1_with_nothing_pending(&mut op).await;
    }
}

/// A hostile instance answers the successor's creation with an administrator's PAT: it
/// works (its probe passes), but it is not the user the customer chose for us, so it is
/// never promoted nor handed to a worker; the binding serves the PAT it served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_of_another_user_is_never_promoted() {
    let (_tmp, pki, daemon, dc, mut op) = start("").await;
    let old = dc.state.issue("scanner", 60);
    bind(&mut op, &dc, &old.raw, Some(old.id)).await;
    *dc.state.create_as.lock().unwrap() = Some("admin".into());
    let (s, v) = self_rotate(&mut op).await;
    assert_eq!((s, code(&v)), (502, "provider_denied"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("of user admin, not of scanner"),
        "{v}"
    );
    // Withdrawn: revoked upstream by itself (the scanner's PAT cannot delete an admin's),
    // and its stored version destroyed, so no promotion can hand it out.
    only_pat_left(&dc, old.id);
    let b = serves_version_1_with_nothing_pending(&mut op).await;
    assert_eq!(b["binding"]["trust_facts"]["user"], "scanner", "{b}");
    let mut w1 = jira_instance(&mut op, &pki, &daemon).await;
    let (s, v) = resolve(&mut w1, json!({"instance_id": "i-jira"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["credentials"]["token"], old.raw.as_str(), "{v}");
}

/// A successor that fails its probe is withdrawn upstream (revoked with the current PAT)
/// and its stored version destroyed: no PAT the broker created outlives the failed
/// rotation, and no pending version is left to hold off an intake link. The binding keeps
/// serving the PAT it served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_failing_its_probe_is_withdrawn_and_destroyed() {
    let (_tmp, _pki, daemon, dc, mut op) = start("").await;
    let old = dc.state.issue("scanner", 60);
    bind(&mut op, &dc, &old.raw, Some(old.id)).await;
    *dc.state.create_expired.lock().unwrap() = true;
    let (s, v) = self_rotate(&mut op).await;
    assert_ne!(s, 200, "{v}");
    only_pat_left(&dc, old.id);
    assert!(daemon
        .audit_records()
        .iter()
        .any(|r| r["action"] == "secret.revoke_upstream"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("was withdrawn upstream"))));
    serves_version_1_with_nothing_pending(&mut op).await;
}

/// A self-rotation is recorded before the upstream creates anything: with the audit log
/// failing, no successor PAT is created (a live credential with no record of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_successor_is_created_while_the_audit_log_is_failing() {
    let (_tmp, pki, mut daemon, dc, mut op) = start("").await;
    let old = dc.state.issue("scanner", 60);
    bind(&mut op, &dc, &old.raw, Some(old.id)).await;
    daemon.stop();
    point_audit_at_dev_full(&daemon.data_dir);
    daemon.restart();
    let mut op = pki.client_for("op", &daemon.url);
    let seen = dc.state.requests.lock().unwrap().len();
    let (s, v) = self_rotate(&mut op).await;
    assert_eq!((s, code(&v)), (503, "audit_unavailable"), "{v}");
    let after: Vec<String> = dc.state.requests.lock().unwrap()[seen..].to_vec();
    assert!(
        !after.iter().any(|r| r == "POST /rest/pat/latest/tokens"),
        "a successor was created upstream with no audit record: {after:?}"
    );
    assert_eq!(dc.state.pats.lock().unwrap().len(), 1);
}

/// A PAT is created upstream only for a tenant and a binding that are served: an operator
/// who disabled either expects the stored PAT to run out, not to be renewed (by the timer or
/// by a self-rotation request). A pending version that passed its probe (an operator's, an
/// intake's, another rotation's successor) is not replaced either: nothing is created until
/// it is promoted or destroyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pat_is_created_for_a_disabled_tenant_or_binding_or_over_a_staged_one() {
    let (_tmp, _pki, daemon, dc, mut op) = start("").await;
    let old = dc.state.issue("scanner", 60);
    bind(&mut op, &dc, &old.raw, Some(old.id)).await;
    let pats = || dc.state.pats.lock().unwrap().len();
    let toggle = |what: &'static str, verb: &'static str| format!("/v1/admin/{what}/{verb}");

    for (what, code_now) in [
        ("tenants/t1", "tenant_inactive"),
        ("bindings/acme-jira", "binding_inactive"),
    ] {
        let (s, v) = call(&mut op, Method::POST, &toggle(what, "disable"), None).await;
        assert_eq!(s, 200, "{v}");
        let before = pats();
        let (s, v) = self_rotate(&mut op).await;
        assert_eq!(code(&v), code_now, "{s} {v}");
        assert_eq!(pats(), before, "a PAT was created for a disabled {what}");
        let (s, v) = call(&mut op, Method::POST, &toggle(what, "enable"), None).await;
        assert_eq!(s, 200, "{v}");
    }

    // Staged and passed, not promoted: kept, and nothing is created.
    let staged = dc.state.issue("scanner", 60);
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/acme-jira/secret/rotate",
        Some(json!({"fields": {"token": staged.raw, "token_id": staged.id.to_string()}})),
    )
    .await;
    assert_eq!(
        (s, v["probe"]["result"].as_str()),
        (200, Some("passed")),
        "{v}"
    );
    let version = v["version"].clone();
    let before = pats();
    let (s, v) = self_rotate(&mut op).await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    assert_eq!(pats(), before, "a PAT was created over a staged one");
    let (_, b) = call(&mut op, Method::GET, "/v1/admin/bindings/acme-jira", None).await;
    assert_eq!(b["binding"]["pending_secret_version"], version, "{b}");
    assert!(!daemon
        .audit_records()
        .iter()
        .any(|r| r["action"] == "secret.self_rotate" && r["outcome"] == "allowed"));
}

/// A `token_id` pasted with a PAT goes into the DELETE path that revokes that PAT at its next
/// rotation, sent with the current PAT's authority. An id that would take the request
/// elsewhere (with an administrator's PAT, `../../api/2/user?username=admin` deletes a user)
/// fails the probe: the version is never promoted, no request to the instance names it, and
/// the active PAT still rotates and is revoked by its own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pasted_token_id_that_is_not_a_pat_id_is_never_used() {
    let (_tmp, _pki, _daemon, dc, mut op) = start("").await;
    let old = dc.state.issue("scanner", 60);
    bind(&mut op, &dc, &old.raw, Some(old.id)).await;
    let long = "7".repeat(65);
    for hostile in [
        "../../api/2/user?username=admin",
        "1/../../../api/2/user",
        "1#x",
        "1?x=y",
        long.as_str(),
    ] {
        let pat = dc.state.issue("scanner", 60);
        let (s, v) = call(
            &mut op,
            Method::POST,
            "/v1/admin/bindings/acme-jira/secret/rotate",
            Some(json!({"fields": {"token": pat.raw, "token_id": hostile}})),
        )
        .await;
        assert_eq!(
            (s, v["probe"]["result"].as_str()),
            (200, Some("failed")),
            "{hostile}: {v}"
        );
        assert!(v.to_string().contains("token_id is not a PAT id"), "{v}");
        assert!(!v.to_string().contains(hostile), "{v}");
        let version = v["version"].as_u64().unwrap();
        let (s, v) = promote(&mut op, "acme-jira", version).await;
        assert_eq!((s, code(&v)), (409, "conflict"), "{hostile}: {v}");
    }
    let requests = dc.state.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .all(|r| !r.starts_with("DELETE") && !r.contains("/api/2/user")),
        "{requests:?}"
    );
    let (s, v) = self_rotate(&mut op).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["old_revoked_upstream"], true, "{v}");
    assert!(!dc.state.pats.lock().unwrap().iter().any(|p| p.id == old.id));
}

/// Who a PAT is decides whether its successor may be promoted. An instance (or a proxy
/// answering for it) whose `myself` names nobody proves nothing: the probe fails and the
/// binding is not activated — activated, it would have no user to compare a successor with,
/// and an administrator's PAT handed out by the next rotation would be promoted. A binding
/// whose user is not known (activated by an earlier release) has no successor promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pat_of_nobody_in_particular_proves_nothing() {
    use credbroker::store::{Batch, Op, Table};
    let (_tmp, pki, mut daemon, dc, mut op) = start("").await;
    let old = dc.state.issue("scanner", 60);
    *dc.state.names_nobody.lock().unwrap() = true;
    let (s, v) = add_jira_and_probe(&mut op, &dc, &old.raw, Some(old.id)).await;
    assert_ne!(s, 200, "{v}");
    assert!(v.to_string().contains("named no user"), "{v}");
    let (_, b) = call(&mut op, Method::GET, "/v1/admin/bindings/acme-jira", None).await;
    assert_eq!(b["binding"]["status"], "pending_activation", "{b}");

    // The instance names the user again: activated. Then its user is made unknown, as an
    // earlier release could leave it, and the next rotation hands out an admin's PAT.
    *dc.state.names_nobody.lock().unwrap() = false;
    let (s, v) = call(
        &mut op,
        Method::POST,
        "/v1/admin/bindings/acme-jira/probe",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    daemon.stop();
    {
        let config = credbroker::config::Config::load(&daemon.config).unwrap();
        let store = credbroker::store::open(&config.store, &config.data_dir)
            .await
            .unwrap();
        let mut binding: Value = serde_json::from_slice(
            &store
                .get(Table::Bindings, "acme-jira")
                .await
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        binding["trust_facts"]["user"] = json!("?");
        let mut batch = Batch::new();
        batch.push(Op::Put(
            Table::Bindings,
            "acme-jira".into(),
            serde_json::to_vec(&binding).unwrap(),
        ));
        store.commit(batch).await.unwrap();
    }
    daemon.restart();
    let mut op = pki.client_for("op", &daemon.url);
    *dc.state.create_as.lock().unwrap() = Some("admin".into());
    let (s, v) = self_rotate(&mut op).await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("own user is not known"),
        "{v}"
    );
    // Refused before anything was created upstream.
    assert!(
        !dc.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .any(|r| r == "POST /rest/pat/latest/tokens"),
        "a successor was created"
    );
    only_pat_left(&dc, old.id);
    serves_version_1_with_nothing_pending(&mut op).await;
}
