//! SIGKILL under resolve load, 20 times at random moments (some during admin writes): after
//! each restart every resolve that returned 200 has its audit record (same audit id, request
//! id and outcome), the chain verifies, and no binding or secret is lost or half-written.
//! And again with audit segments rotating (and archived) many times a second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use credbroker_tests::*;
use serde_json::json;

fn jitter_ms(round: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    150 + (nanos ^ round.wrapping_mul(0x9e37_79b9)) % 500
}

type Load = Vec<tokio::task::JoinHandle<Vec<(String, String)>>>;

/// Eight workers resolving until `stop` or until the daemon dies under them; each returns
/// the (audit id, request id) of every 200 it got.
fn resolve_load(pki: &Arc<TestPki>, url: &str, stop: &Arc<AtomicBool>) -> Load {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let pki = pki.clone();
        let url = url.to_owned();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            let mut c = pki.client_for("w1", &url);
            while !stop.load(Ordering::Relaxed) {
                let body = serde_json::to_vec(&json!({"instance_id": "i1"})).unwrap();
                match c
                    .request(http::Method::POST, "/v1/resolve", Some(body))
                    .await
                {
                    Ok((s, bytes)) if s.as_u16() == 200 => {
                        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                        acks.push((
                            v["audit_id"].as_str().unwrap().to_owned(),
                            v["request_id"].as_str().unwrap().to_owned(),
                        ));
                    }
                    Ok((s, _)) => panic!("unexpected status {s}"),
                    Err(_) => break, // the daemon died under us
                }
            }
            acks
        }));
    }
    tasks
}

