//! `credbroker audit report` of a seeded log, opened in headless Chromium: the verification
//! result comes first and says verified, the outcome counts are the seeded ones, the page
//! loads nothing from anywhere, no secret is in it; a tampered log gives a report that says
//! the verification failed. The screenshot goes to target/test-output/audit-report/.

use credbroker_tests::browser::browser;
use credbroker_tests::*;
use fantoccini::Locator;
use serde_json::{json, Value};

const CANARY: &str = "CANARY-audit-report-5e1f9a";
const HOSTILE: &str = "<script>alert(1)</script><img src=x onerror=alert(2)>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_report_shows_a_seeded_log_in_a_real_browser() {
    init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut dev = start_dev(&dir);
    let mut worker = dev.worker_client(&dir);
    for _ in 0..3 {
        let (s, v) = resolve(&mut worker, json!({"instance_id": "demo-instance"})).await;
        assert_eq!(s, 200, "{v}");
    }
    for _ in 0..2 {
        let (s, v) = resolve(&mut worker, json!({"instance_id": "no-such-instance"})).await;
        assert_eq!(s, 404, "{v}");
    }
    // A worker's certificate probing the admin API: a refused read, listed (not counted
    // away with the reads).
    let (s, v) = call(&mut worker, http::Method::GET, "/v1/admin/tenants", None).await;
    assert_eq!((s, code(&v)), (403, "operator_required"), "{v}");
    // An insider aiming at the auditor's browser: a webhook-secret reveal whose reason (it
    // goes into the audit record's detail, and so into the report) is markup.
    let d = dir.to_str().unwrap();
    let (code, _, err) = run_cli(&[
        "webhook-secret",
        "generate",
        "demo-instance",
        "--scheme",
        "github",
        "--dev-dir",
        d,
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_cli(&[
        "webhook-secret",
        "reveal",
        "demo-instance",
        "--reason",
        HOSTILE,
        "--dev-dir",
        d,
    ]);
    assert_eq!(code, 0, "{err}");
    // An admin change carrying a secret (the canary must not reach the report).
    let secret = tmp.path().join("secret.json");
    std::fs::write(
        &secret,
        json!({"username": "u", "password": CANARY}).to_string(),
    )
    .unwrap();
    let (code, _, err) = run_cli(&[
        "secret",
        "rotate",
        "demo-binding",
        "--from-file",
        secret.to_str().unwrap(),
        "--dev-dir",
        d,
    ]);
    assert_eq!(code, 0, "{err}");
    dev.stop();

    let out = repo_root().join("target/test-output/audit-report");
    std::fs::create_dir_all(&out).unwrap();
    let html = out.join("report.html");
    let summary = out.join("report.json");
    // The folder outlives the run: a report this run failed to write must not be read from
    // an earlier one.
    for f in [
        "report.html",
        "report.json",
        "tampered.html",
        "tampered.json",
    ] {
        let _ = std::fs::remove_file(out.join(f));
    }
    let (code, _, err) = run_cli(&[
        "audit",
        "report",
        "--data-dir",
        d,
        "--html",
        html.to_str().unwrap(),
        "--json",
        summary.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(v["verified"], true, "{v:#}");
    assert_eq!(v["resolves_by_outcome"]["allowed"], 3, "{v:#}");
    assert_eq!(v["resolves_by_outcome"]["denied"], 2, "{v:#}");
    assert_eq!(v["denials_total"], 2);
    assert_eq!(v["by_error_code"][0]["name"], "unknown_instance", "{v:#}");
    let changes: Vec<&str> = v["admin_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    // The rotation probes the pending version: newest first.
    assert_eq!(
        changes[..2],
        ["binding.probe", "secret.rotate"],
        "newest first: {changes:?}"
    );
    assert!(changes.contains(&"tenant.add"), "{changes:?}");
    assert!(
        !changes.contains(&"tenant.list"),
        "reads are counted, not listed"
    );
    assert!(
        v["admin_changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["outcome"] == "denied"
                && a["error_code"] == "operator_required"
                && a["actor"].as_str().is_some_and(|w| w.contains("worker"))),
        "the refused read is not listed: {v:#}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    for (what, text) in [("page", page.as_str()), ("summary", &v.to_string())] {
        assert!(!text.contains(CANARY), "the canary is in the {what}");
        assert!(!text.contains("token_fingerprint"), "{what}");
    }
    assert!(!page.contains("<script"), "no script");
    assert!(!page.contains("<img"), "no markup from a record");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;"),
        "the reveal's reason is shown, escaped"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no address to load"
    );

    // As an auditor opens it.
    let profile = tempfile::tempdir().unwrap();
    let (_driver, c) = browser(profile.path()).await;
    c.goto(&format!("file://{}", html.display())).await.unwrap();
    let banner = c.find(Locator::Id("verification")).await.unwrap();
    assert_eq!(
        banner.attr("data-verified").await.unwrap().as_deref(),
        Some("true")
    );
    let said = banner.text().await.unwrap();
    assert!(said.contains("Audit log verified"), "{said}");
    // Dev mode's first batch is signed at once; the records after it are not yet under a
    // signed checkpoint: said, not glossed over.
    assert!(
        said.contains("anchored by signed checkpoints") && said.contains("in the unsigned tail"),
        "{said}"
    );
    // The key came from the host whose log it is: the page says so.
    c.find(Locator::Id("unpinned")).await.unwrap();
    // The verification result is the first thing on the page.
    let first_section = c
        .find(Locator::Css("section"))
        .await
        .unwrap()
        .attr("id")
        .await
        .unwrap();
    assert_eq!(first_section.as_deref(), Some("verify"));
    for (outcome, count) in [("allowed", "3"), ("denied", "2"), ("failed", "0")] {
        let cell = c
            .find(Locator::Css(&format!(
                "#outcomes tr[data-outcome=\"{outcome}\"] td.count"
            )))
            .await
            .unwrap();
        assert_eq!(cell.text().await.unwrap(), count, "{outcome}");
    }
    let bars = c
        .find_all(Locator::Css("#timeline svg rect"))
        .await
        .unwrap();
    assert!(!bars.is_empty(), "the chart has bars");
    c.set_window_size(1200, 2200).await.unwrap();
    std::fs::write(out.join("report.png"), c.screenshot().await.unwrap()).unwrap();
    println!("screenshot: {}", out.join("report.png").display());

    // A record edited afterwards: the report says so first, and exits 1.
    let log = audit_segments(&dir).pop().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(
        &log,
        text.replacen("\"secret.rotate\"", "\"secret.rotatX\"", 1),
    )
    .unwrap();
    let bad = out.join("tampered.html");
    let bad_json = out.join("tampered.json");
    let (code, _, err) = run_cli(&[
        "audit",
        "report",
        "--data-dir",
        d,
        "--html",
        bad.to_str().unwrap(),
        "--json",
        bad_json.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("VERIFICATION FAILED"), "{err}");
    // Nothing from the bad record on is summed up as if it were true.
    let v: Value = serde_json::from_slice(&std::fs::read(&bad_json).unwrap()).unwrap();
    let changes: Vec<&str> = v["admin_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(
        !changes.contains(&"secret.rotatX") && !changes.contains(&"binding.probe"),
        "{changes:?}"
    );
    assert!(changes.contains(&"instance.add"), "{changes:?}");
    c.goto(&format!("file://{}", bad.display())).await.unwrap();
    let banner = c.find(Locator::Id("verification")).await.unwrap();
    assert_eq!(
        banner.attr("data-verified").await.unwrap().as_deref(),
        Some("false")
    );
    let source = c.source().await.unwrap();
    assert!(
        source.contains("Failed at #") && source.contains("(altered)"),
        "the place and the reason are shown"
    );
    c.close().await.unwrap();
}