/// After a restart: every acknowledged resolve has its record (same request id, allowed),
/// and the whole log verifies. Returns the records by audit id.
fn check_acknowledged(
    daemon: &Daemon,
    acknowledged: &HashMap<String, String>,
    round: u64,
) -> HashMap<String, serde_json::Value> {
    let records: HashMap<String, serde_json::Value> = daemon
        .audit_records()
        .into_iter()
        .map(|r| (format!("aud_{}", &r["hash"].as_str().unwrap()[..20]), r))
        .collect();
    for (audit_id, request_id) in acknowledged {
        let rec = records
            .get(audit_id)
            .unwrap_or_else(|| panic!("round {round}: {audit_id} acknowledged but missing"));
        assert_eq!(rec["request_id"], request_id.as_str(), "{audit_id}");
        assert_eq!(rec["outcome"], "allowed");
    }
    let (c, out, err) = daemon.cli(&[
        "audit",
        "verify",
        "--config",
        daemon.config.to_str().unwrap(),
    ]);
    assert_eq!(c, 0, "round {round}: {out}{err}");
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_segments_rotate_loses_nothing_and_the_chain_spans_them() {
    let (tmp, pki) = setup();
    // A segment every 40 records, one sealed segment kept beside the live one: under load
    // the writer seals, starts and archives segments many times a second, so the kills
    // land in every step of a rotation.
    let options = DaemonOptions {
        extra_toml: "[audit]\nsegment_records = 40\nlive_segments = 1\n".into(),
        ..DaemonOptions::default()
    };
    let mut daemon = Daemon::start(tmp.path(), &pki, &options);
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    let mut acknowledged: HashMap<String, String> = HashMap::new();
    for round in 0..12u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = resolve_load(&pki, &daemon.url, &stop);
        tokio::time::sleep(Duration::from_millis(jitter_ms(round))).await;
        daemon.kill_hard();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            acknowledged.extend(t.await.unwrap());
        }
        daemon.restart();
        check_acknowledged(&daemon, &acknowledged, round);
    }
    let segments = audit_segments(&daemon.data_dir);
    let archived = segments
        .iter()
        .filter(|p| p.parent().unwrap().ends_with("archive"))
        .count();
    assert!(
        segments.len() > 10 && archived + 2 >= segments.len(),
        "{} segments, {archived} archived",
        segments.len()
    );
    assert!(acknowledged.len() > 400, "{}", acknowledged.len());
    // Every record is in exactly one place: the chain's length is the last sequence.
    let records = daemon.audit_records();
    assert_eq!(
        records.len() as u64,
        records.last().unwrap()["seq"].as_u64().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_audit_record() {
    let (tmp, pki) = setup();
    let mut daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    // A worker for the second tenant, whose secret the operator rotates under the kills.
    pki.worker("w2");
    let (s, v) = call(
        &mut op,
        http::Method::POST,
        "/v1/admin/workers",
        Some(json!({"owner": "team-tests", "purpose": "integration test", "id": "w2", "tenants": ["t2"]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let mut acknowledged: HashMap<String, String> = HashMap::new();
    // Acknowledged admin changes: (audit id, version, token) of each rotate and promote
    // that returned 200, and the highest version whose promotion was acknowledged.
    let mut acknowledged_changes: Vec<(String, u64, String)> = Vec::new();
    let mut tokens: HashMap<u64, String> = HashMap::from([(1, "t2-token".to_owned())]);
    let mut last_promoted = 1u64;
    for round in 0..20u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = resolve_load(&pki, &daemon.url, &stop);
        // Every other round, an operator is rotating a secret when the kill lands.
        let admin = if round % 2 == 1 {
            let pki = pki.clone();
            let url = daemon.url.clone();
            Some(tokio::spawn(async move {
                let mut op = pki.client_for("op", &url);
                let mut acks = Vec::new();
                for n in 0.. {
                    let token = format!("t2-token-r{round}-{n}");
                    let body = serde_json::to_vec(&json!({"fields": {"token": token}})).unwrap();
                    let Ok((s, bytes)) = op
                        .request(
                            http::Method::POST,
                            "/v1/admin/bindings/b2/secret/rotate",
                            Some(body),
                        )
                        .await
                    else {
                        break;
                    };
                    assert_eq!(s.as_u16(), 200, "{}", String::from_utf8_lossy(&bytes));
                    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                    let version = v["version"].as_u64().unwrap();
                    acks.push((
                        v["audit_id"].as_str().unwrap().to_owned(),
                        version,
                        token.clone(),
                        false,
                    ));
                    let Ok((s, bytes)) = op
                        .request(
                            http::Method::POST,
                            &format!("/v1/admin/bindings/b2/secret/{version}/promote"),
                            Some(b"{}".to_vec()),
                        )
                        .await
                    else {
                        break;
                    };
                    assert_eq!(s.as_u16(), 200, "{}", String::from_utf8_lossy(&bytes));
                    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                    acks.push((
                        v["audit_id"].as_str().unwrap().to_owned(),
                        version,
                        token,
                        true,
                    ));
                }
                acks
            }))
        } else {
            None
        };
        tokio::time::sleep(Duration::from_millis(jitter_ms(round))).await;
        daemon.kill_hard();
        if let Some(a) = admin {
            for (audit_id, version, token, promoted) in a.await.unwrap() {
                tokens.insert(version, token.clone());
                if promoted {
                    last_promoted = last_promoted.max(version);
                }
                acknowledged_changes.push((audit_id, version, token));
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut this_round = 0;
        for t in tasks {
            for (audit_id, request_id) in t.await.unwrap() {
                acknowledged.insert(audit_id, request_id);
                this_round += 1;
            }
        }
        assert!(
            this_round > 0,
            "round {round}: no resolve completed before the kill"
        );

        daemon.restart();
        let records = check_acknowledged(&daemon, &acknowledged, round);
        // Every acknowledged admin change survived with its record.
        for (audit_id, version, _) in &acknowledged_changes {
            let rec = records.get(audit_id).unwrap_or_else(|| {
                panic!("round {round}: change {audit_id} (version {version}) acknowledged but its record is missing")
            });
            assert_eq!(rec["outcome"], "allowed");
            assert!(
                rec["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&format!("version {version}"))
                    || rec["detail"]
                        .as_str()
                        .unwrap_or("")
                        .contains(&format!("version={version}")),
                "{rec}"
            );
        }
        // Still serving; no binding or secret lost or half-written: both bindings list, b1's
        // secret is untouched, b2's active version opens (whichever rotation last committed).
        let mut w = pki.client_for("w1", &daemon.url);
        let (s, v) = resolve(&mut w, json!({"instance_id": "i1"})).await;
        assert_eq!(s, 200);
        assert_eq!(v["credentials"]["token"], "t1-token");
        let mut op = pki.client_for("op", &daemon.url);
        let (s, v) = call(&mut op, http::Method::GET, "/v1/admin/bindings", None).await;
        assert_eq!(s, 200);
        assert_eq!(
            v["bindings"].as_array().unwrap().len(),
            2,
            "round {round}: {v}"
        );
        let (_, b2) = call(&mut op, http::Method::GET, "/v1/admin/bindings/b2", None).await;
        let active = b2["binding"]["active_secret_version"]
            .as_u64()
            .expect("b2 keeps an active secret");
        let versions = b2["binding"]["secret_versions"].as_array().unwrap();
        assert_eq!(
            versions.iter().filter(|v| v["state"] == "active").count(),
            1,
            "round {round}: {b2}"
        );
        assert!(versions
            .iter()
            .any(|v| v["version"].as_u64() == Some(active) && v["state"] == "active"));
        // An acknowledged promotion is never undone (a later, unacknowledged one may have
        // committed too), and every rotation that was acknowledged is still there.
        assert!(
            active >= last_promoted,
            "round {round}: active version {active} is older than acknowledged promotion {last_promoted}"
        );
        // Every version the store holds was audited before it was committed.
        let details: Vec<&str> = records
            .values()
            .filter(|r| r["outcome"] == "allowed" && r["binding"] == "b2")
            .filter_map(|r| r["detail"].as_str())
            .collect();
        for (_, version, _) in &acknowledged_changes {
            // A pending version is gone only when a later rotation replaced it, audited.
            let replaced = format!("replaced pending version {version} (destroyed)");
            assert!(
                versions
                    .iter()
                    .any(|v| v["version"].as_u64() == Some(*version))
                    || details.iter().any(|d| d.contains(&replaced)),
                "round {round}: acknowledged version {version} lost"
            );
        }
        for v in versions {
            let n = v["version"].as_u64().unwrap();
            assert!(
                details
                    .iter()
                    .any(|d| d.contains(&format!("binding=b2 version={n} "))),
                "round {round}: version {n} has no audit record: {details:?}"
            );
        }
        if active > 1 {
            assert!(
                details
                    .iter()
                    .any(|d| d.contains(&format!("binding=b2 promoted version {active}"))),
                "round {round}: the promotion of {active} has no audit record"
            );
        }
        // The second tenant is served by its own worker, with the active version's token.
        let mut w2 = pki.client_for("w2", &daemon.url);
        let (s, v) = resolve(&mut w2, json!({"instance_id": "i2"})).await;
        assert_eq!(s, 200, "round {round}: {v}");
        let served = v["credentials"]["token"].as_str().unwrap().to_owned();
        match tokens.get(&active) {
            Some(t) => assert_eq!(&served, t, "round {round}: version {active}"),
            None => assert!(
                served.starts_with(&format!("t2-token-r{round}-")),
                "round {round}: an unacknowledged version serves {served}"
            ),
        }
    }
    assert!(
        acknowledged.len() > 50,
        "only {} acknowledged resolves",
        acknowledged.len()
    );
}
